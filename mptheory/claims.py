"""The registry of claims: every checkable statement of digest §2 as one named, numerical check.

A :class:`Claim` has an ``id`` as in the digest (D1–D12, R1–R5, A1–A8, G1–G15), a statement, a ``kind``
(``"deterministic"``: an inequality over generated cases, every case must hold up to float64 rounding;
``"probabilistic"``: a Monte-Carlo failure frequency that must stay within the binomial tolerance
``rate ≤ bound + 3√(bound(1−bound)/K)``), the digest section it comes from, the figure that illustrates
it (if any) and a ``check(quick, seed) -> Outcome`` callable. ``details["evidence"]`` says how the claim
is supported: ``exact`` (deterministic inequality), ``monte-carlo`` (frequency vs a probability bound),
``trend`` (an asymptotic statement checked as a finite-N trend: the bound shrinks with N) or
``empirical`` (a training experiment; the theorem's hypotheses are not verifiable, so this is evidence,
not proof).

The checks reuse the other modules (:mod:`mptheory.certificates`, :mod:`mptheory.strategies_nets`,
:mod:`mptheory.budgets`, :mod:`mptheory.dynamics`, :mod:`mptheory.spikes`); their result types are
converted to one :class:`Outcome`. :data:`NEGATIVE_CONTROLS` run the same checkers with a deliberately
wrong bound (L_s halved, margin factor 1, a wrong budget constant, a wrong inverse-BBP, ...): each must
produce violations ("caught"). The symbolic checks of :mod:`proofs_checks` form a separate section.

``verify(ids=None, quick=False, seed=0)`` runs everything and returns a :class:`VerdictList` (a list of
:class:`Verdict`, plus ``.controls``, ``.symbolic`` and ``.passed``).
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "Claim",
    "ControlResult",
    "NEGATIVE_CONTROLS",
    "NegativeControl",
    "Outcome",
    "REGISTRY",
    "Verdict",
    "VerdictList",
    "claim_ids",
    "get_claim",
    "register",
    "run_controls",
    "run_symbolic",
    "verify",
]

DETERMINISTIC_TOL = "float64: lhs <= rhs + 1e-9*max(1,|lhs|,|rhs|,scale)"


# ----------------------------------------------------------------------------------------------------
# data types


@dataclass
class Outcome:
    """What a check returns: ``cases`` checked instances (inequalities, or Monte-Carlo draws),
    ``violations`` (instances that failed / draws where the bound failed), ``worst_slack`` (smallest
    rhs − lhs; for frequencies max_rate − rate), per-case ``tightness`` values (realised/bound), the
    verdict ``passed`` and a ``tolerance`` description."""

    cases: int
    violations: int
    worst_slack: float
    passed: bool
    tightness: list[float] = field(default_factory=list)
    tolerance: str = DETERMINISTIC_TOL
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def median_tightness(self) -> float:
        t = np.asarray([x for x in self.tightness if np.isfinite(x)], dtype=np.float64)
        return float(np.median(t)) if t.size else float("nan")


CheckFn = Callable[[bool, int], Outcome]
_F = TypeVar("_F", bound=Callable[..., Outcome])


@dataclass(frozen=True)
class Claim:
    """One registered claim (see the module docstring)."""

    id: str
    statement: str
    kind: str
    source: str
    check: CheckFn
    figure: str | None = None
    evidence: str = "exact"

    def __post_init__(self) -> None:
        if self.kind not in ("deterministic", "probabilistic"):
            raise ValueError(
                f"claim {self.id}: kind must be 'deterministic' or 'probabilistic', got {self.kind!r}")
        if self.evidence not in ("exact", "monte-carlo", "trend", "empirical"):
            raise ValueError(f"claim {self.id}: unknown evidence {self.evidence!r}")


@dataclass
class Verdict:
    """One row of the verdict table; :meth:`to_dict` gives the ``mptheory verify --json`` entry."""

    id: str
    statement: str
    kind: str
    cases: int
    violations: int
    worst_slack: float
    verdict: str
    median_tightness: float = float("nan")
    tolerance: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "statement": self.statement,
            "kind": self.kind,
            "cases": int(self.cases),
            "violations": int(self.violations),
            "worst_slack": _jsonable(self.worst_slack),
            "verdict": self.verdict,
            "median_tightness": _jsonable(self.median_tightness),
            "tolerance": self.tolerance,
            "seconds": round(float(self.seconds), 3),
            "details": _jsonable(self.details),
        }


@dataclass(frozen=True)
class NegativeControl:
    """A checker run with a deliberately wrong bound; it must produce violations (be "caught")."""

    name: str
    claim: str
    description: str
    check: CheckFn


@dataclass
class ControlResult:
    name: str
    claim: str
    description: str
    cases: int
    violations: int
    status: str  # "caught" | "missed"
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "claim": self.claim,
            "description": self.description,
            "cases": int(self.cases),
            "violations": int(self.violations),
            "status": self.status,
            "seconds": round(float(self.seconds), 3),
            "details": _jsonable(self.details),
        }


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


def _jsonable(x: Any) -> Any:
    """Recursively convert numpy scalars/arrays to JSON types; non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


# ----------------------------------------------------------------------------------------------------
# registry


REGISTRY: dict[str, Claim] = {}


def register(id: str, statement: str, kind: str, source: str, figure: str | None = None,  # noqa: A002
             evidence: str = "exact") -> Callable[[_F], _F]:
    """Decorator: register ``check(quick, seed) -> Outcome`` as claim ``id`` (ids must be unique)."""

    def deco(fn: _F) -> _F:
        if id in REGISTRY:
            raise ValueError(f"claim {id!r} registered twice")
        REGISTRY[id] = Claim(id, statement, kind, source, fn, figure, evidence)
        return fn

    return deco


def claim_ids() -> list[str]:
    """Registered ids in registry order."""
    return list(REGISTRY)


def get_claim(cid: str) -> Claim:
    if cid not in REGISTRY:
        raise ValueError(f"unknown claim id {cid!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[cid]


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode())])


def _seed(seed: int, tag: str) -> int:
    return int(_rng(seed, tag).integers(0, 2**31 - 1))


# ----------------------------------------------------------------------------------------------------
# conversions from the other modules' result types


