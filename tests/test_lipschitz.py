"""Property tests of the L_s estimators (mptheory.lipschitz) against brute-force slopes and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from mptheory.lipschitz import (
    ESTIMATORS,
    Abs,
    affine_tail,
    induced_inf_norm,
    jacobian_segment,
    piecewise_linear_segment,
    product_bound,
    realised_ratio,
)
from mptheory.strategies_nets import masks, small_relu_nets

RTOL = 1e-9
SEEDS = st.integers(0, 2**32 - 1)


def _forward(tail: nn.Module, u: np.ndarray) -> np.ndarray:
    """Independent float64 forward of a tail (a fresh float64 copy, no library code)."""
    t = nn.Sequential(*[m for m in tail]).double() if isinstance(tail, nn.Sequential) else tail.double()
    with torch.no_grad():
        return t(torch.from_numpy(u)).numpy()


def _fd_slopes(tail: nn.Module, u0: np.ndarray, u1: np.ndarray, n_grid: int) -> np.ndarray:
    """Brute force: max over grid intervals of ||z(t_{k+1}) - z(t_k)||_inf / (dt ||u1 - u0||_inf), per
    sample."""
    th = np.linspace(0.0, 1.0, n_grid + 1)
    z = np.stack([_forward(tail, u0 + t * (u1 - u0)) for t in th])
    fd = np.abs(np.diff(z, axis=0)).reshape(n_grid, u0.shape[0], -1).max(axis=2).max(axis=0) * n_grid
    norm = np.abs((u1 - u0).reshape(u0.shape[0], -1)).max(axis=1)
    return np.divide(fd, norm, out=np.zeros_like(fd), where=norm > 0)


def _segment(net, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return net.layer_output(mask * net.A), net.layer_output(net.A)


@given(net=small_relu_nets(), data=st.data())
@settings(max_examples=25)
def test_exact_bound_sandwich(net, data) -> None:
    """realised end-to-end slope <= jacobian estimate <= exact PL bound <= product bound."""
    mask = data.draw(masks(net.A.shape))
    u0, u1 = _segment(net, mask)
    ex = piecewise_linear_segment(net.tail, u0, u1)
    assert ex.sound and ex.name == "pl_exact" and ESTIMATORS[ex.name].sound
    pb = product_bound(net.tail, net.n_samples)
    jac = jacobian_segment(net.tail, u0, u1, n_theta=7)
    assert not jac.sound
    norm = np.abs(u1 - u0).max(axis=1)
    realised = np.abs(_forward(net.tail, u1) - _forward(net.tail, u0)).max(axis=1)
    assert np.all(realised <= ex.values * norm * (1 + RTOL) + 1e-12)
    assert np.all(jac.values <= ex.values * (1 + RTOL) + 1e-12)
    assert np.all(ex.values <= pb.values * (1 + RTOL) + 1e-12)
    ratio = realised_ratio(net.tail, u0, u1, ex)
    ok = np.isfinite(ratio)
    assert np.all(ratio[ok] <= 1 + 1e-9)


@given(net=small_relu_nets(max_samples=4, tail_hidden=True), seed=SEEDS)
@settings(max_examples=12)
def test_exact_equals_fine_grid_finite_differences(net, seed) -> None:
    """The exact slope equals the max finite-difference slope on a fine grid (when its piece is not tiny)."""
    rng = np.random.default_rng(seed)
    u0, u1 = rng.standard_normal((2,) + (net.n_samples, net.A.shape[0]))
    n_grid = 2000
    ex = piecewise_linear_segment(net.tail, u0, u1)
    fd = _fd_slopes(net.tail, u0, u1, n_grid)
    scale = max(1.0, float(ex.values.max()))
    assert np.all(fd <= ex.values + 1e-9 * scale)
    for s in range(net.n_samples):
        assert ex.pieces is not None and ex.slopes is not None
        b, sl = ex.pieces[s], ex.slopes[s]
        assert b[0] == 0.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0)
        k = int(np.argmax(sl))
        if b[k + 1] - b[k] > 2.0 / n_grid:  # some grid interval lies inside the steepest piece
            assert fd[s] == pytest.approx(ex.values[s], rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.2), Abs(), nn.LeakyReLU(-0.5)])
def test_other_piecewise_linear_activations_match_brute_force(act) -> None:
    torch.manual_seed(0)
    tail = nn.Sequential(act, nn.Linear(6, 5), act, nn.Linear(5, 3)).double()
    rng = np.random.default_rng(1)
    u0, u1 = rng.standard_normal((2, 5, 6))
    ex = piecewise_linear_segment(tail, u0, u1)
    fd = _fd_slopes(tail, u0, u1, 4000)
    np.testing.assert_allclose(fd, ex.values, rtol=1e-6)


def test_conv_batchnorm_maxpool_flatten_tail_matches_brute_force() -> None:
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.normal_()  # type: ignore[union-attr]
        bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
        bn.weight.normal_()
    tail = nn.Sequential(
        nn.Conv2d(2, 3, 3), bn, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)
    ).eval()
    rng = np.random.default_rng(2)
    u0, u1 = rng.standard_normal((2, 3, 2, 8, 8))
    ex = piecewise_linear_segment(tail, u0, u1)
    fd = _fd_slopes(tail.double(), u0, u1, 4000)
    np.testing.assert_allclose(fd, ex.values, rtol=1e-6)
    assert np.all(ex.values <= product_bound(tail, 3).values)


@given(seed=SEEDS, n=st.integers(1, 6), k=st.integers(1, 5))
def test_affine_tail_is_exact_and_attained(seed, n, k) -> None:
    """||W||_inf equals max over the cube vertices of ||W x||_inf, and the PL bound attains it along
    sign(row)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((k, n))
    brute = max(np.abs(W @ np.array(v)).max() for v in itertools.product((-1.0, 1.0), repeat=n))
    assert induced_inf_norm(W) == pytest.approx(brute, rel=1e-12)
    at = affine_tail(W, np.zeros(k), n_samples=2)
    assert at.sound and at.values.shape == (2,)
    i = int(np.argmax(np.abs(W).sum(axis=1)))
    tail = nn.Linear(n, k).double()
    with torch.no_grad():
        tail.weight.copy_(torch.from_numpy(W))
    u0 = rng.standard_normal((2, n))
    u1 = u0 + np.array([[1.0], [0.3]]) * np.sign(W[i])
    assume(np.all(np.abs(u1 - u0).max(axis=1) > 0))
    ex = piecewise_linear_segment(tail, u0, u1)
    np.testing.assert_allclose(ex.values, at.values, rtol=1e-12)
    np.testing.assert_allclose(realised_ratio(tail, u0, u1, at), 1.0, rtol=1e-12)


