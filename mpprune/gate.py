"""The gate: hard rules on the certificate of a pruned model, applied before the model is written.

A :class:`Gate` certifies every pruned layer (:func:`mpprune.certify.certify_layer`, each layer alone in the
dense model) and applies its rules (DESIGN, "The certificate"): certified fraction >= ``min_certified`` and,
optionally, the elastic-net decrease rule of digest D5 (D4 when S and R overlap). A layer that fails is
backed off (fewer weights removed) or left dense, and the verdict says why with the numbers
(:class:`GateLayer`). :meth:`Gate.apply` returns the gated model, its masks, the verdicts and the
certificate of the gated model with the D11 total (:class:`GateResult`).

Wrong settings and wrong calibration data are :class:`~mptheory.errors.BadInput`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight
from mpprune.certify.chain import certify, changed_layers
from mpprune.certify.estimators import certify_layer, resolve_estimator
from mpprune.certify.report import CertificateReport, LayerCertificate
from mpprune.masks import MaskStore
from mptheory.errors import BadInput

__all__ = ["Gate", "GateLayer", "GateResult"]


@dataclass
class GateLayer:
    """The gate's verdict on one layer: ``status`` is ``"passed"``, ``"backed_off"`` or ``"left_dense"``."""

    name: str
    status: str
    sparsity_requested: float
    sparsity_final: float
    restored: int
    reason: str
    certificate: LayerCertificate | None = field(default=None, repr=False)
    initial: LayerCertificate | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sparsity_requested": self.sparsity_requested,
            "sparsity_final": self.sparsity_final,
            "restored": self.restored,
            "reason": self.reason,
            "certificate": self.certificate.to_dict() if self.certificate is not None else None,
            "initial_certificate": self.initial.to_dict() if self.initial is not None else None,
        }


@dataclass
class GateResult:
    """``model`` and ``masks`` after the gate; ``layers`` the per-layer verdicts; ``report`` the certificate
    of the gated model (per layer and D11 totals)."""

    model: nn.Module
    masks: MaskStore
    layers: list[GateLayer]
    report: CertificateReport | None
    rules: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(gl.status == "passed" for gl in self.layers)

    def layer(self, name: str) -> GateLayer:
        for gl in self.layers:
            if gl.name == name:
                return gl
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": dict(self.rules),
            "layers": [gl.to_dict() for gl in self.layers],
            "certificate": self.report.to_dict() if self.report is not None else None,
        }

    def to_markdown(self) -> str:
        lines = ["| layer | verdict | sparsity requested | sparsity final | why |", "|---|---|---|---|---|"]
        for gl in self.layers:
            lines.append(
                f"| {gl.name} | {gl.status} | {gl.sparsity_requested:.3f} | "
                f"{gl.sparsity_final:.3f} | {gl.reason} |"
            )
        out = "\n".join(lines) + "\n"
        if self.report is not None:
            out += "\n" + self.report.to_markdown()
        return out


