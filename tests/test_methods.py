"""Pruning methods: exact sparsity, SEB weighting, σ₊ by module identity, ClassicalRMT, SER, Hybrid."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpprune.masks import check_legal, sparsity
from mpprune.methods import SEB, SER, ClassicalRMT, Hybrid, Magnitude, prune
from mptheory.fit import fit_mp

# ------------------------------------------------------------------------------------------------
# small models
# ------------------------------------------------------------------------------------------------


def mlp(seed: int, widths: tuple[int, ...] = (24, 32, 20, 5)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def convnet(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 5),
    )


def target_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def n_params(model: nn.Module) -> int:
    return sum(w.numel() for w in target_weights(model))


def n_zeros(model: nn.Module) -> int:
    return sum(int((w == 0).sum()) for w in target_weights(model))


class Split(list):
    """A list of batches carrying a ``.split`` attribute."""

    def __init__(self, items: list, split: str) -> None:
        super().__init__(items)
        self.split = split


def batches(in_dim: int, n: int = 3, k: int = 5, seed: int = 0, split: str = "train") -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split([(torch.randn(16, in_dim, generator=g), torch.randint(0, k, (16,), generator=g))
                  for _ in range(n)], split)


models = st.sampled_from(["mlp", "conv"])
sparsities = st.floats(0.0, 0.97, allow_nan=False)


def build(kind: str, seed: int) -> nn.Module:
    return mlp(seed) if kind == "mlp" else convnet(seed)


# ------------------------------------------------------------------------------------------------
# Magnitude
# ------------------------------------------------------------------------------------------------


@given(models, sparsities, st.integers(0, 1000))
def test_global_magnitude_exact_and_smallest(kind: str, s: float, seed: int) -> None:
    model = build(kind, seed)
    res = prune(model, Magnitude(s), progress=False)
    n = n_params(model)
    assert n_zeros(res.model) == math.floor(s * n)
    assert res.report.total_zeros == math.floor(s * n) and res.report.total == n
    assert sparsity(res.masks).total_zeros == math.floor(s * n)
    # brute force: every pruned |w| is <= every kept |w| (in the dense model)
    dense = torch.cat([w.abs().reshape(-1) for w in target_weights(model)])
    kept = torch.cat([w.reshape(-1) != 0 for w in target_weights(res.model)])
    if 0 < kept.sum() < n:
        assert dense[~kept].max() <= dense[kept].min()
    check_legal(res.masks, res.model)


@given(models, sparsities, st.integers(0, 1000))
def test_layer_magnitude_exact_per_layer(kind: str, s: float, seed: int) -> None:
    model = build(kind, seed)
    res = prune(model, Magnitude(s, scope="layer"), progress=False)
    for w in target_weights(res.model):
        assert int((w == 0).sum()) == math.floor(s * w.numel())


def test_magnitude_ties_are_deterministic_by_position() -> None:
    model = mlp(0)
    with torch.no_grad():
        for w in target_weights(model):
            w.fill_(0.5)
    n = n_params(model)
    r1 = prune(model, Magnitude(0.37), progress=False)
    r2 = prune(model, Magnitude(0.37), progress=False)
    flat1 = torch.cat([w.reshape(-1) == 0 for w in target_weights(r1.model)])
    flat2 = torch.cat([w.reshape(-1) == 0 for w in target_weights(r2.model)])
    k = math.floor(0.37 * n)
    assert torch.equal(flat1, flat2) and int(flat1.sum()) == k
    assert flat1[:k].all() and not flat1[k:].any()  # first k positions in layer order


def test_include_restricts_the_targets() -> None:
    model = mlp(1)
    res = prune(model, Magnitude(0.5, include=["2"]), progress=False)
    assert [lr.name for lr in res.report.layers] == ["2"]
    assert int((res.model[2].weight == 0).sum()) == math.floor(0.5 * res.model[2].weight.numel())
    assert torch.equal(res.model[0].weight, model[0].weight)
    with pytest.raises(ValueError, match="not found"):
        Magnitude(0.5, include=["nope"]) and prune(model, Magnitude(0.5, include=["nope"]))


# ------------------------------------------------------------------------------------------------
# SEB
# ------------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(models, sparsities, st.integers(0, 1000))
def test_seb_exact_sparsity(kind: str, s: float, seed: int) -> None:
    model = build(kind, seed)
    res = prune(model, SEB(s), progress=False)
    assert n_zeros(res.model) == math.floor(s * n_params(model))
    check_legal(res.masks, res.model)


@settings(max_examples=10)
@given(st.floats(0.01, 0.95), st.integers(0, 1000))
def test_seb_strength_zero_is_global_magnitude(s: float, seed: int) -> None:
    model = mlp(seed)
    a = prune(model, SEB(s, strength=0.0), progress=False)
    b = prune(model, Magnitude(s), progress=False)
    for wa, wb in zip(target_weights(a.model), target_weights(b.model)):
        assert torch.equal(wa, wb)


class Planted(nn.Module):
    """Three 64x64 layers with different noise levels (not a chain; forward is a sum)."""

    def __init__(self, scales: tuple[float, ...], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(64, 64, bias=False) for _ in scales)
        with torch.no_grad():
            for lin, sc in zip(self.layers, scales):
                lin.weight.copy_(sc * torch.randn(64, 64, generator=g) / 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(lin(x) for lin in self.layers)  # type: ignore[return-value]


@pytest.mark.parametrize("s", [0.3, 0.5])
def test_seb_prunes_high_sigma_plus_layers_more(s: float) -> None:
    model = Planted((0.5, 1.0, 2.0))
    seb = prune(model, SEB(s, strength=1.0, s_d=1.0, signal="sigma_plus"), progress=False)
    mag = prune(model, Magnitude(s), progress=False)
    sig = [seb.report.layer(f"layers.{i}").sigma_plus for i in range(3)]
    w = [seb.report.layer(f"layers.{i}").weight for i in range(3)]
    assert sig[0] < sig[1] < sig[2]
    assert w[0] < 1.0 < w[2]
    sp_seb = [seb.report.layer(f"layers.{i}").sparsity for i in range(3)]
    sp_mag = [mag.report.layer(f"layers.{i}").sparsity for i in range(3)]
    assert sp_seb[2] > sp_mag[2] and sp_seb[0] < sp_mag[0]
    # one global threshold q on |W|/w: every pruned score <= every kept score
    pr, kp = [], []
    for i, lin in enumerate(model.layers):
        sc = lin.weight.detach().abs() / w[i]
        z = seb.model.layers[i].weight == 0
        pr.append(sc[z])
        kp.append(sc[~z])
    assert torch.cat(pr).max() <= torch.cat(kp).min()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Linear(48, 48)


class ResLike(nn.Module):
    """ResNet-style names: "conv1" is a substring of "layer1.conv1" and "layer1.conv1x"."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv1 = nn.Linear(48, 48)
        self.layer1 = Block()
        self.conv1x = nn.Linear(48, 48)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.randn(48, 48, generator=g) * 0.1)
            self.layer1.conv1.weight.copy_(torch.randn(48, 48, generator=g) * 1.0)
            self.conv1x.weight.copy_(torch.randn(48, 48, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x(self.layer1.conv1(self.conv1(x)))


def test_sigma_plus_by_module_identity() -> None:
    model = ResLike()
    res = prune(model, SEB(0.5, signal="sigma_plus"), progress=False)
    for name in ("conv1", "layer1.conv1", "conv1x"):
        mod = dict(model.named_modules())[name]
        expected = fit_mp(mod.weight.detach().double().numpy()).sigma_plus
        assert res.report.layer(name).sigma_plus == pytest.approx(expected, rel=1e-9)
    a, b = res.report.layer("conv1").sigma_plus, res.report.layer("layer1.conv1").sigma_plus
    assert b / a == pytest.approx(10.0, rel=0.2)


def test_layer_type_from_module_type_not_name() -> None:
    from timm.layers import Attention, Mlp

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = Attention(32, num_heads=2)   # names deliberately swapped
            self.attn = Mlp(32, 64)
            self.fc = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attn(self.mlp(x)).mean(1))

    torch.manual_seed(0)
    res = prune(Odd(), SEB(0.7), progress=False)
    types = {lr.name: lr.details["layer_type"] for lr in res.report.layers}
    strengths = {lr.name: lr.details["strength"] for lr in res.report.layers}
    assert types == {"mlp.qkv": "attn", "mlp.proj": "attn", "attn.fc1": "mlp", "attn.fc2": "mlp",
                     "fc": "other"}
    assert strengths["mlp.qkv"] == 1.0 and strengths["attn.fc1"] == 2.0
    out = res.model(torch.randn(2, 4, 32))
    assert out.shape == (2, 5)


def test_seb_regime_table_and_final_regime() -> None:
    model = mlp(2, (24, 32, 32, 20))
    r = prune(model, SEB(0.15), progress=False)
    assert {lr.details["signal"] for lr in r.report.layers} == {"alpha"}
    assert {lr.details["strength"] for lr in r.report.layers} == {0.5}
    assert r.report.layers[0].details["decay"] == pytest.approx(1 - 0.15 / 0.30)
    r = prune(model, SEB(0.45), progress=False)
    assert {lr.details["strength"] for lr in r.report.layers} == {1.25}
    assert r.report.layers[0].details["decay"] == pytest.approx(1 - 0.45 / 0.70)
    fin = prune(model, SEB(0.25, regime="final"), progress=False)
    mag = prune(model, Magnitude(0.25), progress=False)
    for wa, wb in zip(target_weights(fin.model), target_weights(mag.model)):
        assert torch.equal(wa, wb)


# ------------------------------------------------------------------------------------------------
# ClassicalRMT
# ------------------------------------------------------------------------------------------------


def planted_lowrank(seed: int, rank: int = 3, n: int = 96, m: int = 128) -> tuple[nn.Sequential, np.ndarray]:
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    V = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    noise_edge = math.sqrt(n) + math.sqrt(m)
    S = noise_edge * np.array([4.0, 3.0, 2.5])[:rank]
    W = U @ np.diag(S) @ V.T + rng.standard_normal((n, m))
    lin = nn.Linear(m, n)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
    return nn.Sequential(lin), W


def test_classical_rmt_recovers_planted_rank() -> None:
    # δ = 0.05 edge: pure-noise singular values cross it with probability ≈ δ each matrix, so exact
    # recovery may fail on a few seeds (binomial tolerance), but a planted spike is never dropped.
    ranks = []
    for seed in range(20):
        model, _ = planted_lowrank(seed)
        res = prune(model, ClassicalRMT(), progress=False)
        ranks.append(res.report.layers[0].details["rank_kept"])
    assert min(ranks) >= 3
    assert sum(r == 3 for r in ranks) >= 16, ranks


@pytest.mark.parametrize("seed", [0, 2])
def test_classical_rmt_truncates_and_factorises_exactly(seed: int) -> None:
    model, W = planted_lowrank(seed)
    res = prune(model, ClassicalRMT(), progress=False)
    k = res.report.layers[0].details["rank_kept"]
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    edge = fit_mp(W).edge_sigma
    assert k == int(np.sum(s > edge)) == 3
    W3 = (u[:, :k] * s[:k]) @ vt[:k]
    np.testing.assert_allclose(res.model[0].weight.detach().double().numpy(), W3, atol=1e-4)
    fac = prune(model, ClassicalRMT(factorise=True), progress=False)
    seq = fac.model[0]
    assert isinstance(seq, nn.Sequential)
    assert seq[0].weight.shape == (k, 128) and seq[1].weight.shape == (96, k)
    assert seq[0].bias is None
    x = torch.randn(7, 128)
    expected = x.double() @ torch.from_numpy(W3).T + model[0].bias.detach().double()
    torch.testing.assert_close(fac.model(x).double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fac.model(x), res.model(x), atol=1e-4, rtol=1e-4)
    assert [lr.name for lr in fac.report.layers] == ["0.0", "0.1"]
    assert fac.masks.module("0.0") is seq[0]


def test_classical_rmt_vector_sparsification_matches_haar_rule() -> None:
    model, W = planted_lowrank(4)
    cfg = ClassicalRMT(keep_fraction=1.0, sparsify_vectors=True)
    res = prune(model, cfg, progress=False)
    edge = fit_mp(W).edge_sigma
    u, s, vt = np.linalg.svd(W, full_matrices=False)
    n, m = W.shape
    expected = np.zeros_like(W)
    zeroed = 0
    for i in range(len(s)):
        ui, vi = u[:, i].copy(), vt[i].copy()
        if s[i] < edge:
            f = (1 - s[i] / edge) ** 3
            zu, zv = np.abs(ui) < 0.5 / math.sqrt(n) * f, np.abs(vi) < 0.5 / math.sqrt(m) * f
            ui[zu], vi[zv] = 0, 0
            zeroed += int(zu.sum() + zv.sum())
        expected += s[i] * np.outer(ui, vi)
    assert zeroed > 0
    assert res.report.layers[0].details["blocks"][0]["vector_entries_zeroed"] == zeroed
    np.testing.assert_allclose(res.model[0].weight.detach().double().numpy(), expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# SER and Hybrid
# ------------------------------------------------------------------------------------------------


@settings(max_examples=8)
@given(st.floats(0.05, 0.9), st.floats(1.0, 1.5), st.integers(0, 100))
def test_ser_realised_sparsity_exact(s: float, rho: float, seed: int) -> None:
    model = mlp(seed)
    cfg = SER(s, over_prune=rho, selection_steps=3, lr=1e-2)
    res = prune(model, cfg, train_data=batches(24, seed=seed), progress=False)
    n = n_params(model)
    assert n_zeros(res.model) == math.floor(s * n)
    check_legal(res.masks, res.model)
    # restored and kept entries carry their dense values; pruned ones are zero
    for wd, wp in zip(target_weights(model), target_weights(res.model)):
        nz = wp != 0
        assert torch.equal(wp[nz], wd[nz])


def test_ser_strength_zero_magnitude_rank_is_global_magnitude() -> None:
    model = mlp(5)
    a = prune(model, SER(0.6, over_prune=1.3, strength=0.0, restore_rank="magnitude_x_weight"),
              progress=False)
    b = prune(model, Magnitude(0.6), progress=False)
    for wa, wb in zip(target_weights(a.model), target_weights(b.model)):
        assert torch.equal(wa, wb)


def test_ser_restores_only_from_the_reservoir_and_uses_movement() -> None:
    model = mlp(6)
    data = batches(24, seed=1)
    res = prune(model, SER(0.5, over_prune=1.4, strength=0.0, selection_steps=4, lr=0.05), train_data=data,
                progress=False)
    over = prune(model, Magnitude(min(0.7, 1.0)), progress=False)  # strength 0: over-prune = magnitude at ρs
    kept_over = torch.cat([w.reshape(-1) != 0 for w in target_weights(over.model)])
    kept = torch.cat([w.reshape(-1) != 0 for w in target_weights(res.model)])
    assert bool((kept_over & ~kept).sum() == 0)  # everything kept by the over-prune stays kept
    restored = int((kept & ~kept_over).sum())
    assert restored == int(kept_over.numel() - math.floor(0.5 * kept_over.numel())) - int(kept_over.sum())
    mag = prune(model, Magnitude(0.5), progress=False)
    kept_mag = torch.cat([w.reshape(-1) != 0 for w in target_weights(mag.model)])
    assert not torch.equal(kept, kept_mag)  # movement ranking differs from plain magnitude


def test_ser_refuses_validation_split_and_missing_data() -> None:
    model = mlp(0)
    with pytest.raises(ValueError, match="training split"):
        prune(model, SER(0.5, selection_steps=2), train_data=batches(24, split="val"), progress=False)
    with pytest.raises(ValueError, match="train_data"):
        prune(model, SER(0.5, selection_steps=2), progress=False)

    class DS(torch.utils.data.TensorDataset):
        split = "val"

    ds = DS(torch.randn(8, 24), torch.randint(0, 5, (8,)))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [0, 1, 2, 3]), batch_size=2)
    with pytest.raises(ValueError, match="split='val'"):
        prune(model, SER(0.5, selection_steps=2), train_data=loader, progress=False)
    DS.split = "train"
    res = prune(model, SER(0.5, selection_steps=2), train_data=loader, progress=False)
    assert n_zeros(res.model) == math.floor(0.5 * n_params(model))


