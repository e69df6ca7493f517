"""Input-channel permutations folded into the weights: the function is unchanged (timm ViT blocks, a
ResNet-like conv + BN chain, the real MNIST CNN), the search never raises the k:n cost, records replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.methods.kn_search import min_cost
from mpprune.methods.permute import (
    apply_permutation,
    consumer_terms,
    find_sites,
    interleave,
    permute_model,
    permuted_reference,
    search_permutation,
)
from mpprune.methods.permute_sites import inverse_permutation


def _tiny_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                              init_values=0.5, class_token=True, reg_tokens=1, global_pool="token")
    with torch.no_grad():  # non-trivial norms and biases so that a wrong fold shows
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model.eval()


class _Bottleneck(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        return torch.relu(x + self.bn3(self.conv3(y)))


def _resnet_like() -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        _Bottleneck(16, 8), _Bottleneck(16, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def _batches(shape: tuple[int, ...], n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, None]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), None) for _ in range(n)]


def _check_unchanged(model: nn.Module, x: torch.Tensor, run) -> tuple[list, dict]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        before = model(x).clone()
    records, skipped = run(model)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-5 * float(before.abs().max())), skipped
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values())
    return records, skipped


def test_timm_vit_blocks_residual_attention_and_mlp() -> None:
    model = _tiny_vit()
    cal = _batches((6, 3, 16, 16))
    x = torch.randn(5, 3, 16, 16)
    run = lambda m: permute_model(m, cal, "2:4", residual=True, max_rounds=4)  # noqa: E731
    records, _ = _check_unchanged(model, x, run)
    kinds = sorted(r.site.kind for r in records)
    assert kinds.count("residual") == 1 and kinds.count("attention") == 2 and kinds.count("chain") == 2
    res = next(r for r in records if r.site.kind == "residual")
    assert set(res.site.consumers) == {f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "mlp.fc1")}
    att = next(r for r in records if r.site.kind == "attention")
    head_dim = 16
    perm = att.result.perm  # within heads only
    assert all(set(perm[h * head_dim : (h + 1) * head_dim]) == set(range(h * head_dim, (h + 1) * head_dim))
               for h in range(2))
    for r in records:
        assert r.result.cost_final <= r.result.cost_identity * (1 + 1e-12)


def test_resnet_like_conv_bn_chain_and_residual_add_refused() -> None:
    model = _resnet_like()
    cal = _batches((4, 3, 8, 8))
    x = torch.randn(3, 3, 8, 8)
    run = lambda m: permute_model(m, cal, "2:4", layout="channel", max_rounds=6)  # noqa: E731
    records, skipped = _check_unchanged(model, x, run)
    keys = {r.site.key for r in records}
    assert {"3.conv2", "3.conv3", "4.conv2", "4.conv3"} <= keys
    # 3.conv1 reads the stem's ReLU output, which the residual add (a functional op the hooks cannot see)
    # reads too: the trial fold with a random permutation changes the output, so it is no site
    sites, why, _ = find_sites(model, x)
    assert "3.conv1" not in sites and "not foldable" in why["3.conv1"]
    assert "not foldable" in skipped["3.conv1"]
    assert "3.conv1" in find_sites(model, x, check=False)[0]
    # 4.conv1 reads the output of a functional add: no producing module
    assert "functional" in skipped["4.conv1"]
    # the 3x3 conv in the im2col layout has no channel groups: skipped with the reason
    _, why = permute_model(_resnet_like(), cal, "2:4", layout="matrix", max_rounds=1)
    assert "im2col" in why["3.conv2"]


def test_real_mnist_cnn() -> None:
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.models import load_mnist_cnn

    model = load_mnist_cnn()
    cal = calibration_batches(mnist_digits("train"), 32, batch_size=16, seed=0)
    x = cal[0][0]
    run = lambda m: permute_model(m, cal, "2:4", layout="channel", max_rounds=2, layers=["conv_layers.3"])  # noqa: E731
    records, _ = _check_unchanged(model, x, run)
    assert [r.site.key for r in records] == ["conv_layers.3"]
    assert records[0].result.cost_final < records[0].result.cost_identity


def test_producer_masks_follow_and_records_replay() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    dense = [p.detach().clone() for p in model.parameters()]
    store = MaskStore()
    mask = torch.rand(16, 8) > 0.5
    store.add("0", model[0], mask)
    sites, _, _ = find_sites(model, torch.randn(2, 8))
    perm = np.random.default_rng(0).permutation(16)
    apply_permutation(model, sites["2"].edits, perm, store)
    assert torch.equal(store["0"], mask[torch.as_tensor(perm)])
    assert torch.equal(model[2].weight, dense[2][:, torch.as_tensor(perm)])
    apply_permutation(model, sites["2"].edits, inverse_permutation(perm), store)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), dense))
    with pytest.raises(BadInput, match="not a permutation"):
        apply_permutation(model, sites["2"].edits, [0] * 16)
    cal = _batches((6, 8))
    records, _ = permute_model(model, cal, "2:4", max_rounds=3)
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fresh.load_state_dict(dict(zip(fresh.state_dict(), dense)))
    replay = permuted_reference(fresh, [r.to_dict() for r in records])
    assert all(torch.equal(p, q) for p, q in zip(replay.parameters(), model.parameters()))


def test_interleave_formula() -> None:
    imp = np.array([5.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])
    perm = interleave(imp, 4, 8)  # sorted: 4, 2, 6, 0, 7, 3, 5, 1; G = 2: perm[g*4 + s] = sorted[s*2 + g]
    assert perm.tolist() == [4, 6, 7, 5, 2, 0, 3, 1]
    blocks = interleave(imp, 2, 4)  # within blocks of 4
    assert sorted(blocks[:4].tolist()) == [0, 1, 2, 3] and sorted(blocks[4:].tolist()) == [4, 5, 6, 7]


@settings(max_examples=10)
@given(st.sampled_from([(2, 4), (1, 4), (4, 8)]), st.integers(0, 1000), st.booleans())
def test_search_never_raises_the_cost_and_reports_it(kn: tuple[int, int], seed: int, magnitude: bool) -> None:
    k, n = kn
    g = torch.Generator().manual_seed(seed)
    C = 4 * n
    W = torch.randn(6, C, generator=g, dtype=torch.float64)
    x = torch.randn(40, C, generator=g, dtype=torch.float64) * torch.rand(C, generator=g, dtype=torch.float64)
    H = None if magnitude else x.T @ x / 40
    terms = [consumer_terms(W, H, 1)]
    res = search_permutation(terms, (k, n), seed=seed, max_rounds=6)
    assert sorted(res.perm.tolist()) == list(range(C))
    assert res.cost_final <= res.cost_start * (1 + 1e-12)
    assert res.cost_start <= res.cost_identity * (1 + 1e-12)
    # the reported cost is the k:n cost of the permuted layer
    p = torch.as_tensor(res.perm)
    Wp = W[:, p].reshape(6, -1, n)
    second = None if H is None else H[p][:, p].reshape(C // n, n, C // n, n).diagonal(dim1=0, dim2=2)
    second = None if second is None else second.permute(2, 0, 1)
    assert float(min_cost(Wp, k, second).sum()) == pytest.approx(res.cost_final, rel=1e-9)
