"""Tests of the Tracy–Widom laws against published values, independent quadratures and Monte Carlo."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st
from numpy.polynomial.legendre import leggauss
from scipy import integrate, stats
from scipy.special import airy

from mptheory.tracy_widom import (
    TABLE_RANGE,
    TracyWidom,
    fredholm_logcdf,
    tw_edge_quantile,
)

# High-precision moments (Bornemann 2010, Table 4; Prähofer & Spohn 2000):
# (mean, variance, skewness, excess kurtosis)
PUBLISHED_MOMENTS = {
    1: (-1.2065335745820, 1.6077810345810, 0.2934645240, 0.1652429384),
    2: (-1.7710868074116, 0.8131947928329, 0.2240842036, 0.0934480876),
}


@pytest.fixture(scope="module", params=[1, 2])
def law(request: pytest.FixtureRequest) -> TracyWidom:
    return TracyWidom(request.param)


# ---------------------------------------------------------------------------------------------
# independent implementations of the literal kernels (not the Hankel form used by the module)
# ---------------------------------------------------------------------------------------------


def _literal_cdf(s: float, beta: int, m: int = 70) -> float:
    """F₂ = det(I − K_Airy) on L²(s, ∞); F₁ = det(I − ½Ai((x+y)/2)) on L²(s, ∞) (Sasamoto)."""
    x, w = leggauss(m)
    length = 2.0 * (16.0 - min(s, 0.0))
    x = s + (x + 1.0) * length / 2.0
    w = w * length / 2.0
    if beta == 2:
        ai, aip, _, _ = airy(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = (ai[:, None] * aip[None, :] - aip[:, None] * ai[None, :]) / (x[:, None] - x[None, :])
        k[np.diag_indices(m)] = aip**2 - x * ai**2
    else:
        k = 0.5 * airy((x[:, None] + x[None, :]) / 2.0)[0]
    sw = np.sqrt(w)
    sign, logdet = np.linalg.slogdet(np.eye(m) - sw[:, None] * k * sw[None, :])
    assert sign > 0
    return float(np.exp(logdet))


@pytest.mark.parametrize("beta", [1, 2])
def test_literal_kernel_formulas_agree(beta: int) -> None:
    tw = TracyWidom(beta)
    for s in (-6.0, -4.0, -2.5, -1.0, 0.0, 1.5, 3.0, 5.0):
        assert abs(tw.cdf(s) - _literal_cdf(s, beta)) < 1e-9, s


# ---------------------------------------------------------------------------------------------
# published values
# ---------------------------------------------------------------------------------------------


def test_published_f2_values() -> None:
    tw = TracyWidom(2)
    assert tw.cdf(-2.0) == pytest.approx(0.4132, abs=1e-4)
    assert tw.cdf(-3.0) == pytest.approx(0.0803, abs=1e-4)


@pytest.mark.parametrize("delta, expected", [(0.10, 0.450), (0.05, 0.979), (0.01, 2.023)])
def test_tw1_edge_quantiles(delta: float, expected: float) -> None:
    q = tw_edge_quantile(delta)
    assert isinstance(q, float)
    assert q == pytest.approx(expected, abs=2e-3)
    assert TracyWidom(1).ppf(1.0 - delta) == pytest.approx(q, abs=1e-10)


def test_tw2_quantiles_published() -> None:
    # Tracy–Widom GUE upper points (Tracy & Widom 1994; Bejan 2005 tables)
    q = tw_edge_quantile(np.array([0.10, 0.05, 0.01]), beta=2)
    np.testing.assert_allclose(q, [-0.597, -0.232, 0.477], atol=5e-3)


def test_moments_by_quadrature_of_pdf(law: TracyWidom) -> None:
    mean_p, var_p, _, _ = PUBLISHED_MOMENTS[law.beta]
    pts = list(np.arange(-10.0, 12.0, 2.0))
    mass = integrate.quad(law.pdf, -16, 16, points=pts, limit=200, epsabs=1e-13)[0]
    mean = integrate.quad(lambda x: x * law.pdf(x), -16, 16, points=pts, limit=200, epsabs=1e-13)[0]
    var = integrate.quad(lambda x: (x - mean) ** 2 * law.pdf(x), -16, 16, points=pts, limit=200)[0]
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert mean == pytest.approx(mean_p, abs=1e-3)
    assert np.sqrt(var) == pytest.approx(np.sqrt(var_p), abs=1e-3)
    assert mean == pytest.approx(mean_p, abs=1e-7)
    assert var == pytest.approx(var_p, abs=1e-7)


def test_moment_methods_match_published(law: TracyWidom) -> None:
    mean_p, var_p, skew_p, kurt_p = PUBLISHED_MOMENTS[law.beta]
    assert law.mean() == pytest.approx(mean_p, abs=1e-8)
    assert law.var() == pytest.approx(var_p, abs=1e-8)
    assert law.std() == pytest.approx(np.sqrt(var_p), abs=1e-8)
    m, v, s, k = law.stats(moments="mvsk")
    assert float(s) == pytest.approx(skew_p, abs=1e-6)
    assert float(k) == pytest.approx(kurt_p, abs=1e-6)
    # rough published values quoted in peers.md
    assert law.mean() == pytest.approx({1: -1.2065, 2: -1.7711}[law.beta], abs=1e-3)
    assert law.std() == pytest.approx({1: 1.2680, 2: 0.9018}[law.beta], abs=1e-3)


# ---------------------------------------------------------------------------------------------
# numerical accuracy: quadrature convergence and table vs direct evaluation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1, 2])
def test_quadrature_orders_agree(beta: int) -> None:
    s = np.linspace(-8.0, 6.0, 15)
    lf48, dl48 = fredholm_logcdf(s, beta, n_nodes=48)
    lf80, dl80 = fredholm_logcdf(s, beta, n_nodes=80)
    assert np.max(np.abs(np.exp(lf48) - np.exp(lf80))) < 1e-8
    # and the derivative (pdf) too
    assert np.max(np.abs(np.exp(lf48) * dl48 - np.exp(lf80) * dl80)) < 1e-8


def test_table_matches_direct_evaluation(law: TracyWidom) -> None:
    rng = np.random.default_rng(7)
    s = rng.uniform(*TABLE_RANGE, size=120)
    logf, dlogf = fredholm_logcdf(s, law.beta)
    assert np.max(np.abs(law.cdf(s) - np.exp(logf))) < 1e-7
    assert np.max(np.abs(law.pdf(s) - np.exp(logf) * dlogf)) < 1e-7
    # relative accuracy in both tails
    np.testing.assert_allclose(law.logcdf(s), logf, rtol=1e-7)
    right = s > 1.0
    np.testing.assert_allclose(law.sf(s[right]), -np.expm1(logf[right]), rtol=1e-7)
    np.testing.assert_allclose(law.logpdf(s), logf + np.log(dlogf), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("beta", [1, 2])
def test_pdf_is_derivative_of_exact_cdf(beta: int) -> None:
    tw = TracyWidom(beta)
    s = np.linspace(-7.0, 7.0, 15)
    h = 1e-3
    fd = (np.exp(fredholm_logcdf(s + h, beta)[0]) - np.exp(fredholm_logcdf(s - h, beta)[0])) / (2 * h)
    assert np.max(np.abs(tw.pdf(s) - fd)) < 1e-6


def test_monotone_cdf_nonnegative_pdf_and_unit_mass(law: TracyWidom) -> None:
    s = np.linspace(-14.0, 16.0, 6001)
    cdf = law.cdf(s)
    pdf = law.pdf(s)
    assert np.all(np.diff(cdf) >= 0)
    assert np.all(pdf >= 0)
    assert np.all((cdf >= 0) & (cdf <= 1))
    np.testing.assert_allclose(law.sf(s), 1.0 - cdf, atol=1e-15)
    mass = integrate.quad(law.pdf, -np.inf, np.inf, limit=200)[0]
    assert mass == pytest.approx(1.0, abs=1e-8)
    # cdf is the integral of the pdf
    for b in (-5.0, -1.5, 0.0, 2.0):
        val = integrate.quad(law.pdf, -20.0, b, limit=200, epsabs=1e-13)[0]
        assert val == pytest.approx(law.cdf(b), abs=1e-9)


def test_limits_and_tails(law: TracyWidom) -> None:
    assert law.cdf(-np.inf) == 0.0 and law.cdf(np.inf) == 1.0
    assert law.sf(np.inf) == 0.0 and law.sf(-np.inf) == 1.0
    assert 0.0 <= law.cdf(-30.0) < 1e-100
    assert 0.0 <= law.sf(40.0) < 1e-50
    assert law.cdf(20.0) == 1.0
    assert np.isnan(law.cdf(np.nan))
    # tails join the table continuously (value and density)
    for edge in TABLE_RANGE:
        lo, hi = edge - 1e-9, edge + 1e-9
        assert law.logcdf(hi) == pytest.approx(law.logcdf(lo), rel=1e-6)
        assert law.logsf(hi) == pytest.approx(law.logsf(lo), rel=1e-6)
        assert law.logpdf(hi) == pytest.approx(law.logpdf(lo), rel=1e-6)


@pytest.mark.parametrize("beta", [1, 2])
def test_left_tail_matches_bbd_asymptotics(beta: int) -> None:
    """Direct determinant vs Baik–Buckingham–DiFranco (2008) left-tail expansion with its constants."""
    zp = -0.16542114370045092  # ζ'(−1)
    for s in (-7.0, -6.0, -5.0):
        a = -s
        logf = float(fredholm_logcdf(s, beta)[0])
        if beta == 2:
            asym = -(a**3) / 12 - np.log(a) / 8 + np.log(2) / 24 + zp + 3.0 / (64.0 * a**3)
            assert abs(logf - asym) < 2e-5
        else:
            asym = -(a**3) / 24 - a**1.5 / (3 * np.sqrt(2)) - np.log(a) / 16 - 11 / 48 * np.log(2) + zp / 2
            assert abs(logf - asym) < 0.05 * a**-1.5


@pytest.mark.parametrize("beta", [1, 2])
def test_right_tail_matches_airy_asymptotics(beta: int) -> None:
    for s in (6.0, 10.0, 14.0):
        log_sf = float(np.log(-np.expm1(fredholm_logcdf(s, beta)[0])))
        if beta == 2:
            asym = -4 / 3 * s**1.5 - 1.5 * np.log(s) - np.log(16 * np.pi)
        else:
            asym = -2 / 3 * s**1.5 - 0.75 * np.log(s) - np.log(4 * np.sqrt(np.pi))
        assert abs(log_sf - asym) < 2.0 * s**-1.5
        assert TracyWidom(beta).logsf(s) == pytest.approx(log_sf, rel=1e-7)


# ---------------------------------------------------------------------------------------------
# inverse functions (properties)
# ---------------------------------------------------------------------------------------------

_TW = {1: TracyWidom(1), 2: TracyWidom(2)}


@given(q=st.floats(1e-12, 1 - 1e-12), beta=st.sampled_from([1, 2]))
def test_cdf_of_ppf_is_identity(q: float, beta: int) -> None:
    tw = _TW[beta]
    assert tw.cdf(tw.ppf(q)) == pytest.approx(q, rel=1e-9, abs=1e-15)


@given(p=st.floats(1e-250, 0.5), beta=st.sampled_from([1, 2]))
def test_sf_of_isf_is_identity(p: float, beta: int) -> None:
    tw = _TW[beta]
    assert tw.sf(tw.isf(p)) == pytest.approx(p, rel=1e-9)


@given(s=st.floats(-9.0, 3.0), beta=st.sampled_from([1, 2]))
def test_ppf_of_cdf_is_identity(s: float, beta: int) -> None:
    tw = _TW[beta]
    assert tw.ppf(tw.cdf(s)) == pytest.approx(s, abs=1e-8)


@given(s=st.floats(-3.0, 12.0), beta=st.sampled_from([1, 2]))
def test_isf_of_sf_is_identity(s: float, beta: int) -> None:
    tw = _TW[beta]
    assert tw.isf(tw.sf(s)) == pytest.approx(s, abs=1e-8)


def test_vectorised_shapes_and_boundaries() -> None:
    tw = TracyWidom(1)
    q = np.array([[0.1, 0.5], [0.9, 0.99]])
    out = tw.ppf(q)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out.ravel(), [tw.ppf(v) for v in q.ravel()], atol=1e-12)
    assert tw.ppf(0.0) == -np.inf and tw.ppf(1.0) == np.inf
    assert np.isnan(tw.ppf(1.5))
    assert tw.pdf(np.zeros((3, 1))).shape == (3, 1)


# ---------------------------------------------------------------------------------------------
# sampling and Monte Carlo against random matrices
# ---------------------------------------------------------------------------------------------


def _scaled_top_eigenvalues(beta: int, n: int, draws: int, seed: int) -> np.ndarray:
    """(λ_max − 2√n)·n^{1/6} for Wigner matrices with E|H_ij|² = 1 off the diagonal (GOE / GUE)."""
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for i in range(draws):
        if beta == 1:
            a = rng.standard_normal((n, n))
            h = (a + a.T) / np.sqrt(2.0)
        else:
            a = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2.0)
            h = (a + a.conj().T) / np.sqrt(2.0)
        lam = scipy.linalg.eigvalsh(h, subset_by_index=[n - 1, n - 1])[0]
        out[i] = (lam - 2.0 * np.sqrt(n)) * n ** (1.0 / 6.0)
    return out


def test_goe_largest_eigenvalue_is_tw1() -> None:
    x = _scaled_top_eigenvalues(1, n=200, draws=300, seed=20240501)
    p1 = stats.kstest(x, TracyWidom(1).cdf).pvalue
    p2 = stats.kstest(x, TracyWidom(2).cdf).pvalue
    assert p1 > 1e-3  # consistent with TW₁ ...
    assert p2 < 1e-6  # ... and the test has the power to reject the wrong law


def test_gue_largest_eigenvalue_is_tw2() -> None:
    x = _scaled_top_eigenvalues(2, n=100, draws=250, seed=7)
    assert stats.kstest(x, TracyWidom(2).cdf).pvalue > 1e-3
    assert stats.kstest(x, TracyWidom(1).cdf).pvalue < 1e-6


def test_rvs_inverse_cdf_sampling(law: TracyWidom) -> None:
    x = law.rvs(size=4000, random_state=123)
    assert x.shape == (4000,)
    np.testing.assert_array_equal(x, law.rvs(size=4000, random_state=123))
    mean_p, var_p, _, _ = PUBLISHED_MOMENTS[law.beta]
    assert abs(x.mean() - mean_p) < 4.5 * np.sqrt(var_p / x.size)
    # empirical cdf at a few points within binomial tolerance of the cdf
    for s in (-3.0, -1.5, 0.0, 1.0):
        p = float(law.cdf(s))
        assert abs(np.mean(x <= s) - p) < 4.5 * np.sqrt(p * (1 - p) / x.size)


# ---------------------------------------------------------------------------------------------
# scipy.stats behaviour and input validation
# ---------------------------------------------------------------------------------------------


def test_scipy_frozen_loc_scale_and_pickle() -> None:
    tw = TracyWidom(2)
    frozen = tw(loc=1.0, scale=2.0)
    x = np.array([-3.0, 0.5, 2.0])
    np.testing.assert_allclose(frozen.cdf(1.0 + 2.0 * x), tw.cdf(x), rtol=1e-14)
    assert frozen.mean() == pytest.approx(1.0 + 2.0 * tw.mean(), rel=1e-12)
    assert frozen.dist.beta == 2
    clone = pickle.loads(pickle.dumps(tw))
    assert clone.beta == 2 and clone.cdf(-2.0) == pytest.approx(tw.cdf(-2.0), abs=1e-15)
    assert isinstance(tw, stats.rv_continuous)


@pytest.mark.parametrize("beta", [0, 3, 4, 1.5, "1", None, True])
def test_bad_beta_raises(beta: object) -> None:
    with pytest.raises(ValueError, match="beta"):
        TracyWidom(beta)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        tw_edge_quantile(0.05, beta=beta)  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5, float("nan"), [0.05, 1.0]])
def test_bad_delta_raises(delta: object) -> None:
    with pytest.raises(ValueError, match="delta"):
        tw_edge_quantile(delta)


def test_edge_quantile_array_and_monotone() -> None:
    deltas = np.array([0.2, 0.1, 0.05, 0.01, 1e-6])
    q = tw_edge_quantile(deltas)
    assert isinstance(q, np.ndarray) and q.shape == deltas.shape
    assert np.all(np.diff(q) > 0)
    np.testing.assert_allclose(TracyWidom(1).sf(q), deltas, rtol=1e-9)


def test_fredholm_logcdf_validates() -> None:
    with pytest.raises(ValueError, match="n_nodes"):
        fredholm_logcdf(0.0, 1, n_nodes=3)
    with pytest.raises(ValueError, match="finite"):
        fredholm_logcdf([0.0, np.nan], 1)


def test_import_is_lazy() -> None:
    code = (
        "import mptheory.tracy_widom as m; "
        "assert m._table.cache_info().currsize == 0; "
        "m.TracyWidom(1); assert m._table.cache_info().currsize == 0"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
