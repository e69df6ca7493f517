"""Runners of the :mod:`mptheory.dynamics` simulations shared by the §2.3 (A) and §2.4 (G) claims: the
three-layer logit simulation, the G7 band and the width experiment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from mptheory.claims.registry import claim_seed
from mptheory.dynamics import (
    G7Band,
    LogitBoundSim,
    WidthSeries,
    g7_band,
    simulate_logit_bounds,
    train_width_series,
)
from mptheory.verdict import CheckResult

PER_DRAW_TIGHTNESS = "largest realised/bound ratio over the samples of a draw"
BAND_TIGHTNESS = "largest |deviation|/half-width over ϑ of one band"


def logit_sim(tag: str, quick: bool, seed: int, tau_scale: float = 1.0, **kw: Any) -> LogitBoundSim:
    kw.setdefault("draws", 100 if quick else 1000)
    return simulate_logit_bounds(tau_scale=tau_scale, rng=claim_seed(seed, tag), **kw)


def per_sample_result(sim: LogitBoundSim, thr: np.ndarray, bound: float, **details: Any) -> CheckResult:
    """Worst sample's failure frequency over draws vs ``bound`` (K = draws)."""
    fails = (sim.dX > thr[None, :]).sum(axis=0)
    worst = int(fails.max())
    ratio = (sim.dX / thr[None, :]).max(axis=1)
    return CheckResult.frequency(worst, sim.draws, bound, ratio, PER_DRAW_TIGHTNESS, N=sim.N, T=sim.T,
                                 max_ratio=float(ratio.max()), **details)


def band_sims(tag: str, quick: bool, seed: int, Ns: Sequence[int], reps: int, T: int | None = None,
              activation: str = "relu") -> dict[int, list[G7Band]]:
    out: dict[int, list[G7Band]] = {}
    for N in Ns:
        t = T if T is not None else int(math.ceil(math.sqrt(N)))
        out[N] = [g7_band(N=N, T=t, activation=activation, rng=claim_seed(seed, f"{tag}-{N}-{k}"))
                  for k in range(reps)]
    return out


@lru_cache(maxsize=4)
def width_series(quick: bool, seed: int) -> WidthSeries:
    return train_width_series(quick=quick, seed=seed)


def width_ratio_result(quick: bool, seed: int, quantity: str, factor: float) -> CheckResult:
    """Empirical: final/initial ``quantity`` of the trained middle layer ≤ ``factor`` at every width."""
    ws = width_series(quick, seed)
    ratios = []
    for r in ws.runs:
        if quantity == "sigma2_N":
            q = r.sigma2_N
        elif quantity == "energy":
            q = r.sigma2 * r.width * r.width
        else:  # square MP singular edge 2√(σ²N)
            q = 2.0 * np.sqrt(r.sigma2_N)
        ratios.append(float(q[-1] / q[0]))
    viol = int(sum(x > factor for x in ratios))
    return CheckResult(
        len(ratios), viol, float(min(factor - x for x in ratios)), viol == 0, kind="empirical",
        tightness=tuple(ratios), tightness_stat=f"final/initial {quantity} per width",
        tolerance=f"final/initial ≤ {factor} at every width",
        details={"widths": list(ws.widths), "final_over_initial": ratios, "fitter": ws.fitter,
                 "epochs": ws.epochs, "lambda_reg": ws.lambda_reg,
                 "final_sigma2_N": ws.final_sigma2_N(), "initial_sigma2_N": ws.initial_sigma2_N(),
                 "note": "empirical: L2-regularised MLP training; the theorem's limits are not reached"})
