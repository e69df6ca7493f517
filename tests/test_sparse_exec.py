"""mpprune.sparse_exec: numerical equivalence of the sparse modules, conversion decisions under a fake timer,
CUTLASS packing round trips on CPU, and the structure of the speed ledger. No wall-clock assertions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpprune.sparse_exec import (
    SemiStructuredBackend,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    SparseConv2d,
    SparseLinear,
    Timing,
    TorchTimer,
    audit,
    batch_of,
    densify,
    kn_violation,
    pack_2to4,
    sparsify_for_cpu,
    to_semi_structured,
    unpack_2to4,
)
from mpprune.sparse_exec.decision import decide
from mpprune.sparse_exec.timing import time_variants
from mptheory.errors import BadInput
from mptheory.io import dumps_json

# -- helpers ------------------------------------------------------------------------------------------


def unstructured(w: torch.Tensor, sparsity: float, seed: int = 0) -> torch.Tensor:
    """``w`` with a random ``sparsity`` fraction of its entries set to zero."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(w.shape, generator=g) >= sparsity
    return w * keep


def two_four(w: torch.Tensor, k: int = 2, n: int = 4) -> torch.Tensor:
    """Magnitude k:n along the input axis of a (out, in) matrix."""
    rows, cols = w.shape
    groups = w.reshape(rows, cols // n, n)
    idx = groups.abs().topk(k, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(mask, groups, torch.zeros_like(groups)).reshape(rows, cols)


@torch.no_grad()
def prune_(model: nn.Module, sparsity: float) -> nn.Module:
    for i, mod in enumerate(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))):
        mod.weight.copy_(unstructured(mod.weight, sparsity, seed=i))
    return model


class FakeTimer:
    """Answers from a table: ``speed[(layer, variant)]`` or ``speed[variant]``, default 1.0 s; logs calls."""

    def __init__(self, speed: dict[object, float] | None = None, run: bool = True) -> None:
        self.speed = speed or {}
        self.calls: list[tuple[str, str]] = []
        self.run = run

    def __call__(self, fn, *, layer: str, variant: str) -> Timing:  # type: ignore[no-untyped-def]
        self.calls.append((layer, variant))
        if self.run:
            fn()
        t = self.speed.get((layer, variant), self.speed.get(variant, 1.0))
        return Timing((t, t))


def identity_backend(patterns=None, shapes=None) -> SemiStructuredBackend:  # type: ignore[no-untyped-def]
    """A CPU stand-in for a 2:4 backend: 'compression' keeps the dense tensor."""
    return SemiStructuredBackend(
        "fake",
        patterns if patterns is not None else {torch.float32: (2, 4)},
        shapes if shapes is not None else {torch.float32: (8, 8)},
        compress=lambda w: w.clone(),
        availability=lambda device: None,
    )


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()


# -- timing -------------------------------------------------------------------------------------------


@given(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=30))
def test_timing_median_and_iqr_match_numpy(samples: list[float]) -> None:
    t = Timing(tuple(samples))
    assert t.median == pytest.approx(float(np.median(samples)))
    assert t.iqr == pytest.approx(float(np.percentile(samples, 75) - np.percentile(samples, 25)))
    assert t.to_dict()["n"] == len(samples)
    assert t.merged(t).n == 2 * len(samples)


