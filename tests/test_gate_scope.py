"""Tests of the gate's scopes (mpprune.gate): the model-scope gate certifies the model it writes.

* over many random prunes of small PL nets (and the MNIST CNN), the model-scope gate never passes a model
  whose realised flips on the calibration set exceed what its certified fraction allows: no certified
  sample flips, and a model the gate says it certifies flips on at most ``(1 - min_certified) n`` samples;
  the realised change (computed here, independently of the engine) never exceeds the certified total, and
  an exact D11 chain of the written model (``certify`` with ``pl_exact``) certifies at least as much;
* ``scope="layer"`` keeps the per-layer rule and says in every report that it does not certify the shipped
  model; every report line says ``sound`` or ``ESTIMATE``;
* :func:`~mpprune.gate.allocate_shares` gives shares that sum to 1 and back off the largest spenders.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from certify_helpers import magnitude
from torch import nn

from mpprune.certify import certify
from mpprune.data import calibration_batches, mnist_digits
from mpprune.gate import SCOPES, Gate, allocate_shares
from mpprune.masks import MaskStore
from mpprune.models import load_mnist_cnn
from mptheory.errors import BadInput


class SmallNet(nn.Module):
    """A random small PL net: conv, ReLU, max pool, two linear layers."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 3 * 3, 12)
        self.fc2 = nn.Linear(12, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = torch.nn.functional.max_pool2d(h, 2)
        h = torch.relu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h)


def _random_prune(
    model: nn.Module, names: list[str], rng: np.random.Generator
) -> tuple[nn.Module, MaskStore]:
    pruned = copy.deepcopy(model)
    mods = dict(pruned.named_modules())
    masks = MaskStore()
    for n in names:
        with torch.no_grad():
            mods[n].weight.copy_(magnitude(mods[n].weight.detach(), float(rng.uniform(0.1, 0.9))))
        masks.add(n, mods[n], mods[n].weight.detach() != 0)
    return pruned, masks


def _independent_flips(
    dense: nn.Module, gated: nn.Module, batches: list[torch.Tensor]
) -> tuple[np.ndarray, ...]:
    """Realised ``||z_gated - z_dense||_inf`` and flips per sample, run here in float64."""
    d, g = copy.deepcopy(dense).double().eval(), copy.deepcopy(gated).double().eval()
    real, flip = [], []
    with torch.no_grad():
        for x in batches:
            zd, zg = d(x.double()), g(x.double())
            real.append((zg - zd).abs().amax(1).numpy())
            flip.append((zg.argmax(1) != zd.argmax(1)).numpy())
    return np.concatenate(real), np.concatenate(flip)


def _check_model_scope(
    dense: nn.Module, pruned: nn.Module, masks: MaskStore, batches: list, gate: Gate
) -> Any:
    res = gate.apply(dense, pruned, masks, batches)
    n = sum(int(x.shape[0]) for x in batches)
    real, flip = _independent_flips(dense, res.model, batches)
    if res.report is None:  # nothing stays pruned: the model is the dense one
        assert all(gl.status == "left_dense" for gl in res.layers)
        assert not flip.any() and np.all(real == 0)
        return res
    rep = res.report
    assert rep.sound and rep.label == "sound"
    assert np.array_equal(rep.flipped_total, flip)
    np.testing.assert_allclose(rep.realised_total, real, rtol=1e-9, atol=1e-12)
    # the certified total bounds the realised change, and no certified sample flips
    assert np.all(real <= rep.eta_total * (1 + 1e-9) + 1e-12)
    assert not np.any(rep.certified & flip)
    assert int(flip.sum()) <= n - int(rep.certified.sum())
    if res.certifies_model:
        assert int(flip.sum()) <= math.floor((1 - gate.min_certified) * n + 1e-9)
        # an exact chain of the written model in the same order certifies at least as many samples
        exact = certify(dense, res.model, batches, [c.name for c in rep.layers], "pl_exact", progress=False)
        assert exact.certified_fraction >= rep.certified_fraction - 1e-12
        assert np.all(exact.eta_total <= rep.eta_total * (1 + 1e-9) + 1e-12)
    for gl in res.layers:  # backed-off layers restore removed weights only, never change kept ones
        W = dict(res.model.named_modules())[gl.name].weight.detach()
        Wd = dict(dense.named_modules())[gl.name].weight.detach()
        assert torch.equal(W[W != 0], Wd[W != 0])
    return res


