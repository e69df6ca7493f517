"""Token merging (ToMe) for current timm Vision Transformers, written from the paper.

Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023). The original code is not used.

What is merged, and where
    In every patched block, after the attention residual and before the MLP, ``r`` pairs of similar
    *patch* tokens are merged by bipartite soft matching (:func:`bipartite_soft_matching`):

    1. the metric is the attention keys (after ``k_norm``), averaged over heads;
    2. the mergeable tokens are split alternately into A (even positions) and B (odd positions);
    3. every A token takes its most cosine-similar B token (its best edge, first index on ties);
    4. the ``r`` A tokens with the highest best-edge scores (stable sort: lower index on ties) are merged
       into their B partners; several A tokens may merge into the same B token.

    Prefix tokens (``model.num_prefix_tokens``: class, distillation and register tokens) take no part
    in the matching and are never merged. At most half the mergeable tokens can go in one block: the
    ``r`` of a block is clipped to ``(N - num_prefix) // 2`` where ``N`` is the number of tokens
    entering it (the clipped value is what :func:`tome_schedule` and :func:`tome_token_counts` report).

How sizes propagate
    Every token carries a size: the number of original patches it stands for (prefix tokens: 1). A
    merge replaces the B token by the size-weighted mean of itself and its A partners, and its size by
    the sum of their sizes (kept in at least float32, so counts stay exact under bf16 or autocast);
    tokens that are not merged keep their values bit for bit. The kept tokens
    stay in their original order (prefix first), so a token's position stays meaningful. With
    *proportional attention* (``prop_attn=True``) the log of the key sizes is added to the attention
    logits, passed to timm's own ``Attention`` as a float ``attn_mask`` (SDPA and the explicit
    softmax path alike); a token of size s then weighs in attention as s identical tokens would.
    Average pooling (``global_pool`` "avg" and the mean half of "avgmax") is size-weighted, so the
    pooled feature is the mean over the original patches; "token" pooling reads the class token.

What differs from the original ToMe
    The original patches timm 0.4.12 by replacing ``forward`` with copies that drop the features of
    current timm. Here the stock timm modules do the work: a patched ``Block`` runs its own
    ``norm1``, ``attn`` (with ``q_norm``/``k_norm``, the output ``norm`` and ``gate`` when present,
    ``fused_attn`` either way, attention and projection dropout), ``ls1``/``ls2`` (LayerScale),
    ``drop_path1``/``drop_path2``, ``norm2`` and ``mlp``; forward hooks on those submodules keep
    firing. Further: register tokens are protected; the final average pool is size-weighted; kept
    tokens keep their order; with r = 0 in a block and nothing merged before it, the block runs
    exactly timm's ``Block.forward`` (bit-identical outputs); :func:`remove_tome` restores the
    original classes; no parameter or buffer is added, so checkpoints are unaffected.

Limits
    Only ``timm.models.vision_transformer.VisionTransformer`` and DeiT's ``VisionTransformerDistilled``
    whose blocks are exactly timm's ``Block`` with exactly timm's ``Attention`` are supported; other
    block types (``ResPostBlock``, the parallel blocks, ``DiffAttention``, RoPE attention), attention
    pooling (``global_pool`` "map"/"prr"), windowed or shifted-window attention (Swin, SAM) and
    relative position biases are refused with :class:`~mptheory.errors.BadInput`. A forward with an
    ``attn_mask`` or ``is_causal``, and gradient checkpointing, are refused (a merged sequence has no
    fixed mask, and re-running a block would see the sizes of a later block). ``forward_intermediates``
    with ``output_fmt="NCHW"`` cannot reshape merged tokens to a grid. "max" pooling (and the max half
    of "avgmax") is the maximum over merged tokens, not over the original patches.

The schedule ``r``
    * an ``int``: that many tokens per block, in every block;
    * a ``list`` of ints: one per block (its length must equal the depth);
    * a ``tuple`` ``(r, inflection)`` with ``inflection`` in [-1, 1]: a linear ramp with mean r over
      the blocks, block i (0-based, of L) getting ``floor(r * (1 - inflection * (1 - 2 i / (L - 1))) + 1/2)``;
      inflection -1 decreases from 2r to 0, 0 is constant, +1 increases from 0 to 2r.

Token accounting for the MAC counter: :func:`tome_token_counts` (measured in the last forward) and
:func:`tome_schedule` (predicted, no model run) give per block the tokens entering attention and the
tokens entering the MLP.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mptheory.errors import BadInput

__all__ = [
    "apply_tome",
    "remove_tome",
    "is_tome_patched",
    "resolve_r",
    "tome_schedule",
    "tome_token_counts",
    "tome_sizes",
    "Matching",
    "bipartite_soft_matching",
    "merge_tokens",
    "size_log_bias",
    "ToMeBlock",
    "ToMeVisionTransformer",
    "ToMeVisionTransformerDistilled",
]

RSpec = int | list[int] | tuple[int, float]


# --------------------------------------------------------------------------------------------------
# the schedule


def resolve_r(r: RSpec, depth: int) -> list[int]:
    """The per-block list of tokens to merge for a schedule ``r`` (see the module docstring) and depth.

    Raises BadInput for a negative or non-integer r, a list of the wrong length, or an inflection
    outside [-1, 1]. The values are requested counts; each block clips its own to half its
    mergeable tokens (:func:`tome_schedule`).
    """
    if depth < 0:
        raise BadInput(f"ToMe: depth must be >= 0, got {depth}")

    def _int(v: Any, what: str) -> int:
        try:
            out = operator.index(v)
        except TypeError:
            out = -1
        if isinstance(v, bool) or out < 0:
            raise BadInput(f"ToMe: {what} must be a non-negative int, got {v!r}")
        return out

    if isinstance(r, tuple):
        if len(r) != 2:
            raise BadInput(f"ToMe: a tuple r must be (r, inflection), got {r!r}")
        base = _int(r[0], "r")
        infl = r[1]
        if isinstance(infl, bool) or not isinstance(infl, int | float) or not -1.0 <= float(infl) <= 1.0:
            raise BadInput(f"ToMe: the inflection of (r, inflection) must be in [-1, 1], got {infl!r}")
        if depth <= 1:
            return [base] * depth
        return [
            int(math.floor(base * (1.0 - float(infl) * (1.0 - 2.0 * i / (depth - 1))) + 0.5))
            for i in range(depth)
        ]
    if isinstance(r, list):
        if len(r) != depth:
            raise BadInput(f"ToMe: a list r needs one entry per block ({depth}), got {len(r)}")
        return [_int(v, f"r[{i}]") for i, v in enumerate(r)]
    if isinstance(r, Sequence):
        raise BadInput(f"ToMe: r must be an int, a list (one per block) or (r, inflection), got {r!r}")
    return [_int(r, "r")] * depth


def _clip_r(r: int, n_tokens: int, num_prefix: int) -> int:
    """At most half the mergeable tokens (rounded down) can be merged away in one block."""
    return max(0, min(r, (n_tokens - num_prefix) // 2))


def tome_schedule(num_tokens: int, num_prefix: int, r_list: Sequence[int]) -> list[tuple[int, int]]:
    """Predicted ``(n_attn, n_mlp)`` per block: tokens entering attention and the MLP of each block.

    ``num_tokens`` counts every token entering the first block (prefix tokens included); ``r_list``
    is one requested r per block (:func:`resolve_r`), clipped per block to half the mergeable tokens.
    Pure arithmetic: no model is run. Equals :func:`tome_token_counts` after a forward.
    """
    if num_prefix < 0 or num_tokens < num_prefix:
        raise BadInput(f"ToMe: need 0 <= num_prefix <= num_tokens, got {num_prefix} and {num_tokens}")
    out: list[tuple[int, int]] = []
    n = int(num_tokens)
    for i, r in enumerate(r_list):
        if r < 0:
            raise BadInput(f"ToMe: r[{i}] must be >= 0, got {r}")
        n_mlp = n - _clip_r(int(r), n, num_prefix)
        out.append((n, n_mlp))
        n = n_mlp
    return out


# --------------------------------------------------------------------------------------------------
# matching and merging


@dataclass(frozen=True)
class Matching:
    """The result of one bipartite soft matching on a batch of sequences of N tokens.

    All indices are positions in the full sequence (prefix tokens included), one row per image:
    ``src`` (B, r): the merged A tokens, best edge first; ``dst`` (B, r): the B token each merges into;
    ``kept`` (B, N - r): the surviving tokens in increasing position (the prefix first).
    """

    src: torch.Tensor
    dst: torch.Tensor
    kept: torch.Tensor

    @property
    def r(self) -> int:
        return int(self.src.shape[1])


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int = 0) -> Matching:
    """Bipartite soft matching of the tokens of ``metric`` (B, N, C); prefix tokens never take part.

    The mergeable tokens ``metric[:, num_prefix:]`` are split alternately into A (even) and B (odd);
    each A token's best edge is its most cosine-similar B token (first on ties); the ``r`` A tokens
    with the highest best-edge scores (stable: lower position first on ties) are merged. ``r`` is
    clipped to half the mergeable tokens. No gradient flows through the matching.
    """
    if metric.dim() != 3:
        raise BadInput(f"ToMe: metric must be (batch, tokens, channels), got shape {tuple(metric.shape)}")
    bsz, n, _ = metric.shape
    r = _clip_r(int(r), n, num_prefix)
    dev = metric.device
    with torch.no_grad():
        m = metric[:, num_prefix:]
        if m.dtype not in (torch.float32, torch.float64):
            m = m.float()
        m = F.normalize(m, dim=-1)
        scores = m[:, 0::2] @ m[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|)
        if r == 0 or scores.shape[-1] == 0:
            empty = torch.zeros(bsz, 0, dtype=torch.long, device=dev)
            kept = torch.arange(n, device=dev).expand(bsz, n)
            return Matching(empty, empty, kept)
        best, best_b = scores.max(dim=-1)
        order = torch.sort(best, dim=-1, descending=True, stable=True).indices[:, :r]
        src = num_prefix + 2 * order
        dst = num_prefix + 2 * best_b.gather(1, order) + 1
        merged = torch.zeros(bsz, n, dtype=torch.uint8, device=dev)
        merged.scatter_(1, src, 1)
        kept = torch.sort(merged, dim=1, stable=True).indices[:, : n - r]
    return Matching(src, dst, kept)


def _size_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sizes are integers: keep them (and the weighted sums) in at least float32."""
    return torch.promote_types(dtype, torch.float32)


