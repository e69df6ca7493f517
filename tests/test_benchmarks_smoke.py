"""Checks of the benchmark helpers against independent computations (tiny settings, no real models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from benchmarks.mnist_pruning import factorised_params
from benchmarks.models_spectra import agreement, comparable_layers, ww_counts


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=2, max_size=40))
def test_agreement_matches_brute_force(pairs: list[tuple[int, int]]) -> None:
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    got = agreement(a, b)
    assert got["equal_fraction"] == sum(x == y for x, y in pairs) / len(pairs)
    assert got["mean_abs_diff"] == pytest.approx(sum(abs(x - y) for x, y in pairs) / len(pairs))
    if len(set(a)) > 1 and len(set(b)) > 1:
        assert got["pearson"] == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-9)
    else:
        assert np.isnan(got["pearson"])


def test_agreement_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        agreement([1, 2], [1])
    with pytest.raises(ValueError, match="no layers"):
        agreement([], [])


def test_comparable_layers_are_the_same_matrix_for_both_tools() -> None:
    """Selected layers: Linear and ungrouped 1x1 convs, whose im2col view equals WeightWatcher's one slice."""
    from mpprune.layers import find_layers, matrix_blocks

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3),  # kxk: WW slices it, excluded
        nn.Conv2d(32, 48, 1),  # 1x1: included
        nn.Conv2d(48, 48, 1, groups=2),  # grouped: excluded
        nn.Conv2d(48, 48, 3, groups=48),  # depthwise: excluded
        nn.Flatten(),
        nn.Linear(48, 20),  # included
        nn.Linear(20, 4),  # min dim 4 < 16: excluded
    )
    chosen = comparable_layers(model)
    assert [n for n, _ in chosen] == ["1", "5"]
    views = {info.name: dict(matrix_blocks(info)) for info in find_layers(model)}
    for name, mod in chosen:
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        w = weight.detach()
        ww_slice = w[:, :, 0, 0] if w.dim() == 4 else w  # WeightWatcher's (only) matrix of this layer
        (ours,) = views[name].values()
        assert torch.equal(ours.to(w.dtype), ww_slice)


def test_factorised_params_equals_parameter_count_of_the_factorised_model() -> None:
    from mpprune.methods.api import prune
    from mpprune.methods.classical_rmt import ClassicalRMT
    from mpprune.models import tiny_mlp

    model = tiny_mlp((96, 80, 64, 10), seed=1)
    plain = prune(model, ClassicalRMT(), progress=False)
    fact = prune(model, ClassicalRMT(factorise=True), progress=False)
    kept, total = factorised_params(plain.report.layers)
    weights = [m.weight.numel() for m in fact.model.modules() if isinstance(m, nn.Linear)]
    dense = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)]
    assert total == sum(dense)
    assert kept == sum(weights)
    assert kept < total  # random init: MP edge keeps a low rank somewhere


def test_accuracy_matches_manual_count() -> None:
    """The one accuracy (mpprune.data.accuracy, used by the benchmark, the run and the demo)."""
    from mpprune.data import accuracy

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=gen)
    y = torch.randint(0, 3, (37,), generator=gen)
    model = nn.Linear(5, 3)
    ds = torch.utils.data.TensorDataset(x, y)
    expect = float((model(x).argmax(1) == y).float().mean())
    assert accuracy(model, ds, batch_size=8) == pytest.approx(expect)
    with pytest.raises(ValueError, match="empty"):
        accuracy(model, torch.utils.data.TensorDataset(x[:0], y[:0]))


def test_ww_counts_maps_rows_to_modules() -> None:
    """The batched WeightWatcher call gives each module the count WeightWatcher gives it alone."""
    from benchmarks._common import weightwatcher

    ww = weightwatcher()
    if ww is None:
        pytest.skip("WeightWatcher not installed")
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 56, 1)
    with torch.no_grad():  # plant one strong spike in the conv so counts differ between layers
        u, v = torch.randn(56, 1), torch.randn(1, 24)
        conv.weight[:, :, 0, 0] += 3.0 * u @ v / 24**0.5
    mods: list[nn.Module] = [nn.Linear(64, 40), conv, nn.Linear(40, 120)]
    counts, _ = ww_counts(ww, mods)
    alone = []
    for m in mods:
        df = ww.WeightWatcher(model=nn.Sequential(m)).analyze(mp_fit=True)
        alone.append(int(df["num_spikes"].iloc[0]))
    assert counts == alone


def test_write_json_is_strict(tmp_path) -> None:
    """Benchmark JSON goes through mptheory.io: a non-finite number is written as null, never NaN."""
    import json

    from benchmarks._common import write_json

    path = write_json(tmp_path / "sub" / "b.json", {"ratio": float("nan"), "n": np.int64(3), "x": [1.5]})
    text = path.read_text()
    assert "NaN" not in text and json.loads(text) == {"ratio": None, "n": 3, "x": [1.5]}
