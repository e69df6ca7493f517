"""Tests for mptheory.budgets: R1–R5 (digest §2.2, test matrix T9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from mptheory.budgets import (
    LayerBudget,
    binomial_max_rate,
    budget_result,
    check_r1,
    check_r2,
    check_r3,
    check_r4,
    check_r5,
    gaussian_budget,
    monte_carlo_budget_failure,
    multilayer_budgets,
    nominal_sigma_plus,
    realised_budget,
    sigma_plus_budget,
    split_delta,
    subgaussian_budget,
)


def _inputs(seed: int, T: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 3.0, size=T), rng.standard_normal((T, m)) * rng.uniform(0.1, 5.0, size=(T, 1))


# ---------------------------------------------------------------------------------------------- R1


def test_r1_monte_carlo_digest_setup() -> None:
    """Digest setup: n=512, m=256, |T|=100, δ=0.05, 300 draws; failure rate within binomial tolerance."""
    mc = monte_carlo_budget_failure(512, 256, 100, 0.05, sigma2=1.0, draws=300, rng=np.random.default_rng(1))
    max_rate = binomial_max_rate(0.05, 300)
    assert max_rate == pytest.approx(0.05 + 3 * math.sqrt(0.05 * 0.95 / 300))
    assert mc.rate <= max_rate
    res = budget_result(mc)
    assert res.passed and res.kind == "probabilistic" and res.cases == 300
    assert res.worst_slack == pytest.approx(max_rate - mc.rate)
    assert np.all(mc.ratios > 0)


@pytest.mark.parametrize("T", [1, 40])
def test_r1_check_passes_with_paper_constant(T: int) -> None:
    res = check_r1(n=256, m=128, T=T, draws=200, seed=3)
    assert res.passed and res.kind == "probabilistic"
    assert res.cases == 200 and res.violations / res.cases <= binomial_max_rate(0.05, 200)
    assert res.worst_slack >= 0


@given(seed=st.integers(0, 10_000), T=st.integers(1, 30), m=st.integers(1, 40), n=st.integers(1, 40),
       sigma2=st.floats(0.01, 5.0), delta=st.floats(1e-6, 0.9))
def test_r1_union_bound_constant_is_exact(seed: int, T: int, m: int, n: int, sigma2: float,
                                         delta: float) -> None:
    """The R1 radius makes each (row, sample) Gaussian tail ≤ δ/(n|T|) (scipy's normal tail, independent).

    From bound = (2/|T|) Σ L_s ‖v_s‖ · ρ, the per-sample threshold is ‖v_s‖ρ and ⟨r_i, v_s⟩ ~
    N(0, σ²‖v_s‖²/n): the union over n rows and |T| samples must be ≤ δ."""
    L = np.ones(T)
    V = np.zeros((T, m))
    V[:, 0] = 1.0  # ‖v_s‖ = 1, so bound = 2ρ
    rho = gaussian_budget(L, V, sigma2, n, delta) / 2.0
    p_one = 2.0 * stats.norm.sf(rho / math.sqrt(sigma2 / n))
    assert n * T * p_one <= delta * (1 + 1e-9)
    # and the Chernoff bound is not absurdly loose: the union is at least δ/(10·√log) of δ
    assert n * T * p_one >= delta / (10.0 * math.sqrt(math.log(2 * n * T / delta)) + 10.0)


@given(seed=st.integers(0, 10_000), T=st.integers(1, 20), n=st.integers(1, 30), m=st.integers(1, 30))
def test_r1_realised_budget_matches_brute_force(seed: int, T: int, n: int, m: int) -> None:
    L, V = _inputs(seed, T, m)
    R = np.random.default_rng(seed + 1).standard_normal((n, m))
    brute = 0.0
    for s in range(T):
        brute += L[s] * max(abs(sum(R[i, j] * V[s, j] for j in range(m))) for i in range(n))
    assert realised_budget(R, L, V) == pytest.approx(2.0 * brute / T, rel=1e-10, abs=1e-12)


# ------------------------------------------------------------------------------- negative controls


@pytest.mark.parametrize("constant", ["no_factor2", "no_n"])
def test_r1_negative_control_wrong_constant_is_caught(constant: str) -> None:
    """With |T| = 1 the average over samples cannot hide a too-small radius: the checker must fail."""
    assert check_r1(n=256, m=128, T=1, draws=200, seed=5).passed
    bad = check_r1(n=256, m=128, T=1, draws=200, seed=5, constant=constant)  # type: ignore[arg-type]
    assert not bad.passed
    assert bad.violations / bad.cases > 0.3
    assert bad.worst_slack < 0


def test_r1_negative_control_no_log_caught_at_moderate_T() -> None:
    bad = check_r1(n=256, m=128, T=40, draws=100, seed=6, constant="no_log")
    assert not bad.passed


def test_r1_wrong_variants_break_the_union_bound() -> None:
    """Independent of Monte Carlo: the wrong radii violate n|T|·P(|N(0,1)| > ρ) ≤ δ."""
    n, T, delta = 256, 10, 0.05
    V = np.zeros((T, 3))
    V[:, 0] = 1.0
    for constant in ("no_factor2", "no_n", "no_log"):
        rho = gaussian_budget(np.ones(T), V, 1.0, n, delta, constant=constant) / 2.0  # type: ignore[arg-type]
        assert n * T * 2.0 * stats.norm.sf(rho * math.sqrt(n)) > delta


# ---------------------------------------------------------------------------------------------- R2


@given(seed=st.integers(0, 10_000), T=st.integers(1, 25), m=st.integers(1, 60), n=st.integers(1, 400),
       sigma2=st.floats(1e-4, 10.0), delta=st.floats(1e-8, 0.99))
def test_r2_equals_r1(seed: int, T: int, m: int, n: int, sigma2: float, delta: float) -> None:
    L, V = _inputs(seed, T, m)
    a = gaussian_budget(L, V, sigma2, n, delta)
    b = sigma_plus_budget(L, V, nominal_sigma_plus(sigma2, n, m), n, m, delta)
    assert b == pytest.approx(a, rel=1e-12, abs=1e-300)


def test_r2_nominal_edge_matches_top_singular_value() -> None:
    rng = np.random.default_rng(7)
    for n, m in [(256, 256), (512, 256), (256, 384)]:
        s1 = np.linalg.norm(rng.standard_normal((n, m)) * math.sqrt(2.0 / n), 2)
        assert abs(s1 / nominal_sigma_plus(2.0, n, m) - 1) < 0.05


def test_r2_check() -> None:
    res = check_r2(n=256, m=128, T=30, draws=100, seed=2, identity_cases=30)
    assert res.passed
    assert res.details["identity_max_rel_err"] < 1e-12
    assert res.details["edge_max_rel_err"] < 0.05


# ---------------------------------------------------------------------------------------------- R3


def test_r3_rademacher_with_hoeffding_constant() -> None:
    assert check_r3(n=256, m=128, T=30, draws=150, seed=4, c=0.5).passed
    assert check_r3(n=256, m=128, T=1, draws=150, seed=4, c=0.5).passed
    # a constant c that the rows do not satisfy shrinks the bound: the checker must fail
    assert not check_r3(n=256, m=128, T=1, draws=150, seed=4, c=2.0).passed


@given(seed=st.integers(0, 1000), T=st.integers(1, 10), m=st.integers(1, 20), n=st.integers(1, 100),
       sigma2=st.floats(0.01, 4.0), delta=st.floats(1e-4, 0.5))
def test_r3_with_half_equals_r1_and_decreases_in_c(seed: int, T: int, m: int, n: int, sigma2: float,
                                                   delta: float) -> None:
    L, V = _inputs(seed, T, m)
    r1 = gaussian_budget(L, V, sigma2, n, delta)
    assert subgaussian_budget(L, V, sigma2, n, delta, 0.5) == pytest.approx(r1)
    assert subgaussian_budget(L, V, sigma2, n, delta, 1.0) <= subgaussian_budget(L, V, sigma2, n, delta, 0.5)


# ------------------------------------------------------------------------------------------- R4/R5


@given(delta=st.floats(1e-9, 0.999), weights=st.lists(st.floats(0.001, 1e6), min_size=1, max_size=12))
def test_r4_split_delta_sums_to_at_most_delta(delta: float, weights: list[float]) -> None:
    d = split_delta(delta, len(weights), weights)
    assert np.all(d > 0)
    assert d.sum() <= delta
    assert d.sum() == pytest.approx(delta, rel=1e-9)
    e = split_delta(delta, len(weights), "equal")
    assert e.sum() <= delta and np.allclose(e, delta / len(weights))


def test_r4_r5_multilayer_budgets_use_per_layer_delta() -> None:
    L1, V1 = _inputs(0, 5, 8)
    L2, V2 = _inputs(1, 5, 12)
    layers = [LayerBudget(L1, V1, sigma2=1.0, n=20), {"L": L2, "V": V2, "sigma2": 0.5, "n": 30, "c": 0.25}]
    ml = multilayer_budgets(layers, 0.1, split=[1.0, 3.0])
    assert ml.deltas.sum() <= 0.1
    assert ml.bounds[0] == pytest.approx(gaussian_budget(L1, V1, 1.0, 20, 0.025))
    assert ml.bounds[1] == pytest.approx(subgaussian_budget(L2, V2, 0.5, 30, 0.075, 0.25))
    assert ml.total == pytest.approx(ml.bounds.sum())
    # splitting δ makes every bound larger than the single-layer bound at the full δ
    assert ml.bounds[0] > gaussian_budget(L1, V1, 1.0, 20, 0.1)


def test_r4_r5_checks() -> None:
    r4 = check_r4(draws=100, seed=8)
    assert r4.passed and r4.details["sum_deltas"] <= 0.05
    assert check_r4(draws=100, seed=8, split=[1.0, 2.0, 5.0]).passed
    assert check_r5(draws=100, seed=9).passed
    # negative control: forget the n rows in every layer's union bound
    assert not check_r4(T=1, draws=100, seed=8, constant="no_n").passed


# -------------------------------------------------------------------------------------- bad input


def test_bad_input_raises() -> None:
    L, V = _inputs(0, 4, 3)
    with pytest.raises(ValueError, match="V must"):
        gaussian_budget(L, V[0], 1.0, 5, 0.1)
    with pytest.raises(ValueError, match="L must"):
        gaussian_budget(L[:3], V, 1.0, 5, 0.1)
    with pytest.raises(ValueError, match="delta"):
        gaussian_budget(L, V, 1.0, 5, 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_budget(-L, V, 1.0, 5, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        gaussian_budget(L, V * np.nan, 1.0, 5, 0.1)
    with pytest.raises(ValueError, match="columns"):
        sigma_plus_budget(L, V, 1.0, 5, 4, 0.1)
    with pytest.raises(ValueError, match="columns"):
        realised_budget(np.ones((2, 5)), L, V)
    with pytest.raises(ValueError, match="constant"):
        gaussian_budget(L, V, 1.0, 5, 0.1, constant="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        split_delta(0.1, 3, [1.0, 2.0])
    with pytest.raises(ValueError, match="c must"):
        subgaussian_budget(L, V, 1.0, 5, 0.1, 0.0)
