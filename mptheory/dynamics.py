"""Simulations of the additive signal-plus-noise model (digest §1.5–1.6, §2.3–2.4: A1–A8, G1–G15).

Every function returns data (numpy arrays in small dataclasses); the claims registry and the
figures decide what to assert or plot.  Nothing here imports timm; torch is imported lazily and
only by :func:`train_width_series`.

Contents

* :class:`ThreeLayerNet`, :func:`make_three_layer` — X = λ∘W₃∘λ∘W₂∘λ∘W₁ s with W₂ = S₂ + R₂,
  R₂ iid N(0, g/N), S₂ low rank (ESM 1 §3).
* :func:`simulate_logit_bounds` — G1 (τ_N, per-sample failure ≤ 1/N), G4 (τ_{N,δ}, simultaneous
  failure ≤ δ, and the CE bound), G2 (accuracy bound).
* :func:`simulate_thresholding` — G8 support sandwich {|S| > 2t} ⊆ supp 𝓗_t(W) ⊆ supp S.
* :func:`bbp_location`, :func:`inverse_bbp`, :func:`bbp_experiment` — G13/G14 square BBP map.
* :func:`weyl_gap`, :func:`rank_esd_gap`, :func:`eckart_young_gap`, :func:`markov_tail_gap`,
  :func:`check_t13` — the deterministic facts behind G11/G15 (test matrix T13).
* :func:`g7_band` — G7: L(S+ϑR) − L(W) against −λ_reg(1−ϑ²)‖R‖²_F within the finite-N band.
* :func:`train_width_series` — A7/G9–G13 experiment: L₂-regularised MLPs at growing width; fitted
  MP σ², σ²·N, top singular values and top-k subspace overlap over training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mptheory.budgets import CheckResult

__all__ = [
    "BBPResult",
    "Gap",
    "G7Band",
    "LogitBoundSim",
    "ThreeLayerNet",
    "ThresholdSim",
    "WidthRun",
    "WidthSeries",
    "bbp_experiment",
    "bbp_location",
    "check_t13",
    "eckart_young_gap",
    "g7_band",
    "inverse_bbp",
    "make_three_layer",
    "make_clusters",
    "markov_tail_gap",
    "rank_esd_gap",
    "simulate_logit_bounds",
    "simulate_thresholding",
    "spiked_matrix",
    "train_width_series",
    "weyl_gap",
]

Array = np.ndarray


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def _pos_int(name: str, value: int, low: int = 1) -> int:
    if int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    return int(value)


def _prob(name: str, value: float) -> float:
    v = float(value)
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
    return v


def _matrix(name: str, A: Any) -> Array:
    a = np.asarray(A, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} (shape {a.shape}) contains NaN or Inf")
    return a


def _act(name: str) -> Any:
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    if name == "abs":
        return np.abs
    raise ValueError(f"activation must be 'relu' or 'abs'; got {name!r}")


def _orthonormal(n: int, k: int, rng: np.random.Generator) -> Array:
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def spiked_matrix(N: int, M: int, spikes: Sequence[float] | Array,
                  rng: np.random.Generator | int | None = None) -> Array:
    """S = Σ_i σ_i u_i v_iᵀ with Haar-random orthonormal u (N×r) and v (M×r); rank r = len(spikes)."""
    N, M = _pos_int("N", N), _pos_int("M", M)
    sig = np.asarray(spikes, dtype=np.float64).reshape(-1)
    if sig.size > min(N, M):
        raise ValueError(f"rank {sig.size} exceeds min(N, M) = {min(N, M)}")
    if sig.size == 0:
        return np.zeros((N, M))
    gen = _rng(rng)
    return (_orthonormal(N, sig.size, gen) * sig) @ _orthonormal(M, sig.size, gen).T


# ---------------------------------------------------------------------------------------------
# G1 / G2 / G4: the three-layer network


@dataclass
class ThreeLayerNet:
    """X(s) = λ(W₃ λ(W₂ λ(W₁ s))), no biases, with W₂ = S₂ + R₂ (ESM 1 §3).

    Shapes: W1 (N, d), S2 and R2 (N, N), W3 (K, N); ``g`` is the variance scale of R₂ (entries
    N(0, g/N)); ``activation`` is ``"relu"`` or ``"abs"``.
    """

    W1: Array
    S2: Array
    R2: Array
    W3: Array
    g: float
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
        """Outer-layer scale a(N, s) = ‖W₃‖∞ ‖W₁ s‖₂ √(log(2N)/N) per sample: (T,)."""
        X = np.asarray(X, dtype=np.float64)
        w3 = float(np.abs(self.W3).sum(axis=1).max())
        return w3 * np.linalg.norm(X @ self.W1.T, axis=1) * math.sqrt(math.log(2 * self.N) / self.N)

    def tau(self, X: Array) -> Array:
        """G1: τ_N(s) = 2√2 a(N, s) (valid for g ≤ 1)."""
        return 2.0 * math.sqrt(2.0) * self.a(X)

    def tau_delta(self, X: Array, delta: float, T0: int | None = None) -> Array:
        """G4: τ_{N,δ}(s) = ‖W₃‖∞ ‖W₁s‖₂ √(2g log(2N|T₀|/δ)/N), simultaneous over |T₀| samples."""
        X = np.asarray(X, dtype=np.float64)
        delta = _prob("delta", delta)
        t0 = X.shape[0] if T0 is None else _pos_int("T0", T0)
        w3 = float(np.abs(self.W3).sum(axis=1).max())
        return w3 * np.linalg.norm(X @ self.W1.T, axis=1) * math.sqrt(
            2.0 * self.g * math.log(2 * self.N * t0 / delta) / self.N)


def make_three_layer(N: int, d: int = 10, K: int = 5, g: float = 1.0, spikes: Sequence[float] = (3.0, 2.0),
                     activation: str = "abs", w3_l1: float = 1.0,
                     rng: np.random.Generator | int | None = None) -> ThreeLayerNet:
    """Random admissible network: W₁ entries N(0, 1/(dN)) (so ‖W₁s‖₂ ≈ ‖s‖₂/√d), S₂ = spiked matrix
    with the given singular values, R₂ iid N(0, g/N), W₃ Gaussian with every row rescaled to ℓ₁ norm
    ``w3_l1`` (so ‖W₃‖∞ = w3_l1 and a(N, s) → 0 as N grows)."""
    N, d, K = _pos_int("N", N), _pos_int("d", d), _pos_int("K", K)
    if not (0.0 <= g):
        raise ValueError(f"g must be ≥ 0; got {g!r}")
    _act(activation)
    gen = _rng(rng)
    W1 = gen.standard_normal((N, d)) / math.sqrt(d * N)
    S2 = spiked_matrix(N, N, spikes, gen)
    R2 = gen.standard_normal((N, N)) * math.sqrt(g / N)
    W3 = gen.standard_normal((K, N))
    W3 *= w3_l1 / np.abs(W3).sum(axis=1, keepdims=True)
    return ThreeLayerNet(W1=W1, S2=S2, R2=R2, W3=W3, g=float(g), activation=activation)


def _ce(Z: Array, y: Array) -> Array:
    """Per-sample cross-entropy of logits Z (T, K) with labels y."""
    zmax = Z.max(axis=1, keepdims=True)
    lse = (zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1)))
    return lse - Z[np.arange(Z.shape[0]), y]


def _true_margin(Z: Array, y: Array) -> Array:
    zt = Z[np.arange(Z.shape[0]), y]
    other = Z.copy()
    other[np.arange(Z.shape[0]), y] = -np.inf
    return zt - other.max(axis=1)


@dataclass
class LogitBoundSim:
    """Frequencies from :func:`simulate_logit_bounds` (R₂ redrawn in every draw).

    ``dX`` (draws, T): ‖X(s, S₂) − X(s, W₂)‖∞; ``tau``/``tau_delta`` (T,): the G1/G4 thresholds.
    ``g1_rate``: fraction of (draw, sample) pairs with dX > τ_N (theory ≤ 1/N, in fact ≤ 1/(8N³)).
    ``g4_rate``: fraction of draws where some sample has dX > τ_{N,δ} (theory ≤ δ).
    ``g4_loss_rate``: fraction of draws with |ΔL_CE| > (2/|T|) Σ τ_{N,δ} (theory ≤ δ).
    ``g2_rate``: fraction of draws where |acc_W − acc_S| > (1/|T|)#{|δX_W| ≤ 2τ_N} (theory ≤ |T|/N).
    """

    N: int
    T: int
    draws: int
    g: float
    delta: float
    tau_scale: float
    dX: Array
    tau: Array
    tau_delta: Array
    g1_rate: float
    g4_rate: float
    g4_loss_rate: float
    g2_rate: float
    acc_dense: Array
    acc_pruned: Array


def simulate_logit_bounds(N: int = 200, T: int = 20, draws: int = 100, g: float = 1.0, delta: float = 0.05,
                          activation: str = "abs", d: int = 10, K: int = 5, tau_scale: float = 1.0,
                          rng: np.random.Generator | int | None = None) -> LogitBoundSim:
    """G1/G2/G4 by simulation: fixed W₁, S₂, W₃, inputs and labels; R₂ iid N(0, g/N) redrawn.

    ``tau_scale`` multiplies τ_N and τ_{N,δ} (use < 1 for negative controls only).  Requires
    0 < g ≤ 1 (the G1 constant assumes g ≤ 1).
    """
    N, T, draws = _pos_int("N", N), _pos_int("T", T), _pos_int("draws", draws)
    if not (0.0 < g <= 1.0):
        raise ValueError(f"G1 assumes 0 < g ≤ 1; got g = {g!r}")
    delta = _prob("delta", delta)
    gen = _rng(rng)
    net = make_three_layer(N, d=d, K=K, g=g, activation=activation, rng=gen)
    X = gen.standard_normal((T, d))
    y = gen.integers(0, K, size=T)
    tau = tau_scale * net.tau(X)
    tau_d = tau_scale * net.tau_delta(X, delta)
    ZS = net.logits(X, net.S2)
    ce_S = _ce(ZS, y).mean()
    acc_S = np.empty(draws)
    acc_W = np.empty(draws)
    dX = np.empty((draws, T))
    loss_fail = np.zeros(draws, dtype=bool)
    g2_fail = np.zeros(draws, dtype=bool)
    for k in range(draws):
        R2 = gen.standard_normal((N, N)) * math.sqrt(g / N)
        ZW = net.logits(X, net.S2 + R2)
        dX[k] = np.abs(ZW - ZS).max(axis=1)
        loss_fail[k] = abs(_ce(ZW, y).mean() - ce_S) > 2.0 * tau_d.mean()
        mW = _true_margin(ZW, y)
        acc_W[k] = np.mean(mW > 0)
        acc_S[k] = np.mean(_true_margin(ZS, y) > 0)
        g2_fail[k] = abs(acc_W[k] - acc_S[k]) > np.mean(np.abs(mW) <= 2.0 * tau)
    return LogitBoundSim(N=N, T=T, draws=draws, g=float(g), delta=delta, tau_scale=float(tau_scale), dX=dX,
                         tau=tau, tau_delta=tau_d, g1_rate=float(np.mean(dX > tau[None, :])),
                         g4_rate=float(np.mean(np.any(dX > tau_d[None, :], axis=1))),
                         g4_loss_rate=float(loss_fail.mean()), g2_rate=float(g2_fail.mean()),
                         acc_dense=acc_W, acc_pruned=acc_S)


# ---------------------------------------------------------------------------------------------
# G8: entrywise thresholding


@dataclass
class ThresholdSim:
    """G8 frequencies.  ``t`` = √(2g log(2NM/δ)/N) (times ``t_scale``); ``sandwich_rate`` = fraction of
    draws with {|S| > 2t} ⊆ supp 𝓗_t(W) ⊆ supp S (theory ≥ 1 − δ); ``no_false_positive_rate`` and
    ``no_miss_rate`` the two inclusions separately; ``exact_rate`` = exact support recovery among
    draws satisfying the beta-min event (all nonzero |S_ij| > 2t)."""

    N: int
    M: int
    g: float
    delta: float
    t: float
    draws: int
    sandwich_rate: float
    no_false_positive_rate: float
    no_miss_rate: float
    beta_min_rate: float
    exact_rate: float


def simulate_thresholding(N: int = 100, M: int = 80, g: float = 1.0, delta: float = 0.05,
                          density: float = 0.05, signal: tuple[float, float] = (0.5, 3.0), draws: int = 100,
                          t_scale: float = 1.0,
                          rng: np.random.Generator | int | None = None) -> ThresholdSim:
    """G8: sparse S (each entry nonzero w.p. ``density``, magnitude uniform in ``signal`` times
    √(2g log(2NM/δ)/N), random sign) plus R iid N(0, g/N); threshold at t and record the sandwich."""
    N, M, draws = _pos_int("N", N), _pos_int("M", M), _pos_int("draws", draws)
    delta = _prob("delta", delta)
    if g <= 0:
        raise ValueError(f"g must be > 0; got {g!r}")
    if not (0.0 <= density <= 1.0):
        raise ValueError(f"density must lie in [0, 1]; got {density!r}")
    gen = _rng(rng)
    t0 = math.sqrt(2.0 * g * math.log(2.0 * N * M / delta) / N)
    t = t_scale * t0
    ok = np.zeros(draws, dtype=bool)
    nfp = np.zeros(draws, dtype=bool)
    nmiss = np.zeros(draws, dtype=bool)
    beta = np.zeros(draws, dtype=bool)
    exact = np.zeros(draws, dtype=bool)
    for k in range(draws):
        supp = gen.random((N, M)) < density
        sign = np.where(gen.random((N, M)) < 0.5, -1.0, 1.0)
        mag = gen.uniform(signal[0], signal[1], size=(N, M)) * t0 * sign
        S = np.where(supp, mag, 0.0)
        W = S + gen.standard_normal((N, M)) * math.sqrt(g / N)
        kept = np.abs(W) > t
        nfp[k] = not np.any(kept & ~supp)
        nmiss[k] = not np.any((np.abs(S) > 2 * t) & ~kept)
        ok[k] = nfp[k] and nmiss[k]
        beta[k] = bool(np.all(np.abs(S[supp]) > 2 * t))
        exact[k] = bool(np.array_equal(kept, supp))
    exact_rate = float(exact[beta].mean()) if beta.any() else float("nan")
    return ThresholdSim(N=N, M=M, g=float(g), delta=delta, t=t, draws=draws, sandwich_rate=float(ok.mean()),
                        no_false_positive_rate=float(nfp.mean()), no_miss_rate=float(nmiss.mean()),
                        beta_min_rate=float(beta.mean()), exact_rate=exact_rate)


# ---------------------------------------------------------------------------------------------
# G13 / G14: BBP


def bbp_location(sigma: Any, g: float = 1.0) -> Array:
    """Square BBP map for W = S + R, R iid N(0, g/N) (N×N): s_i → σ_i + g/σ_i if σ_i > √g, else 2√g."""
    if g < 0:
        raise ValueError(f"g must be ≥ 0; got {g!r}")
    s = np.asarray(sigma, dtype=np.float64)
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("sigma must be finite and ≥ 0")
    crit = math.sqrt(g)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > crit, s + g / np.where(s > 0, s, 1.0), 2.0 * crit)
    return out


def inverse_bbp(s: Any, g: float = 1.0) -> Array:
    """Inverse BBP (G13): σ̂ = ½ (s + √(s² − 4g)) where s² > 4g, NaN otherwise (no detectable spike)."""
    if g < 0:
        raise ValueError(f"g must be ≥ 0; got {g!r}")
    sv = np.asarray(s, dtype=np.float64)
    disc = sv**2 - 4.0 * g
    with np.errstate(invalid="ignore"):
        return np.where(disc > 0, 0.5 * (sv + np.sqrt(np.where(disc > 0, disc, 0.0))), np.nan)


@dataclass
class BBPResult:
    """Observed top singular values (draws, r) of S + R against the BBP prediction (r,) and the
    inverse-BBP estimates (draws, r); ``edge`` = 2√g, ``supercritical`` = σ_i > √g."""

    N: int
    g: float
    sigmas: Array
    observed: Array
    predicted: Array
    edge: float
    supercritical: Array
    recovered: Array
    bulk_top: Array = field(default_factory=lambda: np.empty(0))


def bbp_experiment(N: int = 500, sigmas: Sequence[float] = (2.0,), g: float = 1.0, draws: int = 1,
                   rng: np.random.Generator | int | None = None) -> BBPResult:
    """G14: W = Σ σ_i u_i v_iᵀ + R, R iid N(0, g/N) N×N; the r top singular values vs the BBP map.

    ``bulk_top`` records s_{r+1}(W) (the top of the bulk, → 2√g)."""
    N, draws = _pos_int("N", N, 2), _pos_int("draws", draws)
    sig = np.sort(np.asarray(sigmas, dtype=np.float64))[::-1]
    if sig.size == 0 or sig.size >= N:
        raise ValueError(f"need 1 ≤ len(sigmas) < N; got {sig.size} spikes for N = {N}")
    if g <= 0:
        raise ValueError(f"g must be > 0; got {g!r}")
    gen = _rng(rng)
    obs = np.empty((draws, sig.size))
    bulk = np.empty(draws)
    for k in range(draws):
        W = spiked_matrix(N, N, sig, gen) + gen.standard_normal((N, N)) * math.sqrt(g / N)
        sv = np.linalg.svd(W, compute_uv=False)
        obs[k] = sv[: sig.size]
        bulk[k] = sv[sig.size]
    return BBPResult(N=N, g=float(g), sigmas=sig, observed=obs, predicted=bbp_location(sig, g),
                     edge=2.0 * math.sqrt(g), supercritical=sig > math.sqrt(g), recovered=inverse_bbp(obs, g),
                     bulk_top=bulk)


# ---------------------------------------------------------------------------------------------
# T13: deterministic facts (exact inequalities, checked with a tiny floating-point allowance)


@dataclass
class Gap:
    """One instance of an inequality lhs ≤ rhs; ``holds`` allows ``tol`` for floating point."""

    lhs: float
    rhs: float
    tol: float = 0.0

    @property
    def slack(self) -> float:
        return self.rhs - self.lhs

    @property
    def holds(self) -> bool:
        return self.lhs <= self.rhs + self.tol


def _sv(A: Array) -> Array:
    return np.linalg.svd(A, compute_uv=False)


def _eps(*mats: Array) -> float:
    scale = max(float(np.linalg.norm(m)) for m in mats)
    return 64.0 * np.finfo(np.float64).eps * max(mats[0].shape) * (1.0 + scale)


def weyl_gap(S: Any, R: Any) -> Gap:
    """Weyl: max_i |s_i(S + R) − s_i(S)| ≤ ‖R‖_op."""
    S, R = _matrix("S", S), _matrix("R", R)
    if S.shape != R.shape:
        raise ValueError(f"S {S.shape} and R {R.shape} must have the same shape")
    lhs = float(np.max(np.abs(_sv(S + R) - _sv(S))))
    return Gap(lhs, float(np.linalg.norm(R, 2)), _eps(S, R))


def rank_esd_gap(S: Any, R: Any, rank: int | None = None) -> Gap:
    """G15: sup_x |F_{ν_W}(x) − F_{ν_R}(x)| ≤ rank(S)/min(N, M), W = S + R, ν = singular-value ESD
    (1/min(N,M)) Σ δ_{s_i}.  ``rank`` defaults to the numerical rank of S.  A shift of 2·tol in x
    absorbs floating-point errors of the singular values."""
    S, R = _matrix("S", S), _matrix("R", R)
    if S.shape != R.shape:
        raise ValueError(f"S {S.shape} and R {R.shape} must have the same shape")
    p = min(S.shape)
    r = int(np.linalg.matrix_rank(S)) if rank is None else _pos_int("rank", rank, 0)
    sw, sr = np.sort(_sv(S + R)), np.sort(_sv(R))
    tol = _eps(S, R)
    d1 = np.max(np.searchsorted(sw, sw, side="right") - np.searchsorted(sr, sw + 2 * tol, side="right"))
    d2 = np.max(np.searchsorted(sr, sr, side="right") - np.searchsorted(sw, sr + 2 * tol, side="right"))
    return Gap(max(float(d1), float(d2), 0.0) / p, r / p, 0.0)


def eckart_young_gap(S: Any, R: Any, k: int) -> Gap:
    """G11: Σ_{i>k} s_i(S + R)² ≤ 2‖R‖²_F + 2 Σ_{i>k} σ_i(S)²."""
    S, R = _matrix("S", S), _matrix("R", R)
    if S.shape != R.shape:
        raise ValueError(f"S {S.shape} and R {R.shape} must have the same shape")
    k = _pos_int("k", k, 0)
    lhs = float(np.sum(_sv(S + R)[k:] ** 2))
    rhs = 2.0 * float(np.sum(R**2)) + 2.0 * float(np.sum(_sv(S)[k:] ** 2))
    return Gap(lhs, rhs, _eps(S, R) * (1.0 + rhs))


def markov_tail_gap(W: Any, eps: float) -> Gap:
    """G11: ν_W((ε, ∞)) = #{s_i > ε}/p ≤ ‖W‖²_F/(p ε²), p = min(N, M) (= N for the square case)."""
    W = _matrix("W", W)
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps!r}")
    p = min(W.shape)
    lhs = float(np.sum(_sv(W) > eps)) / p
    return Gap(lhs, float(np.sum(W**2)) / (p * eps**2), 0.0)


