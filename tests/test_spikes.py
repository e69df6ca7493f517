"""Tests for mptheory.spikes: BBP map (Monte Carlo), inverse BBP, Gavish–Donoho constants, shrinkers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from mptheory.spikes import (
    bbp_eigen_threshold,
    bbp_signal_threshold,
    bbp_singular_threshold,
    gd_hard_threshold,
    gd_lambda_star,
    gd_omega,
    gd_omega_approx,
    inverse_bbp,
    inverse_bbp_square,
    low_rank_signal,
    make_spiked_matrix,
    outlier_eigenvalue,
    outlier_location,
    outlier_location_square,
    shrink_frobenius,
    shrink_nuclear,
    shrink_operator,
    singular_vector_cosines,
)
from mptheory.strategies import pure_noise, shapes, spiked_matrices

ratios = st.floats(0.02, 1.0, allow_nan=False)


def _mp_pdf(x: float, c: float) -> float:
    """Independent MP density (σ² = 1), written from peers §7.1."""
    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    if not a < x < b:
        return 0.0
    return math.sqrt((b - x) * (x - a)) / (2 * math.pi * c * x)


# ------------------------------------------------------------------------------------ BBP map, Monte Carlo
@pytest.mark.parametrize("factor", [1.6, 2.5])
def test_outlier_location_matches_monte_carlo_rank_one(factor: float) -> None:
    shape, c = (1000, 500), 0.5
    tops = []
    for seed in range(3):
        sm = make_spiked_matrix(shape, [factor], sigma2=1.0, rng=seed)
        s1 = np.linalg.norm(sm.W, 2)
        tops.append(s1 / math.sqrt(1000))  # normalised singular value y
    x = factor * c**0.25
    predicted = outlier_location(x, c)
    # outlier fluctuations are O(n^-1/2); a few of them
    assert abs(np.mean(tops) - predicted) < 0.02 * predicted
    assert predicted > 1 + math.sqrt(c)


def test_subcritical_spike_sticks_to_edge_monte_carlo() -> None:
    shape, c = (1000, 500), 0.5
    sm = make_spiked_matrix(shape, [0.6], rng=7)
    y = np.linalg.norm(sm.W, 2) / math.sqrt(1000)
    assert outlier_location(0.6 * c**0.25, c) == pytest.approx(1 + math.sqrt(c))
    assert abs(y - (1 + math.sqrt(c))) < 0.03


def test_g13_g14_square_form_matches_monte_carlo() -> None:
    # digest G14: N x N noise of variance sigma2/N, signal singular value theta -> s = theta + sigma2/theta
    N, sigma2, theta = 800, 0.7, 1.6
    rng = np.random.default_rng(3)
    U, _ = np.linalg.qr(rng.standard_normal((N, 1)))
    V, _ = np.linalg.qr(rng.standard_normal((N, 1)))
    W = theta * U @ V.T + rng.standard_normal((N, N)) * math.sqrt(sigma2 / N)
    s1 = float(np.linalg.norm(W, 2))
    assert abs(s1 - float(outlier_location_square(theta, sigma2))) < 0.03
    assert abs(float(inverse_bbp_square(s1, sigma2)) - theta) < 0.05


# ------------------------------------------------------------------------------------ inverse BBP
@given(c=ratios, u=st.floats(1.0001, 20.0))
def test_a8_inverse_bbp_inverts_outlier_map(c: float, u: float) -> None:
    x = u * c**0.25
    y = outlier_location(x, c)
    assert y >= 1 + math.sqrt(c) - 1e-12
    assert inverse_bbp(y, c) == pytest.approx(x, rel=1e-6)


@given(c=ratios, d=st.floats(0.0, 10.0), sigma=st.floats(0.1, 10.0))
def test_outlier_map_inverts_inverse_bbp(c: float, d: float, sigma: float) -> None:
    y = sigma * (1 + math.sqrt(c) + d)
    x = inverse_bbp(y, c, sigma)
    assert x >= sigma * c**0.25 * (1 - 1e-9)
    assert outlier_location(x, c, sigma) == pytest.approx(y, rel=1e-7, abs=1e-9)


@given(c=ratios, x=st.floats(0.0, 5.0), dx=st.floats(0.0, 2.0))
def test_outlier_map_monotone_and_above_edge(c: float, x: float, dx: float) -> None:
    y0, y1 = outlier_location(x, c), outlier_location(x + dx, c)
    edge = 1 + math.sqrt(c)
    assert y0 >= edge - 1e-12 and y1 >= y0 - 1e-9
    # eigen form is the square of the singular form (sigma2 = 1)
    assert outlier_eigenvalue(x**2, c) == pytest.approx(y0**2, rel=1e-9)


@given(sigma2=st.floats(0.01, 10.0), u=st.floats(1.0001, 10.0))
def test_g13_g14_square_form_is_ratio_one_case(sigma2: float, u: float) -> None:
    theta = u * math.sqrt(sigma2)
    s = outlier_location_square(theta, sigma2)
    assert s == pytest.approx(math.sqrt(sigma2) * outlier_location(u, 1.0), rel=1e-9)
    assert inverse_bbp_square(s, sigma2) == pytest.approx(theta, rel=1e-6)


def test_thresholds_relations() -> None:
    c = 0.3
    assert bbp_signal_threshold(c, 2.0) == pytest.approx(2.0 * c**0.25)
    assert bbp_eigen_threshold(c, 4.0) == pytest.approx(4.0 * math.sqrt(c))
    assert bbp_singular_threshold((300, 1000), 2.0) == pytest.approx(2.0 * math.sqrt(1000) * c**0.25)
    assert math.isnan(inverse_bbp(0.5, c))
    assert shrink_operator(0.5, c) == 0.0


# ------------------------------------------------------------------------------------ Gavish–Donoho
def test_gd_published_constants() -> None:
    assert gd_lambda_star(1.0) == pytest.approx(4 / math.sqrt(3), rel=1e-14)
    assert gd_omega(1.0) == pytest.approx(2.858, abs=1e-3)  # Gavish & Donoho 2014, square case


@given(ratio=st.floats(0.02, 1.0))
def test_gd_omega_uses_exact_mp_median(ratio: float) -> None:
    mu = (gd_lambda_star(ratio) / gd_omega(ratio)) ** 2
    a = (1 - math.sqrt(ratio)) ** 2
    # substitute x = a + t^2 to remove the square-root singularity at the lower edge
    t_hi = math.sqrt(mu - a)
    # (and split at t ~ sqrt(a), where the 1/x factor has a feature of width sqrt(a) when ratio -> 1)
    def f(t: float) -> float:
        return 2 * t * _mp_pdf(a + t * t, ratio)

    cut = min(100 * math.sqrt(a), t_hi)
    mass = sum(integrate.quad(f, lo, hi, limit=200, epsabs=1e-13)[0] for lo, hi in [(0.0, cut), (cut, t_hi)])
    assert mass == pytest.approx(0.5, abs=1e-7)
    # the published polynomial approximation is close but not exact
    assert abs(float(gd_omega(ratio)) - float(gd_omega_approx(ratio))) < 0.02


def test_gd_hard_threshold_known_and_unknown_sigma() -> None:
    rng = np.random.default_rng(0)
    Y = 0.5 * rng.standard_normal((300, 600))
    sv = np.linalg.svd(Y, compute_uv=False)
    known = gd_hard_threshold(Y, sigma=0.5)
    assert known == pytest.approx(gd_lambda_star(0.5) * math.sqrt(600) * 0.5)
    unknown = gd_hard_threshold(sv, shape=(300, 600))
    assert unknown == pytest.approx(gd_hard_threshold(Y))
    # on pure noise, the median-based estimate agrees with the known-sigma threshold
    assert unknown == pytest.approx(known, rel=0.01)
    # no pure-noise singular value exceeds the optimal threshold (it sits above the bulk edge)
    assert sv.max() < known


# ------------------------------------------------------------------------------------ shrinkers
def _optimal_eta(x: float, c: float, order: str) -> float:
    """Brute-force loss minimiser in the 2-D reduction of the rank-1 problem (independent of closed forms).

    Asymptotically the signal x·a bᵀ and the estimate η·u vᵀ live in span(a, u) ⊗ span(b, v) with
    <a, u> = c_l and <b, v> = c_r, so every unitarily invariant loss reduces to a 2 × 2 matrix.
    """
    cl, cr = singular_vector_cosines(x, c)
    sl, sr = math.sqrt(max(1 - cl**2, 0.0)), math.sqrt(max(1 - cr**2, 0.0))
    A = np.array([[x, 0.0], [0.0, 0.0]])
    B = np.array([[cl * cr, cl * sr], [sl * cr, sl * sr]])

    def loss(e: float) -> float:
        sv = np.linalg.svd(A - e * B, compute_uv=False)
        return float({"fro": np.sqrt(np.sum(sv**2)), "nuc": np.sum(sv), "op": sv[0]}[order])

    grid = np.linspace(0.0, 2.0 * x + 1.0, 2001)
    e0 = grid[int(np.argmin([loss(e) for e in grid]))]
    res = optimize.minimize_scalar(loss, bounds=(max(e0 - 0.01 * x - 1e-3, 0.0), e0 + 0.01 * x + 1e-3),
                                   method="bounded", options={"xatol": 1e-10})
    return float(res.x)


@settings(max_examples=15)
@given(c=ratios, d=st.floats(0.05, 6.0))
def test_shrinkers_minimise_their_loss(c: float, d: float) -> None:
    y = 1 + math.sqrt(c) + d
    x = float(inverse_bbp(y, c))
    assert shrink_frobenius(y, c) == pytest.approx(_optimal_eta(x, c, "fro"), abs=1e-5)
    assert shrink_nuclear(y, c) == pytest.approx(_optimal_eta(x, c, "nuc"), abs=1e-4)
    # the operator-norm loss is minimised by x itself (a flat minimum: compare losses, not arguments)
    assert shrink_operator(y, c) == pytest.approx(x, rel=1e-12)
    # ordering of the optimal shrinkers: nuclear <= frobenius <= operator
    assert shrink_nuclear(y, c) <= shrink_frobenius(y, c) + 1e-12 <= shrink_operator(y, c) + 2e-12


def test_shrinkers_vanish_below_edge_and_square_form() -> None:
    y = np.linspace(0.0, 1.99, 50)
    assert np.all(shrink_frobenius(y, 1.0) == 0) and np.all(shrink_nuclear(y, 1.0) == 0)
    # square case: eta(y) = sqrt(y^2 - 4) (peers §7.4)
    yy = np.linspace(2.0, 6.0, 20)
    assert np.allclose(shrink_frobenius(yy, 1.0), np.sqrt(yy**2 - 4))


def test_singular_vector_cosines_monte_carlo() -> None:
    m, n, factor = 500, 1000, 2.0
    c = m / n
    sm = make_spiked_matrix((m, n), [factor], rng=11)
    U, _, Vt = np.linalg.svd(sm.W, full_matrices=False)
    Us, _, Vts = np.linalg.svd(sm.signal, full_matrices=False)
    cl_mc, cr_mc = abs(U[:, 0] @ Us[:, 0]), abs(Vt[0] @ Vts[0])
    cl, cr = singular_vector_cosines(factor * c**0.25, c)
    assert abs(cl_mc - cl) < 0.03 and abs(cr_mc - cr) < 0.03


# ------------------------------------------------------------------------------------ generator + strategies
@given(spiked_matrices(shape=shapes(min_side=6, max_side=40), n_super=(0, 3), n_sub=(0, 2)))
def test_spiked_matrix_truth_and_weyl(sm) -> None:  # type: ignore[no-untyped-def]
    s_sig = np.linalg.svd(sm.signal, compute_uv=False)
    r = sm.factors.size
    assert np.allclose(s_sig[:r], sm.signal_singular_values, rtol=1e-8, atol=1e-8)
    assert np.all(s_sig[r:] < 1e-8 * max(1.0, s_sig[0]))
    thr = bbp_singular_threshold(sm.shape, math.sqrt(sm.sigma2))
    assert sm.n_detectable == int(np.sum(sm.signal_singular_values > thr))
    # Weyl: |s_i(S + R) - s_i(S)| <= ||R||_op
    s_w = np.linalg.svd(sm.W, compute_uv=False)
    assert np.all(np.abs(s_w - s_sig) <= np.linalg.norm(sm.noise, 2) * (1 + 1e-10))


@given(pure_noise(shape=(60, 30), sigma2=(0.5, 2.0)))
def test_pure_noise_strategy_below_gd_threshold(sm) -> None:  # type: ignore[no-untyped-def]
    assert sm.n_detectable == 0 and not np.any(sm.signal)
    # the GD optimal threshold (known sigma) is above the noise bulk edge sigma(sqrt N + sqrt M)
    tau = gd_hard_threshold(sm.W, sigma=math.sqrt(sm.sigma2))
    assert tau > math.sqrt(sm.sigma2) * (math.sqrt(60) + math.sqrt(30))


# ------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "call",
    [
        lambda: outlier_location(1.0, 0.0),
        lambda: outlier_location(1.0, 1.5),
        lambda: outlier_location(float("nan"), 0.5),
        lambda: inverse_bbp(-1.0, 0.5),
        lambda: inverse_bbp(2.0, 0.5, sigma=0.0),
        lambda: gd_lambda_star(float("inf")),
        lambda: gd_hard_threshold(np.ones(3)),
        lambda: gd_hard_threshold(np.ones(4), shape=(3, 5)),
        lambda: gd_hard_threshold(np.ones((3, 4)), shape=(4, 3)),
        lambda: gd_hard_threshold(np.zeros((4, 5))),
        lambda: bbp_singular_threshold((0, 4)),
        lambda: make_spiked_matrix((3, 4), [1.0] * 4),
        lambda: inverse_bbp_square(3.0, -1.0),
    ],
)
def test_bad_inputs_raise(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


def test_low_rank_signal_is_the_one_signal_generator() -> None:
    theta = np.array([5.0, 2.0, 0.5])
    S = low_rank_signal((30, 12), theta, rng=1)
    np.testing.assert_allclose(np.linalg.svd(S, compute_uv=False)[:3], theta, rtol=1e-12)
    assert np.linalg.matrix_rank(S) == 3 and not low_rank_signal((4, 5), [], rng=0).any()
    # make_spiked_matrix draws its noise first, then its signal with low_rank_signal
    sm = make_spiked_matrix((30, 12), (2.0, 3.0), rng=5)
    gen = np.random.default_rng(5)
    gen.standard_normal((30, 12))
    expected = low_rank_signal((30, 12), np.array([2.0, 3.0]) * bbp_singular_threshold((30, 12)), gen)
    np.testing.assert_array_equal(sm.signal, expected)
    with pytest.raises(ValueError, match="rank"):
        low_rank_signal((3, 2), [1.0, 1.0, 1.0])
