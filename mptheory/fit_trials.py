"""Monte Carlo trials of the MP fits on synthetic spectra: exact-law noise spectra and spike recovery.

:func:`wishart_eigenvalues` draws pure-noise spectra from their exact law in O(p²) per draw (for the
calibration Monte Carlo of ``benchmarks/fit_calibration.py`` and the δ-promise tests);
:func:`spike_recovery_trial` measures spike-count recovery, false positives and σ² error of several fit
methods on the same matrices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import linalg

from mptheory.fit import METHODS, _core, _options, _validate_params
from mptheory.mp import batched_eigenvalues
from mptheory.spikes import make_spiked_matrix

__all__ = ["spike_recovery_trial", "wishart_eigenvalues"]

FloatArray = NDArray[np.float64]


def wishart_eigenvalues(
    shape: tuple[int, int], size: int, *, sigma2: float = 1.0, rng: np.random.Generator | int | None = None
) -> FloatArray:
    """``(size, p)`` ascending MP-scale eigenvalues of ``size`` pure Gaussian noise matrices of ``shape``.

    Exactly the law of ``batched_eigenvalues`` of iid N(0, σ²) matrices (either orientation), drawn from the
    Dumitriu–Edelman (2002) bidiagonal model in O(p²) per matrix instead of a dense O(n p²) Gram and
    eigendecomposition: ``B`` lower bidiagonal with ``B_ii ~ χ_{n−i}`` (i = 0…p−1) and
    ``B_{i+1,i} ~ χ_{p−1−i}`` has ``BBᵀ`` distributed as the spectrum of ``XᵀX``, X ``n × p`` standard
    Gaussian.  For calibration Monte Carlo on pure noise (``benchmarks/fit_calibration.py``).
    """
    N, M = (int(shape[0]), int(shape[1]))
    n, p = max(N, M), min(N, M)
    if p < 2 or int(size) < 1 or not (math.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"need a shape with at least 2 rows and columns, size >= 1, sigma2 > 0; got {shape}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    df_diag = (n - np.arange(p)).astype(float)
    df_off = (p - 1 - np.arange(p - 1)).astype(float)
    out = np.empty((int(size), p))
    for b in range(int(size)):
        x = np.sqrt(gen.chisquare(df_diag))
        y = np.sqrt(gen.chisquare(df_off))
        d = x * x
        d[1:] += y * y
        out[b] = linalg.eigvalsh_tridiagonal(d, y * x[:-1], lapack_driver="stemr")
    return np.maximum(out, 0.0) * (sigma2 / n)


def spike_recovery_trial(
    shape: tuple[int, int] = (1024, 512),
    n_trials: int = 200,
    *,
    methods: Sequence[str] = METHODS,
    sigma2: float = 1.0,
    n_super: tuple[int, int] = (1, 4),
    super_factor: tuple[float, float] = (1.3, 3.0),
    n_sub: tuple[int, int] = (0, 3),
    sub_factor: tuple[float, float] = (0.2, 0.8),
    delta: float = 0.05,
    seed: int = 0,
    chunk: int = 25,
    **fit_kw: Any,
) -> dict[str, dict[str, float]]:
    """Monte Carlo of spike-count recovery, false positives and σ² error for several fit methods.

    Each trial draws one spiked matrix (``n_super`` supercritical spikes with signal singular values
    ``super_factor ×`` the BBP threshold, mixed with ``n_sub`` subcritical ones at ``sub_factor ×``; ranges
    inclusive, uniform) and one pure-noise matrix.  Returns, per method: ``exact_recovery`` (fraction of
    spiked trials with ``n_spikes`` equal to the number of supercritical spikes), ``undercount``,
    ``overcount``, ``false_positive_rate`` (pure-noise trials with any spike), ``sigma2_relerr_noise_mean``
    / ``_max`` and ``sigma2_relerr_spiked_mean`` / ``_max`` (|σ̂²/σ² − 1|), and ``seconds`` (fit time,
    excluding the shared eigendecomposition).  Eigenvalues are computed once per chunk and reused by all
    methods, so the methods see exactly the same matrices.
    """
    shp = (int(shape[0]), int(shape[1]))
    if "method" in fit_kw:
        raise ValueError("spike_recovery_trial takes methods=, not method=")
    opts = _options({**fit_kw, "delta": delta})
    for m in methods:
        _validate_params(m, delta, opts["alpha"], opts["tw_level"], shp)
    rng = np.random.default_rng(seed)
    res: dict[str, dict[str, list[float]]] = {
        m: {"exact": [], "under": [], "over": [], "fp": [], "err_noise": [], "err_spiked": [], "sec": []}
        for m in methods
    }
    done = 0
    while done < n_trials:
        b = min(chunk, n_trials - done)
        spiked, noise, truth = [], [], []
        for _ in range(b):
            k1 = int(rng.integers(n_super[0], n_super[1] + 1))
            k0 = int(rng.integers(n_sub[0], n_sub[1] + 1))
            fac = np.concatenate([rng.uniform(*super_factor, size=k1), rng.uniform(*sub_factor, size=k0)])
            sm = make_spiked_matrix(shape, fac, sigma2=sigma2, rng=rng)
            spiked.append(sm.W)
            truth.append(sm.n_detectable)
            noise.append(make_spiked_matrix(shape, (), sigma2=sigma2, rng=rng).W)
        ev_s = batched_eigenvalues(spiked)
        ev_n = batched_eigenvalues(noise)
        for m in methods:
            t0 = time.perf_counter()
            fs = _core(ev_s, shp, {**opts, "method": m})
            fn = _core(ev_n, shp, {**opts, "method": m})
            r = res[m]
            r["sec"].append(time.perf_counter() - t0)
            for f, k in zip(fs, truth):
                r["exact"].append(float(f.n_spikes == k))
                r["under"].append(float(f.n_spikes < k))
                r["over"].append(float(f.n_spikes > k))
                r["err_spiked"].append(abs(f.sigma2 / sigma2 - 1.0))
            for f in fn:
                r["fp"].append(float(f.n_spikes > 0))
                r["err_noise"].append(abs(f.sigma2 / sigma2 - 1.0))
        done += b
    return {
        m: {
            "exact_recovery": float(np.mean(r["exact"])),
            "undercount": float(np.mean(r["under"])),
            "overcount": float(np.mean(r["over"])),
            "false_positive_rate": float(np.mean(r["fp"])),
            "sigma2_relerr_noise_mean": float(np.mean(r["err_noise"])),
            "sigma2_relerr_noise_max": float(np.max(r["err_noise"])),
            "sigma2_relerr_spiked_mean": float(np.mean(r["err_spiked"])),
            "sigma2_relerr_spiked_max": float(np.max(r["err_spiked"])),
            "n_trials": float(n_trials),
            "seconds": float(np.sum(r["sec"])),
        }
        for m, r in res.items()
    }
