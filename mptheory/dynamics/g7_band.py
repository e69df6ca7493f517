"""G7 on one realisation of the three-layer model: the regularised loss L(S₂ + ϑR₂) − L(W₂) against
−λ_reg(1−ϑ²)‖R₂‖²_F within the finite-N band, for every ϑ (digest §2.4; also the A2–A5 band checks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mptheory.dynamics._common import Array, _pos_int, _rng
from mptheory.dynamics.three_layer import make_three_layer

__all__ = ["G7Band", "g7_band"]


@dataclass
class G7Band:
    """L(S₂ + ϑR₂) − L(W₂) (``lhs``) against ``center`` = −λ(1−ϑ²)‖R₂‖²_F with half-width
    ``halfwidth`` = (1−ϑ)[(4√2/|T|) Σ_s a(N,s) + 2λ|⟨S₂,R₂⟩_F|] (holds on the G1 event, probability
    ≥ 1 − |T|/N); ``inside`` per ϑ."""

    N: int
    lambda_reg: float
    thetas: Array
    lhs: Array
    center: Array
    halfwidth: Array
    norm_R2: float
    inner_SR: float

    @property
    def inside(self) -> Array:
        return np.abs(self.lhs - self.center) <= self.halfwidth + 1e-12 * (1.0 + np.abs(self.center))

    @property
    def monotone(self) -> bool:
        """L(S + ϑR) non-decreasing in ϑ (the loss falls as more randomness is removed)."""
        order = np.argsort(self.thetas)
        return bool(np.all(np.diff(self.lhs[order]) >= -1e-12))


def g7_band(N: int = 300, thetas: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)),
            lambda_reg: float = 0.01, sigma2: float = 1.0, T: int = 30, d: int = 10, K: int = 5,
            activation: str = "abs",
            rng: np.random.Generator | int | None = None) -> G7Band:
    """G7 on one realisation of the three-layer model with L = L_CE + λ_reg Σ‖W_i‖²_F (only W₂ moves); the
    cross-entropy is :func:`mptheory.certificates.cross_entropy`."""
    from mptheory.certificates import cross_entropy

    N, T = _pos_int("N", N), _pos_int("T", T)
    if lambda_reg <= 0:
        raise ValueError(f"lambda_reg must be > 0; got {lambda_reg!r}")
    if not (0.0 < sigma2 <= 1.0):
        raise ValueError(f"G7 (through G1) assumes 0 < sigma2 ≤ 1; got sigma2 = {sigma2!r}")
    th = np.asarray(thetas, dtype=np.float64)
    if th.ndim != 1 or th.size == 0 or np.any(th < 0) or np.any(th > 1):
        raise ValueError("thetas must be a non-empty 1-D sequence in [0, 1]")
    gen = _rng(rng)
    net = make_three_layer(N, d=d, K=K, sigma2=sigma2, activation=activation, rng=gen)
    X = gen.standard_normal((T, d))
    y = gen.integers(0, K, size=T)

    def loss(W2: Array) -> float:
        return float(cross_entropy(net.logits(X, W2), y) + lambda_reg * np.sum(W2**2))

    LW = loss(net.W2)
    lhs = np.array([loss(net.S2 + t * net.R2) - LW for t in th])
    nR = float(np.sum(net.R2**2))
    inner = float(np.sum(net.S2 * net.R2))
    center = -lambda_reg * (1 - th**2) * nR
    half = (1 - th) * (4.0 * math.sqrt(2.0) * float(net.a(X).mean()) + 2.0 * lambda_reg * abs(inner))
    return G7Band(N=N, lambda_reg=float(lambda_reg), thetas=th, lhs=lhs, center=center, halfwidth=half,
                  norm_R2=nR, inner_SR=inner)
