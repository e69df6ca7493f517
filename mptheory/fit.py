"""Marchenko–Pastur fits of a matrix spectrum: noise level σ², noise edge at a confidence level, spikes.

Scale (DESIGN "MP scale"): for W of shape (N, M), ``p = min(N, M)``, ``n = max(N, M)``, ratio
``c = p/n``; the ``p`` eigenvalues ``λ_i = s_i²/n`` of the smaller Gram matrix follow MP(c, σ²) for pure
noise with per-entry variance σ².

**Noise edge at confidence 1−δ** (the same construction for every method, so fits are comparable):
Johnstone's centring and scaling of the largest eigenvalue of the unnormalised Gram of an ``n × p`` noise
matrix (``n = max(N, M)``, ``p = min(N, M)`` whatever the orientation: W and Wᵀ have the same spectrum),

    μ_np = (√(n−1) + √p)²,   σ_np = (√(n−1) + √p)(1/√(n−1) + 1/√p)^{1/3},
    edge = σ̂²·(μ_np + t·σ_np)/n,

where the level ``t`` (``fit.edge_quantile``) makes a pure-noise matrix, *with σ² estimated by the
method*, show its top eigenvalue above ``edge`` with probability ≈ δ.  With σ̂² = σ²(1 + ε) and
``X = (λ₁n/σ² − μ_np)/σ_np ~ TW₁``, the event is ``X − ε(μ_np/σ_np + t) > t``: ε has sd O(1/p), i.e.
O(n^{−1/3}) TW units (≈ 0.5 at 256×128, 0.3 at 1024×512, 0.24 at 2048×1024), too much to ignore.  ``t`` is
therefore :func:`~mptheory.tracy_widom.tw_ratio_quantile` — TW₁ shifted by the bias of ε and convolved with
the part of its normal spread that ``λ₁`` does not share — with bias, sd and correlation of ε derived below
(never fitted to simulations).  ``sigma2_error=False`` gives the plain TW₁ (1−δ)-quantile, which is right
only for a known σ²; on pure noise it over-rejects by 10–35 % of δ at 128×64 to 256×128 (up to ≈ 2× for
the edge of ``gd``'s noisier median), the excess shrinking like n^{−1/3} (``benchmarks/fit_calibration.py``).
Johnstone's (n−1, p) form is kept rather than Ma's (2012) symmetric (n−½, p−½) one: with σ² known both
give false-positive rates within simulation error of δ (2000 exact-law draws per shape, 256×128 to
2048×1024 and 512×512; the two centrings differ by ≤ 0.035 TW units there).
``edge_sigma = √(n·edge)`` is the same edge on the singular-value scale.  The asymptotic edges are
``λ± = σ²(1 ± √c)²`` and ``σ₊ = σ(√N + √M)``.

**Sampling error of σ̂²** (pure real Gaussian noise of the bulk shape ``n_b × p_b``, ``fit.sigma2_rel_sd``).
Every σ̂² here is, to first order, a linear spectral statistic ``ε ≈ κ(Σ_j g(λ_j) − p∫g dMP)``: for the
window match (``bema``, ``rcb``) the Bahadur representation of the order statistics ``λ_(i) − q_i`` gives
``g(x) = ½ clip(x, x_lo, x_hi)²`` (the window's ends on the MP scale) and ``κ = 1/Σq_i²``; for ``gd``'s median
``g = 1{x ≤ μ_c}``, ``κ = −1/(p f(μ_c) μ_c)``.  Bai–Silverstein's (2004) CLT for real data, written with the
Chebyshev coefficients ``a_k`` of ``g((1 + c) + 2√c cos θ)``, gives the bias ``κ[(g(a) + g(b))/4 − a₀/4]`` and
the variance ``κ²·½ Σ_k k a_k²`` (``gd``'s discontinuous ``g``: terms ``k ≤ p``).  The covariance with the top
eigenvalue is the response of the upper MP edge ``b`` to the tilt ``exp(s Σ g(λ_j))``, i.e. to the potential
``V − (2s/p)g``: ``Cov(λ₁, Σ g) = (2b/n)(1/π)∫₀^π g′(x(θ))(1 + cos θ) dθ`` (exact for ``g(x) = x``, where
``λ₁``/trace is independent of the trace).  On exact-law pure-noise draws these match the simulated sd to
~3 %, the bias to ~20 % of its (small) size and the correlation (≈ 0.05–0.1) within its sampling error.
The edge uses them for its own shape: the full ``n × p`` (``rcb``'s bulk of ``p − k`` eigenvalues has an
error larger by O(k/p) only), the deflated ``(n−k) × (p−k)`` for ``rcb_edge="deflated"``.

**Methods** (``method=``) and what ``spikes`` means for each:

* ``"bema"`` — Ke–Ma–Lin bulk eigenvalue matching: least-squares match of the central window
  ``[⌊αp⌋, ⌊(1−α)p⌋)`` of the ascending eigenvalues against the MP(c, 1) quantiles at the mid-points
  ``(i + ½)/p``: ``σ̂² = Σ q_i λ_i / Σ q_i²``.  Spikes: eigenvalues above ``edge``.
* ``"gd"`` — Gavish–Donoho: ``σ̂² = median(λ)/μ_c`` with the exact MP median ``μ_c``; spikes: eigenvalues
  above the optimal hard threshold ``λ*(c)²σ̂²`` (``fit.threshold``), which is *above* the noise edge —
  GD spikes are the components worth keeping for MSE, not every detectable one.  ``edge`` is still the
  Johnstone noise edge, for comparability.
* ``"rcb"`` — rank-corrected bulk (default, this library's method): start from BEMA, count the ``k``
  eigenvalues above the edge, remove them, refit the remaining ``p − k`` bulk eigenvalues as the spectrum of
  an ``(n − k) × (p − k)`` noise matrix (ratio ``(p−k)/(n−k)``, quantile grid over ``p − k`` points, scale
  factor ``(n−k)/n`` because eigenvalues stay normalised by the original ``n``), recompute the edge with the
  rank-corrected σ², and iterate to a fixed point in ``k`` (at most ``max_iter`` rounds).  Spikes:
  eigenvalues above the final edge.  By default (``rcb_edge="full"``) the edge keeps the full ``n × p``
  shape: by Weyl interlacing λ_{k+1}(signal + noise) ≤ λ_1(noise) for a rank-k signal, so the over-count
  probability stays ≤ δ; ``rcb_edge="deflated"`` uses the ``(n−k) × (p−k)`` edge instead (more power for
  many near-threshold spikes, over-count above δ).

``authors_convention=True`` (or an explicit ``tw_level``) switches the edge to the Ke–Ma–Lin asymptotic form
``σ²[(1+√c)² + t_{1−ℓ} n^{−2/3} c^{−1/6} (1+√c)^{4/3}]`` with the TW₁ (1−ℓ)-quantile ``t_{1−ℓ}`` at the level
``ℓ = tw_level`` and the *correct* exponent 4/3 (digest §3.1 documents the ``**4/3`` precedence bug of the
authors' code, which we do not reproduce). ``authors_convention=True`` sets ``tw_level = 0.8``, i.e. the TW₁
0.2-quantile: an edge *below* the asymptotic edge, as the authors used (opt-in only; the authors call this
level β, a name this library keeps for the Dyson index of :class:`~mptheory.tracy_widom.TracyWidom`).

**Goodness of fit**: ``fit_error`` is the Kolmogorov distance ``sup|F_emp − F_MP|`` between the empirical CDF
of the bulk (eigenvalues ≤ edge) and the fitted bulk law (``fit.bulk_law``; rank-corrected for ``rcb``),
over the whole bulk — not the authors' rescaled central-window statistic, whose closed-form CDF bug makes
windows with supra-edge eigenvalues read ≈ 1.  It is exactly the statistic of
``scipy.stats.kstest(bulk, fit.bulk_law.cdf)`` (tested), computed here for a whole batch of layers at once
(masked and vectorised; scipy's one-sample test would need a Python loop per layer).  ``ks_pvalue`` is the
iid Kolmogorov–Smirnov p-value of that distance; eigenvalues are far more rigid than iid samples, so a small
p-value is strong evidence of a non-MP bulk while a large one is expected for any good fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from mptheory.edge import edge_quantile, noise_edge, sigma2_sampling_error, tw1_quantile, window_grid
from mptheory.mp import MarchenkoPastur, batched_eigenvalues, eigenvalues_from_matrix
from mptheory.spikes import gd_lambda_star, mp_median_unit

__all__ = ["MPFit", "METHODS", "fit_mp", "fit_mp_batch"]

FloatArray = NDArray[np.float64]
METHODS = ("rcb", "bema", "gd")
_NEG_TOL = 1e-10  # relative tolerance for round-off negative eigenvalues supplied by the caller


# --------------------------------------------------------------------------------------------- result
@dataclass(frozen=True, eq=False)
class MPFit:
    """Result of :func:`fit_mp` (all eigenvalue quantities on the MP scale ``λ = s²/max(N, M)``).

    ``edge_quantile`` is the level ``t`` of ``edge = σ̂²(μ_np + tσ_np)/n`` (TW₁ units; the Ke–Ma–Lin level
    for ``edge_convention="kml"``); ``sigma2_rel_sd`` is the derived sd of ``σ̂²/σ²`` on pure noise of the
    edge's shape (module docstring, "Sampling error of σ̂²").
    """

    sigma2: float
    ratio: float
    shape: tuple[int, int]
    lambda_minus: float
    lambda_plus: float
    sigma_plus: float
    edge: float
    edge_sigma: float
    threshold: float
    spikes: FloatArray
    n_spikes: int
    bulk_fraction: float
    fit_error: float
    ks_pvalue: float
    method: str
    delta: float
    alpha: float
    n_iter: int
    converged: bool
    bulk_shape: tuple[int, int]
    edge_convention: str
    tw_level: float | None
    edge_quantile: float = math.nan
    sigma2_rel_sd: float = math.nan

    @property
    def law(self) -> MarchenkoPastur:
        """The fitted noise law MP(c, σ²) of the full-shape matrix."""
        return MarchenkoPastur(ratio=self.ratio, sigma2=self.sigma2)

    @property
    def bulk_law(self) -> MarchenkoPastur:
        """Law the bulk was fitted to: MP((p−k)/(n−k), σ²(n−k)/n) for ``rcb`` (k removed), else ``law``."""
        n = max(self.shape)
        nb, pb = max(self.bulk_shape), min(self.bulk_shape)
        return MarchenkoPastur(ratio=pb / nb, sigma2=self.sigma2 * nb / n)

    @property
    def spikes_sigma(self) -> FloatArray:
        """The spikes on the singular-value scale, ``√(max(N, M)·λ)``."""
        return np.sqrt(max(self.shape) * self.spikes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (non-finite floats become ``None``)."""

        def f(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "sigma2": f(self.sigma2),
            "ratio": f(self.ratio),
            "shape": [int(s) for s in self.shape],
            "lambda_minus": f(self.lambda_minus),
            "lambda_plus": f(self.lambda_plus),
            "sigma_plus": f(self.sigma_plus),
            "edge": f(self.edge),
            "edge_sigma": f(self.edge_sigma),
            "threshold": f(self.threshold),
            "spikes": [float(x) for x in self.spikes],
            "n_spikes": int(self.n_spikes),
            "bulk_fraction": f(self.bulk_fraction),
            "fit_error": f(self.fit_error),
            "ks_pvalue": f(self.ks_pvalue),
            "method": self.method,
            "delta": f(self.delta),
            "alpha": f(self.alpha),
            "n_iter": int(self.n_iter),
            "converged": bool(self.converged),
            "bulk_shape": [int(s) for s in self.bulk_shape],
            "edge_convention": self.edge_convention,
            "tw_level": f(self.tw_level),
            "edge_quantile": f(self.edge_quantile),
            "sigma2_rel_sd": f(self.sigma2_rel_sd),
        }


