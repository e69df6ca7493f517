"""Tests for mptheory.fit: σ² accuracy, spike-count recovery, false-positive rate, batching, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from scipy import stats

from mptheory.fit import fit_mp, fit_mp_batch, spike_recovery_trial
from mptheory.spikes import gd_lambda_star, make_spiked_matrix
from mptheory.strategies import pure_noise, shapes, spiked_matrices
from mptheory.tracy_widom import TracyWidom


def _binom_upper(p: float, n: int, z: float = 3.0) -> float:
    return p + z * math.sqrt(p * (1 - p) / n)


def _johnstone_edge(sigma2: float, p: int, n: int, delta: float, n_norm: int) -> float:
    """Independent restatement of Johnstone (2001) centring/scaling (peers §7.7); scale s²/n_norm."""
    mu = (math.sqrt(n - 1) + math.sqrt(p)) ** 2
    sd = (math.sqrt(n - 1) + math.sqrt(p)) * (1 / math.sqrt(n - 1) + 1 / math.sqrt(p)) ** (1 / 3)
    return sigma2 * (mu + float(TracyWidom(beta=1).ppf(1 - delta)) * sd) / n_norm


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
    assert f.edge == pytest.approx(_johnstone_edge(f.sigma2, 120, 300, 0.05, 300), rel=1e-9)


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
def test_edge_is_johnstone_and_rank_corrected_at_fixed_point(rcb_edge: str) -> None:
    sm = make_spiked_matrix((300, 500), [2.0, 3.0, 4.0, 0.5], sigma2=2.0, rng=5)
    f = fit_mp(sm.W, rcb_edge=rcb_edge)
    k = f.n_spikes
    assert k == 3 and f.converged
    assert f.bulk_shape == (300 - k, 500 - k)
    p_e, n_e = (300, 500) if rcb_edge == "full" else (300 - k, 500 - k)
    assert f.edge == pytest.approx(_johnstone_edge(f.sigma2, p_e, n_e, 0.05, 500), rel=1e-9)
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
