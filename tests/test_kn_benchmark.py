"""Helpers of ``benchmarks/kn.py`` on tiny inputs (the benchmark itself is run by hand)."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.kn import VARIANTS, _agreement, _certify_row, photo_views, photos


def test_photos_and_disjoint_views() -> None:
    imgs = photos()
    assert len(imgs) == 3 and all(im.mode == "RGB" for im in imgs)
    a, b = photo_views(2, seed=1), photo_views(2, seed=2)
    assert a.shape == b.shape == (6, 3, 224, 224)
    assert torch.equal(a, photo_views(2, seed=1))  # seeded
    # calibration views (another seed) share no view with the evaluation views
    assert all(not torch.equal(x, y) for x in a for y in b)
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6  # mean = std = 0.5


def test_agreement_and_certify_row() -> None:
    assert _agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    from mpprune.methods import NM, prune

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    cal = [(torch.randn(16, 16), None)]
    res = prune(dense, NM("2:4", **VARIANTS["all"]), calibration=cal, progress=False)
    row = _certify_row(dense, res, cal, n_theta=2, min_certified=0.5)
    assert row["gate_layers"] == len(res.report.layers) == 1
    assert 0.0 <= row["certified_total"] <= 1.0 and row["is_mask_layers"] == 0  # reconstructed: D4
    assert "ESTIMATE" in row["estimator"]
