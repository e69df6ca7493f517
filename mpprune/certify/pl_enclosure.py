"""Enclosures of the tangent of a piecewise-linear tail over a theta-interval (mean-value interval rules).

Along the segment ``A_theta = S + theta R`` every tensor of a piecewise-linear tail is a continuous
piecewise-linear function of theta. A probe runs the tail at one point ``m`` with forward-mode AD, giving
each tensor's primal ``p = v(m)`` and tangent ``t = v'(m)`` (:class:`~mpprune.certify.trace.TailTrace`).
:class:`TangentEnclosure`, driven by the trace, also carries a **radius** ``r`` per tensor such that

    |v'(theta) - t| <= r   elementwise, for every theta in [m - delta, m + delta] (where v' exists),

``delta`` per sample. The pruned layer's output has ``r = 0`` (its tangent ``R psi_1`` does not depend on
theta), and each op maps radii soundly:

* affine ops with fixed weights (Linear, Conv, BatchNorm in eval mode, scalings, sums, means, average
  pooling, reshapes, indexing, padding, concatenation): the op applied to ``r`` with ``|W|`` (``|c|``) for
  the weights;
* a switch (ReLU, LeakyReLU, Hardtanh, ReLU6) of gains ``g_k`` between its levels: the input's values over
  the interval lie in ``p +- delta (|t| + r)`` (mean value theorem), so only the gains of the regions that
  range touches can occur, and ``r_out = max_k |g_k t - t_out| + |g_k| r`` over those regions (``t_out`` the
  probe's own output tangent);
* MaxPool: a window's candidates whose value range can reach the largest lower end may be the argmax
  somewhere on the interval; ``r_out = max |t_c - t_out| + r_c`` over those candidates.

The logits then satisfy ``sup_theta ||z'(theta)||_inf <= max_k |t_k| + r_k`` over the interval: a sound upper
bound on the slope over the whole interval, equal to the probe's slope when no switch can occur in it.
:mod:`mpprune.certify.pl_search` uses it to skip intervals that cannot beat the largest slope found.
Any other op on a theta-dependent tensor makes the enclosure unbounded (``math.inf``); the trace names
it in ``non_pl`` anyway.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["TangentEnclosure"]

# ops that move or average entries with fixed non-negative weights: the op itself maps the radius
_STRUCTURAL = {
    "flatten", "view", "reshape", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
    "expand_as", "contiguous", "clone", "to", "float", "double", "type_as", "__getitem__", "chunk", "split",
    "unbind", "narrow", "select", "movedim", "roll", "flip", "identity", "view_as", "reshape_as", "repeat",
    "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "sum",
}  # fmt: skip
_CAT = {"cat", "concat", "stack"}
_ADD = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__"}
_MATMUL = {"matmul", "__matmul__", "mm"}
_LINEAR = {"linear", "conv1d", "conv2d", "conv3d"}
_DROPOUT = {"dropout", "dropout1d", "dropout2d"}
# the switches, with the position of their ``inplace`` argument
_SWITCHES = {
    "relu": 1, "relu_": -1, "leaky_relu": 2, "leaky_relu_": -1, "hardtanh": 3, "hardtanh_": -1, "relu6": 1,
}  # fmt: skip


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


class TangentEnclosure:
    """Radii ``r``: ``|v'(theta) - t| <= r`` on ``[m - delta_s, m + delta_s]`` for the tensors of a probe.

    ``delta``: per-sample half-widths (B,). ``is_dual(t)`` tells whether a tensor carries a tangent (the
    trace's test); ``abs_weights`` caches ``|W|`` of fixed weights between probes (keyed by ``id``). After
    the run, :meth:`bound` gives the per-sample bound on ``sup ||z'||_inf`` from the logits.
    """

    def __init__(
        self,
        delta: torch.Tensor,
        is_dual: Callable[[Any], bool],
        plain: frozenset[int],
        abs_weights: dict[int, torch.Tensor],
    ) -> None:
        self.delta = delta.double()
        self.B = int(delta.shape[0])
        self.is_dual = is_dual
        self.plain = plain
        self.abs_weights = abs_weights
        self._radius: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}
        self.unbounded: set[str] = set()

    # -- the radius table ------------------------------------------------------------------------
    def set(self, t: torch.Tensor, r: torch.Tensor) -> None:
        key = id(t)
        table = self._radius

        def drop(ref: weakref.ref[torch.Tensor], key: int = key) -> None:
            entry = table.get(key)
            if entry is not None and entry[0] is ref:
                del table[key]

        table[key] = (weakref.ref(t, drop), r)

    def seed(self, t: torch.Tensor) -> None:
        """The pruned layer's output: its tangent ``R psi_1`` is the same for every theta (radius 0)."""
        self.set(t, torch.zeros_like(fwAD.unpack_dual(t).primal, dtype=torch.float64))

    def radius(self, t: Any, op: str) -> torch.Tensor | None:
        """The radius of a tangent-carrying tensor, zeros for a constant tensor; None (and the enclosure
        marked unbounded) for a tangent-carrying tensor no rule produced."""
        if not isinstance(t, torch.Tensor):
            return None
        if not self.is_dual(t):
            return torch.zeros_like(t, dtype=torch.float64)
        entry = self._radius.get(id(t))
        if entry is None or entry[0]() is not t:
            self.unbounded.add(f"{op} (input of unknown radius)")
            return None
        return entry[1]

    def _abs_weight(self, w: torch.Tensor) -> torch.Tensor:
        if id(w) not in self.plain:  # computed on the fly: not cacheable by id
            return w.detach().abs().double()
        if id(w) not in self.abs_weights:
            self.abs_weights[id(w)] = w.detach().abs().double()
        return self.abs_weights[id(w)]

    def _spread(self, p: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor | None:
        """``delta_s (|t| + r)``: how far the values can move over the interval (mean value theorem)."""
        if p.dim() == 0 or p.shape[0] != self.B:
            return None
        d = self.delta.to(p.device).reshape((-1,) + (1,) * (p.dim() - 1))
        return d * (t.abs().double() + r)

    # -- around each op ----------------------------------------------------------------------------
    def before(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What an op overwrites and its rule needs: the input's primal and tangent of an in-place switch."""
        pos = _SWITCHES.get(name)
        if pos is None:
            return None
        inplace = pos < 0 or bool(_arg(args, kwargs, pos, "inplace", False))
        x = _arg(args, kwargs, 0, "input")
        if not inplace or not isinstance(x, torch.Tensor):
            return None
        p, t = fwAD.unpack_dual(x)
        return p.detach().clone(), None if t is None else t.detach().clone()

    def after(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, snap: Any = None
    ) -> None:
        """Give every tangent-carrying output of ``func(*args, **kwargs) = out`` its radius (``snap``: what
        :meth:`before` saved)."""
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and self.is_dual(o)]
        if not outs:
            return
        try:
            r = self._rule(name, func, args, kwargs, out, snap)
        except (RuntimeError, TypeError, ValueError) as exc:  # a shape we do not handle: no bound
            self.unbounded.add(f"{name} ({type(exc).__name__})")
            r = None
        if r is None:
            self.unbounded.add(name)
            return
        rs = tree_flatten(r)[0]
        os_ = tree_flatten(out)[0]
        for o, ro in zip(os_, rs, strict=False):
            if isinstance(o, torch.Tensor) and self.is_dual(o) and isinstance(ro, torch.Tensor):
                self.set(o, ro)

    def _rule(
        self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, snap: Any
    ) -> Any:
        if name in _STRUCTURAL or name in _DROPOUT:
            return self._structural(name, func, args, kwargs)
        if name in _CAT:
            return self._cat(func, args, kwargs)
        if name == "pad":
            x = _arg(args, kwargs, 0, "input")
            r = self.radius(x, name)
            if r is None:
                return None
            mode = _arg(args, kwargs, 2, "mode", "constant")
            if mode != "constant":
                return None
            return F.pad(r, _arg(args, kwargs, 1, "pad"), value=0.0)
        if name in _ADD:
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            alpha = abs(float(kwargs.get("alpha", 1.0)))
            ra = self.radius(a, name) if isinstance(a, torch.Tensor) else 0.0
            rb = self.radius(b, name) if isinstance(b, torch.Tensor) else 0.0
            if ra is None or rb is None:
                return None
            return ra + alpha * rb
        if name in _MUL or name in _DIV or name in _MATMUL:
            return self._scale(name, args)
        if name in _LINEAR:
            return self._linear(func, args, kwargs)
        if name == "batch_norm":
            return self._batch_norm(args, kwargs)
        if name in _SWITCHES:
            return self._switch(name, args, kwargs, out, snap)
        if name == "max_pool2d":
            return self._maxpool(args, kwargs, out)
        return None

    def _structural(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bad: list[bool] = []

        def sub(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and self.is_dual(v):
                r = self.radius(v, name)
                if r is None:
                    bad.append(True)
                    return v
                return r
            return v

        a2, k2 = tree_map(sub, (args, kwargs))
        if bad:
            return None
        if name in _DROPOUT:
            return a2[0] if a2 else k2["input"]
        return func(*a2, **k2)

    def _cat(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seq = _arg(args, kwargs, 0, "tensors")
        rs = []
        for v in seq:
            r = self.radius(v, "cat")
            if r is None:
                return None
            rs.append(r)
        rest = args[1:]
        return func(rs, *rest, **{k: v for k, v in kwargs.items() if k != "tensors"})

    def _scale(self, name: str, args: tuple[Any, ...]) -> Any:
        a, b = args[0], args[1]
        first = isinstance(a, torch.Tensor) and self.is_dual(a)
        x, c = (a, b) if first else (b, a)
        r = self.radius(x, name)
        if r is None:
            return None
        ca: torch.Tensor | float = c.detach().abs().double() if isinstance(c, torch.Tensor) else abs(float(c))
        if name in _MATMUL:
            if not isinstance(ca, torch.Tensor):
                return None
            return r @ ca if first else ca @ r
        if name in _DIV:
            if not first:
                return None
            return r / ca
        return r * ca

    def _linear(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = _arg(args, kwargs, 0, "input")
        w = _arg(args, kwargs, 1, "weight")
        r = self.radius(x, func.__name__)
        if r is None or not isinstance(w, torch.Tensor) or self.is_dual(w):
            return None
        a2, k2 = list(args), dict(kwargs)
        if "input" in k2:
            k2["input"] = r
        else:
            a2[0] = r
        wa = self._abs_weight(w).to(r.device)
        if "weight" in k2:
            k2["weight"] = wa
        else:
            a2[1] = wa
        if len(a2) > 2:
            a2[2] = None
        else:
            k2["bias"] = None
        return func(*a2, **k2)

    def _batch_norm(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = _arg(args, kwargs, 0, "input")
        r = self.radius(x, "batch_norm")
        if r is None or bool(_arg(args, kwargs, 5, "training", False)):
            return None
        var = _arg(args, kwargs, 2, "running_var").detach().double()
        w = _arg(args, kwargs, 3, "weight")
        eps = float(_arg(args, kwargs, 7, "eps", 1e-5))
        scale = 1.0 / torch.sqrt(var + eps)
        if w is not None:
            scale = scale * w.detach().double()
        return r * scale.abs().reshape((1, -1) + (1,) * (r.dim() - 2)).to(r.device)

    def _switch(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, snap: Any) -> Any:
        x = _arg(args, kwargs, 0, "input")
        r = self.radius(x, name)  # in place: x is the output now, and its radius is still the input's
        if r is None:
            return None
        p, t = fwAD.unpack_dual(x) if snap is None else snap
        t_out = fwAD.unpack_dual(out).tangent
        if t_out is None or t is None:
            return None
        p, t, t_out = p.detach().double(), t.detach().double(), t_out.detach().double()
        spread = self._spread(p, t, r)
        if spread is None:
            return None
        lo_v, hi_v = p - spread, p + spread
        if name in ("relu", "relu_"):  # gains 0 (below 0) and 1: the common case, in few ops
            off = torch.where(lo_v <= 0, t_out.abs(), 0.0)
            return torch.maximum(off, torch.where(hi_v >= 0, (t - t_out).abs() + r, 0.0))
        inf = math.inf
        if name.startswith("leaky"):
            a = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            regions = [(-inf, 0.0, a), (0.0, inf, 1.0)]
        elif name.startswith("hardtanh"):
            lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
            hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
            regions = [(-inf, lo, 0.0), (lo, hi, 1.0), (hi, inf, 0.0)]
        elif name == "relu6":
            regions = [(-inf, 0.0, 0.0), (0.0, 6.0, 1.0), (6.0, inf, 0.0)]
        else:
            regions = [(-inf, 0.0, 0.0), (0.0, inf, 1.0)]
        r_out = torch.zeros_like(r)
        for a_k, b_k, g in regions:
            touched = (hi_v >= a_k) & (lo_v <= b_k)
            cand = (g * t - t_out).abs() + abs(g) * r
            r_out = torch.where(touched, torch.maximum(r_out, cand), r_out)
        return r_out

    def _maxpool(self, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        x = _arg(args, kwargs, 0, "input")
        r = self.radius(x, "max_pool2d")
        if r is None or x.dim() != 4 or bool(_arg(args, kwargs, 5, "ceil_mode", False)):
            return None
        y = out[0] if isinstance(out, tuple) else out
        t_out = fwAD.unpack_dual(y).tangent
        if t_out is None:
            return None
        ks = _pair(_arg(args, kwargs, 1, "kernel_size"))
        st_raw = _arg(args, kwargs, 2, "stride")
        empty = st_raw is None or (isinstance(st_raw, (tuple, list)) and len(st_raw) == 0)
        st = ks if empty else _pair(st_raw)
        pad = _pair(_arg(args, kwargs, 3, "padding", 0))
        dil = _pair(_arg(args, kwargs, 4, "dilation", 1))
        p, t = fwAD.unpack_dual(x)
        p, t = p.detach().double(), t.detach().double()
        spread = self._spread(p, t, r)
        if spread is None:
            return None
        B, C, H, W = p.shape
        to = t_out.detach().double()
        if st == ks and pad == (0, 0) and dil == (1, 1):  # non-overlapping windows: plain reshapes
            Ho, Wo = H // ks[0], W // ks[1]

            def tiles(v: torch.Tensor) -> torch.Tensor:
                return v[:, :, : Ho * ks[0], : Wo * ks[1]].reshape(B, C, Ho, ks[0], Wo, ks[1])

            reach = tiles(p + spread) >= tiles(p - spread).amax(dim=(3, 5), keepdim=True)
            dev = (tiles(t) - to.reshape(B, C, Ho, 1, Wo, 1)).abs() + tiles(r)
            return torch.where(reach, dev, 0.0).amax(dim=(3, 5)).reshape(t_out.shape)
        Hp, Wp = H + 2 * pad[0], W + 2 * pad[1]

        def windows(v: torch.Tensor, fill: float) -> torch.Tensor:
            vp = F.pad(v, (pad[1], pad[1], pad[0], pad[0]), value=fill)
            cols = F.unfold(vp.reshape(B * C, 1, Hp, Wp), ks, dilation=dil, stride=st)
            return cols.reshape(B, C, ks[0] * ks[1], -1)

        lo = windows(p - spread, -math.inf)
        hi = windows(p + spread, -math.inf)
        tc, rc = windows(t, 0.0), windows(r, 0.0)
        possible = hi >= lo.amax(dim=2, keepdim=True)
        cand = torch.where(possible, (tc - to.reshape(B, C, 1, -1)).abs() + rc, torch.zeros_like(rc))
        return cand.amax(dim=2).reshape(t_out.shape)

    # -- the result ------------------------------------------------------------------------------
    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Per sample ``max_k |t_k| + r_k`` of the logits ``z`` (+inf where the enclosure is unbounded)."""
        t = fwAD.unpack_dual(z).tangent
        B = z.shape[0]
        if self.unbounded:
            return torch.full((B,), math.inf, dtype=torch.float64)
        t = torch.zeros_like(z, dtype=torch.float64) if t is None else t.detach().double()
        r = self.radius(z, "logits") if t is not None else None
        if r is None:
            return torch.full((B,), math.inf, dtype=torch.float64)
        return (t.abs() + r).reshape(B, -1).amax(dim=1).cpu()
