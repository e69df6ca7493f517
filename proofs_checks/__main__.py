"""``python -m proofs_checks [--json FILE] [--verbose] [NAME ...]``: run the symbolic checks."""

from __future__ import annotations

import argparse
import json
import sys

from proofs_checks.registry import CHECKS, as_dict, run_all


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print one line each, optionally write JSON; exit code 1 if any fails."""
    parser = argparse.ArgumentParser(prog="python -m proofs_checks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"checks to run (default: all of {list(CHECKS)})")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="print every derivation step")
    args = parser.parse_args(argv)
    results = run_all(args.names or None)
    for res in results:
        print(f"{res.summary()}  ({res.seconds:.2f} s)")
        if args.verbose:
            for line in res.details:
                print("    " + line)
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump({"checks": [as_dict(r) for r in results]}, fh, indent=2, ensure_ascii=False)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
