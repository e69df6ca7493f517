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

Every check is made before any work (:func:`dry_run` makes the same ones and writes nothing), following
the output rule of :mod:`mpprune.io`: the inputs exist and are never written over, the data keep their
split by content (:func:`mpprune.data.check_data_discipline`, recorded in the state and the manifest), and
the output folder is new, empty or a previous run of the same command (``state.json`` holds its output
record). Bad input or a refusal at any stage undoes everything the call wrote.

``mpprune prune`` builds a config from its flags (no analyze and certify stages), runs it in a hidden
staging directory and publishes only ``model/`` as its output. :func:`dry_run` validates a config, builds
the model without loading weights where possible and reports what each stage would do, writing nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mpprune.checkpoint import compact, load_pruned, save_pruned
from mpprune.config import DataConfig, RunConfig, load_config, make_gate, parse_config
from mpprune.data import (
    accuracy,
    calibration_batches,
    calibration_dataset,
    check_data_discipline,
    eval_dataset,
)
from mpprune.errors import BadInput, Refusal
from mpprune.io import (
    OUTPUT_KEY,
    OutputDir,
    check_not_input,
    check_output,
    clean_stale_staging,
    config_digest,
    ensure_parents,
    input_record,
    make_staging,
    output_record,
    remove_created,
    utc_now,
)
from mpprune.masks import MaskStore
from mpprune.models import build_model, check_finite
from mptheory.io import atomic_write_bytes, atomic_write_text, dumps_json, jsonable

__all__ = [
    "STAGES",
    "STAGE_FUNCTIONS",
    "STATE_FILE",
    "RUN_COMMAND",
    "PRUNE_COMMAND",
    "config_sha256",
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
RUN_COMMAND = "mpprune run"
PRUNE_COMMAND = "mpprune prune"
FINAL_CHECKPOINT = "model"
PRUNE_REPORT_FILE = "prune_report.json"
_PRUNE_STAGE_DIR = Path("stages") / "prune"
_RUN_ENTRIES = (STATE_FILE, "stages", FINAL_CHECKPOINT)  # what a run folder holds (the output record)


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
    command: str = RUN_COMMAND
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

    def output_record(self) -> dict[str, Any]:
        """The output record of this run's checkpoints: the command and the config digest."""
        return output_record(self.command) | {"config_sha256": self.state["config_sha256"]}

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
    """The run config as the manifest records it, without its output folder: the method section resolved
    to its config dataclass (every field, its ``type``, and the registered ``name``)."""
    from mpprune.methods._common import config_dict

    out = cfg.to_dict()
    out.pop("out")  # where the run was written is not part of the model (the prune command's is hidden)
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
                config=_manifest_config(r.config, method), factory=r.spec, output=r.output_record())
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
    split = (r.state.get("data") or {}).get("evaluation") or {}
    return {"data": data.eval_source, "split": split.get("split", ds.split), "path": split.get("path"),
            "n": len(ds) if limit is None else min(limit, len(ds)),
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
                      certificate=cert, factory=r.spec, extra={"evaluation": ev, "data": r.state.get("data")},
                      extra_files={PRUNE_REPORT_FILE: report}, output=r.output_record())
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


def config_sha256(cfg: RunConfig) -> str:
    """The digest that tells "the same config" (:func:`mpprune.io.config_digest` of the config without its
    output folder: where a run is written is not part of what it computes)."""
    d = cfg.to_dict()
    d.pop("out")
    return config_digest(d)


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


def _output_dir(cfg: RunConfig) -> Path:
    if cfg.out is None:
        raise BadInput("no output directory: give 'out' in the config or --out")
    return Path(cfg.out)


@dataclass
class _Plan:
    """Everything :func:`run` and :func:`dry_run` check before any work: the validated output folder, the
    inputs, the data record and the state of a run to resume (None: start afresh)."""

    config: RunConfig
    target: OutputDir
    inputs: list[Path]
    data: dict[str, Any]
    digest: str
    state: dict[str, Any] | None


