"""Algebra of the Gaussian data-path budget R1 and its MP-edge form R2 (digest §2.2).

* Tail: for ⟨r_i, v_s⟩ ~ N(0, v) with v = g‖v_s‖²/n, the threshold t = √(2v log(2n|T|/δ)) gives
  2 exp(−t²/(2v)) = δ/(n|T|) exactly; a union bound over n rows and |T| samples gives total failure δ.
  The Gaussian tail P(|Z| > t) = erfc(t/√(2v)) ≤ 2 exp(−t²/(2v)) follows from erfc(u) ≤ e^{−u²} (u ≥ 0),
  proved by h(u) = e^{−u²} − erfc(u): h(0) = 0, h(∞) = 0 and h' = e^{−u²}(2/√π − 2u) changes sign once.
* Per sample, ‖Rv_s‖∞ ≤ t gives the R1 bound (2/|T|) Σ L_s ‖v_s‖₂ √((2g/n) log(2n|T|/δ)).
* R2 is R1 with √g = σ₊,R/(1 + √(m/n)), σ₊,R = √g(1 + √(m/n)) — a pure substitution.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp
from scipy import special

from mptheory.verdict import CheckResult
from proofs_checks.steps import Steps

NAME = "budget_algebra"
STATEMENT = ("The R1 per-entry threshold √(2v log(2n|T|/δ)) has Gaussian tail ≤ δ/(n|T|), the union bound "
             "over n rows and |T| samples gives δ, and R2 equals R1 after √g = σ₊/(1+√(m/n)).")

G, N, M, T, DELTA, V, L, VN = sp.symbols("g n m T delta v L_s vnorm", positive=True)
SIGMA_PLUS = sp.Symbol("sigma_plus", positive=True)

Threshold = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # (v, n, |T|, δ) -> t
Bound = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # per-sample term


def r1_threshold(v: sp.Expr, n: sp.Expr, t: sp.Expr, delta: sp.Expr) -> sp.Expr:
    """t = √(2v log(2n|T|/δ)) for a N(0, v) coordinate."""
    return sp.sqrt(2 * v * sp.log(2 * n * t / delta))


def r1_term(sigma2: sp.Expr, n: sp.Expr, t: sp.Expr, delta: sp.Expr, ls: sp.Expr, vnorm: sp.Expr) -> sp.Expr:
    """One sample's contribution to the R1 bound: 2 L_s ‖v_s‖₂ √((2g/n) log(2n|T|/δ)) (before the 1/|T|)."""
    return 2 * ls * vnorm * sp.sqrt(2 * sigma2 / n * sp.log(2 * n * t / delta))


def r2_term(sigma_plus: sp.Expr, n: sp.Expr, m: sp.Expr, t: sp.Expr, delta: sp.Expr, ls: sp.Expr,
            vnorm: sp.Expr) -> sp.Expr:
    """One sample's R2 contribution: [2σ₊/(1+√(m/n))] √((2/n) log(2n|T|/δ)) L_s ‖v_s‖₂."""
    return 2 * sigma_plus / (1 + sp.sqrt(m / n)) * sp.sqrt(2 / n * sp.log(2 * n * t / delta)) * ls * vnorm


def check(threshold: Threshold | None = None, r2: Callable[..., sp.Expr] | None = None) -> CheckResult:
    """Verify the R1 tail/union algebra for ``threshold`` and the R1 ⇒ R2 substitution for ``r2``."""
    thr = threshold or r1_threshold
    r2_fn = r2 or r2_term
    st = Steps(NAME, STATEMENT, claims=("R1", "R2"))
    t = thr(V, N, T, DELTA)
    tail = sp.simplify(sp.expand_log(2 * sp.exp(-(t**2) / (2 * V)), force=True))
    st.zero("R1: 2 exp(−t²/(2v)) = δ/(n|T|) at the threshold", tail - DELTA / (N * T), f"tail = {tail}")
    st.zero("R1: union bound over n rows × |T| samples sums to δ", N * T * tail - DELTA)
    # erfc(u) <= exp(-u^2) for u >= 0 (so P(|Z| > t) <= exp(-t²/2v) <= 2 exp(-t²/2v))
    u = sp.Symbol("u", nonnegative=True)
    h = sp.exp(-(u**2)) - sp.erfc(u)
    dh = sp.simplify(sp.diff(h, u))
    st.zero("Gaussian tail: h(u) = e^{−u²} − erfc(u) has h(0) = 0", h.subs(u, 0))
    st.zero("Gaussian tail: h(u) → 0 as u → ∞", sp.limit(h, u, sp.oo))
    st.zero("Gaussian tail: h'(u) = e^{−u²}(2/√π − 2u) (one sign change ⇒ h ≥ 0)",
            dh - sp.exp(-(u**2)) * (2 / sp.sqrt(sp.pi) - 2 * u))
    grid = np.linspace(0.0, 6.0, 601)
    gap = float(np.min(np.exp(-grid**2) - special.erfc(grid)))
    st.record("Gaussian tail: e^{−u²} − erfc(u) ≥ 0 on a grid of [0, 6]", gap >= -1e-15, f"min {gap:.3e}")
    # per-sample: v = g ‖v_s‖²/n gives the R1 per-sample term
    per_entry = thr(G * VN**2 / N, N, T, DELTA)
    st.zero("R1: 2 L_s · threshold(g‖v‖²/n) equals the R1 per-sample term",
            2 * L * per_entry - r1_term(G, N, T, DELTA, L, VN))
    # R2: substitute √g = σ₊/(1+√(m/n))
    g_of_sp = (SIGMA_PLUS / (1 + sp.sqrt(M / N))) ** 2
    diff = r1_term(g_of_sp, N, T, DELTA, L, VN) - r2_fn(SIGMA_PLUS, N, M, T, DELTA, L, VN)
    st.zero("R2 = R1 with √g = σ₊,R/(1+√(m/n))", sp.simplify(diff))
    st.zero("σ₊,R = √g(1+√(m/n)) inverts the substitution",
            sp.sqrt(g_of_sp) * (1 + sp.sqrt(M / N)) - SIGMA_PLUS)
    # second line: Monte-Carlo-free numeric spot check of the tail at n=512, |T|=100, δ=0.05, v=0.3
    vv, nn, tt, dd = 0.3, 512, 100, 0.05
    tn = float(sp.N(thr(sp.Float(vv), nn, tt, sp.Float(dd))))
    exact_tail = float(special.erfc(tn / np.sqrt(2 * vv)))
    st.record("numeric: exact Gaussian two-sided tail ≤ δ/(n|T|) at the threshold",
              exact_tail <= dd / (nn * tt), f"tail {exact_tail:.3e} vs {dd / (nn * tt):.3e}")
    return st.finish()
