"""The Gaussian three-layer model of the simplified theory (ESM 1 §3, digest §2.4).

``X(s) = λ(W₃ λ(W₂ λ(W₁ s)))`` with ``W₂ = S₂ + R₂``: a low-rank signal plus iid noise N(0, σ²/N), and the
thresholds ``a(N, s)``, ``τ_N(s)`` (G1) and ``τ_{N,δ}(s)`` (G4) the simulations check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mptheory.dynamics._common import Array, _act, _pos_int, _prob, _rng
from mptheory.spikes import low_rank_signal

__all__ = ["ThreeLayerNet", "make_three_layer", "outer_scale"]


def _w3_w1s(W1: Array, W3: Array, X: Array) -> Array:
    """‖W₃‖∞ ‖W₁ s‖₂ per sample (‖·‖∞ the induced ∞-norm, the largest absolute row sum)."""
    w3 = float(np.abs(W3).sum(axis=1).max())
    return w3 * np.linalg.norm(np.asarray(X, dtype=np.float64) @ W1.T, axis=1)


def outer_scale(W1: Array, W3: Array, X: Array) -> Array:
    """a(N, s) = ‖W₃‖∞ ‖W₁ s‖₂ √(log(2N)/N) per sample, N = W1.shape[0] (the width): the scale of the G1
    threshold τ_N(s) = 2√2 a(N, s). Also evaluated on trained networks (the width-scaling figure)."""
    N = int(np.shape(W1)[0])
    return _w3_w1s(W1, W3, X) * math.sqrt(math.log(2 * N) / N)


@dataclass
class ThreeLayerNet:
    """X(s) = λ(W₃ λ(W₂ λ(W₁ s))), no biases, with W₂ = S₂ + R₂ (ESM 1 §3).

    Shapes: W1 (N, d), S2 and R2 (N, N), W3 (K, N); ``sigma2`` is the noise variance of R₂ in the
    normalised model (entries N(0, σ²/N); the digest's g); ``activation`` is ``"relu"`` or ``"abs"``.
    """

    W1: Array
    S2: Array
    R2: Array
    W3: Array
    sigma2: float
    activation: str = "abs"

    @property
    def N(self) -> int:
        return int(self.S2.shape[0])

    @property
    def W2(self) -> Array:
        return self.S2 + self.R2

    def hidden(self, X: Array) -> Array:
        """ψ₁(s) = λ(W₁ s) for a batch X of shape (T, d): returns (T, N)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.W1.shape[1]:
            raise ValueError(f"inputs must have shape (T, {self.W1.shape[1]}); got {X.shape}")
        return _act(self.activation)(X @ self.W1.T)

    def logits(self, X: Array, W2: Array | None = None) -> Array:
        """X(s, α) for a batch (T, d) with middle layer ``W2`` (default S₂ + R₂): returns (T, K)."""
        lam = _act(self.activation)
        W = self.W2 if W2 is None else W2
        return lam(lam(self.hidden(X) @ W.T) @ self.W3.T)

    def a(self, X: Array) -> Array:
        """Outer-layer scale a(N, s) = ‖W₃‖∞ ‖W₁ s‖₂ √(log(2N)/N) per sample: (T,) (:func:`outer_scale`)."""
        return outer_scale(self.W1, self.W3, X)

    def tau(self, X: Array) -> Array:
        """G1: τ_N(s) = 2√2 a(N, s) (valid for σ² ≤ 1)."""
        return 2.0 * math.sqrt(2.0) * self.a(X)

    def tau_delta(self, X: Array, delta: float, T0: int | None = None) -> Array:
        """G4: τ_{N,δ}(s) = ‖W₃‖∞ ‖W₁s‖₂ √(2σ² log(2N|T₀|/δ)/N), simultaneous over |T₀| samples."""
        X = np.asarray(X, dtype=np.float64)
        delta = _prob("delta", delta)
        t0 = X.shape[0] if T0 is None else _pos_int("T0", T0)
        return _w3_w1s(self.W1, self.W3, X) * math.sqrt(
            2.0 * self.sigma2 * math.log(2 * self.N * t0 / delta) / self.N)


def make_three_layer(N: int, d: int = 10, K: int = 5, sigma2: float = 1.0,
                     spikes: Sequence[float] = (3.0, 2.0),
                     activation: str = "abs", w3_l1: float = 1.0,
                     rng: np.random.Generator | int | None = None) -> ThreeLayerNet:
    """Random admissible network: W₁ entries N(0, 1/(dN)) (so ‖W₁s‖₂ ≈ ‖s‖₂/√d), S₂ a low-rank signal with
    the given singular values (:func:`mptheory.spikes.low_rank_signal`), R₂ iid N(0, σ²/N), W₃ Gaussian with
    every row rescaled to ℓ₁ norm ``w3_l1`` (so ‖W₃‖∞ = w3_l1 and a(N, s) → 0 as N grows)."""
    N, d, K = _pos_int("N", N), _pos_int("d", d), _pos_int("K", K)
    if not (0.0 <= sigma2):
        raise ValueError(f"sigma2 must be ≥ 0; got {sigma2!r}")
    _act(activation)
    gen = _rng(rng)
    W1 = gen.standard_normal((N, d)) / math.sqrt(d * N)
    S2 = low_rank_signal((N, N), spikes, gen)
    R2 = gen.standard_normal((N, N)) * math.sqrt(sigma2 / N)
    W3 = gen.standard_normal((K, N))
    W3 *= w3_l1 / np.abs(W3).sum(axis=1, keepdims=True)
    return ThreeLayerNet(W1=W1, S2=S2, R2=R2, W3=W3, sigma2=float(sigma2), activation=activation)