@pytest.mark.parametrize("bad", [(), (0.0,), (-1.0,), (float("nan"),), (float("inf"),)])
def test_timing_rejects_bad_samples(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Timing(bad)


def test_time_variants_alternates_and_pools_rounds() -> None:
    timer = FakeTimer({"dense": 2.0, "sparse": 1.0}, run=False)
    out = time_variants(timer, "L", [("dense", lambda: None), ("sparse", lambda: None)], rounds=3)
    assert timer.calls == [("L", "dense"), ("L", "sparse")] * 3
    assert out["dense"].n == 6 and out["sparse"].median == 1.0


def test_torch_timer_measures_and_restores_threads() -> None:
    before = torch.get_num_threads()
    calls = []
    timer = TorchTimer(threads=1, min_run_time=0.01, warmup=2)
    t = timer(lambda: calls.append(1), layer="x", variant="dense")
    assert t.n >= 1 and t.median > 0
    assert len(calls) >= 3  # warm-up calls plus the timed ones
    assert torch.get_num_threads() == before
    assert timer.to_dict()["threads"] == 1
    with pytest.raises(ValueError):
        TorchTimer(threads=0)


# -- CPU sparse modules ---------------------------------------------------------------------------------


@given(
    out_f=st.integers(1, 40),
    in_f=st.integers(1, 40),
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    tile=st.sampled_from([0, 1, 3, 16]),
    bias=st.booleans(),
)
def test_sparse_linear_matches_dense(
    out_f: int, in_f: int, lead: list[int], sparsity: float, tile: int, bias: bool
) -> None:
    torch.manual_seed(out_f * 100 + in_f)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(unstructured(lin.weight, sparsity))
    sp = SparseLinear.from_dense(lin, tile=tile)
    x = torch.randn(*lead, in_f)
    with torch.no_grad():
        ref, got = lin(x), sp(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    back = sp.to_dense()
    assert type(back) is nn.Linear
    assert torch.equal(back.weight, lin.weight)
    assert (back.bias is None) == (not bias)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=1),
        dict(kernel_size=3, stride=2),
        dict(kernel_size=(3, 5), padding=(2, 1), dilation=(1, 2)),
        dict(kernel_size=2, stride=(1, 2), bias=False),
    ],
)
@pytest.mark.parametrize("tile", [0, 7])
def test_sparse_conv_matches_dense(kw: dict, tile: int) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 10, **kw)
    with torch.no_grad():
        conv.weight.copy_(unstructured(conv.weight, 0.7))
    sp = SparseConv2d.from_dense(conv, tile=tile)
    x = torch.randn(3, 6, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)
    back = sp.to_dense()
    assert type(back) is nn.Conv2d and torch.equal(back.weight, conv.weight)
    assert back.stride == conv.stride and back.padding == conv.padding and back.dilation == conv.dilation