def check_t13(cases: int = 40, seed: int = 0, max_dim: int = 40) -> CheckResult:
    """All four T13 inequalities on random spiked matrices (random shapes, ranks, noise scales).

    ``worst_slack`` is the smallest rhs − lhs normalised by max(1, |rhs|); ``tightness`` the largest
    lhs/rhs ratio seen (how close any inequality came to equality)."""
    gen = _rng(seed)
    cases = _pos_int("cases", cases)
    violations, worst, tight = 0, math.inf, 0.0
    for _ in range(cases):
        N, M = (int(x) for x in gen.integers(2, max_dim + 1, size=2))
        r = int(gen.integers(0, min(N, M) + 1))
        S = spiked_matrix(N, M, gen.uniform(0.1, 5.0, size=r), gen)
        R = gen.standard_normal((N, M)) * gen.uniform(0.01, 2.0) / math.sqrt(N)
        k = int(gen.integers(0, r + 1))
        gaps = [weyl_gap(S, R), rank_esd_gap(S, R, rank=r), eckart_young_gap(S, R, k),
                markov_tail_gap(S + R, float(gen.uniform(0.05, 3.0)))]
        for gp in gaps:
            violations += int(not gp.holds)
            worst = min(worst, gp.slack / max(1.0, abs(gp.rhs)))
            if gp.rhs > 0:
                tight = max(tight, gp.lhs / gp.rhs)
    return CheckResult(cases=4 * cases, violations=violations, worst_slack=worst, tightness=tight,
                       passed=violations == 0, kind="deterministic", details={"claim": "T13"})


