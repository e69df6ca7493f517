"""The L_s estimators of the certificate engine, and :func:`certify_layer`.

For one layer ``A = S + R`` the engine needs, per calibration sample, ``eta_s = L_s ||R psi_1(s)||_inf``
where L_s bounds the tail along the segment ``A_theta = S + theta R``, theta in [0, 1]. The estimator names
and whether each is sound come from the one registry :data:`mptheory.lipschitz.ESTIMATORS`; this engine
implements four of them on real models (:data:`ENGINE_ESTIMATORS`):

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
  (:class:`NotPiecewiseLinear`), and ``"auto"`` goes on to ``"taylor_bound"``.
* ``"taylor_bound"`` (sound; default when the tail is smooth): Taylor models in theta
  (:mod:`~mpprune.certify.taylor`, run through the model's own ``forward`` by
  :mod:`~mpprune.certify.taylor_tail`) bound ``sup ||dz/dtheta||_inf`` over a theta-interval, for tails with
  GELU, SiLU, sigmoid, tanh, softmax, LayerNorm, attention, residual adds and PL ops. Per sample it runs a
  **cascade** (branch and bound over [0, 1]): the bound on the whole segment first; a sample whose bound
  leaves its verdict open (``margin <= 2 eta``) has the sub-intervals that decide it split in two and
  bounded again (every sub-interval's bound is also capped by its parent's), and it stops as soon as the
  sample is *certified* (every piece bounded below ``margin / 2``) or *proven uncertifiable* (a lower bound
  -- the realised ``||z(1) - z(0)||_inf`` or the exact slope at a midpoint -- reaches ``margin / 2``). All
  open pieces of all samples are bounded together in batches. The budget (pieces no shorter than
  ``2^-max_depth``, at most ``max_evals`` piece evaluations per sample of a batch on average; a sample
  unbounded on a piece of width 2^-5 -- probed first when the whole segment is unbounded -- is not refined
  further) ends the refinement; a sample still open then keeps its sound bound (not certified) and the notes
  say how many.
  ``eta_s`` is always the largest bound over the final pieces: sound whatever the verdict.
* ``"segment_max_slope"`` (ESTIMATE, ``sound=False``): the largest ``||dz/dtheta||_inf`` on a 20-point theta
  grid.
* ``"product_norm"`` (sound for sequential tails): the product of induced inf-norms of the ops the tangent
  passes through (Linear/Conv/BatchNorm/scalings; ReLU, max/avg pooling and reshapes count 1), times
  ``||R psi_1(s)||_inf``. Tails in which two tangent-carrying tensors meet (residual adds, concatenations)
  are refused (:class:`~mptheory.errors.Refusal`).

``"auto"`` tries ``pl_exact`` with at most :data:`AUTO_MAX_PROBES` probes per batch; a tail that is not
piecewise linear (or that forward-mode AD cannot run) goes to ``taylor_bound``, and only a tail neither can
bound (an op without a Taylor rule, the layer applied twice) or a PL tail past the probe budget falls back to
the labelled ``segment_max_slope`` ESTIMATE; every step and its reason are recorded in the certificate's
``notes``. Every certificate carries the ``estimator`` used and whether it is ``sound``: ``auto`` never
reports an estimate as a certificate.

Errors: a probe budget exceeded is a computational limit (:class:`ProbeBudgetExceeded`, a
:class:`~mptheory.errors.LimitExceeded`), a tail the chosen estimator cannot bound a refusal
(:class:`NotPiecewiseLinear`, :class:`~mpprune.certify.taylor_mode.UnsupportedTailOp` and the product
bound's refusal are :class:`~mptheory.errors.Refusal`), wrong
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
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight, module_by_name
from mpprune.certify.report import LayerCertificate
from mpprune.certify.segment import Segment
from mpprune.certify.taylor_mode import UnsupportedTailOp
from mpprune.certify.taylor_tail import DEFAULT_ORDER, TaylorTail
from mptheory.certificates import certified_samples, prediction_margin
from mptheory.errors import BadInput, LimitExceeded, Refusal
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS

__all__ = [
    "AUTO_MAX_PROBES",
    "ENGINE_ESTIMATORS",
    "ESTIMATORS",
    "NotPiecewiseLinear",
    "ProbeBudgetExceeded",
    "TAYLOR_MAX_DEPTH",
    "TAYLOR_MAX_EVALS",
    "UnsupportedTailOp",
    "certify_layer",
    "resolve_estimator",
    "taylor_bound",
]

# "auto" tries the exact piecewise-linear bound with at most this many probes (linear pieces) per batch and
# falls back to the labelled segment_max_slope ESTIMATE beyond it (e.g. the first conv of a CNN, whose
# tail switches ~2,000 ReLU/max states per sample). An explicit estimator="pl_exact" uses max_probes.
AUTO_MAX_PROBES = 1000
# The refinement budget of taylor_bound: pieces of [0, 1] no shorter than 2^-TAYLOR_MAX_DEPTH, and at most
# TAYLOR_MAX_EVALS piece evaluations per sample of a batch on average (the first, whole-segment one included).
TAYLOR_MAX_DEPTH = 12
TAYLOR_MAX_EVALS = 64
# pieces split per open sample and round (the worst first)
_SPLITS_PER_ROUND = 4
# a sample whose bound is +inf on a piece of width 2^-_GIVE_UP_DEPTH is left open: such a blow-up is the
# rounding error amplified through a deep tail, which shorter pieces do not cure (measured on a 4-block ViT);
# a sample unbounded on the whole segment is first probed on one piece of that width around theta = 1/2
_GIVE_UP_DEPTH = 5


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


def taylor_bound(
    seg: Segment,
    x: torch.Tensor,
    nr: np.ndarray,
    *,
    margin: np.ndarray,
    realised: np.ndarray,
    order: int = DEFAULT_ORDER,
    max_depth: int = TAYLOR_MAX_DEPTH,
    max_evals: int = TAYLOR_MAX_EVALS,
    stop: bool = True,
    progress: bool | None = None,
    stats: dict[str, Any] | None = None,
    tail: TaylorTail | None = None,
    **unused: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Sound ``eta_s >= sup_theta ||dz/dtheta||_inf`` by the per-sample cascade; returns (eta, pieces).

    The cascade of the module docstring; ``pieces`` is the number of theta-pieces of each sample's final
    partition. ``stop=False`` is the full computation (every piece split down to ``2^-max_depth``, no early
    verdicts; used to check the cascade). ``stats`` (if given) accumulates the verdict counts and the work
    done. The segment is re-bound to subsets of ``x`` while refining and bound to ``x`` again at the end.
    """
    B = x.shape[0]
    if seg.x is None or seg.x.shape[0] != B:
        seg.bind(x)
    tail = tail if tail is not None else TaylorTail(seg, order)
    thr = np.asarray(margin, dtype=np.float64) / 2.0
    lower = np.asarray(realised, dtype=np.float64).copy()  # mean value theorem: a lower bound on the sup
    Leaf = tuple[float, float, float, int]  # (lo, hi, bound, depth)
    leaves: list[list[Leaf]] = [[] for _ in range(B)]
    status = np.zeros(B, dtype=np.int64)  # 0 open, 1 certified, 2 proven uncertifiable, 3 budget ended
    point = np.asarray(nr) <= 0  # R psi_1 = 0: the segment is a point and z does not move
    status[point] = 1
    # pieces to bound: (sample, lo, hi, bound of the parent piece, depth); depth -1 marks a probe (a short
    # piece that is not part of the partition: only its verdict "unbounded" and its midpoint slope are used)
    queue: list[tuple[int, float, float, float, int]] = [
        (int(i), 0.0, 1.0, math.inf, 0) for i in np.flatnonzero(~point)
    ]
    probed = np.zeros(B, dtype=np.int64)  # 0 not probed, 1 probe bounded, 2 probe unbounded
    w = 0.5**_GIVE_UP_DEPTH
    budget = max(int(max_evals), 1) * B
    evals = rounds = 0
    rebound = False
    bar = tqdm(total=B, desc=f"taylor_bound {seg.name}", unit="sample", leave=False,
               disable=None if progress is None else not progress)  # fmt: skip
    try:
        while queue:
            if evals > 0 and evals + len(queue) > budget:
                for i, a, b, parent, depth in queue:  # unbounded pieces keep their parent's (sound) bound
                    if depth >= 0:
                        leaves[i].append((a, b, parent, depth))
                break
            rounds += 1
            for start in range(0, len(queue), B):  # all queued pieces, at most B per batched run
                chunk = queue[start : start + B]
                idx = np.array([q[0] for q in chunk])
                if len(chunk) != B or not np.array_equal(idx, np.arange(B)):
                    seg.bind(x[torch.as_tensor(idx)])
                    rebound = True
                elif rebound:
                    seg.bind(x)
                    rebound = False
                up, mid, exact = tail.enclose(
                    np.array([q[1] for q in chunk]), np.array([q[2] for q in chunk])
                )
                evals += len(chunk)
                for k, (i, a, b, parent, depth) in enumerate(chunk):
                    if depth >= 0:
                        leaves[i].append((a, b, min(float(up[k]), parent), depth))  # the parent's bound holds
                    else:
                        probed[i] = 2 if up[k] == math.inf else 1
                    if exact and np.isfinite(mid[k]):
                        lower[i] = max(lower[i], float(mid[k]))
            queue = []
            for i in (int(j) for j in np.flatnonzero(status == 0)):
                bound = max(leaf[2] for leaf in leaves[i])
                if stop and bound < thr[i]:
                    status[i] = 1
                    continue
                if stop and lower[i] >= thr[i]:
                    status[i] = 2
                    continue
                if stop and (probed[i] == 2 or any(
                    leaf[2] == math.inf and leaf[3] >= _GIVE_UP_DEPTH for leaf in leaves[i]
                )):  # fmt: skip
                    status[i] = 3
                    continue
                if stop and bound == math.inf and probed[i] == 0 and max_depth >= _GIVE_UP_DEPTH:
                    probed[i] = 1
                    queue.append((i, 0.5 - 0.5 * w, 0.5 + 0.5 * w, math.inf, -1))
                    continue
                cands = [
                    leaf for leaf in leaves[i] if leaf[3] < max_depth and (leaf[2] >= thr[i] or not stop)
                ]
                if not cands:
                    status[i] = 3 if stop else (1 if bound < thr[i] else 2)
                    continue
                cands.sort(key=lambda leaf: -leaf[2])
                for leaf in cands[:_SPLITS_PER_ROUND] if stop else cands:
                    leaves[i].remove(leaf)
                    a, b, u, depth = leaf
                    m = 0.5 * (a + b)
                    queue += [(i, a, m, u, depth + 1), (i, m, b, u, depth + 1)]
            bar.update(int(np.sum(status != 0)) - bar.n)
            bar.set_postfix(rounds=rounds, pieces=evals, refresh=False)
    finally:
        bar.close()
        if rebound:
            seg.bind(x)
    eta = np.array([max((leaf[2] for leaf in leaves[i]), default=0.0) for i in range(B)])
    eta[point] = 0.0
    status[status == 0] = 3  # the evaluation budget ended the refinement
    if stats is not None:
        stats["evals"] = stats.get("evals", 0) + evals
        stats["rounds"] = stats.get("rounds", 0) + rounds
        for key, code in (("certified", 1), ("uncertifiable", 2), ("undecided", 3)):
            stats[key] = stats.get(key, 0) + int(np.sum(status == code))
    return eta, np.array([len(leaves[i]) for i in range(B)], dtype=np.int64)


