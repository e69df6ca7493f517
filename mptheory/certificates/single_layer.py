"""Single-layer certificates D1–D9 (digest §2.1), evaluated exactly on a :class:`SplitNetwork`.

One layer ``A`` (shape (n, m)) is split off; ``A = S + R`` defines the path ``A_θ = S + θR`` (``A_1`` dense,
``A_0`` pruned). Each theorem is returned as :class:`~mptheory.verdict.Inequality` objects inside a small
result dataclass:

* D1 :func:`path_bound` (logit and cross-entropy path bounds), D2 :func:`margin_certificate` (margins, label
  stability of certified samples, accuracy), D3 :func:`zero_budget`;
* D4 :func:`frobenius_certificate` (any decomposition), D5/D6 :func:`elastic_net_certificate` (mask split,
  plain or weighted), D7 :func:`prune_restore_certificate`, D8 :func:`restoration_identity`;
* D9 :func:`stationarity` (after rescaling R to the 1-D minimiser of the objective).

The case runners ``check_d1`` … ``check_d9`` take a generated :class:`CertCase` (see
:mod:`mptheory.strategies_nets`) and an L_s estimator name of :data:`mptheory.lipschitz.ESTIMATORS`
(default ``"pl_exact"``) and return a deterministic :class:`~mptheory.verdict.CheckResult` whose one
tightness value is the largest realised/bound ratio of the case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from mptheory.certificates.network import (
    Decomposition,
    MaskDecomposition,
    PruneRestore,
    SplitNetwork,
    _theta,
)
from mptheory.certificates.quantities import (
    _L,
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
    true_margin,
)
from mptheory.lipschitz import LipschitzEstimate
from mptheory.verdict import RTOL, CheckResult, Inequality, max_ratio

__all__ = [
    "CASE_TIGHTNESS",
    "CertCase",
    "MarginResult",
    "ObjectiveCertificate",
    "PathBoundResult",
    "RestorationResult",
    "StationarityResult",
    "ZeroBudgetResult",
    "check_d1",
    "check_d2",
    "check_d3",
    "check_d4",
    "check_d5",
    "check_d6",
    "check_d7",
    "check_d8",
    "check_d9",
    "elastic_net_certificate",
    "frobenius_certificate",
    "margin_certificate",
    "path_bound",
    "prune_restore_certificate",
    "restoration_identity",
    "stationarity",
    "zero_budget",
]

#: what the one tightness value of a case runner's result is
CASE_TIGHTNESS = "largest realised/bound ratio of the generated case"


# ----------------------------------------------------------------------------------------------------
# D1, D2: path bound and margins


@dataclass(frozen=True)
class PathBoundResult:
    """D1 on a theta grid: ``logit`` (T, B) ||z_theta - z_1||_inf <= eta_s(theta); ``ce`` (T,) |dCE| <=
    (1-theta) B_T."""

    thetas: np.ndarray
    eta: np.ndarray
    budget: float
    logit: Inequality
    ce: Inequality


def _prep(net: SplitNetwork, dec: Decomposition, L: LipschitzEstimate | np.ndarray | None) -> np.ndarray:
    net.with_decomposition_check(dec)
    if L is None:
        L = lipschitz_bounds(net, dec)
    return _L(L, net.n_samples)


def path_bound(
    net: SplitNetwork,
    dec: Decomposition,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.5, 1.0),
) -> PathBoundResult:
    """D1: per-sample logit bound and the cross-entropy path bound on a theta grid (L default: exact)."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    z1 = net.logits(dec.A)
    zs = np.stack([net.logits(dec.at(t)) for t in th])
    e = eta(net.psi1, dec.R, Lv, th)
    B = budget(net.psi1, dec.R, Lv)
    ce1 = cross_entropy(z1, net.labels)
    dce = np.array([abs(cross_entropy(z, net.labels) - ce1) for z in zs])
    dz = np.abs(zs - z1[None]).max(axis=2)
    logit = Inequality("D1 logit: ||z_theta - z_1||_inf <= eta_s(theta)", dz, e, scale=np.abs(z1).max())
    ce = Inequality("D1 CE: |CE(A_theta) - CE(A)| <= (1-theta) B_T(R)", dce, (1 - th) * B, scale=abs(ce1))
    return PathBoundResult(th, e, B, logit, ce)


