"""MAC accounting (mpprune.macs) against counts written out by hand in each test.

Hand formulas (1 MAC = one multiply-add, batch 1):
    Conv2d  Cout * Hout * Wout * (Cin / groups) * kh * kw, Hout = (H + 2p - k) // s + 1
    Linear  tokens * in * out
    attention (QK^T and AV)  2 * T^2 * d per block
    ToMe matching  |A| * |B| * head_dim, A / B the even / odd of the T - prefix mergeable tokens
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mpprune.layers import find_layers
from mpprune.macs import CONVENTIONS, count_macs, detect_kn, parse_kn
from mpprune.models import load_mnist_cnn
from mpprune.tome import apply_tome, is_tome_patched, tome_schedule, tome_token_counts
from mptheory.errors import BadInput
from mptheory.io import dumps_json

# --------------------------------------------------------------------------------------------------
# hand counts


def conv_macs(cin: int, cout: int, k: int, h: int, w: int, *, stride: int = 1, pad: int = 0, groups: int = 1):
    """(MACs, Hout, Wout) of a square-kernel Conv2d on an h x w input."""
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    return cout * ho * wo * (cin // groups) * k * k, ho, wo


def hand_tokens(n_tokens: int, r: int, depth: int, num_prefix: int = 1) -> list[tuple[int, int]]:
    """Tokens entering attention and MLP per block: r clipped to half the mergeable tokens."""
    out, n = [], n_tokens
    for _ in range(depth):
        r_eff = max(0, min(r, (n - num_prefix) // 2))
        out.append((n, n - r_eff))
        n -= r_eff
    return out


def hand_vit(
    *,
    img: int,
    patch: int,
    in_ch: int,
    d: int,
    heads: int,
    mlp: int,
    classes: int,
    tokens: list[tuple[int, int]],
    paper: bool = False,
    linear_density: float = 1.0,
) -> tuple[int, float]:
    """(dense MACs, sparse MACs) of a class-token timm ViT with the given (n_attn, n_mlp) per block.

    ``paper``: every op of a block charged n_attn tokens and no matching product. Sparse: every
    Linear (qkv, proj, fc1, fc2, head) at ``linear_density``; patch embed, attention and matching dense.
    """
    patch_embed = d * (img // patch) ** 2 * in_ch * patch * patch
    linear = classes * d  # the head sees the class token only
    other = patch_embed
    for t_attn, t_mlp in tokens:
        t_m = t_attn if paper else t_mlp
        linear += t_attn * d * 3 * d + t_attn * d * d + t_m * d * mlp + t_m * mlp * d
        other += 2 * t_attn * t_attn * d
        if t_mlp != t_attn and not paper:
            m = t_attn - 1
            other += math.ceil(m / 2) * (m // 2) * (d // heads)
    return linear + other, linear * linear_density + other


def zero_2of4(weight: torch.Tensor, seed: int = 0) -> None:
    """Set 2 of every 4 consecutive input weights (of the matrix view) to zero, at random positions."""
    choices = torch.tensor(
        [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]]
    )
    w = weight.detach()
    rows = w.shape[0]
    cols = w.numel() // rows
    idx = torch.randint(0, 6, (rows, cols // 4), generator=torch.Generator().manual_seed(seed))
    mask = choices[idx].reshape(w.shape).to(w.dtype)
    with torch.no_grad():
        w.mul_(mask)


def tiny_vit(seed: int = 0, fused: bool = True, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    args = dict(img_size=28, patch_size=4, in_chans=1, num_classes=5, embed_dim=32, depth=3, num_heads=2)
    args.update(kw)
    model = VisionTransformer(**args).eval()
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused
    return model


TINY = dict(img=28, patch=4, in_ch=1, d=32, heads=2, mlp=128, classes=5)


# --------------------------------------------------------------------------------------------------
# ViT-B/16 (17.56 G, 59.81 % / 61.07 %)


VIT_B = dict(img=224, patch=16, in_ch=3, d=768, heads=12, mlp=3072, classes=1000)


def test_vit_b16_dense_on_meta_matches_hand_count():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    count = count_macs(model, (1, 3, 224, 224))
    dense, _ = hand_vit(**VIT_B, tokens=[(197, 197)] * 12)
    assert count.dense == dense == count.merged == count.sparse
    assert round(count.dense / 1e9, 2) == 17.56
    assert count.traced_on == "meta" and count.tokens is None
    ops = count.by_op()
    assert ops["conv2d"].dense == 768 * 196 * 3 * 16 * 16  # 0.116 G patch embed
    assert ops["attention"].dense == 12 * 2 * 197**2 * 768  # QK^T and AV: what a hook counter misses
    assert ops["qkv"].dense + ops["linear"].dense == 12 * 197 * 768 * (3 * 768 + 768 + 2 * 3072) + 768 * 1000
    assert {r.source for r in count.layers if r.op in ("qkv", "linear", "conv2d")} == {"unknown"}


def test_vit_b16_tome8_and_2to4_both_conventions():
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    with torch.no_grad():  # a random init can hold exact zeros, which the density rule would (rightly) count
        for p in model.parameters():
            p[p == 0] = 1e-3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 12 * 4 + 1  # qkv, proj, fc1, fc2 per block and the head
    for i, lin in enumerate(linears):
        zero_2of4(lin.weight, seed=i)
    count = count_macs(model, (3, 224, 224), tome_r=8)

    schedule = tome_schedule(197, 1, [8] * 12)
    assert schedule == hand_tokens(197, 8, 12) == [(197 - 8 * i, 189 - 8 * i) for i in range(12)]
    assert list(count.tokens) == schedule and count.tome_r == (8,) * 12

    dense, _ = hand_vit(**VIT_B, tokens=[(197, 197)] * 12)
    _, paper_sparse = hand_vit(**VIT_B, tokens=schedule, paper=True, linear_density=0.5)
    _, exec_sparse = hand_vit(**VIT_B, tokens=schedule, linear_density=0.5)
    paper, executed = count.totals["paper"], count.totals["executed"]
    assert paper.dense == executed.dense == dense
    assert paper.sparse == paper_sparse and executed.sparse == exec_sparse
    assert round(paper.sparse / 1e9, 2) == 7.06
    assert round(100 * paper.reduction, 2) == 59.81
    assert round(100 * executed.reduction, 2) == 61.07
    assert paper.speedup == pytest.approx(1 / (1 - paper.reduction)) and round(paper.speedup, 2) == 2.49
    assert count.reduction == executed.reduction  # the default convention
    pinned = {(r.name, r.source, r.pattern) for r in count.layers if r.op in ("qkv", "linear")}
    assert {(s, p) for _, s, p in pinned} == {("detected", "2:4")} and len(pinned) == 49
    assert not is_tome_patched(model)


# --------------------------------------------------------------------------------------------------
# token merging on a tiny ViT


@pytest.mark.parametrize("r", [0, 8, 20])
def test_tiny_vit_tokens_and_macs_against_hand_and_real_forward(r):
    model = tiny_vit()
    count = count_macs(model, (1, 28, 28), tome_r=r)
    n0 = (28 // 4) ** 2 + 1
    hand = hand_tokens(n0, r, 3)
    if r == 20:
        assert hand == [(50, 30), (30, 16), (16, 9)]  # clipped to half the mergeable tokens
    if r == 0:
        assert count.tokens is None
    else:
        assert list(count.tokens) == hand == tome_schedule(n0, 1, [r] * 3)
        real = apply_tome(copy.deepcopy(model), r)
        with torch.no_grad():
            real(torch.randn(2, 1, 28, 28))
        assert tome_token_counts(real) == hand
    tokens = hand if r else [(n0, n0)] * 3
    for conv in CONVENTIONS:
        dense, sparse = hand_vit(**TINY, tokens=tokens, paper=conv == "paper")
        assert count.totals[conv].merged == dense == sparse
    assert count.dense == hand_vit(**TINY, tokens=[(n0, n0)] * 3)[0]


def test_tiny_vit_2to4_sparse_executed_and_paper():
    model = tiny_vit(seed=3)
    for i, lin in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
        zero_2of4(lin.weight, seed=i)
    hand = hand_tokens(50, 8, 3)
    for conv in CONVENTIONS:
        count = count_macs(model, (1, 1, 28, 28), 8, convention=conv)
        dense, sparse = hand_vit(**TINY, tokens=hand, paper=conv == "paper", linear_density=0.5)
        assert count.merged == dense and count.sparse == sparse
        assert count.reduction == pytest.approx(1 - sparse / count.dense)
        assert ("blocks.0", "tome_match") in {(r.name, r.op) for r in count.layers} or conv == "paper"


def test_fused_sdpa_and_explicit_attention_give_the_same_count():
    for r in (0, 8):
        fused = count_macs(tiny_vit(fused=True), (1, 28, 28), r)
        explicit = count_macs(tiny_vit(fused=False), (1, 28, 28), r)
        assert fused.totals == explicit.totals
        assert [(x.name, x.op, x.merged) for x in fused.layers] == [
            (x.name, x.op, x.merged) for x in explicit.layers
        ]
        attn = [x for x in fused.layers if x.op == "attention"]
        assert [x.name for x in attn] == [f"blocks.{i}.attn" for i in range(3)]


class _NeedsValues(nn.Module):
    """Reads a tensor value, so it cannot run on the meta device: forces the real CPU forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().sum()) < 0:
            return x
        return self.inner(x)


