"""Matrix-view conventions and layer discovery (mpprune.layers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpprune.layers import find_layers, from_matrix_view, matrix_blocks, matrix_view
from mpprune.models import MnistCNN


@given(
    cin=st.integers(1, 5),
    cout=st.integers(1, 6),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_conv_matrix_view_times_unfold_is_convolution(cin, cout, kh, kw, stride, padding, dilation, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, dilation=dilation, bias=False)
    conv = conv.double()
    x = torch.randn(2, cin, 9, 10, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight, stride=stride, padding=padding, dilation=dilation)
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (B, cin*kh*kw, L)
    w = matrix_view(conv)
    assert w.shape == (cout, cin * kh * kw)
    out = (w @ cols).reshape(ref.shape)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@given(
    groups=st.sampled_from([2, 3]),
    per_in=st.integers(1, 3),
    per_out=st.integers(1, 3),
    seed=st.integers(0, 999),
)
def test_grouped_conv_matrix_view_acts_per_group(groups, per_in, per_out, seed):
    torch.manual_seed(seed)
    cin, cout = groups * per_in, groups * per_out
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False).double()
    x = torch.randn(1, cin, 6, 5, dtype=torch.float64)
    ref = conv(x)
    w = matrix_view(conv)
    assert w.shape == (cout, per_in * 9)
    for g in range(groups):
        cols = F.unfold(x[:, g * per_in : (g + 1) * per_in], 3, padding=1)
        out_g = (w[g * per_out : (g + 1) * per_out] @ cols).reshape(1, per_out, 6, 5)
        torch.testing.assert_close(out_g, ref[:, g * per_out : (g + 1) * per_out], rtol=1e-10, atol=1e-10)


def test_conv_kinds_and_eligibility():
    model = nn.Sequential(
        nn.Conv2d(32, 64, 3),  # plain
        nn.Conv2d(64, 64, 3, groups=4),  # grouped: (64, 16*9)
        nn.Conv2d(64, 64, 3, groups=64),  # depthwise: (64, 9)
        nn.Linear(64, 1),  # 1 x n
        nn.Linear(64, 8),  # too small
    )
    infos = find_layers(model)
    assert [i.kind for i in infos] == ["conv2d", "conv2d_grouped", "conv2d_depthwise", "linear", "linear"]
    assert [i.matrix_shape for i in infos] == [(64, 288), (64, 144), (64, 9), (1, 64), (8, 64)]
    assert [i.eligible_for_fit for i in infos] == [True, True, False, False, False]
    assert "depthwise" in infos[2].reason
    assert "1x64" in infos[3].reason
    assert "too small" in infos[4].reason
    assert all(i.reason is None for i in infos[:2])
    # identity is the key: each info's module is the object in the model
    assert [id(i.module) for i in infos] == [id(m) for m in model]


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


def test_qkv_split_blocks_reproduce_q_k_v():
    torch.manual_seed(0)
    d = 24
    model = nn.Sequential(_Attn(d))
    info = {i.name: i for i in find_layers(model)}
    qkv = info["0.qkv"]
    assert qkv.kind == "qkv" and qkv.matrix_shape == (3 * d, d) and qkv.block_shapes == [(d, d)] * 3
    assert info["0.proj"].kind == "linear"
    x = torch.randn(5, d)
    full = model[0].qkv(x) - model[0].qkv.bias
    blocks = matrix_blocks(qkv)
    assert [n for n, _ in blocks] == ["0.qkv[q]", "0.qkv[k]", "0.qkv[v]"]
    for j, (_, w) in enumerate(blocks):
        torch.testing.assert_close(x @ w.T, full[:, j * d : (j + 1) * d])


def test_qkv_detection_uses_identity_not_names():
    class NotAttn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv_proj = nn.Linear(16, 48)  # name contains "qkv" but is not a fused qkv attribute

    shared = nn.Linear(32, 32)
    model = nn.ModuleDict({"a": NotAttn(), "b": shared, "c": shared})
    infos = find_layers(model)
    assert [i.kind for i in infos] == ["linear", "linear"]  # shared module listed once
    assert infos[1].module is shared


def test_timm_vit_tiny_layers():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    infos = find_layers(model)
    attn_qkv = {id(b.attn.qkv) for b in model.blocks}
    found_qkv = {id(i.module) for i in infos if i.kind == "qkv"}
    assert found_qkv == attn_qkv and len(found_qkv) == 12
    expected = {id(m) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert {id(i.module) for i in infos} == expected
    d = model.embed_dim
    for i in infos:
        if i.kind == "qkv":
            assert i.block_shapes == [(d, d)] * 3
            # timm splits the qkv output as reshape(B, N, 3, heads, head_dim): the q block is rows 0:d
            x = torch.randn(1, 2, d)
            with torch.no_grad():
                out = i.module(x).reshape(1, 2, 3, d)[:, :, 0] - i.module.bias[:d]
                torch.testing.assert_close(out, x @ matrix_blocks(i)[0][1].T, rtol=1e-4, atol=1e-5)
    patch = next(i for i in infos if i.module is model.patch_embed.proj)
    assert patch.kind == "conv2d" and patch.matrix_shape == (d, 3 * 16 * 16)


def test_timm_resnet18_layers():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    infos = find_layers(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(infos) == len(convs) + 1 == 21
    for i in infos:
        m = i.module
        if isinstance(m, nn.Conv2d):
            assert i.matrix_shape == (m.out_channels, m.in_channels * m.kernel_size[0] * m.kernel_size[1])
    stem = next(i for i in infos if i.module is model.conv1)
    assert stem.matrix_shape == (64, 147) and stem.eligible_for_fit
    assert infos[-1].module is model.fc and infos[-1].matrix_shape == (1000, 512)


def test_mnist_cnn_layers():
    model = MnistCNN()
    infos = find_layers(model)
    assert [i.name for i in infos] == [
        "conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0", "fc_layers.2"
    ]
    assert [i.matrix_shape for i in infos] == [(32, 9), (64, 288), (128, 576), (256, 1152), (10, 256)]
    assert [i.eligible_for_fit for i in infos] == [False, True, True, True, False]


def test_matrix_view_shares_storage_and_round_trips():
    conv = nn.Conv2d(4, 6, 3)
    w = matrix_view(conv)
    w[2, 5] = 123.0
    assert conv.weight[2, 0, 1, 2].item() == 123.0  # column 5 = (channel 0, row 1, col 2) in unfold order
    back = from_matrix_view(conv, w.clone())
    torch.testing.assert_close(back, conv.weight.detach())
    with pytest.raises(ValueError, match=r"\(6, 36\)"):
        from_matrix_view(conv, torch.zeros(6, 35))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="ReLU"):
        matrix_view(nn.ReLU())
    with pytest.raises(ValueError, match="nn.Module"):
        find_layers([nn.Linear(2, 2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_dim"):
        find_layers(nn.Linear(2, 2), min_dim=0)
