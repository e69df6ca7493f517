"""The L_s estimators of the certificate engine, and :func:`certify_layer`.

For one layer ``A = S + R`` the engine needs, per calibration sample, ``eta_s = L_s ||R psi_1(s)||_inf``
where L_s bounds the tail along the segment ``A_theta = S + theta R``, theta in [0, 1]. The estimator names
and whether each is sound come from the one registry :data:`mptheory.lipschitz.ESTIMATORS`; this engine
implements three of them on real models (:data:`ENGINE_ESTIMATORS`):

* ``"pl_exact"`` (sound; default when the tail is piecewise linear): along ``A_theta`` the logits are
  piecewise linear in theta. The model is run in float64 with forward-mode AD (the tangent is the R-part of
  the layer output); the tail trace (:mod:`mpprune.certify.trace`) computes from the exact primal and
  tangent the distance to the nearest ReLU / LeakyReLU / Hardtanh switch and MaxPool argmax switch on both
  sides, and the segment [0, 1] is covered piece by piece (probing each piece at an interior point).
  ``eta_s = max_pieces ||dz/dtheta||_inf`` exactly (pieces shorter than ``tol`` = 1e-9 in theta are not
  probed). Cost: all samples of a batch advance in lockstep (one batched probe covers one piece of every
  unfinished sample, so a batch needs max-over-samples pieces probes, not the sum), and a probe runs only
  the tail (:class:`~mpprune.certify.segment.Segment` replays the cached prefix). Any op that is not affine
  or one of those switches (GELU, LayerNorm, softmax, ...) makes the tail non-PL
  (:class:`NotPiecewiseLinear`), and ``"auto"`` falls back to ``"segment_max_slope"``.
* ``"segment_max_slope"`` (ESTIMATE, ``sound=False``): the largest ``||dz/dtheta||_inf`` on a 20-point theta
  grid.
* ``"product_norm"`` (sound for sequential tails): the product of induced inf-norms of the ops the tangent
  passes through (Linear/Conv/BatchNorm/scalings; ReLU, max/avg pooling and reshapes count 1), times
  ``||R psi_1(s)||_inf``. Tails in which two tangent-carrying tensors meet (residual adds, concatenations)
  are refused (:class:`~mptheory.errors.Refusal`).

``"auto"`` tries ``pl_exact`` with at most :data:`AUTO_MAX_PROBES` probes per batch and falls back to the
labelled ``segment_max_slope`` ESTIMATE beyond it; the fallback and its reason are recorded in the
certificate's ``notes``. Every certificate carries the ``estimator`` used and whether it is ``sound``.

Errors: a probe budget exceeded is a computational limit (:class:`ProbeBudgetExceeded`, a
:class:`~mptheory.errors.LimitExceeded`), a tail the chosen estimator cannot bound a refusal
(:class:`NotPiecewiseLinear` and the product bound's refusal are :class:`~mptheory.errors.Refusal`), wrong
input (an unknown estimator or layer, a pruned weight of the wrong shape, NaN) is
:class:`~mptheory.errors.BadInput`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight, module_by_name
from mpprune.certify.report import LayerCertificate
from mpprune.certify.segment import Segment
from mptheory.certificates import certified_samples, prediction_margin
from mptheory.errors import BadInput, LimitExceeded, Refusal
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS

__all__ = [
    "AUTO_MAX_PROBES",
    "ENGINE_ESTIMATORS",
    "ESTIMATORS",
    "NotPiecewiseLinear",
    "ProbeBudgetExceeded",
    "certify_layer",
    "resolve_estimator",
]

# "auto" tries the exact piecewise-linear bound with at most this many probes (linear pieces) per batch and
# falls back to the labelled segment_max_slope ESTIMATE beyond it (e.g. the first conv of a CNN, whose
# tail switches ~2,000 ReLU/max states per sample). An explicit estimator="pl_exact" uses max_probes.
AUTO_MAX_PROBES = 1000


class ProbeBudgetExceeded(LimitExceeded):
    """``pl_exact`` needed more probes (linear pieces) than its budget allows (a computational limit)."""


class NotPiecewiseLinear(Refusal):
    """The tail after a layer contains an op that is not affine / a supported PL switch."""


# -- eta of one bound batch, per estimator -------------------------------------------------------------
# Each takes the segment (bound to the batch ``x``), the batch and ||R psi_1(s)||_inf, and returns
# (eta per sample, pieces per sample or None).

_EtaFn = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def _pl_exact(
    seg: Segment, x: torch.Tensor, nr: np.ndarray, *, tol: float, max_probes: int, **unused: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Exact max slope over the linear pieces of theta -> z(theta) on [0, 1]; returns (eta, n_pieces).

    All samples advance in lockstep: every probe is one batched forward-AD run of the tail in which each
    unfinished sample sits at the midpoint of one of its uncovered theta-gaps; the run gives, per sample,
    the slope on the piece containing that point and the distances to the nearest switch on both sides,
    i.e. the whole piece. The number of probes is the largest piece count in the batch. Samples that are
    done ride along (their results are ignored) until fewer than half of the bound batch is left; then the
    batch is re-bound to the unfinished samples.
    """
    B = x.shape[0]
    stacks: list[list[tuple[float, float]]] = [[(0.0, 1.0)] for _ in range(B)]
    best = np.zeros(B)
    pieces = np.zeros(B, dtype=np.int64)
    bound = np.arange(B)
    if seg.x is None or seg.x.shape[0] != B:
        seg.bind(x)
    probes = 0
    while True:
        live = np.array([bool(stacks[i]) for i in bound])
        if not live.any():
            break
        if 2 * int(live.sum()) <= len(bound) and len(bound) > 1:
            bound = bound[live]
            seg.bind(x[torch.as_tensor(bound)])
            live = np.ones(len(bound), dtype=bool)
        probes += 1
        if probes > max_probes:
            raise ProbeBudgetExceeded(
                f"layer {seg.name!r}: pl_exact needs more than max_probes={max_probes} probes per batch"
            )
        a = np.full(len(bound), 0.5)
        b = np.full(len(bound), 0.5)
        for k in np.flatnonzero(live):
            a[k], b[k] = stacks[bound[k]].pop()
        m = 0.5 * (a + b)
        sl, trace = seg.slope(m, breakpoints=True)
        if trace.non_pl:
            raise NotPiecewiseLinear(
                f"layer {seg.name!r}: tail is not piecewise linear: {sorted(trace.non_pl)}"
            )
        lo = np.maximum(a, m - trace.bwd.numpy())
        hi = np.minimum(b, m + trace.fwd.numpy())
        s = sl.numpy()
        for k in np.flatnonzero(live):
            i = bound[k]
            best[i] = max(best[i], s[k])
            pieces[i] += 1
            if lo[k] - a[k] > tol:
                stacks[i].append((a[k], lo[k]))
            if b[k] - hi[k] > tol:
                stacks[i].append((hi[k], b[k]))
    return best, pieces


