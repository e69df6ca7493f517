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

The manifest lists every file of the checkpoint with its sha256 (``files``), and the output record of
:mod:`mptheory.cli`'s output rule (``output``: the command that wrote it, its config digest, its entries).
The files are published as one unit (:func:`mpprune.io.publish_files`: assembled in a staging folder, then
renamed into place): a failed save leaves nothing behind. A save never writes into the directory of an input
checkpoint, nor over an input file, and replaces an existing folder only when it holds a checkpoint and
nothing else. Where the method declares a k:n ``pattern``, each layer whose weights keep it records it.

:func:`load_pruned` trusts nothing in the manifest it can check: the ``format_version``, the sha256 of every
file, that the tensors are exactly those of the model the manifest names (same keys and shapes, same model
class), that no parameter or buffer holds NaN/Inf, the legality of the masks, the per-layer sparsity and
mask summary, and each layer's k:n pattern -- all recomputed from the tensors. A mismatch is
:class:`~mpprune.errors.BadInput` naming the layer and both values.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.errors import BadInput
from mpprune.io import (
    OUTPUT_KEY,
    check_not_input,
    input_record,
    output_record,
    provenance,
    publish_files,
    utc_now,
)
from mpprune.masks import MaskStore, check_kn, check_legal, sparsity, weight_of
from mpprune.models import build_model, check_finite
from mptheory.io import dumps_json, jsonable

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "MASKS_FILE",
    "MANIFEST_FILE",
    "CERTIFICATE_FILE",
    "SAVE_COMMAND",
    "declared_pattern",
    "kn_legal",
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
#: The command recorded in the manifest's output record when a library caller saves.
SAVE_COMMAND = "mpprune.save_pruned"
_TEMP_RE = re.compile(r"^\..+\.tmp$")
_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


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


def declared_pattern(config: Any) -> tuple[int, int] | None:
    """The k:n ``pattern`` a (JSON-able) config declares -- its own ``pattern`` or its method section's --
    as ``(k, n)``, or None."""
    c = jsonable(config)
    for obj in (c, c.get("method") if isinstance(c, dict) else None):
        pat = obj.get("pattern") if isinstance(obj, dict) else None
        m = _PATTERN_RE.match(pat) if isinstance(pat, str) else None
        if m is not None:
            k, n = int(m[1]), int(m[2])
            if 0 < k <= n:
                return k, n
    return None


def kn_legal(weight: torch.Tensor, k: int, n: int, layout: str = "matrix") -> bool:
    """Whether ``weight`` keeps at most ``k`` nonzeros in every ``n`` consecutive entries along its input
    (reduction) axis in ``layout`` (:func:`mpprune.masks.check_kn`; ``"matrix"``: ``(out, in)`` in
    ``F.unfold`` order)."""
    try:
        check_kn(weight, (k, n), layout=layout)
    except BadInput:  # PatternViolation, or a group size that does not divide the input
        return False
    return True


