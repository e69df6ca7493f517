"""MP density has total mass 1 (digest §1.4, peers §7.1).

Derivation: x = a + b cos t maps [0, π] onto [λ₊, λ₋] with (λ₊ − x)(x − λ₋) = b² sin² t, so the mass
is a rational trigonometric integral, evaluated exactly by residues (w = e^{it}); the only interior
poles are w = 0 and w = −√c. The case c = 1 (λ₋ = 0) is done separately. Second line: scipy quadrature.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from scipy import integrate

from mptheory.verdict import CheckResult
from proofs_checks._mp import Density, X, integrate_against, mp_density
from proofs_checks.steps import Steps

NAME = "mp_mass"
STATEMENT = ("The MP density √((λ₊−x)(x−λ₋))/(2πcσ²x) on [λ₋,λ₊], λ± = σ²(1±√c)², "
             "has total mass 1 for c∈(0,1].")


def check(density: Density | None = None) -> CheckResult:
    """Verify that ``density(x, sigma2, c)`` (default: the MP density) integrates to 1 for c ∈ (0, 1]."""
    dens = mp_density if density is None else density
    st = Steps(NAME, STATEMENT, claims=("MP",))
    mass = st.guard("mass for 0 < c < 1 (residues)", integrate_against, dens)
    if mass is not None:
        st.zero("mass for 0 < c < 1 equals 1 (symbolic in σ², √c)", mass - 1, f"mass = {mass}")
    mass1 = st.guard("mass for c = 1 (residues)", integrate_against, dens, sp.S.One, sp.S.One)
    if mass1 is not None:
        st.zero("mass for c = 1 equals 1", mass1 - 1, f"mass = {mass1}")
    # second line: numerical quadrature at a few parameter values
    for c_val, s2_val in ((0.25, 1.0), (0.7, 2.5), (1.0, 0.3)):
        f = sp.lambdify(X, dens(X, sp.Float(s2_val), sp.Float(c_val)), "numpy")
        lm, lp = s2_val * (1 - np.sqrt(c_val)) ** 2, s2_val * (1 + np.sqrt(c_val)) ** 2
        val = st.guard("quadrature", lambda f=f, lm=lm, lp=lp: integrate.quad(f, lm, lp, limit=200)[0])
        if val is not None:
            st.close(f"quadrature mass at c={c_val}, σ²={s2_val}", val, 1.0, rtol=1e-6)
    return st.finish()

