"""BBP spikes, inverse BBP, Gavish–Donoho thresholds and optimal singular-value shrinkers.

Two parametrisations are used, and every name says which one it takes.

* **Normalised model** (peers §7.2–7.4, Gavish–Donoho): ``Y = X + Z/√n`` with ``Y`` of shape ``m × n``,
  ``m ≤ n``, aspect ratio ``c = m/n ∈ (0, 1]`` and noise entries of variance ``σ²/n``.  A signal singular
  value ``x`` (in units of σ) is detectable iff ``x > c^{1/4}``; it then produces an outlier singular value

      y(x) = √((1 + x²)(c + x²)) / x,

  otherwise the top singular value sticks to the bulk edge ``1 + √c``.  The eigenvalue form (the library's
  MP scale, eigenvalue ``λ = s²/max(N, M)``) squares everything: signal eigenvalue ``θ = x²σ²`` is
  detectable iff ``θ > σ²√c`` and the outlier eigenvalue is ``σ²y(x)²``.
* **Raw library scale**: ``W = S + R`` of shape ``(N, M)``, ``R`` iid with variance ``σ²``; singular values
  are those of ``W`` itself.  With ``n = max(N, M)`` the normalised singular value is ``s/(σ√n)``; the BBP
  threshold for a signal singular value is ``σ√n c^{1/4}`` and the bulk edge is ``σ(√N + √M)``.
* **Square form** (digest G13/G14, where the noise variance is called ``g``): ``N × N`` noise with entries
  of variance ``σ²/N`` (the normalised model with ``c = 1``), signal singular value ``θ``:
  ``s → θ + σ²/θ`` if ``θ > σ`` else ``2σ``; inverse ``θ̂ = ½(s + √(s² − 4σ²))``.

Parameter names follow the package vocabulary (:mod:`mptheory`): ``ratio`` is the aspect ratio
``c = min/max``, ``sigma``/``sigma2`` the noise level, ``theta`` a signal singular value (or eigenvalue,
for :func:`outlier_eigenvalue`).

All functions are vectorised over array inputs and raise ``ValueError`` on invalid arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "SpikedMatrix",
    "bbp_eigen_threshold",
    "bbp_signal_threshold",
    "bbp_singular_threshold",
    "bbp_threshold",
    "gd_hard_threshold",
    "gd_lambda_star",
    "gd_omega",
    "gd_omega_approx",
    "inverse_bbp",
    "inverse_bbp_square",
    "low_rank_signal",
    "make_spiked_matrix",
    "mp_median_unit",
    "outlier_eigenvalue",
    "outlier_location",
    "outlier_location_square",
    "shrink_frobenius",
    "shrink_nuclear",
    "shrink_operator",
    "singular_vector_cosines",
]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------------------------- validation
def _check_ratio(ratio: ArrayLike, name: str = "ratio") -> FloatArray:
    c = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(c)) or np.any(c <= 0) or np.any(c > 1):
        raise ValueError(f"{name} must lie in (0, 1] (min/max of the shape), got {ratio!r}")
    return c


def _check_positive(x: ArrayLike, name: str, allow_zero: bool = False) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    bad = (a < 0) if allow_zero else (a <= 0)
    if not np.all(np.isfinite(a)) or np.any(bad):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be finite and {kind}, got {x!r}")
    return a


def _check_values(x: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative (singular values / signal strengths)")
    return a


def _ret(a: FloatArray) -> FloatArray | float:
    return float(a) if a.ndim == 0 else a


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        n_rows, n_cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair of positive ints, got {shape!r}") from None
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"shape must be a pair of positive ints, got {shape!r}")
    return n_rows, n_cols


# --------------------------------------------------------------------------------------------- BBP map
def bbp_signal_threshold(ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Detection threshold ``σ·c^{1/4}`` for a signal singular value in the normalised model ``X + σZ/√n``."""
    c = _check_ratio(ratio)
    s = _check_positive(sigma, "sigma")
    return _ret(s * c**0.25)


