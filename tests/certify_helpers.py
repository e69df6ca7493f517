"""Helpers shared by the tests of mpprune.certify and mpprune.gate (imported by test_certify, test_gate)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mpprune.masks import MaskStore


def magnitude(W: torch.Tensor, s: float) -> torch.Tensor:
    """Independent per-layer magnitude pruning: zero the fraction ``s`` of entries with the smallest |w|."""
    k = int(W.numel() * s)
    thr = W.abs().flatten().kthvalue(k).values
    return torch.where(W.abs() > thr, W, torch.zeros_like(W))


def prune_one(model: nn.Module, name: str, s: float) -> tuple[nn.Module, MaskStore]:
    """A copy of ``model`` with layer ``name`` magnitude-pruned to sparsity ``s``, and its mask."""
    pruned = copy.deepcopy(model)
    mod = dict(pruned.named_modules())[name]
    with torch.no_grad():
        mod.weight.copy_(magnitude(mod.weight.detach(), s))
    masks = MaskStore()
    masks.add(name, mod, mod.weight.detach() != 0)
    return pruned, masks