@settings(max_examples=6)
@given(st.floats(0.0, 0.9), st.integers(0, 100))
def test_hybrid_exact_and_keeps_stage_one_zeros(s: float, seed: int) -> None:
    model = mlp(seed)
    res = prune(model, Hybrid(s, selection_steps=2, lr=1e-2), train_data=batches(24, seed=seed),
                progress=False)
    n = n_params(model)
    assert n_zeros(res.model) == math.floor(s * n)
    stage1 = prune(model, Magnitude(min(s, 0.2)), progress=False)
    for w1, wh in zip(target_weights(stage1.model), target_weights(res.model)):
        assert torch.all(wh[w1 == 0] == 0)
    if s <= 0.2:
        for w1, wh in zip(target_weights(stage1.model), target_weights(res.model)):
            assert torch.equal(w1, wh)


# ------------------------------------------------------------------------------------------------
# prune(): copies, gate hook, bad input
# ------------------------------------------------------------------------------------------------


def test_prune_copies_unless_inplace() -> None:
    model = mlp(0)
    before = [w.clone() for w in target_weights(model)]
    res = prune(model, Magnitude(0.5), progress=False)
    assert res.model is not model
    assert all(torch.equal(a, b) for a, b in zip(before, target_weights(model)))
    assert res.masks.module("0") is res.model[0]
    res2 = prune(model, Magnitude(0.5), inplace=True, progress=False)
    assert res2.model is model and n_zeros(model) == math.floor(0.5 * n_params(model))


