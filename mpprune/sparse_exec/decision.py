"""Per-layer conversion decisions shared by the CPU path and the GPU 2:4 export.

A layer is swapped for its sparse version only when three things hold: it is *eligible* (a kind, dtype,
device, pattern and shape the kernel serves; otherwise the reason is recorded), its sparse version
computes the same outputs as the dense layer on the layer's real input (within the precision's
tolerance), and it *measured faster* than the dense layer in the same precision and at the same thread
count, by at least ``min_speedup``. Every candidate gets a :class:`LayerDecision`, converted or not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mpprune.layers import find_layers, matrix_view
from mpprune.macs import detect_kn
from mpprune.sparse_exec.timing import Timer, Timing, _Table, time_variants
from mptheory.errors import BadInput

__all__ = [
    "LayerDecision",
    "Conversion",
    "SparseModule",
    "candidates",
    "capture_inputs",
    "decide",
    "densify",
    "set_submodule",
    "tolerance",
]


class SparseModule(nn.Module):
    """Base of the sparse drop-ins for a Linear or Conv2d (inference only).

    Its ``state_dict`` holds the same keys and values as the dense layer it replaces (``weight`` in the
    dense layer's shape, ``bias``), so a model with sparse layers saves an ordinary checkpoint that loads
    into the dense architecture, and loads one (the dense weight is re-compressed). :meth:`to_dense`
    returns the equivalent ordinary module.
    """

    bias: torch.Tensor | None

    def dense_weight(self) -> torch.Tensor:
        """The weight as the dense layer stores it."""
        raise NotImplementedError

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        """Replace the sparse weight by the compression of ``weight`` (dense layer's shape)."""
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The equivalent ordinary ``nn.Linear`` / ``nn.Conv2d`` (a new module)."""
        raise NotImplementedError

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.dense_weight().detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = [prefix + "weight"] + ([prefix + "bias"] if self.bias is not None else [])
        for key in keys:
            if key not in state_dict:
                missing_keys.append(key)
        if prefix + "weight" in state_dict:
            w = state_dict[prefix + "weight"]
            expected = tuple(self.dense_weight().shape)
            if tuple(w.shape) != expected:
                error_msgs.append(f"size mismatch for {prefix}weight: {tuple(w.shape)} vs {expected}")
            else:
                self.load_dense_weight(w)
        if self.bias is not None and prefix + "bias" in state_dict:
            with torch.no_grad():
                self.bias.copy_(state_dict[prefix + "bias"])


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every :class:`SparseModule` of ``model`` by its ordinary dense module (a new model unless
    ``inplace``); the result is an ordinary module with the same outputs and the same ``state_dict``."""
    import copy

    if isinstance(model, SparseModule):
        return model.to_dense()
    sparse = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, SparseModule)]
    if not inplace:
        # the dense replacements stand in for the sparse modules in the copy (which are never deep-copied)
        return copy.deepcopy(model, memo={id(mod): mod.to_dense() for _, mod in sparse})
    for name, mod in sparse:
        set_submodule(model, name, mod.to_dense())
    return model


