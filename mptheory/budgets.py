"""Random sufficient conditions for the data-path budget (digest §2.2, claims R1–R5).

The deterministic certificates need the data-path budget

    B_T(R) = (2/|T|) Σ_s L_s ‖R v_s‖∞ ,      v_s = ψ₁(s),

to be small.  When the removed part R is random and independent of the inputs v_s and of
the Lipschitz bounds L_s, B_T(R) is bounded with probability ≥ 1 − δ by explicit formulas:

* R1 (Gaussian, entries N(0, σ²/n)):  (2/|T|) Σ_s L_s ‖v_s‖₂ √((2σ²/n) log(2n|T|/δ)).
* R2 (MP-edge form): the same number written with the nominal edge σ₊,R = σ (1 + √(m/n)).
* R3 (sub-Gaussian rows with constant c): (2/|T|) Σ_s L_s ‖v_s‖₂ √((σ²/(c n)) log(2n|T|/δ)).
* R4/R5: several layers at once, with per-layer failure budgets δ_j, Σ δ_j ≤ δ (union bound).

``sigma2`` is the variance of the normalised noise: R has entries of variance σ²/n (the digest's ``g``);
``c`` is only ever the sub-Gaussian constant.

The δ bookkeeping is explicit: every bound takes the failure probability it is allowed to use,
and :func:`multilayer_budgets` splits a total δ and reports the split.

The Monte-Carlo checks (:func:`check_r1` … :func:`check_r5`) draw R independently of
(L, V), count draws where the realised budget exceeds the bound, and accept when the observed
failure rate is at most δ + 3√(δ(1−δ)/K) (K draws: :func:`mptheory.verdict.binomial_max_rate`) and
return a probabilistic :class:`mptheory.verdict.CheckResult` (:func:`budget_result`; its one tightness
value is the mean realised/bound ratio of the run).  They accept a deliberately wrong ``constant``
so negative controls can show that the checker catches a bound that is too small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from mptheory.verdict import CheckResult, binomial_max_rate

__all__ = [
    "CONSTANT_VARIANTS",
    "LayerBudget",
    "MonteCarloFailure",
    "MultiLayerBudget",
    "binomial_max_rate",
    "budget_result",
    "check_r1",
    "check_r2",
    "check_r3",
    "check_r4",
    "check_r5",
    "gaussian_budget",
    "monte_carlo_budget_failure",
    "multilayer_budgets",
    "nominal_sigma_plus",
    "realised_budget",
    "sigma_plus_budget",
    "split_delta",
    "subgaussian_budget",
]

#: Variants of the R1 radius.  ``"paper"`` is the proved constant; the others are deliberately
#: wrong versions used as negative controls (each is smaller than the proved one).
CONSTANT_VARIANTS = ("paper", "no_factor2", "no_n", "no_log")

Constant = Literal["paper", "no_factor2", "no_n", "no_log"]


# ---------------------------------------------------------------------------------------------
# input validation


def _as_inputs(L: Any, V: Any) -> tuple[np.ndarray, np.ndarray]:
    La = np.asarray(L, dtype=np.float64)
    Va = np.asarray(V, dtype=np.float64)
    if Va.ndim != 2 or Va.shape[0] == 0 or Va.shape[1] == 0:
        raise ValueError(f"V must be a non-empty 2-D array (|T|, m) of vectors v_s; got shape {Va.shape}")
    if La.ndim == 0:
        La = np.full(Va.shape[0], float(La))
    if La.shape != (Va.shape[0],):
        raise ValueError(f"L must be a scalar or have shape (|T|,) = ({Va.shape[0]},); got shape {La.shape}")
    if not np.all(np.isfinite(La)) or not np.all(np.isfinite(Va)):
        raise ValueError("L and V must be finite (found NaN or Inf)")
    if np.any(La < 0):
        raise ValueError("L must be non-negative (Lipschitz bounds L_s ≥ 0)")
    return La, Va


def _check_scalar(name: str, value: float, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}; got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}; got {value!r}")
    return v


def _check_delta(delta: float, name: str = "delta") -> float:
    return _check_scalar(name, delta, low=0.0, high=1.0, low_open=True, high_open=True)


def _check_int(name: str, value: int, low: int = 1) -> int:
    if int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# the bounds


def _radius_factor(n: int, T: int, delta: float, constant: Constant = "paper") -> float:
    """The dimensionless factor r with bound = (2/|T|) Σ L_s ‖v_s‖₂ · √(σ²/n) · r.

    ``paper``: r = √(2 log(2n|T|/δ)).  Wrong variants (negative controls): ``no_factor2``
    r = √(log(2n|T|/δ)); ``no_n`` r = √(2 log(2|T|/δ)) (union bound forgets the n rows);
    ``no_log`` r = √2.
    """
    if constant == "paper":
        return math.sqrt(2.0 * math.log(2.0 * n * T / delta))
    if constant == "no_factor2":
        return math.sqrt(math.log(2.0 * n * T / delta))
    if constant == "no_n":
        return math.sqrt(2.0 * math.log(2.0 * T / delta))
    if constant == "no_log":
        return math.sqrt(2.0)
    raise ValueError(f"constant must be one of {CONSTANT_VARIANTS}; got {constant!r}")


def _weighted_mean_norm(L: np.ndarray, V: np.ndarray) -> float:
    """(1/|T|) Σ_s L_s ‖v_s‖₂."""
    return float(np.mean(L * np.linalg.norm(V, axis=1)))


def gaussian_budget(L: Any, V: Any, sigma2: float, n: int, delta: float, *,
                    constant: Constant = "paper") -> float:
    """R1: bound on B_T(R) holding w.p. ≥ 1 − δ for R ∈ ℝ^{n×m} with iid N(0, σ²/n) entries.

    ``L`` has shape (|T|,) (or is a scalar), ``V`` shape (|T|, m) holds the vectors v_s = ψ₁(s).
    Returns (2/|T|) Σ_s L_s ‖v_s‖₂ √((2σ²/n) log(2n|T|/δ)).  ``constant`` other than ``"paper"``
    gives a deliberately wrong (too small) variant for negative controls.
    """
    La, Va = _as_inputs(L, V)
    sigma2 = _check_scalar("sigma2", sigma2, low=0.0)
    n = _check_int("n", n)
    delta = _check_delta(delta)
    r = _radius_factor(n, Va.shape[0], delta, constant)
    return 2.0 * _weighted_mean_norm(La, Va) * math.sqrt(sigma2 / n) * r


def nominal_sigma_plus(sigma2: float, n: int, m: int) -> float:
    """Nominal singular-value edge σ₊,R = σ (1 + √(m/n)) of R ∈ ℝ^{n×m} with entries N(0, σ²/n)."""
    sigma2 = _check_scalar("sigma2", sigma2, low=0.0)
    n = _check_int("n", n)
    m = _check_int("m", m)
    return math.sqrt(sigma2) * (1.0 + math.sqrt(m / n))


def sigma_plus_budget(L: Any, V: Any, sigma_plus: float, n: int, m: int, delta: float) -> float:
    """R2: the R1 bound written with the nominal MP edge σ₊,R = σ (1 + √(m/n)).

    Returns [2σ₊,R / (1 + √(m/n))] · √((2/n) log(2n|T|/δ)) · (1/|T|) Σ_s L_s ‖v_s‖₂.
    ``V`` must have m columns.  With ``sigma_plus = nominal_sigma_plus(sigma2, n, m)`` this equals
    ``gaussian_budget(L, V, sigma2, n, delta)``; plugging a fitted edge instead is a heuristic.
    """
    La, Va = _as_inputs(L, V)
    sigma_plus = _check_scalar("sigma_plus", sigma_plus, low=0.0)
    n = _check_int("n", n)
    m = _check_int("m", m)
    if Va.shape[1] != m:
        raise ValueError(f"V has {Va.shape[1]} columns but m = {m} (R is n×m, v_s ∈ ℝ^m)")
    delta = _check_delta(delta)
    ratio = 1.0 + math.sqrt(m / n)
    return (2.0 * sigma_plus / ratio) * math.sqrt((2.0 / n) * math.log(2.0 * n * Va.shape[0] / delta)) * (
        _weighted_mean_norm(La, Va)
    )


def subgaussian_budget(L: Any, V: Any, sigma2: float, n: int, delta: float, c: float) -> float:
    """R3: bound for independent centred rows with P(|⟨r_i, v⟩| > t) ≤ 2 exp(−c n t²/(σ²‖v‖²)).

    Returns (2/|T|) Σ_s L_s ‖v_s‖₂ √((σ²/(c n)) log(2n|T|/δ)).  Gaussian N(0, σ²/n) entries and
    Rademacher entries ±√(σ²/n) (Hoeffding) both satisfy the hypothesis with c = 1/2, for which
    this coincides with R1.
    """
    La, Va = _as_inputs(L, V)
    sigma2 = _check_scalar("sigma2", sigma2, low=0.0)
    n = _check_int("n", n)
    delta = _check_delta(delta)
    c = _check_scalar("c", c, low=0.0, low_open=True)
    log_term = math.log(2.0 * n * Va.shape[0] / delta)
    return 2.0 * _weighted_mean_norm(La, Va) * math.sqrt(sigma2 / (c * n) * log_term)


def realised_budget(R: Any, L: Any, V: Any) -> float:
    """The data-path budget B_T(R) = (2/|T|) Σ_s L_s ‖R v_s‖∞ (R: n×m, V: (|T|, m), L: (|T|,)).

    The formula is :func:`mptheory.certificates.budget` (``budget(V, R, L)``); this wrapper keeps this
    module's argument order and validation."""
    from mptheory.certificates import budget

    La, Va = _as_inputs(L, V)
    Ra = np.asarray(R, dtype=np.float64)
    if Ra.ndim != 2 or Ra.shape[1] != Va.shape[1]:
        raise ValueError(f"R must be 2-D with {Va.shape[1]} columns to act on v_s; got shape {Ra.shape}")
    if not np.all(np.isfinite(Ra)):
        raise ValueError("R must be finite (found NaN or Inf)")
    return budget(Va, Ra, La)


