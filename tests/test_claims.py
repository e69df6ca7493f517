"""Tests of the claims registry (mptheory.claims): coverage of digest §2, verdicts, negative controls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, stats

from mptheory import claims
from mptheory.certificates import check_d1
from mptheory.claims.g_gaussian import sin_theta_gap
from mptheory.claims.registry import claim_rng
from mptheory.strategies_nets import make_cert_case
from mptheory.verdict import KINDS, CheckResult, binomial_max_rate

# every claim id of digest §2 (D1–D12 §2.1, R1–R5 §2.2, A1–A8 §2.3, G1–G15 §2.4), in digest order
DIGEST_IDS = ([f"D{i}" for i in range(1, 13)] + [f"R{i}" for i in range(1, 6)]
              + [f"A{i}" for i in range(1, 9)] + [f"G{i}" for i in range(1, 16)])
VERDICT_FIELDS = {"id", "statement", "kind", "cases", "violations", "worst_slack", "verdict",
                  "median_tightness", "max_tightness", "tightness_stat", "tolerance", "seconds", "details"}


def test_registry_covers_every_digest_claim() -> None:
    assert len(DIGEST_IDS) == 40
    missing = [i for i in DIGEST_IDS if i not in claims.REGISTRY]
    assert missing == [], f"claims silently missing from the registry: {missing}"
    assert claims.claim_ids() == DIGEST_IDS  # registry order = digest order, nothing extra
    for c in claims.REGISTRY.values():
        assert c.kind in ("deterministic", "probabilistic")
        assert c.evidence in KINDS and c.evidence != "symbolic"
        assert c.source.startswith("digest §2.")
        assert len(c.statement) > 20 and callable(c.check)
    # one digest section per id letter, in the section files' order
    sections = {"D": "§2.1", "R": "§2.2", "A": "§2.3", "G": "§2.4"}
    assert all(c.source.endswith(sections[c.id[0]]) for c in claims.REGISTRY.values())
    assert [nc.claim[0] for nc in claims.NEGATIVE_CONTROLS] == sorted(
        (nc.claim[0] for nc in claims.NEGATIVE_CONTROLS), key="DRAG".index)


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


def test_d1_claim_aggregates_the_case_runner() -> None:
    """The D1 verdict aggregates exactly what certificates.check_d1 reports on the same cases."""
    out = claims.REGISTRY["D1"].check(True, 3)
    rng = claim_rng(3, "D1")
    results: list[CheckResult] = []
    while sum(r.cases for r in results) < 300 or len(results) < 20:
        results.append(check_d1(make_cert_case(rng)))
    direct = CheckResult.combine(results)
    assert (out.cases, out.violations) == (direct.cases, direct.violations)
    assert out.worst_slack == pytest.approx(direct.worst_slack, abs=1e-15)
    np.testing.assert_array_equal(out.tightness, direct.tightness)  # NaN where a case has no positive bound
    assert len(out.tightness) == len(results)
    assert out.max_tightness == max(r.max_tightness for r in results if math.isfinite(r.max_tightness))


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
        res = CheckResult.frequency(0, K, b)
        max_rate = res.details["max_rate"]
        assert res.passed and res.kind == "probabilistic" and res.worst_slack == pytest.approx(max_rate)
        assert max_rate == pytest.approx(b + 3 * math.sqrt(b * (1 - b) / K)) == binomial_max_rate(b, K)
        k_max = math.floor(max_rate * K + 1e-12)
        assert CheckResult.frequency(k_max, K, b).passed and not CheckResult.frequency(k_max + 1, K, b).passed
        assert stats.binom.sf(k_max, K, b) < 0.01
    with pytest.raises(ValueError, match="bound"):
        binomial_max_rate(1.5, 10)


def test_g12_sin_theta_lhs_matches_projection_formula() -> None:
    """The G12 left-hand side (scipy's principal angles) equals ‖sin Θ‖_F = √(k − ‖VᵀV̂‖²_F)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        N, M = (int(x) for x in rng.integers(4, 15, size=2))
        r = int(rng.integers(1, min(N, M)))
        U, _ = np.linalg.qr(rng.standard_normal((N, r)))
        V, _ = np.linalg.qr(rng.standard_normal((M, r)))
        S = (U * np.sort(rng.uniform(1, 5, r))[::-1]) @ V.T
        R = 0.3 * rng.standard_normal((N, M))
        gaps = sin_theta_gap(S, R, r, np.random.default_rng(1))
        if not gaps:
            continue
        k = int(np.random.default_rng(1).integers(1, r + 1))
        Vs = np.linalg.svd(S)[2][:k].T
        Vw = np.linalg.svd(S + R)[2][:k].T
        ref = math.sqrt(max(k - float(np.sum((Vs.T @ Vw) ** 2)), 0.0))
        assert gaps[0].lhs == pytest.approx(ref, abs=1e-7)
        angles = linalg.subspace_angles(Vs, Vw)
        assert float(gaps[0].lhs) == pytest.approx(float(np.linalg.norm(np.sin(angles))))
        assert gaps[0].holds


def test_crashing_check_fails_its_claim_and_json_is_finite() -> None:
    def boom(quick: bool, seed: int) -> CheckResult:
        raise RuntimeError("broken checker")

    v = claims.run_claim(claims.Claim("X1", "a claim that crashes", "deterministic", "digest §2.1", boom),
                         True, 0)
    assert v.verdict == "fail" and "broken checker" in v.details["error"]
    d = v.to_dict()
    assert d["worst_slack"] is None  # -inf is not valid JSON
    with pytest.raises(ValueError, match="kind"):
        claims.Claim("X2", "bad kind", "maybe", "digest §2.1", boom)


def test_a_check_of_the_wrong_kind_fails_its_claim() -> None:
    """A claim declares how it is supported (``evidence``); a check returning another kind fails it."""
    def freq(quick: bool, seed: int) -> CheckResult:
        return CheckResult.frequency(0, 100, 0.05)

    ok = claims.run_claim(claims.Claim("X3", "frequency claim", "probabilistic", "digest §2.4", freq,
                                       evidence="probabilistic"), True, 0)
    assert ok.verdict == "pass" and ok.details["evidence"] == "probabilistic"
    declared_exact = claims.Claim("X4", "declared exact", "deterministic", "digest §2.4", freq)
    bad = claims.run_claim(declared_exact, True, 0)
    assert bad.verdict == "fail" and "probabilistic" in bad.details["error"]
    with pytest.raises(ValueError, match="evidence"):
        claims.Claim("X5", "bad evidence", "deterministic", "digest §2.1", freq, evidence="symbolic")
