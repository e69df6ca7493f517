"""Tests of mpprune.gate: the hard rules applied before a pruned model is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from certify_helpers import prune_one
from torch.utils.data import DataLoader

import mpprune
import mpprune.certify
from mpprune.certify import certify_layer
from mpprune.data import calibration_batches, mnist_digits
from mpprune.gate import Gate, GateLayer, GateResult
from mpprune.models import load_mnist_cnn
from mptheory.errors import BadInput


@pytest.fixture(scope="module")
def mnist():
    return load_mnist_cnn()


@pytest.fixture(scope="module")
def digits():
    return calibration_batches(mnist_digits("train"), 200, batch_size=100, seed=1)


def test_gate_names_are_one_object_everywhere():
    """mpprune.gate defines the gate; mpprune.certify and mpprune re-export the same objects."""
    assert mpprune.certify.Gate is Gate and mpprune.certify.GateLayer is GateLayer
    assert mpprune.certify.GateResult is GateResult and mpprune.Gate is Gate
    assert {"Gate", "GateLayer", "GateResult"} <= set(mpprune.certify.__all__) & set(dir(mpprune.certify))


def test_gate_backs_off_destructive_prune(mnist, digits):
    name = "fc_layers.2"
    pruned, masks = prune_one(mnist, name, 0.95)
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
    pruned, masks = prune_one(mnist, name, 0.1)
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


def test_gate_bad_inputs(mnist, digits):
    """Wrong calibration data and wrong settings are bad input (a ValueError), before any certificate."""
    val = mnist_digits("val")
    bad = digits[0][0][:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    pruned, masks = prune_one(mnist, "fc_layers.2", 0.5)
    with pytest.raises(BadInput, match="empty"):
        Gate().apply(mnist, pruned, masks, [])
    with pytest.raises(BadInput, match="train"):
        Gate().apply(mnist, pruned, masks, DataLoader(val, batch_size=50))
    with pytest.raises(BadInput, match="NaN"):
        Gate().apply(mnist, pruned, masks, [bad])
    with pytest.raises(BadInput, match="min_certified"):
        Gate(min_certified=1.5)
    with pytest.raises(BadInput, match="backoff"):
        Gate(backoff="half")
    with pytest.raises(BadInput, match="weight_decay"):
        Gate(elastic_net="weight_decay")
    with pytest.raises(BadInput, match="estimator"):
        Gate(estimator="magic")
    assert issubclass(BadInput, ValueError)