def _realised_many(Rs: np.ndarray, L: np.ndarray, V: np.ndarray) -> np.ndarray:
    """B_T for a stack of matrices Rs (K, n, m): returns (K,)."""
    prod = np.abs(np.einsum("knm,tm->ktn", Rs, V))
    return 2.0 * np.mean(L[None, :] * prod.max(axis=2), axis=1)


# ---------------------------------------------------------------------------------------------
# multi-layer bookkeeping (R4 / R5)


@dataclass(frozen=True)
class LayerBudget:
    """One layer of a simultaneous bound: Lipschitz bounds L (|T|,), inputs V (|T|, m), R ∈ ℝ^{n×m}
    with entry variance σ²/n, and ``c`` (None = Gaussian R4; a number = sub-Gaussian R5 constant)."""

    L: Any
    V: Any
    sigma2: float
    n: int
    c: float | None = None


@dataclass
class MultiLayerBudget:
    """Per-layer failure budgets δ_j (Σδ_j ≤ δ) and the per-layer bounds valid simultaneously."""

    delta: float
    deltas: np.ndarray
    bounds: np.ndarray

    @property
    def total(self) -> float:
        """Σ_j bound_j: the total budget to substitute into the multi-layer certificate D10."""
        return float(np.sum(self.bounds))


