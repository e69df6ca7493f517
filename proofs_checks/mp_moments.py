"""MP moments are Narayana polynomials (digest §1.4).

∫ x^k dμ_MP = σ^{2k} Σ_{j=1}^{k} N(k, j) c^{j−1}, N(k, j) = C(k, j) C(k, j−1)/k, for k = 1..6.
Derivation: the same substitution x = a + b cos t as for the mass; x^k/x is a polynomial in cos t, so
the residue sum has the single pole w = 0. Second line: scipy quadrature at c = 0.3, σ² = 1.7.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp
from scipy import integrate

from mptheory.verdict import CheckResult
from proofs_checks._mp import SIGMA2, R, X, integrate_against, mp_density
from proofs_checks.steps import Steps

NAME = "mp_moments"
STATEMENT = "The k-th MP moment equals σ^{2k} Σ_j N(k,j) c^{j−1} (Narayana numbers), k = 1..6."

Moment = Callable[[int, sp.Expr, sp.Expr], sp.Expr]


def narayana(k: int, j: int) -> int:
    """Narayana number N(k, j) = C(k, j) C(k, j−1) / k."""
    if k < 1 or not 1 <= j <= k:
        raise ValueError(f"narayana needs 1 <= j <= k, got k={k}, j={j}")
    return int(sp.binomial(k, j) * sp.binomial(k, j - 1) / k)


def narayana_moment(k: int, sigma2: sp.Expr, ratio: sp.Expr) -> sp.Expr:
    """σ^{2k} Σ_{j=1}^{k} N(k, j) c^{j−1}."""
    return sigma2**k * sum(narayana(k, j) * ratio ** (j - 1) for j in range(1, k + 1))


def check(moment: Moment | None = None, kmax: int = 6) -> CheckResult:
    """Verify ``moment(k, sigma2, c)`` (default: Narayana form) against the MP density for k ≤ kmax."""
    if kmax < 1:
        raise ValueError(f"kmax must be >= 1, got {kmax}")
    mom = narayana_moment if moment is None else moment
    st = Steps(NAME, STATEMENT, claims=("MP",))
    for k in range(1, kmax + 1):
        exact = integrate_against(mp_density, X**k)
        st.zero(f"moment k={k} (symbolic)", exact - mom(k, SIGMA2, R**2), f"{sp.factor(exact)}")
    c_val, s2_val = 0.3, 1.7
    lm, lp = s2_val * (1 - np.sqrt(c_val)) ** 2, s2_val * (1 + np.sqrt(c_val)) ** 2
    f = sp.lambdify(X, mp_density(X, sp.Float(s2_val), sp.Float(c_val)), "numpy")
    for k in (1, kmax):
        num = integrate.quad(lambda x, k=k: x**k * f(x), lm, lp, limit=200)[0]
        st.close(f"quadrature moment k={k} at c={c_val}, σ²={s2_val}", num,
                 complex(sp.N(mom(k, sp.Float(s2_val), sp.Float(c_val)))), rtol=1e-6)
    return st.finish()
