"""The k:n search against brute force: exact streamed enumeration, the local search for huge C(n, k), the
separable magnitude case and the ℓ∞ variant."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpprune.errors import BadInput
from mpprune.methods.kn_search import kn_cost, kn_patterns, min_cost, n_patterns, select_kn, select_kn_inf

PATTERNS = [(k, n) for n in (4, 8) for k in range(1, n)] + [(3, 12), (6, 12), (9, 12)]


def _problem(seed: int, rows: int, G: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, G, n, generator=g, dtype=torch.float64)
    mix = torch.eye(n, dtype=torch.float64) + 0.5 * torch.randn(G, n, n, generator=g, dtype=torch.float64)
    x = torch.randn(G, 3 * n, n, generator=g, dtype=torch.float64) @ mix
    second = x.transpose(1, 2) @ x / (3 * n)
    linear = 0.2 * torch.randn(rows, G, n, generator=g, dtype=torch.float64)
    return u, second, linear


def _brute(u: torch.Tensor, k: int, cost_of) -> torch.Tensor:  # type: ignore[no-untyped-def]
    rows, G, n = u.shape
    best = torch.full((rows, G), math.inf, dtype=torch.float64)
    for p in kn_patterns(k, n):
        best = torch.minimum(best, cost_of(p.expand(rows, G, n)))
    return best


def test_patterns_are_all_distinct_k_subsets() -> None:
    for k, n in [(1, 4), (2, 4), (3, 8), (6, 12)]:
        P = kn_patterns(k, n)
        assert P.shape == (math.comb(n, k), n) == (n_patterns(k, n), n)
        assert bool((P.sum(1) == k).all())
        assert len({tuple(r.tolist()) for r in P}) == P.shape[0]
    assert torch.equal(kn_patterns(2, 8, 5, 9), kn_patterns(2, 8)[5:9])


@given(st.sampled_from(PATTERNS), st.integers(0, 10_000), st.booleans())
def test_streamed_enumeration_equals_brute_force(kn: tuple[int, int], seed: int, with_linear: bool) -> None:
    k, n = kn
    u, second, linear = _problem(seed, rows=5, G=3, n=n)
    lin = linear if with_linear else None
    best = _brute(u, k, lambda keep: kn_cost(u, keep, second, lin))
    # a tiny chunk forces many streaming steps (one group and a handful of patterns at a time)
    for chunk_elems in (7, 1 << 20):
        sel = select_kn(u, k, second, lin, method="enumerate", chunk_elems=chunk_elems)
        assert bool((sel.keep.sum(-1) == k).all())
        assert torch.allclose(sel.cost, best, rtol=1e-10, atol=1e-12)
        assert torch.allclose(kn_cost(u, sel.keep, second, lin), sel.cost, rtol=1e-12, atol=1e-12)
    assert torch.allclose(min_cost(u, k, second, lin), best, rtol=1e-10, atol=1e-12)


@given(st.sampled_from(PATTERNS), st.integers(0, 10_000))
def test_magnitude_is_separable_and_exact(kn: tuple[int, int], seed: int) -> None:
    k, n = kn
    u, _, linear = _problem(seed, rows=4, G=3, n=n)
    for lin in (None, linear):
        sel = select_kn(u, k, None, lin)
        assert sel.method == "separable"
        best = _brute(u, k, lambda keep, lin=lin: kn_cost(u, keep, None, lin))
        assert torch.allclose(sel.cost, best, rtol=1e-12, atol=1e-12)
    # without linear terms: exactly the k largest |u| of every group (ties cannot occur with Gaussians)
    keep = select_kn(u, k).keep
    kth = u.abs().topk(k, dim=-1).values[..., -1:]
    assert torch.equal(keep, u.abs() >= kth)


def test_local_search_against_brute_force() -> None:
    """Never above its magnitude start; optimal in most cells, a small mean gap (measured, not promised)."""
    opt, gaps, cells = 0, [], 0
    for k, n in [(4, 8), (8, 16), (12, 16), (2, 8)]:
        u, second, _ = _problem(123 + n + k, rows=24, G=4, n=n)
        exact = select_kn(u, k, second, method="enumerate")
        local = select_kn(u, k, second, method="local")
        assert local.method == "local" and bool((local.keep.sum(-1) == k).all())
        magnitude = kn_cost(u, select_kn(u, k).keep, second)
        assert bool((local.cost <= magnitude + 1e-12).all())
        assert bool((local.cost >= exact.cost - 1e-9).all())
        gap = (local.cost - exact.cost) / exact.cost
        opt += int((gap < 1e-9).sum())
        gaps.append(gap.reshape(-1))
        cells += gap.numel()
    mean_gap = float(torch.cat(gaps).mean())
    assert opt / cells >= 0.85, (opt, cells)
    assert mean_gap < 0.03


def test_auto_switches_to_local_above_max_patterns() -> None:
    u, second, _ = _problem(5, rows=6, G=2, n=32)
    sel = select_kn(u, 16, second)  # C(32, 16) = 601,080,390 patterns: local search
    assert sel.method == "local" and sel.patterns == math.comb(32, 16)
    assert bool((sel.keep.sum(-1) == 16).all())
    assert bool((sel.cost <= kn_cost(u, select_kn(u, 16).keep, second) + 1e-12).all())
    small = select_kn(u[..., :8], 4, second[:, :8, :8], max_patterns=10)  # C(8, 4) = 70 > 10
    assert small.method == "local"


@given(st.sampled_from([(1, 4), (2, 4), (3, 4), (3, 8), (4, 8)]), st.integers(0, 10_000), st.booleans())
def test_linf_enumeration_equals_brute_force(kn: tuple[int, int], seed: int, with_linear: bool) -> None:
    k, n = kn
    u, _, linear = _problem(seed, rows=4, G=3, n=n)
    lin = linear if with_linear else None
    h = torch.randn(3, 17, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    def inf_cost(keep: torch.Tensor) -> torch.Tensor:
        d = (~keep).to(torch.float64)
        resp = torch.einsum("rgn,gxn->rgx", u * d, h).square().amax(-1)
        return resp + (0 if lin is None else (lin * d).sum(-1))

    sel = select_kn_inf(u, k, h, lin, chunk_elems=5)
    assert bool((sel.keep.sum(-1) == k).all())
    assert torch.allclose(sel.cost, _brute(u, k, inf_cost), rtol=1e-10, atol=1e-12)
    assert torch.allclose(inf_cost(sel.keep), sel.cost, rtol=1e-10, atol=1e-12)


def test_bad_inputs() -> None:
    u, second, _ = _problem(0, 2, 2, 4)
    with pytest.raises(BadInput, match="1 <= k < n"):
        select_kn(u, 4, second)
    with pytest.raises(BadInput, match="second moments"):
        select_kn(u, 2, second[:1])
    with pytest.raises(BadInput, match="method"):
        select_kn(u, 2, second, method="dp")
    with pytest.raises(BadInput, match="NaN"):
        select_kn(u * float("nan"), 2, second)
    with pytest.raises(BadInput, match="max_patterns"):
        select_kn_inf(torch.randn(2, 1, 16), 8, torch.randn(1, 3, 16), max_patterns=100)
