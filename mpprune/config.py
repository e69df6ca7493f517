"""The run config: typed, frozen dataclasses parsed from TOML or JSON (or built from CLI flags).

A run config has these sections (``experiments/*.toml`` holds examples)::

    out = "out/mnist-seb"          # output directory (``--out`` overrides it)
    analyze = true                 # optional stages: analyze, certify, evaluate (default true)
    [model]                        # ModelConfig
    name = "mnist-cnn"             # a registered model (mpprune.models.MODELS) or a timm name
    checkpoint = "weights.pth"     # optional local file; num_classes, [model.kwargs] optional
    [method]                       # MethodConfig (optional: without it only load and analyze run)
    name = "seb"                   # a registered method (mpprune.methods.api.method_names())
    sparsity = 0.5                 # and any field of the method's config dataclass, e.g. strength = 1.0
    [data]                         # DataConfig (optional)
    calib = "mnist"                # TRAIN data: a built-in data set or an ImageFolder directory
    n_calib = 1000                 # batch_size = 64, seed = 0, eval = <val source>, n_eval
    [gate]                         # keyword arguments of mpprune.certify.Gate (optional; needs data.calib)
    min_certified = 0.99

Every list of allowed names comes from its registry (models, methods, the fields of the method's config
dataclass, the parameters of ``Gate``), and every value is checked against the type its dataclass field or
builder parameter declares (:func:`check_option_types`: ``min_certified = true`` or ``final_report =
"maybe"`` are refused, as is ``n_theta = -5``). A bad config raises :class:`~mpprune.errors.BadInput`
naming the bad key and listing the allowed ones with their types, at parse time, before any work is done.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from mpprune.data import (
    DEFAULT_CALIB_BATCH_SIZE,
    DEFAULT_CALIB_SEED,
    DEFAULT_N_CALIB,
    check_calibration_source,
    is_builtin_dataset,
)
from mpprune.errors import BadInput
from mpprune.models import MODELS, default_checkpoint, model_spec

__all__ = [
    "ModelConfig",
    "MethodConfig",
    "DataConfig",
    "RunConfig",
    "OPTIONAL_STAGES",
    "load_config",
    "parse_config",
    "make_method",
    "make_gate",
    "gate_options",
    "parse_gate",
    "option_types",
    "check_option_types",
    "GATE_MINIMUMS",
]

#: Lower bounds of integer gate options that ``Gate`` itself does not check (a grid needs both ends).
GATE_MINIMUMS = {"n_theta": 2}

#: Stages a config may switch off (``analyze = false``); load, prune and save always run (prune and
#: save only with a ``[method]``).
OPTIONAL_STAGES = ("analyze", "certify", "evaluate")


# ------------------------------------------------------------------------------------------- helpers
def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise BadInput(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; "
                       f"allowed: {', '.join(allowed)}")


def _table(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise BadInput(f"{where} must be a table/object, got {type(obj).__name__}")
    return dict(obj)


def _int(v: Any, where: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadInput(f"{where} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise BadInput(f"{where} must be >= {lo}, got {v}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise BadInput(f"{where} must be a non-empty string, got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
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


def _tuples(v: Any) -> Any:
    """TOML/JSON lists become tuples (the config dataclasses are frozen and hashable-minded)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


