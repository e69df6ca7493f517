"""Digest §2.2, claims R1–R5: random budgets hold with probability ≥ 1 − δ (:mod:`mptheory.budgets`).

Each claim combines one or two Monte-Carlo runs of :func:`mptheory.budgets.check_r1` … ``check_r5``; its
tightness values are the mean realised/bound ratio of each run. Negative controls: the R1 radius without
its factor 2, a wrong sub-Gaussian constant (R3), the per-layer radius without n (R4), all at |T| = 1
where the average over samples cannot hide the error.
"""

from __future__ import annotations

from typing import Any

from mptheory import budgets
from mptheory.claims.registry import CheckFn, claim_seed, control, register
from mptheory.verdict import CheckResult

_R = "digest §2.2"


def _draws(quick: bool, q: int = 200, full: int = 2000) -> int:
    return q if quick else full


def _runs(results: list[CheckResult], **details: Any) -> CheckResult:
    """The runs of one claim combined; ``details["runs"]`` keeps each run's details."""
    return CheckResult.combine(results, details={**details, "runs": [dict(r.details) for r in results]})


@register("R1", "R iid N(0,g/n) ⊥ (v_s, L_s): B_T(R) ≤ (2/|T|)Σ L_s‖v_s‖₂ √((2g/n)log(2n|T|/δ)) w.p. ≥ 1−δ",
          "probabilistic", _R, ("budget_failure_vs_delta",), "probabilistic")
def _check_r1(quick: bool, seed: int) -> CheckResult:
    d = _draws(quick)
    return _runs([budgets.check_r1(n=256, m=128, T=50, draws=d, seed=claim_seed(seed, "R1a")),
                  budgets.check_r1(n=256, m=128, T=1, draws=d, seed=claim_seed(seed, "R1b"),
                                   layout="identical")],
                 settings="(n,m)=(256,128), δ=0.05; |T|=50 iid inputs and |T|=1")


@register("R2", "σ₊ form: B_T ≤ [2σ₊,R/(1+√(m/n))]√((2/n)log(2n|T|/δ))(1/|T|)ΣL_s‖v_s‖₂; equals R1",
          "probabilistic", _R, ("budget_failure_vs_delta",), "probabilistic")
def _check_r2(quick: bool, seed: int) -> CheckResult:
    return _runs([budgets.check_r2(draws=_draws(quick), seed=claim_seed(seed, "R2"),
                                   identity_cases=50 if quick else 2000)])


@register("R3", "sub-Gaussian rows (constant c): B_T ≤ (2/|T|)ΣL_s‖v_s‖₂ √((g/(cn))log(2n|T|/δ)) w.p. ≥ 1−δ",
          "probabilistic", _R, (), "probabilistic")
def _check_r3(quick: bool, seed: int) -> CheckResult:
    d = _draws(quick)
    return _runs([budgets.check_r3(T=50, draws=d, seed=claim_seed(seed, "R3a")),
                  budgets.check_r3(T=1, draws=d, seed=claim_seed(seed, "R3b"))],
                 settings="Rademacher entries (c = 1/2), |T| = 50 and 1")


@register("R4", "several Gaussian layers, Σδ_j ≤ δ: all layer bounds hold simultaneously w.p. ≥ 1−δ",
          "probabilistic", _R, (), "probabilistic")
def _check_r4(quick: bool, seed: int) -> CheckResult:
    return _runs([budgets.check_r4(draws=_draws(quick), seed=claim_seed(seed, "R4")),
                  budgets.check_r4(draws=_draws(quick), seed=claim_seed(seed, "R4b"),
                                   split=(0.01, 0.015, 0.025))])


@register("R5", "several sub-Gaussian layers, Σδ_j ≤ δ: simultaneous validity w.p. ≥ 1−δ",
          "probabilistic", _R, (), "probabilistic")
def _check_r5(quick: bool, seed: int) -> CheckResult:
    return _runs([budgets.check_r5(draws=_draws(quick), seed=claim_seed(seed, "R5"))])


# ----------------------------------------------------------------------------------------------------
# negative controls


def _nc(name: str) -> CheckFn:
    def run(quick: bool, seed: int) -> CheckResult:
        d = 100 if quick else 1000
        if name == "R1":
            return budgets.check_r1(T=1, draws=d, seed=claim_seed(seed, "NC-R1"), constant="no_factor2")
        if name == "R3":
            return budgets.check_r3(T=1, draws=d, seed=claim_seed(seed, "NC-R3"), c=2.0)
        return budgets.check_r4(T=1, draws=d, seed=claim_seed(seed, "NC-R4"), constant="no_n")

    return run


control("R1: radius without factor 2", "R1",
        "Gaussian budget with √(g/n·log) instead of √(2g/n·log), |T| = 1", _nc("R1"))
control("R3: wrong sub-Gaussian constant", "R3", "c = 2 instead of 1/2 (Rademacher), |T| = 1", _nc("R3"))
control("R4: per-layer radius without n", "R4", "multi-layer budget with the 1/n dropped, |T| = 1", _nc("R4"))
