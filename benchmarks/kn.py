"""k:n structured sparsity (``mpprune.methods.NM``): exact projection cost, and accuracy without fine-tuning.

Three sections, one run (``--sections`` picks some):

* ``projection`` -- time and peak memory of the exact streamed 8:16 projection (certificate cost, all
  C(16, 8) = 12,870 patterns per (row, group) cell) on a ResNet-152-sized conv (512 x 4608) and the ViT-B/16
  MLP shapes (3072 x 768, 768 x 3072), random weights and random per-group second moments. Each case runs in
  a fresh process; peak memory is reported twice: ``rss_peak_mib`` (the process's peak resident set above
  its resident set just before the projection, ``ru_maxrss``; torch allocations included) and
  ``tracemalloc_peak_mib`` (Python-level allocations only: torch tensors are invisible to tracemalloc, so
  this is a lower bound). Baselines of the same run: magnitude k:n (a sort) and the size the authors'
  cost tensor (patterns x rows x groups, float32) would have.
* ``mnist`` -- the real MNIST CNN (``mpprune.models.load_mnist_cnn``), accuracy on the 1,000 held-out digits
  (``mnist_digits("val")``), calibration from the train split, hardware-legal conv layout
  (``layout="channel"``; the 1152-input fc1 and the 3x3 convs are pruned, the stem and the head are not).
* ``efficientnet`` -- the real EfficientNet-Lite0 (``mpprune.models.load_efficientnet_lite0``; 1x1 convs,
  the stem, depthwise convs and the classifier head skipped), agreement of the pruned top-1 with the dense
  top-1 on augmented views (random resized crop, flip, colour jitter) of the three bundled photos
  (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``); calibration views
  come from a different seed (a disjoint set of views).

Variants for every pattern (default 2:4, 4:8, 8:16, 1:4): ``magnitude``, ``certificate``,
``certificate+permute``, ``certificate+reconstruct`` and ``all`` (certificate + permutation +
reconstruction); each row prints its ratio to magnitude of the same run. Certified fractions come from
``mpprune.certify.certify`` against the dense model with the variant's permutations folded in
(``permuted_reference``), with the cheap ``segment_max_slope`` estimator (an ESTIMATE, not a sound bound)
on a ``--n-theta``-point grid; ``gate_layers_pass`` counts the layers a per-layer ``Gate(min_certified)``
rule passes (``Gate.check`` on each layer's certificate) and ``certified_total`` is the D11 whole-model
fraction. For EfficientNet only the patterns in ``--certify-patterns`` are certified (the certificate
costs tens of forward passes per layer).

The JSON is rewritten after every row (``"complete": false`` until the run ends), so a run stopped early
keeps the rows it finished.

Run: ``python -m benchmarks.kn [--quick] [--sections ...] [--out out/bench/kn.json]``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._common import write_json

#: The five variants of every pattern, as NM options.
VARIANTS: dict[str, dict[str, Any]] = {
    "magnitude": {"cost": "magnitude"},
    "certificate": {"cost": "certificate"},
    "certificate+permute": {"cost": "certificate", "permute": True},
    "certificate+reconstruct": {"cost": "certificate", "reconstruct": True},
    "all": {"cost": "certificate", "permute": True, "reconstruct": True},
}
PATTERNS = ("2:4", "4:8", "8:16", "1:4")
PROJECTION_SHAPES = ((512, 4608), (3072, 768), (768, 3072))


# ------------------------------------------------------------------------------------------- projection
def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _projection_child(rows: int, cols: int, pattern: str, threads: int, queue: Any) -> None:
    from mpprune.masks import parse_kn
    from mpprune.methods.kn_search import select_kn

    torch.set_num_threads(threads)
    k, n = parse_kn(pattern)
    g = torch.Generator().manual_seed(0)
    G = cols // n
    u = torch.randn(rows, G, n, generator=g, dtype=torch.float64)
    x = torch.randn(G, 2 * n, n, generator=g, dtype=torch.float64)
    second = x.transpose(1, 2) @ x / (2 * n)
    t0 = time.perf_counter()
    select_kn(u, k)
    t_mag = time.perf_counter() - t0
    base = _rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    sel = select_kn(u, k, second)
    seconds = time.perf_counter() - t0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    queue.put({
        "shape": [rows, cols], "pattern": pattern, "method": sel.method, "patterns": sel.patterns,
        "seconds": seconds, "magnitude_seconds": t_mag, "threads": threads,
        "rss_peak_mib": _rss_mib() - base, "rss_total_mib": _rss_mib(),
        "tracemalloc_peak_mib": tm_peak / 2**20,
        "naive_cost_tensor_gib": sel.patterns * rows * G * 4 / 2**30,
        "legal": bool((sel.keep.sum(-1) == k).all()),
    })


def projection(shapes: tuple[tuple[int, int], ...], pattern: str, threads: int) -> list[dict[str, Any]]:
    """Each shape in a fresh (spawned) process: time and peak memory of the exact projection."""
    ctx = mp.get_context("spawn")
    rows_out = []
    for r, c in shapes:
        q = ctx.Queue()
        p = ctx.Process(target=_projection_child, args=(r, c, pattern, threads, q))
        p.start()
        res = q.get()
        p.join()
        rows_out.append(res)
        print(
            f"projection {pattern} {r}x{c}: {res['seconds']:.1f} s "
            f"({res['seconds'] / res['magnitude_seconds']:.0f}x magnitude's sort), peak RSS "
            f"+{res['rss_peak_mib']:.0f} MiB (process {res['rss_total_mib']:.0f} MiB), "
            f"tracemalloc {res['tracemalloc_peak_mib']:.2f} MiB; a materialised cost tensor would be "
            f"{res['naive_cost_tensor_gib']:.1f} GiB",
            flush=True,
        )
    return rows_out


# ------------------------------------------------------------------------------------------- pruning rows
def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


def _logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _certify_row(
    dense: torch.nn.Module, result: Any, cert_cal: Any, n_theta: int, min_certified: float
) -> dict[str, Any]:
    from mpprune.certify import certify
    from mpprune.gate import Gate
    from mpprune.methods.permute import permuted_reference

    ref = permuted_reference(dense, result.report)
    names = [lr.name for lr in result.report.layers]
    rep = certify(ref, result.model, cert_cal, names, "segment_max_slope", n_theta=n_theta)
    gate = Gate(min_certified=min_certified)
    rmods, pmods = dict(ref.named_modules()), dict(result.model.named_modules())
    passed = []
    for lc in rep.layers:
        A = rmods[lc.name].weight.detach().double()
        S = pmods[lc.name].weight.detach().double()
        ok, _ = gate.check(lc, S, A - S)
        passed.append(ok)
    return {
        "estimator": "segment_max_slope (ESTIMATE)",
        "n_theta": n_theta,
        "certified_total": rep.certified_fraction,
        "certified_layer_min": min(lc.certified_fraction for lc in rep.layers),
        "gate_min_certified": min_certified,
        "gate_layers_pass": int(sum(passed)),
        "gate_layers": len(passed),
        "is_mask_layers": int(sum(lc.is_mask for lc in rep.layers)),
        "flips_on_cert_set": rep.flips,
    }


def _prune_rows(
    label: str,
    dense: torch.nn.Module,
    patterns: list[str],
    calib: Any,
    evaluate: Any,
    cert_cal: Any,
    certify_patterns: list[str],
    n_theta: int,
    min_certified: float,
    nm_options: dict[str, Any],
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> list[dict[str, Any]]:
    from mpprune.methods import NM, prune

    rows: list[dict[str, Any]] = []
    for pattern in patterns:
        base: dict[str, Any] | None = None
        for variant in variants:
            opts = VARIANTS[variant]
            t0 = time.perf_counter()
            res = prune(dense, NM(pattern, **opts, **nm_options), calibration=calib, progress=False)
            seconds = time.perf_counter() - t0
            row: dict[str, Any] = {"model": label, "pattern": pattern, "variant": variant, "seconds": seconds,
                                   "layers": len(res.report.layers),
                                   "sparsity": res.report.global_sparsity, **evaluate(res.model)}
            objective = sum(lr.details.get("objective", 0.0) for lr in res.report.layers)
            row["objective"] = objective
            row["permutations"] = sum(len(lr.details.get("permutations", [])) for lr in res.report.layers)
            if pattern in certify_patterns:
                row.update(_certify_row(dense, res, cert_cal, n_theta, min_certified))
            if variant == "magnitude":
                base = row
            key = "accuracy" if "accuracy" in row else "agreement"
            row[f"{key}_vs_magnitude"] = row[key] / base[key] if base is not None and base[key] else math.nan
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            cert = (
                f", certified {100 * row['certified_total']:.1f} % (D11), gate {row['gate_layers_pass']}/"
                f"{row['gate_layers']} layers" if "certified_total" in row else ""
            )
            print(
                f"{label} {pattern:>5} {variant:<24} {key} {100 * row[key]:6.2f} % "
                f"({row[f'{key}_vs_magnitude']:.3f}x magnitude){cert}  [{seconds:.0f} s]",
                flush=True,
            )
    return rows


def mnist(
    patterns: list[str], n_cal: int, n_cert: int, n_theta: int, min_certified: float,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> list[dict[str, Any]]:
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.models import load_mnist_cnn

    dense = load_mnist_cnn()
    train, val = mnist_digits("train"), mnist_digits("val")
    calib = calibration_batches(train, n_cal, batch_size=128, seed=0)
    cert_cal = calibration_batches(train, n_cert, batch_size=128, seed=1)
    xs = torch.stack([val[i][0] for i in range(len(val))])
    ys = torch.tensor([int(val[i][1]) for i in range(len(val))])
    top_dense = _logits(dense, xs).argmax(1)
    acc = _agreement(top_dense, ys)
    print(f"mnist: dense accuracy {100 * acc:.2f} % on {len(ys)} held-out digits", flush=True)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        top = _logits(model, xs).argmax(1)
        return {"accuracy": _agreement(top, ys), "agreement": _agreement(top, top_dense)}

    return _prune_rows("mnist-cnn", dense, patterns, calib, evaluate, cert_cal, patterns, n_theta,
                       min_certified, {"layout": "channel"}, on_row, variants)


def photos() -> list[Any]:
    """The three bundled photos (PIL images): scikit-learn's two sample images, matplotlib's Grace Hopper."""
    import os

    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    imgs = [Image.fromarray(a) for a in load_sample_images().images]
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    imgs.append(Image.open(path).convert("RGB"))
    return imgs


def photo_views(n_per_photo: int, seed: int) -> torch.Tensor:
    """``n_per_photo`` augmented 224 px views of each bundled photo, normalised for EfficientNet-Lite0."""
    from torchvision import transforms as T

    from mpprune.models import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

    tf = T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3, 0.3),
        T.ToTensor(), T.Normalize(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD),
    ])
    torch.manual_seed(seed)
    return torch.stack([tf(im) for im in photos() for _ in range(n_per_photo)])


def efficientnet(
    patterns: list[str],
    n_eval: int,
    n_cal: int,
    n_cert: int,
    certify_patterns: list[str],
    n_theta: int,
    min_certified: float,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> list[dict[str, Any]]:
    from mpprune.models import load_efficientnet_lite0

    dense = load_efficientnet_lite0()
    ev = photo_views(n_eval // 3, seed=1)
    cv = photo_views(max(1, n_cal // 3), seed=2)
    cert = photo_views(max(1, n_cert // 3), seed=3)
    calib = [(cv[i : i + 32], None) for i in range(0, len(cv), 32)]
    cert_cal = [(cert[i : i + 16], None) for i in range(0, len(cert), 16)]
    top_dense = _logits(dense, ev).argmax(1)
    print(f"efficientnet-lite0: {len(ev)} eval views, {len(cv)} calibration views, dense top-1 classes "
          f"{sorted(set(top_dense.tolist()))[:12]}", flush=True)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"agreement": _agreement(_logits(model, ev).argmax(1), top_dense)}

    return _prune_rows("efficientnet-lite0", dense, patterns, calib, evaluate, cert_cal, certify_patterns,
                       n_theta, min_certified, {}, on_row, variants)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", nargs="+", default=["projection", "mnist", "efficientnet"],
                    choices=["projection", "mnist", "efficientnet"])
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="the variants run (ratios need magnitude first)")
    ap.add_argument("--certify-patterns", nargs="*", default=["2:4"],
                    help="EfficientNet patterns certified (none: no certificates)")
    ap.add_argument("--n-theta", type=int, default=4)
    ap.add_argument("--min-certified", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small shapes and sets (a smoke run)")
    ap.add_argument("--n-eval", type=int, default=384, help="EfficientNet evaluation views (3 photos)")
    ap.add_argument("--n-cal", type=int, default=96, help="EfficientNet calibration views")
    ap.add_argument("--out", default="out/bench/kn.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {"benchmark": "kn", "quick": args.quick, "patterns": args.patterns,
                               "complete": False}
    t0 = time.perf_counter()

    def partial(section: str) -> Callable[[list[dict[str, Any]]], None]:
        """Write the rows so far after each one (``complete: false``): a run stopped early keeps them."""

        def write(rows: list[dict[str, Any]]) -> None:
            write_json(args.out, payload | {section: rows, "seconds": time.perf_counter() - t0})

        return write

    if "projection" in args.sections:
        shapes = ((64, 256), (128, 64)) if args.quick else PROJECTION_SHAPES
        payload["projection"] = projection(shapes, "8:16", args.threads)
    if "mnist" in args.sections:
        payload["mnist"] = mnist(args.patterns, 64 if args.quick else 512, 32 if args.quick else 256,
                                 args.n_theta, args.min_certified, partial("mnist"),
                                 tuple(args.variants))
    if "efficientnet" in args.sections:
        payload["efficientnet"] = efficientnet(
            args.patterns, 12 if args.quick else args.n_eval, 6 if args.quick else args.n_cal,
            3 if args.quick else 24,
            args.certify_patterns, args.n_theta, args.min_certified, partial("efficientnet"),
            tuple(args.variants),
        )
    payload["seconds"] = time.perf_counter() - t0
    payload["complete"] = True
    path = write_json(args.out, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