def _validate_params(
    method: str, delta: float, alpha: float, tw_level: float | None, shape: tuple[int, int]
) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} for shape {shape}; choose one of {METHODS}")
    if not (isinstance(delta, (int, float)) and 0.0 < float(delta) < 1.0):
        raise ValueError(f"delta must be in (0, 1) (confidence 1-delta), got {delta!r} for shape {shape}")
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5) (quantile window), got {alpha!r} for shape {shape}")
    if tw_level is not None and not (isinstance(tw_level, (int, float)) and 0.0 < float(tw_level) < 1.0):
        raise ValueError(f"tw_level must be in (0, 1), got {tw_level!r} for shape {shape}")


def _as_matrix(W: Any) -> NDArray[np.float64]:
    if np.iscomplexobj(W) or (hasattr(W, "is_complex") and W.is_complex()):
        raise ValueError(f"W must be a real 2-D matrix; got a complex one of shape {tuple(np.shape(W))}")
    if hasattr(W, "detach") and hasattr(W, "cpu"):
        W = W.detach().cpu().double().numpy()
    try:
        return np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"W must be a real 2-D numeric matrix: {exc}") from None


def _check_matrix(A: NDArray[np.float64], where: str = "W") -> tuple[int, int]:
    if A.ndim != 2:
        raise ValueError(f"{where} must be a 2-D matrix (N, M); got an array of shape {A.shape}")
    if A.size == 0:
        raise ValueError(f"{where} must be non-empty; got shape {A.shape}")
    if min(A.shape) < 2:
        raise ValueError(f"{where} of shape {A.shape}: need at least 2 rows and 2 columns for an MP fit")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{where} of shape {A.shape} contains NaN or Inf")
    if not np.any(A):
        raise ValueError(f"{where} of shape {A.shape} is all zeros; the noise level is undefined")
    return int(A.shape[0]), int(A.shape[1])