def test_zero_direction_gives_zero_and_scaled_drops_soundness() -> None:
    tail = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))
    u = np.ones((2, 3))
    assert np.all(piecewise_linear_segment(tail, u, u).values == 0.0)
    est = affine_tail(np.eye(3), n_samples=2)
    half = est.scaled(0.5)
    assert not half.sound and np.allclose(half.values, 0.5)
    assert est.scaled(2.0).sound


def test_errors_name_the_problem() -> None:
    u0, u1 = np.zeros((2, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match="GELU"):
        piecewise_linear_segment(nn.Sequential(nn.GELU(), nn.Linear(3, 2)), u0, u1)
    with pytest.raises(ValueError, match="GELU"):
        product_bound(nn.Sequential(nn.GELU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="same shape"):
        piecewise_linear_segment(nn.ReLU(), u0, np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        jacobian_segment(nn.ReLU(), u0, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="training mode"):
        piecewise_linear_segment(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), u0, u1)
    with pytest.raises(ValueError, match="shape"):
        induced_inf_norm(np.zeros(3))
    with pytest.raises(ValueError, match="rows"):
        affine_tail(np.eye(3), np.zeros(2))
    with pytest.raises(ValueError, match="n_theta"):
        jacobian_segment(nn.ReLU(), u0, u1, n_theta=0)
