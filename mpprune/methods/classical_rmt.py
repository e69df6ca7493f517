"""Classical RMT pruning (digest §3.2): per-layer SVD, drop singular values below the fitted MP edge,
optionally sparsify the kept bulk singular vectors (Haar variant, §3.4) and factorise a Linear into two
smaller Linears when that saves parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpprune.errors import BadInput
from mpprune.layers import from_matrix_view, matrix_blocks
from mpprune.masks import MaskStore
from mpprune.methods._common import (
    Include,
    LayerReport,
    Target,
    fit_batch,
    parent_map,
    target_layers,
)
from mpprune.methods.api import Context, MethodOutput, register
from mpprune.methods.magnitude import normalise_include

__all__ = ["ClassicalRMT", "lowrank_block"]


@dataclass(frozen=True)
class ClassicalRMT:
    """Per-layer spectral truncation at the fitted MP edge (``edge_sigma`` of ``mptheory.fit``).

    Keeps every singular value above the edge plus the largest ⌊keep_fraction·n_bulk⌋ bulk ones (at least
    ``min_rank``). ``sparsify_vectors``: for each *kept* bulk vector pair (s < edge), zero entries of u
    (length n_u) below z/√n_u·(1 − s/edge)^p and of v below z/√n_v·(1 − s/edge)^p (z = ``vector_z``,
    p = ``vector_p``). ``factorise``: replace a Linear by ``Sequential(Linear(in, k, bias=False),
    Linear(k, out))`` (factors √S·Vᵀ and U·√S) when k·(in + out) < in·out. ``alpha``/``delta`` are passed
    to the MP fit when it accepts them. Layers not eligible for a fit are left unchanged.
    """

    alpha: float = 0.25
    keep_fraction: float = 0.0
    factorise: bool = False
    sparsify_vectors: bool = False
    vector_z: float = 0.5
    vector_p: float = 3.0
    delta: float = 0.05
    min_rank: int = 1
    include: Include = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise BadInput(f"alpha must lie in (0, 0.5), got {self.alpha!r}")
        if not 0.0 <= self.keep_fraction <= 1.0:
            raise BadInput(f"keep_fraction must lie in [0, 1], got {self.keep_fraction!r}")
        if not 0.0 < self.delta < 1.0:
            raise BadInput(f"delta must lie in (0, 1), got {self.delta!r}")
        if self.min_rank < 0:
            raise BadInput(f"min_rank must be >= 0, got {self.min_rank!r}")
        if not (math.isfinite(self.vector_z) and self.vector_z >= 0):
            raise BadInput(f"vector_z must be >= 0, got {self.vector_z!r}")
        normalise_include(self)


def lowrank_block(
    W: torch.Tensor, edge: float, cfg: ClassicalRMT
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Truncated (and optionally vector-sparsified) SVD factors ``U_k, S_k, V_k`` of ``W`` (float64)."""
    U, S, Vh = torch.linalg.svd(W.detach().double().cpu(), full_matrices=False)
    n_above = int((S > edge).sum().item())
    n_bulk = int(S.numel()) - n_above
    k = n_above + math.floor(cfg.keep_fraction * n_bulk)
    k = min(max(k, cfg.min_rank), int(S.numel()))
    Uk, Sk, Vk = U[:, :k].clone(), S[:k].clone(), Vh[:k, :].T.clone()
    n_zero_vec = 0
    if cfg.sparsify_vectors:
        for i in range(k):
            s = float(Sk[i])
            if s >= edge:
                continue
            f = (1.0 - s / edge) ** cfg.vector_p
            tu = cfg.vector_z / math.sqrt(Uk.shape[0]) * f
            tv = cfg.vector_z / math.sqrt(Vk.shape[0]) * f
            mu, mv = Uk[:, i].abs() < tu, Vk[:, i].abs() < tv
            n_zero_vec += int(mu.sum()) + int(mv.sum())
            Uk[mu, i] = 0.0
            Vk[mv, i] = 0.0
    info = {"rank": k, "n_above_edge": n_above, "full_rank": int(S.numel()), "edge_sigma": float(edge),
            "vector_entries_zeroed": n_zero_vec}
    return Uk, Sk, Vk, info


def _set_module(parents: dict[nn.Module, nn.Module], old: nn.Module, new: nn.Module) -> None:
    parent = parents.get(old)
    if parent is None:
        raise BadInput("cannot factorise the root module itself")
    for cname, child in parent.named_children():
        if child is old:
            setattr(parent, cname, new)


