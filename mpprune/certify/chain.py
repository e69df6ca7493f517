"""The whole-model certificate: every pruned layer alone, and the D11 chain in the intermediate networks.

Multi-layer totals (digest D11) are computed in the intermediate networks: layer j (in model order) is
certified with the layers before it already pruned, so ``||z^(j) - z^(j-1)||_inf <= eta_{j,s}`` and the
predictions of the fully pruned model can change only where the dense margin is ``<= 2 sum_j eta_{j,s}``.
The dense margins and the certified set of the total are :func:`mptheory.certificates.prediction_margin`
and :func:`mptheory.certificates.certified_samples` of the dense logits with ``eta_total``.

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

from mpprune.certify.calibration import iter_calibration, materialise
from mpprune.certify.capture import layer_weight, logits_of, model_device
from mpprune.certify.estimators import certify_layer, resolve_estimator
from mpprune.certify.report import CertificateReport
from mpprune.layers import find_layers
from mptheory.certificates import certified_samples, prediction_margin
from mptheory.errors import BadInput

__all__ = ["certify", "changed_layers"]


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
) -> CertificateReport:
    """Certify every layer whose weight differs between ``model_dense`` and ``model_pruned`` (or ``layers``).

    Per layer: the layer alone is pruned in the dense model. With ``total=True`` and more than one layer the
    D11 chain is computed too (layer j certified in the network with the earlier layers pruned).
    """
    resolve_estimator(estimator)
    calibration = materialise(calibration)
    names = changed_layers(model_dense, model_pruned, layers)
    pmods = dict(model_pruned.named_modules())
    certs = [
        certify_layer(
            model_dense, n, layer_weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta
        )
        for n in names
    ]
    chain = list(certs[:1])
    if total and len(names) > 1:
        inter = copy.deepcopy(model_dense)
        imods = dict(inter.named_modules())
        for j, n in enumerate(names):
            if j > 0:
                chain.append(
                    certify_layer(
                        inter, n, layer_weight(pmods[n]).detach(), calibration, estimator, n_theta=n_theta
                    )
                )
            with torch.no_grad():
                layer_weight(imods[n]).copy_(layer_weight(pmods[n]).detach().to(layer_weight(imods[n])))
    elif len(names) > 1:
        chain = certs
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