# --------------------------------------------------------------------------------------------- core
def _fit_core(
    ev: FloatArray,
    shape: tuple[int, int],
    method: str,
    delta: float,
    alpha: float,
    tw_level: float | None,
    max_iter: int,
    max_rank_fraction: float,
    rcb_edge: str = "full",
    sigma2_error: bool = True,
) -> list[MPFit]:
    """Vectorised fit of ``B`` spectra of one shape; ``ev`` is ``(B, p)`` ascending on the MP scale."""
    B, p = ev.shape
    n = max(shape)
    c = p / n
    convention = "johnstone" if tw_level is None else "kml"

    def level(k: int) -> tuple[float, float]:
        """(TW₁ level, sd of σ̂²/σ²) of the edge when the bulk is fitted with k eigenvalues removed.

        The σ̂² error is that of pure noise of the edge's shape: the full shape (so the default ``rcb`` level
        does not depend on k; its bulk's error differs by O(k/p)), the deflated one for rcb_edge="deflated".
        """
        pe, ne = (p - k, n - k) if method == "rcb" and rcb_edge == "deflated" else (p, n)
        err = sigma2_sampling_error(method, pe, ne, float(alpha))
        if convention == "kml":
            return tw1_quantile(1.0 - float(tw_level or 0.0)), err[1]
        if not sigma2_error:
            return tw1_quantile(1.0 - delta), err[1]
        return edge_quantile(float(delta), pe, ne, err), err[1]

    k_max = max(0, min(int(math.floor(max_rank_fraction * p)), p - 2))

    k_bulk = np.zeros(B, dtype=np.int64)
    n_iter = np.ones(B, dtype=np.int64)
    converged = np.ones(B, dtype=bool)

    def bema_sigma2(rows: NDArray[np.intp], k: int) -> FloatArray:
        pb, nb = p - k, n - k
        lo, hi, q, qq = window_grid(pb, nb, float(alpha))
        return (ev[rows, lo:hi] @ q) / qq * (n / nb)

    all_rows = np.arange(B)
    if method == "gd":
        sigma2 = np.median(ev, axis=1) / float(mp_median_unit(c))
    else:
        sigma2 = bema_sigma2(all_rows, 0)
    _check_sigma2(sigma2, shape)
    t0, sd0 = level(0)
    t_used, s2_sd = np.full(B, t0), np.full(B, sd0)
    edge = noise_edge(sigma2, np.full(B, float(p)), np.full(B, float(n)), n, t0, convention)

    if method == "rcb":
        converged[:] = False
        active = all_rows
        for it in range(1, max_iter + 1):
            k_new = np.minimum(np.sum(ev[active] > edge[active, None], axis=1), k_max)
            done = k_new == k_bulk[active]
            converged[active[done]] = True
            n_iter[active] = it
            active = active[~done]
            if active.size == 0 or it == max_iter:
                break
            k_bulk[active] = k_new[~done]
            for k in np.unique(k_bulk[active]):
                rows = active[k_bulk[active] == k]
                sigma2[rows] = bema_sigma2(rows, int(k))
                _check_sigma2(sigma2[rows], shape)
                pe, ne = (p - k, n - k) if rcb_edge == "deflated" else (p, n)
                t_used[rows], s2_sd[rows] = level(int(k))
                edge[rows] = noise_edge(sigma2[rows], float(pe), float(ne), n, t_used[rows], convention)
        threshold = edge.copy()
    elif method == "gd":
        threshold = float(gd_lambda_star(c)) ** 2 * sigma2
    else:
        threshold = edge.copy()

    # goodness of fit of the bulk (eigenvalues <= edge) against the fitted bulk law
    in_bulk = ev <= edge[:, None]
    p_b = in_bulk.sum(axis=1)
    fit_error = np.ones(B)
    for k in np.unique(k_bulk):
        rows = np.flatnonzero(k_bulk == k)
        nb, pb = n - int(k), p - int(k)
        scale = sigma2[rows] * nb / n
        F = np.asarray(MarchenkoPastur(ratio=pb / nb).cdf(ev[rows] / scale[:, None]), dtype=float)
        idx = np.arange(p)[None, :]
        m = p_b[rows][:, None].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.maximum((idx + 1.0) / m - F, F - idx / m)
        d = np.where(in_bulk[rows], d, -np.inf)
        fit_error[rows] = np.where(p_b[rows] > 0, d.max(axis=1), 1.0)
    ks_p = np.where(p_b > 0, stats.kstwo.sf(fit_error, np.maximum(p_b, 1)), 0.0)

    sc = math.sqrt(c)
    out = []
    for b in range(B):
        spikes = np.sort(ev[b][ev[b] > threshold[b]])[::-1].copy()
        s2 = float(sigma2[b])
        kb = int(k_bulk[b])
        N, M = shape
        out.append(
            MPFit(
                sigma2=s2,
                ratio=c,
                shape=(N, M),
                lambda_minus=s2 * (1.0 - sc) ** 2,
                lambda_plus=s2 * (1.0 + sc) ** 2,
                sigma_plus=math.sqrt(s2) * (math.sqrt(N) + math.sqrt(M)),
                edge=float(edge[b]),
                edge_sigma=math.sqrt(n * float(edge[b])),
                threshold=float(threshold[b]),
                spikes=spikes,
                n_spikes=int(spikes.size),
                bulk_fraction=float(p_b[b]) / p,
                fit_error=float(fit_error[b]),
                ks_pvalue=float(ks_p[b]),
                method=method,
                delta=float(delta),
                alpha=float(alpha),
                n_iter=int(n_iter[b]),
                converged=bool(converged[b]),
                bulk_shape=(N - kb, M - kb),
                edge_convention=convention,
                tw_level=None if tw_level is None else float(tw_level),
                edge_quantile=float(t_used[b]),
                sigma2_rel_sd=float(s2_sd[b]),
            )
        )
    return out


