"""Johnstone's centring/scaling per sample gives the BEMA / TW edge (digest §3.1, peers §7.7, §7.8).

For X of size n × p with iid N(0, σ²) entries, Johnstone (2001): (ℓ₁/σ² − μ_np)/σ_np → TW₁ with
μ_np = (√(n−1) + √p)², σ_np = (√(n−1) + √p)(1/√(n−1) + 1/√p)^{1/3}. With p = c n,
σ²(μ_np + t σ_np)/n = σ²[(1+√c)² + t n^{−2/3} c^{−1/6} (1+√c)^{4/3}] + o(n^{−2/3}).
Derivation: put n = ε^{−6}, √c = r (all powers become integer powers of ε) and show that
[σ²(μ_np + tσ_np)/n − edge(σ², c, n, t)] / ε⁴ → 0 as ε → 0. The exponent is 4/3: the authors' code
parse (1+√c)**4/3 = (1+√c)⁴/3 leaves the nonzero remainder t c^{−1/6}[(1+√c)^{4/3} − (1+√c)⁴/3].
At c = 1 the edge is σ²[4 + 2^{4/3} t n^{−2/3}], the paper's square formula.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

from mptheory.verdict import CheckResult
from proofs_checks.steps import Steps

NAME = "bema_edge"
STATEMENT = ("Johnstone's centring/scaling divided by n equals σ²[(1+√c)² + t n^{−2/3} c^{−1/6}(1+√c)^{4/3}] "
             "to order n^{−2/3} (exponent 4/3, not (1+√c)⁴/3).")

Edge = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # (σ², c, n, t) -> edge

SIGMA2 = sp.Symbol("sigma2", positive=True)
R = sp.Symbol("r", positive=True)
EPS = sp.Symbol("epsilon", positive=True)
T = sp.Symbol("t", real=True)


def tw_edge(sigma2: sp.Expr, ratio: sp.Expr, n: sp.Expr, t: sp.Expr) -> sp.Expr:
    """σ²[(1+√c)² + t n^{−2/3} c^{−1/6} (1+√c)^{4/3}] (Ke–Ma–Lin / Johnstone edge)."""
    return sigma2 * ((1 + sp.sqrt(ratio)) ** 2 + t * n ** sp.Rational(-2, 3) * ratio ** sp.Rational(-1, 6)
                     * (1 + sp.sqrt(ratio)) ** sp.Rational(4, 3))


def johnstone_per_sample(sigma2: sp.Expr, n: sp.Expr, p: sp.Expr, t: sp.Expr) -> sp.Expr:
    """σ²(μ_np + t σ_np)/n."""
    a = sp.sqrt(n - 1) + sp.sqrt(p)
    return sigma2 * (a**2 + t * a * (1 / sp.sqrt(n - 1) + 1 / sp.sqrt(p)) ** sp.Rational(1, 3)) / n


def _numeric(edge: Edge, sigma2: float, ratio: float, n: float, t: float) -> tuple[float, float]:
    a = np.sqrt(n - 1) + np.sqrt(ratio * n)
    exact = sigma2 * (a**2 + t * a * (1 / np.sqrt(n - 1) + 1 / np.sqrt(ratio * n)) ** (1 / 3)) / n
    cand = float(sp.N(edge(sp.Float(sigma2), sp.Float(ratio), sp.Float(n), sp.Float(t))))
    return exact, cand


def check(edge: Edge | None = None) -> CheckResult:
    """Verify that ``edge(sigma2, c, n, t)`` matches Johnstone's law to order n^{−2/3}."""
    edge_fn = edge or tw_edge
    st = Steps(NAME, STATEMENT, claims=("BEMA", "TW"))
    n = EPS ** (-6)
    exact = johnstone_per_sample(SIGMA2, n, R**2 * n, T)
    cand = edge_fn(SIGMA2, R**2, n, T)
    remainder = sp.simplify((exact - cand) / (SIGMA2 * EPS**4))
    lim = sp.simplify(sp.limit(remainder, EPS, 0))
    st.zero("[σ²(μ_np + tσ_np)/n − edge] / n^{−2/3} → 0 as n → ∞ (p = cn)", lim, f"limit {lim}")
    lead = sp.simplify(sp.limit(sp.simplify(exact / SIGMA2), EPS, 0))
    st.zero("leading term (1+√c)² (the MP edge λ₊/σ²)", lead - (1 + R) ** 2)
    sq = sp.simplify(edge_fn(SIGMA2, sp.S.One, n, T) - SIGMA2 * (4 + 2 ** sp.Rational(4, 3) * T * EPS**4))
    st.zero("square case c = 1: edge = σ²[4 + 2^{4/3} t n^{−2/3}]", sq)
    wrong = (1 + R) ** 4 / 3
    st.record("the parse (1+√c)**4/3 = (1+√c)⁴/3 differs from (1+√c)^{4/3} (at c = 1/4)",
              sp.N(((1 + R) ** sp.Rational(4, 3) - wrong).subs(R, sp.Rational(1, 2))) != 0)
    # second line: numeric, relative remainder shrinks like n^{-1/3}
    rems = []
    for nv in (1e4, 1e6, 1e8):
        ex, ca = _numeric(edge_fn, 1.3, 0.25, nv, -2.3)
        rems.append(abs(ex - ca) / (1.3 * nv ** (-2 / 3)))
    st.record("numeric: |exact − edge| / (σ² n^{−2/3}) decreases and is < 0.05 at n = 1e8",
              rems[2] < rems[0] and rems[2] < 0.05, f"remainders {[f'{x:.2e}' for x in rems]}")
    return st.finish()
