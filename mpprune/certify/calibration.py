"""Calibration data for certificates: a re-iterable view of the batches, and the ``(x, y)`` stream.

``calibration`` is any iterable of input batches or ``(inputs, labels)`` pairs, a DataLoader included
(DESIGN, "Public surface"). It must come from a training split (DESIGN, "Data discipline"); a validation
split, an empty set, an empty batch or non-finite inputs are bad input (:class:`mptheory.errors.BadInput`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from mpprune.data import require_train_split
from mptheory.errors import BadInput

__all__ = ["iter_calibration", "materialise"]


def _require_train(calibration: Any) -> None:
    try:
        require_train_split(calibration, "calibration")
    except BadInput:
        raise
    except ValueError as exc:  # the split rule of mpprune.data, reported as the bad input it is
        raise BadInput(str(exc)) from exc


def materialise(calibration: Any) -> Any:
    """A re-iterable view of ``calibration`` (one-shot iterators are turned into a list).

    Raises :class:`~mptheory.errors.BadInput` for None, a non-iterable or a validation/test split.
    """
    if calibration is None:
        raise BadInput("calibration is None: certificates need calibration batches from the train split")
    _require_train(calibration)
    if isinstance(calibration, (torch.Tensor, tuple)):
        return [calibration]
    if not isinstance(calibration, Iterable):
        raise BadInput(f"calibration must be an iterable of batches, got {type(calibration).__name__}")
    if iter(calibration) is calibration:
        return list(calibration)
    return calibration


def iter_calibration(calibration: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y)`` (``y`` may be None) from batches that are ``(x, y)`` pairs or bare ``x``.

    Raises :class:`~mptheory.errors.BadInput` (a ValueError) for a validation/test split, an empty set,
    empty batches or non-finite inputs.
    """
    _require_train(calibration)
    n = 0
    for item in calibration:
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
            x = item[0]
            y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        else:
            raise BadInput(f"calibration batches must be tensors or (x, y) pairs, got {type(item).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise BadInput(f"empty calibration batch of shape {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise BadInput(f"calibration batch of shape {tuple(x.shape)} contains NaN or Inf")
        n += 1
        yield x, y
    if n == 0:
        raise BadInput("empty calibration set: no batches")
