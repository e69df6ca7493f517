"""Deterministic data-path certificates D1-D12 (digest §2.1), evaluated exactly on small networks.

One layer ``A`` (shape (n, m)) of a network is split off: ``psi1`` (B, m) holds the captured layer inputs of
the calibration set T, ``tail`` maps the layer output (B, n) to logits (B, K). A decomposition ``A = S + R``
defines the path ``A_theta = S + theta R`` (``A_1`` dense, ``A_0`` pruned). With a per-sample Lipschitz bound
``L_s`` of the tail on the segment (see :mod:`mptheory.lipschitz`)::

    eta_s(theta) = (1 - theta) L_s ||R psi1(s)||_inf,      B_T(R) = (2/|T|) sum_s L_s ||R psi1(s)||_inf,

and a sample is *certified* when its dense prediction margin exceeds ``2 eta_s``.

Every theorem is returned as one or more :class:`Inequality` objects (``lhs <= rhs`` elementwise, with
``.slack = rhs - lhs`` and a 1e-9 relative tolerance) so a checker can count violations; ``check_d1`` ...
``check_d12`` take a generated case (:class:`CertCase` / :class:`MultiLayerCase`, see
:mod:`mptheory.strategies_nets`) and return a :class:`CheckResult`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from torch import nn

from mptheory.lipschitz import (
    LipschitzEstimate,
    jacobian_segment,
    piecewise_linear_segment,
    product_bound,
)

__all__ = [
    "CertCase",
    "CheckResult",
    "Decomposition",
    "ElasticNet",
    "Inequality",
    "MLPNetwork",
    "MarginResult",
    "MaskDecomposition",
    "MultiLayerCase",
    "PathBoundResult",
    "PruneRestore",
    "SequentialPruneResult",
    "SplitNetwork",
    "accuracy",
    "accuracy_bound_count",
    "budget",
    "certified_samples",
    "check_d1",
    "check_d2",
    "check_d3",
    "check_d4",
    "check_d5",
    "check_d6",
    "check_d7",
    "check_d8",
    "check_d9",
    "check_d10",
    "check_d11",
    "check_d12",
    "CHECKS",
    "cross_entropy",
    "elastic_net_certificate",
    "eta",
    "frobenius_certificate",
    "lipschitz_bounds",
    "margin_certificate",
    "multilayer_margin",
    "multilayer_stationarity",
    "path_bound",
    "prediction_margin",
    "prune_restore_certificate",
    "removed_norms",
    "restoration_identity",
    "sequential_prune",
    "stationarity",
    "telescoped_bound",
    "true_margin",
    "zero_budget",
]

RTOL = 1e-9


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _matrix(x: object, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} of shape {a.shape} contains NaN or Inf")
    return a


def _theta(theta: float | Sequence[float] | np.ndarray) -> np.ndarray:
    th = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    if th.ndim != 1 or th.size == 0:
        raise ValueError(f"theta must be a scalar or a non-empty 1-D array, got shape {th.shape}")
    if not np.all(np.isfinite(th)) or np.any(th < 0) or np.any(th > 1):
        raise ValueError(f"theta must lie in [0, 1], got {th}")
    return th


def _check_mask(mask: object, shape: tuple[int, ...]) -> np.ndarray:
    M = np.asarray(mask)
    if M.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {M.shape}")
    if not np.all((M == 0) | (M == 1)):
        raise ValueError("mask must contain only 0 and 1")
    return M.astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# inequalities and check results


@dataclass(frozen=True)
class Inequality:
    """Elementwise claim ``lhs <= rhs`` (arrays of equal shape).

    ``tolerance = rtol * max(1, |lhs|, |rhs|, scale)`` absorbs float64 rounding; ``scale`` is the size of the
    quantities the two sides were computed from (e.g. |J(A)| for objective differences).
    """

    name: str
    lhs: np.ndarray
    rhs: np.ndarray
    scale: np.ndarray | float = 0.0
    rtol: float = RTOL

    def __post_init__(self) -> None:
        lhs, rhs = np.asarray(self.lhs, dtype=np.float64), np.asarray(self.rhs, dtype=np.float64)
        lhs, rhs = np.broadcast_arrays(lhs, rhs)
        object.__setattr__(self, "lhs", np.array(lhs))
        object.__setattr__(self, "rhs", np.array(rhs))

    @property
    def slack(self) -> np.ndarray:
        """rhs - lhs (>= -tolerance where the claim holds)."""
        return self.rhs - self.lhs

    @property
    def tolerance(self) -> np.ndarray:
        big = np.maximum(np.maximum(np.abs(self.lhs), np.abs(self.rhs)), np.abs(np.asarray(self.scale)))
        return self.rtol * np.maximum(1.0, big)

    @property
    def violated(self) -> np.ndarray:
        """Boolean array: where lhs exceeds rhs by more than the tolerance (NaN counts as violated)."""
        return ~(self.lhs <= self.rhs + self.tolerance)

    @property
    def violations(self) -> int:
        return int(self.violated.sum())

    @property
    def cases(self) -> int:
        return int(self.lhs.size)

    @property
    def worst_slack(self) -> float:
        return float(np.min(self.slack)) if self.lhs.size else float("inf")

    @property
    def holds(self) -> bool:
        return self.violations == 0


@dataclass(frozen=True)
class CheckResult:
    """Summary of one claim check: ``cases`` inequality instances, how many failed, the smallest slack
    (rhs - lhs; negative = violated) and ``tightness`` = the largest realised/bound ratio (NaN if
    undefined)."""

    cases: int
    violations: int
    worst_slack: float
    tightness: float = float("nan")

    @classmethod
    def from_inequalities(cls, ineqs: Sequence[Inequality], tightness: float = float("nan")) -> CheckResult:
        return cls(
            cases=sum(q.cases for q in ineqs),
            violations=sum(q.violations for q in ineqs),
            worst_slack=min((q.worst_slack for q in ineqs), default=float("inf")),
            tightness=float(tightness),
        )

    @classmethod
    def combine(cls, results: Sequence[CheckResult]) -> CheckResult:
        """Aggregate the results of many generated cases (sums; min slack; max tightness ignoring NaN)."""
        tights = [r.tightness for r in results if np.isfinite(r.tightness)]
        return cls(
            cases=sum(r.cases for r in results),
            violations=sum(r.violations for r in results),
            worst_slack=min((r.worst_slack for r in results), default=float("inf")),
            tightness=max(tights) if tights else float("nan"),
        )


def _ratio_max(num: np.ndarray, den: np.ndarray) -> float:
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    ok = den > 0
    return float(np.max(num[ok] / den[ok])) if np.any(ok) else float("nan")


# ----------------------------------------------------------------------------------------------------
# decompositions


@dataclass(frozen=True)
class Decomposition:
    """``A = S + R`` (S kept, R removed); need not be a mask split (see :func:`MaskDecomposition`)."""

    S: np.ndarray
    R: np.ndarray

    def __post_init__(self) -> None:
        S, R = _matrix(self.S, "S"), _matrix(self.R, "R")
        if S.shape != R.shape:
            raise ValueError(f"S and R must have the same shape, got {S.shape} and {R.shape}")
        object.__setattr__(self, "S", S)
        object.__setattr__(self, "R", R)

    @property
    def A(self) -> np.ndarray:
        return self.S + self.R

    @property
    def is_mask(self) -> bool:
        """True when S and R have disjoint supports (S ⊙ R = 0)."""
        return bool(np.all(self.S * self.R == 0))

    def at(self, theta: float) -> np.ndarray:
        """A_theta = S + theta R."""
        return self.S + float(_theta(theta)[0]) * self.R

    def scaled(self, t: float) -> Decomposition:
        """(S, t R): the same split with the removed part rescaled."""
        return Decomposition(self.S, t * self.R)


def MaskDecomposition(A: np.ndarray, mask: np.ndarray) -> Decomposition:  # noqa: N802
    """S = M ⊙ A (kept where mask == 1), R = (1 - M) ⊙ A."""
    A = _matrix(A, "A")
    M = _check_mask(mask, A.shape)
    return Decomposition(M * A, (1.0 - M) * A)


@dataclass(frozen=True)
class PruneRestore:
    """A = S + Q + P with pairwise disjoint supports: S kept, Q restored, P finally removed (D7/D8)."""

    S: np.ndarray
    Q: np.ndarray
    P: np.ndarray

    def __post_init__(self) -> None:
        S, Q, P = _matrix(self.S, "S"), _matrix(self.Q, "Q"), _matrix(self.P, "P")
        if not S.shape == Q.shape == P.shape:
            raise ValueError(f"S, Q, P must share a shape, got {S.shape}, {Q.shape}, {P.shape}")
        for (x, nx), (y, ny) in (((S, "S"), (Q, "Q")), ((S, "S"), (P, "P")), ((Q, "Q"), (P, "P"))):
            if np.any(x * y != 0):
                raise ValueError(
                    f"{nx} and {ny} must have disjoint supports ({int(np.sum(x * y != 0))} overlaps)"
                )
        object.__setattr__(self, "S", S)
        object.__setattr__(self, "Q", Q)
        object.__setattr__(self, "P", P)

    @property
    def A(self) -> np.ndarray:
        return self.S + self.Q + self.P

    def restore(self) -> Decomposition:
        """(S + Q) + P: keep S and the restored Q, remove P."""
        return Decomposition(self.S + self.Q, self.P)

    def prune_all(self) -> Decomposition:
        """S + (Q + P): remove the whole reservoir R = Q + P."""
        return Decomposition(self.S, self.Q + self.P)


# ----------------------------------------------------------------------------------------------------
# the split network


def _tail64(tail: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(tail, nn.Module):
        for name, m in tail.named_modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) and m.training:
                raise ValueError(
                    f"tail module {name or type(m).__name__!r} is in training mode; call .eval()"
                )
        return copy.deepcopy(tail).double().eval()
    if not callable(tail):
        raise ValueError(f"tail must be callable, got {type(tail).__name__}")
    return tail


@dataclass(frozen=True)
class SplitNetwork:
    """A network split at one layer: logits z_W(s) = tail(W psi1(s) + bias).

    ``psi1`` (B, m) layer inputs of the calibration set, ``A`` (n, m) the dense layer weight, ``tail`` a torch
    callable (B, n) -> (B, K) (an ``nn.Module`` is copied to float64/eval), ``labels`` (B,) true classes,
    optional ``bias`` (n,) that stays in every A_theta.
    """

    psi1: np.ndarray
    A: np.ndarray
    tail: Callable[[torch.Tensor], torch.Tensor]
    labels: np.ndarray
    bias: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        psi1 = _matrix(self.psi1, "psi1") if np.size(self.psi1) else None
        if psi1 is None:
            raise ValueError(f"psi1 (calibration set) is empty: shape {np.shape(self.psi1)}")
        A = _matrix(self.A, "A")
        if A.shape[1] != psi1.shape[1]:
            raise ValueError(f"A has shape {A.shape} but psi1 has shape {psi1.shape} (need A.shape[1] == m)")
        labels = np.asarray(self.labels)
        if labels.shape != (psi1.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers of shape ({psi1.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        bias = None
        if self.bias is not None:
            bias = np.asarray(self.bias, dtype=np.float64)
            if bias.shape != (A.shape[0],) or not np.all(np.isfinite(bias)):
                raise ValueError(f"bias must be finite with shape ({A.shape[0]},), got {bias.shape}")
        object.__setattr__(self, "psi1", psi1)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "tail", _tail64(self.tail))
        z = self.logits()
        if np.any(labels < 0) or np.any(labels >= z.shape[1]):
            raise ValueError(
                f"labels must lie in [0, {z.shape[1]}), got range [{labels.min()}, {labels.max()}]"
            )

    @property
    def n_samples(self) -> int:
        return int(self.psi1.shape[0])

    def layer_output(self, W: np.ndarray | None = None) -> np.ndarray:
        """W psi1 + bias, shape (B, n)."""
        W = self.A if W is None else _matrix(W, "W")
        if W.shape != self.A.shape:
            raise ValueError(f"W must have the layer shape {self.A.shape}, got {W.shape}")
        u = self.psi1 @ W.T
        return u + self.bias if self.bias is not None else u

    def logits(self, W: np.ndarray | None = None) -> np.ndarray:
        """z_W(s) for every sample, float64 (B, K)."""
        with torch.no_grad():
            zt = self.tail(torch.from_numpy(np.ascontiguousarray(self.layer_output(W))))
        z: np.ndarray = zt.detach().double().numpy()
        if z.ndim != 2 or z.shape[0] != self.n_samples:
            raise ValueError(f"tail must return logits of shape ({self.n_samples}, K), got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"tail produced NaN/Inf logits (shape {z.shape})")
        return z

    def with_decomposition_check(self, dec: Decomposition | PruneRestore) -> None:
        if dec.A.shape != self.A.shape:
            raise ValueError(f"decomposition has shape {dec.A.shape}, layer has shape {self.A.shape}")
        if not np.allclose(dec.A, self.A, rtol=1e-12, atol=1e-12):
            raise ValueError("decomposition does not sum to the layer weight A")


# ----------------------------------------------------------------------------------------------------
# per-sample quantities


def lipschitz_bounds(
    net: SplitNetwork, dec: Decomposition, method: str = "exact", n_theta: int = 20
) -> LipschitzEstimate:
    """L_s on the segment {(S + theta R) psi1(s)}: ``exact`` (piecewise-linear, sound), ``product`` (sound)
    or ``jacobian`` (estimate on an n_theta grid)."""
    if isinstance(dec, PruneRestore):
        dec = dec.restore()
    u0, u1 = net.layer_output(dec.S), net.layer_output(dec.A)
    if method == "exact":
        return piecewise_linear_segment(net.tail, u0, u1)  # type: ignore[arg-type]
    if method == "product":
        return product_bound(net.tail, net.n_samples)  # type: ignore[arg-type]
    if method == "jacobian":
        return jacobian_segment(net.tail, u0, u1, n_theta)
    raise ValueError(f"method must be 'exact', 'product' or 'jacobian', got {method!r}")


def _L(L: LipschitzEstimate | np.ndarray | float, B: int) -> np.ndarray:
    Lv = np.asarray(L, dtype=np.float64)
    if Lv.ndim == 0:
        Lv = np.full(B, float(Lv))
    if Lv.shape != (B,) or not np.all(np.isfinite(Lv)) or np.any(Lv < 0):
        raise ValueError(f"L must be finite, >= 0, of shape ({B},), got shape {Lv.shape}")
    return Lv


def removed_norms(psi1: np.ndarray, R: np.ndarray) -> np.ndarray:
    """||R psi1(s)||_inf for every sample, shape (B,)."""
    psi1, R = _matrix(psi1, "psi1"), _matrix(R, "R")
    if R.shape[1] != psi1.shape[1]:
        raise ValueError(f"R has shape {R.shape} but psi1 has shape {psi1.shape}")
    return np.abs(psi1 @ R.T).max(axis=1)


def eta(
    psi1: np.ndarray,
    R: np.ndarray,
    L: LipschitzEstimate | np.ndarray | float,
    theta: float | np.ndarray = 0.0,
) -> np.ndarray:
    """eta_s(theta) = (1 - theta) L_s ||R psi1(s)||_inf; shape (B,) for scalar theta, else (T, B)."""
    nr = removed_norms(psi1, R)
    Lv = _L(L, nr.shape[0])
    th = _theta(theta)
    out = (1.0 - th)[:, None] * (Lv * nr)[None, :]
    return out[0] if np.ndim(theta) == 0 else out


def budget(psi1: np.ndarray, R: np.ndarray, L: LipschitzEstimate | np.ndarray | float) -> float:
    """B_T(R) = (2/|T|) sum_s L_s ||R psi1(s)||_inf."""
    nr = removed_norms(psi1, R)
    return float(2.0 * np.mean(_L(L, nr.shape[0]) * nr))


def _logits(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (B >= 1, K >= 2), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits of shape {z.shape} contain NaN or Inf")
    return z


def _labels(labels: np.ndarray, z: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (z.shape[0],) or np.any(lab < 0) or np.any(lab >= z.shape[1]):
        raise ValueError(f"labels must have shape ({z.shape[0]},) with values in [0, {z.shape[1]})")
    return lab.astype(np.int64)


def _margin_of(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    own = z[np.arange(z.shape[0]), cls]
    other = z.copy()
    other[np.arange(z.shape[0]), cls] = -np.inf
    return own - other.max(axis=1)


def prediction_margin(z: np.ndarray) -> np.ndarray:
    """Delta^pred(s) = z_p - max_{j != p} z_j with p = argmax z (first index on ties)."""
    z = _logits(z)
    return _margin_of(z, z.argmax(axis=1))


def true_margin(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Delta^true(s) = z_C - max_{j != C} z_j."""
    z = _logits(z)
    return _margin_of(z, _labels(labels, z))