def test_sparse_conv_rejects_grouped_and_subclassed_convs() -> None:
    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(BadInput, match="grouped"):
        SparseConv2d(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(BadInput, match="subclass"):
        SparseConv2d(MyConv(4, 4, 3))
    with pytest.raises(BadInput, match="padding_mode"):
        SparseConv2d(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


def test_sparse_modules_save_and_load_ordinary_state_dicts() -> None:
    dense = prune_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)), 0.8).eval()
    sparse = nn.Sequential(SparseConv2d(dense[0]), nn.Flatten(), SparseLinear.from_dense(dense[2]))
    sd_dense, sd_sparse = dense.state_dict(), sparse.state_dict()
    assert list(sd_sparse) == list(sd_dense)
    assert all(torch.equal(sd_sparse[k], sd_dense[k]) for k in sd_dense)
    # a checkpoint of the sparse model loads into the dense architecture, and back
    buf = io.BytesIO()
    torch.save(sd_sparse, buf)
    buf.seek(0)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), dense(x))
        other = prune_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)), 0.5)
        sparse.load_state_dict(other.state_dict())
        torch.testing.assert_close(sparse(x), other(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="size mismatch|Missing"):
        sparse.load_state_dict({"0.weight": torch.zeros(1)}, strict=True)


# -- CPU conversion decisions -----------------------------------------------------------------------------


def test_sparsify_for_cpu_converts_only_layers_measured_faster() -> None:
    model = prune_(mlp(), 0.9)
    x = torch.randn(4, 7, 32)
    ref = model(x).detach()
    timer = FakeTimer(
        {("0", "dense"): 1.0, ("0", "csr[tile=32]"): 0.4, ("0", "csr[tile=16]"): 0.6, ("2", "dense"): 1.0}
    )  # layer 2: every sparse variant 1.0 s = dense
    conv = sparsify_for_cpu(model, x, timer=timer, tiles=(16, 32), min_speedup=1.05)
    assert conv.converted == ["0"]
    d0, d2 = conv.decisions
    assert d0.converted and d0.variant == "csr[tile=32]" and d0.speedup == pytest.approx(2.5)
    assert isinstance(conv.model[0], SparseLinear) and conv.model[0].tile == 32
    assert (
        not d2.converted
        and "not fast enough" in (d2.reason or "")
        and isinstance(conv.model[2], nn.Linear)
    )
    assert d0.input_shape == (4, 7, 32) and d2.input_shape == (4, 7, 64)
    assert isinstance(model[0], nn.Linear), "the input model is not modified"
    torch.testing.assert_close(conv.model(x), ref, rtol=1e-5, atol=1e-6)
    # dense and sparse versions are timed in alternating rounds
    assert [v for layer, v in timer.calls if layer == "0"] == ["dense", "csr[tile=16]", "csr[tile=32]"] * 2
    # min_speedup decides: at 3x required nothing converts
    assert sparsify_for_cpu(model, x, timer=timer, tiles=(16, 32), min_speedup=3.0).converted == []


def test_sparsify_for_cpu_inplace_and_densify_round_trip() -> None:
    model = prune_(mlp(), 0.9)
    x = torch.randn(3, 32)
    ref = model(x).detach()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    timer = FakeTimer({"dense": 2.0, "csr[tile=16]": 1.0})
    conv = sparsify_for_cpu(model, x, timer=timer, tiles=(16,), inplace=True)
    assert conv.model is model and isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    back = densify(model)
    assert back is not model and isinstance(model[0], SparseLinear), "densify copies unless inplace"
    assert all(type(m) in (nn.Sequential, nn.Linear, nn.GELU) for m in back.modules())
    assert all(torch.equal(back.state_dict()[k], sd[k]) for k in sd)
    torch.testing.assert_close(back(x), ref)
    same = densify(model, inplace=True)
    assert same is model and isinstance(model[0], nn.Linear)
    single = SparseLinear.from_dense(nn.Linear(4, 4))
    assert type(densify(single)) is nn.Linear


def test_sparsify_for_cpu_records_why_layers_stay_dense() -> None:
    class Same(nn.Conv2d):
        pass

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.grouped = nn.Conv2d(8, 8, 1, groups=2)
            self.sub = Same(8, 8, 1)
            self.dense_layer = nn.Conv2d(8, 8, 1)
            self.unused = nn.Linear(4, 4)
            self.ok = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ok(self.dense_layer(self.sub(self.grouped(self.dw(x)))))

    net = prune_(Net(), 0.8).eval()
    with torch.no_grad():
        net.dense_layer.weight.fill_(1.0)
    timer = FakeTimer({"dense": 1.0, "csr[tile=0]": 0.5, "csr[tile=256]": 0.7})
    conv = sparsify_for_cpu(net, torch.randn(2, 8, 6, 6), timer=timer)
    reasons = {d.name: d.reason for d in conv.decisions}
    assert "depthwise" in reasons["dw"] or "grouped" in reasons["dw"]
    assert "grouped" in (reasons["grouped"] or "")
    assert "subclass" in (reasons["sub"] or "")
    assert "max_density" in (reasons["dense_layer"] or "")
    assert "not executed" in (reasons["unused"] or "")
    assert conv.converted == ["ok"] and reasons["ok"] is None
    assert {layer for layer, _ in timer.calls} == {"ok"}, "only eligible layers are timed"


def test_sparsify_for_cpu_has_no_kernel_for_bf16_and_rejects_nan() -> None:
    model = prune_(mlp(), 0.9).to(torch.bfloat16)
    timer = FakeTimer()
    conv = sparsify_for_cpu(model, torch.randn(2, 32, dtype=torch.bfloat16), timer=timer)
    assert conv.converted == [] and not conv.kernel_available and timer.calls == []
    assert "no CPU sparse kernel for bfloat16" in (conv.note or "")
    assert all("bfloat16" in (d.reason or "") for d in conv.decisions)
    bad = mlp()
    with torch.no_grad():
        bad[2].weight[0, 0] = float("nan")
    with pytest.raises(BadInput, match="'2'.*NaN"):
        sparsify_for_cpu(bad, torch.randn(2, 32), timer=FakeTimer())
    with pytest.raises(BadInput):
        sparsify_for_cpu(mlp(), torch.randn(2, 32), timer=FakeTimer(), min_speedup=0)


def test_decide_drops_a_variant_with_wrong_outputs() -> None:
    from mpprune.sparse_exec.decision import LayerDecision

    lin = nn.Linear(8, 8)
    wrong = nn.Linear(8, 8)
    d = LayerDecision("l", "linear", (8, 8), 1.0)
    chosen = decide(d, lin, torch.randn(3, 8), [("wrong", wrong)], timer=FakeTimer(), min_speedup=1.0)
    assert chosen is None and not d.converted and "differs from dense" in (d.reason or "")
    d2 = LayerDecision("l", "linear", (8, 8), 1.0)
    good = SparseLinear.from_dense(lin)
    chosen2 = decide(
        d2,
        lin,
        torch.randn(3, 8),
        [("wrong", wrong), ("good", good)],
        timer=FakeTimer({"good": 0.5}),
        min_speedup=1.0,
    )
    assert chosen2 is good and d2.variant == "good" and set(d2.variants) == {"good"}


# -- 2:4 packing and the semi-structured export -------------------------------------------------------------


@given(
    rows=st.sampled_from([32, 64]),
    cols=st.sampled_from([64, 128]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    seed=st.integers(0, 2**16),
    extra_zeros=st.booleans(),
)
def test_pack_unpack_round_trip(
    rows: int, cols: int, dtype: torch.dtype, seed: int, extra_zeros: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    k, n = (1, 2) if dtype == torch.float32 else (2, 4)
    w = two_four(w, k, n)
    if extra_zeros:  # groups with fewer than k nonzeros are legal too
        w = w * (torch.rand(rows, cols, generator=g) > 0.3)
    w = w.to(dtype)
    values, meta = pack_2to4(w)
    assert values.shape == (rows, cols // 2) and values.dtype == dtype
    assert meta.dtype == torch.int16
    back = unpack_2to4(values, meta)
    assert back.dtype == dtype and torch.equal(back, w)


def test_pack_unpack_int8_and_float32_bit_patterns() -> None:
    g = torch.Generator().manual_seed(3)
    w8 = two_four(torch.randint(-100, 100, (32, 128), generator=g).float()).to(torch.int8)
    v8, m8 = pack_2to4(w8)
    assert m8.dtype == torch.int32 and torch.equal(unpack_2to4(v8, m8), w8)
    # float32 values whose low 16 bits read as a signalling NaN in float16 (0xFDD9): torch's own decoder
    # moves them as float16 pairs and can change them; ours is bit-exact
    w = two_four(torch.randn(32, 32, generator=g), 1, 2)
    bits = w.view(torch.int32)
    bits = torch.where(w != 0, (bits & ~0xFFFF) | 0xFDD9, bits)
    w = bits.view(torch.float32)
    back = unpack_2to4(*pack_2to4(w))
    assert torch.equal(back.view(torch.int32), w.view(torch.int32))


def test_pack_rejects_illegal_input() -> None:
    w = torch.randn(32, 64)
    with pytest.raises(BadInput, match="not 2:4"):
        pack_2to4(w.to(torch.bfloat16))
    with pytest.raises(BadInput, match="not 1:2"):
        pack_2to4(two_four(w))  # 2:4 is not legal for float32 (TF32 runs 1:2)
    with pytest.raises(BadInput, match="multiples"):
        pack_2to4(two_four(torch.randn(32, 32)).to(torch.bfloat16))  # bf16 needs 64 columns
    with pytest.raises(BadInput, match="dtype"):
        pack_2to4(two_four(w).double())


def test_kn_violation_names_the_first_bad_group() -> None:
    w = two_four(torch.randn(4, 8))
    assert kn_violation(w, 2, 4) is None
    w[1, 4:8] = 1.0
    msg = kn_violation(w, 2, 4)
    assert msg is not None and "row 1, inputs 4..7 hold 4 nonzeros" in msg
    assert "multiple of 4" in (kn_violation(torch.randn(2, 6), 2, 4) or "")


def test_to_semi_structured_on_cpu_says_no_kernel_and_times_nothing() -> None:
    model = mlp()
    with torch.no_grad():
        model[0].weight.copy_(two_four(model[0].weight))
    timer = FakeTimer()
    conv = to_semi_structured(model, torch.randn(4, 32), timer=timer)
    assert not conv.kernel_available and conv.converted == [] and timer.calls == []
    assert "no sparse kernel on this device" in (conv.note or "") and "CUDA-only" in (conv.note or "")
    assert all("CUDA-only" in (d.reason or "") for d in conv.decisions)
    assert conv.decisions[0].pattern == "2:4" and conv.decisions[1].pattern is None


@given(
    kw=st.sampled_from(
        [
            dict(kernel_size=3, padding=1),
            dict(kernel_size=1),
            dict(kernel_size=3, stride=2),
            dict(kernel_size=(1, 3), padding=(0, 1), dilation=2),
        ]
    ),
    batch=st.integers(1, 3),
)
def test_semi_structured_conv_im2col_matches_conv(kw: dict, batch: int) -> None:
    torch.manual_seed(batch)
    conv = nn.Conv2d(4, 8, **kw)
    sp = SemiStructuredConv2d(conv, compress=lambda w: w.clone())
    x = torch.randn(batch, 4, 7, 10)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), conv(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(sp.to_dense().weight, conv.weight)
    assert list(sp.state_dict()) == list(conv.state_dict())


def test_to_semi_structured_decisions_with_a_fake_backend() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),  # 16 x 72: 2:4 legal, 72 not a multiple of 16 -> shape reason
        nn.Conv2d(16, 16, 1),  # 16 x 16: legal, converted
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),  # 2:4 legal, timed slower -> dense
        nn.Linear(32, 16),  # not 2:4
    ).eval()
    with torch.no_grad():
        for i in (0, 1):
            w = model[i].weight
            w.copy_(two_four(w.reshape(w.shape[0], -1)).reshape(w.shape))
        model[4].weight.copy_(two_four(model[4].weight))
    be = identity_backend(shapes={torch.float32: (16, 16)})
    timer = FakeTimer({("1", "fake"): 0.5, ("4", "fake"): 2.0})
    x = torch.randn(2, 8, 4, 4)
    conv = to_semi_structured(model, x, dtype=torch.float32, backend=be, timer=timer, min_speedup=1.05)
    reasons = {d.name: d.reason for d in conv.decisions}
    assert conv.converted == ["1"] and isinstance(conv.model[1], SemiStructuredConv2d)
    assert "16x72" in (reasons["0"] or "") and "multiples of 16x16" in (reasons["0"] or "")
    assert "grouped" in (reasons["2"] or "")
    assert "not fast enough" in (reasons["4"] or "")
    assert "not 2:4" in (reasons["5"] or "")
    assert {layer for layer, _ in timer.calls} == {"1", "4"}
    torch.testing.assert_close(conv.model(x), model(x), rtol=1e-5, atol=1e-5)
    # convs=False leaves every conv dense; an unknown dtype has no kernel
    conv2 = to_semi_structured(model, x, dtype=torch.float32, backend=be, timer=timer, convs=False)
    assert "convs=False" in (conv2.decisions[1].reason or "")
    conv3 = to_semi_structured(model, x, dtype=torch.bfloat16, backend=be, timer=FakeTimer())
    assert conv3.converted == [] and "no 2:4 kernel for bfloat16" in (conv3.decisions[1].reason or "")
    with pytest.raises(BadInput, match="dtype"):
        to_semi_structured(model, x, dtype=torch.float64, backend=be, timer=FakeTimer())
    assert isinstance(model[1], nn.Conv2d) and model[1].weight.dtype == torch.float32


def test_semi_structured_linear_with_fake_compress_round_trips() -> None:
    lin = nn.Linear(16, 8)
    sp = SemiStructuredLinear(lin, compress=lambda w: w.clone())
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(sp(x), lin(x))
    assert torch.equal(densify(nn.Sequential(sp))[0].weight, lin.weight)


def test_to_semi_structured_records_kernel_failures() -> None:
    def broken(w: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("sparse matmul: unsupported compute capability\nmore text")

    be = SemiStructuredBackend("broken", {torch.float32: (2, 4)}, {torch.float32: (8, 8)}, broken)
    model = nn.Sequential(nn.Linear(16, 16)).eval()
    with torch.no_grad():
        model[0].weight.copy_(two_four(model[0].weight))
    conv = to_semi_structured(model, torch.randn(2, 16), dtype=torch.float32, backend=be, timer=FakeTimer())
    assert conv.converted == [] and conv.decisions[0].reason == (
        "broken kernel failed: sparse matmul: unsupported compute capability"
    )


def test_unknown_backend_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown semi-structured backend"):
        to_semi_structured(mlp(), torch.randn(1, 32), backend="magic")


# -- the audit ledger ------------------------------------------------------------


def test_audit_ledger_structure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = prune_(mlp(), 0.9)
    timer = FakeTimer(
        {"dense": 2.0, "sparse": 1.0, "csr[tile=16]": 1.0, "csr[tile=32]": 1.5, "csr[tile=64]": 1.5}
    )
    ledger = audit(model, torch.randn(3, 32), timer=timer, batch_sizes=(1, 5), threads=1)
    d = ledger.to_dict()
    assert (
        d["path"] == "cpu" and d["dtype"] == "float32" and d["kernel_available"] is True and d["note"] is None
    )
    assert d["baseline"].startswith("dense float32")
    env = d["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] == 1
    assert {"mpprune", "python", "cpu", "mkl"} <= set(env)
    assert [row["batch"] for row in d["model"]] == [1, 5]
    assert all(row["speedup"] == pytest.approx(2.0) for row in d["model"])
    assert [layer["name"] for layer in d["layers"]] == ["0", "2"] and d["converted"] == ["0", "2"]
    assert all(layer["variant"] == "csr[tile=16]" and layer["speedup"] == 2.0 for layer in d["layers"])
    assert {"median_s", "q1_s", "q3_s", "iqr_s", "n"} == set(d["layers"][0]["dense"])
    assert ("model[batch=5]", "sparse") in timer.calls
    path = ledger.write(tmp_path / "bench" / "ledger.json")
    assert json.loads(path.read_text()) == json.loads(dumps_json(d))
    assert "whole model" in ledger.table()


def test_audit_says_plainly_when_nothing_is_sparse() -> None:
    model = prune_(mlp(), 0.9)
    ledger = audit(model, torch.randn(2, 32), timer=FakeTimer(), batch_sizes=(2,))  # sparse never faster
    assert ledger.conversion.converted == []
    assert "no layer measured faster" in (ledger.note or "")
    assert ledger.model_rows[0].sparse is None and ledger.model_rows[0].speedup is None
    semi = audit(model, torch.randn(2, 32), path="semi_structured", timer=FakeTimer(), batch_sizes=(1,))
    assert semi.to_dict()["dtype"] == "bfloat16" and not semi.kernel_available
    assert (semi.note or "").startswith("no sparse kernel on this device")
    bf16 = audit(model, torch.randn(2, 32), dtype=torch.bfloat16, timer=FakeTimer(), batch_sizes=(1,))
    assert not bf16.kernel_available and "no CPU sparse kernel for bfloat16" in (bf16.note or "")
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(BadInput):
        audit(model, torch.randn(2, 32), path="tpu")


def test_batch_of_cycles_rows() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(batch_of(x, 5), x[[0, 1, 2, 0, 1]])
    with pytest.raises(BadInput):
        batch_of(x, 0)


# -- on a GPU ------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_semi_structured_export_on_gpu() -> None:  # pragma: no cover - needs a GPU
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).cuda().eval()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.copy_(two_four(model[i].weight))
    x = torch.randn(128, 256, device="cuda")
    conv = to_semi_structured(model, x, timer=FakeTimer({"dense": 2.0, "cusparselt": 1.0, "cutlass": 1.0}))
    assert conv.kernel_available and conv.converted == ["0", "2"]
    ref = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    torch.testing.assert_close(conv.model(x.to(torch.bfloat16)), ref, rtol=2e-2, atol=2e-2)
    dense = densify(conv.model)
    assert torch.equal(dense[0].weight, model[0].weight)


@pytest.mark.gpu
@gpu
def test_cpu_packing_matches_cutlass_on_gpu() -> None:  # pragma: no cover - needs a GPU
    w = two_four(torch.randn(64, 128)).to(torch.bfloat16)
    values, meta = pack_2to4(w)
    sparse = torch.sparse.SparseSemiStructuredTensorCUTLASS.from_dense(w.cuda())
    assert torch.equal(sparse.packed.cpu(), values) and torch.equal(sparse.meta.cpu(), meta)


# -- the benchmark's helpers ------------------------------------------------------------------------


def test_benchmark_masks() -> None:
    from benchmarks.sparse_exec import magnitude_

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 12))
    w0 = net[3].weight.detach().clone()
    skipped = magnitude_(net, "2:4")
    assert skipped == ["0", "1"]  # 27 inputs is not a multiple of 4; depthwise stays dense
    w = net[3].weight.detach()
    assert kn_violation(w, 2, 4) is None and int((w != 0).sum()) == w.numel() // 2
    kept_min = w0.abs()[w != 0].reshape(12, 2, 2).min(-1).values
    dropped_max = w0.abs()[w == 0].reshape(12, 2, 2).max(-1).values
    assert bool((kept_min >= dropped_max).all()), "2:4 keeps the two largest of every four"
    net2 = nn.Sequential(nn.Linear(10, 10))
    magnitude_(net2, "0.8")
    w2 = net2[0].weight.detach()
    assert int((w2 == 0).sum()) == 80