def _segment_max_slope(
    seg: Segment, x: torch.Tensor, nr: np.ndarray, *, n_theta: int, **unused: Any
) -> tuple[np.ndarray, None]:
    """ESTIMATE: the largest ``||dz/dtheta||_inf`` on an ``n_theta``-point grid of [0, 1]."""
    B = x.shape[0]
    best = np.zeros(B)
    if seg.x is None or seg.x.shape[0] != B:  # pl_exact may have re-bound a subset
        seg.bind(x)
    for th in np.linspace(0.0, 1.0, int(n_theta)):
        sl, _ = seg.slope(np.full(B, th), breakpoints=False)
        best = np.maximum(best, sl.numpy())
    return best, None


def _product_norm(seg: Segment, x: torch.Tensor, nr: np.ndarray, **unused: Any) -> tuple[np.ndarray, None]:
    """Sound for a sequential tail: ``prod_ops ||op||_inf * ||R psi_1(s)||_inf``; other tails are refused.

    ``eta_s`` is the streaming product ``L ||layer_R(psi_1(s))||_inf`` rather than
    :func:`mptheory.certificates.eta`, which takes ``psi_1`` and ``R`` as matrices (a Linear layer on
    ``(B, n)`` inputs): the norm here is the max over every output coordinate of a conv or token layer.
    """
    _, trace = seg.slope(np.full(x.shape[0], 0.5), breakpoints=False)
    if trace.non_seq or trace.non_pl:
        raise Refusal(
            f"layer {seg.name!r}: product_norm needs a sequential tail of affine maps and 1-Lipschitz "
            f"activations; found {sorted(trace.non_seq | trace.non_pl)}"
        )
    return math.exp(trace.log_norm) * nr, None


# The estimators this engine implements, by their names in mptheory.lipschitz.ESTIMATORS.
_ENGINE: dict[str, _EtaFn] = {
    "pl_exact": _pl_exact,
    "segment_max_slope": _segment_max_slope,
    "product_norm": _product_norm,
}
_unknown = sorted(set(_ENGINE) - set(LIPSCHITZ_ESTIMATORS))
if _unknown:  # pragma: no cover - a guard on the registries, checked at import
    raise ImportError(f"mpprune.certify estimators {_unknown} are not in mptheory.lipschitz.ESTIMATORS")