@dataclass
class LayerDecision:
    """What happened to one candidate layer.

    Attributes:
        name: qualified module name.
        kind: the layer kind of :func:`mpprune.layers.find_layers` (``"linear"``, ``"conv2d"``...).
        shape: matrix-view shape ``(out, in)`` (a conv as ``(C_out, C_in/groups*kh*kw)``).
        density: fraction of nonzero weights.
        pattern: the k:n pattern of the weight along its input axis (``"2:4"``) when it is k:n by
            construction (density within 1 % of k/n), else None.
        input_shape: shape of the layer's input in the example forward (None when it never ran).
        eligible: whether the sparse kernel serves this layer at all.
        reason: why the layer stays dense (None when converted).
        dense, sparse: timings of the dense layer and of the best sparse variant (same precision, threads).
        variant: the sparse variant chosen (e.g. ``"sparse[tile=32]"``).
        converted: whether the sparse version was swapped in.
        max_abs_error: largest |sparse - dense| output difference on the example input.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    density: float
    pattern: str | None = None
    input_shape: tuple[int, ...] | None = None
    eligible: bool = False
    reason: str | None = None
    dense: Timing | None = None
    sparse: Timing | None = None
    variant: str | None = None
    converted: bool = False
    max_abs_error: float | None = None
    variants: dict[str, Timing] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        """Dense median time / sparse median time (> 1: the sparse version is faster)."""
        if self.dense is None or self.sparse is None:
            return None
        return self.dense.median / self.sparse.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "density": self.density,
            "sparsity": 1.0 - self.density,
            "pattern": self.pattern,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "eligible": self.eligible,
            "converted": self.converted,
            "reason": self.reason,
            "variant": self.variant,
            "dense": None if self.dense is None else self.dense.to_dict(),
            "sparse": None if self.sparse is None else self.sparse.to_dict(),
            "speedup": self.speedup,
            "max_abs_error": self.max_abs_error,
            "variants": {k: v.to_dict() for k, v in self.variants.items()},
        }


@dataclass
class Conversion:
    """The result of a conversion: the (new or in-place) model and one decision per candidate layer."""

    model: nn.Module
    decisions: list[LayerDecision]
    path: str
    device: str
    dtype: str
    threads: int
    min_speedup: float
    backend: str
    kernel_available: bool
    note: str | None = None

    @property
    def converted(self) -> list[str]:
        """Names of the layers that now run sparse."""
        return [d.name for d in self.decisions if d.converted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "min_speedup": self.min_speedup,
            "kernel_available": self.kernel_available,
            "note": self.note,
            "converted": self.converted,
            "layers": [d.to_dict() for d in self.decisions],
        }

    def table(self) -> str:
        """One line per candidate layer: shape, sparsity, dense and sparse medians, speed-up, decision."""
        t = _Table(["layer", "shape", "sparsity", "dense ms", "sparse ms", "speedup", "decision"])
        for d in self.decisions:
            t.add(
                d.name,
                "x".join(map(str, d.shape)),
                f"{1 - d.density:.3f}" + (f" ({d.pattern})" if d.pattern else ""),
                "-" if d.dense is None else f"{d.dense.median * 1e3:.3f}",
                "-" if d.sparse is None else f"{d.sparse.median * 1e3:.3f}",
                "-" if d.speedup is None else f"{d.speedup:.2f}x",
                "sparse" if d.converted else f"dense: {d.reason}",
            )
        return t.render()


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance (to the largest dense output) for sparse-vs-dense agreement in ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16):
        return 2e-2
    if dtype == torch.float64:
        return 1e-10
    return 1e-5


def _describe(name: str, module: nn.Module, kind: str) -> LayerDecision:
    w = matrix_view(module)
    density = float((w != 0).sum().item()) / max(1, w.numel()) if w.device.type != "meta" else 1.0
    kn = detect_kn(w) if w.device.type != "meta" and w.numel() else None
    # a k:n pattern is reported only when the layer is k:n by construction (almost every group holds k
    # nonzeros), not when an unstructured mask happens to leave at most k of n in every group
    exact = kn is not None and density >= 0.99 * kn[0] / kn[1]
    return LayerDecision(
        name=name,
        kind=kind,
        shape=(int(w.shape[0]), int(w.shape[1])),
        density=density,
        pattern=f"{kn[0]}:{kn[1]}" if kn is not None and exact else None,
    )


def candidates(model: nn.Module) -> list[tuple[str, nn.Module, LayerDecision]]:
    """Every prunable layer (Linear, Conv2d) as ``(name, module, fresh decision)``, in model order."""
    return [
        (info.name, info.module, _describe(info.name, info.module, info.kind)) for info in find_layers(model)
    ]


@torch.no_grad()
def capture_inputs(
    model: nn.Module, example_input: torch.Tensor, modules: Sequence[nn.Module]
) -> dict[int, torch.Tensor]:
    """The first positional input each module in ``modules`` receives in one forward of ``example_input``,
    keyed by ``id(module)`` (modules that never run are absent)."""
    if not isinstance(example_input, torch.Tensor):
        raise BadInput(f"example_input must be a tensor, got {type(example_input).__name__}")
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for mod in modules:

        def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
            if id(m) not in seen and args and isinstance(args[0], torch.Tensor):
                seen[id(m)] = args[0].detach().clone()

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def decide(
    decision: LayerDecision,
    dense: nn.Module,
    x: torch.Tensor,
    sparse_variants: Sequence[tuple[str, nn.Module]],
    *,
    timer: Timer,
    min_speedup: float,
    rounds: int = 2,
) -> nn.Module | None:
    """Check and time the sparse variants of one eligible layer against the dense layer on its input ``x``.

    Variants whose output differs from the dense output by more than :func:`tolerance` are dropped (the
    reason is recorded when none is left). Fills ``decision`` and returns the fastest correct variant when
    it is at least ``min_speedup`` times faster than dense, else None.
    """
    decision.eligible = True
    decision.input_shape = tuple(int(s) for s in x.shape)
    ref = dense(x)
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    tol = tolerance(ref.dtype) * max(scale, 1e-30)
    ok: list[tuple[str, nn.Module]] = []
    worst = 0.0
    for variant, mod in sparse_variants:
        err = float((mod(x) - ref).abs().max()) if ref.numel() else 0.0
        if err <= tol:
            ok.append((variant, mod))
            worst = max(worst, err)
        elif not ok:
            decision.max_abs_error = err
    if not ok:
        decision.reason = f"sparse output differs from dense by {decision.max_abs_error:.3g} > {tol:.3g}"
        return None
    decision.max_abs_error = worst
    fns: list[tuple[str, Callable[[], object]]] = [("dense", lambda: dense(x))]
    fns += [(variant, functools.partial(mod, x)) for variant, mod in ok]
    timings = time_variants(timer, decision.name, fns, rounds=rounds)
    decision.dense = timings.pop("dense")
    decision.variants = timings
    best_variant = min(timings, key=lambda v: timings[v].median)
    decision.variant = best_variant
    decision.sparse = timings[best_variant]
    speedup = decision.speedup
    assert speedup is not None
    if speedup >= min_speedup:
        decision.converted = True
        return dict(ok)[best_variant]
    decision.reason = f"not fast enough: measured {speedup:.2f}x dense, min_speedup {min_speedup:.2f}x"
    return None