def merge_tokens(
    x: torch.Tensor, size: torch.Tensor | None, matching: Matching
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` (B, N, C) along ``matching``: size-weighted means, sizes summed, kept order.

    ``size`` (B, N, 1) holds the token sizes (None: all ones). Returns ``(x', size')`` with
    N - r tokens; tokens that receive no merge keep their values exactly. Differentiable in ``x``.
    """
    bsz, n, c = x.shape
    sdt = _size_dtype(x.dtype)
    s = torch.ones(bsz, n, 1, dtype=sdt, device=x.device) if size is None else size.to(sdt)
    if s.shape != (bsz, n, 1):
        raise BadInput(f"ToMe: sizes of shape {tuple(s.shape)} do not match tokens of shape {tuple(x.shape)}")
    src, dst = matching.src[..., None], matching.dst[..., None]
    weighted = x.to(sdt) * s
    num = weighted.scatter_add(1, dst.expand(-1, -1, c), weighted.gather(1, src.expand(-1, -1, c)))
    den = s.scatter_add(1, dst, s.gather(1, src))
    is_dst = torch.zeros(bsz, n, 1, dtype=torch.bool, device=x.device).scatter(1, dst, True)
    out = torch.where(is_dst, (num / den).to(x.dtype), x)
    kept = matching.kept[..., None]
    return out.gather(1, kept.expand(-1, -1, c)), den.gather(1, kept)


def size_log_bias(size: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The proportional-attention bias log(size) of the keys, shaped (B, 1, 1, N) for ``attn_mask``."""
    return size.log()[:, None, None, :, 0].to(dtype or size.dtype)


# --------------------------------------------------------------------------------------------------
# the patched modules


@dataclass(eq=False)
class _ToMeState:
    """Shared by a patched model and its blocks; a plain attribute, so never in the state_dict."""

    r: list[int]
    prop_attn: bool
    num_prefix: int
    size: torch.Tensor | None = None
    counts: list[tuple[int, int] | None] = field(default_factory=list)


class ToMeBlock(Block):
    """timm's ``Block`` with token merging between the attention and the MLP (set by :func:`apply_tome`)."""

    _tome_state: _ToMeState
    _tome_index: int

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        st, idx = self._tome_state, self._tome_index
        if attn_mask is not None or is_causal:
            raise BadInput(f"ToMe: blocks.{idx} cannot take attn_mask or is_causal (tokens are merged)")
        if idx == 0:
            st.size, st.counts = None, [None] * len(st.r)
        size = st.size
        if size is not None and size.shape[:2] != x.shape[:2]:
            raise BadInput(
                f"ToMe: blocks.{idx} got {tuple(x.shape[:2])} tokens but the sizes of the previous block "
                f"are {tuple(size.shape[:2])}: run the whole model (no checkpointing, no block alone)"
            )
        n_attn = x.shape[1]
        r = _clip_r(st.r[idx], n_attn, st.num_prefix)
        bias = size_log_bias(size, x.dtype) if (st.prop_attn and size is not None) else None
        keys: list[torch.Tensor] = []
        handle = None
        if r > 0:
            k_norm: nn.Module = self.attn.k_norm  # type: ignore[assignment]
            handle = k_norm.register_forward_hook(lambda _m, _i, out: keys.append(out))
        try:
            a = self.attn(self.norm1(x), attn_mask=bias)
        finally:
            if handle is not None:
                handle.remove()
        x = x + self.drop_path1(self.ls1(a))
        if r > 0:
            if len(keys) != 1:
                raise RuntimeError(f"ToMe: blocks.{idx}.attn.k_norm ran {len(keys)} times (expected once)")
            matching = bipartite_soft_matching(keys[0].mean(dim=1), r, st.num_prefix)
            x, st.size = merge_tokens(x, size, matching)
        st.counts[idx] = (n_attn, x.shape[1])
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class ToMeVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` with size-weighted average pooling (set by :func:`apply_tome`)."""

    _tome_state: _ToMeState

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pt = self.global_pool if pool_type is None else pool_type
        size = self._tome_state.size
        if size is None or self.attn_pool is not None or pt not in ("avg", "avgmax"):
            return super().pool(x, pool_type)
        if size.shape[:2] != x.shape[:2]:
            raise BadInput(
                f"ToMe: pooling {tuple(x.shape[:2])} tokens with the sizes {tuple(size.shape[:2])} "
                "of another forward"
            )
        if not self.pool_include_prefix:
            x, size = x[:, self.num_prefix_tokens :], size[:, self.num_prefix_tokens :]
        avg = ((x.to(size.dtype) * size).sum(dim=1) / size.sum(dim=1)).to(x.dtype)
        if pt == "avg":
            return avg
        return 0.5 * (x.amax(dim=1) + avg)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise BadInput("ToMe: gradient checkpointing is not supported on a token-merging model")
        super().set_grad_checkpointing(enable)


class ToMeVisionTransformerDistilled(ToMeVisionTransformer, VisionTransformerDistilled):
    """DeiT's ``VisionTransformerDistilled`` with token merging (class and distillation tokens protected)."""


_MODEL_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    VisionTransformer: ToMeVisionTransformer,
    VisionTransformerDistilled: ToMeVisionTransformerDistilled,
}
_ORIGINAL = {v: k for k, v in _MODEL_CLASSES.items()}


