"""The model-scope gate: the D11 chain at the requested sparsities, the margin allocated across the layers,
and the layers that spend most of it backed off (the rule is :class:`~mpprune.gate.Gate`'s doc, steps 1-3).

* :func:`allocate_shares` -- the shares of the margin from the layers' spends (step 2);
* :func:`apply_model_scope` -- steps 1-3 on the pruned layers of one model;
* :func:`allocate` -- step 3: each layer within its allowance, in model order, backed off where it is not.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mpprune.certify.capture import layer_weight
from mpprune.certify.chain import certify_step, chain_report, dense_logits
from mpprune.certify.report import CHAIN, CertificateReport, LayerCertificate
from mpprune.gate_result import GateLayer, PrunedLayer, set_weight
from mptheory.certificates import prediction_margin

if TYPE_CHECKING:
    from mpprune.gate import Gate

__all__ = ["allocate", "allocate_shares", "apply_model_scope", "chain_step"]

# shares of the margin are floored at this fraction of the largest share (a layer never gets none)
_SHARE_FLOOR = 1e-3
# in the allocation, a sample decided below its allowance is refined on down to this fraction of it (or
# rel_tol of its slope), so that what it does not use flows on to the later layers
_FLOOR = 0.5
# in the first chain, a sample below its equal share is refined on down to this fraction of it: the spends
# that set the shares are then at most this much above the layers' real ones
_FIRST_FLOOR = 0.5
# a layer that keeps its requested sparsity gets this much more than it spent on its worst target sample
_HEADROOM = 1.05


def allocate_shares(spend: np.ndarray) -> np.ndarray:
    """Shares of the margin from the layers' spends (``max_{s in T} 2 eta_{j,s} / margin_s``), summing to 1.

    The layers that spend most are backed off: the top spenders, fewest first, are put in the set K until the
    others, each given ``_HEADROOM`` times its spend, leave K at least a twentieth of the margin; the others
    keep that (so they keep their sparsity), and K splits the rest in proportion to its spends. When even
    that fails, all layers share the margin in proportion to their spends. Every share is at least
    ``_SHARE_FLOOR`` of the largest."""
    spend = np.asarray(spend, dtype=np.float64)
    top = float(spend.max()) if spend.size else 0.0
    if top <= 0:
        return np.full(spend.size, 1.0 / max(spend.size, 1))
    order = np.argsort(-spend, kind="stable")
    share = spend / spend.sum()
    for k in range(1, spend.size + 1):
        rest = np.ones(spend.size, dtype=bool)
        rest[order[:k]] = False
        kept = _HEADROOM * float(spend[rest].sum())
        if kept <= 0.95:
            share = np.where(rest, _HEADROOM * spend, (1.0 - kept) * spend / float(spend[~rest].sum()))
            break
    share = np.maximum(share, _SHARE_FLOOR * top)
    return share / share.sum()


def chain_step(
    gate: Gate,
    inter: nn.Module,
    name: str,
    W: torch.Tensor,
    calibration: Any,
    targets: np.ndarray,
    floor: float = 1.0,
) -> LayerCertificate:
    """Layer ``name`` in the intermediate network, decided against ``targets`` and refined down to
    ``floor`` times them."""
    return certify_step(
        inter, name, W, calibration, gate.estimator, targets=targets, floors=floor * targets,
        rel_tol=gate.rel_tol, n_theta=gate.n_theta, max_probes=gate.max_probes, network=CHAIN,
    )  # fmt: skip


def apply_model_scope(
    gate: Gate,
    original: nn.Module,
    layers: list[PrunedLayer],
    calibration: Any,
    gmods: dict[str, nn.Module],
    model: nn.Module,
    bar: Any,
) -> tuple[list[GateLayer], CertificateReport | None]:
    """Steps 1-3 of the model-scope rule of ``gate`` on ``layers`` (in model order): the verdicts, with the
    final weights written into ``gmods`` (the modules of ``model``), and the chain report of ``model``."""
    if not layers:
        return [], None
    M = len(layers)
    inter = copy.deepcopy(original)
    imods = dict(inter.named_modules())
    # 1. the chain at the requested sparsities, each layer against an equal share of the margin
    margin = prediction_margin(dense_logits(original, calibration))
    first: list[LayerCertificate] = []
    for ly in layers:
        bar.set_postfix_str(f"{ly.name} (chain, requested)", refresh=False)
        first.append(chain_step(gate, inter, ly.name, ly.Wp, calibration, margin / (2 * M), _FIRST_FLOOR))
        set_weight(imods[ly.name], ly.Wp)
        bar.update()
    n = margin.size
    need = math.ceil(float(gate.min_certified) * n - 1e-9)
    total = np.sum([c.eta for c in first], axis=0)
    n_cert = int(np.sum(margin > 2 * total))
    rules = [gate.check_elastic_net(c, ly.Wp, ly.Wd - ly.Wp) for c, ly in zip(first, layers, strict=True)]
    sound_ok = all(c.sound for c in first) or not gate.needs_sound
    if n_cert >= need and all(ok for ok, _ in rules) and sound_ok:
        bar.update(bar.total - bar.n)
        head = f"whole model certified on {n_cert}/{n} >= min_certified {gate.min_certified} as requested"
        passed = [
            GateLayer(ly.name, "passed", ly.requested, ly.requested, 0, f"{head} {gate.tag(c)}{en}", c, c)
            for ly, c, (_, en) in zip(layers, first, rules, strict=True)
        ]
        return passed, chain_report(original, model, first, calibration)
    # 2. the target samples and the shares
    with np.errstate(divide="ignore", invalid="ignore"):
        ease = np.where(total > 0, margin / (2 * total), np.inf)
    ease[margin <= 0] = -np.inf  # a tie in the dense model can never be certified
    targets = np.zeros(n, dtype=bool)
    targets[np.argsort(-ease, kind="stable")[:need]] = True
    if not bool(np.all(margin[targets] > 0)):
        why = (
            f"even the dense model certifies only {int(np.sum(margin > 0))}/{n} samples < min_certified "
            f"{gate.min_certified}; left dense"
        )
        for ly in layers:
            set_weight(gmods[ly.name], ly.Wd)
        bar.update(bar.total - bar.n)
        return [
            GateLayer(
                ly.name,
                "left_dense",
                ly.requested,
                float((ly.Wd == 0).sum()) / ly.Wd.numel(),
                ly.n_removed,
                why,
                None,
                c,
            )  # fmt: skip
            for ly, c in zip(layers, first, strict=True)
        ], None
    spend = np.array([float(np.max(2 * c.eta[targets] / margin[targets])) if need else 0.0 for c in first])
    share = allocate_shares(spend)
    # 3. allowances in model order; back off what does not fit
    head = (
        f"whole-model certified fraction {n_cert / n:.4f} < min_certified {gate.min_certified} at the "
        "requested sparsities (or a rule failed)"
    )
    verdicts, chain = allocate(
        gate, original, layers, calibration, gmods, first, margin, targets, share, bar, head
    )
    return verdicts, (chain_report(original, model, chain, calibration) if chain else None)


def allocate(
    gate: Gate,
    original: nn.Module,
    layers: list[PrunedLayer],
    calibration: Any,
    gmods: dict[str, nn.Module],
    first: list[LayerCertificate],
    margin: np.ndarray,
    targets: np.ndarray,
    share: np.ndarray,
    bar: Any,
    head: str,
) -> tuple[list[GateLayer], list[LayerCertificate]]:
    """Step 3 of the model-scope rule: each layer within its allowance, in model order (the class doc)."""
    inter = copy.deepcopy(original)
    imods = dict(inter.named_modules())
    rest = margin / 2.0
    unchanged = True  # the intermediate network is still the one of step 1
    verdicts: list[GateLayer] = []
    chain: list[LayerCertificate] = []
    for j, ly in enumerate(layers):
        bar.set_postfix_str(f"{ly.name} (allocation)", refresh=False)
        allow = rest * share[j] / float(share[j:].sum())
        tg = np.where(targets, allow, margin / (2 * len(layers)))

        def evaluate(
            W: torch.Tensor, ly: PrunedLayer = ly, allow: np.ndarray = allow, tg: np.ndarray = tg
        ) -> Any:
            c = chain_step(gate, inter, ly.name, W, calibration, tg, _FLOOR)
            ok, why = gate.check_allowance(c, W, ly.Wd - W, allow, targets)
            return ok, why, c

        ok, why, c0 = False, "", first[j]
        if unchanged:  # step 1's certificate may already fit the allowance
            ok, why = gate.check_allowance(c0, ly.Wp, ly.Wd - ly.Wp, allow, targets)
        if not ok:
            ok, why, c0 = evaluate(ly.Wp)
        bar.update()
        why = f"{head}; share {share[j] / share.sum():.3f} of each margin: {why}"
        if ok:
            gl = GateLayer(ly.name, "passed", ly.requested, ly.requested, 0, why, c0, first[j])
        else:
            gl = gate.backoff_layer(ly, evaluate, why, first[j], gmods[ly.name])
            unchanged = False
        gl.share = float(share[j] / share.sum())
        verdicts.append(gl)
        set_weight(imods[ly.name], layer_weight(gmods[ly.name]).detach())
        if gl.status != "left_dense" and gl.certificate is not None:
            chain.append(gl.certificate)
            rest = rest - gl.certificate.eta
    return verdicts, chain