def _check_sigma2(sigma2: FloatArray, shape: tuple[int, int]) -> None:
    if not np.all(np.isfinite(sigma2)) or np.any(sigma2 <= 0):
        raise ValueError(
            f"matrix of shape {shape}: the fitted bulk is zero (the matrix is numerically low-rank), "
            "so there is no noise bulk to fit an MP law to"
        )


def _resolve_tw_level(tw_level: float | None, authors_convention: bool) -> float | None:
    if authors_convention and tw_level is None:
        return 0.8
    return tw_level


def _check_rcbnoise_edge(rcb_edge: str) -> None:
    if rcb_edge not in ("full", "deflated"):
        raise ValueError(f"rcb_edge must be 'full' or 'deflated', got {rcb_edge!r}")


def _options(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop and check the fit keywords shared by every entry point (the rest of ``kw`` is an error)."""
    opts = {
        "method": kw.pop("method", "rcb"),
        "delta": kw.pop("delta", 0.05),
        "alpha": kw.pop("alpha", 0.25),
        "tw_level": _resolve_tw_level(kw.pop("tw_level", None), bool(kw.pop("authors_convention", False))),
        "max_iter": kw.pop("max_iter", 20),
        "max_rank_fraction": kw.pop("max_rank_fraction", 0.5),
        "rcb_edge": kw.pop("rcb_edge", "full"),
        "sigma2_error": kw.pop("sigma2_error", True),
    }
    if kw:
        raise ValueError(f"unknown keyword(s) {sorted(kw)}")
    if not (isinstance(opts["max_iter"], int) and opts["max_iter"] >= 1):
        raise ValueError(f"max_iter must be a positive int, got {opts['max_iter']!r}")
    if not (0.0 < float(opts["max_rank_fraction"]) < 1.0):
        raise ValueError(f"max_rank_fraction must be in (0, 1), got {opts['max_rank_fraction']!r}")
    _check_rcbnoise_edge(opts["rcb_edge"])
    if not isinstance(opts["sigma2_error"], (bool, np.bool_)):
        raise ValueError(f"sigma2_error must be True or False, got {opts['sigma2_error']!r}")
    return opts


def _core(ev: FloatArray, shp: tuple[int, int], o: dict[str, Any]) -> list[MPFit]:
    return _fit_core(
        ev, shp, o["method"], float(o["delta"]), float(o["alpha"]), o["tw_level"], o["max_iter"],
        float(o["max_rank_fraction"]), o["rcb_edge"], bool(o["sigma2_error"]),
    )


def _check_shape(shape: Any) -> tuple[int, int]:
    if shape is None:
        raise ValueError("shape=(N, M) is required with eigenvalues=")
    try:
        shp = (int(shape[0]), int(shape[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"shape must be a pair (N, M) of ints, got {shape!r}") from None
    if len(shape) != 2 or min(shp) < 2:
        raise ValueError(f"shape {tuple(shape)}: need a pair (N, M) with at least 2 rows and 2 columns")
    return shp


def _check_eigenvalues(eigenvalues: Any, shp: tuple[int, int], ndim: int) -> FloatArray:
    """Validated ``(B, p)`` ascending eigenvalues (``ndim`` = 1 for one spectrum, 2 for a batch)."""
    ev = _as_matrix(eigenvalues) if ndim == 2 else _as_matrix(eigenvalues)[None, ...]
    if ev.ndim != 2 or ev.shape[0] == 0:
        want = "1-D" if ndim == 1 else "2-D (one row per matrix)"
        got = np.shape(eigenvalues)
        raise ValueError(f"eigenvalues must be {want}, got shape {got} (matrix shape {shp})")
    if ev.shape[1] != min(shp):
        raise ValueError(
            f"expected min(N, M) = {min(shp)} eigenvalues for shape {shp}, got {ev.shape[1]} "
            "(pass the eigenvalues of the smaller Gram matrix divided by max(N, M))"
        )
    if not np.all(np.isfinite(ev)):
        raise ValueError(f"eigenvalues for shape {shp} contain NaN or Inf")
    top = np.max(np.abs(ev), axis=1)
    if np.any(top == 0.0):
        raise ValueError(f"eigenvalues for shape {shp} are all zero; the noise level is undefined")
    if np.any(np.min(ev, axis=1) < -_NEG_TOL * top):
        raise ValueError(f"eigenvalues for shape {shp} must be non-negative (min {np.min(ev):.3g})")
    return np.sort(np.maximum(ev, 0.0), axis=1)


# --------------------------------------------------------------------------------------------- public API
def fit_mp(
    W: Any = None,
    *,
    eigenvalues: Any = None,
    shape: Sequence[int] | None = None,
    method: str = "rcb",
    delta: float = 0.05,
    alpha: float = 0.25,
    tw_level: float | None = None,
    authors_convention: bool = False,
    max_iter: int = 20,
    max_rank_fraction: float = 0.5,
    rcb_edge: str = "full",
    sigma2_error: bool = True,
) -> MPFit:
    """Fit a Marchenko–Pastur law to the spectrum of ``W`` (or to given eigenvalues) and find its spikes.

    Parameters
    ----------
    W : array-like or torch tensor of shape (N, M), optional
        The matrix. Exactly one of ``W`` and ``eigenvalues`` must be given.
    eigenvalues : 1-D array, optional
        The ``min(N, M)`` eigenvalues on the MP scale ``s²/max(N, M)`` (any order); requires ``shape``.
    shape : (N, M)
        Shape of the matrix (required with ``eigenvalues``; must match ``W`` if both are given).
    method : {"rcb", "bema", "gd"}
        See the module docstring; ``"rcb"`` (rank-corrected bulk) is the default.
    delta : float in (0, 1)
        The noise edge is the (1−δ) edge: a pure-noise matrix has spikes with probability ≈ δ, σ² estimated.
    alpha : float in (0, 0.5)
        Central quantile window ``[αp, (1−α)p)`` used for the bulk match (not used by ``gd``'s σ²).
    tw_level, authors_convention :
        Opt into the Ke–Ma–Lin asymptotic edge with the TW₁ (1−tw_level)-quantile;
        ``authors_convention=True`` sets ``tw_level = 0.8`` (the authors' liberal edge, their β). ``delta``
        and ``sigma2_error`` are then not used for the edge.
    max_iter : int
        Iteration cap for ``rcb``.
    max_rank_fraction : float in (0, 1)
        ``rcb`` never removes more than this fraction of the eigenvalues from the bulk.
    rcb_edge : {"full", "deflated"}
        Which noise edge ``rcb`` counts spikes against. ``"full"`` (default): the Johnstone edge of the full
        ``n × p`` shape with the rank-corrected σ²; by Weyl interlacing the (k+1)-th eigenvalue of a rank-k
        signal plus noise never exceeds the top eigenvalue of the noise alone, so over-counting has
        probability ≤ δ. ``"deflated"``: the edge of the ``(n−k) × (p−k)`` deflated noise matrix — more power
        when many spikes sit just above the BBP threshold, but the over-count rate exceeds δ and it can run
        away on heavy-tailed (non-MP) trained spectra.
    sigma2_error : bool
        ``True`` (default): the edge's TW₁ level accounts for the sampling error of σ̂² (module docstring).
        ``False``: the plain TW₁ (1−δ)-quantile, which treats σ̂² as exact (the edge of earlier versions,
        reproduced bit for bit; calibrated only when σ² is known).
    """
    if (W is None) == (eigenvalues is None):
        raise ValueError("give exactly one of W and eigenvalues=")
    opts = _options(
        {
            "method": method, "delta": delta, "alpha": alpha, "tw_level": tw_level,
            "authors_convention": authors_convention, "max_iter": max_iter,
            "max_rank_fraction": max_rank_fraction, "rcb_edge": rcb_edge, "sigma2_error": sigma2_error,
        }
    )
    if W is not None:
        A = _as_matrix(W)
        shp = _check_matrix(A)
        if shape is not None and tuple(int(s) for s in shape) != shp:
            raise ValueError(f"shape {tuple(shape)} does not match W.shape {shp}")
        _validate_params(method, delta, alpha, opts["tw_level"], shp)
        ev = np.asarray(eigenvalues_from_matrix(A), dtype=np.float64)[None, :]
    else:
        shp = _check_shape(shape)
        _validate_params(method, delta, alpha, opts["tw_level"], shp)
        ev = _check_eigenvalues(eigenvalues, shp, ndim=1)
    return _core(ev, shp, opts)[0]


def fit_mp_batch(
    matrices: Iterable[Any] | None = None, *, eigenvalues: Any = None, shape: Sequence[int] | None = None,
    **kw: Any,
) -> list[MPFit]:
    """Fit many matrices at once; same keywords and results as :func:`fit_mp` (order preserved).

    Matrices of equal shape are grouped; each group gets one batched float64 ``eigvalsh`` on the stacked
    ``(B, p, p)`` smaller-Gram array and one vectorised fit.  Instead of matrices, ``eigenvalues=`` takes a
    ``(B, min(N, M))`` array of spectra of ``B`` matrices of one ``shape=(N, M)`` (MP scale, any order within
    a row), e.g. from :func:`mptheory.mp.batched_eigenvalues`, so that one eigendecomposition serves fits
    at several ``delta``.
    """
    if (matrices is None) == (eigenvalues is None):
        raise ValueError("give exactly one of matrices and eigenvalues= (with shape=)")
    if matrices is not None and shape is not None:
        raise ValueError("shape= goes with eigenvalues= only; matrices carry their own shapes")
    opts = _options(dict(kw))
    if eigenvalues is not None:
        shp = _check_shape(shape)
        _validate_params(opts["method"], opts["delta"], opts["alpha"], opts["tw_level"], shp)
        return _core(_check_eigenvalues(eigenvalues, shp, ndim=2), shp, opts)
    groups: dict[tuple[int, int], list[int]] = {}
    mats: list[NDArray[np.float64]] = []
    for i, W in enumerate(matrices or ()):
        A = _as_matrix(W)
        shp = _check_matrix(A, where=f"matrix {i}")
        _validate_params(opts["method"], opts["delta"], opts["alpha"], opts["tw_level"], shp)
        mats.append(A)
        groups.setdefault(shp, []).append(i)
    out: list[MPFit | None] = [None] * len(mats)
    for shp, idx in groups.items():
        for i, f in zip(idx, _core(batched_eigenvalues([mats[i] for i in idx]), shp, opts)):
            out[i] = f
    return [f for f in out if f is not None]


