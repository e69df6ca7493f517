"""Tests for mptheory.dynamics: G1/G2/G4, G7, G8, G13/G14 (BBP), T13 facts (G11/G15) and the A7/G9–G12
experiment; each test is named after the claim ids it checks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mptheory.dynamics import (
    bbp_experiment,
    check_t13,
    eckart_young_gap,
    g7_band,
    make_three_layer,
    markov_tail_gap,
    random_perturbation,
    rank_esd_gap,
    simulate_logit_bounds,
    simulate_thresholding,
    train_width_series,
    weyl_gap,
)
from mptheory.spikes import inverse_bbp_square, low_rank_signal, outlier_location_square


def _tol(p: float, k: int) -> float:
    """Binomial tolerance 3√(p(1−p)/K), floored so that p ≈ 0 still allows one stray event."""
    return 3.0 * math.sqrt(max(p, 1.0 / k) * (1.0 - p) / k)


# ---------------------------------------------------------------------------------------- G1/G2/G4


def test_g1_g4_three_layer_thresholds_match_formulas() -> None:
    net = make_three_layer(50, d=6, K=3, sigma2=0.5, rng=0)
    X = np.random.default_rng(1).standard_normal((4, 6))
    w3 = max(sum(abs(v) for v in row) for row in net.W3)
    for s in range(4):
        w1s = math.sqrt(sum(v * v for v in net.W1 @ X[s]))
        assert net.tau(X)[s] == pytest.approx(2 * math.sqrt(2) * w3 * w1s * math.sqrt(math.log(100) / 50))
        expected = w3 * w1s * math.sqrt(2 * 0.5 * math.log(2 * 50 * 4 / 0.1) / 50)
        assert net.tau_delta(X, 0.1)[s] == pytest.approx(expected)


@pytest.mark.parametrize("activation", ["abs", "relu"])
def test_g1_g2_g4_failure_frequencies(activation: str) -> None:
    sim = simulate_logit_bounds(N=150, T=15, draws=80, sigma2=1.0, delta=0.05, activation=activation, rng=2)
    assert sim.g1_rate <= 1 / 150 + _tol(1 / 150, 80 * 15)
    assert sim.g4_rate <= 0.05 + _tol(0.05, 80)
    assert sim.g4_loss_rate <= 0.05 + _tol(0.05, 80)
    assert sim.g2_rate <= 15 / 150 + _tol(15 / 150, 80)
    # the logit change itself is Lipschitz-controlled: ‖ΔX‖∞ ≤ ‖W₃‖∞ ‖R₂ h‖∞ deterministically
    assert np.all(sim.dX >= 0)


def test_g1_deterministic_step() -> None:
    """‖X(S₂) − X(W₂)‖∞ ≤ ‖W₃‖∞ ‖R₂ λ(W₁s)‖∞ for 1-Lipschitz λ (the step G1's probability rests on)."""
    rng = np.random.default_rng(3)
    for act in ("abs", "relu"):
        net = make_three_layer(80, d=5, K=4, sigma2=0.7, activation=act, rng=rng)
        X = rng.standard_normal((20, 5))
        lhs = np.abs(net.logits(X) - net.logits(X, net.S2)).max(axis=1)
        rhs = np.abs(net.W3).sum(axis=1).max() * np.abs(net.hidden(X) @ net.R2.T).max(axis=1)
        assert np.all(lhs <= rhs + 1e-12)


def test_g1_negative_control() -> None:
    """Shrinking τ by 50× must produce failures far above 1/N: the frequency check can fail."""
    sim = simulate_logit_bounds(N=150, T=15, draws=40, sigma2=1.0, tau_scale=0.02, rng=2)
    assert sim.g1_rate > 1 / 150 + _tol(1 / 150, 40 * 15)
    assert sim.g4_rate > 0.05 + _tol(0.05, 40)


# --------------------------------------------------------------------------------------------- G8


def test_g8_support_sandwich() -> None:
    sim = simulate_thresholding(N=100, M=80, sigma2=1.0, delta=0.05, density=0.05, draws=100, rng=4)
    assert sim.sandwich_rate >= 1 - 0.05 - _tol(0.05, 100)
    assert sim.t == pytest.approx(math.sqrt(2 * math.log(2 * 100 * 80 / 0.05) / 100))
    # minimum-signal ("beta-min") regime: every nonzero |S_ij| > 2t ⇒ exact recovery w.p. ≥ 1 − δ
    strong = simulate_thresholding(N=100, M=80, delta=0.05, signal=(2.05, 4.0), draws=60, rng=5)
    assert strong.min_signal_rate == 1.0
    assert strong.exact_rate >= 1 - 0.05 - _tol(0.05, 60)


def test_g8_negative_control() -> None:
    sim = simulate_thresholding(N=100, M=80, draws=50, t_scale=0.6, rng=4)
    assert sim.no_false_positive_rate < 0.5


# -------------------------------------------------------------------------------------------- BBP


@given(ratio=st.floats(1.0001, 50.0), sigma2=st.floats(0.01, 4.0))
def test_g13_g14_inverse_bbp_inverts_bbp_map(ratio: float, sigma2: float) -> None:
    theta = ratio * math.sqrt(sigma2)
    assert float(inverse_bbp_square(outlier_location_square(theta, sigma2), sigma2)) == pytest.approx(
        theta, rel=1e-8)


def test_g14_bbp_map_values() -> None:
    assert np.allclose(outlier_location_square([3.0, 1.0, 0.5], 1.0), [3 + 1 / 3, 2.0, 2.0])
    assert np.allclose(outlier_location_square([2.0], 0.25), [2.0 + 0.125])
    assert np.isnan(inverse_bbp_square(1.9, 1.0))


def test_g13_g14_bbp_experiment_matches_theory() -> None:
    N, sigma2 = 700, 0.8
    res = bbp_experiment(N=N, thetas=(3.0, 2.0, 0.4), sigma2=sigma2, draws=2, rng=6)
    tol = 2.0 * N ** (-1 / 3)
    assert np.all(np.abs(res.observed - res.predicted) < tol)
    # subcritical spike sticks to the edge 2σ; the top of the bulk too
    assert res.predicted[2] == pytest.approx(2 * math.sqrt(sigma2))
    assert np.all(np.abs(res.bulk_top - 2 * math.sqrt(sigma2)) < tol)
    # inverse BBP recovers the supercritical spikes, is undefined (NaN) or ~ σ at the subcritical one
    assert np.all(np.abs(res.recovered[:, :2] - np.array([3.0, 2.0])) < tol)
    assert np.all(np.isnan(res.recovered[:, 2]) | (res.recovered[:, 2] < math.sqrt(sigma2) + 2 * tol))
    # the theory prediction is a genuine improvement over "s_1 ≈ σ" for the weaker spike
    assert np.all(np.abs(res.observed[:, 1] - 2.0) > np.abs(res.observed[:, 1] - res.predicted[1]))


# -------------------------------------------------------------------------------------- T13 facts


@st.composite
def signal_noise(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    N = draw(st.integers(2, 30))
    M = draw(st.integers(2, 30))
    r = draw(st.integers(0, min(N, M)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    spikes = rng.uniform(0.01, draw(st.floats(0.1, 20.0)), size=r)
    S = low_rank_signal((N, M), spikes, rng)
    R = rng.standard_normal((N, M)) * draw(st.floats(0.0, 3.0)) / math.sqrt(N)
    if draw(st.booleans()):  # also non-Gaussian, heavy-tailed noise
        R = rng.standard_cauchy((N, M)) * 0.1
    return S, R, r


@given(signal_noise())
def test_g11_weyl(snr: tuple[np.ndarray, np.ndarray, int]) -> None:
    S, R, _ = snr
    assert weyl_gap(S, R).holds


@given(signal_noise())
def test_g15_rank_esd_inequality(snr: tuple[np.ndarray, np.ndarray, int]) -> None:
    S, R, r = snr
    gap = rank_esd_gap(S, R, rank=r)
    assert gap.holds
    assert gap.rhs == pytest.approx(r / min(S.shape))


def test_g15_rank_esd_inequality_is_attained_and_can_fail() -> None:
    rng = np.random.default_rng(0)
    S = low_rank_signal((40, 40), [50.0, 40.0], rng)
    R = rng.standard_normal((40, 40)) / math.sqrt(40)
    gap = rank_esd_gap(S, R)
    assert gap.lhs == pytest.approx(2 / 40) and gap.holds  # two outliers: the bound is attained
    assert not rank_esd_gap(S, R, rank=1).holds  # understating the rank must be caught


@given(signal_noise(), st.integers(0, 30))
def test_g11_eckart_young_tail(snr: tuple[np.ndarray, np.ndarray, int], k: int) -> None:
    S, R, _ = snr
    k = min(k, min(S.shape))
    gap = eckart_young_gap(S, R, k)
    assert gap.holds
    # independent: the tail equals the best rank-k approximation error (Frobenius)
    U, s, Vt = np.linalg.svd(S + R)
    Wk = (U[:, :k] * s[:k]) @ Vt[:k]
    assert gap.lhs == pytest.approx(float(np.sum((S + R - Wk) ** 2)), rel=1e-8, abs=1e-10)


@given(signal_noise(), st.floats(1e-3, 10.0))
def test_g11_markov_tail(snr: tuple[np.ndarray, np.ndarray, int], eps: float) -> None:
    S, R, _ = snr
    W = S + R
    gap = markov_tail_gap(W, eps)
    assert gap.holds
    assert gap.lhs == pytest.approx(np.mean(np.linalg.svd(W, compute_uv=False) > eps))


def test_g11_g15_check_t13() -> None:
    res = check_t13(cases=30, seed=1)
    assert res.passed and res.kind == "deterministic" and res.cases == 120 and res.violations == 0
    assert res.worst_slack >= -1e-12
    assert 0 < res.max_tightness <= 1 + 1e-9


def test_g11_g12_g15_random_perturbation_draws_the_documented_matrices() -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        S, R, r = random_perturbation(rng, max_dim=12)
        assert S.shape == R.shape and 2 <= min(S.shape) and max(S.shape) <= 12 and 0 <= r <= min(S.shape)
        assert np.linalg.matrix_rank(S) == r
        sv = np.linalg.svd(S, compute_uv=False)[:r]
        assert np.all((sv >= 0.1 - 1e-12) & (sv <= 5.0 + 1e-12))


# --------------------------------------------------------------------------------------------- G7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_g7_band_and_monotonicity(seed: int) -> None:
    band = g7_band(N=300, lambda_reg=0.01, T=20, rng=seed)
    assert np.all(band.inside)
    assert band.monotone
    # the band is much narrower than the effect at ϑ = 0, so the statement has content
    assert band.halfwidth[0] < 0.5 * abs(band.center[0])
    # independent recomputation of the centre: ‖R‖²_F ≈ σ² N² / N = N for σ² = 1
    assert band.norm_R2 == pytest.approx(300.0, rel=0.05)
    # the wrong sign of the reward is outside the band
    assert not np.all(np.abs(band.lhs + band.center) <= band.halfwidth)


# ----------------------------------------------------------------------------------- A7 / G9–G13


def test_a7_g9_g10_width_experiment_quick() -> None:
    ws = train_width_series(quick=True, seed=0)
    assert ws.widths == (32, 64, 128)
    for run in ws.runs:
        assert run.sigma2_N.shape == run.steps.shape and run.top_sv.shape == (run.steps.size, ws.top_k)
        # bulk collapse over training: σ²·N falls well below its initial value (PyTorch init ≈ 1/3)
        assert run.sigma2_N[-1] < 0.5 * run.sigma2_N[0]
        assert 0.1 < run.sigma2_N[0] < 0.6
        # spike stabilisation: the top-k subspace has settled over the second half of training
        assert np.all(run.overlap[run.steps >= ws.epochs // 2] > 0.9)
        assert run.overlap[-1] == pytest.approx(1.0)
        # G11: the Eckart–Young tail Σ_{i>k} s_i² collapses too
        assert run.tail_energy[-1] < 0.5 * run.tail_energy[0]
        assert run.accuracy[-1] > 0.9


def test_width_experiment_bad_input() -> None:
    with pytest.raises(ValueError, match="widths"):
        train_width_series(widths=(1,), epochs=2)
    with pytest.raises(ValueError, match="top_k"):
        train_width_series(widths=(4,), epochs=2, top_k=4)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="sigma2 ≤ 1"):
        simulate_logit_bounds(N=10, sigma2=2.0)
    with pytest.raises(ValueError, match="shape"):
        weyl_gap(np.ones((3, 4)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        markov_tail_gap(np.array([[np.nan, 1.0]]), 1.0)
    with pytest.raises(ValueError, match="activation"):
        make_three_layer(10, activation="tanh")
    with pytest.raises(ValueError, match="thetas"):
        bbp_experiment(N=5, thetas=())


def test_no_timm_import() -> None:
    code = ("import sys, mptheory.dynamics, mptheory.budgets, mptheory.verdict; "
            "assert 'timm' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