bbp_threshold = bbp_signal_threshold
"""Alias of :func:`bbp_signal_threshold` (normalised singular-value form)."""


def bbp_eigen_threshold(ratio: ArrayLike, sigma2: ArrayLike = 1.0) -> FloatArray | float:
    """Detection threshold ``σ²√c`` for a signal *eigenvalue* ``θ = s_signal²/max(N, M)`` on the MP scale."""
    c = _check_ratio(ratio)
    s2 = _check_positive(sigma2, "sigma2")
    return _ret(s2 * np.sqrt(c))


def bbp_singular_threshold(shape: tuple[int, int], sigma: float = 1.0) -> float:
    """Raw-scale threshold ``σ√n·c^{1/4}`` for a signal singular value of ``S`` in ``W = S + R`` (N × M).

    ``R`` has iid entries of standard deviation ``sigma``; ``n = max(N, M)``, ``c = min/max``.
    """
    n_rows, n_cols = _check_shape(shape)
    s = float(_check_positive(sigma, "sigma"))
    n, p = max(n_rows, n_cols), min(n_rows, n_cols)
    return s * np.sqrt(n) * (p / n) ** 0.25


def outlier_location(x: ArrayLike, ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Limit of the observed singular value for a signal singular value ``x`` (normalised model).

    ``y(x) = √((1+x²)(c+x²))/x`` for ``x > c^{1/4}`` (in units of σ), else the bulk edge ``1 + √c``; the
    result is in the same units as ``x`` (i.e. multiplied by ``sigma``).
    """
    xa = _check_values(x, "x")
    c = _check_ratio(ratio)
    s = _check_positive(sigma, "sigma")
    u = xa / s
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = np.sqrt((1.0 + u**2) * (c + u**2)) / u
    y = np.where(u > c**0.25, y, 1.0 + np.sqrt(c))
    return _ret(s * y)


def outlier_eigenvalue(theta: ArrayLike, ratio: ArrayLike, sigma2: ArrayLike = 1.0) -> FloatArray | float:
    """Eigenvalue form of :func:`outlier_location` on the MP scale.

    A signal eigenvalue ``θ`` (``= x²σ²``) gives the outlier ``(θ+σ²)(θ+cσ²)/θ`` when ``θ > σ²√c``, else
    the MP edge ``σ²(1+√c)²``.
    """
    th = _check_values(theta, "theta")
    c = _check_ratio(ratio)
    s2 = _check_positive(sigma2, "sigma2")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = (th + s2) * (th + c * s2) / th
    lam = np.where(th > s2 * np.sqrt(c), lam, s2 * (1.0 + np.sqrt(c)) ** 2)
    return _ret(lam)


def inverse_bbp(y: ArrayLike, ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Inverse BBP map (peers §7.2): signal singular value from an observed one (normalised model).

    ``x(y) = (1/√2)·√(y² − c − 1 + √((y² − c − 1)² − 4c))`` for ``y ≥ 1 + √c`` (units of σ).  Below the
    bulk edge the signal is not identifiable and ``nan`` is returned (use :func:`shrink_operator` for the
    shrinker that maps those to 0).
    """
    ya = _check_values(y, "y")
    c = _check_ratio(ratio)
    s = _check_positive(sigma, "sigma")
    u = ya / s
    t = u**2 - c - 1.0
    with np.errstate(invalid="ignore"):
        disc = np.sqrt(np.maximum(t**2 - 4.0 * c, 0.0))
        x = np.sqrt(np.maximum(t + disc, 0.0) / 2.0)
    # y/σ can round just below the edge when y = σ(1 + √c) exactly: accept within 1e-12 relative.
    x = np.where(u >= (1.0 + np.sqrt(c)) * (1.0 - 1e-12), x, np.nan)
    return _ret(s * x)


def outlier_location_square(theta: ArrayLike, sigma2: ArrayLike = 1.0) -> FloatArray | float:
    """Square BBP map (digest G14): ``s = θ + σ²/θ`` if ``θ > σ`` else ``2σ``.

    ``N × N`` noise with entries of variance ``σ²/N`` (the digest's ``g``) plus a signal singular value ``θ``.
    """
    th = _check_values(theta, "theta")
    s2 = _check_positive(sigma2, "sigma2")
    with np.errstate(divide="ignore", over="ignore"):
        s = th + s2 / th
    return _ret(np.where(th > np.sqrt(s2), s, 2.0 * np.sqrt(s2)))


def inverse_bbp_square(s: ArrayLike, sigma2: ArrayLike = 1.0) -> FloatArray | float:
    """Inverse-BBP estimator of digest G13: ``θ̂ = ½(s + √(s² − 4σ²))`` for ``s ≥ 2σ``, else ``nan``."""
    sa = _check_values(s, "s")
    s2 = _check_positive(sigma2, "sigma2")
    with np.errstate(invalid="ignore"):
        th = 0.5 * (sa + np.sqrt(np.maximum(sa**2 - 4.0 * s2, 0.0)))
    return _ret(np.where(sa >= 2.0 * np.sqrt(s2), th, np.nan))


def singular_vector_cosines(x: ArrayLike, ratio: ArrayLike) -> tuple[FloatArray | float, FloatArray | float]:
    """Limiting cosines (left, right) between signal and observed singular vectors (normalised, σ = 1).

    Left (``m``-side): ``c_l² = (x⁴ − c)/(x⁴ + c x²)``; right: ``c_r² = (x⁴ − c)/(x⁴ + x²)``; 0 below
    ``x = c^{1/4}``.
    """
    xa = _check_values(x, "x")
    c = _check_ratio(ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        cl2 = (xa**4 - c) / (xa**4 + c * xa**2)
        cr2 = (xa**4 - c) / (xa**4 + xa**2)
    sup = xa > c**0.25
    cl = np.where(sup, np.sqrt(np.clip(cl2, 0.0, 1.0)), 0.0)
    cr = np.where(sup, np.sqrt(np.clip(cr2, 0.0, 1.0)), 0.0)
    return _ret(cl), _ret(cr)


# --------------------------------------------------------------------------------------------- shrinkers
def shrink_operator(y: ArrayLike, ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Operator-norm optimal shrinker (Gavish–Donoho 2017): ``x(y)`` above ``1+√c``, 0 below."""
    x = np.asarray(inverse_bbp(y, ratio, sigma), dtype=np.float64)
    return _ret(np.where(np.isnan(x), 0.0, x))


def shrink_frobenius(y: ArrayLike, ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Frobenius-loss optimal shrinker: ``η(y) = √((y² − c − 1)² − 4c)/y`` for ``y ≥ 1+√c`` (units σ)."""
    ya = _check_values(y, "y")
    c = _check_ratio(ratio)
    s = _check_positive(sigma, "sigma")
    u = ya / s
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.sqrt(np.maximum((u**2 - c - 1.0) ** 2 - 4.0 * c, 0.0)) / u
    return _ret(s * np.where(u >= 1.0 + np.sqrt(c), eta, 0.0))


def shrink_nuclear(y: ArrayLike, ratio: ArrayLike, sigma: ArrayLike = 1.0) -> FloatArray | float:
    """Nuclear-norm-loss optimal shrinker ``η(y) = (x⁴ − c − √c·x·y)₊/(x² y)``, ``x = x(y)``; 0 below edge."""
    ya = _check_values(y, "y")
    c = _check_ratio(ratio)
    s = _check_positive(sigma, "sigma")
    u = ya / s
    x = np.asarray(inverse_bbp(u, c), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.maximum(x**4 - c - np.sqrt(c) * x * u, 0.0) / (x**2 * u)
    return _ret(s * np.where(np.isnan(x), 0.0, eta))


# --------------------------------------------------------------------------------------------- Gavish–Donoho
def gd_lambda_star(ratio: ArrayLike) -> FloatArray | float:
    """Optimal hard-threshold coefficient for known σ: ``λ*(c) = √(2(c+1) + 8c/((c+1) + √(c²+14c+1)))``
    (Gavish–Donoho write the aspect ratio ``c = min/max`` as β)."""
    b = _check_ratio(ratio)
    return _ret(np.sqrt(2.0 * (b + 1.0) + 8.0 * b / ((b + 1.0) + np.sqrt(b**2 + 14.0 * b + 1.0))))


@lru_cache(maxsize=4096)
def _mp_median_unit(ratio: float) -> float:
    from mptheory.mp import MarchenkoPastur

    return float(MarchenkoPastur(ratio=ratio, sigma2=1.0).median())


def mp_median_unit(ratio: ArrayLike) -> FloatArray | float:
    """Exact median ``μ_c`` of MP(ratio=c, σ²=1) (cached; uses :class:`mptheory.mp.MarchenkoPastur`)."""
    b = _check_ratio(ratio)
    out = np.vectorize(lambda v: _mp_median_unit(float(v)), otypes=[np.float64])(b)
    return _ret(np.asarray(out, dtype=np.float64))


def gd_omega(ratio: ArrayLike) -> FloatArray | float:
    """Unknown-σ hard-threshold coefficient ``ω(c) = λ*(c)/√μ_c`` with the EXACT MP median ``μ_c``."""
    lam = np.asarray(gd_lambda_star(ratio), dtype=np.float64)
    mu = np.asarray(mp_median_unit(ratio), dtype=np.float64)
    return _ret(lam / np.sqrt(mu))


def gd_omega_approx(ratio: ArrayLike) -> FloatArray | float:
    """Gavish–Donoho's published approximation ``ω(c) ≈ 0.56c³ − 0.95c² + 1.82c + 1.43`` (for comparison)."""
    b = _check_ratio(ratio)
    return _ret(0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43)


def gd_hard_threshold(
    x: ArrayLike, shape: tuple[int, int] | None = None, sigma: float | None = None
) -> float:
    """Gavish–Donoho optimal hard threshold on the raw singular-value scale.

    ``x`` is either the matrix ``Y`` itself (2-D) or its singular values (1-D, then ``shape`` is required).
    With ``sigma`` known (per-entry noise standard deviation of ``Y``): ``τ = λ*(β)·√n·σ``; otherwise
    ``τ = ω(c)·y_med`` with ``y_med`` the median singular value.  ``n = max(shape)``, ``c = min/max``.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        if shape is not None and tuple(shape) != a.shape:
            raise ValueError(f"shape {shape!r} does not match the matrix shape {a.shape}")
        shp = _check_shape(a.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"matrix of shape {a.shape} contains NaN or Inf")
        sv = np.linalg.svd(a, compute_uv=False) if sigma is None else None
    elif a.ndim == 1:
        if shape is None:
            raise ValueError("shape is required when singular values are given")
        shp = _check_shape(shape)
        sv = _check_values(a, "singular values")
        if sv.size != min(shp):
            raise ValueError(f"expected min(shape)={min(shp)} singular values for shape {shp}, got {sv.size}")
    else:
        raise ValueError(f"x must be a matrix or a 1-D array of singular values, got ndim={a.ndim}")
    n, p = max(shp), min(shp)
    if p < 2 and sigma is None:
        raise ValueError(f"shape {shp}: need min(shape) >= 2 to estimate sigma from the median")
    ratio = p / n
    if sigma is not None:
        s = float(_check_positive(sigma, "sigma"))
        return float(gd_lambda_star(ratio)) * np.sqrt(n) * s
    assert sv is not None
    y_med = float(np.median(sv))
    if y_med <= 0:
        raise ValueError(f"shape {shp}: median singular value is 0; the noise level cannot be estimated")
    return float(gd_omega(ratio)) * y_med


# --------------------------------------------------------------------------------------------- generator
def low_rank_signal(
    shape: tuple[int, int], singular_values: ArrayLike, rng: np.random.Generator | int | None = None
) -> FloatArray:
    """``S = Σ_i θ_i u_i v_iᵀ`` with Haar-random orthonormal ``U`` (N × r) and ``V`` (M × r), drawn in that
    order (QR of Gaussian matrices); rank ``r = len(singular_values)`` (zero matrix for ``r = 0``).

    The one low-rank signal generator: :func:`make_spiked_matrix`, :mod:`mptheory.strategies` and the
    simulations of :mod:`mptheory.dynamics` draw their signals here.
    """
    n_rows, n_cols = _check_shape(shape)
    theta = _check_values(np.asarray(singular_values, dtype=np.float64).reshape(-1), "singular_values")
    r = theta.size
    if r > min(n_rows, n_cols):
        raise ValueError(f"rank {r} exceeds min(shape) for shape {(n_rows, n_cols)}")
    if r == 0:
        return np.zeros((n_rows, n_cols))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    U, _ = np.linalg.qr(gen.standard_normal((n_rows, r)))
    V, _ = np.linalg.qr(gen.standard_normal((n_cols, r)))
    return (U * theta) @ V.T


@dataclass(frozen=True, eq=False)
class SpikedMatrix:
    """A signal-plus-noise matrix ``W = signal + noise`` with its ground truth.

    ``noise`` has iid N(0, ``sigma2``) entries; ``signal = U diag(signal_singular_values) Vᵀ`` with Haar
    orthonormal ``U, V``.  ``factors`` are the signal singular values as multiples of the raw BBP threshold
    ``σ√n c^{1/4}``; ``n_detectable`` counts the supercritical ones (factor > 1), i.e. the number of spikes
    that separate from the bulk asymptotically (close to 1 they may not separate at finite size).
    """

    W: FloatArray
    noise: FloatArray
    signal: FloatArray
    sigma2: float
    signal_singular_values: FloatArray
    factors: FloatArray
    n_detectable: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.W.shape[0]), int(self.W.shape[1]))

    @property
    def ratio(self) -> float:
        return min(self.shape) / max(self.shape)


def make_spiked_matrix(
    shape: tuple[int, int],
    factors: ArrayLike = (),
    sigma2: float = 1.0,
    rng: np.random.Generator | int | None = None,
    noise: Literal["gaussian", "rademacher"] = "gaussian",
) -> SpikedMatrix:
    """Draw ``W = Σ θ_i u_i v_iᵀ + R``, ``θ_i = factors[i]·σ√n c^{1/4}``, ``R`` iid, variance ``sigma2``."""
    n_rows, n_cols = _check_shape(shape)
    fac = _check_values(np.atleast_1d(np.asarray(factors, dtype=np.float64)), "factors")
    if fac.ndim != 1:
        raise ValueError("factors must be a 1-D sequence")
    s2 = float(_check_positive(sigma2, "sigma2"))
    r = fac.size
    if r > min(n_rows, n_cols):
        raise ValueError(f"rank {r} exceeds min(shape) for shape {(n_rows, n_cols)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sd = np.sqrt(s2)
    if noise == "gaussian":
        R = gen.standard_normal((n_rows, n_cols)) * sd
    elif noise == "rademacher":
        R = gen.choice(np.array([-1.0, 1.0]), size=(n_rows, n_cols)) * sd
    else:
        raise ValueError(f"unknown noise {noise!r}")
    theta = fac * bbp_singular_threshold((n_rows, n_cols), sd)
    S = low_rank_signal((n_rows, n_cols), theta, gen)
    return SpikedMatrix(
        W=S + R,
        noise=R,
        signal=S,
        sigma2=s2,
        signal_singular_values=np.sort(theta)[::-1].copy(),
        factors=fac.copy(),
        n_detectable=int(np.sum(fac > 1.0)),
    )