def test_gate_hook_called_once_with_original_and_pruned() -> None:
    calls = []

    class Gate:
        def apply(self, original, pruned, masks, calibration):  # noqa: ANN001, ANN201
            calls.append((n_zeros(original), n_zeros(pruned), len(masks), calibration))
            return {"certified": 1.0}

    model = mlp(0)
    cal = batches(24)
    res = prune(model, Magnitude(0.5), gate=Gate(), calibration=cal, inplace=True, progress=False)
    assert len(calls) == 1
    assert calls[0][0] == 0 and calls[0][1] == math.floor(0.5 * n_params(model)) and calls[0][3] is cal
    assert res.report.gate == {"certified": 1.0}
    with pytest.raises(ValueError, match="training split"):
        prune(model, Magnitude(0.5), gate=Gate(), calibration=batches(24, split="val"), progress=False)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_sparsity_raises(bad: float) -> None:
    for cfg in (Magnitude, SEB, SER, Hybrid):
        with pytest.raises(ValueError, match="sparsity"):
            cfg(bad)


@pytest.mark.parametrize("cfg", [Magnitude(0.5), SEB(0.5), SER(0.5, selection_steps=1), Hybrid(0.5),
                                 ClassicalRMT()])
def test_nan_weights_raise_naming_the_layer(cfg: object) -> None:
    model = nn.Sequential()
    model.add_module("ok_layer", nn.Linear(24, 32))
    model.add_module("bad_layer", nn.Linear(32, 5))
    with torch.no_grad():
        model.bad_layer.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="bad_layer"):
        prune(model, cfg, train_data=batches(24), progress=False)


