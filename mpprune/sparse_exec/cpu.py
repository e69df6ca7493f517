"""A CPU sparse path: CSR weights through MKL's sparse x dense product, swapped in only where measured faster.

Kernel
    ``torch.addmm(bias, W_csr, X)`` with ``W`` in CSR (int32 indices, so torch hands MKL's sparse BLAS
    the arrays without converting them on every call) and ``X`` the layer's input laid out as columns:
    ``X = x.T`` for a Linear, the ``F.unfold`` columns of one image for a Conv2d (a 1x1 conv with stride 1
    and no padding is a reshape). The columns are processed ``tile`` at a time so that the slice of ``X``
    the kernel gathers rows from stays in cache: MKL walks the nonzeros of each row of ``W`` and, for
    each, adds a scaled row of ``X``, so ``X`` is read once per nonzero. On an AMD EPYC (Zen 4), one
    thread, the 768x3072 ViT-B/16 ``fc2`` at 90 % unstructured sparsity on 197 tokens ran 1.0-1.8x dense
    untiled (its 3072x197 ``X`` is 2.4 MB, more than L2) and 1.4-3x with 32-column tiles.

Where it wins and where it loses (``benchmarks/sparse_exec.py``, one thread, a shared and loaded machine)
    CSR pays an index load and a scattered row read per nonzero where dense GEMM streams through
    registers, so it needs high sparsity. ViT-B/16 MLP layers (197 and 1576 tokens): about 0.5x dense at
    50 %, 0.2-0.7x at 2:4 (no CPU kernel exploits the 2:4 structure), 0.6-0.9x at 70 %, break-even
    around 80 % (1.0-1.2x per layer, 0.8-1.1x for the whole block), 1.2-1.6x at 85 %, 1.7-2.0x at 90 %,
    2-5x at 95 %. Convolutions go through im2col, and native dense convolutions (oneDNN) are faster than
    that: the MNIST CNN's 3x3 convs stay at or below 0.4x even at 90 %, while EfficientNet-Lite0's 1x1
    convs (a reshape, no unfold) reach 0.5-1.4x at 80 % and 0.9-3x at 90 %. A Linear on one token (a
    matrix-vector product, e.g. a classifier head at batch 1) lost (0.6-0.7x at 80-90 %). With two
    threads on that loaded 2-core machine the sparse path lost everywhere (0.2-0.8x). This is why every
    layer is timed, at the thread count it will run with, before it is converted.

Precision
    MKL's sparse BLAS serves float32 and float64 only; other dtypes stay dense with that reason.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpprune.layers import matrix_view
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
    "CPU_DTYPES",
    "DEFAULT_LINEAR_TILES",
    "DEFAULT_CONV_TILES",
    "SparseLinear",
    "SparseConv2d",
    "sparsify_for_cpu",
]

#: dtypes MKL's sparse BLAS multiplies (others have no CPU sparse kernel here).
CPU_DTYPES = (torch.float32, torch.float64)
#: Column tiles tried for a Linear (tokens per MKL call).
DEFAULT_LINEAR_TILES = (16, 32, 64)
#: Column tiles tried for a Conv2d (output pixels per MKL call; 0 = the whole image at once).
DEFAULT_CONV_TILES = (0, 256)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def to_csr(matrix: torch.Tensor) -> torch.Tensor:
    """A 2-D dense tensor as a CSR tensor with int32 indices."""
    if matrix.dim() != 2:
        raise BadInput(f"to_csr expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    if matrix.numel() >= 2**31:
        raise BadInput(f"matrix {tuple(matrix.shape)} is too large for int32 CSR indices")
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        csr = matrix.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            size=tuple(matrix.shape),
        )


def _check_tile(tile: int) -> int:
    if tile < 0:
        raise BadInput(f"tile must be >= 0 (0 = no tiling), got {tile}")
    return int(tile)


def _product(w: torch.Tensor, cols: torch.Tensor, bias_col: torch.Tensor | None) -> torch.Tensor:
    """``W_csr @ cols (+ bias)`` for contiguous dense ``cols`` of shape (in, n)."""
    if bias_col is None:
        return torch.mm(w, cols)
    return torch.addmm(bias_col, w, cols)


class SparseLinear(SparseModule):
    """``nn.Linear`` with a CSR weight: ``y = x W^T + b`` computed as ``(W x^T)^T`` in column tiles.

    Build it with :meth:`from_dense`; inputs of any leading shape ``(..., in_features)``.
    """

    weight_csr: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, tile: int = 32) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise BadInput(f"SparseLinear weight must be 2-D, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = (int(s) for s in weight.shape)
        self.tile = _check_tile(tile)
        self.register_buffer("weight_csr", to_csr(weight), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    @classmethod
    def from_dense(cls, linear: nn.Linear, tile: int = 32) -> SparseLinear:
        return cls(linear.weight.detach(), None if linear.bias is None else linear.bias.detach(), tile)

    def dense_weight(self) -> torch.Tensor:
        return self.weight_csr.to_dense()

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        self.weight_csr = to_csr(weight.to(self.weight_csr.dtype))

    def to_dense(self) -> nn.Linear:
        w = self.dense_weight()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                assert lin.bias is not None
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        nnz = int(self.weight_csr.values().numel())
        density = nnz / max(1, self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={density:.3f}, tile={self.tile}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expects (..., {self.in_features}) input, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        bias_col = None if self.bias is None else self.bias[:, None]
        step = self.tile if self.tile > 0 else max(n, 1)
        out = x2.new_empty((n, self.out_features))
        for j in range(0, n, step):
            out[j : j + step] = _product(self.weight_csr, x2[j : j + step].t().contiguous(), bias_col).t()
        return out.reshape(*lead, self.out_features)


def conv_ineligibility(conv: nn.Module) -> str | None:
    """Why a Conv2d cannot take the im2col path (None when it can)."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} (a Conv2d subclass with its own forward) is not lowered"
    assert isinstance(conv, nn.Conv2d)
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups}): no sparse kernel for per-group matrices"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: only zero padding is lowered"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}: only numeric padding is lowered"
    return None


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class ConvGeometry:
    """The shape arithmetic of a groups-1, zero-padded Conv2d lowered to im2col (shared by both paths)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        why = conv_ineligibility(conv)
        if why is not None:
            raise BadInput(why)
        return cls(
            conv.in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            _pair(conv.stride),
            _pair(conv.padding),
            _pair(conv.dilation),
        )

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """``F.unfold(x)``, shape ``(B, C_in*kh*kw, H_out*W_out)`` (a reshape for a plain 1x1 conv)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"conv expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            return x.reshape(x.shape[0], self.in_channels, -1)
        return F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)

    def make_conv(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
        """An ordinary ``nn.Conv2d`` of this geometry holding copies of ``weight`` and ``bias``."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=bias is not None,
            dtype=weight.dtype,
            device=weight.device,
        )
        with torch.no_grad():
            conv.weight.copy_(weight.reshape(self.weight_shape))
            if bias is not None:
                assert conv.bias is not None
                conv.bias.copy_(bias)
        return conv


class SparseConv2d(SparseModule):
    """``nn.Conv2d`` (groups 1, zero padding) as im2col + CSR: per image ``Y = W_csr @ unfold(x)``.

    The weight is the ``(C_out, C_in*kh*kw)`` matrix view of :mod:`mpprune.layers`; ``tile`` output
    pixels per MKL call (0: the whole image).
    """

    weight_csr: torch.Tensor

    def __init__(self, conv: nn.Conv2d, tile: int = 0) -> None:
        super().__init__()
        self.geometry = ConvGeometry.of(conv)
        self.tile = _check_tile(tile)
        self.register_buffer("weight_csr", to_csr(matrix_view(conv)), persistent=False)
        bias = conv.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, tile: int = 0) -> SparseConv2d:
        return cls(conv, tile)

    def dense_weight(self) -> torch.Tensor:
        return self.weight_csr.to_dense().reshape(self.geometry.weight_shape)

    def load_dense_weight(self, weight: torch.Tensor) -> None:
        self.weight_csr = to_csr(weight.to(self.weight_csr.dtype).reshape(self.geometry.out_channels, -1))

    def to_dense(self) -> nn.Conv2d:
        return self.geometry.make_conv(self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        g = self.geometry
        nnz = int(self.weight_csr.values().numel())
        size = self.weight_csr.shape[0] * self.weight_csr.shape[1]
        return (
            f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
            f"padding={g.padding}, density={nnz / max(1, size):.3f}, tile={self.tile}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        cols = g.columns(x)
        b, n = cols.shape[0], cols.shape[-1]
        ho, wo = g.output_hw(x.shape[2], x.shape[3])
        bias_col = None if self.bias is None else self.bias[:, None]
        out = x.new_empty((b, g.out_channels, n))
        step = self.tile if 0 < self.tile < n else n
        for i in range(b):
            ci = cols[i]
            for j in range(0, n, step):
                out[i, :, j : j + step] = _product(
                    self.weight_csr, ci[:, j : j + step].contiguous(), bias_col
                )
        return out.reshape(b, g.out_channels, ho, wo)


def _ineligibility(mod: nn.Module, d: LayerDecision, max_density: float) -> str | None:
    w = matrix_view(mod)
    if w.device.type != "cpu":
        return f"weight on {w.device}: this is the CPU path"
    if w.dtype not in CPU_DTYPES:
        return f"no CPU sparse kernel for {_name(w.dtype)} (MKL sparse BLAS: float32/float64)"
    if not bool(torch.isfinite(w).all()):
        raise BadInput(f"layer {d.name!r} shape {tuple(w.shape)}: weight has NaN or Inf entries")
    if d.kind in ("conv2d", "conv2d_grouped", "conv2d_depthwise"):
        why = conv_ineligibility(mod)
        if why is not None:
            return why
    if d.density > max_density:
        return f"density {d.density:.3f} > max_density {max_density:.3f}: not tried"
    return None


def sparsify_for_cpu(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    threads: int | None = None,
    timer: Timer | None = None,
    min_speedup: float = 1.05,
    max_density: float = 0.5,
    tiles: Sequence[int] | None = None,
    rounds: int = 2,
    inplace: bool = False,
) -> Conversion:
    """Swap in :class:`SparseLinear` / :class:`SparseConv2d` where each measured faster than the dense layer.

    Every Linear and Conv2d of ``model`` (:func:`mpprune.layers.find_layers`) is a candidate. One
    forward of ``example_input`` captures each layer's real input; an eligible layer (CPU, float32 or
    float64, groups 1, density at most ``max_density``) is checked for equal outputs and then timed
    against the dense layer in alternating rounds, one sparse variant per column tile in ``tiles``
    (default :data:`DEFAULT_LINEAR_TILES` / :data:`DEFAULT_CONV_TILES`); the fastest variant replaces
    the layer when it is at least ``min_speedup`` times faster. ``timer`` (default
    :class:`~mpprune.sparse_exec.timing.TorchTimer` at ``threads`` threads) can be a fake for tests.

    Returns a :class:`~mpprune.sparse_exec.decision.Conversion`: a new model (the input is untouched)
    unless ``inplace``, and one decision per candidate layer with the reason for every layer left dense.
    Use :func:`~mpprune.sparse_exec.densify` to get an ordinary model back.
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"sparsify_for_cpu expects an nn.Module, got {type(model).__name__}")
    if min_speedup <= 0:
        raise BadInput(f"min_speedup must be > 0, got {min_speedup}")
    if not 0.0 <= max_density <= 1.0:
        raise BadInput(f"max_density must be in [0, 1], got {max_density}")
    if tiles is not None and not tiles:
        raise BadInput("tiles must name at least one tile size")
    timer = timer if timer is not None else TorchTimer(threads=threads)
    n_threads = int(getattr(timer, "threads", None) or threads or torch.get_num_threads())
    out = model if inplace else copy.deepcopy(model)
    cands = candidates(out)
    inputs = capture_inputs(out, example_input, [mod for _, mod, _ in cands])
    decisions: list[LayerDecision] = []
    for name, mod, d in cands:
        decisions.append(d)
        why = _ineligibility(mod, d, max_density)
        if why is None and id(mod) not in inputs:
            why = "not executed by the example input"
        if why is not None:
            d.reason = why
            continue
        if isinstance(mod, nn.Linear):
            sizes = tuple(tiles) if tiles is not None else DEFAULT_LINEAR_TILES
            variants: list[tuple[str, nn.Module]] = [
                (f"csr[tile={t}]", SparseLinear.from_dense(mod, tile=t)) for t in sizes
            ]
        else:
            assert isinstance(mod, nn.Conv2d)
            sizes = tuple(tiles) if tiles is not None else DEFAULT_CONV_TILES
            variants = [(f"csr[tile={t}]", SparseConv2d.from_dense(mod, tile=t)) for t in sizes]
        chosen = decide(
            d, mod, inputs[id(mod)], variants, timer=timer, min_speedup=min_speedup, rounds=rounds
        )
        if chosen is not None:
            set_submodule(out, name, chosen)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    if device.type != "cpu":
        note: str | None = (
            f"no sparse kernel on this device: the CSR path runs on CPU, the model is on {device}"
        )
    elif dtype not in CPU_DTYPES:
        note = (
            f"no CPU sparse kernel for {str(dtype).replace('torch.', '')} (MKL sparse BLAS: float32/float64)"
        )
    else:
        note = None
    return Conversion(
        model=out,
        decisions=decisions,
        path="cpu",
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        threads=n_threads,
        min_speedup=min_speedup,
        backend="mkl-csr" if torch.backends.mkl.is_available() else "torch-csr",
        kernel_available=note is None,
        note=note,
    )
