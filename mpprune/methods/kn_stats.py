"""What the k:n method reads from the calibration data: execution order, second moments, input samples.

* :func:`execution_order` -- the order in which prunable layers first run on a sample batch (the stem is
  the first, the head the last).
* :func:`layer_moments` -- ``E[h h^T]`` of a layer's input vectors in the order of its k:n matrix
  (:func:`mpprune.masks.kn_matrix`), per group of n coordinates or in full, streamed by
  :func:`mpprune.certify.capture.capture_covariance` (nothing stored but the sums).
* :func:`input_samples` -- a seeded uniform sample (without replacement) of at most ``max_samples`` input
  vectors of a layer, for the ℓ∞ cost: every vector gets a random key and the smallest keys are kept, so
  the memory is bounded by ``max_samples`` plus one batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpprune.certify.calibration import iter_calibration
from mpprune.certify.capture import capture_covariance, input_vectors, model_device, module_by_name
from mpprune.errors import BadInput

__all__ = ["execution_order", "layer_moments", "input_samples", "group_blocks"]


def execution_order(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[nn.Module]:
    """``modules`` in the order of their first call in ``model(x)``; modules never called come last, in
    the order given."""
    first: dict[int, int] = {}
    handles = []
    for m in modules:

        def hook(mod: nn.Module, args: Any, _key: int = id(m)) -> None:
            first.setdefault(_key, len(first))

        handles.append(m.register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.to(model_device(model)))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    called = sorted((m for m in modules if id(m) in first), key=lambda m: first[id(m)])
    return called + [m for m in modules if id(m) not in first]


def layer_moments(
    model: nn.Module, name: str, calibration: Any, group_size: int | None, layout: str
) -> tuple[torch.Tensor, int]:
    """``(E[h h^T], count)``: (G, n, n) per group of ``group_size`` or (m, m) in full (``None``), float64,
    coordinates in ``layout`` order; ``count`` input vectors were accumulated."""
    sm = capture_covariance(model, name, calibration, group_size, layout=layout)
    mean = sm.mean()
    return (mean[0] if group_size is None else mean), sm.count


def group_blocks(full: torch.Tensor, n: int) -> torch.Tensor:
    """The (G, n, n) diagonal blocks of an (m, m) matrix."""
    m = full.shape[0]
    if m % n:
        raise BadInput(f"group size {n} does not divide {m}")
    G = m // n
    idx = torch.arange(m).reshape(G, n)
    return full[idx[:, :, None], idx[:, None, :]]


def input_samples(
    model: nn.Module, name: str, calibration: Any, layout: str, max_samples: int, seed: int = 0
) -> torch.Tensor:
    """At most ``max_samples`` input vectors of layer ``name`` (uniform without replacement, seeded),
    shape (N, m), float64."""
    if max_samples < 1:
        raise BadInput(f"max_samples must be >= 1, got {max_samples}")
    _, mod = module_by_name(model, name)
    gen = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor | None] = {"rows": None, "keys": None}

    def pre(m: nn.Module, args: tuple[Any, ...]) -> None:
        h = input_vectors(m, args[0].detach(), layout).double().cpu()
        if not bool(torch.isfinite(h).all()):
            raise BadInput(f"layer {name!r}: input activations contain NaN/Inf")
        keys = torch.rand(h.shape[0], generator=gen, dtype=torch.float64)
        rows, old = state["rows"], state["keys"]
        if rows is not None and old is not None:
            h, keys = torch.cat([rows, h]), torch.cat([old, keys])
        if keys.numel() > max_samples:
            keep = torch.topk(keys, max_samples, largest=False).indices.sort().values
            h, keys = h[keep], keys[keep]
        state["rows"], state["keys"] = h, keys

    handle = mod.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for x, _ in iter_calibration(calibration):
                model(x.to(model_device(model)))
    finally:
        handle.remove()
    rows = state["rows"]
    if rows is None:
        raise BadInput(f"layer {name!r} was never called during the forward pass")
    return rows
