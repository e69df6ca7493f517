"""The staged, resumable run that ``mpprune run`` and ``mpprune prune`` both execute.

:func:`run` executes ``load → analyze → prune (+gate) → certify → evaluate → save`` (:data:`STAGES`) from
one :class:`~mpprune.config.RunConfig` (a TOML/JSON file, its dict, or flags). Every completed stage is
recorded in ``<out>/state.json`` with its results, so a crashed run resumes at the first stage that did
not complete; the inputs' checksums recorded by ``load`` must still match. Stage outputs:

* ``stages/analyze/spectrum.{json,md}`` — the per-layer MP fits of the dense model;
* ``stages/prune/`` — the pruned model as a checkpoint (:mod:`mpprune.checkpoint`), so later stages and
  a resumed run start from exactly these weights;
* ``stages/certificate.json`` — :func:`mpprune.certify.certify` of the pruned model on the calibration set;
* ``model/`` — the final checkpoint, with ``prune_report.json`` and the evaluation in its manifest.

``mpprune prune`` builds a config from its flags (no analyze and certify stages), runs it in a hidden
staging directory and publishes only ``model/`` as its output. :func:`dry_run` validates a config, builds
the model without loading weights where possible and reports what each stage would do, writing nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mpprune.checkpoint import compact, load_pruned, save_pruned
from mpprune.config import RunConfig, load_config, make_gate, parse_config
from mpprune.data import accuracy, calibration_batches, calibration_dataset, eval_dataset
from mpprune.errors import BadInput
from mpprune.io import check_not_input, input_record, utc_now
from mpprune.masks import MaskStore
from mpprune.models import build_model, check_finite
from mptheory.io import atomic_write_text, dumps_json, jsonable

__all__ = [
    "STAGES",
    "STAGE_FUNCTIONS",
    "STATE_FILE",
    "FINAL_CHECKPOINT",
    "PRUNE_REPORT_FILE",
    "Run",
    "run",
    "dry_run",
    "gate_summary",
    "skip_reason",
]

STAGES = ("load", "analyze", "prune", "certify", "evaluate", "save")
STATE_FILE = "state.json"
FINAL_CHECKPOINT = "model"
PRUNE_REPORT_FILE = "prune_report.json"
_PRUNE_STAGE_DIR = Path("stages") / "prune"


def gate_summary(verdict: Any) -> list[dict[str, Any]] | None:
    """Per-layer gate verdicts ``[{name, status, sparsity_requested, sparsity_final, certified_fraction,
    estimator, sound, reason}]`` from a gate result or its dict (None when there was no gate)."""
    if verdict is None:
        return None
    d = jsonable(verdict)
    rows = []
    for gl in d.get("layers", []) if isinstance(d, dict) else []:
        cert = gl.get("certificate") or {}
        keys = ("name", "status", "sparsity_requested", "sparsity_final", "reason")
        rows.append({k: gl.get(k) for k in keys}
                    | {k: cert.get(k) for k in ("certified_fraction", "estimator", "sound")})
    return rows


def skip_reason(stage: str, cfg: RunConfig) -> str | None:
    """Why ``stage`` does nothing under ``cfg`` (None when it runs): the one rule for runs and dry runs."""
    if stage in ("analyze", "certify", "evaluate") and not getattr(cfg, stage):
        return f"{stage} = false in the config"
    if stage in ("prune", "certify", "evaluate", "save") and cfg.method is None:
        return "no [method] in the config"
    if stage == "certify" and cfg.calib is None:
        return "no calibration data in the config"
    if stage == "evaluate" and (cfg.data is None or cfg.data.eval_source is None):
        return "no evaluation (val) data in the config"
    return None


@dataclass
class Run:
    """Mutable state of one :func:`run`; heavy objects are built lazily so skipped stages cost nothing."""

    config: RunConfig
    out: Path
    state: dict[str, Any]
    progress: bool = True
    _spec: dict[str, Any] | None = None
    _dense: nn.Module | None = None
    _pruned: tuple[nn.Module, MaskStore, Any] | None = None
    _calib: list[Any] | None = None

    @property
    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            self._spec = self.config.model.spec()
        return self._spec

    def inputs(self) -> list[Path]:
        return self.config.inputs()

    def dense(self) -> nn.Module:
        if self._dense is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if "load" in self.state["completed"] else "default")
                self._dense = build_model(self.spec)
            check_finite(self._dense)
        return self._dense

    def calibration(self) -> list[Any] | None:
        data = self.config.data
        if data is None or data.calib is None:
            return None
        if self._calib is None:
            ds = calibration_dataset(data.calib, self.spec, self.dense())
            if len(ds) == 0:
                raise BadInput(f"calibration data {data.calib!r} is empty")
            self._calib = calibration_batches(ds, min(data.n_calib, len(ds)), data.batch_size, data.seed)
        return self._calib

    def pruned(self) -> tuple[nn.Module, MaskStore, Any]:
        if self._pruned is None:
            model, masks, manifest = load_pruned(self.out / _PRUNE_STAGE_DIR)
            self._pruned = (model, masks, manifest.get("report"))
        return self._pruned

    def save_state(self) -> None:
        self.state["updated"] = utc_now()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / STATE_FILE, dumps_json(self.state))


def _skippable(stage: str) -> Callable[[Callable[[Run], dict[str, Any]]], Callable[[Run], dict[str, Any]]]:
    """A stage function that returns ``{"skipped": reason}`` when :func:`skip_reason` says so."""

    def deco(fn: Callable[[Run], dict[str, Any]]) -> Callable[[Run], dict[str, Any]]:
        def stage_fn(r: Run) -> dict[str, Any]:
            reason = skip_reason(stage, r.config)
            return {"skipped": reason} if reason is not None else fn(r)

        stage_fn.__name__ = stage_fn.__qualname__ = fn.__name__
        stage_fn.__doc__ = fn.__doc__
        return stage_fn

    return deco


def _stage_load(r: Run) -> dict[str, Any]:
    model = r.dense()
    return {
        "model": r.spec,
        "inputs": [input_record(p) for p in r.inputs()],
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


@_skippable("analyze")
def _stage_analyze(r: Run) -> dict[str, Any]:
    from mpprune.spectrum import analyze

    rep = analyze(r.dense(), progress=r.progress, name=r.config.model.name)
    d = r.out / "stages" / "analyze"
    d.mkdir(parents=True, exist_ok=True)
    rep.to_json(d / "spectrum.json")
    rep.to_markdown(d / "spectrum.md")
    return {"summary": rep.summary(), "files": ["stages/analyze/spectrum.json", "stages/analyze/spectrum.md"]}


def _manifest_config(cfg: RunConfig, method: Any) -> dict[str, Any]:
    """The run config as the manifest records it: the method section resolved to its config dataclass
    (every field, its ``type``, and the registered ``name``)."""
    from mpprune.methods._common import config_dict

    out = cfg.to_dict()
    out["method"] = {"name": cfg.method.name if cfg.method else None, **config_dict(method)}
    return out


@_skippable("prune")
def _stage_prune(r: Run) -> dict[str, Any]:
    from mpprune.methods import prune

    assert r.config.method is not None
    method = r.config.method.build()
    gate = make_gate(r.config.gate)
    calib = r.calibration()
    res = prune(r.dense(), method, calibration=calib, gate=gate, train_data=calib, progress=r.progress)
    verdict = res.report.gate  # failing layers were backed off or left dense by the gate itself
    save_pruned(r.out / _PRUNE_STAGE_DIR, res.model, res.masks, res.report,
                config=_manifest_config(r.config, method), factory=r.spec)
    r._pruned = (res.model, res.masks, res.report.to_dict())
    return {"global_sparsity": res.report.global_sparsity, "gate": gate_summary(verdict),
            "checkpoint": str(_PRUNE_STAGE_DIR)}


@_skippable("certify")
def _stage_certify(r: Run) -> dict[str, Any]:
    from mpprune.certify import certify

    model, _, _ = r.pruned()
    rep = certify(r.dense(), model, r.calibration())
    d = jsonable(rep)
    (r.out / "stages").mkdir(parents=True, exist_ok=True)
    atomic_write_text(r.out / "stages" / "certificate.json", dumps_json(d))
    return {"certificate": compact(d), "file": "stages/certificate.json"}


@_skippable("evaluate")
def _stage_evaluate(r: Run) -> dict[str, Any]:
    data = r.config.data
    assert data is not None and data.eval_source is not None
    ds = eval_dataset(data.eval_source, r.spec, r.dense())
    limit = data.n_eval
    model, _, _ = r.pruned()
    return {"data": data.eval_source, "split": "val", "n": len(ds) if limit is None else min(limit, len(ds)),
            "accuracy_dense": accuracy(r.dense(), ds, limit=limit),
            "accuracy_pruned": accuracy(model, ds, limit=limit)}


@_skippable("save")
def _stage_save(r: Run) -> dict[str, Any]:
    model, masks, report = r.pruned()
    results = r.state["results"]
    cert = results.get("certify", {}).get("certificate")
    if cert is None and isinstance(report, Mapping):
        cert = report.get("gate")  # the gate's verdicts are the certificate of a gated model
    ev = results.get("evaluate")
    if ev is not None and "skipped" in ev:
        ev = None
    assert r.config.method is not None
    out = save_pruned(r.out / FINAL_CHECKPOINT, model, masks, report,
                      config=_manifest_config(r.config, r.config.method.build()), inputs=r.inputs(),
                      certificate=cert, factory=r.spec, extra={"evaluation": ev},
                      extra_files={PRUNE_REPORT_FILE: report})
    return {"checkpoint": str(out)}


#: Stage name → function (looked up at call time, so tests may replace one to simulate a crash).
STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "load": _stage_load,
    "analyze": _stage_analyze,
    "prune": _stage_prune,
    "certify": _stage_certify,
    "evaluate": _stage_evaluate,
    "save": _stage_save,
}


def _as_config(config: str | Path | Mapping[str, Any] | RunConfig) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(config)
    return load_config(config)


def _config_digest(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("out")  # where the run is written is not part of what it computes
    return hashlib.sha256(json.dumps(jsonable(d), sort_keys=True).encode()).hexdigest()


def _check_paths(cfg: RunConfig, out_dir: Path) -> list[Path]:
    """The inputs of ``cfg`` (each must exist) after refusing an output that would write over one."""
    inputs = cfg.inputs()
    for p in inputs:
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist")
    if cfg.data is not None:
        for src in cfg.data.sources():
            if not Path(src).is_dir():
                raise BadInput(f"data {src} is not a directory (expected an ImageFolder)")
    check_not_input(out_dir, inputs)
    return inputs


def _previous_state(cfg: RunConfig, out_dir: Path, resume: bool) -> dict[str, Any] | None:
    spath = out_dir / STATE_FILE
    if not (resume and spath.is_file()):
        return None
    state: dict[str, Any] = json.loads(spath.read_text())
    if state.get("config_sha256") != _config_digest(cfg):
        raise BadInput(f"{out_dir} holds a run of a different config; use another 'out' or resume=False")
    return state


def _output_dir(cfg: RunConfig) -> Path:
    if cfg.out is None:
        raise BadInput("no output directory: give 'out' in the config or --out")
    return Path(cfg.out)


def run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = True,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``load → analyze → prune (+gate) → certify → evaluate → save`` from one config.

    ``config`` is a path to a JSON/TOML file (:func:`mpprune.config.load_config`), its dict, or a
    :class:`~mpprune.config.RunConfig`; ``out`` overrides its output directory. After each stage
    ``<out>/state.json`` records the completed stages and their results; with ``resume=True`` a rerun
    skips completed stages (the input checksums recorded by ``load`` must still match). A state written
    for a different config raises :class:`~mpprune.errors.BadInput`; pass ``resume=False`` to start over.
    Bad input found before the first stage completes (a missing checkpoint, NaN weights, a validation
    split as calibration data) leaves nothing written. The final checkpoint goes to ``<out>/model``.

    Returns the final state dict (``completed``, ``results`` and ``seconds`` per stage).
    """
    from tqdm.auto import tqdm

    cfg = _as_config(config).with_out(out)
    out_dir = _output_dir(cfg)
    _check_paths(cfg, out_dir)
    state = _previous_state(cfg, out_dir, resume)
    if state is None:
        state = {"config_sha256": _config_digest(cfg), "config": jsonable(cfg.to_dict()), "completed": [],
                 "results": {}, "seconds": {}, "started": utc_now()}
    r = Run(config=cfg, out=out_dir, state=state, progress=progress)
    if "load" in state["completed"]:  # the inputs must not have changed under a resumed run
        old = {d["path"]: d["sha256"] for d in state["results"]["load"]["inputs"]}
        for p in r.inputs():
            rec = input_record(p)
            if old.get(rec["path"]) not in (None, rec["sha256"]):
                raise BadInput(f"input {p} changed since the run started (sha256 differs); resume=False")
    bar = tqdm(STAGES, desc="run", unit="stage", disable=not progress)
    try:
        for stage in bar:
            bar.set_postfix_str(stage)
            if stage in state["completed"]:
                continue
            t0 = time.perf_counter()
            state["results"][stage] = jsonable(STAGE_FUNCTIONS[stage](r))
            state.setdefault("seconds", {})[stage] = time.perf_counter() - t0
            state["completed"].append(stage)
            r.save_state()
    finally:
        bar.close()
    return state


