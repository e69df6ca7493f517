"""The objects a certificate is about: a decomposition ``A = S + R`` of one layer and the network split there.

* :class:`Decomposition` (``S`` kept, ``R`` removed; any split), :func:`MaskDecomposition` (a keep mask) and
  :class:`PruneRestore` (``A = S + Q + P``: keep, restore, remove; digest D7/D8).
* :class:`SplitNetwork`: logits ``z_W(s) = tail(W ψ₁(s) + bias)`` of a calibration set with the layer weight
  ``W`` swapped in, in float64 (an ``nn.Module`` tail is copied to float64/eval by
  :func:`mptheory.lipschitz.float64_tail`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mptheory.lipschitz import float64_tail

__all__ = ["Decomposition", "MaskDecomposition", "PruneRestore", "SplitNetwork"]


# ----------------------------------------------------------------------------------------------------
# validation helpers (shared by the certificate modules)


def _matrix(x: object, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} of shape {a.shape} contains NaN or Inf")
    return a


def _theta(theta: float | Sequence[float] | np.ndarray) -> np.ndarray:
    th = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    if th.ndim != 1 or th.size == 0:
        raise ValueError(f"theta must be a scalar or a non-empty 1-D array, got shape {th.shape}")
    if not np.all(np.isfinite(th)) or np.any(th < 0) or np.any(th > 1):
        raise ValueError(f"theta must lie in [0, 1], got {th}")
    return th


def _check_mask(mask: object, shape: tuple[int, ...]) -> np.ndarray:
    M = np.asarray(mask)
    if M.shape != shape:
        raise ValueError(f"mask must have shape {shape}, got {M.shape}")
    if not np.all((M == 0) | (M == 1)):
        raise ValueError("mask must contain only 0 and 1")
    return M.astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# decompositions


@dataclass(frozen=True)
class Decomposition:
    """``A = S + R`` (S kept, R removed); need not be a mask split (see :func:`MaskDecomposition`)."""

    S: np.ndarray
    R: np.ndarray

    def __post_init__(self) -> None:
        S, R = _matrix(self.S, "S"), _matrix(self.R, "R")
        if S.shape != R.shape:
            raise ValueError(f"S and R must have the same shape, got {S.shape} and {R.shape}")
        object.__setattr__(self, "S", S)
        object.__setattr__(self, "R", R)

    @property
    def A(self) -> np.ndarray:
        return self.S + self.R

    @property
    def is_mask(self) -> bool:
        """True when S and R have disjoint supports (S ⊙ R = 0)."""
        return bool(np.all(self.S * self.R == 0))

    def at(self, theta: float) -> np.ndarray:
        """A_theta = S + theta R."""
        return self.S + float(_theta(theta)[0]) * self.R

    def scaled(self, t: float) -> Decomposition:
        """(S, t R): the same split with the removed part rescaled."""
        return Decomposition(self.S, t * self.R)


def MaskDecomposition(A: np.ndarray, mask: np.ndarray) -> Decomposition:  # noqa: N802
    """S = M ⊙ A (kept where mask == 1), R = (1 - M) ⊙ A."""
    A = _matrix(A, "A")
    M = _check_mask(mask, A.shape)
    return Decomposition(M * A, (1.0 - M) * A)


@dataclass(frozen=True)
class PruneRestore:
    """A = S + Q + P with pairwise disjoint supports: S kept, Q restored, P finally removed (D7/D8)."""

    S: np.ndarray
    Q: np.ndarray
    P: np.ndarray

    def __post_init__(self) -> None:
        S, Q, P = _matrix(self.S, "S"), _matrix(self.Q, "Q"), _matrix(self.P, "P")
        if not S.shape == Q.shape == P.shape:
            raise ValueError(f"S, Q, P must share a shape, got {S.shape}, {Q.shape}, {P.shape}")
        for (x, nx), (y, ny) in (((S, "S"), (Q, "Q")), ((S, "S"), (P, "P")), ((Q, "Q"), (P, "P"))):
            if np.any(x * y != 0):
                raise ValueError(
                    f"{nx} and {ny} must have disjoint supports ({int(np.sum(x * y != 0))} overlaps)"
                )
        object.__setattr__(self, "S", S)
        object.__setattr__(self, "Q", Q)
        object.__setattr__(self, "P", P)

    @property
    def A(self) -> np.ndarray:
        return self.S + self.Q + self.P

    def restore(self) -> Decomposition:
        """(S + Q) + P: keep S and the restored Q, remove P."""
        return Decomposition(self.S + self.Q, self.P)

    def prune_all(self) -> Decomposition:
        """S + (Q + P): remove the whole reservoir R = Q + P."""
        return Decomposition(self.S, self.Q + self.P)


# ----------------------------------------------------------------------------------------------------
# the split network


@dataclass(frozen=True)
class SplitNetwork:
    """A network split at one layer: logits z_W(s) = tail(W psi1(s) + bias).

    ``psi1`` (B, m) layer inputs of the calibration set, ``A`` (n, m) the dense layer weight, ``tail`` a torch
    callable (B, n) -> (B, K) (an ``nn.Module`` is copied to float64/eval), ``labels`` (B,) true classes,
    optional ``bias`` (n,) that stays in every A_theta.
    """

    psi1: np.ndarray
    A: np.ndarray
    tail: Callable[[torch.Tensor], torch.Tensor]
    labels: np.ndarray
    bias: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        psi1 = _matrix(self.psi1, "psi1") if np.size(self.psi1) else None
        if psi1 is None:
            raise ValueError(f"psi1 (calibration set) is empty: shape {np.shape(self.psi1)}")
        A = _matrix(self.A, "A")
        if A.shape[1] != psi1.shape[1]:
            raise ValueError(f"A has shape {A.shape} but psi1 has shape {psi1.shape} (need A.shape[1] == m)")
        labels = np.asarray(self.labels)
        if labels.shape != (psi1.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers of shape ({psi1.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        bias = None
        if self.bias is not None:
            bias = np.asarray(self.bias, dtype=np.float64)
            if bias.shape != (A.shape[0],) or not np.all(np.isfinite(bias)):
                raise ValueError(f"bias must be finite with shape ({A.shape[0]},), got {bias.shape}")
        object.__setattr__(self, "psi1", psi1)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "tail", float64_tail(self.tail))
        z = self.logits()
        if np.any(labels < 0) or np.any(labels >= z.shape[1]):
            raise ValueError(
                f"labels must lie in [0, {z.shape[1]}), got range [{labels.min()}, {labels.max()}]"
            )

    @property
    def n_samples(self) -> int:
        return int(self.psi1.shape[0])

    def layer_output(self, W: np.ndarray | None = None) -> np.ndarray:
        """W psi1 + bias, shape (B, n)."""
        W = self.A if W is None else _matrix(W, "W")
        if W.shape != self.A.shape:
            raise ValueError(f"W must have the layer shape {self.A.shape}, got {W.shape}")
        u = self.psi1 @ W.T
        return u + self.bias if self.bias is not None else u

    def logits(self, W: np.ndarray | None = None) -> np.ndarray:
        """z_W(s) for every sample, float64 (B, K)."""
        with torch.no_grad():
            zt = self.tail(torch.from_numpy(np.ascontiguousarray(self.layer_output(W))))
        z: np.ndarray = zt.detach().double().numpy()
        if z.ndim != 2 or z.shape[0] != self.n_samples:
            raise ValueError(f"tail must return logits of shape ({self.n_samples}, K), got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"tail produced NaN/Inf logits (shape {z.shape})")
        return z

    def with_decomposition_check(self, dec: Decomposition | PruneRestore) -> None:
        if dec.A.shape != self.A.shape:
            raise ValueError(f"decomposition has shape {dec.A.shape}, layer has shape {self.A.shape}")
        if not np.allclose(dec.A, self.A, rtol=1e-12, atol=1e-12):
            raise ValueError("decomposition does not sum to the layer weight A")


