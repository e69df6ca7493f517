"""Token merging (mpprune.tome) on tiny random timm ViTs: exactness, matching, sizes, attention, pooling."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer
from torch import nn

from mpprune.tome import (
    Matching,
    apply_tome,
    bipartite_soft_matching,
    is_tome_patched,
    merge_tokens,
    remove_tome,
    resolve_r,
    size_log_bias,
    tome_schedule,
    tome_sizes,
    tome_token_counts,
)
from mptheory.errors import BadInput

IMG = 28


def _vit(
    seed: int = 0, patch_size: int = 4, depth: int = 3, cls: type[nn.Module] = VisionTransformer, **kw
) -> nn.Module:
    torch.manual_seed(seed)
    args = dict(
        img_size=IMG, patch_size=patch_size, in_chans=1, num_classes=5, embed_dim=32, depth=depth, num_heads=2
    )
    args.update(kw)
    return cls(**args).double().eval()


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, IMG, IMG, generator=g, dtype=torch.float64)


def _set_fused(model: nn.Module, fused: bool) -> None:
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


VARIANTS = {
    "plain": {},
    "layerscale": {"init_values": 0.5},
    "qk_norm": {"qk_norm": True},
    "attn_out_norm": {"scale_attn_norm": True},
    "reg_tokens": {"reg_tokens": 2},
    "avg_no_cls": {"global_pool": "avg", "class_token": False},
    "avg_cls_reg": {"global_pool": "avg", "reg_tokens": 1, "no_embed_class": True},
    "avgmax": {"global_pool": "avgmax"},
    "all": {
        "init_values": 0.5,
        "qk_norm": True,
        "reg_tokens": 3,
        "global_pool": "avg",
        "drop_path_rate": 0.1,
    },
}


# --------------------------------------------------------------------------------------------------
# exactness: r = 0 and unpatching


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_r0_is_bit_identical_and_remove_restores(variant: str, fused: bool) -> None:
    model = _vit(**VARIANTS[variant])
    _set_fused(model, fused)
    x = _images()
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    y0 = model(x)
    assert apply_tome(model, 0) is model and is_tome_patched(model)
    assert torch.equal(model(x), y0)
    apply_tome(model, [0] * len(model.blocks), prop_attn=False)
    assert torch.equal(model(x), y0)
    apply_tome(model, 4)
    y4 = model(x)
    assert y4.shape == y0.shape and not torch.equal(y4, y0)  # merging did happen
    sd_patched = model.state_dict()
    assert list(sd_patched) == list(sd_before)
    assert all(torch.equal(sd_patched[k], v) for k, v in sd_before.items())
    assert remove_tome(model) is model and not is_tome_patched(model)
    assert type(model) is VisionTransformer and all(type(b) is Block for b in model.blocks)
    assert not any(k.startswith("_tome") for m in model.modules() for k in vars(m))
    assert torch.equal(model(x), y0)
    assert list(model.state_dict()) == list(sd_before)
    assert remove_tome(model) is model  # a no-op on an unpatched model


def test_gated_attention_r0_identical() -> None:
    model = _vit()
    torch.manual_seed(3)
    for blk in model.blocks:
        blk.attn.gate = nn.Linear(32, 32).double()
    x = _images()
    y0 = model(x)
    apply_tome(model, 0)
    assert torch.equal(model(x), y0)
    apply_tome(model, 5)
    assert model(x).shape == y0.shape


def test_patched_model_deepcopies_and_pickles() -> None:
    model = apply_tome(_vit(reg_tokens=1), 3)
    x = _images()
    y = model(x)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), y)
    assert twin.blocks[1]._tome_state is twin._tome_state is not model._tome_state
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), y) and tome_token_counts(loaded) == tome_token_counts(model)


# --------------------------------------------------------------------------------------------------
# matching and merging against a brute-force reference


def _brute_force(metric: np.ndarray, x: np.ndarray, size: np.ndarray, r: int, p: int):
    """Slow, independent reference for one image: loops over A tokens, sorts edges, merges."""
    n = metric.shape[0]
    mergeable = list(range(p, n))
    a_pos, b_pos = mergeable[0::2], mergeable[1::2]
    r = min(r, len(mergeable) // 2)
    edges = []
    for ia, a in enumerate(a_pos):
        best, best_b = -math.inf, None
        for b in b_pos:
            cos = float(metric[a] @ metric[b]) / (np.linalg.norm(metric[a]) * np.linalg.norm(metric[b]))
            if cos > best:
                best, best_b = cos, b
        edges.append((-best, ia, a, best_b))
    edges.sort()
    chosen = edges[:r]
    src = [e[2] for e in chosen]
    dst = [e[3] for e in chosen]
    x_new, s_new = x.copy(), size.copy()
    for b in set(dst):
        group = [b] + [a for a, d in zip(src, dst) if d == b]
        w = size[group]
        x_new[b] = (w[:, None] * x[group]).sum(axis=0) / w.sum()
        s_new[b] = w.sum()
    kept = [i for i in range(n) if i not in src]
    return src, dst, kept, x_new[kept], s_new[kept]


@pytest.mark.parametrize("seed", range(12))
def test_matching_and_merge_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bsz, n, p = 2, int(rng.integers(4, 14)), int(rng.integers(0, 4))
    n = max(n, p + 1)
    r = int(rng.integers(0, n))
    metric = rng.standard_normal((bsz, n, 5))
    x = rng.standard_normal((bsz, n, 3))
    size = rng.integers(1, 5, (bsz, n)).astype(np.float64)
    size[:, :p] = 1.0
    m = bipartite_soft_matching(torch.from_numpy(metric), r, p)
    xt, st = merge_tokens(torch.from_numpy(x), torch.from_numpy(size)[..., None], m)
    for i in range(bsz):
        src, dst, kept, x_ref, s_ref = _brute_force(metric[i], x[i], size[i], r, p)
        assert m.src[i].tolist() == src and m.dst[i].tolist() == dst and m.kept[i].tolist() == kept
        np.testing.assert_allclose(xt[i].numpy(), x_ref, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(st[i, :, 0].numpy(), s_ref)
        assert st[i].sum().item() == size[i].sum()


def test_matching_ties_and_clipping() -> None:
    # all scores equal: each A takes the first B, and the edges keep A order
    p, n = 2, 11
    m = bipartite_soft_matching(torch.ones(1, n, 4), 3, p)
    assert m.src.tolist() == [[2, 4, 6]] and m.dst.tolist() == [[3, 3, 3]]
    assert m.kept.tolist() == [[0, 1, 3, 5, 7, 8, 9, 10]]
    # r above half the mergeable tokens is clipped to (n - p) // 2
    big = bipartite_soft_matching(torch.randn(2, n, 4), 100, p)
    assert big.r == (n - p) // 2 and big.kept.shape == (2, n - (n - p) // 2)


def test_prefix_tokens_never_matched_even_when_most_similar() -> None:
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 9, 6, generator=g)
    prefix = patches[:, [0, 1]].clone()  # prefix tokens identical to patch tokens: cosine 1
    m = bipartite_soft_matching(torch.cat([prefix, patches], dim=1), 4, num_prefix=2)
    assert (m.src >= 2).all() and (m.dst >= 2).all()
    assert (m.kept[:, :2] == torch.tensor([0, 1])).all()


def test_unmerged_tokens_keep_their_values_exactly_and_merge_is_differentiable() -> None:
    x = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    size = torch.randint(1, 4, (2, 9, 1)).double()
    m = bipartite_soft_matching(torch.randn(2, 9, 5), 3, 1)
    out, _ = merge_tokens(x, size, m)
    for i in range(2):
        untouched = [j for j in m.kept[i].tolist() if j not in m.dst[i].tolist()]
        pos = [m.kept[i].tolist().index(j) for j in untouched]
        assert torch.equal(out[i, pos], x[i, untouched])
    assert torch.autograd.gradcheck(lambda t: merge_tokens(t, size, m)[0], (x,))


def test_block_merges_after_attention_on_head_mean_keys() -> None:
    # reference from the block's weights: keys after k_norm averaged over heads, matched, and the
    # attention residual merged before the MLP (captured at the input of norm2)
    model = _vit(qk_norm=True, init_values=0.5, reg_tokens=1)
    p, blk = model.num_prefix_tokens, model.blocks[0]
    x = _images(3)
    with torch.no_grad():
        x0 = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        b, n, _ = x0.shape
        qkv = blk.attn.qkv(blk.norm1(x0)).reshape(b, n, 3, blk.attn.num_heads, blk.attn.head_dim)
        keys = blk.attn.k_norm(qkv[:, :, 1].transpose(1, 2))
        m = bipartite_soft_matching(keys.mean(dim=1), 7, p)
        x_ref, s_ref = merge_tokens(x0 + blk.ls1(blk.attn(blk.norm1(x0))), None, m)
    seen: list[torch.Tensor] = []
    handle = blk.norm2.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    apply_tome(model, [7, 0, 0])
    with torch.no_grad():
        model(x)
    handle.remove()
    torch.testing.assert_close(seen[0], x_ref, rtol=0, atol=1e-12)
    sizes = tome_sizes(model)
    assert sizes is not None and torch.equal(sizes, s_ref)


# --------------------------------------------------------------------------------------------------
# sizes, prefix protection and token accounting in the model


@pytest.mark.parametrize(
    "kw", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 4}]
)
def test_sizes_sum_to_patches_and_counts_match_schedule(kw: dict) -> None:
    model = _vit(**kw)
    p = model.num_prefix_tokens
    n0 = 49 + p
    x = _images(3)
    for r in [2, 100, [0, 5, 3], (4, -1), (3, 1.0)]:
        apply_tome(model, r)
        model(x)
        r_list = resolve_r(r, len(model.blocks))
        assert tome_token_counts(model) == tome_schedule(n0, p, r_list)
        sizes = tome_sizes(model)
        assert sizes is not None and sizes.shape == (3, tome_token_counts(model)[-1][1], 1)
        assert (sizes[:, :p] == 1).all()
        assert (sizes[:, p:].sum(dim=(1, 2)) == 49).all()
    # r = 100 is clipped to half the mergeable tokens in every block
    assert tome_schedule(n0, p, [100] * 3)[0] == (n0, n0 - 49 // 2)


def test_distilled_deit_protects_class_and_distillation_tokens() -> None:
    model = _vit(cls=VisionTransformerDistilled, patch_size=7)
    x = _images()
    y0 = model(x)
    apply_tome(model, 0)
    assert torch.equal(model(x), y0)
    apply_tome(model, 100)
    y = model(x)
    assert y.shape == y0.shape
    assert tome_token_counts(model) == tome_schedule(18, 2, [100] * 3) == [(18, 10), (10, 6), (6, 4)]
    sizes = tome_sizes(model)
    assert sizes is not None and sizes[:, :2].eq(1).all() and sizes[:, 2:].sum(dim=(1, 2)).eq(16).all()
    remove_tome(model)
    assert type(model) is VisionTransformerDistilled and torch.equal(model(x), y0)


def test_resolve_r() -> None:
    assert resolve_r(3, 4) == [3, 3, 3, 3]
    assert resolve_r(np.int64(2), 2) == [2, 2]
    assert resolve_r([1, 0, 2], 3) == [1, 0, 2]
    assert resolve_r((4, 0), 3) == [4, 4, 4]
    assert resolve_r((4, -1), 3) == [8, 4, 0]
    assert resolve_r((4, 1), 3) == [0, 4, 8]
    assert resolve_r((2, 0.5), 5) == [1, 2, 2, 3, 3]
    assert resolve_r((5, 1), 1) == [5]
    for bad, depth in [(-1, 2), (1.5, 2), ([1, 2], 3), ((2, 2.0), 3), (True, 2), ("3", 2), ((1, 2, 3), 3)]:
        with pytest.raises(BadInput):
            resolve_r(bad, depth)  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        tome_schedule(3, 4, [1])


# --------------------------------------------------------------------------------------------------
# proportional attention


def _reference_attention(attn: Attention, x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + log size_k) v, written out from the weights (no q/k norm, no gate)."""
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + size[:, None, None, :, 0].log()
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, h * d)
    return out @ attn.proj.weight.T + attn.proj.bias


