"""The whole-model certificate: every pruned layer alone, and the D11 chain in the intermediate networks.

Multi-layer totals (digest D11) are computed in the intermediate networks: layer j (in model order) is
certified with the layers before it already pruned, so ``||z^(j) - z^(j-1)||_inf <= eta_{j,s}`` and the
predictions of the fully pruned model can change only where the dense margin is ``<= 2 sum_j eta_{j,s}``.
The dense margins and the certified set of the total are :func:`mptheory.certificates.prediction_margin`
and :func:`mptheory.certificates.certified_samples` of the dense logits with ``eta_total``.

* :func:`certify` -- every pruned layer alone in the dense model, and the D11 total;
* :func:`certify_step` -- one layer in a given (intermediate) network, optionally decided against per-sample
  targets (the model-scope gate's share of each sample's margin) by the piecewise-linear search of
  :mod:`~mpprune.certify.pl_search` instead of the exact maximum;
* :func:`chain_report` -- the whole-model report from the chain's certificates and the realised change of
  the pruned model.

All certificate arithmetic is done in float64 on copies of the models; the models passed in are never
modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight, logits_of, model_device, module_by_name
from mpprune.certify.estimators import ProbeBudgetExceeded, certify_layer, resolve_estimator
from mpprune.certify.pl_search import PLSearchBudgetExceeded, PLSearchNotPiecewiseLinear, pl_bound
from mpprune.certify.report import ALONE, CHAIN, CertificateReport, LayerCertificate
from mpprune.certify.segment import Segment
from mpprune.layers import find_layers
from mptheory.certificates import certified_samples, prediction_margin
from mptheory.errors import BadInput

__all__ = ["certify", "certify_step", "chain_report", "changed_layers", "dense_logits", "model_order"]


def model_order(model: nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` sorted in the order of ``model.named_modules()`` (the order of the D11 chain)."""
    rank = {n: i for i, (n, _) in enumerate(model.named_modules())}
    missing = [n for n in names if n not in rank]
    if missing:
        raise BadInput(f"layers {missing} not found in the model")
    return sorted(dict.fromkeys(names), key=rank.__getitem__)


