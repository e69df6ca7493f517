"""Spectra of real models: ``mpprune.spectrum.analyze`` against WeightWatcher 0.7.7, in one run.

Models: the real all-MiniLM-L6-v2 Linear layers (``load_minilm_linears(as_module=True)``) and the real
ImageNet EfficientNet-Lite0 (``load_efficientnet_lite0()``).

Compared layers: those where both tools read the SAME matrix — Linear layers and ungrouped 1x1 convs.
WeightWatcher splits a kxk conv into k*k (Cout, Cin) slices while we read the (Cout, Cin*k*k) im2col
matrix, so kxk convs are not comparable and are left out (depthwise convs are not fitted by us at all).

Reported per model: time of ``analyze(model, include=compared layers)`` (median of ``--repeats``) and of
``WeightWatcher(model=<the same layers>).analyze(mp_fit=True)`` (run once: it is slow; its default call
also fits a power law per layer), their ratio; and spike-count agreement per layer: fraction of layers
with equal counts, mean |ours - WW|, Pearson correlation, plus a per-layer table (name, shape, ours, WW).

Both tools run with the same BLAS/torch thread count (``--threads``, default 1).

Run: ``python -m benchmarks.models_spectra [--models minilm efficientnet] [--max-layers K] [--out FILE]``.
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

MODELS = ("minilm", "efficientnet")


def load(name: str) -> nn.Module:
    """The real model ``name`` (``minilm`` or ``efficientnet``), eval mode."""
    from mpprune.models import load_efficientnet_lite0, load_minilm_linears

    if name == "minilm":
        model = load_minilm_linears(as_module=True)
        assert isinstance(model, nn.Module)
        return model
    if name == "efficientnet":
        return load_efficientnet_lite0()
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


def comparable_layers(model: nn.Module, min_dim: int = 16) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear and ungrouped 1x1 Conv2d whose smaller dimension is >= ``min_dim``.

    For these the matrix view (out, in) is the same for us and for WeightWatcher.
    """
    out: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            shape = (mod.out_features, mod.in_features)
        elif isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1) and mod.groups == 1:
            shape = (mod.out_channels, mod.in_channels)
        else:
            continue
        if min(shape) >= min_dim:
            out.append((name, mod))
    return out


def agreement(ours: list[int], theirs: list[int]) -> dict[str, float]:
    """Equal-count fraction, mean |difference|, Pearson correlation (nan if either side is constant)."""
    if len(ours) != len(theirs):
        raise ValueError(f"count lists differ in length: {len(ours)} vs {len(theirs)}")
    if not ours:
        raise ValueError("no layers to compare")
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {
        "layers": len(a),
        "equal_fraction": float(np.mean(a == b)),
        "mean_abs_diff": float(np.mean(np.abs(a - b))),
        "pearson": corr,
        "mean_ours": float(a.mean()),
        "mean_ww": float(b.mean()),
    }


def ww_counts(ww: Any, mods: list[nn.Module]) -> tuple[list[int | None], float]:
    """WeightWatcher ``num_spikes`` of each module (None where it skipped it) and the wall time."""
    container = nn.Sequential(*mods)
    t0 = time.perf_counter()
    df = ww.WeightWatcher(model=container).analyze(mp_fit=True)
    t_ww = time.perf_counter() - t0
    # layer_id is the position in container.modules(): 0 is the container, child i is i + 1.
    by_id = {int(r.layer_id): r for r in df.itertuples()}
    counts: list[int | None] = []
    for i, m in enumerate(mods):
        r = by_id.get(i + 1)
        if r is None or not np.isfinite(float(r.num_spikes)):
            counts.append(None)
            continue
        w = m.weight
        assert isinstance(w, torch.Tensor)
        a, b = int(w.shape[0]), int(w.shape[1])
        if (int(r.N), int(r.M)) != (max(a, b), min(a, b)):
            raise ValueError(f"WeightWatcher row {i + 1} has N, M = {(r.N, r.M)}, weight {tuple(w.shape)}")
        counts.append(int(r.num_spikes))
    return counts, t_ww


