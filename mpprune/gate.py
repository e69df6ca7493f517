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

This module holds :class:`Gate` (its settings, rules, the per-layer scope and the back-off); the verdicts
:class:`GateLayer` and :class:`GateResult` live in :mod:`mpprune.gate_result` and the model-scope margin
allocation (:func:`allocate_shares` and steps 1-3) in :mod:`mpprune.gate_allocation`; all are importable
from here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight
from mpprune.certify.chain import certify, changed_layers, model_order
from mpprune.certify.estimators import certify_layer, resolve_estimator
from mpprune.certify.report import CertificateReport, LayerCertificate
from mpprune.gate_allocation import allocate_shares, apply_model_scope
from mpprune.gate_result import LAYER_SCOPE_NOTE, GateLayer, GateResult, PrunedLayer, set_weight
from mpprune.masks import MaskStore, parse_kn
from mptheory.errors import BadInput
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS

__all__ = ["SCOPES", "Gate", "GateLayer", "GateResult", "allocate_shares"]

#: the gate's scopes: the shipped model (D11 chain) or each layer alone in the dense model
SCOPES = ("model", "layer")


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

    Both scopes: a layer whose masks declare a k:n pattern (``MaskStore.declare``, as ``NM`` does) is
    backed off through the denser patterns ``kk:n`` of the same group size (bisection over kk; each group
    keeps its kept entries and gets back its largest removed dense ``|w|``) or left dense, never to an
    unstructured mask; the gated masks declare the pattern the written weight keeps (``GateLayer.pattern``).

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
    def tag(cert: LayerCertificate) -> str:
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
            return False, f"{rule}: B_T(R) term {lhs:.4g} >= lambda penalty {rhs:.4g} {self.tag(cert)}"
        return True, f"; {rule}: {lhs:.4g} < {rhs:.4g}"

    def check(self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor) -> tuple[bool, str]:
        """The per-layer rule (``scope="layer"``) on one layer certificate: (ok, explanation with numbers)."""
        tag = self.tag(cert)
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
        tag = self.tag(cert)
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
        layers: list[PrunedLayer] = []
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
            declared = masks.pattern(n) if masks is not None and n in masks else None
            pattern = None
            if declared is not None:
                k, g = parse_kn(declared[0])
                pattern = (k, g, declared[1])
            layers.append(PrunedLayer(n, Wd, Wp, order, float((Wp == 0).sum()) / Wp.numel(), pattern))
        bar = tqdm(total=2 * len(layers), desc=f"gate (scope={self.scope})", unit="cert", leave=False,
                   disable=None if self.progress is None else not self.progress)  # fmt: skip
        try:
            if self.scope == "layer":
                verdicts, report = self._apply_layer(original, layers, calibration, gmods, model, bar)
            else:
                verdicts, report = apply_model_scope(self, original, layers, calibration, gmods, model, bar)
        finally:
            bar.close()
        out_masks = MaskStore()
        for n in names:
            if n in gmods:
                out_masks.add(n, gmods[n], layer_weight(gmods[n]).detach() != 0)
        for ly, v in zip(layers, verdicts, strict=True):  # k:n layers keep a declared pattern
            if ly.pattern is not None and v.status != "left_dense":
                if v.pattern is None:  # passed at the requested pattern
                    v.pattern = f"{ly.pattern[0]}:{ly.pattern[1]}"
                out_masks.declare(ly.name, v.pattern, ly.pattern[2])
        return GateResult(
            model=model,
            masks=out_masks,
            layers=verdicts,
            report=report,
            rules=self.to_dict(),
            scope=self.scope,
        )

    # -- scope="layer" -----------------------------------------------------------------------------
    def _apply_layer(
        self,
        original: nn.Module,
        layers: list[PrunedLayer],
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
            v.reason = f"{v.reason} ({LAYER_SCOPE_NOTE})"
        return verdicts, report

    def _gate_layer(
        self, original: nn.Module, ly: PrunedLayer, calibration: Any, target: nn.Module
    ) -> GateLayer:
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
        return self.backoff_layer(ly, evaluate, why, cert0, target)

    def backoff_layer(
        self, ly: PrunedLayer, evaluate: Any, why: str, cert0: LayerCertificate | None, target: nn.Module
    ) -> GateLayer:
        """Bisect the number of restored weights (or go dense); write the final weight into ``target``. A
        layer with a declared k:n pattern is bisected over the denser patterns kk:n instead."""
        if ly.pattern is not None:
            return self._backoff_kn(ly, evaluate, why, cert0, target)
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
        set_weight(target, W_final)
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

    def _backoff_kn(
        self, ly: PrunedLayer, evaluate: Any, why: str, cert0: LayerCertificate | None, target: nn.Module
    ) -> GateLayer:
        """Back off a k:n layer by bisection over the denser patterns kk:n (k < kk < n; n = dense), so that
        what is written keeps a pattern a sparse kernel can run; ``backoff="dense"`` goes dense at once."""
        assert ly.pattern is not None
        k, n, _ = ly.pattern
        final_kk, final_cert, final_why = n, None, ""
        if self.backoff == "bisect":
            lo, hi = k, n
            for _ in range(int(self.max_bisect)):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                okm, whym, cm = evaluate(ly.kn_candidate(mid)[0])
                if okm:
                    hi, final_kk, final_cert, final_why = mid, mid, cm, whym
                else:
                    lo = mid
        W_final, restored = ly.kn_candidate(final_kk)
        set_weight(target, W_final)
        sp = float((W_final == 0).sum()) / W_final.numel()
        if final_kk >= n:
            return GateLayer(ly.name, "left_dense", ly.requested, sp, restored,
                             f"{why}; no denser {k + 1}..{n - 1}:{n} pattern passed: left dense "
                             f"(backoff={self.backoff})", None, cert0)  # fmt: skip
        return GateLayer(
            ly.name,
            "backed_off",
            ly.requested,
            sp,
            restored,
            f"{why}; backed off from {k}:{n} to the pattern {final_kk}:{n} ({restored} weights restored, "
            f"sparsity {sp:.4f}): {final_why}",
            final_cert,
            cert0,
            pattern=f"{final_kk}:{n}",
        )
