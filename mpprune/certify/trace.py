"""The tail trace: a ``TorchFunctionMode`` that watches every op touching the forward-mode tangent.

The certificate engine (:mod:`mpprune.certify.segment`) runs the model in float64 with forward-mode AD, the
tangent being the R-part of the pruned layer's output (``d z / d theta`` along ``A_theta = S + theta R``).
While that run goes through the tail, :class:`TailTrace` sees every op whose arguments carry the tangent and
records

* the **breakpoints**: from the exact primal and tangent, the distance in theta to the nearest ReLU /
  LeakyReLU / Hardtanh / ReLU6 switch and MaxPool argmax switch on both sides, per sample (``fwd``, ``bwd``);
* whether the tail is **piecewise linear**: any op that is not affine or one of those switches (GELU,
  LayerNorm, softmax, a product of two tangent-carrying tensors, ...) is named in ``non_pl``;
* whether it is **sequential**: tangent-carrying tensors that meet (residual adds, concatenations, sums) are
  named in ``non_seq`` (the product bound refuses them);
* the **product of induced inf-norms** of the ops the tangent passes through, as ``log_norm``
  (Linear/Conv/BatchNorm/scalings; ReLU, max/avg pooling and reshapes count 1).

Linear and conv ops on a dual input are also computed here, as two plain calls (primal ``W p + b``, tangent
``W t``), which is faster than torch's generic forward-AD rule.

Given per-sample half-widths ``delta``, the trace also drives a
:class:`~mpprune.certify.pl_enclosure.TangentEnclosure`: radii that enclose every tangent over the
theta-interval ``[m - delta, m + delta]`` around the probe point, and from them a sound bound on the slope of
the logits over that whole interval (``upper`` after :meth:`TailTrace.finish`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from mpprune.certify.pl_enclosure import TangentEnclosure, _arg, _pair  # the ops' argument readers

__all__ = ["TailTrace"]

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


class TailTrace(TorchFunctionMode):
    """Watches every op that touches a forward-mode tangent (the R-part of the pruned layer's output).

    ``plain``: ids of tensors known to carry no tangent (parameters, buffers); ``norms``: a cache of the
    induced norms of those fixed weights, shared between runs; ``breakpoints``: whether to record switch
    distances (off for the grid estimate and the product bound); ``delta``: per-sample half-widths of the
    theta-interval to enclose the tangents over (None: no enclosure); ``abs_weights``: a cache of ``|W|``
    shared between runs.
    """

    def __init__(
        self,
        batch: int,
        breakpoints: bool,
        plain: frozenset[int] = frozenset(),
        norms: dict[tuple[str, int], float] | None = None,
        delta: torch.Tensor | None = None,
        abs_weights: dict[int, torch.Tensor] | None = None,
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
        self.enclosure = (
            None
            if delta is None
            else TangentEnclosure(delta, self._dual, plain, {} if abs_weights is None else abs_weights)
        )
        self.upper: torch.Tensor | None = None

    def seed(self, t: torch.Tensor) -> None:
        """Mark ``t`` as the pruned layer's output (its tangent does not depend on theta)."""
        if self.enclosure is not None:
            self.enclosure.seed(t)

    def finish(self, z: torch.Tensor) -> None:
        """After the run: ``upper`` = per-sample bound on ``sup ||dz/dtheta||_inf`` over the interval."""
        if self.enclosure is not None:
            self.upper = self.enclosure.bound(z)

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
                enc = self.enclosure
                snap = None if enc is None else enc.before(name, args, kwargs)
                if name in _LINEAR_OPS and len(duals) == 1 and self._dual(_arg(args, kwargs, 0, "input")):
                    out = self._linear_jvp(func, args, kwargs)
                else:
                    out = func(*args, **kwargs)
                if enc is not None:
                    enc.after(name, func, args, kwargs, out, snap)
                return out
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
