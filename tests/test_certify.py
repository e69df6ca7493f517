"""Tests of mpprune.certify: capture, per-sample certificates on real models, the gate."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import mpprune.certify.estimators
from mpprune.certify import (
    Gate,
    NotPiecewiseLinear,
    ProbeBudgetExceeded,
    capture_covariance,
    capture_layer,
    certify,
    certify_layer,
)
from mpprune.data import calibration_batches, mnist_digits
from mpprune.masks import MaskStore
from mpprune.models import load_mnist_cnn, tiny_mlp
from mptheory.errors import Refusal
from mptheory.lipschitz import piecewise_linear_segment


def magnitude(W: torch.Tensor, s: float) -> torch.Tensor:
    k = int(W.numel() * s)
    thr = W.abs().flatten().kthvalue(k).values
    return torch.where(W.abs() > thr, W, torch.zeros_like(W))


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


def test_mnist_inner_convs_equal_independent_exact(mnist, digits):
    """pl_exact on the inner convs equals the independent layer-by-layer piece enumeration."""
    for name, n in (("conv_layers.6", 8), ("conv_layers.3", 2)):
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


def test_smooth_tail_falls_back_to_labelled_estimate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    x = torch.randn(10, 6)
    S = magnitude(model[0].weight.detach(), 0.5)
    with pytest.raises(NotPiecewiseLinear, match="gelu|layer_norm"):
        certify_layer(model, "0", S, [x], "pl_exact")
    c = certify_layer(model, "0", S, [x], "auto")
    assert c.estimator == "segment_max_slope" and c.sound is False
    assert any("fell back" in n for n in c.notes)
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
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["total"]["violations"] == 0 and d["layers"][0]["estimator"] == "pl_exact"
    md = rep.to_markdown()
    assert "fc_layers.0" in md and "pl_exact" in md and "total (D11)" in md


def _destroy(mnist, name, s):
    pruned = copy.deepcopy(mnist)
    mod = dict(pruned.named_modules())[name]
    with torch.no_grad():
        mod.weight.copy_(magnitude(mod.weight.detach(), s))
    masks = MaskStore()
    masks.add(name, mod, mod.weight.detach() != 0)
    return pruned, masks


def test_gate_backs_off_destructive_prune(mnist, digits):
    name = "fc_layers.2"
    pruned, masks = _destroy(mnist, name, 0.95)
    c0 = certify_layer(mnist, name, dict(pruned.named_modules())[name].weight.detach(), digits, "pl_exact")
    assert c0.certified_fraction < 0.99  # the prune is destructive
    gate = Gate(min_certified=0.99, estimator="pl_exact", max_bisect=5, final_report=False)
    res = gate.apply(mnist, pruned, masks, digits)
    gl = res.layer(name)
    assert gl.status in ("backed_off", "left_dense") and name in res.to_markdown()
    assert "certified fraction" in gl.reason
    Wf = dict(res.model.named_modules())[name].weight.detach()
    cf = certify_layer(mnist, name, Wf, digits, "pl_exact")
    assert cf.certified_fraction >= 0.99
    assert gl.sparsity_final < 0.95 and abs(gl.sparsity_final - float((Wf == 0).double().mean())) < 1e-12
    # restored entries are the largest removed |w| first; kept entries unchanged
    Wd = mnist.fc_layers[2].weight.detach()
    kept = Wf != 0
    assert torch.equal(Wf[kept], Wd[kept])
    if gl.status == "backed_off":
        restored = kept & ~masks[name].to(kept.device)
        still_removed = ~kept
        assert Wd[restored].abs().min() >= Wd[still_removed].abs().max()
    assert torch.equal(res.masks[name], Wf != 0)
    json.dumps(res.to_dict())
    # the input models were not modified
    assert float((dict(pruned.named_modules())[name].weight == 0).float().mean()) > 0.94


def test_gate_dense_backoff_and_prune_integration(mnist, digits):
    from mpprune.methods import Magnitude, prune

    gate = Gate(min_certified=0.999, backoff="dense", estimator="pl_exact", final_report=False)
    res = prune(mnist, Magnitude(0.95, scope="layer", include=["fc_layers.2"]), calibration=digits, gate=gate)
    gl = res.report.gate.layer("fc_layers.2")
    assert gl.status == "left_dense"
    assert torch.equal(res.model.fc_layers[2].weight, mnist.fc_layers[2].weight)
    assert json.loads(json.dumps(res.report.to_dict()))["gate"]["layers"][0]["status"] == "left_dense"


def test_gate_passes_mild_prune_and_elastic_net_rule(mnist, digits):
    name = "fc_layers.2"
    pruned, masks = _destroy(mnist, name, 0.1)
    ok = Gate(min_certified=0.9, estimator="pl_exact", final_report=True).apply(mnist, pruned, masks, digits)
    assert ok.layer(name).status == "passed" and ok.passed
    assert ok.report is not None and ok.report.layers[0].name == name
    c = ok.layer(name).certificate
    W = mnist.fc_layers[2].weight.detach().double()
    R = W - dict(pruned.named_modules())[name].weight.detach().double()
    assert c.r_fro2 == pytest.approx(float((R**2).sum()), rel=1e-12)
    assert c.budget == pytest.approx(2 * float(np.mean(c.eta)), rel=1e-12)
    # elastic net: lambda2 just above / below the threshold B_T / ||R||^2
    lam = c.budget / c.r_fro2
    g_hi = Gate(
        min_certified=0.9,
        elastic_net=(0.0, 1.01 * lam),
        estimator="pl_exact",
        backoff="dense",
        final_report=False,
    )
    assert g_hi.apply(mnist, pruned, masks, digits).layer(name).status == "passed"
    g_lo = Gate(
        min_certified=0.9,
        elastic_net=(0.0, 0.99 * lam),
        estimator="pl_exact",
        backoff="dense",
        final_report=False,
    )
    v = g_lo.apply(mnist, pruned, masks, digits).layer(name)
    assert v.status == "left_dense" and "D5" in v.reason
    wd = Gate(elastic_net="weight_decay", weight_decay=0.2)
    assert wd.lambdas() == (0.0, 0.1)


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
    S = magnitude(mnist.fc_layers[2].weight.detach(), 0.5)
    with pytest.raises(ValueError, match="empty"):
        certify_layer(mnist, "fc_layers.2", S, [], "pl_exact")
    val = mnist_digits("val")
    with pytest.raises(ValueError, match="train"):
        certify_layer(mnist, "fc_layers.2", S, DataLoader(val, batch_size=50), "pl_exact")
    bad = digits[0][0][:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        certify_layer(mnist, "fc_layers.2", S, [bad], "pl_exact")
    with pytest.raises(ValueError, match="estimator"):
        certify_layer(mnist, "fc_layers.2", S, digits, "magic")
    with pytest.raises(ValueError, match="shape"):
        certify_layer(mnist, "fc_layers.2", S[:, :5], digits, "pl_exact")
    pruned, masks = _destroy(mnist, "fc_layers.2", 0.5)
    with pytest.raises(ValueError, match="empty"):
        Gate().apply(mnist, pruned, masks, [])
    with pytest.raises(ValueError, match="train"):
        Gate().apply(mnist, pruned, masks, DataLoader(val, batch_size=50))
    with pytest.raises(ValueError, match="NaN"):
        Gate().apply(mnist, pruned, masks, [bad])
    with pytest.raises(ValueError, match="min_certified"):
        Gate(min_certified=1.5)
    with pytest.raises(ValueError, match="backoff"):
        Gate(backoff="half")
    with pytest.raises(ValueError, match="weight_decay"):
        Gate(elastic_net="weight_decay")
