"""Tests of the piecewise-linear search (mpprune.certify.pl_search) and its interval enclosures.

* the enclosure of the slope over a theta-interval is never below the slopes of a dense theta grid inside it
  nor below the realised chord (random small PL nets: ReLU, LeakyReLU, Hardtanh, ReLU6, MaxPool, BatchNorm,
  average pooling, residual adds, in-place switches);
* the search in exact mode returns the exact largest slope of ``pl_exact`` (same eta to float tolerance),
  first conv of the MNIST CNN included; with targets it is sound and decides every sample as the exact value
  does.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from certify_helpers import magnitude
from torch import nn

from mpprune.certify import certify_layer, pl_bound
from mpprune.certify.segment import Segment
from mpprune.data import calibration_batches, mnist_digits
from mpprune.models import load_mnist_cnn


class PLNet(nn.Module):
    """A small conv net with every switch and affine op the enclosure has a rule for."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 8)
        self.head = nn.Linear(8, 5)
        self.act = nn.ReLU(inplace=True)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)
            self.bn.running_mean.copy_(torch.randn(6, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn(self.c1(x)), 0.1)
        u = self.act(self.c2(h))  # in place
        h = F.max_pool2d(u + h, 2)  # residual add, then max pooling
        h = F.hardtanh(self.c3(h), -1.0, 1.5)
        h = F.avg_pool2d(h, 2)
        h = F.relu6(3 * self.fc(torch.flatten(h, 1)))
        return self.head(h)


def _grid_slopes(model: nn.Module, name: str, S: torch.Tensor, R: torch.Tensor, x: torch.Tensor,
                 theta: np.ndarray) -> np.ndarray:  # fmt: skip
    """Independent: ||z(t_{i+1}) - z(t_i)||_inf / (t_{i+1} - t_i) on a theta grid, shape (n - 1, B)."""
    m = copy.deepcopy(model).double().eval()
    mod = dict(m.named_modules())[name]
    zs = []
    with torch.no_grad():
        for t in theta:
            mod.weight.copy_(S.double() + float(t) * R.double())
            zs.append(m(x.double()).numpy())
    z = np.stack(zs)
    return np.abs(np.diff(z, axis=0)).max(axis=2) / np.diff(theta)[:, None]


def _enclosure_never_below_grid(n_grid: int, seeds: range) -> None:
    for seed in seeds:
        model = PLNet(seed).eval()
        x = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(100 + seed))
        rng = np.random.default_rng(seed)
        for name in ("c1", "c2", "c3", "fc"):
            W = dict(model.named_modules())[name].weight.detach()
            S = magnitude(W, float(rng.uniform(0.2, 0.8)))
            seg = Segment(model, name, S.double(), (W - S).double())
            seg.bind(x)
            for a, b in ((0.0, 1.0), tuple(np.sort(rng.uniform(0, 1, 2)))):
                m, d = np.full(5, 0.5 * (a + b)), np.full(5, 0.5 * (b - a))
                _, trace = seg.slope(m, breakpoints=True, delta=d)
                assert not trace.non_pl and trace.upper is not None
                upper = trace.upper.numpy()
                assert np.all(np.isfinite(upper)), (seed, name)
                theta = np.linspace(a, b, n_grid)
                grid = _grid_slopes(model, name, S, W - S, x, theta)
                # the grid is a finite difference: its own rounding is ~ eps |z| / step (z ~ 10 here)
                fd = 1e-9 + 1e3 * np.finfo(np.float64).eps / float(theta[1] - theta[0])
                assert np.all(grid <= upper[None, :] * (1 + 1e-9) + fd), (seed, name, a, b)
                chord = _grid_slopes(model, name, S, W - S, x, np.array([a, b]))[0]
                assert np.all(chord <= upper * (1 + 1e-9) + 1e-9)


def test_enclosure_never_below_theta_grid_fast():
    """The bound over [a, b] is >= every slope of a 2,001-point theta grid and the realised chord."""
    _enclosure_never_below_grid(2001, range(3))


@pytest.mark.slow
def test_enclosure_never_below_theta_grid():
    """As the fast twin, on a 10^4-point theta grid and more random nets."""
    _enclosure_never_below_grid(10_000, range(12))


def test_enclosure_is_exact_on_a_single_piece():
    """Over an interval inside one linear piece the bound is the piece's slope (no switch can occur)."""
    model = PLNet(0).eval()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    W = model.fc.weight.detach()
    S = magnitude(W, 0.5)
    seg = Segment(model, "fc", S.double(), (W - S).double())
    seg.bind(x)
    sl, trace = seg.slope(np.full(3, 0.5), breakpoints=True)
    half = 0.5 * np.minimum(trace.fwd.numpy(), trace.bwd.numpy())  # strictly inside the piece around 0.5
    sl2, trace2 = seg.slope(np.full(3, 0.5), breakpoints=True, delta=half)
    np.testing.assert_allclose(trace2.upper.numpy(), sl2.numpy(), rtol=1e-12)
    np.testing.assert_allclose(sl.numpy(), sl2.numpy(), rtol=1e-12)