# -------------------------------------------------------------------------------------------- method
def make_method(name: str, sparsity: float | None = None, **options: Any) -> Any:
    """The config dataclass registered as ``name`` (:func:`mpprune.methods.api.method_config`), built
    with ``sparsity`` and ``options`` (its other fields).

    Raises :class:`BadInput` for an unknown method or option (listing the method's options), a sparsity
    given to a method without one (``classical_rmt`` truncates at the fitted MP edge), a missing
    sparsity, or a value the config rejects.
    """
    from mpprune.methods.api import method_config

    cls = method_config(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    label = f"method {name!r}"
    unknown = sorted(set(options) - set(fields))
    if unknown:
        allowed = fields
        raise BadInput(f"{label}: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")
    kwargs = {k: _tuples(v) for k, v in options.items()}
    check_option_types(kwargs, option_types(cls), label)
    if "sparsity" not in fields:
        if sparsity is not None:
            raise BadInput(f"method {name} takes no sparsity (it truncates at the fitted MP edge); "
                           "drop the sparsity")
    elif sparsity is None:
        raise BadInput(f"{label} needs a sparsity in [0, 1)")
    else:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise BadInput(f"{label}: sparsity must be a number in [0, 1), got {sparsity!r}")
        kwargs["sparsity"] = float(sparsity)
    try:
        return cls(**kwargs)
    except BadInput:
        raise
    except (ValueError, TypeError) as exc:  # the config's own validation of user values
        raise BadInput(f"{label}: {exc}") from exc


@dataclass(frozen=True)
class MethodConfig:
    """``[method]``: the registered ``name``, the ``sparsity`` and the method's other ``options``."""

    name: str
    sparsity: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The method's config dataclass (e.g. ``SEB(sparsity=0.5)``)."""
        return make_method(self.name, self.sparsity, **self.options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
        return out | dict(self.options)

    @classmethod
    def parse(cls, table: Any, where: str = "[method]") -> MethodConfig:
        t = _table(table, where)
        if "name" not in t:
            from mpprune.methods.api import method_names

            raise BadInput(f"{where} needs a 'name', one of {', '.join(method_names())}")
        name = _str(t.pop("name"), f"{where} name")
        sparsity = t.pop("sparsity", None)
        cfg = cls(name=name, sparsity=sparsity, options=t)
        cfg.build()  # validate now, not after an hour of work
        return cfg


# --------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a registered or timm ``name``, an optional local ``checkpoint``, ``num_classes`` and
    the model's keyword options ``kwargs``."""

    name: str
    checkpoint: str | None = None
    num_classes: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    KEYS = ("name", "checkpoint", "num_classes", "kwargs")

    def spec(self) -> dict[str, Any]:
        """The :func:`mpprune.models.model_spec` of this model (``num_classes`` may be given as the section's
        key or as the builder's option in ``kwargs``, not as two different values)."""
        kwargs = dict(self.kwargs)
        num_classes = self.num_classes
        if "num_classes" in kwargs:
            if num_classes is not None and kwargs["num_classes"] != num_classes:
                raise BadInput(f"[model] num_classes = {num_classes!r} contradicts [model.kwargs] "
                               f"num_classes = {kwargs['num_classes']!r}")
            num_classes = kwargs.pop("num_classes")
        return model_spec(self.name, self.checkpoint, num_classes, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint, "num_classes": self.num_classes,
                "kwargs": dict(self.kwargs)}

    @classmethod
    def parse(cls, table: Any, where: str = "[model]") -> ModelConfig:
        t = _table(table, where)
        _check_keys(t, cls.KEYS, where)
        if "name" not in t:
            raise BadInput(f"{where} needs a 'name'")
        ck = t.get("checkpoint")
        nc = t.get("num_classes")
        cfg = cls(
            name=_str(t["name"], f"{where} name"),
            checkpoint=None if ck is None else _str(ck, f"{where} checkpoint"),
            num_classes=None if nc is None else _int(nc, f"{where} num_classes", 1),
            kwargs={k: _tuples(v) for k, v in _table(t.get("kwargs") or {}, f"{where} kwargs").items()},
        )
        cfg.spec()  # unknown model or option: BadInput now
        entry = MODELS.get(cfg.name)
        if entry is not None and cfg.kwargs:
            builder = entry.architecture if entry.architecture is not None else entry.load
            check_option_types(cfg.kwargs, option_types(builder), f"{where} kwargs")
        return cfg


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataConfig:
    """``[data]``: ``calib`` (TRAIN data: a built-in data set or an ImageFolder directory), ``n_calib``
    stratified samples in batches of ``batch_size`` drawn with ``seed``; ``eval`` (the VAL data, default
    the built-in ``calib`` set's val split) and ``n_eval`` (default all)."""

    calib: str | None = None
    n_calib: int = DEFAULT_N_CALIB
    batch_size: int = DEFAULT_CALIB_BATCH_SIZE
    seed: int = DEFAULT_CALIB_SEED
    eval: str | None = None
    n_eval: int | None = None

    KEYS = ("calib", "n_calib", "batch_size", "seed", "eval", "n_eval")

    @property
    def eval_source(self) -> str | None:
        """Where the evaluation data come from: ``eval``, else a built-in ``calib`` set (its val split)."""
        if self.eval is not None:
            return self.eval
        return self.calib if is_builtin_dataset(self.calib) else None

    def sources(self) -> list[str]:
        """The data directories (not built-in sets) this config reads."""
        return [s for s in (self.calib, self.eval) if s is not None and not is_builtin_dataset(s)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, table: Any, where: str = "[data]") -> DataConfig:
        t = _table(table, where)
        _check_keys(t, cls.KEYS, where)
        calib, ev, n_eval = t.get("calib"), t.get("eval"), t.get("n_eval")
        cfg = cls(
            calib=None if calib is None else _str(calib, f"{where} calib"),
            n_calib=_int(t.get("n_calib", DEFAULT_N_CALIB), f"{where} n_calib", 1),
            batch_size=_int(t.get("batch_size", DEFAULT_CALIB_BATCH_SIZE), f"{where} batch_size", 1),
            seed=_int(t.get("seed", DEFAULT_CALIB_SEED), f"{where} seed", 0),
            eval=None if ev is None else _str(ev, f"{where} eval"),
            n_eval=None if n_eval is None else _int(n_eval, f"{where} n_eval", 1),
        )
        if cfg.calib is not None:
            check_calibration_source(cfg.calib)
        return cfg


# ---------------------------------------------------------------------------------------------- gate
def _gate_class() -> type:
    from mpprune.certify import Gate

    return Gate


def gate_options() -> tuple[str, ...]:
    """The keyword arguments ``mpprune.certify.Gate`` takes (the keys of ``[gate]`` / ``--gate``)."""
    params = inspect.signature(_gate_class()).parameters.values()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def make_gate(options: Mapping[str, Any] | None) -> Any:
    """``mpprune.certify.Gate(**options)`` (None → None); lists become tuples. Raises :class:`BadInput`
    for an unknown option, a value of another type than the gate declares (listing the allowed options
    with their types, :func:`check_option_types`), an integer below :data:`GATE_MINIMUMS`, or a value the
    gate rejects."""
    if options is None:
        return None
    kwargs = {k: _tuples(v) for k, v in _table(options, "gate").items()}
    hints = option_types(_gate_class())
    check_option_types(kwargs, {k: hints.get(k, Any) for k in gate_options()}, "gate", GATE_MINIMUMS)
    try:
        return _gate_class()(**kwargs)
    except BadInput:
        raise
    except (ValueError, TypeError) as exc:
        raise BadInput(f"gate: {exc}") from exc


def _parse_value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if ":" in t:
        return tuple(_parse_value(x) for x in t.split(":"))
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_gate(text: str) -> dict[str, Any]:
    """Parse ``"min_certified=0.99,elastic_net=1e-3:1e-4,backoff=bisect"`` into keyword arguments.

    ``a:b`` becomes the tuple ``(a, b)``; numbers become int/float; ``none`` → None; ``true/false`` → bool.
    """
    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise BadInput(f"gate option {part!r} is not of the form key=value (in {text!r})")
        k, v = part.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise BadInput(f"gate option name {k!r} is not a valid name (in {text!r})")
        out[k] = _parse_value(v)
    if not out:
        raise BadInput(f"empty gate specification {text!r}")
    return out


# ----------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class RunConfig:
    """One run: the sections above, the output directory ``out`` and the optional stages' switches."""

    model: ModelConfig
    method: MethodConfig | None = None
    data: DataConfig | None = None
    gate: Mapping[str, Any] | None = None
    out: str | None = None
    analyze: bool = True
    certify: bool = True
    evaluate: bool = True

    KEYS = ("out", "model", "method", "data", "gate", *OPTIONAL_STAGES)

    def with_out(self, out: str | Path | None) -> RunConfig:
        """This config with another output directory (unchanged when ``out`` is None)."""
        return self if out is None else dataclasses.replace(self, out=str(out))

    @property
    def calib(self) -> str | None:
        return self.data.calib if self.data is not None else None

    def inputs(self) -> list[Path]:
        """Every input file or directory the run reads: the model checkpoint (or the built-in's asset) and
        the data directories. None of them is ever written over."""
        spec = self.model.spec()
        ck = spec["checkpoint"] or default_checkpoint(spec)
        out = [Path(ck)] if ck is not None else []
        if self.data is not None:
            out += [Path(s) for s in self.data.sources()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what state files and manifests record)."""
        return {
            "out": self.out,
            "model": self.model.to_dict(),
            "method": None if self.method is None else self.method.to_dict(),
            "data": None if self.data is None else self.data.to_dict(),
            "gate": None if self.gate is None else {k: _tuples(v) for k, v in self.gate.items()},
            **{s: getattr(self, s) for s in OPTIONAL_STAGES},
        }


def parse_config(obj: Any, where: str = "config") -> RunConfig:
    """A :class:`RunConfig` from its dict form (a parsed TOML/JSON file, or flags), validated: every
    section and every key, the model (name and options), the method (built once), the gate options
    (built once) and what needs calibration data (a gate; a method that selects with training data)."""
    from mpprune.methods.api import needs_train_data

    cfg = _table(obj, where)
    _check_keys(cfg, RunConfig.KEYS, where)
    if "model" not in cfg:
        raise BadInput(f"{where}: missing required section 'model'")
    model = ModelConfig.parse(cfg["model"], f"{where} [model]")
    method = None if cfg.get("method") is None else MethodConfig.parse(cfg["method"], f"{where} [method]")
    data = None if cfg.get("data") is None else DataConfig.parse(cfg["data"], f"{where} [data]")
    gate = cfg.get("gate")
    if gate is not None:
        gate = _table(gate, f"{where} [gate]")
        if method is None:
            raise BadInput(f"{where}: a [gate] needs a [method] to gate")
        if data is None or data.calib is None:
            raise BadInput(f"{where}: a gate needs calibration data ('data.calib')")
        make_gate(gate)
    if method is not None and needs_train_data(method.build()) and (data is None or data.calib is None):
        raise BadInput(f"{where}: method {method.name} selects with training data: give 'data.calib'")
    out = cfg.get("out")
    return RunConfig(
        model=model, method=method, data=data, gate=gate,
        out=None if out is None else _str(out, f"{where} out"),
        **{s: _bool(cfg.get(s, True), f"{where} {s}") for s in OPTIONAL_STAGES},
    )


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run config from a ``.toml`` or ``.json`` file (:func:`parse_config`).

    Relative paths inside it are taken relative to the current directory.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix.lower() == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"config {p}: not valid TOML: {exc}") from exc
    elif p.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"config {p}: not valid JSON: {exc}") from exc
    else:
        raise BadInput(f"config {p}: use a .json or .toml file, got suffix {p.suffix!r}")
    return parse_config(raw, str(p))

