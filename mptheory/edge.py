"""The noise edge at confidence 1−δ of an MP fit, and the sampling error of σ̂² it accounts for.

:mod:`mptheory.fit` explains the construction (module docstring, "Noise edge at confidence 1−δ" and
"Sampling error of σ̂²"); this module holds its pieces: Johnstone's centring and scaling
(:func:`johnstone`), the Ke–Ma–Lin asymptotic form of the authors' convention (:func:`noise_edge` with
``convention="kml"``), the BEMA quantile window (:func:`window_grid`), the Bai–Silverstein moments of a linear
spectral statistic (:func:`lss_moments`), the bias / sd / λ₁-correlation of σ̂²/σ² − 1
(:func:`sigma2_sampling_error`) and the Tracy–Widom level of the edge that accounts for them
(:func:`edge_quantile`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import fft

from mptheory.mp import MarchenkoPastur
from mptheory.tracy_widom import TracyWidom, tw_ratio_quantile

__all__ = [
    "edge_quantile",
    "johnstone",
    "lss_moments",
    "noise_edge",
    "sigma2_sampling_error",
    "tw1_quantile",
    "tw1_sd",
    "window_grid",
]

FloatArray = NDArray[np.float64]


@lru_cache(maxsize=64)
def tw1_quantile(level: float) -> float:
    return float(TracyWidom(beta=1).ppf(level))


@lru_cache(maxsize=4096)
def window_grid(p_bulk: int, n_bulk: int, alpha: float) -> tuple[int, int, FloatArray, float]:
    lo = int(math.floor(alpha * p_bulk))
    hi = int(math.floor((1.0 - alpha) * p_bulk))
    if hi <= lo:
        raise ValueError(f"quantile window [{lo}, {hi}) is empty for {p_bulk} eigenvalues (alpha={alpha})")
    grid = (np.arange(lo, hi) + 0.5) / p_bulk
    q = np.asarray(MarchenkoPastur(ratio=p_bulk / n_bulk).ppf(grid), dtype=float)
    q.setflags(write=False)
    return lo, hi, q, float(q @ q)


def johnstone(p_e: float, n_e: float) -> tuple[float, float]:
    """Johnstone's centring ``μ_np`` and scaling ``σ_np`` for the top eigenvalue of an ``n_e × p_e`` Gram."""
    a = math.sqrt(n_e - 1.0) + math.sqrt(p_e)
    return a * a, a * (1.0 / math.sqrt(n_e - 1.0) + 1.0 / math.sqrt(p_e)) ** (1.0 / 3.0)


def lss_moments(g: Any, ratio: float, n_terms: int) -> tuple[float, float]:
    """Limiting mean and variance of ``Σ_j g(λ_j) − p∫g dMP(ratio)`` for real Gaussian noise.

    Bai–Silverstein (2004) CLT for linear spectral statistics, real case, written with the Chebyshev
    coefficients ``a_k`` of ``g((1 + c) + 2√c cos θ) = a₀/2 + Σ a_k cos kθ`` on the MP(c, 1) support
    ``[a, b]``: mean ``(g(a) + g(b))/4 − a₀/4``, variance ``½ Σ_{k≥1} k a_k²`` (terms ``k ≤ n_terms``).
    """
    m = max(4096, 8 * n_terms)
    theta = np.pi * (np.arange(m) + 0.5) / m
    sc = math.sqrt(ratio)
    coef = fft.dct(g(1.0 + ratio + 2.0 * sc * np.cos(theta)), type=2) / m
    k = np.arange(1, min(n_terms, m - 1) + 1)
    ends = g(np.array([(1.0 - sc) ** 2, (1.0 + sc) ** 2]))
    return float(ends.sum() / 4.0 - coef[0] / 4.0), float(0.5 * np.sum(k * coef[k] ** 2))


