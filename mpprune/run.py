"""The staged, resumable run that ``mpprune run`` and ``mpprune prune`` both execute.

:func:`run` executes the stages of :data:`mpprune.stages.STAGES` -- ``load → analyze → prune → kn → tome
→ distill → gate → certify → evaluate → macs → save`` (each described in :mod:`mpprune.stages`) -- from one
:class:`~mpprune.config.RunConfig` (a TOML/JSON file, its dict, or flags). Every completed stage is
recorded in ``<out>/state.json`` with its results, so a crashed run resumes at the first stage that did
not complete (a distillation from its last training state); the inputs' checksums recorded by ``load``
must still match. The stages that change weights write them under ``stages/``; the final checkpoint is
``model/``, with ``prune_report.json``, the evaluation and the MAC counts in its manifest.

Every check is made before any work (:func:`dry_run` makes the same ones and writes nothing), following
the output rule of :mod:`mpprune.io`: the inputs exist and are never written over, the data keep their
split by content (:func:`mpprune.data.check_data_discipline`, recorded in the state and the manifest), and
the output folder is new, empty or a previous run of the same command (``state.json`` holds its output
record). Bad input or a refusal at any stage undoes everything the call wrote.

``mpprune prune`` builds a config from its flags (no analyze and certify stages), runs it in a hidden
staging directory and publishes only ``model/`` as its output. :func:`dry_run` validates a config, builds
the model without loading weights where possible and reports what each stage would do, writing nothing.
A dry run does not need the weights or the data: a missing checkpoint or data folder is reported under
``missing`` (the CLI prints a warning line) and every other check is made; a real run refuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpprune.config import DataConfig, RunConfig, load_config, make_gate, parse_config
from mpprune.data import check_data_discipline
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
from mpprune.models import build_model
from mpprune.stages import (
    FINAL_CHECKPOINT,
    PRUNE_REPORT_FILE,
    RUN_COMMAND,
    STAGE_FUNCTIONS,
    STAGES,
    STATE_FILE,
    Run,
    gate_summary,
    resolve_layers,
    skip_reason,
)
from mptheory.io import atomic_write_bytes, jsonable

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

PRUNE_COMMAND = "mpprune prune"
_RUN_ENTRIES = (STATE_FILE, "stages", FINAL_CHECKPOINT)  # what a run folder holds (the output record)


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


def _check_paths(cfg: RunConfig, out_dir: Path, dry: bool = False) -> tuple[list[Path], list[str]]:
    """The inputs of ``cfg`` (each must exist; a dry run lists the missing ones instead) after refusing an
    output that would write over one."""
    inputs = cfg.inputs()
    missing = [str(p) for p in inputs if not p.exists()]
    if missing and not dry:
        raise FileNotFoundError(f"input {missing[0]} does not exist")
    if cfg.data is not None:
        for src in cfg.data.sources():
            if Path(src).exists() and not Path(src).is_dir():
                raise BadInput(f"data {src} is not a directory (expected an ImageFolder)")
    check_not_input(out_dir, inputs)
    return inputs, missing


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
    missing: list[str]


def _read_state(spath: Path) -> dict[str, Any]:
    try:
        state = json.loads(spath.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{spath} cannot be read as a run state ({exc}); use --no-resume (resume=False) to "
                       "start over") from exc
    if not isinstance(state, dict) or not isinstance(state.get("completed"), list):
        raise BadInput(f"{spath} is not a run state; use --no-resume (resume=False) to start over")
    return state


def _plan(cfg: RunConfig, resume: bool, command: str, dry: bool = False) -> _Plan:
    """Validate every input and the output folder, writing nothing (the output rule of
    :mod:`mpprune.io`): inputs exist and are not written over; the data keep their split
    (:func:`mpprune.data.check_data_discipline`); the output is new, empty, or a previous run of this
    command -- of the same config to resume it, of any config with ``resume=False`` (started over)."""
    out_dir = _output_dir(cfg)
    inputs, missing = _check_paths(cfg, out_dir, dry)
    data = cfg.data if cfg.data is not None else DataConfig()
    calib, ev = (s if s is None or str(Path(s)) not in missing else None
                 for s in (data.calib, data.eval_source))
    record = check_data_discipline(calib, ev, n_calib=data.n_calib, seed=data.seed, n_eval=data.n_eval)
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
    return _Plan(cfg, target, [p for p in inputs if str(p) not in missing], record, digest, state, missing)


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
    """Run the stages of :data:`STAGES` from one config.

    ``config`` is a path to a JSON/TOML file (:func:`mpprune.config.load_config`), its dict, or a
    :class:`~mpprune.config.RunConfig`; ``out`` overrides its output directory. Before any work every input
    and the output folder are checked (:func:`dry_run` runs the same checks): the output is new, empty, or a
    previous run of ``command`` -- of the same config, resumed: completed stages are skipped and the input
    checksums recorded by ``load`` must still match; with ``resume=False`` any previous run there is replaced
    (kept until this run succeeds). A state written for a different config raises
    :class:`~mpprune.errors.BadInput` naming ``state.json``. After each stage ``<out>/state.json`` records the
    completed stages and their results. Under ``torchrun --nproc_per_node N`` rank 0 runs every stage and
    writes everything; the other processes join the distillation only (each a share of every global batch,
    :func:`mpprune.train.fit`) and return (at once without a ``[distill]``). Bad input or a refusal found at
    any stage (NaN weights, empty calibration data, a failed check) undoes everything this call wrote; an
    internal error or an interrupt keeps the completed stages, to resume. The folder is locked while the run
    works; hidden temporaries a killed run left there are removed. The final checkpoint goes to
    ``<out>/model``; ``command`` is the command recorded in the outputs (``mpprune prune`` publishes that
    checkpoint as its own output).

    Returns the final state dict (``completed``, ``results`` and ``seconds`` per stage, the ``data``
    record of :func:`mpprune.data.check_data_discipline`).
    """
    from tqdm.auto import tqdm

    cfg = _as_config(config).with_out(out)
    other_rank = int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    if other_rank and cfg.distill is None:
        return {"follower": True, "completed": []}  # torchrun without a distillation: rank 0 does it all
    job = _torchrun_job(cfg)
    if job is not None and job["rank"] != 0:
        return _follow(cfg, job["id"], command)
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
                r.stage = stage
                if job is not None:  # tells the other torchrun processes when to join the distillation
                    state["running"] = {"stage": stage, "job": job["id"]}
                    r.save_state()
                state["results"][stage] = jsonable(STAGE_FUNCTIONS[stage](r))
                state.setdefault("seconds", {})[stage] = time.perf_counter() - t0
                state["completed"].append(stage)
                r.save_state()
            if job is not None:
                state["running"] = {"stage": None, "job": job["id"]}
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


def _torchrun_job(cfg: RunConfig) -> dict[str, Any] | None:
    """Under ``torchrun`` with several processes and a ``[distill]``: the process group is initialised
    (:func:`mpprune.train.dist_env`) and rank 0 hands every process one token naming this job; None
    otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or cfg.distill is None:
        return None
    import secrets

    import torch.distributed as dist

    from mpprune.train import dist_env

    env = dist_env()
    token = [secrets.token_hex(8) if env.is_main else None]
    dist.broadcast_object_list(token, src=0)
    return {"rank": env.rank, "id": token[0]}


