"""Pruning methods as small frozen config dataclasses applied by one function, :func:`prune`.

>>> result = prune(model, SEB(sparsity=0.5))            # doctest: +SKIP
>>> result.model, result.masks, result.report           # doctest: +SKIP
"""

from mpprune.methods.api import Context, MethodOutput, PruneResult, prune, register
from mpprune.methods.classical_rmt import ClassicalRMT
from mpprune.methods.hybrid import Hybrid
from mpprune.methods.magnitude import Magnitude
from mpprune.methods.nm import NM
from mpprune.methods.seb import SEB
from mpprune.methods.ser import SER

__all__ = [
    "ClassicalRMT",
    "Context",
    "Hybrid",
    "Magnitude",
    "MethodOutput",
    "NM",
    "PruneResult",
    "SEB",
    "SER",
    "prune",
    "register",
]