@lru_cache(maxsize=4096)
def sigma2_sampling_error(method: str, p_b: int, n_b: int, alpha: float) -> tuple[float, float, float]:
    """Bias, sd of ``σ̂²/σ² − 1`` and its correlation with the top eigenvalue, pure noise ``n_b × p_b``.

    Module docstring, "Sampling error of σ̂²": ``σ̂²/σ² − 1 ≈ κ·(Σ_j g(λ_j) − p∫g dMP)`` is a linear spectral
    statistic; its mean and variance come from the Bai–Silverstein CLT (:func:`lss_moments`), its
    covariance with ``λ₁`` from the response of the MP upper edge ``b`` to the tilt ``exp(s Σ g(λ_j))``.
    """
    c = p_b / n_b
    law = MarchenkoPastur(ratio=c)
    c0, r = 1.0 + c, 2.0 * math.sqrt(c)
    if method == "gd":  # median: σ̂²/σ² − 1 ≈ −(#{λ ≤ m} − p/2)/(p f(m) m), a counting statistic
        med = float(law.ppf(0.5))
        kappa = -1.0 / (p_b * float(law.pdf(med)) * med)
        mean, var = lss_moments(lambda x: (x <= med).astype(float), c, p_b)
        th = math.acos((med - c0) / r)
        tilt = -(1.0 + math.cos(th)) / (math.pi * r * math.sin(th))  # (1/π)∫ g'(x(θ))(1 + cos θ) dθ
    else:  # window match: σ̂²/σ² − 1 ≈ (Σ_j g(λ_j) − E)/Σq², g(x) = ½ clip(x, x_lo, x_hi)²
        lo, hi, _, qq = window_grid(p_b, n_b, alpha)
        x_lo, x_hi = (float(v) for v in law.ppf([lo / p_b, hi / p_b]))
        kappa = 1.0 / qq
        mean, var = lss_moments(lambda x: 0.5 * np.clip(x, x_lo, x_hi) ** 2, c, 4096)
        t_hi, t_lo = (math.acos(min(max((x - c0) / r, -1.0), 1.0)) for x in (x_hi, x_lo))

        def prim(u: float) -> float:  # ∫ x(θ)(1 + cos θ) dθ with x(θ) = c0 + r cos θ
            return c0 * u + (c0 + r) * math.sin(u) + r * (u / 2.0 + math.sin(2.0 * u) / 4.0)

        tilt = (prim(t_lo) - prim(t_hi)) / math.pi
    mu, scale = johnstone(p_b, n_b)
    sd = math.sqrt(var) * abs(kappa)
    # Cov(λ₁, Σ g) = db/ds = (2b/n)·tilt on the MP scale; in TW units X = (n λ₁ − μ)/σ_np
    cov_x = kappa * 2.0 * (1.0 + math.sqrt(c)) ** 2 * tilt / scale
    corr = cov_x / (tw1_sd() * sd) if sd > 0.0 else 0.0
    return mean * kappa, sd, max(-1.0, min(1.0, corr))


@lru_cache(maxsize=1)
def tw1_sd() -> float:
    return float(TracyWidom(beta=1).std())


@lru_cache(maxsize=4096)
def edge_quantile(delta: float, p_e: int, n_e: int, err: tuple[float, float, float]) -> float:
    """TW₁ level of the Johnstone edge of an ``n_e × p_e`` matrix when σ̂² has the error ``err``."""
    mu, scale = johnstone(p_e, n_e)
    bias, sd, corr = err
    return tw_ratio_quantile(delta, mu / scale, sd, bias, corr)


def noise_edge(sigma2: FloatArray, p_b: Any, n_b: Any, n: int, t: Any, convention: str) -> FloatArray:
    """Noise edge on the eigenvalue scale (normalised by the full ``n``) of a ``n_b × p_b`` noise matrix."""
    if convention == "johnstone":
        a = np.sqrt(n_b - 1.0) + np.sqrt(p_b)
        scale = a * (1.0 / np.sqrt(n_b - 1.0) + 1.0 / np.sqrt(p_b)) ** (1.0 / 3.0)
        return sigma2 * (a * a + t * scale) / n
    c = p_b / n_b
    sc = np.sqrt(c)
    bracket = (1.0 + sc) ** 2 + t * n_b ** (-2.0 / 3.0) * c ** (-1.0 / 6.0) * (1.0 + sc) ** (4.0 / 3.0)
    return sigma2 * (n_b / n) * bracket
