"""Option parsing for the run config: checked scalars and tables, and the type check of keyword options
against the type hints of a config dataclass or a builder (:func:`check_option_types`).

A value has the declared type or is refused with :class:`~mpprune.errors.BadInput` naming the key and
listing every allowed key with its type; TOML/JSON lists become tuples (:func:`tuples`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from mpprune.errors import BadInput

__all__ = ["option_types", "check_option_types", "check_keys", "table", "integer", "string", "boolean",
           "tuples"]


def check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise BadInput(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; "
                       f"allowed: {', '.join(allowed)}")


def table(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise BadInput(f"{where} must be a table/object, got {type(obj).__name__}")
    return dict(obj)


def integer(v: Any, where: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadInput(f"{where} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise BadInput(f"{where} must be >= {lo}, got {v}")
    return v


def string(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise BadInput(f"{where} must be a non-empty string, got {v!r}")
    return v


def boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise BadInput(f"{where} must be true or false, got {v!r}")
    return v


def _describe(hint: Any) -> str:
    """A short reader's name of a type hint: ``a number``, ``an integer``, ``true or false``, ``a:b``, ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {float: "a number", int: "an integer", bool: "true or false", str: "a string",
              type(None): "none"}
    if hint in simple:
        return simple[hint]
    if hint is None:
        return "none"
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s"
        return "a pair " + ":".join(_describe(a).split(" ", 1)[-1] for a in args)
    if origin in (list, collections.abc.Sequence):
        return f"a list of {_describe(args[0]).split(' ', 1)[-1] if args else 'value'}s"
    if origin is collections.abc.Callable:
        return "a function"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a parsed TOML/JSON/flag value, lists already tuples) has the type ``hint``;
    hints this does not know accept anything (the config class validates those itself)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (list, collections.abc.Sequence):
        return isinstance(value, (tuple, list)) and all(_matches(v, args[0]) for v in value if args)
    if origin is collections.abc.Callable:
        return callable(value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    return True


def option_types(obj: type | Callable[..., Any]) -> dict[str, Any]:
    """Option name → type hint of a config dataclass's fields, or of a builder's keyword parameters."""
    hints = typing.get_type_hints(obj)
    if dataclasses.is_dataclass(obj):
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(obj)}
    params = inspect.signature(obj).parameters.values()
    return {p.name: hints.get(p.name, Any) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "checkpoint"}


def check_option_types(options: Mapping[str, Any], hints: Mapping[str, Any], where: str,
                       minimums: Mapping[str, int] | None = None) -> None:
    """Refuse (:class:`BadInput`) an unknown key or a value whose type is not the declared one, listing
    every allowed key with its type; integers below ``minimums`` are refused too."""
    allowed = ", ".join(f"{k} ({_describe(h)})" for k, h in hints.items())
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise BadInput(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; allowed: {allowed}")
    for key, value in options.items():
        if not _matches(value, hints[key]):
            raise BadInput(f"{where}: {key} must be {_describe(hints[key])}, got {value!r}; "
                           f"allowed: {allowed}")
        low = (minimums or {}).get(key)
        if low is not None and isinstance(value, int) and value < low:
            raise BadInput(f"{where}: {key} must be >= {low}, got {value}")


def tuples(v: Any) -> Any:
    """TOML/JSON lists become tuples (the config dataclasses are frozen and hashable-minded)."""
    return tuple(tuples(x) for x in v) if isinstance(v, list) else v


