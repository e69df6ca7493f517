"""The run config: typed, frozen dataclasses parsed from TOML or JSON (or built from CLI flags).

A run config has these sections (``experiments/**/*.toml`` holds examples)::

    out = "out/mnist-seb"          # output directory (``--out`` overrides it)
    analyze = true                 # optional stages: analyze, certify, evaluate, macs (default true)
    [model]                        # ModelConfig
    name = "mnist-cnn"             # a registered model (mpprune.models.MODELS) or a timm name
    checkpoint = "weights.pth"     # optional local file; num_classes, [model.kwargs] optional
    [method]                       # MethodConfig (optional: without it and [kn] only load and analyze run)
    name = "seb"                   # a registered method (mpprune.methods.api.method_names())
    sparsity = 0.5                 # and any field of the method's config dataclass, e.g. strength = 1.0
    [data]                         # DataConfig (optional)
    calib = "mnist"                # TRAIN data: a built-in data set or an ImageFolder directory
    n_calib = 1000                 # batch_size = 64, seed = 0, eval = <val source>, n_eval
    [gate]                         # keyword arguments of mpprune.gate.Gate (optional; needs data.calib)
    min_certified = 0.99
    [kn]                           # KnConfig: k:n on top of the prune stage's masks (mpprune.methods.NM)
    pattern = "2:4"                # and any field of NM but source (the prune masks, or dense without
    cost = "certificate"           # a [method]); layers = ["blocks.*.mlp.*"]: glob patterns of the layers
    [tome]                         # ToMeConfig: token merging (mpprune.tome.apply_tome) from here on
    r = 2                          # tokens per block (or a list, one per block); inflection, prop_attn
    [distill]                      # DistillConfig: frozen-mask distillation on the TRAIN split of data.calib
    epochs = 3                     # and any field of mpprune.distill.DistillRecipe; checkpoint_every (steps),
    checkpoint_every = 500         # n_train (a stratified subset), augment (timm's training transforms)

The stages run in the order of :data:`mpprune.stages.STAGES`, each only with its section. A ``[distill]``
needs a ``[method]`` or ``[kn]`` and ``data.calib``; ``[kn]`` (until ``mpprune.methods.NM`` exists: bad
input) is validated with the prune masks as its source when there is a ``[method]``.

Every list of allowed names comes from its registry (models, methods, the fields of the method's config
dataclass, the parameters of ``Gate``), and every value is checked against the type its dataclass field or
builder parameter declares (:func:`check_option_types`: ``min_certified = true`` or ``final_report =
"maybe"`` are refused, as is ``n_theta = -5``). A bad config raises :class:`~mpprune.errors.BadInput`
naming the bad key and listing the allowed ones with their types, at parse time, before any work is done.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpprune.data import (
    DEFAULT_CALIB_BATCH_SIZE,
    DEFAULT_CALIB_SEED,
    DEFAULT_N_CALIB,
    check_calibration_source,
    is_builtin_dataset,
)
from mpprune.errors import BadInput
from mpprune.models import MODELS, default_checkpoint, model_spec
from mpprune.options import boolean as _bool
from mpprune.options import check_keys as _check_keys
from mpprune.options import check_option_types, option_types
from mpprune.options import integer as _int
from mpprune.options import string as _str
from mpprune.options import table as _table
from mpprune.options import tuples as _tuples

__all__ = [
    "ModelConfig",
    "MethodConfig",
    "KnConfig",
    "ToMeConfig",
    "DistillConfig",
    "DataConfig",
    "RunConfig",
    "OPTIONAL_STAGES",
    "load_config",
    "parse_config",
    "make_method",
    "make_gate",
    "gate_options",
    "parse_gate",
    "parse_method_options",
    "parse_pairs",
    "option_types",
    "check_option_types",
    "GATE_MINIMUMS",
]

#: Lower bounds of integer gate options that ``Gate`` itself does not check (a grid needs both ends).
GATE_MINIMUMS = {"n_theta": 2}

#: Stages a config may switch off (``analyze = false``); the others run when their section is given.
OPTIONAL_STAGES = ("analyze", "certify", "evaluate", "macs")


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
            raise BadInput(f"method {name} takes no sparsity (its options: {', '.join(fields)}); "
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


def _parse_value(text: str, colon_tuples: bool = True) -> Any:
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if ":" in t and colon_tuples:
        return tuple(_parse_value(x) for x in t.split(":"))
    if "+" in t and not colon_tuples:  # a list: "head+stem", "head+" (one item), "+" (none)
        return tuple(_parse_value(x, False) for x in t.split("+") if x.strip())
    if ":" in t:
        return t
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_pairs(text: str, what: str = "gate", *, colon_tuples: bool = True) -> dict[str, Any]:
    """Parse ``"key=value,key=value"`` into keyword arguments: numbers become int/float, ``none`` → None,
    ``true/false`` → bool, and with ``colon_tuples`` ``a:b`` → the tuple ``(a, b)`` (else the string, as a
    k:n pattern ``"4:8"``)."""
    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise BadInput(f"{what} option {part!r} is not of the form key=value (in {text!r})")
        k, v = part.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise BadInput(f"{what} option name {k!r} is not a valid name (in {text!r})")
        out[k] = _parse_value(v, colon_tuples)
    if not out:
        raise BadInput(f"empty {what} specification {text!r}")
    return out


def parse_gate(text: str) -> dict[str, Any]:
    """Parse ``"min_certified=0.99,elastic_net=1e-3:1e-4,backoff=bisect"`` into keyword arguments
    (:func:`parse_pairs`; ``a:b`` becomes the tuple ``(a, b)``)."""
    return parse_pairs(text, "gate")


def parse_method_options(text: str) -> dict[str, Any]:
    """Parse ``--method-options "pattern=4:8,cost=magnitude,skip=head+stem"`` (:func:`parse_pairs`;
    ``a:b`` stays a string, ``a+b`` is a list: ``head+`` one item, ``+`` none)."""
    return parse_pairs(text, "method", colon_tuples=False)



# ----------------------------------------------------------------------------------- k:n, ToMe, distill
def _nm() -> type:
    from mpprune.methods import NM

    return NM


@dataclass(frozen=True)
class KnConfig:
    """``[kn]``: the options of :class:`mpprune.methods.NM` except ``source`` (the run passes the prune
    stage's masks, or None -- a dense source -- without a ``[method]``), and ``layers``: glob patterns
    (:func:`fnmatch.fnmatch`) of the layer names to project, resolved against the model into NM's
    ``include`` (not both)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[str, ...] | None = None

    def build(self, source: Any = None, include: Any = None) -> Any:
        """``NM(**options, source=source)`` (with ``include`` when given)."""
        kwargs = {k: _tuples(v) for k, v in self.options.items()}
        if include is not None:
            kwargs["include"] = tuple(include)
        try:
            return _nm()(**kwargs, source=source)
        except BadInput:
            raise
        except (ValueError, TypeError) as exc:
            raise BadInput(f"[kn]: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dict(self.options) | ({} if self.layers is None else {"layers": list(self.layers)})

    @classmethod
    def parse(cls, table: Any, where: str = "[kn]") -> KnConfig:
        t = {k: _tuples(v) for k, v in _table(table, where).items()}
        hints = {k: h for k, h in option_types(_nm()).items() if k != "source"}
        layers = t.pop("layers", None)
        if layers is not None:
            if isinstance(layers, str):
                layers = (layers,)
            ok = isinstance(layers, tuple) and layers and all(isinstance(x, str) and x for x in layers)
            if not ok:
                raise BadInput(f"{where} layers must be a list of glob patterns of layer names, "
                               f"got {layers!r}")
            if "include" in t:
                raise BadInput(f"{where}: give layers (glob patterns) or include (exact names), not both")
        check_option_types(t, hints, where)
        return cls(options=t, layers=layers)  # built (validated) by parse_config, which knows the source


@dataclass(frozen=True)
class ToMeConfig:
    """``[tome]``: ``r`` tokens merged per block (an integer, or a list with one per block), an optional
    ``inflection`` in [-1, 1] making an integer ``r`` a ramp (:func:`mpprune.tome.resolve_r`) and
    ``prop_attn`` (proportional attention, default true)."""

    r: int | tuple[int, ...]
    inflection: float | None = None
    prop_attn: bool = True

    KEYS = ("r", "inflection", "prop_attn")

    def schedule(self) -> Any:
        """The ``r`` argument of :func:`mpprune.tome.apply_tome`."""
        if isinstance(self.r, tuple):
            return list(self.r)
        return self.r if self.inflection is None else (self.r, float(self.inflection))

    def to_dict(self) -> dict[str, Any]:
        return {"r": list(self.r) if isinstance(self.r, tuple) else self.r, "inflection": self.inflection,
                "prop_attn": self.prop_attn}

    @classmethod
    def parse(cls, table: Any, where: str = "[tome]") -> ToMeConfig:
        t = {k: _tuples(v) for k, v in _table(table, where).items()}
        _check_keys(t, cls.KEYS, where)
        if "r" not in t:
            raise BadInput(f"{where} needs r (tokens merged per block)")
        r = t["r"]
        if isinstance(r, tuple):
            for x in r:
                _int(x, f"{where} r[...]", 0)
        else:
            _int(r, f"{where} r", 0)
        inflection = t.get("inflection")
        if inflection is not None:
            number = isinstance(inflection, (int, float)) and not isinstance(inflection, bool)
            if not number or not -1 <= inflection <= 1:
                raise BadInput(f"{where} inflection must be a number in [-1, 1], got {inflection!r}")
            if isinstance(r, tuple):
                raise BadInput(f"{where}: inflection applies to an integer r, not to a list")
        return cls(r=r, inflection=None if inflection is None else float(inflection),
                   prop_attn=_bool(t.get("prop_attn", True), f"{where} prop_attn"))


@dataclass(frozen=True)
class DistillConfig:
    """``[distill]``: the fields of :class:`mpprune.distill.DistillRecipe` (``recipe``), a training state
    written every ``checkpoint_every`` optimiser steps (and at the end) inside the run folder, ``n_train``
    training items (a seeded stratified subset of the TRAIN split; None: all) and ``augment`` (timm's
    training transforms with RandAugment m9-mstd0.5, random erasing 0.25, flips and colour jitter,
    :data:`mpprune.stages.TRAIN_AUGMENTATION`, for the ImageFolder data of a timm model; built-in data
    are used as they are). ``bn_batches`` > 0: after distillation, the BatchNorm statistics are
    re-estimated (:func:`mpprune.distill.reestimate_batchnorm`) on that many batches of the same training
    data, in order (0: not done)."""

    recipe: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 500
    n_train: int | None = None
    augment: bool = True
    bn_batches: int = 0

    KEYS = ("checkpoint_every", "n_train", "augment", "bn_batches")

    def build(self) -> Any:
        """The :class:`~mpprune.distill.DistillRecipe`."""
        from mpprune.distill import DistillRecipe

        try:
            return DistillRecipe(**{k: _tuples(v) for k, v in self.recipe.items()})
        except BadInput:
            raise
        except (ValueError, TypeError) as exc:
            raise BadInput(f"[distill]: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dict(self.recipe) | {"checkpoint_every": self.checkpoint_every, "n_train": self.n_train,
                                    "augment": self.augment, "bn_batches": self.bn_batches}

    @classmethod
    def parse(cls, table: Any, where: str = "[distill]") -> DistillConfig:
        from mpprune.distill import DistillRecipe

        t = {k: _tuples(v) for k, v in _table(table, where).items()}
        own = {k: t.pop(k) for k in cls.KEYS if k in t}
        hints = option_types(DistillRecipe)
        check_option_types(t, hints | {"checkpoint_every": int, "n_train": int | None, "augment": bool,
                                       "bn_batches": int}, where)
        n_train = own.get("n_train")
        every = _int(own.get("checkpoint_every", 500), f"{where} checkpoint_every", 1)
        cfg = cls(recipe=t, checkpoint_every=every,
                  n_train=None if n_train is None else _int(n_train, f"{where} n_train", 1),
                  augment=_bool(own.get("augment", True), f"{where} augment"),
                  bn_batches=_int(own.get("bn_batches", 0), f"{where} bn_batches", 0))
        cfg.build()
        return cfg


# ----------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class RunConfig:
    """One run: the sections above, the output directory ``out`` and the optional stages' switches."""

    model: ModelConfig
    method: MethodConfig | None = None
    data: DataConfig | None = None
    gate: Mapping[str, Any] | None = None
    kn: KnConfig | None = None
    tome: ToMeConfig | None = None
    distill: DistillConfig | None = None
    out: str | None = None
    analyze: bool = True
    certify: bool = True
    evaluate: bool = True
    macs: bool = True

    KEYS = ("out", "model", "method", "data", "gate", "kn", "tome", "distill", *OPTIONAL_STAGES)

    @property
    def prunes(self) -> bool:
        """Whether a stage of this run changes the weights by pruning (a ``[method]`` or a ``[kn]``)."""
        return self.method is not None or self.kn is not None

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
            **{name: None if sec is None else sec.to_dict()
               for name, sec in (("kn", self.kn), ("tome", self.tome), ("distill", self.distill))},
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
    kn = None if cfg.get("kn") is None else KnConfig.parse(cfg["kn"], f"{where} [kn]")
    tome = None if cfg.get("tome") is None else ToMeConfig.parse(cfg["tome"], f"{where} [tome]")
    distill = (None if cfg.get("distill") is None
               else DistillConfig.parse(cfg["distill"], f"{where} [distill]"))
    prunes = method is not None or kn is not None
    if distill is not None and not prunes:
        raise BadInput(f"{where}: [distill] fine-tunes a pruned model: give a [method] or a [kn]")
    if distill is not None and (data is None or data.calib is None):
        raise BadInput(f"{where}: [distill] trains on the TRAIN split of 'data.calib': give it")
    nm = None if kn is None else kn.build(source={} if method is not None else None)  # validate now
    if nm is not None and nm.needs_calibration and (data is None or data.calib is None):
        raise BadInput(f"{where}: [kn] with cost {nm.cost!r} reads calibration data: give 'data.calib'")
    gate = cfg.get("gate")
    if gate is not None:
        gate = _table(gate, f"{where} [gate]")
        if not prunes:
            raise BadInput(f"{where}: a [gate] needs a [method] or a [kn] to gate")
        if data is None or data.calib is None:
            raise BadInput(f"{where}: a gate needs calibration data ('data.calib')")
        make_gate(gate)
    if method is not None and needs_train_data(method.build()) and (data is None or data.calib is None):
        raise BadInput(f"{where}: method {method.name} selects with training data: give 'data.calib'")
    out = cfg.get("out")
    return RunConfig(
        model=model, method=method, data=data, gate=gate, kn=kn, tome=tome, distill=distill,
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