#: The names of the estimators the engine implements (a subset of :data:`mptheory.lipschitz.ESTIMATORS`).
ENGINE_ESTIMATORS: tuple[str, ...] = tuple(_ENGINE)
#: The choices of ``estimator=`` (and of the CLI): ``"auto"`` and every engine estimator.
ESTIMATORS: tuple[str, ...] = ("auto", *ENGINE_ESTIMATORS)


def resolve_estimator(estimator: str) -> str:
    """``estimator`` if it is one of :data:`ESTIMATORS`, else BadInput."""
    if estimator not in ESTIMATORS:
        raise BadInput(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return estimator


def certify_layer(
    model_dense: nn.Module,
    name: str,
    pruned_weight: torch.Tensor,
    calibration: Any,
    estimator: str = "auto",
    *,
    n_theta: int = 20,
    tol: float = 1e-9,
    max_probes: int = 20_000,
) -> LayerCertificate:
    """Certificate of replacing the weight of layer ``name`` of ``model_dense`` by ``pruned_weight``.

    ``R = W_dense - pruned_weight``; ``psi_1`` and the tail are those of ``model_dense``. Streams over the
    calibration batches, keeping per-sample scalars only. ``estimator``: one of :data:`ESTIMATORS`.
    """
    est = resolve_estimator(estimator)
    calibration = materialise(calibration)
    _, mod = module_by_name(model_dense, name)
    W = layer_weight(mod).detach()
    if tuple(pruned_weight.shape) != tuple(W.shape):
        raise BadInput(
            f"layer {name!r}: pruned weight shape {tuple(pruned_weight.shape)} != "
            f"weight shape {tuple(W.shape)}"
        )
    if not bool(torch.isfinite(pruned_weight).all()):
        raise BadInput(f"layer {name!r}: pruned weight of shape {tuple(W.shape)} contains NaN/Inf")
    Wd = W.double().cpu()
    S = pruned_weight.detach().double().cpu()
    R = Wd - S
    seg = Segment(model_dense, name, S, R)
    opts: dict[str, Any] = {"n_theta": n_theta, "tol": tol}
    notes: list[str] = []
    used = est
    etas, Ls, norms, margins, certified, real, flips, npieces = [], [], [], [], [], [], [], []
    for x, _ in iter_calibration(calibration):
        z1 = seg.bind(x)
        nr = seg.removed.numpy().astype(np.float64) if seg.removed is not None else np.zeros(x.shape[0])
        z0 = seg.logits(0.0)
        B = x.shape[0]
        pieces = None
        if used in ("auto", "pl_exact"):
            budget = max_probes if est == "pl_exact" else min(max_probes, AUTO_MAX_PROBES)
            try:
                eta_b, pieces = _ENGINE["pl_exact"](seg, x, nr, **opts, max_probes=budget)
                used = "pl_exact"
            except (NotPiecewiseLinear, ProbeBudgetExceeded) as e:
                if est == "pl_exact":
                    raise
                # Any batch already certified exactly keeps its (sound) values; the layer as a whole is
                # labelled with the weaker estimator.
                used = "segment_max_slope"
                notes.append(f"auto: {e}; fell back to the segment_max_slope ESTIMATE")
        if used != "pl_exact":
            eta_b, _ = _ENGINE[used](seg, x, nr, **opts, max_probes=max_probes)
        eta_b = np.asarray(eta_b, dtype=np.float64)
        etas.append(eta_b)
        Ls.append(np.divide(eta_b, nr, out=np.zeros(B), where=nr > 0))
        norms.append(nr)
        zd = z1.numpy()
        margins.append(prediction_margin(zd))
        certified.append(certified_samples(zd, eta_b))
        real.append((z0 - z1).abs().amax(dim=1).numpy())
        flips.append((z0.argmax(1) != z1.argmax(1)).numpy())
        if pieces is not None:
            npieces.append(pieces)
    zeros = int((S == 0).sum().item())
    disjoint = bool(((S != 0) & (R != 0)).sum().item() == 0)
    return LayerCertificate(
        name=name,
        shape=tuple(W.shape),
        sparsity=zeros / S.numel(),
        estimator=used,
        sound=LIPSCHITZ_ESTIMATORS[used].sound,
        eta=np.concatenate(etas),
        L=np.concatenate(Ls),
        removed_norm=np.concatenate(norms),
        margin=np.concatenate(margins),
        certified=np.concatenate(certified),
        realised=np.concatenate(real),
        flipped=np.concatenate(flips),
        r_fro2=float((R**2).sum()),
        r_l1=float(R.abs().sum()),
        is_mask=disjoint,
        pieces=np.concatenate(npieces) if npieces and used == "pl_exact" else None,
        notes=notes,
    )
