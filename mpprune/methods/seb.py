"""Spectral Edge Budgeting (digest §3.4): magnitude pruning with σ₊-modulated layer budgets.

w_ℓ(s) = max(0.1, 1 + β_type(ℓ) · d(s) · z_ℓ), d(s) = [1 − s/s_d]₊^p, z_ℓ the population z-score of the
layer signal (fitted σ₊, or the Hill exponent α) over the target layers; score |W_ij|/w_ℓ; one global
threshold prunes exactly ⌊s·#params⌋ entries. High-signal layers (w_ℓ > 1) are pruned more.

Vocabulary: the paper's per-layer-type β is called ``strength`` here (``strength``, ``strength_attn``,
``strength_mlp``): in this project ``beta`` means only the Dyson index of the Tracy–Widom law.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpprune.errors import BadInput
from mpprune.methods._common import (
    Include,
    LayerSignal,
    Target,
    check_sparsity,
    layer_signals,
    layer_type,
    parent_map,
    reports_from_masks,
    target_layers,
    zscores,
)
from mpprune.methods.api import Context, MethodOutput, register
from mpprune.methods.magnitude import masks_to_store, normalise_include, score_masks

__all__ = ["SEB", "resolve_seb", "seb_weights", "decay", "W_FLOOR"]

#: Floor of the layer weight w_ℓ (digest §3.4).
W_FLOOR = 0.1
_SIGNALS = ("sigma_plus", "alpha")


@dataclass(frozen=True)
class SEB:
    """SEB config. ``None`` fields are chosen from the paper's regime table by ``sparsity``:

    ========================  ===========  =============================  =====
    sparsity                  signal       strength (β)                   s_d
    ========================  ===========  =============================  =====
    s ≤ 0.20                  alpha        0.50                           0.30
    0.20 < s ≤ 0.40           sigma_plus   1.00                           0.50
    0.40 < s ≤ 0.55           sigma_plus   1.25                           0.70
    s > 0.55                  sigma_plus   attn 1.00, mlp 2.00, other 1   0.85
    ========================  ===========  =============================  =====

    ``strength`` is the β of the paper (digest §3.4), the weight of the layer signal in w_ℓ: it sets one
    value for every layer type (overridden per type by ``strength_attn``/``strength_mlp``).
    Layer type comes from the type of the module's parent (timm Attention / Mlp), never its name.
    ``regime="final"`` uses plain magnitude for s < 0.30 (the authors' "final SEB"); ``plain_below``
    sets that cut-off explicitly. ``delta`` is the MP-fit confidence passed to the fit.
    """

    sparsity: float
    strength: float | None = None
    s_d: float | None = None
    p: float = 1.0
    signal: str | None = None
    regime: str = "paper"
    strength_attn: float | None = None
    strength_mlp: float | None = None
    plain_below: float | None = None
    include: Include = None

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.regime not in ("paper", "final"):
            raise BadInput(f"regime must be 'paper' or 'final', got {self.regime!r}")
        if self.signal is not None and self.signal not in _SIGNALS:
            raise BadInput(f"signal must be one of {_SIGNALS} or None, got {self.signal!r}")
        if self.s_d is not None and not self.s_d > 0:
            raise BadInput(f"s_d must be > 0, got {self.s_d!r}")
        if not self.p > 0:
            raise BadInput(f"p must be > 0, got {self.p!r}")
        for nm in ("strength", "strength_attn", "strength_mlp"):
            v = getattr(self, nm)
            if v is not None and not math.isfinite(float(v)):
                raise BadInput(f"{nm} must be finite, got {v!r}")
        normalise_include(self)


def resolve_seb(cfg: Any, sparsity: float | None = None) -> dict[str, Any]:
    """The effective (signal, strength β per layer type, s_d, p, plain) of an SEB-like config at
    ``sparsity``."""
    s = cfg.sparsity if sparsity is None else sparsity
    if s <= 0.20:
        signal, b_attn, b_mlp, b_other, s_d = "alpha", 0.5, 0.5, 0.5, 0.30
    elif s <= 0.40:
        signal, b_attn, b_mlp, b_other, s_d = "sigma_plus", 1.0, 1.0, 1.0, 0.50
    elif s <= 0.55:
        signal, b_attn, b_mlp, b_other, s_d = "sigma_plus", 1.25, 1.25, 1.25, 0.70
    else:
        signal, b_attn, b_mlp, b_other, s_d = "sigma_plus", 1.0, 2.0, 1.0, 0.85
    if cfg.strength is not None:
        b_attn = b_mlp = b_other = float(cfg.strength)
    if getattr(cfg, "strength_attn", None) is not None:
        b_attn = float(cfg.strength_attn)
    if getattr(cfg, "strength_mlp", None) is not None:
        b_mlp = float(cfg.strength_mlp)
    plain_below = getattr(cfg, "plain_below", None)
    if plain_below is None and getattr(cfg, "regime", "paper") == "final":
        plain_below = 0.30
    return {
        "signal": cfg.signal if cfg.signal is not None else signal,
        "strength": {"attn": b_attn, "mlp": b_mlp, "other": b_other},
        "s_d": float(cfg.s_d) if cfg.s_d is not None else s_d,
        "p": float(cfg.p),
        "plain": plain_below is not None and s < plain_below,
        "plain_below": plain_below,
    }


def decay(s: float, s_d: float, p: float) -> float:
    """d(s) = [1 − s/s_d]₊^p."""
    return max(0.0, 1.0 - s / s_d) ** p


def seb_weights(
    targets: Sequence[Target],
    signals: dict[nn.Module, LayerSignal],
    sparsity: float,
    resolved: dict[str, Any],
    parents: dict[nn.Module, nn.Module],
) -> tuple[dict[nn.Module, float], dict[nn.Module, dict[str, Any]]]:
    """w_ℓ(s) for every target (keyed by module identity) and per-layer details (z, type, strength)."""
    key = "alpha_hill" if resolved["signal"] == "alpha" else "sigma_plus"
    raw = {t.module: getattr(signals[t.module], key) for t in targets}
    z = zscores(raw)
    d = decay(sparsity, resolved["s_d"], resolved["p"])
    weights: dict[nn.Module, float] = {}
    details: dict[nn.Module, dict[str, Any]] = {}
    for t in targets:
        typ = layer_type(t.module, parents)
        strength = resolved["strength"][typ]
        weights[t.module] = max(W_FLOOR, 1.0 + strength * d * z[t.module])
        details[t.module] = {"z": z[t.module], "layer_type": typ, "strength": strength, "decay": d,
                             "signal": resolved["signal"], "signal_value": raw[t.module]}
        if raw[t.module] is None:
            details[t.module]["signal_missing"] = t.reason or "no MP fit"
    return weights, details


def seb_prune_masks(
    model: nn.Module,
    targets: Sequence[Target],
    cfg: Any,
    sparsity: float,
    *,
    weight_sparsity: float | None = None,
    prior: dict[nn.Module, torch.Tensor] | None = None,
) -> tuple[dict[nn.Module, torch.Tensor], dict[nn.Module, float], dict[nn.Module, LayerSignal],
           dict[nn.Module, dict[str, Any]], dict[str, Any]]:
    """Prune masks at ``sparsity`` with SEB scores whose weights are evaluated at ``weight_sparsity``."""
    res = resolve_seb(cfg, sparsity)
    signals = layer_signals(targets, need_alpha=res["signal"] == "alpha")
    ws = sparsity if weight_sparsity is None else weight_sparsity
    weights, details = seb_weights(targets, signals, ws, res, parent_map(model))
    prune = score_masks(targets, sparsity, weights, prior=prior)
    return prune, weights, signals, details, res


@register(SEB, "seb")
def _apply_seb(model: nn.Module, cfg: SEB, ctx: Context) -> MethodOutput:
    targets = target_layers(model, cfg.include)
    res = resolve_seb(cfg)
    if res["plain"]:
        prune = score_masks(targets, cfg.sparsity)
        store = masks_to_store(targets, prune)
        note = f"final SEB: plain global magnitude since s={cfg.sparsity} < {res['plain_below']}"
        return MethodOutput(store, reports_from_masks(targets, prune), [note])
    prune, weights, signals, details, res = seb_prune_masks(model, targets, cfg, cfg.sparsity)
    store = masks_to_store(targets, prune)
    notes = [f"SEB signal={res['signal']} strength={res['strength']} s_d={res['s_d']} p={res['p']}"]
    return MethodOutput(store, reports_from_masks(targets, prune, signals, weights, details), notes)