# --------------------------------------------------------------------------------------------------
# apply / remove / accounting


def is_tome_patched(model: nn.Module) -> bool:
    """Whether :func:`apply_tome` has patched ``model`` (and :func:`remove_tome` has not undone it)."""
    return type(model) in _ORIGINAL


def _check_supported(model: nn.Module) -> None:
    if type(model) not in _MODEL_CLASSES and type(model) not in _ORIGINAL:
        raise BadInput(
            f"ToMe: model of type {type(model).__name__} is not supported: need timm's VisionTransformer "
            "or VisionTransformerDistilled"
        )
    vit: Any = model
    if vit.attn_pool is not None:
        raise BadInput(
            f"ToMe: attn_pool ({type(vit.attn_pool).__name__}, global_pool={vit.global_pool!r}) is not "
            "supported: attention pooling over merged tokens"
        )
    if vit.grad_checkpointing:
        raise BadInput("ToMe: gradient checkpointing is on; switch it off before apply_tome")
    for i, blk in enumerate(vit.blocks):
        if type(blk) not in (Block, ToMeBlock):
            raise BadInput(f"ToMe: blocks.{i} is a {type(blk).__name__}; only timm's Block is supported")
        if type(blk.attn) is not Attention:
            raise BadInput(
                f"ToMe: blocks.{i}.attn is a {type(blk.attn).__name__}; only timm's Attention is supported"
            )