def split_delta(delta: float, n_layers: int, split: str | Sequence[float] = "equal") -> np.ndarray:
    """Split a total failure probability δ into δ_j ≥ 0 with Σ δ_j ≤ δ.

    ``"equal"`` gives δ/J each; a sequence of non-negative weights gives δ·w_j/Σw.  The result is
    scaled down by one ulp if rounding would make the sum exceed δ.
    """
    delta = _check_delta(delta)
    n_layers = _check_int("n_layers", n_layers)
    if isinstance(split, str):
        if split != "equal":
            raise ValueError(f"split must be 'equal' or a sequence of weights; got {split!r}")
        w = np.ones(n_layers)
    else:
        w = np.asarray(split, dtype=np.float64)
        if w.shape != (n_layers,):
            raise ValueError(f"split weights must have shape ({n_layers},); got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("split weights must be finite, non-negative and not all zero")
    deltas = delta * w / w.sum()
    while deltas.sum() > delta:
        deltas = np.nextafter(deltas, 0.0)
    if np.any(deltas[w > 0] <= 0):
        raise ValueError("a positive weight produced δ_j = 0; weights are too unbalanced")
    return deltas


def multilayer_budgets(layers: Sequence[LayerBudget | Mapping[str, Any]], delta: float,
                       split: str | Sequence[float] = "equal") -> MultiLayerBudget:
    """R4/R5: bounds for several layers holding simultaneously with probability ≥ 1 − δ.

    Each layer j gets δ_j from :func:`split_delta` and its own R1 bound (``c is None``) or R3 bound
    (sub-Gaussian constant ``c``) at level δ_j; by the union bound all hold at once w.p. ≥ 1 − Σδ_j.
    A layer with weight 0 gets δ_j = 0 and an infinite bound.
    """
    if len(layers) == 0:
        raise ValueError("layers must be non-empty")
    specs = [lay if isinstance(lay, LayerBudget) else LayerBudget(**lay) for lay in layers]
    deltas = split_delta(delta, len(specs), split)
    bounds = np.empty(len(specs))
    for j, (spec, dj) in enumerate(zip(specs, deltas, strict=True)):
        if dj == 0:
            bounds[j] = math.inf
        elif spec.c is None:
            bounds[j] = gaussian_budget(spec.L, spec.V, spec.sigma2, spec.n, float(dj))
        else:
            bounds[j] = subgaussian_budget(spec.L, spec.V, spec.sigma2, spec.n, float(dj), spec.c)
    return MultiLayerBudget(delta=float(delta), deltas=deltas, bounds=bounds)


# ---------------------------------------------------------------------------------------------
# Monte-Carlo checks


@dataclass
class MonteCarloFailure:
    """The draws of a Monte-Carlo run of a budget bound: ``failures`` of ``draws`` exceeded the bound at
    probability ``delta``; ``ratios`` are realised/bound per draw. :func:`budget_result` judges it."""

    failures: int
    draws: int
    delta: float
    ratios: np.ndarray

    @property
    def rate(self) -> float:
        return self.failures / self.draws


def _make_inputs(T: int, m: int, rng: np.random.Generator, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs independent of R: heterogeneous norms and Lipschitz constants.

    ``layout="iid"``: independent Gaussian directions.  ``"identical"``: every v_s the same vector,
    so the average over T does not concentrate (the union bound over T is then the binding one).
    """
    L = rng.uniform(0.5, 2.0, size=T)
    if layout == "iid":
        V = rng.standard_normal((T, m)) * rng.uniform(0.2, 3.0, size=(T, 1))
    elif layout == "identical":
        V = np.repeat(rng.standard_normal((1, m)), T, axis=0)
    else:
        raise ValueError(f"layout must be 'iid' or 'identical'; got {layout!r}")
    return L, V


def _draw_R(kind: str, size: tuple[int, ...], sigma2: float, n: int, rng: np.random.Generator) -> np.ndarray:
    scale = math.sqrt(sigma2 / n)
    if kind == "gaussian":
        return rng.standard_normal(size) * scale
    if kind == "rademacher":
        return (rng.integers(0, 2, size=size) * 2.0 - 1.0) * scale
    raise ValueError(f"noise must be 'gaussian' or 'rademacher'; got {kind!r}")


def _mc_ratios(n: int, m: int, T: int, sigma2: float, draws: int, rng: np.random.Generator, bound: float,
               L: np.ndarray, V: np.ndarray, noise: str, chunk: int = 16) -> np.ndarray:
    ratios = np.empty(draws)
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        Rs = _draw_R(noise, (k, n, m), sigma2, n, rng)
        ratios[start:start + k] = _realised_many(Rs, L, V) / bound
    return ratios


def monte_carlo_budget_failure(n: int, m: int, T: int, delta: float, sigma2: float = 1.0, draws: int = 300,
                               rng: np.random.Generator | int | None = None, *,
                               constant: Constant = "paper", layout: str = "iid",
                               noise: str = "gaussian") -> MonteCarloFailure:
    """Failure count of the R1 bound for Gaussian R (n×m, entries N(0, σ²/n)) independent of (L, V).

    One (L, V) with |T| = ``T`` rows is drawn first, then ``draws`` independent R; a failure is a
    draw with B_T(R) > bound.  ``constant`` selects a (possibly wrong) radius, ``layout`` the input
    geometry (see :func:`_make_inputs`), ``noise="rademacher"`` uses ±√(σ²/n) entries.
    """
    n, m, T = _check_int("n", n), _check_int("m", m), _check_int("T", T)
    draws = _check_int("draws", draws)
    delta = _check_delta(delta)
    sigma2 = _check_scalar("sigma2", sigma2, low=0.0, low_open=True)
    gen = np.random.default_rng(rng)
    L, V = _make_inputs(T, m, gen, layout)
    bound = gaussian_budget(L, V, sigma2, n, delta, constant=constant)
    ratios = _mc_ratios(n, m, T, sigma2, draws, gen, bound, L, V, noise)
    return MonteCarloFailure(failures=int(np.sum(ratios > 1.0)), draws=draws, delta=delta, ratios=ratios)


#: what the one tightness value of a budget check is
RUN_TIGHTNESS = "mean realised/bound ratio over the draws of the run"


def budget_result(mc: MonteCarloFailure, **details: Any) -> CheckResult:
    """The probabilistic verdict on a Monte-Carlo run: failure rate ≤ δ + 3√(δ(1−δ)/K)."""
    return CheckResult.frequency(mc.failures, mc.draws, mc.delta, (float(np.mean(mc.ratios)),), RUN_TIGHTNESS,
                                 delta=mc.delta, max_ratio=float(np.max(mc.ratios)), **details)


def check_r1(n: int = 256, m: int = 128, T: int = 50, delta: float = 0.05, sigma2: float = 1.0,
             draws: int = 200, seed: int = 0, *, constant: Constant = "paper",
             layout: str = "iid") -> CheckResult:
    """R1 by Monte Carlo: failure rate of the Gaussian budget ≤ δ + 3√(δ(1−δ)/K).

    With a wrong ``constant`` (e.g. ``"no_factor2"``, ``"no_n"``) and ``layout="identical"``
    (or |T| = 1), where the average over samples cannot hide the error, the check fails.
    """
    mc = monte_carlo_budget_failure(n, m, T, delta, sigma2, draws, np.random.default_rng(seed),
                                    constant=constant, layout=layout)
    return budget_result(mc, claim="R1", n=n, m=m, T=T, sigma2=sigma2, constant=constant, layout=layout)


def check_r2(n: int = 256, m: int = 128, T: int = 50, delta: float = 0.05, sigma2: float = 1.0,
             draws: int = 200, seed: int = 0, identity_cases: int = 50) -> CheckResult:
    """R2: (i) the σ₊ form equals R1 (relative error ≤ 1e-12 on random cases), (ii) Monte Carlo of
    the σ₊-form bound with the nominal edge, (iii) s₁(R) within 10 % of σ₊,R in every draw checked.

    Violations count Monte-Carlo failures plus identity mismatches plus edge mismatches; the
    verdict also requires the failure rate to be within the binomial tolerance.
    """
    gen = np.random.default_rng(seed)
    worst_rel = 0.0
    for _ in range(_check_int("identity_cases", identity_cases)):
        nn, mm, tt = (int(x) for x in gen.integers(1, 300, size=3))
        s2 = float(gen.uniform(1e-3, 4.0))
        dd = float(gen.uniform(1e-4, 0.5))
        L, V = _make_inputs(tt, mm, gen, "iid")
        a = gaussian_budget(L, V, s2, nn, dd)
        b = sigma_plus_budget(L, V, nominal_sigma_plus(s2, nn, mm), nn, mm, dd)
        worst_rel = max(worst_rel, abs(a - b) / max(abs(a), 1e-300))
    identity_bad = int(worst_rel > 1e-12)
    L, V = _make_inputs(T, m, gen, "iid")
    sp = nominal_sigma_plus(sigma2, n, m)
    bound = sigma_plus_budget(L, V, sp, n, m, delta)
    ratios = _mc_ratios(n, m, T, sigma2, draws, gen, bound, L, V, "gaussian")
    # edge: top singular value of a few draws vs the nominal edge
    edge_rel = []
    for _ in range(min(5, draws)):
        s1 = np.linalg.norm(_draw_R("gaussian", (n, m), sigma2, n, gen), ord=2)
        edge_rel.append(abs(s1 / sp - 1.0))
    edge_bad = int(np.sum(np.asarray(edge_rel) > 0.10))
    mc = budget_result(MonteCarloFailure(int(np.sum(ratios > 1.0)), draws, delta, ratios), claim="R2",
                       identity_max_rel_err=worst_rel, edge_max_rel_err=float(max(edge_rel)), sigma_plus=sp)
    return replace(mc, cases=mc.cases + identity_cases, violations=mc.violations + identity_bad + edge_bad,
                   passed=mc.passed and identity_bad == 0 and edge_bad == 0)


def check_r3(n: int = 256, m: int = 128, T: int = 50, delta: float = 0.05, sigma2: float = 1.0,
             draws: int = 200, seed: int = 0, *, c: float = 0.5) -> CheckResult:
    """R3 by Monte Carlo with Rademacher entries ±√(σ²/n) (sub-Gaussian with c = 1/2 by Hoeffding).

    A ``c`` larger than the true constant shrinks the bound and should fail (negative control).
    """
    n, m, T = _check_int("n", n), _check_int("m", m), _check_int("T", T)
    delta = _check_delta(delta)
    gen = np.random.default_rng(seed)
    L, V = _make_inputs(T, m, gen, "identical" if T == 1 else "iid")
    bound = subgaussian_budget(L, V, sigma2, n, delta, c)
    ratios = _mc_ratios(n, m, T, sigma2, draws, gen, bound, L, V, "rademacher")
    mc = MonteCarloFailure(int(np.sum(ratios > 1.0)), draws, delta, ratios)
    return budget_result(mc, claim="R3", c=c, noise="rademacher")


def _check_multilayer(claim: str, shapes: Sequence[tuple[int, int]], sigma2s: Sequence[float], T: int,
                      delta: float, draws: int, seed: int, split: str | Sequence[float], noise: str,
                      c: float | None, layout: str, constant: Constant) -> CheckResult:
    if len(shapes) != len(sigma2s) or len(shapes) == 0:
        raise ValueError(f"shapes ({len(shapes)}) and sigma2s ({len(sigma2s)}) must be non-empty and of "
                         "equal length")
    gen = np.random.default_rng(seed)
    specs = []
    for (n, m), s2 in zip(shapes, sigma2s, strict=True):
        L, V = _make_inputs(T, m, gen, layout)
        specs.append(LayerBudget(L=L, V=V, sigma2=s2, n=n, c=c))
    ml = multilayer_budgets(specs, delta, split)
    if constant != "paper":  # negative control: recompute each layer's bound with a wrong radius
        bounds = np.array([gaussian_budget(s.L, s.V, s.sigma2, s.n, float(d), constant=constant)
                           for s, d in zip(specs, ml.deltas, strict=True)])
    else:
        bounds = ml.bounds
    ratios = np.stack([
        _mc_ratios(s.n, np.asarray(s.V).shape[1], T, s.sigma2, draws, gen, float(b), np.asarray(s.L),
                   np.asarray(s.V), noise)
        for s, b in zip(specs, bounds, strict=True)
    ])  # (layers, draws)
    failures = int(np.any(ratios > 1.0, axis=0).sum())
    sum_ok = bool(ml.deltas.sum() <= delta)
    res = CheckResult.frequency(failures, draws, delta, (float(np.mean(ratios.max(axis=0))),),
                                "mean over the draws of the largest per-layer realised/bound ratio",
                                claim=claim, deltas=ml.deltas.tolist(), sum_deltas=float(ml.deltas.sum()),
                                bounds=bounds.tolist(), constant=constant)
    return replace(res, violations=res.violations + (0 if sum_ok else 1), passed=res.passed and sum_ok)


def check_r4(shapes: Sequence[tuple[int, int]] = ((128, 64), (96, 128), (64, 32)),
             sigma2s: Sequence[float] = (1.0, 0.5, 2.0), T: int = 30, delta: float = 0.05, draws: int = 200,
             seed: int = 0, *, split: str | Sequence[float] = "equal", layout: str = "iid",
             constant: Constant = "paper") -> CheckResult:
    """R4: Gaussian layers, δ split across layers; a failure is a draw where *any* layer exceeds its
    bound.  Passes when Σδ_j ≤ δ and the simultaneous failure rate is within the binomial tolerance."""
    return _check_multilayer("R4", shapes, sigma2s, T, delta, draws, seed, split, "gaussian", None, layout,
                             constant)


def check_r5(shapes: Sequence[tuple[int, int]] = ((128, 64), (96, 128), (64, 32)),
             sigma2s: Sequence[float] = (1.0, 0.5, 2.0), T: int = 30, delta: float = 0.05, draws: int = 200,
             seed: int = 0, *, split: str | Sequence[float] = "equal", c: float = 0.5,
             layout: str = "iid") -> CheckResult:
    """R5: as R4 with Rademacher (sub-Gaussian, c = 1/2) layers and the R3 bound per layer."""
    return _check_multilayer("R5", shapes, sigma2s, T, delta, draws, seed, split, "rademacher", c, layout,
                             "paper")
