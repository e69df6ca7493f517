"""G8 by simulation: entrywise hard thresholding of a sparse signal plus Gaussian noise (digest §2.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mptheory.dynamics._common import _pos_int, _prob, _rng

__all__ = ["ThresholdSim", "simulate_thresholding"]


@dataclass
class ThresholdSim:
    """G8 frequencies.  ``t`` = √(2σ² log(2NM/δ)/N) (times ``t_scale``); ``sandwich_rate`` = fraction of
    draws with {|S| > 2t} ⊆ supp 𝓗_t(W) ⊆ supp S (theory ≥ 1 − δ); ``no_false_positive_rate`` and
    ``no_miss_rate`` the two inclusions separately; ``min_signal_rate`` = fraction of draws satisfying the
    minimum-signal ("β-min") condition (all nonzero |S_ij| > 2t); ``exact_rate`` = exact support recovery
    among those draws."""

    N: int
    M: int
    sigma2: float
    delta: float
    t: float
    draws: int
    sandwich_rate: float
    no_false_positive_rate: float
    no_miss_rate: float
    min_signal_rate: float
    exact_rate: float


def simulate_thresholding(N: int = 100, M: int = 80, sigma2: float = 1.0, delta: float = 0.05,
                          density: float = 0.05, signal: tuple[float, float] = (0.5, 3.0), draws: int = 100,
                          t_scale: float = 1.0,
                          rng: np.random.Generator | int | None = None) -> ThresholdSim:
    """G8: sparse S (each entry nonzero w.p. ``density``, magnitude uniform in ``signal`` times
    √(2σ² log(2NM/δ)/N), random sign) plus R iid N(0, σ²/N); threshold at t and record the sandwich."""
    N, M, draws = _pos_int("N", N), _pos_int("M", M), _pos_int("draws", draws)
    delta = _prob("delta", delta)
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0; got {sigma2!r}")
    if not (0.0 <= density <= 1.0):
        raise ValueError(f"density must lie in [0, 1]; got {density!r}")
    gen = _rng(rng)
    t0 = math.sqrt(2.0 * sigma2 * math.log(2.0 * N * M / delta) / N)
    t = t_scale * t0
    ok = np.zeros(draws, dtype=bool)
    nfp = np.zeros(draws, dtype=bool)
    nmiss = np.zeros(draws, dtype=bool)
    min_signal = np.zeros(draws, dtype=bool)
    exact = np.zeros(draws, dtype=bool)
    for k in range(draws):
        supp = gen.random((N, M)) < density
        sign = np.where(gen.random((N, M)) < 0.5, -1.0, 1.0)
        mag = gen.uniform(signal[0], signal[1], size=(N, M)) * t0 * sign
        S = np.where(supp, mag, 0.0)
        W = S + gen.standard_normal((N, M)) * math.sqrt(sigma2 / N)
        kept = np.abs(W) > t
        nfp[k] = not np.any(kept & ~supp)
        nmiss[k] = not np.any((np.abs(S) > 2 * t) & ~kept)
        ok[k] = nfp[k] and nmiss[k]
        min_signal[k] = bool(np.all(np.abs(S[supp]) > 2 * t))
        exact[k] = bool(np.array_equal(kept, supp))
    exact_rate = float(exact[min_signal].mean()) if min_signal.any() else float("nan")
    return ThresholdSim(N=N, M=M, sigma2=float(sigma2), delta=delta, t=t, draws=draws,
                        sandwich_rate=float(ok.mean()), no_false_positive_rate=float(nfp.mean()),
                        no_miss_rate=float(nmiss.mean()), min_signal_rate=float(min_signal.mean()),
                        exact_rate=exact_rate)
