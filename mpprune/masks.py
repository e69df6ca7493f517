"""Pruning masks: storage, frozen-mask enforcement, legality checks and exact sparsity accounting.

A mask is a boolean tensor with the shape of a module's ``weight``: ``True`` = the entry is kept,
``False`` = the entry is pruned (must be exactly zero). A :class:`MaskStore` keys masks by *module
identity* (never by name substring), and every entry also carries the module's qualified name so it can
be addressed as ``store["blocks.0.attn.qkv"]`` and serialised.

Sparsity always means the fraction of zeros.

k:n patterns (DESIGN, "k:n"): a k:n weight keeps at most k nonzeros in every group of n consecutive entries
along the input (reduction) axis of its *k:n matrix* (:func:`kn_matrix`), read in one of two layouts:

* ``"matrix"`` -- the matrix view of :mod:`mpprune.layers`: a Linear as stored, a Conv as
  ``(C_out, C_in/groups * kh * kw)`` in ``F.unfold`` order (channel-major), so a group of a kxk conv runs
  across kernel positions (the im2col flattening, digest §3.10);
* ``"channel"`` -- hardware-legal conv k:n: ``(C_out, kh * kw * C_in/groups)`` kernel-position-major, so a
  group is n consecutive input channels at one output channel and one kernel position (what a sparse conv
  kernel executes). For a Linear or a 1x1 conv both layouts are the same matrix.

:func:`parse_kn` reads ``"k:n"``, :func:`detect_kn` finds the pattern a matrix satisfies and
:func:`check_kn` raises :class:`PatternViolation` (a :class:`~mpprune.errors.BadInput`) naming the layer,
the first broken group and the pattern. A :class:`MaskStore` entry may *declare* its pattern
(:meth:`MaskStore.declare`); declared patterns are checked when declared, by :func:`check_legal` and after
every optimiser step of :meth:`MaskStore.enforce`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mpprune.errors import BadInput

__all__ = [
    "KN_GROUP_SIZES",
    "KN_LAYOUTS",
    "PatternViolation",
    "parse_kn",
    "detect_kn",
    "kn_matrix",
    "from_kn_matrix",
    "kn_group_counts",
    "check_kn",
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


# --------------------------------------------------------------------------------------------------
# k:n patterns

#: Group sizes n of k:n patterns; :func:`detect_kn` tries them in this order (ties go to the first).
KN_GROUP_SIZES = (4, 8, 12, 16, 32)
#: How a weight is read for k:n groups (module docstring): the matrix view, or channel groups per kernel
#: position (hardware-legal conv k:n).
KN_LAYOUTS = ("matrix", "channel")

_KN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class PatternViolation(BadInput):
    """A weight or mask breaks its declared k:n pattern (the message names layer, group and pattern)."""


def parse_kn(pattern: str | tuple[int, int]) -> tuple[int, int]:
    """``"k:n"`` (or a pair) -> ``(k, n)`` with ``0 <= k <= n`` and ``n >= 1``; BadInput otherwise."""
    if isinstance(pattern, tuple) and len(pattern) == 2 and all(isinstance(v, int) for v in pattern):
        k, n = pattern
    else:
        m = _KN_RE.match(str(pattern))
        if m is None:
            raise BadInput(f"k:n pattern must look like '2:4', got {pattern!r}")
        k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k <= n:
        raise BadInput(f"k:n pattern needs 0 <= k <= n and n >= 1, got {pattern!r}")
    return k, n


def detect_kn(matrix: torch.Tensor, group_sizes: tuple[int, ...] = KN_GROUP_SIZES) -> tuple[int, int] | None:
    """The k:n pattern a matrix (out, in) satisfies along its input axis, or None.

    For each n of ``group_sizes`` that divides ``in``, k is the largest count of nonzeros in a group
    of n consecutive entries of a row; returns the ``(k, n)`` with the lowest k/n below 1, ties going
    to the n listed first (the smallest). None when no n divides ``in`` or every group size has a
    full group.
    """
    if matrix.dim() != 2:
        raise BadInput(f"detect_kn expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    nz = matrix != 0
    counts: dict[int, torch.Tensor] = {}
    best: tuple[int, int] | None = None
    for n in group_sizes:
        if n < 1 or cols % n or rows == 0 or cols == 0:
            continue
        # reuse the counts of a divisor group size (4 -> 8 -> 16 -> 32, 4 -> 12) when available
        base = next((d for d in sorted(counts, reverse=True) if n % d == 0), None)
        if base is None:
            c = nz.reshape(rows, cols // n, n).sum(dim=-1, dtype=torch.int32)
        else:
            c = counts[base].reshape(rows, cols // n, n // base).sum(dim=-1, dtype=torch.int32)
        counts[n] = c
        k = int(c.max())
        if k < n and (best is None or Fraction(k, n) < Fraction(*best)):
            best = (k, n)
    return best


def _check_layout(layout: str) -> str:
    if layout not in KN_LAYOUTS:
        raise BadInput(f"k:n layout must be one of {KN_LAYOUTS}, got {layout!r}")
    return layout


def kn_matrix(weight: torch.Tensor, layout: str = "matrix") -> torch.Tensor:
    """The ``(out, in)`` matrix whose rows are split into k:n groups of consecutive entries.

    ``"matrix"``: ``weight.reshape(out, -1)`` (a view: the matrix view of :mod:`mpprune.layers`);
    ``"channel"``: the input-channel dimension moved last, ``(out, kh*kw, C_in) -> (out, kh*kw*C_in)`` (a
    copy for a conv weight with a kernel larger than 1x1). A 1-D or 0-D weight is BadInput.
    """
    _check_layout(layout)
    if weight.dim() < 2:
        raise BadInput(f"k:n needs a weight with an input axis, got shape {tuple(weight.shape)}")
    if layout == "channel" and weight.dim() > 2:
        return weight.movedim(1, -1).reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], -1)


def from_kn_matrix(
    matrix: torch.Tensor, shape: tuple[int, ...] | torch.Size, layout: str = "matrix"
) -> torch.Tensor:
    """Inverse of :func:`kn_matrix`: the ``(out, in)`` matrix back in the weight ``shape``."""
    _check_layout(layout)
    shape = tuple(shape)
    if matrix.dim() != 2 or matrix.shape[0] != shape[0] or matrix.numel() != math.prod(shape):
        raise BadInput(f"matrix of shape {tuple(matrix.shape)} does not fit a weight of shape {shape}")
    if layout == "channel" and len(shape) > 2:
        moved = (shape[0], *shape[2:], shape[1])
        return matrix.reshape(moved).movedim(-1, 1).contiguous()
    return matrix.reshape(shape)


def kn_group_counts(weight: torch.Tensor, n: int, layout: str = "matrix") -> torch.Tensor:
    """Nonzeros per k:n group, shape ``(out, in / n)`` (int32); BadInput when n does not divide ``in``."""
    mat = kn_matrix(weight.detach(), layout)
    rows, cols = mat.shape
    if n < 1 or cols % n:
        raise BadInput(
            f"group size {n} does not divide the input size {cols} of a weight of shape "
            f"{tuple(weight.shape)} (layout {layout!r})"
        )
    return (mat != 0).reshape(rows, cols // n, n).sum(dim=-1, dtype=torch.int32)


def _describe_group(shape: tuple[int, ...], n: int, g: int, layout: str) -> str:
    cols = math.prod(shape[1:])
    if layout == "channel" and len(shape) > 2:
        cin, kernel = shape[1], shape[2:]
        pos, c0 = divmod(g * n, cin)
        idx: list[int] = []
        for size in reversed(kernel):
            pos, r = divmod(pos, size)
            idx.append(r)
        return f"group {g} (kernel position {tuple(reversed(idx))}, input channels {c0}..{c0 + n - 1})"
    return f"group {g} (input columns {g * n}..{g * n + n - 1} of {cols})"


def check_kn(
    weight: torch.Tensor, pattern: str | tuple[int, int], *, layout: str = "matrix", layer: str = "weight"
) -> None:
    """Raise :class:`PatternViolation` unless every k:n group of ``weight`` holds at most k nonzeros.

    ``weight`` is a module weight (or a boolean mask: True counts as nonzero) of any shape with an input
    axis; ``pattern`` is ``"k:n"`` or ``(k, n)``; ``layout`` is one of :data:`KN_LAYOUTS`; ``layer`` names
    the weight in the message. A group size that does not divide the input size is :class:`BadInput`.
    The message names the layer, its shape, the pattern and layout, how many groups break it and the
    first broken group (row, group index, its columns or kernel position and channels, its count).
    Returns None when the pattern holds.
    """
    k, n = parse_kn(pattern)
    shape = tuple(weight.shape)
    try:
        counts = kn_group_counts(weight, n, layout)
    except BadInput as exc:
        raise BadInput(f"layer {layer!r}: {exc}") from None
    bad = counts > k
    n_bad = int(bad.sum().item())
    if n_bad:
        row, g = (int(v) for v in torch.nonzero(bad)[0])
        raise PatternViolation(
            f"layer {layer!r} weight {shape}: pattern {k}:{n} (layout {layout!r}) is broken in {n_bad} of "
            f"{counts.numel()} groups; first at row {row}, {_describe_group(shape, n, g, layout)}: "
            f"{int(counts[row, g])} nonzeros > {k}"
        )


class MaskStore(Mapping[str, torch.Tensor]):
    """Boolean weight masks keyed by module identity and addressable by qualified name.

    ``store[module]`` and ``store["name"]`` both return the mask. Iteration yields names in insertion
    order; :meth:`entries` yields ``(name, module, mask)`` triples. An entry may declare its k:n pattern
    (:meth:`declare`); :meth:`patterns` lists the declarations (for a checkpoint manifest).
    """

    def __init__(self) -> None:
        self._by_module: dict[nn.Module, torch.Tensor] = {}
        self._names: dict[nn.Module, str] = {}
        self._by_name: dict[str, nn.Module] = {}
        self._handles: list[RemovableHandle] = []
        self._patterns: dict[nn.Module, tuple[str, str]] = {}

    # -- construction --------------------------------------------------------------------------
    def add(self, name: str, module: nn.Module, mask: torch.Tensor) -> None:
        """Register ``mask`` (True = keep) for ``module.weight`` under the qualified ``name``.

        A new mask for a module drops that module's declared k:n pattern (declare it again).
        """
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
        self._patterns.pop(module, None)
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

    def declare(self, key: nn.Module | str, pattern: str | tuple[int, int], layout: str = "matrix") -> None:
        """Declare the k:n ``pattern`` (``"k:n"``) of a registered layer along ``layout``
        (:data:`KN_LAYOUTS`). The mask must satisfy it (else :class:`PatternViolation`); from then on
        :func:`check_legal` and :meth:`enforce` check the weight against it."""
        mod = self._module(key)
        k, n = parse_kn(pattern)
        check_kn(self._by_module[mod], (k, n), layout=layout, layer=self._names[mod])
        self._patterns[mod] = (f"{k}:{n}", layout)

    def pattern(self, key: nn.Module | str) -> tuple[str, str] | None:
        """``("k:n", layout)`` declared for a layer, or None."""
        return self._patterns.get(self._module(key))

    def patterns(self) -> dict[str, dict[str, str]]:
        """``{name: {"pattern": "k:n", "layout": layout}}`` for every declared layer (JSON-able)."""
        return {
            self._names[m]: {"pattern": p, "layout": lay} for m, (p, lay) in self._patterns.items()
        }

    def check_patterns(self) -> None:
        """Check every declared pattern on the layer's current weight (:func:`check_kn`)."""
        for mod, (pat, lay) in list(self._patterns.items()):
            check_kn(weight_of(mod).detach(), pat, layout=lay, layer=self._names[mod])

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
            declared = self.pattern(name)
            if declared is not None:
                out.declare(name, *declared)
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
        and decoupled weight decay therefore cannot regrow a zero. After every step the declared k:n
        patterns are checked on the weights (:class:`PatternViolation` stops training). Returns the
        post-hook handle; all handles are removed by :meth:`remove`.
        """
        pairs = [(weight_of(mod), mask) for _, mod, mask in self.entries()]
        declared = [
            (weight_of(mod), pat, lay, self._names[mod]) for mod, (pat, lay) in self._patterns.items()
        ]

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
            for w, pat, lay, name in declared:
                check_kn(w, pat, layout=lay, layer=name)

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
    def from_state_dict(
        cls,
        state: Mapping[str, torch.Tensor],
        model: nn.Module,
        patterns: Mapping[str, Mapping[str, str]] | None = None,
    ) -> MaskStore:
        """Rebuild a store from :meth:`to_state_dict` output, binding names to ``model``'s modules, and
        declare ``patterns`` (the output of :meth:`patterns`), each checked on its mask."""
        mods = dict(model.named_modules())
        store = cls()
        for name, mask in state.items():
            if name not in mods:
                raise BadInput(f"layer {name!r}: not found in the model")
            if mask.dtype != torch.bool:
                raise BadInput(f"layer {name!r}: mask dtype {mask.dtype} is not torch.bool")
            store.add(name, mods[name], mask)
        for name, decl in (patterns or {}).items():
            if name not in store:
                raise BadInput(f"layer {name!r}: a k:n pattern is declared but the layer has no mask")
            store.declare(name, decl["pattern"], decl.get("layout", "matrix"))
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
    """Raise :class:`BadInput` listing every problem: missing layer, identity, shape, dtype, device, a
    masked entry that is not exactly zero, or a weight that breaks its declared k:n pattern. Returns
    ``None`` when the masks are legal for ``model``."""
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
        declared = masks.pattern(name)
        if declared is not None:
            try:
                check_kn(w.detach(), declared[0], layout=declared[1], layer=name)
            except BadInput as exc:
                problems.append(str(exc))
    if problems:
        raise BadInput("illegal masks:\n  " + "\n  ".join(problems))
