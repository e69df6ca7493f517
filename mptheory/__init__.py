"""mptheory: the Marchenko–Pastur theory behind certified pruning, checked numerically.

Public surface (loaded lazily so that ``import mptheory`` stays cheap)::

    import mptheory as mpt
    law = mpt.MarchenkoPastur(ratio=0.25, sigma2=1.0)   # scipy.stats-style frozen law on eigenvalues
    mpt.TracyWidom(beta=1).ppf(0.95)                    # Tracy–Widom laws (beta = 1, 2)
    fit = mpt.fit_mp(W)                                 # MP fit: sigma2, edges, spikes, goodness of fit

Parameter vocabulary (one name, one meaning, in every module and docstring):

==============  ===========================================================================================
name            meaning
==============  ===========================================================================================
``ratio``       aspect ratio ``c = min(N, M)/max(N, M) ∈ (0, 1]`` (formulas write it ``c``)
``sigma2``      noise variance σ². On the raw MP scale (:mod:`~mptheory.mp`, :mod:`~mptheory.fit`, the raw
                :mod:`~mptheory.spikes` functions) the per-entry variance of W; in the normalised model
                (noise entries N(0, σ²/n): :mod:`~mptheory.budgets`, :mod:`~mptheory.dynamics`, the
                normalised and square :mod:`~mptheory.spikes` functions) n × the per-entry variance — the
                digest calls this ``g``. Each docstring says which.
``sigma``       √σ², the noise standard deviation
``theta``       a signal singular value (or eigenvalue, where the function says so)
``beta``        only the Dyson index of :class:`~mptheory.tracy_widom.TracyWidom` (1 or 2)
``delta``       a failure probability / confidence level 1 − δ (noise edges, budgets, thresholds)
``tw_level``    the authors' Tracy–Widom level for the opt-in edge of :func:`~mptheory.fit.fit_mp`
                (``authors_convention=True`` sets 0.8)
``alpha``       the BEMA quantile trimming of :func:`~mptheory.fit.fit_mp`
``c``           only the sub-Gaussian constant of :mod:`~mptheory.budgets` (R3/R5)
``method``      an MP fit method (``"rcb"``, ``"bema"``, ``"gd"``) or, for L_s, an estimator name of
                :data:`mptheory.lipschitz.ESTIMATORS` (``"affine"``, ``"pl_exact"``, ``"product_norm"``,
                ``"segment_max_slope"``)
``kind``        how a :class:`~mptheory.verdict.CheckResult` is decided (:data:`mptheory.verdict.KINDS`)
==============  ===========================================================================================

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