# ---------------------------------------------------------------------------------------------
# G7: monotone loss decrease in the amount of randomness removed


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
            lambda_reg: float = 0.01, g: float = 1.0, T: int = 30, d: int = 10, K: int = 5,
            activation: str = "abs",
            rng: np.random.Generator | int | None = None) -> G7Band:
    """G7 on one realisation of the three-layer model with L = L_CE + λ_reg Σ‖W_i‖²_F (only W₂ moves)."""
    N, T = _pos_int("N", N), _pos_int("T", T)
    if lambda_reg <= 0:
        raise ValueError(f"lambda_reg must be > 0; got {lambda_reg!r}")
    if not (0.0 < g <= 1.0):
        raise ValueError(f"G7 (through G1) assumes 0 < g ≤ 1; got g = {g!r}")
    th = np.asarray(thetas, dtype=np.float64)
    if th.ndim != 1 or th.size == 0 or np.any(th < 0) or np.any(th > 1):
        raise ValueError("thetas must be a non-empty 1-D sequence in [0, 1]")
    gen = _rng(rng)
    net = make_three_layer(N, d=d, K=K, g=g, activation=activation, rng=gen)
    X = gen.standard_normal((T, d))
    y = gen.integers(0, K, size=T)

    def loss(W2: Array) -> float:
        return float(_ce(net.logits(X, W2), y).mean() + lambda_reg * np.sum(W2**2))

    LW = loss(net.W2)
    lhs = np.array([loss(net.S2 + t * net.R2) - LW for t in th])
    nR = float(np.sum(net.R2**2))
    inner = float(np.sum(net.S2 * net.R2))
    center = -lambda_reg * (1 - th**2) * nR
    half = (1 - th) * (4.0 * math.sqrt(2.0) * float(net.a(X).mean()) + 2.0 * lambda_reg * abs(inner))
    return G7Band(N=N, lambda_reg=float(lambda_reg), thetas=th, lhs=lhs, center=center, halfwidth=half,
                  norm_R2=nR, inner_SR=inner)


