"""Per-layer spectral analysis of a model: Marchenko–Pastur fits and heavy-tail statistics.

``analyze(model)`` reads every Linear / Conv2d weight through its matrix view (``mpprune.layers``; a fused
qkv Linear as three blocks), computes the eigenvalues ``λ_i = s_i²/max(N, M)`` of the smaller Gram matrix
in float64 — one batched ``eigvalsh`` per group of equal shapes — and fits the MP law to each eligible
matrix with :func:`mptheory.fit.fit_mp` from those eigenvalues (so each spectrum is computed once).

Per layer the report gives the fit (σ², σ₊ = σ(√N + √M), the noise edge at confidence 1 − δ on both the
eigenvalue and singular-value scales, spikes, bulk fraction, fit error) and fit-free statistics
(digest §1.7, §3.1):

* spectral norm ``s₁``; Frobenius norm;
* stable rank ``Σ s² / s₁²``;
* entropy effective rank ``exp(−Σ p log p)``, ``p = s² / Σ s²``;
* Hill tail exponent on the ``k = min(20, #positive)`` largest eigenvalues ``λ₁ ≥ … ≥ λ_k`` (λ ∝ s²):
  ``α_Hill = 1 + 1 / mean_{i<k}(log λ_i − log λ_k)`` (NaN when ``k < 2``; the authors' code wrote 99).

Layers that are not fitted (depthwise convs, 1×n and too-small matrices, all-zero weights) keep their
statistics and say why in ``skipped``. Non-finite weights raise BadInput naming the layer and shape.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from mpprune.errors import BadInput
from mpprune.layers import DEFAULT_MIN_DIM, LayerInfo, find_layers, matrix_blocks
from mptheory.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mptheory.mp import batched_eigenvalues

__all__ = ["LayerSpectrum", "SpectrumReport", "analyze", "layer_statistics", "hill_alpha", "HILL_K"]

FloatArray = NDArray[np.float64]
HILL_K = 20

Include = Callable[[LayerInfo], bool] | Iterable[nn.Module | str] | None


def hill_alpha(eigenvalues: FloatArray, k: int = HILL_K) -> float:
    """Hill tail exponent on the ``k' = min(k, #positive)`` largest positive eigenvalues λ₁ ≥ … ≥ λ_k'
    (digest §3.1): ``1 + 1 / mean_{i<k'}(log λ_i − log λ_k')``.

    Scale-free: λ may be s² or s²/max(N, M). NaN when ``k' < 2`` (undefined; the authors' code wrote 99,
    which SEB keeps as its signal value, see :data:`mpprune.methods._common.SEB_ALPHA_UNDEFINED`);
    ``inf`` when the top ``k'`` eigenvalues are equal.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    pos = lam[lam > 0]
    k = min(k, pos.size)
    if k < 2:
        return math.nan
    logs = np.log(pos[:k])
    gap = float(np.mean(logs[: k - 1] - logs[k - 1]))
    return 1.0 + 1.0 / gap if gap > 0 else math.inf


