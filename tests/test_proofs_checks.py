"""Tests of the sympy proof checks: every check passes, and deliberately wrong formulas fail.

Independent second lines: scipy quadrature of the MP density, numpy round trips of the BBP maps and a
Monte-Carlo spiked matrix, none of which use the sympy machinery under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

from mptheory.verdict import CheckResult
from proofs_checks import (
    bbp,
    bema_edge,
    budget_algebra,
    certificate_algebra,
    mp_edges,
    mp_mass,
    mp_moments,
    mp_stieltjes,
)
from proofs_checks.__main__ import main
from proofs_checks.registry import SYMBOLIC_CHECKS, run_all
from proofs_checks.steps import steps_of


@pytest.mark.parametrize("name", list(SYMBOLIC_CHECKS))
def test_check_passes(name: str) -> None:
    res = SYMBOLIC_CHECKS[name]()
    steps = steps_of(res)
    assert res.passed, "\n".join(steps)
    assert steps and all(line.startswith("ok") for line in steps)
    assert res.kind == "symbolic" and (res.cases, res.violations, res.worst_slack) == (1, 0, 0.0)
    assert res.details["name"] == name and res.details["claims"]


def test_registry_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown check"):
        run_all(["no_such_check"])


def test_cli_help_names_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "exit codes" in out and "2 bad input" in out and "3 refused" in out


def test_cli_writes_json_and_exit_code(tmp_path) -> None:
    out = tmp_path / "checks.json"
    assert main(["bbp", "budget_algebra", "--json", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [c["name"] for c in data["checks"]] == ["bbp", "budget_algebra"]
    assert all(c["passed"] and c["steps"] for c in data["checks"])
    # bad input: nothing written, exit code 2
    assert main(["no_such_check", "--json", str(tmp_path / "x.json")]) == 2
    assert main(["bbp", "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.json"]


def test_cli_exit_code_3_when_a_check_fails(monkeypatch, capsys) -> None:
    failing = CheckResult.symbolic(False, name="bbp", statement="a broken lemma", claims=["G13"],
                                   steps=["FAIL broken step"])
    monkeypatch.setitem(SYMBOLIC_CHECKS, "bbp", lambda: failing)
    assert main(["bbp"]) == 3
    assert "[FAIL] bbp — FAIL broken step" in capsys.readouterr().out


def test_run_all_returns_one_symbolic_result_per_check() -> None:
    res = run_all(["bbp", "mp_edges"])
    assert [r.details["name"] for r in res] == ["bbp", "mp_edges"]
    assert all(isinstance(r, CheckResult) and r.verdict == "pass" for r in res)


# ---------------------------------------------------------------- negative controls: wrong formulas fail


def _failed(res: CheckResult, fragment: str) -> bool:
    return (not res.passed) and any(d.startswith("FAIL") and fragment in d for d in steps_of(res))


def test_mass_rejects_density_without_c() -> None:
    def bad(x, s2, c):
        lp, lm = s2 * (1 + sp.sqrt(c)) ** 2, s2 * (1 - sp.sqrt(c)) ** 2
        return sp.sqrt((lp - x) * (x - lm)) / (2 * sp.pi * s2 * x)

    assert _failed(mp_mass.check(bad), "mass for 0 < c < 1")


def test_mass_rejects_density_with_pi_instead_of_2pi() -> None:
    def bad(x, s2, c):
        return 2 * mp_mass.mp_density(x, s2, c)

    res = mp_mass.check(bad)
    assert _failed(res, "mass for c = 1") and _failed(res, "quadrature")


def test_moments_reject_wrong_narayana_coefficient() -> None:
    def bad(k, s2, c):  # binomial C(k, j) instead of the Narayana number
        return s2**k * sum(sp.binomial(k, j) * c ** (j - 1) for j in range(1, k + 1))

    res = mp_moments.check(bad, kmax=3)
    assert _failed(res, "moment k=2") and _failed(res, "moment k=3")
    # k = 1 agrees because N(1, 1) = C(1, 1)
    assert any(d.startswith("ok") and "moment k=1 " in d for d in steps_of(res))


def test_stieltjes_rejects_wrong_quadratic() -> None:
    res = mp_stieltjes.check(lambda m, z, s2, c: s2 * c * z * m**2 + (z - s2 * (1 + c)) * m + 1)
    assert _failed(res, "quadratic vanishes") and _failed(res, "closed form solves")


def test_edges_reject_wrong_edges_and_singular_edge() -> None:
    res = mp_edges.check(edges=lambda s2, c: (s2 * (1 - c) ** 2, s2 * (1 + c) ** 2))
    assert _failed(res, "discriminant = ")
    res = mp_edges.check(singular=lambda s, n, m: s * sp.sqrt(n + m))
    assert _failed(res, "singular edge") and _failed(res, "top singular value")


def test_bbp_rejects_inverse_without_half() -> None:
    res = bbp.check(inverse=lambda y, c: sp.sqrt(y**2 - c - 1 + sp.sqrt((y**2 - c - 1) ** 2 - 4 * c)))
    assert _failed(res, "rectangular: x(y(x))") and _failed(res, "rectangular numeric")


def test_bbp_rejects_wrong_square_and_dgj_inverses() -> None:
    res = bbp.check(sq_inverse=lambda s, g: (s - sp.sqrt(s**2 - 4 * g)) / 2)  # the subcritical root
    assert _failed(res, "square: σ̂(s(σ))")
    res = bbp.check(dgj_inv=lambda lam, gm: (lam + 1 - gm) + sp.sqrt((lam + 1 - gm) ** 2 - 4 * lam))
    assert _failed(res, "DGJ: ℓ(λ(ℓ))")
    res = bbp.check(forward=lambda x, c: sp.sqrt((1 + x**2) * (c + x**2)))  # missing /x
    assert _failed(res, "1 + √c")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"frobenius": lambda t, r2, sr: -(1 - t**2) * r2 - (1 - t) * sr}, "D4"),
        ({"d8": lambda l2, l1, q2, q1: l2 * q2}, "D8"),
        ({"ce_l1": lambda rc: 1 - rc}, "D1: ‖ρ − e_C‖₁"),
        ({"d9": lambda l2, l1, r2, r1, b: -(l2 * r2 + l1 * r1) + b}, "D9: lim"),
    ],
)
def test_certificate_algebra_rejects_wrong_identity(kwargs, fragment: str) -> None:
    res = certificate_algebra.check(**kwargs)
    assert _failed(res, fragment)
    assert sum(d.startswith("FAIL") for d in steps_of(res)) == 1  # only the perturbed identity fails
    assert res.violations == 1 and res.worst_slack == -1.0 and res.verdict == "fail"


def test_budget_rejects_threshold_without_two_and_wrong_r2() -> None:
    res = budget_algebra.check(threshold=lambda v, n, t, d: sp.sqrt(2 * v * sp.log(n * t / d)))
    assert _failed(res, "R1: 2 exp") and _failed(res, "union bound")
    def bad_r2(s, n, m, t, d, ls, vn):  # m/n where √(m/n) belongs
        return 2 * s / (1 + m / n) * sp.sqrt(2 / n * sp.log(2 * n * t / d)) * ls * vn

    res = budget_algebra.check(r2=bad_r2)
    assert _failed(res, "R2 = R1")


def test_bema_rejects_authors_precedence_parse() -> None:
    def bad(s2, c, n, t):
        return s2 * ((1 + sp.sqrt(c)) ** 2
                     + t * n ** sp.Rational(-2, 3) * c ** sp.Rational(-1, 6) * (1 + sp.sqrt(c)) ** 4 / 3)

    res = bema_edge.check(bad)
    assert _failed(res, "→ 0 as n → ∞") and _failed(res, "square case") and _failed(res, "numeric")


# ---------------------------------------------------------------- independent numerical properties


@given(c=st.floats(0.05, 1.0), s2=st.floats(0.2, 3.0), k=st.integers(1, 6))
def test_narayana_moment_matches_quadrature(c: float, s2: float, k: int) -> None:
    lm, lp = s2 * (1 - np.sqrt(c)) ** 2, s2 * (1 + np.sqrt(c)) ** 2

    def f(x: float) -> float:
        return x ** (k - 1) * np.sqrt(max((lp - x) * (x - lm), 0.0)) / (2 * np.pi * c * s2)

    num = integrate.quad(f, lm, lp, limit=200)[0]
    assert num == pytest.approx(float(mp_moments.narayana_moment(k, s2, c)), rel=1e-6)


@given(c=st.floats(0.01, 1.0), excess=st.floats(1e-3, 5.0))
def test_bbp_maps_are_inverse_numerically(c: float, excess: float) -> None:
    x = c**0.25 + excess
    y = np.sqrt((1 + x**2) * (c + x**2)) / x
    assert y > 1 + np.sqrt(c)  # supercritical outlier sits above the bulk edge
    u = y**2 - c - 1
    x_back = np.sqrt((u + np.sqrt(u**2 - 4 * c)) / 2)
    assert x_back == pytest.approx(x, rel=1e-8)


def test_bbp_outlier_location_monte_carlo() -> None:
    rng = np.random.default_rng(1)
    m, n, x = 200, 800, 1.5
    beta = m / n
    u = rng.normal(size=m)
    v = rng.normal(size=n)
    Y = x * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v)) + rng.normal(size=(m, n)) / np.sqrt(n)
    top = np.linalg.svd(Y, compute_uv=False)[0]
    predicted = np.sqrt((1 + x**2) * (beta + x**2)) / x
    assert top == pytest.approx(predicted, rel=0.03)
