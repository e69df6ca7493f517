"""Hybrid Magnitude–SER (digest §3.6): exact global magnitude up to ``switch``, then SER to the target.

The magnitude zeros stay pruned during the SER stage (they are never in the restore reservoir). The
fine-tuning between stages of the paper is not part of this function (see ``mpprune.distill``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from mpprune.methods._common import Include, check_sparsity, reports_from_masks, target_layers
from mpprune.methods.api import Context, MethodOutput, register
from mpprune.methods.magnitude import masks_to_store, normalise_include, score_masks
from mpprune.methods.ser import SER, ser_prune

__all__ = ["Hybrid"]


@dataclass(frozen=True)
class Hybrid:
    """Magnitude to ``switch`` (default 0.20), then SER (fields as in :class:`SER`) to ``sparsity``."""

    sparsity: float
    switch: float = 0.20
    over_prune: float = 1.1
    selection_steps: int = 20
    lr: float = 1e-3
    optimizer: str = "adamw"
    restore_rank: str = "movement_x_weight"
    restore_value: str = "dense"
    seed: int = 0
    include: Include = None

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        check_sparsity(self.switch, "switch")
        normalise_include(self)
        self.ser_config()  # validates the SER fields

    @property
    def needs_train_data(self) -> bool:
        """Whether the SER stage (beyond ``switch``) selects with training data."""
        return self.sparsity > self.switch and self.ser_config().needs_train_data

    def ser_config(self) -> SER:
        """The SER config of stage 2."""
        return SER(
            sparsity=self.sparsity, over_prune=self.over_prune, selection_steps=self.selection_steps,
            lr=self.lr, optimizer=self.optimizer, restore_rank=self.restore_rank,
            restore_value=self.restore_value, seed=self.seed, include=self.include,
        )


@register(Hybrid, "hybrid")
def _apply_hybrid(model: nn.Module, cfg: Hybrid, ctx: Context) -> MethodOutput:
    targets = target_layers(model, cfg.include)
    s1 = min(cfg.switch, cfg.sparsity)
    prune1 = score_masks(targets, s1)
    store1 = masks_to_store(targets, prune1)
    n1 = sum(int(m.sum().item()) for m in prune1.values())
    note1 = f"stage 1: global magnitude to s={s1} ({n1} zeros)"
    if cfg.sparsity <= cfg.switch:
        return MethodOutput(store1, reports_from_masks(targets, prune1), [note1])
    n_total = sum(t.size for t in targets)
    if math.floor(cfg.sparsity * n_total) == n1:
        return MethodOutput(store1, reports_from_masks(targets, prune1), [note1])
    out = ser_prune(model, targets, cfg.ser_config(), ctx.train_data, prior=prune1)
    for lr in out.layers:
        mod = store1.module(lr.name)
        lr.details["stage1_zeros"] = int(prune1[mod].sum().item())
    out.notes.insert(0, note1)
    return out