def _from_cert(results: Sequence[Any], **details: Any) -> Outcome:
    """Combine many :class:`mptheory.certificates.CheckResult` (one per generated case)."""
    cases = sum(r.cases for r in results)
    viol = sum(r.violations for r in results)
    worst = min((r.worst_slack for r in results), default=float("inf"))
    tight = [float(r.tightness) for r in results if np.isfinite(r.tightness)]
    return Outcome(cases, viol, float(worst), viol == 0, tight, DETERMINISTIC_TOL,
                   {"generated_cases": len(results), **details})


def _from_budget(results: Sequence[Any], **details: Any) -> Outcome:
    """Combine :class:`mptheory.budgets.CheckResult` objects (all must pass)."""
    cases = sum(r.cases for r in results)
    viol = sum(r.violations for r in results)
    worst = min(r.worst_slack for r in results)
    kind = results[0].kind
    tol = "rate <= delta + 3*sqrt(delta(1-delta)/K)" if kind == "probabilistic" else DETERMINISTIC_TOL
    return Outcome(cases, viol, float(worst), all(r.passed for r in results),
                   [float(r.tightness) for r in results], tol,
                   {**details, "runs": [dict(r.details) for r in results]})


def _binomial(failures: int, draws: int, bound: float) -> tuple[float, bool, float]:
    """(max_rate, passed, slack) for ``failures`` out of ``draws`` against probability ``bound``."""
    b = min(max(float(bound), 0.0), 1.0)
    max_rate = b + 3.0 * math.sqrt(b * (1.0 - b) / draws)
    rate = failures / draws
    return max_rate, rate <= max_rate, max_rate - rate


def _prob_outcome(failures: int, draws: int, bound: float, tight: Sequence[float] = (),
                  **details: Any) -> Outcome:
    max_rate, ok, slack = _binomial(failures, draws, bound)
    return Outcome(draws, failures, slack, ok, [float(t) for t in tight],
                   f"rate <= {bound:.4g} + 3*sqrt(b(1-b)/K) = {max_rate:.4g}",
                   {"rate": failures / draws, "bound": bound, "max_rate": max_rate, **details})


def _merge(outcomes: Sequence[Outcome], tolerance: str | None = None, **details: Any) -> Outcome:
    return Outcome(
        sum(o.cases for o in outcomes), sum(o.violations for o in outcomes),
        min(o.worst_slack for o in outcomes), all(o.passed for o in outcomes),
        [t for o in outcomes for t in o.tightness], tolerance or outcomes[0].tolerance,
        {**details, "parts": [o.details for o in outcomes]},
    )


# ----------------------------------------------------------------------------------------------------
# D1–D12: deterministic certificates over generated cases (mptheory.certificates / strategies_nets)


def _targets(quick: bool) -> tuple[int, int]:
    """(inequality instances, minimum generated cases): ≥ 10⁴ instances in full mode."""
    return (300, 20) if quick else (10_000, 300)


def _run_cases(tag: str, quick: bool, seed: int, factory: Callable[[np.random.Generator], Any],
               check: Callable[[Any, np.random.Generator], Any], target: tuple[int, int] | None = None,
               **details: Any) -> Outcome:
    rng = _rng(seed, tag)
    want, min_gen = target or _targets(quick)
    results: list[Any] = []
    total = 0
    while total < want or len(results) < min_gen:
        r = check(factory(rng), rng)
        results.append(r)
        total += r.cases
    return _from_cert(results, **details)


def _cert_check(cid: str, **kw: Any) -> CheckFn:
    def run(quick: bool, seed: int) -> Outcome:
        from mptheory.certificates import CHECKS
        from mptheory.strategies_nets import CASE_FACTORIES

        fn = CHECKS[cid]
        return _run_cases(cid, quick, seed, CASE_FACTORIES[cid], lambda c, _r: fn(c, **kw),
                          lipschitz="exact segment slope (sound)")

    return run


_D = "digest §2.1"
register("D1", "|CE(A_θ) − CE(A)| ≤ (1−θ)B_T(R) and per-sample ‖Δz‖∞ ≤ (1−θ)L_s‖Rψ₁‖∞",
         "deterministic", _D, "certificate_tightness")(_cert_check("D1"))
register("D2", "dense margin > 2η_s keeps the label; |Δacc| ≤ #{|Δ^true| ≤ 2η_s}/|T|; margins move ≤ 2η_s",
         "deterministic", _D, "margin_vs_eta")(_cert_check("D2"))
register("D3", "B_T(R) = 0 (R on dead inputs): logits unchanged and J(S) = J(A) − λ₂‖R‖²_F − λ₁‖R‖₁",
         "deterministic", _D)(_cert_check("D3"))
register("D4", "J₂(A_θ) − J₂(A) ≤ (1−θ)B_T − λ₂(1−θ²)‖R‖²_F − 2λ₂(1−θ)⟨S,R⟩ (any decomposition)",
         "deterministic", _D)(_cert_check("D4"))
register("D5", "mask: J(A_θ) − J(A) ≤ (1−θ)B_T − λ₂(1−θ²)‖R‖²_F − λ₁(1−θ)‖R‖₁; B_T < pen ⇒ J(S) < J(A)",
         "deterministic", _D)(_cert_check("D5"))
register("D6", "weighted elastic net: same with Σγ₂R² and Σγ₁|R|", "deterministic", _D)(_cert_check("D6"))
register("D7", "prune–restore: J(S+Q+θP) − J(A) ≤ (1−θ)B_T(P) − λ₂(1−θ²)‖P‖²_F − λ₁(1−θ)‖P‖₁",
         "deterministic", _D)(_cert_check("D7"))
register("D8", "restore-Q bound < prune-all bound ⇔ B_T(R) − B_T(P) > λ₂‖Q‖²_F + λ₁‖Q‖₁ (exact identity)",
         "deterministic", _D)(_cert_check("D8"))


@register("D9", "1-D stationary R: 2λ₂‖R‖²_F + λ₁‖R‖₁ ≤ B_T(R) + ε (and the weighted Γ version)",
          "deterministic", _D)
def _check_d9(quick: bool, seed: int) -> Outcome:
    from mptheory.certificates import check_d9
    from mptheory.strategies_nets import make_cert_case

    return _run_cases("D9", quick, seed, make_cert_case,
                      lambda c, r: check_d9(c, weighted=bool(r.random() < 0.5)),
                      variants="plain and weighted (Γ) at random")


register("D10", "multi-layer: J(α^(M)) ≤ J(α^(0)) − Σλ₂‖R_j‖² − Σλ₁‖R_j‖₁ + ΣB_j (ψ₁ recomputed per step)",
         "deterministic", _D)(_cert_check("D10"))
