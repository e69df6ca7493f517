"""The k:n mask search: one pattern per (row, group) cell, exact where it can be, with bounded memory.

Every cell of a k:n matrix (row i, group g of n consecutive inputs; digest §3.7-3.8) holds source values
``u`` (n,) and chooses the set D of ``n - k`` entries it removes, minimising the quadratic cost ::

    cost(D) = sum_{a, b in D} Q_ab,     Q = diag(u) C_g diag(u) + diag(l),

i.e. ``r^T C_g r + l . d`` with ``r = u`` on D (zero elsewhere) and ``d`` the removed indicator. ``C_g`` is
the second-moment matrix of the group's inputs (the certificate cost; digest §3.7 step 4), ``C_g = I`` gives
magnitude (``sum_D u_a^2``) and ``l`` holds linear terms (the Hamming prior toward a given mask). The ℓ∞
variant (:func:`select_kn_inf`) replaces ``r^T C_g r`` by ``max_x (r . h_g(x))^2`` over captured input
vectors.

Methods (:func:`select_kn`):

* ``"separable"`` -- ``second`` is None (magnitude, with or without linear terms): the cost is a sum over
  entries, so the ``n - k`` smallest scores are removed (exact; ties broken by position).
* ``"enumerate"`` -- all C(n, k) patterns, streamed in chunks (DESIGN, "Performance rules": no
  ``patterns x rows x groups`` tensor is formed). Per batch of groups the upper triangle of Q is one matrix
  (cells x n(n+1)/2) and a chunk of patterns is its pair-indicator matrix; a matrix product gives the chunk's
  costs and a running argmin keeps the best (the first minimal pattern in enumeration order wins ties).
  Memory: about ``chunk_elems`` float64 values per step, whatever the layer size.
* ``"local"`` -- for C(n, k) above ``max_patterns`` (n = 32): greedy plus best-improvement single swaps
  (remove b, restore a) from three starts, the magnitude pattern (largest ``|u|`` kept), the diagonal
  pattern (largest ``Q_aa`` kept) and a greedy forward removal; the best end point wins. Each swap lowers the
  cost, so the result is never above any start -- in particular never above the magnitude pattern on the
  same objective. It is not guaranteed optimal (``tests/test_kn_search.py`` measures it against brute force).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from mpprune.errors import BadInput

__all__ = [
    "DEFAULT_MAX_PATTERNS",
    "DEFAULT_CHUNK_ELEMS",
    "KnSelection",
    "n_patterns",
    "kn_patterns",
    "kn_cost",
    "min_cost",
    "select_kn",
    "select_kn_inf",
    "SEARCH_METHODS",
]

#: Largest C(n, k) enumerated exactly by ``method="auto"`` (every pattern with n <= 16: C(16, 8) = 12,870).
DEFAULT_MAX_PATTERNS = 16_384
#: Float64 values held per streaming step (16 Mi values = 128 MiB), whatever the layer size.
DEFAULT_CHUNK_ELEMS = 1 << 24
#: The choices of ``method``.
SEARCH_METHODS = ("auto", "enumerate", "local")
_PATTERN_CHUNK = 2048


@dataclass
class KnSelection:
    """The chosen patterns: ``keep`` (rows, G, n) bool with exactly k True per cell, ``cost`` (rows, G)
    float64 (the objective of the chosen pattern), ``method`` used and ``patterns`` = C(n, k)."""

    keep: torch.Tensor
    cost: torch.Tensor
    method: str
    patterns: int


def n_patterns(k: int, n: int) -> int:
    """C(n, k): the number of k:n patterns of one group."""
    return math.comb(n, k)


def kn_patterns(k: int, n: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Kept-entry indicators of the k:n patterns ``start:stop`` in lexicographic order of the kept sets
    (``itertools.combinations(range(n), k)``), bool of shape (count, n)."""
    _check_kn(k, n)
    combos = itertools.islice(itertools.combinations(range(n), k), start, stop)
    idx = torch.tensor(list(combos), dtype=torch.long).reshape(-1, k)
    out = torch.zeros(idx.shape[0], n, dtype=torch.bool)
    if idx.numel():
        out.scatter_(1, idx, True)
    return out


