"""MaskStore, frozen-mask enforcement through optimisers, legality checks, exact sparsity accounting and the
k:n pattern primitives (layouts, check_kn, declared patterns)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpprune.errors import BadInput
from mpprune.masks import (
    KN_LAYOUTS,
    MaskStore,
    PatternViolation,
    check_kn,
    check_legal,
    detect_kn,
    from_kn_matrix,
    kn_group_counts,
    kn_matrix,
    parse_kn,
    prunable_modules,
    sparsity,
)


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


# --------------------------------------------------------------------------------------------------
# k:n patterns


def test_parse_kn_accepts_pairs_and_strings() -> None:
    assert parse_kn("2:4") == parse_kn((2, 4)) == parse_kn(" 2 : 4 ") == (2, 4)
    for bad in ("2-4", "5:4", "1:0", (5, 4), "a:b"):
        with pytest.raises(BadInput):
            parse_kn(bad)  # type: ignore[arg-type]


def _kn_weight(shape: tuple[int, ...], k: int, n: int, layout: str, seed: int) -> torch.Tensor:
    """A random weight whose k:n matrix keeps exactly k random entries of every group."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    mat = kn_matrix(w, layout).clone()
    rows, cols = mat.shape
    scores = torch.rand(rows, cols // n, n, generator=g)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(k, dim=-1).indices, True)
    return from_kn_matrix(mat * keep.reshape(rows, cols).float(), shape, layout)


@pytest.mark.parametrize("layout", KN_LAYOUTS)
def test_kn_matrix_round_trip_and_unfold_order(layout: str) -> None:
    w = torch.randn(6, 8, 3, 2)
    mat = kn_matrix(w, layout)
    assert mat.shape == (6, 48)
    assert torch.equal(from_kn_matrix(mat, w.shape, layout), w)
    x = torch.randn(2, 8, 5, 5)
    cols = F.unfold(x, (3, 2))  # (B, 8*6, L), channel-major
    if layout == "channel":  # columns p * C_in + c: kernel-position-major
        cols = cols.reshape(2, 8, 6, -1).transpose(1, 2).reshape(2, 48, -1)
    out = (mat @ cols).reshape(2, 6, 3, 4)
    assert torch.allclose(out, F.conv2d(x, w), atol=1e-5)
    lin = torch.randn(5, 12)
    assert torch.equal(kn_matrix(lin, layout), lin)


def test_channel_layout_groups_are_input_channels_at_one_kernel_position() -> None:
    w = _kn_weight((4, 8, 3, 3), 2, 4, "channel", seed=1)
    for o in range(4):
        for i in range(3):
            for j in range(3):
                for c0 in (0, 4):  # hardware conv 2:4: <= 2 of every 4 input channels per (out, position)
                    assert int((w[o, c0 : c0 + 4, i, j] != 0).sum()) == 2
    check_kn(w, "2:4", layout="channel", layer="conv")
    counts = kn_group_counts(w, 4, "channel")
    assert counts.shape == (4, 18) and bool((counts == 2).all())
    # the im2col flattening of the same weight is (generically) not 2:4
    with pytest.raises(PatternViolation):
        check_kn(w, "2:4", layout="matrix", layer="conv")


@given(st.sampled_from([(1, 4), (2, 4), (3, 8), (6, 12), (8, 16), (5, 32)]), st.sampled_from(KN_LAYOUTS),
       st.integers(0, 1000))
def test_check_kn_accepts_legal_and_names_the_first_broken_group(kn: tuple[int, int], layout: str,
                                                                  seed: int) -> None:
    k, n = kn
    w = _kn_weight((3, 2 * n, 1, 1) if seed % 2 else (3, 2 * n), k, n, layout, seed)
    check_kn(w, (k, n), layout=layout, layer="x")
    mat = kn_matrix(w, layout).clone()
    g = seed % 2
    mat[1, g * n : (g + 1) * n] = 1.0  # a full group in row 1
    bad = from_kn_matrix(mat, w.shape, layout)
    with pytest.raises(PatternViolation) as exc:
        check_kn(bad, f"{k}:{n}", layout=layout, layer="blocks.3.fc")
    msg = str(exc.value)
    assert "'blocks.3.fc'" in msg and f"{k}:{n}" in msg and f"row 1, group {g}" in msg
    assert f"{n} nonzeros > {k}" in msg
    assert isinstance(exc.value, BadInput)
    with pytest.raises(BadInput, match="does not divide"):
        check_kn(torch.zeros(2, n + 1), (k, n), layer="odd")


def test_detect_kn_finds_declared_patterns() -> None:
    assert detect_kn(kn_matrix(_kn_weight((4, 16), 2, 4, "matrix", 0))) == (2, 4)
    assert detect_kn(kn_matrix(_kn_weight((4, 32), 3, 16, "matrix", 0))) == (3, 16)


def test_declared_patterns_are_checked_by_store_legality_and_enforce() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    store = MaskStore()
    w = _kn_weight((8, 8), 2, 4, "matrix", 3)
    with torch.no_grad():
        m[0].weight.copy_(w)
    store.add("0", m[0], w != 0)
    with pytest.raises(PatternViolation, match="1:4"):
        store.declare("0", "1:4")
    store.declare("0", "2:4")
    assert store.pattern("0") == ("2:4", "matrix")
    assert store.patterns() == {"0": {"pattern": "2:4", "layout": "matrix"}}
    check_legal(store, m)
    back = MaskStore.from_state_dict(store.to_state_dict(), m, store.patterns())
    assert back.patterns() == store.patterns()
    assert store.bind(copy.deepcopy(m)).patterns() == store.patterns()
    # a weight that breaks its declared pattern (its mask broken in place) is refused after a step
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    store.enforce(opt)
    store["0"][0, :4] = True
    with torch.no_grad():
        m[0].weight[0, :4] = 1.0
    loss = m(torch.randn(3, 8)).sum()
    loss.backward()
    with pytest.raises(PatternViolation, match=r"layer '0'.*row 0, group 0"):
        opt.step()
    store.remove()
    with pytest.raises(BadInput, match="2:4"):
        check_legal(store, m)
    # a new mask drops the declaration
    store.add("0", m[0], torch.ones(8, 8, dtype=torch.bool))
    assert store.pattern("0") is None
    with pytest.raises(BadInput, match="no mask"):
        MaskStore.from_state_dict({}, m, {"0": {"pattern": "2:4", "layout": "matrix"}})
