"""GPU 2:4 export: torch semi-structured weights for Linear layers and an im2col + 2:4 GEMM path for convs.

Backends (torch core, no other dependency)
    ``"cusparselt"`` (:class:`torch.sparse.SparseSemiStructuredTensorCUSPARSELT`, where torch was built
    with it and the GPU supports it) and ``"cutlass"``
    (:class:`torch.sparse.SparseSemiStructuredTensorCUTLASS`, compute capability >= 8.0; torch tests it
    on 8.x, and a kernel that fails on a newer GPU is recorded as the layer's reason); ``"auto"`` takes
    cuSPARSELt when present. Both are CUDA-only: on any other device every layer stays dense with the
    reason "no semi-structured sparse kernel on this device", and nothing is timed.

Which layers
    A Linear, or a Conv2d with groups 1 (lowered to ``F.unfold`` -> 2:4 GEMM -> reshape, its weight read
    as the ``(C_out, C_in*kh*kw)`` matrix view), whose weight satisfies the backend's pattern along the
    input axis in the export dtype (2:4 for 16-bit and int8; CUTLASS runs float32 as TF32 with a 1:2
    pattern, so a 2:4 float32 weight is not legal there) and whose matrix dimensions are positive
    multiples of the backend's minimum sparse block for that dtype. Every eligible layer is then timed
    against the same layer dense in the same dtype (bf16 vs bf16, fp32 vs fp32) on its real input and
    converted only where it measured faster (:func:`mpprune.sparse_exec.decision.decide`).

Packing on CPU
    :func:`pack_2to4` / :func:`unpack_2to4` give the CUTLASS layout (kept values + 2-bit metadata in
    CUTLASS's reordered int16/int32 words) on any device. They use torch's private
    ``torch.sparse._semi_structured_conversions`` (plain tensor operations, the same functions
    ``SparseSemiStructuredTensorCUTLASS.from_dense`` runs on the GPU), imported behind a guard.
    :func:`unpack_2to4` reads only the metadata through torch's decoder and places the values itself:
    torch's decoder moves float32 values as pairs of float16 halves, and a CPU scatter of float16 quiets
    signalling-NaN bit patterns, which silently changes float32 values whose low 16 bits look like one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpprune.layers import matrix_view
from mpprune.sparse_exec.cpu import ConvGeometry, conv_ineligibility
from mpprune.sparse_exec.decision import (
    Conversion,
    LayerDecision,
    SparseModule,
    candidates,
    capture_inputs,
    decide,
    set_submodule,
)
from mpprune.sparse_exec.timing import Timer, TorchTimer
from mptheory.errors import BadInput

__all__ = [
    "EXPORT_DTYPES",
    "SEMI_STRUCTURED_BACKENDS",
    "SemiStructuredBackend",
    "semi_structured_backend",
    "kn_violation",
    "pack_2to4",
    "unpack_2to4",
    "SemiStructuredLinear",
    "SemiStructuredConv2d",
    "to_semi_structured",
]

#: Names accepted by :func:`semi_structured_backend` (besides ``"auto"``).
SEMI_STRUCTURED_BACKENDS = ("cutlass", "cusparselt")
#: Precisions a model is exported in (the dense baseline runs in the same one).
EXPORT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# (min rows, min cols) of the sparse matrix per dtype, as torch 2.14 declares them; read from torch when
# its (private) table is there.
_CUTLASS_SHAPES = {
    torch.int8: (16, 128),
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.float32: (32, 32),
}
_CUSPARSELT_SHAPES = {torch.int8: (32, 32), torch.float16: (16, 16), torch.bfloat16: (16, 16)}
_HALF_PATTERN = (2, 4)
_CUTLASS_PATTERNS = {
    torch.int8: _HALF_PATTERN,
    torch.float16: _HALF_PATTERN,
    torch.bfloat16: _HALF_PATTERN,
    torch.float32: (1, 2),
}
_CUSPARSELT_PATTERNS = {
    torch.int8: _HALF_PATTERN,
    torch.float16: _HALF_PATTERN,
    torch.bfloat16: _HALF_PATTERN,
}


@dataclass(frozen=True)
class SemiStructuredBackend:
    """A 2:4 backend: per-dtype pattern ``(k, n)`` and minimum sparse block ``(rows, cols)``, a
    ``compress(dense_weight) -> weight`` function, and ``availability(device)`` (None when usable, else
    the reason). Tests build fake ones that run on CPU."""

    name: str
    patterns: Mapping[torch.dtype, tuple[int, int]]
    shapes: Mapping[torch.dtype, tuple[int, int]]
    compress: Callable[[torch.Tensor], torch.Tensor]
    availability: Callable[[torch.device], str | None] = field(default=lambda device: None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "patterns": {str(k).replace("torch.", ""): f"{v[0]}:{v[1]}" for k, v in self.patterns.items()},
            "min_shapes": {str(k).replace("torch.", ""): list(v) for k, v in self.shapes.items()},
        }


def _torch_shapes(
    cls: Any, fallback: Mapping[torch.dtype, tuple[int, int]]
) -> dict[torch.dtype, tuple[int, int]]:
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None)
    if not isinstance(table, Mapping):
        return dict(fallback)
    out: dict[torch.dtype, tuple[int, int]] = {}
    for dtype, cfg in table.items():
        rows, cols = getattr(cfg, "sparse_min_rows", None), getattr(cfg, "sparse_min_cols", None)
        if isinstance(rows, int) and isinstance(cols, int):
            out[dtype] = (rows, cols)
    return out or dict(fallback)


def _cuda_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"no semi-structured sparse kernel on device {device.type} (torch's 2:4 kernels are CUDA-only)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def _cutlass_availability(device: torch.device) -> str | None:
    why = _cuda_reason(device)
    if why is None and torch.cuda.get_device_capability(device)[0] < 8:
        why = f"CUTLASS 2:4 needs compute capability >= 8.0, got {torch.cuda.get_device_capability(device)}"
    return why


def _cusparselt_availability(device: torch.device) -> str | None:
    why = _cuda_reason(device)
    if why is None and not torch.backends.cusparselt.is_available():
        why = "this torch build has no cuSPARSELt"
    return why


def semi_structured_backend(
    name: str | SemiStructuredBackend = "auto", device: torch.device | str = "cuda"
) -> SemiStructuredBackend:
    """The backend called ``name`` (``"auto"``: cuSPARSELt when available on ``device``, else CUTLASS)."""
    if isinstance(name, SemiStructuredBackend):
        return name
    if name not in ("auto", *SEMI_STRUCTURED_BACKENDS):
        raise BadInput(
            f"unknown semi-structured backend {name!r}; known: auto, {', '.join(SEMI_STRUCTURED_BACKENDS)}"
        )
    dev = torch.device(device)
    if name == "auto":
        name = "cusparselt" if _cusparselt_availability(dev) is None else "cutlass"
    if name == "cusparselt":
        cls = torch.sparse.SparseSemiStructuredTensorCUSPARSELT
        return SemiStructuredBackend(
            "cusparselt",
            _CUSPARSELT_PATTERNS,
            _torch_shapes(cls, _CUSPARSELT_SHAPES),
            cls.from_dense,
            _cusparselt_availability,
        )
    cls_c = torch.sparse.SparseSemiStructuredTensorCUTLASS
    return SemiStructuredBackend(
        "cutlass",
        _CUTLASS_PATTERNS,
        _torch_shapes(cls_c, _CUTLASS_SHAPES),
        cls_c.from_dense,
        _cutlass_availability,
    )


def kn_violation(matrix: torch.Tensor, k: int, n: int) -> str | None:
    """None when every group of ``n`` consecutive entries along the input axis of ``matrix`` (out, in)
    holds at most ``k`` nonzeros; otherwise where the first violation is."""
    if matrix.dim() != 2:
        raise BadInput(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    if cols % n:
        return f"input dimension {cols} is not a multiple of {n}"
    counts = (matrix != 0).reshape(rows, cols // n, n).sum(-1)
    bad = (counts > k).nonzero()
    if bad.numel() == 0:
        return None
    r, g = (int(v) for v in bad[0])
    return (
        f"not {k}:{n}: row {r}, inputs {g * n}..{g * n + n - 1} hold {int(counts[r, g])} nonzeros "
        f"({bad.shape[0]} such groups)"
    )


# -- CUTLASS packing on any device ------------------------------------------------------------------


def _conversions() -> Any:
    try:
        from torch.sparse import _semi_structured_conversions as conv
    except ImportError as exc:  # pragma: no cover - present in the pinned torch
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.sparse._semi_structured_conversions"
        ) from exc
    for fn in ("sparse_semi_structured_from_dense_cutlass", "sparse_semi_structured_to_dense_cutlass"):
        if not callable(getattr(conv, fn, None)):  # pragma: no cover - present in the pinned torch
            raise RuntimeError(
                f"torch {torch.__version__}: torch.sparse._semi_structured_conversions.{fn} is missing"
            )
    return conv


def pack_2to4(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a 2:4 matrix (1:2 for float32) into CUTLASS's ``(values, metadata)``.

    ``values`` has shape ``(rows, cols/2)``, ``metadata`` the reordered int16 (int32 for int8) words.
    BadInput when the pattern does not hold (packing would drop entries) or the shape is not one CUTLASS
    packs (positive multiples of its minimum sparse block: 32x64 for 16-bit, 32x32 for float32, 16x128
    for int8).
    """
    if dense.dim() != 2:
        raise BadInput(f"pack_2to4 expects a 2-D matrix, got shape {tuple(dense.shape)}")
    if dense.dtype not in _CUTLASS_PATTERNS:
        raise BadInput(
            f"pack_2to4: dtype {dense.dtype} is not packed by CUTLASS (int8, float16, bfloat16, float32)"
        )
    k, n = _CUTLASS_PATTERNS[dense.dtype]
    why = kn_violation(dense, k, n)
    if why is not None:
        raise BadInput(f"pack_2to4 of a {tuple(dense.shape)} {dense.dtype} matrix: {why}")
    rows, cols = dense.shape
    row_mult, col_mult = _CUTLASS_SHAPES[dense.dtype]
    if rows % row_mult or cols % col_mult or rows == 0 or cols == 0:
        raise BadInput(
            f"pack_2to4: shape {tuple(dense.shape)} must be positive multiples of ({row_mult}, {col_mult}) "
            f"for {dense.dtype}"
        )
    values, meta = _conversions().sparse_semi_structured_from_dense_cutlass(dense.contiguous())
    return values, meta


