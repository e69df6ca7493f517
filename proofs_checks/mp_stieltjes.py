"""Stieltjes transform of MP satisfies σ²c z m² + (z − σ²(1−c)) m + 1 = 0 (digest §1.4, peers §7.1).

m(z) = ∫ dμ_MP(x)/(x − z). Derivation: for real z > λ₊ write z = a + b(q + 1/q)/2 with q = 1 + e > 1
(Joukowski parameter, a = (λ₊+λ₋)/2, b = (λ₊−λ₋)/2); with x = a + b cos t the integral is rational in
(cos t, sin t) and its interior poles are w = 0, −√c and 1/q, so m(z(q)) is computed exactly by
residues. Substituting it into the quadratic gives 0 identically in (σ², √c, e); by the identity
theorem the relation holds on all of ℂ ∖ [λ₋, λ₊]. The closed form
m = (σ²(1−c) − z + √(z−λ₋)√(z−λ₊)) / (2σ²cz) solves the quadratic, agrees with the residue value,
and z·m → −1 as z → ∞ (the other root tends to a nonzero constant, so it is not a Stieltjes transform).
Second line: scipy quadrature at a complex z.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp
from scipy import integrate

from mptheory.verdict import CheckResult
from proofs_checks._mp import R_SAMPLES, SIGMA2, R, X, edges, integrate_against, mp_density
from proofs_checks.steps import Steps, factor_sqrts

NAME = "mp_stieltjes"
STATEMENT = ("The Stieltjes transform m(z) = ∫dμ_MP(x)/(x−z) satisfies σ²c z m² + (z − σ²(1−c)) m + 1 = 0 "
             "and m(z) ~ −1/z at infinity.")

Quadratic = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]

Z = sp.Symbol("z")
M = sp.Symbol("m")
E = sp.Symbol("e", positive=True)  # q = 1 + e > 1


def mp_quadratic(m: sp.Expr, z: sp.Expr, sigma2: sp.Expr, ratio: sp.Expr) -> sp.Expr:
    """σ²c z m² + (z − σ²(1−c)) m + 1 (its zero set contains the MP Stieltjes transform)."""
    return sigma2 * ratio * z * m**2 + (z - sigma2 * (1 - ratio)) * m + 1


def closed_form(z: sp.Expr, sigma2: sp.Expr = SIGMA2, r: sp.Expr = R) -> sp.Expr:
    """(σ²(1−c) − z + √(z−λ₋)√(z−λ₊)) / (2σ²cz), the decaying root (principal square roots)."""
    lm, lp = edges(r, sigma2)
    c = r**2
    return (sigma2 * (1 - c) - z + sp.sqrt(z - lm) * sp.sqrt(z - lp)) / (2 * sigma2 * c * z)


def z_of_e(e: sp.Expr = E) -> sp.Expr:
    """Joukowski parameterisation of z > λ₊: z = a + b (q + 1/q)/2, q = 1 + e."""
    lm, lp = edges()
    q = 1 + e
    return (lp + lm) / 2 + (lp - lm) / 2 * (q + 1 / q) / 2


def exact_stieltjes_real() -> sp.Expr:
    """m(z(e)) for z > λ₊, as an exact expression in (σ², r, e), by residues."""
    samples = [{**s, E: ev} for s in R_SAMPLES for ev in (sp.Rational(1, 10), sp.S.One, sp.S(6))]
    return integrate_against(mp_density, 1 / (X - z_of_e()), samples=samples)


def check(quadratic: Quadratic | None = None) -> CheckResult:
    """Verify that ``quadratic(m, z, sigma2, c)`` vanishes at the MP Stieltjes transform."""
    quad_fn = mp_quadratic if quadratic is None else quadratic
    st = Steps(NAME, STATEMENT, claims=("MP",))
    c = R**2
    m_exact = st.guard("residue evaluation of m(z), z > λ₊", exact_stieltjes_real)
    if m_exact is not None:
        z_e = z_of_e()
        st.zero("quadratic vanishes at the exact m(z) for all z > λ₊", quad_fn(m_exact, z_e, SIGMA2, c))
        st.zero("closed form equals the exact m(z) for z > λ₊", factor_sqrts(closed_form(z_e)) - m_exact)
        lim = sp.limit(sp.simplify(z_e * m_exact), E, sp.oo)
        st.record("z·m(z) → −1 as z → ∞ (m ~ −1/z)", sp.simplify(lim + 1) == 0, f"limit {lim}")
    # the closed form solves the quadratic for every z (square out the product of square roots)
    lm, lp = edges()
    s = sp.Symbol("s")  # s stands for √(z−λ₋)√(z−λ₊), s² = (z−λ₋)(z−λ₊)
    mc = (SIGMA2 * (1 - c) - Z + s) / (2 * SIGMA2 * c * Z)
    resid = sp.expand(sp.numer(sp.together(quad_fn(mc, Z, SIGMA2, c))))
    resid = sp.rem(sp.Poly(resid, s), sp.Poly(s**2 - (Z - lm) * (Z - lp), s)).as_expr()
    st.zero("closed form solves the quadratic for all z", resid)
    # the other root does not decay: z·m_other → −∞·..., m_other → −1/(σ²c)
    m_other = (SIGMA2 * (1 - c) - Z - s) / (2 * SIGMA2 * c * Z)
    lim_other = sp.limit(m_other.subs(s, Z - SIGMA2 * (1 + c)), Z, sp.oo)
    st.record("the other root tends to −1/(σ²c) ≠ 0 (not a Stieltjes transform)",
              sp.simplify(lim_other + 1 / (SIGMA2 * c)) == 0, f"limit {lim_other}")
    # numerical spot check at complex z
    c_val, s2_val, zv = 0.3, 1.2, 0.5 + 0.8j
    lmv, lpv = s2_val * (1 - np.sqrt(c_val)) ** 2, s2_val * (1 + np.sqrt(c_val)) ** 2
    f = sp.lambdify(X, mp_density(X, sp.Float(s2_val), sp.Float(c_val)), "numpy")
    re = integrate.quad(lambda x: (f(x) / (x - zv)).real, lmv, lpv, limit=200)[0]
    im = integrate.quad(lambda x: (f(x) / (x - zv)).imag, lmv, lpv, limit=200)[0]
    m_num = complex(re, im)
    cf = (s2_val * (1 - c_val) - zv + np.sqrt(zv - lmv) * np.sqrt(zv - lpv)) / (2 * s2_val * c_val * zv)
    st.close(f"quadrature m(z) equals closed form at z={zv}", m_num, cf)
    q_num = complex(sp.N(quad_fn(sp.sympify(m_num), sp.sympify(zv), sp.Float(s2_val), sp.Float(c_val))))
    st.close(f"quadratic residual at the quadrature m(z), z={zv}", q_num, 0.0, atol=1e-7)
    return st.finish()
