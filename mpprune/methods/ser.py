"""Spectral Edge Reallocation (digest §3.5): over-prune with SEB scores, let the pruned reservoir move on
training data with everything else frozen, restore the reservoir entries that moved most (× w_ℓ) until
the realised sparsity equals the target exactly."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpprune.errors import BadInput
from mpprune.methods._common import (
    Include,
    Target,
    check_sparsity,
    check_split,
    largest_k_masks,
    layer_signals,
    parent_map,
    reports_from_masks,
    target_layers,
)
from mpprune.methods.api import Context, MethodOutput, register
from mpprune.methods.magnitude import masks_to_store, normalise_include, score_masks
from mpprune.methods.seb import resolve_seb, seb_weights

__all__ = ["SER", "ser_prune"]

_RANKS = ("movement_x_weight", "magnitude_x_weight")


@dataclass(frozen=True)
class SER:
    """SER config.

    ``over_prune`` ρ ≥ 1: prune ⌊min(ρs, 1)·n⌋ entries with SEB scores, then restore back to exactly
    ⌊s·n⌋ zeros. ``restore_rank``: ``"movement_x_weight"`` ranks reservoir entries by |Δ|·w_ℓ after
    ``selection_steps`` optimiser steps (``"adamw"`` or ``"sgd"``, momentum 0.9) of cross-entropy on
    ``train_data`` with only reservoir entries trainable (model in eval mode, so BatchNorm statistics
    and dropout are frozen); ``"magnitude_x_weight"`` ranks by |W_dense|·w_ℓ and needs no data.
    w_ℓ is recomputed at the post-prune sparsity. ``restore_value``: ``"dense"`` (original value) or
    ``"trained"`` (value after selection). SEB parameters (``strength``: the β of the paper, digest §3.4;
    ``s_d``, ``p``, ``signal``) as in :class:`SEB` (None = regime table). ``needs_train_data`` says whether
    the selection uses training data (``movement_x_weight`` with ``selection_steps > 0``).
    """

    sparsity: float
    over_prune: float = 1.1
    selection_steps: int = 20
    lr: float = 1e-3
    optimizer: str = "adamw"
    restore_rank: str = "movement_x_weight"
    restore_value: str = "dense"
    strength: float | None = None
    s_d: float | None = None
    p: float = 1.0
    signal: str | None = None
    strength_attn: float | None = None
    strength_mlp: float | None = None
    seed: int = 0
    include: Include = None

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if not (math.isfinite(self.over_prune) and self.over_prune >= 1.0):
            raise BadInput(f"over_prune must be >= 1, got {self.over_prune!r}")
        if self.selection_steps < 0:
            raise BadInput(f"selection_steps must be >= 0, got {self.selection_steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BadInput(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise BadInput(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.restore_rank not in _RANKS:
            raise BadInput(f"restore_rank must be one of {_RANKS}, got {self.restore_rank!r}")
        if self.restore_value not in ("dense", "trained"):
            raise BadInput(f"restore_value must be 'dense' or 'trained', got {self.restore_value!r}")
        normalise_include(self)

    @property
    def needs_train_data(self) -> bool:
        """Whether the selection trains on data (``movement_x_weight`` with ``selection_steps > 0``)."""
        return self.restore_rank == "movement_x_weight" and self.selection_steps > 0

    # SEB-like view used by resolve_seb
    @property
    def regime(self) -> str:
        return "paper"

    @property
    def plain_below(self) -> None:
        return None


def _batches(data: Iterable[Any], steps: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    it = itertools.cycle(data) if not hasattr(data, "__next__") else data
    for batch in itertools.islice(it, steps):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise BadInput("train_data must yield (inputs, labels) pairs")
        yield batch[0], batch[1]


def _selection(
    model: nn.Module,
    targets: Sequence[Target],
    reservoir: dict[nn.Module, torch.Tensor],
    cfg: SER,
    train_data: Iterable[Any],
) -> dict[nn.Module, torch.Tensor]:
    """Train only the reservoir entries; return the movement Δ per target (zero outside the reservoir)."""
    snap = {t.module: t.weight.detach().clone() for t in targets}
    params = [p for p in model.parameters()]
    saved_rg = [p.requires_grad for p in params]
    was_training = model.training
    trainable = [t for t in targets if bool(reservoir[t.module].any())]
    try:
        for p in params:
            p.requires_grad_(False)
        for t in trainable:
            t.weight.requires_grad_(True)
        model.eval()
        torch.manual_seed(cfg.seed)
        ws = [t.weight for t in trainable]
        opt: torch.optim.Optimizer
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(ws, lr=cfg.lr, weight_decay=0.0)
        else:
            opt = torch.optim.SGD(ws, lr=cfg.lr, momentum=0.9)
        device = ws[0].device if ws else torch.device("cpu")
        n = 0
        for x, y in _batches(train_data, cfg.selection_steps):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise ValueError(f"SER selection: non-finite loss {float(loss)} at step {n}")
            loss.backward()
            with torch.no_grad():
                for t in trainable:
                    if t.weight.grad is not None:
                        t.weight.grad.mul_(reservoir[t.module].to(device))
            opt.step()
            with torch.no_grad():
                for t in trainable:
                    m = reservoir[t.module].to(device)
                    t.weight.copy_(torch.where(m, t.weight, snap[t.module]))
            n += 1
        if ws and n == 0:
            raise BadInput("SER selection: train_data yielded no batches")
    finally:
        for p, rg in zip(params, saved_rg):
            p.requires_grad_(rg)
        model.train(was_training)
    return {t.module: (t.weight.detach() - snap[t.module]) for t in targets}


def ser_prune(
    model: nn.Module,
    targets: Sequence[Target],
    cfg: SER,
    train_data: Iterable[Any] | None,
    *,
    prior: dict[nn.Module, torch.Tensor] | None = None,
) -> MethodOutput:
    """Run SER on ``targets`` of ``model`` in place. ``prior`` (True = already pruned) stays pruned."""
    if cfg.needs_train_data and train_data is None:
        raise BadInput("SER with restore_rank='movement_x_weight' needs train_data (an iterable of (x, y))")
    check_split(train_data, "train_data")
    zeros_now = {t.module: (t.weight.detach() == 0) for t in targets}
    if prior is not None:
        zeros_now = {m: z | prior.get(m, torch.zeros_like(z)).to(z.device) for m, z in zeros_now.items()}
    n_total = sum(t.size for t in targets)
    k_target = math.floor(cfg.sparsity * n_total)
    k_over = min(math.floor(min(cfg.over_prune * cfg.sparsity, 1.0) * n_total), n_total)
    k_over = max(k_over, k_target)
    n_prior = int(sum(int(z.sum().item()) for z in zeros_now.values()))
    if n_prior > k_target:
        raise BadInput(
            f"model already has {n_prior} zero weights > target {k_target} "
            f"(= floor({cfg.sparsity}·{n_total}))"
        )
    dense = {t.module: t.weight.detach().clone() for t in targets}
    s_over = k_over / n_total
    res = resolve_seb(cfg, cfg.sparsity)
    signals = layer_signals(targets, need_alpha=res["signal"] == "alpha")
    parents = parent_map(model)
    # step 1-2: w_l(s) at the target sparsity, prune the smallest |W|/w_l over the rho*s fraction
    w_target, _ = seb_weights(targets, signals, cfg.sparsity, res, parents)
    prune = score_masks(targets, s_over, w_target, prior=zeros_now, k=k_over)
    # step 5: w_l recomputed at the post-prune (over-pruned) sparsity ranks the restoration
    weights, details = seb_weights(targets, signals, s_over, res, parents)
    reservoir = {t.module: prune[t.module] & ~zeros_now[t.module] for t in targets}
    with torch.no_grad():
        for t in targets:
            t.weight.masked_fill_(prune[t.module], 0)
    n_restore = k_over - k_target
    if cfg.restore_rank == "movement_x_weight" and cfg.selection_steps > 0 and n_restore > 0:
        assert train_data is not None
        delta = _selection(model, targets, reservoir, cfg, train_data)
        base = {m: d.abs() for m, d in delta.items()}
    else:
        delta = {t.module: torch.zeros_like(t.weight) for t in targets}
        base = {t.module: dense[t.module].abs() for t in targets}
    scores = [
        torch.where(reservoir[t.module], base[t.module].float() * weights[t.module],
                    torch.full_like(base[t.module], -1.0, dtype=torch.float32))
        for t in targets
    ]
    restore = largest_k_masks(scores, n_restore)
    final_prune: dict[nn.Module, torch.Tensor] = {}
    with torch.no_grad():
        for t, r in zip(targets, restore):
            r = r & reservoir[t.module]
            src = dense[t.module] if cfg.restore_value == "dense" else t.weight.detach().clone()
            new_w = torch.where(r, src, torch.zeros_like(src))
            keep = ~(prune[t.module] | zeros_now[t.module])
            t.weight.copy_(torch.where(keep, dense[t.module], new_w))
            final_prune[t.module] = ~(keep | r)
            details[t.module].update({
                "over_pruned": int(prune[t.module].sum().item()),
                "reservoir": int(reservoir[t.module].sum().item()),
                "restored": int(r.sum().item()),
                "mean_abs_movement": float(delta[t.module][reservoir[t.module]].abs().mean().item())
                if bool(reservoir[t.module].any()) else 0.0,
            })
            if cfg.restore_value == "trained":
                # a trained value that is exactly 0 would break exact accounting: fall back to dense
                bad = r & (t.weight == 0)
                t.weight.copy_(torch.where(bad, dense[t.module], t.weight))
    store = masks_to_store(targets, final_prune)
    notes = [
        f"SER: over-pruned {k_over} of {n_total} (s={s_over:.6f}), restored {n_restore} "
        f"by {cfg.restore_rank}, final zeros {k_target}; signal={res['signal']}"
    ]
    return MethodOutput(store, reports_from_masks(targets, final_prune, signals, weights, details), notes)


@register(SER, "ser")
def _apply_ser(model: nn.Module, cfg: SER, ctx: Context) -> MethodOutput:
    targets = target_layers(model, cfg.include)
    return ser_prune(model, targets, cfg, ctx.train_data)