def _follow(cfg: RunConfig, job: str, command: str) -> dict[str, Any]:
    """A torchrun process other than rank 0: it writes nothing, waits (reading ``state.json``) until rank 0
    starts the distill stage of this job, takes its share of every global batch, and returns rank 0's
    state as it was then (rank 0 runs and records every other stage). Returns at once when rank 0
    finishes without distilling (the stage was done before)."""
    out_dir = _output_dir(cfg)
    while True:
        try:
            state = json.loads((out_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = None
        running = state.get("running") if isinstance(state, dict) else None
        if isinstance(running, dict) and running.get("job") == job:
            if running.get("stage") in ("distill", None):
                break
        time.sleep(0.5)
    assert isinstance(state, dict)
    if running["stage"] == "distill":
        r = Run(config=cfg, out=out_dir, state=state, progress=False, command=command, stage="distill")
        state["results"]["distill"] = jsonable(STAGE_FUNCTIONS["distill"](r))
    return state | {"follower": True}


def dry_run(
    config: str | Path | Mapping[str, Any] | RunConfig,
    *,
    resume: bool = True,
    out: str | Path | None = None,
    command: str = RUN_COMMAND,
) -> dict[str, Any]:
    """Check a run without running it, writing nothing.

    Parses and validates the config (every section and key, the method, k:n method, distillation recipe
    and gate built once), makes every check :func:`run` makes before its work (inputs are not written
    over, the data keep their split, the output folder is new, empty or a previous run of this config),
    builds the model without loading weights (a timm model on the ``meta`` device; ``minilm`` reads its
    weight file for its shapes), resolves ``[kn] layers`` and applies ``[tome]`` to that model, and reports
    each stage as ``"run"``, ``"done"`` (resumed) or ``"skip: <reason>"``. Inputs that do not exist (a
    checkpoint, a data folder) are listed under ``missing`` instead of refused: a real run refuses them.
    """
    import torch

    from mpprune.methods._common import config_dict

    cfg = _as_config(config).with_out(out)
    plan = _plan(cfg, resume, command, dry=True)
    for missing in plan.missing:
        warnings.warn(f"dry run: input {missing} does not exist (checked without it; a real run refuses it)",
                      stacklevel=2)
    done = set(plan.state["completed"]) if plan.state is not None else set()
    spec = cfg.model.spec()
    where = torch.device("meta") if spec["kind"] == "timm" else contextlib.nullcontext()
    with warnings.catch_warnings(), where:
        warnings.simplefilter("ignore")
        model = build_model(spec, load_weights=False)
    n_params = int(sum(p.numel() for p in model.parameters()))
    kn = None
    if cfg.kn is not None:
        include = resolve_layers(model, cfg.kn.layers) if cfg.kn.layers is not None else None
        source: dict[str, Any] | None = {} if cfg.method is not None else None  # the prune masks, later
        kn = jsonable(config_dict(cfg.kn.build(source=source, include=include)))
    tome = None
    if cfg.tome is not None:
        from mpprune.tome import apply_tome, resolve_r

        vit: Any = apply_tome(model, cfg.tome.schedule(), prop_attn=cfg.tome.prop_attn)
        tome = {"r": resolve_r(cfg.tome.schedule(), len(vit.blocks)), "prop_attn": cfg.tome.prop_attn}
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
        "missing": plan.missing,
        "data": plan.data,
        "model": {"spec": spec, "class": f"{type(model).__module__}.{type(model).__qualname__}",
                  "parameters": n_params},
        "method": None if cfg.method is None else jsonable(config_dict(cfg.method.build())),
        "kn": kn,
        "tome": tome,
        "distill": None if cfg.distill is None else jsonable(cfg.distill.build().to_dict())
        | {k: v for k, v in cfg.distill.to_dict().items() if k in ("checkpoint_every", "n_train", "augment")},
        "gate": None if gate is None else jsonable(gate),
        "stages": stages,
    }
