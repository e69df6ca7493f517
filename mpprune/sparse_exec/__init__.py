"""Sparse execution and an honest speed audit.

* :func:`sparsify_for_cpu` — a CPU path that runs: CSR weights through MKL's sparse x dense product
  (Linear, and Conv2d through im2col), swapped in layer by layer only where it measured faster than the
  dense layer at the same thread count (:mod:`mpprune.sparse_exec.cpu` says where it wins and loses).
* :func:`to_semi_structured` — GPU 2:4 export to torch semi-structured weights (cuSPARSELt or CUTLASS),
  Linear and im2col convs, again only where measured faster than dense in the same dtype;
  :func:`pack_2to4` / :func:`unpack_2to4` give the CUTLASS packing on any device.
* :func:`densify` — back to an ordinary model (sparse modules already save ordinary state_dicts).
* :func:`audit` -> :class:`SpeedLedger` — per layer and whole model over a batch sweep, against dense in
  the same precision, medians and interquartile ranges, versions, device and threads; it says plainly
  when the device has no sparse kernel.

Every conversion takes a ``timer`` (:class:`~mpprune.sparse_exec.timing.Timer`); the default is
:class:`TorchTimer` (``torch.utils.benchmark``), and tests pass fakes.
"""

from mpprune.sparse_exec.audit import PATHS, ModelTiming, SpeedLedger, audit, batch_of
from mpprune.sparse_exec.cpu import CPU_DTYPES, SparseConv2d, SparseLinear, sparsify_for_cpu
from mpprune.sparse_exec.decision import Conversion, LayerDecision, SparseModule, densify
from mpprune.sparse_exec.semi_structured import (
    SEMI_STRUCTURED_BACKENDS,
    SemiStructuredBackend,
    SemiStructuredConv2d,
    SemiStructuredLinear,
    kn_violation,
    pack_2to4,
    semi_structured_backend,
    to_semi_structured,
    unpack_2to4,
)
from mpprune.sparse_exec.timing import Timer, Timing, TorchTimer

__all__ = [
    "CPU_DTYPES",
    "PATHS",
    "SEMI_STRUCTURED_BACKENDS",
    "Conversion",
    "LayerDecision",
    "ModelTiming",
    "SemiStructuredBackend",
    "SemiStructuredConv2d",
    "SemiStructuredLinear",
    "SparseConv2d",
    "SparseLinear",
    "SparseModule",
    "SpeedLedger",
    "Timer",
    "Timing",
    "TorchTimer",
    "audit",
    "batch_of",
    "densify",
    "kn_violation",
    "pack_2to4",
    "semi_structured_backend",
    "sparsify_for_cpu",
    "to_semi_structured",
    "unpack_2to4",
]
