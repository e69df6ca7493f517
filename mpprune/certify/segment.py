"""The segment engine: the model along ``A_theta = S + theta R``, with the theta-independent prefix cached.

:class:`Segment` is a float64 copy of the dense model whose pruned layer computes
``S psi_1 + b + theta_s R psi_1`` (one theta per sample). It gives the logits at any theta and, with
forward-mode AD under a :class:`~mpprune.certify.trace.TailTrace`, the slope ``||dz/dtheta||_inf`` per
sample together with the trace of the tail (breakpoints, PL check, product of norms). The L_s estimators of
:mod:`mpprune.certify.estimators` are built on these two runs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from mpprune.certify.capture import (
    layer_removed_output,
    layer_weight,
    logits_of,
    model_device,
    module_by_name,
    per_sample_inf,
)
from mpprune.certify.trace import TailTrace
from mptheory.errors import BadInput, Refusal

__all__ = ["Segment"]


class Segment:
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
        _, self.layer = module_by_name(self.model, name)
        if not isinstance(self.layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise BadInput(f"layer {name!r}: unsupported type {type(self.layer).__name__}")
        self.device = model_device(self.model)
        with torch.no_grad():
            layer_weight(self.layer).copy_(S.to(layer_weight(self.layer)))
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
        self._abs_weights: dict[int, torch.Tensor] = {}
        self._trace: TailTrace | None = None

    # -- the layer and the cached prefix ---------------------------------------------------------
    def _forward_layer(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        k = self._layer_calls
        self._layer_calls += 1
        if k < len(self._layer_cache):
            out, d = self._layer_cache[k]
        else:
            if not bool(torch.isfinite(fwAD.unpack_dual(x).primal).all()):
                raise BadInput(
                    f"layer {self.name!r}: input activations of shape {tuple(x.shape)} contain NaN/Inf"
                )
            out = self._layer_forward(x, *args, **kwargs)
            d = layer_removed_output(self.layer, x, self.R)
            if self._recording:
                self._rec_layer.append((out.detach(), d.detach()))
        if self.theta is None or out.shape[0] != self.theta.shape[0]:
            raise Refusal(f"layer {self.name!r}: output batch dim {out.shape[0]} is not the sample batch")
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
        out = fwAD.make_dual(rp, dp.clone() if rt is None else rt + dp)
        if self._trace is not None and rt is None:
            self._trace.seed(out)
        return out

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
            raise RuntimeError(f"layer {self.name!r}: no batch bound")
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
                z = logits_of(self._run(1.0)).double().cpu()
        finally:
            for h in handles:
                h.remove()
            self._recording = False
        if not self._rec_layer:
            raise BadInput(f"layer {self.name!r} was never called during the forward pass")
        self.removed = per_sample_inf(self._rec_layer[-1][1]).cpu()
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
            raise BadInput(f"layer {self.name!r}: logits contain NaN/Inf")
        return z

    # -- runs on the bound batch -----------------------------------------------------------------
    def logits(self, theta: float | np.ndarray) -> torch.Tensor:
        """Logits of the bound batch at ``theta`` (scalar or one per sample), float64."""
        self.dual = False
        with torch.no_grad():
            z = logits_of(self._run(theta)).double().cpu()
        if not bool(torch.isfinite(z).all()):
            raise BadInput(f"layer {self.name!r}: logits contain NaN/Inf")
        return z

    def slope(
        self, theta: np.ndarray, breakpoints: bool, delta: np.ndarray | None = None
    ) -> tuple[torch.Tensor, TailTrace]:
        """``||dz/dtheta||_inf`` per bound sample at ``theta`` (B,), with the tail trace of that run.

        With ``delta`` (B,) the trace also bounds ``sup ||dz/dtheta||_inf`` over ``[theta - delta,
        theta + delta]`` per sample (``trace.upper``; :mod:`~mpprune.certify.pl_enclosure`)."""
        if self.x is None:
            raise RuntimeError(f"layer {self.name!r}: no batch bound")
        dl = None if delta is None else torch.as_tensor(np.asarray(delta, dtype=np.float64))
        trace = TailTrace(self.x.shape[0], breakpoints, self._plain, self._norms, dl, self._abs_weights)
        self.dual = True
        self._trace = trace
        try:
            with torch.no_grad(), fwAD.dual_level():
                with trace:
                    out = logits_of(self._run(theta))
                trace.finish(out)
                tangent = fwAD.unpack_dual(out).tangent
                if self._non_pl is not None:
                    trace.non_pl.add(self._non_pl)
                if self._layer_calls > 1:
                    trace.non_seq.add(f"layer {self.name!r} called {self._layer_calls} times")
                if tangent is None:
                    tangent = torch.zeros_like(fwAD.unpack_dual(out).primal)
        finally:
            self.dual = False
            self._trace = None
        return per_sample_inf(tangent.detach()).double().cpu(), trace
