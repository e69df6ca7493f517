"""T13: the deterministic matrix facts behind G11 and G15, as :class:`~mptheory.verdict.Inequality` objects.

* :func:`weyl_gap` — Weyl: ``max_i |s_i(S + R) − s_i(S)| ≤ ‖R‖_op``;
* :func:`rank_esd_gap` — G15: ``sup_x |F_{ν_W}(x) − F_{ν_R}(x)| ≤ rank(S)/min(N, M)``;
* :func:`eckart_young_gap` — G11: ``Σ_{i>k} s_i(S + R)² ≤ 2‖R‖²_F + 2 Σ_{i>k} σ_i(S)²``;
* :func:`markov_tail_gap` — G11: ``ν_W((ε, ∞)) ≤ ‖W‖²_F/(p ε²)``.

Each returns one inequality (one case) with an absolute floating-point allowance (``atol``, no relative
tolerance). :func:`random_perturbation` draws the random spiked matrices they are checked on and
:func:`perturbation_result` aggregates a list of such facts over many matrices (the claims G11, G12 and G15
use both); :func:`check_t13` runs all four.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mptheory.dynamics._common import Array, _matrix, _pos_int, _rng
from mptheory.spikes import low_rank_signal
from mptheory.verdict import CheckResult, Inequality

__all__ = [
    "check_t13",
    "eckart_young_gap",
    "markov_tail_gap",
    "perturbation_result",
    "random_perturbation",
    "rank_esd_gap",
    "relative_slack",
    "weyl_gap",
]


def _sv(A: Array) -> Array:
    return np.linalg.svd(A, compute_uv=False)


def _eps(*mats: Array) -> float:
    scale = max(float(np.linalg.norm(m)) for m in mats)
    return 64.0 * np.finfo(np.float64).eps * max(mats[0].shape) * (1.0 + scale)


def _pair(S: Any, R: Any) -> tuple[Array, Array]:
    S, R = _matrix("S", S), _matrix("R", R)
    if S.shape != R.shape:
        raise ValueError(f"S {S.shape} and R {R.shape} must have the same shape")
    return S, R


def weyl_gap(S: Any, R: Any) -> Inequality:
    """Weyl: max_i |s_i(S + R) − s_i(S)| ≤ ‖R‖_op."""
    S, R = _pair(S, R)
    lhs = float(np.max(np.abs(_sv(S + R) - _sv(S))))
    return Inequality("Weyl", np.asarray(lhs), np.asarray(np.linalg.norm(R, 2)), rtol=0.0, atol=_eps(S, R))


def rank_esd_gap(S: Any, R: Any, rank: int | None = None) -> Inequality:
    """G15: sup_x |F_{ν_W}(x) − F_{ν_R}(x)| ≤ rank(S)/min(N, M), W = S + R, ν = singular-value ESD
    (1/min(N,M)) Σ δ_{s_i}.  ``rank`` defaults to the numerical rank of S.  A shift of 2·tol in x
    absorbs floating-point errors of the singular values."""
    S, R = _pair(S, R)
    p = min(S.shape)
    r = int(np.linalg.matrix_rank(S)) if rank is None else _pos_int("rank", rank, 0)
    sw, sr = np.sort(_sv(S + R)), np.sort(_sv(R))
    tol = _eps(S, R)
    d1 = np.max(np.searchsorted(sw, sw, side="right") - np.searchsorted(sr, sw + 2 * tol, side="right"))
    d2 = np.max(np.searchsorted(sr, sr, side="right") - np.searchsorted(sw, sr + 2 * tol, side="right"))
    lhs = max(float(d1), float(d2), 0.0) / p
    return Inequality("G15 rank-ESD", np.asarray(lhs), np.asarray(r / p), rtol=0.0)


def eckart_young_gap(S: Any, R: Any, k: int) -> Inequality:
    """G11: Σ_{i>k} s_i(S + R)² ≤ 2‖R‖²_F + 2 Σ_{i>k} σ_i(S)²."""
    S, R = _pair(S, R)
    k = _pos_int("k", k, 0)
    lhs = float(np.sum(_sv(S + R)[k:] ** 2))
    rhs = 2.0 * float(np.sum(R**2)) + 2.0 * float(np.sum(_sv(S)[k:] ** 2))
    return Inequality("G11 Eckart-Young tail", np.asarray(lhs), np.asarray(rhs), rtol=0.0,
                      atol=_eps(S, R) * (1.0 + rhs))


def markov_tail_gap(W: Any, eps: float) -> Inequality:
    """G11: ν_W((ε, ∞)) = #{s_i > ε}/p ≤ ‖W‖²_F/(p ε²), p = min(N, M) (= N for the square case)."""
    W = _matrix("W", W)
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps!r}")
    p = min(W.shape)
    lhs = float(np.sum(_sv(W) > eps)) / p
    rhs = float(np.sum(W**2)) / (p * eps**2)
    return Inequality("G11 Markov tail", np.asarray(lhs), np.asarray(rhs), rtol=0.0)


