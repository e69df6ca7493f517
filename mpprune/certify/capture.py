"""Capture: what a layer sees on the calibration data, streamed with forward hooks (nothing stored).

* :func:`capture_layer` -- per sample the dense logits and ``||R psi_1(s)||_inf``, the largest
  ``|layer_R(psi_1)|`` over every output coordinate of the sample (all tokens of a token model, all
  positions of a conv), where ``layer_R`` (:func:`layer_removed_output`) is the layer run functionally
  with weight ``R`` and no bias.
* :func:`capture_covariance` -- running second moments ``E[h h^T]`` of a layer's input vectors (token rows,
  im2col patches), per group of consecutive input coordinates (DESIGN, "Performance rules": accumulated on
  the fly). The coordinates are ordered as the layer's k:n matrix (:func:`mpprune.masks.kn_matrix`):
  ``layout="matrix"`` is ``F.unfold`` order, ``layout="channel"`` kernel-position-major (a group is n input
  channels at one kernel position: hardware-legal conv k:n). :func:`input_vectors` gives those rows.

Also the small model helpers the certificate engine shares: a layer by name, its weight, the model's device
and the logits of a model output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpprune.certify.calibration import iter_calibration
from mptheory.errors import BadInput, Refusal

__all__ = [
    "LayerCapture",
    "SecondMoments",
    "capture_covariance",
    "capture_layer",
    "input_vectors",
    "layer_removed_output",
    "layer_weight",
    "logits_of",
    "model_device",
    "module_by_name",
    "per_sample_inf",
]


def module_by_name(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` (a dotted name or the module itself) in ``model``."""
    if isinstance(layer, str):
        mods = dict(model.named_modules())
        if layer not in mods:
            raise BadInput(f"layer {layer!r} not found in the model")
        return layer, mods[layer]
    for name, m in model.named_modules():
        if m is layer:
            return name, m
    raise BadInput(f"layer {type(layer).__name__} is not a submodule of the model")


def layer_weight(mod: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor of ``mod`` (BadInput when it has none)."""
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise BadInput(f"module {type(mod).__name__} has no weight tensor")
    return w


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def layer_removed_output(layer: nn.Module, psi1: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``layer_R(psi1)``: the layer run functionally with weight ``R`` and no bias (Linear, Conv1d/2d/3d)."""
    w = layer_weight(layer)
    if tuple(R.shape) != tuple(w.shape):
        raise BadInput(f"R has shape {tuple(R.shape)}, layer weight has shape {tuple(w.shape)}")
    R = R.to(dtype=psi1.dtype, device=psi1.device)
    if isinstance(layer, nn.Linear):
        return F.linear(psi1, R)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(psi1, R, None)
    raise BadInput(f"unsupported layer type {type(layer).__name__} (need Linear or Conv)")


def per_sample_inf(t: torch.Tensor) -> torch.Tensor:
    """``||t[s]||_inf`` over every coordinate of each sample (first dimension), shape (B,)."""
    return t.reshape(t.shape[0], -1).abs().amax(dim=1)


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, an object with ``.logits``, or a tuple led by one)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise BadInput(f"model output of type {type(out).__name__} is not a logits tensor")


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
    name, mod = module_by_name(model, layer)
    norms: list[torch.Tensor] = []
    shape: list[tuple[int, ...]] = []

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if not bool(torch.isfinite(x).all()):
            raise BadInput(f"layer {name!r}: input activations of shape {tuple(x.shape)} contain NaN/Inf")
        shape.append(tuple(x.shape))
        if R is not None:
            norms.append(per_sample_inf(layer_removed_output(m, x.detach(), R.detach())).double().cpu())

    handle = mod.register_forward_pre_hook(pre)
    logits, labels = [], []
    try:
        with torch.no_grad():
            for x, y in iter_calibration(calibration):
                z = logits_of(model(x.to(model_device(model))))
                logits.append(z.double().cpu())
                if y is not None:
                    labels.append(y.cpu())
    finally:
        handle.remove()
    if not shape:
        raise BadInput(f"layer {name!r} was never called during the forward pass")
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
            raise BadInput(f"layer {self.name!r}: no vectors accumulated")
        return self.sums / self.count

    def full(self) -> torch.Tensor:
        """Block-diagonal (in, in) matrix of the per-group second moments."""
        return torch.block_diag(*self.mean())


def input_vectors(mod: nn.Module, x: torch.Tensor, layout: str = "matrix") -> torch.Tensor:
    """Input vectors of a layer as rows: token rows for Linear, im2col patches for Conv2d.

    ``layout="matrix"``: coordinates in ``F.unfold`` order (channel-major), the columns of the matrix view;
    ``layout="channel"``: kernel-position-major (``p * C_in + c``), the columns of
    ``mpprune.masks.kn_matrix(weight, "channel")``. The same for a Linear or a 1x1 conv.
    """
    if layout not in ("matrix", "channel"):
        raise BadInput(f"layout must be 'matrix' or 'channel', got {layout!r}")
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise Refusal(f"covariance capture: Conv2d with padding={mod.padding!r}/{mod.padding_mode}")
        cols = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (B, C*k, L)
        g = mod.groups
        if g != 1:
            raise Refusal(f"covariance capture: grouped Conv2d (groups={g}) is not supported")
        if layout == "channel":
            b, ck, L = cols.shape
            cin = mod.in_channels
            cols = cols.reshape(b, cin, ck // cin, L).transpose(1, 2).reshape(b, ck, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise Refusal(f"covariance capture: unsupported layer type {type(mod).__name__}")


def capture_covariance(
    model: nn.Module,
    layer: nn.Module | str,
    calibration: Any,
    group_size: int | None = None,
    *,
    layout: str = "matrix",
) -> SecondMoments:
    """Accumulate ``E[h h^T]`` of ``layer``'s input vectors on the fly (float64), per group of
    ``group_size`` consecutive input coordinates (the k:n groups) in ``layout`` order
    (:func:`input_vectors`); nothing else is stored."""
    if layout not in ("matrix", "channel"):
        raise BadInput(f"layout must be 'matrix' or 'channel', got {layout!r}")
    name, mod = module_by_name(model, layer)
    w_in = layer_weight(mod)
    m_in = int(np.prod(w_in.shape[1:]))
    n = m_in if group_size is None else int(group_size)
    if n < 1 or m_in % n:
        raise BadInput(f"layer {name!r}: group_size {group_size} does not divide the input size {m_in}")
    G = m_in // n
    state: dict[str, Any] = {"sums": torch.zeros(G, n, n, dtype=torch.float64), "count": 0}

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        h = input_vectors(m, args[0].detach(), layout).double().cpu()
        if h.shape[1] != m_in:
            raise BadInput(f"layer {name!r}: input vectors have {h.shape[1]} entries, expected {m_in}")
        if not bool(torch.isfinite(h).all()):
            raise BadInput(f"layer {name!r}: input activations contain NaN/Inf")
        hg = h.reshape(-1, G, n)
        state["sums"] += torch.einsum("bgi,bgj->gij", hg, hg)
        state["count"] += h.shape[0]

    handle = mod.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for x, _ in iter_calibration(calibration):
                model(x.to(model_device(model)))
    finally:
        handle.remove()
    return SecondMoments(name, n, state["sums"], int(state["count"]))
