"""What the k:n method reads from the calibration data: execution order, second moments, input samples.

* :func:`execution_order` -- the order in which prunable layers first run on a sample batch (the stem is
  the first, the head the last) and how often each runs per forward.
* :func:`layer_moments` -- ``E[h h^T]`` of the input vectors of one or several layers, in the order of each
  layer's k:n matrix (:func:`mpprune.certify.capture.input_vectors`, the rows that
  :func:`~mpprune.certify.capture.capture_covariance` accumulates), per group of n coordinates or in full,
  accumulated on the fly in float64 (DESIGN, "Performance rules"). All requested layers are captured in one
  pass over the calibration data, and each forward stops as soon as every requested layer has seen its
  input (a layer's statistics never depend on what runs after it).
* :func:`input_samples` -- a seeded uniform sample (without replacement) of at most ``max_samples`` input
  vectors of a layer, for the ℓ∞ cost: every vector gets a random key and the smallest keys are kept, so
  the memory is bounded by ``max_samples`` plus one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mpprune.certify.calibration import iter_calibration
from mpprune.certify.capture import input_vectors, model_device, module_by_name
from mpprune.errors import BadInput

__all__ = ["execution_order", "layer_moments", "input_samples", "group_blocks"]


class _Done(Exception):
    """Raised inside a forward once every captured layer has run (the rest of the forward is not needed)."""


def execution_order(
    model: nn.Module, modules: list[nn.Module], x: torch.Tensor
) -> tuple[list[nn.Module], dict[int, int]]:
    """``modules`` in the order of their first call in ``model(x)`` (modules never called last, in the order
    given) and the number of calls of each (keyed by ``id``)."""
    first: dict[int, int] = {}
    calls: dict[int, int] = {}
    handles = []
    for m in modules:

        def hook(mod: nn.Module, args: Any, _key: int = id(m)) -> None:
            first.setdefault(_key, len(first))
            calls[_key] = calls.get(_key, 0) + 1

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
    return called + [m for m in modules if id(m) not in first], calls


def _stream(
    model: nn.Module,
    names: Sequence[str],
    calibration: Any,
    layout: str,
    consume: Callable[[str, torch.Tensor], None],
    stop_early: bool,
) -> None:
    """Run the calibration batches; call ``consume(name, h)`` with every input-vector matrix of each layer.

    With ``stop_early`` a forward is abandoned once every layer in ``names`` has run in it; only safe for
    layers called once per forward (the caller decides).
    """
    mods = {name: module_by_name(model, name)[1] for name in names}
    seen: set[str] = set()
    handles = []
    for name, mod in mods.items():

        def pre(m: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            h = input_vectors(m, args[0].detach(), layout).double().cpu()
            if not bool(torch.isfinite(h).all()):
                raise BadInput(f"layer {_name!r}: input activations {tuple(h.shape)} contain NaN/Inf")
            consume(_name, h)
            seen.add(_name)
            if stop_early and len(seen) == len(mods):
                raise _Done

        handles.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for x, _ in iter_calibration(calibration):
                seen.clear()
                try:
                    model(x.to(model_device(model)))
                except _Done:
                    pass
    finally:
        for h in handles:
            h.remove()


def layer_moments(
    model: nn.Module,
    groups: dict[str, int | None],
    calibration: Any,
    layout: str,
    *,
    stop_early: bool = True,
) -> dict[str, torch.Tensor]:
    """``{name: E[h h^T]}`` for every layer of ``groups`` (name -> group size n, or None for the full
    (m, m) matrix; per group the result is (G, n, n)), float64, coordinates in ``layout`` order, all captured
    in one pass (module docstring)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(groups, 0)

    def consume(name: str, h: torch.Tensor) -> None:
        n = groups[name]
        m = h.shape[1]
        if n is None:
            add = h.T @ h
        else:
            if m % n:
                raise BadInput(f"layer {name!r}: group size {n} does not divide the input size {m}")
            hg = h.reshape(-1, m // n, n).transpose(0, 1)  # (G, rows, n)
            add = hg.transpose(1, 2) @ hg
        sums[name] = add if name not in sums else sums[name] + add
        counts[name] += h.shape[0]

    _stream(model, list(groups), calibration, layout, consume, stop_early)
    out = {}
    for name in groups:
        if counts[name] == 0:
            raise BadInput(f"layer {name!r} was never called during the forward pass")
        out[name] = sums[name] / counts[name]
    return out


def group_blocks(full: torch.Tensor, n: int) -> torch.Tensor:
    """The (G, n, n) diagonal blocks of an (m, m) matrix."""
    m = full.shape[0]
    if m % n:
        raise BadInput(f"group size {n} does not divide {m}")
    G = m // n
    idx = torch.arange(m).reshape(G, n)
    return full[idx[:, :, None], idx[:, None, :]]


def input_samples(
    model: nn.Module,
    name: str,
    calibration: Any,
    layout: str,
    max_samples: int,
    seed: int = 0,
    *,
    stop_early: bool = True,
) -> torch.Tensor:
    """At most ``max_samples`` input vectors of layer ``name`` (uniform without replacement, seeded),
    shape (N, m), float64."""
    if max_samples < 1:
        raise BadInput(f"max_samples must be >= 1, got {max_samples}")
    gen = torch.Generator().manual_seed(int(seed))
    state: dict[str, torch.Tensor] = {}

    def consume(_: str, h: torch.Tensor) -> None:
        keys = torch.rand(h.shape[0], generator=gen, dtype=torch.float64)
        if "rows" in state:
            h, keys = torch.cat([state["rows"], h]), torch.cat([state["keys"], keys])
        if keys.numel() > max_samples:
            keep = torch.topk(keys, max_samples, largest=False).indices.sort().values
            h, keys = h[keep], keys[keep]
        state["rows"], state["keys"] = h, keys

    _stream(model, [name], calibration, layout, consume, stop_early)
    if "rows" not in state:
        raise BadInput(f"layer {name!r} was never called during the forward pass")
    return state["rows"]
