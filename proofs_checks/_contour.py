"""Exact integrals of trigonometric rational functions over [0, π] by residues.

The MP density becomes a rational function of (cos t, sin t) after the substitution
x = a + b cos t with a = (λ₊ + λ₋)/2, b = (λ₊ − λ₋)/2, because (λ₊ − x)(x − λ₋) = b² sin² t and
sin t ≥ 0 on [0, π]. For an integrand even in sin t, ∫₀^π = ½∫₀^{2π}, and with w = e^{it}
(cos t = (w + 1/w)/2, sin t = (w − 1/w)/(2i), dt = dw/(iw)) the residue theorem gives
∫₀^π F dt = π Σ_{|p|<1} Res_{w=p} F(w)/w. Which poles lie inside the unit circle is decided on a
set of sample parameter values (the caller's parameter range); a pole whose side changes across the
samples raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

COS = sp.Symbol("C", real=True)
SIN = sp.Symbol("S", real=True)
_W = sp.Symbol("w")


def reduce_sqrt_to_sin(expr: sp.Expr) -> sp.Expr:
    """Replace every sqrt(k·(1 − C²)) (k free of C) in ``expr`` by sqrt(k)·S (valid for t ∈ [0, π]).

    Raises ``ValueError`` when a square root of an expression in C of another form remains.
    """

    def is_sqrt(e: sp.Basic) -> bool:
        return isinstance(e, sp.Pow) and e.exp == sp.S.Half and e.base.has(COS)

    def repl(e: sp.Pow) -> sp.Expr:
        k = sp.cancel(e.base / (1 - COS**2))
        if k.has(COS):
            raise ValueError(f"square root of {e.base} is not a multiple of 1 - cos(t)^2")
        return sp.sqrt(k) * SIN

    out = expr.replace(is_sqrt, repl)
    leftover = [p for p in sp.preorder_traversal(out)
                if isinstance(p, sp.Pow) and not p.exp.is_integer and p.base.has(COS)]
    if leftover:
        raise ValueError("a non-integer power of cos(t) remains after the substitution")
    return out


def _residue(G: sp.Expr, pole: sp.Expr, order: int) -> sp.Expr:
    """Residue of the rational function G(w) at ``pole`` of the given order (exact polynomial division)."""
    num, den = sp.fraction(G)
    factor = sp.Poly((_W - pole) ** order, _W)
    rest, rem = sp.div(sp.Poly(den, _W), factor)
    if not rem.is_zero:
        raise ValueError(f"{pole} is not a pole of order {order}")
    h = num / rest.as_expr()
    if order > 1:
        h = sp.diff(h, _W, order - 1) / sp.factorial(order - 1)
    return sp.cancel(h.subs(_W, pole))


def integral_0_pi(
    F: sp.Expr, samples: Sequence[dict[sp.Symbol, sp.Expr]] = ({},)
) -> sp.Expr:
    """∫₀^π F(cos t, sin t) dt for F rational in (C, S) and even in S, by residues."""
    if sp.simplify(F - F.subs(SIN, -SIN)) != 0:
        raise ValueError("integrand is not even in sin(t); the half-circle reduction does not apply")
    G = F.subs({COS: (_W + 1 / _W) / 2, SIN: (_W - 1 / _W) / (2 * sp.I)}, simultaneous=True) / _W
    G = sp.cancel(sp.together(G))
    _, den = sp.fraction(G)
    poly = sp.Poly(den, _W)
    poles = sp.roots(poly)
    if sum(poles.values()) != poly.degree():
        raise ValueError(f"could not find all poles of {den}")
    total = sp.S.Zero
    for p in poles:
        inside = []
        for s in samples:
            val = complex(sp.N(p.subs(s)))
            if abs(abs(val) - 1.0) < 1e-12:
                raise ValueError(f"pole {p} lies on the unit circle at {s}")
            inside.append(abs(val) < 1.0)
        if all(inside):
            total += _residue(G, p, poles[p])
        elif any(inside):
            raise ValueError(f"pole {p} crosses the unit circle over the parameter samples")
    return sp.simplify(sp.pi * total)
