"""MaskStore, frozen-mask enforcement through optimisers, legality checks and exact sparsity accounting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpprune.masks import MaskStore, check_legal, prunable_modules, sparsity


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def _random_store(model: nn.Module, density: float, seed: int) -> MaskStore:
    g = torch.Generator().manual_seed(seed)
    store = MaskStore()
    for name, mod in prunable_modules(model):
        store.add(name, mod, torch.rand(mod.weight.shape, generator=g) < density)
    return store


def test_addressable_by_module_and_name() -> None:
    m = _model()
    store = _random_store(m, 0.5, 0)
    assert len(store) == 3
    assert torch.equal(store[m[0]], store["0"])
    assert torch.equal(store[m[5]], store["5"])
    assert store.name_of(m[3]) == "3" and store.module("3") is m[3]
    assert "3" in store and m[3] in store and nn.Linear(2, 2) not in store
    with pytest.raises(KeyError):
        store["nope"]
    with pytest.raises(ValueError, match="mask shape"):
        store.add("3", m[3], torch.ones(3, 3, dtype=torch.bool))


def test_apply_zeroes_exactly_the_masked_entries() -> None:
    m = _model()
    dense = copy.deepcopy(m)
    store = _random_store(m, 0.4, 1)
    store.apply(m)
    for name, mod, mask in store.entries():
        w0 = dict(dense.named_modules())[name].weight
        assert torch.all(mod.weight[~mask] == 0)
        assert torch.equal(mod.weight[mask], w0[mask])
    check_legal(store, m)


def test_apply_rebinds_by_name_on_a_copy() -> None:
    m = _model()
    store = _random_store(m, 0.3, 2)
    other = copy.deepcopy(m)
    store.apply(other)
    for name, _, mask in store.entries():
        assert torch.all(dict(other.named_modules())[name].weight[~mask] == 0)
    assert (m[0].weight != 0).all()  # original untouched


def test_check_legal_reports_the_layer() -> None:
    m = _model()
    store = _random_store(m, 0.5, 3)
    store.apply(m)
    with torch.no_grad():
        idx = torch.nonzero(~store["3"])[0]
        m[3].weight[idx[0], idx[1]] = 1.0
    with pytest.raises(ValueError, match=r"layer '3'.*not zero"):
        check_legal(store, m)
    other = _model(1)
    with pytest.raises(ValueError, match="different module"):
        check_legal(store, other)


def _train(m: nn.Module, opt: torch.optim.Optimizer, store: MaskStore | None, steps: int = 6) -> list[bool]:
    torch.manual_seed(5)
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,))
    ok = []
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        if store is not None:
            ok.append(all(bool(torch.all(mod.weight[~mask] == 0)) for _, mod, mask in store.entries()))
    return ok


OPTIMISERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adamw_wd": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMISERS))
def test_enforce_keeps_zeros_through_every_step(opt_name: str) -> None:
    m = _model()
    store = _random_store(m, 0.5, 4)
    store.apply(m)
    before = {n: mod.weight.detach().clone() for n, mod, _ in store.entries()}
    opt = OPTIMISERS[opt_name](m.parameters())
    store.enforce(opt)
    ok = _train(m, opt, store)
    assert all(ok)
    for name, mod, mask in store.entries():
        # optimiser state of pruned entries is zero, so nothing can regrow later
        for v in opt.state[mod.weight].values():
            if isinstance(v, torch.Tensor) and v.shape == mask.shape:
                assert torch.all(v[~mask] == 0)
        # the kept entries really trained
        assert not torch.equal(mod.weight.detach()[mask], before[name][mask])
    check_legal(store, m)
    # control: after remove() the same optimiser regrows the zeros
    store.remove()
    _train(m, opt, None, steps=2)
    regrown = sum(int((mod.weight[~mask] != 0).sum()) for _, mod, mask in store.entries())
    assert regrown > 0


@given(
    st.floats(0.0, 1.0),
    st.integers(0, 2**16),
)
def test_sparsity_accounting_is_exact(density: float, seed: int) -> None:
    m = _model()
    store = _random_store(m, density, seed)
    rep = sparsity(store)
    exp = {n: int(np.sum(~mask.numpy())) for n, _, mask in store.entries()}
    sizes = {n: mask.numel() for n, _, mask in store.entries()}
    assert rep.zeros == exp and rep.sizes == sizes
    assert rep.global_sparsity == sum(exp.values()) / sum(sizes.values())
    store.apply(m)
    # pre-existing zeros in the dense weights are impossible here (continuous init), so both agree
    assert sparsity(m).zeros == exp
    for n, v in rep.per_layer.items():
        assert v == exp[n] / sizes[n]


def test_state_dict_round_trip_binds_to_new_modules() -> None:
    m = _model()
    store = _random_store(m, 0.6, 7)
    state = store.to_state_dict()
    assert all(v.dtype == torch.bool and v.device.type == "cpu" for v in state.values())
    twin = copy.deepcopy(m)
    back = MaskStore.from_state_dict(state, twin)
    for name, mod, mask in back.entries():
        assert mod is dict(twin.named_modules())[name]
        assert torch.equal(mask, state[name])
    with pytest.raises(ValueError, match="not found"):
        MaskStore.from_state_dict({"missing.layer": state["0"]}, twin)
    with pytest.raises(ValueError, match="dtype"):
        MaskStore.from_state_dict({"0": state["0"].float()}, twin)
