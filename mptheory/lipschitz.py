"""Estimators of the local Lipschitz constant L_s of a tail psi_2 along the pruning segment (digest §1.2).

For one sample s the segment is ``u(theta) = u0 + theta * (u1 - u0)``, theta in [0, 1], with
``u0 = S psi_1(s)`` (pruned layer output) and ``u1 = A psi_1(s)`` (dense layer output), so that
``u1 - u0 = R psi_1(s)``.  All certificates only need a number L_s with
``||psi_2(u(theta)) - psi_2(u(theta'))||_inf <= L_s |theta - theta'| ||R psi_1(s)||_inf``.

Every estimator returns a :class:`LipschitzEstimate` with one value per sample, a ``sound`` flag
(``True``: a guaranteed upper bound; ``False``: an estimate) and the estimator's ``name`` from
:data:`ESTIMATORS` -- the one list of names that mpprune's certificate engine uses too:

* ``"affine"`` — :func:`affine_tail`: exact for an affine tail ``W3 v + b3`` (and sound for
  ``W3 relu(v) + b3``): ||W3||_inf.
* ``"product_norm"`` — :func:`product_bound`: sound; product of induced inf-norms of the affine layers of a
  sequential tail through 1-Lipschitz activations.
* ``"pl_exact"`` — :func:`piecewise_linear_segment`: sound and *exact*; the largest slope
  ``||dz/dtheta||_inf / ||R psi_1||_inf`` over the linear pieces of a piecewise-linear tail restricted to
  the segment (the smallest valid L_s).
* ``"segment_max_slope"`` — :func:`jacobian_segment`: an estimate; the largest directional Jacobian slope on
  a theta grid.
* ``"taylor_bound"`` — sound; Taylor models in theta with adaptive subdivision of [0, 1], for smooth tails
  (GELU, LayerNorm, softmax attention) as well as PL ones. Implemented on real models by mpprune's
  certificate engine (``mpprune.certify``, estimator ``"taylor_bound"``); it has no small-net function here.

The function names describe the method; the estimate's ``name`` (and every option, report and CLI choice
of both packages, e.g. ``mptheory.certificates.lipschitz_bounds(method=...)``) is the canonical name.

Conventions: arrays are float64 numpy; a tail is a torch callable mapping ``(batch, n)`` (or
``(batch, *shape)``) to logits ``(batch, K)``; ``nn.Module`` tails are copied to float64 and never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ESTIMATORS",
    "EstimatorInfo",
    "Abs",
    "LipschitzEstimate",
    "affine_tail",
    "float64_tail",
    "induced_inf_norm",
    "jacobian_segment",
    "piecewise_linear_segment",
    "product_bound",
    "realised_ratio",
    "segment_logits",
]

Tail = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EstimatorInfo:
    """One L_s estimator: its canonical ``name`` (used in reports, configs and the CLI), whether it is a
    ``sound`` upper bound or an estimate, and a one-line ``summary``."""

    name: str
    sound: bool
    summary: str


# The one list of L_s estimator names, shared by mptheory (functions below, certificates) and mpprune
# (the certificate engine on real models). A name means the same bound everywhere.
ESTIMATORS: dict[str, EstimatorInfo] = {
    e.name: e
    for e in (
        EstimatorInfo("affine", True, "exact for an affine tail (||W||_inf), sound for W relu(v) + b"),
        EstimatorInfo("pl_exact", True, "exact largest slope along the segment of a piecewise-linear tail"),
        EstimatorInfo("product_norm", True, "product of induced inf-norms through 1-Lipschitz activations"),
        EstimatorInfo("segment_max_slope", False, "largest directional Jacobian slope on a theta grid"),
        EstimatorInfo(
            "taylor_bound",
            True,
            "bound on the largest slope along the segment by Taylor models in theta with adaptive "
            "subdivision (smooth and piecewise-linear tails; mpprune's certificate engine)",
        ),
    )
}


class Abs(nn.Module):
    """Coordinatewise absolute value, the activation |.| of the simplified theory (digest §1.1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


@dataclass(frozen=True)
class LipschitzEstimate:
    """Per-sample values of L_s with provenance.

    ``values`` has shape (B,); ``sound`` says whether every value is a guaranteed upper bound on the
    segment; ``pieces`` (exact method only) holds, per sample, the sorted piece boundaries in theta and
    ``slopes`` the ``||dz/dtheta||_inf`` of each piece.
    """

    values: np.ndarray
    sound: bool
    name: str
    pieces: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    slopes: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: D105
        return np.asarray(self.values, dtype=dtype)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def scaled(self, factor: float) -> LipschitzEstimate:
        """The same estimate multiplied by ``factor`` (``sound`` is dropped when ``factor < 1``).

        Used for negative controls: a halved exact bound is no longer a bound.
        """
        if not np.isfinite(factor) or factor < 0:
            raise ValueError(f"factor must be finite and >= 0, got {factor}")
        return LipschitzEstimate(
            self.values * factor, self.sound and factor >= 1.0, f"{self.name}*{factor:g}"
        )


# ----------------------------------------------------------------------------------------------------
# helpers


def induced_inf_norm(W: np.ndarray | torch.Tensor) -> float:
    """Induced inf->inf norm of a matrix: the largest absolute row sum ``max_i sum_j |W_ij|``."""
    Wn = W.detach().cpu().double().numpy() if isinstance(W, torch.Tensor) else np.asarray(W, dtype=np.float64)
    if Wn.ndim != 2 or Wn.size == 0:
        raise ValueError(f"W must be a non-empty 2-D matrix, got shape {Wn.shape}")
    if not np.all(np.isfinite(Wn)):
        raise ValueError(f"W of shape {Wn.shape} contains NaN or Inf")
    return float(np.abs(Wn).sum(axis=1).max())


def _flatten_modules(tail: object) -> list[nn.Module]:
    if isinstance(tail, nn.Sequential):
        out: list[nn.Module] = []
        for m in tail:
            out.extend(_flatten_modules(m))
        return out
    if isinstance(tail, nn.Module):
        return [tail]
    if isinstance(tail, Iterable):
        out = []
        for m in tail:
            out.extend(_flatten_modules(m))
        return out
    raise ValueError(f"tail must be an nn.Module or a sequence of modules, got {type(tail).__name__}")


def float64_tail(tail: Tail) -> Tail:
    """A float64, eval-mode copy of an nn.Module tail (plain callables are returned unchanged).

    The one place a tail is copied for exact evaluation (the estimators here and
    :class:`mptheory.certificates.SplitNetwork` use it); a module in training mode is refused.
    """
    if isinstance(tail, nn.Module):
        for name, m in tail.named_modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) and m.training:
                raise ValueError(
                    f"tail module {name or type(m).__name__!r} ({type(m).__name__}) is in training mode; "
                    "call .eval() first (the certificate needs a fixed map)"
                )
        return copy.deepcopy(tail).double().eval()
    if not callable(tail):
        raise ValueError(f"tail must be callable, got {type(tail).__name__}")
    return tail