def apply_tome(model: nn.Module, r: RSpec, *, prop_attn: bool = True) -> nn.Module:
    """Patch a timm ViT in place to merge ``r`` tokens per block (module docstring); returns ``model``.

    ``r``: an int (every block), a list (one per block) or ``(r, inflection)`` (:func:`resolve_r`).
    ``prop_attn``: add log(size) to the attention logits. Applying again replaces the schedule.
    Raises BadInput naming the module for an unsupported model, block, attention or pooling.
    """
    _check_supported(model)
    vit: Any = model
    state = _ToMeState(
        r=resolve_r(r, len(vit.blocks)), prop_attn=bool(prop_attn), num_prefix=int(vit.num_prefix_tokens)
    )
    for i, blk in enumerate(vit.blocks):
        blk.__class__ = ToMeBlock
        blk._tome_state = state
        blk._tome_index = i
    model.__class__ = _MODEL_CLASSES.get(type(model), type(model))
    vit._tome_state = state
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_tome` in place (original classes, no ToMe attributes); a no-op when unpatched."""
    if not is_tome_patched(model):
        return model
    vit: Any = model
    for blk in vit.blocks:
        if type(blk) is ToMeBlock:
            blk.__class__ = Block  # type: ignore[assignment]
            for name in ("_tome_state", "_tome_index"):
                blk.__dict__.pop(name, None)
    model.__class__ = _ORIGINAL[type(model)]
    vit.__dict__.pop("_tome_state", None)
    return model


def _state(model: nn.Module) -> _ToMeState:
    if not is_tome_patched(model):
        raise BadInput(f"ToMe: model of type {type(model).__name__} is not patched (call apply_tome first)")
    st: _ToMeState = model._tome_state  # type: ignore[assignment]
    return st


def tome_token_counts(model: nn.Module) -> list[tuple[int, int]]:
    """Measured ``(n_attn, n_mlp)`` per block in the last forward of a patched model.

    ``n_attn``: tokens entering the block's attention; ``n_mlp``: tokens entering its MLP (after the
    merge). Raises BadInput for an unpatched model or one not run since it was patched.
    """
    st = _state(model)
    if not st.counts or any(c is None for c in st.counts):
        raise BadInput("ToMe: no complete forward since apply_tome; run the model first")
    return [c for c in st.counts if c is not None]


def tome_sizes(model: nn.Module) -> torch.Tensor | None:
    """Token sizes (B, N, 1) after the last block of the last forward; None when nothing was merged."""
    return _state(model).size