@dataclass
class Gate:
    """Hard rules applied before a pruned model is written (DESIGN "The certificate").

    Per pruned layer (each certified alone in the dense model): certified fraction >= ``min_certified``;
    if ``elastic_net`` is ``(lambda1, lambda2)`` or ``"weight_decay"`` (lambda2 = weight_decay / 2,
    lambda1 = 0) also the D5 decrease rule ``B_T(R) < lambda2 ||R||_F^2 + lambda1 ||R||_1`` (for non-mask
    decompositions the D4 rule ``B_T + 2 lambda2 |<S,R>| < lambda2 ||R||_F^2``, lambda1 must be 0).
    A failing layer is backed off by bisection on the number of removed weights restored (largest dense
    ``|w|`` first; at most ``max_bisect`` steps, final choice always re-verified) or left dense
    (``backoff="dense"``). Rules are only meaningful with a sound estimator; an estimate is labelled.
    """

    min_certified: float = 0.99
    elastic_net: None | tuple[float, float] | str = None
    weight_decay: float | None = None
    backoff: str = "bisect"
    max_bisect: int = 6
    estimator: str = "auto"
    n_theta: int = 20
    final_report: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.min_certified, (int, float)) and 0.0 <= float(self.min_certified) <= 1.0):
            raise BadInput(f"min_certified must lie in [0, 1], got {self.min_certified!r}")
        if self.backoff not in ("bisect", "dense"):
            raise BadInput(f"backoff must be 'bisect' or 'dense', got {self.backoff!r}")
        if int(self.max_bisect) < 1:
            raise BadInput(f"max_bisect must be >= 1, got {self.max_bisect}")
        resolve_estimator(self.estimator)
        self.lambdas()

    def lambdas(self) -> tuple[float, float] | None:
        """``(lambda1, lambda2)`` of the elastic-net rule, or None when the rule is off."""
        en = self.elastic_net
        if en is None:
            return None
        if isinstance(en, str):
            if en != "weight_decay":
                raise BadInput(
                    f"elastic_net must be None, (lambda1, lambda2) or 'weight_decay', got {en!r}"
                )
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
            "elastic_net": list(self.elastic_net)
            if isinstance(self.elastic_net, tuple)
            else self.elastic_net,
            "weight_decay": self.weight_decay,
            "lambdas": list(lam) if (lam := self.lambdas()) is not None else None,
            "backoff": self.backoff,
            "max_bisect": self.max_bisect,
            "estimator": self.estimator,
        }

    def check(self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor) -> tuple[bool, str]:
        """Apply the rules to one layer certificate; returns (ok, explanation with the numbers)."""
        tag = f"[{cert.estimator}{'' if cert.sound else ', ESTIMATE'}]"
        cf = cert.certified_fraction
        if cf < self.min_certified:
            return False, f"certified fraction {cf:.4f} < min_certified {self.min_certified} {tag}"
        why = f"certified fraction {cf:.4f} >= {self.min_certified} {tag}"
        lam = self.lambdas()
        if lam is not None and cert.r_fro2 > 0:
            l1, l2 = lam
            if cert.is_mask:
                rhs = l2 * cert.r_fro2 + l1 * cert.r_l1
                rule = "D5"
                lhs = cert.budget
            else:
                if l1 > 0:
                    raise BadInput(
                        f"layer {cert.name!r}: S and R overlap (not a mask split): only the D4 rule with "
                        "lambda1 = 0 applies"
                    )
                sr = float((S.double() * R.double()).sum())
                lhs, rhs, rule = cert.budget + 2 * l2 * abs(sr), l2 * cert.r_fro2, "D4"
            if not lhs < rhs:
                return False, f"{rule}: B_T(R) term {lhs:.4g} >= lambda penalty {rhs:.4g} {tag}"
            why += f"; {rule}: {lhs:.4g} < {rhs:.4g}"
        return True, why

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
        verdicts: list[GateLayer] = []
        for n in names:
            if n not in omods or n not in gmods:
                raise BadInput(f"gate: layer {n!r} missing from the original or pruned model")
            Wd = layer_weight(omods[n]).detach().double().cpu()
            Wp = layer_weight(gmods[n]).detach().double().cpu()
            if tuple(Wd.shape) != tuple(Wp.shape):
                raise BadInput(f"gate: layer {n!r} shape {tuple(Wd.shape)} vs {tuple(Wp.shape)}")
            requested = float((Wp == 0).sum()) / Wp.numel()
            removed = (Wd != Wp).reshape(-1)
            if not bool(removed.any()):
                continue
            verdicts.append(self._gate_layer(original, n, Wd, Wp, removed, requested, calibration, gmods[n]))
        out_masks = MaskStore()
        for n in names:
            if n in gmods:
                out_masks.add(n, gmods[n], layer_weight(gmods[n]).detach() != 0)
        report = None
        if self.final_report and verdicts:
            report = (
                certify(
                    original,
                    model,
                    calibration,
                    [v.name for v in verdicts if v.status != "left_dense"] or None,
                    self.estimator,
                    n_theta=self.n_theta,
                )
                if any(v.status != "left_dense" for v in verdicts)
                else None
            )
        rules = self.to_dict()
        return GateResult(model=model, masks=out_masks, layers=verdicts, report=report, rules=rules)

    def _gate_layer(
        self,
        original: nn.Module,
        name: str,
        Wd: torch.Tensor,
        Wp: torch.Tensor,
        removed: torch.Tensor,
        requested: float,
        calibration: Any,
        target: nn.Module,
    ) -> GateLayer:
        def candidate(k: int) -> torch.Tensor:
            flat = Wp.reshape(-1).clone()
            if k > 0:
                flat[order[:k]] = Wd.reshape(-1)[order[:k]]
            return flat.reshape(Wp.shape)

        def evaluate(W: torch.Tensor) -> tuple[bool, str, LayerCertificate]:
            c = certify_layer(original, name, W, calibration, self.estimator, n_theta=self.n_theta)
            ok, why = self.check(c, W, Wd - W)
            return ok, why, c

        idx = torch.nonzero(removed).reshape(-1)
        mags = Wd.reshape(-1)[idx].abs()
        order = idx[torch.argsort(mags, descending=True, stable=True)]
        n_rem = int(order.numel())
        ok, why, cert0 = evaluate(Wp)
        if ok:
            return GateLayer(name, "passed", requested, requested, 0, why, cert0, cert0)
        final_k, final_cert, final_why = n_rem, None, ""
        if self.backoff == "bisect":
            lo, hi = 0, n_rem
            best: tuple[int, LayerCertificate, str] | None = None
            for _ in range(int(self.max_bisect)):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                okm, whym, cm = evaluate(candidate(mid))
                if okm:
                    hi, best = mid, (mid, cm, whym)
                else:
                    lo = mid
            if best is not None:
                final_k, final_cert, final_why = best
        W_final = candidate(final_k) if final_k < n_rem else Wd.clone()
        with torch.no_grad():
            layer_weight(target).copy_(W_final.to(layer_weight(target)))
        sp = float((W_final == 0).sum()) / W_final.numel()
        if final_k >= n_rem:
            return GateLayer(
                name,
                "left_dense",
                requested,
                sp,
                n_rem,
                f"{why}; left dense (backoff={self.backoff})",
                None,
                cert0,
            )
        return GateLayer(
            name,
            "backed_off",
            requested,
            sp,
            final_k,
            f"{why}; backed off to sparsity {sp:.4f} ({final_k} weights restored): {final_why}",
            final_cert,
            cert0,
        )
