"""The Marchenko–Pastur law, in the project's one "MP scale" convention.

For a matrix W of shape (N, M) with i.i.d. centred entries of variance σ², the eigenvalues
λ_i = s_i² / max(N, M) of the smaller Gram matrix follow, as N, M → ∞ with
c = min(N, M) / max(N, M) ∈ (0, 1] fixed, the Marchenko–Pastur law

    f(x) = √((λ₊ − x)(x − λ₋)) / (2π c σ² x)   on [λ₋, λ₊],   λ± = σ² (1 ± √c)².

Because the smaller Gram matrix is used, there is never an atom at zero. The singular values
s = √(max(N, M) λ) have upper edge σ₊ = σ (√N + √M), independent of orientation.

Everything here is exact and closed form (no per-point numerical integration):

* the CDF comes from the substitution x = (1 + c) − 2√c cos ε (σ² = 1), ε ∈ [0, π], which gives

      F(ε) = [√c sin ε + c ε − (1 − c) atan2(√c sin ε, 1 − √c cos ε)] / (π c),

  and, by the symmetry ε ↦ π − θ, the survival function
      S(θ) = [−√c sin θ + c θ + (1 − c) atan2(√c sin θ, 1 + √c cos θ)] / (π c)
  with x = (1 + c) + 2√c cos θ. Both are smooth at c = 1 (λ₋ = 0), where F(ε) = (ε + sin ε)/π;
* the quantile function solves F(ε) = q (or S(θ) = 1 − q above the median) by a vectorised,
  bracketed Newton iteration in the angle, so the endpoints q = 0 and q = 1 are exact;
* moments are σ^{2k} Σ_j Narayana(k, j) c^{j−1};
* the Stieltjes transform m(z) = ∫ f(x) / (x − z) dx solves σ² c z m² + (z − σ²(1 − c)) m + 1 = 0
  and is evaluated on the branch with m(z) ~ −1/z at infinity.

``MarchenkoPastur`` is a frozen distribution with the scipy.stats method names;
``marchenko_pastur`` is the same law as a ``scipy.stats.rv_continuous`` instance (shape ``ratio``,
``scale`` = σ²), for users who want ``fit``/``expect``/``interval`` and the rest of scipy's machinery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from mptheory.eigen import batched_eigenvalues, eigenvalues_from_matrix

__all__ = [
    "MarchenkoPastur",
    "MarchenkoPasturSingular",
    "marchenko_pastur",
    "mp_edges",
    "sigma_plus",
    "eigenvalues_from_matrix",
    "batched_eigenvalues",
    "median",
    "narayana",
]

FloatArray = NDArray[np.float64]

_NEWTON_MAXITER = 200


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _real_number(value: Any, name: str) -> float:
    """``float(value)`` for a real number (bool and strings refused: ``ratio="0.5"`` is a caller's bug)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.iscomplexobj(value):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _check_ratio(ratio: Any) -> float:
    try:
        c = _real_number(ratio, "ratio")
    except (TypeError, ValueError):
        raise ValueError(
            f"ratio must be a real number in (0, 1] (ratio = min(N, M) / max(N, M)); got ratio={ratio!r}"
        ) from None
    if not (math.isfinite(c) and 0.0 < c <= 1.0):
        raise ValueError(
            f"ratio must be in (0, 1] (ratio = min(N, M) / max(N, M) of the matrix dims); got ratio={ratio!r}"
        )
    return c


def _check_sigma2(sigma2: Any) -> float:
    try:
        s2 = _real_number(sigma2, "sigma2")
    except (TypeError, ValueError):
        raise ValueError(f"sigma2 must be a positive finite real number; got sigma2={sigma2!r}") from None
    if not (math.isfinite(s2) and s2 > 0.0):
        raise ValueError(
            f"sigma2 (per-entry noise variance) must be positive and finite; got sigma2={sigma2!r}"
        )
    return s2


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a pair (N, M) of positive integers; got shape={shape!r}") from None
    if len(dims) != 2:
        raise ValueError(f"shape must be a pair (N, M) of positive integers; got shape={shape!r}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or int(d) < 1:
            raise ValueError(f"shape must be a pair (N, M) of positive integers; got shape={shape!r}")
        out.append(int(d))
    return out[0], out[1]


def _rng(random_state: Any) -> np.random.Generator | np.random.RandomState:
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    return np.random.default_rng(random_state)


# ----------------------------------------------------------------------------------------------
# standardised law (sigma2 = 1); every function broadcasts over x and c
# ----------------------------------------------------------------------------------------------


def _std_edges(c: ArrayLike) -> tuple[Any, Any]:
    sc = np.sqrt(c)
    return (1.0 - sc) ** 2, (1.0 + sc) ** 2


def _std_pdf(x: ArrayLike, c: ArrayLike) -> FloatArray:
    x, c = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(c, dtype=float))
    a, b = _std_edges(c)
    out = np.zeros(x.shape, dtype=float)
    inside = (x > a) & (x < b)
    xi, ai, bi, ci = x[inside], a[inside], b[inside], c[inside]
    out[inside] = np.sqrt((bi - xi) * (xi - ai)) / (2.0 * np.pi * ci * xi)
    out[(x == 0.0) & (a == 0.0)] = np.inf  # c = 1: integrable 1/sqrt(x) singularity at the lower edge
    out[np.isnan(x) | np.isnan(c)] = np.nan
    return out


def _std_logpdf(x: ArrayLike, c: ArrayLike) -> FloatArray:
    x, c = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(c, dtype=float))
    a, b = _std_edges(c)
    out = np.full(x.shape, -np.inf)
    inside = (x > a) & (x < b)
    xi, ai, bi, ci = x[inside], a[inside], b[inside], c[inside]
    out[inside] = 0.5 * (np.log(bi - xi) + np.log(xi - ai)) - np.log(2.0 * np.pi * ci * xi)
    out[(x == 0.0) & (a == 0.0)] = np.inf
    out[np.isnan(x) | np.isnan(c)] = np.nan
    return out