def accuracy(z: np.ndarray, labels: np.ndarray) -> float:
    """acc(T) = fraction of samples with Delta^true > 0."""
    return float(np.mean(true_margin(z, labels) > 0))


def cross_entropy(z: np.ndarray, labels: np.ndarray) -> float:
    """One-layer CE (1/|T|) sum_s [-z_C + log sum_j exp z_j]."""
    z = _logits(z)
    lab = _labels(labels, z)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(z.shape[0]), lab]))


def certified_samples(z_dense: np.ndarray, eta_s: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """Boolean (B,): dense prediction margin > factor * eta_s (factor = 2 is the theorem)."""
    m = prediction_margin(z_dense)
    e = np.asarray(eta_s, dtype=np.float64)
    if e.shape != m.shape:
        raise ValueError(f"eta_s must have shape {m.shape}, got {e.shape}")
    return m > factor * e


def accuracy_bound_count(
    z_dense: np.ndarray, labels: np.ndarray, eta_s: np.ndarray, factor: float = 2.0
) -> int:
    """#{s : |Delta^true_dense(s)| <= factor * eta_s}: the D2(ii) bound on |Delta acc| * |T|."""
    m = true_margin(z_dense, labels)
    e = np.asarray(eta_s, dtype=np.float64)
    if e.shape != m.shape:
        raise ValueError(f"eta_s must have shape {m.shape}, got {e.shape}")
    return int(np.sum(np.abs(m) <= factor * e))


# ----------------------------------------------------------------------------------------------------
# objectives


@dataclass(frozen=True)
class ElasticNet:
    """J(W) = CE(W) + lam2 ||W||_F^2 + lam1 ||W||_1 (+ weighted terms sum gamma2 W^2 + sum gamma1 |W|).

    ``ElasticNet(lam2=l)`` is 𝓙₂, ``ElasticNet(lam1, lam2)`` is 𝓙, ``ElasticNet(gamma1=G1, gamma2=G2)`` is
    𝓙_Γ.
    """

    lam1: float = 0.0
    lam2: float = 0.0
    gamma1: np.ndarray | None = None
    gamma2: np.ndarray | None = None

    def __post_init__(self) -> None:
        for nm in ("lam1", "lam2"):
            v = getattr(self, nm)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{nm} must be finite and >= 0, got {v}")
        for nm in ("gamma1", "gamma2"):
            g = getattr(self, nm)
            if g is not None:
                g = np.asarray(g, dtype=np.float64)
                if not np.all(np.isfinite(g)) or np.any(g < 0):
                    raise ValueError(f"{nm} must be finite and >= 0 (shape {g.shape})")
                object.__setattr__(self, nm, g)

    def penalty(self, W: np.ndarray) -> float:
        W = np.asarray(W, dtype=np.float64)
        p = self.lam2 * float(np.sum(W * W)) + self.lam1 * float(np.sum(np.abs(W)))
        for g, f in ((self.gamma2, W * W), (self.gamma1, np.abs(W))):
            if g is not None:
                if g.shape != W.shape:
                    raise ValueError(f"gamma weights have shape {g.shape}, layer has shape {W.shape}")
                p += float(np.sum(g * f))
        return p

    def __call__(self, net: SplitNetwork, W: np.ndarray) -> float:
        return cross_entropy(net.logits(W), net.labels) + self.penalty(W)


# ----------------------------------------------------------------------------------------------------
# D1, D2: path bound and margins


@dataclass(frozen=True)
class PathBoundResult:
    """D1 on a theta grid: ``logit`` (T, B) ||z_theta - z_1||_inf <= eta_s(theta); ``ce`` (T,) |dCE| <=
    (1-theta) B_T."""

    thetas: np.ndarray
    eta: np.ndarray
    budget: float
    logit: Inequality
    ce: Inequality


def _prep(net: SplitNetwork, dec: Decomposition, L: LipschitzEstimate | np.ndarray | None) -> np.ndarray:
    net.with_decomposition_check(dec)
    if L is None:
        L = lipschitz_bounds(net, dec)
    return _L(L, net.n_samples)


def path_bound(
    net: SplitNetwork,
    dec: Decomposition,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.5, 1.0),
) -> PathBoundResult:
    """D1: per-sample logit bound and the cross-entropy path bound on a theta grid (L default: exact)."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    z1 = net.logits(dec.A)
    zs = np.stack([net.logits(dec.at(t)) for t in th])
    e = eta(net.psi1, dec.R, Lv, th)
    B = budget(net.psi1, dec.R, Lv)
    ce1 = cross_entropy(z1, net.labels)
    dce = np.array([abs(cross_entropy(z, net.labels) - ce1) for z in zs])
    dz = np.abs(zs - z1[None]).max(axis=2)
    logit = Inequality("D1 logit: ||z_theta - z_1||_inf <= eta_s(theta)", dz, e, scale=np.abs(z1).max())
    ce = Inequality("D1 CE: |CE(A_theta) - CE(A)| <= (1-theta) B_T(R)", dce, (1 - th) * B, scale=abs(ce1))
    return PathBoundResult(th, e, B, logit, ce)


@dataclass(frozen=True)
class MarginResult:
    """D2: ``margin_change`` (T, B) |Dtrue_theta - Dtrue_1| <= 2 eta; ``flips`` over flipped (theta, s):
    dense Dpred <= factor * eta; ``accuracy`` (T,) |Dacc| |T| <= count; ``certified`` (B,) at theta = 0."""

    thetas: np.ndarray
    eta: np.ndarray
    certified: np.ndarray
    margin_change: Inequality
    flips: Inequality
    accuracy: Inequality


def margin_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.5, 1.0),
    factor: float = 2.0,
) -> MarginResult:
    """D2 (i) label stability of certified samples and (ii) the accuracy inequality; ``factor`` = 2 is the
    theorem (``factor = 1`` is the negative control that adversarial cases break)."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    z1 = net.logits(dec.A)
    e = eta(net.psi1, dec.R, Lv, th)
    pred1 = z1.argmax(axis=1)
    dpred1 = prediction_margin(z1)
    dtrue1 = true_margin(z1, net.labels)
    acc1 = float(np.mean(dtrue1 > 0))
    ch, fl_l, fl_r, acc_l, acc_r = [], [], [], [], []
    for k, t in enumerate(th):
        z = net.logits(dec.at(t))
        ch.append(np.abs(true_margin(z, net.labels) - dtrue1))
        # a label "changes" when the dense prediction is no longer the strict argmax
        flipped = prediction_margin_of_class(z, pred1) <= 0
        fl_l.append(dpred1[flipped])
        fl_r.append(factor * e[k][flipped])
        acc_l.append(abs(accuracy(z, net.labels) - acc1) * net.n_samples)
        acc_r.append(accuracy_bound_count(z1, net.labels, e[k], factor))
    sc = float(np.abs(z1).max())
    return MarginResult(
        th,
        e,
        certified_samples(z1, e[int(np.argmin(th))], factor),
        Inequality("D2 |Dtrue(A_theta) - Dtrue(A)| <= 2 eta_s", np.stack(ch), 2.0 * e, scale=sc),
        Inequality(
            f"D2 label change => Dpred(A) <= {factor:g} eta_s",
            np.concatenate(fl_l),
            np.concatenate(fl_r),
            scale=sc,
        ),
        Inequality(
            f"D2 |acc(A_theta) - acc(A)| |T| <= #{{|Dtrue| <= {factor:g} eta}}",
            np.array(acc_l),
            np.array(acc_r, dtype=float),
        ),
    )


