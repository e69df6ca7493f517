"""Tests of mptheory.mp against independent computations.

References used: scipy.integrate.quad and mpmath.quad of the density, eigenvalues/singular values of
Gaussian matrices (Monte Carlo, fixed seeds), exact Wishart moments, Gavish–Donoho's published
ω(1) ≈ 2.858, and the defining quadratic of the Stieltjes transform.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats

from mptheory.mp import (
    MarchenkoPastur,
    eigenvalues_from_matrix,
    marchenko_pastur,
    median,
    mp_edges,
    sigma_plus,
)

RATIOS = [1.0, 0.7, 0.25, 0.01]
ratios = st.one_of(st.just(1.0), st.floats(1e-3, 1.0, allow_nan=False))
sigma2s = st.floats(1e-2, 1e2, allow_nan=False)
probs = st.floats(0.0, 1.0, allow_nan=False)


def _quad(f, lo: float, hi: float) -> float:  # type: ignore[no-untyped-def]
    return integrate.quad(f, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=400)[0]


def _quad_cdf(law: MarchenkoPastur, x: float) -> float:
    """Quadrature of the pdf from the nearer edge (each piece has one end singularity at most)."""
    a, b = law.edges
    if x <= a:
        return 0.0
    if x >= b:
        return _quad(law.pdf, a, 0.5 * (a + b)) + _quad(law.pdf, 0.5 * (a + b), b)
    if x <= 0.5 * (a + b):
        return _quad(law.pdf, a, x)
    return 1.0 - _quad(law.pdf, x, b)


# ------------------------------------------------------------------------------------------
# density and distribution function
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", RATIOS)
@pytest.mark.parametrize("sigma2", [1.0, 3.7])
def test_pdf_integrates_to_one_and_cdf_equals_quadrature(c: float, sigma2: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    a, b = law.edges
    assert _quad_cdf(law, b) == pytest.approx(1.0, abs=1e-10)
    xs = a + (b - a) * np.array([1e-6, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-6])
    got = law.cdf(xs)
    want = np.array([_quad_cdf(law, float(x)) for x in xs])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(law.sf(xs), 1.0 - want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("c", [1.0, 0.9999, 0.3, 1e-4])
def test_cdf_matches_high_precision_mpmath(c: float) -> None:
    """30-digit tanh-sinh quadrature (handles the 1/sqrt(x) end singularity at c = 1)."""
    mpmath.mp.dps = 30
    s2 = mpmath.mpf("1.5")
    cc = mpmath.mpf(c)
    lo = s2 * (1 - mpmath.sqrt(cc)) ** 2
    hi = s2 * (1 + mpmath.sqrt(cc)) ** 2

    def dens(t: mpmath.mpf) -> mpmath.mpf:
        return mpmath.sqrt((hi - t) * (t - lo)) / (2 * mpmath.pi * cc * s2 * t)

    law = MarchenkoPastur(c, 1.5)
    for frac in ["0.001", "0.2", "0.5", "0.8", "0.999"]:
        x = lo + (hi - lo) * mpmath.mpf(frac)
        want = float(mpmath.quad(dens, [lo, x]))
        assert law.cdf(float(x)) == pytest.approx(want, abs=3e-15, rel=1e-12)


@given(c=ratios, sigma2=sigma2s, u=st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=30))
def test_cdf_monotone_bounded_and_zero_one_outside(c: float, sigma2: float, u: list[float]) -> None:
    law = MarchenkoPastur(c, sigma2)
    a, b = law.edges
    x = np.sort(a + (b - a) * np.asarray(u))
    F = law.cdf(x)
    assert np.all((F >= 0) & (F <= 1))
    assert np.all(np.diff(F) >= 0)
    assert np.all(F[x <= a] == 0.0)
    assert np.all(F[x >= b] == 1.0)
    np.testing.assert_allclose(F + law.sf(x), 1.0, atol=1e-15)
    # pdf is the derivative of the cdf (central difference, away from the edges)
    inner = x[(x > a + 0.02 * (b - a)) & (x < b - 0.02 * (b - a))]
    h = 1e-6 * (b - a)
    fd = (law.cdf(inner + h) - law.cdf(inner - h)) / (2 * h)
    np.testing.assert_allclose(fd, law.pdf(inner), rtol=1e-5, atol=1e-8 / (b - a))


@given(c=ratios, sigma2=sigma2s, x=st.floats(-1e3, 1e3, allow_nan=False))
def test_pdf_zero_outside_support_and_logpdf(c: float, sigma2: float, x: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    a, b = law.edges
    p = law.pdf(x)
    if x < a or x > b:
        assert p == 0.0 and law.logpdf(x) == -np.inf
    elif a < x < b:
        assert p > 0 and law.logpdf(x) == pytest.approx(math.log(p), rel=1e-12, abs=1e-12)


def test_c_equal_one_singularity_and_vectorised_shapes() -> None:
    law = MarchenkoPastur(1.0, 2.0)
    assert law.edges == (0.0, 8.0)
    assert law.pdf(0.0) == np.inf
    # near 0, f(x) ~ 1 / (pi sqrt(sigma2 x)) and F(x) ~ (2/pi) sqrt(x/sigma2)
    x = 1e-12
    assert law.pdf(x) == pytest.approx(1 / (math.pi * math.sqrt(2.0 * x)), rel=1e-5)
    assert law.cdf(x) == pytest.approx(2 / math.pi * math.sqrt(x / 2.0), rel=1e-5)
    grid = np.linspace(-1, 9, 12).reshape(3, 4)
    assert law.cdf(grid).shape == (3, 4) and law.pdf(grid).shape == (3, 4)
    assert np.isnan(law.cdf(np.nan)) and np.isnan(law.pdf(np.nan))


# ------------------------------------------------------------------------------------------
# quantiles and sampling
# ------------------------------------------------------------------------------------------


@given(c=ratios, sigma2=sigma2s, q=probs)
def test_cdf_of_ppf_is_identity(c: float, sigma2: float, q: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    x = law.ppf(q)
    a, b = law.edges
    assert a <= x <= b
    assert law.cdf(x) == pytest.approx(q, abs=1e-13, rel=1e-9)
    assert law.isf(1.0 - q) == pytest.approx(x, rel=1e-10, abs=1e-12 * b)


@given(c=ratios, sigma2=sigma2s, u=st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))
def test_ppf_of_cdf_is_identity(c: float, sigma2: float, u: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    a, b = law.edges
    x = a + (b - a) * u
    assert law.ppf(law.cdf(x)) == pytest.approx(x, rel=1e-10, abs=1e-14 * b)
    assert law.isf(law.sf(x)) == pytest.approx(x, rel=1e-10, abs=1e-14 * b)


@pytest.mark.parametrize("c", RATIOS)
def test_ppf_exact_endpoints_and_invalid_probabilities(c: float) -> None:
    law = MarchenkoPastur(c, 0.3)
    a, b = law.edges
    assert law.ppf(0.0) == a and law.ppf(1.0) == b
    assert law.isf(1.0) == a and law.isf(0.0) == b
    assert np.all(np.isnan(law.ppf([-0.1, 1.1, np.nan])))
    # tiny tail probabilities: quantile lies in the right place per quadrature
    for q in (1e-12, 1e-6):
        assert _quad_cdf(law, law.ppf(q)) == pytest.approx(q, rel=1e-6)
        assert 1.0 - _quad_cdf(law, law.isf(q)) == pytest.approx(q, rel=1e-3, abs=1e-14)


@pytest.mark.parametrize("c", [1.0, 0.25])
def test_rvs_follow_the_law(c: float) -> None:
    law = MarchenkoPastur(c, 2.0)
    x = law.rvs(20_000, random_state=12345)
    a, b = law.edges
    assert x.shape == (20_000,) and np.all((x >= a) & (x <= b))
    assert stats.kstest(x, law.cdf).pvalue > 1e-3
    # independent of the cdf: sample mean vs sigma2 within 5 standard errors
    assert abs(x.mean() - 2.0) < 5 * law.std() / math.sqrt(x.size)
    # reproducible with a seed, also from a Generator or a RandomState
    np.testing.assert_array_equal(law.rvs(5, random_state=7), law.rvs(5, random_state=7))
    assert law.rvs((2, 3), random_state=np.random.default_rng(0)).shape == (2, 3)
    assert law.rvs(3, random_state=np.random.RandomState(0)).shape == (3,)


def test_median_reproduces_gavish_donoho_omega() -> None:
    """ω(β) = λ*(β)/sqrt(μ_β); published ω(1) = 2.858 and the cubic fit (error < 0.01 for β ≤ 1)."""
    for beta in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        lam_star = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
        omega = lam_star / math.sqrt(median(beta))
        approx = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
        assert abs(omega - approx) < 0.01
    assert 4 / math.sqrt(3) / math.sqrt(median(1.0)) == pytest.approx(2.858, abs=5e-4)
    law = MarchenkoPastur(0.3, 2.5)
    assert _quad_cdf(law, law.median()) == pytest.approx(0.5, abs=1e-11)
    assert median(0.3, 2.5) == law.median()


# ------------------------------------------------------------------------------------------
# moments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", RATIOS)
def test_moments_match_quadrature(c: float) -> None:
    law = MarchenkoPastur(c, 1.7)
    a, b = law.edges
    for k in range(0, 7):
        want, _ = integrate.quad(lambda x, k=k: x**k * law.pdf(x), a, b, epsabs=0, epsrel=1e-12, limit=400)
        assert law.moment(k) == pytest.approx(want, rel=1e-9)
    assert law.mean() == pytest.approx(1.7, rel=1e-15)
    assert law.var() == pytest.approx(1.7**2 * c, rel=1e-15)
    assert law.std() == pytest.approx(1.7 * math.sqrt(c), rel=1e-15)


@given(c=ratios, sigma2=sigma2s)
def test_mean_var_formulas(c: float, sigma2: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    assert law.moment(1) == pytest.approx(sigma2, rel=1e-14)
    assert law.moment(2) - law.moment(1) ** 2 == pytest.approx(sigma2**2 * c, rel=1e-9)
    mu, var, skew, kurt = marchenko_pastur.stats(c, scale=sigma2, moments="mvsk")
    assert mu == pytest.approx(law.mean()) and var == pytest.approx(law.var())
    assert skew == pytest.approx(math.sqrt(c))  # known MP skewness
    assert kurt == pytest.approx(c - 1.0, abs=1e-9)


def test_moments_match_gaussian_matrix_monte_carlo() -> None:
    """Sample moments of Gaussian-matrix spectra (400 x 800, 4 draws).

    Tolerances are 5 standard deviations of the 4-draw mean, measured once over 60 draws
    (relative SD of one draw: 0.23 %, 0.49 %, 0.81 %, 1.19 % for k = 1..4).
    """
    rng = np.random.default_rng(2024)
    p, n, sigma2 = 400, 800, 0.5
    sums = np.zeros(5)
    reps = 4
    for _ in range(reps):
        ev = eigenvalues_from_matrix(rng.normal(scale=math.sqrt(sigma2), size=(p, n)))
        sums += [np.mean(ev**k) for k in range(5)]
    emp = sums / reps
    law = MarchenkoPastur(p / n, sigma2)
    tol = {1: 0.006, 2: 0.0125, 3: 0.02, 4: 0.03}
    # exact finite-n Wishart value of the second moment: sigma^4 (1 + c + 1/n)
    assert emp[2] == pytest.approx(sigma2**2 * (1 + p / n + 1 / n), rel=tol[2])
    for k in range(1, 5):
        assert emp[k] == pytest.approx(law.moment(k), rel=tol[k])


# ------------------------------------------------------------------------------------------
# Monte Carlo against Gaussian matrices
# ------------------------------------------------------------------------------------------


def test_ks_distance_to_gaussian_matrix_spectra_decreases_with_size() -> None:
    rng = np.random.default_rng(7)
    c, sigma2 = 0.5, 2.0
    law = MarchenkoPastur(c, sigma2)
    ks = []
    for n in (200, 400, 800):
        d = []
        for orient in (0, 1):  # both orientations give the same law
            shape = (n, int(c * n)) if orient else (int(c * n), n)
            ev = eigenvalues_from_matrix(rng.normal(scale=math.sqrt(sigma2), size=shape))
            d.append(stats.kstest(ev, law.cdf).statistic)
        ks.append(float(np.mean(d)))
    assert ks[0] > ks[1] > ks[2]
    assert ks[2] < 0.015


def test_c_equal_one_square_matrix_spectrum() -> None:
    rng = np.random.default_rng(3)
    ev = eigenvalues_from_matrix(rng.normal(size=(400, 400)))
    assert stats.kstest(ev, MarchenkoPastur(1.0).cdf).statistic < 0.03


# ------------------------------------------------------------------------------------------
# Stieltjes transform
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1.0, 0.3, 0.01])
def test_stieltjes_matches_quadrature(c: float) -> None:
    law = MarchenkoPastur(c, 1.3)
    a, b = law.edges
    for z in (1 + 1j, 0.5 + 0.1j, -2.0 + 0j, b + 1.0 + 0.5j, 3 - 2j, 20.0 + 0j):

        def re(x: float, z: complex = z) -> float:
            return float((law.pdf(x) / (x - z)).real)

        def im(x: float, z: complex = z) -> float:
            return float((law.pdf(x) / (x - z)).imag)

        want = (
            integrate.quad(re, a, b, epsabs=1e-13, limit=400)[0]
            + 1j * integrate.quad(im, a, b, epsabs=1e-13, limit=400)[0]
        )
        assert abs(law.stieltjes(z) - want) < 1e-8 * max(1.0, abs(want))


@given(
    c=ratios,
    sigma2=sigma2s,
    re=st.floats(-50, 50, allow_nan=False),
    im=st.floats(1e-3, 50, allow_nan=False),
)
def test_stieltjes_solves_quadratic_with_correct_branch(
    c: float, sigma2: float, re: float, im: float
) -> None:
    law = MarchenkoPastur(c, sigma2)
    z = complex(re, im)
    m = law.stieltjes(z)
    resid = sigma2 * c * z * m**2 + (z - sigma2 * (1 - c)) * m + 1
    scale = abs(sigma2 * c * z * m**2) + abs((z - sigma2 * (1 - c)) * m) + 1
    assert abs(resid) <= 1e-12 * scale
    assert m.imag > 0  # Herglotz: Im m > 0 on the upper half-plane
    assert abs(m) <= 1 / im * (1 + 1e-12)  # |m(z)| <= 1 / Im z for a probability measure
    assert law.stieltjes(z.conjugate()) == pytest.approx(m.conjugate(), rel=1e-12)


@pytest.mark.parametrize("c", [1.0, 0.4])
def test_stieltjes_asymptotics_and_support(c: float) -> None:
    law = MarchenkoPastur(c, 2.0)
    for z in (1e6j, -1e6, 1e6 + 1e6j):
        # m(z) = -1/z - E[x]/z^2 + O(z^-3)
        assert law.stieltjes(z) == pytest.approx(-1 / z - law.mean() / z**2, rel=1e-9)
    if c < 1:  # m(0) = E[1/x] = 1 / (sigma2 (1 - c))
        want = integrate.quad(lambda x: law.pdf(x) / x, *law.edges, limit=400)[0]
        assert law.stieltjes(0.0).real == pytest.approx(want, rel=1e-9)
    zs = np.array([[1j, -1.0], [9.0, 2 + 3j]])
    assert law.stieltjes(zs).shape == (2, 2)
    with pytest.raises(ValueError, match="support"):
        law.stieltjes(law.edges[1] * 0.5)


# ------------------------------------------------------------------------------------------
# singular-value form
# ------------------------------------------------------------------------------------------


@given(c=ratios, sigma2=sigma2s, scale=st.floats(0.1, 100), u=st.floats(-0.2, 1.2))
def test_singular_law_is_consistent_with_eigen_law(c: float, sigma2: float, scale: float, u: float) -> None:
    law = MarchenkoPastur(c, sigma2)
    sv = law.singular(scale)
    lo, hi = sv.edges
    a, b = law.edges
    assert lo == pytest.approx(scale * math.sqrt(a), rel=1e-12, abs=1e-12 * hi)
    assert hi == pytest.approx(scale * math.sqrt(b), rel=1e-12)
    s = lo + (hi - lo) * u
    assert sv.cdf(s) == pytest.approx(law.cdf((s / scale) ** 2 if s > 0 else -1.0), abs=1e-15)
    q = min(max(u, 0.0), 1.0)
    assert sv.ppf(q) == pytest.approx(scale * math.sqrt(law.ppf(q)), rel=1e-12)
    if lo < s < hi:
        assert sv.pdf(s) == pytest.approx(law.pdf((s / scale) ** 2) * 2 * s / scale**2, rel=1e-12)


@pytest.mark.parametrize("c", [1.0, 0.25])
def test_singular_pdf_integrates_and_moments(c: float) -> None:
    sv = MarchenkoPastur(c, 0.7).singular(3.0)
    lo, hi = sv.edges
    total = integrate.quad(sv.pdf, lo, hi, limit=400)[0]
    assert total == pytest.approx(1.0, abs=1e-10)
    mid = lo + 0.37 * (hi - lo)
    assert sv.cdf(mid) == pytest.approx(integrate.quad(sv.pdf, lo, mid, limit=400)[0], abs=1e-10)
    for k in (1, 2, 3):
        want = integrate.quad(lambda s, k=k: s**k * sv.pdf(s), lo, hi, epsrel=1e-12, limit=400)[0]
        assert sv.moment(k) == pytest.approx(want, rel=1e-8)
    assert sv.var() == pytest.approx(sv.moment(2) - sv.moment(1) ** 2)


def test_singular_values_of_gaussian_matrix_and_sigma_plus() -> None:
    rng = np.random.default_rng(11)
    N, M, sigma2 = 300, 900, 0.25
    W = rng.normal(scale=math.sqrt(sigma2), size=(N, M))
    s = np.linalg.svd(W, compute_uv=False)
    sv = MarchenkoPastur.from_shape((N, M), sigma2).singular(math.sqrt(max(N, M)))
    assert sv.edges[1] == pytest.approx(sigma_plus(sigma2, (N, M)), rel=1e-14)
    assert sv.edges[1] == pytest.approx(math.sqrt(sigma2) * (math.sqrt(N) + math.sqrt(M)), rel=1e-14)
    assert stats.kstest(s, sv.cdf).statistic < 0.02
    # largest singular value sits at the edge up to Tracy-Widom fluctuations O(max^{-2/3})
    assert abs(s[0] / sv.edges[1] - 1) < 0.02
    assert sigma_plus(sigma2, (M, N)) == sigma_plus(sigma2, (N, M))


# ------------------------------------------------------------------------------------------
# helpers and validation
# ------------------------------------------------------------------------------------------


def test_eigenvalues_from_matrix_matches_svd_in_both_orientations() -> None:
    rng = np.random.default_rng(5)
    W = rng.normal(size=(7, 19))
    want = np.sort(np.linalg.svd(W, compute_uv=False) ** 2 / 19)
    for A in (W, W.T, W.tolist()):
        ev = eigenvalues_from_matrix(A)
        assert ev.dtype == np.float64 and ev.shape == (7,)
        assert np.all(np.diff(ev) >= 0)
        np.testing.assert_allclose(ev, want, rtol=1e-10, atol=1e-12)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(eigenvalues_from_matrix(torch.tensor(W, dtype=torch.float32)), want, rtol=1e-5)
    # rank-deficient: round-off negatives are clipped to exactly zero
    ev = eigenvalues_from_matrix(np.ones((5, 5)))
    assert np.all(ev >= 0) and ev[-1] == pytest.approx(5.0)  # ones(5,5): s1^2 / 5 = 25 / 5


@pytest.mark.parametrize(
    "W, needle",
    [
        (np.zeros((0, 4)), r"\(0, 4\)"),
        (np.zeros((1, 9)), r"\(1, 9\)"),
        (np.zeros((9, 1)), r"\(9, 1\)"),
        (np.zeros(5), r"\(5,\)"),
        (np.zeros((2, 3, 4)), r"\(2, 3, 4\)"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), r"\(2, 2\)"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), r"\(2, 2\)"),
    ],
)
def test_eigenvalues_from_matrix_rejects_bad_input(W: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        eigenvalues_from_matrix(W)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, 4.0, float("nan"), float("inf"), "abc", None])
def test_bad_ratio_raises_with_value(ratio: object) -> None:
    with pytest.raises(ValueError, match=r"ratio.*min.*max") as info:
        MarchenkoPastur(ratio)  # type: ignore[arg-type]
    assert repr(ratio) in str(info.value)
    with pytest.raises(ValueError, match="ratio"):
        mp_edges(ratio)  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma2", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_sigma2_raises_with_value(sigma2: object) -> None:
    with pytest.raises(ValueError, match="sigma2") as info:
        MarchenkoPastur(0.5, sigma2)  # type: ignore[arg-type]
    assert repr(sigma2) in str(info.value)
    with pytest.raises(ValueError, match="sigma2"):
        sigma_plus(sigma2, (3, 4))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0, 4), (3,), (2, 3, 4), (2.5, 3), (-1, 3), "ab"])
def test_bad_shape_raises_with_value(shape: object) -> None:
    with pytest.raises(ValueError, match="shape") as info:
        MarchenkoPastur.from_shape(shape)  # type: ignore[arg-type]
    assert repr(shape) in str(info.value)
    with pytest.raises(ValueError, match="shape"):
        sigma_plus(1.0, shape)  # type: ignore[arg-type]


def test_other_bad_arguments() -> None:
    law = MarchenkoPastur(0.5)
    with pytest.raises(ValueError, match="k=-1"):
        law.moment(-1)
    with pytest.raises(ValueError, match="scale"):
        law.singular(0.0)
    with pytest.raises(ValueError, match="confidence"):
        law.interval(1.5)


def test_from_shape_edges_and_scipy_generator_agree() -> None:
    law = MarchenkoPastur.from_shape((768, 3072), 0.02)
    assert law.ratio == 0.25 and law.sigma2 == 0.02
    assert law.edges == pytest.approx((0.02 * 0.25, 0.02 * 2.25), rel=1e-14)
    assert law.support() == law.edges == mp_edges(0.25, 0.02)
    assert MarchenkoPastur.from_shape((3072, 768), 0.02).edges == law.edges
    frozen = marchenko_pastur(0.25, scale=0.02)
    x = np.linspace(0, 0.05, 17)
    np.testing.assert_allclose(frozen.cdf(x), law.cdf(x), atol=1e-15)
    np.testing.assert_allclose(frozen.pdf(x), law.pdf(x), rtol=1e-14)
    assert frozen.support() == pytest.approx(law.edges)
    assert frozen.expect(lambda t: t**3) == pytest.approx(law.moment(3), rel=1e-5)  # scipy's default quad tol
    lo, hi = law.interval(0.9)
    assert law.cdf(hi) - law.cdf(lo) == pytest.approx(0.9, abs=1e-12)