def changed_layers(dense: nn.Module, pruned: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """``layers`` (checked to exist in both models), or every prunable layer whose weight differs."""
    dmods, pmods = dict(dense.named_modules()), dict(pruned.named_modules())
    if layers is not None:
        names = list(layers)
        for n in names:
            if n not in dmods or n not in pmods:
                raise BadInput(f"layer {n!r} not found in both models")
        return names
    out = []
    for info in find_layers(dense):
        n = info.name
        if n not in pmods:
            raise BadInput(f"layer {n!r} of the dense model is missing from the pruned model")
        wd, wp = layer_weight(dmods[n]).detach(), layer_weight(pmods[n]).detach()
        if tuple(wd.shape) != tuple(wp.shape):
            raise BadInput(f"layer {n!r}: dense {tuple(wd.shape)} vs pruned {tuple(wp.shape)}")
        if not torch.equal(wd.cpu(), wp.cpu()):
            out.append(n)
    return out


def certify(
    model_dense: nn.Module,
    model_pruned: nn.Module,
    calibration: Any,
    layers: Sequence[str] | None = None,
    estimator: str = "auto",
    *,
    n_theta: int = 20,
    total: bool = True,
    progress: bool | None = None,
) -> CertificateReport:
    """Certify every layer whose weight differs between ``model_dense`` and ``model_pruned`` (or ``layers``).

    Per layer: the layer alone is pruned in the dense model. With ``total=True`` and more than one layer the
    D11 chain is computed too (layer j certified in the network with the earlier layers pruned).
    ``progress``: a progress bar over the certificates (None: only on a terminal).
    """
    resolve_estimator(estimator)
    calibration = materialise(calibration)
    names = changed_layers(model_dense, model_pruned, layers)
    pmods = dict(model_pruned.named_modules())
    n_chain = len(names) - 1 if total and len(names) > 1 else 0
    bar = tqdm(total=len(names) + n_chain, desc="certify", unit="layer", leave=False,
               disable=None if progress is None else not progress)  # fmt: skip
    try:
        certs = []
        for n in names:
            bar.set_postfix_str(f"{n} alone", refresh=False)
            certs.append(
                certify_layer(
                    model_dense, n, layer_weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta
                )
            )
            bar.update()
        chain = list(certs[:1])
        if len(names) > 1 and not total:
            chain = certs
        elif len(names) > 1:
            inter = copy.deepcopy(model_dense)
            imods = dict(inter.named_modules())
            for j, n in enumerate(names):
                if j > 0:
                    bar.set_postfix_str(f"{n} in the chain", refresh=False)
                    c = certify_layer(
                        inter, n, layer_weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta
                    )
                    c.network = CHAIN
                    chain.append(c)
                    bar.update()
                with torch.no_grad():
                    layer_weight(imods[n]).copy_(layer_weight(pmods[n]).detach().to(layer_weight(imods[n])))
    finally:
        bar.close()
    z_dense, realised, flipped = _whole_model(model_dense, model_pruned, names, calibration)
    margin = prediction_margin(z_dense)
    # with total=False and several layers the isolated etas are summed and the total is labelled unsound
    eta_tot = np.sum([c.eta for c in chain], axis=0) if chain else np.zeros_like(margin)
    return CertificateReport(
        layers=certs,
        eta_total=eta_tot,
        margin=margin,
        realised_total=realised,
        flipped_total=flipped,
        certified=certified_samples(z_dense, eta_tot),
        sound=all(c.sound for c in chain + certs) and (total or len(names) <= 1),
        estimators=[c.estimator for c in certs],
    )


def certify_step(
    model: nn.Module,
    name: str,
    weight: torch.Tensor,
    calibration: Any,
    estimator: str = "auto",
    *,
    targets: np.ndarray | None = None,
    floors: np.ndarray | None = None,
    rel_tol: float = 0.0,
    n_theta: int = 20,
    max_probes: int = 20_000,
    network: str = ALONE,
) -> LayerCertificate:
    """The certificate of replacing layer ``name``'s weight in ``model`` by ``weight`` (``network`` says
    which network ``model`` is, for the report).

    Without ``targets`` (or for an estimator other than ``auto``/``pl_exact``) this is
    :func:`~mpprune.certify.certify_layer`. With per-sample ``targets`` (one per calibration sample, in
    order) a piecewise-linear tail is bounded by :func:`~mpprune.certify.pl_search.pl_bound`: every
    sample's ``eta`` is sound, and it is only refined until it is decided against its target (below it, or
    an exact slope above it), then down to its floor (``floors``, default the targets) or ``rel_tol``. The
    certificate is labelled ``pl_exact`` (sound) with ``exact`` saying per sample where ``eta`` is the exact
    maximum; a tail that is not piecewise linear goes to ``certify_layer`` with ``estimator``; past
    ``max_probes`` probes ``auto`` falls back to the labelled ``segment_max_slope`` ESTIMATE and
    ``pl_exact`` raises :class:`~mpprune.certify.ProbeBudgetExceeded`.
    """
    est = resolve_estimator(estimator)
    if targets is None or est not in ("auto", "pl_exact"):
        c = certify_layer(model, name, weight, calibration, est, n_theta=n_theta, max_probes=max_probes)
        c.network = network
        return c
    calibration = materialise(calibration)
    _, mod = module_by_name(model, name)
    W = layer_weight(mod).detach()
    if tuple(weight.shape) != tuple(W.shape):
        raise BadInput(
            f"layer {name!r}: pruned weight shape {tuple(weight.shape)} != weight shape {tuple(W.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise BadInput(f"layer {name!r}: pruned weight of shape {tuple(W.shape)} contains NaN/Inf")
    S = weight.detach().double().cpu()
    R = W.double().cpu() - S
    tg = np.asarray(targets, dtype=np.float64).reshape(-1)
    fl = tg if floors is None else np.asarray(floors, dtype=np.float64).reshape(-1)
    seg = Segment(model, name, S, R)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("eta", "nr", "m", "c", "r", "f", "p", "e")}
    done = 0
    for x, _ in iter_calibration(calibration):
        z1 = seg.bind(x)
        B = x.shape[0]
        nr = seg.removed.numpy().astype(np.float64) if seg.removed is not None else np.zeros(B)
        z0 = seg.logits(0.0)
        if done + B > tg.size:
            raise BadInput(f"targets has {tg.size} entries, the calibration set has more samples")
        try:
            eta, probes, exact = pl_bound(
                seg, x, nr, target=tg[done : done + B], floor=fl[done : done + B], rel_tol=rel_tol,
                max_probes=max_probes,
            )  # fmt: skip
        except PLSearchNotPiecewiseLinear:
            c = certify_layer(model, name, weight, calibration, est, n_theta=n_theta, max_probes=max_probes)
            c.network = network
            return c
        except PLSearchBudgetExceeded as exc:
            if est == "pl_exact":
                raise ProbeBudgetExceeded(str(exc)) from exc
            c = certify_layer(
                model, name, weight, calibration, "segment_max_slope", n_theta=n_theta, max_probes=max_probes
            )
            c.network = network
            c.notes.append(f"auto: {exc}; fell back to the segment_max_slope ESTIMATE")
            return c
        done += B
        zd = z1.numpy()
        cols["eta"].append(eta)
        cols["nr"].append(nr)
        cols["m"].append(prediction_margin(zd))
        cols["c"].append(certified_samples(zd, eta))
        cols["r"].append((z0 - z1).abs().amax(dim=1).numpy())
        cols["f"].append((z0.argmax(1) != z1.argmax(1)).numpy())
        cols["p"].append(probes)
        cols["e"].append(exact)
    if done != tg.size:
        raise BadInput(f"targets has {tg.size} entries, the calibration set {done} samples")
    eta_all, nr_all, exact_all = (np.concatenate(cols[k]) for k in ("eta", "nr", "e"))
    n_bound = int(np.sum(~exact_all))
    notes = (
        [
            f"pl_exact decided {n_bound} of {exact_all.size} samples against their targets with a sound "
            "upper bound (interval enclosure of the slope), not the exact maximum"
        ]
        if n_bound
        else []
    )
    return LayerCertificate(
        name=name,
        shape=tuple(W.shape),
        sparsity=int((S == 0).sum().item()) / S.numel(),
        estimator="pl_exact",
        sound=True,
        eta=eta_all,
        L=np.divide(eta_all, nr_all, out=np.zeros_like(eta_all), where=nr_all > 0),
        removed_norm=nr_all,
        margin=np.concatenate(cols["m"]),
        certified=np.concatenate(cols["c"]),
        realised=np.concatenate(cols["r"]),
        flipped=np.concatenate(cols["f"]),
        r_fro2=float((R**2).sum()),
        r_l1=float(R.abs().sum()),
        is_mask=bool(((S != 0) & (R != 0)).sum().item() == 0),
        pieces=np.concatenate(cols["p"]),
        notes=notes,
        network=network,
        exact=exact_all,
    )


def chain_report(
    dense: nn.Module, pruned: nn.Module, chain: Sequence[LayerCertificate], calibration: Any
) -> CertificateReport:
    """The whole-model report of ``pruned`` from its D11 chain (one certificate per pruned layer, in model
    order, each in the network with the earlier layers pruned): ``eta_total`` = the sum, the dense margins,
    and the realised change and flips of ``pruned`` against ``dense`` (only the chain's layers replaced)."""
    names = [c.name for c in chain]
    z_dense, realised, flipped = _whole_model(dense, pruned, names, calibration)
    margin = prediction_margin(z_dense)
    eta_tot = np.sum([c.eta for c in chain], axis=0) if chain else np.zeros_like(margin)
    return CertificateReport(
        layers=list(chain),
        eta_total=eta_tot,
        margin=margin,
        realised_total=realised,
        flipped_total=flipped,
        certified=certified_samples(z_dense, eta_tot),
        sound=all(c.sound for c in chain),
        estimators=[c.estimator for c in chain],
    )


def dense_logits(model: nn.Module, calibration: Any) -> np.ndarray:
    """The logits of ``model`` (run in float64 on a copy, as the certificates are) on every calibration
    sample, in order: the dense margins every certificate of ``model`` compares against."""
    m64 = copy.deepcopy(model).double().eval()
    dev = model_device(m64)
    out = []
    with torch.no_grad():
        for x, _ in iter_calibration(calibration):
            z = logits_of(m64(x.to(dev, torch.float64))).double().cpu()
            if not bool(torch.isfinite(z).all()):
                raise BadInput("logits contain NaN/Inf")
            out.append(z.numpy())
    return np.concatenate(out)


def _whole_model(
    dense: nn.Module, pruned: nn.Module, names: list[str], calibration: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense logits, realised ``||z_pruned - z_dense||_inf`` and flips (float64; only ``names`` pruned)."""
    d64 = copy.deepcopy(dense).double().eval()
    p64 = copy.deepcopy(d64)
    pm, src = dict(p64.named_modules()), dict(pruned.named_modules())
    with torch.no_grad():
        for n in names:
            layer_weight(pm[n]).copy_(layer_weight(src[n]).detach().to(layer_weight(pm[n])))
    dev = model_device(d64)
    logits, real, flips = [], [], []
    with torch.no_grad():
        for x, _ in iter_calibration(calibration):
            x64 = x.to(dev, torch.float64)
            z1 = logits_of(d64(x64)).double().cpu()
            z0 = logits_of(p64(x64)).double().cpu()
            if not (bool(torch.isfinite(z1).all()) and bool(torch.isfinite(z0).all())):
                raise BadInput("logits contain NaN/Inf")
            logits.append(z1.numpy())
            real.append((z0 - z1).abs().amax(1).numpy())
            flips.append((z0.argmax(1) != z1.argmax(1)).numpy())
    return np.concatenate(logits), np.concatenate(real), np.concatenate(flips)
