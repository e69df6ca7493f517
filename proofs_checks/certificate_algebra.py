"""Algebra behind the data-path certificates D1, D4, D5, D7, D8, D9 (digest §2.1).

* D4: ‖S+θR‖²_F − ‖S+R‖²_F = −(1−θ²)‖R‖²_F − 2(1−θ)⟨S,R⟩_F for symbolic 2×3 matrices S, R.
* D5: if S ⊙ R = 0 then ‖S+θR‖²_F = ‖S‖²_F + θ²‖R‖²_F and ‖S+θR‖₁ = ‖S‖₁ + θ‖R‖₁ for θ ∈ [0, 1]
  (all 2⁶ masks of a symbolic 2×3 matrix A, S = M⊙A, R = (1−M)⊙A; θ ≥ 0 lets |θa| = θ|a|).
  The D5 bound follows: 𝓙(A_θ) − 𝓙(A_1) ≤ (1−θ)B − λ₂(1−θ²)‖R‖² − λ₁(1−θ)‖R‖₁.
* D7/D8: with S, Q, P pairwise disjoint and R = Q + P, (prune-all bound) − (restore-Q bound) equals
  [B(R) − B(P)] − λ₂‖Q‖² − λ₁‖Q‖₁ exactly, so restore-Q is strictly better iff B(R)−B(P) > λ₂‖Q‖²+λ₁‖Q‖₁.
* D1: the per-sample CE ℓ(z) = −z_C + log Σ e^{z_j} has gradient ρ(z) − e_C with
  ‖ρ − e_C‖₁ = 2(1 − ρ_C) ≤ 2 (K = 3, symbolic), hence ℓ is 2-Lipschitz in ‖·‖∞.
* D9: dividing the D5 bound at θ = 1−h by h and letting h ↓ 0 gives −(2λ₂‖R‖² + λ₁‖R‖₁) + B; dividing
  by (1−θ) gives −λ₂(1+θ)‖R‖² − λ₁‖R‖₁ + B.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import sympy as sp

from mptheory.verdict import CheckResult
from proofs_checks.steps import Steps

NAME = "certificate_algebra"
STATEMENT = ("Frobenius/ℓ₁ identities of D4/D5/D7, the D8 restoration equivalence, the softmax-CE gradient "
             "bound ‖ρ−e_C‖₁ = 2(1−ρ_C) ≤ 2 (D1) and the D9 one-sided derivative of the elastic-net bound.")

THETA = sp.Symbol("theta", nonnegative=True)
H = sp.Symbol("h", positive=True)
LAM1, LAM2 = sp.symbols("lambda1 lambda2", nonnegative=True)
B_R, B_P = sp.symbols("B_R B_P", real=True)
SHAPE = (2, 3)

FrobRhs = Callable[[sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # (theta, ‖R‖², ⟨S,R⟩) -> expr
D8Rhs = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # (λ₂, λ₁, ‖Q‖², ‖Q‖₁) -> threshold
CeL1 = Callable[[sp.Expr], sp.Expr]  # ρ_C -> ‖ρ − e_C‖₁
D9Lim = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]  # (λ₂, λ₁, ‖R‖², ‖R‖₁, B)


def frob_rhs(theta: sp.Expr, r2: sp.Expr, sr: sp.Expr) -> sp.Expr:
    """−(1−θ²)‖R‖² − 2(1−θ)⟨S,R⟩ (D4)."""
    return -(1 - theta**2) * r2 - 2 * (1 - theta) * sr


def d8_threshold(lam2: sp.Expr, lam1: sp.Expr, q2: sp.Expr, q1: sp.Expr) -> sp.Expr:
    """λ₂‖Q‖² + λ₁‖Q‖₁: restoration helps iff B(R) − B(P) exceeds this (D8)."""
    return lam2 * q2 + lam1 * q1


def ce_grad_l1(rho_c: sp.Expr) -> sp.Expr:
    """‖ρ − e_C‖₁ = 2(1 − ρ_C) (D1)."""
    return 2 * (1 - rho_c)


def d9_limit(lam2: sp.Expr, lam1: sp.Expr, r2: sp.Expr, r1: sp.Expr, b: sp.Expr) -> sp.Expr:
    """lim_{h↓0} [bound at θ = 1−h]/h = −(2λ₂‖R‖² + λ₁‖R‖₁) + B (D9)."""
    return -(2 * lam2 * r2 + lam1 * r1) + b


def _mat(name: str) -> sp.Matrix:
    return sp.Matrix(*SHAPE, lambda i, j: sp.Symbol(f"{name}{i}{j}", real=True))


def _fro2(A: sp.Matrix) -> sp.Expr:
    return sum(a**2 for a in A)


def _l1(A: sp.Matrix) -> sp.Expr:
    return sum(sp.Abs(a) for a in A)


def _inner(A: sp.Matrix, B: sp.Matrix) -> sp.Expr:
    return (A.T * B).trace()


def check(
    frobenius: FrobRhs | None = None,
    d8: D8Rhs | None = None,
    ce_l1: CeL1 | None = None,
    d9: D9Lim | None = None,
) -> CheckResult:
    """Verify the certificate identities; any argument replaces the formula under test."""
    frob = frobenius or frob_rhs
    d8_fn = d8 or d8_threshold
    ce_fn = ce_l1 or ce_grad_l1
    d9_fn = d9 or d9_limit
    st = Steps(NAME, STATEMENT, claims=("D1", "D4", "D5", "D7", "D8", "D9"))
    S, R = _mat("s"), _mat("r")
    # D4 (any decomposition)
    lhs = _fro2(S + THETA * R) - _fro2(S + R)
    st.zero("D4: ‖S+θR‖² − ‖S+R‖² = −(1−θ²)‖R‖² − 2(1−θ)⟨S,R⟩ (2×3 symbolic)",
            sp.expand(lhs - frob(THETA, _fro2(R), _inner(S, R))))
    # D5 disjoint supports, all masks
    A = _mat("a")
    bad_f, bad_1 = [], []
    for bits in itertools.product((0, 1), repeat=SHAPE[0] * SHAPE[1]):
        Mk = sp.Matrix(*SHAPE, bits)
        Sm, Rm = Mk.multiply_elementwise(A), (sp.ones(*SHAPE) - Mk).multiply_elementwise(A)
        if sp.expand(_fro2(S + THETA * R).subs(dict(zip(list(S) + list(R), list(Sm) + list(Rm))))
                     - _fro2(Sm) - THETA**2 * _fro2(Rm)) != 0:
            bad_f.append(bits)
        if sp.simplify(_l1(Sm + THETA * Rm) - _l1(Sm) - THETA * _l1(Rm)) != 0:
            bad_1.append(bits)
    st.record("D5: ‖S+θR‖² = ‖S‖² + θ²‖R‖² for all 64 masks", not bad_f, f"failing masks {bad_f[:3]}")
    st.record("D5: ‖S+θR‖₁ = ‖S‖₁ + θ‖R‖₁ for all 64 masks, θ ≥ 0", not bad_1, f"failing masks {bad_1[:3]}")
    # D5 bound assembled from the identities (B-term from D1); compare with the stated form
    r2, r1 = sp.symbols("R2 R1", nonnegative=True)
    s2n, s1n = sp.symbols("S2 S1", nonnegative=True)
    # 𝓙(A_θ) − 𝓙(A_1) = [CE change ≤ (1−θ)B] + λ₂(‖S+θR‖² − ‖S+R‖²) + λ₁(‖S+θR‖₁ − ‖S+R‖₁),
    # with the disjoint-support identities above
    bound = ((1 - THETA) * B_R + LAM2 * ((s2n + THETA**2 * r2) - (s2n + r2))
             + LAM1 * ((s1n + THETA * r1) - (s1n + r1)))
    stated = (1 - THETA) * B_R - LAM2 * (1 - THETA**2) * r2 - LAM1 * (1 - THETA) * r1
    st.zero("D5: assembled bound equals (1−θ)B − λ₂(1−θ²)‖R‖² − λ₁(1−θ)‖R‖₁", bound - stated)
    # D7/D8 per entry: each entry belongs to exactly one of S, Q, P; norms are entrywise sums
    a = sp.Symbol("a", real=True)
    q2, q1, p2, p1 = sp.symbols("Q2 Q1 P2 P1", nonnegative=True)
    ok_entry = True
    for owner in ("S", "Q", "P"):
        qv, pv = (a if owner == "Q" else 0), (a if owner == "P" else 0)
        ok_entry &= sp.simplify((qv + pv) ** 2 - qv**2 - pv**2) == 0
        ok_entry &= sp.simplify(sp.Abs(qv + pv) - sp.Abs(qv) - sp.Abs(pv)) == 0
    st.record("D7/D8: disjoint Q, P give ‖Q+P‖² = ‖Q‖²+‖P‖², ‖Q+P‖₁ = ‖Q‖₁+‖P‖₁ (entrywise cases)", ok_entry)
    J = sp.Symbol("J_A", real=True)
    prune_all = J - LAM2 * (q2 + p2) - LAM1 * (q1 + p1) + B_R
    restore_q = J - LAM2 * p2 - LAM1 * p1 + B_P
    st.zero("D8: (prune-all bound) − (restore-Q bound) = B(R) − B(P) − threshold(Q)",
            (prune_all - restore_q) - (B_R - B_P - d8_fn(LAM2, LAM1, q2, q1)))
    # D1: softmax-CE gradient, K = 3, class C = 0
    z = sp.symbols("z0:3", real=True)
    loss = -z[0] + sp.log(sum(sp.exp(zi) for zi in z))
    rho = [sp.exp(zi) / sum(sp.exp(zj) for zj in z) for zi in z]
    grad_ok = all(sp.simplify(sp.diff(loss, z[i]) - (rho[i] - (1 if i == 0 else 0))) == 0 for i in range(3))
    st.record("D1: ∇ℓ(z) = ρ(z) − e_C (K = 3)", grad_ok)
    p = sp.symbols("p0:3", positive=True)  # p_i = e^{z_i} > 0
    rho_p = [pi / sum(p) for pi in p]
    l1 = sum(sp.Abs(sp.factor(rho_p[i] - (1 if i == 0 else 0))) for i in range(3))
    st.zero("D1: ‖ρ − e_C‖₁ = candidate(ρ_C) (K = 3, symbolic)", l1 - ce_fn(rho_p[0]))
    st.record("D1: 2(1 − ρ_C) < 2 since ρ_C > 0", sp.simplify(2 - ce_fn(rho_p[0])).is_positive is True)
    rng = np.random.default_rng(0)
    zz = rng.normal(size=(200, 5)) * 3
    rr = np.exp(zz - zz.max(1, keepdims=True))
    rr /= rr.sum(1, keepdims=True)
    e0 = np.zeros(5)
    e0[0] = 1.0
    worst = float(np.max(np.abs(rr - e0).sum(1)))
    st.record("D1: numeric K = 5, 200 logit draws: max ‖ρ − e_C‖₁ ≤ 2", worst <= 2.0, f"max {worst:.6f}")
    # D9: one-sided difference quotient of the D5 bound
    bound_h = stated.subs(THETA, 1 - H)
    lim = sp.limit(sp.expand(bound_h / H), H, 0)
    st.zero("D9: lim_{h↓0} bound(1−h)/h = −(2λ₂‖R‖² + λ₁‖R‖₁) + B", lim - d9_fn(LAM2, LAM1, r2, r1, B_R),
            f"limit {lim}")
    quot = sp.cancel(stated / (1 - THETA))
    st.zero("D9: bound(θ)/(1−θ) = B − λ₂(1+θ)‖R‖² − λ₁‖R‖₁",
            quot - (B_R - LAM2 * (1 + THETA) * r2 - LAM1 * r1))
    return st.finish()