def _read_state(spath: Path) -> dict[str, Any]:
    try:
        state = json.loads(spath.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{spath} cannot be read as a run state ({exc}); use --no-resume (resume=False) to "
                       "start over") from exc
    if not isinstance(state, dict) or not isinstance(state.get("completed"), list):
        raise BadInput(f"{spath} is not a run state; use --no-resume (resume=False) to start over")
    return state


def _plan(cfg: RunConfig, resume: bool, command: str) -> _Plan:
    """Validate every input and the output folder, writing nothing (the output rule of
    :mod:`mpprune.io`): inputs exist and are not written over; the data keep their split
    (:func:`mpprune.data.check_data_discipline`); the output is new, empty, or a previous run of this
    command -- of the same config to resume it, of any config with ``resume=False`` (started over)."""
    out_dir = _output_dir(cfg)
    inputs = _check_paths(cfg, out_dir)
    data = cfg.data if cfg.data is not None else DataConfig()
    record = check_data_discipline(data.calib, data.eval_source, n_calib=data.n_calib, seed=data.seed,
                                   n_eval=data.n_eval)
    digest = config_sha256(cfg)
    target = check_output(out_dir, command=command, marker=STATE_FILE, inputs=inputs)
    state = None
    if target.state == "previous" and resume:
        spath = target.path / STATE_FILE
        state = _read_state(spath)
        if state.get("config_sha256") != digest:
            raise BadInput(f"{spath} records a run of a different config (sha256 "
                           f"{str(state.get('config_sha256'))[:12]}, this config {digest[:12]}): use another "
                           "output folder, or --no-resume (resume=False) to start over in it")
        if "load" in state["completed"]:  # the inputs must not have changed under a resumed run
            old = {d["path"]: d["sha256"] for d in state["results"]["load"]["inputs"]}
            for p in inputs:
                rec = input_record(p)
                if old.get(rec["path"]) not in (None, rec["sha256"]):
                    raise BadInput(f"input {p} changed since the run in {target.path} started (sha256 "
                                   "differs): use --no-resume (resume=False) to start over")
    return _Plan(cfg, target, inputs, record, digest, state)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (flock on the folder itself: nothing is written) for the run."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Refusal(f"{folder} is in use by another mpprune run (nothing written)") from exc
        yield
    finally:
        os.close(fd)


