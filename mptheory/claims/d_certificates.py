"""Digest §2.1, claims D1–D12: the deterministic data-path certificates over generated cases.

Each claim runs one case runner of :mod:`mptheory.certificates` (``check_d1`` … ``check_d12``) on cases from
a factory of :mod:`mptheory.strategies_nets` until ≥ 10⁴ inequality instances (300 in quick mode) from
≥ 300 generated cases (20 in quick mode) are checked; L_s is the sound ``pl_exact`` estimator. Negative
controls: L_s halved on affine tails (exact L_s attained), margin factor 1 on adversarial margins, the
budgets dropped from the telescoped bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mptheory.certificates import (
    check_d1,
    check_d2,
    check_d3,
    check_d4,
    check_d5,
    check_d6,
    check_d7,
    check_d8,
    check_d9,
    check_d10,
    check_d11,
    check_d12,
)
from mptheory.claims.registry import CheckFn, claim_rng, control, register
from mptheory.strategies_nets import (
    make_adversarial_margin_case,
    make_cert_case,
    make_dead_column_case,
    make_linear_tail_case,
    make_multilayer_case,
)
from mptheory.verdict import CheckResult

__all__ = ["run_cases"]

_D = "digest §2.1"
LIPSCHITZ = "pl_exact (sound)"


def _targets(quick: bool) -> tuple[int, int]:
    """(inequality instances, minimum generated cases): ≥ 10⁴ instances in full mode."""
    return (300, 20) if quick else (10_000, 300)


def run_cases(tag: str, quick: bool, seed: int, factory: Callable[[np.random.Generator], Any],
              check: Callable[[Any, np.random.Generator], CheckResult], target: tuple[int, int] | None = None,
              **details: Any) -> CheckResult:
    """Run ``check(factory(rng), rng)`` on generated cases until the target counts are reached; the results
    are combined (their tightness values are the largest realised/bound ratio of each case)."""
    rng = claim_rng(seed, tag)
    want, min_gen = target or _targets(quick)
    results: list[CheckResult] = []
    total = 0
    while total < want or len(results) < min_gen:
        r = check(factory(rng), rng)
        results.append(r)
        total += r.cases
    return CheckResult.combine(results, details={"generated_cases": len(results), **details})


def _cert(tag: str, runner: Callable[..., CheckResult], factory: Callable[[np.random.Generator], Any],
          **kw: Any) -> CheckFn:
    def run(quick: bool, seed: int) -> CheckResult:
        return run_cases(tag, quick, seed, factory, lambda c, _r: runner(c, **kw), lipschitz=LIPSCHITZ)

    return run


register("D1", "|CE(A_θ) − CE(A)| ≤ (1−θ)B_T(R) and per-sample ‖Δz‖∞ ≤ (1−θ)L_s‖Rψ₁‖∞",
         "deterministic", _D, ("certificate_tightness",))(_cert("D1", check_d1, make_cert_case))
register("D2", "dense margin > 2η_s keeps the label; |Δacc| ≤ #{|Δ^true| ≤ 2η_s}/|T|; margins move ≤ 2η_s",
         "deterministic", _D, ("margin_vs_eta",))(_cert("D2", check_d2, make_cert_case))
register("D3", "B_T(R) = 0 (R on dead inputs): logits unchanged and J(S) = J(A) − λ₂‖R‖²_F − λ₁‖R‖₁",
         "deterministic", _D)(_cert("D3", check_d3, make_dead_column_case))
register("D4", "J₂(A_θ) − J₂(A) ≤ (1−θ)B_T − λ₂(1−θ²)‖R‖²_F − 2λ₂(1−θ)⟨S,R⟩ (any decomposition)",
         "deterministic", _D)(_cert("D4", check_d4, make_cert_case))
register("D5", "mask: J(A_θ) − J(A) ≤ (1−θ)B_T − λ₂(1−θ²)‖R‖²_F − λ₁(1−θ)‖R‖₁; B_T < pen ⇒ J(S) < J(A)",
         "deterministic", _D)(_cert("D5", check_d5, make_cert_case))
register("D6", "weighted elastic net: same with Σγ₂R² and Σγ₁|R|", "deterministic", _D)(
    _cert("D6", check_d6, make_cert_case))
register("D7", "prune–restore: J(S+Q+θP) − J(A) ≤ (1−θ)B_T(P) − λ₂(1−θ²)‖P‖²_F − λ₁(1−θ)‖P‖₁",
         "deterministic", _D)(_cert("D7", check_d7, make_cert_case))
register("D8", "restore-Q bound < prune-all bound ⇔ B_T(R) − B_T(P) > λ₂‖Q‖²_F + λ₁‖Q‖₁ (exact identity)",
         "deterministic", _D)(_cert("D8", check_d8, make_cert_case))


@register("D9", "1-D stationary R: 2λ₂‖R‖²_F + λ₁‖R‖₁ ≤ B_T(R) + ε (and the weighted Γ version)",
          "deterministic", _D)
def _check_d9(quick: bool, seed: int) -> CheckResult:
    return run_cases("D9", quick, seed, make_cert_case,
                     lambda c, r: check_d9(c, weighted=bool(r.random() < 0.5)),
                     variants="plain and weighted (Γ) at random")


register("D10", "multi-layer: J(α^(M)) ≤ J(α^(0)) − Σλ₂‖R_j‖² − Σλ₁‖R_j‖₁ + ΣB_j (ψ₁ recomputed per step)",
         "deterministic", _D)(_cert("D10", check_d10, make_multilayer_case))
register("D11", "multi-layer margins: |ΔCE| ≤ (2/|T|)Ση_tot; labels kept if margin > 2η_tot; accuracy bound",
         "deterministic", _D)(_cert("D11", check_d11, make_multilayer_case))
register("D12", "multi-layer stationarity: 2Σλ₂‖R_j‖² + Σλ₁‖R_j‖₁ ≤ ΣB_j + ε",
         "deterministic", _D)(_cert("D12", check_d12, make_multilayer_case))


# ----------------------------------------------------------------------------------------------------
# negative controls


def _nc_d1(quick: bool, seed: int) -> CheckResult:
    return run_cases("NC-D1", quick, seed, make_linear_tail_case,
                     lambda c, _r: check_d1(c, lipschitz_scale=0.5), (100, 10) if quick else (2000, 100))


def _nc_d2(quick: bool, seed: int) -> CheckResult:
    return run_cases("NC-D2", quick, seed, make_adversarial_margin_case,
                     lambda c, _r: check_d2(c, margin_factor=1.0), (100, 10) if quick else (2000, 100))


def _nc_d10(quick: bool, seed: int) -> CheckResult:
    return run_cases("NC-D10", quick, seed, make_multilayer_case,
                     lambda c, _r: check_d10(c, lipschitz_scale=0.0), (200, 200) if quick else (2000, 2000))


control("D1: L_s halved", "D1", "affine tail (exact L_s attained), L_s × 0.5", _nc_d1)
control("D2: margin factor 1", "D2", "adversarial margins in (η, 2η] that flip; factor 1 instead of 2",
        _nc_d2)
control("D10: budgets dropped", "D10", "telescoped bound with ΣB_j removed (L_s = 0)", _nc_d10)
