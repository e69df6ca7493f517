"""Checks of the EfficientNet part of benchmarks/certify_cost.py: the calibration views it gates over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.certify_cost import photo_views


def test_photo_views_are_normalised_crops_of_the_bundled_photos() -> None:
    pytest.importorskip("sklearn.datasets")
    from sklearn.datasets import load_sample_image

    from mpprune.models import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD

    v = photo_views(6, seed=3)
    assert v.shape == (6, 3, 224, 224) and v.dtype == torch.float32
    assert bool(torch.isfinite(v).all())
    assert torch.equal(v, photo_views(6, seed=3))  # deterministic
    assert not torch.equal(v, photo_views(6, seed=4))
    # undoing the normalisation gives pixel values in [0, 1] whose mean colour is that of the photo cropped
    mean = torch.tensor(EFFICIENTNET_LITE0_MEAN)[:, None, None]
    std = torch.tensor(EFFICIENTNET_LITE0_STD)[:, None, None]
    px = v * std + mean
    assert float(px.min()) >= -1e-4 and float(px.max()) <= 1 + 1e-4
    china = np.array(load_sample_image("china.jpg"), dtype=np.float64) / 255.0
    flower = np.array(load_sample_image("flower.jpg"), dtype=np.float64) / 255.0
    # views alternate between the photos: even views are closer in mean colour to china, odd to flower
    for k in range(6):
        c = px[k].double().mean(dim=(1, 2)).numpy()
        d_china = np.abs(c - china.mean(axis=(0, 1))).sum()
        d_flower = np.abs(c - flower.mean(axis=(0, 1))).sum()
        assert (d_china < d_flower) == (k % 2 == 0)