def _clean_temporaries(folder: Path) -> None:
    """Remove the hidden temporaries (``.*.tmp``: staging folders, half-written files) a killed run left in
    its folder; called with the folder locked, so none belongs to a live run."""
    for p in sorted(folder.rglob(".*.tmp"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _snapshot(folder: Path) -> tuple[set[Path], bytes | None]:
    paths = set(folder.rglob("*"))
    spath = folder / STATE_FILE
    return paths, (spath.read_bytes() if spath.is_file() else None)


def _roll_back(folder: Path, snapshot: tuple[set[Path], bytes | None]) -> None:
    """Undo what this invocation wrote in a resumed run's folder: new paths removed, the state restored."""
    before, state = snapshot
    for p in sorted(set(folder.rglob("*")) - before, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if state is not None:
        atomic_write_bytes(folder / STATE_FILE, state)


def run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = True,
    out: str | Path | None = None,
    progress: bool = True,
    command: str = RUN_COMMAND,
) -> dict[str, Any]:
    """Run ``load → analyze → prune (+gate) → certify → evaluate → save`` from one config.

    ``config`` is a path to a JSON/TOML file (:func:`mpprune.config.load_config`), its dict, or a
    :class:`~mpprune.config.RunConfig`; ``out`` overrides its output directory. Before any work every input
    and the output folder are checked (:func:`dry_run` runs the same checks): the output is new, empty, or a
    previous run of ``command`` -- of the same config, resumed: completed stages are skipped and the input
    checksums recorded by ``load`` must still match; with ``resume=False`` any previous run there is
    replaced (kept until this run succeeds). A state written for a different config raises
    :class:`~mpprune.errors.BadInput` naming ``state.json``. After each stage ``<out>/state.json`` records
    the completed stages and their results. Bad input or a refusal found at any stage (NaN weights, empty
    calibration data, a failed check) undoes everything this call wrote; an internal error or an interrupt
    keeps the completed stages, to resume. The folder is locked while the run works; hidden temporaries a
    killed run left there are removed. The final checkpoint goes to ``<out>/model``; ``command`` is the
    command recorded in the outputs (``mpprune prune`` publishes that checkpoint as its own output).

    Returns the final state dict (``completed``, ``results`` and ``seconds`` per stage, the ``data``
    record of :func:`mpprune.data.check_data_discipline`).
    """
    from tqdm.auto import tqdm

    cfg = _as_config(config).with_out(out)
    plan = _plan(cfg, resume, command)
    out_dir = plan.target.path
    for kept in clean_stale_staging(out_dir):
        warnings.warn(f"left in place: {kept} (a temporary of a live run, or of an older mpprune: remove it "
                      "if no run is going on)", stacklevel=2)
    created: list[Path] = []
    aside: Path | None = None
    snapshot: tuple[set[Path], bytes | None] | None = None
    if plan.target.state == "new":
        created = ensure_parents(out_dir)
        out_dir.mkdir()
        created.append(out_dir)
    elif plan.target.state == "previous" and plan.state is None:  # started over: the old run kept aside
        aside = make_staging(out_dir)
        os.replace(out_dir, aside)
        out_dir.mkdir()
    else:
        snapshot = _snapshot(out_dir)
    state = plan.state
    if state is None:
        state = {"config_sha256": plan.digest, "config": jsonable(cfg.to_dict()), "completed": [],
                 "results": {}, "seconds": {}, "started": utc_now(), "data": plan.data,
                 OUTPUT_KEY: output_record(command, entries=_RUN_ENTRIES) | {"config_sha256": plan.digest}}
    r = Run(config=cfg, out=out_dir, state=state, progress=progress, command=command)
    bar = tqdm(STAGES, desc="run", unit="stage", disable=not progress)
    try:
        with _locked(out_dir):
            _clean_temporaries(out_dir)
            for stage in bar:
                bar.set_postfix_str(stage)
                if stage in state["completed"]:
                    continue
                t0 = time.perf_counter()
                state["results"][stage] = jsonable(STAGE_FUNCTIONS[stage](r))
                state.setdefault("seconds", {})[stage] = time.perf_counter() - t0
                state["completed"].append(stage)
                r.save_state()
    except (BadInput, FileNotFoundError, Refusal):  # nothing written: undo this call
        if aside is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(aside, out_dir)
        elif snapshot is not None:
            _roll_back(out_dir, snapshot)
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
            remove_created(created)
        raise
    finally:
        bar.close()
        if aside is not None and aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
    return state


def dry_run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = True,
    out: str | Path | None = None,
    command: str = RUN_COMMAND,
) -> dict[str, Any]:
    """Check a run without running it, writing nothing.

    Parses and validates the config (every section and key, the method and gate built once), makes every
    check :func:`run` makes before its work (inputs exist and are not written over, the data keep their
    split, the output folder is new, empty or a previous run of this config), builds the model without
    loading weights where possible (``minilm`` reads its weight file for its shapes) and reports each stage
    as ``"run"``, ``"done"`` (resumed) or ``"skip: <reason>"``.
    """
    from mpprune.methods._common import config_dict

    cfg = _as_config(config).with_out(out)
    plan = _plan(cfg, resume, command)
    done = set(plan.state["completed"]) if plan.state is not None else set()
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
        "out": str(_output_dir(cfg)),
        "config": jsonable(cfg.to_dict()),
        "inputs": [str(p) for p in plan.inputs],
        "data": plan.data,
        "model": {"spec": spec, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "method": None if cfg.method is None else jsonable(config_dict(cfg.method.build())),
        "gate": None if gate is None else jsonable(gate),
        "stages": stages,
    }
