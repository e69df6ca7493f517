"""``python -m proofs_checks [--json FILE] [--verbose] [NAME ...]``: run the symbolic checks.

Exit codes: 0 when every check passes, 3 when one fails, 2 on bad input (an unknown name, a JSON path in a
missing folder or over a file this command did not write: nothing written), 1 on an internal error. The JSON
file follows the output rule of :mod:`mptheory.cli`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from mptheory.cli import OUTPUT_KEY, check_output_file, output_record
from mptheory.errors import EXIT_CODES_HELP, EXIT_OK, EXIT_REFUSED, BadInput, exit_code
from mptheory.io import atomic_write_json
from proofs_checks.registry import SYMBOLIC_CHECKS, as_dict
from proofs_checks.steps import steps_of, summary

COMMAND = "python -m proofs_checks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proofs_checks", epilog=EXIT_CODES_HELP,
        description="Run the sympy derivations of the algebra the proofs rely on.")
    parser.add_argument("names", nargs="*",
                        help=f"checks to run (default: all of {list(SYMBOLIC_CHECKS)})")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="print every derivation step")
    return parser


def _run(args: argparse.Namespace) -> int:
    names = args.names or list(SYMBOLIC_CHECKS)
    unknown = [n for n in names if n not in SYMBOLIC_CHECKS]
    if unknown:
        raise BadInput(f"unknown check name(s) {unknown}; known: {sorted(SYMBOLIC_CHECKS)}")
    target = check_output_file(args.json_path, command=COMMAND)  # before any work (mptheory.cli's rule)
    entries, passed = [], True
    for name in names:
        t0 = time.perf_counter()
        res = SYMBOLIC_CHECKS[name]()
        seconds = time.perf_counter() - t0
        passed = passed and res.passed
        print(f"{summary(res)}  ({seconds:.2f} s)")
        if args.verbose:
            for line in steps_of(res):
                print("    " + line)
        entries.append({**as_dict(res), "seconds": round(seconds, 3)})
    if target is not None:
        atomic_write_json(target, {"checks": entries, OUTPUT_KEY: output_record(COMMAND, {"names": names})})
    return EXIT_OK if passed else EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks, print one line each, optionally write JSON; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Exception as exc:  # mapped to the three-kinds exit codes
        code = exit_code(exc)
        if code == 1:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
