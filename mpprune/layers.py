"""Which modules of a network are prunable, and the matrix view of each.

Conventions (DESIGN.md, "Matrix view"):

* ``nn.Linear``: the weight as stored, shape ``(out_features, in_features)``.
* ``nn.Conv2d``: ``(C_out, C_in/groups * kh * kw)``, the columns in ``F.unfold`` order
  (channel-major, then kernel row, then kernel column), so that for ``groups == 1``
  ``matrix_view(conv) @ F.unfold(x, ...)`` equals the convolution output (without bias).
  For ``groups > 1`` rows ``g*C_out/groups : (g+1)*C_out/groups`` act on the unfold of the
  input channels of group ``g``.
* A fused ``qkv`` Linear (the ``qkv`` attribute of an attention module, e.g. timm ``Attention``)
  is one module for pruning but three ``(d, d)`` blocks (q, k, v) for spectra.

Modules are identified by object identity (``LayerInfo.module``), never by substrings of names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mpprune.errors import BadInput

__all__ = [
    "LayerInfo",
    "find_layers",
    "matrix_view",
    "matrix_blocks",
    "from_matrix_view",
    "DEFAULT_MIN_DIM",
]

#: Smallest matrix dimension for which an MP fit is attempted: the central window of a BEMA fit on
#: fewer eigenvalues holds too few points to estimate sigma^2.
DEFAULT_MIN_DIM = 16

KINDS = ("linear", "qkv", "conv2d", "conv2d_grouped", "conv2d_depthwise")


@dataclass(eq=False)
class LayerInfo:
    """A prunable layer and how its weight is read as a matrix.

    Attributes:
        name: qualified module name from ``model.named_modules()`` (for reports only).
        module: the module object itself; identity is the key.
        kind: one of ``"linear"``, ``"qkv"``, ``"conv2d"``, ``"conv2d_grouped"``, ``"conv2d_depthwise"``.
        matrix_shape: shape ``(out, in)`` of the whole matrix view.
        eligible_for_fit: whether the MP law is fitted to this layer's spectrum.
        reason: why not, when ``eligible_for_fit`` is False (otherwise None).
        block_shapes: shapes of the blocks used for spectra (three for qkv, else one).
    """

    name: str
    module: nn.Module
    kind: str
    matrix_shape: tuple[int, int]
    eligible_for_fit: bool
    reason: str | None = None
    block_shapes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        """Number of matrices analysed separately (3 for a fused qkv, else 1)."""
        return len(self.block_shapes)


def _fused_qkv_ids(model: nn.Module) -> set[int]:
    """Ids of Linear modules that are the ``qkv`` attribute of some parent (fused q, k, v)."""
    ids: set[int] = set()
    for parent in model.modules():
        child = getattr(parent, "qkv", None)
        if isinstance(child, nn.Linear) and child.out_features % 3 == 0:
            ids.add(id(child))
    return ids


def _eligibility(shape: tuple[int, int], min_dim: int, depthwise: bool) -> tuple[bool, str | None]:
    n, m = shape
    if depthwise:
        return False, f"depthwise conv: matrix {n}x{m} has one input channel per filter (not MP-fitted)"
    if min(n, m) <= 1:
        return False, f"{n}x{m} matrix: a 1xn matrix has a single singular value"
    if min(n, m) < min_dim:
        return False, f"too small: {n}x{m} has {min(n, m)} < min_dim={min_dim} singular values"
    return True, None


def find_layers(model: nn.Module, *, min_dim: int = DEFAULT_MIN_DIM) -> list[LayerInfo]:
    """List the Linear and Conv2d layers of ``model`` in ``named_modules`` order.

    A module shared between several parents is listed once. Each entry carries its matrix-view
    shape and whether the MP law is fitted to it (depthwise convs, matrices with a dimension of one
    and matrices with fewer than ``min_dim`` singular values are listed but not fitted, with the reason).
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"find_layers expects an nn.Module, got {type(model).__name__}")
    if min_dim < 1:
        raise BadInput(f"min_dim must be >= 1, got {min_dim}")
    qkv_ids = _fused_qkv_ids(model)
    out: list[LayerInfo] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            shape = (mod.out_features, mod.in_features)
            if id(mod) in qkv_ids:
                d = mod.out_features // 3
                blocks = [(d, mod.in_features)] * 3
                ok, why = _eligibility(blocks[0], min_dim, False)
                out.append(LayerInfo(name, mod, "qkv", shape, ok, why, blocks))
            else:
                ok, why = _eligibility(shape, min_dim, False)
                out.append(LayerInfo(name, mod, "linear", shape, ok, why, [shape]))
        elif isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            cin_g = mod.in_channels // mod.groups
            shape = (mod.out_channels, cin_g * kh * kw)
            depthwise = mod.groups > 1 and cin_g == 1
            if depthwise:
                kind = "conv2d_depthwise"
            elif mod.groups > 1:
                kind = "conv2d_grouped"
            else:
                kind = "conv2d"
            ok, why = _eligibility(shape, min_dim, depthwise)
            out.append(LayerInfo(name, mod, kind, shape, ok, why, [shape]))
    return out


def _module_of(obj: nn.Module | LayerInfo) -> nn.Module:
    return obj.module if isinstance(obj, LayerInfo) else obj


def matrix_view(module: nn.Module | LayerInfo) -> torch.Tensor:
    """The weight of a Linear or Conv2d as an ``(out, in)`` matrix (see module docstring).

    The result is detached but shares storage with ``module.weight`` (the weight of every
    supported module is contiguous after ``reshape`` of a contiguous tensor), so in-place edits
    of the view reach the module. Use :func:`from_matrix_view` to go back to the weight shape.
    """
    mod = _module_of(module)
    if isinstance(mod, nn.Linear):
        return mod.weight.detach()
    if isinstance(mod, nn.Conv2d):
        w = mod.weight.detach()
        return w.reshape(w.shape[0], -1)
    raise BadInput(f"no matrix view for module of type {type(mod).__name__} (expected Linear or Conv2d)")


def from_matrix_view(module: nn.Module | LayerInfo, matrix: torch.Tensor) -> torch.Tensor:
    """Reshape an ``(out, in)`` matrix back to the shape of ``module.weight`` (inverse of matrix_view)."""
    mod = _module_of(module)
    view_shape = tuple(matrix_view(mod).shape)
    if tuple(matrix.shape) != view_shape:
        raise BadInput(f"got shape {tuple(matrix.shape)}, expected the matrix-view shape {view_shape}")
    weight = mod.weight
    assert isinstance(weight, torch.Tensor)
    return matrix.reshape(weight.shape)


def matrix_blocks(info: LayerInfo) -> list[tuple[str, torch.Tensor]]:
    """The matrices analysed for spectra: ``[(name, W)]``, or three ``(name[q|k|v], W_block)`` for qkv.

    Blocks are detached views of the weight (rows ``0:d``, ``d:2d``, ``2d:3d`` for q, k, v).
    """
    w = matrix_view(info.module)
    if info.kind == "qkv":
        d = w.shape[0] // 3
        return [(f"{info.name}[{tag}]", w[i * d : (i + 1) * d]) for i, tag in enumerate("qkv")]
    return [(info.name, w)]