def test_proportional_attention_paths_agree() -> None:
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    ones = torch.ones(3, 7, 1, dtype=torch.float64)
    size = torch.randint(1, 6, (3, 7, 1)).double()
    outs = {}
    for fused in (True, False):
        attn.fused_attn = fused
        plain = attn(x)
        torch.testing.assert_close(attn(x, attn_mask=size_log_bias(ones)), plain, rtol=0, atol=1e-13)
        outs[fused] = attn(x, attn_mask=size_log_bias(size))
    torch.testing.assert_close(outs[True], outs[False], rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[False], _reference_attention(attn, x, size), rtol=0, atol=1e-12)
    # a token of size 2 weighs as two identical tokens would
    dup = torch.cat([x, x[:, 2:3]], dim=1)
    size2 = torch.ones(3, 7, 1, dtype=torch.float64)
    size2[:, 2] = 2
    torch.testing.assert_close(attn(x, attn_mask=size_log_bias(size2)), attn(dup)[:, :7], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kw", [{}, {"qk_norm": True, "init_values": 0.3, "reg_tokens": 2, "global_pool": "avg"}]
)
def test_model_fused_equals_explicit_with_merging(kw: dict) -> None:
    model = apply_tome(_vit(**kw), [3, 6, 4])
    x = _images()
    _set_fused(model, True)
    y_fused = model(x)
    _set_fused(model, False)
    torch.testing.assert_close(model(x), y_fused, rtol=0, atol=1e-11)