# ---------------------------------------------------------------------------------------------
# A7 / G9–G13: training at growing width


def _fit_sigma2_standin(W: Array) -> float:
    """Private stand-in for ``mptheory.fit.fit_mp(W).sigma2``: match the median eigenvalue.

    σ² = median(λ_i)/median(MP(c, 1)), λ_i = s_i²/max(N, M).  The median is insensitive to a few
    spikes, unlike the plain second moment."""
    from mptheory.mp import median as mp_median

    N, M = W.shape
    ev = np.linalg.eigvalsh(W.T @ W if M <= N else W @ W.T) / max(N, M)
    return float(np.median(ev) / mp_median(min(N, M) / max(N, M), 1.0))


def _fitter() -> tuple[Any, str]:
    try:
        from mptheory.fit import fit_mp
    except ImportError:
        return _fit_sigma2_standin, "median_standin"
    return (lambda W: float(fit_mp(W).sigma2)), "mptheory.fit.fit_mp"


def make_clusters(n: int = 512, d: int = 16, K: int = 4, separation: float = 3.0, noise: float = 1.0,
                  label_noise: float = 0.0,
                  rng: np.random.Generator | int | None = None) -> tuple[Array, Array]:
    """Procedural data set: K Gaussian clusters in ℝ^d with means of norm ``separation``; a fraction
    ``label_noise`` of labels is reassigned uniformly at random.  Returns X (n, d) float32, y (n,)."""
    n, d, K = _pos_int("n", n), _pos_int("d", d), _pos_int("K", K, 2)
    gen = _rng(rng)
    means = gen.standard_normal((K, d))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = gen.integers(0, K, size=n)
    X = means[y] + noise * gen.standard_normal((n, d))
    flip = gen.random(n) < label_noise
    y = np.where(flip, gen.integers(0, K, size=n), y)
    return X.astype(np.float32), y.astype(np.int64)