def _h(t: ArrayLike, c: ArrayLike, sign: float) -> FloatArray:
    """F(ε) for sign=+1 (t = ε, angle from the lower edge); S(θ) for sign=-1 (t = θ, from the upper edge)."""
    t = np.asarray(t, dtype=float)
    c = np.asarray(c, dtype=float)
    sc = np.sqrt(c)
    st = np.sin(t)
    delta = np.arctan2(sc * st, 1.0 - sign * sc * np.cos(t))
    val = (sign * sc * st + c * t - sign * (1.0 - c) * delta) / (np.pi * c)
    return np.clip(val, 0.0, 1.0)


def _h_prime(t: ArrayLike, c: ArrayLike, sign: float) -> FloatArray:
    """d/dt of _h: (2/π) sin²t / x(t), written so that it stays finite at t = 0 when c = 1."""
    t = np.asarray(t, dtype=float)
    c = np.asarray(c, dtype=float)
    sc = np.sqrt(c)
    s2 = np.sin(0.5 * t) ** 2
    co2 = np.cos(0.5 * t) ** 2
    base = (1.0 - sc) ** 2 if sign > 0 else (1.0 + sc) ** 2
    denom = base + sign * 4.0 * sc * s2
    with np.errstate(invalid="ignore", divide="ignore"):
        val = (2.0 / np.pi) * 4.0 * s2 * co2 / denom
    lim = (2.0 / np.pi) * co2 / np.where(sc > 0, sc, 1.0)  # limit when base == 0 and s2 -> 0
    return np.where(denom > 0, val, lim)