register("D11", "multi-layer margins: |ΔCE| ≤ (2/|T|)Ση_tot; labels kept if margin > 2η_tot; accuracy bound",
         "deterministic", _D)(_cert_check("D11"))
register("D12", "multi-layer stationarity: 2Σλ₂‖R_j‖² + Σλ₁‖R_j‖₁ ≤ ΣB_j + ε",
         "deterministic", _D)(_cert_check("D12"))


# ----------------------------------------------------------------------------------------------------
# R1–R5: random budgets (mptheory.budgets)


def _draws(quick: bool, q: int = 200, full: int = 2000) -> int:
    return q if quick else full


_R = "digest §2.2"


@register("R1", "R iid N(0,g/n) ⊥ (v_s, L_s): B_T(R) ≤ (2/|T|)Σ L_s‖v_s‖₂ √((2g/n)log(2n|T|/δ)) w.p. ≥ 1−δ",
          "probabilistic", _R, "budget_failure_vs_delta", "monte-carlo")
def _check_r1(quick: bool, seed: int) -> Outcome:
    from mptheory.budgets import check_r1

    d = _draws(quick)
    return _from_budget([check_r1(n=256, m=128, T=50, draws=d, seed=_seed(seed, "R1a")),
                         check_r1(n=256, m=128, T=1, draws=d, seed=_seed(seed, "R1b"), layout="identical")],
                        settings="(n,m)=(256,128), δ=0.05; |T|=50 iid inputs and |T|=1")


@register("R2", "σ₊ form: B_T ≤ [2σ₊,R/(1+√(m/n))]√((2/n)log(2n|T|/δ))(1/|T|)ΣL_s‖v_s‖₂; equals R1",
          "probabilistic", _R, "budget_failure_vs_delta", "monte-carlo")
def _check_r2(quick: bool, seed: int) -> Outcome:
    from mptheory.budgets import check_r2

    return _from_budget([check_r2(draws=_draws(quick), seed=_seed(seed, "R2"),
                                  identity_cases=50 if quick else 2000)])


@register("R3", "sub-Gaussian rows (constant c): B_T ≤ (2/|T|)ΣL_s‖v_s‖₂ √((g/(cn))log(2n|T|/δ)) w.p. ≥ 1−δ",
          "probabilistic", _R, None, "monte-carlo")
def _check_r3(quick: bool, seed: int) -> Outcome:
    from mptheory.budgets import check_r3

    d = _draws(quick)
    return _from_budget([check_r3(T=50, draws=d, seed=_seed(seed, "R3a")),
                         check_r3(T=1, draws=d, seed=_seed(seed, "R3b"))],
                        settings="Rademacher entries (c = 1/2), |T| = 50 and 1")


@register("R4", "several Gaussian layers, Σδ_j ≤ δ: all layer bounds hold simultaneously w.p. ≥ 1−δ",
          "probabilistic", _R, None, "monte-carlo")
def _check_r4(quick: bool, seed: int) -> Outcome:
    from mptheory.budgets import check_r4

    return _from_budget([check_r4(draws=_draws(quick), seed=_seed(seed, "R4")),
                         check_r4(draws=_draws(quick), seed=_seed(seed, "R4b"), split=(0.01, 0.015, 0.025))])


@register("R5", "several sub-Gaussian layers, Σδ_j ≤ δ: simultaneous validity w.p. ≥ 1−δ",
          "probabilistic", _R, None, "monte-carlo")
def _check_r5(quick: bool, seed: int) -> Outcome:
    from mptheory.budgets import check_r5

    return _from_budget([check_r5(draws=_draws(quick), seed=_seed(seed, "R5"))])


# ----------------------------------------------------------------------------------------------------
# Gaussian three-layer model (mptheory.dynamics): A1–A5, G1–G7


def _logit_sim(tag: str, quick: bool, seed: int, tau_scale: float = 1.0, **kw: Any) -> Any:
    from mptheory.dynamics import simulate_logit_bounds

    kw.setdefault("draws", 100 if quick else 1000)
    return simulate_logit_bounds(tau_scale=tau_scale, rng=_seed(seed, tag), **kw)


def _per_sample_outcome(sim: Any, thr: np.ndarray, bound: float, **details: Any) -> Outcome:
    """Worst sample's failure frequency over draws vs ``bound`` (K = draws)."""
    fails = (sim.dX > thr[None, :]).sum(axis=0)
    worst = int(fails.max())
    ratio = (sim.dX / thr[None, :]).max(axis=1)
    return _prob_outcome(worst, sim.draws, bound, ratio, N=sim.N, T=sim.T,
                         max_ratio=float(ratio.max()), **details)


def _check_a1(quick: bool, seed: int, tau_scale: float = 1.0) -> Outcome:
    sim = _logit_sim("A1", quick, seed, tau_scale, N=200, T=20, activation="relu")
    return _per_sample_outcome(sim, sim.tau, 1.0 / sim.N,
                               instance="ReLU 3-layer net, d1 = 2√(2log(2N)/N), J = ‖W₁s‖₂, d2 = 1/N")


register("A1", "P(‖X(s,α_S) − X(s,α_W)‖∞ ≤ d₁(N)h_φ(s)) ≥ 1 − d₂(N) (Gaussian instance)",
         "probabilistic", "digest §2.3", None, "monte-carlo")(_check_a1)


def _band_sims(tag: str, quick: bool, seed: int, Ns: Sequence[int], reps: int, T: int | None = None,
               activation: str = "relu") -> dict[int, list[Any]]:
    from mptheory.dynamics import g7_band

    out: dict[int, list[Any]] = {}
    for N in Ns:
        t = T if T is not None else int(math.ceil(math.sqrt(N)))
        out[N] = [g7_band(N=N, T=t, activation=activation, rng=_seed(seed, f"{tag}-{N}-{k}"))
                  for k in range(reps)]
    return out


