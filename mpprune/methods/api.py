"""One function applies every pruning config: ``prune(model, config, ...)`` (torchao-style).

Each method module registers a handler for its config dataclass with :func:`register`; ``prune`` copies
the model (unless ``inplace``), checks data splits, runs the handler, optionally runs the gate, and
returns a :class:`PruneResult`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mpprune.masks import MaskStore
from mpprune.methods._common import LayerReport, PruneReport, check_split, config_dict

__all__ = ["Context", "MethodOutput", "PruneResult", "prune", "register"]


@dataclass
class Context:
    """Data and options handed to a method handler."""

    calibration: Iterable[Any] | None = None
    train_data: Iterable[Any] | None = None
    progress: bool = True


@dataclass
class MethodOutput:
    """What a handler returns: the masks (bound to the pruned model's modules) and per-layer reports."""

    masks: MaskStore
    layers: list[LayerReport]
    notes: list[str] = field(default_factory=list)


@dataclass
class PruneResult:
    """``model`` (pruned), ``masks`` (True = kept) and ``report`` (:class:`PruneReport`)."""

    model: nn.Module
    masks: MaskStore
    report: PruneReport


Handler = Callable[[nn.Module, Any, Context], MethodOutput]
_REGISTRY: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler(model, config, ctx) -> MethodOutput`` for ``config_type``."""

    def deco(fn: Handler) -> Handler:
        _REGISTRY[config_type] = fn
        return fn

    return deco


def _run_gate(gate: Any, original: nn.Module, pruned: nn.Module, masks: MaskStore, calibration: Any) -> Any:
    """The single place where a gate is invoked: ``gate.apply(original, pruned, masks, calibration)``."""
    if not hasattr(gate, "apply"):
        raise ValueError(
            f"gate of type {type(gate).__name__} has no apply(original, pruned, masks, calibration)"
        )
    return gate.apply(original, pruned, masks, calibration)


def prune(
    model: nn.Module,
    config: Any,
    *,
    calibration: Iterable[Any] | None = None,
    gate: Any = None,
    inplace: bool = False,
    train_data: Iterable[Any] | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` with ``config`` (Magnitude, ClassicalRMT, SEB, SER, Hybrid, ...).

    Returns a new model (deep copy) unless ``inplace=True``. ``calibration`` is only passed to the gate;
    ``train_data`` (iterable of ``(x, y)``) is used by SER/Hybrid selection. Data with a ``.split``
    attribute other than ``"train"`` is refused. If ``gate`` is given, ``gate.apply(original, pruned,
    masks, calibration)`` is called once; if its result has a ``model`` and/or ``masks`` attribute those
    replace the pruned ones, and the result is stored in ``report.gate``.
    """
    import mpprune.methods  # noqa: F401  (registers every built-in config)

    if not isinstance(model, nn.Module):
        raise ValueError(f"prune expects an nn.Module, got {type(model).__name__}")
    handler = _REGISTRY.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY))
        raise ValueError(f"unknown pruning config {type(config).__name__}; known: {known}")
    check_split(calibration, "calibration")
    check_split(train_data, "train_data")
    original = model
    if inplace and gate is not None:
        original = copy.deepcopy(model)
    work = model if inplace else copy.deepcopy(model)
    out = handler(work, config, Context(calibration=calibration, train_data=train_data, progress=progress))
    masks = out.masks
    report = PruneReport(
        method=type(config).__name__, config=config_dict(config), layers=out.layers, notes=list(out.notes)
    )
    if gate is not None:
        verdict = _run_gate(gate, original, work, masks, calibration)
        new_model = getattr(verdict, "model", None)
        new_masks = getattr(verdict, "masks", None)
        if isinstance(new_model, nn.Module):
            work = new_model
        if isinstance(new_masks, MaskStore):
            masks = new_masks
        report.gate = verdict
        mods = dict(work.named_modules())
        for lr in report.layers:
            mod = mods.get(lr.name)
            w = getattr(mod, "weight", None) if mod is not None else None
            if w is not None and tuple(w.shape) == lr.shape:
                lr.zeros = int((w.detach() == 0).sum().item())
    return PruneResult(model=work, masks=masks, report=report)