def _small_net_sweep(seeds: range) -> int:
    n_certified = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        model = SmallNet(seed).eval()
        batches = [torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(50 + seed))]
        names = [n for n in ("c1", "fc1", "fc2") if rng.random() < 0.8] or ["fc1"]
        pruned, masks = _random_prune(model, names, rng)
        gate = Gate(min_certified=float(rng.choice([0.5, 0.75, 0.9])), max_bisect=4, progress=False)
        res = _check_model_scope(model, pruned, masks, batches, gate)
        n_certified += int(res.certifies_model)
    return n_certified


def test_model_scope_never_passes_more_flips_than_certified_fast():
    """Random prunes of small PL nets: the written model's flips are within its certified fraction."""
    assert _small_net_sweep(range(6)) >= 1  # the property was exercised on certified models


@pytest.mark.slow
def test_model_scope_never_passes_more_flips_than_certified():
    """As the fast twin, over 40 random nets and prunes."""
    assert _small_net_sweep(range(40)) >= 10


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_cnn()


@pytest.fixture(scope="module")
def digits():
    return [x for x, _ in calibration_batches(mnist_digits("train"), 48, batch_size=48, seed=3)]


def test_model_scope_on_the_mnist_cnn(mnist, digits):
    """The MNIST CNN, its last conv and the fc layers pruned at random: the model-scope gate's written model
    is certified on at least min_certified of the digits and flips none of them that it certifies."""
    rng = np.random.default_rng(0)
    names = ["conv_layers.6", "fc_layers.0", "fc_layers.2"]
    names = [n for n in names if n in dict(mnist.named_modules())]
    pruned, masks = _random_prune(mnist, names, rng)
    res = _check_model_scope(
        mnist, pruned, masks, digits, Gate(min_certified=0.9, max_bisect=4, progress=False)
    )
    assert res.certifies_model and res.scope == "model"
    assert res.certified_fraction is not None and res.certified_fraction >= 0.9
    assert "whole model" in res.summary_line() and "sound" in res.summary_line()


def test_layer_scope_is_labelled_as_not_certifying_the_shipped_model():
    model = SmallNet(3).eval()
    batches = [torch.randn(12, 1, 6, 6, generator=torch.Generator().manual_seed(9))]
    pruned, masks = _random_prune(model, ["c1", "fc1", "fc2"], np.random.default_rng(3))
    res = Gate(min_certified=0.5, scope="layer", progress=False).apply(model, pruned, masks, batches)
    assert res.scope == "layer" and "NOT certify the shipped model" in res.summary_line()
    assert all("NOT certify the shipped model" in gl.reason for gl in res.layers)
    md = res.to_markdown()
    assert "NOT certify the shipped model" in md
    d = json.loads(json.dumps(res.to_dict()))
    assert d["scope"] == "layer" and "NOT" in d["whole_model"]["summary"]
    assert d["whole_model"]["flips"] == res.flips and d["whole_model"]["label"] in ("sound", "ESTIMATE")
    # per-layer and whole-model rows carry the label
    assert res.report is not None
    table = [ln for ln in res.report.to_markdown().splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(table) == len(res.report.layers) + 2  # header, layers, total
    assert all(("sound" in ln or "ESTIMATE" in ln) for ln in table[1:])
    gate_rows = [
        ln for ln in md.splitlines() if ln.startswith("| ") and any(gl.name in ln for gl in res.layers)
    ]
    assert gate_rows and all(("sound" in ln or "ESTIMATE" in ln) for ln in gate_rows)


def test_an_estimate_is_labelled_in_every_line():
    model = SmallNet(4).eval()
    batches = [torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))]
    pruned, masks = _random_prune(model, ["fc1", "fc2"], np.random.default_rng(4))
    res = Gate(min_certified=0.0, estimator="segment_max_slope", progress=False).apply(
        model, pruned, masks, batches
    )
    assert res.report is not None and not res.report.sound and res.report.label == "ESTIMATE"
    assert "ESTIMATE" in res.summary_line() and not res.certifies_model
    assert all(gl.label == "ESTIMATE" for gl in res.layers if gl.status != "left_dense")


def test_scope_is_checked_and_shares_back_off_the_top_spenders():
    assert SCOPES == ("model", "layer") and Gate().scope == "model"
    with pytest.raises(BadInput, match="scope"):
        Gate(scope="everything")
    share = allocate_shares(np.array([0.01, 0.02, 0.9]))
    assert share.sum() == pytest.approx(1.0) and np.all(share > 0)
    # the small spenders keep (a little more than) what they spend; the top spender takes the rest
    assert share[0] >= 0.01 and share[1] >= 0.02 and share[2] == pytest.approx(1 - share[0] - share[1])
    assert np.all(allocate_shares(np.zeros(3)) == pytest.approx(1 / 3))
