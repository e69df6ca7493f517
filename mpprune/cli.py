"""Command line: ``mpprune analyze | prune | run | bench | demo``.

Every command has ``--help``; numbers go to JSON files (and to ``--json FILE``, ``-`` = stdout).
Exit codes (:mod:`mpprune.errors`, the same for every command and stated in every ``--help``): 0 success;
2 bad input (missing checkpoint, NaN weights, empty or validation-split calibration data, bad arguments
or config, an output path that cannot be written) — a clear message on stderr and NOTHING written; 3
refused (a failed gate or check, a computational limit such as a probe budget) — its own message, nothing
written; 1 internal error (a bug, reported with its traceback).

Every command follows the output rule of :mod:`mpprune.io`: ``--out`` and ``--json`` are validated before
any work (creatable, not an input, new or empty or a previous output of the same command -- a folder of the
same config), outputs are assembled in a hidden staging folder next to ``--out`` and renamed into place only
when complete, and a file the command did not write is never replaced.

``prune`` is a thin front end of :func:`mpprune.run.run`: it builds a run config from its flags (stages
load, prune, evaluate, save) and publishes the run's final checkpoint as ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpprune.certify import ESTIMATORS
from mpprune.errors import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_REFUSED,
    BadInput,
    exit_code,
)
from mpprune.io import OUTPUT_KEY, output_record
from mptheory.io import atomic_write_json, atomic_write_text, dumps_json

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_REFUSED"]

SPECTRUM_FILE = "spectrum.json"
MANIFEST_FILE = "manifest.json"
DEMO_SUMMARY_FILE = "demo_summary.json"  # written by mpprune.demo.run_demo


# -------------------------------------------------------------------------------------------- helpers
def _emit_json(args: argparse.Namespace, target: Path | None, payload: dict[str, Any]) -> None:
    """Print ``payload`` for ``--json -``, or write it with its output record to ``target`` (validated by
    :func:`_json_target` before the work); under ``torchrun`` only rank 0 does."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports and writes
        return
    if args.json == "-":
        print(dumps_json(payload), end="")
    elif target is not None:
        record = output_record(f"mpprune {args.command}")
        atomic_write_text(target, dumps_json(payload | {OUTPUT_KEY: record}))


def _json_target(args: argparse.Namespace, inputs: Sequence[str | Path] = (),
                 outputs: Sequence[str | Path] = ()) -> Path | None:
    """``--json FILE`` checked before any work (:func:`mpprune.io.check_output_json`)."""
    from mpprune.io import check_output_json

    return check_output_json(args.json, command=f"mpprune {args.command}", inputs=inputs, outputs=outputs)


def _load_model(name: str, checkpoint: str | None, num_classes: int | None) -> tuple[Any, dict[str, Any]]:
    """Build a model from CLI arguments (loading problems are BadInput, see :func:`build_model`)."""
    from mpprune.models import build_model, check_finite, model_spec

    spec = model_spec(name, checkpoint, num_classes)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BadInput(f"checkpoint {checkpoint} does not exist or is not a file")
    model = build_model(spec)
    check_finite(model)
    return model, spec