def test_report_and_masks_enforced_after_prune() -> None:
    model = mlp(3)
    res = prune(model, SEB(0.6), progress=False)
    d = res.report.to_dict()
    assert d["config"]["type"] == "SEB" and d["config"]["sparsity"] == 0.6
    assert d["total_zeros"] == math.floor(0.6 * n_params(model))
    assert {lr["name"] for lr in d["layers"]} == {"0", "2", "4"}
    opt = torch.optim.SGD(res.model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    res.masks.enforce(opt)
    for x, y in batches(24):
        opt.zero_grad()
        nn.functional.cross_entropy(res.model(x), y).backward()
        opt.step()
    assert n_zeros(res.model) >= math.floor(0.6 * n_params(model))
    check_legal(res.masks, res.model)
    assert copy.deepcopy(res.masks.to_state_dict()).keys() == {"0", "2", "4"}


def test_seb_alpha_signal_uses_the_one_hill_estimator() -> None:
    """SEB's α-signal is mpprune.spectrum.hill_alpha of s², with the authors' 99 where it is undefined."""
    import numpy as np

    from mpprune.methods._common import SEB_ALPHA_UNDEFINED, seb_alpha
    from mpprune.spectrum import hill_alpha

    g = torch.Generator().manual_seed(4)
    W = torch.randn(40, 30, generator=g, dtype=torch.float64)
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    lam = np.sort(s**2)[::-1][:20]
    by_hand = 1 + 1 / np.mean(np.log(lam[:19]) - np.log(lam[19]))
    assert seb_alpha(W) == pytest.approx(by_hand, rel=1e-10)
    assert hill_alpha(s**2) == pytest.approx(by_hand, rel=1e-10)
    rank_one = torch.diag(torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0, 0.0]))  # one positive eigenvalue: k < 2
    assert np.isnan(hill_alpha(torch.linalg.svdvals(rank_one).numpy() ** 2))
    assert seb_alpha(rank_one) == SEB_ALPHA_UNDEFINED == 99.0
    assert seb_alpha(torch.eye(6)) == SEB_ALPHA_UNDEFINED  # a flat top: hill_alpha is inf
    assert hill_alpha(np.ones(6)) == float("inf")
