"""Calibration of ``fit_mp``'s noise edge: pure-noise false positives and spike-count recovery, before/after.

"Before" is ``sigma2_error=False``: the plain TW₁ (1−δ)-quantile that treats σ̂² as exact, bit-identical to
the edge of ``main`` up to cb8dea9 (checked on rcb/bema/gd × full/deflated × δ × the authors' convention).
"After" is the default edge, whose level accounts for the sampling error of σ̂² (``mptheory.fit`` module
docstring).  Both are measured on the very same spectra.

(a) False-positive rate on pure Gaussian noise, σ² estimated, per shape (256×128 … 2048×1024, and the
    transposes), δ ∈ {0.01, 0.05, 0.1} and method, against the known-σ oracle (top eigenvalue above the
    Johnstone edge with σ² = 1) and the binomial tolerance δ + 3·√(δ(1−δ)/K).  Spectra come from
    ``wishart_eigenvalues`` (the exact law of the dense spectrum, O(p²) per draw); ``--dense`` draws dense
    matrices instead.  W and Wᵀ have the same spectrum and ``fit_mp`` depends on the shape only through
    (max, min), so the transposed shapes are fitted on the same draws (``--dense`` draws them afresh).
    For ``gd`` a false positive is a spike above its Gavish–Donoho threshold (far above the edge); its
    ``gd edge`` row counts the top eigenvalue above the reported noise edge instead.
(b) Exact spike-count recovery with the generator and seed of ``benchmarks/spectra.py`` ("few": 1–4
    supercritical spikes at 1.3–5× the BBP threshold plus 0–3 subcritical ones; "many": 5–20 at 1.3–2×;
    seed 0, each trial paired with a pure-noise matrix) and a harder "at 1.3×" regime (1–4 supercritical
    spikes all exactly at 1.3× the BBP threshold), dense matrices, one eigendecomposition per matrix shared
    by every variant.  Also the
    false positives of the paired noise matrices and the mean |σ̂²/σ² − 1| on them (the same before and after
    for ``bema`` and ``gd``, whose σ̂² does not depend on the edge; ``rcb``'s depends on its spike count).

Run: ``python -m benchmarks.fit_calibration [--trials K] [--recovery-trials N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mptheory.fit import fit_mp_batch
from mptheory.fit_trials import wishart_eigenvalues
from mptheory.io import atomic_write_json
from mptheory.mp import batched_eigenvalues
from mptheory.spikes import make_spiked_matrix
from mptheory.tracy_widom import tw_edge_quantile

SHAPES = ((256, 128), (512, 256), (1024, 512), (2048, 1024))
DELTAS = (0.01, 0.05, 0.1)
# (label, fit keywords); "gd edge" is gd's noise edge rather than its GD threshold
FP_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rcb", {"method": "rcb"}),
    ("rcb deflated", {"method": "rcb", "rcb_edge": "deflated"}),
    ("bema", {"method": "bema"}),
    ("gd", {"method": "gd"}),
    ("gd edge", {"method": "gd"}),
)
RECOVERY_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rcb", {"method": "rcb"}),
    ("rcb deflated", {"method": "rcb", "rcb_edge": "deflated"}),
    ("rcb d=0.01", {"method": "rcb", "delta": 0.01}),
    ("bema", {"method": "bema"}),
    ("gd", {"method": "gd"}),
)
REGIMES = {
    # name: (supercritical count, factor range x BBP threshold, subcritical count, factor range)
    "few": ((1, 4), (1.3, 5.0), (0, 3), (0.2, 0.8)),
    "many": ((5, 20), (1.3, 2.0), (0, 3), (0.2, 0.8)),
    "at 1.3x": ((1, 4), (1.3, 1.3), (0, 3), (0.2, 0.8)),
}


def tolerance(delta: float, k: int) -> float:
    return delta + 3.0 * math.sqrt(delta * (1.0 - delta) / k)


def oracle_rate(ev: np.ndarray, shape: tuple[int, int], delta: float) -> float:
    """Known σ² = 1: top eigenvalue above the Johnstone edge with the plain TW₁ (1−δ)-quantile."""
    n, p = max(shape), min(shape)
    a = math.sqrt(n - 1.0) + math.sqrt(p)
    scale = a * (1.0 / math.sqrt(n - 1.0) + 1.0 / math.sqrt(p)) ** (1.0 / 3.0)
    edge = (a * a + float(tw_edge_quantile(delta)) * scale) / n
    return float(np.mean(ev[:, -1] > edge))


def fp_rates(
    ev: np.ndarray, shape: tuple[int, int], label: str, kw: dict[str, Any], delta: float
) -> list[float]:
    """[after, before] false-positive rates of one variant on the spectra ``ev`` (B, p)."""
    out = []
    for sigma2_error in (True, False):
        fits = fit_mp_batch(eigenvalues=ev, shape=shape, delta=delta, sigma2_error=sigma2_error, **kw)
        if label == "gd edge":
            out.append(float(np.mean([e[-1] > f.edge for e, f in zip(ev, fits)])))
        else:
            out.append(float(np.mean([f.n_spikes > 0 for f in fits])))
    return out


def sweep(trials: int, seed: int, dense: bool, shapes: tuple[tuple[int, int], ...]) -> list[dict[str, Any]]:
    rows = []
    for i, (n, p) in enumerate(shapes):
        rng = np.random.default_rng([seed, i])
        t0 = time.perf_counter()
        draws: list[tuple[tuple[int, int], np.ndarray]] = []
        if dense:
            for shape in ((n, p), (p, n)):
                ev = np.concatenate(
                    [batched_eigenvalues([rng.standard_normal(shape) for _ in range(min(50, trials - j))])
                     for j in range(0, trials, 50)]
                )
                draws.append((shape, ev))
        else:
            ev = wishart_eigenvalues((n, p), trials, rng=rng)
            draws = [((n, p), ev), ((p, n), ev)]
        for shape, ev in draws:
            for delta in DELTAS:
                row: dict[str, Any] = {
                    "shape": list(shape), "delta": delta, "trials": trials,
                    "tolerance": tolerance(delta, trials), "oracle": oracle_rate(ev, shape, delta),
                }
                for label, kw in FP_VARIANTS:
                    row[label] = dict(zip(("after", "before"), fp_rates(ev, shape, label, kw, delta)))
                rows.append(row)
        print(f"    ({n}x{p} and transpose: {time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def recovery(trials: int, shape: tuple[int, int], seed: int, regime: str) -> dict[str, Any]:
    """Exact spike counts with benchmarks/spectra.py's generator (same rng call order and seed)."""
    (k1, f1, k0, f0) = REGIMES[regime]
    rng = np.random.default_rng(seed)
    spiked, noise, truth = [], [], []
    for _ in range(trials):
        k_super = int(rng.integers(k1[0], k1[1] + 1))
        k_sub = int(rng.integers(k0[0], k0[1] + 1))
        factors = np.concatenate([rng.uniform(*f1, k_super), rng.uniform(*f0, k_sub)])
        sm = make_spiked_matrix(shape, factors, rng=rng)
        spiked.append(batched_eigenvalues([sm.W])[0])
        truth.append(sm.n_detectable)
        noise.append(batched_eigenvalues([make_spiked_matrix(shape, (), rng=rng).W])[0])
    ev_s, ev_n, k_true = np.array(spiked), np.array(noise), np.array(truth)
    out: dict[str, Any] = {"regime": regime, "shape": list(shape), "trials": trials, "seed": seed}
    for label, kw in RECOVERY_VARIANTS:
        res = {}
        for tag, sigma2_error in (("after", True), ("before", False)):
            fs = fit_mp_batch(eigenvalues=ev_s, shape=shape, sigma2_error=sigma2_error, **kw)
            fn = fit_mp_batch(eigenvalues=ev_n, shape=shape, sigma2_error=sigma2_error, **kw)
            res[tag] = {
                "exact_recovery": float(np.mean([f.n_spikes == k for f, k in zip(fs, k_true)])),
                "false_positive_rate": float(np.mean([f.n_spikes > 0 for f in fn])),
                "sigma2_relerr_noise_mean": float(np.mean([abs(f.sigma2 - 1.0) for f in fn])),
            }
        out[label] = res
    return out


