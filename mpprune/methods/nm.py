"""Structured k:n sparsity: certificate-aware masks, reconstruction inside the mask, permutations.

``NM(pattern="k:n")`` keeps k of every n consecutive entries along the input axis of each eligible layer
(DESIGN, "k:n"), one pattern per (row, group) cell chosen by :mod:`mpprune.methods.kn_search` (digest
§3.7-3.8):

* ``cost="magnitude"`` -- keep the k largest ``|w|`` (apex ASP's "1d best"; no data needed);
* ``cost="certificate"`` -- minimise ``r^T C_g r``, ``r`` the removed part of the cell and ``C_g`` the second
  moments of the group's calibration inputs: ``E[(r . h_g)^2]``, the mean square of what the removal changes
  in the layer output, a surrogate of the data-path certificate's ``||R psi_1(s)||`` (digest D1);
* ``cost="certificate_inf"`` -- the ℓ∞ variant of digest §3.7: ``max_x (r . h_g(x))^2`` over a seeded
  sample of ``max_samples`` captured input vectors (exact enumeration only).

On top of a prior unstructured mask (``source``: a :class:`~mpprune.masks.MaskStore`, ``{name: bool
tensor}`` or a checkpoint directory; True = kept) the cell's values come from the model given to
:func:`~mpprune.methods.prune` where the prior kept them and, with ``restore=True``, also where it pruned
them (free restoration inside a group whose execution is paid: digest D7); ``prior = alpha`` adds the
Hamming prior ``alpha * c_g * |m - M_prior|_1`` of digest §3.7 step 5 (``c_g`` the mean entry cost of the
group). ``reconstruct=True`` then re-solves the kept weights of every row by least squares
(:mod:`mpprune.methods.kn_reconstruct`), so the removed part ``R = A - S`` overlaps ``S`` and the
certificate engine (which computes ``R = dense - pruned``) is in the D4 case; each layer report says
``decomposition: "overlap (D4)"``. ``permute=True`` (or ``"residual"``) searches and folds an input-channel
permutation before each layer's mask (:mod:`mpprune.methods.permute`); the pruned model is then certified
against :func:`~mpprune.methods.permute.permuted_reference` of the dense model.

Eligibility (each skipped layer is listed with its reason in the report's notes): Linear and ungrouped
Conv2d whose input size is divisible by n in the chosen ``layout`` -- ``"matrix"`` (the im2col flattening
of digest §3.10, ``C_in kh kw`` divisible by n) or ``"channel"`` (hardware-legal conv k:n: at most k of
every n input channels at each output channel and kernel position; ``C_in`` divisible by n); not depthwise
or grouped; not a kxk ``Conv2dSame`` when the cost reads the data (its padding happens inside forward);
and not named by the ``skip`` policy: ``"stem"`` is the first prunable layer to run (a CNN's stem conv, a
ViT's patch embedding), ``"head"`` the last (the classifier); a model with a single prunable layer has
neither. Both are skipped by default (the paper's text, not its code: digest §5.1 item 12).

Layers are processed in execution order. With ``sequential=True`` (SparseGPT's order) a layer's statistics
come from the model with the earlier layers already pruned; with ``False`` from the dense model. Every
projected weight is checked with :func:`~mpprune.masks.check_kn` and its pattern declared in the mask store,
so :meth:`~mpprune.masks.MaskStore.enforce` and :func:`~mpprune.masks.check_legal` check it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.errors import BadInput
from mpprune.masks import KN_GROUP_SIZES, KN_LAYOUTS, MaskStore, check_kn, from_kn_matrix, kn_matrix, parse_kn
from mpprune.methods._common import Include, Target, reports_from_masks, target_layers
from mpprune.methods.api import Context, MethodOutput, register
from mpprune.methods.kn_reconstruct import reconstruct as reconstruct_rows
from mpprune.methods.kn_search import (
    DEFAULT_MAX_PATTERNS,
    SEARCH_METHODS,
    kn_cost,
    select_kn,
    select_kn_inf,
)
from mpprune.methods.kn_stats import execution_order, group_blocks, input_samples, layer_moments
from mpprune.methods.magnitude import normalise_include
from mpprune.methods.permute import (
    PermutationRecord,
    consumer_terms,
    find_sites,
    fold_checked,
    search_permutation,
)
from mpprune.methods.permute_sites import Site, site_positions

__all__ = ["NM", "KN_COSTS", "SKIP_POLICIES", "Eligibility", "kn_eligibility"]

#: The choices of ``NM.cost``.
KN_COSTS = ("magnitude", "certificate", "certificate_inf")
#: The names ``NM.skip`` may hold.
SKIP_POLICIES = ("head", "stem")


@dataclass(frozen=True)
class NM:
    """k:n structured sparsity (module docstring). ``pattern`` ``"k:n"`` with 1 <= k < n, n in
    4, 8, 12, 16, 32; ``search``: ``"auto"`` (exact streamed enumeration up to ``max_patterns`` patterns per
    group, greedy + swaps beyond), ``"enumerate"`` or ``"local"``; ``damp``: the reconstruction's
    dampening (fraction of the mean diagonal of the second moments); ``seed``: the permutation search and the
    ℓ∞ sample."""

    pattern: str = "2:4"
    cost: str = "certificate"
    permute: bool | str = False
    reconstruct: bool = False
    source: Any = None
    prior: float = 0.0
    restore: bool = True
    layout: str = "matrix"
    skip: tuple[str, ...] = ("head", "stem")
    include: Include = None
    sequential: bool = True
    search: str = "auto"
    max_patterns: int = DEFAULT_MAX_PATTERNS
    damp: float = 0.01
    max_samples: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        k, n = parse_kn(self.pattern)
        if not 1 <= k < n or n not in KN_GROUP_SIZES:
            raise BadInput(
                f"pattern must be k:n with 1 <= k < n and n in {KN_GROUP_SIZES}, got {self.pattern!r}"
            )
        object.__setattr__(self, "pattern", f"{k}:{n}")
        if self.cost not in KN_COSTS:
            raise BadInput(f"cost must be one of {KN_COSTS}, got {self.cost!r}")
        if self.permute not in (False, True, "residual"):
            raise BadInput(f"permute must be false, true or 'residual', got {self.permute!r}")
        if self.layout not in KN_LAYOUTS:
            raise BadInput(f"layout must be one of {KN_LAYOUTS}, got {self.layout!r}")
        if self.search not in SEARCH_METHODS:
            raise BadInput(f"search must be one of {SEARCH_METHODS}, got {self.search!r}")
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        bad = sorted(set(skip) - set(SKIP_POLICIES))
        if bad:
            raise BadInput(f"skip may hold {SKIP_POLICIES}, got {bad}")
        object.__setattr__(self, "skip", skip)
        for name, lo in (("prior", 0.0), ("damp", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < lo:
                raise BadInput(f"{name} must be a finite number >= {lo}, got {v!r}")
        for name in ("max_patterns", "max_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInput(f"{name} must be a positive integer, got {v!r}")
        if self.prior > 0 and self.source is None:
            raise BadInput("prior > 0 pulls toward a prior mask: give source=")
        if self.source is not None and not isinstance(self.source, (MaskStore, dict, str, Path)):
            raise BadInput(
                "source must be a MaskStore, a {name: bool tensor} dict or a checkpoint directory, got "
                f"{type(self.source).__name__}"
            )
        normalise_include(self)

    @property
    def kn(self) -> tuple[int, int]:
        """``(k, n)``."""
        return parse_kn(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        """Whether calibration batches are needed (data costs, reconstruction, permutations)."""
        return self.cost != "magnitude" or self.reconstruct or bool(self.permute)


@dataclass
class Eligibility:
    """One prunable layer and why it is not k:n-pruned (``reason`` None = eligible)."""

    name: str
    module: nn.Module
    kind: str
    reason: str | None


def _structural_reason(t: Target, n: int, layout: str, reads_data: bool) -> str | None:
    mod = t.module
    if t.kind == "conv2d_depthwise":
        return "depthwise conv (one input channel per filter): no k:n input groups"
    if t.kind == "conv2d_grouped":
        return f"grouped conv (groups={getattr(mod, 'groups', '?')}): k:n needs groups=1"
    if isinstance(mod, nn.Conv2d):
        kk = int(np.prod(mod.kernel_size))
        if layout == "channel" and mod.in_channels % n:
            return f"C_in={mod.in_channels} is not divisible by n={n} (channel layout: n channels per group)"
        if layout == "matrix" and (mod.in_channels * kk) % n:
            return f"input size C_in*kh*kw={mod.in_channels * kk} is not divisible by n={n}"
        if reads_data and kk > 1 and (type(mod).__name__ == "Conv2dSame" or isinstance(mod.padding, str)):
            return "kxk conv with 'same' padding computed in forward: its im2col inputs cannot be captured"
        if reads_data and mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r}: its im2col inputs cannot be captured"
        return None
    if isinstance(mod, nn.Linear):
        return None if mod.in_features % n == 0 else f"in_features={mod.in_features} not divisible by n={n}"
    return f"{type(mod).__name__} is not a Linear or Conv2d"


def kn_eligibility(model: nn.Module, cfg: NM, sample: torch.Tensor | None = None) -> list[Eligibility]:
    """Every prunable layer selected by ``cfg.include``, in execution order on ``sample`` (module order
    without one), with the reason it is skipped (None = eligible); module docstring."""
    return _eligibility(model, cfg, sample)[0]


def _eligibility(
    model: nn.Module, cfg: NM, sample: torch.Tensor | None
) -> tuple[list[Eligibility], dict[int, int]]:
    targets = target_layers(model, cfg.include)
    k, n = cfg.kn
    calls: dict[int, int] = {}
    if sample is not None:
        ordered, calls = execution_order(model, [t.module for t in targets], sample)
        by_mod = {id(t.module): t for t in targets}
        targets = [by_mod[id(m)] for m in ordered]
    reads = cfg.needs_calibration
    out = [
        Eligibility(t.name, t.module, t.kind, _structural_reason(t, n, cfg.layout, reads)) for t in targets
    ]
    if len(out) > 1 and "stem" in cfg.skip:
        out[0].reason = out[0].reason or "stem: the first layer to run (skip policy 'stem')"
    if len(out) > 1 and "head" in cfg.skip:
        out[-1].reason = out[-1].reason or "head: the last layer to run (skip policy 'head')"
    return out, calls


def _prior_masks(source: Any, names: set[str]) -> dict[str, torch.Tensor]:
    if source is None:
        return {}
    if isinstance(source, MaskStore):
        state = source.to_state_dict()
    elif isinstance(source, dict):
        state = dict(source)
    else:
        from safetensors.torch import load_file

        from mpprune.checkpoint import MASKS_FILE

        path = Path(source) / MASKS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"source checkpoint {source}: {MASKS_FILE} missing")
        state = load_file(str(path))
    unknown = sorted(set(state) - names)
    if unknown:
        raise BadInput(f"source masks name layers that are not prunable layers of the model: {unknown[:8]}")
    return {k: torch.as_tensor(v).bool() for k, v in state.items()}


def _sample(calibration: Any) -> torch.Tensor:
    for x, _ in iter_calibration(calibration):
        return x[:8]
    raise BadInput("empty calibration set")  # pragma: no cover - iter_calibration raises first


class _Run:
    """The state of one NM application (the handler is split into steps for readability)."""

    def __init__(self, model: nn.Module, cfg: NM, ctx: Context) -> None:
        self.model, self.cfg = model, cfg
        self.k, self.n = cfg.kn
        self.calib = materialise(ctx.calibration) if ctx.calibration is not None else None
        if cfg.needs_calibration and self.calib is None:
            raise BadInput(
                f"NM(cost={cfg.cost!r}, reconstruct={cfg.reconstruct}, permute={cfg.permute!r}) needs "
                "calibration batches from the train split (or cost='magnitude' without reconstruct/permute)"
            )
        self.x = _sample(self.calib) if self.calib is not None else None
        self.progress = ctx.progress
        self.elig, self.calls = _eligibility(model, cfg, self.x)
        self.prior = _prior_masks(cfg.source, {e.name for e in self.elig})
        # statistics captured up front (sequential=False: all layers in one pass over the dense model)
        self.moments: dict[str, torch.Tensor] = {}
        self.samples: dict[str, torch.Tensor] = {}
        self.store = MaskStore()
        self.details: dict[nn.Module, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.records: list[PermutationRecord] = []
        self.reported = 0  # records already attached to a layer report
        self.sites: dict[str, Site] = {}
        self.residual: Site | None = None
        if cfg.permute:
            assert self.x is not None
            self.sites, skipped, self.residual = find_sites(model, self.x, residual=cfg.permute == "residual")
            if "<residual>" in skipped:
                self.notes.append(f"residual-stream permutation not applied: {skipped['<residual>']}")

    # -- statistics ---------------------------------------------------------------------------------
    def _stop_early(self, names: list[str]) -> bool:
        mods = dict(self.model.named_modules())
        return all(self.calls.get(id(mods[n]), 0) == 1 for n in names)

    def need(self, e: Eligibility) -> int | None | bool:
        """What layer ``e`` needs: None = the full second moments, n = per group, False = nothing."""
        reads = self.cfg.cost != "magnitude"
        permutable = bool(self.cfg.permute) and self.usable_site(e.name)[0] is not None
        if self.cfg.reconstruct or (reads and permutable):
            return None
        return self.n if self.cfg.cost == "certificate" else False

    def capture(self, wanted: dict[str, int | None]) -> dict[str, torch.Tensor]:
        assert self.calib is not None
        if not wanted:
            return {}
        names = list(wanted)
        return layer_moments(
            self.model, wanted, self.calib, self.cfg.layout, stop_early=self._stop_early(names)
        )

    def layer_stats(self, e: Eligibility) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the layer's second moments: full (m, m), per group (G, n, n) or None; input samples or None)."""
        need = self.need(e)
        mom = None
        if need is not False:
            mom = self.moments.pop(e.name) if e.name in self.moments else self.capture({e.name: need})[e.name]
        samples = None
        if self.cfg.cost == "certificate_inf":
            assert self.calib is not None
            samples = self.samples.pop(e.name, None)
            if samples is None:
                samples = input_samples(
                    self.model, e.name, self.calib, self.cfg.layout, self.cfg.max_samples, self.cfg.seed,
                    stop_early=self._stop_early([e.name]),
                )
        return mom, samples

    def precompute(self, eligible: list[Eligibility]) -> None:
        """sequential=False: every layer's statistics from the (dense) model before anything is pruned."""
        if self.cfg.sequential or self.calib is None:
            return
        wanted = {e.name: need for e in eligible if (need := self.need(e)) is not False}
        self.moments = self.capture(wanted)  # type: ignore[arg-type]
        if self.cfg.cost == "certificate_inf":
            for e in eligible:
                self.samples[e.name] = input_samples(
                    self.model, e.name, self.calib, self.cfg.layout, self.cfg.max_samples, self.cfg.seed,
                    stop_early=self._stop_early([e.name]),
                )

    # -- permutations -------------------------------------------------------------------------------
    def fold(self, site: Site, terms: list[tuple[torch.Tensor, torch.Tensor | None]]) -> np.ndarray | None:
        """Search a permutation for ``site``, fold it (dry-run checked) into the model, the masks and the
        reference; returns the permutation or None when the fold was undone."""
        assert self.x is not None
        result = search_permutation(terms, (self.k, self.n), site.block, seed=self.cfg.seed)
        why = fold_checked(self.model, site, result.perm, self.x, self.store)
        if why is not None:
            self.notes.append(f"permutation at {site.key}: {why}")
            return None
        self.records.append(PermutationRecord(site, result))
        return result.perm

    def usable_site(self, name: str) -> tuple[Site | None, int, str | None]:
        """The permutation site of layer ``name`` when its k:n groups are channel groups."""
        site = self.sites.get(name)
        if site is None:
            return None, 1, None
        K, why = site_positions(self.model, site, self.cfg.layout)
        if K is None or site.channels % self.n or site.block % self.n:
            why = why or f"{site.channels} channels (blocks of {site.block}) not divisible by {self.n}"
            return None, 1, why
        return site, K, None

    def permutation_for(self, e: Eligibility, H: torch.Tensor | None) -> tuple[np.ndarray | None, int]:
        site, K, why = self.usable_site(e.name)
        if site is None:
            if why is not None:
                self.notes.append(f"no permutation for {e.name!r}: {why}")
            return None, 1
        weight = e.module.weight
        assert isinstance(weight, torch.Tensor)
        return self.fold(site, [consumer_terms(weight, H, K)]), K

    def fold_residual(self) -> None:
        site = self.residual
        if site is None:
            return
        mods = dict(self.model.named_modules())
        moments = self.capture(dict.fromkeys(site.consumers)) if self.cfg.cost != "magnitude" else {}
        terms = [consumer_terms(mods[name].weight, moments.get(name), 1) for name in site.consumers]
        self.fold(site, terms)

    # -- one layer -----------------------------------------------------------------------------------
    def prune_layer(self, e: Eligibility) -> torch.Tensor:
        cfg, k, n = self.cfg, self.k, self.n
        mod = e.module
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        reads = cfg.cost != "magnitude"
        mom, samples = self.layer_stats(e)
        H = mom if (mom is not None and mom.dim() == 2) else None
        second = mom if (mom is not None and mom.dim() == 3) else None
        details: dict[str, Any] = self.details.setdefault(mod, {})
        if cfg.permute:
            perm, K = self.permutation_for(e, H if reads else None)
            # every fold not yet reported (the residual stream's, this layer's) goes into this layer's report
            details["permutations"] = [
                self.records[i].to_dict() | {"order": i} for i in range(self.reported, len(self.records))
            ]
            self.reported = len(self.records)
            if perm is not None:
                C = len(perm)
                full = torch.as_tensor((np.arange(K)[:, None] * C + perm[None, :]).reshape(-1))
                if H is not None:
                    H = H[full][:, full]
                if samples is not None:
                    samples = samples[:, full]
        W = kn_matrix(weight.detach(), cfg.layout).to(torch.float64).cpu()
        rows, m = W.shape
        G = m // n
        u = W.clone()
        prior = self.prior.get(e.name)
        if prior is not None:
            if tuple(prior.shape) != tuple(weight.shape):
                raise BadInput(
                    f"layer {e.name!r}: source mask {tuple(prior.shape)} != weight {tuple(weight.shape)}"
                )
            M = kn_matrix(prior, cfg.layout).cpu()
            if not cfg.restore:
                u = torch.where(M, u, 0.0)
        u3 = u.reshape(rows, G, n)
        if second is None and H is not None and reads:
            second = group_blocks(H, n)
        linear = None
        if prior is not None and cfg.prior > 0:
            if samples is not None:
                h2 = (samples**2).mean(0).reshape(G, n)
            elif second is not None:
                h2 = torch.diagonal(second, dim1=-2, dim2=-1)
            else:
                h2 = torch.ones(G, n, dtype=torch.float64)
            cbar = (u3**2 * h2[None]).mean(dim=(0, 2))  # (G,)
            Mg = M.reshape(rows, G, n).to(torch.float64)
            linear = cfg.prior * cbar[None, :, None] * (2 * Mg - 1)
        quad = second if cfg.cost == "certificate" else None
        if cfg.cost == "certificate_inf":
            assert samples is not None
            sel = select_kn_inf(
                u3, k, samples.reshape(-1, G, n).transpose(0, 1), linear, max_patterns=cfg.max_patterns
            )
        else:
            sel = select_kn(u3, k, quad, linear, method=cfg.search, max_patterns=cfg.max_patterns)
        keep = sel.keep.reshape(rows, m)
        details.update(
            pattern=cfg.pattern, layout=cfg.layout, cost=cfg.cost, search=sel.method, patterns=sel.patterns,
            objective=float(sel.cost.sum()),
        )
        if cfg.cost != "magnitude":
            mag = select_kn(u3, k).keep
            if cfg.cost == "certificate":
                details["objective_magnitude"] = float(kn_cost(u3, mag, quad, linear).sum())
        new = torch.where(keep, u, 0.0)
        if prior is not None:
            details["restored"] = int((keep & ~M & (u != 0)).sum())  # D7: free restoration inside groups
        if cfg.reconstruct:
            assert H is not None
            rec = reconstruct_rows(u, keep, H, damp=cfg.damp)
            new = rec.weight
            details["reconstruction"] = rec.to_dict()
            details["decomposition"] = "overlap (D4): kept weights were re-solved, R = A - S overlaps S"
        else:
            details["decomposition"] = "mask (D5): S and R = A - S have disjoint supports"
        with torch.no_grad():
            weight.copy_(from_kn_matrix(new, weight.shape, cfg.layout).to(weight))
        mask = from_kn_matrix(keep, weight.shape, cfg.layout).to(weight.device)
        with torch.no_grad():
            weight.masked_fill_(~mask, 0)
        check_kn(weight.detach(), cfg.pattern, layout=cfg.layout, layer=e.name)
        self.store.add(e.name, mod, mask)
        self.store.declare(e.name, cfg.pattern, cfg.layout)
        return mask


@register(NM, "nm")
def _apply_nm(model: nn.Module, cfg: NM, ctx: Context) -> MethodOutput:
    run = _Run(model, cfg, ctx)
    eligible = [e for e in run.elig if e.reason is None]
    if not eligible:
        raise BadInput(
            f"no layer is eligible for {cfg.pattern}: "
            + "; ".join(f"{e.name}: {e.reason}" for e in run.elig[:6])
        )
    for e in run.elig:
        if e.reason is not None:
            run.notes.append(f"skipped {e.name!r}: {e.reason}")
    run.fold_residual()
    run.precompute(eligible)
    prune_masks: dict[nn.Module, torch.Tensor] = {}
    for e in tqdm(eligible, desc=f"NM {cfg.pattern}", disable=not ctx.progress):
        prune_masks[e.module] = ~run.prune_layer(e)
    targets = [Target(e.name, e.module, e.kind, False, e.reason) for e in eligible]
    reports = reports_from_masks(targets, prune_masks, details=run.details)
    if run.records:
        run.notes.append(
            f"{len(run.records)} input-channel permutation(s) folded into the weights: certify against "
            "mpprune.methods.permute.permuted_reference(dense, report)"
        )
    out = MethodOutput(run.store, reports, run.notes)
    return out
