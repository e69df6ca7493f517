"""Checkpoints: safetensors plus a JSON manifest (DESIGN, "Checkpoints").

A checkpoint is a directory holding

* ``model.safetensors`` — the model's ``state_dict`` (contiguous CPU tensors; tensors that share memory,
  e.g. tied weights, are stored as separate copies so safetensors accepts them);
* ``masks.safetensors`` — one bool tensor per pruned layer (True = kept), keyed by qualified name;
* ``manifest.json`` — :data:`FORMAT` and :data:`FORMAT_VERSION`, the model factory spec (so the model can
  be rebuilt, :func:`mpprune.models.model_spec`), the pruning config, package versions and the git commit
  (:func:`mpprune.io.provenance`), the sha256 of every input file and of the two tensor files, the masks
  summary, the exact per-layer sparsity of the weights, the prune report and the certificate summary;
* ``certificate.json`` (when a certificate was given) and any further JSON files the caller names.

The files are published as one unit (:func:`mpprune.io.publish_files`, the manifest last): a failed save
leaves nothing behind, and a save never writes into the directory of an input checkpoint, nor over an
input file. :func:`load_pruned` verifies both checksums and the legality of the masks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.errors import BadInput
from mpprune.io import check_not_input, input_record, provenance, publish_files, utc_now
from mpprune.masks import MaskStore, check_legal, sparsity
from mpprune.models import build_model, check_finite
from mptheory.io import dumps_json, jsonable

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "MASKS_FILE",
    "MANIFEST_FILE",
    "CERTIFICATE_FILE",
    "save_pruned",
    "load_pruned",
    "compact",
]

FORMAT = "mpprune-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"
CERTIFICATE_FILE = "certificate.json"


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, no two sharing memory (tied weights are copied)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise BadInput(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if key in seen or not t.is_contiguous() or not whole:
            t = t.contiguous().clone()
        else:
            seen.add(key)
        out[k] = t
    return out


def compact(obj: Any, max_list: int = 64) -> Any:
    """Replace long numeric lists by a ``{len, min, mean, max}`` summary (for manifests and run states)."""
    if isinstance(obj, dict):
        return {k: compact(v, max_list) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > max_list:
            nums = [float(x) for x in obj if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if len(nums) == len(obj):
                return {"len": len(obj), "min": min(nums), "mean": float(np.mean(nums)), "max": max(nums)}
            return {"len": len(obj), "first": [compact(v, max_list) for v in obj[:max_list]]}
        return [compact(v, max_list) for v in obj]
    return obj


def _report_dict(report: Any) -> Any:
    if report is None or isinstance(report, Mapping):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise BadInput(f"report must be a PruneReport, a dict or None, got {type(report).__name__}")


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
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``masks.safetensors`` and ``manifest.json`` to ``out_dir``.

    Args:
        out_dir: output directory (created; an existing one has its files replaced atomically).
        model: the (pruned) model; saved as its state dict.
        masks: the masks (True = kept); None saves an empty mask file.
        report: a ``PruneReport`` (or its dict) of the pruning, stored in the manifest.
        config: the pruning/run config (dataclass or dict), stored in the manifest.
        inputs: input files/directories whose sha256 is recorded; ``out_dir`` may not be one of them,
            lie inside one, or be the directory where an input file lives.
        certificate: a certificate report (``to_dict()``) or dict: summary in the manifest, full dict in
            ``certificate.json``.
        factory: the :func:`mpprune.models.model_spec` used to rebuild the model; default
            ``model.mpprune_spec`` when :func:`mpprune.models.build_model` made it. Without one,
            :func:`load_pruned` needs the ``model`` argument.
        extra: further JSON-able entries for the manifest (e.g. accuracy).
        extra_files: further files of the checkpoint, name → JSON-able object (e.g. the full prune report).

    Returns the output directory. Raises :class:`~mpprune.errors.BadInput` for bad input before anything
    is written.
    """
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    input_list = [Path(p) for p in inputs]
    check_not_input(out, input_list)
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a directory")
    if masks is not None and not isinstance(masks, MaskStore):
        raise BadInput(f"masks must be a MaskStore or None, got {type(masks).__name__}")
    reserved = {MODEL_FILE, MASKS_FILE, MANIFEST_FILE, CERTIFICATE_FILE}
    if extra_files and reserved & set(extra_files):
        raise BadInput(f"extra_files may not replace the checkpoint's own files {sorted(reserved)}")
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
        "created": utc_now(),
        "model": jsonable(factory) if factory is not None else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": jsonable(config),
        **provenance(),
        "inputs": [input_record(p) for p in input_list],
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
        "certificate": compact(cert) if cert is not None else None,
    }
    if extra:
        manifest.update(jsonable(dict(extra)))
    files: dict[str, bytes] = {MODEL_FILE: model_bytes, MASKS_FILE: masks_bytes}
    if cert is not None:
        files[CERTIFICATE_FILE] = dumps_json(cert).encode()
    for name, obj in (extra_files or {}).items():
        files[name] = dumps_json(obj).encode()
    files[MANIFEST_FILE] = dumps_json(manifest).encode()  # written last: the commit marker
    return publish_files(out, files)


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
        raise BadInput(f"{mpath}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if int(manifest.get("format_version", -1)) > FORMAT_VERSION:
        raise BadInput(
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
                raise BadInput(f"checkpoint {d}: {fname} sha256 {got} does not match the manifest ({want})")
    if model is None:
        spec = manifest.get("model")
        if not spec:
            raise BadInput(f"checkpoint {d} records no model factory: pass model= to load_pruned")
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
