"""Shared machinery of the pruning methods: target layers, input checks, MP signals, exact global
thresholds, layer-type classification and the per-layer report."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.data import require_train_split
from mpprune.errors import BadInput
from mpprune.layers import find_layers, matrix_blocks
from mpprune.masks import weight_of
from mpprune.spectrum import HILL_K, hill_alpha

Include = Callable[[str, nn.Module], bool] | Sequence[str] | None


@dataclass(eq=False)
class Target:
    """A layer a method may prune. ``module`` is the identity key; ``name`` is for reports."""

    name: str
    module: nn.Module
    kind: str
    eligible_for_fit: bool
    reason: str | None
    info: Any = None

    @property
    def weight(self) -> torch.Tensor:
        return weight_of(self.module)

    @property
    def size(self) -> int:
        return int(self.weight.numel())


def check_sparsity(s: float, what: str = "sparsity") -> None:
    """Raise ValueError unless ``0 <= s < 1``."""
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(float(s)):
        raise BadInput(f"{what} must be a finite number in [0, 1), got {s!r}")
    if not 0.0 <= float(s) < 1.0:
        raise BadInput(f"{what} must lie in [0, 1), got {s!r}")


def target_layers(model: nn.Module, include: Include = None) -> list[Target]:
    """Prunable layers (from :func:`mpprune.layers.find_layers`), filtered by ``include`` and checked.

    ``include`` is None (all), a sequence of exact qualified names, or ``f(name, module) -> bool``.
    Raises ValueError naming the layer and shape when a weight holds NaN/Inf or is empty.
    """
    infos = find_layers(model)
    if include is not None and not callable(include):
        wanted = list(include)
        names = {i.name for i in infos}
        missing = [n for n in wanted if n not in names]
        if missing:
            raise BadInput(f"include names not found among prunable layers: {missing}")
        wanted_set = set(wanted)
        infos = [i for i in infos if i.name in wanted_set]
    elif callable(include):
        infos = [i for i in infos if include(i.name, i.module)]
    targets: list[Target] = []
    seen: set[int] = set()
    for info in infos:
        if id(info.module) in seen:
            continue
        seen.add(id(info.module))
        w = weight_of(info.module)
        if w.numel() == 0:
            raise BadInput(f"layer {info.name!r}: empty weight of shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w.detach()).all()):
            raise BadInput(f"layer {info.name!r}: weight of shape {tuple(w.shape)} contains NaN or Inf")
        targets.append(Target(info.name, info.module, info.kind, info.eligible_for_fit, info.reason, info))
    if not targets:
        raise BadInput("model has no prunable (Linear/Conv2d) layers selected")
    return targets


check_split = require_train_split  # one rule for every entry point (mpprune.data)


# --------------------------------------------------------------------------------------------------
# MP signals
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerSignal:
    """MP quantities of one target layer (per block for fused qkv, aggregated by the mean)."""

    sigma_plus: float | None = None
    edge_sigma: float | None = None
    n_spikes: int | None = None
    alpha_hill: float | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)


def fit_batch(mats: list[torch.Tensor], **kwargs: Any) -> list[Any]:
    """``mptheory.fit.fit_mp_batch(mats, **kwargs)``, passing only the keyword arguments it accepts."""
    import inspect

    from mptheory.fit import fit_mp_batch

    try:
        params = inspect.signature(fit_mp_batch).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kw = {k: v for k, v in kwargs.items() if v is not None and (accepts_any or k in params)}
    except (TypeError, ValueError):  # pragma: no cover
        kw = {}
    return list(fit_mp_batch(mats, **kw))


#: SEB's α-signal of a layer whose Hill exponent is undefined (fewer than two positive eigenvalues, or a
#: flat top): the authors' value (digest §3.1), which gives that layer the largest z-score.
SEB_ALPHA_UNDEFINED = 99.0


def seb_alpha(W: torch.Tensor, k: int = HILL_K) -> float:
    """SEB's α-signal of one matrix: :func:`mpprune.spectrum.hill_alpha` of the eigenvalues λ = s² (from
    the float64 singular values; the exponent is scale-free), :data:`SEB_ALPHA_UNDEFINED` where that is
    NaN (k < 2) or infinite (flat top)."""
    s = torch.linalg.svdvals(W.detach().double().cpu()).numpy()
    alpha = hill_alpha(s**2, k)
    return alpha if math.isfinite(alpha) else SEB_ALPHA_UNDEFINED


def layer_signals(targets: Sequence[Target], *, need_alpha: bool = False) -> dict[nn.Module, LayerSignal]:
    """σ₊ (via ``mptheory.fit.fit_mp_batch``) for every fit-eligible target, keyed by module identity.

    Layers not eligible for a fit get an empty :class:`LayerSignal` (σ₊ = None).
    """
    out: dict[nn.Module, LayerSignal] = {t.module: LayerSignal() for t in targets}
    mats: list[torch.Tensor] = []
    owners: list[tuple[nn.Module, str]] = []
    for t in targets:
        if not t.eligible_for_fit:
            continue
        for bname, block in matrix_blocks(t.info):
            mats.append(block.detach().double().cpu())
            owners.append((t.module, bname))
    fits = fit_batch(mats) if mats else []
    per_mod: dict[nn.Module, list[tuple[str, Any]]] = {}
    for (mod, bname), fit in zip(owners, fits):
        per_mod.setdefault(mod, []).append((bname, fit))
    for mod, lst in per_mod.items():
        sig = out[mod]
        sig.blocks = [
            {"block": b, "sigma_plus": float(f.sigma_plus), "edge_sigma": float(f.edge_sigma),
             "n_spikes": int(f.n_spikes)}
            for b, f in lst
        ]
        sig.sigma_plus = float(np.mean([float(f.sigma_plus) for _, f in lst]))
        sig.edge_sigma = float(np.mean([float(f.edge_sigma) for _, f in lst]))
        sig.n_spikes = int(sum(int(f.n_spikes) for _, f in lst))
    if need_alpha:
        for t in targets:
            if t.eligible_for_fit:
                vals = [seb_alpha(b) for _, b in matrix_blocks(t.info)]
                out[t.module].alpha_hill = float(np.mean(vals))
    return out


def zscores(values: dict[nn.Module, float | None]) -> dict[nn.Module, float]:
    """Population z-scores over the layers that have a value; layers without one get z = 0."""
    have = {m: float(v) for m, v in values.items() if v is not None and math.isfinite(float(v))}
    if not have:
        return dict.fromkeys(values, 0.0)
    arr = np.array(list(have.values()), dtype=np.float64)
    mu, sd = float(arr.mean()), float(arr.std())
    return {m: ((have[m] - mu) / sd if (m in have and sd > 0) else 0.0) for m in values}


# --------------------------------------------------------------------------------------------------
# Layer type by module type / position
# --------------------------------------------------------------------------------------------------

_MLP_WORDS = ("Mlp", "MLP", "FeedForward", "SwiGLU", "FFN")


def _timm_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """nn.MultiheadAttention and timm's attention classes; timm's Mlp classes. timm is not imported here:
    while it is not loaded no module can be an instance of its classes (and importing it costs seconds)."""
    attn: list[type] = [nn.MultiheadAttention]
    mlp: list[type] = []
    tl = sys.modules.get("timm.layers")
    if tl is not None:
        for n in ("Attention", "AttentionRope", "Attention2d", "MultiQueryAttention2d", "DiffAttention"):
            if hasattr(tl, n):
                attn.append(getattr(tl, n))
        for n in ("Mlp", "GluMlp", "SwiGLU", "GatedMlp", "ConvMlp", "GlobalResponseNormMlp"):
            if hasattr(tl, n):
                mlp.append(getattr(tl, n))
    return tuple(attn), tuple(mlp)


def parent_map(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Immediate parent module of every sub-module (first parent for shared modules)."""
    parents: dict[nn.Module, nn.Module] = {}
    for mod in model.modules():
        for child in mod.children():
            parents.setdefault(child, mod)
    return parents


