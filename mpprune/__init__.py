"""mpprune: prune real models with Marchenko–Pastur signals, gated by data-path certificates.

Public surface (loaded lazily so that ``import mpprune`` stays cheap)::

    import mpprune as mpp
    report = mpp.analyze(model)                                   # per-layer MP fits
    result = mpp.prune(model, mpp.SEB(sparsity=0.5), calibration=batches,
                       gate=mpp.Gate(min_certified=0.99))         # a new model unless inplace=True
    result.model, result.masks, result.report
    mpp.save_pruned(out_dir, result.model, result.masks, result.report, config=...)   # safetensors + manifest
    model, masks, manifest = mpp.load_pruned(out_dir)
    from mpprune.certify import certify                           # per-layer, per-sample certificates

Modules: ``models`` (the model registry; ``builders`` its builders), ``data`` (datasets, calibration,
accuracy), ``layers``, ``spectrum``, ``masks``, ``methods`` (the method registry and ``prune``), ``certify``
(the certificate engine), ``gate`` (the hard gate on certificates), ``tome`` (token merging), ``train`` and
``distill`` (frozen-mask distillation, DDP through torchrun), ``vit_mnist`` (a small ViT trained on the real
digits), ``macs`` (MAC accounting), ``sparse_exec`` (sparse execution), ``io`` (atomic publishing,
provenance), ``checkpoint``, ``config`` (the typed run config; ``options`` its option types), ``run`` (the
staged run behind ``mpprune run`` and ``mpprune prune``; ``stages`` its stage functions), ``errors`` (bad
input / refusal / internal), ``cli``.

``mpprune`` imports ``mptheory``, never the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "analyze": "mpprune.spectrum",
    "SpectrumReport": "mpprune.spectrum",
    "prune": "mpprune.methods",
    "PruneResult": "mpprune.methods",
    "Magnitude": "mpprune.methods",
    "ClassicalRMT": "mpprune.methods",
    "SEB": "mpprune.methods",
    "SER": "mpprune.methods",
    "Hybrid": "mpprune.methods",
    "NM": "mpprune.methods",
    "Gate": "mpprune.gate",
    "MaskStore": "mpprune.masks",
    "find_layers": "mpprune.layers",
    "save_pruned": "mpprune.checkpoint",
    "load_pruned": "mpprune.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mpprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
