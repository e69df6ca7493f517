"""Input-channel permutations that lower the k:n cost, folded into the weights (DESIGN, "Permutations").

A k:n mask groups n consecutive input channels of a layer; which channels share a group is arbitrary, so the
channels of the tensor a layer reads can be reordered first -- in the layer (its input columns) *and* in the
layers that produce that tensor (their output rows and biases, and every per-channel parameter in between)
-- without changing the function. The pruned model is then an ordinary module: no hooks, nothing to
re-apply at load (the authors' k:n code kept the permutation in a forward pre-hook and lost it on
save/load; digest §3.9, §5.1 item 8). Where a permutation can be folded (ViT MLP ``fc1 -> fc2``, attention
``v -> proj`` within heads, conv chains through BatchNorm, the ViT residual stream) is
:mod:`mpprune.methods.permute_sites`.

The search (:func:`search_permutation`) minimises the summed per-group cost of the k:n projection
(:mod:`mpprune.methods.kn_search`): it starts from the better of the identity and the importance interleave
of digest §3.9 (importance ``sum_p ||W[:, p, c]||^2 E[h_{p,c}^2]``, sorted, position s of group g taking the
(s G + g)-th channel), then improves it with Pool & Yu's stripe-group moves: random disjoint pairs of groups,
every balanced re-split of the pair's 2n channels (34 for n = 4) or, for n >= 8, every single channel swap;
the best improving move of each pair is applied. Groups of a kxk conv in the ``"matrix"`` (im2col) layout
mix kernel positions of neighbouring channels, so channels are permuted only where groups are channel
groups: Linear, 1x1 conv, and the ``"channel"`` layout
(:func:`~mpprune.methods.permute_sites.site_positions`).

:func:`permute_model` does it for a whole model; :func:`permuted_reference` replays recorded permutations
on a copy of the dense model (the reference a permuted, pruned model is certified against).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.certify.calibration import iter_calibration
from mpprune.certify.capture import capture_covariance
from mpprune.errors import BadInput
from mpprune.masks import kn_matrix, parse_kn
from mpprune.methods.kn_search import min_cost, n_patterns
from mpprune.methods.permute_sites import (
    Edit,
    Site,
    apply_permutation,
    find_sites,
    fold_checked,
    site_positions,
)

__all__ = [
    "Edit",
    "Site",
    "PermutationResult",
    "PermutationRecord",
    "apply_permutation",
    "consumer_terms",
    "find_sites",
    "fold_checked",
    "interleave",
    "permute_model",
    "permuted_reference",
    "search_permutation",
]


@dataclass
class PermutationResult:
    """What :func:`search_permutation` found: ``perm`` (new channel j = old channel perm[j]) and the summed
    k:n cost of the identity, of the starting point (``start``: "identity" or "interleave") and final."""

    perm: np.ndarray
    cost_identity: float
    cost_start: float
    cost_final: float
    start: str
    rounds: int
    evaluations: int
    moves: int

    @property
    def improvement(self) -> float:
        """Relative cost reduction against the identity (0 when the identity cost is 0)."""
        return 1.0 - self.cost_final / self.cost_identity if self.cost_identity > 0 else 0.0


@dataclass
class PermutationRecord:
    """A permutation folded into a model: the site, the permutation and the search numbers (JSON-able)."""

    site: Site
    result: PermutationResult
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "kind": self.site.kind,
            "consumers": list(self.site.consumers),
            "channels": self.site.channels,
            "block": self.site.block,
            "perm": [int(v) for v in r.perm],
            "edits": [e.to_dict() for e in self.site.edits],
            "cost_identity": r.cost_identity,
            "cost_start": r.cost_start,
            "cost_final": r.cost_final,
            "improvement": r.improvement,
            "start": r.start,
            "rounds": r.rounds,
            "evaluations": r.evaluations,
            "moves": r.moves,
            "notes": list(self.notes),
        }


def permuted_reference(
    model: nn.Module, records: Iterable[PermutationRecord | dict[str, Any]] | Any
) -> nn.Module:
    """A deep copy of ``model`` with recorded permutations folded in, in order: the dense model a pruned
    model with permutations must be certified against (``R = A - S`` needs the same channel order).

    ``records``: :class:`PermutationRecord` objects, their ``to_dict()``, or a prune report (a
    ``PruneReport`` or its dict) whose layer details carry ``"permutations"`` lists (as ``NM`` writes them).
    """
    out = copy.deepcopy(model)
    for rec in _records_of(records):
        if isinstance(rec, PermutationRecord):
            apply_permutation(out, rec.site.edits, rec.result.perm)
        else:
            edits = [
                Edit(e["module"], e["attr"], int(e["dim"]), int(e.get("offset", 0))) for e in rec["edits"]
            ]
            apply_permutation(out, edits, rec["perm"])
    return out


def _records_of(obj: Any) -> list[Any]:
    """Permutation records in the order they were folded: from a list, or from the ``"permutations"`` lists
    in the layer details of a prune report (each record carries its ``"order"``)."""
    if hasattr(obj, "to_dict") and hasattr(obj, "layers"):
        obj = obj.to_dict()
    if isinstance(obj, dict) and "layers" in obj:
        recs: list[Any] = []
        for lr in obj["layers"]:
            d = lr.get("details", {}) if isinstance(lr, dict) else getattr(lr, "details", {})
            recs.extend(d.get("permutations") or [])
        recs.sort(key=lambda r: int(r.get("order", 0)))
        return recs
    return list(obj)


# ------------------------------------------------------------------------------------------- search
def consumer_terms(
    weight: torch.Tensor, second: torch.Tensor | None, positions: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W3, Cov)`` of one consumer for :func:`search_permutation`: its channel-layout k:n matrix as
    ``(out, K, C)`` and the K diagonal ``(C, C)`` blocks of its full channel-layout second moments
    ``second`` (``(K C, K C)``; None for the magnitude cost)."""
    mat = kn_matrix(weight.detach(), "channel").to(torch.float64)
    out, cols = mat.shape
    C = cols // positions
    W3 = mat.reshape(out, positions, C)
    if second is None:
        return W3, None
    S = second.to(torch.float64)
    if tuple(S.shape) != (cols, cols):
        raise BadInput(f"second moments of shape {tuple(S.shape)} do not match {cols} inputs")
    cov = torch.stack([S[p * C : (p + 1) * C, p * C : (p + 1) * C] for p in range(positions)])
    return W3, cov