def layer_type(module: nn.Module, parents: dict[nn.Module, nn.Module]) -> str:
    """``"attn"``, ``"mlp"`` or ``"other"`` from the TYPE of the immediate parent module.

    Attention: timm attention classes, ``nn.MultiheadAttention``, or a parent class whose name ends in
    "Attention". MLP: timm Mlp classes or a parent class name containing Mlp/MLP/FeedForward/SwiGLU/FFN
    (classifier heads excluded). Names of modules are never consulted.
    """
    parent = parents.get(module)
    if parent is None:
        return "other"
    attn_cls, mlp_cls = _timm_classes()
    cname = type(parent).__name__
    if isinstance(parent, attn_cls) or cname.endswith("Attention"):
        return "attn"
    if "Head" in cname:
        return "other"
    if isinstance(parent, mlp_cls) or any(w in cname for w in _MLP_WORDS):
        return "mlp"
    return "other"


# --------------------------------------------------------------------------------------------------
# Exact thresholds
# --------------------------------------------------------------------------------------------------


def smallest_k_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean "prune" masks selecting exactly the ``k`` smallest scores over all tensors together.

    Ties at the threshold are broken deterministically by position (tensor order, then row-major
    flat index). Returns one bool tensor per input (True = pruned).
    """
    sizes = [int(s.numel()) for s in scores]
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune k={k} of {total} entries")
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores]) if scores else torch.empty(0)
    if k == 0:
        chosen = torch.zeros(total, dtype=torch.bool, device=flat.device)
    elif k == total:
        chosen = torch.ones(total, dtype=torch.bool, device=flat.device)
    else:
        thr = torch.kthvalue(flat.cpu() if flat.device.type == "mps" else flat, k).values.to(flat.device)
        chosen = flat < thr
        need = k - int(chosen.sum().item())
        if need > 0:
            eq = torch.nonzero(flat == thr).reshape(-1)[:need]
            chosen[eq] = True
    out: list[torch.Tensor] = []
    start = 0
    for s, n in zip(scores, sizes):
        out.append(chosen[start : start + n].reshape(s.shape))
        start += n
    return out


def largest_k_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Exactly the ``k`` largest scores (ties by position), as bool masks."""
    return smallest_k_masks([-s.float() for s in scores], k)


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


