"""Multi-layer certificates D10–D12 (digest §2.1): several layers pruned in order.

* :class:`MLPNetwork`: a ReLU MLP whose layer ``j`` can be split off as a
  :class:`~mptheory.certificates.SplitNetwork`;
* :func:`sequential_prune`: prune the layers in order, recomputing ψ₁ and the tail in the partially pruned
  network, with per-step budgets ``B_j`` and ``η_{j,s}`` (and the per-step logit bound);
* D10 :func:`telescoped_bound`, D11 :func:`multilayer_margin` (η_tot = Σ_j η_{j,s}), D12
  :func:`multilayer_stationarity`;
* the case runners ``check_d10`` … ``check_d12`` on a generated :class:`MultiLayerCase`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from mptheory.certificates.network import Decomposition, SplitNetwork, _check_mask, _matrix
from mptheory.certificates.quantities import (
    accuracy,
    accuracy_bound_count,
    budget,
    cross_entropy,
    eta,
    lipschitz_bounds,
    prediction_margin,
    prediction_margin_of_class,
)
from mptheory.certificates.single_layer import CASE_TIGHTNESS
from mptheory.verdict import CheckResult, Inequality

__all__ = [
    "MLPNetwork",
    "MultiLayerCase",
    "MultiMarginResult",
    "SequentialPruneResult",
    "check_d10",
    "check_d11",
    "check_d12",
    "multilayer_margin",
    "multilayer_stationarity",
    "sequential_prune",
    "telescoped_bound",
]


@dataclass(frozen=True)
class MLPNetwork:
    """ReLU MLP: h_0 = X, h_j = relu(W_j h_{j-1} + b_j) for j < L, logits = W_L h_{L-1} + b_L (0-based
    list)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    X: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.weights) < 2 or len(self.weights) != len(self.biases):
            raise ValueError("MLPNetwork needs >= 2 layers and one bias per weight")
        X = _matrix(self.X, "X")
        Ws = tuple(_matrix(W, f"weights[{j}]") for j, W in enumerate(self.weights))
        bs = tuple(np.asarray(b, dtype=np.float64) for b in self.biases)
        d = X.shape[1]
        for j, (W, b) in enumerate(zip(Ws, bs)):
            if W.shape[1] != d or b.shape != (W.shape[0],):
                raise ValueError(f"layer {j}: weight {W.shape} / bias {b.shape} do not fit input width {d}")
            d = W.shape[0]
        lab = np.asarray(self.labels)
        if lab.shape != (X.shape[0],) or np.any(lab < 0) or np.any(lab >= d):
            raise ValueError(f"labels must have shape ({X.shape[0]},) with values in [0, {d})")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "weights", Ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "labels", lab.astype(np.int64))

    def with_weight(self, j: int, W: np.ndarray) -> MLPNetwork:
        Ws = list(self.weights)
        Ws[j] = W
        return MLPNetwork(tuple(Ws), self.biases, self.X, self.labels)

    def layer_input(self, j: int) -> np.ndarray:
        h = self.X
        for W, b in zip(self.weights[:j], self.biases[:j]):
            h = np.maximum(h @ W.T + b, 0.0)
        return h

    def logits(self) -> np.ndarray:
        h = self.layer_input(len(self.weights) - 1)
        return h @ self.weights[-1].T + self.biases[-1]

    def split(self, j: int) -> SplitNetwork:
        """The network split at layer j: psi1 = layer input, tail = (ReLU, Linear, ..., Linear) after it."""
        mods: list[nn.Module] = []
        for W, b in zip(self.weights[j + 1 :], self.biases[j + 1 :]):
            lin = nn.Linear(W.shape[1], W.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
            mods += [nn.ReLU(), lin]
        tail = nn.Sequential(*mods) if mods else nn.Identity()
        return SplitNetwork(self.layer_input(j), self.weights[j], tail, self.labels, self.biases[j])


@dataclass(frozen=True)
class SequentialPruneResult:
    """Steps of ordered pruning. ``budgets[j]`` = B_j(R_j) in the intermediate network, ``etas`` (M, B)
    per-step eta_{j,s}, ``logits`` (M+1, B, K) z^{(0)} .. z^{(M)}, ``networks`` alpha^{(0)} .. alpha^{(M)}."""

    layers: tuple[int, ...]
    removed: tuple[np.ndarray, ...]
    budgets: np.ndarray
    etas: np.ndarray
    logits: np.ndarray
    networks: tuple[MLPNetwork, ...]
    step_logit: Inequality


def sequential_prune(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    fraction: float = 1.0,
    method: str = "pl_exact",
    lipschitz_scale: float = 1.0,
) -> SequentialPruneResult:
    """Prune ``layers`` in order with ``masks`` (1 = keep); removes ``fraction * R_j`` at step j. psi1 and the
    tail of step j are recomputed in the partially pruned network; B_j and eta_{j,s} use L on that segment.
    ``step_logit`` checks ||z^{(j)} - z^{(j-1)}||_inf <= eta_{j,s}."""
    if len(layers) != len(masks) or len(layers) == 0:
        raise ValueError("layers and masks must be non-empty and of equal length")
    if len(set(layers)) != len(layers) or any(not 0 <= j < len(mlp.weights) for j in layers):
        raise ValueError(f"layers must be distinct indices in [0, {len(mlp.weights)}), got {list(layers)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    nets, removed, budgets, etas, zs = [mlp], [], [], [], [mlp.logits()]
    cur = mlp
    for j, mask in zip(layers, masks):
        A = cur.weights[j]
        M = _check_mask(mask, A.shape)
        R = fraction * (1.0 - M) * A
        dec = Decomposition(A - R, R)
        sn = cur.split(j)
        L = lipschitz_bounds(sn, dec, method).scaled(lipschitz_scale)
        budgets.append(budget(sn.psi1, R, L))
        etas.append(eta(sn.psi1, R, L, 0.0))
        removed.append(R)
        cur = cur.with_weight(j, A - R)
        nets.append(cur)
        zs.append(cur.logits())
    z = np.stack(zs)
    e = np.stack(etas)
    step = Inequality(
        "D11 ||z^(j) - z^(j-1)||_inf <= eta_{j,s}",
        np.abs(np.diff(z, axis=0)).max(axis=2),
        e,
        scale=float(np.abs(z).max()),
    )
    return SequentialPruneResult(tuple(layers), tuple(removed), np.array(budgets), e, z, tuple(nets), step)


def _mlp_objective(net: MLPNetwork, lam1: Sequence[float], lam2: Sequence[float]) -> float:
    ce = cross_entropy(net.logits(), net.labels)
    return ce + sum(
        l2 * float(np.sum(W**2)) + l1 * float(np.sum(np.abs(W))) for W, l1, l2 in zip(net.weights, lam1, lam2)
    )


def _lams(mlp: MLPNetwork, lam: Sequence[float] | float, name: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in np.broadcast_to(np.asarray(lam, dtype=float), (len(mlp.weights),)))
    if any((not np.isfinite(x)) or x < 0 for x in v):
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return v


def telescoped_bound(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    lam1: Sequence[float] | float,
    lam2: Sequence[float] | float,
    method: str = "pl_exact",
    lipschitz_scale: float = 1.0,
) -> tuple[SequentialPruneResult, Inequality]:
    """D10: J(alpha^(M)) - J(alpha^(0)) <= -sum lam2_j ||R_j||^2 - sum lam1_j ||R_j||_1 + sum B_j (lam per
    layer)."""
    l1, l2 = _lams(mlp, lam1, "lam1"), _lams(mlp, lam2, "lam2")
    res = sequential_prune(mlp, layers, masks, 1.0, method, lipschitz_scale)
    j0, jM = _mlp_objective(mlp, l1, l2), _mlp_objective(res.networks[-1], l1, l2)
    pen = sum(
        l2[j] * float(np.sum(R**2)) + l1[j] * float(np.sum(np.abs(R))) for j, R in zip(layers, res.removed)
    )
    ineq = Inequality(
        "D10 telescoped elastic-net bound",
        np.array([jM - j0]),
        np.array([-pen + float(res.budgets.sum())]),
        scale=abs(j0) + pen,
    )
    return res, ineq


@dataclass(frozen=True)
class MultiMarginResult:
    """D11: ``eta_tot`` (B,), ``ce`` |dCE| <= (2/|T|) sum eta_tot, ``flips`` flipped => Dpred_0 <= factor
    eta_tot,
    ``accuracy`` |dacc||T| <= #{|Dtrue_0| <= factor eta_tot}, and the per-step logit bounds."""

    eta_tot: np.ndarray
    step_logit: Inequality
    ce: Inequality
    flips: Inequality
    accuracy: Inequality


def multilayer_margin(
    res: SequentialPruneResult, labels: np.ndarray, factor: float = 2.0
) -> MultiMarginResult:
    """D11 from a :func:`sequential_prune` result."""
    z0, zM = res.logits[0], res.logits[-1]
    et = res.etas.sum(axis=0)
    ce0, ceM = cross_entropy(z0, labels), cross_entropy(zM, labels)
    pred0 = z0.argmax(axis=1)
    flipped = prediction_margin_of_class(zM, pred0) <= 0
    d0 = prediction_margin(z0)
    dacc = abs(accuracy(zM, labels) - accuracy(z0, labels)) * z0.shape[0]
    sc = float(np.abs(res.logits).max())
    return MultiMarginResult(
        et,
        res.step_logit,
        Inequality(
            "D11 |dCE| <= (2/|T|) sum eta_tot",
            np.array([abs(ceM - ce0)]),
            np.array([2 * et.mean()]),
            scale=abs(ce0),
        ),
        Inequality(f"D11 flip => Dpred_0 <= {factor:g} eta_tot", d0[flipped], factor * et[flipped], scale=sc),
        Inequality(
            "D11 accuracy", np.array([dacc]), np.array([float(accuracy_bound_count(z0, labels, et, factor))])
        ),
    )


def multilayer_stationarity(
    mlp: MLPNetwork,
    layers: Sequence[int],
    masks: Sequence[np.ndarray],
    lam1: Sequence[float] | float,
    lam2: Sequence[float] | float,
    hs: Sequence[float] = (1e-6, 1e-3, 0.1, 0.5, 1.0),
    method: str = "pl_exact",
    lipschitz_scale: float = 1.0,
    rescale: bool = True,
) -> tuple[MLPNetwork, Inequality]:
    """D12. Optionally rescale all R_j by the minimiser t* of J(S_j + t R_j for all j) on [0, 2]; then for
    each h,
    with alpha_h = (S_j + (1-h) R_j in order) and B_j^(h) the per-step budgets of removing h R_j (divided
    by h),
    eps_h = max(0, (J(alpha^0) - J(alpha_h))/h) and the check is
    sum lam2_j (2-h)||R_j||^2 + sum lam1_j ||R_j||_1 <= sum B_j^(h) + eps_h."""
    l1, l2 = _lams(mlp, lam1, "lam1"), _lams(mlp, lam2, "lam2")
    Ms = [_check_mask(m, mlp.weights[j].shape) for j, m in zip(layers, masks)]
    Ss = [M * mlp.weights[j] for j, M in zip(layers, Ms)]
    Rs = [(1 - M) * mlp.weights[j] for j, M in zip(layers, Ms)]

    def net_at(t: float) -> MLPNetwork:
        out = mlp
        for j, S, R in zip(layers, Ss, Rs):
            out = out.with_weight(j, S + t * R)
        return out

    if rescale:
        f = lambda t: _mlp_objective(net_at(t), l1, l2)  # noqa: E731
        opt = minimize_scalar(f, bounds=(0.0, 2.0), method="bounded", options={"xatol": 1e-10})
        ts = float(opt.x)
        grid = np.linspace(0, 2, 41)
        fg = np.array([f(t) for t in grid])
        if fg.min() < opt.fun:
            ts = float(grid[int(np.argmin(fg))])
        Rs = [ts * R for R in Rs]
        base = net_at(ts)
    else:
        base = mlp
    Rs_b = [base.weights[j] - S for j, S in zip(layers, Ss)]
    j0 = _mlp_objective(base, l1, l2)
    p2 = sum(l2[j] * float(np.sum(R**2)) for j, R in zip(layers, Rs_b))
    p1 = sum(l1[j] * float(np.sum(np.abs(R))) for j, R in zip(layers, Rs_b))
    lhs, rhs, scl = [], [], []
    for h in hs:
        if not 0 < h <= 1:
            raise ValueError(f"hs must lie in (0, 1], got {h}")
        res = sequential_prune(base, layers, Ms, h, method, lipschitz_scale)
        jh = _mlp_objective(res.networks[-1], l1, l2)
        eps_h = max(0.0, (j0 - jh) / h)
        lhs.append((2 - h) * p2 + p1)
        rhs.append(float(res.budgets.sum()) / h + eps_h)
        scl.append((abs(j0) + p1 + p2) / h)
    return base, Inequality("D12 multi-layer stationarity", np.array(lhs), np.array(rhs), scale=np.array(scl))


# ----------------------------------------------------------------------------------------------------
# generated cases and the case runners D10–D12


@dataclass(frozen=True)
class MultiLayerCase:
    """A ReLU MLP with masks for the layers pruned in order and per-layer elastic-net weights."""

    mlp: MLPNetwork
    layers: tuple[int, ...]
    masks: tuple[np.ndarray, ...]
    lam1: tuple[float, ...]
    lam2: tuple[float, ...]


def check_d10(case: MultiLayerCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D10 telescoped bound over the ordered layers (psi1 recomputed in the partially pruned network)."""
    _, ineq = telescoped_bound(
        case.mlp, case.layers, case.masks, case.lam1, case.lam2, method, lipschitz_scale
    )
    return CheckResult.from_inequalities([ineq], tightness_stat=CASE_TIGHTNESS)


def check_d11(
    case: MultiLayerCase, method: str = "pl_exact", lipschitz_scale: float = 1.0, margin_factor: float = 2.0
) -> CheckResult:
    """D11 per-step logit bounds, CE bound with eta_tot, flips and accuracy."""
    res = sequential_prune(case.mlp, case.layers, case.masks, 1.0, method, lipschitz_scale)
    r = multilayer_margin(res, case.mlp.labels, margin_factor)
    return CheckResult.from_inequalities(
        [r.step_logit, r.ce, r.flips, r.accuracy], r.step_logit.max_ratio, CASE_TIGHTNESS
    )


def check_d12(case: MultiLayerCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D12 after rescaling all R_j to the 1-D minimiser of the multi-layer objective."""
    _, ineq = multilayer_stationarity(
        case.mlp,
        case.layers,
        case.masks,
        case.lam1,
        case.lam2,
        method=method,
        lipschitz_scale=lipschitz_scale,
    )
    return CheckResult.from_inequalities([ineq], ineq.max_ratio, CASE_TIGHTNESS)
