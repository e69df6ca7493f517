"""The MP law in the digest's eigenvalue convention (§1.4), as sympy expressions.

μ_MP(dx) = √((λ₊ − x)(x − λ₋)) / (2π c σ² x) dx on [λ₋, λ₊], λ± = σ²(1 ± √c)², c ∈ (0, 1].
The ratio is parameterised as c = r² with r = √c > 0 so every edge is polynomial in r.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

from proofs_checks._contour import COS, SIN, integral_0_pi, reduce_sqrt_to_sin

X = sp.Symbol("x", positive=True)
SIGMA2 = sp.Symbol("sigma2", positive=True)
R = sp.Symbol("r", positive=True)  # r = sqrt(c)

#: parameter samples with r = √c ∈ (0, 1) used to place poles inside / outside the unit circle
R_SAMPLES = ({R: sp.Rational(1, 10)}, {R: sp.Rational(1, 2)}, {R: sp.Rational(9, 10)})

Density = Callable[[sp.Expr, sp.Expr, sp.Expr], sp.Expr]


def mp_density(x: sp.Expr, sigma2: sp.Expr, ratio: sp.Expr) -> sp.Expr:
    """Digest §1.4 MP density (absolutely continuous part) at x, ratio c ≤ 1, variance σ²."""
    lp = sigma2 * (1 + sp.sqrt(ratio)) ** 2
    lm = sigma2 * (1 - sp.sqrt(ratio)) ** 2
    return sp.sqrt((lp - x) * (x - lm)) / (2 * sp.pi * ratio * sigma2 * x)


def edges(r: sp.Expr = R, sigma2: sp.Expr = SIGMA2) -> tuple[sp.Expr, sp.Expr]:
    """(λ₋, λ₊) with √c = r."""
    return sigma2 * (1 - r) ** 2, sigma2 * (1 + r) ** 2


def x_of_cos(r: sp.Expr = R, sigma2: sp.Expr = SIGMA2) -> sp.Expr:
    """x = a + b cos t mapping t ∈ [0, π] onto [λ₊, λ₋]."""
    lm, lp = edges(r, sigma2)
    return (lp + lm) / 2 + (lp - lm) / 2 * COS


def integrand_in_t(density: Density, r: sp.Expr = R, sigma2: sp.Expr = SIGMA2) -> sp.Expr:
    """density(x(t)) · |dx/dt| as a rational function of (C, S) = (cos t, sin t)."""
    lm, lp = edges(r, sigma2)
    b = (lp - lm) / 2
    expr = density(x_of_cos(r, sigma2), sigma2, r**2) * b * SIN
    expr = sp.factor(sp.expand(expr), COS) if expr.has(COS) else expr
    return reduce_sqrt_to_sin(expr)


def integrate_against(
    density: Density,
    weight: sp.Expr = sp.S.One,
    r: sp.Expr = R,
    sigma2: sp.Expr = SIGMA2,
    samples: Sequence[dict[sp.Symbol, sp.Expr]] | None = None,
) -> sp.Expr:
    """∫_{λ₋}^{λ₊} weight(x) density(x) dx exactly (weight is an expression in ``X``).

    ``samples`` are the parameter values used to classify poles (default: ``R_SAMPLES`` when r is
    the symbol ``R``); they must cover every free symbol of the pole locations.
    """
    F = integrand_in_t(density, r, sigma2) * weight.subs(X, x_of_cos(r, sigma2))
    if samples is None:
        samples = R_SAMPLES if isinstance(r, sp.Symbol) else ({},)
    return integral_0_pi(F, samples)