@register(ClassicalRMT, "classical_rmt")
def _apply_classical(model: nn.Module, cfg: ClassicalRMT, ctx: Context) -> MethodOutput:
    targets = target_layers(model, cfg.include)
    fit_targets = [t for t in targets if t.eligible_for_fit]
    blocks: list[tuple[Target, str, torch.Tensor]] = [
        (t, bname, b) for t in fit_targets for bname, b in matrix_blocks(t.info)
    ]
    fits = fit_batch([b.detach().double().cpu() for _, _, b in blocks], alpha=cfg.alpha, delta=cfg.delta)
    per_target: dict[nn.Module, list[tuple[str, torch.Tensor, Any]]] = {}
    for (t, bname, b), fit in zip(blocks, fits):
        per_target.setdefault(t.module, []).append((bname, b, fit))
    parents = parent_map(model)
    store = MaskStore()
    reports: list[LayerReport] = []
    notes: list[str] = []
    for t in tqdm(targets, desc="ClassicalRMT", disable=not ctx.progress):
        if t.module not in per_target:
            w = t.weight.detach()
            store.add(t.name, t.module, w != 0)
            reports.append(LayerReport(t.name, tuple(w.shape), t.kind, int((w == 0).sum()), int(w.numel()),
                                       details={"skipped": t.reason or "not eligible for an MP fit"}))
            continue
        factors = []
        infos = []
        for bname, b, fit in per_target[t.module]:
            Uk, Sk, Vk, info = lowrank_block(b, float(fit.edge_sigma), cfg)
            info["block"] = bname
            info["sigma_plus"] = float(fit.sigma_plus)
            factors.append((Uk, Sk, Vk))
            infos.append(info)
        w = t.weight
        out_dim = w.shape[0]
        in_dim = int(w.numel() // out_dim)
        rank = sum(i["rank"] for i in infos)
        sig = float(sum(i["sigma_plus"] for i in infos) / len(infos))
        # A: (rank, in) = stacked sqrt(S) V^T; B: (out, rank) block diagonal U sqrt(S)
        A = torch.cat([(Vk * Sk.sqrt()).T for Uk, Sk, Vk in factors], dim=0)
        B = torch.zeros(out_dim, rank, dtype=torch.float64)
        r0 = c0 = 0
        for Uk, Sk, _ in factors:
            B[r0 : r0 + Uk.shape[0], c0 : c0 + Sk.numel()] = Uk * Sk.sqrt()
            r0 += Uk.shape[0]
            c0 += Sk.numel()
        details: dict[str, Any] = {"rank_kept": rank, "blocks": infos}
        saves = rank * (in_dim + out_dim) < in_dim * out_dim
        if cfg.factorise and isinstance(t.module, nn.Linear) and saves and rank > 0:
            lin = t.module
            first = nn.Linear(in_dim, rank, bias=False, device=w.device, dtype=w.dtype)
            second = nn.Linear(rank, out_dim, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                first.weight.copy_(A.to(w.dtype))
                second.weight.copy_(B.to(w.dtype))
                if lin.bias is not None:
                    second.bias.copy_(lin.bias)
            seq = nn.Sequential(first, second)
            _set_module(parents, lin, seq)
            details["factorised"] = True
            for suffix, mod in (("0", first), ("1", second)):
                wm = mod.weight.detach()
                name = f"{t.name}.{suffix}"
                store.add(name, mod, wm != 0)
                reports.append(LayerReport(name, tuple(wm.shape), "linear", int((wm == 0).sum()),
                                           int(wm.numel()), sigma_plus=sig if suffix == "0" else None,
                                           details=details if suffix == "0" else {"factor_of": t.name}))
            continue
        with torch.no_grad():
            w.copy_(from_matrix_view(t.module, (B @ A).to(w.dtype).to(w.device)))
        details["factorised"] = False
        if cfg.factorise and not saves:
            details["not_factorised"] = "factorisation would not reduce the parameter count"
        wd = w.detach()
        store.add(t.name, t.module, wd != 0)
        reports.append(LayerReport(t.name, tuple(wd.shape), t.kind, int((wd == 0).sum()), int(wd.numel()),
                                   sigma_plus=sig, details=details))
    notes.append("ClassicalRMT: singular values at or below the fitted edge_sigma are dropped")
    return MethodOutput(store, reports, notes)