def _angles(x: FloatArray, c: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(ε, θ) = angles of x in [a, b] measured from the lower and the upper edge, ε + θ = π."""
    a, b = _std_edges(c)
    lo = np.sqrt(np.clip(x - a, 0.0, None))
    hi = np.sqrt(np.clip(b - x, 0.0, None))
    return 2.0 * np.arctan2(lo, hi), 2.0 * np.arctan2(hi, lo)


def _std_cdf_sf(x: ArrayLike, c: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x, c = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(c, dtype=float))
    a, b = _std_edges(c)
    eps, theta = _angles(x, c)
    lower_half = x <= 1.0 + c  # midpoint of the support: use the form without cancellation against 1
    f_lo = _h(eps, c, 1.0)
    s_hi = _h(theta, c, -1.0)
    cdf = np.where(lower_half, f_lo, 1.0 - s_hi)
    sf = np.where(lower_half, 1.0 - f_lo, s_hi)
    cdf = np.where(x <= a, 0.0, np.where(x >= b, 1.0, cdf))
    sf = np.where(x <= a, 1.0, np.where(x >= b, 0.0, sf))
    bad = np.isnan(x) | np.isnan(c)
    cdf = np.where(bad, np.nan, cdf)
    sf = np.where(bad, np.nan, sf)
    return cdf, sf


def _solve_angle(target: FloatArray, c: FloatArray, sign: float) -> FloatArray:
    """Solve _h(t, c, sign) = target for t in [0, π]; vectorised safeguarded Newton (rtsafe).

    Kept instead of ``scipy.optimize.elementwise.find_root`` (tested with scipy 1.17 on 20,000 random
    (q, c)): the bracketing solver was 2–3× slower, hit its iteration limit on some points, and its roots
    differ in the last bits, which would move every BEMA quantile grid and fitted σ².
    """
    target = np.asarray(target, dtype=float)
    c = np.asarray(c, dtype=float)
    lo = np.zeros_like(target)
    hi = np.full_like(target, np.pi)
    t = np.clip(np.pi * target, 0.0, np.pi)
    active = (target > 0.0) & (target < 1.0)
    t = np.where(target <= 0.0, 0.0, np.where(target >= 1.0, np.pi, t))
    idx = np.flatnonzero(active)
    tf, lof, hif, tgt, cf = (v.ravel() for v in (t.copy(), lo, hi, target, c))
    for _ in range(_NEWTON_MAXITER):
        if idx.size == 0:
            break
        ti, ci, gi = tf[idx], cf[idx], tgt[idx]
        g = _h(ti, ci, sign) - gi
        below = g < 0
        lof[idx] = np.where(below, ti, lof[idx])
        hif[idx] = np.where(below, hif[idx], ti)
        d = _h_prime(ti, ci, sign)
        with np.errstate(divide="ignore", invalid="ignore"):
            tn = ti - g / d
        lo_i, hi_i = lof[idx], hif[idx]
        bisect = ~((tn >= lo_i) & (tn <= hi_i)) | ~np.isfinite(tn)
        tn = np.where(bisect, 0.5 * (lo_i + hi_i), tn)
        tn = np.where(g == 0, ti, tn)
        tf[idx] = tn
        done = (
            (np.abs(tn - ti) <= 4e-16 * np.maximum(np.abs(tn), 1e-300))
            | (g == 0)
            | (hi_i - lo_i <= 4e-16 * hi_i)
        )
        idx = idx[~done]
    return tf.reshape(target.shape)


def _std_ppf(q: ArrayLike, c: ArrayLike) -> FloatArray:
    q, c = np.broadcast_arrays(np.asarray(q, dtype=float), np.asarray(c, dtype=float))
    a, b = _std_edges(c)
    sc = np.sqrt(c)
    low = q <= 0.5
    eps = _solve_angle(np.where(low, q, 0.0), c, 1.0)
    theta = _solve_angle(np.where(low, 0.0, 1.0 - q), c, -1.0)
    x = np.where(low, a + 4.0 * sc * np.sin(0.5 * eps) ** 2, b - 4.0 * sc * np.sin(0.5 * theta) ** 2)
    x = np.clip(x, a, b)
    return np.where((q < 0) | (q > 1) | np.isnan(q) | np.isnan(c), np.nan, x)


def _std_isf(p: ArrayLike, c: ArrayLike) -> FloatArray:
    p, c = np.broadcast_arrays(np.asarray(p, dtype=float), np.asarray(c, dtype=float))
    a, b = _std_edges(c)
    sc = np.sqrt(c)
    high = p <= 0.5
    theta = _solve_angle(np.where(high, p, 0.0), c, -1.0)
    eps = _solve_angle(np.where(high, 0.0, 1.0 - p), c, 1.0)
    x = np.where(high, b - 4.0 * sc * np.sin(0.5 * theta) ** 2, a + 4.0 * sc * np.sin(0.5 * eps) ** 2)
    x = np.clip(x, a, b)
    return np.where((p < 0) | (p > 1) | np.isnan(p) | np.isnan(c), np.nan, x)


def narayana(k: int, j: int) -> int:
    """Narayana number N(k, j) = C(k, j) C(k, j-1) / k: non-crossing partitions of k with j blocks."""
    if k < 1 or j < 1 or j > k:
        return 0
    return math.comb(k, j) * math.comb(k, j - 1) // k


def _std_moment(k: int, c: float) -> float:
    if k == 0:
        return 1.0
    return float(sum(narayana(k, j) * c ** (j - 1) for j in range(1, k + 1)))


def _check_order(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 0:
        raise ValueError(f"moment order k must be a non-negative integer; got k={k!r}")
    return int(k)


# ----------------------------------------------------------------------------------------------
# public helpers
# ----------------------------------------------------------------------------------------------


def mp_edges(ratio: float, sigma2: float = 1.0) -> tuple[float, float]:
    """Bulk edges (λ₋, λ₊) = σ² (1 ∓ √c)² of the MP law with ratio c = min/max dims and variance σ²."""
    c = _check_ratio(ratio)
    s2 = _check_sigma2(sigma2)
    sc = math.sqrt(c)
    return s2 * (1.0 - sc) ** 2, s2 * (1.0 + sc) ** 2


def sigma_plus(sigma2: float, shape: Sequence[int]) -> float:
    """Singular-value bulk edge σ₊ = σ (√N + √M) of an (N, M) noise matrix with entry variance σ²."""
    s2 = _check_sigma2(sigma2)
    n, m = _check_shape(shape)
    return math.sqrt(s2) * (math.sqrt(n) + math.sqrt(m))


def median(ratio: float, sigma2: float = 1.0) -> float:
    """Median of the MP law (eigenvalue scale); with σ² = 1 this is Gavish–Donoho's μ_β."""
    return MarchenkoPastur(ratio, sigma2).median()


# ----------------------------------------------------------------------------------------------
# scipy.stats generator
# ----------------------------------------------------------------------------------------------


class marchenko_pastur_gen(stats.rv_continuous):
    r"""Marchenko–Pastur law as a ``scipy.stats`` distribution.

    Shape parameter ``ratio`` = c ∈ (0, 1] (min/max dims); ``scale`` is σ². Support
    [(1 − √c)², (1 + √c)²] · scale; density √((b − x)(x − a)) / (2π c x) for scale = 1.
    """

    def _argcheck(self, ratio: Any) -> Any:
        return (ratio > 0) & (ratio <= 1)

    def _shape_info(self) -> list[Any]:
        from scipy.stats._distn_infrastructure import _ShapeInfo

        return [_ShapeInfo("ratio", False, (0, 1), (False, True))]

    def _get_support(self, ratio: Any) -> tuple[Any, Any]:
        return _std_edges(ratio)

    def _pdf(self, x: Any, ratio: Any) -> Any:
        return _std_pdf(x, ratio)

    def _logpdf(self, x: Any, ratio: Any) -> Any:
        return _std_logpdf(x, ratio)

    def _cdf(self, x: Any, ratio: Any) -> Any:
        return _std_cdf_sf(x, ratio)[0]

    def _sf(self, x: Any, ratio: Any) -> Any:
        return _std_cdf_sf(x, ratio)[1]

    def _ppf(self, q: Any, ratio: Any) -> Any:
        return _std_ppf(q, ratio)

    def _isf(self, q: Any, ratio: Any) -> Any:
        return _std_isf(q, ratio)

    def _munp(self, n: Any, ratio: Any) -> Any:
        return np.vectorize(lambda k, cc: _std_moment(int(k), float(cc)), otypes=[float])(n, ratio)

    def _stats(self, ratio: Any) -> tuple[Any, Any, Any, Any]:
        c = ratio
        m2 = 1.0 + c
        m3 = 1.0 + 3.0 * c + c**2
        m4 = 1.0 + 6.0 * c + 6.0 * c**2 + c**3
        mu, var = 1.0, c
        skew = (m3 - 3 * mu * m2 + 2 * mu**3) / var**1.5
        kurt = (m4 - 4 * mu * m3 + 6 * mu**2 * m2 - 3 * mu**4) / var**2 - 3.0
        return mu, var, skew, kurt


marchenko_pastur = marchenko_pastur_gen(a=0.0, name="marchenko_pastur", shapes="ratio")


# ----------------------------------------------------------------------------------------------
# frozen laws
# ----------------------------------------------------------------------------------------------


class MarchenkoPastur:
    """Frozen Marchenko–Pastur law of the eigenvalues λ = s² / max(N, M).

    Parameters
    ----------
    ratio : float
        c = min(N, M) / max(N, M) ∈ (0, 1].
    sigma2 : float
        Per-entry noise variance σ² > 0.

    Methods follow ``scipy.stats``: pdf, logpdf, cdf, sf, ppf, isf, rvs, mean, var, std, median,
    moment, support, interval; plus ``edges``, ``stieltjes`` and ``singular``.
    """

    def __init__(self, ratio: float, sigma2: float = 1.0) -> None:
        self._c = _check_ratio(ratio)
        self._s2 = _check_sigma2(sigma2)

    @classmethod
    def from_shape(cls, shape: Sequence[int], sigma2: float = 1.0) -> MarchenkoPastur:
        """Law for an (N, M) noise matrix: ratio = min(N, M) / max(N, M)."""
        n, m = _check_shape(shape)
        return cls(min(n, m) / max(n, m), sigma2)

    def __repr__(self) -> str:
        return f"MarchenkoPastur(ratio={self._c!r}, sigma2={self._s2!r})"

    @property
    def ratio(self) -> float:
        """c = min/max dims."""
        return self._c

    @property
    def sigma2(self) -> float:
        """Per-entry variance σ²."""
        return self._s2

    @property
    def edges(self) -> tuple[float, float]:
        """(λ₋, λ₊) = σ² (1 ∓ √c)²."""
        return mp_edges(self._c, self._s2)

    def support(self) -> tuple[float, float]:
        """Support [λ₋, λ₊] (same as ``edges``)."""
        return self.edges

    @property
    def dist(self) -> Any:
        """The equivalent frozen ``scipy.stats`` object (``marchenko_pastur(c, scale=σ²)``)."""
        return marchenko_pastur(self._c, scale=self._s2)

    # --- densities and distribution functions ---------------------------------------------
    def _clamp(self, x: FloatArray, val: FloatArray, below: float, above: float) -> FloatArray:
        """Pin values outside [λ₋, λ₊] (edges in user units, so no rounding from x / σ² leaks in)."""
        a, b = self.edges
        if below == above:  # (log) densities: vanish at both edges; at c = 1 keep +inf at x = 0
            lower_out = (x < a) if self._c == 1.0 else (x <= a)
            return np.where(lower_out | (x >= b), below, val)
        return np.where(x <= a, below, np.where(x >= b, above, val))

    def pdf(self, x: ArrayLike) -> Any:
        """Density at x (0 outside [λ₋, λ₊]; +inf at x = 0 when c = 1)."""
        x = np.asarray(x, dtype=float)
        return _out(self._clamp(x, _std_pdf(x / self._s2, self._c) / self._s2, 0.0, 0.0))

    def logpdf(self, x: ArrayLike) -> Any:
        """Log density (-inf outside the support)."""
        x = np.asarray(x, dtype=float)
        val = _std_logpdf(x / self._s2, self._c) - math.log(self._s2)
        return _out(self._clamp(x, val, -np.inf, -np.inf))

    def cdf(self, x: ArrayLike) -> Any:
        """Closed-form CDF: 0 below λ₋, 1 above λ₊."""
        x = np.asarray(x, dtype=float)
        return _out(self._clamp(x, _std_cdf_sf(x / self._s2, self._c)[0], 0.0, 1.0))

    def sf(self, x: ArrayLike) -> Any:
        """Survival function 1 − CDF, computed without cancellation in the upper half."""
        x = np.asarray(x, dtype=float)
        return _out(self._clamp(x, _std_cdf_sf(x / self._s2, self._c)[1], 1.0, 0.0))

    def logcdf(self, x: ArrayLike) -> Any:
        """log CDF."""
        with np.errstate(divide="ignore"):
            return _out(np.log(self.cdf(x)))

    def logsf(self, x: ArrayLike) -> Any:
        """log SF."""
        with np.errstate(divide="ignore"):
            return _out(np.log(self.sf(x)))

    def ppf(self, q: ArrayLike) -> Any:
        """Quantile function; exact λ₋ at q = 0 and λ₊ at q = 1, NaN outside [0, 1]."""
        return _out(self._s2 * _std_ppf(q, self._c))

    def isf(self, p: ArrayLike) -> Any:
        """Inverse survival function."""
        return _out(self._s2 * _std_isf(p, self._c))

    def rvs(self, size: int | tuple[int, ...] | None = None, random_state: Any = None) -> Any:
        """Samples by inverse-CDF sampling; random_state is None, an int, a Generator or a RandomState."""
        u = _rng(random_state).uniform(0.0, 1.0, size=size)
        return _out(self.ppf(u))

    # --- moments -----------------------------------------------------------------------------
    def moment(self, k: int) -> float:
        """Exact raw moment E[λ^k] = σ^{2k} Σ_j N(k, j) c^{j−1} (Narayana numbers)."""
        k = _check_order(k)
        return self._s2**k * _std_moment(k, self._c)

    def mean(self) -> float:
        """E[λ] = σ²."""
        return self._s2

    def var(self) -> float:
        """Var[λ] = σ⁴ c."""
        return self._s2**2 * self._c

    def std(self) -> float:
        """Standard deviation σ² √c."""
        return math.sqrt(self.var())

    def median(self) -> float:
        """Median (ppf(0.5))."""
        return float(self.ppf(0.5))

    def interval(self, confidence: float) -> tuple[float, float]:
        """Equal-tailed interval with the given probability mass."""
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1]; got confidence={confidence!r}")
        alpha = 0.5 * (1.0 - confidence)
        return float(self.ppf(alpha)), float(self.isf(alpha))

    def stats(self) -> tuple[float, float]:
        """(mean, variance)."""
        return self.mean(), self.var()

    # --- Stieltjes transform -------------------------------------------------------------------
    def stieltjes(self, z: ArrayLike) -> Any:
        """m(z) = ∫ f(x) / (x − z) dx for z off the support [λ₋, λ₊].

        Root of σ² c z m² + (z − σ²(1 − c)) m + 1 = 0 with Im m > 0 when Im z > 0 and m ~ −1/z at
        infinity. Raises ValueError if some z lies on the support (where the limit is branch-dependent).
        """
        z = np.asarray(z, dtype=complex)
        a, b = self.edges
        on = (z.imag == 0) & (z.real >= a) & (z.real <= b)
        if np.any(on):
            raise ValueError(
                f"stieltjes(z) is defined off the support [{a!r}, {b!r}]; got real z={z[on].real.ravel()[:5]}"
            )
        if np.any(~np.isfinite(z)):
            raise ValueError("stieltjes(z) needs finite z")
        s2, c = self._s2, self._c
        root = np.sqrt(z - a) * np.sqrt(z - b)  # ~ z at infinity, cut exactly on [a, b]
        m = -2.0 / (z - s2 * (1.0 - c) + root)
        return m if m.ndim else complex(m)

    # --- singular-value form ---------------------------------------------------------------------
    def singular(self, scale: float = 1.0) -> MarchenkoPasturSingular:
        """Law of s = scale · √λ. With scale = √max(N, M) the upper edge is σ (√N + √M)."""
        return MarchenkoPasturSingular(self, scale)


