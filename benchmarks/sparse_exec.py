"""CPU speed of the sparse path against dense fp32 at the same thread count, per layer and whole model.

Models: the real MNIST CNN (``load_mnist_cnn``), the real EfficientNet-Lite0 (``load_efficientnet_lite0``)
and a ViT-B/16 MLP block (``fc1`` 768->3072, GELU, ``fc2`` 3072->768, random weights: speed does not
depend on the values) on 197·B tokens. Masks: magnitude per layer, either unstructured at s = 0.5, 0.8,
0.9 or 2:4 along the input axis (magnitude, written here; depthwise convs and layers whose input
dimension is not a multiple of 4 stay dense); ``--sweep`` adds more unstructured levels for the ViT
layers to locate the crossover sparsity.

Each case runs :func:`mpprune.sparse_exec.audit` (CPU path): every layer with density <= 0.5 is checked
for equal outputs and timed against the dense layer in alternating rounds (``torch.utils.benchmark``,
median and IQR), converted when at least 1.05x faster, and the whole model is timed dense and converted
over a batch sweep. Ratios are dense time / sparse time from the same run, so > 1 means the sparse path
is faster. Timings are single-threaded unless ``--threads`` says otherwise; the load average is recorded
because a shared machine makes them noisy.

Run: ``python -m benchmarks.sparse_exec [--quick] [--threads 1 2] [--models vit mnist efficientnet]
[--sweep] [--out out/bench/sparse_exec.json]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mpprune.layers import find_layers, from_matrix_view, matrix_view
from mpprune.sparse_exec import SpeedLedger, Timer, TorchTimer, audit
from mptheory.io import atomic_write_json

MODELS = ("vit", "mnist", "efficientnet")
LEVELS = ("2:4", "0.5", "0.8", "0.9")
SWEEP = ("0.7", "0.85", "0.95")
GOAL = 1.5  # issue 12: >= 1.5x over dense fp32 at 90 % unstructured for ViT-B/16 MLP shapes


@torch.no_grad()
def magnitude_(model: nn.Module, level: str) -> list[str]:
    """Prune ``model`` in place by magnitude, per layer: ``"2:4"`` or an unstructured sparsity ``"0.9"``.

    Depthwise convs stay dense, and under 2:4 so do layers whose input dimension is not a multiple of 4.
    Returns the names of the layers left dense.
    """
    skipped: list[str] = []
    for info in find_layers(model):
        w = matrix_view(info.module)
        if info.kind == "conv2d_depthwise":
            skipped.append(info.name)
            continue
        if level == "2:4":
            rows, cols = w.shape
            if cols % 4:
                skipped.append(info.name)
                continue
            groups = w.reshape(rows, cols // 4, 4)
            idx = groups.abs().topk(2, dim=-1).indices
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(rows, cols)
        else:
            s = float(level)
            n_zero = int(round(s * w.numel()))
            keep = torch.ones_like(w, dtype=torch.bool)
            if n_zero:
                order = w.abs().flatten().argsort()
                keep.view(-1)[order[:n_zero]] = False
        pruned = torch.where(keep, w, torch.zeros_like(w))
        info.module.weight.copy_(from_matrix_view(info.module, pruned))  # type: ignore[operator]
    return skipped


def vit_mlp(seed: int = 0) -> nn.Sequential:
    """A ViT-B/16 MLP block: Linear(768, 3072), GELU, Linear(3072, 768)."""
    from collections import OrderedDict

    torch.manual_seed(seed)
    layers = OrderedDict(fc1=nn.Linear(768, 3072), act=nn.GELU(), fc2=nn.Linear(3072, 768))
    return nn.Sequential(layers).eval()


def build(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    """A fresh dense model and an input maker ``batch -> tensor`` for ``name``."""
    from mpprune import models

    g = torch.Generator().manual_seed(0)
    if name == "vit":
        return vit_mlp(), lambda b: torch.randn(b, 197, 768, generator=g)
    if name == "mnist":
        return models.load_mnist_cnn(), lambda b: torch.randn(b, 1, 28, 28, generator=g)
    if name == "efficientnet":
        return models.load_efficientnet_lite0(), lambda b: torch.randn(b, 3, 224, 224, generator=g)
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


def plan(name: str, quick: bool) -> tuple[list[int], list[int]]:
    """(example batches for per-layer timing, whole-model batch sweep) of model ``name``."""
    if name == "vit":
        return ([1] if quick else [1, 8]), ([1] if quick else [1, 8])
    if name == "mnist":
        return [32], ([32] if quick else [1, 32])
    return [1], ([1] if quick else [1, 8])


def run_case(
    name: str, level: str, threads: int, timer: Timer, example_batch: int, batches: Sequence[int]
) -> tuple[SpeedLedger, list[str]]:
    """Prune model ``name`` at ``level`` and audit it; returns the ledger and the layers left unpruned."""
    model, make = build(name)
    skipped = magnitude_(model, level)
    ledger = audit(model, make(example_batch), timer=timer, batch_sizes=batches, threads=threads)
    return ledger, skipped


def rows_of(name: str, level: str, example_batch: int, ledger: SpeedLedger) -> list[dict[str, Any]]:
    """One table row per timed layer and per whole-model batch."""
    rows: list[dict[str, Any]] = []
    for d in ledger.conversion.decisions:
        if d.dense is None or d.sparse is None:
            continue
        rows.append(
            {
                "model": name,
                "level": level,
                "what": d.name,
                "batch": example_batch,
                "shape": "x".join(map(str, d.shape)),
                "sparsity": 1 - d.density,
                "dense_ms": d.dense.median * 1e3,
                "sparse_ms": d.sparse.median * 1e3,
                "dense_iqr_ms": d.dense.iqr * 1e3,
                "sparse_iqr_ms": d.sparse.iqr * 1e3,
                "ratio": d.speedup,
                "decision": "sparse" if d.converted else "dense",
                "variant": d.variant,
            }
        )
    for r in ledger.model_rows:
        rows.append(
            {
                "model": name,
                "level": level,
                "what": "WHOLE MODEL",
                "batch": r.batch,
                "shape": "",
                "sparsity": None,
                "dense_ms": r.dense.median * 1e3,
                "sparse_ms": None if r.sparse is None else r.sparse.median * 1e3,
                "dense_iqr_ms": r.dense.iqr * 1e3,
                "sparse_iqr_ms": None if r.sparse is None else r.sparse.iqr * 1e3,
                "ratio": r.speedup,
                "decision": f"{len(ledger.conversion.converted)} layers sparse",
                "variant": None,
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<13}{'level':<6}{'layer':<26}{'batch':>6} {'shape':<11}"
        f"{'dense ms':>10}{'sparse ms':>11}{'ratio':>8}  decision"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        sparse = "-" if r["sparse_ms"] is None else f"{r['sparse_ms']:.3f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"{r['model']:<13}{r['level']:<6}{r['what'][:25]:<26}{r['batch']:>6} {r['shape']:<11}"
            f"{r['dense_ms']:>10.3f}{sparse:>11}{ratio:>8}  {r['decision']}"
        )
    return "\n".join(lines)


def crossover(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ViT layer and batch: the lowest level at which the sparse path measured faster than dense
    (ratio >= 1), with every level's ratio; ``None`` when it never did."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["model"] != "vit" or r["level"] == "2:4":
            continue
        key = f"{r['what']}[batch={r['batch']}]"
        out.setdefault(key, {"ratios": {}})["ratios"][r["level"]] = r["ratio"]
    for entry in out.values():
        wins = sorted(
            float(lv) for lv, ratio in entry["ratios"].items() if ratio is not None and ratio >= 1.0
        )
        entry["first_faster_level"] = wins[0] if wins else None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--levels", nargs="+", default=list(LEVELS), help="'2:4' or unstructured sparsities")
    p.add_argument("--sweep", action="store_true", help=f"also ViT layers at {', '.join(SWEEP)} (crossover)")
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timed block")
    p.add_argument("--quick", action="store_true", help="one batch per model, short timing blocks")
    p.add_argument("--out", default="out/bench/sparse_exec.json")
    args = p.parse_args(argv)
    min_run = 0.05 if args.quick else args.min_run_time
    report: dict[str, Any] = {"load_average_start": list(os.getloadavg()), "cases": [], "rows": []}
    t0 = time.perf_counter()
    for threads in args.threads:
        timer = TorchTimer(threads=threads, min_run_time=min_run)
        for name in args.models:
            levels = list(args.levels) + (list(SWEEP) if args.sweep and name == "vit" else [])
            example_batches, sweep = plan(name, args.quick)
            for level in levels:
                for eb in example_batches:
                    ledger, skipped = run_case(name, level, threads, timer, eb, sweep)
                    rows = [dict(r, threads=threads) for r in rows_of(name, level, eb, ledger)]
                    report["rows"] += rows
                    report["cases"].append(
                        {
                            "model": name,
                            "level": level,
                            "threads": threads,
                            "example_batch": eb,
                            "unpruned": skipped,
                            "ledger": ledger.to_dict(),
                        }
                    )
                    print(render(rows), flush=True)
    report["load_average_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - t0
    report["crossover"] = {
        t: crossover([r for r in report["rows"] if r["threads"] == t]) for t in args.threads
    }
    goal = [
        r
        for r in report["rows"]
        if r["model"] == "vit" and r["level"] == "0.9" and r["what"] != "WHOLE MODEL"
    ]
    report["goal"] = {
        "target": f">= {GOAL}x over dense fp32, same threads, 90 % unstructured, ViT-B/16 MLP shapes",
        "ratios": [{k: r[k] for k in ("what", "batch", "threads", "ratio")} for r in goal],
        "met": bool(goal) and all((r["ratio"] or 0) >= GOAL for r in goal),
    }
    print("\nfull table:\n" + render(report["rows"]))
    print(f"\ncrossover (lowest sparsity measured faster): {report['crossover']}")
    got = ", ".join(
        f"{g['what']}@B{g['batch']}/t{g['threads']}: {g['ratio']:.2f}x" for g in report["goal"]["ratios"]
    )
    print(f"goal {report['goal']['target']}: {'met' if report['goal']['met'] else 'NOT met'} ({got})")
    print(f"load average start {report['load_average_start']}, end {report['load_average_end']}")
    path = atomic_write_json(_ensure_parent(args.out), report)
    print(f"wrote {path}")
    return 0


def _ensure_parent(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
