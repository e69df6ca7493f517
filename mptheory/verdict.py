"""The one verdict vocabulary: an :class:`Inequality` and the :class:`CheckResult` every check returns.

Every check of the project — a certificate case runner (:mod:`mptheory.certificates`), a Monte-Carlo budget
check (:mod:`mptheory.budgets`), the deterministic matrix facts (:mod:`mptheory.dynamics`), a claim of the
registry (:mod:`mptheory.claims`) and a sympy derivation (:mod:`proofs_checks`) — reports one
:class:`CheckResult`:

=================  ==================================================================================
field              meaning
=================  ==================================================================================
``cases``          checked instances: inequality entries, Monte-Carlo draws, trend points, lemmas
``violations``     instances where the bound failed (draws above the bound, for a frequency)
``worst_slack``    the smallest margin of the acceptance rule: rhs − lhs for inequalities (negative =
                   violated), ``max_rate − rate`` for a frequency, ``limit − value`` for a trend
``passed``         the verdict (``verdict`` is ``"pass"`` or ``"fail"``)
``kind``           how the verdict is decided, one of :data:`KINDS` (below)
``tightness``      realised/bound values, one per unit of evidence; ``tightness_stat`` says what one
                   value is (e.g. "max realised/bound over a generated case", "mean realised/bound
                   over the draws of a run"); ``median_tightness`` and ``max_tightness`` summarise them
``tolerance``      the acceptance rule in words
``details``        JSON-ready extra information (settings, per-part results, an error)
=================  ==================================================================================

Kinds (:data:`KINDS`):

* ``"deterministic"`` — an inequality that must hold in every case up to float64 rounding
  (:class:`Inequality`: ``lhs <= rhs + atol + rtol·max(1, |lhs|, |rhs|, scale)``); passes iff no violation.
* ``"probabilistic"`` — a Monte-Carlo failure frequency against a probability bound ``b``; passes iff
  ``rate <= b + 3√(b(1−b)/K)`` over ``K`` draws (:func:`binomial_max_rate`, a false alarm has probability
  below 1 %); individual failures are expected and counted in ``violations``.
* ``"asymptotic"`` — a limit statement checked as a finite-N trend (an error below a rate, a bound that
  shrinks with N); passes iff no point violates it.
* ``"empirical"`` — a training experiment whose hypotheses cannot be verified: an observed effect must
  exceed a threshold at every setting (evidence, not proof).
* ``"symbolic"`` — a sympy derivation (:mod:`proofs_checks`): one lemma is one case; it passes iff every
  step simplifies to zero. A symbolic check has no numerical slack: ``worst_slack`` is 0 when it passes
  and −1 when a step fails.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DETERMINISTIC_TOL",
    "KINDS",
    "RTOL",
    "SYMBOLIC_TOL",
    "CheckResult",
    "Inequality",
    "binomial_max_rate",
    "max_ratio",
]

KINDS = ("deterministic", "probabilistic", "asymptotic", "empirical", "symbolic")
RTOL = 1e-9
DETERMINISTIC_TOL = "float64: lhs <= rhs + 1e-9*max(1,|lhs|,|rhs|,scale)"
SYMBOLIC_TOL = "sympy simplification to 0"


# ----------------------------------------------------------------------------------------------------
# inequalities


@dataclass(frozen=True)
class Inequality:
    """Elementwise claim ``lhs <= rhs`` (arrays broadcast to a common shape; one entry is one case).

    ``tolerance = atol + rtol * max(1, |lhs|, |rhs|, scale)`` absorbs float64 rounding; ``scale`` is the size
    of the quantities the two sides were computed from (e.g. |J(A)| for objective differences) and ``atol``
    an absolute allowance (e.g. the rounding of singular values). NaN on either side counts as violated.
    """

    name: str
    lhs: np.ndarray
    rhs: np.ndarray
    scale: np.ndarray | float = 0.0
    rtol: float = RTOL
    atol: np.ndarray | float = 0.0

    def __post_init__(self) -> None:
        lhs, rhs = np.asarray(self.lhs, dtype=np.float64), np.asarray(self.rhs, dtype=np.float64)
        lhs, rhs = np.broadcast_arrays(lhs, rhs)
        object.__setattr__(self, "lhs", np.array(lhs))
        object.__setattr__(self, "rhs", np.array(rhs))

    @property
    def slack(self) -> np.ndarray:
        """rhs - lhs (>= -tolerance where the claim holds)."""
        return self.rhs - self.lhs

    @property
    def tolerance(self) -> np.ndarray:
        big = np.maximum(np.maximum(np.abs(self.lhs), np.abs(self.rhs)), np.abs(np.asarray(self.scale)))
        return np.asarray(self.atol) + self.rtol * np.maximum(1.0, big)

    @property
    def violated(self) -> np.ndarray:
        """Boolean array: where lhs exceeds rhs by more than the tolerance (NaN counts as violated)."""
        return ~(self.lhs <= self.rhs + self.tolerance)

    @property
    def violations(self) -> int:
        return int(self.violated.sum())

    @property
    def cases(self) -> int:
        return int(self.lhs.size)

    @property
    def worst_slack(self) -> float:
        return float(np.min(self.slack)) if self.lhs.size else float("inf")

    @property
    def holds(self) -> bool:
        return self.violations == 0

    @property
    def max_ratio(self) -> float:
        """The largest realised/bound ratio lhs/rhs over the entries with rhs > 0 (NaN if there is none)."""
        return max_ratio(self.lhs, self.rhs)


def max_ratio(num: np.ndarray | float, den: np.ndarray | float) -> float:
    """max(num/den) over the entries with den > 0 (NaN if there is none): the tightness of a bound."""
    n, d = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    ok = d > 0
    return float(np.max(n[ok] / d[ok])) if np.any(ok) else float("nan")


def binomial_max_rate(bound: float, draws: int) -> float:
    """The largest accepted failure rate ``b + 3√(b(1−b)/K)`` for a probability bound ``b`` over ``K`` draws.

    A correct bound exceeds it with probability below 1 % (the binomial tail at three standard deviations).
    """
    b = float(bound)
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        raise ValueError(f"the probability bound must lie in [0, 1]; got {bound!r}")
    if int(draws) != draws or int(draws) < 1:
        raise ValueError(f"draws must be an integer ≥ 1; got {draws!r}")
    return b + 3.0 * math.sqrt(b * (1.0 - b) / int(draws))


# ----------------------------------------------------------------------------------------------------
# the check result


@dataclass(frozen=True)
class CheckResult:
    """What every check returns (see the module docstring for the fields and the kinds)."""

    cases: int
    violations: int
    worst_slack: float
    passed: bool
    kind: str = "deterministic"
    tightness: tuple[float, ...] = ()
    tightness_stat: str = ""
    tolerance: str = DETERMINISTIC_TOL
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "cases", int(self.cases))
        object.__setattr__(self, "violations", int(self.violations))
        object.__setattr__(self, "worst_slack", float(self.worst_slack))
        object.__setattr__(self, "passed", bool(self.passed))
        object.__setattr__(self, "tightness", tuple(float(t) for t in np.ravel(self.tightness)))

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    @property
    def median_tightness(self) -> float:
        """Median of the finite ``tightness`` values (NaN if there is none)."""
        t = np.asarray([x for x in self.tightness if math.isfinite(x)], dtype=np.float64)
        return float(np.median(t)) if t.size else float("nan")

    @property
    def max_tightness(self) -> float:
        """Largest finite ``tightness`` value (NaN if there is none)."""
        t = [x for x in self.tightness if math.isfinite(x)]
        return max(t) if t else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (non-finite numbers are written as ``null`` by :mod:`mptheory.io`)."""
        return {
            "kind": self.kind,
            "cases": self.cases,
            "violations": self.violations,
            "worst_slack": self.worst_slack,
            "verdict": self.verdict,
            "median_tightness": self.median_tightness,
            "max_tightness": self.max_tightness,
            "tightness_stat": self.tightness_stat,
            "tolerance": self.tolerance,
            "details": self.details,
        }

    # ------------------------------------------------------------------------------------------------
    # constructors for the kinds

    @classmethod
    def from_inequalities(cls, ineqs: Sequence[Inequality], tightness: float | Iterable[float] = (),
                          tightness_stat: str = "", **details: Any) -> CheckResult:
        """A deterministic result: every entry of every inequality is one case; passes iff none fails."""
        violations = sum(q.violations for q in ineqs)
        return cls(
            cases=sum(q.cases for q in ineqs),
            violations=violations,
            worst_slack=min((q.worst_slack for q in ineqs), default=float("inf")),
            passed=violations == 0,
            kind="deterministic",
            tightness=tuple(np.ravel(np.asarray(tightness, dtype=np.float64))),
            tightness_stat=tightness_stat,
            details=details,
        )

    @classmethod
    def frequency(cls, failures: int, draws: int, bound: float, tightness: Iterable[float] = (),
                  tightness_stat: str = "", **details: Any) -> CheckResult:
        """A probabilistic result: ``failures`` of ``draws`` against the probability ``bound``.

        Passes iff ``failures/draws <= binomial_max_rate(bound, draws)``; the slack is the margin of that
        rule. ``details`` gains ``rate``, ``bound`` and ``max_rate``.
        """
        max_rate = binomial_max_rate(bound, draws)
        rate = failures / draws
        return cls(
            cases=draws,
            violations=failures,
            worst_slack=max_rate - rate,
            passed=rate <= max_rate,
            kind="probabilistic",
            tightness=tuple(tightness),
            tightness_stat=tightness_stat,
            tolerance=f"rate <= {bound:.4g} + 3*sqrt(b(1-b)/K) = {max_rate:.4g}",
            details={"rate": rate, "bound": bound, "max_rate": max_rate, **details},
        )

    @classmethod
    def symbolic(cls, passed: bool, **details: Any) -> CheckResult:
        """A symbolic result: one lemma, one case; no numerical slack (0 if it passes, −1 if not)."""
        return cls(cases=1, violations=0 if passed else 1, worst_slack=0.0 if passed else -1.0,
                   passed=passed, kind="symbolic", tolerance=SYMBOLIC_TOL, details=details)

    @classmethod
    def combine(cls, results: Sequence[CheckResult], *, kind: str | None = None, tolerance: str | None = None,
                tightness_stat: str | None = None, details: dict[str, Any] | None = None) -> CheckResult:
        """Aggregate results: cases and violations add up, the worst slack is the smallest, the combined
        result passes iff every part passed, the tightness values are concatenated.

        ``kind``, ``tolerance`` and ``tightness_stat`` default to those of the first part; ``details``
        replaces the parts' details (callers say what to keep).
        """
        if not results:
            raise ValueError("combine needs at least one result")
        first = results[0]
        return cls(
            cases=sum(r.cases for r in results),
            violations=sum(r.violations for r in results),
            worst_slack=min(r.worst_slack for r in results),
            passed=all(r.passed for r in results),
            kind=kind or first.kind,
            tightness=tuple(t for r in results for t in r.tightness),
            tightness_stat=first.tightness_stat if tightness_stat is None else tightness_stat,
            tolerance=first.tolerance if tolerance is None else tolerance,
            details=dict(details or {}),
        )