def test_real_cpu_forward_counts_the_fused_cpu_attention_kernel():
    meta = count_macs(tiny_vit(fused=True), (1, 28, 28), 8)
    wrapped = _NeedsValues(apply_tome(tiny_vit(fused=True), 8))
    real = count_macs(wrapped, (1, 28, 28))  # the inner model's own schedule; dense without it
    assert meta.traced_on == "meta" and real.traced_on == "cpu"
    assert real.totals == meta.totals and real.tokens == meta.tokens
    assert is_tome_patched(wrapped.inner)
    attn = sum(x.merged for x in real.layers if x.op == "attention")
    assert attn == sum(2 * t * t * 32 for t, _ in hand_tokens(50, 8, 3)) > 0


def test_model_is_not_modified():
    model = tiny_vit().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 28, 28), tome_r=8)
    assert type(model) is VisionTransformer and not is_tome_patched(model) and model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_patched_model_is_counted_with_its_own_schedule_and_dense_without_tome():
    plain = tiny_vit()
    patched = apply_tome(copy.deepcopy(plain), 20)
    own = count_macs(patched, (1, 28, 28))
    assert list(own.tokens) == hand_tokens(50, 20, 3) and own.tome_r == (20,) * 3
    assert own.dense == count_macs(plain, (1, 28, 28)).dense
    assert own.merged == count_macs(plain, (1, 28, 28), 20).merged
    assert list(count_macs(patched, (1, 28, 28), 4).tokens) == hand_tokens(50, 4, 3)
    assert is_tome_patched(patched)


