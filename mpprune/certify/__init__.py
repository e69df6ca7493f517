"""Per-sample data-path certificates on real models (digest §1.2, D1-D2, D11).

For one layer ``A = S + R`` (dense weight ``A``, pruned weight ``S``, removed part ``R``) with input
``psi_1(s)`` and tail ``psi_2`` (everything after the layer, run by the model's own ``forward``)::

    eta_s = L_s ||R psi_1(s)||_inf,     B_T(R) = (2/|T|) sum_s eta_s,

and sample ``s`` is *certified* when its dense prediction margin exceeds ``2 eta_s``. ``||R psi_1(s)||_inf``
is the largest ``|layer_R(psi_1)|`` over every output coordinate of the sample (all tokens of a token model,
all positions of a conv). Every certificate says which L_s estimator was used and whether it is sound.

One concept per module:

==============================  =================================================================
:mod:`~.calibration`            calibration batches: train split only, ``(x, y)`` stream
:mod:`~.capture`                forward-hook capture: ``||R psi_1||_inf``, dense logits, second moments
:mod:`~.trace`                  the tail trace: breakpoints, PL check, product of induced norms
:mod:`~.segment`                the segment engine: the model along ``S + theta R``, prefix cached
:mod:`~.pl_enclosure`           enclosures of the tangent over a theta-interval (PL tails)
:mod:`~.pl_search`              :func:`pl_bound`: branch and bound over the segment, exact or decided
                                against per-sample targets
:mod:`~.estimators`             the L_s estimators (pl_exact, segment_max_slope, product_norm, auto)
                                and :func:`certify_layer`
:mod:`~.report`                 :class:`LayerCertificate`, :class:`CertificateReport`
:mod:`~.chain`                  :func:`certify`: every pruned layer and the D11 total;
                                :func:`certify_step`: one layer in a given network, against targets
==============================  =================================================================

The gate (:class:`Gate`, :class:`GateLayer`, :class:`GateResult`) lives in :mod:`mpprune.gate` (with
:mod:`mpprune.gate_result` and :mod:`mpprune.gate_allocation`) and is re-exported here; by default it
certifies the model it writes (the D11 chain, ``scope="model"``). Every certificate runs on the model's
device, in float64 on a copy of the model; the models passed in are never modified. Every report line says
``sound`` or ``ESTIMATE``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mpprune.certify.calibration import iter_calibration
from mpprune.certify.capture import (
    LayerCapture,
    SecondMoments,
    capture_covariance,
    capture_layer,
    layer_removed_output,
)
from mpprune.certify.chain import certify, certify_step, chain_report
from mpprune.certify.estimators import (
    AUTO_MAX_PROBES,
    ESTIMATORS,
    NotPiecewiseLinear,
    ProbeBudgetExceeded,
    certify_layer,
)
from mpprune.certify.pl_search import pl_bound
from mpprune.certify.report import CertificateReport, LayerCertificate

if TYPE_CHECKING:
    from mpprune.gate import Gate, GateLayer, GateResult

__all__ = [
    "ESTIMATORS",
    "CertificateReport",
    "Gate",
    "GateLayer",
    "GateResult",
    "LayerCapture",
    "LayerCertificate",
    "NotPiecewiseLinear",
    "ProbeBudgetExceeded",
    "AUTO_MAX_PROBES",
    "SecondMoments",
    "capture_covariance",
    "capture_layer",
    "certify",
    "certify_layer",
    "certify_step",
    "chain_report",
    "pl_bound",
    "iter_calibration",
    "layer_removed_output",
]

# mpprune.gate imports this package, so its names are resolved on first use (PEP 562), not at import.
_GATE_NAMES = ("Gate", "GateLayer", "GateResult")


def __getattr__(name: str) -> Any:
    if name in _GATE_NAMES:
        value = getattr(importlib.import_module("mpprune.gate"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_GATE_NAMES))