def prediction_margin_of_class(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """z_c - max_{j != c} z_j for a given class c per sample (> 0 iff c is the strict argmax)."""
    z = _logits(z)
    return _margin_of(z, _labels(cls, z))


# ----------------------------------------------------------------------------------------------------
# D3: zero budget


@dataclass(frozen=True)
class ZeroBudgetResult:
    """D3: ``budget`` (must be 0), ``logit`` max|z_S - z_A| <= 0, ``identity`` |J(S) - (J(A) - pen(R))| <=
    0."""

    budget: float
    logit: Inequality
    identity: Inequality
    decrease: bool


def zero_budget(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
) -> ZeroBudgetResult:
    """D3: if B_T(R) = 0 (mask split), logits on T are bit-identical and J(S) = J(A) - lam2||R||^2 -
    lam1||R||_1."""
    if not dec.is_mask:
        raise ValueError("zero_budget needs a mask decomposition (S ⊙ R = 0)")
    Lv = _prep(net, dec, L)
    B = budget(net.psi1, dec.R, Lv)
    if B != 0.0:
        raise ValueError(f"zero_budget: precondition B_T(R) = 0 fails (B_T = {B:.3e})")
    zA, zS = net.logits(dec.A), net.logits(dec.S)
    jA, jS = objective(net, dec.A), objective(net, dec.S)
    pen_R = objective.penalty(dec.R)
    return ZeroBudgetResult(
        B,
        Inequality("D3 logits identical", np.array([np.abs(zS - zA).max()]), np.zeros(1), rtol=0.0),
        Inequality(
            "D3 J(S) = J(A) - pen(R)", np.array([abs(jS - (jA - pen_R))]), np.zeros(1), scale=abs(jA) + pen_R
        ),
        bool(jS < jA),
    )


# ----------------------------------------------------------------------------------------------------
# D4-D8: objective certificates


@dataclass(frozen=True)
class ObjectiveCertificate:
    """``path`` (T,) J(A_theta) - J(A) <= bound(theta); ``certified`` the sufficient decrease condition;
    ``implication`` (1,) certified => J(A_0) < J(A) encoded as J(A_0) - J(A) <= 0 (empty if not certified)."""

    thetas: np.ndarray
    budget: float
    certified: bool
    path: Inequality
    implication: Inequality
    drop: float


def _objective_path(
    net: SplitNetwork,
    dec: Decomposition,
    obj: ElasticNet,
    th: np.ndarray,
    bound: np.ndarray,
    certified: bool,
    B: float,
    name: str,
) -> ObjectiveCertificate:
    jA = obj(net, dec.A)
    j = np.array([obj(net, dec.at(t)) for t in th])
    scale = abs(jA) + obj.penalty(dec.A) + abs(B)
    jS = obj(net, dec.S)
    imp_l = np.array([jS - jA]) if certified else np.zeros(0)
    imp = Inequality(f"{name}: certified => J(S) < J(A)", imp_l, np.zeros_like(imp_l), scale=scale, rtol=0.0)
    return ObjectiveCertificate(th, B, certified, Inequality(name, j - jA, bound, scale=scale), imp, jA - jS)


def frobenius_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    lam2: float,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> ObjectiveCertificate:
    """D4 (any decomposition): J2(A_theta) - J2(A) <= (1-theta)B_T - lam2(1-theta^2)||R||^2 - 2
    lam2(1-theta)<S,R>;
    certified when B_T + 2 lam2 |<S,R>| < lam2 ||R||^2."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    obj = ElasticNet(lam2=lam2)
    B = budget(net.psi1, dec.R, Lv)
    r2, sr = float(np.sum(dec.R**2)), float(np.sum(dec.S * dec.R))
    bound = (1 - th) * B - lam2 * (1 - th**2) * r2 - 2 * lam2 * (1 - th) * sr
    return _objective_path(
        net, dec, obj, th, bound, B + 2 * lam2 * abs(sr) < lam2 * r2, B, "D4 Frobenius path"
    )


def elastic_net_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    name: str = "D5 elastic-net path",
) -> ObjectiveCertificate:
    """D5/D6 (mask split): J(A_theta) - J(A) <= (1-theta)B_T - (1-theta^2) pen2(R) - (1-theta) pen1(R),
    where pen2
    = lam2||R||^2 + sum gamma2 R^2 and pen1 = lam1||R||_1 + sum gamma1|R|; certified when B_T < pen2 +
    pen1."""
    if not dec.is_mask:
        raise ValueError(
            "elastic_net_certificate needs disjoint supports (S ⊙ R = 0); use frobenius_certificate"
        )
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    B = budget(net.psi1, dec.R, Lv)
    p2 = ElasticNet(lam2=objective.lam2, gamma2=objective.gamma2).penalty(dec.R)
    p1 = ElasticNet(lam1=objective.lam1, gamma1=objective.gamma1).penalty(dec.R)
    bound = (1 - th) * B - (1 - th**2) * p2 - (1 - th) * p1
    return _objective_path(net, dec, objective, th, bound, B < p2 + p1, B, name)


def prune_restore_certificate(
    net: SplitNetwork,
    triple: PruneRestore,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> ObjectiveCertificate:
    """D7: D5 applied to (S + Q) + P with A_theta = S + Q + theta P; certified when B_T(P) < pen(P)."""
    return elastic_net_certificate(net, triple.restore(), objective, L, thetas, "D7 prune-restore path")


@dataclass(frozen=True)
class RestorationResult:
    """D8: ``upper_restore`` = J(A) - pen(P) + B_T(P), ``upper_prune_all`` = J(A) - pen(Q+P) + B_T(Q+P);
    ``identity``: |(U_all - U_restore) - (B_T(R) - B_T(P) - pen(Q))| <= 0; ``helps`` iff B_T(R) - B_T(P) >
    pen(Q)."""

    upper_restore: float
    upper_prune_all: float
    budget_R: float
    budget_P: float
    helps: bool
    identity: Inequality
    equivalence: Inequality


def restoration_identity(
    net: SplitNetwork,
    triple: PruneRestore,
    objective: ElasticNet,
    L_R: LipschitzEstimate | np.ndarray | None = None,
    L_P: LipschitzEstimate | np.ndarray | None = None,
) -> RestorationResult:
    """D8: restoring Q lowers the upper bound iff B_T(Q+P) - B_T(P) > lam2||Q||^2 + lam1||Q||_1 (exact
    algebra)."""
    dall, dres = triple.prune_all(), triple.restore()
    LR, LP = _prep(net, dall, L_R), _prep(net, dres, L_P)
    jA = objective(net, triple.A)
    BR, BP = budget(net.psi1, dall.R, LR), budget(net.psi1, dres.R, LP)
    pen = objective.penalty
    u_res = jA - pen(triple.P) + BP
    u_all = jA - pen(triple.Q + triple.P) + BR
    lhs_gap = u_all - u_res
    rhs_gap = BR - BP - pen(triple.Q)
    scale = abs(jA) + pen(triple.A) + BR + BP
    helps = rhs_gap > 0
    # equivalence: sign(U_all - U_restore) agrees with sign of the condition (unless within rounding of a tie)
    tol = RTOL * max(1.0, scale)
    agree = (lhs_gap > 0) == helps or abs(lhs_gap) <= tol or abs(rhs_gap) <= tol
    return RestorationResult(
        u_res,
        u_all,
        BR,
        BP,
        bool(helps),
        Inequality("D8 identity", np.array([abs(lhs_gap - rhs_gap)]), np.zeros(1), scale=scale),
        Inequality("D8 iff", np.array([0.0 if agree else 1.0]), np.zeros(1), rtol=0.0),
    )


# ----------------------------------------------------------------------------------------------------
# D9: stationarity


@dataclass(frozen=True)
class StationarityResult:
    """D9 after rescaling R so that theta = 1 minimises f(theta) = J(S + theta R) on [0, 2].

    ``theta_star`` the 1-D minimiser, ``eps`` (H,) = max(0, (f(1) - f(1-h))/h) for h in ``hs``,
    ``inequality`` (H,): (2-h) pen2(R) + pen1(R) <= B_T(R) + eps_h (the theorem at theta = 1-h),
    ``stationary_eps`` = eps at the smallest h (the optimiser tolerance)."""

    theta_star: float
    decomposition: Decomposition
    hs: np.ndarray
    eps: np.ndarray
    budget: float
    inequality: Inequality
    stationary_eps: float


def stationarity(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    method: str = "exact",
    lipschitz_scale: float = 1.0,
    hs: Sequence[float] = (1e-6, 1e-3, 0.1, 0.5, 1.0),
    xatol: float = 1e-10,
) -> StationarityResult:
    """D9 via the 1-D minimiser rescaling (scipy.optimize.minimize_scalar, bounded on [0, 2])."""
    if not dec.is_mask:
        raise ValueError("stationarity needs a mask decomposition (S ⊙ R = 0)")
    net.with_decomposition_check(dec)

    def f_raw(t: float) -> float:
        return objective(net, dec.S + t * dec.R)

    opt = minimize_scalar(f_raw, bounds=(0.0, 2.0), method="bounded", options={"xatol": xatol})
    ts = float(opt.x)
    grid = np.linspace(0.0, 2.0, 41)
    fg = np.array([f_raw(t) for t in grid])
    if fg.min() < opt.fun:
        ts = float(grid[int(np.argmin(fg))])
    dec2 = dec.scaled(ts)
    net2 = SplitNetwork(net.psi1, dec2.A, net.tail, net.labels, net.bias)
    L = lipschitz_bounds(net2, dec2, method).scaled(lipschitz_scale)
    B = budget(net2.psi1, dec2.R, L)
    hv = np.asarray(hs, dtype=np.float64)
    if np.any(hv <= 0) or np.any(hv > 1):
        raise ValueError(f"hs must lie in (0, 1], got {hv}")
    f1 = objective(net2, dec2.A)
    eps = np.array([max(0.0, (f1 - objective(net2, dec2.at(1.0 - h))) / h) for h in hv])
    p2 = ElasticNet(lam2=objective.lam2, gamma2=objective.gamma2).penalty(dec2.R)
    p1 = ElasticNet(lam1=objective.lam1, gamma1=objective.gamma1).penalty(dec2.R)
    scale = (abs(f1) + p1 + p2) / hv
    ineq = Inequality("D9 (2-h) pen2 + pen1 <= B_T + eps_h", (2 - hv) * p2 + p1, B + eps, scale=scale)
    return StationarityResult(ts, dec2, hv, eps, B, ineq, float(eps[int(np.argmin(hv))]))


# ----------------------------------------------------------------------------------------------------
# multi-layer (D10-D12)


@dataclass(frozen=True)
class MLPNetwork:
    """ReLU MLP: h_0 = X, h_j = relu(W_j h_{j-1} + b_j) for j < L, logits = W_L h_{L-1} + b_L (0-based
    list)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    X: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.weights) < 2 or len(self.weights) != len(self.biases):
            raise ValueError("MLPNetwork needs >= 2 layers and one bias per weight")
        X = _matrix(self.X, "X")
        Ws = tuple(_matrix(W, f"weights[{j}]") for j, W in enumerate(self.weights))
        bs = tuple(np.asarray(b, dtype=np.float64) for b in self.biases)
        d = X.shape[1]
        for j, (W, b) in enumerate(zip(Ws, bs)):
            if W.shape[1] != d or b.shape != (W.shape[0],):
                raise ValueError(f"layer {j}: weight {W.shape} / bias {b.shape} do not fit input width {d}")
            d = W.shape[0]
        lab = np.asarray(self.labels)
        if lab.shape != (X.shape[0],) or np.any(lab < 0) or np.any(lab >= d):
            raise ValueError(f"labels must have shape ({X.shape[0]},) with values in [0, {d})")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "weights", Ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "labels", lab.astype(np.int64))

    def with_weight(self, j: int, W: np.ndarray) -> MLPNetwork:
        Ws = list(self.weights)
        Ws[j] = W
        return MLPNetwork(tuple(Ws), self.biases, self.X, self.labels)

    def layer_input(self, j: int) -> np.ndarray:
        h = self.X
        for W, b in zip(self.weights[:j], self.biases[:j]):
            h = np.maximum(h @ W.T + b, 0.0)
        return h

    def logits(self) -> np.ndarray:
        h = self.layer_input(len(self.weights) - 1)
        return h @ self.weights[-1].T + self.biases[-1]

    def split(self, j: int) -> SplitNetwork:
        """The network split at layer j: psi1 = layer input, tail = (ReLU, Linear, ..., Linear) after it."""
        mods: list[nn.Module] = []
        for W, b in zip(self.weights[j + 1 :], self.biases[j + 1 :]):
            lin = nn.Linear(W.shape[1], W.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
            mods += [nn.ReLU(), lin]
        tail = nn.Sequential(*mods) if mods else nn.Identity()
        return SplitNetwork(self.layer_input(j), self.weights[j], tail, self.labels, self.biases[j])


@dataclass(frozen=True)
class SequentialPruneResult:
    """Steps of ordered pruning. ``budgets[j]`` = B_j(R_j) in the intermediate network, ``etas`` (M, B)
    per-step eta_{j,s}, ``logits`` (M+1, B, K) z^{(0)} .. z^{(M)}, ``networks`` alpha^{(0)} .. alpha^{(M)}."""

    layers: tuple[int, ...]
    removed: tuple[np.ndarray, ...]
    budgets: np.ndarray
    etas: np.ndarray
    logits: np.ndarray
    networks: tuple[MLPNetwork, ...]
    step_logit: Inequality


def sequential_prune(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    fraction: float = 1.0,
    method: str = "exact",
    lipschitz_scale: float = 1.0,
) -> SequentialPruneResult:
    """Prune ``layers`` in order with ``masks`` (1 = keep); removes ``fraction * R_j`` at step j. psi1 and the
    tail of step j are recomputed in the partially pruned network; B_j and eta_{j,s} use L on that segment.
    ``step_logit`` checks ||z^{(j)} - z^{(j-1)}||_inf <= eta_{j,s}."""
    if len(layers) != len(masks) or len(layers) == 0:
        raise ValueError("layers and masks must be non-empty and of equal length")
    if len(set(layers)) != len(layers) or any(not 0 <= j < len(mlp.weights) for j in layers):
        raise ValueError(f"layers must be distinct indices in [0, {len(mlp.weights)}), got {list(layers)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    nets, removed, budgets, etas, zs = [mlp], [], [], [], [mlp.logits()]
    cur = mlp
    for j, mask in zip(layers, masks):
        A = cur.weights[j]
        M = _check_mask(mask, A.shape)
        R = fraction * (1.0 - M) * A
        dec = Decomposition(A - R, R)
        sn = cur.split(j)
        L = lipschitz_bounds(sn, dec, method).scaled(lipschitz_scale)
        budgets.append(budget(sn.psi1, R, L))
        etas.append(eta(sn.psi1, R, L, 0.0))
        removed.append(R)
        cur = cur.with_weight(j, A - R)
        nets.append(cur)
        zs.append(cur.logits())
    z = np.stack(zs)
    e = np.stack(etas)
    step = Inequality(
        "D11 ||z^(j) - z^(j-1)||_inf <= eta_{j,s}",
        np.abs(np.diff(z, axis=0)).max(axis=2),
        e,
        scale=float(np.abs(z).max()),
    )
    return SequentialPruneResult(tuple(layers), tuple(removed), np.array(budgets), e, z, tuple(nets), step)


def _mlp_objective(net: MLPNetwork, lam1: Sequence[float], lam2: Sequence[float]) -> float:
    ce = cross_entropy(net.logits(), net.labels)
    return ce + sum(
        l2 * float(np.sum(W**2)) + l1 * float(np.sum(np.abs(W))) for W, l1, l2 in zip(net.weights, lam1, lam2)
    )


def _lams(mlp: MLPNetwork, lam: Sequence[float] | float, name: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in np.broadcast_to(np.asarray(lam, dtype=float), (len(mlp.weights),)))
    if any((not np.isfinite(x)) or x < 0 for x in v):
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return v


def telescoped_bound(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    lam1: Sequence[float] | float,
    lam2: Sequence[float] | float,
    method: str = "exact",
    lipschitz_scale: float = 1.0,
) -> tuple[SequentialPruneResult, Inequality]:
    """D10: J(alpha^(M)) - J(alpha^(0)) <= -sum lam2_j ||R_j||^2 - sum lam1_j ||R_j||_1 + sum B_j (lam per
    layer)."""
    l1, l2 = _lams(mlp, lam1, "lam1"), _lams(mlp, lam2, "lam2")
    res = sequential_prune(mlp, layers, masks, 1.0, method, lipschitz_scale)
    j0, jM = _mlp_objective(mlp, l1, l2), _mlp_objective(res.networks[-1], l1, l2)
    pen = sum(
        l2[j] * float(np.sum(R**2)) + l1[j] * float(np.sum(np.abs(R))) for j, R in zip(layers, res.removed)
    )
    ineq = Inequality(
        "D10 telescoped elastic-net bound",
        np.array([jM - j0]),
        np.array([-pen + float(res.budgets.sum())]),
        scale=abs(j0) + pen,
    )
    return res, ineq


@dataclass(frozen=True)
class MultiMarginResult:
    """D11: ``eta_tot`` (B,), ``ce`` |dCE| <= (2/|T|) sum eta_tot, ``flips`` flipped => Dpred_0 <= factor
    eta_tot,
    ``accuracy`` |dacc||T| <= #{|Dtrue_0| <= factor eta_tot}, and the per-step logit bounds."""

    eta_tot: np.ndarray
    step_logit: Inequality
    ce: Inequality
    flips: Inequality
    accuracy: Inequality


def multilayer_margin(
    res: SequentialPruneResult, labels: np.ndarray, factor: float = 2.0
) -> MultiMarginResult:
    """D11 from a :func:`sequential_prune` result."""
    z0, zM = res.logits[0], res.logits[-1]
    et = res.etas.sum(axis=0)
    ce0, ceM = cross_entropy(z0, labels), cross_entropy(zM, labels)
    pred0 = z0.argmax(axis=1)
    flipped = prediction_margin_of_class(zM, pred0) <= 0
    d0 = prediction_margin(z0)
    dacc = abs(accuracy(zM, labels) - accuracy(z0, labels)) * z0.shape[0]
    sc = float(np.abs(res.logits).max())
    return MultiMarginResult(
        et,
        res.step_logit,
        Inequality(
            "D11 |dCE| <= (2/|T|) sum eta_tot",
            np.array([abs(ceM - ce0)]),
            np.array([2 * et.mean()]),
            scale=abs(ce0),
        ),
        Inequality(f"D11 flip => Dpred_0 <= {factor:g} eta_tot", d0[flipped], factor * et[flipped], scale=sc),
        Inequality(
            "D11 accuracy", np.array([dacc]), np.array([float(accuracy_bound_count(z0, labels, et, factor))])
        ),
    )


def multilayer_stationarity(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    lam1: Sequence[float] | float,
    lam2: Sequence[float] | float,
    hs: Sequence[float] = (1e-6, 1e-3, 0.1, 0.5, 1.0),
    method: str = "exact",
    lipschitz_scale: float = 1.0,
    rescale: bool = True,
) -> tuple[MLPNetwork, Inequality]:
    """D12. Optionally rescale all R_j by the minimiser t* of J(S_j + t R_j for all j) on [0, 2]; then for
    each h,
    with alpha_h = (S_j + (1-h) R_j in order) and B_j^(h) the per-step budgets of removing h R_j (divided
    by h),
    eps_h = max(0, (J(alpha^0) - J(alpha_h))/h) and the check is
    sum lam2_j (2-h)||R_j||^2 + sum lam1_j ||R_j||_1 <= sum B_j^(h) + eps_h."""
    l1, l2 = _lams(mlp, lam1, "lam1"), _lams(mlp, lam2, "lam2")
    Ms = [_check_mask(m, mlp.weights[j].shape) for j, m in zip(layers, masks)]
    Ss = [M * mlp.weights[j] for j, M in zip(layers, Ms)]
    Rs = [(1 - M) * mlp.weights[j] for j, M in zip(layers, Ms)]

    def net_at(t: float) -> MLPNetwork:
        out = mlp
        for j, S, R in zip(layers, Ss, Rs):
            out = out.with_weight(j, S + t * R)
        return out

    if rescale:
        f = lambda t: _mlp_objective(net_at(t), l1, l2)  # noqa: E731
        opt = minimize_scalar(f, bounds=(0.0, 2.0), method="bounded", options={"xatol": 1e-10})
        ts = float(opt.x)
        grid = np.linspace(0, 2, 41)
        fg = np.array([f(t) for t in grid])
        if fg.min() < opt.fun:
            ts = float(grid[int(np.argmin(fg))])
        Rs = [ts * R for R in Rs]
        base = net_at(ts)
    else:
        base = mlp
    Rs_b = [base.weights[j] - S for j, S in zip(layers, Ss)]
    j0 = _mlp_objective(base, l1, l2)
    p2 = sum(l2[j] * float(np.sum(R**2)) for j, R in zip(layers, Rs_b))
    p1 = sum(l1[j] * float(np.sum(np.abs(R))) for j, R in zip(layers, Rs_b))
    lhs, rhs, scl = [], [], []
    for h in hs:
        if not 0 < h <= 1:
            raise ValueError(f"hs must lie in (0, 1], got {h}")
        res = sequential_prune(base, layers, Ms, h, method, lipschitz_scale)
        jh = _mlp_objective(res.networks[-1], l1, l2)
        eps_h = max(0.0, (j0 - jh) / h)
        lhs.append((2 - h) * p2 + p1)
        rhs.append(float(res.budgets.sum()) / h + eps_h)
        scl.append((abs(j0) + p1 + p2) / h)
    return base, Inequality("D12 multi-layer stationarity", np.array(lhs), np.array(rhs), scale=np.array(scl))


# ----------------------------------------------------------------------------------------------------
# generated cases and one check per claim


@dataclass(frozen=True)
class CertCase:
    """One generated single-layer case: ``net``, a keep ``mask`` (n, m), a general non-mask removed part
    ``general_R`` (D4), a disjoint ``triple`` (D7/D8), elastic-net weights and a theta grid."""

    net: SplitNetwork
    mask: np.ndarray
    general_R: np.ndarray
    triple: PruneRestore
    lam1: float
    lam2: float
    gamma1: np.ndarray
    gamma2: np.ndarray
    thetas: np.ndarray

    @property
    def decomposition(self) -> Decomposition:
        return MaskDecomposition(self.net.A, self.mask)

    @property
    def general(self) -> Decomposition:
        return Decomposition(self.net.A - self.general_R, self.general_R)


@dataclass(frozen=True)
class MultiLayerCase:
    """A ReLU MLP with masks for the layers pruned in order and per-layer elastic-net weights."""

    mlp: MLPNetwork
    layers: tuple[int, ...]
    masks: tuple[np.ndarray, ...]
    lam1: tuple[float, ...]
    lam2: tuple[float, ...]


def _L_for(case: CertCase, dec: Decomposition, method: str, scale: float) -> LipschitzEstimate:
    return lipschitz_bounds(case.net, dec, method).scaled(scale)


def check_d1(case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D1 per-sample logit bound and CE path bound; tightness = max realised ||dz|| / eta."""
    dec = case.decomposition
    r = path_bound(case.net, dec, _L_for(case, dec, method, lipschitz_scale), case.thetas)
    return CheckResult.from_inequalities([r.logit, r.ce], _ratio_max(r.logit.lhs, r.logit.rhs))


def check_d2(
    case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0, margin_factor: float = 2.0
) -> CheckResult:
    """D2 margin change, label stability of certified samples, accuracy inequality."""
    dec = case.decomposition
    r = margin_certificate(
        case.net, dec, _L_for(case, dec, method, lipschitz_scale), case.thetas, margin_factor
    )
    return CheckResult.from_inequalities(
        [r.margin_change, r.flips, r.accuracy], _ratio_max(r.margin_change.lhs, r.margin_change.rhs)
    )


def check_d3(case: CertCase, method: str = "exact") -> CheckResult:
    """D3 on a dead-column case (B_T(R) = 0): identical logits and the exact objective identity."""
    r = zero_budget(
        case.net,
        case.decomposition,
        ElasticNet(case.lam1, case.lam2),
        lipschitz_bounds(case.net, case.decomposition, method),
    )
    return CheckResult.from_inequalities([r.logit, r.identity])


def _objective_result(c: ObjectiveCertificate) -> CheckResult:
    """Tightness of an objective certificate: realised |dCE| over its budget share (1-theta) B_T."""
    share = (1.0 - c.thetas) * c.budget
    ce_part = c.path.lhs - (c.path.rhs - share)
    return CheckResult.from_inequalities([c.path, c.implication], _ratio_max(np.abs(ce_part), share))


def check_d4(case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D4 on the general (non-mask) decomposition."""
    dec = case.general
    return _objective_result(
        frobenius_certificate(
            case.net, dec, case.lam2, _L_for(case, dec, method, lipschitz_scale), case.thetas
        )
    )


def check_d5(case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D5 elastic-net path inequality and certificate => strict decrease."""
    dec = case.decomposition
    return _objective_result(
        elastic_net_certificate(
            case.net,
            dec,
            ElasticNet(case.lam1, case.lam2),
            _L_for(case, dec, method, lipschitz_scale),
            case.thetas,
        )
    )


def check_d6(case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D6 weighted elastic net (gamma1, gamma2) path inequality and certificate => strict decrease."""
    dec = case.decomposition
    obj = ElasticNet(gamma1=case.gamma1, gamma2=case.gamma2)
    return _objective_result(
        elastic_net_certificate(
            case.net, dec, obj, _L_for(case, dec, method, lipschitz_scale), case.thetas, "D6 weighted path"
        )
    )


def check_d7(case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D7 prune-restore path inequality (restore Q, remove P)."""
    dec = case.triple.restore()
    return _objective_result(
        prune_restore_certificate(
            case.net,
            case.triple,
            ElasticNet(case.lam1, case.lam2),
            _L_for(case, dec, method, lipschitz_scale),
            case.thetas,
        )
    )


def check_d8(case: CertCase, method: str = "exact") -> CheckResult:
    """D8 identity U_all - U_restore = B_T(R) - B_T(P) - pen(Q) and the iff."""
    r = restoration_identity(
        case.net,
        case.triple,
        ElasticNet(case.lam1, case.lam2),
        lipschitz_bounds(case.net, case.triple.prune_all(), method),
        lipschitz_bounds(case.net, case.triple.restore(), method),
    )
    return CheckResult.from_inequalities([r.identity, r.equivalence])


def check_d9(
    case: CertCase, method: str = "exact", lipschitz_scale: float = 1.0, weighted: bool = False
) -> CheckResult:
    """D9 (weighted=True: the Gamma version) after the 1-D minimiser rescaling; tightness = max lhs/rhs."""
    obj = ElasticNet(gamma1=case.gamma1, gamma2=case.gamma2) if weighted else ElasticNet(case.lam1, case.lam2)
    r = stationarity(case.net, case.decomposition, obj, method, lipschitz_scale)
    return CheckResult.from_inequalities([r.inequality], _ratio_max(r.inequality.lhs, r.inequality.rhs))


def check_d10(case: MultiLayerCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D10 telescoped bound over the ordered layers (psi1 recomputed in the partially pruned network)."""
    _, ineq = telescoped_bound(
        case.mlp, case.layers, case.masks, case.lam1, case.lam2, method, lipschitz_scale
    )
    return CheckResult.from_inequalities([ineq])


def check_d11(
    case: MultiLayerCase, method: str = "exact", lipschitz_scale: float = 1.0, margin_factor: float = 2.0
) -> CheckResult:
    """D11 per-step logit bounds, CE bound with eta_tot, flips and accuracy."""
    res = sequential_prune(case.mlp, case.layers, case.masks, 1.0, method, lipschitz_scale)
    r = multilayer_margin(res, case.mlp.labels, margin_factor)
    return CheckResult.from_inequalities(
        [r.step_logit, r.ce, r.flips, r.accuracy], _ratio_max(r.step_logit.lhs, r.step_logit.rhs)
    )


def check_d12(case: MultiLayerCase, method: str = "exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D12 after rescaling all R_j to the 1-D minimiser of the multi-layer objective."""
    _, ineq = multilayer_stationarity(
        case.mlp,
        case.layers,
        case.masks,
        case.lam1,
        case.lam2,
        method=method,
        lipschitz_scale=lipschitz_scale,
    )
    return CheckResult.from_inequalities([ineq], _ratio_max(ineq.lhs, ineq.rhs))


CHECKS: dict[str, Callable[..., CheckResult]] = {
    "D1": check_d1,
    "D2": check_d2,
    "D3": check_d3,
    "D4": check_d4,
    "D5": check_d5,
    "D6": check_d6,
    "D7": check_d7,
    "D8": check_d8,
    "D9": check_d9,
    "D10": check_d10,
    "D11": check_d11,
    "D12": check_d12,
}