# --------------------------------------------------------------------------------------------------
# CNNs


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gconv = nn.Conv2d(8, 16, 3, stride=2, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.dw(x))
        x = self.pool(F.relu(self.bn2(self.gconv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_small_cnn_against_hand_count_and_sparsity_rules():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    c1, h, w = conv_macs(3, 8, 3, 32, 24, stride=2, pad=1)
    assert (h, w) == (16, 12)
    dw, h, w = conv_macs(8, 8, 3, h, w, pad=1, groups=8)
    gc, h, w = conv_macs(8, 16, 3, h, w, stride=2, groups=2)
    assert (h, w) == (7, 5)
    fc = 16 * 10
    dense = count_macs(model, (3, 32, 24))
    assert dense.dense == c1 + dw + gc + fc
    assert [(r.name, r.op, r.dense) for r in dense.layers] == [
        ("conv1", "conv2d", c1),
        ("dw", "conv2d_depthwise", dw),
        ("gconv", "conv2d_grouped", gc),
        ("fc", "linear", fc),
    ]
    # conv1: unstructured (27 inputs: no group size divides); gconv: 2:4 along its 36 unfold inputs
    with torch.no_grad():
        model.conv1.weight.mul_((torch.rand_like(model.conv1.weight) > 0.6).float())
    zero_2of4(model.gconv.weight)
    density1 = int(torch.count_nonzero(model.conv1.weight)) / model.conv1.weight.numel()
    count = count_macs(model, (1, 3, 32, 24))
    rows = {r.name: r for r in count.layers}
    assert (rows["conv1"].source, rows["conv1"].density) == ("density", density1)
    assert (rows["gconv"].source, rows["gconv"].pattern, rows["gconv"].density) == ("detected", "2:4", 0.5)
    assert (rows["dw"].source, rows["fc"].source) == ("dense", "dense")
    assert count.dense == dense.dense
    assert count.sparse == pytest.approx(c1 * density1 + dw + gc / 2 + fc, rel=1e-12)
    assert count.speedup == pytest.approx(count.dense / count.sparse)


def test_mnist_cnn_against_hand_count():
    model = load_mnist_cnn()
    c1, h, w = conv_macs(1, 32, 3, 28, 28, pad=1)
    c2, h, w = conv_macs(32, 64, 3, h // 2, w // 2, pad=1)
    c3, h, w = conv_macs(64, 128, 3, h // 2, w // 2, pad=1)
    fc1, fc2 = 128 * (h // 2) * (w // 2) * 256, 256 * 10
    count = count_macs(model, (1, 28, 28))
    assert count.dense == c1 + c2 + c3 + fc1 + fc2 == 7_748_608
    zero_2of4(model.fc_layers[0].weight)
    sparse = count_macs(model, (1, 1, 28, 28))
    assert sparse.sparse == c1 + c2 + c3 + fc1 / 2 + fc2
    with pytest.raises(BadInput, match=r"3, 28, 28\)"):  # the model or count_macs names the shape
        count_macs(model, (3, 28, 28))


def test_tome_on_a_cnn_is_refused():
    with pytest.raises(BadInput, match="not supported"):
        count_macs(SmallCNN(), (3, 32, 32), tome_r=4)


# --------------------------------------------------------------------------------------------------
# k:n detection and the density rule


def _kn_rows(groups: list[list[int]]) -> torch.Tensor:
    """One row per entry: 4-wide groups given by their nonzero counts (nonzeros first in each group)."""
    rows = []
    for counts in groups:
        rows.append(torch.cat([torch.tensor([1.0] * c + [0.0] * (4 - c)) for c in counts]))
    return torch.stack(rows)


def test_detect_kn_on_hand_made_masks():
    two_four = _kn_rows([[2] * 8] * 3)
    assert detect_kn(two_four) == (2, 4)  # also 4:8, 8:16 and 16:32: the tie goes to the smallest n
    sparser = _kn_rows([[2, 2, 1, 2, 0, 2, 2, 2]])
    assert detect_kn(sparser) == (13, 32)  # 2:4 too, but 13/32 < 7/16 < 4/8 = 2/4: the lowest k/n
    one_three = _kn_rows([[2, 2, 3, 1, 2, 2, 2, 2]])
    assert detect_kn(one_three) == (4, 8)  # 3 of 4 in one group: not 2:4
    one_three_b = _kn_rows([[2, 2, 3, 2, 2, 2, 2, 2]])
    assert detect_kn(one_three_b) == (17, 32)  # lowest k/n: 17/32 < 9/16 < 5/8 < 3/4
    one_four = _kn_rows([[1, 1, 1, 1, 1, 1, 1, 1]])
    assert detect_kn(one_four) == (1, 4)
    twelve = torch.ones(2, 24)
    twelve[:, torch.arange(24) % 12 >= 6] = 0  # 6 of each 12 kept, 4-groups full
    assert detect_kn(twelve) == (6, 12)
    assert detect_kn(torch.ones(3, 16)) is None  # dense
    assert detect_kn(torch.zeros(2, 10)) is None  # no group size divides 10


class _ThreeLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 8, bias=False)
        self.b = nn.Linear(8, 4)
        self.c = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b(self.a(x)), self.c(x[:, :10])], dim=1)


def test_density_rule_and_given_patterns():
    torch.manual_seed(0)
    model = _ThreeLinears()
    with torch.no_grad():
        model.a.weight[1:].mul_((torch.rand(7, 16) > 0.7).float())  # row 0 stays dense: no k:n
        model.c.weight[:, ::2] = 0  # 10 inputs: no group size divides
    d_a = int(torch.count_nonzero(model.a.weight)) / 128
    count = count_macs(model, (1, 16), patterns={"b": "2:4"})
    rows = {r.name: r for r in count.layers}
    assert (rows["a"].source, rows["a"].pattern, rows["a"].density) == ("density", None, d_a)
    assert (rows["b"].source, rows["b"].pattern, rows["b"].density) == ("given", "2:4", 0.5)
    assert (rows["c"].source, rows["c"].density) == ("density", 0.5)
    assert count.dense == 16 * 8 + 8 * 4 + 10 * 3
    assert count.sparse == pytest.approx(128 * d_a + 32 / 2 + 30 / 2)
    assert count.reduction == pytest.approx(1 - count.sparse / count.dense)


def test_bad_patterns_and_inputs():
    model = nn.Sequential(nn.Linear(10, 4))
    with pytest.raises(BadInput, match="not prunable layers"):
        count_macs(model, (1, 10), patterns={"nope": "2:4"})
    with pytest.raises(BadInput, match="does not divide"):
        count_macs(model, (1, 10), patterns={"0": "2:4"})
    for bad in ("2-4", "5:4", "1:0"):
        with pytest.raises(BadInput):
            parse_kn(bad)
    with pytest.raises(BadInput, match="convention"):
        count_macs(model, (1, 10), convention="hooks")
    with pytest.raises(BadInput, match="batch of 1"):
        count_macs(model, (2, 10))
    with pytest.raises(BadInput, match="positive"):
        count_macs(model, (1, 0))
    assert parse_kn(" 6:12 ") == (6, 12)


# --------------------------------------------------------------------------------------------------
# attribution and reporting


class _FunctionalUse(nn.Module):
    """Uses a Linear's weight without calling the module, and a bare parameter in a matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 6)
        self.p = nn.Parameter(torch.randn(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.lin.weight) + x @ self.lin.weight.T
        return y @ self.p


def test_ops_are_charged_to_the_weight_they_read_not_the_module_called():
    model = _FunctionalUse()
    zero_2of4(model.lin.weight)
    count = count_macs(model, (1, 8))
    rows = {(r.name, r.op): r for r in count.layers}
    assert set(rows) == {("lin", "linear"), ("p", "matmul")}
    assert (rows["lin", "linear"].merged, rows["lin", "linear"].calls) == (2 * 8 * 6, 2)
    assert rows["lin", "linear"].pattern == "2:4" and rows["p", "matmul"].source == "param"
    assert count.sparse == 2 * 8 * 6 / 2 + 6 * 3


class _MatVec(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 6)
        self.v = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmv(self.v, self.lin.weight, x[0]) + torch.mv(self.lin.weight, x[0])
        return y.dot(self.v)


def test_matrix_vector_products_count():
    count = count_macs(_MatVec(), (1, 8))
    rows = {(r.name, r.op): (r.merged, r.calls) for r in count.layers}
    assert rows == {("lin", "linear"): (2 * 6 * 8, 2), ("v", "matmul"): (6, 1)}


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_parametrized_weight_is_charged_to_its_layer_with_the_masked_pattern():
    from torch.nn.utils import parametrize

    model = nn.Sequential(nn.Linear(16, 8))
    mask = torch.ones(8, 16)
    zero_2of4(mask)
    parametrize.register_parametrization(model[0], "weight", _Mask(mask))
    count = count_macs(model, (1, 16))
    (row,) = count.layers
    assert (row.name, row.op, row.merged, row.pattern, row.density) == ("0", "linear", 128, "2:4", 0.5)


def test_uncounted_product_ops_are_reported():
    class Bil(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Bilinear(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x, x)

    count = count_macs(Bil(), (1, 4))
    assert count.uncounted and all("trilinear" in name for name in count.uncounted)
    assert count_macs(tiny_vit(), (1, 28, 28)).uncounted == ()


def test_result_is_json_and_table():
    model = tiny_vit()
    count = count_macs(model, (1, 28, 28), 8, convention="paper")
    data = json.loads(dumps_json(count.to_dict()))
    assert data["convention"] == "paper" and data["reduction"] == pytest.approx(count.reduction)
    assert data["conventions"]["executed"]["sparse"] == count.totals["executed"].sparse
    assert data["tokens"] == [list(t) for t in hand_tokens(50, 8, 3)]
    assert len(data["layers"]) == len(count.layers)
    assert "tome_match" not in {r.op for r in count.layers}  # the paper convention does not count it
    text = count.table()
    assert "blocks.2.mlp.fc2" in text and "total (paper)" in text
    assert {li.name for li in find_layers(model)} <= {r.name for r in count.layers}