def _segment_arrays(
    u0: np.ndarray | torch.Tensor, u1: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    a0 = (
        u0.detach().cpu().double().numpy()
        if isinstance(u0, torch.Tensor)
        else np.asarray(u0, dtype=np.float64)
    )
    a1 = (
        u1.detach().cpu().double().numpy()
        if isinstance(u1, torch.Tensor)
        else np.asarray(u1, dtype=np.float64)
    )
    if a0.shape != a1.shape:
        raise ValueError(f"u0 and u1 must have the same shape, got {a0.shape} and {a1.shape}")
    if a0.ndim < 2 or a0.shape[0] == 0:
        raise ValueError(f"u0/u1 must have shape (batch, ...) with batch >= 1, got {a0.shape}")
    if not (np.all(np.isfinite(a0)) and np.all(np.isfinite(a1))):
        raise ValueError(f"u0/u1 of shape {a0.shape} contain NaN or Inf")
    return a0, a1


def _direction_norm(u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    return np.abs((u1 - u0).reshape(u0.shape[0], -1)).max(axis=1)


def segment_logits(tail: Tail, u0: np.ndarray, u1: np.ndarray, theta: float | np.ndarray) -> np.ndarray:
    """Logits ``psi_2(u0 + theta (u1 - u0))`` in float64, shape (B, K) (or (T, B, K) for an array of
    thetas)."""
    a0, a1 = _segment_arrays(u0, u1)
    f = float64_tail(tail)
    th = np.asarray(theta, dtype=np.float64)
    with torch.no_grad():
        if th.ndim == 0:
            return f(torch.from_numpy(a0 + float(th) * (a1 - a0))).double().numpy()
        return np.stack([f(torch.from_numpy(a0 + float(t) * (a1 - a0))).double().numpy() for t in th])


def _per_sample(values: float | np.ndarray, n_samples: int) -> np.ndarray:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return np.full(n_samples, float(values)) if np.ndim(values) == 0 else np.asarray(values, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------
# closed-form bounds


def affine_tail(
    W3: np.ndarray | torch.Tensor, b3: np.ndarray | torch.Tensor | None = None, n_samples: int = 1
) -> LipschitzEstimate:
    """L_s = ||W3||_inf for every sample: exact for ``psi_2(v) = W3 v + b3``.

    Also a sound bound for ``W3 relu(v) + b3`` (ReLU is 1-Lipschitz in the inf-norm). ``b3`` only has its
    shape checked.
    """
    L = induced_inf_norm(W3)
    if b3 is not None:
        nb = int(np.asarray(b3.detach().cpu() if isinstance(b3, torch.Tensor) else b3).reshape(-1).shape[0])
        rows = int(W3.shape[0])
        if nb != rows:
            raise ValueError(f"b3 has {nb} entries but W3 has {rows} rows (shape {tuple(W3.shape)})")
    return LipschitzEstimate(_per_sample(L, n_samples), True, "affine")


_ONE_LIPSCHITZ = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.Hardtanh,
    nn.ReLU6,
    Abs,
)


def _module_inf_norm(m: nn.Module) -> float:
    if isinstance(m, nn.Linear):
        return induced_inf_norm(m.weight)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        w = m.weight.detach().double()
        # each output entry is a sum over at most (Cin/groups)*k entries of the input
        return float(w.abs().reshape(w.shape[0], -1).sum(dim=1).max())
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.training or m.running_var is None:
            raise ValueError(f"{type(m).__name__} must be in eval mode with running statistics")
        scale = 1.0 / torch.sqrt(m.running_var.double() + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().double()
        return float(scale.abs().max())
    if isinstance(m, nn.LeakyReLU):
        return max(1.0, abs(float(m.negative_slope)))
    if isinstance(m, _ONE_LIPSCHITZ):
        return 1.0
    raise ValueError(f"product_bound: unsupported module {type(m).__name__}")


def product_bound(layers: nn.Module | Iterable[nn.Module], n_samples: int = 1) -> LipschitzEstimate:
    """Sound L_s: product of the induced inf-norms of the affine layers of a sequential tail.

    Supported: Linear, Conv1d/2d (bound by the largest absolute kernel sum per output channel), BatchNorm
    (eval), and 1-Lipschitz maps (ReLU, |.|, LeakyReLU (factor max(1, |slope|)), tanh, sigmoid, max/avg pools,
    Flatten, Dropout in eval). The same value is returned for every one of ``n_samples`` samples.
    """
    mods = _flatten_modules(layers)
    unsupported = []
    L = 1.0
    for m in mods:
        try:
            L *= _module_inf_norm(m)
        except ValueError:
            unsupported.append(type(m).__name__)
    if unsupported:
        raise ValueError(f"product_bound: unsupported modules {sorted(set(unsupported))}")
    return LipschitzEstimate(_per_sample(L, n_samples), True, "product_norm")


# ----------------------------------------------------------------------------------------------------
# exact maximum slope along the segment for piecewise-linear tails

_AFFINE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.modules.batchnorm._BatchNorm,
)
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, Abs)


class _Pieces:
    """theta-pieces of all samples: on [lo, hi] the current activation equals a + theta * d."""

    def __init__(self, sid: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: torch.Tensor, d: torch.Tensor):
        self.sid, self.lo, self.hi, self.a, self.d = sid, lo, hi, a, d

    def split(self, cuts: list[np.ndarray]) -> _Pieces:
        """Split piece p at the sorted interior points cuts[p]."""
        idx, lo, hi = [], [], []
        for p, c in enumerate(cuts):
            bounds = np.concatenate(([self.lo[p]], c, [self.hi[p]]))
            k = bounds.shape[0] - 1
            idx.extend([p] * k)
            lo.append(bounds[:-1])
            hi.append(bounds[1:])
        ix = np.asarray(idx, dtype=np.int64)
        t = torch.from_numpy(ix)
        return _Pieces(self.sid[ix], np.concatenate(lo), np.concatenate(hi), self.a[t], self.d[t])

    @property
    def mid(self) -> torch.Tensor:
        return torch.from_numpy(0.5 * (self.lo + self.hi))


def _interior_cuts(roots: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """roots: (P, r) candidate breakpoints (NaN = none); keep the unique ones strictly inside (lo, hi)."""
    r = roots.numpy()
    inside = (r > lo[:, None]) & (r < hi[:, None])
    cuts = []
    for p in range(r.shape[0]):
        c = r[p][inside[p]]
        cuts.append(np.unique(c) if c.size else c)
    return cuts


def _elementwise(m: nn.Module, pc: _Pieces) -> _Pieces:
    a, d = pc.a, pc.d
    safe = torch.where(d != 0, d, torch.ones_like(d))
    roots = torch.where(d != 0, -a / safe, torch.full_like(a, float("nan")))
    pc = pc.split(_interior_cuts(roots.reshape(roots.shape[0], -1), pc.lo, pc.hi))
    shape = (-1,) + (1,) * (pc.a.dim() - 1)
    pre = pc.a + pc.mid.reshape(shape) * pc.d
    if isinstance(m, nn.ReLU):
        factor = (pre > 0).double()
    elif isinstance(m, nn.LeakyReLU):
        factor = torch.where(pre > 0, torch.ones_like(pre), torch.full_like(pre, float(m.negative_slope)))
    else:  # Abs
        factor = torch.sign(pre)
    return _Pieces(pc.sid, pc.lo, pc.hi, pc.a * factor, pc.d * factor)


def _maxpool2d(m: nn.MaxPool2d, pc: _Pieces) -> _Pieces:
    ks = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
    st = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
    if m.padding not in (0, (0, 0)) or m.dilation not in (1, (1, 1)) or m.ceil_mode:
        raise ValueError("piecewise_linear_segment: MaxPool2d needs padding=0, dilation=1, ceil_mode=False")
    if pc.a.dim() != 4:
        raise ValueError(f"MaxPool2d expects (batch, C, H, W) activations, got {tuple(pc.a.shape)}")
    P, C, H, W = pc.a.shape
    Ho, Wo = (H - ks[0]) // st[0] + 1, (W - ks[1]) // st[1] + 1

    def windows(x: torch.Tensor) -> torch.Tensor:  # (P, C, kk, L)
        return F.unfold(x.reshape(P * C, 1, H, W), ks, stride=st).reshape(P, C, ks[0] * ks[1], Ho * Wo)

    ca, cd = windows(pc.a), windows(pc.d)
    kk = ca.shape[2]
    ii, jj = np.triu_indices(kk, 1)
    ti, tj = torch.from_numpy(ii), torch.from_numpy(jj)
    num = ca[:, :, ti] - ca[:, :, tj]
    den = cd[:, :, tj] - cd[:, :, ti]
    th = torch.where(
        den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.full_like(num, float("nan"))
    )  # (P, C, pairs, L)
    # keep only intersections that lie on the upper envelope (real switches of the argmax)
    val = ca[:, :, ti] + th * cd[:, :, ti]
    env = (ca.unsqueeze(2) + th.unsqueeze(3) * cd.unsqueeze(2)).amax(dim=3)  # (P, C, pairs, L)
    tol = 1e-12 * (1.0 + env.abs())
    th = torch.where(val >= env - tol, th, torch.full_like(th, float("nan")))
    pc_ix = pc.split(_interior_cuts(th.reshape(P, -1), pc.lo, pc.hi))
    P2 = pc_ix.a.shape[0]
    ca2 = F.unfold(pc_ix.a.reshape(P2 * C, 1, H, W), ks, stride=st).reshape(P2, C, kk, Ho * Wo)
    cd2 = F.unfold(pc_ix.d.reshape(P2 * C, 1, H, W), ks, stride=st).reshape(P2, C, kk, Ho * Wo)
    pre = ca2 + pc_ix.mid.reshape(-1, 1, 1, 1) * cd2
    arg = pre.argmax(dim=2, keepdim=True)
    a_out = torch.gather(ca2, 2, arg).reshape(P2, C, Ho, Wo)
    d_out = torch.gather(cd2, 2, arg).reshape(P2, C, Ho, Wo)
    return _Pieces(pc_ix.sid, pc_ix.lo, pc_ix.hi, a_out, d_out)


def piecewise_linear_segment(
    tail: nn.Module | Iterable[nn.Module],
    u0: np.ndarray | torch.Tensor,
    u1: np.ndarray | torch.Tensor,
    max_pieces: int = 200_000,
) -> LipschitzEstimate:
    """Exact (hence sound) L_s for a piecewise-linear sequential tail along ``u(theta) = u0 + theta (u1 -
    u0)``.

    With ``u0 = S psi_1(s)`` and ``u1 = A psi_1(s)``, ``u1 - u0 = R psi_1(s)``. Along the segment the tail is
    piecewise linear in theta; the breakpoints (a ReLU/|.|/LeakyReLU pre-activation changing sign, or the
    argmax of a MaxPool window switching) are enumerated exactly, the slope ``dz/dtheta`` is computed on every
    piece and ``L_s = max_pieces ||dz/dtheta||_inf / ||R psi_1(s)||_inf`` is returned. This is the smallest
    L_s valid for the certificates of this segment. ``L_s = 0`` where ``R psi_1(s) = 0`` (the segment is a
    point). Supported: Linear, Conv1d/2d, BatchNorm (eval), Flatten, Unflatten, Identity, Dropout (eval),
    AvgPool, MaxPool2d (no padding), ReLU, LeakyReLU, :class:`Abs`. Anything else raises ValueError.
    """
    mods = _flatten_modules(tail)
    bad = sorted(
        {type(m).__name__ for m in mods if not isinstance(m, _AFFINE + _ELEMENTWISE + (nn.MaxPool2d,))}
    )
    if bad:
        raise ValueError(f"piecewise_linear_segment: unsupported modules {bad}")
    mods = [m for m in _flatten_modules(float64_tail(nn.Sequential(*mods)))]
    a0, a1 = _segment_arrays(u0, u1)
    B = a0.shape[0]
    pc = _Pieces(
        np.arange(B), np.zeros(B), np.ones(B), torch.from_numpy(a0.copy()), torch.from_numpy(a1 - a0)
    )
    with torch.no_grad():
        for m in mods:
            if isinstance(m, _ELEMENTWISE):
                pc = _elementwise(m, pc)
            elif isinstance(m, nn.MaxPool2d):
                pc = _maxpool2d(m, pc)
            else:
                a = m(pc.a)
                d = m(pc.d) - m(torch.zeros_like(pc.d[:1]))
                pc = _Pieces(pc.sid, pc.lo, pc.hi, a, d)
            if pc.a.shape[0] > max_pieces:
                raise ValueError(f"piecewise_linear_segment: more than max_pieces={max_pieces} linear pieces")
    slopes = pc.d.reshape(pc.d.shape[0], -1).abs().amax(dim=1).numpy()
    smax = np.zeros(B)
    np.maximum.at(smax, pc.sid, slopes)
    norm = _direction_norm(a0, a1)
    L = np.divide(smax, norm, out=np.zeros(B), where=norm > 0)
    order = np.lexsort((pc.lo, pc.sid))
    sid, lo, hi, sl = pc.sid[order], pc.lo[order], pc.hi[order], slopes[order]
    pieces = tuple(np.append(lo[sid == s], hi[sid == s][-1:]) for s in range(B))
    per_slopes = tuple(sl[sid == s] for s in range(B))
    return LipschitzEstimate(L, True, "pl_exact", pieces, per_slopes)


# ----------------------------------------------------------------------------------------------------
# estimates and diagnostics


def jacobian_segment(
    tail: Tail, u0: np.ndarray | torch.Tensor, u1: np.ndarray | torch.Tensor, n_theta: int = 20
) -> LipschitzEstimate:
    """ESTIMATE (``sound=False``): ``max_theta ||J(u(theta)) R psi_1||_inf / ||R psi_1||_inf`` on a theta
    grid.

    The grid is ``linspace(0, 1, n_theta)``; directional derivatives use forward-mode AD. For piecewise-linear
    tails this never exceeds :func:`piecewise_linear_segment` but can miss short steep pieces.
    """
    if int(n_theta) < 1:
        raise ValueError(f"n_theta must be >= 1, got {n_theta}")
    a0, a1 = _segment_arrays(u0, u1)
    f = float64_tail(tail)
    t0, dirn = torch.from_numpy(a0), torch.from_numpy(a1 - a0)
    best = np.zeros(a0.shape[0])
    for th in np.linspace(0.0, 1.0, int(n_theta)):
        jv = torch.func.jvp(f, (t0 + float(th) * dirn,), (dirn,))[1]
        best = np.maximum(best, jv.detach().reshape(jv.shape[0], -1).abs().amax(dim=1).double().numpy())
    norm = _direction_norm(a0, a1)
    L = np.divide(best, norm, out=np.zeros_like(best), where=norm > 0)
    return LipschitzEstimate(L, False, "segment_max_slope")


def realised_ratio(
    tail: Tail,
    u0: np.ndarray | torch.Tensor,
    u1: np.ndarray | torch.Tensor,
    L: LipschitzEstimate | np.ndarray,
) -> np.ndarray:
    """Tightness per sample: ``||z(1) - z(0)||_inf / (L_s ||R psi_1(s)||_inf)`` (NaN where the bound is 0).

    Values <= 1 for any sound L_s; 1 means the bound is attained end to end.
    """
    a0, a1 = _segment_arrays(u0, u1)
    Lv = np.asarray(L, dtype=np.float64)
    if Lv.shape != (a0.shape[0],):
        raise ValueError(f"L must have shape ({a0.shape[0]},), got {Lv.shape}")
    z = segment_logits(tail, a0, a1, np.array([0.0, 1.0]))
    num = np.abs(z[1] - z[0]).reshape(a0.shape[0], -1).max(axis=1)
    den = Lv * _direction_norm(a0, a1)
    out = np.full_like(num, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out