def _add_model_args(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    from mpprune.models import model_names

    p.add_argument("--model", required=True,
                   help=f"a timm model name or a builtin: {', '.join(model_names())}")
    p.add_argument("--checkpoint", metavar="FILE", help=checkpoint_help)
    p.add_argument("--num-classes", type=int, metavar="K", help="classifier size of the checkpoint (timm)")


# ------------------------------------------------------------------------------------------- analyze
def cmd_analyze(args: argparse.Namespace) -> int:
    from mpprune.io import check_output, clean_stale_staging, config_digest, staged_output
    from mpprune.models import default_checkpoint, model_spec
    from mpprune.spectrum import analyze

    spec = model_spec(args.model, args.checkpoint, args.num_classes)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise BadInput(f"checkpoint {args.checkpoint} does not exist or is not a file")
    ck = spec["checkpoint"] or default_checkpoint(spec)
    inputs = [ck] if ck is not None else []
    options = {"model": spec, "fit_method": args.fit_method, "delta": args.delta, "plot": not args.no_plot}
    command = "mpprune analyze"
    target = check_output(args.out, command=command, marker=SPECTRUM_FILE,
                          config_sha256=config_digest(options), inputs=inputs)
    json_target = _json_target(args, inputs, [target.path])
    out = target.path
    model, _ = _load_model(args.model, args.checkpoint, args.num_classes)
    rep = analyze(model, method=args.fit_method, delta=args.delta, progress=not args.quiet, name=args.model)
    for kept in clean_stale_staging(out):
        print(f"mpprune analyze: warning: left in place: {kept} (a temporary of a live run, or of an older "
              "mpprune)", file=sys.stderr)
    with staged_output(out) as staging:
        files = ["spectrum.md", SPECTRUM_FILE] + ([] if args.no_plot else ["spectrum.png"])
        rep.to_markdown(staging / "spectrum.md")
        if not args.no_plot:
            rep.plot(staging / "spectrum.png")
        atomic_write_text(staging / SPECTRUM_FILE, dumps_json(
            rep.to_dict() | {OUTPUT_KEY: output_record(command, options, files)}))
    s = rep.summary()
    if not args.quiet:
        print(f"{args.model}: {s['n_fitted']} of {s['n_layers']} matrices MP-fitted, "
              f"{s['total_spikes']} spikes; report in {args.out}/ (spectrum.json, spectrum.md"
              f"{', spectrum.png' if not args.no_plot else ''})")
    _emit_json(args, json_target, {"command": "analyze", "out": str(args.out), "summary": s})
    return EXIT_OK


# --------------------------------------------------------------------------------------------- prune
def prune_config(args: argparse.Namespace) -> Any:
    """The :class:`~mpprune.config.RunConfig` of ``mpprune prune``'s flags (stages load, prune,
    evaluate, save)."""
    from mpprune.config import parse_config, parse_gate, parse_method_options

    options = parse_method_options(args.method_options) if args.method_options else {}
    for key in ("name", "sparsity"):
        if key in options:
            raise BadInput(f"--method-options {key}=...: give it as --{'method' if key == 'name' else key}")
    raw: dict[str, Any] = {
        "model": {"name": args.model, "checkpoint": args.checkpoint, "num_classes": args.num_classes},
        "method": {"name": args.method, "sparsity": args.sparsity} | options,
        "analyze": False,
        "certify": False,
        "evaluate": not args.no_eval,
    }
    if args.calib is not None or args.eval is not None:
        raw["data"] = {"n_calib": args.n_calib, "batch_size": args.batch_size, "seed": args.seed}
        raw["data"] |= {k: v for k, v in (("calib", args.calib), ("eval", args.eval)) if v is not None}
    if args.gate:
        raw["gate"] = parse_gate(args.gate)
    return parse_config(raw, "mpprune prune")


def cmd_prune(args: argparse.Namespace) -> int:
    from mpprune.io import (
        check_output,
        clean_stale_staging,
        ensure_parents,
        make_staging,
        publish_dir,
        remove_created,
    )
    from mpprune.run import FINAL_CHECKPOINT, PRUNE_COMMAND, config_sha256, run

    cfg = prune_config(args)  # validates everything cheap first
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise BadInput(f"checkpoint {args.checkpoint} does not exist or is not a file")
    inputs = cfg.inputs()
    target = check_output(args.out, command=PRUNE_COMMAND, marker=MANIFEST_FILE,
                          config_sha256=config_sha256(cfg), inputs=inputs)
    json_target = _json_target(args, inputs, [target.path])
    out = target.path
    if cfg.gate is None:
        print("mpprune prune: warning: no --gate given: the pruned model is NOT certified", file=sys.stderr)
    for kept in clean_stale_staging(out):
        print(f"mpprune prune: warning: left in place: {kept} (a temporary of a live run, or of an older "
              "mpprune)", file=sys.stderr)
    created = ensure_parents(out)
    work = make_staging(out)  # the run's stage files live here; only its final checkpoint is kept
    published = False
    try:
        state = run(cfg.with_out(work), resume=False, progress=not args.quiet, command=PRUNE_COMMAND)
        publish_dir(work / FINAL_CHECKPOINT, out)
        published = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not published:
            remove_created(created)
    results = state["results"]
    evaluation = None if "skipped" in results["evaluate"] else results["evaluate"]
    gate_layers = results["prune"]["gate"]
    sparsity = results["prune"]["global_sparsity"]
    seconds = state["seconds"]["prune"]
    summary = {"command": "prune", "out": str(args.out), "model": args.model, "method": args.method,
               "global_sparsity": sparsity, "seconds": seconds, "evaluation": evaluation,
               "gate": cfg.gate, "gate_layers": gate_layers, "data": state.get("data")}
    if not args.quiet:
        print(f"{args.model} pruned with {args.method}: global sparsity {sparsity:.4f} "
              f"in {seconds:.1f} s; wrote {args.out}/{{model.safetensors,masks.safetensors,manifest.json}}")
        for g in gate_layers or []:
            cf = g.get("certified_fraction")
            print(f"  gate {g['name']}: {g['status']}, sparsity {g['sparsity_final']:.3f}, certified "
                  f"{'-' if cf is None else format(cf, '.4f')} ({g.get('estimator')})")
        if evaluation:
            print(f"  accuracy on {evaluation['n']} {evaluation['data']} val samples: "
                  f"dense {evaluation['accuracy_dense']:.4f} -> pruned {evaluation['accuracy_pruned']:.4f}")
    _emit_json(args, json_target, summary)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from mpprune.config import load_config
    from mpprune.run import dry_run, run

    cfg = load_config(args.config).with_out(args.out)
    outputs = [cfg.out] if cfg.out is not None else []
    json_target = _json_target(args, [*cfg.inputs(), args.config], outputs)
    if args.dry_run:
        plan = dry_run(cfg, resume=not args.no_resume)
        if not args.quiet:
            m = plan["model"]
            print(f"{args.config}: valid. model {m['spec']['name']} ({m['class']}, {m['parameters']:,} "
                  f"parameters; weights not loaded); output {plan['out']}")
            for stage, what in plan["stages"].items():
                print(f"  {stage:<9} {what}")
            print("dry run: nothing written")
        _emit_json(args, json_target, {"command": "run", **plan})
        return EXIT_OK
    state = run(cfg, resume=not args.no_resume, progress=not args.quiet)
    if not args.quiet:
        print(f"run complete: stages {', '.join(state['completed'])}; state in {cfg.out}")
    _emit_json(args, json_target, {"command": "run", **state})
    return EXIT_OK


# --------------------------------------------------------------------------------------------- bench
_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _example_input(model: Any, shape: Sequence[int] | None) -> Any:
    """Inputs for timing: 8 seeded normal rows of ``shape`` (C H W or features), else of the model's timm
    ``pretrained_cfg['input_size']``; a model that declares no input size needs ``--input-shape``."""
    import torch

    if shape is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if not size:
            raise BadInput("this model declares no input size: give --input-shape (e.g. 3 224 224, or 784)")
        shape = tuple(int(v) for v in size)
    if not shape or any(int(v) < 1 for v in shape):
        raise BadInput(f"--input-shape must be positive sizes, got {list(shape)}")
    gen = torch.Generator().manual_seed(0)
    return torch.randn((8, *(int(v) for v in shape)), generator=gen)


def cmd_bench_speed(args: argparse.Namespace) -> int:
    """The speed audit (:func:`mpprune.sparse_exec.audit`): a pruned checkpoint (``--speed DIR``), or the
    real MNIST CNN at 90 % unstructured magnitude sparsity (``--speed`` alone), sparse path against dense in
    the same precision, per layer and whole model over a batch sweep."""
    import torch

    from mpprune.sparse_exec import audit

    given = Path(args.speed) if args.speed else None
    json_target = _json_target(args, inputs=[given] if given is not None else [])
    if args.threads is not None and args.threads < 1:
        raise BadInput(f"--threads must be >= 1, got {args.threads}")
    if any(b < 1 for b in args.batch_sizes):
        raise BadInput(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if given is not None:
        from mpprune.checkpoint import load_pruned

        if not given.is_dir():
            raise BadInput(f"--speed {given}: not a pruned checkpoint folder (mpprune prune --out)")
        model, _, _ = load_pruned(given)
        x = _example_input(model, args.input_shape)
        what = str(given)
    else:
        from mpprune.config import make_method
        from mpprune.data import mnist_digits
        from mpprune.methods import prune

        dense, _ = _load_model("mnist-cnn", None, None)
        model = prune(dense, make_method("magnitude", 0.9), progress=False).model
        val = mnist_digits("val")
        x = torch.stack([val[i][0] for i in range(8)])
        what = "mnist-cnn, 90 % unstructured (global magnitude; real MNIST val digits as inputs)"
    ledger = audit(model, x, path=args.path, dtype=getattr(torch, args.dtype) if args.dtype else None,
                   batch_sizes=args.batch_sizes, threads=args.threads, rounds=args.rounds)
    result = {"command": "bench", "audit": what} | ledger.to_dict()
    if not args.quiet:
        print(f"speed audit: {what}")
        print(ledger.table())
    _emit_json(args, json_target, result)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """A small built-in comparison on the real MNIST CNN (the full suite is ``make bench``); with
    ``--speed`` the sparse-execution speed audit (:func:`cmd_bench_speed`)."""
    if args.speed is not None:
        return cmd_bench_speed(args)
    import numpy as np
    import torch

    from mpprune.config import make_method
    from mpprune.data import accuracy, mnist_digits
    from mpprune.layers import find_layers, matrix_blocks
    from mpprune.methods import prune
    from mpprune.spectrum import analyze

    json_target = _json_target(args)
    model, _ = _load_model("mnist-cnn", None, None)
    val = mnist_digits("val")
    n_eval = 300 if args.quick else len(val)
    sparsities = [0.5] if args.quick else [0.3, 0.5, 0.7]
    rows: list[dict[str, Any]] = []
    dense_acc = accuracy(model, val, limit=n_eval)
    for s in sparsities:
        for name in ("magnitude", "seb"):
            t0 = time.perf_counter()
            res = prune(model, make_method(name, s), progress=False)
            dt = time.perf_counter() - t0
            rows.append({"method": name, "sparsity": s, "seconds": dt,
                         "accuracy": accuracy(res.model, val, limit=n_eval)})
    # spectra: analyze() against the floor of bare float64 eigvalsh of the same Gram matrices. This loop
    # is deliberately NOT mptheory.mp.batched_eigenvalues: it is the floor being measured.
    t0 = time.perf_counter()
    analyze(model, progress=False)
    t_an = time.perf_counter() - t0
    mats = [w for info in find_layers(model) for _, w in matrix_blocks(info)]
    t0 = time.perf_counter()
    for w in mats:
        a = w.detach().double().numpy()
        np.linalg.eigvalsh(a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a)
    t_floor = time.perf_counter() - t0
    result = {"command": "bench", "model": "mnist-cnn", "eval": f"mnist val, n={n_eval}",
              "torch_threads": torch.get_num_threads(), "dense_accuracy": dense_acc, "prune": rows,
              "analyze_seconds": t_an, "eigvalsh_floor_seconds": t_floor,
              "analyze_over_floor": t_an / t_floor if t_floor > 0 else None,
              "note": "small built-in check only; the full benchmarks (WeightWatcher, speed) "
                      "run with `make bench`"}
    if not args.quiet:
        print(f"mnist-cnn, {n_eval} real MNIST val digits: dense accuracy {dense_acc:.4f}")
        print(f"{'method':<10} {'sparsity':>8} {'accuracy':>9} {'seconds':>8}")
        for r in rows:
            print(f"{r['method']:<10} {r['sparsity']:>8.2f} {r['accuracy']:>9.4f} {r['seconds']:>8.3f}")
        print(f"analyze(): {t_an:.3f} s vs bare eigvalsh floor {t_floor:.3f} s "
              f"(ratio {result['analyze_over_floor']:.1f}x, includes MP fits)")
        print("Full benchmarks: `make bench` (installs the bench extra, runs benchmarks/).")
    _emit_json(args, json_target, result)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """The demo under the output rule: ``--out`` validated first (new, empty, or a previous demo with the
    same options), the demo run in a staging folder and published as ``--out`` when it ends."""
    from mpprune.demo import run_demo
    from mpprune.io import check_output, clean_stale_staging, config_digest, staged_output

    command = "mpprune demo"
    options = {"quick": bool(args.quick), "estimator": args.estimator}
    target = check_output(args.out, command=command, marker=DEMO_SUMMARY_FILE,
                          config_sha256=config_digest(options))
    json_target = _json_target(args, outputs=[target.path])
    for kept in clean_stale_staging(target.path):
        print(f"{command}: warning: left in place: {kept} (a temporary of a live run, or of an older "
              "mpprune)", file=sys.stderr)
    with staged_output(target.path) as staging:
        print(f"{command}: working in {staging}; published as {args.out} when complete")
        summary = run_demo(staging, quick=args.quick, estimator=args.estimator)
        summary["out"] = str(args.out)
        entries = [e.name for e in staging.iterdir()]
        record = output_record(command, options, [*entries, DEMO_SUMMARY_FILE])
        atomic_write_json(staging / DEMO_SUMMARY_FILE, summary | {OUTPUT_KEY: record})
    print(f"{command}: published {args.out}")
    _emit_json(args, json_target, {"command": "demo", **summary})
    return EXIT_OK if not summary.get("failed") else EXIT_INTERNAL


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``mpprune``; every command's ``--help`` ends with the exit codes."""
    from mpprune.data import (
        BUILTIN_DATASETS,
        DEFAULT_CALIB_BATCH_SIZE,
        DEFAULT_CALIB_SEED,
        DEFAULT_N_CALIB,
        VALIDATION_DIR_NAMES,
    )
    from mpprune.methods.api import method_names

    parser = argparse.ArgumentParser(
        prog="mpprune",
        description="Marchenko-Pastur pruning of real models, gated by data-path certificates.",
        epilog=EXIT_CODES_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jhelp = "also write the numbers reported as JSON to FILE ('-' = stdout)"
    data_names = "|".join(BUILTIN_DATASETS)

    a = sub.add_parser("analyze", help="per-layer MP fits: JSON + Markdown + PNG report",
                       description="MP-fit every Linear/Conv2d layer; writes spectrum.json, spectrum.md, "
                                   "spectrum.png to --out.", epilog=EXIT_CODES_HELP)
    _add_model_args(a, "local checkpoint (builtins default to their bundled weights; a timm model without "
                       "one is randomly initialised, with a warning)")
    a.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    a.add_argument("--fit-method", default="rcb", choices=("rcb", "bema", "gd"), help="MP fit (default rcb)")
    a.add_argument("--delta", type=float, default=0.05, help="noise edge at confidence 1-delta (0.05)")
    a.add_argument("--no-plot", action="store_true", help="skip the PNG figure")
    a.add_argument("--json", metavar="FILE", help=jhelp)
    a.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    a.set_defaults(func=cmd_analyze)

    p = sub.add_parser("prune", help="prune a model and write safetensors + manifest",
                       description="Prune with one method, optionally behind a certificate gate; writes "
                                   "model.safetensors, masks.safetensors, manifest.json, prune_report.json "
                                   "(and certificate.json with a gate). The same staged run as `mpprune "
                                   "run` (stages load, prune, evaluate, save).", epilog=EXIT_CODES_HELP)
    _add_model_args(p, "local checkpoint FILE (builtins default to bundled weights)")
    p.add_argument("--method", required=True, choices=method_names())
    p.add_argument("--sparsity", type=float, help="fraction of zeros, in [0, 1) (not for classical_rmt, nm)")
    p.add_argument("--method-options", metavar="SPEC",
                   help="the method's other options, e.g. for nm: pattern=4:8,cost=certificate,"
                        "reconstruct=true,skip=head+stem (the method's fields, a bad key lists them; a+b "
                        "is a list, head+ a list of one, + an empty list)")
    p.add_argument("--calib", metavar=f"DIR|{data_names}",
                   help="calibration data, TRAIN split: an ImageFolder directory (its train/ folder, "
                        "or itself holding class folders; a folder whose name, symbolic links resolved, "
                        f"holds a word of {'/'.join(VALIDATION_DIR_NAMES)} is refused, as is an image "
                        "shared with --eval), or a builtin data set "
                        f"({', '.join(BUILTIN_DATASETS)})")
    p.add_argument("--n-calib", type=int, default=DEFAULT_N_CALIB,
                   help=f"calibration samples (stratified; {DEFAULT_N_CALIB})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_CALIB_BATCH_SIZE)
    p.add_argument("--seed", type=int, default=DEFAULT_CALIB_SEED)
    p.add_argument("--gate", metavar="SPEC",
                   help="certificate gate, e.g. min_certified=0.99[,elastic_net=l1:l2][,backoff=bisect]")
    p.add_argument("--eval", metavar=f"DIR|{data_names}",
                   help="validation data for accuracy before/after (default: the val split of a "
                        "builtin --calib)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    p.add_argument("--json", metavar="FILE", help=jhelp)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    r = sub.add_parser("run", help="one run from a JSON/TOML config, resumable",
                       description="Stages load, analyze, prune(+gate), certify, evaluate, save; state in "
                                   "<out>/state.json, a rerun resumes after the last completed stage. "
                                   "Example configs: experiments/*.toml.", epilog=EXIT_CODES_HELP)
    r.add_argument("config", metavar="CONFIG", help="a .json or .toml run config")
    r.add_argument("--out", metavar="DIR", help="override the config's output directory")
    r.add_argument("--no-resume", action="store_true", help="start over even if state.json exists")
    r.add_argument("--dry-run", action="store_true",
                   help="validate the config, build the model without its weights, check stages and "
                        "paths; write nothing")
    r.add_argument("--json", metavar="FILE", help=jhelp)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="built-in accuracy/timing check, or the sparse-execution speed audit",
                       description="Without --speed: Magnitude vs SEB on the real MNIST CNN (accuracy on "
                                   "real val digits, time), and analyze() against a bare eigvalsh floor. "
                                   "With --speed [DIR]: the speed audit of a pruned checkpoint (or, without "
                                   "DIR, of the MNIST CNN at 90 %% unstructured sparsity): each eligible "
                                   "layer and the whole model timed sparse vs dense in the same precision "
                                   "(warm-up, medians and IQR, a batch sweep, the thread count), only the "
                                   "layers that measure faster converted; it says so plainly when the "
                                   "device has no sparse kernel. The full benchmarks are run with "
                                   "`make bench`.", epilog=EXIT_CODES_HELP)
    b.add_argument("--quick", action="store_true", help="one sparsity, 300 val digits")
    b.add_argument("--speed", nargs="?", const="", default=None, metavar="DIR",
                   help="speed audit of the pruned checkpoint DIR (none: the MNIST CNN at 90 %% sparsity)")
    b.add_argument("--path", choices=("auto", "cpu", "semi_structured"), default="auto",
                   help="sparse path: auto = 2:4 semi-structured on CUDA, CSR on CPU")
    b.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="precision of both sides (default: the model's; bfloat16 for 2:4 on CUDA)")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="B")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    b.add_argument("--rounds", type=int, default=2, help="timing rounds per variant")
    b.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N",
                   help="one input's shape (C H W or features) when the model declares none")
    b.add_argument("--json", metavar="FILE", help=jhelp)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the main job: MiniLM spectra, theory checks, certified MNIST pruning",
                       description="MP fits of the real MiniLM weights, `mptheory verify --quick` and "
                                   "figures, and the real MNIST CNN pruned with SEB behind a gate.",
                       epilog=EXIT_CODES_HELP)
    d.add_argument("--out", default="out/demo", metavar="DIR",
                   help="new or empty output directory, or a previous demo's with the same options "
                        "(out/demo)")
    d.add_argument("--quick", action="store_true", help="smaller calibration/evaluation sets")
    d.add_argument("--estimator", choices=ESTIMATORS,
                   help="the gate's L_s estimator (default: auto = sound; --quick: segment_max_slope)")
    d.add_argument("--json", metavar="FILE", help=jhelp)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (:mod:`mpprune.errors`: 0 ok, 2 bad input, 3 refused,
    1 internal error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    name = f"mpprune {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is told apart by its kind, not dumped
        code = exit_code(exc)
        if code == EXIT_BAD_INPUT:
            print(f"{name}: error: {exc}", file=sys.stderr)
        elif code == EXIT_REFUSED:
            print(f"{name}: refused ({type(exc).__name__}): {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"{name}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