@pytest.mark.parametrize("pool", ["avg", "token", "avgmax"])
def test_merging_identical_tokens_leaves_output_unchanged(pool: str) -> None:
    # without position embeddings two identical patches stay identical tokens in every block; merging
    # them (size 2, proportional attention, size-weighted pooling) must not change the output
    model = _vit(patch_size=7, pos_embed="none", global_pool=pool, class_token=pool != "avg", reg_tokens=1)
    p = model.num_prefix_tokens
    x = _images(2)
    x[:, :, 0:7, 7:14] = x[:, :, 0:7, 0:7]  # patch 1 (set B) := patch 0 (set A)
    y0 = model(x)
    apply_tome(model, [1, 0, 0])
    y = model(x)
    assert tome_token_counts(model) == [(16 + p, 15 + p), (15 + p, 15 + p), (15 + p, 15 + p)]
    sizes = tome_sizes(model)
    assert sizes is not None and (sizes[:, p, 0] == 2).all()  # the merged pair is the first patch token
    torch.testing.assert_close(y, y0, rtol=0, atol=1e-10)
    apply_tome(model, [1, 0, 0], prop_attn=False)
    assert (model(x) - y0).abs().max() > 1e-6  # without proportional attention the pair counts once


# --------------------------------------------------------------------------------------------------
# batches, grad modes


