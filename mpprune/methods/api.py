"""One function applies every pruning config: ``prune(model, config, ...)`` (torchao-style).

Each method module registers a handler for its config dataclass, under one name, with :func:`register`
(``@register(SEB, "seb")``); ``prune`` copies the model (unless ``inplace``), checks data splits, runs the
handler, optionally runs the gate, and returns a :class:`PruneResult`. The registry is the one list of
methods: :func:`method_names` (CLI choices, config parsing) and :func:`method_config` are read from it.
A config that selects with training data says so with a ``needs_train_data`` property.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.methods._common import LayerReport, PruneReport, check_split, config_dict

__all__ = [
    "Context",
    "MethodOutput",
    "PruneResult",
    "prune",
    "register",
    "method_names",
    "method_config",
    "method_name",
    "needs_train_data",
]


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
#: config type → handler.
_REGISTRY: dict[type, Handler] = {}
#: registered name → config type (the same entries as :data:`_REGISTRY`, by name).
_NAMES: dict[str, type] = {}


def register(config_type: type, name: str) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler(model, config, ctx) -> MethodOutput`` for ``config_type`` under
    ``name`` (lower case, ``_`` between words: the name of ``--method`` and of ``[method] name``)."""
    if not name or name != name.lower() or "-" in name:
        raise ValueError(f"method name {name!r} must be lower case with '_' between words")
    if _NAMES.get(name, config_type) is not config_type:
        raise ValueError(f"method name {name!r} is already registered for {_NAMES[name].__name__}")

    def deco(fn: Handler) -> Handler:
        _REGISTRY[config_type] = fn
        _NAMES[name] = config_type
        return fn

    return deco


def _load_builtins() -> None:
    import mpprune.methods  # noqa: F401  (registers every built-in config)


def method_names() -> tuple[str, ...]:
    """Every registered method name, sorted."""
    _load_builtins()
    return tuple(sorted(_NAMES))


def method_config(name: str) -> type:
    """The config dataclass registered as ``name`` (``-`` may stand for ``_``, any case).

    Raises :class:`BadInput` naming the known methods for an unknown name.
    """
    _load_builtins()
    key = str(name).lower().replace("-", "_")
    if key not in _NAMES:
        raise BadInput(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return _NAMES[key]


def method_name(config: Any) -> str:
    """The registered name of a config object (or config type)."""
    _load_builtins()
    cls = config if isinstance(config, type) else type(config)
    for name, typ in _NAMES.items():
        if typ is cls:
            return name
    raise BadInput(f"{cls.__name__} is not a registered pruning config; known: {', '.join(method_names())}")


def needs_train_data(config: Any) -> bool:
    """Whether ``config`` selects with training data (its ``needs_train_data`` property; False without)."""
    return bool(getattr(config, "needs_train_data", False))


def _run_gate(gate: Any, original: nn.Module, pruned: nn.Module, masks: MaskStore, calibration: Any) -> Any:
    """The single place where a gate is invoked: ``gate.apply(original, pruned, masks, calibration)``."""
    if not hasattr(gate, "apply"):
        raise BadInput(
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
    replace the pruned ones, and the result is stored in ``report.gate``. A NaN/Inf in any parameter or
    buffer of ``model`` is :class:`~mpprune.errors.BadInput`.
    """
    _load_builtins()
    if not isinstance(model, nn.Module):
        raise BadInput(f"prune expects an nn.Module, got {type(model).__name__}")
    handler = _REGISTRY.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _REGISTRY))
        raise BadInput(f"unknown pruning config {type(config).__name__}; known: {known}")
    check_split(calibration, "calibration")
    check_split(train_data, "train_data")
    from mpprune.models import check_finite

    check_finite(model)  # every parameter and buffer: a NaN bias would poison the gate and the masks
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