def test_benchmark_rows_and_crossover() -> None:
    from benchmarks.sparse_exec import crossover, render, rows_of

    model = prune_(mlp(), 0.9)
    ledger = audit(
        model,
        torch.randn(2, 32),
        timer=FakeTimer({"dense": 2.0, "sparse": 1.0, "csr[tile=16]": 1.0}),
        batch_sizes=(1, 2),
    )
    rows = rows_of("vit", "0.9", 2, ledger)
    assert [r["what"] for r in rows] == ["0", "2", "WHOLE MODEL", "WHOLE MODEL"]
    assert all(r["ratio"] == pytest.approx(2.0) for r in rows)
    assert "WHOLE MODEL" in render(rows)
    fake = [
        {"model": "vit", "level": lv, "what": "fc1", "batch": 1, "ratio": ratio}
        for lv, ratio in [("0.5", 0.3), ("0.8", 0.9), ("0.85", 1.1), ("0.9", 1.8), ("2:4", 0.3)]
    ] + [{"model": "vit", "level": "0.9", "what": "fc2", "batch": 1, "ratio": 0.9}]
    got = crossover(fake)
    assert got["fc1[batch=1]"]["first_faster_level"] == 0.85 and "2:4" not in got["fc1[batch=1]"]["ratios"]
    assert got["fc2[batch=1]"]["first_faster_level"] is None
