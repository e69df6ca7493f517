"""Property tests of the data-path certificates D1-D12 (digest §2.1, test matrix T1-T8) and negative
controls; each test is named after the claim ids it checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import mptheory.certificates as C
from mptheory.certificates import (
    CertCase,
    Decomposition,
    ElasticNet,
    MaskDecomposition,
    PruneRestore,
    SplitNetwork,
)
from mptheory.lipschitz import ESTIMATORS, piecewise_linear_segment
from mptheory.strategies_nets import (
    adversarial_margin_cases,
    cert_cases,
    dead_column_cases,
    disjoint_triples,
    linear_tail_cases,
    make_cert_case,
    make_dead_column_case,
    make_multilayer_case,
    masks,
    multilayer_cases,
    small_relu_nets,
    thetas,
)
from mptheory.verdict import CheckResult

RTOL = 1e-9


def _z(net: SplitNetwork, W: np.ndarray) -> np.ndarray:
    """Independent logits: numpy layer, torch tail in float64."""
    u = net.psi1 @ W.T + (net.bias if net.bias is not None else 0.0)
    with torch.no_grad():
        return net.tail(torch.from_numpy(u)).numpy()


def _ce(z: np.ndarray, y: np.ndarray) -> float:
    m = z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z - m).sum(axis=1)) + m[:, 0] - z[np.arange(len(y)), y]))


def _exact_L(net: SplitNetwork, dec: Decomposition) -> np.ndarray:
    tail = net.tail
    assert isinstance(tail, nn.Module)
    return piecewise_linear_segment(tail, net.layer_output(dec.S), net.layer_output(dec.A)).values


# ---------------------------------------- D1, D2


@given(net=small_relu_nets(), data=st.data())
@settings(max_examples=25)
def test_d1_logit_and_ce_path_bound_independent(net, data) -> None:
    mask = data.draw(masks(net.A.shape))
    th = data.draw(thetas())
    dec = MaskDecomposition(net.A, mask)
    L = _exact_L(net, dec)
    rn = np.abs(net.psi1 @ dec.R.T).max(axis=1)
    B = 2.0 * np.mean(L * rn)
    assert C.budget(net.psi1, dec.R, L) == pytest.approx(B, rel=1e-12, abs=1e-15)
    z1 = _z(net, net.A)
    for t in th:
        zt = _z(net, dec.S + t * dec.R)
        eta = (1 - t) * L * rn
        np.testing.assert_allclose(C.eta(net.psi1, dec.R, L, t), eta, rtol=1e-12, atol=1e-15)
        assert np.all(np.abs(zt - z1).max(axis=1) <= eta * (1 + RTOL) + 1e-12)
        assert abs(_ce(zt, net.labels) - _ce(z1, net.labels)) <= (1 - t) * B + 1e-9 * max(
            1, _ce(z1, net.labels)
        )


@given(case=cert_cases())
@settings(max_examples=25)
def test_d1_check_with_pl_exact_and_product_norm(case) -> None:
    for method in ("pl_exact", "product_norm"):
        r = C.check_d1(case, method=method)
        assert r.violations == 0 and r.cases > 0 and r.kind == "deterministic"
        assert r.max_tightness <= 1 + 1e-9 or np.isnan(r.max_tightness)


@given(case=cert_cases())
@settings(max_examples=25)
def test_d2_margin_certificate(case) -> None:
    r = C.check_d2(case)
    assert r.violations == 0
    # independent: every certified sample keeps its argmax after full removal
    dec = case.decomposition
    L = _exact_L(case.net, dec)
    z1, z0 = _z(case.net, dec.A), _z(case.net, dec.S)
    eta = L * np.abs(case.net.psi1 @ dec.R.T).max(axis=1)
    srt = np.sort(z1, axis=1)
    cert = srt[:, -1] - srt[:, -2] > 2 * eta
    assert np.array_equal(cert, C.certified_samples(z1, eta))
    assert np.all(z0[cert].argmax(axis=1) == z1[cert].argmax(axis=1))
    def tm(z: np.ndarray) -> np.ndarray:
        return np.array([z[i, y] - np.delete(z[i], y).max() for i, y in enumerate(case.net.labels)])

    dacc = abs(int(np.sum(tm(z0) > 0)) - int(np.sum(tm(z1) > 0)))  # |Δacc|·|T| as an exact count
    assert dacc <= np.sum(np.abs(tm(z1)) <= 2 * eta)


# ---------------------------------------- D3


@given(case=dead_column_cases())
@settings(max_examples=20)
def test_d3_zero_budget_is_exact(case) -> None:
    dec = case.decomposition
    assert np.any(dec.R != 0)
    assert C.budget(case.net.psi1, dec.R, _exact_L(case.net, dec)) == 0.0
    assert np.array_equal(_z(case.net, dec.S), _z(case.net, dec.A))  # bit-identical
    obj = ElasticNet(case.lam1, case.lam2)
    pen = case.lam2 * np.sum(dec.R**2) + case.lam1 * np.sum(np.abs(dec.R))
    assert obj(case.net, dec.S) == pytest.approx(obj(case.net, dec.A) - pen, rel=1e-12, abs=1e-12)
    assert C.check_d3(case).violations == 0


# ---------------------------------------- D4-D8


@given(case=cert_cases())
@settings(max_examples=20)
def test_d4_frobenius_any_decomposition(case) -> None:
    dec = case.general
    assume(not dec.is_mask)
    # the algebraic identity the proof uses
    S, R = dec.S, dec.R
    for t in case.thetas:
        lhs = np.sum((S + t * R) ** 2) - np.sum((S + R) ** 2)
        assert lhs == pytest.approx(
            -(1 - t**2) * np.sum(R**2) - 2 * (1 - t) * np.sum(S * R), rel=1e-9, abs=1e-9
        )
    assert C.check_d4(case).violations == 0


@given(case=cert_cases())
@settings(max_examples=25)
def test_d5_elastic_net_and_strict_decrease(case) -> None:
    r = C.check_d5(case)
    assert r.violations == 0
    dec = case.decomposition
    obj = ElasticNet(case.lam1, case.lam2)
    cert = C.elastic_net_certificate(case.net, dec, obj, _exact_L(case.net, dec), case.thetas)
    B = C.budget(case.net.psi1, dec.R, _exact_L(case.net, dec))
    pen = case.lam2 * np.sum(dec.R**2) + case.lam1 * np.sum(np.abs(dec.R))
    assert cert.certified == (B < pen)
    jS = (
        _ce(_z(case.net, dec.S), case.net.labels)
        + case.lam2 * np.sum(dec.S**2)
        + case.lam1 * np.sum(np.abs(dec.S))
    )
    jA = (
        _ce(_z(case.net, dec.A), case.net.labels)
        + case.lam2 * np.sum(dec.A**2)
        + case.lam1 * np.sum(np.abs(dec.A))
    )
    assert jS <= jA - pen + B + 1e-9 * max(1.0, abs(jA))
    if cert.certified:
        assert jS < jA


@given(case=cert_cases())
@settings(max_examples=20)
def test_d6_weighted(case) -> None:
    assert C.check_d6(case).violations == 0


@given(net=small_relu_nets(max_width=5), data=st.data())
@settings(max_examples=20)
def test_d7_d8_prune_restore_and_restoration_identity(net, data) -> None:
    triple = data.draw(disjoint_triples(net.A))
    lam1, lam2 = data.draw(st.floats(0, 3)), data.draw(st.floats(0, 3))
    obj = ElasticNet(lam1, lam2)
    d7 = C.prune_restore_certificate(net, triple, obj, None, (0.0, 0.5, 1.0))
    assert d7.path.violations == 0 and d7.implication.violations == 0
    d8 = C.restoration_identity(net, triple, obj)
    BR = C.budget(net.psi1, triple.Q + triple.P, _exact_L(net, triple.prune_all()))
    BP = C.budget(net.psi1, triple.P, _exact_L(net, triple.restore()))
    penQ = lam2 * np.sum(triple.Q**2) + lam1 * np.sum(np.abs(triple.Q))
    gap = d8.upper_prune_all - d8.upper_restore
    assert gap == pytest.approx(BR - BP - penQ, rel=1e-9, abs=1e-9)
    if abs(BR - BP - penQ) > 1e-9:
        assert (d8.upper_restore < d8.upper_prune_all) == (BR - BP > penQ) == d8.helps


@given(case=cert_cases())
@settings(max_examples=15)
def test_d7_d8_checks(case) -> None:
    assert C.check_d7(case).violations == 0
    assert C.check_d8(case).violations == 0


# ---------------------------------------- D9


@given(case=cert_cases())
@settings(max_examples=12)
def test_d9_stationarity_after_minimiser_rescaling(case) -> None:
    obj = ElasticNet(case.lam1, case.lam2)
    r = C.stationarity(case.net, case.decomposition, obj)
    # independent: theta = 1 minimises J(S + theta R') over theta in [0, 1] (the one-sided hypothesis of D9)
    dec = r.decomposition
    net2 = SplitNetwork(case.net.psi1, dec.A, case.net.tail, case.net.labels, case.net.bias)
    f1 = obj(net2, dec.A)
    grid = [obj(net2, dec.S + t * dec.R) for t in np.linspace(0, 1, 9)]
    assert f1 <= min(grid) + 1e-6 * max(1.0, abs(f1))
    pen2, pen1 = case.lam2 * np.sum(dec.R**2), case.lam1 * np.sum(np.abs(dec.R))
    # 2 lam2 ||R||^2 + lam1 ||R||_1 <= B_T + eps (eps = stationarity defect at h = 1e-6) + O(h) term
    assert 2 * pen2 + pen1 <= r.budget + r.stationary_eps + 1e-6 * pen2 + 1e-6 * max(1.0, abs(f1))
    assert r.inequality.violations == 0
    assert C.check_d9(case, weighted=True).violations == 0


# ---------------------------------------- D10-D12


@given(case=multilayer_cases())
@settings(max_examples=15)
def test_d10_d11_multilayer_telescoping(case) -> None:
    res, ineq = C.telescoped_bound(case.mlp, case.layers, case.masks, case.lam1, case.lam2)
    assert ineq.violations == 0
    # psi1 of every step is recomputed in the partially pruned network (independent forward)
    for step, j in enumerate(case.layers):
        h = case.mlp.X
        for i in range(j):
            h = np.maximum(h @ res.networks[step].weights[i].T + case.mlp.biases[i], 0.0)
        np.testing.assert_allclose(res.networks[step].layer_input(j), h, rtol=1e-12, atol=1e-12)
    # the telescoped bound equals the sum of the per-step D5 bounds at theta = 0
    assert np.isclose(res.logits[-1], res.networks[-1].logits()).all()
    assert C.check_d10(case).violations == 0
    assert C.check_d11(case).violations == 0


@given(case=multilayer_cases())
@settings(max_examples=8)
def test_d12_multilayer_stationarity(case) -> None:
    r = C.check_d12(case)
    assert r.violations == 0 and r.cases == 5


# ---------------------------------------- negative controls


@given(case=linear_tail_cases())
@settings(max_examples=15)
def test_d1_negative_control_halved_lipschitz_is_caught(case) -> None:
    dec = case.decomposition
    assume(np.any(np.abs(_z(case.net, dec.A) - _z(case.net, dec.S)) > 1e-6))
    assert C.check_d1(case).violations == 0
    bad = C.check_d1(case, lipschitz_scale=0.5)
    assert bad.violations > 0 and bad.worst_slack < 0
    assert bad.max_tightness == pytest.approx(2.0, rel=1e-9)


@given(case=adversarial_margin_cases())
@settings(max_examples=15)
def test_d2_negative_control_margin_factor_one_is_caught(case) -> None:
    assert C.check_d2(case).violations == 0
    assert C.check_d2(case, margin_factor=1.0).violations >= case.net.n_samples


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=10)
def test_d11_negative_control_multilayer_halved(seed) -> None:
    case = make_multilayer_case(np.random.default_rng(seed))
    last = len(case.mlp.weights) - 1
    case = C.MultiLayerCase(
        case.mlp,
        (0, last),
        (np.ones(case.mlp.weights[0].shape), np.zeros(case.mlp.weights[last].shape)),
        case.lam1,
        case.lam2,
    )
    assume(np.abs(case.mlp.layer_input(last)).max() > 1e-6)
    assert C.check_d11(case).violations == 0
    assert C.check_d11(case, lipschitz_scale=0.5).violations > 0


# ---------------------------------------- registry and errors


_RUNNERS = {  # claim id -> (case runner, case factory), as the D section of mptheory.claims pairs them
    "D1": (C.check_d1, make_cert_case), "D2": (C.check_d2, make_cert_case),
    "D3": (C.check_d3, make_dead_column_case), "D4": (C.check_d4, make_cert_case),
    "D5": (C.check_d5, make_cert_case), "D6": (C.check_d6, make_cert_case),
    "D7": (C.check_d7, make_cert_case), "D8": (C.check_d8, make_cert_case),
    "D9": (C.check_d9, make_cert_case), "D10": (C.check_d10, make_multilayer_case),
    "D11": (C.check_d11, make_multilayer_case), "D12": (C.check_d12, make_multilayer_case),
}


def test_d1_to_d12_case_runners_hold_on_generated_cases() -> None:
    for cid, (check, factory) in _RUNNERS.items():
        res = CheckResult.combine([check(factory(np.random.default_rng(s))) for s in range(2)])
        assert res.cases > 0 and res.violations == 0 and res.passed, cid
        assert res.kind == "deterministic" and len(res.tightness) <= 2, cid


def test_inequality_counts_and_tolerance() -> None:
    q = C.Inequality("x", np.array([1.0, 2.0, 3.0 + 1e-12]), np.array([1.0, 1.0, 3.0]))
    assert q.violations == 1 and q.worst_slack == -1.0 and q.cases == 3
    assert C.Inequality("nan", np.array([np.nan]), np.array([0.0])).violations == 1


def _net() -> SplitNetwork:
    return SplitNetwork(np.ones((3, 2)), np.eye(2), nn.Identity(), np.array([0, 1, 0]))


def test_errors_name_the_argument() -> None:
    net = _net()
    with pytest.raises(ValueError, match="mask"):
        MaskDecomposition(net.A, np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="mask must have shape"):
        MaskDecomposition(net.A, np.ones((3, 2)))
    with pytest.raises(ValueError, match="theta"):
        C.eta(net.psi1, net.A, 1.0, 1.5)
    with pytest.raises(ValueError, match="empty"):
        SplitNetwork(np.zeros((0, 2)), np.eye(2), nn.Identity(), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        SplitNetwork(np.full((3, 2), np.nan), np.eye(2), nn.Identity(), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=r"A has shape \(2, 3\)"):
        SplitNetwork(np.ones((3, 2)), np.ones((2, 3)), nn.Identity(), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="disjoint"):
        PruneRestore(np.eye(2), np.eye(2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="labels"):
        SplitNetwork(np.ones((3, 2)), np.eye(2), nn.Identity(), np.array([0, 5, 0]))
    with pytest.raises(ValueError, match="B_T"):
        C.zero_budget(net, MaskDecomposition(net.A, np.zeros((2, 2))), ElasticNet(0.1, 0.1))
    with pytest.raises(ValueError, match="lam1"):
        ElasticNet(lam1=-1.0)
    with pytest.raises(ValueError, match="disjoint"):
        C.elastic_net_certificate(net, Decomposition(net.A, net.A), ElasticNet())


def test_case_type() -> None:
    case = make_cert_case(np.random.default_rng(0))
    assert isinstance(case, CertCase) and case.decomposition.is_mask


def test_lipschitz_bounds_takes_the_canonical_estimator_names() -> None:
    """Every name of mptheory.lipschitz.ESTIMATORS is accepted; the estimate carries that name and its
    soundness; the old names are refused."""
    case = make_cert_case(np.random.default_rng(4))
    net = SplitNetwork(case.net.psi1, case.net.A, nn.Sequential(nn.ReLU(), nn.Linear(case.net.A.shape[0], 3)),
                       case.net.labels % 3)
    dec = MaskDecomposition(net.A, case.mask)
    for name, info in ESTIMATORS.items():
        if name == "taylor_bound":  # mpprune's engine only
            with pytest.raises(ValueError, match="mpprune"):
                C.lipschitz_bounds(net, dec, name)
            continue
        L = C.lipschitz_bounds(net, dec, name)
        assert L.name == name and L.sound == info.sound and L.values.shape == (net.n_samples,)
    # on this affine-after-ReLU tail: pl_exact <= affine = product_norm (both ||W||_inf)
    exact, affine = C.lipschitz_bounds(net, dec, "pl_exact"), C.lipschitz_bounds(net, dec, "affine")
    assert np.all(exact.values <= affine.values * (1 + 1e-12))
    np.testing.assert_allclose(affine.values, C.lipschitz_bounds(net, dec, "product_norm").values)
    for old in ("exact", "product", "jacobian"):
        with pytest.raises(ValueError, match="pl_exact"):
            C.lipschitz_bounds(net, dec, old)
    n = net.A.shape[0]
    deep_tail = nn.Sequential(nn.ReLU(), nn.Linear(n, 4), nn.ReLU(), nn.Linear(4, 3))
    deep = SplitNetwork(net.psi1, net.A, deep_tail, net.labels)
    with pytest.raises(ValueError, match="affine"):
        C.lipschitz_bounds(deep, dec, "affine")