def test_search_exact_mode_equals_pl_exact_and_targets_decide_as_exact():
    model = PLNet(1).eval()
    x = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    for name in ("c1", "c2", "fc"):
        W = dict(model.named_modules())[name].weight.detach()
        S = magnitude(W, 0.6)
        exact = certify_layer(model, name, S, [x], "pl_exact")
        seg = Segment(model, name, S.double(), (W - S).double())
        seg.bind(x)
        eta, probes, is_exact = pl_bound(seg, x, exact.removed_norm)
        np.testing.assert_allclose(eta, exact.eta, rtol=1e-9)
        assert is_exact.all() and np.all(probes >= 1)
        for frac in (0.5, 1.0, 2.0):
            target = frac * exact.eta + 1e-12 * (np.arange(6) % 2)  # some exactly at, some just above
            eta_t, _, ex_t = pl_bound(seg, x, exact.removed_norm, target=target, rel_tol=0.25)
            assert np.all(eta_t >= exact.eta * (1 - 1e-9))  # sound
            np.testing.assert_array_equal(eta_t < target, exact.eta < target)  # the same verdicts
            assert np.all(eta_t[~ex_t] <= np.maximum(target[~ex_t], 1.25 * exact.eta[~ex_t]) * (1 + 1e-9))


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_cnn()


@pytest.fixture(scope="module")
def digits():
    return calibration_batches(mnist_digits("train"), 200, batch_size=100, seed=1)


def _first_conv_equals_old_exact(mnist, digits, n: int, s: float) -> None:
    x = digits[0][0][:n]
    W = mnist.conv_layers[0].weight.detach()
    S = magnitude(W, s)
    old = certify_layer(mnist, "conv_layers.0", S, [x], "pl_exact")
    seg = Segment(mnist, "conv_layers.0", S.double(), (W - S).double())
    seg.bind(x)
    eta, probes, exact = pl_bound(seg, x, old.removed_norm)
    np.testing.assert_allclose(eta, old.eta, rtol=1e-9)
    assert exact.all() and np.all(old.pieces > 5)  # a real walk: several pieces per digit
    # with the dense margins as targets every digit is decided as the exact value decides it, in fewer probes
    t = old.margin / 2
    eta_t, probes_t, _ = pl_bound(seg, x, old.removed_norm, target=t)
    np.testing.assert_array_equal(eta_t < t, old.eta < t)
    assert np.all(eta_t >= old.eta * (1 - 1e-9)) and probes_t.sum() <= probes.sum()


def test_first_conv_search_equals_old_exact_fast(mnist, digits):
    """The first conv of the MNIST CNN: the search's exact mode equals the old exact walk (2 digits, 5 %)."""
    _first_conv_equals_old_exact(mnist, digits, 2, 0.05)


@pytest.mark.slow
def test_first_conv_search_equals_old_exact(mnist, digits):
    """As the fast twin, 4 digits at 20 % sparsity (hundreds of pieces per digit)."""
    _first_conv_equals_old_exact(mnist, digits, 4, 0.2)


def test_relu_enclosure_equals_the_general_switch_rule() -> None:
    """The ReLU shortcut of the enclosure is the general two-region switch rule (LeakyReLU with slope 0),
    bit for bit, and so are the breakpoints, on intervals wide enough that many units can switch."""
    torch.manual_seed(3)
    nets = []
    for act in (nn.ReLU(), nn.LeakyReLU(0.0)):
        torch.manual_seed(3)
        nets.append(
            nn.Sequential(nn.Linear(6, 40), act, nn.Linear(40, 30), copy.deepcopy(act), nn.Linear(30, 4))
        )
    x = torch.randn(16, 6, dtype=torch.float64)
    W = nets[0][0].weight.detach().double()
    S = magnitude(W, 0.5)
    theta = np.linspace(0.05, 0.95, 16)
    delta = np.full(16, 0.3)
    out = []
    for net in nets:
        seg = Segment(net, "0", S, W - S)
        seg.bind(x)
        sl, tr = seg.slope(theta, breakpoints=True, delta=delta)
        assert tr.upper is not None
        out.append((sl, tr.upper, tr.fwd, tr.bwd))
    assert bool(torch.isfinite(out[0][1]).all()) and bool((out[0][1] > out[0][0]).any())  # switches occur
    for a, b in zip(out[0], out[1], strict=True):
        assert torch.equal(a, b)