def interleave(importance: np.ndarray, n: int, block: int) -> np.ndarray:
    """Digest §3.9's importance interleave within each block: channels sorted by decreasing importance,
    position s of group g takes the (s G_b + g)-th (G_b groups per block)."""
    C = len(importance)
    perm = np.empty(C, dtype=np.int64)
    Gb = block // n
    for b0 in range(0, C, block):
        idx = np.arange(b0, b0 + block)
        order = idx[np.argsort(-importance[idx], kind="stable")]
        for g in range(Gb):
            for s in range(n):
                perm[b0 + g * n + s] = order[s * Gb + g]
    return perm


def _pair_candidates(n: int, max_partitions: int) -> np.ndarray:
    """Index sets (into the 2n channels of a pair) of the first group for every candidate re-split:
    all balanced partitions when there are at most ``max_partitions``, else every single swap."""
    if math.comb(2 * n - 1, n - 1) <= max_partitions:
        combos = [c for c in itertools.combinations(range(2 * n), n) if c[0] == 0]
        return np.array(combos[1:], dtype=np.int64)  # combos[0] is the identity
    out = []
    for i in range(n):
        for j in range(n):
            first = list(range(n))
            first[i] = n + j
            out.append(sorted(first))
    return np.array(out, dtype=np.int64)