def dry_run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Check a run without running it, writing nothing.

    Parses and validates the config (every section and key, the method and gate built once), checks the
    paths (inputs exist, the output writes over none of them, an existing state belongs to this config),
    builds the model without loading weights where possible (``minilm`` reads its weight file for its
    shapes) and reports each stage as ``"run"``, ``"done"`` (resumed) or ``"skip: <reason>"``.
    """
    from mpprune.methods._common import config_dict

    cfg = _as_config(config).with_out(out)
    out_dir = _output_dir(cfg)
    inputs = _check_paths(cfg, out_dir)
    state = _previous_state(cfg, out_dir, resume)
    done = set(state["completed"]) if state is not None else set()
    spec = cfg.model.spec()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(spec, load_weights=False)
    stages: dict[str, str] = {}
    for stage in STAGES:
        reason = skip_reason(stage, cfg)
        stages[stage] = "done" if stage in done else ("run" if reason is None else f"skip: {reason}")
    gate = make_gate(cfg.gate)
    return {
        "dry_run": True,
        "out": str(out_dir),
        "config": jsonable(cfg.to_dict()),
        "inputs": [str(p) for p in inputs],
        "model": {"spec": spec, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "method": None if cfg.method is None else jsonable(config_dict(cfg.method.build())),
        "gate": None if gate is None else jsonable(gate),
        "stages": stages,
    }
