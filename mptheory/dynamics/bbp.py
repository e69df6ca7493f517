"""G13/G14 by simulation: the square BBP map and its inverse on ``S + R``, R iid N(0, σ²/N) (N × N).

The maps themselves are :func:`mptheory.spikes.outlier_location_square` and
:func:`mptheory.spikes.inverse_bbp_square` (one definition); this module only simulates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mptheory.dynamics._common import Array, _pos_int, _rng
from mptheory.spikes import inverse_bbp_square, low_rank_signal, outlier_location_square

__all__ = ["BBPResult", "bbp_experiment"]


@dataclass
class BBPResult:
    """Observed top singular values (draws, r) of S + R against the BBP prediction (r,) and the
    inverse-BBP estimates (draws, r) for the signal singular values ``thetas`` (descending);
    ``edge`` = 2σ, ``supercritical`` = θ_i > σ."""

    N: int
    sigma2: float
    thetas: Array
    observed: Array
    predicted: Array
    edge: float
    supercritical: Array
    recovered: Array
    bulk_top: Array = field(default_factory=lambda: np.empty(0))


def bbp_experiment(N: int = 500, thetas: Sequence[float] = (2.0,), sigma2: float = 1.0, draws: int = 1,
                   rng: np.random.Generator | int | None = None) -> BBPResult:
    """G14: W = Σ θ_i u_i v_iᵀ + R, R iid N(0, σ²/N) N×N; the r top singular values vs the BBP map.

    ``bulk_top`` records s_{r+1}(W) (the top of the bulk, → 2σ)."""
    N, draws = _pos_int("N", N, 2), _pos_int("draws", draws)
    th = np.sort(np.asarray(thetas, dtype=np.float64))[::-1]
    if th.size == 0 or th.size >= N:
        raise ValueError(f"need 1 ≤ len(thetas) < N; got {th.size} spikes for N = {N}")
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0; got {sigma2!r}")
    gen = _rng(rng)
    obs = np.empty((draws, th.size))
    bulk = np.empty(draws)
    for k in range(draws):
        W = low_rank_signal((N, N), th, gen) + gen.standard_normal((N, N)) * math.sqrt(sigma2 / N)
        sv = np.linalg.svd(W, compute_uv=False)
        obs[k] = sv[: th.size]
        bulk[k] = sv[th.size]
    return BBPResult(N=N, sigma2=float(sigma2), thetas=th, observed=obs,
                     predicted=np.asarray(outlier_location_square(th, sigma2)), edge=2.0 * math.sqrt(sigma2),
                     supercritical=th > math.sqrt(sigma2),
                     recovered=np.asarray(inverse_bbp_square(obs, sigma2)), bulk_top=bulk)
