"""Certificate reports: the per-sample certificate of one layer and the whole-model report (D11 total).

The certificate of digest §1.2 / D1-D2 for one layer ``A = S + R``::

    eta_s = L_s ||R psi_1(s)||_inf,     B_T(R) = (2/|T|) sum_s eta_s,

and sample ``s`` is *certified* when its dense prediction margin exceeds ``2 eta_s`` (its prediction then
cannot flip). The margins and the certified set are those of :mod:`mptheory.certificates`
(:func:`~mptheory.certificates.prediction_margin`, :func:`~mptheory.certificates.certified_samples`),
computed from the dense logits by the engine (:func:`mpprune.certify.certify_layer`,
:func:`mpprune.certify.certify`) and stored here per sample.

Every line a report prints says whether its certificate is ``sound`` or an ``ESTIMATE``
(:func:`soundness_label`); a total is sound only when every certificate summed into it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CertificateReport", "LayerCertificate", "soundness_label"]

#: ``LayerCertificate.network`` of a layer certified alone in the dense model (each layer's own effect)
ALONE = "alone in the dense model"
#: ``LayerCertificate.network`` of a layer certified in the D11 chain (the layers before it already pruned)
CHAIN = "in the intermediate network (earlier layers pruned)"


def soundness_label(sound: bool) -> str:
    """``"sound"`` or ``"ESTIMATE"``: the word every report line carries."""
    return "sound" if sound else "ESTIMATE"


def _budget(eta: np.ndarray) -> float:
    """B_T = (2/|T|) sum_s eta_s from the per-sample eta_s.

    :func:`mptheory.certificates.budget` takes ``(psi_1, R, L)`` of a matrix layer and recomputes
    ``||R psi_1(s)||_inf`` itself; here eta_s is already known per sample (measured directly as the largest
    ``||dz/dtheta||_inf`` by pl_exact and the grid estimate, or ``L ||layer_R(psi_1)||_inf`` over every
    output coordinate of a conv / token layer), so only the mean is left -- the same mean that
    :func:`mptheory.certificates.multilayer_margin` takes for its D11 total.
    """
    return float(2.0 * np.mean(eta))


@dataclass
class LayerCertificate:
    """Per-layer, per-sample certificate of pruning one layer (others as in the network it was computed in).

    ``eta`` (per sample) = L_s ||R psi_1(s)||_inf; ``budget`` = B_T(R) = 2 mean(eta); ``margin`` = dense
    prediction margin and ``certified`` = margin > 2 eta (both from :mod:`mptheory.certificates`);
    ``realised`` = ||z_pruned(s) - z_dense(s)||_inf from running the pruned layer; ``flips`` = number of
    samples whose predicted class changes; ``violations`` = samples with realised > eta (must be 0 for a
    sound estimator); ``network`` = the network the layer was certified in (:data:`ALONE` or
    :data:`CHAIN`); ``exact`` (when tracked) = per sample, whether ``eta`` is the exact largest slope (False:
    a sound upper bound that stopped once it decided the sample against a target).
    """

    name: str
    shape: tuple[int, ...]
    sparsity: float
    estimator: str
    sound: bool
    eta: np.ndarray = field(repr=False)
    L: np.ndarray = field(repr=False)
    removed_norm: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    certified: np.ndarray = field(repr=False)
    realised: np.ndarray = field(repr=False)
    flipped: np.ndarray = field(repr=False)
    r_fro2: float = 0.0
    r_l1: float = 0.0
    is_mask: bool = True
    pieces: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)
    network: str = ALONE
    exact: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """``"sound"`` or ``"ESTIMATE"``."""
        return soundness_label(self.sound)

    @property
    def n_samples(self) -> int:
        return int(self.eta.shape[0])

    @property
    def budget(self) -> float:
        return _budget(self.eta)

    @property
    def certified_fraction(self) -> float:
        return float(np.mean(self.certified))

    @property
    def flips(self) -> int:
        return int(self.flipped.sum())

    @property
    def flip_fraction(self) -> float:
        return float(np.mean(self.flipped))

    @property
    def violations(self) -> int:
        return int(np.sum(self.realised > self.eta * (1 + 1e-7) + 1e-9))

    @property
    def tightness(self) -> float:
        """median of realised / eta over samples with eta > 0 (1 = the bound is attained end to end)."""
        ok = self.eta > 0
        return float(np.median(self.realised[ok] / self.eta[ok])) if ok.any() else float("nan")

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "sparsity": self.sparsity,
            "estimator": self.estimator,
            "sound": self.sound,
            "label": self.label,
            "network": self.network,
            "n_samples": self.n_samples,
            "budget": self.budget,
            "eta_mean": float(np.mean(self.eta)),
            "eta_max": float(np.max(self.eta)),
            "L_median": float(np.median(self.L)),
            "certified_fraction": self.certified_fraction,
            "realised_max": float(np.max(self.realised)),
            "realised_mean": float(np.mean(self.realised)),
            "tightness_median": self.tightness,
            "flips": self.flips,
            "flip_fraction": self.flip_fraction,
            "violations": self.violations,
            "r_fro2": self.r_fro2,
            "r_l1": self.r_l1,
            "is_mask": self.is_mask,
            "notes": list(self.notes),
        }
        if self.pieces is not None:
            d["pieces_mean"] = float(np.mean(self.pieces))
        if self.exact is not None:
            d["exact_fraction"] = float(np.mean(self.exact))
        if per_sample:
            d["eta"] = self.eta.tolist()
            d["realised"] = self.realised.tolist()
        return d


@dataclass
class CertificateReport:
    """Per-layer certificates and the whole-model (D11) total.

    ``layers``: one certificate per pruned layer, each certified in the network its ``network`` names
    (alone in the dense model for :func:`~mpprune.certify.certify`, in the D11 chain for the model-scope
    gate). ``eta_total`` = sum_j eta_{j,s} with eta_{j,s} computed in the intermediate network (layers
    before j pruned); ``margin`` = dense prediction margin and ``certified`` = margin > 2 eta_total (both from
    :mod:`mptheory.certificates`); ``certified_fraction`` = the fraction certified; ``flips`` are realised on
    the fully pruned model (``realised_total`` = ``||z_pruned - z_dense||_inf`` per sample).
    """

    layers: list[LayerCertificate]
    eta_total: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    realised_total: np.ndarray = field(repr=False)
    flipped_total: np.ndarray = field(repr=False)
    certified: np.ndarray = field(repr=False)
    sound: bool = True
    estimators: list[str] = field(default_factory=list)

    @property
    def certified_fraction(self) -> float:
        return float(np.mean(self.certified)) if self.certified.size else 1.0

    @property
    def flips(self) -> int:
        return int(self.flipped_total.sum())

    @property
    def n_samples(self) -> int:
        return int(self.eta_total.size)

    @property
    def label(self) -> str:
        """``"sound"`` or ``"ESTIMATE"`` for the total."""
        return soundness_label(self.sound)

    @property
    def certified_flips(self) -> int:
        """Samples certified by the total whose prediction flipped anyway (0 for a sound total)."""
        return int(np.sum(self.certified & self.flipped_total))

    @property
    def budget_total(self) -> float:
        return _budget(self.eta_total) if self.eta_total.size else 0.0

    def layer(self, name: str) -> LayerCertificate:
        for lc in self.layers:
            if lc.name == name:
                return lc
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [lc.to_dict() for lc in self.layers],
            "total": {
                "sound": self.sound,
                "label": self.label,
                "n_samples": self.n_samples,
                "estimators": list(self.estimators),
                "budget": self.budget_total,
                "certified_fraction": self.certified_fraction,
                "flips": self.flips,
                "certified_flips": self.certified_flips,
                "realised_max": float(np.max(self.realised_total)) if self.realised_total.size else 0.0,
                "violations": int(np.sum(self.realised_total > self.eta_total * (1 + 1e-7) + 1e-9)),
            },
        }

    def to_markdown(self) -> str:
        networks = sorted({lc.network for lc in self.layers})
        head = (
            f"Per-layer rows: each layer certified {' / '.join(networks) or ALONE}; the total (D11) row: the "
            f"whole pruned model against the dense one; the total is {self.label}.\n\n"
            "| layer | shape | sparsity | estimator | certificate | B_T | certified | realised max "
            "| flips |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
        rows = [
            f"| {lc.name} | {'x'.join(map(str, lc.shape))} | {lc.sparsity:.3f} | {lc.estimator} | "
            f"{lc.label} | {lc.budget:.4g} | {100 * lc.certified_fraction:.2f} % | "
            f"{float(np.max(lc.realised)):.4g} | {lc.flips}/{lc.n_samples} |"
            for lc in self.layers
        ]
        tot = (
            f"| **total (D11)** | | | {'+'.join(sorted(set(self.estimators)))} | "
            f"{self.label} | {self.budget_total:.4g} | "
            f"{100 * self.certified_fraction:.2f} % | "
            f"{float(np.max(self.realised_total)) if self.realised_total.size else 0.0:.4g} | "
            f"{self.flips}/{self.eta_total.size} |"
        )
        return head + "\n".join(rows + [tot]) + "\n"
