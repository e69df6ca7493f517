"""Tests for mptheory.fit: σ² and its sampling error, the δ promise, spike counts, batching, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from scipy import integrate, stats

from mptheory.fit import fit_mp, fit_mp_batch
from mptheory.fit_trials import spike_recovery_trial, wishart_eigenvalues
from mptheory.mp import batched_eigenvalues
from mptheory.spikes import gd_lambda_star, make_spiked_matrix
from mptheory.strategies import pure_noise, shapes, spiked_matrices
from mptheory.tracy_widom import TracyWidom, tw_edge_quantile, tw_ratio_quantile


def _binom_upper(p: float, n: int, z: float = 3.0) -> float:
    return p + z * math.sqrt(p * (1 - p) / n)


def _johnstone_edge(
    sigma2: float, p: int, n: int, delta: float, n_norm: int, t: float | None = None
) -> float:
    """Independent restatement of Johnstone (2001) centring/scaling (peers §7.7); scale s²/n_norm.

    ``t`` is the TW₁ level (default: the plain (1−δ)-quantile, i.e. σ² treated as known).
    """
    mu = (math.sqrt(n - 1) + math.sqrt(p)) ** 2
    sd = (math.sqrt(n - 1) + math.sqrt(p)) * (1 / math.sqrt(n - 1) + 1 / math.sqrt(p)) ** (1 / 3)
    level = float(TracyWidom(beta=1).ppf(1 - delta)) if t is None else t
    return sigma2 * (mu + level * sd) / n_norm


# ------------------------------------------------------------------------------------ accuracy of σ²
@pytest.mark.parametrize("method", ["rcb", "bema"])
def test_sigma2_relative_error_1024x512_pure_noise(method: str) -> None:
    errs, vs_frobenius = [], []
    for seed in range(5):
        W = np.random.default_rng(seed).standard_normal((1024, 512)) * 1.7
        f = fit_mp(W, method=method)
        errs.append(f.sigma2 / 1.7**2 - 1)
        vs_frobenius.append(f.sigma2 / np.mean(W**2) - 1)  # the efficient estimator on pure noise
    # |error| <= 0.5 % per seed (the estimator's sd is ~0.23 %, so this is a ~2-sd band per seed)
    assert max(abs(e) for e in errs) <= 0.005
    # against the sample variance the extra error is ~0.12 % sd: 0.5 % is > 4 sd
    assert max(abs(e) for e in vs_frobenius) <= 0.005


def test_sigma2_gd_uses_exact_median() -> None:
    W = np.random.default_rng(1).standard_normal((300, 120))
    f = fit_mp(W, method="gd")
    ev = np.linalg.eigvalsh(W.T @ W) / 300
    mu = _mp_median_by_bisection(120 / 300)  # independent: bisection on a quadrature of the density
    assert f.sigma2 == pytest.approx(np.median(ev) / mu, rel=1e-9)
    assert f.threshold == pytest.approx(gd_lambda_star(0.4) ** 2 * f.sigma2, rel=1e-12)
    # the default edge: Johnstone's form at the level that accounts for the sampling error of σ̂²
    assert f.edge == pytest.approx(_johnstone_edge(f.sigma2, 120, 300, 0.05, 300, f.edge_quantile), rel=1e-9)
    assert f.edge_quantile > tw_edge_quantile(0.05)
    # sigma2_error=False: the plain TW₁ quantile (σ² treated as exact), as before
    g = fit_mp(W, method="gd", sigma2_error=False)
    assert g.sigma2 == f.sigma2 and g.edge_quantile == pytest.approx(tw_edge_quantile(0.05), rel=1e-12)
    assert g.edge == pytest.approx(_johnstone_edge(f.sigma2, 120, 300, 0.05, 300), rel=1e-9)


def _mp_median_by_bisection(c: float) -> float:
    from scipy import integrate

    a, b = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2

    def pdf(x: float) -> float:
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * c * x) if a < x < b else 0.0

    lo, hi = a, b
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if integrate.quad(pdf, a, mid, limit=200)[0] < 0.5:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------ spike counts
def test_rcb_exact_spike_count_recovery_mixed_sub_and_supercritical() -> None:
    # every supercritical spike >= 1.3x the BBP threshold, mixed with subcritical ones (<= 0.8x)
    n = 150
    r = spike_recovery_trial((400, 200), n, methods=("rcb",), n_super=(1, 4), super_factor=(1.3, 3.0),
                             n_sub=(0, 3), sub_factor=(0.2, 0.8), seed=2024)["rcb"]
    assert r["exact_recovery"] >= 0.90
    # failures are over-counts at level ~delta, not systematic misses
    assert r["overcount"] <= _binom_upper(0.05, n)


@pytest.mark.parametrize(("rcb_edge", "margin"), [("full", 0.15), ("deflated", 0.2)])
def test_rcb_beats_bema_and_gd_with_many_spikes(rcb_edge: str, margin: float) -> None:
    # many near-threshold spikes inflate BEMA's σ² (the bulk grid assumes p eigenvalues, not p-k)
    n = 60
    r = spike_recovery_trial(
        (800, 400), n, n_super=(5, 15), super_factor=(1.3, 2.0), n_sub=(0, 2), seed=7, rcb_edge=rcb_edge
    )
    assert r["rcb"]["exact_recovery"] >= r["bema"]["exact_recovery"] + margin
    assert r["rcb"]["exact_recovery"] >= r["gd"]["exact_recovery"] + margin
    assert r["rcb"]["sigma2_relerr_spiked_mean"] < r["bema"]["sigma2_relerr_spiked_mean"]


@pytest.mark.parametrize("delta", [0.05, 0.2])
def test_false_positive_rate_on_pure_noise_is_delta(delta: float) -> None:
    n = 300
    r = spike_recovery_trial((160, 80), n, methods=("rcb",), n_super=(0, 0), n_sub=(0, 0), delta=delta,
                             seed=11)["rcb"]
    fp = r["false_positive_rate"]
    sd = math.sqrt(delta * (1 - delta) / n)
    assert fp <= delta + 3 * sd  # at most delta (binomial tolerance) ...
    assert fp >= delta - 3 * sd  # ... and calibrated, not vacuously conservative


@pytest.mark.parametrize("rcb_edge", ["full", "deflated"])
@pytest.mark.parametrize("sigma2_error", [True, False])
def test_edge_is_johnstone_and_rank_corrected_at_fixed_point(rcb_edge: str, sigma2_error: bool) -> None:
    sm = make_spiked_matrix((300, 500), [2.0, 3.0, 4.0, 0.5], sigma2=2.0, rng=5)
    f = fit_mp(sm.W, rcb_edge=rcb_edge, sigma2_error=sigma2_error)
    k = f.n_spikes
    assert k == 3 and f.converged
    assert f.bulk_shape == (300 - k, 500 - k)
    p_e, n_e = (300, 500) if rcb_edge == "full" else (300 - k, 500 - k)
    t = f.edge_quantile if sigma2_error else None
    assert f.edge == pytest.approx(_johnstone_edge(f.sigma2, p_e, n_e, 0.05, 500, t), rel=1e-9)
    # the σ̂² error is that of pure noise of the edge's shape
    noise = fit_mp(eigenvalues=np.linspace(0.5, 1.5, p_e), shape=(p_e, n_e), method="bema")
    assert f.sigma2_rel_sd == pytest.approx(noise.sigma2_rel_sd, rel=1e-12)
    ev = np.linalg.eigvalsh(sm.W @ sm.W.T) / 500
    assert k == int(np.sum(ev > f.edge))  # fixed point: the count above the recomputed edge is k
    assert f.edge_sigma == pytest.approx(math.sqrt(500 * f.edge))
    assert np.all(np.diff(f.spikes) <= 0) and f.bulk_fraction == pytest.approx((300 - k) / 300)


def test_authors_convention_edge_uses_correct_exponent() -> None:
    W = np.random.default_rng(3).standard_normal((256, 768))
    f = fit_mp(W, method="bema", authors_convention=True)
    c, n = 256 / 768, 768
    t = float(TracyWidom(beta=1).ppf(0.2))
    sc = math.sqrt(c)
    expected = f.sigma2 * ((1 + sc) ** 2 + t * n ** (-2 / 3) * c ** (-1 / 6) * (1 + sc) ** (4 / 3))
    assert f.edge == pytest.approx(expected, rel=1e-12)
    assert f.edge < f.lambda_plus  # the authors' liberal edge sits below the asymptotic edge
    assert fit_mp(W, method="bema").edge > f.lambda_plus  # ours sits above it


def test_tw_level_is_the_authors_level_and_beta_is_only_the_dyson_index() -> None:
    W = np.random.default_rng(3).standard_normal((128, 256))
    a = fit_mp(W, method="bema", authors_convention=True)
    b = fit_mp(W, method="bema", tw_level=0.8)
    assert a.tw_level == b.tw_level == 0.8 and a.edge == b.edge and a.to_dict()["tw_level"] == 0.8
    assert a.edge_convention == "kml" and fit_mp(W, method="bema").tw_level is None
    assert fit_mp_batch([W], method="bema", tw_level=0.8)[0].edge == a.edge
    with pytest.raises(TypeError):
        fit_mp(W, beta=0.8)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="tw_level"):
        fit_mp(W, tw_level=1.5)


def test_fit_error_is_kolmogorov_distance_of_bulk() -> None:
    sm = make_spiked_matrix((200, 400), [3.0], rng=9)
    f = fit_mp(sm.W)
    ev = np.linalg.eigvalsh(sm.W @ sm.W.T) / 400
    bulk = ev[ev <= f.edge]
    ks = stats.kstest(bulk, f.bulk_law.cdf)
    assert f.fit_error == pytest.approx(ks.statistic, abs=1e-12)
    assert f.ks_pvalue == pytest.approx(ks.pvalue, rel=1e-6)
    # a non-MP bulk (uniform singular values) is detected
    U, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((400, 200)))
    bad = fit_mp(U[:200, :] * np.linspace(1, 30, 200), method="bema")
    assert bad.fit_error > 5 * f.fit_error


# ------------------------------------------------------------------------------------ the δ promise
_DELTAS = (0.01, 0.05, 0.1)


def _fp_rates(ev: np.ndarray, shape: tuple[int, int], method: str = "rcb") -> dict[float, float]:
    """Fraction of pure-noise spectra (rows of ``ev``) in which ``fit_mp`` reports a spike, per δ."""
    return {
        d: float(np.mean([f.n_spikes > 0 for f in fit_mp_batch(eigenvalues=ev, shape=shape, method=method,
                                                               delta=d)]))
        for d in _DELTAS
    }


@pytest.mark.parametrize("shape", [(128, 64), (64, 128)])
def test_false_positive_rate_with_estimated_sigma2_is_delta(shape: tuple[int, int]) -> None:
    # Dense Gaussian matrices as users fit them, σ² estimated. K = 3500 gives the upper bound power: a 2x
    # excess (2δ) exceeds δ + 3·sd with probability ≥ 98 % at δ = 0.01 and ~1 at δ = 0.05, 0.1 (the plain
    # TW₁ edge, sigma2_error=False, runs ~20-60 % above δ at this size).
    K = 3500
    rng = np.random.default_rng(20240 + shape[0])
    ev = np.concatenate([batched_eigenvalues([rng.standard_normal(shape) for _ in range(500)])
                         for _ in range(K // 500)])
    for d, fp in _fp_rates(ev, shape).items():
        sd = math.sqrt(d * (1 - d) / K)
        assert d - 3 * sd <= fp <= d + 3 * sd, (shape, d, fp)


def test_sigma2_rel_sd_is_the_sampling_sd_of_sigma2() -> None:
    # the derived sd of σ̂²/σ² (linear-spectral-statistics CLT) against its Monte Carlo value
    shape, K = (200, 100), 600
    ev = wishart_eigenvalues(shape, K, sigma2=2.5, rng=3)
    sds = {}
    for method in ("bema", "gd"):
        fits = fit_mp_batch(eigenvalues=ev, shape=shape, method=method)
        s2 = np.array([f.sigma2 for f in fits]) / 2.5
        derived = sds[method] = fits[0].sigma2_rel_sd
        assert all(f.sigma2_rel_sd == derived for f in fits)  # a property of the shape, not of the draw
        # sd of a sample sd over 600 draws is ~3 %: 15 % is a > 4-sd band
        assert float(np.std(s2)) == pytest.approx(derived, rel=0.15), method
        assert abs(float(np.mean(s2)) - 1) < 4 * derived / math.sqrt(K)
    assert fit_mp(eigenvalues=ev[0], shape=shape).sigma2_rel_sd == pytest.approx(
        fit_mp(eigenvalues=ev[0], shape=shape, method="bema").sigma2_rel_sd)  # rcb with k = 0 is bema
    # halving both sides halves the error: sd = O(1/p), not O(1/sqrt(p))
    big = fit_mp(eigenvalues=np.linspace(0.5, 1.5, 200), shape=(400, 200), method="bema").sigma2_rel_sd
    assert big == pytest.approx(sds["bema"] / 2, rel=0.05)


def test_wishart_eigenvalues_has_the_law_of_dense_noise() -> None:
    K = 2000
    rng = np.random.default_rng(8)
    for shape in ((60, 25), (25, 60)):
        dense = np.concatenate([batched_eigenvalues([rng.standard_normal(shape) * 1.5 for _ in range(500)])
                                for _ in range(K // 500)])
        tri = wishart_eigenvalues(shape, K, sigma2=2.25, rng=rng)
        assert tri.shape == (K, 25) and np.all(np.diff(tri, axis=1) >= 0)
        for stat in (lambda e: e[:, -1], lambda e: e[:, 12], lambda e: e[:, 0], lambda e: e.sum(axis=1)):
            assert stats.ks_2samp(stat(tri), stat(dense)).pvalue > 1e-3
        # E trace = p σ² exactly; Var trace = 2 p σ⁴ / n
        sd_trace = math.sqrt(2 * 25 * 2.25**2 / 60 / K)
        assert abs(tri.sum(axis=1).mean() - 25 * 2.25) < 4 * sd_trace
    with pytest.raises(ValueError):
        wishart_eigenvalues((1, 5), 3)


def test_tw_ratio_quantile() -> None:
    tw = TracyWidom(beta=1)
    for d in _DELTAS:
        assert tw_ratio_quantile(d, 100.0, 0.0) == pytest.approx(tw_edge_quantile(d), rel=1e-12)
    # uncorrelated error: independent check by adaptive quadrature over ε ~ N(b, s²)
    a, s, b, d = 129.0, 0.0023, -0.0003, 0.05
    t = tw_ratio_quantile(d, a, s, b)
    tail = integrate.quad(lambda z: float(tw.sf(t + (b + s * z) * (a + t))) * stats.norm.pdf(z), -12, 12)[0]
    assert tail == pytest.approx(d, abs=1e-7)
    assert t > tw_edge_quantile(d)  # a noisy σ̂² needs a higher level
    # the part of the error that the top eigenvalue shares (corr > 0) needs less
    assert tw_edge_quantile(d) < tw_ratio_quantile(d, a, s, 0.0, 0.1) < tw_ratio_quantile(d, a, s, 0.0, 0.0)
    # fully shared (s·B <= 2 corr sd(X)): only the bias remains, t(1 + b) + b·a = t₀
    t0, t1 = tw_edge_quantile(d), tw_ratio_quantile(d, a, 0.002, b, 1.0)
    assert t1 == pytest.approx((t0 - b * a) / (1 + b), rel=1e-9)
    for bad in ((0.0, a, s), (d, -1.0, s), (d, a, -s), (d, a, math.nan)):
        with pytest.raises(ValueError):
            tw_ratio_quantile(*bad)
    with pytest.raises(ValueError):
        tw_ratio_quantile(d, a, s, 0.0, 1.5)


def test_fit_mp_batch_on_eigenvalues_equals_fit_mp() -> None:
    rng = np.random.default_rng(12)
    mats = [make_spiked_matrix((90, 60), f, rng=rng).W for f in ([], [2.0], [1.5, 3.0])]
    ev = batched_eigenvalues(mats)
    for kw in ({}, {"method": "gd", "delta": 0.1}, {"sigma2_error": False}, {"authors_convention": True}):
        batch = fit_mp_batch(eigenvalues=ev[:, ::-1], shape=(90, 60), **kw)  # any order within a row
        for W, b in zip(mats, batch):
            a = fit_mp(W, **kw)
            assert b.shape == (90, 60) and b.n_spikes == a.n_spikes
            assert b.edge == pytest.approx(a.edge, rel=1e-10) and b.edge_quantile == a.edge_quantile
    kml = fit_mp_batch(eigenvalues=ev, shape=(90, 60), authors_convention=True)[0]
    assert kml.edge_quantile == pytest.approx(float(TracyWidom(beta=1).ppf(0.2)), rel=1e-12)
    assert fit_mp(mats[0], authors_convention=True, sigma2_error=False).edge == kml.edge
    for kwargs, match in [
        ({"matrices": mats, "eigenvalues": ev, "shape": (90, 60)}, "exactly one"),
        ({"eigenvalues": ev}, "shape"),
        ({"matrices": mats, "shape": (90, 60)}, "shape"),
        ({"eigenvalues": ev[:, :10], "shape": (90, 60)}, r"\(90, 60\)"),
        ({"eigenvalues": ev[0], "shape": (90, 60)}, "2-D"),
        ({"eigenvalues": -ev, "shape": (90, 60)}, "non-negative"),
        ({"matrices": mats, "sigma2_error": "yes"}, "sigma2_error"),
        ({"matrices": mats, "bogus": 1}, "bogus"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_mp_batch(**kwargs)
    with pytest.raises(ValueError, match="sigma2_error"):
        fit_mp(mats[0], sigma2_error=None)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(256, 128), (512, 256), (1024, 512), (2048, 1024)])
def test_false_positive_rate_with_estimated_sigma2_is_delta_sweep(shape: tuple[int, int]) -> None:
    # exact-law spectra (wishart_eigenvalues; its law is pinned against dense matrices above); W and Wᵀ share
    # the spectrum, so both orientations are fitted on the same draws and must agree exactly
    K = 2000
    ev = wishart_eigenvalues(shape, K, rng=shape[0])
    for method in ("rcb", "bema"):
        rates = _fp_rates(ev, shape, method)
        assert rates == _fp_rates(ev, (shape[1], shape[0]), method)
        for d, fp in rates.items():
            assert fp <= d + 3 * math.sqrt(d * (1 - d) / K), (shape, method, d, fp)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(256, 128), (128, 256)])
def test_false_positive_rate_with_estimated_sigma2_dense_256x128(shape: tuple[int, int]) -> None:
    K = 4000
    rng = np.random.default_rng(7 + shape[0])
    ev = np.concatenate([batched_eigenvalues([rng.standard_normal(shape) for _ in range(500)])
                         for _ in range(K // 500)])
    for d, fp in _fp_rates(ev, shape).items():
        sd = math.sqrt(d * (1 - d) / K)
        assert d - 3 * sd <= fp <= d + 3 * sd, (shape, d, fp)


# ------------------------------------------------------------------------------------ properties (strategies)
@settings(max_examples=25)
@given(spiked_matrices(shape=shapes(min_side=10, max_side=48), n_super=(0, 2), n_sub=(0, 1)))
def test_scale_and_transpose_equivariance(sm) -> None:  # type: ignore[no-untyped-def]
    f = fit_mp(sm.W)
    g = fit_mp(3.0 * sm.W.T)
    assert g.sigma2 == pytest.approx(9.0 * f.sigma2, rel=1e-8)
    assert g.edge == pytest.approx(9.0 * f.edge, rel=1e-8)
    assert g.n_spikes == f.n_spikes
    # the default confidence edge sits above the asymptotic edge of the (rank-corrected) bulk law
    assert f.bulk_law.edges[1] < f.edge
    if f.n_spikes == 0:
        assert f.lambda_plus < f.edge and f.bulk_shape == sm.shape
    N, M = sm.shape
    assert f.sigma_plus == pytest.approx(math.sqrt(f.sigma2) * (math.sqrt(N) + math.sqrt(M)))
    assert f.n_spikes == f.spikes.size and 0.0 <= f.fit_error <= 1.0


@settings(max_examples=15)
@given(pure_noise(shape=shapes(min_side=10, max_side=40)))
def test_eigenvalue_input_equals_matrix_input(sm) -> None:  # type: ignore[no-untyped-def]
    ev = np.linalg.svd(sm.W, compute_uv=False) ** 2 / max(sm.shape)
    for method in ("rcb", "bema", "gd"):
        a = fit_mp(sm.W, method=method)
        b = fit_mp(eigenvalues=ev[::-1], shape=sm.shape, method=method)
        assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-9)
        assert a.n_spikes == b.n_spikes


def test_batched_fit_equals_unbatched() -> None:
    rng = np.random.default_rng(4)
    mats = [make_spiked_matrix(s, f, rng=rng).W for s, f in
            [((60, 40), [2.0]), ((40, 60), []), ((60, 40), [1.5, 3.0]), ((33, 90), [2.5]), ((60, 40), [])]]
    for method in ("rcb", "bema", "gd"):
        batch = fit_mp_batch(mats, method=method, delta=0.1)
        for W, b in zip(mats, batch):
            a = fit_mp(W, method=method, delta=0.1)
            assert b.shape == W.shape and b.method == method
            assert b.sigma2 == pytest.approx(a.sigma2, rel=1e-10)
            assert b.edge == pytest.approx(a.edge, rel=1e-10)
            assert b.n_spikes == a.n_spikes and b.n_iter == a.n_iter
            assert np.allclose(b.spikes, a.spikes, rtol=1e-10)
            assert b.fit_error == pytest.approx(a.fit_error, abs=1e-9)


def test_to_dict_is_json_safe_and_law() -> None:
    f = fit_mp(make_spiked_matrix((50, 80), [3.0], rng=1).W)
    d = json.loads(json.dumps(f.to_dict(), allow_nan=False))
    assert d["n_spikes"] == len(d["spikes"]) == f.n_spikes and d["shape"] == [50, 80]
    assert f.law.edges == pytest.approx((f.lambda_minus, f.lambda_plus))


# ------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"W": np.full((5, 4), np.nan)}, r"\(5, 4\)"),
        ({"W": np.array([[1.0, np.inf], [0.0, 1.0]])}, r"\(2, 2\)"),
        ({"W": np.zeros((0, 4))}, r"\(0, 4\)"),
        ({"W": np.zeros((6, 5))}, r"\(6, 5\)"),
        ({"W": np.ones((1, 7))}, r"\(1, 7\)"),
        ({"W": np.ones((7, 1))}, r"\(7, 1\)"),
        ({"W": np.ones(7)}, r"\(7,\)"),
        ({"eigenvalues": np.ones(3), "shape": (4, 6)}, r"\(4, 6\)"),
        ({"eigenvalues": np.ones(4)}, "shape"),
        ({"eigenvalues": np.array([1.0, np.nan, 1, 1]), "shape": (4, 6)}, r"\(4, 6\)"),
        ({"eigenvalues": np.array([1.0, -1.0, 1, 1]), "shape": (4, 6)}, r"\(4, 6\)"),
        ({"W": np.ones((4, 6)), "shape": (6, 4)}, r"\(6, 4\)"),
        ({"W": np.eye(6), "delta": 0.0}, r"\(6, 6\)"),
        ({"W": np.eye(6), "delta": 1.5}, r"\(6, 6\)"),
        ({"W": np.eye(6), "alpha": 0.5}, r"\(6, 6\)"),
        ({"W": np.eye(6), "method": "kde"}, r"\(6, 6\)"),
        ({"W": np.outer(np.arange(1.0, 21), np.arange(1.0, 11))}, r"\(20, 10\)"),  # rank 1: no bulk
    ],
)
def test_bad_inputs_raise_naming_shape(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        fit_mp(**kwargs)


def test_bad_inputs_batch() -> None:
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        fit_mp_batch([np.eye(4), np.full((3, 3), np.nan)])
    with pytest.raises(ValueError):
        fit_mp(np.eye(4), eigenvalues=np.ones(4), shape=(4, 4))


def test_fit_calibration_benchmark_smoke(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.fit_calibration import main

    out = tmp_path / "bench" / "fit_calibration.json"
    args = ["--trials", "40", "--shapes", "40x20", "--recovery-trials", "3", "--recovery-shape", "60", "30"]
    assert main([*args, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = res["false_positives"]
    assert [r["shape"] for r in rows] == [[40, 20]] * 3 + [[20, 40]] * 3
    for r in rows:
        assert r["tolerance"] == pytest.approx(r["delta"] + 3 * math.sqrt(r["delta"] * (1 - r["delta"]) / 40))
        assert 0.0 <= r["oracle"] <= 1.0 and r["gd"]["after"] <= r["gd edge"]["after"]
    assert rows[:3] == [dict(r, shape=[40, 20]) for r in rows[3:]]  # same spectra, same fits
    assert [r["regime"] for r in res["recovery"]] == ["few", "many", "at 1.3x"]
    # bema's σ̂² does not depend on the edge: the same error before and after
    for rec in res["recovery"]:
        bema = rec["bema"]
        assert bema["after"]["sigma2_relerr_noise_mean"] == bema["before"]["sigma2_relerr_noise_mean"]
