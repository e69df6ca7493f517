"""Tests of the claims registry (mptheory.claims): coverage of digest §2, verdicts, negative controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, stats

from mptheory import claims
from mptheory.certificates import CHECKS, CheckResult
from mptheory.strategies_nets import CASE_FACTORIES

# every claim id of digest §2 (D1–D12 §2.1, R1–R5 §2.2, A1–A8 §2.3, G1–G15 §2.4), in digest order
DIGEST_IDS = ([f"D{i}" for i in range(1, 13)] + [f"R{i}" for i in range(1, 6)]
              + [f"A{i}" for i in range(1, 9)] + [f"G{i}" for i in range(1, 16)])
VERDICT_FIELDS = {"id", "statement", "kind", "cases", "violations", "worst_slack", "verdict",
                  "median_tightness", "tolerance", "seconds", "details"}


def test_registry_covers_every_digest_claim() -> None:
    assert len(DIGEST_IDS) == 40
    missing = [i for i in DIGEST_IDS if i not in claims.REGISTRY]
    assert missing == [], f"claims silently missing from the registry: {missing}"
    assert claims.claim_ids() == DIGEST_IDS  # registry order = digest order, nothing extra
    for c in claims.REGISTRY.values():
        assert c.kind in ("deterministic", "probabilistic")
        assert c.source.startswith("digest §2.")
        assert len(c.statement) > 20 and callable(c.check)
    # every deterministic certificate claim is wired to the certificates module's checker
    assert set(CHECKS) <= set(claims.REGISTRY)


def test_unknown_claim_id_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown claim id"):
        claims.verify(["D99"], quick=True, progress=False)


def test_verify_quick_subset_passes_with_no_violations() -> None:
    ids = ["D1", "D3", "D8", "R2", "G11", "G12", "G14"]
    res = claims.verify(ids, quick=True, progress=False, controls=False)
    assert [v.id for v in res] == ids
    for v in res:
        assert v.verdict == "pass", (v.id, v.details)
        assert v.violations == 0 and v.cases >= (6 if v.kind == "probabilistic" else 250), v.id
        assert set(v.to_dict()) == VERDICT_FIELDS
    assert res.passed and res.symbolic == []


def test_deterministic_case_count_matches_direct_run() -> None:
    """The D1 verdict aggregates exactly what certificates.check_d1 reports on the same cases."""
    out = claims.REGISTRY["D1"].check(True, 3)
    rng = claims._rng(3, "D1")
    results: list[CheckResult] = []
    while sum(r.cases for r in results) < 300 or len(results) < 20:
        results.append(CHECKS["D1"](CASE_FACTORIES["D1"](rng)))
    direct = CheckResult.combine(results)
    assert (out.cases, out.violations) == (direct.cases, direct.violations)
    assert out.worst_slack == pytest.approx(direct.worst_slack, abs=1e-15)


def test_every_negative_control_is_caught() -> None:
    res = claims.run_controls(quick=True, seed=0)
    assert len(res) == len(claims.NEGATIVE_CONTROLS) >= 10
    assert {c.claim for c in res} <= set(claims.REGISTRY)
    missed = [c.name for c in res if c.status != "caught"]
    assert missed == []
    assert all(c.violations > 0 for c in res)


def test_binomial_tolerance_false_alarm_rate_is_small() -> None:
    """rate ≤ b + 3√(b(1−b)/K): a correct bound fails with probability < 1 % (exact binomial tail)."""
    for b, K in [(0.05, 200), (0.1, 100), (1 / 300, 1000), (0.2, 60)]:
        max_rate, ok, slack = claims._binomial(0, K, b)
        assert ok and slack == pytest.approx(max_rate)
        assert max_rate == pytest.approx(b + 3 * math.sqrt(b * (1 - b) / K))
        k_max = math.floor(max_rate * K + 1e-12)
        assert claims._binomial(k_max, K, b)[1] and not claims._binomial(k_max + 1, K, b)[1]
        assert stats.binom.sf(k_max, K, b) < 0.01


def test_sin_theta_lhs_matches_principal_angles() -> None:
    """The G12 left-hand side equals ‖sin Θ‖_F computed from scipy's principal angles."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        N, M = (int(x) for x in rng.integers(4, 15, size=2))
        r = int(rng.integers(1, min(N, M)))
        U, _ = np.linalg.qr(rng.standard_normal((N, r)))
        V, _ = np.linalg.qr(rng.standard_normal((M, r)))
        S = (U * np.sort(rng.uniform(1, 5, r))[::-1]) @ V.T
        R = 0.3 * rng.standard_normal((N, M))
        gaps = claims._sin_theta_gap(S, R, r, np.random.default_rng(1))
        if not gaps:
            continue
        k = int(np.random.default_rng(1).integers(1, r + 1))
        Vs = np.linalg.svd(S)[2][:k].T
        Vw = np.linalg.svd(S + R)[2][:k].T
        ref = math.sqrt(float(np.sum(np.sin(linalg.subspace_angles(Vs, Vw)) ** 2)))
        assert gaps[0].lhs == pytest.approx(ref, abs=1e-7)
        assert gaps[0].holds


def test_crashing_check_fails_its_claim_and_json_is_finite() -> None:
    def boom(quick: bool, seed: int) -> claims.Outcome:
        raise RuntimeError("broken checker")

    v = claims._run_claim(claims.Claim("X1", "a claim that crashes", "deterministic", "digest §2.1", boom),
                          True, 0)
    assert v.verdict == "fail" and "broken checker" in v.details["error"]
    d = v.to_dict()
    assert d["worst_slack"] is None  # -inf is not valid JSON
    with pytest.raises(ValueError, match="kind"):
        claims.Claim("X2", "bad kind", "maybe", "digest §2.1", boom)
