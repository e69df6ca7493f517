"""MP edges are the branch points of the Stieltjes quadratic (digest §1.4, DESIGN "MP scale").

The discriminant of σ²c z m² + (z − σ²(1−c)) m + 1 in m is (z − σ²(1−c))² − 4σ²cz, whose roots are
λ± = σ²(1 ± √c)². Between the roots the discriminant is negative and Stieltjes inversion
Im m(x + i0)/π = √(−disc)/(2π σ²c x) reproduces the MP density exactly. Singular-value edge: for
W of shape N×M (N ≥ M), eigenvalues of WᵀW/N have edge λ₊, so s₊ = √(N λ₊) = σ(√N + √M) at c = M/N.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

from mptheory.verdict import CheckResult
from proofs_checks._mp import SIGMA2, R, X, mp_density
from proofs_checks.mp_stieltjes import M, Z, mp_quadratic
from proofs_checks.steps import Steps

NAME = "mp_edges"
STATEMENT = ("The MP edges λ± = σ²(1 ± √c)² are the roots of the discriminant of the Stieltjes quadratic, "
             "and the singular-value edge √(N λ₊) equals σ(√N + √M) when c = M/N.")

Edges = Callable[[sp.Expr, sp.Expr], tuple[sp.Expr, sp.Expr]]
SingularEdge = Callable[[sp.Expr, sp.Expr, sp.Expr], sp.Expr]

SIGMA = sp.Symbol("sigma", positive=True)
N_ROWS = sp.Symbol("n", positive=True)  # N = n²
M_COLS = sp.Symbol("m", positive=True)  # M = m²


def mp_edges(sigma2: sp.Expr, ratio: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(λ₋, λ₊) = (σ²(1 − √c)², σ²(1 + √c)²)."""
    return sigma2 * (1 - sp.sqrt(ratio)) ** 2, sigma2 * (1 + sp.sqrt(ratio)) ** 2


def singular_edge(sigma: sp.Expr, n: sp.Expr, m: sp.Expr) -> sp.Expr:
    """σ(√N + √M): the top-singular-value edge of an N×M matrix with iid entries of variance σ²."""
    return sigma * (sp.sqrt(n) + sp.sqrt(m))


def check(edges: Edges | None = None, singular: SingularEdge | None = None) -> CheckResult:
    """Verify the candidate ``edges(sigma2, c)`` and ``singular(sigma, N, M)`` formulas."""
    edge_fn = mp_edges if edges is None else edges
    sing_fn = singular_edge if singular is None else singular
    st = Steps(NAME, STATEMENT, claims=("MP",))
    c = R**2
    poly = sp.Poly(sp.expand(mp_quadratic(M, Z, SIGMA2, c)), M)
    a2, a1, a0 = poly.all_coeffs()
    disc = sp.expand(a1**2 - 4 * a2 * a0)
    lm, lp = edge_fn(SIGMA2, c)
    roots = sp.solve(disc, Z)
    st.record("discriminant has two real roots", len(roots) == 2, f"roots {roots}")
    st.zero("discriminant = (z − λ₋)(z − λ₊) with the candidate edges", disc - sp.expand((Z - lm) * (Z - lp)))
    st.record("λ₋ < λ₊ on 0 < c ≤ 1 (checked at √c = 1/2, 1)",
              all(float(sp.N((lp - lm).subs({R: rv, SIGMA2: 1}))) > 0 for rv in (sp.Rational(1, 2), 1)))
    inv = sp.simplify(-disc / (2 * a2) ** 2 - (sp.pi * mp_density(X, SIGMA2, c)) ** 2).subs(Z, X)
    st.zero("Stieltjes inversion: (Im m(x+i0))² = (π f_MP(x))² on the support", sp.expand(inv))
    # singular-value edge: λ₊ = the larger discriminant root; c = M/N with N = n², M = m² (n, m > 0)
    half = {R: sp.Rational(1, 2), SIGMA2: 1}
    lp_sym = max(roots, key=lambda rt: float(sp.N(rt.subs(half)))) if roots else lp
    lp_nm = lp_sym.subs(R, M_COLS / N_ROWS).subs(SIGMA2, SIGMA**2)
    s_plus = sp.sqrt(sp.factor(N_ROWS**2 * lp_nm))
    st.zero("√(N λ₊) = candidate singular edge at c = M/N", s_plus - sing_fn(SIGMA, N_ROWS**2, M_COLS**2))
    # second line: a 400×100 Gaussian matrix's top singular value is near σ(√N + √M)
    rng = np.random.default_rng(0)
    n, m, sig = 400, 100, 1.3
    top = np.linalg.svd(rng.normal(0.0, sig, size=(n, m)), compute_uv=False)[0]
    st.close("top singular value of a 400×100 Gaussian matrix within 3 % of the edge", top,
             complex(sp.N(sing_fn(sp.Float(sig), sp.Integer(n), sp.Integer(m)))), rtol=0.03)
    return st.finish()
