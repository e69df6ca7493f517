"""BBP outlier maps and their inverses (digest §2.4 G13/G14, §3.1 "spike shift"; peers §7.2, §7.5).

* Rectangular signal-plus-noise: y(x) = √((1+x²)(c+x²))/x and
  x(y) = √((y² − c − 1 + √((y² − c − 1)² − 4c))/2) are inverse on x > c^{1/4};
  y(c^{1/4}) = 1 + √c (threshold meets the bulk edge); d(y²)/dx = 2(x⁴ − c)/x³ > 0 for x > c^{1/4}.
* Square variance-g (G13/G14): s(σ) = σ + g/σ and σ̂(s) = ½(s + √(s² − 4g)) are inverse on σ > √g;
  s(√g) = 2√g (the square edge).
* Spiked covariance (DGJ 2018): λ(ℓ) = ℓ(1 + γ/(ℓ−1)) and
  ℓ(λ) = ((λ + 1 − γ) + √((λ + 1 − γ)² − 4λ))/2 are inverse on ℓ > 1 + √γ; λ(1+√γ) = (1+√γ)².

Supercritical ranges are encoded exactly by positive symbols: x⁴ = c + d, σ² = g + e,
(ℓ − 1)² = γ + e with d, e > 0, so every inner square root is of a perfect square with known sign.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from mptheory.verdict import CheckResult
from proofs_checks.steps import Steps, factor_sqrts

NAME = "bbp"
STATEMENT = ("The rectangular BBP map y(x) = √((1+x²)(c+x²))/x, the square map s = σ + g/σ and the DGJ map "
             "λ = ℓ(1+γ/(ℓ−1)) are increasing bijections above their thresholds, with the stated closed-form "
             "inverses, and each threshold maps onto the MP bulk edge.")

Map2 = Callable[[sp.Expr, sp.Expr], sp.Expr]

C = sp.Symbol("c", positive=True)
G = sp.Symbol("g", positive=True)
GAMMA = sp.Symbol("gamma", positive=True)
D = sp.Symbol("d", positive=True)
EPS = sp.Symbol("e", positive=True)
XS = sp.Symbol("x", positive=True)
Q = sp.Symbol("q", positive=True)  # q = c^{1/4}


def rect_forward(x: sp.Expr, ratio: sp.Expr) -> sp.Expr:
    """y(x) = √((1+x²)(c+x²))/x (signal x, ratio c, noise-normalised singular values)."""
    return sp.sqrt((1 + x**2) * (ratio + x**2)) / x


def rect_inverse(y: sp.Expr, ratio: sp.Expr) -> sp.Expr:
    """x(y) = √((y² − c − 1 + √((y² − c − 1)² − 4c))/2)."""
    return sp.sqrt((y**2 - ratio - 1 + sp.sqrt((y**2 - ratio - 1) ** 2 - 4 * ratio)) / 2)


def square_forward(theta: sp.Expr, sigma2: sp.Expr) -> sp.Expr:
    """s(θ) = θ + σ²/θ (square N×N, noise variance σ²/N; the digest writes σ + g/σ)."""
    return theta + sigma2 / theta


def square_inverse(s: sp.Expr, sigma2: sp.Expr) -> sp.Expr:
    """θ̂(s) = ½(s + √(s² − 4σ²)) (the digest's ½(s + √(s² − 4g)))."""
    return (s + sp.sqrt(s**2 - 4 * sigma2)) / 2


def dgj_forward(ell: sp.Expr, gamma: sp.Expr) -> sp.Expr:
    """λ(ℓ) = ℓ(1 + γ/(ℓ − 1)) (population spike ℓ → top sample eigenvalue)."""
    return ell * (1 + gamma / (ell - 1))


def dgj_inverse(lam: sp.Expr, gamma: sp.Expr) -> sp.Expr:
    """ℓ(λ) = ((λ + 1 − γ) + √((λ + 1 − γ)² − 4λ))/2 (DGJ debiasing)."""
    return ((lam + 1 - gamma) + sp.sqrt((lam + 1 - gamma) ** 2 - 4 * lam)) / 2


def _round_trip(st: Steps, label: str, fwd: Map2, inv: Map2, point: sp.Expr, par: sp.Expr) -> None:
    """Record inv(fwd(point)) == point symbolically."""
    expr = factor_sqrts(fwd(point, par))
    back = factor_sqrts(sp.factor(inv(expr, par)))
    back = factor_sqrts(sp.simplify(back))
    st.zero(label, back - point)


def _numeric_round_trip(st: Steps, label: str, fwd: Map2, inv: Map2, pts: list[tuple[float, float]]) -> None:
    for p, par in pts:
        got = complex(sp.N(inv(fwd(sp.Float(p), sp.Float(par)), sp.Float(par))))
        st.close(f"{label} at ({p}, {par})", got, p, rtol=1e-10)


def _increasing(st: Steps, label: str, fwd: Map2, var: sp.Symbol, par: sp.Expr, point: sp.Expr,
                at_threshold: sp.Expr) -> None:
    """d fwd/d var > 0 at every supercritical point (positive symbols) and = 0 at the threshold."""
    deriv = sp.diff(fwd(var, par) ** 2, var)
    sup = sp.factor(factor_sqrts(sp.simplify(deriv.subs(var, point))))
    st.record(f"{label}: derivative positive above threshold", sup.is_positive is True, f"d/dx(f²) = {sup}")
    thr = sp.simplify(factor_sqrts(deriv.subs(var, at_threshold)))
    st.record(f"{label}: derivative vanishes at the threshold", thr == 0, f"{thr}")


def check(
    forward: Map2 | None = None,
    inverse: Map2 | None = None,
    sq_forward: Map2 | None = None,
    sq_inverse: Map2 | None = None,
    dgj_fwd: Map2 | None = None,
    dgj_inv: Map2 | None = None,
) -> CheckResult:
    """Verify the three forward/inverse pairs (any argument replaces the default formula under test)."""
    fwd = forward or rect_forward
    inv = inverse or rect_inverse
    sfw = sq_forward or square_forward
    sinv = sq_inverse or square_inverse
    dfw = dgj_fwd or dgj_forward
    dinv = dgj_inv or dgj_inverse
    st = Steps(NAME, STATEMENT, claims=("G13", "G14"))
    # rectangular map, x = (c + d)^{1/4}
    x_sup = (C + D) ** sp.Rational(1, 4)
    _round_trip(st, "rectangular: x(y(x)) = x for x > c^{1/4}", fwd, inv, x_sup, C)
    thr = sp.simplify(factor_sqrts(fwd(Q, Q**4)))
    st.zero("rectangular: y(c^{1/4}) = 1 + √c", thr - (1 + Q**2), f"y = {thr}")
    _increasing(st, "rectangular", fwd, XS, C, x_sup, C ** sp.Rational(1, 4))
    _numeric_round_trip(st, "rectangular numeric round trip", fwd, inv, [(0.9, 0.25), (2.0, 1.0), (1.3, 0.6)])
    # square variance-g map, σ = √(g + e)
    sig_sup = sp.sqrt(G + EPS)
    _round_trip(st, "square: σ̂(s(σ)) = σ for σ > √g", sfw, sinv, sig_sup, G)
    st.zero("square: s(√g) = 2√g (square MP edge)", sfw(sp.sqrt(G), G) - 2 * sp.sqrt(G))
    _increasing(st, "square", sfw, XS, G, sig_sup, sp.sqrt(G))
    _numeric_round_trip(st, "square numeric round trip", sfw, sinv, [(1.5, 1.0), (0.8, 0.2)])
    # DGJ eigenvalue map, ℓ = 1 + √(γ + e)
    ell_sup = 1 + sp.sqrt(GAMMA + EPS)
    _round_trip(st, "DGJ: ℓ(λ(ℓ)) = ℓ for ℓ > 1 + √γ", dfw, dinv, ell_sup, GAMMA)
    st.zero("DGJ: λ(1 + √γ) = (1 + √γ)²", dfw(1 + sp.sqrt(GAMMA), GAMMA) - (1 + sp.sqrt(GAMMA)) ** 2)
    _increasing(st, "DGJ", dfw, XS, GAMMA, ell_sup, 1 + sp.sqrt(GAMMA))
    _numeric_round_trip(st, "DGJ numeric round trip", dfw, dinv, [(3.0, 0.5), (2.2, 1.0)])
    return st.finish()
