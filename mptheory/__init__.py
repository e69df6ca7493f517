"""mptheory: the Marchenko–Pastur theory behind certified pruning, checked numerically.

Public surface (loaded lazily so that ``import mptheory`` stays cheap)::

    import mptheory as mpt
    law = mpt.MarchenkoPastur(ratio=0.25, sigma2=1.0)   # scipy.stats-style frozen law on eigenvalues
    mpt.TracyWidom(beta=1).ppf(0.95)                    # Tracy–Widom laws (beta = 1, 2)
    fit = mpt.fit_mp(W)                                 # MP fit: sigma2, edges, spikes, goodness of fit

Arrows point one way: ``mpprune`` imports ``mptheory``; ``mptheory`` never imports ``mpprune`` or timm.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "MarchenkoPastur": "mptheory.mp",
    "mp_edges": "mptheory.mp",
    "sigma_plus": "mptheory.mp",
    "eigenvalues_from_matrix": "mptheory.mp",
    "TracyWidom": "mptheory.tracy_widom",
    "tw_edge_quantile": "mptheory.tracy_widom",
    "fit_mp": "mptheory.fit",
    "fit_mp_batch": "mptheory.fit",
    "MPFit": "mptheory.fit",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mptheory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