@dataclass
class LayerReport:
    """One pruned layer: name, weight shape, exact sparsity and method details."""

    name: str
    shape: tuple[int, ...]
    kind: str
    zeros: int
    size: int
    sigma_plus: float | None = None
    weight: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["sparsity"] = self.sparsity
        return d


@dataclass
class PruneReport:
    """What a call to :func:`mpprune.methods.prune` did."""

    method: str
    config: dict[str, Any]
    layers: list[LayerReport]
    notes: list[str] = field(default_factory=list)
    gate: Any = None

    @property
    def total_zeros(self) -> int:
        return int(sum(lr.zeros for lr in self.layers))

    @property
    def total(self) -> int:
        return int(sum(lr.size for lr in self.layers))

    @property
    def global_sparsity(self) -> float:
        return self.total_zeros / self.total if self.total else 0.0

    def layer(self, name: str) -> LayerReport:
        for lr in self.layers:
            if lr.name == name:
                return lr
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        gate = self.gate
        if gate is not None and hasattr(gate, "to_dict"):
            gate = gate.to_dict()
        elif gate is not None and not isinstance(gate, (dict, list, str, int, float, bool)):
            gate = repr(gate)
        return {
            "method": self.method,
            "config": self.config,
            "global_sparsity": self.global_sparsity,
            "total_zeros": self.total_zeros,
            "total": self.total,
            "layers": [lr.to_dict() for lr in self.layers],
            "notes": list(self.notes),
            "gate": gate,
        }


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (callables and sequences rendered plainly)."""
    if not is_dataclass(config):
        raise BadInput(f"expected a config dataclass, got {type(config).__name__}")
    out: dict[str, Any] = {"type": type(config).__name__}
    for k, v in asdict(config).items():  # type: ignore[arg-type,call-overload]
        if callable(v):
            v = getattr(v, "__name__", repr(v))
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def reports_from_masks(
    targets: Iterable[Target],
    prune_masks: dict[nn.Module, torch.Tensor],
    signals: dict[nn.Module, LayerSignal] | None = None,
    weights: dict[nn.Module, float] | None = None,
    details: dict[nn.Module, dict[str, Any]] | None = None,
) -> list[LayerReport]:
    """Per-layer reports; zeros are counted on the module weights themselves (exact accounting)."""
    reps: list[LayerReport] = []
    for t in targets:
        w = t.weight.detach()
        sig = signals.get(t.module) if signals else None
        d = dict(details.get(t.module, {})) if details else {}
        if sig is not None and sig.blocks and len(sig.blocks) > 1:
            d["blocks"] = sig.blocks
        if sig is not None and sig.alpha_hill is not None:
            d["alpha_hill"] = sig.alpha_hill
        if t.module in prune_masks:
            d["pruned_by_mask"] = int(prune_masks[t.module].sum().item())
        reps.append(
            LayerReport(
                name=t.name,
                shape=tuple(w.shape),
                kind=t.kind,
                zeros=int((w == 0).sum().item()),
                size=int(w.numel()),
                sigma_plus=sig.sigma_plus if sig is not None else None,
                weight=weights.get(t.module) if weights else None,
                details=d,
            )
        )
    return reps