def _check_target(out: Path) -> None:
    """An existing folder is replaced only when it holds an mpprune checkpoint and nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInput(f"output {out} exists and is not a directory")
    entries = {e.name for e in out.iterdir() if not _TEMP_RE.match(e.name)}
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"output {out} already exists and is not an mpprune checkpoint (nothing overwritten)")
    record = manifest.get(OUTPUT_KEY)
    listed = manifest.get("files")
    own = {MANIFEST_FILE, MODEL_FILE, MASKS_FILE, CERTIFICATE_FILE,
           *(listed if isinstance(listed, dict) else ()),
           *((record.get("entries") or ()) if isinstance(record, dict) else ())}
    foreign = sorted(entries - own)
    if foreign:
        raise BadInput(f"output {out} holds files that are not part of its checkpoint: {foreign[:5]} "
                       "(nothing overwritten)")


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
    output: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``masks.safetensors`` and ``manifest.json`` to ``out_dir``.

    Args:
        out_dir: output directory: new, empty, or holding a checkpoint and nothing else (replaced as a
            whole, atomically).
        model: the (pruned) model; saved as its state dict.
        masks: the masks (True = kept); None saves an empty mask file.
        report: a ``PruneReport`` (or its dict) of the pruning, stored in the manifest.
        config: the pruning/run config (dataclass or dict), stored in the manifest.
        inputs: input files/directories whose sha256 is recorded; ``out_dir`` may not be one of them,
            lie inside one, hold one, or be the directory where an input file lives.
        certificate: a certificate report (``to_dict()``) or dict: summary in the manifest, full dict in
            ``certificate.json``.
        factory: the :func:`mpprune.models.model_spec` used to rebuild the model; default
            ``model.mpprune_spec`` when :func:`mpprune.models.build_model` made it. Without one,
            :func:`load_pruned` needs the ``model`` argument.
        extra: further JSON-able entries for the manifest (e.g. accuracy).
        extra_files: further files of the checkpoint, name → JSON-able object (e.g. the full prune report).
        output: the output record of the command that saves (:func:`mpprune.io.output_record`; default
            :data:`SAVE_COMMAND`); its ``entries`` are set to the checkpoint's files.

    Returns the output directory. Raises :class:`~mpprune.errors.BadInput` for bad input before anything
    is written.
    """
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    input_list = [Path(p) for p in inputs]
    check_not_input(out, input_list)
    _check_target(out)
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
    pattern = declared_pattern(config)
    mask_summary: dict[str, Any] = {"n_layers": 0, "global_sparsity": 0.0, "layers": {}}
    if masks is not None:
        ms = sparsity(masks)
        declared = masks.patterns()
        layers: dict[str, Any] = {}
        for name, mod, m in masks.entries():
            layers[name] = {"shape": list(m.shape), "kept": int(m.sum()), "zeros": ms.zeros[name],
                            "sparsity": ms.per_layer[name]}
            if name in declared:  # the masks' own declaration (checked when declared and here again)
                decl = declared[name]
                check_kn(weight_of(mod), decl["pattern"], layout=decl["layout"], layer=name)
                layers[name] |= declared[name]
            elif pattern is not None and kn_legal(weight_of(mod), *pattern):
                layers[name]["pattern"] = f"{pattern[0]}:{pattern[1]}"
        mask_summary = {"n_layers": len(masks), "global_sparsity": ms.global_sparsity, "layers": layers}
    cert = jsonable(certificate) if certificate is not None else None
    files: dict[str, bytes] = {MODEL_FILE: model_bytes, MASKS_FILE: masks_bytes}
    if cert is not None:
        files[CERTIFICATE_FILE] = dumps_json(cert).encode()
    for name, obj in (extra_files or {}).items():
        files[name] = dumps_json(obj).encode()
    listing: dict[str, Any] = {n: {"sha256": hashlib.sha256(data).hexdigest()} for n, data in files.items()}
    listing[MODEL_FILE]["tensors"] = len(tensors)
    listing[MASKS_FILE]["tensors"] = len(mask_sd)
    record = dict(output) if output is not None else output_record(SAVE_COMMAND)
    record["entries"] = sorted([*files, MANIFEST_FILE])
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": utc_now(),
        "model": jsonable(factory) if factory is not None else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": jsonable(config),
        **provenance(),
        "inputs": [input_record(p) for p in input_list],
        "files": listing,
        "masks": mask_summary,
        "sparsity": {
            "global": sp_model.global_sparsity,
            "total_zeros": sp_model.total_zeros,
            "total": sp_model.total,
            "per_layer": sp_model.per_layer,
        },
        "report": jsonable(_report_dict(report)),
        "certificate": compact(cert) if cert is not None else None,
        OUTPUT_KEY: jsonable(record),
    }
    if extra:
        manifest.update(jsonable(dict(extra)))
    files[MANIFEST_FILE] = dumps_json(manifest).encode()
    return publish_files(out, files)


