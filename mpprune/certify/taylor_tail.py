"""Sound slope enclosures of a :class:`~mpprune.certify.segment.Segment`'s tail, one theta-interval a sample.

:meth:`TaylorTail.enclose` runs the segment's model (its own ``forward``: timm's, HF's, a user's) once on the
bound batch under :class:`~mpprune.certify.taylor_mode.TaylorMode`. The pruned layer's output on the
interval ``[lo_s, hi_s]`` of sample ``s`` is seeded as the exact Taylor model in
``t = (theta - m_s) / delta_s`` of ``S psi_1 + b + theta R psi_1`` (with the rounding error of that
layer's own computation in its remainder), every later op on a theta-dependent tensor goes through its rule,
and the logits come out as a model ``z`` with ``sup_{|t| <= 1} |z'(t)| <= slope_sup``. Since
``dz/dtheta = z'(t) / delta_s``, ``slope_sup / delta_s`` bounds ``sup_{theta in [lo_s, hi_s]}
||dz/dtheta||_inf``: the sound ``eta`` of that piece of the segment.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.certify import taylor as tm
from mpprune.certify.capture import layer_removed_output, layer_weight, logits_of
from mpprune.certify.segment import Segment
from mpprune.certify.taylor import Taylor
from mpprune.certify.taylor_mode import TaylorMode, UnsupportedTailOp

__all__ = ["DEFAULT_ORDER", "TaylorTail"]

#: the order of the Taylor models: the remainder, the only part propagated by absolute values, shrinks like
#: delta^(order+1) on a theta-interval of half-width delta (measured on the MNIST ViT: order 1 needs ~1000
#: pieces of [0, 1] where order 5 needs a few)
DEFAULT_ORDER = 5


class TaylorTail:
    """Sound enclosures of the slope of ``seg``'s tail over one theta-interval per bound sample.

    ``order``: the order of the Taylor models (>= 1). Fixed weights' ``|W|`` are cached between runs.
    """

    def __init__(self, seg: Segment, order: int = DEFAULT_ORDER) -> None:
        if int(order) < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.seg = seg
        self.order = int(order)
        self.abs_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        layer = seg.layer
        w = layer_weight(layer)
        self.fan_in = int(np.prod(w.shape[1:]))
        self.S_abs = w.detach().abs()
        self.R_abs = seg.R.abs()
        bias = getattr(layer, "bias", None)
        self.bias_abs = None if bias is None else bias.detach().abs()

    def _seed(
        self, mode: TaylorMode, psi1: torch.Tensor, out: torch.Tensor, m: torch.Tensor, delta: torch.Tensor
    ) -> None:
        """Register the layer's output ``out = S psi_1 + b + m R psi_1`` (as computed) as the model
        ``out + delta R psi_1 t`` whose remainder holds the rounding error of ``out`` and of ``R psi_1``."""
        layer = self.seg.layer
        shape = (-1,) + (1,) * (out.dim() - 1)
        m, delta = m.to(out).reshape(shape), delta.to(out).reshape(shape)
        d = layer_removed_output(layer, psi1, self.seg.R)
        pa = psi1.abs()
        s_abs = layer_removed_output(layer, pa, self.S_abs)
        r_abs = layer_removed_output(layer, pa, self.R_abs)
        if self.bias_abs is not None:
            conv = not isinstance(layer, nn.Linear)
            s_abs = s_abs + (self.bias_abs.reshape((-1,) + (1,) * (out.dim() - 2)) if conv else self.bias_abs)
        g = tm.gamma(self.fan_in + 3)
        b = delta * d
        err_b = delta * g * r_abs + tm.U * b.abs()  # R psi_1 (and the product with delta) rounded
        err_a = g * (s_abs + m * r_abs) + 2 * tm.U * out.abs()  # S psi_1 + b, m R psi_1 and the sum rounded
        z = torch.zeros_like(out)
        coef = [out, b] + [z] * (self.order - 1)
        mode.register(out, Taylor(coef, tm._up(err_a + err_b, 2), tm._up(err_b, 2)))

    def enclose(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(upper, mid_slope, exact_mid)`` per bound sample for the theta-intervals ``[lo, hi]``.

        ``upper >= sup_{theta in [lo, hi]} ||dz/dtheta||_inf`` (sound; +inf where the enclosure blew up);
        ``mid_slope`` = ``||dz/dtheta||_inf`` at the midpoint, a lower bound on that sup when ``exact_mid``
        (False when a piecewise-linear op straddled a break: ``mid_slope`` is then no slope)."""
        seg = self.seg
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        m = 0.5 * (lo + hi)
        # [m - delta, m + delta] must contain [lo, hi] despite the rounding of m and delta
        delta = 0.5 * (hi - lo) * (1 + 4 * tm.U) + 4 * tm.U * np.maximum(np.abs(lo), np.abs(hi)) + tm.TINY
        mode = TaylorMode(seg.name, self.order, self.abs_cache)
        state: dict[str, Any] = {"calls": 0}
        mt, dt = torch.from_numpy(m), torch.from_numpy(delta)

        def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if mode.get(args[0]) is not None:
                raise UnsupportedTailOp(
                    f"layer {seg.name!r} is applied to its own output (z is polynomial in theta there); "
                    "the taylor_bound needs the layer once per forward pass"
                )
            state["psi1"] = args[0]

        def post(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            state["calls"] += 1
            if state["calls"] > 1:
                raise UnsupportedTailOp(f"layer {seg.name!r} is called more than once per forward pass")
            self._seed(mode, state["psi1"], out, mt, dt)

        def done(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            z = logits_of(out)
            x = mode.get(z)
            state["z"] = Taylor.constant(z, self.order) if x is None else x
            mode.active = False
            # the centres may be +-inf/NaN where an enclosure blew up (the bound is then +inf); the segment's
            # own logits check must not read that as bad input
            return torch.zeros_like(out) if isinstance(out, torch.Tensor) else None

        handles = [
            seg.layer.register_forward_pre_hook(pre),
            seg.layer.register_forward_hook(post),
            seg.model.register_forward_hook(done),
        ]
        try:
            with mode:
                seg.logits(m)
        finally:
            for h in handles:
                h.remove()
        z: Taylor = state["z"]
        B = z.shape[0]
        sup = z.slope_sup().reshape(B, -1).amax(dim=1)
        mid = z.coef[1].abs().reshape(B, -1).amax(dim=1)
        finite = torch.isfinite(z.a).reshape(B, -1).all(1) & torch.isfinite(z.coef[1]).reshape(B, -1).all(1)
        up = torch.where(finite & ~torch.isnan(sup), sup, torch.full_like(sup, math.inf)).cpu().numpy()
        upper = up / delta * (1 + 4 * tm.U)
        return upper, mid.cpu().numpy() / delta, mode.exact_centre
