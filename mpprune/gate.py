"""The gate: hard rules on the certificate of a pruned model, applied before the model is written.

A :class:`Gate` decides, per pruned layer, how much of the requested pruning to keep, and returns the gated
model, its masks, the per-layer verdicts (:class:`GateLayer`) and the certificate of the gated model
(:class:`GateResult`). Two scopes (DESIGN, "The certificate"):

* ``scope="model"`` (the default) gates on a sound certificate of the model it **writes**: the D11 chain, in
  which layer j is certified in the network whose earlier layers are already pruned, so that the sum of the
  per-layer bounds bounds the change of the shipped model's logits. The margin of every sample is
  allocated across the layers and the layers that spend most of it are backed off (:class:`Gate` says how).
* ``scope="layer"`` keeps the per-layer rule: each layer certified *alone in the dense model*. This does NOT
  certify the shipped model (the layers' effects add up), and every report of it says so.

Both report the per-layer and the whole-model certified fraction and the realised flips, and every line says
``sound`` or ``ESTIMATE``. Wrong settings and wrong calibration data are :class:`~mptheory.errors.BadInput`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight
from mpprune.certify.chain import (
    certify,
    certify_step,
    chain_report,
    changed_layers,
    dense_logits,
    model_order,
)
from mpprune.certify.estimators import certify_layer, resolve_estimator
from mpprune.certify.report import CHAIN, CertificateReport, LayerCertificate, soundness_label
from mpprune.masks import MaskStore
from mptheory.certificates import prediction_margin
from mptheory.errors import BadInput
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS

__all__ = ["SCOPES", "Gate", "GateLayer", "GateResult", "allocate_shares"]

#: the gate's scopes: the shipped model (D11 chain) or each layer alone in the dense model
SCOPES = ("model", "layer")
_LAYER_SCOPE_NOTE = (
    "scope=layer: each layer was gated ALONE in the dense model; this does NOT certify the shipped model "
    "(see the whole-model total)"
)
# shares of the margin are floored at this fraction of the largest share (a layer never gets none)
_SHARE_FLOOR = 1e-3
# in the allocation, a sample decided below its allowance is refined on down to this fraction of it (or
# rel_tol of its slope), so that what it does not use flows on to the later layers
_FLOOR = 0.5
# in the first chain, a sample below its equal share is refined on down to this fraction of it: the spends
# that set the shares are then at most this much above the layers' real ones
_FIRST_FLOOR = 0.5
# a layer that keeps its requested sparsity gets this much more than it spent on its worst target sample
_HEADROOM = 1.05


def allocate_shares(spend: np.ndarray) -> np.ndarray:
    """Shares of the margin from the layers' spends (``max_{s in T} 2 eta_{j,s} / margin_s``), summing to 1.

    The layers that spend most are backed off: the top spenders, fewest first, are put in the set K until the
    others, each given ``_HEADROOM`` times its spend, leave K at least a twentieth of the margin; the others
    keep that (so they keep their sparsity), and K splits the rest in proportion to its spends. When even
    that fails, all layers share the margin in proportion to their spends. Every share is at least
    ``_SHARE_FLOOR`` of the largest."""
    spend = np.asarray(spend, dtype=np.float64)
    top = float(spend.max()) if spend.size else 0.0
    if top <= 0:
        return np.full(spend.size, 1.0 / max(spend.size, 1))
    order = np.argsort(-spend, kind="stable")
    share = spend / spend.sum()
    for k in range(1, spend.size + 1):
        rest = np.ones(spend.size, dtype=bool)
        rest[order[:k]] = False
        kept = _HEADROOM * float(spend[rest].sum())
        if kept <= 0.95:
            share = np.where(rest, _HEADROOM * spend, (1.0 - kept) * spend / float(spend[~rest].sum()))
            break
    share = np.maximum(share, _SHARE_FLOOR * top)
    return share / share.sum()


@dataclass
class GateLayer:
    """The gate's verdict on one layer: ``status`` is ``"passed"``, ``"backed_off"`` or ``"left_dense"``.

    ``certificate``: the layer's final certificate (in the network ``certificate.network`` names),
    ``initial``: its certificate at the requested sparsity; ``share``: its share of the margin
    (``scope="model"`` after an allocation, else None)."""

    name: str
    status: str
    sparsity_requested: float
    sparsity_final: float
    restored: int
    reason: str
    certificate: LayerCertificate | None = field(default=None, repr=False)
    initial: LayerCertificate | None = field(default=None, repr=False)
    share: float | None = None

    @property
    def label(self) -> str:
        """``"sound"`` or ``"ESTIMATE"`` of the certificate the verdict rests on (``"sound"`` when the layer
        was left dense: an unpruned layer changes nothing)."""
        c = self.certificate if self.certificate is not None else None
        return soundness_label(True if c is None else c.sound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sparsity_requested": self.sparsity_requested,
            "sparsity_final": self.sparsity_final,
            "restored": self.restored,
            "reason": self.reason,
            "label": self.label,
            "share": self.share,
            "certificate": self.certificate.to_dict() if self.certificate is not None else None,
            "initial_certificate": self.initial.to_dict() if self.initial is not None else None,
        }


@dataclass
class GateResult:
    """``model`` and ``masks`` after the gate; ``layers`` the per-layer verdicts; ``report`` the certificate
    of the gated model: per layer and the whole-model D11 total with its realised flips (None when nothing
    stays pruned, or for ``scope="layer"`` with ``final_report=False``)."""

    model: nn.Module
    masks: MaskStore
    layers: list[GateLayer]
    report: CertificateReport | None
    rules: dict[str, Any]
    scope: str = "model"

    @property
    def passed(self) -> bool:
        """Every layer kept the requested pruning."""
        return all(gl.status == "passed" for gl in self.layers)

    @property
    def certified_fraction(self) -> float | None:
        """The whole-model certified fraction of the gated model (None without a report)."""
        return None if self.report is None else self.report.certified_fraction

    @property
    def flips(self) -> int | None:
        """Realised prediction flips of the gated model on the calibration set (None without a report)."""
        return None if self.report is None else self.report.flips

    @property
    def certifies_model(self) -> bool:
        """Whether the gated model carries a sound whole-model certificate meeting ``min_certified`` (a model
        with nothing pruned does; ``scope="layer"`` is judged on its final report, which it did not gate)."""
        if not any(gl.status != "left_dense" for gl in self.layers):
            return True
        if self.report is None:
            return False
        return self.report.sound and self.report.certified_fraction >= float(self.rules["min_certified"])

    def layer(self, name: str) -> GateLayer:
        for gl in self.layers:
            if gl.name == name:
                return gl
        raise KeyError(name)

    def summary_line(self) -> str:
        """One line: scope, whole-model certified fraction, realised flips, sound or ESTIMATE."""
        if self.report is None:
            whole = "no whole-model report"
        else:
            r = self.report
            whole = (
                f"whole model: {100 * r.certified_fraction:.2f} % certified ({r.label}), "
                f"{r.flips}/{r.n_samples} realised flips"
            )
        scope = (
            "scope=model: gated on the whole-model (D11) certificate of the shipped model"
            if self.scope == "model"
            else _LAYER_SCOPE_NOTE
        )
        return f"{scope}; {whole}"

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "rules": dict(self.rules),
            "scope": self.scope,
            "layers": [gl.to_dict() for gl in self.layers],
            "whole_model": {
                "certified_fraction": self.certified_fraction,
                "flips": self.flips,
                "n_samples": None if r is None else r.n_samples,
                "sound": None if r is None else r.sound,
                "label": None if r is None else r.label,
                "certifies_model": self.certifies_model,
                "summary": self.summary_line(),
            },
            "certificate": r.to_dict() if r is not None else None,
        }

    def to_markdown(self) -> str:
        lines = [
            self.summary_line(),
            "",
            "| layer | verdict | sparsity requested | sparsity final | certificate | why |",
            "|---|---|---|---|---|---|",
        ]
        for gl in self.layers:
            lines.append(
                f"| {gl.name} | {gl.status} | {gl.sparsity_requested:.3f} | "
                f"{gl.sparsity_final:.3f} | {gl.label} | {gl.reason} |"
            )
        out = "\n".join(lines) + "\n"
        if self.report is not None:
            out += "\n" + self.report.to_markdown()
        return out


@dataclass
class _Layer:
    """What the gate knows about one pruned layer: dense and requested weights, removed entries in the
    order they are restored (largest dense ``|w|`` first)."""

    name: str
    Wd: torch.Tensor
    Wp: torch.Tensor
    order: torch.Tensor
    requested: float

    @property
    def n_removed(self) -> int:
        return int(self.order.numel())

    def candidate(self, k: int) -> torch.Tensor:
        """The requested weight with the ``k`` largest removed entries restored (the dense weight at ``k =
        n_removed``)."""
        if k >= self.n_removed:
            return self.Wd.clone()
        flat = self.Wp.reshape(-1).clone()
        if k > 0:
            flat[self.order[:k]] = self.Wd.reshape(-1)[self.order[:k]]
        return flat.reshape(self.Wp.shape)


@dataclass
class Gate:
    """Hard rules applied before a pruned model is written (DESIGN "The certificate").

    **scope="model"** (default): the gated model's whole-model certificate must certify at least
    ``min_certified`` of the calibration samples, ``margin_s > 2 sum_j eta_{j,s}`` with eta_{j,s} from the D11
    chain (layer j in the network with the earlier layers pruned, in model order). The margin is allocated:

    1. *Chain at the requested sparsities.* Each layer is certified against an equal share
       ``margin_s / (2 M)`` of every sample's half margin (M pruned layers): the piecewise-linear search
       (:func:`~mpprune.certify.certify_step`) stops refining a sample once its bound is below half that
       share (or within ``rel_tol`` of its largest slope), or once an exact slope exceeds it. If the total
       certifies enough samples (and the other rules pass), every layer passes.
    2. *Targets and shares.* Otherwise the ``ceil(min_certified n)`` samples easiest to certify (largest
       ``margin_s / (2 sum_j eta_{j,s})``) become the target set T. Layer j spends ``max_{s in T} 2 eta_{j,s}
       / margin_s`` of the margin on its worst target sample; :func:`allocate_shares` turns the spends into
       shares ``a_j`` (summing to 1): the layers that spend least keep 1.05 times their spend, and the top
       spenders (as few as leave them a twentieth of the margin) split the rest in proportion to theirs.
    3. *Allowances, in model order.* Layer j may spend ``A_{j,s} = rest_{j,s} a_j / sum_{k >= j} a_k``, where
       ``rest_{j,s} = margin_s / 2 - sum_{k < j} eta_{k,s}`` is the half margin the final earlier layers left:
       what is left is split among the remaining layers in proportion to their shares, and what a layer does
       not use flows on. A
       layer passes if ``eta_{j,s} < A_{j,s}`` for every s in T (its bound refined down to half its
       allowance, so that the unused part flows on); otherwise it is backed off by bisection on
       the number of removed weights restored (largest dense ``|w|`` first; at most ``max_bisect`` steps,
       each a certificate against the allowances) or left dense (``backoff="dense"``, or when no step
       passes). Then ``sum_j eta_{j,s} < margin_s / 2`` on T: the shipped model is certified on at least
       ``min_certified`` of the samples.

    With ``estimator="auto"`` (or another sound one) a layer whose certificate is not sound (``auto``'s
    labelled fallback) fails its rule: the gate only ships what it can certify soundly. An explicitly chosen
    ESTIMATE gates on the estimate, and every line says ESTIMATE.

    **scope="layer"**: each layer alone in the dense model must have certified fraction >= ``min_certified``
    (bisected or left dense as above); the whole-model total of the result is reported (``final_report``)
    but not gated on, and every report says that this does not certify the shipped model.

    Both scopes: if ``elastic_net`` is ``(lambda1, lambda2)`` or ``"weight_decay"`` (lambda2 = weight_decay /
    2, lambda1 = 0) each layer must also meet the D5 decrease rule ``B_T(R) < lambda2 ||R||_F^2 + lambda1
    ||R||_1`` (D4 ``B_T + 2 lambda2 |<S,R>| < lambda2 ||R||_F^2`` for non-mask decompositions, lambda1 = 0);
    with ``scope="model"`` B_T is the layer's budget in the chain (D10). ``max_probes``: the probe budget of
    the piecewise-linear certificates per batch; ``rel_tol``: how close to the largest slope the model-scope
    search refines a sample its target does not decide; ``progress``: progress bars (None: only on a
    terminal).
    """

    min_certified: float = 0.99
    scope: str = "model"
    elastic_net: None | tuple[float, float] | str = None
    weight_decay: float | None = None
    backoff: str = "bisect"
    max_bisect: int = 6
    estimator: str = "auto"
    n_theta: int = 20
    final_report: bool = True
    max_probes: int = 20_000
    rel_tol: float = 0.25
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.min_certified, (int, float)) and 0.0 <= float(self.min_certified) <= 1.0):
            raise BadInput(f"min_certified must lie in [0, 1], got {self.min_certified!r}")
        if self.scope not in SCOPES:
            raise BadInput(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.backoff not in ("bisect", "dense"):
            raise BadInput(f"backoff must be 'bisect' or 'dense', got {self.backoff!r}")
        if int(self.max_bisect) < 1:
            raise BadInput(f"max_bisect must be >= 1, got {self.max_bisect}")
        if int(self.max_probes) < 1:
            raise BadInput(f"max_probes must be >= 1, got {self.max_probes}")
        if not (isinstance(self.rel_tol, (int, float)) and math.isfinite(self.rel_tol) and self.rel_tol >= 0):
            raise BadInput(f"rel_tol must be finite and >= 0, got {self.rel_tol!r}")
        resolve_estimator(self.estimator)
        self.lambdas()

    @property
    def needs_sound(self) -> bool:
        """Whether an unsound certificate fails a layer (``auto`` and the sound estimators)."""
        return self.estimator == "auto" or LIPSCHITZ_ESTIMATORS[self.estimator].sound

    def lambdas(self) -> tuple[float, float] | None:
        """``(lambda1, lambda2)`` of the elastic-net rule, or None when the rule is off."""
        en = self.elastic_net
        if en is None:
            return None
        if isinstance(en, str):
            if en != "weight_decay":
                raise BadInput(f"elastic_net must be None, (lambda1, lambda2) or 'weight_decay', got {en!r}")
            wd = self.weight_decay
            if wd is None or not math.isfinite(float(wd)) or float(wd) < 0:
                raise BadInput(f"elastic_net='weight_decay' needs weight_decay >= 0, got {wd!r}")
            return 0.0, float(wd) / 2.0
        if not isinstance(en, (tuple, list)) or len(en) != 2:
            raise BadInput(f"elastic_net must be a pair (lambda1, lambda2), got {en!r}")
        l1, l2 = float(en[0]), float(en[1])
        if not (math.isfinite(l1) and math.isfinite(l2) and l1 >= 0 and l2 >= 0):
            raise BadInput(f"elastic_net lambdas must be finite and >= 0, got {en!r}")
        return l1, l2

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_certified": self.min_certified,
            "scope": self.scope,
            "elastic_net": list(self.elastic_net)
            if isinstance(self.elastic_net, tuple)
            else self.elastic_net,
            "weight_decay": self.weight_decay,
            "lambdas": list(lam) if (lam := self.lambdas()) is not None else None,
            "backoff": self.backoff,
            "max_bisect": self.max_bisect,
            "estimator": self.estimator,
            "max_probes": self.max_probes,
            "rel_tol": self.rel_tol,
        }

    # -- rules -------------------------------------------------------------------------------------
    @staticmethod
    def _tag(cert: LayerCertificate) -> str:
        return f"[{cert.estimator}, {cert.label}]"

    def check_elastic_net(self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor) -> tuple[bool, str]:
        """The D5 (D4) decrease rule on one certificate; ``(True, "")`` when the rule is off."""
        lam = self.lambdas()
        if lam is None or cert.r_fro2 <= 0:
            return True, ""
        l1, l2 = lam
        if cert.is_mask:
            lhs, rhs, rule = cert.budget, l2 * cert.r_fro2 + l1 * cert.r_l1, "D5"
        else:
            if l1 > 0:
                raise BadInput(
                    f"layer {cert.name!r}: S and R overlap (not a mask split): only the D4 rule with "
                    "lambda1 = 0 applies"
                )
            sr = float((S.double() * R.double()).sum())
            lhs, rhs, rule = cert.budget + 2 * l2 * abs(sr), l2 * cert.r_fro2, "D4"
        if not lhs < rhs:
            return False, f"{rule}: B_T(R) term {lhs:.4g} >= lambda penalty {rhs:.4g} {self._tag(cert)}"
        return True, f"; {rule}: {lhs:.4g} < {rhs:.4g}"

    def check(self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor) -> tuple[bool, str]:
        """The per-layer rule (``scope="layer"``) on one layer certificate: (ok, explanation with numbers)."""
        tag = self._tag(cert)
        cf = cert.certified_fraction
        if cf < self.min_certified:
            return False, f"certified fraction {cf:.4f} < min_certified {self.min_certified} {tag}"
        why = f"certified fraction {cf:.4f} >= {self.min_certified} {tag}"
        ok, en = self.check_elastic_net(cert, S, R)
        return (True, why + en) if ok else (False, en)

    def check_allowance(
        self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor, allow: np.ndarray, targets: np.ndarray
    ) -> tuple[bool, str]:
        """The model-scope rule on one chain certificate: ``eta_s < allow_s`` on the target samples, a sound
        certificate (unless the gate's estimator is an estimate), and the elastic-net rule."""
        tag = self._tag(cert)
        if self.needs_sound and not cert.sound:
            return False, f"no sound certificate {tag}: {'; '.join(cert.notes) or 'estimate'}"
        over = cert.eta[targets] >= allow[targets]
        if bool(over.any()):
            return False, (
                f"spends more than its allowance on {int(over.sum())} of {int(targets.sum())} target samples "
                f"{tag}"
            )
        why = f"within its allowance on all {int(targets.sum())} target samples {tag}"
        ok, en = self.check_elastic_net(cert, S, R)
        return (True, why + en) if ok else (False, en)

    # -- apply -------------------------------------------------------------------------------------
    def apply(
        self, original: nn.Module, pruned: nn.Module, masks: MaskStore | None, calibration: Any
    ) -> GateResult:
        """Gate ``pruned`` (derived from ``original``): the gated model (a copy), masks and verdicts."""
        calibration = materialise(calibration)
        first = next(iter_calibration(calibration))  # raises on empty / NaN / val split
        del first
        model = copy.deepcopy(pruned)
        omods, gmods = dict(original.named_modules()), dict(model.named_modules())
        if masks is not None and len(masks) > 0:
            names = [n for n in masks]
        else:
            names = changed_layers(original, pruned, None)
        layers: list[_Layer] = []
        for n in model_order(original, names) if all(n in omods for n in names) else names:
            if n not in omods or n not in gmods:
                raise BadInput(f"gate: layer {n!r} missing from the original or pruned model")
            Wd = layer_weight(omods[n]).detach().double().cpu()
            Wp = layer_weight(gmods[n]).detach().double().cpu()
            if tuple(Wd.shape) != tuple(Wp.shape):
                raise BadInput(f"gate: layer {n!r} shape {tuple(Wd.shape)} vs {tuple(Wp.shape)}")
            removed = (Wd != Wp).reshape(-1)
            if not bool(removed.any()):
                continue
            idx = torch.nonzero(removed).reshape(-1)
            order = idx[torch.argsort(Wd.reshape(-1)[idx].abs(), descending=True, stable=True)]
            layers.append(_Layer(n, Wd, Wp, order, float((Wp == 0).sum()) / Wp.numel()))
        bar = tqdm(total=2 * len(layers), desc=f"gate (scope={self.scope})", unit="cert", leave=False,
                   disable=None if self.progress is None else not self.progress)  # fmt: skip
        try:
            if self.scope == "layer":
                verdicts, report = self._apply_layer(original, layers, calibration, gmods, model, bar)
            else:
                verdicts, report = self._apply_model(original, layers, calibration, gmods, model, bar)
        finally:
            bar.close()
        out_masks = MaskStore()
        for n in names:
            if n in gmods:
                out_masks.add(n, gmods[n], layer_weight(gmods[n]).detach() != 0)
        return GateResult(
            model=model,
            masks=out_masks,
            layers=verdicts,
            report=report,
            rules=self.to_dict(),
            scope=self.scope,
        )

    @staticmethod
    def _set(target: nn.Module, W: torch.Tensor) -> None:
        with torch.no_grad():
            layer_weight(target).copy_(W.to(layer_weight(target)))

    # -- scope="layer" -----------------------------------------------------------------------------
    def _apply_layer(
        self,
        original: nn.Module,
        layers: list[_Layer],
        calibration: Any,
        gmods: dict[str, nn.Module],
        model: nn.Module,
        bar: Any,
    ) -> tuple[list[GateLayer], CertificateReport | None]:
        verdicts = []
        for ly in layers:
            bar.set_postfix_str(f"{ly.name} alone", refresh=False)
            verdicts.append(self._gate_layer(original, ly, calibration, gmods[ly.name]))
            bar.update(2)
        report = None
        kept = [v.name for v in verdicts if v.status != "left_dense"]
        if self.final_report and kept:
            report = certify(original, model, calibration, kept, self.estimator, n_theta=self.n_theta,
                             progress=False)  # fmt: skip
        for v in verdicts:
            v.reason = f"{v.reason} ({_LAYER_SCOPE_NOTE})"
        return verdicts, report

    def _gate_layer(self, original: nn.Module, ly: _Layer, calibration: Any, target: nn.Module) -> GateLayer:
        def evaluate(W: torch.Tensor) -> tuple[bool, str, LayerCertificate]:
            c = certify_layer(
                original,
                ly.name,
                W,
                calibration,
                self.estimator,
                n_theta=self.n_theta,
                max_probes=self.max_probes,
            )
            ok, why = self.check(c, W, ly.Wd - W)
            return ok, why, c

        ok, why, cert0 = evaluate(ly.Wp)
        if ok:
            return GateLayer(ly.name, "passed", ly.requested, ly.requested, 0, why, cert0, cert0)
        return self._backoff(ly, evaluate, why, cert0, target)

    def _backoff(
        self, ly: _Layer, evaluate: Any, why: str, cert0: LayerCertificate | None, target: nn.Module
    ) -> GateLayer:
        """Bisect the number of restored weights (or go dense); write the final weight into ``target``."""
        n_rem = ly.n_removed
        final_k, final_cert, final_why = n_rem, None, ""
        if self.backoff == "bisect":
            lo, hi = 0, n_rem
            best: tuple[int, LayerCertificate, str] | None = None
            for _ in range(int(self.max_bisect)):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                okm, whym, cm = evaluate(ly.candidate(mid))
                if okm:
                    hi, best = mid, (mid, cm, whym)
                else:
                    lo = mid
            if best is not None:
                final_k, final_cert, final_why = best
        W_final = ly.candidate(final_k)
        self._set(target, W_final)
        sp = float((W_final == 0).sum()) / W_final.numel()
        if final_k >= n_rem:
            return GateLayer(ly.name, "left_dense", ly.requested, sp, n_rem,
                             f"{why}; left dense (backoff={self.backoff})", None, cert0)  # fmt: skip
        return GateLayer(
            ly.name,
            "backed_off",
            ly.requested,
            sp,
            final_k,
            f"{why}; backed off to sparsity {sp:.4f} ({final_k} weights restored): {final_why}",
            final_cert,
            cert0,
        )

    # -- scope="model" -----------------------------------------------------------------------------
    def _step(
        self,
        inter: nn.Module,
        name: str,
        W: torch.Tensor,
        calibration: Any,
        targets: np.ndarray,
        floor: float = 1.0,
    ) -> LayerCertificate:
        """Layer ``name`` in the intermediate network, decided against ``targets`` and refined down to
        ``floor`` times them."""
        return certify_step(
            inter, name, W, calibration, self.estimator, targets=targets, floors=floor * targets,
            rel_tol=self.rel_tol, n_theta=self.n_theta, max_probes=self.max_probes, network=CHAIN,
        )  # fmt: skip

    def _apply_model(
        self,
        original: nn.Module,
        layers: list[_Layer],
        calibration: Any,
        gmods: dict[str, nn.Module],
        model: nn.Module,
        bar: Any,
    ) -> tuple[list[GateLayer], CertificateReport | None]:
        if not layers:
            return [], None
        M = len(layers)
        inter = copy.deepcopy(original)
        imods = dict(inter.named_modules())
        # 1. the chain at the requested sparsities, each layer against an equal share of the margin
        margin = prediction_margin(dense_logits(original, calibration))
        first: list[LayerCertificate] = []
        for ly in layers:
            bar.set_postfix_str(f"{ly.name} (chain, requested)", refresh=False)
            first.append(self._step(inter, ly.name, ly.Wp, calibration, margin / (2 * M), _FIRST_FLOOR))
            self._set(imods[ly.name], ly.Wp)
            bar.update()
        n = margin.size
        need = math.ceil(float(self.min_certified) * n - 1e-9)
        total = np.sum([c.eta for c in first], axis=0)
        n_cert = int(np.sum(margin > 2 * total))
        rules = [self.check_elastic_net(c, ly.Wp, ly.Wd - ly.Wp) for c, ly in zip(first, layers, strict=True)]
        sound_ok = all(c.sound for c in first) or not self.needs_sound
        if n_cert >= need and all(ok for ok, _ in rules) and sound_ok:
            bar.update(bar.total - bar.n)
            head = f"whole model certified on {n_cert}/{n} >= min_certified {self.min_certified} as requested"
            passed = [
                GateLayer(
                    ly.name, "passed", ly.requested, ly.requested, 0, f"{head} {self._tag(c)}{en}", c, c
                )
                for ly, c, (_, en) in zip(layers, first, rules, strict=True)
            ]
            return passed, chain_report(original, model, first, calibration)
        # 2. the target samples and the shares
        with np.errstate(divide="ignore", invalid="ignore"):
            ease = np.where(total > 0, margin / (2 * total), np.inf)
        ease[margin <= 0] = -np.inf  # a tie in the dense model can never be certified
        targets = np.zeros(n, dtype=bool)
        targets[np.argsort(-ease, kind="stable")[:need]] = True
        if not bool(np.all(margin[targets] > 0)):
            why = (
                f"even the dense model certifies only {int(np.sum(margin > 0))}/{n} samples < min_certified "
                f"{self.min_certified}; left dense"
            )
            for ly in layers:
                self._set(gmods[ly.name], ly.Wd)
            bar.update(bar.total - bar.n)
            return [
                GateLayer(
                    ly.name,
                    "left_dense",
                    ly.requested,
                    float((ly.Wd == 0).sum()) / ly.Wd.numel(),
                    ly.n_removed,
                    why,
                    None,
                    c,
                )  # fmt: skip
                for ly, c in zip(layers, first, strict=True)
            ], None
        spend = np.array(
            [float(np.max(2 * c.eta[targets] / margin[targets])) if need else 0.0 for c in first]
        )
        share = allocate_shares(spend)
        # 3. allowances in model order; back off what does not fit
        head = (
            f"whole-model certified fraction {n_cert / n:.4f} < min_certified {self.min_certified} at the "
            "requested sparsities (or a rule failed)"
        )
        verdicts, chain = self._allocate(
            original, layers, calibration, gmods, first, margin, targets, share, bar, head
        )
        return verdicts, (chain_report(original, model, chain, calibration) if chain else None)

    def _allocate(
        self,
        original: nn.Module,
        layers: list[_Layer],
        calibration: Any,
        gmods: dict[str, nn.Module],
        first: list[LayerCertificate],
        margin: np.ndarray,
        targets: np.ndarray,
        share: np.ndarray,
        bar: Any,
        head: str,
    ) -> tuple[list[GateLayer], list[LayerCertificate]]:
        """Step 3 of the model-scope rule: each layer within its allowance, in model order (the class doc)."""
        inter = copy.deepcopy(original)
        imods = dict(inter.named_modules())
        rest = margin / 2.0
        unchanged = True  # the intermediate network is still the one of step 1
        verdicts: list[GateLayer] = []
        chain: list[LayerCertificate] = []
        for j, ly in enumerate(layers):
            bar.set_postfix_str(f"{ly.name} (allocation)", refresh=False)
            allow = rest * share[j] / float(share[j:].sum())
            tg = np.where(targets, allow, margin / (2 * len(layers)))

            def evaluate(
                W: torch.Tensor, ly: _Layer = ly, allow: np.ndarray = allow, tg: np.ndarray = tg
            ) -> Any:
                c = self._step(inter, ly.name, W, calibration, tg, _FLOOR)
                ok, why = self.check_allowance(c, W, ly.Wd - W, allow, targets)
                return ok, why, c

            ok, why, c0 = False, "", first[j]
            if unchanged:  # step 1's certificate may already fit the allowance
                ok, why = self.check_allowance(c0, ly.Wp, ly.Wd - ly.Wp, allow, targets)
            if not ok:
                ok, why, c0 = evaluate(ly.Wp)
            bar.update()
            why = f"{head}; share {share[j] / share.sum():.3f} of each margin: {why}"
            if ok:
                gl = GateLayer(ly.name, "passed", ly.requested, ly.requested, 0, why, c0, first[j])
            else:
                gl = self._backoff(ly, evaluate, why, first[j], gmods[ly.name])
                unchanged = False
            gl.share = float(share[j] / share.sum())
            verdicts.append(gl)
            self._set(imods[ly.name], layer_weight(gmods[ly.name]).detach())
            if gl.status != "left_dense" and gl.certificate is not None:
                chain.append(gl.certificate)
                rest = rest - gl.certificate.eta
        return verdicts, chain