def unpack_2to4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense matrix of CUTLASS ``(values, metadata)`` (the inverse of :func:`pack_2to4`, bit-exact)."""
    if values.dim() != 2 or meta.dim() != 2:
        raise BadInput(
            f"unpack_2to4 expects 2-D values and metadata, got {tuple(values.shape)}, {tuple(meta.shape)}"
        )
    # decode the kept positions through torch's metadata decoder (ones survive its float16 moves), then
    # place the values, which are stored row by row in increasing column order
    slots = _conversions().sparse_semi_structured_to_dense_cutlass(torch.ones_like(values), meta) != 0
    if int(slots.sum()) != values.numel():
        raise BadInput("unpack_2to4: metadata does not describe one slot per stored value")
    dense = torch.zeros(slots.shape, dtype=values.dtype, device=values.device)
    dense[slots] = values.reshape(-1)
    return dense


# -- modules ----------------------------------------------------------------------------------------


def _dense_of(weight: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, torch.sparse.SparseSemiStructuredTensor):
        return weight.to_dense()
    return weight.detach().clone()


class SemiStructuredLinear(SparseModule):
    """``nn.Linear`` whose weight is a compressed 2:4 tensor (``F.linear`` dispatches to the 2:4 GEMM)."""

    def __init__(self, linear: nn.Linear, compress: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._compress = compress
        self._dtype = linear.weight.dtype
        self.weight_sparse = compress(linear.weight.detach().contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    def dense_weight(self) -> torch.Tensor:
        return _dense_of(self.weight_sparse)

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        self.weight_sparse = self._compress(weight.detach().to(self._dtype).contiguous())

    def to_dense(self) -> nn.Linear:
        w = self.dense_weight()
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype, device=w.device
        )
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                assert lin.bias is not None
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = F.linear(x.reshape(-1, self.in_features), self.weight_sparse, self.bias)
        return y.reshape(*lead, self.out_features)


class SemiStructuredConv2d(SparseModule):
    """``nn.Conv2d`` (groups 1) lowered to ``F.unfold`` -> 2:4 GEMM on the ``(C_out, C_in*kh*kw)`` matrix
    view -> reshape, the paper's "im2col" path (digest §3.14)."""

    def __init__(self, conv: nn.Conv2d, compress: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.geometry = ConvGeometry.of(conv)
        self._compress = compress
        self._dtype = conv.weight.dtype
        self.weight_sparse = compress(matrix_view(conv).contiguous())
        bias = conv.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    def dense_weight(self) -> torch.Tensor:
        return _dense_of(self.weight_sparse).reshape(self.geometry.weight_shape)

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        rows = weight.detach().to(self._dtype).reshape(self.geometry.out_channels, -1)
        self.weight_sparse = self._compress(rows.contiguous())

    def to_dense(self) -> nn.Conv2d:
        return self.geometry.make_conv(self.dense_weight(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        cols = g.columns(x)  # (B, K, L)
        b, n = cols.shape[0], cols.shape[-1]
        ho, wo = g.output_hw(x.shape[2], x.shape[3])
        y = F.linear(cols.transpose(1, 2).reshape(b * n, -1), self.weight_sparse, self.bias)  # (B*L, C_out)
        return y.reshape(b, n, g.out_channels).transpose(1, 2).reshape(b, g.out_channels, ho, wo)


# -- conversion ---------------------------------------------------------------------------------------


def _ineligibility(
    mod: nn.Module, d: LayerDecision, backend: SemiStructuredBackend, dtype: torch.dtype, convs: bool
) -> str | None:
    if isinstance(mod, nn.Conv2d):
        if not convs:
            return "convs not requested (convs=False)"
        why = conv_ineligibility(mod)
        if why is not None:
            return why
    if dtype not in backend.patterns or dtype not in backend.shapes:
        return f"backend {backend.name} has no 2:4 kernel for {str(dtype).replace('torch.', '')}"
    w = matrix_view(mod)
    if not bool(torch.isfinite(w).all()):
        raise BadInput(f"layer {d.name!r} shape {tuple(w.shape)}: weight has NaN or Inf entries")
    k, n = backend.patterns[dtype]
    why = kn_violation(w, k, n)
    if why is not None:
        return why
    rows, cols = w.shape
    min_rows, min_cols = backend.shapes[dtype]
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return (
            f"shape {rows}x{cols}: {backend.name} needs positive multiples of {min_rows}x{min_cols} "
            f"for {str(dtype).replace('torch.', '')}"
        )
    return None


def to_semi_structured(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    backend: str | SemiStructuredBackend = "auto",
    timer: Timer | None = None,
    min_speedup: float = 1.05,
    convs: bool = True,
    rounds: int = 2,
    inplace: bool = False,
) -> Conversion:
    """Export the 2:4 layers of ``model`` to torch semi-structured sparse weights where that is faster.

    The model (a copy unless ``inplace``) is cast to ``dtype``; each Linear and groups-1 Conv2d that is
    legal for the backend (module docstring) is compressed, checked for equal outputs on its real input
    from one forward of ``example_input``, and timed against the same layer dense in ``dtype``; it is
    kept sparse only when at least ``min_speedup`` times faster. On a device without a 2:4 kernel no
    layer is converted and :attr:`Conversion.note` says so. ``backend`` may be a
    :class:`SemiStructuredBackend` (tests use one whose ``compress`` runs on CPU).
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"to_semi_structured expects an nn.Module, got {type(model).__name__}")
    if min_speedup <= 0:
        raise BadInput(f"min_speedup must be > 0, got {min_speedup}")
    if dtype not in EXPORT_DTYPES:
        raise BadInput(f"dtype must be one of {[str(d) for d in EXPORT_DTYPES]}, got {dtype}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    be = semi_structured_backend(backend, device)
    out = model if inplace else copy.deepcopy(model)
    out.to(dtype=dtype)
    x = example_input.to(device=device, dtype=dtype) if example_input.is_floating_point() else example_input
    unavailable = be.availability(device)
    timer = timer if timer is not None else TorchTimer()
    n_threads = int(getattr(timer, "threads", None) or torch.get_num_threads())
    cands = candidates(out)
    decisions = [d for _, _, d in cands]
    conversion = Conversion(
        model=out,
        decisions=decisions,
        path="semi_structured",
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        threads=n_threads,
        min_speedup=min_speedup,
        backend=be.name,
        kernel_available=unavailable is None,
        note=None if unavailable is None else f"no sparse kernel on this device: {unavailable}",
    )
    if unavailable is not None:
        for d in decisions:
            d.reason = unavailable
        return conversion
    inputs = capture_inputs(out, x, [mod for _, mod, _ in cands])
    for name, mod, d in cands:
        why = _ineligibility(mod, d, be, dtype, convs)
        if why is None and id(mod) not in inputs:
            why = "not executed by the example input"
        if why is not None:
            d.reason = why
            continue
        try:
            sparse: nn.Module
            if isinstance(mod, nn.Linear):
                sparse = SemiStructuredLinear(mod, be.compress)
            else:
                assert isinstance(mod, nn.Conv2d)
                sparse = SemiStructuredConv2d(mod, be.compress)
            chosen = decide(
                d,
                mod,
                inputs[id(mod)],
                [(be.name, sparse)],
                timer=timer,
                min_speedup=min_speedup,
                rounds=rounds,
            )
        except (RuntimeError, NotImplementedError) as exc:
            d.eligible, d.converted = True, False
            d.reason = (
                f"{be.name} kernel failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            )
            continue
        if chosen is not None:
            set_submodule(out, name, chosen)
    return conversion
