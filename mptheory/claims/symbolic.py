"""The symbolic section of ``mptheory verify``: the sympy derivations of :mod:`proofs_checks` as rows."""

from __future__ import annotations

import sys
import time
from typing import Any

from mptheory.claims.verify import Verdict
from mptheory.verdict import CheckResult

__all__ = ["run_symbolic"]


def run_symbolic(progress: bool = False) -> list[Verdict]:
    """Every check of :data:`proofs_checks.registry.SYMBOLIC_CHECKS` as a verdict row (kind ``"symbolic"``,
    id ``SYM:<name>``); a check that raises fails its row instead of stopping ``verify``."""
    from proofs_checks.registry import SYMBOLIC_CHECKS

    out = []
    for name, fn in SYMBOLIC_CHECKS.items():
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as exc:  # a crashing symbolic check is a failure, not a crash of verify
            r = CheckResult.symbolic(False, name=name, statement=name, error=repr(exc))
        details: dict[str, Any] = {k: r.details[k] for k in ("claims", "steps", "error") if k in r.details}
        out.append(Verdict(f"SYM:{name}", str(r.details.get("statement", name)), "symbolic", r,
                           time.perf_counter() - t0, details))
        if progress:
            print(f"  symbolic {name:<24} {out[-1].verdict}", file=sys.stderr)
    return out
