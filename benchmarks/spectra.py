"""Spectra benchmark: MP fitting speed and spike recovery, with ratios measured in one run.

(a) Speed: fit every Linear layer of timm ``vit_base_patch16_224`` (random init) with ``fit_mp_batch``
    against the floor — bare float64 ``eigvalsh`` of each layer's smaller Gram matrix — and against
    WeightWatcher 0.7.7 ``analyze(mp_fit=True)`` on the same layers.
(b) Spike recovery, two regimes: "few" (1–4 supercritical spikes at 1.3×–5× the BBP threshold) and "many"
    (5–20 at 1.3×–2×), each mixed with 0–3 subcritical ones, plus pure-noise matrices; exact spike-count
    recovery and false-positive rate for every fit method and for WeightWatcher, on the very same matrices.

Run: ``make bench`` or ``python -m benchmarks.spectra [--trials N] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks._common import median_time, weightwatcher, write_json
from mptheory.fit import fit_mp, fit_mp_batch
from mptheory.spikes import make_spiked_matrix

METHODS = ("rcb", "bema", "gd")


def vit_linear_weights() -> tuple[nn.Module, list[torch.Tensor]]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    mats = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    return model, mats


def eigvalsh_floor(mats: list[torch.Tensor]) -> None:
    for W in mats:
        A = W.double().numpy()
        G = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
        np.linalg.eigvalsh(G)


def speed(repeats: int) -> dict[str, Any]:
    model, mats = vit_linear_weights()
    shapes = sorted({tuple(W.shape) for W in mats})
    t_floor = median_time(lambda: eigvalsh_floor(mats), repeats)
    t_fit = median_time(lambda: fit_mp_batch(mats), repeats)
    out: dict[str, Any] = {
        "layers": len(mats),
        "shapes": [list(s) for s in shapes],
        "eigvalsh_floor_s": t_floor,
        "fit_mp_batch_s": t_fit,
        "fit_over_floor": t_fit / t_floor,
    }
    ww = weightwatcher()
    if ww is not None:
        # Only the Linear layers, as one container (WeightWatcher never runs a forward pass).
        linears = nn.Sequential(*[m for m in model.modules() if isinstance(m, nn.Linear)])
        watcher = ww.WeightWatcher(model=linears)
        t0 = time.perf_counter()
        df = watcher.analyze(mp_fit=True)
        t_ww = time.perf_counter() - t0
        out.update(weightwatcher_s=t_ww, weightwatcher_layers=int(len(df)))
        out["weightwatcher_over_fit"] = t_ww / t_fit
    return out


def _ww_spikes(ww: Any, W: np.ndarray) -> int:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
    df = ww.WeightWatcher(model=nn.Sequential(lin)).analyze(mp_fit=True)
    return int(df["num_spikes"].iloc[0])


REGIMES = {
    # name: (supercritical count, their factor range x BBP threshold, subcritical count, factor range)
    "few": ((1, 4), (1.3, 5.0), (0, 3), (0.2, 0.8)),
    "many": ((5, 20), (1.3, 2.0), (0, 3), (0.2, 0.8)),
}
# Fit variants compared on the same matrices: (label, fit_mp keywords).
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rcb", {"method": "rcb"}),
    ("rcb deflated", {"method": "rcb", "rcb_edge": "deflated"}),
    ("rcb d=0.01", {"method": "rcb", "delta": 0.01}),
    ("bema", {"method": "bema"}),
    ("gd", {"method": "gd"}),
)


def recovery(trials: int, shape: tuple[int, int], seed: int, with_ww: bool, regime: str) -> dict[str, Any]:
    """Exact spike-count recovery and pure-noise false positives, every variant on the same matrices."""
    (k1, f1, k0, f0) = REGIMES[regime]
    rng = np.random.default_rng(seed)
    ww = weightwatcher() if with_ww else None
    names = [v[0] for v in VARIANTS] + (["weightwatcher"] if ww is not None else [])
    exact = dict.fromkeys(names, 0)
    false_pos = dict.fromkeys(names, 0)
    for _ in range(trials):
        k_super = int(rng.integers(k1[0], k1[1] + 1))
        k_sub = int(rng.integers(k0[0], k0[1] + 1))
        factors = np.concatenate([rng.uniform(*f1, k_super), rng.uniform(*f0, k_sub)])
        spiked = make_spiked_matrix(shape, factors, rng=rng)
        noise = make_spiked_matrix(shape, (), rng=rng)
        for label, kw in VARIANTS:
            exact[label] += int(fit_mp(spiked.W, **kw).n_spikes == spiked.n_detectable)
            false_pos[label] += int(fit_mp(noise.W, **kw).n_spikes > 0)
        if ww is not None:
            exact["weightwatcher"] += int(_ww_spikes(ww, spiked.W) == spiked.n_detectable)
            false_pos["weightwatcher"] += int(_ww_spikes(ww, noise.W) > 0)
    tol = 3 * math.sqrt(0.05 * 0.95 / trials)
    return {
        "regime": regime,
        "spec": {"n_super": k1, "super_factor": f1, "n_sub": k0, "sub_factor": f0},
        "shape": list(shape),
        "trials": trials,
        "fp_tolerance_at_delta_0.05": 0.05 + tol,
        "exact_recovery": {k: v / trials for k, v in exact.items()},
        "false_positive_rate": {k: v / trials for k, v in false_pos.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="spiked + noise matrix pairs for (b)")
    ap.add_argument("--shape", type=int, nargs=2, default=(1024, 512))
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for (a)")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench/spectra.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {"speed": speed(args.repeats)}
    s = result["speed"]
    print(f"(a) ViT-B/16: {s['layers']} Linear layers, shapes {s['shapes']}")
    print(f"    bare float64 eigvalsh floor  {s['eigvalsh_floor_s']:.3f} s")
    print(f"    fit_mp_batch (rcb)           {s['fit_mp_batch_s']:.3f} s", end="")
    print(f"   ratio to floor {s['fit_over_floor']:.2f}x")
    if "weightwatcher_s" in s:
        print(
            f"    WeightWatcher mp_fit         {s['weightwatcher_s']:.3f} s   "
            f"WeightWatcher / ours {s['weightwatcher_over_fit']:.1f}x"
        )
    result["recovery"] = []
    for regime in REGIMES:
        rec = recovery(args.trials, tuple(args.shape), args.seed, not args.no_ww, regime)
        result["recovery"].append(rec)
        sp = rec["spec"]
        print(
            f"(b) {regime} spikes on {rec['shape']}, {rec['trials']} trials: "
            f"{sp['n_super']} supercritical at "
            f"{sp['super_factor']}x BBP + {sp['n_sub']} subcritical"
        )
        print(f"    {'method':<14} {'exact count':>12} {'false pos.':>11}", end="")
        print(f"   (FP tolerance at delta=0.05: {rec['fp_tolerance_at_delta_0.05']:.3f})")
        for k in rec["exact_recovery"]:
            print(f"    {k:<14} {rec['exact_recovery'][k]:>12.3f} {rec['false_positive_rate'][k]:>11.3f}")
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
