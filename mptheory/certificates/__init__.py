"""Deterministic data-path certificates D1–D12 (digest §2.1), evaluated exactly on small networks.

One layer ``A`` (shape (n, m)) of a network is split off: ``psi1`` (B, m) holds the captured layer inputs of
the calibration set T, ``tail`` maps the layer output (B, n) to logits (B, K). A decomposition ``A = S + R``
defines the path ``A_theta = S + theta R`` (``A_1`` dense, ``A_0`` pruned). With a per-sample Lipschitz bound
``L_s`` of the tail on the segment (see :mod:`mptheory.lipschitz`)::

    eta_s(theta) = (1 - theta) L_s ||R psi1(s)||_inf,      B_T(R) = (2/|T|) sum_s L_s ||R psi1(s)||_inf,

and a sample is *certified* when its dense prediction margin exceeds ``2 eta_s``.

Files, one concept each:

* :mod:`~mptheory.certificates.network` — :class:`Decomposition`, :func:`MaskDecomposition`,
  :class:`PruneRestore`, :class:`SplitNetwork`;
* :mod:`~mptheory.certificates.quantities` — the shared primitives: :func:`eta`, :func:`budget`,
  :func:`removed_norms`, the margins, :func:`accuracy`, :func:`cross_entropy`, the certified set
  :func:`certified_samples`, :func:`accuracy_bound_count`, :func:`lipschitz_bounds` and :class:`ElasticNet`
  (``mpprune`` calls exactly these);
* :mod:`~mptheory.certificates.single_layer` — D1–D9 and their case runners ``check_d1`` … ``check_d9``;
* :mod:`~mptheory.certificates.multi_layer` — D10–D12 (:class:`MLPNetwork`, :func:`sequential_prune`) and
  ``check_d10`` … ``check_d12``.

Every theorem is returned as :class:`~mptheory.verdict.Inequality` objects (``lhs <= rhs`` elementwise with a
1e-9 relative tolerance), and every case runner returns a :class:`~mptheory.verdict.CheckResult`.
"""

from mptheory.certificates.multi_layer import (
    MLPNetwork,
    MultiLayerCase,
    MultiMarginResult,
    SequentialPruneResult,
    check_d10,
    check_d11,
    check_d12,
    multilayer_margin,
    multilayer_stationarity,
    sequential_prune,
    telescoped_bound,
)
from mptheory.certificates.network import Decomposition, MaskDecomposition, PruneRestore, SplitNetwork
from mptheory.certificates.quantities import (
    ElasticNet,
    accuracy,
    accuracy_bound_count,
    budget,
    certified_samples,
    cross_entropy,
    eta,
    lipschitz_bounds,
    prediction_margin,
    prediction_margin_of_class,
    removed_norms,
    true_margin,
)
from mptheory.certificates.single_layer import (
    CertCase,
    MarginResult,
    ObjectiveCertificate,
    PathBoundResult,
    RestorationResult,
    StationarityResult,
    ZeroBudgetResult,
    check_d1,
    check_d2,
    check_d3,
    check_d4,
    check_d5,
    check_d6,
    check_d7,
    check_d8,
    check_d9,
    elastic_net_certificate,
    frobenius_certificate,
    margin_certificate,
    path_bound,
    prune_restore_certificate,
    restoration_identity,
    stationarity,
    zero_budget,
)
from mptheory.verdict import Inequality

__all__ = [
    "CertCase",
    "Decomposition",
    "ElasticNet",
    "Inequality",
    "MLPNetwork",
    "MarginResult",
    "MaskDecomposition",
    "MultiLayerCase",
    "MultiMarginResult",
    "ObjectiveCertificate",
    "PathBoundResult",
    "PruneRestore",
    "RestorationResult",
    "SequentialPruneResult",
    "SplitNetwork",
    "StationarityResult",
    "ZeroBudgetResult",
    "accuracy",
    "accuracy_bound_count",
    "budget",
    "certified_samples",
    "check_d1",
    "check_d2",
    "check_d3",
    "check_d4",
    "check_d5",
    "check_d6",
    "check_d7",
    "check_d8",
    "check_d9",
    "check_d10",
    "check_d11",
    "check_d12",
    "cross_entropy",
    "elastic_net_certificate",
    "eta",
    "frobenius_certificate",
    "lipschitz_bounds",
    "margin_certificate",
    "multilayer_margin",
    "multilayer_stationarity",
    "path_bound",
    "prediction_margin",
    "prediction_margin_of_class",
    "prune_restore_certificate",
    "removed_norms",
    "restoration_identity",
    "sequential_prune",
    "stationarity",
    "telescoped_bound",
    "true_margin",
    "zero_budget",
]