@dataclass
class WidthRun:
    """One width.  Arrays are indexed by record (``steps``): fitted MP ``sigma2`` of the middle N×N
    layer, ``sigma2_N`` = σ²·N, ``top_sv`` (records, k), ``overlap`` = ‖U_tᵀ U_final‖²_F / k for the
    top-k left singular subspace, ``tail_energy`` = Σ_{i>k} s_i(W)² (the Eckart–Young tail
    ‖W − W_k‖²_F), ``loss`` (regularised objective) and training ``accuracy``."""

    width: int
    steps: Array
    sigma2: Array
    sigma2_N: Array
    top_sv: Array
    overlap: Array
    tail_energy: Array
    loss: Array
    accuracy: Array


@dataclass
class WidthSeries:
    """Result of :func:`train_width_series`; ``fitter`` names the σ² estimator that was used."""

    widths: tuple[int, ...]
    lambda_reg: float
    epochs: int
    top_k: int
    fitter: str
    runs: list[WidthRun]
    seconds: float

    def final_sigma2_N(self) -> Array:
        """σ²·N at the end of training, one entry per width."""
        return np.array([r.sigma2_N[-1] for r in self.runs])

    def initial_sigma2_N(self) -> Array:
        return np.array([r.sigma2_N[0] for r in self.runs])