def compare(name: str, repeats: int, max_layers: int | None, with_ww: bool) -> dict[str, Any]:
    """Timing and spike-count agreement on the comparable layers of model ``name``."""
    from mpprune.spectrum import analyze

    model = load(name)
    layers = comparable_layers(model)
    if max_layers is not None:
        layers = layers[:max_layers]
    names = [n for n, _ in layers]
    analyze(model, include=names[:1], progress=False)  # warm-up: imports, Tracy-Widom cache
    t_ours = median_time(lambda: analyze(model, include=names, progress=False), repeats)
    rep = analyze(model, include=names, progress=False)
    t_full = median_time(lambda: analyze(model, progress=False), 1)
    ours = {e.name: e for e in rep.layers}
    res: dict[str, Any] = {
        "model": name,
        "compared_layers": len(names),
        "ours_s": t_ours,
        "ours_full_model_s": t_full,
        "note": "Linear and 1x1 conv only: WeightWatcher slices kxk convs into k*k matrices, we use im2col",
    }
    ww = weightwatcher() if with_ww else None
    theirs: list[int | None] = [None] * len(names)
    if ww is not None:
        theirs, t_ww = ww_counts(ww, [m for _, m in layers])
        res.update(ww_s=t_ww, ours_over_ww=t_ours / t_ww)
    rows: list[dict[str, Any]] = []
    for n, w_count in zip(names, theirs):
        e = ours[n]
        rows.append({"name": n, "shape": list(e.shape), "ours": e.n_spikes, "ww": w_count,
                     "skipped": e.skipped})
    res["layers"] = rows
    both = [r for r in rows if r["ours"] is not None and r["ww"] is not None]
    res["skipped_by_either"] = len(rows) - len(both)
    if both:
        res["agreement"] = agreement([r["ours"] for r in both], [r["ww"] for r in both])
    return res


def _print(res: dict[str, Any], show_layers: bool) -> None:
    print(f"== {res['model']}: {res['compared_layers']} layers compared ({res['note']})")
    print(f"   ours analyze (these layers)   {res['ours_s']:8.3f} s  (median)")
    print(f"   ours analyze (whole model)    {res['ours_full_model_s']:8.3f} s")
    if "ww_s" in res:
        print(f"   WeightWatcher mp_fit=True     {res['ww_s']:8.3f} s   ", end="")
        print(f"ours / WW = {res['ours_over_ww']:.4f}")
    if "agreement" in res:
        a = res["agreement"]
        corr = "nan" if math.isnan(a["pearson"]) else f"{a['pearson']:.3f}"
        print(
            f"   spike counts on {a['layers']} layers: equal {100 * a['equal_fraction']:.1f} %, "
            f"mean |ours-WW| {a['mean_abs_diff']:.2f}, Pearson r {corr}, "
            f"mean ours {a['mean_ours']:.2f} vs WW {a['mean_ww']:.2f}"
        )
    if res["skipped_by_either"]:
        print(f"   {res['skipped_by_either']} layer(s) skipped by one of the tools (not in the statistics)")
    if show_layers:
        print(f"   {'layer':<48} {'shape':>11} {'ours':>5} {'WW':>5}")
        for r in res["layers"]:
            shape = "x".join(map(str, r["shape"]))
            o = "-" if r["ours"] is None else str(r["ours"])
            w = "-" if r["ww"] is None else str(r["ww"])
            nm = r["name"] if len(r["name"]) <= 48 else "..." + r["name"][-45:]
            print(f"   {nm:<48} {shape:>11} {o:>5} {w:>5}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of our analyze (median)")
    ap.add_argument("--max-layers", type=int, default=None, help="compare only the first K layers per model")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher")
    ap.add_argument("--no-table", action="store_true", help="do not print the per-layer table")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS/torch threads for BOTH tools (default 1: stable timings on a shared machine)")
    ap.add_argument("--out", default="out/bench/models_spectra.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.max_layers is not None and args.max_layers < 1:
        ap.error(f"--max-layers must be >= 1, got {args.max_layers}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "models": []}
    with threadpool_limits(limits=args.threads):
        for name in args.models:
            res = compare(name, args.repeats, args.max_layers, with_ww=not args.no_ww)
            result["models"].append(res)
            _print(res, show_layers=not args.no_table)
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