def _trend_outcome(tag: str, quick: bool, seed: int, theta0_only: bool, growing_T: bool) -> Outcome:
    """A2/A3/A5: the finite-N band holds (frequency ≤ |T|/N) and its half-width shrinks with N."""
    Ns = (100, 200, 400) if quick else (100, 200, 400, 800, 1600)
    reps = 6 if quick else 40
    sims = _band_sims(tag, quick, seed, Ns, reps, None if growing_T else 30)
    fails, draws, widths, tight = 0, 0, [], []
    bound = 0.0
    for N, lst in sims.items():
        for b in lst:
            sl = slice(0, None)
            if theta0_only:
                sl = slice(int(np.argmin(b.thetas)), int(np.argmin(b.thetas)) + 1)
            dev = np.abs(b.lhs - b.center)[sl]
            fails += int(np.any(dev > b.halfwidth[sl] + 1e-12))
            draws += 1
            tight.append(float(np.max(dev / np.maximum(b.halfwidth[sl], 1e-300))))
        T = int(math.ceil(math.sqrt(N))) if growing_T else 30
        bound = max(bound, T / N)
        widths.append(float(np.mean([b.halfwidth.max() for b in lst])))
    steps = int(np.sum(np.diff(widths) >= 0))
    out = _prob_outcome(fails, draws, bound, tight, widths=dict(zip(Ns, widths, strict=True)),
                        nonshrinking_steps=steps)
    out.violations += steps
    out.passed = out.passed and steps == 0
    return out


register("A2", "L(α_S) = L(α_W) − λ‖R‖²_F + o_P(1): band (4√2/|T|)Σa + 2λ|⟨S,R⟩| holds and shrinks with N",
         "probabilistic", "digest §2.3", None, "trend")(
    lambda q, s: _trend_outcome("A2", q, s, theta0_only=True, growing_T=False))
register("A3", "L(α_{S+ϑR}) = L(α_W) − λ(1−ϑ²)‖R‖²_F + o_P(1) for all ϑ (band holds, shrinks with N)",
         "probabilistic", "digest §2.3", None, "trend")(
    lambda q, s: _trend_outcome("A3", q, s, theta0_only=False, growing_T=False))


@register("A4", "finite-N: L(S+ϑR) ≤ L(W) − λ(1−ϑ²)‖R‖² + (1−ϑ)(2/|T|)Σa_φ + 2λ(1−ϑ)η ∀ϑ, "
          "w.p. ≥ 1 − |T|d₂(N)", "probabilistic", "digest §2.3", None, "monte-carlo")
def _check_a4(quick: bool, seed: int) -> Outcome:
    N, T = 300, 30
    sims = _band_sims("A4", quick, seed, (N,), 30 if quick else 400, T)[N]
    fails = sum(int(np.any(b.lhs > b.center + b.halfwidth + 1e-12)) for b in sims)
    tight = [float(np.max((b.lhs - b.center) / np.maximum(b.halfwidth, 1e-300))) for b in sims]
    return _prob_outcome(fails, len(sims), T / N, tight, N=N, T=T, activation="relu")


register("A5", "growing T_N (|T_N| = √N): |T_N|d₂ → 0 and the band (1/|T_N|)Σa → 0; bound holds",
         "probabilistic", "digest §2.3", None, "trend")(
    lambda q, s: _trend_outcome("A5", q, s, theta0_only=True, growing_T=True))


@register("A6", "multi-layer telescoping (L₂ only): L(α^(P)) ≤ L(α^(0)) − λΣ‖R_ℓ‖²_F + ΣB_ℓ "
          "(finite-N deterministic form)", "deterministic", "digest §2.3")
def _check_a6(quick: bool, seed: int) -> Outcome:
    from mptheory.certificates import check_d10
    from mptheory.strategies_nets import make_multilayer_case

    def factory(rng: np.random.Generator) -> Any:
        c = make_multilayer_case(rng)
        lam = float(10.0 ** rng.uniform(-3, 1))
        return replace(c, lam1=(0.0, 0.0, 0.0), lam2=(lam, lam, lam))

    return _run_cases("A6", quick, seed, factory, lambda c, _r: check_d10(c),
                      form="D10 telescoped with λ₁ = 0 and one λ_reg for all layers")


# ----------------------------------------------------------------------------------------------------
# width experiment (A7, G9, G10): empirical


@lru_cache(maxsize=4)
def _width_series(quick: bool, seed: int) -> Any:
    from mptheory.dynamics import train_width_series

    return train_width_series(quick=quick, seed=seed)


def _width_ratio_outcome(quick: bool, seed: int, quantity: str, factor: float) -> Outcome:
    ws = _width_series(quick, seed)
    ratios = []
    for r in ws.runs:
        if quantity == "sigma2_N":
            q = r.sigma2_N
        elif quantity == "energy":
            q = r.sigma2 * r.width * r.width
        else:  # square MP singular edge 2√(σ²N)
            q = 2.0 * np.sqrt(r.sigma2_N)
        ratios.append(float(q[-1] / q[0]))
    viol = int(sum(x > factor for x in ratios))
    return Outcome(len(ratios), viol, float(min(factor - x for x in ratios)), viol == 0, ratios,
                   f"final/initial ≤ {factor} at every width",
                   {"widths": list(ws.widths), "final_over_initial": ratios, "fitter": ws.fitter,
                    "epochs": ws.epochs, "lambda_reg": ws.lambda_reg,
                    "final_sigma2_N": ws.final_sigma2_N(), "initial_sigma2_N": ws.initial_sigma2_N(),
                    "note": "empirical: L2-regularised MLP training; the theorem's limits are not reached"})


register("A7", "stationarity collapse: ‖R*‖²_F ≤ (ā+ε)/(2λ) + o_P(1); fitted noise σ²·N falls ≥ 4× "
         "in training",
         "probabilistic", "digest §2.3", "width_bulk_collapse", "empirical")(
    lambda q, s: _width_ratio_outcome(q, s, "sigma2_N", 0.25))


@register("A8", "persistent spikes: inverse-D estimate D_N(s_i)^(−1/2) − σ_i → 0 (rectangular BBP, "
          "N growing)",
          "probabilistic", "digest §2.3", "bbp_map", "trend")
