"""Per-sample quantities of the certificate and the objectives (digest §1.2, §2.1).

With ``v_s = ψ₁(s)`` the layer input of sample ``s`` and ``L_s`` a Lipschitz bound of the tail on the segment
``{(S + θR) v_s : θ ∈ [0, 1]}``:

* :func:`removed_norms` ``‖R v_s‖∞``; :func:`eta` ``η_s(θ) = (1 − θ) L_s ‖R v_s‖∞``;
  :func:`budget` ``B_T(R) = (2/|T|) Σ_s L_s ‖R v_s‖∞``;
* margins: :func:`prediction_margin` ``Δ^pred``, :func:`true_margin` ``Δ^true``,
  :func:`prediction_margin_of_class`; :func:`accuracy`; :func:`cross_entropy` (one-layer CE via
  ``scipy.special.logsumexp``);
* the certified set :func:`certified_samples` (dense prediction margin ``> 2η_s``) and the D2 accuracy
  count :func:`accuracy_bound_count`;
* :func:`lipschitz_bounds`: ``L_s`` of a :class:`~mptheory.certificates.SplitNetwork` on the segment of a
  decomposition, by any estimator of :data:`mptheory.lipschitz.ESTIMATORS`;
* :class:`ElasticNet`: the objectives ``𝓙₂``, ``𝓙`` and ``𝓙_Γ``.

These are the formulas ``mpprune`` calls on real models; they are defined once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from torch import nn

from mptheory.certificates.network import Decomposition, PruneRestore, SplitNetwork, _matrix, _theta
from mptheory.lipschitz import (
    ESTIMATORS,
    LipschitzEstimate,
    affine_tail,
    jacobian_segment,
    piecewise_linear_segment,
    product_bound,
)

__all__ = [
    "ElasticNet",
    "accuracy",
    "accuracy_bound_count",
    "budget",
    "certified_samples",
    "cross_entropy",
    "eta",
    "lipschitz_bounds",
    "prediction_margin",
    "prediction_margin_of_class",
    "removed_norms",
    "true_margin",
]


def lipschitz_bounds(
    net: SplitNetwork, dec: Decomposition | PruneRestore, method: str = "pl_exact", n_theta: int = 20
) -> LipschitzEstimate:
    """L_s of ``net``'s tail on the segment {(S + θR) ψ₁(s)} by the estimator ``method`` of
    :data:`mptheory.lipschitz.ESTIMATORS`: ``"pl_exact"`` (exact largest slope of a piecewise-linear tail,
    sound; the default), ``"product_norm"`` (product of induced ∞-norms, sound), ``"affine"`` (a tail
    ``W v + b`` or ``W relu(v) + b``: ‖W‖∞, sound) or ``"segment_max_slope"`` (Jacobian slope on an
    ``n_theta`` grid: an estimate). A :class:`PruneRestore` uses its restore split ``(S + Q) + P``."""
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {sorted(ESTIMATORS)}, got {method!r}")
    if method == "taylor_bound":  # Taylor models over torch ops: mpprune's engine (mptheory never imports it)
        raise ValueError("method 'taylor_bound' is implemented by mpprune.certify.certify_layer "
                         "(mptheory never imports mpprune)")
    if isinstance(dec, PruneRestore):
        dec = dec.restore()
    u0, u1 = net.layer_output(dec.S), net.layer_output(dec.A)
    if method == "pl_exact":
        return piecewise_linear_segment(net.tail, u0, u1)  # type: ignore[arg-type]
    if method == "product_norm":
        return product_bound(net.tail, net.n_samples)  # type: ignore[arg-type]
    if method == "segment_max_slope":
        return jacobian_segment(net.tail, u0, u1, n_theta)
    mods = list(net.tail) if isinstance(net.tail, nn.Sequential) else [net.tail]
    if not (mods and isinstance(mods[-1], nn.Linear)
            and all(isinstance(m, (nn.ReLU, nn.Identity)) for m in mods[:-1])):
        raise ValueError("method 'affine' needs a tail W v + b or W relu(v) + b (one Linear, last); "
                         f"got {[type(m).__name__ for m in mods]}")
    return affine_tail(mods[-1].weight, mods[-1].bias, net.n_samples)


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


def prediction_margin_of_class(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """z_c - max_{j != c} z_j for a given class c per sample (> 0 iff c is the strict argmax)."""
    z = _logits(z)
    return _margin_of(z, _labels(cls, z))


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
            gam = getattr(self, nm)
            if gam is not None:
                gam = np.asarray(gam, dtype=np.float64)
                if not np.all(np.isfinite(gam)) or np.any(gam < 0):
                    raise ValueError(f"{nm} must be finite and >= 0 (shape {gam.shape})")
                object.__setattr__(self, nm, gam)

    def penalty(self, W: np.ndarray) -> float:
        W = np.asarray(W, dtype=np.float64)
        p = self.lam2 * float(np.sum(W * W)) + self.lam1 * float(np.sum(np.abs(W)))
        for gam, f in ((self.gamma2, W * W), (self.gamma1, np.abs(W))):
            if gam is not None:
                if gam.shape != W.shape:
                    raise ValueError(f"gamma weights have shape {gam.shape}, layer has shape {W.shape}")
                p += float(np.sum(gam * f))
        return p

    def __call__(self, net: SplitNetwork, W: np.ndarray) -> float:
        return cross_entropy(net.logits(W), net.labels) + self.penalty(W)