def _train_one(N: int, X: Any, y: Any, K: int, k: int, epochs: int, lambda_reg: float, seed: int, lr: float,
               momentum: float, record_every: int, fit: Any) -> WidthRun:
    """Train one MLP of width N and record its middle layer (see :func:`train_width_series`)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], N), torch.nn.ReLU(), torch.nn.Linear(N, N),
                              torch.nn.ReLU(), torch.nn.Linear(N, K))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = [m.weight for m in linears]
    middle = linears[1]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    steps: list[int] = []
    s2: list[float] = []
    tops: list[Array] = []
    Us: list[Array] = []
    tails: list[float] = []
    losses: list[float] = []
    accs: list[float] = []
    for step in range(epochs + 1):
        out = net(X)
        loss = torch.nn.functional.cross_entropy(out, y) + lambda_reg * sum((w**2).sum() for w in weights)
        if step % record_every == 0 or step == epochs:
            W = middle.weight.detach().double().numpy().copy()
            U, sv, _ = np.linalg.svd(W)
            steps.append(step)
            s2.append(float(fit(W)))
            tops.append(sv[:k])
            Us.append(U[:, :k])
            tails.append(float(np.sum(sv[k:] ** 2)))
            losses.append(float(loss.detach()))
            accs.append(float((out.argmax(1) == y).float().mean()))
        if step == epochs:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    overlap = np.array([float(np.sum((U.T @ Us[-1]) ** 2)) / k for U in Us])
    s2a = np.asarray(s2)
    return WidthRun(width=N, steps=np.asarray(steps), sigma2=s2a, sigma2_N=s2a * N, top_sv=np.asarray(tops),
                    overlap=overlap, tail_energy=np.asarray(tails), loss=np.asarray(losses),
                    accuracy=np.asarray(accs))


def train_width_series(widths: Sequence[int] | None = None, epochs: int | None = None,
                       lambda_reg: float = 5e-3, seed: int = 0, data: tuple[Any, Any] | None = None, *,
                       quick: bool = True,
                       lr: float = 0.05, momentum: float = 0.9, top_k: int | None = None,
                       record_every: int | None = None) -> WidthSeries:
    """Train L₂-regularised MLPs d → N → N → K (ReLU, full batch, SGD with momentum, CPU) at each width N.

    The objective is CE + λ_reg Σ_i ‖W_i‖²_F over the three weight matrices (biases unpenalised).
    Over training the middle N×N layer is recorded: fitted MP σ², σ²·N (A7/G10: → 0 at stationary
    points), top-k singular values and the overlap of the top-k left singular subspace with the final
    one (G11/G12: spikes stabilise).  ``data`` = (X, y) arrays; default :func:`make_clusters` with K = 4.
    ``quick=True``: widths (32, 64, 128), 300 full-batch steps (well under 30 s on one core);
    ``quick=False``: widths (64, 128, 256, 512), 2000 steps.  ``epochs`` counts full-batch steps.
    """
    import torch

    widths = tuple(widths) if widths is not None else ((32, 64, 128) if quick else (64, 128, 256, 512))
    if len(widths) == 0 or any(int(w) != w or w < 2 for w in widths):
        raise ValueError(f"widths must be integers ≥ 2; got {widths!r}")
    epochs = _pos_int("epochs", epochs if epochs is not None else (300 if quick else 2000))
    if lambda_reg < 0:
        raise ValueError(f"lambda_reg must be ≥ 0; got {lambda_reg!r}")
    record_every = _pos_int("record_every", record_every or max(1, epochs // 15))
    if data is None:
        X_np, y_np = make_clusters(rng=seed)
    else:
        X_np, y_np = np.asarray(data[0], dtype=np.float32), np.asarray(data[1], dtype=np.int64)
        if X_np.ndim != 2 or y_np.shape != (X_np.shape[0],) or X_np.shape[0] == 0:
            raise ValueError(f"data must be (X (n, d), y (n,)); got shapes {X_np.shape}, {y_np.shape}")
    K = int(y_np.max()) + 1
    k = top_k if top_k is not None else K
    k = _pos_int("top_k", k)
    if k >= min(widths):
        raise ValueError(f"top_k = {k} must be smaller than every width {widths}")
    fit, fitter_name = _fitter()
    X = torch.from_numpy(X_np)
    y = torch.from_numpy(y_np)
    t0 = time.perf_counter()
    runs = [_train_one(int(N), X, y, K, k, epochs, lambda_reg, seed, lr, momentum, record_every, fit)
            for N in widths]
    return WidthSeries(widths=tuple(int(w) for w in widths), lambda_reg=float(lambda_reg), epochs=epochs,
                       top_k=k, fitter=fitter_name, runs=runs, seconds=time.perf_counter() - t0)