def _check_a8(quick: bool, seed: int) -> Outcome:
    from mptheory.spikes import inverse_bbp, make_spiked_matrix

    Ns = (200, 400, 800) if quick else (200, 400, 800, 1600)
    reps = 2 if quick else 6
    rng = _rng(seed, "A8")
    errs = []
    for N in Ns:
        e = []
        for _ in range(reps):
            sm = make_spiked_matrix((N, N // 2), factors=(3.0, 2.0), sigma2=1.0, rng=rng)
            s = np.linalg.svd(sm.W, compute_uv=False)[:2]
            scale = math.sqrt(N)  # σ√n, n = max(N, M)
            x = np.asarray(inverse_bbp(s / scale, 0.5)) * scale
            e.append(float(np.max(np.abs(x - sm.signal_singular_values) / sm.signal_singular_values)))
        errs.append(float(np.mean(e)))
    lim = 2.0 / np.sqrt(np.asarray(Ns, dtype=np.float64))
    bad = int(np.sum(np.asarray(errs) > lim))
    return Outcome(len(Ns) * reps, bad, float(np.min(lim - np.asarray(errs))), bad == 0, errs,
                   "mean relative error ≤ 2/√N at every N (consistency at rate N^(-1/2))",
                   {"N": list(Ns), "mean_rel_error": errs, "shape": "N × N/2", "factors": [3.0, 2.0]})


def _check_g1(quick: bool, seed: int, tau_scale: float = 1.0) -> Outcome:
    sim = _logit_sim("G1", quick, seed, tau_scale, N=300, T=20, activation="abs")
    return _per_sample_outcome(sim, sim.tau, 1.0 / sim.N, tau="2√2‖W₃‖∞‖W₁s‖₂√(log(2N)/N)")


_G = "digest §2.4"
register("G1", "P(‖X(s,S₂) − X(s,W₂)‖∞ ≤ τ_N(s) = 2√2 a(N,s)) ≥ 1 − 1/N", "probabilistic", _G, None,
         "monte-carlo")(_check_g1)


@register("G2", "w.p. ≥ 1 − |T′|/N: |acc_W − acc_S| ≤ #{|δX| ≤ 2τ_N}/|T′|", "probabilistic", _G, None,
          "monte-carlo")
def _check_g2(quick: bool, seed: int) -> Outcome:
    sim = _logit_sim("G2", quick, seed, N=300, T=20)
    fails = int(round(sim.g2_rate * sim.draws))
    return _prob_outcome(fails, sim.draws, sim.T / sim.N, (), N=sim.N, T=sim.T)


@register("G3", "|L_CE(S₂) − L_CE(W₂)| ≤ (4√2/|T|)Σa(N,s) w.p. ≥ 1 − |T|/N", "probabilistic", _G, None,
          "monte-carlo")
def _check_g3(quick: bool, seed: int) -> Outcome:
    from scipy.special import logsumexp

    from mptheory.dynamics import make_three_layer

    rng = _rng(seed, "G3")
    N, T, draws = 300, 20, (60 if quick else 600)
    net = make_three_layer(N, rng=rng)
    X = rng.standard_normal((T, net.W1.shape[1]))
    y = rng.integers(0, net.W3.shape[0], size=T)

    def ce(Z: np.ndarray) -> float:
        return float(np.mean(logsumexp(Z, axis=1) - Z[np.arange(T), y]))

    ce_S = ce(net.logits(X, net.S2))
    bound = 4.0 * math.sqrt(2.0) * float(net.a(X).mean())
    ratios = []
    for _ in range(draws):
        R2 = rng.standard_normal((N, N)) * math.sqrt(net.g / N)
        ratios.append(abs(ce(net.logits(X, net.S2 + R2)) - ce_S) / bound)
    fails = int(np.sum(np.asarray(ratios) > 1.0))
    return _prob_outcome(fails, draws, T / N, ratios, N=N, T=T, ce_bound=bound)


@register("G4", "τ_{N,δ}: all s∈T₀ simultaneously and |ΔL_CE| ≤ (2/|T|)Στ_{N,δ} w.p. ≥ 1 − δ",
          "probabilistic",
          _G, None, "monte-carlo")
def _check_g4(quick: bool, seed: int, tau_scale: float = 1.0) -> Outcome:
    sim = _logit_sim("G4", quick, seed, tau_scale, N=300, T=20, delta=0.05)
    fails = int(round(max(sim.g4_rate, sim.g4_loss_rate) * sim.draws))
    ratio = (sim.dX / sim.tau_delta[None, :]).max(axis=1)
    return _prob_outcome(fails, sim.draws, sim.delta, ratio, N=sim.N, T=sim.T,
                         logit_rate=sim.g4_rate, loss_rate=sim.g4_loss_rate)


@register("G5", "growing T_N, δ_N → 0: b_{N,δ_N}(T_N) → 0 and ΔL_CE ≤ b w.p. ≥ 1 − δ_N", "probabilistic",
          _G, None, "trend")
def _check_g5(quick: bool, seed: int) -> Outcome:
    Ns = (100, 200, 400) if quick else (100, 200, 400, 800)
    parts, widths = [], []
    for N in Ns:
        T = int(math.ceil(math.sqrt(N)))
        sim = _logit_sim(f"G5-{N}", quick, seed, N=N, T=T, delta=1.0 / N, draws=40 if quick else 300)
        fails = int(round(max(sim.g4_rate, sim.g4_loss_rate) * sim.draws))
        parts.append(_prob_outcome(fails, sim.draws, sim.delta, (), N=N, T=T))
        widths.append(2.0 * float(sim.tau_delta.mean()))
    out = _merge(parts, b_N=dict(zip(Ns, widths, strict=True)))
    steps = int(np.sum(np.diff(widths) >= 0))
    out.violations += steps
    out.passed = out.passed and steps == 0
    out.tightness = widths
    return out


@register("G6", "L(S₂) ≤ L(W₂) − λ‖R₂‖²_F + (4√2/|T|)Σa + 2λη w.p. ≥ 1 − |T|/N − 2e^(−Nη²/2B²)",
          "probabilistic", _G, None, "monte-carlo")
def _check_g6(quick: bool, seed: int) -> Outcome:
    N, T = 300, 30
    sims = _band_sims("G6", quick, seed, (N,), 30 if quick else 400, T, "abs")[N]
    fails, tight = 0, []
    for b in sims:
        i = int(np.argmin(b.thetas))
        fails += int(b.lhs[i] > b.center[i] + b.halfwidth[i] + 1e-12)
        tight.append(float((b.lhs[i] - b.center[i]) / b.halfwidth[i]))
    return _prob_outcome(fails, len(sims), T / N, tight, N=N, T=T, eta="realised |⟨S₂,R₂⟩_F|")


@register("G7", "for all ϑ: |L(S₂+ϑR₂) − L(W₂) + λ(1−ϑ²)‖R₂‖²| ≤ (1−ϑ)[(4√2/|T|)Σa + 2λη] w.p. ≥ 1 − |T|/N",
          "probabilistic", _G, None, "monte-carlo")
def _check_g7(quick: bool, seed: int) -> Outcome:
    N, T = 300, 30
    sims = _band_sims("G7", quick, seed, (N,), 30 if quick else 400, T, "abs")[N]
    fails = sum(int(not np.all(b.inside)) for b in sims)
    tight = [float(np.max(np.abs(b.lhs - b.center) / np.maximum(b.halfwidth, 1e-300))) for b in sims]
    return _prob_outcome(fails, len(sims), T / N, tight, N=N, T=T,
                         monotone_fraction=float(np.mean([b.monotone for b in sims])))


@register("G8", "threshold t = √(2g log(2NM/δ)/N): {|S|>2t} ⊆ supp H_t(W) ⊆ supp S w.p. ≥ 1−δ; exact "
          "recovery under beta-min", "probabilistic", _G, None, "monte-carlo")
def _check_g8(quick: bool, seed: int, t_scale: float = 1.0) -> Outcome:
    from mptheory.dynamics import simulate_thresholding

    draws = 60 if quick else 600
    a = simulate_thresholding(draws=draws, t_scale=t_scale, rng=_seed(seed, "G8a"))
    b = simulate_thresholding(draws=draws, t_scale=t_scale, signal=(2.05, 3.0), rng=_seed(seed, "G8b"))
    p1 = _prob_outcome(int(round((1 - a.sandwich_rate) * draws)), draws, a.delta, (), part="sandwich")
    gamma = 1.0 - b.beta_min_rate
    p2 = _prob_outcome(int(round((1 - b.exact_rate) * draws)) if b.beta_min_rate > 0 else draws, draws,
                       min(1.0, a.delta + gamma), (), part="exact recovery under beta-min")
    return _merge([p1, p2])


def _check_g9(quick: bool, seed: int) -> Outcome:
    return _width_ratio_outcome(quick, seed, "energy", 0.25)


register("G9", "Gaussian stationarity collapse: fitted noise energy σ²N² of the trained N×N layer falls ≥ 4×",
         "probabilistic", _G, "width_bulk_collapse", "empirical")(_check_g9)
register("G10", "variance-scale collapse g*N → 0 ⇒ square MP edge 2√g* → 0: fitted edge 2√(σ²N) halves in "
         "training", "probabilistic", _G, "width_bulk_collapse", "empirical")(
    lambda q, s: _width_ratio_outcome(q, s, "edge", 0.5))


# ----------------------------------------------------------------------------------------------------
# G11, G12, G15: exact inequalities behind the spectral results


def _matrix_cases(tag: str, quick: bool, seed: int, per_case: int,
                  fn: Callable[[np.ndarray, np.ndarray, int, np.random.Generator], list[Any]],
                  max_dim: int = 24, **details: Any) -> Outcome:
    from mptheory.dynamics import spiked_matrix

    rng = _rng(seed, tag)
    want = 300 if quick else 10_000
    n_mats = max(20, int(math.ceil(want / per_case)))
    viol, worst, tight, cases = 0, math.inf, [], 0
    for _ in range(n_mats):
        N, M = (int(x) for x in rng.integers(2, max_dim + 1, size=2))
        r = int(rng.integers(0, min(N, M) + 1))
        S = spiked_matrix(N, M, rng.uniform(0.1, 5.0, size=r), rng)
        R = rng.standard_normal((N, M)) * rng.uniform(0.01, 2.0) / math.sqrt(N)
        for gp in fn(S, R, r, rng):
            cases += 1
            viol += int(not gp.holds)
            worst = min(worst, gp.slack / max(1.0, abs(gp.rhs)))
            if gp.rhs > 0:
                tight.append(gp.lhs / gp.rhs)
    return Outcome(cases, viol, float(worst), viol == 0, tight,
                   "float64: lhs <= rhs + 64·eps·dim·(1+‖·‖)", {"matrices": n_mats, **details})


def _g11_gaps(weyl_factor: float = 1.0) -> Callable[..., list[Any]]:
    def fn(S: np.ndarray, R: np.ndarray, r: int, rng: np.random.Generator) -> list[Any]:
        from mptheory.dynamics import Gap, eckart_young_gap, markov_tail_gap, weyl_gap

        w = weyl_gap(S, R)
        return [Gap(w.lhs, weyl_factor * w.rhs, w.tol), eckart_young_gap(S, R, int(rng.integers(0, r + 1))),
                markov_tail_gap(S + R, float(rng.uniform(0.05, 3.0)))]

    return fn


@register("G11", "bulk collapse pieces: Weyl |s_i(S+R) − s_i(S)| ≤ ‖R‖_op; Eckart–Young tail; Markov tail "
          "ν((ε,∞)) ≤ ‖W‖²_F/(pε²)", "deterministic", _G, "width_bulk_collapse")
def _check_g11(quick: bool, seed: int, weyl_factor: float = 1.0) -> Outcome:
    return _matrix_cases("G11", quick, seed, 3, _g11_gaps(weyl_factor),
                         note="spike stabilisation over training is shown in the width figure (empirical)")


def _sin_theta_gap(S: np.ndarray, R: np.ndarray, r: int, rng: np.random.Generator) -> list[Any]:
    """Yu–Wang–Samworth (2015) Davis–Kahan/Wedin bound for the top-k right singular subspace:
    ‖sinΘ‖_F ≤ 2(2σ₁ + ‖E‖) min(√k‖E‖, ‖E‖_F)/(σ_k² − σ_{k+1}²)."""
    from mptheory.dynamics import Gap

    if r == 0:
        return []
    k = int(rng.integers(1, r + 1))
    _, s, Vt = np.linalg.svd(S)
    _, _, Vt_hat = np.linalg.svd(S + R)
    gap = s[k - 1] ** 2 - (s[k] ** 2 if k < s.size else 0.0)
    if gap <= 1e-9 * s[0] ** 2:
        return []
    V, Vh = Vt[:k].T, Vt_hat[:k].T
    sin2 = max(k - float(np.sum((V.T @ Vh) ** 2)), 0.0)
    e_op = float(np.linalg.norm(R, 2))
    rhs = 2.0 * (2.0 * s[0] + e_op) * min(math.sqrt(k) * e_op, float(np.linalg.norm(R))) / gap
    return [Gap(math.sqrt(sin2), rhs, 1e-9 * (1.0 + rhs))]


register("G12", "subspace stabilisation: ‖sinΘ(top-k of S+R, top-k of S)‖_F ≤ C‖R‖/gap (Yu–Wang–Samworth "
         "form, C explicit)", "deterministic", _G)(
    lambda q, s: _matrix_cases("G12", q, s, 1, _sin_theta_gap))


def _check_g13(quick: bool, seed: int, inverse: Callable[[Any, float], Any] | None = None) -> Outcome:
    from mptheory.dynamics import bbp_experiment
    from mptheory.spikes import inverse_bbp_square

    inv = inverse or (lambda s, g: inverse_bbp_square(s, g))
    Ns = (200, 400, 800) if quick else (250, 500, 1000, 2000)
    errs = []
    for N in Ns:
        res = bbp_experiment(N=N, sigmas=(3.0, 2.0), g=1.0, draws=2 if quick else 4,
                             rng=_seed(seed, f"G13-{N}"))
        est = np.asarray(inv(res.observed, res.g), dtype=np.float64)
        errs.append(float(np.nanmean(np.abs(est - res.sigmas[None, :]) / res.sigmas[None, :])))
    lim = 2.0 / np.sqrt(np.asarray(Ns, dtype=np.float64))
    bad = int(np.sum(np.asarray(errs) > lim))
    return Outcome(len(Ns), bad, float(np.min(lim - np.asarray(errs))), bad == 0, errs,
                   "mean relative error of inverse BBP ≤ 2/√N at every N (consistency at rate N^(-1/2))",
                   {"N": list(Ns), "mean_rel_error": errs, "sigmas": [3.0, 2.0], "g": 1.0})


register("G13", "inverse BBP σ̂ = ½(s + √(s² − 4g)) is consistent for supercritical spikes (σ > √g)",
         "probabilistic", _G, "bbp_map", "trend")(_check_g13)


def _check_g14(quick: bool, seed: int, bbp_map: Callable[[Any, float], Any] | None = None) -> Outcome:
    from mptheory.dynamics import bbp_experiment
    from mptheory.spikes import outlier_location_square

    fmap = bbp_map or (lambda sig, g: outlier_location_square(sig, g))
    N = 500 if quick else 2000
    g = 0.25
    res = bbp_experiment(N=N, sigmas=(1.5, 1.0, 0.3), g=g, draws=2 if quick else 8, rng=_seed(seed, "G14"))
    pred = np.asarray(fmap(res.sigmas, g), dtype=np.float64)
    tol = 3.0 * N ** (-1.0 / 3.0)
    dev = np.abs(res.observed - pred[None, :])
    viol = int(np.sum(dev > tol))
    return Outcome(int(dev.size), viol, float(np.min(tol - dev)), viol == 0, list((dev / tol).ravel()),
                   f"|s_i − (σ_i + g/σ_i or 2√g)| ≤ 3N^(-1/3) = {tol:.3g}",
                   {"N": N, "g": g, "sigmas": res.sigmas, "predicted": pred,
                    "observed_mean": res.observed.mean(axis=0), "bulk_top_mean": float(res.bulk_top.mean())})


register("G14", "BGN/BBP: s_i(S+R) → σ_i + g/σ_i if σ_i > √g else 2√g (R iid N(0,g/N), N×N)",
         "probabilistic", _G, "bbp_map", "monte-carlo")(_check_g14)


@register("G15", "MP bulk: sup_x|F_νW − F_νR| ≤ rank(S)/min(N,M) (exact) and ν_W ≈ MP bulk "
          "(KS ≤ rank/p + 0.05)",
          "deterministic", _G)
def _check_g15(quick: bool, seed: int) -> Outcome:
    from mptheory.dynamics import rank_esd_gap, spiked_matrix
    from mptheory.mp import MarchenkoPastur

    det = _matrix_cases("G15", quick, seed, 1, lambda S, R, r, _g: [rank_esd_gap(S, R, rank=r)])
    rng = _rng(seed, "G15-mp")
    N, M, r, g = (400, 200, 3, 1.0) if quick else (1600, 800, 5, 1.0)
    W = spiked_matrix(N, M, rng.uniform(3.0, 6.0, size=r), rng)
    W = W + rng.standard_normal((N, M)) * math.sqrt(g / N)
    ev = np.sort(np.linalg.eigvalsh(W.T @ W) / N)
    law = MarchenkoPastur(ratio=M / N, sigma2=g / N)
    F = np.asarray(law.cdf(ev))
    i = np.arange(1, ev.size + 1)
    ks = float(max(np.max(i / ev.size - F), np.max(F - (i - 1) / ev.size)))
    lim = r / M + 0.05
    det.cases += 1
    det.violations += int(ks > lim)
    det.passed = det.passed and ks <= lim
    det.details.update({"mp_ks": ks, "mp_ks_limit": lim, "mp_shape": [N, M]})
    return det


# ----------------------------------------------------------------------------------------------------
# negative controls


def _nc_d1(quick: bool, seed: int) -> Outcome:
    from mptheory.certificates import check_d1
    from mptheory.strategies_nets import make_linear_tail_case

    return _run_cases("NC-D1", quick, seed, make_linear_tail_case,
                      lambda c, _r: check_d1(c, lipschitz_scale=0.5), (100, 10) if quick else (2000, 100))


def _nc_d2(quick: bool, seed: int) -> Outcome:
    from mptheory.certificates import check_d2
    from mptheory.strategies_nets import make_adversarial_margin_case

    return _run_cases("NC-D2", quick, seed, make_adversarial_margin_case,
                      lambda c, _r: check_d2(c, margin_factor=1.0), (100, 10) if quick else (2000, 100))


def _nc_d10(quick: bool, seed: int) -> Outcome:
    from mptheory.certificates import check_d10
    from mptheory.strategies_nets import make_multilayer_case

    return _run_cases("NC-D10", quick, seed, make_multilayer_case,
                      lambda c, _r: check_d10(c, lipschitz_scale=0.0), (200, 200) if quick else (2000, 2000))


def _nc_budget(name: str) -> CheckFn:
    def run(quick: bool, seed: int) -> Outcome:
        from mptheory import budgets

        d = 100 if quick else 1000
        if name == "R1":
            r = budgets.check_r1(T=1, draws=d, seed=_seed(seed, "NC-R1"), constant="no_factor2")
        elif name == "R3":
            r = budgets.check_r3(T=1, draws=d, seed=_seed(seed, "NC-R3"), c=2.0)
        else:
            r = budgets.check_r4(T=1, draws=d, seed=_seed(seed, "NC-R4"), constant="no_n")
        return _from_budget([r])

    return run


def _wrong_inverse(s: Any, g: float) -> Any:
    """The authors' inverse-BBP bug: the factor ½ is dropped."""
    sv = np.asarray(s, dtype=np.float64)
    return sv + np.sqrt(np.maximum(sv**2 - 4.0 * g, 0.0))


def _wrong_map(sig: Any, g: float) -> Any:
    """BBP map with g ignored (σ + 1/σ, edge 2): wrong for g ≠ 1."""
    s = np.asarray(sig, dtype=np.float64)
    return np.where(s > 1.0, s + 1.0 / s, 2.0)


NEGATIVE_CONTROLS: list[NegativeControl] = [
    NegativeControl("D1: L_s halved", "D1", "affine tail (exact L_s attained), L_s × 0.5", _nc_d1),
    NegativeControl("D2: margin factor 1", "D2",
                    "adversarial margins in (η, 2η] that flip; factor 1 instead of 2",
                    _nc_d2),
    NegativeControl("D10: budgets dropped", "D10", "telescoped bound with ΣB_j removed (L_s = 0)", _nc_d10),
    NegativeControl("R1: radius without factor 2", "R1",
                    "Gaussian budget with √(g/n·log) instead of √(2g/n·log), "
                    "|T| = 1", _nc_budget("R1")),
    NegativeControl("R3: wrong sub-Gaussian constant", "R3", "c = 2 instead of 1/2 (Rademacher), |T| = 1",
                    _nc_budget("R3")),
    NegativeControl("R4: per-layer radius without n", "R4",
                    "multi-layer budget with the 1/n dropped, |T| = 1",
                    _nc_budget("R4")),
    NegativeControl("G1: τ_N × 0.01", "G1", "logit threshold shrunk 100×",
                    lambda q, s: _check_g1(q, s, 0.01)),
    NegativeControl("G4: τ_N,δ × 0.01", "G4", "simultaneous threshold shrunk 100×",
                    lambda q, s: _check_g4(q, s, 0.01)),
    NegativeControl("G8: threshold halved", "G8", "t/2 admits false positives",
                    lambda q, s: _check_g8(q, s, 0.5)),
    NegativeControl("G11: Weyl bound halved", "G11", "|Δs_i| ≤ ‖R‖_op/2 (tight when S = 0)",
                    lambda q, s: _check_g11(q, s, 0.5)),
    NegativeControl("G13: inverse BBP without ½", "G13", "σ̂ = s + √(s² − 4g) (the authors' code bug)",
                    lambda q, s: _check_g13(q, s, _wrong_inverse)),
    NegativeControl("G14: BBP map ignoring g", "G14", "σ + 1/σ (edge 2) used with g = 1/4",
                    lambda q, s: _check_g14(q, s, _wrong_map)),
]


def run_controls(quick: bool = False, seed: int = 0, claims: Iterable[str] | None = None,
                 progress: bool = False) -> list[ControlResult]:
    """Run the negative controls (those of ``claims`` if given): each must produce violations."""
    sel = None if claims is None else set(claims)
    out = []
    for nc in NEGATIVE_CONTROLS:
        if sel is not None and nc.claim not in sel:
            continue
        t0 = time.perf_counter()
        o = nc.check(quick, seed)
        caught = o.violations > 0 or not o.passed
        out.append(ControlResult(nc.name, nc.claim, nc.description, o.cases, o.violations,
                                 "caught" if caught else "missed", time.perf_counter() - t0,
                                 {"worst_slack": o.worst_slack}))
        if progress:
            print(f"  control {nc.name:<36} {out[-1].status} ({o.violations}/{o.cases})", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------------
# symbolic section (proofs_checks)


def run_symbolic(progress: bool = False) -> list[Verdict]:
    """The sympy checks of :mod:`proofs_checks` as verdict rows (kind ``"symbolic"``)."""
    from proofs_checks.registry import CHECKS as SYM

    out = []
    for name, fn in SYM.items():
        t0 = time.perf_counter()
        det: dict[str, Any]
        try:
            r = fn()
            ok, stmt, det = bool(r.passed), r.statement, {"claims": list(r.claims), "steps": list(r.details)}
        except Exception as exc:  # a crashing symbolic check is a failure, not a crash of verify
            ok, stmt, det = False, name, {"error": repr(exc)}
        out.append(Verdict(f"SYM:{name}", stmt, "symbolic", 1, 0 if ok else 1, 0.0 if ok else -1.0,
                           "pass" if ok else "fail", float("nan"), "sympy simplification to 0",
                           time.perf_counter() - t0, det))
        if progress:
            print(f"  symbolic {name:<24} {out[-1].verdict}", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------------
# verify


def _run_claim(c: Claim, quick: bool, seed: int) -> Verdict:
    t0 = time.perf_counter()
    try:
        o = c.check(quick, seed)
    except Exception as exc:  # report, do not hide: a crashing check fails its claim
        o = Outcome(0, 1, -math.inf, False, [], "", {"error": repr(exc)})
    details = {"evidence": c.evidence, "source": c.source, "figure": c.figure, **o.details}
    return Verdict(c.id, c.statement, c.kind, o.cases, o.violations, o.worst_slack,
                   "pass" if o.passed else "fail", o.median_tightness, o.tolerance,
                   time.perf_counter() - t0, details)


def verify(ids: Iterable[str] | None = None, quick: bool = False, progress: bool = True, seed: int = 0,
           controls: bool = True, symbolic: bool | None = None) -> VerdictList:
    """Run the claims (all, or ``ids``), their negative controls and (for a full selection) the symbolic
    checks. Returns a :class:`VerdictList`; ``.passed`` is the overall verdict."""
    t0 = time.perf_counter()
    sel = list(REGISTRY) if ids is None else [get_claim(i).id for i in ids]
    verdicts = []
    for cid in sel:
        v = _run_claim(REGISTRY[cid], quick, seed)
        verdicts.append(v)
        if progress:
            print(f"  {v.id:<4} {v.verdict:<4} cases={v.cases:<6} viol={v.violations:<4} {v.seconds:6.1f}s",
                  file=sys.stderr)
    ctrl = run_controls(quick, seed, None if ids is None else sel, progress) if controls else []
    sym = run_symbolic(progress) if (symbolic if symbolic is not None else ids is None) else []
    return VerdictList(verdicts, ctrl, sym, quick, seed, time.perf_counter() - t0)
