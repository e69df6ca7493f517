"""Digest §2.4, claims G1–G15: the Gaussian simplified theory.

G1–G7 run the three-layer model of :mod:`mptheory.dynamics` (Monte-Carlo frequencies against their
probability bounds, and the growing-N trend of G5), G8 entrywise thresholding, G9/G10 the width experiment
(empirical), G11/G12/G15 exact matrix inequalities on random spiked matrices
(:func:`mptheory.dynamics.random_perturbation`), G13/G14 the square BBP map (trends in N).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import linalg, stats

from mptheory.certificates import cross_entropy
from mptheory.claims._simulations import (
    BAND_TIGHTNESS,
    band_sims,
    logit_sim,
    per_sample_result,
    width_ratio_result,
)
from mptheory.claims.registry import claim_rng, claim_seed, control, register
from mptheory.dynamics import (
    bbp_experiment,
    eckart_young_gap,
    make_three_layer,
    markov_tail_gap,
    perturbation_result,
    rank_esd_gap,
    simulate_thresholding,
    weyl_gap,
)
from mptheory.mp import MarchenkoPastur, eigenvalues_from_matrix
from mptheory.spikes import inverse_bbp_square, low_rank_signal, outlier_location_square
from mptheory.verdict import CheckResult, Inequality

__all__ = ["sin_theta_gap"]

_G = "digest §2.4"


# ----------------------------------------------------------------------------------------------------
# G1–G7: the three-layer model


def _check_g1(quick: bool, seed: int, tau_scale: float = 1.0) -> CheckResult:
    sim = logit_sim("G1", quick, seed, tau_scale, N=300, T=20, activation="abs")
    return per_sample_result(sim, sim.tau, 1.0 / sim.N, tau="2√2‖W₃‖∞‖W₁s‖₂√(log(2N)/N)")


register("G1", "P(‖X(s,S₂) − X(s,W₂)‖∞ ≤ τ_N(s) = 2√2 a(N,s)) ≥ 1 − 1/N", "probabilistic", _G,
         ("width_scaling",), "probabilistic")(_check_g1)


@register("G2", "w.p. ≥ 1 − |T′|/N: |acc_W − acc_S| ≤ #{|δX| ≤ 2τ_N}/|T′|", "probabilistic", _G,
          ("width_scaling",), "probabilistic")
def _check_g2(quick: bool, seed: int) -> CheckResult:
    sim = logit_sim("G2", quick, seed, N=300, T=20)
    fails = int(round(sim.g2_rate * sim.draws))
    return CheckResult.frequency(fails, sim.draws, sim.T / sim.N, N=sim.N, T=sim.T)


@register("G3", "|L_CE(S₂) − L_CE(W₂)| ≤ (4√2/|T|)Σa(N,s) w.p. ≥ 1 − |T|/N", "probabilistic", _G, (),
          "probabilistic")
def _check_g3(quick: bool, seed: int) -> CheckResult:
    rng = claim_rng(seed, "G3")
    N, T, draws = 300, 20, (60 if quick else 600)
    net = make_three_layer(N, rng=rng)
    X = rng.standard_normal((T, net.W1.shape[1]))
    y = rng.integers(0, net.W3.shape[0], size=T)
    ce_S = cross_entropy(net.logits(X, net.S2), y)
    bound = 4.0 * math.sqrt(2.0) * float(net.a(X).mean())
    ratios = []
    for _ in range(draws):
        R2 = rng.standard_normal((N, N)) * math.sqrt(net.sigma2 / N)
        ratios.append(abs(cross_entropy(net.logits(X, net.S2 + R2), y) - ce_S) / bound)
    fails = int(np.sum(np.asarray(ratios) > 1.0))
    return CheckResult.frequency(fails, draws, T / N, ratios, "realised/bound per draw", N=N, T=T,
                                 ce_bound=bound)


@register("G4", "τ_{N,δ}: all s∈T₀ simultaneously and |ΔL_CE| ≤ (2/|T|)Στ_{N,δ} w.p. ≥ 1 − δ",
          "probabilistic", _G, (), "probabilistic")
def _check_g4(quick: bool, seed: int, tau_scale: float = 1.0) -> CheckResult:
    sim = logit_sim("G4", quick, seed, tau_scale, N=300, T=20, delta=0.05)
    fails = int(round(max(sim.g4_rate, sim.g4_loss_rate) * sim.draws))
    ratio = (sim.dX / sim.tau_delta[None, :]).max(axis=1)
    return CheckResult.frequency(fails, sim.draws, sim.delta, ratio,
                                 "largest realised/bound ratio over the samples of a draw", N=sim.N, T=sim.T,
                                 logit_rate=sim.g4_rate, loss_rate=sim.g4_loss_rate)


@register("G5", "growing T_N, δ_N → 0: b_{N,δ_N}(T_N) → 0 and ΔL_CE ≤ b w.p. ≥ 1 − δ_N", "probabilistic",
          _G, (), "asymptotic")
def _check_g5(quick: bool, seed: int) -> CheckResult:
    Ns = (100, 200, 400) if quick else (100, 200, 400, 800)
    parts, widths = [], []
    for N in Ns:
        T = int(math.ceil(math.sqrt(N)))
        sim = logit_sim(f"G5-{N}", quick, seed, N=N, T=T, delta=1.0 / N, draws=40 if quick else 300)
        fails = int(round(max(sim.g4_rate, sim.g4_loss_rate) * sim.draws))
        parts.append(CheckResult.frequency(fails, sim.draws, sim.delta, N=N, T=T))
        widths.append(2.0 * float(sim.tau_delta.mean()))
    out = CheckResult.combine(parts, kind="asymptotic", tightness_stat="b_N per N",
                              details={"b_N": dict(zip(Ns, widths, strict=True)),
                                       "parts": [p.details for p in parts]})
    steps = int(np.sum(np.diff(widths) >= 0))
    return replace(out, violations=out.violations + steps, passed=out.passed and steps == 0,
                   tightness=tuple(widths))


@register("G6", "L(S₂) ≤ L(W₂) − λ‖R₂‖²_F + (4√2/|T|)Σa + 2λη w.p. ≥ 1 − |T|/N − 2e^(−Nη²/2B²)",
          "probabilistic", _G, (), "probabilistic")
def _check_g6(quick: bool, seed: int) -> CheckResult:
    N, T = 300, 30
    sims = band_sims("G6", quick, seed, (N,), 30 if quick else 400, T, "abs")[N]
    fails, tight = 0, []
    for b in sims:
        i = int(np.argmin(b.thetas))
        fails += int(b.lhs[i] > b.center[i] + b.halfwidth[i] + 1e-12)
        tight.append(float((b.lhs[i] - b.center[i]) / b.halfwidth[i]))
    return CheckResult.frequency(fails, len(sims), T / N, tight, "(L − centre)/half-width at ϑ = 0", N=N, T=T,
                                 eta="realised |⟨S₂,R₂⟩_F|")


@register("G7", "for all ϑ: |L(S₂+ϑR₂) − L(W₂) + λ(1−ϑ²)‖R₂‖²| ≤ (1−ϑ)[(4√2/|T|)Σa + 2λη] w.p. ≥ 1 − |T|/N",
          "probabilistic", _G, ("noise_experiment",), "probabilistic")
def _check_g7(quick: bool, seed: int) -> CheckResult:
    N, T = 300, 30
    sims = band_sims("G7", quick, seed, (N,), 30 if quick else 400, T, "abs")[N]
    fails = sum(int(not np.all(b.inside)) for b in sims)
    tight = [float(np.max(np.abs(b.lhs - b.center) / np.maximum(b.halfwidth, 1e-300))) for b in sims]
    return CheckResult.frequency(fails, len(sims), T / N, tight, BAND_TIGHTNESS, N=N, T=T,
                                 monotone_fraction=float(np.mean([b.monotone for b in sims])))


# ----------------------------------------------------------------------------------------------------
# G8: thresholding; G9, G10: the width experiment


@register("G8", "threshold t = √(2g log(2NM/δ)/N): {|S|>2t} ⊆ supp H_t(W) ⊆ supp S w.p. ≥ 1−δ; exact "
          "recovery under beta-min", "probabilistic", _G, (), "probabilistic")
def _check_g8(quick: bool, seed: int, t_scale: float = 1.0) -> CheckResult:
    draws = 60 if quick else 600
    a = simulate_thresholding(draws=draws, t_scale=t_scale, rng=claim_seed(seed, "G8a"))
    b = simulate_thresholding(draws=draws, t_scale=t_scale, signal=(2.05, 3.0), rng=claim_seed(seed, "G8b"))
    p1 = CheckResult.frequency(int(round((1 - a.sandwich_rate) * draws)), draws, a.delta, part="sandwich")
    gamma = 1.0 - b.min_signal_rate
    exact_fails = int(round((1 - b.exact_rate) * draws)) if b.min_signal_rate > 0 else draws
    p2 = CheckResult.frequency(exact_fails, draws, min(1.0, a.delta + gamma),
                               part="exact recovery under beta-min")
    return CheckResult.combine([p1, p2], details={"parts": [p1.details, p2.details]})


register("G9", "Gaussian stationarity collapse: fitted noise energy σ²N² of the trained N×N layer falls ≥ 4×",
         "probabilistic", _G, ("width_bulk_collapse",), "empirical")(
    lambda q, s: width_ratio_result(q, s, "energy", 0.25))
register("G10", "variance-scale collapse g*N → 0 ⇒ square MP edge 2√g* → 0: fitted edge 2√(σ²N) halves in "
         "training", "probabilistic", _G, ("width_bulk_collapse",), "empirical")(
    lambda q, s: width_ratio_result(q, s, "edge", 0.5))


# ----------------------------------------------------------------------------------------------------
# G11, G12, G15: exact inequalities behind the spectral results


def _matrix_cases(tag: str, quick: bool, seed: int, per_case: int,
                  fn: Callable[[np.ndarray, np.ndarray, int, np.random.Generator], list[Inequality]],
                  max_dim: int = 24, **details: Any) -> CheckResult:
    want = 300 if quick else 10_000
    n_mats = max(20, int(math.ceil(want / per_case)))
    return perturbation_result(claim_rng(seed, tag), n_mats, fn, max_dim, matrices=n_mats, **details)


def _g11_gaps(weyl_factor: float = 1.0) -> Callable[..., list[Inequality]]:
    def fn(S: np.ndarray, R: np.ndarray, r: int, rng: np.random.Generator) -> list[Inequality]:
        w = weyl_gap(S, R)
        return [replace(w, rhs=weyl_factor * w.rhs), eckart_young_gap(S, R, int(rng.integers(0, r + 1))),
                markov_tail_gap(S + R, float(rng.uniform(0.05, 3.0)))]

    return fn


@register("G11", "bulk collapse pieces: Weyl |s_i(S+R) − s_i(S)| ≤ ‖R‖_op; Eckart–Young tail; Markov tail "
          "ν((ε,∞)) ≤ ‖W‖²_F/(pε²)", "deterministic", _G, ("width_bulk_collapse",))
def _check_g11(quick: bool, seed: int, weyl_factor: float = 1.0) -> CheckResult:
    return _matrix_cases("G11", quick, seed, 3, _g11_gaps(weyl_factor),
                         note="spike stabilisation over training is shown in the width figure (empirical)")


def sin_theta_gap(S: np.ndarray, R: np.ndarray, r: int, rng: np.random.Generator) -> list[Inequality]:
    """Yu–Wang–Samworth (2015) Davis–Kahan/Wedin bound for the top-k right singular subspace (k drawn in
    1..r): ‖sinΘ‖_F ≤ 2(2σ₁ + ‖E‖) min(√k‖E‖, ‖E‖_F)/(σ_k² − σ_{k+1}²); the principal angles Θ come from
    ``scipy.linalg.subspace_angles``. Empty when r = 0 or the gap vanishes."""
    if r == 0:
        return []
    k = int(rng.integers(1, r + 1))
    _, s, Vt = np.linalg.svd(S)
    _, _, Vt_hat = np.linalg.svd(S + R)
    gap = s[k - 1] ** 2 - (s[k] ** 2 if k < s.size else 0.0)
    if gap <= 1e-9 * s[0] ** 2:
        return []
    sin_theta = float(np.linalg.norm(np.sin(linalg.subspace_angles(Vt[:k].T, Vt_hat[:k].T))))
    e_op = float(np.linalg.norm(R, 2))
    rhs = 2.0 * (2.0 * s[0] + e_op) * min(math.sqrt(k) * e_op, float(np.linalg.norm(R))) / gap
    return [Inequality("G12 sin-Theta", np.asarray(sin_theta), np.asarray(rhs), rtol=0.0,
                       atol=1e-9 * (1.0 + rhs))]


register("G12", "subspace stabilisation: ‖sinΘ(top-k of S+R, top-k of S)‖_F ≤ C‖R‖/gap (Yu–Wang–Samworth "
         "form, C explicit)", "deterministic", _G)(
    lambda q, s: _matrix_cases("G12", q, s, 1, sin_theta_gap))


# ----------------------------------------------------------------------------------------------------
# G13, G14: the square BBP map


def _check_g13(quick: bool, seed: int,
               inverse: Callable[[Any, float], Any] = inverse_bbp_square) -> CheckResult:
    Ns = (200, 400, 800) if quick else (250, 500, 1000, 2000)
    errs = []
    for N in Ns:
        res = bbp_experiment(N=N, thetas=(3.0, 2.0), sigma2=1.0, draws=2 if quick else 4,
                             rng=claim_seed(seed, f"G13-{N}"))
        est = np.asarray(inverse(res.observed, res.sigma2), dtype=np.float64)
        errs.append(float(np.nanmean(np.abs(est - res.thetas[None, :]) / res.thetas[None, :])))
    lim = 2.0 / np.sqrt(np.asarray(Ns, dtype=np.float64))
    bad = int(np.sum(np.asarray(errs) > lim))
    return CheckResult(len(Ns), bad, float(np.min(lim - np.asarray(errs))), bad == 0, kind="asymptotic",
                       tightness=tuple(errs), tightness_stat="mean relative error per N",
                       tolerance="mean relative error of inverse BBP ≤ 2/√N at every N (consistency at rate "
                                 "N^(-1/2))",
                       details={"N": list(Ns), "mean_rel_error": errs, "thetas": [3.0, 2.0], "sigma2": 1.0})


register("G13", "inverse BBP σ̂ = ½(s + √(s² − 4g)) is consistent for supercritical spikes (σ > √g)",
         "probabilistic", _G, ("bbp_map",), "asymptotic")(_check_g13)


def _check_g14(quick: bool, seed: int,
               bbp_map: Callable[[Any, float], Any] = outlier_location_square) -> CheckResult:
    N = 500 if quick else 2000
    sigma2 = 0.25
    res = bbp_experiment(N=N, thetas=(1.5, 1.0, 0.3), sigma2=sigma2, draws=2 if quick else 8,
                         rng=claim_seed(seed, "G14"))
    pred = np.asarray(bbp_map(res.thetas, sigma2), dtype=np.float64)
    tol = 3.0 * N ** (-1.0 / 3.0)
    dev = np.abs(res.observed - pred[None, :])
    viol = int(np.sum(dev > tol))
    return CheckResult(int(dev.size), viol, float(np.min(tol - dev)), viol == 0, kind="asymptotic",
                       tightness=tuple((dev / tol).ravel()), tightness_stat="|deviation|/tolerance per value",
                       tolerance=f"|s_i − (σ_i + g/σ_i or 2√g)| ≤ 3N^(-1/3) = {tol:.3g}",
                       details={"N": N, "sigma2": sigma2, "thetas": res.thetas, "predicted": pred,
                                "observed_mean": res.observed.mean(axis=0),
                                "bulk_top_mean": float(res.bulk_top.mean())})


register("G14", "BGN/BBP: s_i(S+R) → σ_i + g/σ_i if σ_i > √g else 2√g (R iid N(0,g/N), N×N)",
         "probabilistic", _G, ("bbp_map",), "asymptotic")(_check_g14)


@register("G15", "MP bulk: sup_x|F_νW − F_νR| ≤ rank(S)/min(N,M) (exact) and ν_W ≈ MP bulk "
          "(KS ≤ rank/p + 0.05)",
          "deterministic", _G, ("esd_mp_fit", "bulk_fraction_vs_alpha", "bema_synthetic"))
def _check_g15(quick: bool, seed: int) -> CheckResult:
    det = _matrix_cases("G15", quick, seed, 1, lambda S, R, r, _g: [rank_esd_gap(S, R, rank=r)])
    rng = claim_rng(seed, "G15-mp")
    N, M, r, sigma2 = (400, 200, 3, 1.0) if quick else (1600, 800, 5, 1.0)
    W = low_rank_signal((N, M), rng.uniform(3.0, 6.0, size=r), rng)
    W = W + rng.standard_normal((N, M)) * math.sqrt(sigma2 / N)
    law = MarchenkoPastur(ratio=M / N, sigma2=sigma2 / N)
    ks = float(stats.kstest(eigenvalues_from_matrix(W), law.cdf).statistic)
    lim = r / M + 0.05
    return replace(det, cases=det.cases + 1, violations=det.violations + int(ks > lim),
                   passed=det.passed and ks <= lim,
                   details={**det.details, "mp_ks": ks, "mp_ks_limit": lim, "mp_shape": [N, M]})


# ----------------------------------------------------------------------------------------------------
# negative controls


def _wrong_inverse(s: Any, sigma2: float) -> Any:
    """The authors' inverse-BBP bug: the factor ½ is dropped."""
    sv = np.asarray(s, dtype=np.float64)
    return sv + np.sqrt(np.maximum(sv**2 - 4.0 * sigma2, 0.0))


def _wrong_map(theta: Any, sigma2: float) -> Any:
    """BBP map with σ² ignored (θ + 1/θ, edge 2): wrong for σ² ≠ 1."""
    s = np.asarray(theta, dtype=np.float64)
    return np.where(s > 1.0, s + 1.0 / s, 2.0)


control("G1: τ_N × 0.01", "G1", "logit threshold shrunk 100×", lambda q, s: _check_g1(q, s, 0.01))
control("G4: τ_N,δ × 0.01", "G4", "simultaneous threshold shrunk 100×", lambda q, s: _check_g4(q, s, 0.01))
control("G8: threshold halved", "G8", "t/2 admits false positives", lambda q, s: _check_g8(q, s, 0.5))
control("G11: Weyl bound halved", "G11", "|Δs_i| ≤ ‖R‖_op/2 (tight when S = 0)",
        lambda q, s: _check_g11(q, s, 0.5))
control("G13: inverse BBP without ½", "G13", "σ̂ = s + √(s² − 4g) (the authors' code bug)",
        lambda q, s: _check_g13(q, s, _wrong_inverse))
control("G14: BBP map ignoring g", "G14", "σ + 1/σ (edge 2) used with g = 1/4",
        lambda q, s: _check_g14(q, s, _wrong_map))