# The estimators this engine implements, by their names in mptheory.lipschitz.ESTIMATORS.
_ENGINE: dict[str, _EtaFn] = {
    "pl_exact": _pl_exact,
    "segment_max_slope": _segment_max_slope,
    "product_norm": _product_norm,
    "taylor_bound": taylor_bound,
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
    order: int = DEFAULT_ORDER,
    max_depth: int = TAYLOR_MAX_DEPTH,
    max_evals: int = TAYLOR_MAX_EVALS,
    progress: bool | None = None,
) -> LayerCertificate:
    """Certificate of replacing the weight of layer ``name`` of ``model_dense`` by ``pruned_weight``.

    ``R = W_dense - pruned_weight``; ``psi_1`` and the tail are those of ``model_dense``. Streams over the
    calibration batches, keeping per-sample scalars only. ``estimator``: one of :data:`ESTIMATORS`.
    ``n_theta``: grid of the estimate; ``tol``, ``max_probes``: pl_exact's shortest piece and probe budget;
    ``order``, ``max_depth``, ``max_evals``: taylor_bound's Taylor order and refinement budget;
    ``progress``: show the cascade's progress bars (None: only on a terminal).
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
    taylor_opts: dict[str, Any] = {"order": order, "max_depth": max_depth, "max_evals": max_evals}
    stats: dict[str, Any] = {}
    tail: TaylorTail | None = None
    notes: list[str] = []
    used = est
    etas, Ls, norms, margins, certified, real, flips, npieces = [], [], [], [], [], [], [], []
    for x, _ in iter_calibration(calibration):
        z1 = seg.bind(x)
        nr = seg.removed.numpy().astype(np.float64) if seg.removed is not None else np.zeros(x.shape[0])
        z0 = seg.logits(0.0)
        B = x.shape[0]
        zd = z1.numpy()
        margin_b = prediction_margin(zd)
        real_b = (z0 - z1).abs().amax(dim=1).numpy()
        pieces = None
        # forward-mode AD has no rule for the fused attention kernels: the probes of pl_exact and the
        # estimate run scaled_dot_product_attention on its math backend (the same function)
        with sdpa_kernel(SDPBackend.MATH):
            if used in ("auto", "pl_exact"):
                budget = max_probes if est == "pl_exact" else min(max_probes, AUTO_MAX_PROBES)
                try:
                    eta_b, pieces = _ENGINE["pl_exact"](seg, x, nr, **opts, max_probes=budget)
                    used = "pl_exact"
                except (NotPiecewiseLinear, ProbeBudgetExceeded, NotImplementedError) as e:
                    if est == "pl_exact":
                        raise
                    # Any batch already certified exactly keeps its (sound) values; the layer as a whole is
                    # labelled with the estimator of its weakest batch.
                    if isinstance(e, ProbeBudgetExceeded):
                        used = "segment_max_slope"
                        notes.append(f"auto: {e}; fell back to the segment_max_slope ESTIMATE")
                    else:
                        used = "taylor_bound"
                        why = str(e).splitlines()[0] if str(e) else type(e).__name__
                        notes.append(f"auto: pl_exact does not apply ({why}); used the sound taylor_bound")
            if used == "taylor_bound":
                try:
                    tail = tail if tail is not None else TaylorTail(seg, order)
                    eta_b, pieces = taylor_bound(
                        seg, x, nr, margin=margin_b, realised=real_b, progress=progress, stats=stats,
                        tail=tail, **taylor_opts,
                    )  # fmt: skip
                except UnsupportedTailOp as e:
                    if est == "taylor_bound":
                        raise
                    used = "segment_max_slope"
                    notes.append(f"auto: {e}; fell back to the segment_max_slope ESTIMATE")
            if used in ("segment_max_slope", "product_norm"):
                eta_b, _ = _ENGINE[used](seg, x, nr, **opts, max_probes=max_probes)
        eta_b = np.asarray(eta_b, dtype=np.float64)
        etas.append(eta_b)
        Ls.append(np.divide(eta_b, nr, out=np.zeros(B), where=nr > 0))
        norms.append(nr)
        margins.append(margin_b)
        certified.append(certified_samples(zd, eta_b))
        real.append(real_b)
        flips.append((z0.argmax(1) != z1.argmax(1)).numpy())
        if pieces is not None:
            npieces.append(pieces)
    if stats and used == "taylor_bound":
        notes.append(
            f"taylor_bound (order {order}): {stats['certified']} certified, {stats['uncertifiable']} proven "
            f"uncertifiable, {stats['undecided']} left open by the budget (not certified; eta is the sound "
            f"bound reached); {stats['evals']} piece bounds in {stats['rounds']} rounds"
        )
    zeros = int((S == 0).sum().item())
    disjoint = bool(((S != 0) & (R != 0)).sum().item() == 0)
    n_all = sum(len(e) for e in etas)
    with_pieces = used in ("pl_exact", "taylor_bound") and sum(len(p) for p in npieces) == n_all
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
        pieces=np.concatenate(npieces) if npieces and with_pieces else None,
        notes=notes,
    )
