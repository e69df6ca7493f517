"""Command line: ``mptheory verify`` (the claims registry) and ``mptheory figures`` (theory figures).

``mptheory verify [--quick] [--json FILE] [--only ID ...] [--seed N]`` prints the verdict table, the
negative-control table and the symbolic section, writes ``{"claims": [...], ...}`` to FILE, and exits
3 ("refused") if any claim fails or any negative control is missed. ``mptheory figures --out DIR [--quick]``
writes the PNGs and ``DIR/manifest.json``. Files are written only through :mod:`mptheory.io` (atomic,
strict JSON); exit codes follow :mod:`mptheory.errors` (0 success, 2 bad input with nothing written,
3 refused, 1 internal error).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from mptheory.errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED, BadInput, exit_code
from mptheory.io import atomic_write_json

__all__ = ["build_parser", "format_table", "main"]


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.3g}"


def format_table(result: object) -> str:
    """Readable text tables of a :class:`mptheory.claims.VerdictList`."""
    from mptheory.claims import VerdictList

    if not isinstance(result, VerdictList):
        raise TypeError(f"expected a VerdictList, got {type(result).__name__}")
    lines = [f"{'id':<5} {'kind':<13} {'evidence':<11} {'cases':>7} {'viol':>5} {'worst slack':>12} "
             f"{'med. tight':>10} {'secs':>6}  verdict", "-" * 88]
    for v in result:
        lines.append(f"{v.id:<5} {v.kind:<13} {str(v.details.get('evidence', '')):<11} {v.cases:>7} "
                     f"{v.violations:>5} {_fmt(v.worst_slack):>12} {_fmt(v.median_tightness):>10} "
                     f"{v.seconds:>6.1f}  {v.verdict.upper()}")
    if result.controls:
        lines += ["", "Negative controls (a wrong bound must be caught):",
                  f"{'control':<38} {'claim':<5} {'cases':>6} {'viol':>5}  status", "-" * 66]
        for c in result.controls:
            lines.append(f"{c.name:<38} {c.claim:<5} {c.cases:>6} {c.violations:>5}  {c.status.upper()}")
    if result.symbolic:
        lines += ["", "Symbolic checks (proofs_checks, sympy):"]
        for s in result.symbolic:
            claims = ",".join(s.details.get("claims", []))
            lines.append(f"{s.id:<28} {claims:<28} {s.seconds:>6.1f}s  {s.verdict.upper()}")
    n_fail = sum(v.verdict != "pass" for v in [*result, *result.symbolic])
    n_miss = sum(c.status != "caught" for c in result.controls)
    lines += ["", f"{len(result)} claims, {n_fail} failed; {len(result.controls)} controls, {n_miss} missed; "
                  f"{result.seconds:.1f} s ({'quick' if result.quick else 'full'}, seed {result.seed}) -> "
                  f"{'PASS' if result.passed else 'FAIL'}"]
    return "\n".join(lines)


def _json_target(path: str | None) -> Path | None:
    """The JSON output path, checked before any work: its folder must exist (bad input otherwise)."""
    if path is None:
        return None
    target = Path(path)
    if not target.parent.is_dir():
        raise BadInput(f"--json {path}: folder {target.parent} does not exist")
    if target.is_dir():
        raise BadInput(f"--json {path} is a folder")
    return target


def _cmd_verify(args: argparse.Namespace) -> int:
    from mptheory.claims import REGISTRY, verify

    ids = None
    if args.only:
        ids = [i.strip().upper() for part in args.only for i in part.split(",") if i.strip()]
        unknown = [i for i in ids if i not in REGISTRY]
        if unknown:
            raise BadInput(f"unknown claim id(s) {unknown}; known: {' '.join(REGISTRY)}")
    target = _json_target(args.json)
    result = verify(ids, quick=args.quick, progress=not args.no_progress, seed=args.seed,
                    controls=not args.no_controls)
    print(format_table(result))
    if target is not None:
        atomic_write_json(target, result.to_dict())
        print(f"wrote {target}")
    return EXIT_OK if result.passed else EXIT_REFUSED


def _cmd_figures(args: argparse.Namespace) -> int:
    from mptheory.figures import make_all

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise BadInput(f"--out {args.out} exists and is not a folder")
    t0 = time.perf_counter()
    manifest = make_all(args.out, quick=args.quick, only=args.only)
    for entry in manifest["figures"]:
        print(f"{entry['file']:<32} {entry['title']}")
    print(f"wrote {len(manifest['figures'])} figures and {Path(args.out) / 'manifest.json'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptheory",
        description="Numerical verification of the MP-pruning theorems (digest §2) and theory figures.",
        epilog=EXIT_CODES_HELP,
    )
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify", help="run the claims registry and print the verdict table",
        description="Check every registered claim (D1–D12, R1–R5, A1–A8, G1–G15): deterministic claims as "
                    "inequalities over ≥10⁴ generated cases (a few hundred with --quick), probabilistic "
                    "ones as Monte-Carlo frequencies within a binomial tolerance. Negative controls (wrong "
                    "bounds) must be caught. Exit code 3 if any claim fails or any control is missed.",
        epilog=EXIT_CODES_HELP)
    v.add_argument("--quick", action="store_true", help="small case counts (about a minute on 2 cores)")
    v.add_argument("--json", metavar="FILE", help="write the verdicts as JSON to FILE")
    v.add_argument("--only", nargs="+", metavar="ID", help="check only these claim ids (e.g. D1 R2 G14)")
    v.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    v.add_argument("--no-controls", action="store_true", help="skip the negative controls")
    v.add_argument("--no-progress", action="store_true", help="do not print per-claim progress to stderr")
    v.set_defaults(func=_cmd_verify)
    f = sub.add_parser(
        "figures", help="regenerate the theory figures and DIR/manifest.json",
        description="Write the theory figures (PNG, matplotlib Agg) and a manifest naming, for each file, "
                    "its title, the claim ids it illustrates and a caption.",
        epilog=EXIT_CODES_HELP)
    f.add_argument("--out", required=True, metavar="DIR", help="output directory")
    f.add_argument("--quick", action="store_true", help="smaller simulations (under two minutes)")
    f.add_argument("--only", nargs="+", metavar="NAME", help="make only these figures (by name)")
    f.set_defaults(func=_cmd_figures)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mptheory`` console script; returns the exit code of
    :func:`mptheory.errors.exit_code` (bad input 2, refused 3, internal error 1 with its traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # mapped to the three kinds of error
        code = exit_code(exc)
        if code == EXIT_INTERNAL:
            traceback.print_exc()
            print(f"mptheory {args.command}: internal error ({type(exc).__name__}); please report it "
                  "with the traceback above", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return code

if __name__ == "__main__":
    raise SystemExit(main())
