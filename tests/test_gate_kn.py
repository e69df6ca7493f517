"""The gate keeps k:n layers k:n: a layer whose masks declare a pattern is backed off through the denser
patterns kk:n of the same group size (or left dense), never to an unstructured mask, and the gated masks
declare the pattern the written weight keeps."""

from __future__ import annotations

import pytest
import torch

import mpprune as mpp
from mpprune.data import calibration_batches, sklearn_digits
from mpprune.gate_result import PrunedLayer
from mpprune.masks import check_kn, kn_group_counts
from mpprune.models import tiny_mlp


def _brute_candidate(Wd: torch.Tensor, Wp: torch.Tensor, n: int, kk: int) -> torch.Tensor:
    """Group by group with Python loops: keep the kept entries, add the largest dense |w| of the removed."""
    out = Wp.clone()
    for r in range(Wp.shape[0]):
        for g in range(Wp.shape[1] // n):
            cols = list(range(g * n, (g + 1) * n))
            kept = [c for c in cols if Wp[r, c] != 0]
            free = sorted((c for c in cols if Wp[r, c] == 0), key=lambda c: (-abs(float(Wd[r, c])), c))
            for c in free[: max(0, kk - len(kept))]:
                out[r, c] = Wd[r, c]
    return out


@pytest.mark.parametrize("k, n, seed", [(1, 4, 0), (2, 4, 1), (2, 8, 2), (3, 8, 3), (4, 16, 4)])
def test_kn_candidate_equals_brute_force(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    Wd = torch.randn(6, 4 * n, generator=g, dtype=torch.float64)
    Wd[0, :3] = 0.0  # dense zeros stay zero
    keep = torch.zeros_like(Wd, dtype=torch.bool)
    idx = torch.rand(6, 4, n, generator=g).argsort(-1)[..., :k]  # a random k:n mask, not magnitude's
    keep.view(6, 4, n).scatter_(-1, idx, True)
    Wp = torch.where(keep, Wd * 1.5, torch.zeros_like(Wd))  # kept entries changed, as after distillation
    removed = (Wd != Wp).reshape(-1)
    order = torch.nonzero(removed).reshape(-1)
    ly = PrunedLayer("x", Wd, Wp, order, 0.5, (k, n, "matrix"))
    for kk in range(k + 1, n):
        W, restored = ly.kn_candidate(kk)
        torch.testing.assert_close(W, _brute_candidate(Wd, Wp, n, kk), rtol=0, atol=0)
        assert int(kn_group_counts(W, n).max()) <= kk
        assert torch.equal(W[Wp != 0], Wp[Wp != 0])  # what was kept stays, with its own values
        assert restored == int(((W != 0) & (Wp == 0)).sum())
    assert torch.equal(ly.kn_candidate(n)[0], Wd)


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_gated_kn_layers_keep_a_declared_pattern(scope):
    calib = calibration_batches(sklearn_digits("train"), 48, batch_size=16, seed=0)
    model = tiny_mlp((64, 32, 32, 10), seed=3)
    res = mpp.prune(model, mpp.NM("1:4", cost="magnitude", skip=()), calibration=calib, progress=False)
    assert set(res.masks.patterns()) == {"0", "2", "4"}
    gate = mpp.Gate(min_certified=0.99, scope=scope, n_theta=4, progress=False)
    out = gate.apply(model, res.model, res.masks, calib)
    assert any(v.status == "backed_off" for v in out.layers), "the test must exercise a k:n back-off"
    mods = dict(out.model.named_modules())
    for v in out.layers:
        W = mods[v.name].weight.detach()
        Wp = dict(res.model.named_modules())[v.name].weight.detach()
        if v.status == "left_dense":
            assert v.pattern is None and torch.equal(W, dict(model.named_modules())[v.name].weight.detach())
            continue
        kk, n = (int(t) for t in v.pattern.split(":"))
        assert n == 4 and (kk == 1 if v.status == "passed" else 1 < kk < 4)
        check_kn(W, v.pattern, layer=v.name)  # the written weight keeps it
        assert out.masks.pattern(v.name) == (v.pattern, "matrix")  # and the masks declare it
        assert torch.equal(W[Wp != 0], Wp[Wp != 0])  # backing off only restores
    if scope == "model" and out.certified_fraction is not None:
        assert out.certified_fraction >= 0.99 or all(v.status == "left_dense" for v in out.layers)
