"""Calibration capture, per-sample data-path certificates on real models, and the pruning gate.

For one layer ``A = S + R`` (dense weight ``A``, pruned weight ``S``, removed part ``R``) with input
``psi_1(s)`` and tail ``psi_2`` (everything after the layer, run by the model's own ``forward``), the
certificate of digest §1.2 / D1-D2 is::

    eta_s = L_s ||R psi_1(s)||_inf,     B_T(R) = (2/|T|) sum_s eta_s,

and sample ``s`` is *certified* when its dense prediction margin exceeds ``2 eta_s`` (its prediction then
cannot flip). ``||R psi_1(s)||_inf`` is the largest ``|layer_R(psi_1)|`` over every output coordinate of the
sample (all tokens of a token model, all positions of a conv), where ``layer_R`` is the layer run
functionally with weight ``R`` and no bias.

Estimators of L_s (every result carries ``estimator`` and ``sound``):

* ``"pl_exact"`` (sound; default when the tail is piecewise linear): along ``A_theta = S + theta R`` the
  logits
  are piecewise linear in theta. The model is run in float64 with forward-mode AD (the tangent is the R-part
  of the layer output); a ``TorchFunctionMode`` watches every op that touches the tangent, computes from the
  exact primal and tangent the distance to the nearest ReLU / LeakyReLU / Hardtanh switch and MaxPool argmax
  switch on both sides, and the segment [0, 1] is covered piece by piece (probing each piece at an interior
  point). ``eta_s = max_pieces ||dz/dtheta||_inf`` exactly (pieces shorter than ``tol`` = 1e-9 in theta are
  not probed). Cost: all samples of a batch advance in lockstep (one batched probe covers one piece of
  every unfinished sample, so a batch needs max-over-samples pieces probes, not the sum), and a probe runs
  only the tail: per batch the outputs of every module call that finishes before the layer starts, and
  the layer's ``S psi_1 + b`` and ``R psi_1``, are computed once and replayed. Any op that is not affine
  or one of those switches (GELU, LayerNorm, softmax, ...) makes the
  tail non-PL and ``"auto"`` falls back to ``"segment_max_slope"``.
* ``"segment_max_slope"`` (ESTIMATE, ``sound=False``): the largest ``||dz/dtheta||_inf`` on a 20-point theta
  grid.
* ``"product_norm"`` (sound for sequential tails): the product of induced inf-norms of the ops the tangent
  passes through (Linear/Conv/BatchNorm/scalings; ReLU, max/avg pooling and reshapes count 1). Tails in which
  two tangent-carrying tensors meet (residual adds, concatenations) are refused.

Multi-layer totals (D11) are computed in the intermediate networks: layer j (in model order) is certified
with layers before it already pruned, so ``||z^(j) - z^(j-1)||_inf <= eta_{j,s}`` and predictions of the
fully pruned model can change only where the dense margin is ``<= 2 sum_j eta_{j,s}``.

All certificate arithmetic is done in float64 on a copy of the model; the models passed in are never
modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from mpprune.data import require_train_split
from mpprune.layers import find_layers
from mpprune.masks import MaskStore

__all__ = [
    "ESTIMATORS",
    "CertificateReport",
    "Gate",
    "GateLayer",
    "GateResult",
    "LayerCertificate",
    "NotPiecewiseLinear",
    "ProbeBudgetExceeded",
    "AUTO_MAX_PROBES",
    "SecondMoments",
    "capture_covariance",
    "capture_layer",
    "certify",
    "certify_layer",
    "iter_calibration",
    "layer_removed_output",
]

ESTIMATORS = ("auto", "pl_exact", "segment_max_slope", "product_norm")
_SOUND = {"pl_exact": True, "segment_max_slope": False, "product_norm": True}
# "auto" tries the exact piecewise-linear bound with at most this many probes (linear pieces) per batch and
# falls back to the labelled segment_max_slope ESTIMATE beyond it (e.g. the first conv of a CNN, whose
# tail switches ~2,000 ReLU/max states per sample). An explicit estimator="pl_exact" uses max_probes.
AUTO_MAX_PROBES = 1000


class ProbeBudgetExceeded(ValueError):
    """``pl_exact`` needed more probes (linear pieces) than its budget allows."""


class NotPiecewiseLinear(ValueError):
    """The tail after a layer contains an op that is not affine / a supported PL switch."""


# ----------------------------------------------------------------------------------------------------
# calibration data


def _materialise(calibration: Any) -> Any:
    """A re-iterable view of ``calibration`` (one-shot iterators are turned into a list)."""
    if calibration is None:
        raise ValueError("calibration is None: certificates need calibration batches from the train split")
    require_train_split(calibration, "calibration")
    if isinstance(calibration, (torch.Tensor, tuple)):
        return [calibration]
    if not isinstance(calibration, Iterable):
        raise ValueError(f"calibration must be an iterable of batches, got {type(calibration).__name__}")
    if iter(calibration) is calibration:
        return list(calibration)
    return calibration


def iter_calibration(calibration: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` (``y`` may be None) from batches that are ``(x, y)`` pairs or bare ``x``.

    Raises ValueError for a validation/test split, an empty set, empty batches or non-finite inputs.
    """
    require_train_split(calibration, "calibration")
    n = 0
    for item in calibration:
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
            x = item[0]
            y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        else:
            raise ValueError(
                f"calibration batches must be tensors or (x, y) pairs, got {type(item).__name__}"
            )
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"empty calibration batch of shape {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"calibration batch of shape {tuple(x.shape)} contains NaN or Inf")
        n += 1
        yield x, y
    if n == 0:
        raise ValueError("empty calibration set: no batches")


# ----------------------------------------------------------------------------------------------------
# capture


def _module_by_name(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    if isinstance(layer, str):
        mods = dict(model.named_modules())
        if layer not in mods:
            raise ValueError(f"layer {layer!r} not found in the model")
        return layer, mods[layer]
    for name, m in model.named_modules():
        if m is layer:
            return name, m
    raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")


def _weight(mod: nn.Module) -> torch.Tensor:
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"module {type(mod).__name__} has no weight tensor")
    return w