def _check_kn(k: int, n: int) -> None:
    if not (isinstance(k, int) and isinstance(n, int) and 1 <= k < n):
        raise BadInput(f"k:n search needs integers 1 <= k < n, got k={k!r}, n={n!r}")


def _check_inputs(
    u: torch.Tensor, k: int, second: torch.Tensor | None, linear: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if u.dim() != 3:
        raise BadInput(f"u must have shape (rows, groups, n), got {tuple(u.shape)}")
    rows, G, n = u.shape
    _check_kn(k, n)
    u = u.detach().to(torch.float64)
    if not bool(torch.isfinite(u).all()):
        raise BadInput(f"k:n search: source values of shape {tuple(u.shape)} contain NaN/Inf")
    if second is not None:
        if tuple(second.shape) != (G, n, n):
            raise BadInput(f"second moments must have shape {(G, n, n)}, got {tuple(second.shape)}")
        second = second.detach().to(torch.float64)
        if not bool(torch.isfinite(second).all()):
            raise BadInput("k:n search: second moments contain NaN/Inf")
    if linear is not None:
        if tuple(linear.shape) != tuple(u.shape):
            raise BadInput(f"linear terms must have shape {tuple(u.shape)}, got {tuple(linear.shape)}")
        linear = linear.detach().to(torch.float64)
    return u, second, linear


def kn_cost(
    u: torch.Tensor,
    keep: torch.Tensor,
    second: torch.Tensor | None = None,
    linear: torch.Tensor | None = None,
) -> torch.Tensor:
    """The objective of given patterns: ``r^T C_g r + l . d`` per cell, shape (rows, G), float64
    (``C_g = I`` when ``second`` is None)."""
    u64 = u.detach().to(torch.float64)
    d = (~keep.bool()).to(torch.float64)
    r = u64 * d
    if second is None:
        cost = (r * r).sum(-1)
    else:
        cost = torch.einsum("rga,gab,rgb->rg", r, second.to(torch.float64), r)
    if linear is not None:
        cost = cost + (linear.to(torch.float64) * d).sum(-1)
    return cost


def _group_batch(rows: int, per_cell: int, chunk_elems: int, G: int) -> int:
    return max(1, min(G, chunk_elems // max(1, rows * per_cell)))


def _q_matrix(u: torch.Tensor, second: torch.Tensor, linear: torch.Tensor | None) -> torch.Tensor:
    """Q = diag(u) C diag(u) + diag(l) per cell: (rows, gb, n, n)."""
    q = u[..., :, None] * u[..., None, :] * second[None]
    if linear is not None:
        q = q + torch.diag_embed(linear)
    return q


def select_kn(
    u: torch.Tensor,
    k: int,
    second: torch.Tensor | None = None,
    linear: torch.Tensor | None = None,
    *,
    method: str = "auto",
    max_patterns: int = DEFAULT_MAX_PATTERNS,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    max_swaps: int | None = None,
) -> KnSelection:
    """The k:n pattern of every cell minimising ``r^T C_g r + l . d`` (module docstring).

    Args:
        u: source values, (rows, G, n).
        k: entries kept per group (1 <= k < n).
        second: per-group second moments C_g, (G, n, n); None = magnitude (C_g = I, separable).
        linear: linear terms l on the removed indicator, (rows, G, n), or None.
        method: ``"auto"`` (enumerate when C(n, k) <= ``max_patterns``, else local), ``"enumerate"``
            (exact, any size: slow for huge C(n, k)) or ``"local"`` (greedy + swaps).
        chunk_elems: float64 values held per streaming step (bounds memory).
        max_swaps: swap iterations of the local search (default 4 n).
    """
    u, second, linear = _check_inputs(u, k, second, linear)
    if method not in SEARCH_METHODS:
        raise BadInput(f"k:n search method must be one of {SEARCH_METHODS}, got {method!r}")
    rows, G, n = u.shape
    total = n_patterns(k, n)
    if second is None:
        score = u * u if linear is None else u * u + linear
        keep = _keep_largest(score, k)
        return KnSelection(keep, kn_cost(u, keep, None, linear), "separable", total)
    if method == "auto":
        method = "enumerate" if total <= max_patterns else "local"
    if method == "enumerate":
        found, _ = _enumerate(u, k, second, linear, chunk_elems)
        assert found is not None
        keep = found
    else:
        keep = _local(u, k, second, linear, chunk_elems, max_swaps if max_swaps is not None else 4 * n)
    return KnSelection(keep, kn_cost(u, keep, second, linear), method, total)


def min_cost(
    u: torch.Tensor,
    k: int,
    second: torch.Tensor | None = None,
    linear: torch.Tensor | None = None,
    *,
    method: str = "auto",
    max_patterns: int = DEFAULT_MAX_PATTERNS,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> torch.Tensor:
    """The objective of the pattern :func:`select_kn` chooses, (rows, G), without forming the masks (the
    exact minimum when enumerating; the permutation search's group cost)."""
    if second is not None and method != "local":
        u64, sec, lin = _check_inputs(u, k, second, linear)
        if sec is not None and (method == "enumerate" or n_patterns(k, u64.shape[2]) <= max_patterns):
            return _enumerate(u64, k, sec, lin, chunk_elems, need_keep=False)[1]
    return select_kn(
        u, k, second, linear, method=method, max_patterns=max_patterns, chunk_elems=chunk_elems
    ).cost


def _keep_largest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest scores of each cell; the removed ones are the n - k smallest, ties by position."""
    n = score.shape[-1]
    order = torch.argsort(score, dim=-1, stable=True)
    keep = torch.ones_like(score, dtype=torch.bool)
    keep.scatter_(-1, order[..., : n - k], False)
    return keep


class _Scan:
    """Streams the C(n, k) patterns in chunks against per-cell upper-triangular Q (cells, T)."""

    def __init__(self, k: int, n: int, chunk_elems: int) -> None:
        self.k, self.n = k, n
        self.total = n_patterns(k, n)
        self.iu = torch.triu_indices(n, n)
        self.diag = self.iu[0] == self.iu[1]
        self.weight = torch.where(self.diag, 1.0, 2.0).to(torch.float64)
        self.T = int(self.iu.shape[1])
        self.chunk = min(self.total, _PATTERN_CHUNK)
        self.starts = list(range(0, self.total, self.chunk))
        self.chunk_elems = chunk_elems
        self._cached: dict[int, torch.Tensor] = {}

    def features(self, start: int) -> torch.Tensor:
        """Pair indicators of the removed sets of one chunk, (T, c); kept in memory when small."""
        if start in self._cached:
            return self._cached[start]
        d = (~kn_patterns(self.k, self.n, start, start + self.chunk)).to(torch.float64)
        feats = (d[:, self.iu[0]] * d[:, self.iu[1]]).T.contiguous()
        if len(self.starts) * feats.numel() <= self.chunk_elems:
            self._cached[start] = feats
        return feats

    def q_tri(self, u: torch.Tensor, second: torch.Tensor, linear: torch.Tensor | None) -> torch.Tensor:
        """Upper triangle of Q = diag(u) C diag(u) + diag(l), off-diagonal entries doubled: (..., T)."""
        a, b = self.iu
        qt = u[..., a] * u[..., b] * (second[:, a, b] * self.weight)
        if linear is not None:
            qt[..., self.diag] += linear
        return qt

    def cells_per_step(self) -> int:
        return max(1, self.chunk_elems // max(self.T, self.chunk))

    def scan(self, qt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(min cost, pattern number) of every cell; the first minimal pattern in order wins ties."""
        best = torch.full((qt.shape[0],), math.inf, dtype=torch.float64)
        best_idx = torch.zeros(qt.shape[0], dtype=torch.long)
        for start in self.starts:
            val, idx = (qt @ self.features(start)).min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            best_idx = torch.where(better, idx + start, best_idx)
        return best, best_idx

    def patterns_at(self, idx: torch.Tensor) -> torch.Tensor:
        """The kept indicators of pattern numbers ``idx`` (regenerating only the chunks they fall in)."""
        out = torch.zeros(idx.shape[0], self.n, dtype=torch.bool)
        which = torch.div(idx, self.chunk, rounding_mode="floor")
        for c in torch.unique(which).tolist():
            sel = which == c
            kept = kn_patterns(self.k, self.n, int(c) * self.chunk, (int(c) + 1) * self.chunk)
            out[sel] = kept[idx[sel] - int(c) * self.chunk]
        return out


def _enumerate(
    u: torch.Tensor,
    k: int,
    second: torch.Tensor,
    linear: torch.Tensor | None,
    chunk_elems: int,
    need_keep: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    rows, G, n = u.shape
    sc = _Scan(k, n, chunk_elems)
    gb = max(1, min(G, sc.cells_per_step() // rows))
    keep = torch.zeros(rows, G, n, dtype=torch.bool) if need_keep else None
    cost = torch.zeros(rows, G, dtype=torch.float64)
    for g0 in range(0, G, gb):
        g1 = min(G, g0 + gb)
        qt = sc.q_tri(u[:, g0:g1], second[g0:g1], None if linear is None else linear[:, g0:g1])
        best, best_idx = sc.scan(qt.reshape(-1, sc.T))
        cost[:, g0:g1] = best.reshape(rows, g1 - g0)
        if keep is not None:
            keep[:, g0:g1] = sc.patterns_at(best_idx).reshape(rows, g1 - g0, n)
    return keep, cost


def _local(
    u: torch.Tensor,
    k: int,
    second: torch.Tensor,
    linear: torch.Tensor | None,
    chunk_elems: int,
    max_swaps: int,
) -> torch.Tensor:
    rows, G, n = u.shape
    gb = _group_batch(rows, 4 * n * n, chunk_elems, G)
    keep = torch.zeros(rows, G, n, dtype=torch.bool)
    for g0 in range(0, G, gb):
        g1 = min(G, g0 + gb)
        ub = u[:, g0:g1].reshape(-1, n)
        lin = None if linear is None else linear[:, g0:g1]
        lb = None if lin is None else lin.reshape(-1, n)
        q = _q_matrix(u[:, g0:g1], second[g0:g1], lin).reshape(-1, n, n)
        diag = torch.diagonal(q, dim1=-2, dim2=-1)
        starts = [
            ~_keep_largest(ub * ub if lb is None else ub * ub + lb, k),  # magnitude (removed indicator)
            ~_keep_largest(diag, k),
            _greedy_removal(q, n - k),
        ]
        best_d, best_c = None, None
        for d0 in starts:
            d = _swap_descent(q, d0, max_swaps)
            c = _quad(q, d)
            if best_c is None or best_d is None:
                best_d, best_c = d, c
            else:
                better = c < best_c
                best_d = torch.where(better[:, None], d, best_d)
                best_c = torch.where(better, c, best_c)
        assert best_d is not None
        keep[:, g0:g1] = (~best_d).reshape(rows, g1 - g0, n)
    return keep


def _quad(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    df = d.to(q.dtype)
    return torch.einsum("ca,cab,cb->c", df, q, df)


def _greedy_removal(q: torch.Tensor, m: int) -> torch.Tensor:
    """Remove m entries one at a time, each with the smallest marginal cost Q_aa + 2 sum_{b in D} Q_ab."""
    cells, n, _ = q.shape
    d = torch.zeros(cells, n, dtype=torch.bool)
    diag = torch.diagonal(q, dim1=-2, dim2=-1)
    s = torch.zeros(cells, n, dtype=q.dtype)
    ar = torch.arange(cells)
    for _ in range(m):
        marginal = torch.where(d, math.inf, diag + 2 * s)
        a = marginal.argmin(dim=1)
        d[ar, a] = True
        s = s + q[ar, :, a]
    return d


def _swap_descent(q: torch.Tensor, d: torch.Tensor, max_swaps: int) -> torch.Tensor:
    """Best-improvement single swaps (restore a in D, remove b not in D) while the cost drops."""
    d = d.clone()
    cells, n, _ = q.shape
    diag = torch.diagonal(q, dim1=-2, dim2=-1)
    scale = diag.abs().sum(dim=1) + 1e-300
    ar = torch.arange(cells)
    for _ in range(max_swaps):
        s = torch.einsum("cab,cb->ca", q, d.to(q.dtype))
        out_term = diag - 2 * s  # restoring a (a in D)
        in_term = diag + 2 * s  # removing b (b not in D)
        delta = out_term[:, :, None] + in_term[:, None, :] - 2 * q
        valid = d[:, :, None] & ~d[:, None, :]
        delta = torch.where(valid, delta, math.inf)
        flat = delta.reshape(cells, -1)
        val, idx = flat.min(dim=1)
        move = val < -1e-12 * scale
        if not bool(move.any()):
            break
        a, b = idx // n, idx % n
        rows_ = ar[move]
        d[rows_, a[move]] = False
        d[rows_, b[move]] = True
    return d


def select_kn_inf(
    u: torch.Tensor,
    k: int,
    samples: torch.Tensor,
    linear: torch.Tensor | None = None,
    *,
    max_patterns: int = DEFAULT_MAX_PATTERNS,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> KnSelection:
    """The ℓ∞ variant (digest §3.7): per cell the pattern minimising ``max_x (r . h_g(x))^2 + l . d`` over the
    captured input vectors ``samples`` (G, N, n). Exact enumeration only: C(n, k) above ``max_patterns`` is
    BadInput (use the quadratic cost there)."""
    u, _, linear = _check_inputs(u, k, None, linear)
    rows, G, n = u.shape
    if samples.dim() != 3 or samples.shape[0] != G or samples.shape[2] != n or samples.shape[1] == 0:
        raise BadInput(f"samples must have shape ({G}, N >= 1, {n}), got {tuple(samples.shape)}")
    total = n_patterns(k, n)
    if total > max_patterns:
        raise BadInput(
            f"the l-inf k:n cost enumerates patterns exactly: C({n}, {k}) = {total} exceeds "
            f"max_patterns={max_patterns}; use cost='certificate' for this pattern"
        )
    h = samples.detach().to(torch.float64)
    N = h.shape[1]
    removed = (~kn_patterns(k, n)).to(torch.float64)  # (P, n)
    chunk = max(1, min(total, chunk_elems // max(1, rows * N)))
    keep = torch.zeros(rows, G, n, dtype=torch.bool)
    cost = torch.zeros(rows, G, dtype=torch.float64)
    for g in range(G):
        best = torch.full((rows,), math.inf, dtype=torch.float64)
        best_idx = torch.zeros(rows, dtype=torch.long)
        v = u[:, g, None, :] * h[g][None]  # (rows, N, n)
        for start in range(0, total, chunk):
            dch = removed[start : start + chunk]
            resp = (v @ dch.T).square().amax(dim=1)  # (rows, c)
            if linear is not None:
                resp = resp + linear[:, g] @ dch.T
            val, idx = resp.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            best_idx = torch.where(better, idx + start, best_idx)
        keep[:, g] = removed[best_idx] == 0
        cost[:, g] = best
    return KnSelection(keep, cost, "enumerate", total)
