"""Exact magnitude pruning (global or per layer) and the shared score-threshold engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.methods._common import (
    Include,
    Target,
    check_sparsity,
    reports_from_masks,
    smallest_k_masks,
    target_layers,
)
from mpprune.methods.api import Context, MethodOutput, register

__all__ = ["Magnitude", "score_masks", "masks_to_store", "normalise_include"]


def normalise_include(obj: object) -> None:
    """Freeze a list/set ``include`` of a frozen config into a tuple (callables are kept)."""
    inc = getattr(obj, "include", None)
    if inc is not None and not callable(inc):
        if isinstance(inc, str):
            raise BadInput("include must be a sequence of qualified names or a callable, not one string")
        object.__setattr__(obj, "include", tuple(inc))


@dataclass(frozen=True)
class Magnitude:
    """Zero the smallest-|w| entries of all Linear/Conv2d weights.

    ``scope="global"``: exactly ⌊s·#params⌋ zeros over all target weights together;
    ``scope="layer"``: exactly ⌊s·n_ℓ⌋ zeros in every layer. Ties are broken by position.
    """

    sparsity: float
    scope: str = "global"
    include: Include = None

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.scope not in ("global", "layer"):
            raise BadInput(f"scope must be 'global' or 'layer', got {self.scope!r}")
        normalise_include(self)


def score_masks(
    targets: Sequence[Target],
    sparsity: float,
    weights: dict[nn.Module, float] | None = None,
    *,
    scope: str = "global",
    prior: dict[nn.Module, torch.Tensor] | None = None,
    k: int | None = None,
) -> dict[nn.Module, torch.Tensor]:
    """Prune masks (True = pruned) for score |W|/w_ℓ with exactly ⌊s·n⌋ pruned entries.

    ``prior`` (True = already pruned) entries get score −1 so they are always inside the pruned set.
    ``k`` (global scope only) overrides the count ⌊s·n⌋.
    """
    scores: list[torch.Tensor] = []
    for t in targets:
        sc = t.weight.detach().abs().float()
        if weights is not None:
            sc = sc / float(weights[t.module])
        if prior is not None and t.module in prior:
            sc = torch.where(prior[t.module].to(sc.device), torch.full_like(sc, -1.0), sc)
        scores.append(sc)
    if scope == "global":
        total = sum(int(s.numel()) for s in scores)
        masks = smallest_k_masks(scores, math.floor(sparsity * total) if k is None else k)
    else:
        masks = [smallest_k_masks([s], math.floor(sparsity * s.numel()))[0] for s in scores]
    return {t.module: m for t, m in zip(targets, masks)}


@torch.no_grad()
def masks_to_store(targets: Sequence[Target], prune: dict[nn.Module, torch.Tensor]) -> MaskStore:
    """Zero the pruned entries in place and return the keep-masks as a :class:`MaskStore`."""
    store = MaskStore()
    for t in targets:
        m = prune[t.module].to(t.weight.device)
        t.weight.masked_fill_(m, 0)
        store.add(t.name, t.module, ~m)
    return store


@register(Magnitude, "magnitude")
def _apply_magnitude(model: nn.Module, cfg: Magnitude, ctx: Context) -> MethodOutput:
    targets = target_layers(model, cfg.include)
    prune = score_masks(targets, cfg.sparsity, scope=cfg.scope)
    store = masks_to_store(targets, prune)
    return MethodOutput(store, reports_from_masks(targets, prune))
