"""Command line: ``mpprune analyze | prune | run | bench | demo``.

Every command has ``--help``; numbers go to JSON files (and to ``--json FILE``, ``-`` = stdout).
Exit codes: 0 success; 2 bad input (missing checkpoint, NaN weights, empty or validation-split
calibration data, bad arguments) — a clear message on stderr and NOTHING written; 1 any other failure
(e.g. the gate refused the model). Outputs are assembled in a hidden temporary directory next to
``--out`` and renamed into place only when complete; an existing non-empty ``--out`` is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpprune import pipeline as P
from mpprune.certify import ESTIMATORS

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(ValueError):
    """Bad user input: reported on stderr with exit code 2."""


# -------------------------------------------------------------------------------------------- helpers
def _emit_json(target: str | None, payload: dict[str, Any]) -> None:
    if target is None:
        return
    text = json.dumps(P.jsonable(payload), indent=2, allow_nan=False)
    if target == "-":
        print(text)
    else:
        P.atomic_write_text(target, text + "\n")


def _check_out(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an existing non-empty output directory, or one where an input lives."""
    try:
        P._check_not_input(out, list(inputs))
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"output {out} already exists and is not an empty directory (nothing overwritten)")


def _commit(staging: Path, out: Path) -> None:
    """Move a completed staging directory onto ``out`` (which may exist only as an empty directory)."""
    if out.exists():
        out.rmdir()  # empty, checked by _check_out
    os.replace(staging, out)


def _load_model(name: str, checkpoint: str | None, num_classes: int | None) -> tuple[Any, dict[str, Any]]:
    """Build a model from CLI arguments; every loading problem becomes BadInput (exit 2)."""
    spec = P.model_spec(name, checkpoint, num_classes)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BadInput(f"checkpoint {checkpoint} does not exist or is not a file")
    try:
        model = P.build_model(spec)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt/mismatched checkpoints raise many types
        raise BadInput(f"cannot load model {name!r} from {checkpoint}: {type(exc).__name__}: {exc}") from exc
    P.check_finite(model)
    return model, spec


def _inputs_of(spec: dict[str, Any], *sources: str | None) -> list[Path]:
    out: list[Path] = []
    ck = spec.get("checkpoint") or P._default_checkpoint(spec)
    if ck is not None:
        out.append(Path(ck))
    for s in sources:
        if s is not None and s not in ("mnist", "digits"):
            out.append(Path(s))
    return out


