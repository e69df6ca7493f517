"""Generators of small networks and certificate cases: seeded numpy factories and public hypothesis
strategies.

Every ``make_*`` factory takes a ``numpy.random.Generator`` (for non-hypothesis callers such as the claims
registry); every strategy draws sizes with hypothesis and the weights from a drawn seed, so failures replay.

* :func:`small_relu_nets` -- a 3-layer ReLU MLP split at its middle layer (:class:`SplitNetwork`).
* :func:`masks`, :func:`disjoint_triples`, :func:`thetas` -- building blocks.
* :func:`cert_cases` -- :class:`CertCase` for D1, D2, D4-D9; :func:`dead_column_cases` for D3;
  :func:`multilayer_cases` for D10-D12.
* Adversarial cases for negative controls: :func:`linear_tail_cases` (the exact L_s is attained, so a halved
  L_s must fail D1) and :func:`adversarial_margin_cases` (dense margin in (eta, 2 eta] and the label flips, so
  margin factor 1 must fail D2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from mptheory.certificates import (
    CertCase,
    MLPNetwork,
    MultiLayerCase,
    PruneRestore,
    SplitNetwork,
)

__all__ = [
    "adversarial_margin_cases",
    "cert_cases",
    "dead_column_cases",
    "disjoint_triples",
    "linear_tail_cases",
    "make_adversarial_margin_case",
    "make_cert_case",
    "make_dead_column_case",
    "make_linear_tail_case",
    "make_multilayer_case",
    "make_split_network",
    "masks",
    "multilayer_cases",
    "small_relu_nets",
    "thetas",
]

_SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


def _linear(W: np.ndarray, b: np.ndarray) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


def _gauss(rng: np.random.Generator, rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
    return rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)


def _labels(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    """Half the samples get the predicted class, half a random class (so true margins take both signs)."""
    lab = z.argmax(axis=1)
    rand = rng.integers(0, z.shape[1], size=z.shape[0])
    return np.where(rng.random(z.shape[0]) < 0.5, lab, rand).astype(np.int64)


def make_split_network(
    rng: np.random.Generator,
    n_samples: int = 8,
    d0: int = 5,
    m: int = 6,
    n: int = 6,
    k: int = 3,
    tail_hidden: int = 0,
    dead: int = 0,
) -> SplitNetwork:
    """3-layer ReLU MLP ``d0 -> m -> n -> k`` split at the middle layer A (n, m).

    psi1 = relu(W1 x + b1) for a Gaussian batch x; tail = ReLU, Linear(n, k) (or ReLU, Linear(n, tail_hidden),
    ReLU, Linear(tail_hidden, k) when ``tail_hidden > 0``). ``dead`` input units of A are forced to 0 for
    every
    sample (W1 row 0, bias -1).
    """
    if min(n_samples, d0, m, n) < 1 or k < 2 or not 0 <= dead < m:
        raise ValueError(f"bad sizes n_samples={n_samples} d0={d0} m={m} n={n} k={k} dead={dead}")
    X = rng.standard_normal((n_samples, d0))
    W1, b1 = _gauss(rng, m, d0, 1.5), 0.3 * rng.standard_normal(m)
    if dead:
        cols = rng.choice(m, size=dead, replace=False)
        W1[cols] = 0.0
        b1[cols] = -1.0
    psi1 = np.maximum(X @ W1.T + b1, 0.0)
    A, b2 = _gauss(rng, n, m, 1.5), 0.3 * rng.standard_normal(n)
    if tail_hidden > 0:
        tail = nn.Sequential(
            nn.ReLU(),
            _linear(_gauss(rng, tail_hidden, n, 1.5), 0.3 * rng.standard_normal(tail_hidden)),
            nn.ReLU(),
            _linear(_gauss(rng, k, tail_hidden, 2.0), 0.3 * rng.standard_normal(k)),
        )
    else:
        tail = nn.Sequential(nn.ReLU(), _linear(_gauss(rng, k, n, 2.0), 0.3 * rng.standard_normal(k)))
    with torch.no_grad():
        z = tail(torch.from_numpy(psi1 @ A.T + b2)).numpy()
    return SplitNetwork(psi1, A, tail, _labels(rng, z), b2)


def _mask(rng: np.random.Generator, shape: tuple[int, ...], keep: float) -> np.ndarray:
    return (rng.random(shape) < keep).astype(np.float64)


def _triple(rng: np.random.Generator, A: np.ndarray) -> PruneRestore:
    part = rng.choice(3, size=A.shape, p=rng.dirichlet(np.ones(3)))
    return PruneRestore(np.where(part == 0, A, 0.0), np.where(part == 1, A, 0.0), np.where(part == 2, A, 0.0))


def _lam(rng: np.random.Generator) -> float:
    return 0.0 if rng.random() < 0.15 else float(10.0 ** rng.uniform(-3, 1))


def _thetas(rng: np.random.Generator, count: int = 3) -> np.ndarray:
    return np.unique(np.concatenate(([0.0, 1.0], rng.random(count))))


def _case_from_net(rng: np.random.Generator, net: SplitNetwork, mask: np.ndarray | None = None) -> CertCase:
    A = net.A
    mask = _mask(rng, A.shape, rng.uniform(0.1, 0.9)) if mask is None else mask
    l1, l2 = _lam(rng), _lam(rng)
    return CertCase(
        net=net,
        mask=mask,
        general_R=rng.uniform(0.0, 1.0) * rng.standard_normal(A.shape) * np.abs(A).mean(),
        triple=_triple(rng, A),
        lam1=l1,
        lam2=l2,
        gamma1=l1 * rng.uniform(0, 2, A.shape),
        gamma2=l2 * rng.uniform(0, 2, A.shape),
        thetas=_thetas(rng),
    )


def make_cert_case(rng: np.random.Generator, n_samples: int | None = None, max_width: int = 7) -> CertCase:
    """A random single-layer case (D1, D2, D4-D9)."""
    nb = int(rng.integers(2, 11)) if n_samples is None else n_samples
    sizes = rng.integers(2, max_width + 1, size=4)
    net = make_split_network(
        rng,
        nb,
        int(sizes[0]),
        int(sizes[1]),
        int(sizes[2]),
        int(rng.integers(2, 5)),
        int(sizes[3]) if rng.random() < 0.5 else 0,
    )
    return _case_from_net(rng, net)


def make_dead_column_case(rng: np.random.Generator, max_width: int = 7) -> CertCase:
    """D3 case: R is supported on input coordinates of A that are zero for every calibration sample."""
    m = int(rng.integers(2, max_width + 1))
    dead = int(rng.integers(1, m))
    net = make_split_network(
        rng,
        int(rng.integers(2, 11)),
        int(rng.integers(2, max_width + 1)),
        m,
        int(rng.integers(2, max_width + 1)),
        int(rng.integers(2, 5)),
        dead=dead,
    )
    dead_cols = np.flatnonzero(np.all(net.psi1 == 0.0, axis=0))
    mask = np.ones(net.A.shape)
    drop = rng.random((net.A.shape[0], dead_cols.size)) < rng.uniform(0.3, 1.0)
    drop[0, 0] = True  # R != 0
    mask[:, dead_cols] = np.where(drop, 0.0, 1.0)
    return _case_from_net(rng, net, mask)


def make_linear_tail_case(rng: np.random.Generator) -> CertCase:
    """Affine tail psi_2(v) = W3 v + b3: the exact segment slope is attained end to end (negative control
    for D1)."""
    nb, m, n, k = (int(x) for x in rng.integers(2, 7, size=4))
    psi1 = np.abs(rng.standard_normal((nb, m)))
    A = rng.standard_normal((n, m))
    tail = _linear(rng.standard_normal((k, n)), rng.standard_normal(k))
    with torch.no_grad():
        z = tail(torch.from_numpy(psi1 @ A.T)).numpy()
    net = SplitNetwork(psi1, A, tail, _labels(rng, z))
    mask = _mask(rng, A.shape, 0.5)
    mask[0, 0] = 0.0
    return _case_from_net(rng, net, mask)


def make_adversarial_margin_case(rng: np.random.Generator) -> CertCase:
    """Every sample has dense margin r a c_s with r in (1, 2) while eta_s = a c_s and the label flips.

    psi1(s) = c_s (1, 1), tail = identity Linear (L_s = 1 exactly), S = diag(s11, s22), R = [[0, a], [-a, 0]],
    s11 - s22 = (r - 2) a: the dense margin exceeds 1 * eta but not 2 * eta, and pruning flips the label.
    """
    nb = int(rng.integers(1, 7))
    a, r = rng.uniform(0.5, 2.0), rng.uniform(1.05, 1.95)
    s22 = rng.uniform(-1, 1)
    s11 = s22 + (r - 2.0) * a
    A = np.array([[s11, a], [-a, s22]])
    psi1 = rng.uniform(0.5, 2.0, size=(nb, 1)) * np.ones((1, 2))
    tail = _linear(np.eye(2), np.zeros(2))
    net = SplitNetwork(psi1, A, tail, np.zeros(nb, dtype=np.int64))
    case = _case_from_net(rng, net, np.eye(2))
    return CertCase(
        case.net,
        case.mask,
        case.general_R,
        case.triple,
        case.lam1,
        case.lam2,
        case.gamma1,
        case.gamma2,
        np.array([0.0]),
    )


def make_multilayer_case(rng: np.random.Generator, max_width: int = 6) -> MultiLayerCase:
    """3-layer ReLU MLP d0 -> h1 -> h2 -> K with 2 or 3 layers pruned in a random order."""
    d0, h1, h2 = (int(x) for x in rng.integers(2, max_width + 1, size=3))
    k = int(rng.integers(2, 5))
    nb = int(rng.integers(2, 9))
    dims = [d0, h1, h2, k]
    Ws = tuple(_gauss(rng, dims[i + 1], dims[i], 1.5) for i in range(3))
    bs = tuple(0.3 * rng.standard_normal(dims[i + 1]) for i in range(3))
    X = rng.standard_normal((nb, d0))
    probe = MLPNetwork(Ws, bs, X, np.zeros(nb, dtype=np.int64))
    mlp = MLPNetwork(Ws, bs, X, _labels(rng, probe.logits()))
    count = int(rng.integers(2, 4))
    layers = tuple(int(j) for j in rng.permutation(3)[:count])
    masks = tuple(_mask(rng, Ws[j].shape, rng.uniform(0.2, 0.9)) for j in layers)
    return MultiLayerCase(
        mlp, layers, masks, tuple(_lam(rng) for _ in range(3)), tuple(_lam(rng) for _ in range(3))
    )


# ----------------------------------------------------------------------------------------------------
# hypothesis strategies


@st.composite
def small_relu_nets(
    draw: st.DrawFn, max_width: int = 7, max_samples: int = 10, tail_hidden: bool | None = None
) -> SplitNetwork:
    """A 3-layer ReLU MLP with random widths split at the middle layer (psi1, A, tail, labels)."""
    nb = draw(st.integers(1, max_samples))
    d0, m, n = (draw(st.integers(1, max_width)) for _ in range(3))
    k = draw(st.integers(2, 4))
    th = draw(st.booleans()) if tail_hidden is None else tail_hidden
    hid = draw(st.integers(1, max_width)) if th else 0
    return make_split_network(np.random.default_rng(draw(_SEEDS)), nb, d0, m, n, k, hid)


def masks(
    shape: tuple[int, ...], keep: st.SearchStrategy[float] | None = None
) -> st.SearchStrategy[np.ndarray]:
    """0/1 float arrays of ``shape`` (1 = keep) with a drawn keep probability."""
    keep = st.floats(0.0, 1.0) if keep is None else keep
    return st.tuples(keep, _SEEDS).map(lambda ks: _mask(np.random.default_rng(ks[1]), tuple(shape), ks[0]))


def disjoint_triples(A: np.ndarray) -> st.SearchStrategy[PruneRestore]:
    """(S, Q, P) with pairwise disjoint supports and S + Q + P = A."""
    A = np.asarray(A, dtype=np.float64)
    return _SEEDS.map(lambda s: _triple(np.random.default_rng(s), A))


def thetas(max_size: int = 4) -> st.SearchStrategy[np.ndarray]:
    """Sorted theta grids in [0, 1] that always contain 0 and 1."""
    return st.lists(st.floats(0.0, 1.0), max_size=max_size).map(
        lambda t: np.unique(np.concatenate(([0.0, 1.0], t)))
    )


def _seeded(factory: Callable[[np.random.Generator], object]) -> st.SearchStrategy:
    return _SEEDS.map(lambda s: factory(np.random.default_rng(s)))


def cert_cases() -> st.SearchStrategy[CertCase]:
    """Single-layer cases for D1, D2, D4-D9."""
    return _seeded(make_cert_case)


def dead_column_cases() -> st.SearchStrategy[CertCase]:
    """D3 cases: R supported on input coordinates that are zero for all calibration samples."""
    return _seeded(make_dead_column_case)


def multilayer_cases() -> st.SearchStrategy[MultiLayerCase]:
    """D10-D12 cases."""
    return _seeded(make_multilayer_case)


def linear_tail_cases() -> st.SearchStrategy[CertCase]:
    """Adversarial for L_s: affine tail, exact L_s attained (halving it must break D1)."""
    return _seeded(make_linear_tail_case)


def adversarial_margin_cases() -> st.SearchStrategy[CertCase]:
    """Adversarial for the factor 2: margins in (eta, 2 eta] that flip (factor 1 must break D2)."""
    return _seeded(make_adversarial_margin_case)
