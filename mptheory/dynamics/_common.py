"""Argument checks and small helpers shared by the simulations of :mod:`mptheory.dynamics`."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def _pos_int(name: str, value: int, low: int = 1) -> int:
    if int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    return int(value)


def _prob(name: str, value: float) -> float:
    v = float(value)
    if not (0.0 < v < 1.0):
        raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
    return v


def _matrix(name: str, A: Any) -> Array:
    a = np.asarray(A, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} (shape {a.shape}) contains NaN or Inf")
    return a


def _act(name: str) -> Any:
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    if name == "abs":
        return np.abs
    raise ValueError(f"activation must be 'relu' or 'abs'; got {name!r}")