class MarchenkoPasturSingular:
    """Frozen law of singular values s = scale · √λ, λ ~ MarchenkoPastur(ratio, sigma2)."""

    def __init__(self, law: MarchenkoPastur, scale: float = 1.0) -> None:
        try:
            sc = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be a positive finite real number; got scale={scale!r}") from None
        if not (math.isfinite(sc) and sc > 0):
            raise ValueError(f"scale must be positive and finite; got scale={scale!r}")
        self.eigen = law
        self._scale = sc

    def __repr__(self) -> str:
        return f"{self.eigen!r}.singular(scale={self._scale!r})"

    @property
    def scale(self) -> float:
        """Multiplier: s = scale · √λ."""
        return self._scale

    @property
    def ratio(self) -> float:
        """c = min/max dims."""
        return self.eigen.ratio

    @property
    def sigma2(self) -> float:
        """Per-entry variance σ²."""
        return self.eigen.sigma2

    @property
    def edges(self) -> tuple[float, float]:
        """(s₋, s₊) = scale · σ (1 ∓ √c)."""
        s = math.sqrt(self.eigen.sigma2) * self._scale
        r = math.sqrt(self.eigen.ratio)
        return s * (1.0 - r), s * (1.0 + r)

    def support(self) -> tuple[float, float]:
        """Support [s₋, s₊]."""
        return self.edges

    def _lam(self, s: ArrayLike) -> FloatArray:
        s = np.asarray(s, dtype=float)
        return np.where(s < 0, -1.0, (s / self._scale) ** 2)

    def pdf(self, s: ArrayLike) -> Any:
        """Density of s: f_λ(s²/scale²) · 2 s / scale²."""
        s = np.asarray(s, dtype=float)
        with np.errstate(invalid="ignore"):
            val = np.asarray(self.eigen.pdf(self._lam(s))) * 2.0 * s / self._scale**2
        # c = 1: f_λ ~ 1/(π√λ) so the density of s tends to 2/(π scale σ) at s = 0
        lim = 2.0 / (np.pi * self._scale * math.sqrt(self.eigen.sigma2))
        val = np.where((s == 0) & (self.eigen.ratio == 1.0), lim, val)
        return _out(np.where(np.isnan(s), np.nan, val))

    def logpdf(self, s: ArrayLike) -> Any:
        """Log density."""
        with np.errstate(divide="ignore"):
            return _out(np.log(self.pdf(s)))

    def cdf(self, s: ArrayLike) -> Any:
        """P(S ≤ s) = F_λ(s² / scale²)."""
        return _out(np.where(np.isnan(np.asarray(s, dtype=float)), np.nan, self.eigen.cdf(self._lam(s))))

    def sf(self, s: ArrayLike) -> Any:
        """P(S > s)."""
        return _out(np.where(np.isnan(np.asarray(s, dtype=float)), np.nan, self.eigen.sf(self._lam(s))))

    def ppf(self, q: ArrayLike) -> Any:
        """Quantile: scale · √(λ quantile)."""
        return _out(self._scale * np.sqrt(self.eigen.ppf(q)))

    def isf(self, p: ArrayLike) -> Any:
        """Inverse survival function."""
        return _out(self._scale * np.sqrt(self.eigen.isf(p)))

    def median(self) -> float:
        """Median singular value."""
        return float(self.ppf(0.5))

    def rvs(self, size: int | tuple[int, ...] | None = None, random_state: Any = None) -> Any:
        """Inverse-CDF samples."""
        return _out(self._scale * np.sqrt(self.eigen.rvs(size=size, random_state=random_state)))

    def moment(self, k: int) -> float:
        """E[s^k]; exact for even k, Gauss–Legendre quadrature in the CDF angle for odd k."""
        k = _check_order(k)
        if k % 2 == 0:
            return self._scale**k * self.eigen.moment(k // 2)
        # E[λ^{k/2}] = ∫_0^π x(ε)^{k/2} dF(ε), integrand smooth in ε: (2/π) sin²ε x^{k/2 - 1}
        c, s2 = self.eigen.ratio, self.eigen.sigma2
        nodes, weights = np.polynomial.legendre.leggauss(200)
        eps = 0.5 * np.pi * (nodes + 1.0)
        x = (1.0 - math.sqrt(c)) ** 2 + 4.0 * math.sqrt(c) * np.sin(0.5 * eps) ** 2
        dens = _h_prime(eps, c, 1.0)
        val = 0.5 * np.pi * float(np.sum(weights * dens * x ** (0.5 * k)))
        return self._scale**k * s2 ** (0.5 * k) * val

    def mean(self) -> float:
        """E[s]."""
        return self.moment(1)

    def var(self) -> float:
        """Var[s]."""
        return self.moment(2) - self.moment(1) ** 2

    def std(self) -> float:
        """Standard deviation of s."""
        return math.sqrt(self.var())


def _out(v: Any) -> Any:
    """Return numpy scalars as Python floats and arrays unchanged (scipy.stats-like)."""
    arr = np.asarray(v)
    return float(arr) if arr.ndim == 0 else arr
