"""Torch ops on Taylor models: :class:`TaylorMode` runs a model's own ``forward`` on Taylor models.

:class:`TaylorMode` is a ``TorchFunctionMode`` that carries every tensor depending on the pruning parameter as
a Taylor model (:mod:`mpprune.certify.taylor`): the model code sees the centres (ordinary tensors, so shapes,
views and Python control flow on shapes work as usual) and every torch op that touches one is replaced by
the rule for that op. :mod:`mpprune.certify.taylor_tail` seeds the pruned layer's output and reads the
logits' model.

Rules exist for (everything else is refused with :class:`UnsupportedTailOp`, naming the op and the layer):
Linear, Conv1d/2d/3d, BatchNorm (eval), LayerNorm, RMSNorm, GELU (erf and tanh), SiLU, sigmoid, tanh, erf,
exp, sqrt, rsqrt, reciprocal, powers 2, 3, 1/2, -1/2, -1, softmax, scaled dot-product attention (SDPA and the
explicit ``q @ k^T * scale -> softmax -> @ v`` form), products and quotients of theta-dependent tensors,
ReLU / LeakyReLU / Hardtanh / ReLU6 / clamp, MaxPool2d, average pooling, means and sums, residual adds,
reshapes and views, indexing, concatenation, padding, masking, ``where``, dropout in eval. Data-dependent
Python on a theta-dependent tensor (``.item()``, ``bool(...)``, comparisons), casts below float64 and
in-place writes that could reach an alias are refused too.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from mpprune.certify import taylor as tm
from mpprune.certify.taylor import Taylor
from mptheory.errors import Refusal

__all__ = ["RULES", "TaylorMode", "UnsupportedTailOp"]


class UnsupportedTailOp(Refusal):
    """The tail applies an op to a theta-dependent tensor for which the Taylor bound has no sound rule."""


Tensor = torch.Tensor
_Rule = Callable[["TaylorMode", str, tuple[Any, ...], dict[str, Any]], Any]

# ops that read metadata only (never the values)
_META = {
    "size", "dim", "numel", "__len__", "is_floating_point", "is_contiguous", "element_size", "stride",
    "ndimension", "nelement", "get_device", "is_complex", "storage_offset", "_assert", "__format__",
    "__repr__", "ones_like", "zeros_like", "empty_like", "new_zeros", "new_ones", "new_empty", "new_full",
    "requires_grad_", "type", "__hash__",
}  # fmt: skip
_META_PROPS = {
    "shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_leaf", "names", "is_sparse",
    "is_quantized", "is_meta", "grad_fn", "is_mps", "is_nested",
}  # fmt: skip
# ops that move entries around (applied to every part of the model)
_STRUCTURAL = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
    "contiguous", "clone", "__getitem__", "narrow", "select", "movedim", "moveaxis", "roll", "flip",
    "repeat", "swapaxes", "swapdims", "chunk", "split", "unbind", "tensor_split", "unfold", "detach",
    "view_as", "reshape_as", "expand_as", "to", "double", "cpu", "cuda", "type_as", "tile",
    "repeat_interleave",
}  # fmt: skip
_STRUCT_PROPS = {"T", "mT", "H", "mH"}
_CAT = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
_DUNDER = {
    "add": "add", "radd": "add", "sub": "sub", "rsub": "rsub", "mul": "mul", "rmul": "mul",
    "truediv": "truediv", "div": "truediv", "rtruediv": "rtruediv", "rdiv": "rtruediv",
    "matmul": "matmul", "rmatmul": "rmatmul", "neg": "neg", "pos": "positive", "pow": "pow", "rpow": "rpow",
}  # fmt: skip
# functionals whose in-place flag is positional (nn.Hardtanh, nn.LeakyReLU, nn.Dropout pass it so)
_INPLACE_ARG = {
    "relu": 1, "relu6": 1, "silu": 1, "hardtanh": 3, "leaky_relu": 2, "dropout": 3, "dropout1d": 3,
    "dropout2d": 3, "dropout3d": 3, "alpha_dropout": 3, "feature_alpha_dropout": 3,
}  # fmt: skip


def _parse(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, bool]:
    """The rule name of a torch function and whether it writes into its first argument."""
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        inplace = core.startswith("i") and core[1:] in _DUNDER
        core = core[1:] if inplace else core
        return _DUNDER.get(core, name), inplace
    if name.endswith("_") and not name.startswith("_"):
        return name[:-1], True
    pos = _INPLACE_ARG.get(name)
    inplace = bool(kwargs.get("inplace", False)) or (pos is not None and len(args) > pos and bool(args[pos]))
    return name, inplace


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    return tuple(int(u) for u in v) if isinstance(v, (tuple, list)) else (int(v),) * n


class TaylorMode(TorchFunctionMode):
    """Carries theta-dependent tensors as Taylor models through a forward pass (see the module docstring).

    The tensor the model code sees is the model's centre ``coef[0]``; its other coefficients and remainder
    bounds are kept in a registry keyed by that tensor (weakly: an intermediate the model drops is freed).
    ``layer``: the pruned layer's name, for messages; ``order``: the order of the models; ``abs_cache``:
    ``|W|`` of fixed weights, shared between runs. ``exact_centre`` turns False when a piecewise-linear op
    straddled a break (``coef[1]`` of the result is then not the slope at t = 0).
    """

    def __init__(
        self, layer: str, order: int, abs_cache: dict[int, tuple[Tensor, Tensor]] | None = None
    ) -> None:
        super().__init__()
        self.layer = layer
        self.order = order
        self.abs_cache = {} if abs_cache is None else abs_cache
        self._reg: dict[int, tuple[weakref.ref[Tensor], list[Tensor], Tensor, Tensor]] = {}
        self.active = True
        self.exact_centre = True

    # -- the registry ----------------------------------------------------------------------------
    def register(self, t: Tensor, x: Taylor) -> Tensor:
        """Record ``x`` as the model whose centre is ``t``; returns ``t``."""
        key = id(t)
        reg = self._reg

        def drop(ref: weakref.ref[Tensor], key: int = key) -> None:
            e = reg.get(key)
            if e is not None and e[0] is ref:
                del reg[key]

        reg[key] = (weakref.ref(t, drop), x.coef[1:], x.rv, x.rd)
        return t

    def get(self, t: Any) -> Taylor | None:
        """The model whose centre is ``t`` (None for a constant)."""
        if not isinstance(t, Tensor):
            return None
        e = self._reg.get(id(t))
        if e is None or e[0]() is not t:
            return None
        return Taylor([t, *e[1]], e[2], e[3])

    def as_taylor(self, obj: Any) -> Taylor:
        """The model of ``obj``; a constant tensor is the constant model."""
        x = self.get(obj)
        if x is not None:
            return x
        if isinstance(obj, Tensor):
            return Taylor.constant(obj, self.order)
        raise self.refuse(f"a non-tensor operand {type(obj).__name__}")

    def abs_of(self, w: Tensor) -> Tensor:
        """``|w|``, cached for parameters (fixed between runs)."""
        if not isinstance(w, nn.Parameter):
            return w.abs()
        e = self.abs_cache.get(id(w))
        if e is None or e[0] is not w:
            e = (w, w.detach().abs())
            self.abs_cache[id(w)] = e
        return e[1]

    def refuse(self, what: str) -> UnsupportedTailOp:
        return UnsupportedTailOp(
            f"layer {self.layer!r}: the taylor_bound has no rule for {what} on a tensor that depends on the "
            "pruned layer's weights"
        )

    def _live(self) -> list[Tensor]:
        out = []
        for e in list(self._reg.values()):
            t = e[0]()
            if t is not None:
                out.append(t)
        return out

    def _parts(self, obj: Any) -> list[Any]:
        """``coef[0..K], rv, rd`` of a model, or of a constant (zeros beyond the centre)."""
        x = self.get(obj)
        if x is not None:
            return [*x.coef, x.rv, x.rd]
        if isinstance(obj, Tensor):
            z = torch.zeros_like(obj)
            return [obj] + [z] * (self.order + 2)
        return [obj] * (self.order + 3)

    # -- dispatch --------------------------------------------------------------------------------
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        flat, _ = tree_flatten((args, kwargs))
        if not any(self.get(t) is not None for t in flat):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name == "__get__":
            prop = getattr(getattr(func, "__self__", None), "__name__", "?")
            if prop in _META_PROPS:
                return func(*args, **kwargs)
            if prop in _STRUCT_PROPS:
                return self._structural(func, args, kwargs)
            raise self.refuse(f"the tensor attribute .{prop}")
        if name in _META:
            return func(*args, **kwargs)
        if name in _STRUCTURAL:
            return self._structural(func, args, kwargs)
        if name in _CAT:
            return self._cat(func, args, kwargs)
        rule_name, inplace = _parse(name, args, kwargs)
        rule = RULES.get(rule_name)
        if rule is None:
            raise self.refuse(f"the op {name!r}")
        if inplace:
            return self._inplace(rule, rule_name, args, kwargs)
        return self._wrap(rule(self, rule_name, args, kwargs), flat)

    def _wrap(self, out: Any, inputs: list[Any]) -> Any:
        if isinstance(out, Taylor):
            a = out.a
            if any(a is t for t in inputs if isinstance(t, Tensor)):
                a = a.clone()
            return self.register(a, Taylor([a, *out.coef[1:]], out.rv, out.rd))
        if isinstance(out, (tuple, list)):
            return type(out)(self._wrap(o, inputs) for o in out)
        return out

    def _inplace(self, rule: _Rule, rule_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        target = args[0]
        if self.get(target) is None:
            raise self.refuse(
                f"an in-place {rule_name!r} that writes a theta-dependent value into a constant"
            )
        ptr = target.untyped_storage().data_ptr()
        for t in self._live():
            if t is not target and t.untyped_storage().data_ptr() == ptr:
                raise self.refuse(f"an in-place {rule_name!r} on a tensor that shares memory with another")
        out = rule(self, rule_name, args, {k: v for k, v in kwargs.items() if k != "inplace"})
        if not isinstance(out, Taylor) or out.shape != target.shape:
            raise self.refuse(f"an in-place {rule_name!r} that changes the shape")
        target.copy_(out.a)
        return self.register(target, Taylor([target, *out.coef[1:]], out.rv, out.rd))

    def _structural(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(func, "__name__", "")
        first = args[0] if args else next(iter(kwargs.values()))
        flat, _ = tree_flatten((args[1:], kwargs))
        if any(self.get(t) is not None for t in flat) and not name.endswith("_as"):
            raise self.refuse(f"{name!r} with a theta-dependent index or argument")
        rest = args[1:]
        outs = [func(p, *rest, **kwargs) for p in self._parts(first)]
        if isinstance(outs[0], Tensor):
            if outs[0].dtype != torch.float64:
                raise self.refuse(f"{name!r} to {outs[0].dtype} (the bound is computed in float64)")
            if outs[0] is first:  # an identity (contiguous, .to(same dtype)): the same model
                return first
            return self._wrap(Taylor(outs[:-2], outs[-2], outs[-1]), [])
        models = [Taylor(list(ps[:-2]), ps[-2], ps[-1]) for ps in zip(*outs, strict=True)]
        return self._wrap(type(outs[0])(models), [])

    def _cat(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seq = _arg(args, kwargs, 0, "tensors")
        rest = {k: v for k, v in kwargs.items() if k != "tensors"}
        per = [self._parts(t) for t in seq]
        parts = [func([p[j] for p in per], *args[1:], **rest) for j in range(self.order + 3)]
        return self._wrap(Taylor(parts[:-2], parts[-2], parts[-1]), [])


# -- rules -----------------------------------------------------------------------------------------


def _const_part(mode: TaylorMode, obj: Any, what: str) -> Any:
    if mode.get(obj) is not None:
        raise mode.refuse(what)
    return obj


def _rule_add(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    alpha = kwargs.get("alpha", 1)
    if name == "rsub":
        x, y = y, x
    if isinstance(alpha, Tensor):
        raise mode.refuse(f"{name!r} with a tensor alpha")
    coef = -alpha if name in ("sub", "rsub", "subtract") else alpha
    X, Y = mode.get(x), mode.get(y)
    if X is not None and Y is not None:
        return tm.add(X, tm.scale(Y, coef) if coef != 1 else Y)
    if X is not None:
        return tm.add_const(X, y * coef if coef != 1 else y)
    assert Y is not None
    return tm.add_const(tm.scale(Y, coef) if coef != 1 else Y, x)


def _rule_neg(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    return tm.scale(mode.as_taylor(args[0]), -1.0)


def _rule_positive(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    return mode.as_taylor(args[0])


def _rule_mul(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    X, Y = mode.get(x), mode.get(y)
    if X is not None and Y is not None:
        return tm.mul(X, Y)
    if X is not None:
        return tm.scale(X, y)
    assert Y is not None
    return tm.scale(Y, x)


def _rule_div(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    if kwargs.get("rounding_mode") is not None:
        raise mode.refuse(f"{name!r} with rounding_mode={kwargs['rounding_mode']!r}")
    if name == "rtruediv":
        x, y = y, x
    X, Y = mode.get(x), mode.get(y)
    if Y is None:
        assert X is not None
        return tm.scale(X, y, divide=True)
    r = tm.smooth(Y, tm.FUNCTIONS["reciprocal"])
    return tm.mul(X, r) if X is not None else tm.scale(r, x)


def _rule_matmul(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x, y = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other")
    if name == "rmatmul":
        x, y = y, x
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or min(x.dim(), y.dim()) < 2:
        raise mode.refuse(f"{name!r} with a 1-D operand")
    X, Y = mode.get(x), mode.get(y)
    return tm.matmul_const(X if X is not None else x, Y if Y is not None else y)


def _rule_linear(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    w = _const_part(mode, _arg(args, kwargs, 1, "weight"), "a linear map with a theta-dependent weight")
    bias = _const_part(mode, _arg(args, kwargs, 2, "bias"), "a linear map with a theta-dependent bias")
    wa = mode.abs_of(w)
    return tm.affine(x, lambda t: F.linear(t, w), lambda t: F.linear(t, wa), int(w.shape[-1]), bias)


def _rule_conv(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    w = _const_part(mode, _arg(args, kwargs, 1, "weight"), "a convolution with a theta-dependent weight")
    bias = _const_part(mode, _arg(args, kwargs, 2, "bias"), "a convolution with a theta-dependent bias")
    nd = w.dim() - 2
    stride = _arg(args, kwargs, 3, "stride", 1)
    padding = _arg(args, kwargs, 4, "padding", 0)
    dilation = _arg(args, kwargs, 5, "dilation", 1)
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    wa = mode.abs_of(w)

    def apply(t: Tensor, weight: Tensor) -> Tensor:  # t: a stack of batches (n, N, C, ...)
        y = conv(t.flatten(0, 1), weight, None, stride, padding, dilation, groups)
        return y.reshape(t.shape[:2] + y.shape[1:])

    b = None if bias is None else bias.reshape((-1,) + (1,) * nd)
    k = int(np.prod(w.shape[1:]))
    return tm.affine(x, lambda t: apply(t, w), lambda t: apply(t, wa), k, b)


def _rule_batch_norm(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    mean, var = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
    w, b = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
    if bool(_arg(args, kwargs, 5, "training", False)) or mean is None or var is None:
        raise mode.refuse("batch_norm in training mode (the map must be fixed)")
    for t in (mean, var, w, b):
        _const_part(mode, t, "batch_norm with theta-dependent statistics or affine parameters")
    eps = float(_arg(args, kwargs, 7, "eps", 1e-5))
    shape = (1, -1) + (1,) * (x.a.dim() - 2)
    s = torch.rsqrt(var + eps)
    if w is not None:
        s = s * w
    shift = -mean * s
    if b is not None:
        shift = shift + b
    # s and shift are computed: s within 4u|s| (add, rsqrt, mul), shift within 3u(|b| + |mean s|)
    shift_err = 3 * tm.U * ((b.abs() if b is not None else 0.0) + (mean * s).abs()) + tm.TINY
    s, sa = s.reshape(shape), s.abs().reshape(shape)
    return tm.affine(
        x, lambda t: t * s, lambda t: t * sa, 1, shift.reshape(shape), coef_err=8 * tm.U,
        bias_err=shift_err.reshape(shape),
    )  # fmt: skip


def _rule_layer_norm(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    shape = tuple(int(s) for s in _arg(args, kwargs, 1, "normalized_shape"))
    w = _const_part(mode, _arg(args, kwargs, 2, "weight"), "layer_norm with a theta-dependent weight")
    b = _const_part(mode, _arg(args, kwargs, 3, "bias"), "layer_norm with a theta-dependent bias")
    return tm.layer_norm(x, shape, w, b, float(_arg(args, kwargs, 4, "eps", 1e-5)))


def _rule_rms_norm(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    shape = tuple(int(s) for s in _arg(args, kwargs, 1, "normalized_shape"))
    w = _const_part(mode, _arg(args, kwargs, 2, "weight"), "rms_norm with a theta-dependent weight")
    eps = _arg(args, kwargs, 3, "eps", None)
    return tm.rms_norm(x, shape, w, torch.finfo(x.a.dtype).eps if eps is None else float(eps))


def _smooth_rule(key: str) -> _Rule:
    def rule(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
        return tm.smooth(mode.as_taylor(_arg(args, kwargs, 0, "input")), tm.FUNCTIONS[key])

    return rule


def _rule_gelu(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    approx = _arg(args, kwargs, 1, "approximate", "none")
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    if approx == "none":
        return tm.smooth(x, tm.FUNCTIONS["gelu"])
    if approx == "tanh":
        return tm.gelu_tanh(x)
    raise mode.refuse(f"gelu(approximate={approx!r})")


def _rule_pow(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x, p = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "exponent")
    if isinstance(p, Tensor) or name == "rpow":
        raise mode.refuse("pow with a tensor exponent")
    X = mode.as_taylor(x)
    p = float(p)
    if p == 1.0:
        return X
    if p == 2.0:
        return tm.mul(X, X)
    if p == 3.0:
        return tm.mul(tm.mul(X, X), X)
    keys = {0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}
    if p in keys:
        return tm.smooth(X, tm.FUNCTIONS[keys[p]])
    raise mode.refuse(f"pow with exponent {p}")


def _rule_square(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    X = mode.as_taylor(args[0])
    return tm.mul(X, X)


def _rule_softmax(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    dtype = kwargs.get("dtype")
    if dtype is not None and dtype != torch.float64:
        raise mode.refuse(f"softmax in {dtype} (the bound is computed in float64)")
    return tm.softmax(x, int(_arg(args, kwargs, 1, "dim")))


def _rule_sdpa(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    mask = _const_part(mode, _arg(args, kwargs, 3, "attn_mask"), "an attention mask that depends on theta")
    if float(_arg(args, kwargs, 4, "dropout_p", 0.0)) != 0.0:
        raise mode.refuse("scaled_dot_product_attention with dropout")
    if bool(kwargs.get("enable_gqa", False)):
        raise mode.refuse("scaled_dot_product_attention with enable_gqa=True")
    causal = bool(_arg(args, kwargs, 5, "is_causal", False))
    Q, K, V = (mode.get(t) or t for t in (q, k, v))
    return tm.sdpa(Q, K, V, mask, causal, _arg(args, kwargs, 6, "scale", None))


def _clamp_rule(kind: str) -> _Rule:
    def rule(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
        x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
        fn: Callable[[Tensor], Tensor]
        breaks: tuple[float, ...]
        slopes: tuple[float, ...]
        if kind == "relu":
            breaks, slopes, fn = (0.0,), (0.0, 1.0), torch.relu
        elif kind == "leaky_relu":
            s = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            if not 0.0 <= s <= 1.0:
                raise mode.refuse(f"leaky_relu with negative_slope={s} (not monotone and 1-Lipschitz)")
            breaks, slopes = (0.0,), (s, 1.0)

            def fn(t: Tensor) -> Tensor:
                return F.leaky_relu(t, s)
        else:
            if kind == "relu6":
                lo, hi = 0.0, 6.0
            elif kind == "hardtanh":
                lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
                hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
            else:  # clamp / clip with numbers
                lo_a, hi_a = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
                if isinstance(lo_a, Tensor) or isinstance(hi_a, Tensor):
                    raise mode.refuse(f"{name!r} with tensor bounds")
                lo = -math.inf if lo_a is None else float(lo_a)
                hi = math.inf if hi_a is None else float(hi_a)
            lo_, hi_ = lo, hi

            def fn(t: Tensor) -> Tensor:
                return torch.clamp(t, lo_, hi_)

            breaks = tuple(v for v in (lo, hi) if math.isfinite(v))
            slopes = ((0.0,) if math.isfinite(lo) else ()) + (1.0,) + ((0.0,) if math.isfinite(hi) else ())
        out, straddle = tm.clamp_like(x, fn, breaks, slopes)
        if straddle:
            mode.exact_centre = False
        return out

    return rule


def _rule_max_pool2d(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    if x.a.dim() != 4:
        raise mode.refuse(f"max_pool2d on a {x.a.dim()}-D tensor")
    ks = _pair(_arg(args, kwargs, 1, "kernel_size"))
    st_raw = _arg(args, kwargs, 2, "stride")
    st = ks if st_raw is None or (isinstance(st_raw, (tuple, list)) and len(st_raw) == 0) else _pair(st_raw)
    pad, dil = _pair(_arg(args, kwargs, 3, "padding", 0)), _pair(_arg(args, kwargs, 4, "dilation", 1))
    if bool(_arg(args, kwargs, 5, "ceil_mode", False)) or bool(
        _arg(args, kwargs, 6, "return_indices", False)
    ):
        raise mode.refuse("max_pool2d with ceil_mode or return_indices")
    out, straddle = tm.max_pool2d(x, ks, st, pad, dil)  # type: ignore[arg-type]
    if straddle:
        mode.exact_centre = False
    return out


def _linear_nonneg(
    fn: Callable[..., Tensor], k: int, x: Taylor, *rest: Any, merge: bool = False, **kw: Any
) -> Taylor:
    """A linear op with nonnegative coefficients, each output a sum of at most ``k`` inputs; ``merge``: the op
    needs a batch of inputs, so the stack dimension is merged into the batch dimension."""

    def op(t: Tensor) -> Tensor:  # t: a stack of inputs
        if not merge:
            return fn(t, *rest, **kw)
        y = fn(t.flatten(0, 1), *rest, **kw)
        return y.reshape(t.shape[:2] + y.shape[1:])

    return tm.affine(x, op, op, max(k, 1))


def _rule_reduce(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    dim = _arg(args, kwargs, 1, "dim", None)
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    if kwargs.get("dtype") not in (None, torch.float64):
        raise mode.refuse(f"{name!r} in {kwargs['dtype']}")
    nd = x.a.dim()
    dims = tuple(range(nd)) if dim is None or dim == () else _pair(dim, 1)
    dims = tuple(d - nd if d >= 0 else d for d in dims)  # negative: the stack dim in front is left alone
    k = int(np.prod([x.shape[d] for d in dims])) if dims else 1
    fn = torch.mean if name == "mean" else torch.sum
    return _linear_nonneg(fn, k, x, dim=dims, keepdim=keepdim)


def _rule_avg_pool(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    fn = getattr(F, name)
    nd = int(name[-2])
    if x.a.dim() != nd + 2:
        raise mode.refuse(f"{name!r} on an unbatched input")
    if name.startswith("adaptive"):
        out = _arg(args, kwargs, 1, "output_size")
        ins, outs = x.shape[-nd:], _pair(out, nd)
        k = int(np.prod([math.ceil(i / max(o or i, 1)) + 1 for i, o in zip(ins, outs, strict=True)]))
        return _linear_nonneg(fn, k, x, out, merge=True)
    ks = _pair(_arg(args, kwargs, 1, "kernel_size"), nd)
    kw = {k: v for k, v in kwargs.items() if k != "input"}
    return _linear_nonneg(fn, int(np.prod(ks)), x, *args[1:], merge=True, **kw)


def _rule_dropout(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    p = float(_arg(args, kwargs, 1, "p", 0.5))
    if bool(_arg(args, kwargs, 2, "training", True)) and p > 0:
        raise mode.refuse(f"{name!r} in training mode")
    return x


def _rule_pad(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    pad = _arg(args, kwargs, 1, "pad")
    pmode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if pmode != "constant":
        return x.map(lambda t: F.pad(t, pad, mode=pmode))
    a = F.pad(x.a, pad, value=0.0 if value is None else float(value))
    rest = [F.pad(t, pad, value=0.0) for t in (*x.coef[1:], x.rv, x.rd)]
    return Taylor([a, *rest[:-2]], rest[-2], rest[-1])


def _rule_masked_fill(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    x = mode.as_taylor(_arg(args, kwargs, 0, "input"))
    mask = _const_part(mode, _arg(args, kwargs, 1, "mask"), "masked_fill with a theta-dependent mask")
    value = _const_part(mode, _arg(args, kwargs, 2, "value"), "masked_fill with a theta-dependent value")
    return tm.masked_fill(x, mask, float(value))


def _rule_where(mode: TaylorMode, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Taylor:
    cond = _const_part(mode, _arg(args, kwargs, 0, "condition"), "where with a theta-dependent condition")
    xs = [_arg(args, kwargs, 1, "input"), _arg(args, kwargs, 2, "other")]
    X, Y = (
        mode.as_taylor(v if isinstance(v, Tensor) else torch.as_tensor(v, dtype=torch.float64)) for v in xs
    )
    return tm.where(cond, X, Y)


#: The rule of every supported torch op, by name (in-place and reflected forms map to the same rule).
RULES: dict[str, _Rule] = {
    "add": _rule_add, "sub": _rule_add, "rsub": _rule_add, "subtract": _rule_add,
    "neg": _rule_neg, "negative": _rule_neg, "positive": _rule_positive,
    "mul": _rule_mul, "multiply": _rule_mul,
    "div": _rule_div, "truediv": _rule_div, "true_divide": _rule_div, "divide": _rule_div,
    "rtruediv": _rule_div,
    "matmul": _rule_matmul, "mm": _rule_matmul, "bmm": _rule_matmul, "rmatmul": _rule_matmul,
    "linear": _rule_linear,
    "conv1d": _rule_conv, "conv2d": _rule_conv, "conv3d": _rule_conv,
    "batch_norm": _rule_batch_norm,
    "layer_norm": _rule_layer_norm, "rms_norm": _rule_rms_norm,
    "gelu": _rule_gelu,
    "silu": _smooth_rule("silu"), "sigmoid": _smooth_rule("sigmoid"), "tanh": _smooth_rule("tanh"),
    "erf": _smooth_rule("erf"), "exp": _smooth_rule("exp"), "sqrt": _smooth_rule("sqrt"),
    "rsqrt": _smooth_rule("rsqrt"), "reciprocal": _smooth_rule("reciprocal"),
    "pow": _rule_pow, "square": _rule_square,
    "softmax": _rule_softmax, "scaled_dot_product_attention": _rule_sdpa,
    "relu": _clamp_rule("relu"), "leaky_relu": _clamp_rule("leaky_relu"), "hardtanh": _clamp_rule("hardtanh"),
    "relu6": _clamp_rule("relu6"), "clamp": _clamp_rule("clamp"), "clip": _clamp_rule("clamp"),
    "max_pool2d": _rule_max_pool2d,
    "mean": _rule_reduce, "sum": _rule_reduce,
    "avg_pool1d": _rule_avg_pool, "avg_pool2d": _rule_avg_pool, "avg_pool3d": _rule_avg_pool,
    "adaptive_avg_pool1d": _rule_avg_pool, "adaptive_avg_pool2d": _rule_avg_pool,
    "adaptive_avg_pool3d": _rule_avg_pool,
    "dropout": _rule_dropout, "dropout1d": _rule_dropout, "dropout2d": _rule_dropout,
    "dropout3d": _rule_dropout, "alpha_dropout": _rule_dropout, "feature_alpha_dropout": _rule_dropout,
    "pad": _rule_pad, "masked_fill": _rule_masked_fill, "where": _rule_where,
}  # fmt: skip
