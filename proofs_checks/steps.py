"""The step recorder of a symbolic check: each step simplifies to zero (or a spot check agrees), and
:meth:`Steps.finish` turns the steps into the project's one :class:`mptheory.verdict.CheckResult`.

A symbolic result is one case (one lemma) of kind ``"symbolic"``; its ``details`` hold the check ``name``,
the lemma ``statement``, the digest ``claims`` whose algebra it covers and one line per ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sympy as sp

from mptheory.verdict import CheckResult

_T = TypeVar("_T")


def factor_sqrts(expr: sp.Expr) -> sp.Expr:
    """Factor the radicand of every square root, so √((e+2)²) becomes e+2 for positive symbols."""
    return expr.replace(
        lambda e: isinstance(e, sp.Pow) and e.exp == sp.S.Half,
        lambda e: sp.sqrt(sp.factor(e.base)),
    )


@dataclass
class Steps:
    """Records the steps of a derivation; ``finish`` turns them into a symbolic :class:`CheckResult`."""

    name: str
    statement: str
    claims: tuple[str, ...] = ()
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def record(self, label: str, ok: bool, info: str = "") -> bool:
        """Record one step; a failing step makes the whole check fail."""
        ok = bool(ok)
        self.ok = self.ok and ok
        self.lines.append(f"{'ok  ' if ok else 'FAIL'} {label}" + (f": {info}" if info else ""))
        return ok

    def zero(self, label: str, expr: sp.Expr, info: str = "") -> bool:
        """Record that ``expr`` simplifies to exactly zero."""
        simplified = sp.cancel(sp.together(sp.sympify(expr)))
        if simplified != 0:
            simplified = sp.simplify(simplified)
        ok = simplified == 0
        return self.record(label, ok, info if ok else f"residual {sp.sstr(simplified)[:200]}")

    def close(self, label: str, got: complex, want: complex, rtol: float = 1e-7, atol: float = 1e-10) -> bool:
        """Record a numerical spot check |got - want| <= atol + rtol |want|."""
        err = abs(complex(got) - complex(want))
        ok = err <= atol + rtol * abs(complex(want))
        return self.record(label, ok, f"got {complex(got):.10g}, want {complex(want):.10g}, err {err:.2e}")

    def guard(self, label: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        """Run ``fn``; an exception is recorded as a failing step (returns None)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of a candidate formula is a failed check
            self.record(label, False, f"{type(exc).__name__}: {exc}")
            return None

    def finish(self) -> CheckResult:
        """Freeze the recorded steps into a symbolic result (passes iff every step succeeded)."""
        return CheckResult.symbolic(self.ok, name=self.name, statement=self.statement,
                                    claims=list(self.claims), steps=list(self.lines))


def steps_of(result: CheckResult) -> list[str]:
    """The recorded step lines of a symbolic result ("ok   ..." or "FAIL ...")."""
    return list(result.details.get("steps", []))


def summary(result: CheckResult) -> str:
    """One line: verdict, name and the first failing step (if any)."""
    failing = [d for d in steps_of(result) if d.startswith("FAIL")]
    tail = f" — {failing[0]}" if failing else ""
    return f"[{result.verdict.upper()}] {result.details.get('name', '?')}{tail}"
