"""Pruning masks: storage, frozen-mask enforcement, legality checks and exact sparsity accounting.

A mask is a boolean tensor with the shape of a module's ``weight``: ``True`` = the entry is kept,
``False`` = the entry is pruned (must be exactly zero). A :class:`MaskStore` keys masks by *module
identity* (never by name substring), and every entry also carries the module's qualified name so it can
be addressed as ``store["blocks.0.attn.qkv"]`` and serialised.

Sparsity always means the fraction of zeros.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mpprune.errors import BadInput

__all__ = [
    "MaskStore",
    "SparsityReport",
    "weight_of",
    "check_legal",
    "prunable_modules",
    "sparsity",
]

_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as a tensor (BadInput when the module has none)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise BadInput(f"module {type(module).__name__} has no weight tensor")
    return w


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Qualified names and modules whose ``weight`` is prunable (Linear and Conv layers), in model order.

    Uses :func:`mpprune.layers.find_layers` when that module is available, otherwise every
    ``nn.Linear``/``nn.Conv{1,2,3}d`` with a weight. Each module appears once (first name wins).
    """
    out: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    try:
        from mpprune.layers import find_layers as _find
    except ImportError:  # pragma: no cover - layers.py is part of the package
        _find = None  # type: ignore[assignment]
    if _find is not None:
        for info in _find(model):
            mod = info.module
            if id(mod) in seen or getattr(mod, "weight", None) is None:
                continue
            seen.add(id(mod))
            out.append((info.name, mod))
        return out
    for name, mod in model.named_modules():
        if isinstance(mod, _PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None:
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            out.append((name, mod))
    return out


class MaskStore(Mapping[str, torch.Tensor]):
    """Boolean weight masks keyed by module identity and addressable by qualified name.

    ``store[module]`` and ``store["name"]`` both return the mask. Iteration yields names in insertion
    order; :meth:`entries` yields ``(name, module, mask)`` triples.
    """

    def __init__(self) -> None:
        self._by_module: dict[nn.Module, torch.Tensor] = {}
        self._names: dict[nn.Module, str] = {}
        self._by_name: dict[str, nn.Module] = {}
        self._handles: list[RemovableHandle] = []

    # -- construction --------------------------------------------------------------------------
    def add(self, name: str, module: nn.Module, mask: torch.Tensor) -> None:
        """Register ``mask`` (True = keep) for ``module.weight`` under the qualified ``name``."""
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise BadInput(f"layer {name!r}: module {type(module).__name__} has no weight tensor")
        if tuple(mask.shape) != tuple(weight.shape):
            raise BadInput(
                f"layer {name!r}: mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}"
            )
        if name in self._by_name and self._by_name[name] is not module:
            raise BadInput(f"layer {name!r}: name already bound to a different module")
        self._by_module[module] = mask.detach().to(device=weight.device, dtype=torch.bool).clone()
        self._names[module] = name
        self._by_name[name] = module

    @classmethod
    def from_model_zeros(
        cls, model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None
    ) -> MaskStore:
        """Masks that keep exactly the non-zero entries of each prunable weight."""
        store = cls()
        for name, mod in modules if modules is not None else prunable_modules(model):
            store.add(name, mod, weight_of(mod).detach() != 0)
        return store

    # -- mapping protocol -------------------------------------------------------------------------
    def _module(self, key: nn.Module | str) -> nn.Module:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(key)
            return self._by_name[key]
        if key not in self._by_module:
            raise KeyError(f"module {type(key).__name__} (id {id(key)}) has no mask")
        return key

    def __getitem__(self, key: nn.Module | str) -> torch.Tensor:  # type: ignore[override]
        return self._by_module[self._module(key)]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._by_name
        return key in self._by_module

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_name))

    def __len__(self) -> int:
        return len(self._by_module)

    def name_of(self, module: nn.Module) -> str:
        """Qualified name under which ``module`` was registered."""
        return self._names[self._module(module)]

    def module(self, name: str) -> nn.Module:
        """The module registered under ``name``."""
        return self._module(name)

    def entries(self) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
        """``(name, module, mask)`` for every registered layer, in insertion order."""
        for name, mod in list(self._by_name.items()):
            yield name, mod, self._by_module[mod]

    # -- applying ---------------------------------------------------------------------------------
    def bind(self, model: nn.Module) -> MaskStore:
        """A new store with the same masks bound (by qualified name) to the modules of ``model``."""
        mods = dict(model.named_modules())
        out = MaskStore()
        for name, _, mask in self.entries():
            if name not in mods:
                raise BadInput(f"layer {name!r}: not found in the model")
            out.add(name, mods[name], mask)
        return out

    def _resolve(self, model: nn.Module | None) -> MaskStore:
        if model is None:
            return self
        members = {id(m) for m in model.modules()}
        if all(id(m) in members for m in self._by_module):
            return self
        return self.bind(model)

    @torch.no_grad()
    def apply(self, model: nn.Module | None = None) -> None:
        """Zero every masked weight entry (of the bound modules, or of ``model`` rebound by name)."""
        for _, mod, mask in self._resolve(model).entries():
            w = weight_of(mod)
            w.masked_fill_(~mask.to(w.device), 0)

    def enforce(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Keep pruned weights at zero through every ``optimizer.step()``.

        Registers a step pre-hook that zeroes the gradients of pruned entries and a step post-hook
        that re-applies the masks to the weights *and* to every per-parameter optimiser state tensor
        of the weight's shape (momentum buffer, ``exp_avg``, ``exp_avg_sq``, ...). Gradients, momentum
        and decoupled weight decay therefore cannot regrow a zero. Returns the post-hook handle; all
        handles are removed by :meth:`remove`.
        """
        pairs = [(weight_of(mod), mask) for _, mod, mask in self.entries()]

        @torch.no_grad()
        def pre_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            for w, mask in pairs:
                if w.grad is not None:
                    w.grad.masked_fill_(~mask, 0)

        @torch.no_grad()
        def post_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            for w, mask in pairs:
                w.masked_fill_(~mask, 0)
                state = opt.state.get(w)
                if not state:
                    continue
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == w.shape:
                        value.masked_fill_(~mask.to(value.device), 0)

        self._handles.append(optimizer.register_step_pre_hook(pre_hook))
        handle = optimizer.register_step_post_hook(post_hook)
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every optimiser hook installed by :meth:`enforce`."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- serialisation ----------------------------------------------------------------------------
    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """``{qualified name: bool mask on CPU}``."""
        return {name: mask.detach().cpu().clone() for name, _, mask in self.entries()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], model: nn.Module) -> MaskStore:
        """Rebuild a store from :meth:`to_state_dict` output, binding names to ``model``'s modules."""
        mods = dict(model.named_modules())
        store = cls()
        for name, mask in state.items():
            if name not in mods:
                raise BadInput(f"layer {name!r}: not found in the model")
            if mask.dtype != torch.bool:
                raise BadInput(f"layer {name!r}: mask dtype {mask.dtype} is not torch.bool")
            store.add(name, mods[name], mask)
        return store

    def __repr__(self) -> str:
        rep = sparsity(self)
        return f"MaskStore({len(self)} layers, sparsity={rep.global_sparsity:.4f})"


@dataclass(frozen=True)
class SparsityReport:
    """Exact zero counts per layer and globally; sparsity = fraction of zeros."""

    zeros: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total_zeros(self) -> int:
        return int(sum(self.zeros.values()))

    @property
    def total(self) -> int:
        return int(sum(self.sizes.values()))

    @property
    def global_sparsity(self) -> float:
        return self.total_zeros / self.total if self.total else 0.0

    @property
    def per_layer(self) -> dict[str, float]:
        return {k: (self.zeros[k] / self.sizes[k] if self.sizes[k] else 0.0) for k in self.sizes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "global_sparsity": self.global_sparsity,
            "total_zeros": self.total_zeros,
            "total": self.total,
            "layers": {k: {"zeros": self.zeros[k], "size": self.sizes[k], "sparsity": v}
                       for k, v in self.per_layer.items()},
        }


def sparsity(model_or_masks: nn.Module | MaskStore) -> SparsityReport:
    """Exact sparsity accounting.

    For a :class:`MaskStore`: zeros = pruned (False) mask entries. For a model: zeros = entries of the
    prunable weights (see :func:`prunable_modules`) that are exactly zero.
    """
    zeros: dict[str, int] = {}
    sizes: dict[str, int] = {}
    if isinstance(model_or_masks, MaskStore):
        for name, _, mask in model_or_masks.entries():
            sizes[name] = int(mask.numel())
            zeros[name] = int(mask.numel() - int(mask.sum().item()))
    elif isinstance(model_or_masks, nn.Module):
        for name, mod in prunable_modules(model_or_masks):
            w = weight_of(mod).detach()
            sizes[name] = int(w.numel())
            zeros[name] = int((w == 0).sum().item())
    else:
        raise BadInput(
            f"sparsity() expects an nn.Module or a MaskStore, got {type(model_or_masks).__name__}"
        )
    return SparsityReport(zeros=zeros, sizes=sizes)


def check_legal(masks: MaskStore, model: nn.Module) -> None:
    """Raise :class:`BadInput` listing every problem: missing layer, identity, shape, dtype, device, or a
    masked entry that is not exactly zero. Returns ``None`` when the masks are legal for ``model``."""
    mods = dict(model.named_modules())
    problems: list[str] = []
    for name, mod, mask in masks.entries():
        if name not in mods:
            problems.append(f"layer {name!r}: not found in the model")
            continue
        target = mods[name]
        if target is not mod:
            problems.append(f"layer {name!r}: mask is bound to a different module object")
        w = getattr(target, "weight", None)
        if not isinstance(w, torch.Tensor):
            problems.append(f"layer {name!r}: module has no weight")
            continue
        if tuple(mask.shape) != tuple(w.shape):
            problems.append(
                f"layer {name!r}: mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}"
            )
            continue
        if mask.dtype != torch.bool:
            problems.append(f"layer {name!r}: mask dtype {mask.dtype} is not torch.bool")
        if mask.device != w.device:
            problems.append(f"layer {name!r}: mask on {mask.device}, weight on {w.device}")
            continue
        bad = int((w.detach()[~mask.bool()] != 0).sum().item())
        if bad:
            problems.append(f"layer {name!r} shape {tuple(w.shape)}: {bad} masked entries are not zero")
    if problems:
        raise BadInput("illegal masks:\n  " + "\n  ".join(problems))
