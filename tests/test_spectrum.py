"""Per-layer spectral analysis (mpprune.spectrum) checked against independent SVDs and planted spikes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mpprune.models import load_mnist_cnn, tiny_cnn
from mpprune.spectrum import analyze, layer_statistics

fit_mod = pytest.importorskip("mptheory.fit")


def _spiked(shape: tuple[int, int], rank: int, rng: np.random.Generator, sigma: float = 0.05,
            factor: float = 3.0) -> np.ndarray:
    """Noise of entry s.d. ``sigma`` plus ``rank`` orthogonal spikes at ``factor`` x the BBP threshold."""
    n_rows, n_cols = shape
    w = rng.standard_normal(shape) * sigma
    if rank:
        theta = factor * sigma * (n_rows * n_cols) ** 0.25  # BBP singular-value threshold sigma (N M)^(1/4)
        u, _ = np.linalg.qr(rng.standard_normal((n_rows, rank)))
        v, _ = np.linalg.qr(rng.standard_normal((n_cols, rank)))
        w += theta * (u @ v.T)
    return w


def _linear(w: np.ndarray) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w))
    return lin


def test_analyze_recovers_planted_spikes():
    rng = np.random.default_rng(0)
    shapes = [(256, 128)] * 12 + [(150, 300)] * 4
    ranks = [i % 4 for i in range(len(shapes))]
    model = nn.Sequential(*[_linear(_spiked(s, r, rng)) for s, r in zip(shapes, ranks)])
    report = analyze(model, progress=False)
    assert [e.name for e in report.layers] == [str(i) for i in range(len(shapes))]
    got = [e.n_spikes for e in report.layers]
    assert all(g >= r for g, r in zip(got, ranks)), (got, ranks)  # spikes at 3x BBP are never missed
    assert sum(g != r for g, r in zip(got, ranks)) <= 1, (got, ranks)  # at most one false alarm at delta=5%
    for e in report.layers:
        assert e.sigma2 is not None and abs(e.sigma2 / 0.05**2 - 1) < 0.05
        # independent spike count: singular values (numpy SVD) above the singular-value edge
        s = np.linalg.svd(model[int(e.name)].weight.detach().double().numpy(), compute_uv=False)
        assert e.n_spikes == int(np.sum(s > e.edge_sigma))
        np.testing.assert_allclose(sorted(e.spikes_sigma), np.sort(s[s > e.edge_sigma]), rtol=1e-8)
        n_rows, n_cols = e.shape
        assert e.sigma_plus == pytest.approx(math.sqrt(e.sigma2) * (math.sqrt(n_rows) + math.sqrt(n_cols)))
        assert e.bulk_fraction == pytest.approx(1 - e.n_spikes / min(e.shape))


def test_batched_fits_equal_single_fits():
    rng = np.random.default_rng(1)
    mats = [_spiked((96, 64), r, rng) for r in (0, 2, 1)] + [_spiked((64, 80), 1, rng)]
    model = nn.Sequential(*[_linear(w) for w in mats])
    report = analyze(model, progress=False, method="bema", delta=0.1)
    assert report.method == "bema" and report.delta == 0.1
    for e, w in zip(report.layers, mats):
        ref = fit_mod.fit_mp(w, method="bema", delta=0.1)
        assert e.sigma2 == pytest.approx(ref.sigma2, rel=1e-8)
        assert e.edge == pytest.approx(ref.edge, rel=1e-8)
        assert e.n_spikes == ref.n_spikes


def test_statistics_match_svd_brute_force():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((70, 40)) * np.linspace(0.1, 3, 40)  # anisotropic columns
    s = np.linalg.svd(w, compute_uv=False)
    lam = np.sort(s**2 / 70)
    st = layer_statistics(lam, (70, 40))
    assert st["spectral_norm"] == pytest.approx(s[0], rel=1e-10)
    assert st["frobenius_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-10)
    assert st["stable_rank"] == pytest.approx(np.linalg.norm(w) ** 2 / s[0] ** 2, rel=1e-10)
    p = s**2 / np.sum(s**2)
    assert st["entropy_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)
    ev = s**2  # Hill estimator on the 20 largest eigenvalues (digest 3.1), by explicit loop
    ratios = [math.log(ev[i]) - math.log(ev[19]) for i in range(19)]
    assert st["hill_alpha"] == pytest.approx(1 + 1 / (sum(ratios) / 19), rel=1e-10)
    assert 1 <= st["entropy_rank"] <= 40 and 1 <= st["stable_rank"] <= st["entropy_rank"] + 1e-9
    # Hill on an exact Pareto ladder lambda_i = (n/i)^(1/a): estimate grows with a (heavier tail -> smaller)
    ladder = lambda a: np.sort((200 / np.arange(1, 201)) ** (1 / a))  # noqa: E731
    alphas = [layer_statistics(ladder(a), (200, 200))["hill_alpha"] for a in (1.0, 2.0, 4.0)]
    assert alphas[0] < alphas[1] < alphas[2]
    assert math.isnan(layer_statistics(np.array([0.0, 2.0]), (2, 9))["hill_alpha"])


def test_qkv_blocks_and_skipped_layers():
    rng = np.random.default_rng(3)
    d = 64

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = [_spiked((d, d), r, rng) for r in (0, 3, 0)]  # spike only the k block
            self.qkv = _linear(np.concatenate(blocks))
            self.dw = nn.Conv2d(d, d, 3, groups=d)
            self.zero = nn.Linear(d, d, bias=False)
            nn.init.zeros_(self.zero.weight)

    report = analyze(Attn(), progress=False)
    names = [e.name for e in report.layers]
    assert names == ["qkv[q]", "qkv[k]", "qkv[v]", "dw", "zero"]
    assert [e.n_spikes for e in report.layers[:3]] == [0, 3, 0]
    assert all(e.kind == "qkv" and e.shape == (d, d) for e in report.layers[:3])
    dw, zero = report["dw"], report["zero"]
    assert not dw.fitted and "depthwise" in dw.skipped and dw.sigma2 is None and dw.shape == (d, 9)
    assert not zero.fitted and "all-zero" in zero.skipped
    s = report.summary()
    assert (s["n_layers"], s["n_fitted"], s["n_skipped"], s["total_spikes"]) == (5, 3, 2, 3)


def test_nan_weights_raise_with_layer_and_shape():
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20))
    with torch.no_grad():
        model[2].weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"layer 2 .*\(20, 30\).*NaN"):
        analyze(model, progress=False)
    with torch.no_grad():
        model[2].weight[3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"\(20, 30\)"):
        analyze(model, progress=False)
    # an excluded layer is not checked
    assert [e.name for e in analyze(model, include=[model[0]], progress=False).layers] == ["0"]


def test_include_filters_by_identity_name_or_predicate():
    model = tiny_cnn(width=16)
    by_mod = analyze(model, include=[model[10], model[0]], progress=False)
    assert [e.name for e in by_mod.layers] == ["0", "10"]
    by_name = analyze(model, include=["6"], progress=False)
    assert [e.name for e in by_name.layers] == ["6"]
    by_pred = analyze(model, include=lambda i: i.kind == "conv2d_depthwise", progress=False)
    assert [e.name for e in by_pred.layers] == ["4"]
    with pytest.raises(ValueError, match="not found"):
        analyze(model, include=["nope"], progress=False)
    with pytest.raises(ValueError, match="method"):
        analyze(model, method="nope", progress=False)
    with pytest.raises(ValueError, match="delta"):
        analyze(model, delta=1.5, progress=False)


def test_report_writers(tmp_path):
    report = analyze(load_mnist_cnn(), progress=False, name="mnist-cnn")
    assert [e.name for e in report.layers] == [
        "conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0", "fc_layers.2"
    ]
    js = json.loads(report.to_json(tmp_path / "r.json", include_eigenvalues=True).read_text())
    assert set(js) == {"model", "method", "delta", "summary", "layers"}
    assert js["method"] == "rcb" and js["delta"] == 0.05 and js["summary"]["n_fitted"] == 3
    need = {"name", "kind", "shape", "sigma2", "sigma_plus", "edge", "n_spikes", "bulk_fraction", "fit_error",
            "hill_alpha", "stable_rank", "entropy_rank", "spectral_norm", "skipped", "eigenvalues"}
    for entry, e in zip(js["layers"], report.layers):
        assert need <= set(entry)
        assert len(entry["eigenvalues"]) == min(e.shape)
        w = load_mnist_cnn().get_submodule(e.name).weight.detach().reshape(e.shape[0], -1).double()
        assert entry["spectral_norm"] == pytest.approx(torch.linalg.matrix_norm(w, ord=2).item(), rel=1e-8)
    assert js["layers"][0]["skipped"].startswith("too small") and js["layers"][0]["sigma2"] is None
    md = report.to_markdown(tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == md
    rows = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert len(rows) == 5 and "`fc_layers.0`" in rows[3] and "too small" in rows[0]
    png = report.plot(tmp_path / "r.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