def test_batch_independence() -> None:
    model = apply_tome(_vit(reg_tokens=1, global_pool="avg"), 6)
    x = _images(4)
    y = model(x)
    sizes = tome_sizes(model)
    assert sizes is not None
    singles = []
    for i in range(4):
        singles.append(model(x[i : i + 1]))
        s_i = tome_sizes(model)
        assert s_i is not None and torch.equal(s_i[0], sizes[i])
    torch.testing.assert_close(torch.cat(singles), y, rtol=0, atol=1e-12)
    assert any(not torch.equal(sizes[0], sizes[i]) for i in range(1, 4))  # each image merges its own tokens


def test_no_grad_and_autograd() -> None:
    model = _vit(init_values=0.5, qk_norm=True, drop_path_rate=0.2)
    dense_grads = {n for n, p in model.named_parameters()}
    apply_tome(model, 5)
    x = _images(2)
    with torch.no_grad():
        y_ng = model(x)
    assert not y_ng.requires_grad
    y = model(x)
    torch.testing.assert_close(y, y_ng, rtol=0, atol=0)
    model.train()
    out = model(x)
    out.square().sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == dense_grads
    assert tome_token_counts(model) == tome_schedule(50, 1, [5, 5, 5])


def test_low_precision_and_autocast_keep_exact_sizes() -> None:
    model = apply_tome(_vit(reg_tokens=1, global_pool="avg").float(), 6)
    x = _images().float()
    for fused in (True, False):
        _set_fused(model, fused)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        sizes = tome_sizes(model)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
        assert sizes is not None and sizes.dtype == torch.float32
        assert (sizes[:, 2:].sum(dim=(1, 2)) == 49).all()
    model.to(torch.bfloat16)
    assert torch.isfinite(model(x.bfloat16())).all()
    assert tome_token_counts(model) == tome_schedule(51, 2, [6, 6, 6])


# --------------------------------------------------------------------------------------------------
# refusals


def test_unsupported_models_and_uses_are_refused() -> None:
    with pytest.raises(BadInput, match=r"blocks\.0 is a ResPostBlock"):
        apply_tome(_vit(block_fn=ResPostBlock), 2)
    with pytest.raises(BadInput, match=r"blocks\.0\.attn is a DiffAttention"):
        apply_tome(_vit(attn_layer="diff"), 2)
    with pytest.raises(BadInput, match="attn_pool"):
        apply_tome(_vit(global_pool="map"), 2)
    with pytest.raises(BadInput, match="Linear"):
        apply_tome(nn.Linear(3, 3), 2)

    class MyViT(VisionTransformer):
        pass

    with pytest.raises(BadInput, match="MyViT"):
        apply_tome(_vit(cls=MyViT), 2)
    model = _vit()
    model.set_grad_checkpointing(True)
    with pytest.raises(BadInput, match="checkpointing"):
        apply_tome(model, 2)
    model.set_grad_checkpointing(False)
    apply_tome(model, 2)
    with pytest.raises(BadInput, match="checkpointing"):
        model.set_grad_checkpointing(True)
    with pytest.raises(BadInput, match="no complete forward"):
        tome_token_counts(model)
    with pytest.raises(BadInput, match="attn_mask"):
        model(_images(), attn_mask=torch.zeros(50, 50, dtype=torch.float64))
    with pytest.raises(BadInput, match="not patched"):
        tome_token_counts(_vit())
    with pytest.raises(BadInput, match="one entry per block"):
        apply_tome(_vit(), [1, 2])
    assert isinstance(Matching(torch.zeros(1, 0), torch.zeros(1, 0), torch.zeros(1, 3)).r, int)