def _read_manifest(d: Path) -> dict[str, Any]:
    mpath = d / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{d} is not an mpprune checkpoint: {MANIFEST_FILE} missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"{mpath} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BadInput(f"{mpath}: format {got!r} is not {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadInput(f"{mpath}: format_version must be an integer, got {version!r} (a manifest without it "
                       "is not a checkpoint this mpprune wrote)")
    if not 1 <= version <= FORMAT_VERSION:
        raise BadInput(f"{mpath}: format_version {version} is not one this mpprune reads "
                       f"(1 to {FORMAT_VERSION})")
    return manifest


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _verify_against_tensors(d: Path, manifest: Mapping[str, Any], model: nn.Module, masks: MaskStore) -> None:
    """The manifest's sparsity figures, mask summary and per-layer k:n patterns, recomputed from the
    tensors; a mismatch is :class:`BadInput` naming the layer and both values."""
    where = f"checkpoint {d}: the manifest"
    sp = manifest.get("sparsity")
    rep = sparsity(model)
    if not isinstance(sp, Mapping):
        raise BadInput(f"{where} has no sparsity record")
    for key, got in (("global", rep.global_sparsity), ("total_zeros", rep.total_zeros), ("total", rep.total)):
        if not _same(sp.get(key), got):
            raise BadInput(f"{where} says sparsity {key} = {sp.get(key)!r}, the tensors give {got!r}")
    per_layer = sp.get("per_layer")
    if not isinstance(per_layer, Mapping) or set(per_layer) != set(rep.per_layer):
        raise BadInput(f"{where} lists sparsity for layers {sorted(per_layer or ())}, the model has "
                       f"{sorted(rep.per_layer)}")
    for name, got in rep.per_layer.items():
        if not _same(per_layer[name], got):
            raise BadInput(f"{where} says layer {name!r} has sparsity {per_layer[name]!r}, its weight has "
                           f"{got!r}")
    summary = manifest.get("masks") or {}
    layers = summary.get("layers") or {}
    ms = sparsity(masks)
    if set(layers) != set(ms.sizes):
        raise BadInput(f"{where} lists masks for {sorted(layers)}, {MASKS_FILE} holds {sorted(ms.sizes)}")
    for name, mod, m in masks.entries():
        rec = layers[name]
        want: dict[str, Any] = {"shape": list(m.shape), "kept": int(m.sum()), "zeros": ms.zeros[name],
                                "sparsity": ms.per_layer[name]}
        for key, got in want.items():
            if not _same(rec.get(key), got):
                raise BadInput(f"{where} says the mask of layer {name!r} has {key} {rec.get(key)!r}, "
                               f"the mask has {got!r}")
        pat = rec.get("pattern")
        if pat is not None:
            mm = _PATTERN_RE.match(str(pat))
            layout = str(rec.get("layout", "matrix"))
            if mm is None or not kn_legal(weight_of(mod), int(mm[1]), int(mm[2]), layout):
                raise BadInput(f"{where} says layer {name!r} keeps the {pat} pattern, its weight of shape "
                               f"{tuple(weight_of(mod).shape)} does not")
    if not _same(summary.get("global_sparsity", 0.0), ms.global_sparsity):
        raise BadInput(f"{where} says the masks' global sparsity is {summary.get('global_sparsity')!r}, the "
                       f"masks give {ms.global_sparsity!r}")


def load_pruned(
    directory: str | Path, model: nn.Module | None = None, *, verify: bool = True
) -> tuple[nn.Module, MaskStore, dict[str, Any]]:
    """Load a :func:`save_pruned` checkpoint: ``(model, masks, manifest)``.

    The model is rebuilt from the manifest's factory spec (architecture only, then the saved state dict
    is loaded strictly) unless ``model`` is given (its parameters are overwritten in place). The result
    is an ordinary ``nn.Module`` in eval mode: no hooks, no parametrisations. The ``format_version`` must
    be one this mpprune reads, the tensors must be exactly those of the model (keys and shapes; a rebuilt
    model of the class the manifest names) and finite. With ``verify`` the sha256 of every file must match
    the manifest, the masks must be legal (masked weights exactly 0), and the manifest's sparsity figures,
    mask summary and k:n patterns must agree with the tensors. Anything else is
    :class:`~mpprune.errors.BadInput`.
    """
    from safetensors.torch import load as st_load

    d = Path(directory)
    manifest = _read_manifest(d)
    files = manifest.get("files")
    listing: Mapping[str, Any] = files if isinstance(files, Mapping) else {}
    blobs: dict[str, bytes] = {}
    for fname in dict.fromkeys([MODEL_FILE, MASKS_FILE, *(listing if verify else ())]):
        p = d / fname
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {d}: {fname} missing")
        blobs[fname] = p.read_bytes()
        if verify:
            entry = listing.get(fname)
            want = entry.get("sha256") if isinstance(entry, Mapping) else None
            got = hashlib.sha256(blobs[fname]).hexdigest()
            if want != got:
                raise BadInput(f"checkpoint {d}: {fname} sha256 {got} does not match the manifest ({want})")
    built = model is None
    if model is None:
        spec = manifest.get("model")
        if not spec:
            raise BadInput(f"checkpoint {d} records no model factory: pass model= to load_pruned")
        model = build_model(spec, load_weights=False)
        cls = f"{type(model).__module__}.{type(model).__qualname__}"
        if manifest.get("model_class") not in (None, cls):
            raise BadInput(f"checkpoint {d}: the manifest names model class {manifest.get('model_class')}, "
                           f"its model spec builds {cls}")
    try:
        state = st_load(blobs[MODEL_FILE])
    except Exception as exc:  # noqa: BLE001 - a damaged file is bad input whatever safetensors raises
        raise BadInput(f"checkpoint {d}: {MODEL_FILE} cannot be read: {exc}") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        whose = "the model its manifest names" if built else "the given model"
        raise BadInput(f"checkpoint {d}: its tensors do not fit {whose} (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}, other shapes {reshaped[:3]})")
    model.load_state_dict(state, strict=True)
    model.eval()
    check_finite(model)
    summary = manifest.get("masks")
    recs = summary.get("layers") if isinstance(summary, Mapping) else None
    declared = {
        name: {"pattern": str(rec["pattern"]), "layout": str(rec.get("layout", "matrix"))}
        for name, rec in (recs.items() if isinstance(recs, Mapping) else ())
        if isinstance(rec, Mapping) and rec.get("pattern") is not None
    }
    masks = MaskStore.from_state_dict(st_load(blobs[MASKS_FILE]), model)
    if verify:
        check_legal(masks, model)
        _verify_against_tensors(d, manifest, model, masks)
    for name, decl in declared.items():  # the manifest's k:n patterns, declared again (and checked)
        masks.declare(name, decl["pattern"], decl["layout"])
    if manifest.get("model"):
        model.mpprune_spec = dict(manifest["model"])  # type: ignore[assignment]
    return model, masks, manifest