def layer_statistics(
    eigenvalues: FloatArray, shape: tuple[int, int], hill_k: int = HILL_K
) -> dict[str, float]:
    """Fit-free statistics from the MP-scale eigenvalues ``λ = s²/max(N, M)`` of an ``(N, M)`` matrix."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    n = max(shape)
    total = float(lam.sum())
    top = float(lam[0]) if lam.size else 0.0
    out = {
        "spectral_norm": math.sqrt(n * top),
        "frobenius_norm": math.sqrt(n * total),
        "stable_rank": total / top if top > 0 else math.nan,
        "entropy_rank": math.nan,
        "hill_alpha": hill_alpha(lam, hill_k),
    }
    if total > 0:
        p = lam[lam > 0] / total
        out["entropy_rank"] = float(math.exp(-float(np.sum(p * np.log(p)))))
    return out


@dataclass
class LayerSpectrum:
    """One analysed matrix (a layer, or one block q/k/v of a fused qkv layer).

    Fit fields are None when the layer was not fitted; ``skipped`` then says why. Eigenvalue-scale
    quantities (``sigma2``, ``lambda_plus``, ``edge``) use ``λ = s²/max(N, M)``; ``sigma_plus``,
    ``edge_sigma``, ``spikes_sigma`` and ``spectral_norm`` are on the singular-value scale.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    spectral_norm: float
    frobenius_norm: float
    stable_rank: float
    entropy_rank: float
    hill_alpha: float
    sigma2: float | None = None
    ratio: float | None = None
    lambda_plus: float | None = None
    sigma_plus: float | None = None
    edge: float | None = None
    edge_sigma: float | None = None
    n_spikes: int | None = None
    spikes_sigma: list[float] = field(default_factory=list)
    bulk_fraction: float | None = None
    fit_error: float | None = None
    skipped: str | None = None
    eigenvalues: FloatArray = field(default_factory=lambda: np.zeros(0), repr=False)
    fit: Any = field(default=None, repr=False)

    @property
    def fitted(self) -> bool:
        """Whether an MP law was fitted to this matrix."""
        return self.fit is not None

    def to_dict(self, include_eigenvalues: bool = False) -> dict[str, Any]:
        """JSON-safe dictionary (non-finite floats become None)."""

        def f(v: Any) -> Any:
            if v is None:
                return None
            v = float(v)
            return v if math.isfinite(v) else None

        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "shape": [int(s) for s in self.shape],
            "sigma2": f(self.sigma2),
            "ratio": f(self.ratio),
            "lambda_plus": f(self.lambda_plus),
            "sigma_plus": f(self.sigma_plus),
            "edge": f(self.edge),
            "edge_sigma": f(self.edge_sigma),
            "n_spikes": None if self.n_spikes is None else int(self.n_spikes),
            "spikes_sigma": [float(s) for s in self.spikes_sigma],
            "bulk_fraction": f(self.bulk_fraction),
            "fit_error": f(self.fit_error),
            "hill_alpha": f(self.hill_alpha),
            "stable_rank": f(self.stable_rank),
            "entropy_rank": f(self.entropy_rank),
            "spectral_norm": f(self.spectral_norm),
            "frobenius_norm": f(self.frobenius_norm),
            "skipped": self.skipped,
        }
        if include_eigenvalues:
            d["eigenvalues"] = [float(x) for x in self.eigenvalues]
        return d


