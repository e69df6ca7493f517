"""Tests of mpprune.certify: capture, the L_s estimators, per-sample certificates on real models, D11.

The gate is tested in test_gate.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from certify_helpers import magnitude
from torch import nn
from torch.utils.data import DataLoader

import mpprune.certify.estimators
from mpprune.certify import (
    ESTIMATORS,
    NotPiecewiseLinear,
    ProbeBudgetExceeded,
    capture_covariance,
    capture_layer,
    certify,
    certify_layer,
)
from mpprune.data import calibration_batches, mnist_digits
from mpprune.models import load_mnist_cnn, tiny_mlp
from mptheory.certificates import certified_samples, prediction_margin
from mptheory.errors import EXIT_REFUSED, BadInput, LimitExceeded, Refusal, exit_code
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS
from mptheory.lipschitz import piecewise_linear_segment


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_cnn()


@pytest.fixture(scope="module")
def digits():
    return calibration_batches(mnist_digits("train"), 200, batch_size=100, seed=1)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _fd_slopes(model: nn.Module, name: str, S: torch.Tensor, R: torch.Tensor, x: torch.Tensor, n: int):
    """Independent: finite-difference slopes ||z(t_{i+1}) - z(t_i)||_inf / h on a theta grid."""
    m = copy.deepcopy(model).double()
    mod = dict(m.named_modules())[name]
    th = np.linspace(0, 1, n)
    zs = []
    with torch.no_grad():
        for t in th:
            mod.weight.copy_(S.double() + float(t) * R.double())
            zs.append(m(x.double()).numpy())
    z = np.stack(zs)
    return np.abs(np.diff(z, axis=0)).max(axis=2) / (th[1] - th[0])  # (n-1, B)


def test_pl_exact_bounds_and_matches_finite_differences():
    model = SmallCNN().eval()
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("c1", "c2"):
        W = dict(model.named_modules())[name].weight.detach()
        S = magnitude(W, 0.6)
        c = certify_layer(model, name, S, [x], "pl_exact")
        assert c.estimator == "pl_exact" and c.sound
        fd = _fd_slopes(model, name, S, W - S, x, 2001)
        assert np.all(fd <= c.eta[None, :] * (1 + 1e-7) + 1e-9)
        np.testing.assert_allclose(fd.max(axis=0), c.eta, rtol=0.03)
        assert c.pieces is not None and np.all(c.pieces >= 1)


def test_mnist_sound_estimators_bound_realised_change(mnist, digits):
    for name in ("fc_layers.0", "fc_layers.2"):
        W = dict(mnist.named_modules())[name].weight.detach()
        S = magnitude(W, 0.5)
        for est in ("pl_exact", "product_norm", "auto"):
            c = certify_layer(mnist, name, S, digits, est)
            assert c.sound and c.estimator in ("pl_exact", "product_norm")
            assert c.n_samples == 200
            assert c.violations == 0
            assert np.all(c.realised <= c.eta * (1 + 1e-7) + 1e-9)
            assert not np.any(c.flipped & c.certified)  # certified samples never flip
            assert abs(c.sparsity - 0.5) < 1e-3
        # independent brute force of ||R psi_1||_inf and the dense margins
        cap = capture_layer(mnist, name, digits, W - S)
        np.testing.assert_allclose(cap.removed_norm, c.removed_norm, rtol=1e-5)
        top = np.sort(cap.logits, axis=1)
        np.testing.assert_allclose(top[:, -1] - top[:, -2], c.margin, rtol=1e-4, atol=1e-4)


def test_mnist_pl_exact_equals_independent_exact_and_beats_product(mnist, digits):
    x = digits[0][0][:40]
    fc = mnist.fc_layers[0]
    S = magnitude(fc.weight.detach(), 0.5)
    c = certify_layer(mnist, "fc_layers.0", S, [x], "pl_exact")
    with torch.no_grad():
        h = torch.flatten(mnist.conv_layers(x.double().float()), 1).double()
        u1 = F.linear(h, fc.weight.double(), fc.bias.double())
        u0 = F.linear(h, S.double(), fc.bias.double())
    ref = piecewise_linear_segment(list(mnist.fc_layers[1:]), u0, u1)
    nr = (u1 - u0).abs().amax(1).numpy()
    np.testing.assert_allclose(c.eta, ref.values * nr, rtol=1e-5)
    p = certify_layer(mnist, "fc_layers.0", S, [x], "product_norm")
    assert np.all(p.eta >= c.eta * (1 - 1e-9))
    expected_L = float(mnist.fc_layers[2].weight.detach().double().abs().sum(1).max())
    np.testing.assert_allclose(p.L[nr > 0], expected_L, rtol=1e-9)


def test_mnist_conv_pl_exact_sound(mnist, digits):
    x = digits[0][0][:12]
    W = mnist.conv_layers[6].weight.detach()
    S = magnitude(W, 0.5)
    c = certify_layer(mnist, "conv_layers.6", S, [x], "auto")
    assert c.estimator == "pl_exact" and c.sound
    assert c.violations == 0
    e = certify_layer(mnist, "conv_layers.6", S, [x], "segment_max_slope")
    assert e.estimator == "segment_max_slope" and not e.sound
    assert np.all(e.eta <= c.eta * (1 + 1e-9))  # grid slopes never exceed the exact max slope


def test_auto_probe_budget_falls_back_to_labelled_estimate(mnist, digits, monkeypatch):
    """Past its probe budget "auto" reports the labelled estimate (and why); explicit pl_exact raises."""
    x = digits[0][0][:6]
    S = magnitude(mnist.conv_layers[6].weight.detach(), 0.5)
    exact = certify_layer(mnist, "conv_layers.6", S, [x], "pl_exact")
    assert exact.pieces is not None and int(np.max(exact.pieces)) > 3  # the budget below really binds
    monkeypatch.setattr(mpprune.certify.estimators, "AUTO_MAX_PROBES", 3)
    c = certify_layer(mnist, "conv_layers.6", S, [x, x], "auto")
    assert c.estimator == "segment_max_slope" and not c.sound
    assert any("max_probes=3" in n for n in c.notes)
    assert np.all(c.eta[:6] <= exact.eta * (1 + 1e-9))  # grid slopes never exceed the exact max slope
    with pytest.raises(ProbeBudgetExceeded, match="conv_layers.6"):
        certify_layer(mnist, "conv_layers.6", S, [x], "pl_exact", max_probes=3)
    monkeypatch.setattr(mpprune.certify.estimators, "AUTO_MAX_PROBES", 10_000)
    again = certify_layer(mnist, "conv_layers.6", S, [x, x], "auto")  # two batches, both exact
    assert again.estimator == "pl_exact" and again.sound
    np.testing.assert_allclose(again.eta[6:], exact.eta, rtol=1e-12)


def _inner_convs_equal_independent_exact(mnist, digits, cases):
    for name, n in cases:
        x = digits[0][0][:n]
        k = int(name.split(".")[1])
        conv = mnist.conv_layers[k]
        S = magnitude(conv.weight.detach(), 0.5)
        c = certify_layer(mnist, name, S, [x], "pl_exact")
        with torch.no_grad():
            h = mnist.conv_layers[:k](x).double()
            u1 = F.conv2d(h, conv.weight.double(), conv.bias.double(), padding=1)
            u0 = F.conv2d(h, S.double(), conv.bias.double(), padding=1)
        tail = [*mnist.conv_layers[k + 1 :], nn.Flatten(), *mnist.fc_layers]
        ref = piecewise_linear_segment(tail, u0, u1)
        nr = (u1 - u0).abs().flatten(1).amax(1).numpy()
        np.testing.assert_allclose(c.removed_norm, nr, rtol=1e-6)
        np.testing.assert_allclose(c.eta, ref.values * nr, rtol=1e-6)
        assert c.violations == 0 and np.all(c.pieces > 5)  # several pieces per sample: a real test


def test_mnist_inner_convs_equal_independent_exact_fast(mnist, digits):
    """pl_exact on the inner convs equals the independent layer-by-layer piece enumeration (few samples)."""
    _inner_convs_equal_independent_exact(mnist, digits, (("conv_layers.6", 2), ("conv_layers.3", 1)))


@pytest.mark.slow
def test_mnist_inner_convs_equal_independent_exact(mnist, digits):
    """pl_exact on the inner convs equals the independent layer-by-layer piece enumeration."""
    _inner_convs_equal_independent_exact(mnist, digits, (("conv_layers.6", 8), ("conv_layers.3", 2)))


def test_lockstep_batch_equals_one_sample_at_a_time(mnist, digits):
    """Samples advanced together (with masking and re-binding) give exactly the per-sample results."""
    x = digits[0][0][:8]
    S = magnitude(mnist.conv_layers[6].weight.detach(), 0.5)
    c = certify_layer(mnist, "conv_layers.6", S, [x], "pl_exact")
    singles = certify_layer(mnist, "conv_layers.6", S, [x[i : i + 1] for i in range(8)], "pl_exact")
    assert len(set(c.pieces.tolist())) > 1  # unequal piece counts: masking and re-binding are exercised
    np.testing.assert_array_equal(c.pieces, singles.pieces)
    np.testing.assert_allclose(c.eta, singles.eta, rtol=1e-12)
    np.testing.assert_allclose(c.margin, singles.margin, rtol=1e-12)
    np.testing.assert_allclose(c.realised, singles.realised, rtol=1e-12)


class SharedParts(nn.Module):
    """A shared in-place ReLU before and after the layer, a skip from the prefix, an optional second call."""

    def __init__(self, twice: bool) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.pre, self.mid, self.skip, self.head = (
            nn.Linear(6, 8),
            nn.Linear(8, 8),
            nn.Linear(6, 8),
            nn.Linear(8, 3),
        )
        self.act = nn.ReLU(inplace=True)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.pre(x))
        s = self.skip(x)
        u = self.mid(h)
        if self.twice:
            u = self.mid(self.act(u))
        return self.head(self.act(u + s))


@pytest.mark.parametrize("twice", [False, True])
def test_cached_prefix_with_shared_modules_matches_finite_differences(twice):
    model = SharedParts(twice).eval()
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(2))
    W = model.mid.weight.detach()
    S = magnitude(W, 0.5)
    fd = _fd_slopes(model, "mid", S, W - S, x, 4001)
    if twice:  # z is quadratic in theta on each piece: no pl_exact, the labelled grid estimate instead
        with pytest.raises(NotPiecewiseLinear, match="own output"):
            certify_layer(model, "mid", S, [x], "pl_exact")
        with pytest.raises(Refusal, match="called 2 times"):
            certify_layer(model, "mid", S, [x], "product_norm")
        e = certify_layer(model, "mid", S, [x], "auto")
        assert e.estimator == "segment_max_slope" and not e.sound
        assert np.all(e.eta <= fd.max(axis=0) * (1 + 1e-3) + 1e-9)
        assert np.all(e.eta >= 0.5 * fd.max(axis=0))
        return
    c = certify_layer(model, "mid", S, [x], "pl_exact")
    assert np.all(fd <= c.eta[None, :] * (1 + 1e-7) + 1e-9)
    np.testing.assert_allclose(fd.max(axis=0), c.eta, rtol=0.03)
    z = model(x).detach().double()
    np.testing.assert_allclose(
        np.sort(z.numpy(), 1)[:, -1] - np.sort(z.numpy(), 1)[:, -2], c.margin, rtol=1e-5
    )
    assert c.violations == 0


def test_smooth_tail_gets_the_sound_taylor_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    x = torch.randn(10, 6)
    S = magnitude(model[0].weight.detach(), 0.5)
    with pytest.raises(NotPiecewiseLinear, match="gelu|layer_norm"):
        certify_layer(model, "0", S, [x], "pl_exact")
    c = certify_layer(model, "0", S, [x], "auto")
    assert c.estimator == "taylor_bound" and c.sound  # auto: pl_exact refused, then the sound smooth bound
    assert any("taylor_bound" in n for n in c.notes)
    est = certify_layer(model, "0", S, [x], "segment_max_slope")  # the estimate stays available, labelled
    assert est.sound is False
    assert np.all(c.L >= est.L * (1 - 1e-9))  # a sound bound is never below the sampled slope
    with pytest.raises(Refusal, match="product_norm"):
        certify_layer(model, "0", S, [x], "product_norm")


def test_residual_tail_pl_exact_but_no_product():
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.h = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)

        def forward(self, x):
            u = self.a(x)
            return self.h(F.relu(u + F.relu(self.b(u))))

    torch.manual_seed(1)
    model = Res().eval()
    x = torch.randn(9, 5)
    S = magnitude(model.a.weight.detach(), 0.5)
    c = certify_layer(model, "a", S, [x], "auto")
    assert c.estimator == "pl_exact" and c.violations == 0
    fd = _fd_slopes(model, "a", S, model.a.weight.detach() - S, x, 2001)
    assert np.all(fd <= c.eta[None, :] * (1 + 1e-7) + 1e-9)
    with pytest.raises(Refusal, match="residual"):
        certify_layer(model, "a", S, [x], "product_norm")


def test_multilayer_total_d11_and_report(mnist, digits):
    pruned = copy.deepcopy(mnist)
    with torch.no_grad():
        for m in (pruned.fc_layers[0], pruned.fc_layers[2]):
            m.weight.copy_(magnitude(m.weight.detach(), 0.5))
    rep = certify(mnist, pruned, digits, estimator="pl_exact")
    assert [lc.name for lc in rep.layers] == ["fc_layers.0", "fc_layers.2"]
    assert rep.sound
    assert np.all(rep.realised_total <= rep.eta_total * (1 + 1e-7) + 1e-9)
    assert not np.any(rep.flipped_total & (rep.margin > 2 * rep.eta_total))
    # margins and certified sets are those of mptheory.certificates, from independently computed logits
    m64 = copy.deepcopy(mnist).double().eval()
    with torch.no_grad():
        z = torch.cat([m64(x.double()) for x, _ in digits]).numpy()
    np.testing.assert_array_equal(rep.certified, certified_samples(z, rep.eta_total))
    np.testing.assert_allclose(rep.margin, prediction_margin(z), rtol=1e-12, atol=1e-12)
    assert rep.certified_fraction == float(np.mean(rep.margin > 2 * rep.eta_total))
    for lc in rep.layers:
        np.testing.assert_array_equal(lc.certified, lc.margin > 2 * lc.eta)
        assert lc.budget == 2 * float(np.mean(lc.eta))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["total"]["violations"] == 0 and d["layers"][0]["estimator"] == "pl_exact"
    md = rep.to_markdown()
    assert "fc_layers.0" in md and "pl_exact" in md and "total (D11)" in md


def test_capture_covariance_matches_brute_force():
    torch.manual_seed(0)
    mlp = tiny_mlp((12, 8, 4))
    xs = [torch.randn(7, 12), torch.randn(5, 12)]
    sm = capture_covariance(mlp, "0", xs, group_size=4)
    X = torch.cat(xs).double()
    full = X.T @ X / X.shape[0]
    for g in range(3):
        np.testing.assert_allclose(
            sm.mean()[g].numpy(), full[4 * g : 4 * g + 4, 4 * g : 4 * g + 4].numpy(), rtol=1e-10
        )
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).eval()
    xc = torch.randn(3, 2, 5, 5)
    smc = capture_covariance(conv, "0", [xc])
    P = np.stack(
        [
            xc[b, :, i : i + 3, j : j + 3].reshape(-1).double().numpy()
            for b in range(3)
            for i in range(3)
            for j in range(3)
        ]
    )  # interior patches
    assert smc.count == 3 * 25
    cols = F.unfold(xc.double(), 3, padding=1).transpose(1, 2).reshape(-1, 18).numpy()
    np.testing.assert_allclose(smc.mean()[0].numpy(), cols.T @ cols / 75, rtol=1e-10)
    assert any(np.allclose(P[0], c) for c in cols)  # unfold order is channel-major patches
    with pytest.raises(ValueError, match="group_size"):
        capture_covariance(mlp, "0", xs, group_size=5)


def test_bad_inputs(mnist, digits):
    """Wrong input is BadInput (a ValueError, exit code 2): empty or validation calibration, NaN, an unknown
    estimator or layer, a pruned weight of the wrong shape."""
    S = magnitude(mnist.fc_layers[2].weight.detach(), 0.5)
    with pytest.raises(BadInput, match="empty"):
        certify_layer(mnist, "fc_layers.2", S, [], "pl_exact")
    val = mnist_digits("val")
    with pytest.raises(BadInput, match="train"):
        certify_layer(mnist, "fc_layers.2", S, DataLoader(val, batch_size=50), "pl_exact")
    bad = digits[0][0][:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(BadInput, match="NaN"):
        certify_layer(mnist, "fc_layers.2", S, [bad], "pl_exact")
    with pytest.raises(BadInput, match="estimator"):
        certify_layer(mnist, "fc_layers.2", S, digits, "magic")
    with pytest.raises(BadInput, match="shape"):
        certify_layer(mnist, "fc_layers.2", S[:, :5], digits, "pl_exact")
    with pytest.raises(BadInput, match="no_such_layer"):
        certify_layer(mnist, "no_such_layer", S, digits, "pl_exact")
    with pytest.raises(BadInput, match="not found"):
        certify(mnist, mnist, digits, layers=["no_such_layer"])
    assert issubclass(BadInput, ValueError)


def test_estimator_names_and_soundness_come_from_mptheory():
    """The engine's estimators are named and labelled sound / estimate by mptheory.lipschitz.ESTIMATORS."""
    assert ESTIMATORS[0] == "auto" and len(set(ESTIMATORS)) == len(ESTIMATORS)
    assert set(ESTIMATORS[1:]) <= set(LIPSCHITZ_ESTIMATORS)
    assert ESTIMATORS == ("auto", *mpprune.certify.estimators.ENGINE_ESTIMATORS)
    torch.manual_seed(0)
    model = tiny_mlp((6, 8, 3)).eval()
    x = torch.randn(5, 6)
    S = magnitude(model[0].weight.detach(), 0.5)
    for est in ESTIMATORS[1:]:
        c = certify_layer(model, "0", S, [x], est)
        assert c.estimator == est and c.sound is LIPSCHITZ_ESTIMATORS[est].sound
    assert not LIPSCHITZ_ESTIMATORS["segment_max_slope"].sound  # the estimate is labelled as such


def test_limits_and_refusals_are_not_bad_input():
    """A probe budget exceeded is a computational limit, a non-PL tail a refusal (exit 3): not bad input."""
    assert issubclass(ProbeBudgetExceeded, LimitExceeded) and issubclass(NotPiecewiseLinear, Refusal)
    for exc_type in (ProbeBudgetExceeded, NotPiecewiseLinear):
        assert not issubclass(exc_type, ValueError)
        assert exit_code(exc_type("x")) == EXIT_REFUSED
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(3, 1, 8, 8)
    S = magnitude(model.c1.weight.detach(), 0.6)
    with pytest.raises(ProbeBudgetExceeded, match="max_probes=1") as info:
        certify_layer(model, "c1", S, [x], "pl_exact", max_probes=1)
    assert exit_code(info.value) == EXIT_REFUSED
