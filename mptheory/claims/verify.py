"""``verify``: run the claims, their negative controls and the symbolic section; the verdict rows.

A :class:`Verdict` is one row of the verdict table: a claim's id, statement and kind with the
:class:`~mptheory.verdict.CheckResult` its check returned (and the seconds it took); :meth:`Verdict.to_dict`
is the ``mptheory verify --json`` entry. A :class:`ControlResult` is one negative control ("caught" when its
wrong bound produced violations). :class:`VerdictList` holds the rows plus ``controls`` and ``symbolic``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mptheory.claims import registry as _registry
from mptheory.claims.registry import Claim, get_claim
from mptheory.io import jsonable
from mptheory.verdict import CheckResult

__all__ = ["ControlResult", "Verdict", "VerdictList", "run_claim", "run_controls", "verify"]


@dataclass
class Verdict:
    """One row of the verdict table. ``details`` is the row information (evidence, source, figures for a
    claim) followed by the result's details."""

    id: str
    statement: str
    kind: str
    result: CheckResult
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def cases(self) -> int:
        return self.result.cases

    @property
    def violations(self) -> int:
        return self.result.violations

    @property
    def worst_slack(self) -> float:
        return self.result.worst_slack

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def median_tightness(self) -> float:
        return self.result.median_tightness

    @property
    def tolerance(self) -> str:
        return self.result.tolerance

    def to_dict(self) -> dict[str, Any]:
        """The ``verify --json`` entry (strict JSON values: non-finite numbers become ``null``)."""
        return jsonable({
            "id": self.id,
            "statement": self.statement,
            "kind": self.kind,
            "cases": self.cases,
            "violations": self.violations,
            "worst_slack": self.worst_slack,
            "verdict": self.verdict,
            "median_tightness": self.median_tightness,
            "max_tightness": self.result.max_tightness,
            "tightness_stat": self.result.tightness_stat,
            "tolerance": self.tolerance,
            "seconds": round(float(self.seconds), 3),
            "details": self.details,
        })


@dataclass
class ControlResult:
    """A negative control's outcome: ``status`` is "caught" when the wrong bound produced violations (or
    failed its acceptance rule), "missed" otherwise."""

    name: str
    claim: str
    description: str
    result: CheckResult
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return self.result.cases

    @property
    def violations(self) -> int:
        return self.result.violations

    @property
    def status(self) -> str:
        return "caught" if self.result.violations > 0 or not self.result.passed else "missed"

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "name": self.name,
            "claim": self.claim,
            "description": self.description,
            "cases": self.cases,
            "violations": self.violations,
            "status": self.status,
            "seconds": round(float(self.seconds), 3),
            "details": {"worst_slack": self.result.worst_slack},
        })


class VerdictList(list[Verdict]):
    """``verify``'s result: the claim verdicts, plus ``controls`` and ``symbolic`` sections."""

    def __init__(self, verdicts: Iterable[Verdict] = (), controls: Sequence[ControlResult] = (),
                 symbolic: Sequence[Verdict] = (), quick: bool = False, seed: int = 0,
                 seconds: float = 0.0) -> None:
        super().__init__(verdicts)
        self.controls = list(controls)
        self.symbolic = list(symbolic)
        self.quick = quick
        self.seed = seed
        self.seconds = seconds

    @property
    def passed(self) -> bool:
        """True iff every claim and symbolic check passed and every negative control was caught."""
        return (all(v.verdict == "pass" for v in self) and all(v.verdict == "pass" for v in self.symbolic)
                and all(c.status == "caught" for c in self.controls))

    def to_dict(self) -> dict[str, Any]:
        return {
            "claims": [v.to_dict() for v in self],
            "symbolic": [v.to_dict() for v in self.symbolic],
            "negative_controls": [c.to_dict() for c in self.controls],
            "quick": self.quick,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "passed": self.passed,
        }


def run_claim(c: Claim, quick: bool, seed: int) -> Verdict:
    """Run one claim's check. A check that raises, or returns a result of another kind than the claim's
    declared ``evidence``, fails its claim (the error is reported in ``details["error"]``)."""
    t0 = time.perf_counter()
    try:
        r = c.check(quick, seed)
        if r.kind != c.evidence:
            raise RuntimeError(f"claim {c.id}: the check returned a {r.kind!r} result, the registry declares "
                               f"{c.evidence!r}")
    except Exception as exc:  # report, do not hide: a crashing check fails its claim
        r = CheckResult(0, 1, -math.inf, False, kind=c.evidence, tolerance="", details={"error": repr(exc)})
    details = {"evidence": c.evidence, "source": c.source, "figures": list(c.figures), **r.details}
    return Verdict(c.id, c.statement, c.kind, r, time.perf_counter() - t0, details)


def run_controls(quick: bool = False, seed: int = 0, claims: Iterable[str] | None = None,
                 progress: bool = False) -> list[ControlResult]:
    """Run the negative controls (those of ``claims`` if given): each must produce violations."""
    sel = None if claims is None else set(claims)
    out = []
    for nc in _registry.NEGATIVE_CONTROLS:
        if sel is not None and nc.claim not in sel:
            continue
        t0 = time.perf_counter()
        res = ControlResult(nc.name, nc.claim, nc.description, nc.check(quick, seed))
        res.seconds = time.perf_counter() - t0
        out.append(res)
        if progress:
            print(f"  control {nc.name:<36} {res.status} ({res.violations}/{res.cases})", file=sys.stderr)
    return out


def verify(ids: Iterable[str] | None = None, quick: bool = False, progress: bool = True, seed: int = 0,
           controls: bool = True, symbolic: bool | None = None) -> VerdictList:
    """Run the claims (all, or ``ids``), their negative controls and (for a full selection) the symbolic
    checks. Returns a :class:`VerdictList`; ``.passed`` is the overall verdict. An unknown id is
    :class:`~mptheory.errors.BadInput`."""
    from mptheory.claims.symbolic import run_symbolic

    t0 = time.perf_counter()
    sel = list(_registry.REGISTRY) if ids is None else [get_claim(i).id for i in ids]
    verdicts = []
    for cid in sel:
        v = run_claim(_registry.REGISTRY[cid], quick, seed)
        verdicts.append(v)
        if progress:
            print(f"  {v.id:<4} {v.verdict:<4} cases={v.cases:<6} viol={v.violations:<4} {v.seconds:6.1f}s",
                  file=sys.stderr)
    ctrl = run_controls(quick, seed, None if ids is None else sel, progress) if controls else []
    sym = run_symbolic(progress) if (symbolic if symbolic is not None else ids is None) else []
    return VerdictList(verdicts, ctrl, sym, quick, seed, time.perf_counter() - t0)