def random_perturbation(rng: np.random.Generator, max_dim: int = 40) -> tuple[Array, Array, int]:
    """A random test pair: shape (N, M) with 2 ≤ N, M ≤ ``max_dim``, a rank-r signal S (0 ≤ r ≤ min(N, M),
    singular values uniform in [0.1, 5]) and Gaussian noise R of a random scale (0.01 to 2)/√N.
    Returns (S, R, r)."""
    N, M = (int(x) for x in rng.integers(2, max_dim + 1, size=2))
    r = int(rng.integers(0, min(N, M) + 1))
    S = low_rank_signal((N, M), rng.uniform(0.1, 5.0, size=r), rng)
    R = rng.standard_normal((N, M)) * rng.uniform(0.01, 2.0) / math.sqrt(N)
    return S, R, r


def relative_slack(q: Inequality) -> float:
    """The smallest slack of ``q`` normalised by max(1, |rhs|) (comparable across the four facts)."""
    return float(np.min(q.slack / np.maximum(1.0, np.abs(q.rhs))))


PERTURBATION_TOL = "float64: lhs <= rhs + 64·eps·dim·(1+‖·‖)"


def perturbation_result(rng: np.random.Generator, n_mats: int,
                        facts: Callable[[Array, Array, int, np.random.Generator], list[Inequality]],
                        max_dim: int = 40, **details: Any) -> CheckResult:
    """Check ``facts(S, R, r, rng)`` (a list of inequalities, one case each) on ``n_mats`` matrices from
    :func:`random_perturbation`. ``worst_slack`` is the smallest :func:`relative_slack`; the tightness
    values are lhs/rhs of every inequality with rhs > 0."""
    violations, worst, tight, cases = 0, math.inf, [], 0
    for _ in range(_pos_int("n_mats", n_mats)):
        S, R, r = random_perturbation(rng, max_dim)
        for q in facts(S, R, r, rng):
            cases += q.cases
            violations += q.violations
            worst = min(worst, relative_slack(q))
            if q.rhs > 0:
                tight.append(float(q.lhs / q.rhs))
    return CheckResult(cases, violations, float(worst), violations == 0, kind="deterministic",
                       tightness=tuple(tight), tightness_stat="lhs/rhs per inequality",
                       tolerance=PERTURBATION_TOL, details=details)


def _four_facts(S: Array, R: Array, r: int, rng: np.random.Generator) -> list[Inequality]:
    k = int(rng.integers(0, r + 1))
    return [weyl_gap(S, R), rank_esd_gap(S, R, rank=r), eckart_young_gap(S, R, k),
            markov_tail_gap(S + R, float(rng.uniform(0.05, 3.0)))]


def check_t13(cases: int = 40, seed: int = 0, max_dim: int = 40) -> CheckResult:
    """All four T13 inequalities on ``cases`` :func:`random_perturbation` matrices (4 cases each); see
    :func:`perturbation_result` for the slack and the tightness."""
    return perturbation_result(_rng(seed), _pos_int("cases", cases), _four_facts, max_dim, claim="T13")