@dataclass
class SpectrumReport:
    """Result of :func:`analyze`: ``layers`` in model order, and the fit settings."""

    layers: list[LayerSpectrum]
    method: str
    delta: float
    model: str = ""

    def __getitem__(self, name: str) -> LayerSpectrum:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def fitted(self) -> list[LayerSpectrum]:
        """The entries with an MP fit."""
        return [e for e in self.layers if e.fitted]

    def summary(self) -> dict[str, Any]:
        """Counts and means over fitted layers."""
        fitted = self.fitted

        def mean(key: str) -> float | None:
            vals = [float(getattr(e, key)) for e in fitted if getattr(e, key) is not None]
            vals = [v for v in vals if math.isfinite(v)]
            return float(np.mean(vals)) if vals else None

        return {
            "n_layers": len(self.layers),
            "n_fitted": len(fitted),
            "n_skipped": len(self.layers) - len(fitted),
            "total_spikes": int(sum(e.n_spikes or 0 for e in fitted)),
            "mean_bulk_fraction": mean("bulk_fraction"),
            "mean_fit_error": mean("fit_error"),
            "mean_hill_alpha": mean("hill_alpha"),
        }

    def to_dict(self, include_eigenvalues: bool = False) -> dict[str, Any]:
        """JSON-safe dictionary: ``{"model", "method", "delta", "summary", "layers": [...]}``."""
        return {
            "model": self.model,
            "method": self.method,
            "delta": self.delta,
            "summary": self.summary(),
            "layers": [e.to_dict(include_eigenvalues) for e in self.layers],
        }

    def to_json(self, path: str | Path, include_eigenvalues: bool = False) -> Path:
        """Write the report as strict JSON (no NaN/Inf literals), atomically; returns the path."""
        return atomic_write_json(path, self.to_dict(include_eigenvalues))

    def to_markdown(self, path: str | Path | None = None) -> str:
        """A Markdown table, one row per entry; written to ``path`` when given. Returns the text."""

        def g(v: Any, fmt: str = ".3g") -> str:
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                return "–"
            return format(v, fmt)

        s = self.summary()
        lines = [
            f"# Spectrum report{': ' + self.model if self.model else ''}",
            "",
            f"MP fit method `{self.method}`, noise edge at confidence 1 − δ = {1 - self.delta:g}. "
            f"{s['n_fitted']} of {s['n_layers']} matrices fitted, {s['total_spikes']} spikes in total.",
            "Eigenvalues λ = s²/max(N, M); σ₊ = σ(√N+√M) and edge_σ are on the singular-value scale.",
            "",
            "| layer | kind | shape | σ² | σ₊ | edge_σ | ‖W‖₂ | spikes | bulk % | fit err | α_Hill "
            "| stable rank | eff. rank | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in self.layers:
            bulk = None if e.bulk_fraction is None else 100 * e.bulk_fraction
            lines.append(
                f"| `{e.name}` | {e.kind} | {e.shape[0]}×{e.shape[1]} | {g(e.sigma2)} | {g(e.sigma_plus)} "
                f"| {g(e.edge_sigma)} | {g(e.spectral_norm)} | {g(e.n_spikes, 'd')} | {g(bulk, '.1f')} "
                f"| {g(e.fit_error, '.3f')} | {g(e.hill_alpha, '.2f')} | {g(e.stable_rank, '.2f')} "
                f"| {g(e.entropy_rank, '.1f')} | {e.skipped or ''} |"
            )
        text = "\n".join(lines) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def plot(self, path: str | Path, max_panels: int = 24, ncols: int = 6) -> Path:
        """PNG: per-layer ESD histograms with the fitted MP density and noise edge, and a depth summary."""
        return _plot_report(self, Path(path), max_panels=max_panels, ncols=ncols)


def _select(infos: list[LayerInfo], include: Include) -> list[LayerInfo]:
    if include is None:
        return infos
    if callable(include):
        return [i for i in infos if include(i)]
    items = list(include)
    mod_ids = {id(x) for x in items if isinstance(x, nn.Module)}
    names = {x for x in items if isinstance(x, str)}
    bad = [x for x in items if not isinstance(x, nn.Module | str)]
    if bad:
        raise BadInput(f"include must hold modules or layer names, got {type(bad[0]).__name__}")
    known = {i.name for i in infos}
    missing = sorted(names - known)
    if missing:
        raise BadInput(f"include names not found among the model's layers: {missing[:5]}")
    return [i for i in infos if id(i.module) in mod_ids or i.name in names]


def analyze(
    model: nn.Module,
    *,
    method: str = "rcb",
    delta: float = 0.05,
    include: Include = None,
    progress: bool = True,
    min_dim: int = DEFAULT_MIN_DIM,
    name: str = "",
    **fit_kw: Any,
) -> SpectrumReport:
    """MP-fit every eligible Linear/Conv2d matrix of ``model`` and collect per-layer statistics.

    Args:
        model: any ``nn.Module``.
        method, delta: passed to :func:`mptheory.fit.fit_mp` (``"rcb"``, ``"bema"`` or ``"gd"``; noise
            edge at confidence ``1 − delta``). Further ``fit_kw`` (``alpha``, ``authors_convention``, ...)
            are passed on too.
        include: restrict to some layers: a predicate on :class:`~mpprune.layers.LayerInfo`, or an
            iterable of module objects and/or exact layer names.
        progress: show a tqdm bar over layers.
        min_dim: matrices with fewer singular values are reported but not fitted.
        name: a label for the report.

    Raises:
        BadInput: a weight with NaN/Inf entries (naming the layer and shape), bad ``include``.
    """
    from tqdm.auto import tqdm

    from mptheory.fit import fit_mp

    # validate the fit settings once (bad settings raise here instead of skipping every layer)
    try:
        fit_mp(eigenvalues=np.linspace(0.5, 1.5, 32), shape=(32, 64), method=method, delta=delta, **fit_kw)
    except (ValueError, TypeError) as exc:
        msg = str(exc).split(" for shape (32, 64)")[0]
        settings = f"method={method!r}, delta={delta!r}, {fit_kw}"
        raise BadInput(f"invalid MP-fit settings ({settings}): {msg}") from None
    infos = _select(find_layers(model, min_dim=min_dim), include)
    blocks: list[tuple[LayerInfo, str, torch.Tensor]] = []
    for info in infos:
        for bname, w in matrix_blocks(info):
            if not bool(torch.isfinite(w).all()):
                bad = int((~torch.isfinite(w)).sum())
                raise BadInput(
                    f"layer {bname} ({info.kind}, matrix shape {tuple(w.shape)}) has {bad} non-finite "
                    "(NaN/Inf) weights"
                )
            blocks.append((info, bname, w))

    groups: dict[tuple[int, int], list[int]] = {}
    for j, (_, _, w) in enumerate(blocks):
        groups.setdefault((int(w.shape[0]), int(w.shape[1])), []).append(j)

    entries: list[LayerSpectrum | None] = [None] * len(blocks)
    bar = tqdm(total=len(blocks), desc="analyze", unit="layer", disable=not progress)
    try:
        for shape, idx in groups.items():
            ev = batched_eigenvalues([blocks[j][2] for j in idx])
            for row, j in enumerate(idx):
                info, bname, _ = blocks[j]
                lam = ev[row]
                stats = layer_statistics(lam, shape)
                entry = LayerSpectrum(
                    name=bname,
                    kind=info.kind,
                    shape=shape,
                    eigenvalues=lam,
                    spectral_norm=stats["spectral_norm"],
                    frobenius_norm=stats["frobenius_norm"],
                    stable_rank=stats["stable_rank"],
                    entropy_rank=stats["entropy_rank"],
                    hill_alpha=stats["hill_alpha"],
                )
                if not info.eligible_for_fit:
                    entry.skipped = info.reason
                elif not np.any(lam > 0):
                    entry.skipped = f"all-zero weight ({shape[0]}x{shape[1]}): noise level undefined"
                else:
                    try:
                        fit = fit_mp(eigenvalues=lam, shape=shape, method=method, delta=delta, **fit_kw)
                    except ValueError as exc:  # settings were validated above: a data-dependent failure
                        entry.skipped = f"fit failed: {exc}"
                    else:
                        entry.fit = fit
                        entry.sigma2 = fit.sigma2
                        entry.ratio = fit.ratio
                        entry.lambda_plus = fit.lambda_plus
                        entry.sigma_plus = fit.sigma_plus
                        entry.edge = fit.edge
                        entry.edge_sigma = fit.edge_sigma
                        entry.n_spikes = int(fit.n_spikes)
                        entry.spikes_sigma = [float(s) for s in fit.spikes_sigma]
                        entry.bulk_fraction = fit.bulk_fraction
                        entry.fit_error = fit.fit_error
                entries[j] = entry
                bar.update(1)
    finally:
        bar.close()
    layers = [e for e in entries if e is not None]
    return SpectrumReport(layers=layers, method=method, delta=delta, model=name)


# --------------------------------------------------------------------------------------------- plotting
def _short(name: str, width: int = 30) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _plot_report(report: SpectrumReport, path: Path, max_panels: int, ncols: int) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    if max_panels < 1 or ncols < 1:
        raise BadInput(f"max_panels and ncols must be >= 1, got {max_panels}, {ncols}")
    if not report.layers:
        raise BadInput("empty report: no layers to plot")
    pool = report.fitted or report.layers
    if len(pool) > max_panels:
        pick = np.unique(np.linspace(0, len(pool) - 1, max_panels).round().astype(int))
        shown = [pool[i] for i in pick]
    else:
        shown = list(pool)
    ncols = min(ncols, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = plt.figure(figsize=(3.1 * ncols + 1, 2.5 * nrows + 3.6), layout="constrained")
    gs = GridSpec(nrows + 1, 3 * ncols, figure=fig, height_ratios=[1.0] * nrows + [1.25])
    for k, e in enumerate(shown):
        r, c = divmod(k, ncols)
        ax = fig.add_subplot(gs[r, 3 * c : 3 * c + 3])
        lam = e.eigenvalues
        if e.fitted:
            edge = float(e.edge)  # type: ignore[arg-type]
            law = e.fit.bulk_law
            xmax = 1.35 * max(edge, law.edges[1])
            # both curves are densities of the fraction of all p eigenvalues: the histogram bar area is
            # (count in bin)/p, the fitted bulk law is weighted by the bulk fraction
            vis = lam[lam <= xmax]
            binw = xmax / 40
            ax.hist(vis, bins=40, range=(0, xmax), weights=np.full(vis.size, 1.0 / (lam.size * binw)),
                    color="#9ecae1", edgecolor="none", label="ESD")
            xs = np.linspace(max(law.edges[0], 1e-12 * xmax), law.edges[1], 300)[1:-1]
            ax.plot(xs, float(e.bulk_fraction or 1.0) * law.pdf(xs), color="#08519c", lw=1.4, label="MP fit")
            ax.axvline(edge, color="#d62728", ls="--", lw=1.1, label="edge")
            n_out = int(np.sum(lam > xmax))
            if e.n_spikes:
                top = float(lam[-1]) / edge
                ax.text(0.98, 0.95, f"{e.n_spikes} spike{'s' if e.n_spikes > 1 else ''}\nmax {top:.1f}× edge",
                        transform=ax.transAxes, ha="right", va="top", fontsize=7.5, color="#d62728")
            if n_out:
                ax.plot([xmax * 0.995] * 1, [0], marker=">", color="#d62728", clip_on=False, ms=6)
            sub = f"σ²={e.sigma2:.3g}  fit err={e.fit_error:.2f}  bulk={100 * (e.bulk_fraction or 0):.0f}%"
        else:
            ax.hist(lam, bins=40, color="#bdbdbd", edgecolor="none")
            sub = f"not fitted: {(e.skipped or '')[:34]}"
        ax.set_title(f"{_short(e.name)}  {e.shape[0]}×{e.shape[1]}", fontsize=8)
        ax.set_xlabel(sub, fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.set_yticks([])
        if k == 0:
            ax.legend(fontsize=6.5, loc="center right", frameon=False)

    idx = np.arange(len(report.layers))
    fitted = np.array([e.fitted for e in report.layers])

    def arr(key: str) -> FloatArray:
        vals = [getattr(e, key) for e in report.layers]
        return np.array([np.nan if v is None else float(v) for v in vals])

    w = ncols
    ax1 = fig.add_subplot(gs[nrows, 0:w])
    ax1.plot(idx[fitted], arr("sigma_plus")[fitted], "o-", ms=3, lw=1, label="σ₊ (MP edge)")
    ax1.plot(idx[fitted], arr("edge_sigma")[fitted], "s", ms=2.5, color="#d62728", label="edge_σ (1−δ)")
    ax1.plot(idx, arr("spectral_norm"), "^", ms=3, color="#636363", alpha=0.8, label="‖W‖₂")
    ax1.set_title("singular-value scale vs depth", fontsize=9)
    ax1.legend(fontsize=7, frameon=False)
    ax2 = fig.add_subplot(gs[nrows, w : 2 * w])
    ax2.bar(idx[fitted], arr("n_spikes")[fitted], color="#d62728", width=0.8)
    ax2.set_title("spikes above the noise edge", fontsize=9)
    ax3 = fig.add_subplot(gs[nrows, 2 * w : 3 * w])
    ax3.plot(idx[fitted], 100 * arr("bulk_fraction")[fitted], "o-", ms=3, lw=1, color="#31a354")
    ax3.set_ylim(0, 105)
    ax3.set_title("bulk fraction (%)", fontsize=9)
    ax1.set_ylim(bottom=0)
    for ax in (ax1, ax2, ax3):
        ax.tick_params(labelsize=7)
        ax.set_xlim(-0.5, len(idx) - 0.5)
        if len(idx) <= 16:  # few layers: name them
            labels = [_short(e.name, 18) for e in report.layers]
            ax.set_xticks(idx, labels, rotation=35, ha="right", fontsize=6.5)
        else:
            ax.set_xlabel("layer index (model order)", fontsize=8)
    title = f"Spectrum report{': ' + report.model if report.model else ''} — method {report.method}, " \
            f"δ={report.delta:g}; {len(report.fitted)}/{len(report.layers)} matrices fitted"
    if len(shown) < len(pool):
        title += f"; {len(shown)} of {len(pool)} shown (evenly by depth)"
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
