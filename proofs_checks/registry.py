"""The registry of symbolic checks: ``SYMBOLIC_CHECKS`` (name → check) and ``run_all()``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mptheory.verdict import CheckResult
from proofs_checks import (
    bbp,
    bema_edge,
    budget_algebra,
    certificate_algebra,
    mp_edges,
    mp_mass,
    mp_moments,
    mp_stieltjes,
)
from proofs_checks.steps import steps_of

__all__ = ["SYMBOLIC_CHECKS", "as_dict", "run_all"]

#: check name -> zero-argument callable (the default formulas under test)
SYMBOLIC_CHECKS: dict[str, Callable[[], CheckResult]] = {
    mp_mass.NAME: mp_mass.check,
    mp_moments.NAME: mp_moments.check,
    mp_stieltjes.NAME: mp_stieltjes.check,
    mp_edges.NAME: mp_edges.check,
    bbp.NAME: bbp.check,
    certificate_algebra.NAME: certificate_algebra.check,
    budget_algebra.NAME: budget_algebra.check,
    bema_edge.NAME: bema_edge.check,
}


def run_all(names: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the named checks (default: all, in registry order) and return their results."""
    selected = list(SYMBOLIC_CHECKS) if names is None else list(names)
    unknown = [n for n in selected if n not in SYMBOLIC_CHECKS]
    if unknown:
        raise ValueError(f"unknown check name(s) {unknown}; known: {sorted(SYMBOLIC_CHECKS)}")
    return [SYMBOLIC_CHECKS[n]() for n in selected]


def as_dict(result: CheckResult) -> dict[str, object]:
    """JSON-ready dictionary of one symbolic result."""
    return {
        "name": result.details.get("name"),
        "statement": result.details.get("statement"),
        "passed": result.passed,
        "claims": list(result.details.get("claims", [])),
        "steps": steps_of(result),
    }