def print_sweep(rows: list[dict[str, Any]]) -> None:
    labels = [v[0] for v in FP_VARIANTS]
    head = f"    {'shape':>10} {'delta':>5} {'tol':>6} {'oracle':>7}  "
    print(head + "  ".join(f"{v:>13}" for v in labels))
    print(f"    {'':>10} {'':>5} {'':>6} {'':>7}  " + "  ".join(f"{'after/before':>13}" for _ in labels))
    for r in rows:
        cells = []
        for v in labels:
            a, b = r[v]["after"], r[v]["before"]
            mark = "!" if a > r["tolerance"] else " "
            cells.append(f"{a:.4f}/{b:.4f}{mark}")
        shape = "x".join(str(s) for s in r["shape"])
        head = f"    {shape:>10} {r['delta']:>5} {r['tolerance']:>6.4f} {r['oracle']:>7.4f}  "
        print(head + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000, help="pure-noise spectra per shape for (a)")
    ap.add_argument("--recovery-trials", type=int, default=250, help="spiked + noise pairs per regime in (b)")
    ap.add_argument("--recovery-shape", type=int, nargs=2, default=(1024, 512))
    ap.add_argument("--shapes", type=str, default=",".join(f"{n}x{p}" for n, p in SHAPES))
    ap.add_argument("--dense", action="store_true", help="dense matrices instead of wishart_eigenvalues")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench/fit_calibration.json")
    args = ap.parse_args(argv)
    shapes = tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"(a) false positives on pure noise, sigma^2 estimated, {args.trials} spectra per shape "
          f"({'dense' if args.dense else 'wishart_eigenvalues'}); after/before; '!' = above tolerance")
    rows = sweep(args.trials, args.seed, args.dense, shapes)  # type: ignore[arg-type]
    print_sweep(rows)
    result: dict[str, Any] = {"false_positives": rows, "recovery": []}
    shape = tuple(args.recovery_shape)
    for regime in REGIMES:
        rec = recovery(args.recovery_trials, shape, args.seed, regime)  # type: ignore[arg-type]
        result["recovery"].append(rec)
        print(f"(b) {regime} regime on {list(shape)}, {rec['trials']} trials "
              f"(benchmarks/spectra.py generator, seed {args.seed}); after/before")
        print(f"    {'variant':<14} {'exact count':>15} {'noise FP':>15} {'|s2/s2-1| on noise':>21}")
        for label, _ in RECOVERY_VARIANTS:
            a, b = rec[label]["after"], rec[label]["before"]
            print(f"    {label:<14} {a['exact_recovery']:>7.3f}/{b['exact_recovery']:.3f}"
                  f" {a['false_positive_rate']:>7.3f}/{b['false_positive_rate']:.3f}"
                  f" {a['sigma2_relerr_noise_mean']:>10.5f}/{b['sigma2_relerr_noise_mean']:.5f}")
    print(f"wrote {atomic_write_json(out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