@dataclass(frozen=True)
class MarginResult:
    """D2: ``margin_change`` (T, B) |Dtrue_theta - Dtrue_1| <= 2 eta; ``flips`` over flipped (theta, s):
    dense Dpred <= factor * eta; ``accuracy`` (T,) |Dacc| |T| <= count; ``certified`` (B,) at theta = 0."""

    thetas: np.ndarray
    eta: np.ndarray
    certified: np.ndarray
    margin_change: Inequality
    flips: Inequality
    accuracy: Inequality


def margin_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.5, 1.0),
    factor: float = 2.0,
) -> MarginResult:
    """D2 (i) label stability of certified samples and (ii) the accuracy inequality; ``factor`` = 2 is the
    theorem (``factor = 1`` is the negative control that adversarial cases break)."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    z1 = net.logits(dec.A)
    e = eta(net.psi1, dec.R, Lv, th)
    pred1 = z1.argmax(axis=1)
    dpred1 = prediction_margin(z1)
    dtrue1 = true_margin(z1, net.labels)
    acc1 = float(np.mean(dtrue1 > 0))
    ch, fl_l, fl_r, acc_l, acc_r = [], [], [], [], []
    for k, t in enumerate(th):
        z = net.logits(dec.at(t))
        ch.append(np.abs(true_margin(z, net.labels) - dtrue1))
        # a label "changes" when the dense prediction is no longer the strict argmax
        flipped = prediction_margin_of_class(z, pred1) <= 0
        fl_l.append(dpred1[flipped])
        fl_r.append(factor * e[k][flipped])
        acc_l.append(abs(accuracy(z, net.labels) - acc1) * net.n_samples)
        acc_r.append(accuracy_bound_count(z1, net.labels, e[k], factor))
    sc = float(np.abs(z1).max())
    return MarginResult(
        th,
        e,
        certified_samples(z1, e[int(np.argmin(th))], factor),
        Inequality("D2 |Dtrue(A_theta) - Dtrue(A)| <= 2 eta_s", np.stack(ch), 2.0 * e, scale=sc),
        Inequality(
            f"D2 label change => Dpred(A) <= {factor:g} eta_s",
            np.concatenate(fl_l),
            np.concatenate(fl_r),
            scale=sc,
        ),
        Inequality(
            f"D2 |acc(A_theta) - acc(A)| |T| <= #{{|Dtrue| <= {factor:g} eta}}",
            np.array(acc_l),
            np.array(acc_r, dtype=float),
        ),
    )


# ----------------------------------------------------------------------------------------------------
# D3: zero budget


@dataclass(frozen=True)
class ZeroBudgetResult:
    """D3: ``budget`` (must be 0), ``logit`` max|z_S - z_A| <= 0, ``identity`` |J(S) - (J(A) - pen(R))| <=
    0."""

    budget: float
    logit: Inequality
    identity: Inequality
    decrease: bool


def zero_budget(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
) -> ZeroBudgetResult:
    """D3: if B_T(R) = 0 (mask split), logits on T are bit-identical and J(S) = J(A) - lam2||R||^2 -
    lam1||R||_1."""
    if not dec.is_mask:
        raise ValueError("zero_budget needs a mask decomposition (S ⊙ R = 0)")
    Lv = _prep(net, dec, L)
    B = budget(net.psi1, dec.R, Lv)
    if B != 0.0:
        raise ValueError(f"zero_budget: precondition B_T(R) = 0 fails (B_T = {B:.3e})")
    zA, zS = net.logits(dec.A), net.logits(dec.S)
    jA, jS = objective(net, dec.A), objective(net, dec.S)
    pen_R = objective.penalty(dec.R)
    return ZeroBudgetResult(
        B,
        Inequality("D3 logits identical", np.array([np.abs(zS - zA).max()]), np.zeros(1), rtol=0.0),
        Inequality(
            "D3 J(S) = J(A) - pen(R)", np.array([abs(jS - (jA - pen_R))]), np.zeros(1), scale=abs(jA) + pen_R
        ),
        bool(jS < jA),
    )


# ----------------------------------------------------------------------------------------------------
# D4-D8: objective certificates


@dataclass(frozen=True)
class ObjectiveCertificate:
    """``path`` (T,) J(A_theta) - J(A) <= bound(theta); ``certified`` the sufficient decrease condition;
    ``implication`` (1,) certified => J(A_0) < J(A) encoded as J(A_0) - J(A) <= 0 (empty if not certified)."""

    thetas: np.ndarray
    budget: float
    certified: bool
    path: Inequality
    implication: Inequality
    drop: float


def _objective_path(
    net: SplitNetwork,
    dec: Decomposition,
    obj: ElasticNet,
    th: np.ndarray,
    bound: np.ndarray,
    certified: bool,
    B: float,
    name: str,
) -> ObjectiveCertificate:
    jA = obj(net, dec.A)
    j = np.array([obj(net, dec.at(t)) for t in th])
    scale = abs(jA) + obj.penalty(dec.A) + abs(B)
    jS = obj(net, dec.S)
    imp_l = np.array([jS - jA]) if certified else np.zeros(0)
    imp = Inequality(f"{name}: certified => J(S) < J(A)", imp_l, np.zeros_like(imp_l), scale=scale, rtol=0.0)
    return ObjectiveCertificate(th, B, certified, Inequality(name, j - jA, bound, scale=scale), imp, jA - jS)


def frobenius_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    lam2: float,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> ObjectiveCertificate:
    """D4 (any decomposition): J2(A_theta) - J2(A) <= (1-theta)B_T - lam2(1-theta^2)||R||^2 - 2
    lam2(1-theta)<S,R>;
    certified when B_T + 2 lam2 |<S,R>| < lam2 ||R||^2."""
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    obj = ElasticNet(lam2=lam2)
    B = budget(net.psi1, dec.R, Lv)
    r2, sr = float(np.sum(dec.R**2)), float(np.sum(dec.S * dec.R))
    bound = (1 - th) * B - lam2 * (1 - th**2) * r2 - 2 * lam2 * (1 - th) * sr
    return _objective_path(
        net, dec, obj, th, bound, B + 2 * lam2 * abs(sr) < lam2 * r2, B, "D4 Frobenius path"
    )


def elastic_net_certificate(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    name: str = "D5 elastic-net path",
) -> ObjectiveCertificate:
    """D5/D6 (mask split): J(A_theta) - J(A) <= (1-theta)B_T - (1-theta^2) pen2(R) - (1-theta) pen1(R),
    where pen2
    = lam2||R||^2 + sum gamma2 R^2 and pen1 = lam1||R||_1 + sum gamma1|R|; certified when B_T < pen2 +
    pen1."""
    if not dec.is_mask:
        raise ValueError(
            "elastic_net_certificate needs disjoint supports (S ⊙ R = 0); use frobenius_certificate"
        )
    Lv = _prep(net, dec, L)
    th = _theta(thetas)
    B = budget(net.psi1, dec.R, Lv)
    p2 = ElasticNet(lam2=objective.lam2, gamma2=objective.gamma2).penalty(dec.R)
    p1 = ElasticNet(lam1=objective.lam1, gamma1=objective.gamma1).penalty(dec.R)
    bound = (1 - th) * B - (1 - th**2) * p2 - (1 - th) * p1
    return _objective_path(net, dec, objective, th, bound, B < p2 + p1, B, name)


def prune_restore_certificate(
    net: SplitNetwork,
    triple: PruneRestore,
    objective: ElasticNet,
    L: LipschitzEstimate | np.ndarray | None = None,
    thetas: np.ndarray | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> ObjectiveCertificate:
    """D7: D5 applied to (S + Q) + P with A_theta = S + Q + theta P; certified when B_T(P) < pen(P)."""
    return elastic_net_certificate(net, triple.restore(), objective, L, thetas, "D7 prune-restore path")


@dataclass(frozen=True)
class RestorationResult:
    """D8: ``upper_restore`` = J(A) - pen(P) + B_T(P), ``upper_prune_all`` = J(A) - pen(Q+P) + B_T(Q+P);
    ``identity``: |(U_all - U_restore) - (B_T(R) - B_T(P) - pen(Q))| <= 0; ``helps`` iff B_T(R) - B_T(P) >
    pen(Q)."""

    upper_restore: float
    upper_prune_all: float
    budget_R: float
    budget_P: float
    helps: bool
    identity: Inequality
    equivalence: Inequality


def restoration_identity(
    net: SplitNetwork,
    triple: PruneRestore,
    objective: ElasticNet,
    L_R: LipschitzEstimate | np.ndarray | None = None,
    L_P: LipschitzEstimate | np.ndarray | None = None,
) -> RestorationResult:
    """D8: restoring Q lowers the upper bound iff B_T(Q+P) - B_T(P) > lam2||Q||^2 + lam1||Q||_1 (exact
    algebra)."""
    dall, dres = triple.prune_all(), triple.restore()
    LR, LP = _prep(net, dall, L_R), _prep(net, dres, L_P)
    jA = objective(net, triple.A)
    BR, BP = budget(net.psi1, dall.R, LR), budget(net.psi1, dres.R, LP)
    pen = objective.penalty
    u_res = jA - pen(triple.P) + BP
    u_all = jA - pen(triple.Q + triple.P) + BR
    lhs_gap = u_all - u_res
    rhs_gap = BR - BP - pen(triple.Q)
    scale = abs(jA) + pen(triple.A) + BR + BP
    helps = rhs_gap > 0
    # equivalence: sign(U_all - U_restore) agrees with sign of the condition (unless within rounding of a tie)
    tol = RTOL * max(1.0, scale)
    agree = (lhs_gap > 0) == helps or abs(lhs_gap) <= tol or abs(rhs_gap) <= tol
    return RestorationResult(
        u_res,
        u_all,
        BR,
        BP,
        bool(helps),
        Inequality("D8 identity", np.array([abs(lhs_gap - rhs_gap)]), np.zeros(1), scale=scale),
        Inequality("D8 iff", np.array([0.0 if agree else 1.0]), np.zeros(1), rtol=0.0),
    )


# ----------------------------------------------------------------------------------------------------
# D9: stationarity


@dataclass(frozen=True)
class StationarityResult:
    """D9 after rescaling R so that theta = 1 minimises f(theta) = J(S + theta R) on [0, 2].

    ``theta_star`` the 1-D minimiser, ``eps`` (H,) = max(0, (f(1) - f(1-h))/h) for h in ``hs``,
    ``inequality`` (H,): (2-h) pen2(R) + pen1(R) <= B_T(R) + eps_h (the theorem at theta = 1-h),
    ``stationary_eps`` = eps at the smallest h (the optimiser tolerance)."""

    theta_star: float
    decomposition: Decomposition
    hs: np.ndarray
    eps: np.ndarray
    budget: float
    inequality: Inequality
    stationary_eps: float


def stationarity(
    net: SplitNetwork,
    dec: Decomposition,
    objective: ElasticNet,
    method: str = "pl_exact",
    lipschitz_scale: float = 1.0,
    hs: Sequence[float] = (1e-6, 1e-3, 0.1, 0.5, 1.0),
    xatol: float = 1e-10,
) -> StationarityResult:
    """D9 via the 1-D minimiser rescaling (scipy.optimize.minimize_scalar, bounded on [0, 2]; when a 41-point
    grid finds a lower basin, the minimiser is refined inside that grid point's bracket)."""
    if not dec.is_mask:
        raise ValueError("stationarity needs a mask decomposition (S ⊙ R = 0)")
    net.with_decomposition_check(dec)

    def f_raw(t: float) -> float:
        return objective(net, dec.S + t * dec.R)

    opt = minimize_scalar(f_raw, bounds=(0.0, 2.0), method="bounded", options={"xatol": xatol})
    ts = float(opt.x)
    grid = np.linspace(0.0, 2.0, 41)
    fg = np.array([f_raw(t) for t in grid])
    if fg.min() < opt.fun:  # another basin: refine inside the grid minimum's bracket (a grid point alone
        i = int(np.argmin(fg))  # is not a minimiser, and D9 needs theta = 1 to minimise on [0, 1])
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        ref = minimize_scalar(f_raw, bounds=(lo, hi), method="bounded", options={"xatol": xatol})
        ts = float(ref.x) if ref.fun <= fg[i] else float(grid[i])
    dec2 = dec.scaled(ts)
    net2 = SplitNetwork(net.psi1, dec2.A, net.tail, net.labels, net.bias)
    L = lipschitz_bounds(net2, dec2, method).scaled(lipschitz_scale)
    B = budget(net2.psi1, dec2.R, L)
    hv = np.asarray(hs, dtype=np.float64)
    if np.any(hv <= 0) or np.any(hv > 1):
        raise ValueError(f"hs must lie in (0, 1], got {hv}")
    f1 = objective(net2, dec2.A)
    eps = np.array([max(0.0, (f1 - objective(net2, dec2.at(1.0 - h))) / h) for h in hv])
    p2 = ElasticNet(lam2=objective.lam2, gamma2=objective.gamma2).penalty(dec2.R)
    p1 = ElasticNet(lam1=objective.lam1, gamma1=objective.gamma1).penalty(dec2.R)
    scale = (abs(f1) + p1 + p2) / hv
    ineq = Inequality("D9 (2-h) pen2 + pen1 <= B_T + eps_h", (2 - hv) * p2 + p1, B + eps, scale=scale)
    return StationarityResult(ts, dec2, hv, eps, B, ineq, float(eps[int(np.argmin(hv))]))


# ----------------------------------------------------------------------------------------------------
# generated cases and the case runners D1–D9


@dataclass(frozen=True)
class CertCase:
    """One generated single-layer case: ``net``, a keep ``mask`` (n, m), a general non-mask removed part
    ``general_R`` (D4), a disjoint ``triple`` (D7/D8), elastic-net weights and a theta grid."""

    net: SplitNetwork
    mask: np.ndarray
    general_R: np.ndarray
    triple: PruneRestore
    lam1: float
    lam2: float
    gamma1: np.ndarray
    gamma2: np.ndarray
    thetas: np.ndarray

    @property
    def decomposition(self) -> Decomposition:
        return MaskDecomposition(self.net.A, self.mask)

    @property
    def general(self) -> Decomposition:
        return Decomposition(self.net.A - self.general_R, self.general_R)


def _L_for(case: CertCase, dec: Decomposition, method: str, scale: float) -> LipschitzEstimate:
    return lipschitz_bounds(case.net, dec, method).scaled(scale)


def _result(ineqs: Sequence[Inequality], tightness: float = float("nan")) -> CheckResult:
    return CheckResult.from_inequalities(ineqs, tightness, CASE_TIGHTNESS)


def check_d1(case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D1 per-sample logit bound and CE path bound; tightness = max realised ||dz|| / eta."""
    dec = case.decomposition
    r = path_bound(case.net, dec, _L_for(case, dec, method, lipschitz_scale), case.thetas)
    return _result([r.logit, r.ce], r.logit.max_ratio)


def check_d2(
    case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0, margin_factor: float = 2.0
) -> CheckResult:
    """D2 margin change, label stability of certified samples, accuracy inequality."""
    dec = case.decomposition
    r = margin_certificate(
        case.net, dec, _L_for(case, dec, method, lipschitz_scale), case.thetas, margin_factor
    )
    return _result([r.margin_change, r.flips, r.accuracy], r.margin_change.max_ratio)


def check_d3(case: CertCase, method: str = "pl_exact") -> CheckResult:
    """D3 on a dead-column case (B_T(R) = 0): identical logits and the exact objective identity."""
    r = zero_budget(
        case.net,
        case.decomposition,
        ElasticNet(case.lam1, case.lam2),
        lipschitz_bounds(case.net, case.decomposition, method),
    )
    return _result([r.logit, r.identity])


def _objective_result(c: ObjectiveCertificate) -> CheckResult:
    """Tightness of an objective certificate: realised |dCE| over its budget share (1-theta) B_T."""
    share = (1.0 - c.thetas) * c.budget
    ce_part = c.path.lhs - (c.path.rhs - share)
    return _result([c.path, c.implication], max_ratio(np.abs(ce_part), share))


def check_d4(case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D4 on the general (non-mask) decomposition."""
    dec = case.general
    return _objective_result(
        frobenius_certificate(
            case.net, dec, case.lam2, _L_for(case, dec, method, lipschitz_scale), case.thetas
        )
    )


def check_d5(case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D5 elastic-net path inequality and certificate => strict decrease."""
    dec = case.decomposition
    return _objective_result(
        elastic_net_certificate(
            case.net,
            dec,
            ElasticNet(case.lam1, case.lam2),
            _L_for(case, dec, method, lipschitz_scale),
            case.thetas,
        )
    )


def check_d6(case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D6 weighted elastic net (gamma1, gamma2) path inequality and certificate => strict decrease."""
    dec = case.decomposition
    obj = ElasticNet(gamma1=case.gamma1, gamma2=case.gamma2)
    return _objective_result(
        elastic_net_certificate(
            case.net, dec, obj, _L_for(case, dec, method, lipschitz_scale), case.thetas, "D6 weighted path"
        )
    )


def check_d7(case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0) -> CheckResult:
    """D7 prune-restore path inequality (restore Q, remove P)."""
    dec = case.triple.restore()
    return _objective_result(
        prune_restore_certificate(
            case.net,
            case.triple,
            ElasticNet(case.lam1, case.lam2),
            _L_for(case, dec, method, lipschitz_scale),
            case.thetas,
        )
    )


def check_d8(case: CertCase, method: str = "pl_exact") -> CheckResult:
    """D8 identity U_all - U_restore = B_T(R) - B_T(P) - pen(Q) and the iff."""
    r = restoration_identity(
        case.net,
        case.triple,
        ElasticNet(case.lam1, case.lam2),
        lipschitz_bounds(case.net, case.triple.prune_all(), method),
        lipschitz_bounds(case.net, case.triple.restore(), method),
    )
    return _result([r.identity, r.equivalence])


def check_d9(
    case: CertCase, method: str = "pl_exact", lipschitz_scale: float = 1.0, weighted: bool = False
) -> CheckResult:
    """D9 (weighted=True: the Gamma version) after the 1-D minimiser rescaling; tightness = max lhs/rhs."""
    obj = ElasticNet(gamma1=case.gamma1, gamma2=case.gamma2) if weighted else ElasticNet(case.lam1, case.lam2)
    r = stationarity(case.net, case.decomposition, obj, method, lipschitz_scale)
    return _result([r.inequality], r.inequality.max_ratio)