def layer_removed_output(layer: nn.Module, psi1: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``layer_R(psi1)``: the layer run functionally with weight ``R`` and no bias (Linear, Conv1d/2d/3d)."""
    w = _weight(layer)
    if tuple(R.shape) != tuple(w.shape):
        raise ValueError(f"R has shape {tuple(R.shape)}, layer weight has shape {tuple(w.shape)}")
    R = R.to(dtype=psi1.dtype, device=psi1.device)
    if isinstance(layer, nn.Linear):
        return F.linear(psi1, R)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(psi1, R, None)
    raise ValueError(f"unsupported layer type {type(layer).__name__} (need Linear or Conv)")


def _per_sample_inf(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).abs().amax(dim=1)


def _logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"model output of type {type(out).__name__} is not a logits tensor")


@dataclass
class LayerCapture:
    """Per-sample results of :func:`capture_layer` (numpy, one entry per calibration sample)."""

    name: str
    removed_norm: np.ndarray | None
    logits: np.ndarray
    labels: np.ndarray | None
    input_shape: tuple[int, ...]


def capture_layer(
    model: nn.Module, layer: nn.Module | str, calibration: Any, R: torch.Tensor | None = None
) -> LayerCapture:
    """Stream ``calibration`` through ``model``; capture ``psi_1`` of ``layer`` with a forward pre-hook.

    Keeps per sample only the dense logits and, if ``R`` is given, ``||R psi_1(s)||_inf`` (the max over all
    output coordinates of ``layer_R(psi_1)``); activations are not stored. NaN/Inf activations raise.
    """
    name, mod = _module_by_name(model, layer)
    norms: list[torch.Tensor] = []
    shape: list[tuple[int, ...]] = []

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"layer {name!r}: input activations of shape {tuple(x.shape)} contain NaN/Inf")
        shape.append(tuple(x.shape))
        if R is not None:
            norms.append(_per_sample_inf(layer_removed_output(m, x.detach(), R.detach())).double().cpu())

    handle = mod.register_forward_pre_hook(pre)
    logits, labels = [], []
    try:
        with torch.no_grad():
            for x, y in iter_calibration(calibration):
                z = _logits_of(model(x.to(_device(model))))
                logits.append(z.double().cpu())
                if y is not None:
                    labels.append(y.cpu())
    finally:
        handle.remove()
    if not shape:
        raise ValueError(f"layer {name!r} was never called during the forward pass")
    lab = (
        torch.cat(labels).numpy()
        if labels and sum(len(t) for t in labels) == sum(len(z) for z in logits)
        else None
    )
    return LayerCapture(
        name,
        torch.cat(norms).numpy() if R is not None else None,
        torch.cat(logits).numpy(),
        lab,
        shape[0],
    )


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@dataclass
class SecondMoments:
    """Running second moments ``E[h_g h_g^T]`` of a layer's input vectors, per input group.

    ``sums`` has shape (G, n, n) (G groups of n consecutive input coordinates; G = 1, n = in_features when
    ``group_size`` is None), ``count`` the number of vectors (token rows / im2col patches) accumulated.
    """

    name: str
    group_size: int
    sums: torch.Tensor
    count: int

    def mean(self) -> torch.Tensor:
        """``E[h_g h_g^T]``, shape (G, n, n), float64."""
        if self.count == 0:
            raise ValueError(f"layer {self.name!r}: no vectors accumulated")
        return self.sums / self.count

    def full(self) -> torch.Tensor:
        """Block-diagonal (in, in) matrix of the per-group second moments."""
        return torch.block_diag(*self.mean())


def _input_vectors(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input vectors of a layer as rows: token rows for Linear, im2col patches for Conv2d."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise ValueError(f"covariance capture: Conv2d with padding={mod.padding!r}/{mod.padding_mode}")
        cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (B, C*k, L)
        g = mod.groups
        if g != 1:
            raise ValueError(f"covariance capture: grouped Conv2d (groups={g}) is not supported")
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ValueError(f"covariance capture: unsupported layer type {type(mod).__name__}")


def capture_covariance(
    model: nn.Module, layer: nn.Module | str, calibration: Any, group_size: int | None = None
) -> SecondMoments:
    """Accumulate ``E[h h^T]`` of ``layer``'s input vectors on the fly (float64), per group of
    ``group_size`` consecutive input coordinates (the k:n groups); nothing else is stored."""
    name, mod = _module_by_name(model, layer)
    w_in = _weight(mod)
    m_in = int(np.prod(w_in.shape[1:]))
    n = m_in if group_size is None else int(group_size)
    if n < 1 or m_in % n:
        raise ValueError(f"layer {name!r}: group_size {group_size} does not divide the input size {m_in}")
    G = m_in // n
    state: dict[str, Any] = {"sums": torch.zeros(G, n, n, dtype=torch.float64), "count": 0}

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        h = _input_vectors(m, args[0].detach()).double().cpu()
        if h.shape[1] != m_in:
            raise ValueError(f"layer {name!r}: input vectors have {h.shape[1]} entries, expected {m_in}")
        if not bool(torch.isfinite(h).all()):
            raise ValueError(f"layer {name!r}: input activations contain NaN/Inf")
        hg = h.reshape(-1, G, n)
        state["sums"] += torch.einsum("bgi,bgj->gij", hg, hg)
        state["count"] += h.shape[0]

    handle = mod.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for x, _ in iter_calibration(calibration):
                model(x.to(_device(model)))
    finally:
        handle.remove()
    return SecondMoments(name, n, state["sums"], int(state["count"]))


# ----------------------------------------------------------------------------------------------------
# the tail trace: breakpoints, PL check, product norm

_META = {
    "__get__",
    "size",
    "dim",
    "numel",
    "__len__",
    "is_floating_point",
    "is_contiguous",
    "element_size",
    "_unpack_dual",
    "_make_dual",
    "__format__",
    "__repr__",
    "ones_like",
    "zeros_like",
    "stride",
    "ndimension",
    "requires_grad_",
    "data_ptr",
    "get_device",
    "nelement",
}
_RESHAPE = {
    "flatten",
    "view",
    "reshape",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "type_as",
    "__getitem__",
    "chunk",
    "split",
    "unbind",
    "narrow",
    "select",
    "movedim",
    "roll",
    "flip",
    "identity",
    "pad",
    "view_as",
    "reshape_as",
    "repeat",
}
_AVERAGING = {"mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"}
_ADD = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__"}
_MATMUL = {"matmul", "__matmul__", "mm", "bmm"}
_AFFINE_MOD = {"linear", "conv1d", "conv2d", "conv3d", "batch_norm", "dropout", "dropout1d", "dropout2d"}
_SWITCH = {"relu", "relu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "relu6", "max_pool2d"}
_MULTI_OK = {"cat", "concat", "stack", "sum"}  # linear, but refused by the product bound
_LINEAR_OPS = {"linear", "conv1d", "conv2d", "conv3d"}  # tangent computed by hand when only x is dual


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class _TailTrace(TorchFunctionMode):
    """Watches every op that touches a forward-mode tangent (the R-part of the pruned layer's output)."""

    def __init__(
        self,
        batch: int,
        breakpoints: bool,
        plain: frozenset[int] = frozenset(),
        norms: dict[tuple[str, int], float] | None = None,
    ) -> None:
        super().__init__()
        self.B = batch
        self.plain = plain  # ids of tensors known to carry no tangent (parameters, buffers)
        self.norms = {} if norms is None else norms  # cached induced norms of fixed weights
        self.breakpoints = breakpoints
        self.fwd = torch.full((batch,), math.inf, dtype=torch.float64)
        self.bwd = torch.full((batch,), math.inf, dtype=torch.float64)
        self.non_pl: set[str] = set()
        self.non_seq: set[str] = set()
        self.log_norm = 0.0

    def _dual(self, t: Any) -> bool:
        if not isinstance(t, torch.Tensor) or id(t) in self.plain:
            return False
        return fwAD.unpack_dual(t).tangent is not None

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name not in _META:
            flat, _ = tree_flatten((args, kwargs))
            duals = [t for t in flat if self._dual(t)]
            if duals:
                self._inspect(name, args, kwargs, duals)
                if name in _LINEAR_OPS and len(duals) == 1 and self._dual(_arg(args, kwargs, 0, "input")):
                    return self._linear_jvp(func, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _linear_jvp(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``func(x) = W x + b`` on a dual ``x`` as two plain calls (faster than the generic forward-AD rule):
        primal ``W p + b``, tangent ``W t``."""
        p, t = fwAD.unpack_dual(_arg(args, kwargs, 0, "input"))
        a_p, a_t, kw_t = list(args), list(args), dict(kwargs)
        if "input" in kwargs:
            kwargs = {**kwargs, "input": p}
            kw_t["input"] = t
        else:
            a_p[0], a_t[0] = p, t
        if len(a_t) > 2:
            a_t[2] = None
        else:
            kw_t["bias"] = None
        return fwAD.make_dual(func(*a_p, **kwargs), func(*a_t, **kw_t))

    # -- per-op bookkeeping ----------------------------------------------------------------------
    def _factor(self, f: float) -> None:
        self.log_norm += math.log(f) if f > 0 else -math.inf

    def _inspect(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], duals: list[Any]) -> None:
        nd = len(duals)
        if name in _RESHAPE or name in _AVERAGING:
            if nd > 1:
                self.non_seq.add(name)
            return
        if name in _MULTI_OK:
            if name == "sum" or nd > 1:
                self.non_seq.add(name)
            return
        if name in _ADD:
            if nd > 1:
                self.non_seq.add(f"{name} (residual)")
            return
        if name in _MUL or name in _MATMUL or name in _DIV:
            if nd > 1 or (name in _DIV and not self._dual(args[0])):
                self.non_pl.add(f"{name} of two tangent-carrying tensors")
                return
            other = args[1] if self._dual(args[0]) else args[0]
            if name in _MATMUL:
                if not isinstance(other, torch.Tensor) or other.dim() != 2:
                    self.non_seq.add(name)
                    return
                o = other.detach().abs().double()
                self._factor(float((o.sum(0) if self._dual(args[0]) else o.sum(1)).max()))
                return
            mag = other.detach().abs().double() if isinstance(other, torch.Tensor) else abs(float(other))
            if name in _DIV:
                mn = float(mag.min()) if isinstance(mag, torch.Tensor) else float(mag)
                self._factor(math.inf if mn == 0 else 1.0 / mn)
            else:
                self._factor(float(mag.max()) if isinstance(mag, torch.Tensor) else float(mag))
            return
        if name in _AFFINE_MOD:
            self._affine(name, args, kwargs)
            return
        if name in _SWITCH:
            if name == "max_pool2d":
                self._maxpool(args, kwargs)
            else:
                self._elementwise(name, args, kwargs)
            return
        self.non_pl.add(name)

    def _affine(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._dual(_arg(args, kwargs, 1, "weight")):
            self.non_pl.add(f"{name} with a tangent-carrying weight")
            return
        if name in ("linear",) or name.startswith("conv"):
            w = _arg(args, kwargs, 1, "weight")
            key = (name, id(w))
            if key not in self.norms:
                wd = w.detach().double()
                val = float(wd.abs().reshape(wd.shape[0], -1).sum(1).max())
                if id(w) not in self.plain:  # a weight computed on the fly: do not cache by id
                    self._factor(val)
                    return
                self.norms[key] = val
            self._factor(self.norms[key])
        elif name == "batch_norm":
            if bool(_arg(args, kwargs, 5, "training", False)):
                self.non_pl.add("batch_norm in training mode")
                return
            var = _arg(args, kwargs, 2, "running_var").detach().double()
            w = _arg(args, kwargs, 3, "weight")
            eps = float(_arg(args, kwargs, 7, "eps", 1e-5))
            scale = 1.0 / torch.sqrt(var + eps)
            if w is not None:
                scale = scale * w.detach().double()
            self._factor(float(scale.abs().max()))
        else:  # dropout
            if bool(_arg(args, kwargs, 2, "training", False)) and float(_arg(args, kwargs, 1, "p", 0.5)) > 0:
                self.non_pl.add(f"{name} in training mode")

    def _record(self, rate: torch.Tensor) -> None:
        """rate: (B, ...) reciprocal signed distances ``1/delta`` in theta to candidate breakpoints.

        ``rate`` = (tangent difference) / (primal gap); 0 or NaN means no breakpoint (a switch that is
        exactly at the probe point or never happens); the nearest forward breakpoint of a sample is
        ``1 / max(rate)`` (if positive), the nearest backward one ``-1 / min(rate)`` (if negative).
        """
        if rate.shape[0] != self.B:
            self.non_pl.add(f"switch on a tensor whose first dim {rate.shape[0]} is not the batch {self.B}")
            return
        r = torch.nan_to_num(rate.reshape(self.B, -1), nan=0.0, posinf=0.0, neginf=0.0)
        if r.shape[1] == 0:
            return
        hi, lo = r.amax(1).double().cpu(), r.amin(1).double().cpu()
        inf = torch.full_like(hi, math.inf)
        f = torch.where(hi > 0, 1.0 / torch.where(hi > 0, hi, 1.0), inf)
        b = torch.where(lo < 0, -1.0 / torch.where(lo < 0, lo, -1.0), inf)
        self.fwd = torch.minimum(self.fwd, f)
        self.bwd = torch.minimum(self.bwd, b)

    def _elementwise(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _arg(args, kwargs, 0, "input")
        if name.startswith("leaky"):
            slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            self._factor(max(1.0, abs(slope)))
            if slope == 1.0:
                return
            levels = [0.0]
        elif name.startswith("hardtanh"):
            levels = [
                float(_arg(args, kwargs, 1, "min_val", -1.0)),
                float(_arg(args, kwargs, 2, "max_val", 1.0)),
            ]
        elif name == "relu6":
            levels = [0.0, 6.0]
        else:
            levels = [0.0]
        if not self.breakpoints:
            return
        p, t = fwAD.unpack_dual(x)
        p, t = p.detach(), t.detach()
        for c in levels:
            self._record(t / (c - p))

    def _maxpool(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _arg(args, kwargs, 0, "input")
        if x.dim() != 4:
            self.non_pl.add(f"max_pool2d on a {x.dim()}-D tensor")
            return
        if bool(_arg(args, kwargs, 5, "ceil_mode", False)):
            self.non_pl.add("max_pool2d with ceil_mode=True")
            return
        if not self.breakpoints:
            return
        ks = _pair(_arg(args, kwargs, 1, "kernel_size"))
        st_raw = _arg(args, kwargs, 2, "stride")
        st = (
            ks
            if st_raw is None or (isinstance(st_raw, (tuple, list)) and len(st_raw) == 0)
            else _pair(st_raw)
        )
        pad = _pair(_arg(args, kwargs, 3, "padding", 0))
        dil = _pair(_arg(args, kwargs, 4, "dilation", 1))
        p, t = fwAD.unpack_dual(x)
        p, t = p.detach(), t.detach()
        B, C, H, W = p.shape
        if st == ks and pad == (0, 0) and dil == (1, 1):  # non-overlapping windows: plain reshapes
            Ho, Wo = H // ks[0], W // ks[1]
            if Ho == 0 or Wo == 0:
                return
            pw, idx = F.max_pool2d(p, ks, return_indices=True)
            tw = torch.gather(t.reshape(B, C, -1), 2, idx.reshape(B, C, -1)).reshape(pw.shape)
            shape = (B, C, Ho, ks[0], Wo, ks[1])
            cp = p[:, :, : Ho * ks[0], : Wo * ks[1]].reshape(shape)
            ct = t[:, :, : Ho * ks[0], : Wo * ks[1]].reshape(shape)
            pw6, tw6 = pw[:, :, :, None, :, None], tw[:, :, :, None, :, None]
            self._record((ct - tw6) / (pw6 - cp))
            return
        pp = F.pad(p, (pad[1], pad[1], pad[0], pad[0]), value=-math.inf)
        tp = F.pad(t, (pad[1], pad[1], pad[0], pad[0]), value=0.0)
        Hp, Wp = H + 2 * pad[0], W + 2 * pad[1]
        cp = F.unfold(pp.reshape(B * C, 1, Hp, Wp), ks, dilation=dil, stride=st).reshape(
            B, C, ks[0] * ks[1], -1
        )
        ct = F.unfold(tp.reshape(B * C, 1, Hp, Wp), ks, dilation=dil, stride=st).reshape(
            B, C, ks[0] * ks[1], -1
        )
        win = cp.argmax(dim=2, keepdim=True)
        pw, tw = torch.gather(cp, 2, win), torch.gather(ct, 2, win)
        self._record(torch.where(torch.isfinite(cp), (ct - tw) / (pw - cp), 0.0))


# ----------------------------------------------------------------------------------------------------
# the segment runner


class _Segment:
    """A float64 copy of the dense model whose layer computes ``S psi_1 + b + theta_s R psi_1``.

    :meth:`bind` runs the model once on a batch and caches what does not depend on theta: the outputs of
    every module call that completes before the layer starts (the dense prefix, side branches computed
    earlier) and the layer's own ``S psi_1 + b`` and ``R psi_1``. Later runs on the bound batch
    (:meth:`logits`, :meth:`slope`) then recompute only the tail: cached module calls return a copy of
    their stored output and the layer returns ``S psi_1 + b + theta R psi_1`` without a convolution. If
    the layer is called more than once per forward nothing is cached (every run is a full forward).
    """

    def __init__(self, model: nn.Module, name: str, S: torch.Tensor, R: torch.Tensor) -> None:
        self.model = copy.deepcopy(model).double().eval()
        self.name = name
        _, self.layer = _module_by_name(self.model, name)
        if not isinstance(self.layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"layer {name!r}: unsupported type {type(self.layer).__name__}")
        self.device = _device(self.model)
        with torch.no_grad():
            _weight(self.layer).copy_(S.to(_weight(self.layer)))
        self.R = R.detach().to(device=self.device, dtype=torch.float64)
        self.theta: torch.Tensor | None = None
        self.dual = False
        self.removed: torch.Tensor | None = None
        self.x: torch.Tensor | None = None
        self._layer_forward = self.layer.forward
        self.layer.forward = self._forward_layer  # type: ignore[method-assign,assignment]
        self._mods = [m for _, m in self.model.named_modules() if m is not self.model and m is not self.layer]
        self._orig = {id(m): m.forward for m in self._mods}
        self._own = {id(m): m.__dict__.get("forward") for m in self._mods}  # instance-level forwards
        self._cache: dict[int, dict[int, Any]] = {}  # id(module) -> {call index: output}
        self._calls: dict[int, int] = {}
        self._layer_cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._layer_calls = 0
        self._recording = False
        self._rec_layer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._non_pl: str | None = None
        self._plain = frozenset(id(t) for t in [*self.model.parameters(), *self.model.buffers()])
        self._norms: dict[tuple[str, int], float] = {}

    # -- the layer and the cached prefix ---------------------------------------------------------
    def _forward_layer(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        k = self._layer_calls
        self._layer_calls += 1
        if k < len(self._layer_cache):
            out, d = self._layer_cache[k]
        else:
            if not bool(torch.isfinite(fwAD.unpack_dual(x).primal).all()):
                raise ValueError(
                    f"layer {self.name!r}: input activations of shape {tuple(x.shape)} contain NaN/Inf"
                )
            out = self._layer_forward(x, *args, **kwargs)
            d = layer_removed_output(self.layer, x, self.R)
            if self._recording:
                self._rec_layer.append((out.detach(), d.detach()))
        if self.theta is None or out.shape[0] != self.theta.shape[0]:
            raise ValueError(f"layer {self.name!r}: output batch dim {out.shape[0]} is not the sample batch")
        th = self.theta.to(out).reshape((-1,) + (1,) * (out.dim() - 1))
        res = out + th * d
        if not self.dual:
            return res
        # d/dtheta [S x + b + theta R x] = R x, plus (S + theta R) dx/dtheta when x itself carries a
        # tangent (the layer called again downstream of its own output: z is then polynomial in theta)
        rp, rt = fwAD.unpack_dual(res)
        if rt is not None:
            self._non_pl = f"layer {self.name!r} applied to its own output (polynomial in theta)"
        dp = fwAD.unpack_dual(d).primal
        return fwAD.make_dual(rp, dp.clone() if rt is None else rt + dp)

    def _cached_forward(self, mod: nn.Module) -> Any:
        key, orig = id(mod), self._orig[id(mod)]
        store = self._cache[key]

        def forward(*args: Any, **kwargs: Any) -> Any:
            k = self._calls.get(key, 0)
            self._calls[key] = k + 1
            if k in store:
                return store[k].clone()
            return orig(*args, **kwargs)

        return forward

    def _run(self, theta: float | np.ndarray | torch.Tensor) -> Any:
        if self.x is None:
            raise ValueError(f"layer {self.name!r}: no batch bound")
        B = self.x.shape[0]
        th = np.broadcast_to(np.asarray(theta, dtype=np.float64), (B,)).copy()
        self.theta = torch.as_tensor(th)
        self._calls = {}
        self._layer_calls = 0
        return self.model(self.x)

    def bind(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model on ``x`` at theta = 1, cache the theta-independent parts; the logits at theta = 1."""
        for m in self._mods:  # undo the previous binding
            own = self._own[id(m)]
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own  # type: ignore[method-assign]
        self._cache, self._layer_cache = {}, []
        self.x = x.to(self.device, torch.float64)
        self._recording = True
        self._rec_layer = []
        clock = [0]
        layer_start: list[int] = []
        stack: list[tuple[int, int, int]] = []  # (id, call index, start)
        done: list[tuple[int, int, int, int, Any]] = []  # (id, call index, start, end, output)
        counts: dict[int, int] = {}

        def pre(m: nn.Module, args: Any) -> None:
            clock[0] += 1
            if m is self.layer:
                layer_start.append(clock[0])
                return
            k = counts.get(id(m), 0)
            counts[id(m)] = k + 1
            stack.append((id(m), k, clock[0]))

        def post(m: nn.Module, args: Any, out: Any) -> None:
            clock[0] += 1
            if m is self.layer:
                return
            key, k, start = stack.pop()
            if not layer_start and isinstance(out, torch.Tensor):
                done.append((key, k, start, clock[0], out.detach()))

        handles = [m.register_forward_pre_hook(pre) for m in self._mods + [self.layer]]
        handles += [m.register_forward_hook(post) for m in self._mods + [self.layer]]
        self.dual = False
        try:
            with torch.no_grad():
                z = _logits_of(self._run(1.0)).double().cpu()
        finally:
            for h in handles:
                h.remove()
            self._recording = False
        if not self._rec_layer:
            raise ValueError(f"layer {self.name!r} was never called during the forward pass")
        self.removed = _per_sample_inf(self._rec_layer[-1][1]).cpu()
        if len(self._rec_layer) == 1:
            self._layer_cache = self._rec_layer
            # keep the outermost calls that finished before the layer started
            spans = [(s, e) for _, _, s, e, _ in done]
            for key, k, s, e, out in done:
                if any(s2 < s and e < e2 for s2, e2 in spans):
                    continue
                self._cache.setdefault(key, {})[k] = out
            for m in self._mods:
                if id(m) in self._cache:
                    m.forward = self._cached_forward(m)  # type: ignore[method-assign]
        self._rec_layer = []
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"layer {self.name!r}: logits contain NaN/Inf")
        return z

    # -- runs on the bound batch -----------------------------------------------------------------
    def logits(self, theta: float | np.ndarray) -> torch.Tensor:
        """Logits of the bound batch at ``theta`` (scalar or one per sample), float64."""
        self.dual = False
        with torch.no_grad():
            z = _logits_of(self._run(theta)).double().cpu()
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"layer {self.name!r}: logits contain NaN/Inf")
        return z

    def slope(self, theta: np.ndarray, breakpoints: bool) -> tuple[torch.Tensor, _TailTrace]:
        """``||dz/dtheta||_inf`` per bound sample at ``theta`` (B,), with the tail trace of that run."""
        if self.x is None:
            raise ValueError(f"layer {self.name!r}: no batch bound")
        trace = _TailTrace(self.x.shape[0], breakpoints, self._plain, self._norms)
        self.dual = True
        try:
            with torch.no_grad(), fwAD.dual_level():
                with trace:
                    out = _logits_of(self._run(theta))
                tangent = fwAD.unpack_dual(out).tangent
                if self._non_pl is not None:
                    trace.non_pl.add(self._non_pl)
                if self._layer_calls > 1:
                    trace.non_seq.add(f"layer {self.name!r} called {self._layer_calls} times")
                if tangent is None:
                    tangent = torch.zeros_like(fwAD.unpack_dual(out).primal)
        finally:
            self.dual = False
        return _per_sample_inf(tangent.detach()).double().cpu(), trace


def _pl_exact(seg: _Segment, x: torch.Tensor, tol: float, max_probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact max slope over the linear pieces of theta -> z(theta) on [0, 1]; returns (eta, n_pieces).

    All samples advance in lockstep: every probe is one batched forward-AD run of the tail in which each
    unfinished sample sits at the midpoint of one of its uncovered theta-gaps; the run gives, per sample,
    the slope on the piece containing that point and the distances to the nearest switch on both sides,
    i.e. the whole piece. The number of probes is the largest piece count in the batch. Samples that are
    done ride along (their results are ignored) until fewer than half of the bound batch is left; then the
    batch is re-bound to the unfinished samples.
    """
    B = x.shape[0]
    stacks: list[list[tuple[float, float]]] = [[(0.0, 1.0)] for _ in range(B)]
    best = np.zeros(B)
    pieces = np.zeros(B, dtype=np.int64)
    bound = np.arange(B)
    if seg.x is None or seg.x.shape[0] != B:
        seg.bind(x)
    probes = 0
    while True:
        live = np.array([bool(stacks[i]) for i in bound])
        if not live.any():
            break
        if 2 * int(live.sum()) <= len(bound) and len(bound) > 1:
            bound = bound[live]
            seg.bind(x[torch.as_tensor(bound)])
            live = np.ones(len(bound), dtype=bool)
        probes += 1
        if probes > max_probes:
            raise ProbeBudgetExceeded(
                f"layer {seg.name!r}: pl_exact needs more than max_probes={max_probes} probes per batch"
            )
        a = np.full(len(bound), 0.5)
        b = np.full(len(bound), 0.5)
        for k in np.flatnonzero(live):
            a[k], b[k] = stacks[bound[k]].pop()
        m = 0.5 * (a + b)
        sl, trace = seg.slope(m, breakpoints=True)
        if trace.non_pl:
            raise NotPiecewiseLinear(
                f"layer {seg.name!r}: tail is not piecewise linear: {sorted(trace.non_pl)}"
            )
        lo = np.maximum(a, m - trace.bwd.numpy())
        hi = np.minimum(b, m + trace.fwd.numpy())
        s = sl.numpy()
        for k in np.flatnonzero(live):
            i = bound[k]
            best[i] = max(best[i], s[k])
            pieces[i] += 1
            if lo[k] - a[k] > tol:
                stacks[i].append((a[k], lo[k]))
            if b[k] - hi[k] > tol:
                stacks[i].append((hi[k], b[k]))
    return best, pieces


# ----------------------------------------------------------------------------------------------------
# certificates


@dataclass
class LayerCertificate:
    """Per-layer, per-sample certificate of pruning one layer (others as in the network it was computed in).

    ``eta`` (per sample) = L_s ||R psi_1(s)||_inf; ``budget`` = B_T(R) = 2 mean(eta); ``certified`` = dense
    prediction margin > 2 eta; ``realised`` = ||z_pruned(s) - z_dense(s)||_inf from running the pruned layer;
    ``flips`` = number of samples whose predicted class changes; ``violations`` = samples with realised > eta
    (must be 0 for a sound estimator).
    """

    name: str
    shape: tuple[int, ...]
    sparsity: float
    estimator: str
    sound: bool
    eta: np.ndarray = field(repr=False)
    L: np.ndarray = field(repr=False)
    removed_norm: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    realised: np.ndarray = field(repr=False)
    flipped: np.ndarray = field(repr=False)
    r_fro2: float = 0.0
    r_l1: float = 0.0
    is_mask: bool = True
    pieces: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return int(self.eta.shape[0])

    @property
    def budget(self) -> float:
        return float(2.0 * np.mean(self.eta))

    @property
    def certified(self) -> np.ndarray:
        return self.margin > 2.0 * self.eta

    @property
    def certified_fraction(self) -> float:
        return float(np.mean(self.certified))

    @property
    def flips(self) -> int:
        return int(self.flipped.sum())

    @property
    def flip_fraction(self) -> float:
        return float(np.mean(self.flipped))

    @property
    def violations(self) -> int:
        return int(np.sum(self.realised > self.eta * (1 + 1e-7) + 1e-9))

    @property
    def tightness(self) -> float:
        """median of realised / eta over samples with eta > 0 (1 = the bound is attained end to end)."""
        ok = self.eta > 0
        return float(np.median(self.realised[ok] / self.eta[ok])) if ok.any() else float("nan")

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "sparsity": self.sparsity,
            "estimator": self.estimator,
            "sound": self.sound,
            "n_samples": self.n_samples,
            "budget": self.budget,
            "eta_mean": float(np.mean(self.eta)),
            "eta_max": float(np.max(self.eta)),
            "L_median": float(np.median(self.L)),
            "certified_fraction": self.certified_fraction,
            "realised_max": float(np.max(self.realised)),
            "realised_mean": float(np.mean(self.realised)),
            "tightness_median": self.tightness,
            "flips": self.flips,
            "flip_fraction": self.flip_fraction,
            "violations": self.violations,
            "r_fro2": self.r_fro2,
            "r_l1": self.r_l1,
            "is_mask": self.is_mask,
            "notes": list(self.notes),
        }
        if self.pieces is not None:
            d["pieces_mean"] = float(np.mean(self.pieces))
        if per_sample:
            d["eta"] = self.eta.tolist()
            d["realised"] = self.realised.tolist()
        return d


def _resolve_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return estimator


def certify_layer(
    model_dense: nn.Module,
    name: str,
    pruned_weight: torch.Tensor,
    calibration: Any,
    estimator: str = "auto",
    *,
    n_theta: int = 20,
    tol: float = 1e-9,
    max_probes: int = 20_000,
) -> LayerCertificate:
    """Certificate of replacing the weight of layer ``name`` of ``model_dense`` by ``pruned_weight``.

    ``R = W_dense - pruned_weight``; ``psi_1`` and the tail are those of ``model_dense``. Streams over the
    calibration batches, keeping per-sample scalars only. ``estimator``: one of :data:`ESTIMATORS`.
    """
    est = _resolve_estimator(estimator)
    calibration = _materialise(calibration)
    _, mod = _module_by_name(model_dense, name)
    W = _weight(mod).detach()
    if tuple(pruned_weight.shape) != tuple(W.shape):
        raise ValueError(
            f"layer {name!r}: pruned weight shape {tuple(pruned_weight.shape)} != "
            f"weight shape {tuple(W.shape)}"
        )
    if not bool(torch.isfinite(pruned_weight).all()):
        raise ValueError(f"layer {name!r}: pruned weight of shape {tuple(W.shape)} contains NaN/Inf")
    Wd = W.double().cpu()
    S = pruned_weight.detach().double().cpu()
    R = Wd - S
    seg = _Segment(model_dense, name, S, R)
    notes: list[str] = []
    used = est
    etas, Ls, norms, margins, real, flips, npieces = [], [], [], [], [], [], []
    for x, _ in iter_calibration(calibration):
        z1 = seg.bind(x)
        nr = seg.removed.numpy().astype(np.float64) if seg.removed is not None else np.zeros(x.shape[0])
        z0 = seg.logits(0.0)
        B = x.shape[0]
        pieces = None
        if used in ("auto", "pl_exact"):
            budget = max_probes if est == "pl_exact" else min(max_probes, AUTO_MAX_PROBES)
            try:
                eta_b, pieces = _pl_exact(seg, x, tol, budget)
                used = "pl_exact"
            except (NotPiecewiseLinear, ProbeBudgetExceeded) as e:
                if est == "pl_exact":
                    raise
                # Any batch already certified exactly keeps its (sound) values; the layer as a whole is
                # labelled with the weaker estimator.
                used = "segment_max_slope"
                notes.append(f"auto: {e}; fell back to the segment_max_slope ESTIMATE")
        if used == "segment_max_slope":
            best = np.zeros(B)
            if seg.x is None or seg.x.shape[0] != B:  # pl_exact may have re-bound a subset
                seg.bind(x)
            for th in np.linspace(0.0, 1.0, int(n_theta)):
                sl, _ = seg.slope(np.full(B, th), breakpoints=False)
                best = np.maximum(best, sl.numpy())
            eta_b = best
        elif used == "product_norm":
            _, trace = seg.slope(np.full(B, 0.5), breakpoints=False)
            if trace.non_seq or trace.non_pl:
                raise ValueError(
                    f"layer {name!r}: product_norm needs a sequential tail of affine maps and 1-Lipschitz "
                    f"activations; found {sorted(trace.non_seq | trace.non_pl)}"
                )
            eta_b = math.exp(trace.log_norm) * nr
        L_b = np.divide(eta_b, nr, out=np.zeros(B), where=nr > 0)
        etas.append(np.asarray(eta_b, dtype=np.float64))
        Ls.append(L_b)
        norms.append(nr)
        zd = z1.numpy()
        top2 = np.sort(zd, axis=1)[:, -2:]
        margins.append(top2[:, 1] - top2[:, 0])
        real.append((z0 - z1).abs().amax(dim=1).numpy())
        flips.append((z0.argmax(1) != z1.argmax(1)).numpy())
        if pieces is not None:
            npieces.append(pieces)
    zeros = int((S == 0).sum().item())
    disjoint = bool(((S != 0) & (R != 0)).sum().item() == 0)
    return LayerCertificate(
        name=name,
        shape=tuple(W.shape),
        sparsity=zeros / S.numel(),
        estimator=used,
        sound=_SOUND[used],
        eta=np.concatenate(etas),
        L=np.concatenate(Ls),
        removed_norm=np.concatenate(norms),
        margin=np.concatenate(margins),
        realised=np.concatenate(real),
        flipped=np.concatenate(flips),
        r_fro2=float((R**2).sum()),
        r_l1=float(R.abs().sum()),
        is_mask=disjoint,
        pieces=np.concatenate(npieces) if npieces and used == "pl_exact" else None,
        notes=notes,
    )


@dataclass
class CertificateReport:
    """Per-layer certificates (each layer pruned alone in the dense model) and multi-layer totals (D11).

    ``eta_total`` = sum_j eta_{j,s} with eta_{j,s} computed in the intermediate network (layers before j
    pruned); ``certified_fraction`` = fraction with dense margin > 2 eta_total; ``flips`` are realised on the
    fully pruned model.
    """

    layers: list[LayerCertificate]
    eta_total: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)
    realised_total: np.ndarray = field(repr=False)
    flipped_total: np.ndarray = field(repr=False)
    sound: bool = True
    estimators: list[str] = field(default_factory=list)

    @property
    def certified_fraction(self) -> float:
        return float(np.mean(self.margin > 2.0 * self.eta_total)) if self.eta_total.size else 1.0

    @property
    def flips(self) -> int:
        return int(self.flipped_total.sum())

    @property
    def budget_total(self) -> float:
        return float(2.0 * np.mean(self.eta_total)) if self.eta_total.size else 0.0

    def layer(self, name: str) -> LayerCertificate:
        for lc in self.layers:
            if lc.name == name:
                return lc
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [lc.to_dict() for lc in self.layers],
            "total": {
                "sound": self.sound,
                "estimators": list(self.estimators),
                "budget": self.budget_total,
                "certified_fraction": self.certified_fraction,
                "flips": self.flips,
                "realised_max": float(np.max(self.realised_total)) if self.realised_total.size else 0.0,
                "violations": int(np.sum(self.realised_total > self.eta_total * (1 + 1e-7) + 1e-9)),
            },
        }

    def to_markdown(self) -> str:
        head = (
            "| layer | shape | sparsity | estimator | sound | B_T | certified | realised max | flips |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
        )
        rows = [
            f"| {lc.name} | {'x'.join(map(str, lc.shape))} | {lc.sparsity:.3f} | {lc.estimator} | "
            f"{'yes' if lc.sound else 'ESTIMATE'} | {lc.budget:.4g} | {100 * lc.certified_fraction:.2f} % | "
            f"{float(np.max(lc.realised)):.4g} | {lc.flips}/{lc.n_samples} |"
            for lc in self.layers
        ]
        tot = (
            f"| **total (D11)** | | | {'+'.join(sorted(set(self.estimators)))} | "
            f"{'yes' if self.sound else 'ESTIMATE'} | {self.budget_total:.4g} | "
            f"{100 * self.certified_fraction:.2f} % | "
            f"{float(np.max(self.realised_total)) if self.realised_total.size else 0.0:.4g} | "
            f"{self.flips}/{self.eta_total.size} |"
        )
        return head + "\n".join(rows + [tot]) + "\n"


def _changed_layers(dense: nn.Module, pruned: nn.Module, layers: Sequence[str] | None) -> list[str]:
    dmods, pmods = dict(dense.named_modules()), dict(pruned.named_modules())
    if layers is not None:
        names = list(layers)
        for n in names:
            if n not in dmods or n not in pmods:
                raise ValueError(f"layer {n!r} not found in both models")
        return names
    out = []
    for info in find_layers(dense):
        n = info.name
        if n not in pmods:
            raise ValueError(f"layer {n!r} of the dense model is missing from the pruned model")
        wd, wp = _weight(dmods[n]).detach(), _weight(pmods[n]).detach()
        if tuple(wd.shape) != tuple(wp.shape):
            raise ValueError(f"layer {n!r}: dense {tuple(wd.shape)} vs pruned {tuple(wp.shape)}")
        if not torch.equal(wd.cpu(), wp.cpu()):
            out.append(n)
    return out


def certify(
    model_dense: nn.Module,
    model_pruned: nn.Module,
    calibration: Any,
    layers: Sequence[str] | None = None,
    estimator: str = "auto",
    *,
    n_theta: int = 20,
    total: bool = True,
) -> CertificateReport:
    """Certify every layer whose weight differs between ``model_dense`` and ``model_pruned`` (or ``layers``).

    Per layer: the layer alone is pruned in the dense model. With ``total=True`` and more than one layer the
    D11 chain is computed too (layer j certified in the network with the earlier layers pruned).
    """
    _resolve_estimator(estimator)
    calibration = _materialise(calibration)
    names = _changed_layers(model_dense, model_pruned, layers)
    pmods = dict(model_pruned.named_modules())
    certs = [
        certify_layer(model_dense, n, _weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta)
        for n in names
    ]
    chain = list(certs[:1])
    if total and len(names) > 1:
        inter = copy.deepcopy(model_dense)
        imods = dict(inter.named_modules())
        for j, n in enumerate(names):
            if j > 0:
                chain.append(
                    certify_layer(
                        inter, n, _weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta
                    )
                )
            with torch.no_grad():
                _weight(imods[n]).copy_(_weight(pmods[n]).detach().to(_weight(imods[n])))
    elif len(names) > 1:
        chain = certs
    margin, realised, flipped = _whole_model(model_dense, model_pruned, names, calibration)
    # with total=False and several layers the isolated etas are summed and the total is labelled unsound
    eta_tot = np.sum([c.eta for c in chain], axis=0) if chain else np.zeros_like(margin)
    return CertificateReport(
        layers=certs,
        eta_total=eta_tot,
        margin=margin,
        realised_total=realised,
        flipped_total=flipped,
        sound=all(c.sound for c in chain + certs) and (total or len(names) <= 1),
        estimators=[c.estimator for c in certs],
    )


def _whole_model(
    dense: nn.Module, pruned: nn.Module, names: list[str], calibration: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense margins, realised ||z_pruned - z_dense||_inf and flips (float64; only ``names`` pruned)."""
    d64 = copy.deepcopy(dense).double().eval()
    p64 = copy.deepcopy(d64)
    pm, src = dict(p64.named_modules()), dict(pruned.named_modules())
    with torch.no_grad():
        for n in names:
            _weight(pm[n]).copy_(_weight(src[n]).detach().to(_weight(pm[n])))
    dev = _device(d64)
    margins, real, flips = [], [], []
    with torch.no_grad():
        for x, _ in iter_calibration(calibration):
            x64 = x.to(dev, torch.float64)
            z1 = _logits_of(d64(x64)).double().cpu()
            z0 = _logits_of(p64(x64)).double().cpu()
            if not (bool(torch.isfinite(z1).all()) and bool(torch.isfinite(z0).all())):
                raise ValueError("logits contain NaN/Inf")
            top2 = torch.sort(z1, dim=1).values[:, -2:]
            margins.append((top2[:, 1] - top2[:, 0]).numpy())
            real.append((z0 - z1).abs().amax(1).numpy())
            flips.append((z0.argmax(1) != z1.argmax(1)).numpy())
    return np.concatenate(margins), np.concatenate(real), np.concatenate(flips)


# ----------------------------------------------------------------------------------------------------
# the gate


@dataclass
class GateLayer:
    """The gate's verdict on one layer: ``status`` is ``"passed"``, ``"backed_off"`` or ``"left_dense"``."""

    name: str
    status: str
    sparsity_requested: float
    sparsity_final: float
    restored: int
    reason: str
    certificate: LayerCertificate | None = field(default=None, repr=False)
    initial: LayerCertificate | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sparsity_requested": self.sparsity_requested,
            "sparsity_final": self.sparsity_final,
            "restored": self.restored,
            "reason": self.reason,
            "certificate": self.certificate.to_dict() if self.certificate is not None else None,
            "initial_certificate": self.initial.to_dict() if self.initial is not None else None,
        }


@dataclass
class GateResult:
    """``model`` and ``masks`` after the gate; ``layers`` the per-layer verdicts; ``report`` the certificate
    of the gated model (per layer and D11 totals)."""

    model: nn.Module
    masks: MaskStore
    layers: list[GateLayer]
    report: CertificateReport | None
    rules: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(gl.status == "passed" for gl in self.layers)

    def layer(self, name: str) -> GateLayer:
        for gl in self.layers:
            if gl.name == name:
                return gl
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": dict(self.rules),
            "layers": [gl.to_dict() for gl in self.layers],
            "certificate": self.report.to_dict() if self.report is not None else None,
        }

    def to_markdown(self) -> str:
        lines = ["| layer | verdict | sparsity requested | sparsity final | why |", "|---|---|---|---|---|"]
        for gl in self.layers:
            lines.append(
                f"| {gl.name} | {gl.status} | {gl.sparsity_requested:.3f} | "
                f"{gl.sparsity_final:.3f} | {gl.reason} |"
            )
        out = "\n".join(lines) + "\n"
        if self.report is not None:
            out += "\n" + self.report.to_markdown()
        return out


@dataclass
class Gate:
    """Hard rules applied before a pruned model is written (DESIGN "The certificate").

    Per pruned layer (each certified alone in the dense model): certified fraction >= ``min_certified``;
    if ``elastic_net`` is ``(lambda1, lambda2)`` or ``"weight_decay"`` (lambda2 = weight_decay / 2,
    lambda1 = 0) also the D5 decrease rule ``B_T(R) < lambda2 ||R||_F^2 + lambda1 ||R||_1`` (for non-mask
    decompositions the D4 rule ``B_T + 2 lambda2 |<S,R>| < lambda2 ||R||_F^2``, lambda1 must be 0).
    A failing layer is backed off by bisection on the number of removed weights restored (largest dense
    ``|w|`` first; at most ``max_bisect`` steps, final choice always re-verified) or left dense
    (``backoff="dense"``). Rules are only meaningful with a sound estimator; an estimate is labelled.
    """

    min_certified: float = 0.99
    elastic_net: None | tuple[float, float] | str = None
    weight_decay: float | None = None
    backoff: str = "bisect"
    max_bisect: int = 6
    estimator: str = "auto"
    n_theta: int = 20
    final_report: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.min_certified, (int, float)) and 0.0 <= float(self.min_certified) <= 1.0):
            raise ValueError(f"min_certified must lie in [0, 1], got {self.min_certified!r}")
        if self.backoff not in ("bisect", "dense"):
            raise ValueError(f"backoff must be 'bisect' or 'dense', got {self.backoff!r}")
        if int(self.max_bisect) < 1:
            raise ValueError(f"max_bisect must be >= 1, got {self.max_bisect}")
        _resolve_estimator(self.estimator)
        self.lambdas()

    def lambdas(self) -> tuple[float, float] | None:
        """``(lambda1, lambda2)`` of the elastic-net rule, or None when the rule is off."""
        en = self.elastic_net
        if en is None:
            return None
        if isinstance(en, str):
            if en != "weight_decay":
                raise ValueError(
                    f"elastic_net must be None, (lambda1, lambda2) or 'weight_decay', got {en!r}"
                )
            wd = self.weight_decay
            if wd is None or not math.isfinite(float(wd)) or float(wd) < 0:
                raise ValueError(f"elastic_net='weight_decay' needs weight_decay >= 0, got {wd!r}")
            return 0.0, float(wd) / 2.0
        if not isinstance(en, (tuple, list)) or len(en) != 2:
            raise ValueError(f"elastic_net must be a pair (lambda1, lambda2), got {en!r}")
        l1, l2 = float(en[0]), float(en[1])
        if not (math.isfinite(l1) and math.isfinite(l2) and l1 >= 0 and l2 >= 0):
            raise ValueError(f"elastic_net lambdas must be finite and >= 0, got {en!r}")
        return l1, l2

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_certified": self.min_certified,
            "elastic_net": list(self.elastic_net)
            if isinstance(self.elastic_net, tuple)
            else self.elastic_net,
            "weight_decay": self.weight_decay,
            "lambdas": list(lam) if (lam := self.lambdas()) is not None else None,
            "backoff": self.backoff,
            "max_bisect": self.max_bisect,
            "estimator": self.estimator,
        }

    def check(self, cert: LayerCertificate, S: torch.Tensor, R: torch.Tensor) -> tuple[bool, str]:
        """Apply the rules to one layer certificate; returns (ok, explanation with the numbers)."""
        tag = f"[{cert.estimator}{'' if cert.sound else ', ESTIMATE'}]"
        cf = cert.certified_fraction
        if cf < self.min_certified:
            return False, f"certified fraction {cf:.4f} < min_certified {self.min_certified} {tag}"
        why = f"certified fraction {cf:.4f} >= {self.min_certified} {tag}"
        lam = self.lambdas()
        if lam is not None and cert.r_fro2 > 0:
            l1, l2 = lam
            if cert.is_mask:
                rhs = l2 * cert.r_fro2 + l1 * cert.r_l1
                rule = "D5"
                lhs = cert.budget
            else:
                if l1 > 0:
                    raise ValueError(
                        f"layer {cert.name!r}: S and R overlap (not a mask split): only the D4 rule with "
                        "lambda1 = 0 applies"
                    )
                sr = float((S.double() * R.double()).sum())
                lhs, rhs, rule = cert.budget + 2 * l2 * abs(sr), l2 * cert.r_fro2, "D4"
            if not lhs < rhs:
                return False, f"{rule}: B_T(R) term {lhs:.4g} >= lambda penalty {rhs:.4g} {tag}"
            why += f"; {rule}: {lhs:.4g} < {rhs:.4g}"
        return True, why

    def apply(
        self, original: nn.Module, pruned: nn.Module, masks: MaskStore | None, calibration: Any
    ) -> GateResult:
        """Gate ``pruned`` (derived from ``original``): the gated model (a copy), masks and verdicts."""
        calibration = _materialise(calibration)
        first = next(iter_calibration(calibration))  # raises on empty / NaN / val split
        del first
        model = copy.deepcopy(pruned)
        omods, gmods = dict(original.named_modules()), dict(model.named_modules())
        if masks is not None and len(masks) > 0:
            names = [n for n in masks]
        else:
            names = _changed_layers(original, pruned, None)
        verdicts: list[GateLayer] = []
        for n in names:
            if n not in omods or n not in gmods:
                raise ValueError(f"gate: layer {n!r} missing from the original or pruned model")
            Wd = _weight(omods[n]).detach().double().cpu()
            Wp = _weight(gmods[n]).detach().double().cpu()
            if tuple(Wd.shape) != tuple(Wp.shape):
                raise ValueError(f"gate: layer {n!r} shape {tuple(Wd.shape)} vs {tuple(Wp.shape)}")
            requested = float((Wp == 0).sum()) / Wp.numel()
            removed = (Wd != Wp).reshape(-1)
            if not bool(removed.any()):
                continue
            verdicts.append(self._gate_layer(original, n, Wd, Wp, removed, requested, calibration, gmods[n]))
        out_masks = MaskStore()
        for n in names:
            if n in gmods:
                out_masks.add(n, gmods[n], _weight(gmods[n]).detach() != 0)
        report = None
        if self.final_report and verdicts:
            report = (
                certify(
                    original,
                    model,
                    calibration,
                    [v.name for v in verdicts if v.status != "left_dense"] or None,
                    self.estimator,
                    n_theta=self.n_theta,
                )
                if any(v.status != "left_dense" for v in verdicts)
                else None
            )
        rules = self.to_dict()
        return GateResult(model=model, masks=out_masks, layers=verdicts, report=report, rules=rules)

    def _gate_layer(
        self,
        original: nn.Module,
        name: str,
        Wd: torch.Tensor,
        Wp: torch.Tensor,
        removed: torch.Tensor,
        requested: float,
        calibration: Any,
        target: nn.Module,
    ) -> GateLayer:
        def candidate(k: int) -> torch.Tensor:
            flat = Wp.reshape(-1).clone()
            if k > 0:
                flat[order[:k]] = Wd.reshape(-1)[order[:k]]
            return flat.reshape(Wp.shape)

        def evaluate(W: torch.Tensor) -> tuple[bool, str, LayerCertificate]:
            c = certify_layer(original, name, W, calibration, self.estimator, n_theta=self.n_theta)
            ok, why = self.check(c, W, Wd - W)
            return ok, why, c

        idx = torch.nonzero(removed).reshape(-1)
        mags = Wd.reshape(-1)[idx].abs()
        order = idx[torch.argsort(mags, descending=True, stable=True)]
        n_rem = int(order.numel())
        ok, why, cert0 = evaluate(Wp)
        if ok:
            return GateLayer(name, "passed", requested, requested, 0, why, cert0, cert0)
        final_k, final_cert, final_why = n_rem, None, ""
        if self.backoff == "bisect":
            lo, hi = 0, n_rem
            best: tuple[int, LayerCertificate, str] | None = None
            for _ in range(int(self.max_bisect)):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                okm, whym, cm = evaluate(candidate(mid))
                if okm:
                    hi, best = mid, (mid, cm, whym)
                else:
                    lo = mid
            if best is not None:
                final_k, final_cert, final_why = best
        W_final = candidate(final_k) if final_k < n_rem else Wd.clone()
        with torch.no_grad():
            _weight(target).copy_(W_final.to(_weight(target)))
        sp = float((W_final == 0).sum()) / W_final.numel()
        if final_k >= n_rem:
            return GateLayer(
                name,
                "left_dense",
                requested,
                sp,
                n_rem,
                f"{why}; left dense (backoff={self.backoff})",
                None,
                cert0,
            )
        return GateLayer(
            name,
            "backed_off",
            requested,
            sp,
            final_k,
            f"{why}; backed off to sparsity {sp:.4f} ({final_k} weights restored): {final_why}",
            final_cert,
            cert0,
        )