def search_permutation(
    terms: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    pattern: str | tuple[int, int],
    block: int | None = None,
    *,
    seed: int = 0,
    max_rounds: int = 48,
    patience: int = 4,
    max_partitions: int = 64,
    exact_patterns: int = 70,
    chunk_elems: int = 1 << 22,
) -> PermutationResult:
    """A channel permutation lowering ``sum_groups sum_terms sum_(rows, positions) min_pattern cost``.

    ``terms``: one ``(W3, Cov)`` per consumer (:func:`consumer_terms`), all with the same C channels;
    ``block``: channels are permuted within consecutive blocks of this size (attention heads; default C).
    The group cost is the k:n projection cost of :mod:`mpprune.methods.kn_search` (exact enumeration when
    C(n, k) <= ``exact_patterns``, else its local search). Start: the better of the identity and the
    importance interleave; then at most ``max_rounds`` rounds of stripe-group moves on random disjoint
    pairs of groups (module docstring), stopping after ``patience`` rounds without a move.
    """
    k, n = parse_kn(pattern)
    if not 1 <= k < n:
        raise BadInput(f"permutation search needs 1 <= k < n, got {pattern!r}")
    if not terms:
        raise BadInput("permutation search needs at least one consumer")
    C = int(terms[0][0].shape[2])
    block = C if block is None else int(block)
    if any(int(W3.shape[2]) != C for W3, _ in terms):
        raise BadInput("every consumer of a permutation site must read the same channels")
    if C % n or block % n or C % block:
        raise BadInput(f"{C} channels in blocks of {block} cannot be split into groups of {n}")
    method = "enumerate" if n_patterns(k, n) <= exact_patterns else "local"

    def set_costs(sets: torch.Tensor) -> torch.Tensor:
        b = sets.shape[0]
        tot = torch.zeros(b, dtype=torch.float64)
        for W3, cov in terms:
            out, K, _ = W3.shape
            step = max(1, chunk_elems // max(1, out * K * n * n))
            for s0 in range(0, b, step):
                S = sets[s0 : s0 + step]
                bs = S.shape[0]
                u = W3[:, :, S].reshape(out, K * bs, n)
                sec = None if cov is None else cov[:, S[:, :, None], S[:, None, :]].reshape(K * bs, n, n)
                cost = min_cost(u, k, sec, method=method, chunk_elems=chunk_elems)
                tot[s0 : s0 + bs] += cost.sum(0).reshape(K, bs).sum(0)
        return tot

    G = C // n
    evaluations = 0

    def group_costs(perm: np.ndarray) -> torch.Tensor:
        nonlocal evaluations
        evaluations += G
        return set_costs(torch.as_tensor(perm.reshape(G, n)))

    ident = np.arange(C, dtype=np.int64)
    imp = np.zeros(C)
    for W3, cov in terms:
        energy = (W3**2).sum(0)  # (K, C)
        diag = torch.ones_like(energy) if cov is None else torch.diagonal(cov, dim1=-2, dim2=-1)
        imp += (energy * diag).sum(0).numpy()
    inter = interleave(imp, n, block)
    c_id = group_costs(ident)
    c_in = group_costs(inter)
    if float(c_in.sum()) < float(c_id.sum()):
        perm, costs, start = inter.copy(), c_in.clone(), "interleave"
    else:
        perm, costs, start = ident.copy(), c_id.clone(), "identity"
    cost_start = float(costs.sum())
    cands = torch.as_tensor(_pair_candidates(n, max_partitions))
    n_c = cands.shape[0]
    comp = torch.stack([torch.as_tensor(sorted(set(range(2 * n)) - set(c.tolist()))) for c in cands])
    rng = np.random.default_rng(seed)
    Gb = block // n
    rounds = moves = stale = 0
    for _ in range(max_rounds):
        rounds += 1
        pairs = []
        for b0 in range(0, G, Gb):
            order = b0 + rng.permutation(Gb)
            pairs += [(int(order[i]), int(order[i + 1])) for i in range(0, Gb - 1, 2)]
        if not pairs:
            break
        P = len(pairs)
        A = torch.tensor([a for a, _ in pairs])
        B = torch.tensor([b for _, b in pairs])
        pt = torch.as_tensor(perm.reshape(G, n))
        ch = torch.cat([pt[A], pt[B]], dim=1)  # (P, 2n)
        first = ch[:, cands]  # (P, n_c, n)
        second = ch[:, comp]
        sets = torch.stack([first, second], dim=2).reshape(-1, n)
        each = set_costs(sets).reshape(P, n_c, 2)
        new = each.sum(-1)
        evaluations += int(sets.shape[0])
        cur = costs[A] + costs[B]
        val, idx = new.min(dim=1)
        improve = val < cur - 1e-12 * cur.abs().clamp_min(1e-300)
        if not bool(improve.any()):
            stale += 1
            if stale >= patience:
                break
            continue
        stale = 0
        for p_i in torch.nonzero(improve).reshape(-1).tolist():
            a, b, c_i = int(A[p_i]), int(B[p_i]), int(idx[p_i])
            perm[a * n : (a + 1) * n] = first[p_i, c_i].numpy()
            perm[b * n : (b + 1) * n] = second[p_i, c_i].numpy()
            costs[a], costs[b] = each[p_i, c_i, 0], each[p_i, c_i, 1]
            moves += 1
    return PermutationResult(
        perm=perm,
        cost_identity=float(c_id.sum()),
        cost_start=cost_start,
        cost_final=float(costs.sum()),
        start=start,
        rounds=rounds,
        evaluations=evaluations,
        moves=moves,
    )


# ------------------------------------------------------------------------------------------- whole model
def _sample_batch(calibration: Any, max_items: int = 8) -> torch.Tensor:
    for x, _ in iter_calibration(calibration):
        return x[:max_items]
    raise BadInput("empty calibration set")  # pragma: no cover - iter_calibration raises first


def permute_model(
    model: nn.Module,
    calibration: Any,
    pattern: str = "2:4",
    *,
    cost: str = "certificate",
    layout: str = "matrix",
    residual: bool = False,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    max_rounds: int = 48,
    rtol: float = 1e-4,
) -> tuple[list[PermutationRecord], dict[str, str]]:
    """Search and fold a permutation at every site of ``model`` (in place) for k:n ``pattern``.

    ``cost``: ``"certificate"`` (calibration second moments, captured per consumer on ``calibration``) or
    ``"magnitude"``. ``layers``: restrict to these consumers. ``residual``: also the ViT residual stream
    (searched first, on all its consumers). Returns the records (in the order folded) and ``{layer:
    reason}`` for the Linear/Conv2d layers without a permutation. The function of ``model`` is unchanged
    (every fold passes a dry run on the first calibration batch).
    """
    if cost not in ("certificate", "magnitude"):
        raise BadInput(f"permutation cost must be 'certificate' or 'magnitude', got {cost!r}")
    k, n = parse_kn(pattern)
    x = _sample_batch(calibration)
    sites, skipped, res = find_sites(model, x, residual=residual)
    mods = dict(model.named_modules())
    todo: list[Site] = ([res] if res is not None else []) + list(sites.values())
    records: list[PermutationRecord] = []
    for site in todo:
        if layers is not None and not set(site.consumers) & set(layers):
            continue
        K, why = site_positions(model, site, layout)
        if K is None or site.channels % n or site.block % n:
            skipped[site.key] = why or (
                f"{site.channels} channels (blocks of {site.block}) not divisible by n={n}"
            )
            continue
        terms = []
        for name in site.consumers:
            sec = None
            if cost == "certificate":
                sm = capture_covariance(model, name, calibration, None, layout="channel")
                sec = sm.mean()[0]
            terms.append(consumer_terms(mods[name].weight, sec, K))
        result = search_permutation(terms, (k, n), site.block, seed=seed, max_rounds=max_rounds)
        why = fold_checked(model, site, result.perm, x, None, rtol)
        if why is not None:
            skipped[site.key] = why
            continue
        records.append(PermutationRecord(site, result))
    return records, skipped
