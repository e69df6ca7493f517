"""Empirical spectra in the MP convention: the ascending eigenvalues of the smaller Gram matrix of a weight
matrix W of shape (N, M), divided by max(N, M), in float64 -- one matrix (:func:`eigenvalues_from_matrix`,
with input checks) or a batch of one shape (:func:`batched_eigenvalues`, one LAPACK call). The MP law they
are compared with is :mod:`mptheory.mp`, which re-exports both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["batched_eigenvalues", "eigenvalues_from_matrix"]

FloatArray = NDArray[np.float64]


def eigenvalues_from_matrix(W: Any) -> FloatArray:
    """Ascending float64 eigenvalues of the smaller Gram matrix of W (shape (N, M)) divided by max(N, M).

    Uses ``numpy.linalg.eigvalsh`` on W Wᵀ (N ≤ M) or Wᵀ W (N > M); tiny negative round-off is clipped
    to 0. Accepts numpy arrays, array-likes and torch tensors. Raises ValueError for non-2-D, empty,
    1×n / n×1 or non-finite input, naming the shape.
    """
    if hasattr(W, "detach") and hasattr(W, "cpu"):  # torch tensor, without importing torch
        W = W.detach().cpu().double().numpy()
    if np.iscomplexobj(W) or (hasattr(W, "is_complex") and W.is_complex()):
        raise ValueError(f"W must be a real matrix; got a complex one of shape {np.shape(W)}")
    try:
        A = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"W must be a real 2-D numeric matrix; could not convert: {exc}") from None
    if A.ndim != 2:
        raise ValueError(f"W must be a 2-D matrix (N, M); got an array of shape {A.shape}")
    n, m = A.shape
    if n == 0 or m == 0:
        raise ValueError(f"W must be non-empty; got shape {A.shape}")
    if min(n, m) < 2:
        raise ValueError(f"W must have at least 2 rows and 2 columns for a spectrum; got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        bad = int(np.size(A) - np.count_nonzero(np.isfinite(A)))
        raise ValueError(f"W of shape {A.shape} contains {bad} non-finite (NaN/Inf) entries")
    gram = A @ A.T if n <= m else A.T @ A
    ev = np.linalg.eigvalsh(gram) / float(max(n, m))
    return np.maximum(ev, 0.0)


def batched_eigenvalues(matrices: Sequence[Any]) -> FloatArray:
    """Ascending MP-scale eigenvalues, shape (B, p), of B matrices of one shape (N, M), p = min(N, M).

    The batched twin of :func:`eigenvalues_from_matrix` (same convention: smaller Gram matrix in float64,
    divided by max(N, M), round-off clipped at 0): one stacked ``(B, p, p)`` Gram array and one batched
    LAPACK ``eigvalsh``. Accepts numpy arrays and torch tensors; the caller checks finiteness.
    """
    if len(matrices) == 0:
        raise ValueError("batched_eigenvalues needs at least one matrix")
    mats = [
        m.detach().cpu().double().numpy() if hasattr(m, "detach") else np.asarray(m, dtype=np.float64)
        for m in matrices
    ]
    shape = mats[0].shape
    if len(shape) != 2 or any(m.shape != shape for m in mats):
        shapes = [m.shape for m in mats[:3]]
        raise ValueError(f"batched_eigenvalues needs 2-D matrices of one shape; got {shapes}")
    N, M = shape
    p = min(N, M)
    gram = np.empty((len(mats), p, p), dtype=np.float64)
    for i, A in enumerate(mats):
        np.matmul(A, A.T, out=gram[i]) if N <= M else np.matmul(A.T, A, out=gram[i])
    ev = np.linalg.eigvalsh(gram) / float(max(N, M))  # LAPACK via numpy: faster than torch on CPU
    return np.maximum(ev, 0.0)