def _add_model_args(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    p.add_argument("--model", required=True,
                   help=f"a timm model name or a builtin: {', '.join(P.BUILTIN_MODELS)}")
    p.add_argument("--checkpoint", metavar="FILE", help=checkpoint_help)
    p.add_argument("--num-classes", type=int, metavar="K", help="classifier size of the checkpoint (timm)")


# ------------------------------------------------------------------------------------------- analyze
def cmd_analyze(args: argparse.Namespace) -> int:
    from mpprune.spectrum import analyze

    out = Path(args.out)
    model, spec = _load_model(args.model, args.checkpoint, args.num_classes)
    _check_out(out, _inputs_of(spec))
    rep = analyze(model, method=args.fit_method, delta=args.delta, progress=not args.quiet, name=args.model)
    staging = P.make_staging_dir(out)
    try:
        (staging / "spectrum.json").write_text(json.dumps(rep.to_dict(), indent=2, allow_nan=False) + "\n")
        rep.to_markdown(staging / "spectrum.md")
        if not args.no_plot:
            rep.plot(staging / "spectrum.png")
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    s = rep.summary()
    if not args.quiet:
        print(f"{args.model}: {s['n_fitted']} of {s['n_layers']} matrices MP-fitted, "
              f"{s['total_spikes']} spikes; report in {out}/ (spectrum.json, spectrum.md"
              f"{', spectrum.png' if not args.no_plot else ''})")
    _emit_json(args.json, {"command": "analyze", "out": str(out), "summary": s})
    return EXIT_OK


# --------------------------------------------------------------------------------------------- prune
def cmd_prune(args: argparse.Namespace) -> int:
    from mpprune.data import calibration_batches
    from mpprune.methods import prune

    out = Path(args.out)
    # --- validate everything cheap first
    config = P.make_method(args.method, args.sparsity)
    gate_kw = P.parse_gate(args.gate) if args.gate else None
    if gate_kw is not None and args.calib is None:
        raise BadInput("--gate needs calibration data: pass --calib DIR|mnist|digits")
    if args.method in ("ser", "hybrid") and args.calib is None:
        raise BadInput(f"method {args.method} selects with training data: pass --calib DIR|mnist|digits")
    if args.n_calib < 1:
        raise BadInput(f"--n-calib must be >= 1, got {args.n_calib}")
    model, spec = _load_model(args.model, args.checkpoint, args.num_classes)
    inputs = _inputs_of(spec, args.calib)
    _check_out(out, inputs)
    gate = P.make_gate(gate_kw)
    calib = None
    if args.calib is not None:
        ds = P.calibration_dataset(args.calib, spec, model)
        if len(ds) == 0:
            raise BadInput(f"calibration data {args.calib} is empty")
        calib = calibration_batches(ds, min(args.n_calib, len(ds)), args.batch_size, args.seed)
    if gate is None:
        print("mpprune prune: warning: no --gate given: the pruned model is NOT certified", file=sys.stderr)
    t0 = time.perf_counter()
    res = prune(model, config, calibration=calib, gate=gate, train_data=calib, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    verdict = res.report.gate  # the gate backs off / leaves dense failing layers; its verdicts are saved
    evaluation = None
    eval_src = args.eval or (args.calib if args.calib in ("mnist", "digits") else None)
    if eval_src is not None and not args.no_eval:
        ev = P.eval_dataset(eval_src, spec, model)
        evaluation = {"data": eval_src, "split": "val", "n": len(ev),
                      "accuracy_dense": P.accuracy(model, ev), "accuracy_pruned": P.accuracy(res.model, ev)}
    staging = P.make_staging_dir(out)
    try:
        cfg = {"method": P.jsonable(config), "gate": gate_kw, "calib": args.calib, "n_calib": args.n_calib,
               "seed": args.seed, "batch_size": args.batch_size}
        P.save_pruned(staging, res.model, res.masks, res.report, config=cfg, inputs=inputs,
                      certificate=verdict, factory=spec, extra={"evaluation": evaluation})
        (staging / "prune_report.json").write_text(
            json.dumps(P.jsonable(res.report.to_dict()), indent=2, allow_nan=False) + "\n")
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = {"command": "prune", "out": str(out), "model": args.model, "method": args.method,
               "global_sparsity": res.report.global_sparsity, "seconds": seconds, "evaluation": evaluation,
               "gate": gate_kw, "gate_layers": P.gate_summary(verdict)}
    if not args.quiet:
        print(f"{args.model} pruned with {args.method}: global sparsity {res.report.global_sparsity:.4f} "
              f"in {seconds:.1f} s; wrote {out}/{{model.safetensors,masks.safetensors,manifest.json}}")
        for g in P.gate_summary(verdict) or []:
            cf = g.get("certified_fraction")
            print(f"  gate {g['name']}: {g['status']}, sparsity {g['sparsity_final']:.3f}, certified "
                  f"{'-' if cf is None else format(cf, '.4f')} ({g.get('estimator')})")
        if evaluation:
            print(f"  accuracy on {evaluation['n']} {eval_src} val samples: "
                  f"dense {evaluation['accuracy_dense']:.4f} -> pruned {evaluation['accuracy_pruned']:.4f}")
    _emit_json(args.json, summary)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    state = P.run(args.config, resume=not args.no_resume, out=args.out, progress=not args.quiet)
    if not args.quiet:
        print(f"run complete: stages {', '.join(state['completed'])}; state in {state['config'].get('out')}")
    _emit_json(args.json, {"command": "run", **state})
    return EXIT_OK


# --------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """A small built-in comparison on the real MNIST CNN (the full suite is ``make bench``)."""
    import numpy as np
    import torch

    from mpprune.data import mnist_digits
    from mpprune.layers import find_layers, matrix_blocks
    from mpprune.methods import prune
    from mpprune.spectrum import analyze

    model, _ = _load_model("mnist-cnn", None, None)
    val = mnist_digits("val")
    n_eval = 300 if args.quick else len(val)
    sparsities = [0.5] if args.quick else [0.3, 0.5, 0.7]
    rows: list[dict[str, Any]] = []
    dense_acc = P.accuracy(model, val, limit=n_eval)
    for s in sparsities:
        for name in ("magnitude", "seb"):
            t0 = time.perf_counter()
            res = prune(model, P.make_method(name, s), progress=False)
            dt = time.perf_counter() - t0
            rows.append({"method": name, "sparsity": s, "seconds": dt,
                         "accuracy": P.accuracy(res.model, val, limit=n_eval)})
    # spectra: analyze() against the floor of bare float64 eigvalsh of the same Gram matrices
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
    _emit_json(args.json, result)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from mpprune.demo import run_demo

    summary = run_demo(args.out, quick=args.quick, estimator=args.estimator)
    _emit_json(args.json, {"command": "demo", **summary})
    return EXIT_OK if not summary.get("failed") else EXIT_FAILURE


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``mpprune``."""
    parser = argparse.ArgumentParser(
        prog="mpprune",
        description="Marchenko-Pastur pruning of real models, gated by data-path certificates. "
                    "Exit codes: 0 ok, 2 bad input (nothing written), 1 other failure.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jhelp = "also write the numbers reported as JSON to FILE ('-' = stdout)"

    a = sub.add_parser("analyze", help="per-layer MP fits: JSON + Markdown + PNG report",
                       description="MP-fit every Linear/Conv2d layer; writes spectrum.json, spectrum.md, "
                                   "spectrum.png to --out.")
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
                                   "model.safetensors, masks.safetensors, manifest.json, prune_report.json.")
    _add_model_args(p, "local checkpoint FILE (builtins default to bundled weights)")
    p.add_argument("--method", required=True, choices=P.METHODS)
    p.add_argument("--sparsity", type=float, help="fraction of zeros, in [0, 1) (not for classical_rmt)")
    p.add_argument("--calib", metavar="DIR|mnist|digits",
                   help="calibration data, TRAIN split: an ImageFolder directory (a path ending in "
                        "val/validation/test is refused), or builtin 'mnist' / 'digits'")
    p.add_argument("--n-calib", type=int, default=1000, help="calibration samples (stratified; 1000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate", metavar="SPEC",
                   help="certificate gate, e.g. min_certified=0.99[,elastic_net=l1:l2][,backoff=bisect]")
    p.add_argument("--eval", metavar="DIR|mnist|digits",
                   help="validation data for accuracy before/after (default: the val split of a "
                        "builtin --calib)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    p.add_argument("--json", metavar="FILE", help=jhelp)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    r = sub.add_parser("run", help="one run from a JSON/TOML config, resumable",
                       description="Stages load, analyze, prune(+gate), certify, evaluate, save; state in "
                                   "<out>/state.json, a rerun resumes after the last completed stage.")
    r.add_argument("config", metavar="CONFIG", help="a .json or .toml run config")
    r.add_argument("--out", metavar="DIR", help="override the config's output directory")
    r.add_argument("--no-resume", action="store_true", help="start over even if state.json exists")
    r.add_argument("--json", metavar="FILE", help=jhelp)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="small built-in accuracy/timing comparison (full suite: make bench)",
                       description="Magnitude vs SEB on the real MNIST CNN (accuracy on real val digits, "
                                   "time), and analyze() against a bare eigvalsh floor. The full benchmarks "
                                   "are run with `make bench`.")
    b.add_argument("--quick", action="store_true", help="one sparsity, 300 val digits")
    b.add_argument("--json", metavar="FILE", help=jhelp)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="the main job: MiniLM spectra, theory checks, certified MNIST pruning",
                       description="MP fits of the real MiniLM weights, `mptheory verify --quick` and "
                                   "figures, and the real MNIST CNN pruned with SEB behind a gate.")
    d.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (out/demo)")
    d.add_argument("--quick", action="store_true", help="smaller calibration/evaluation sets")
    d.add_argument("--estimator", choices=ESTIMATORS,
                   help="the gate's L_s estimator (default: auto = sound; --quick: segment_max_slope)")
    d.add_argument("--json", metavar="FILE", help=jhelp)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 1 other failure)."""
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
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - any other failure is reported, not a traceback dump
        print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
