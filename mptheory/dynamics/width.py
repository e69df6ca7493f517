"""A7/G9–G12 experiment: L₂-regularised MLPs trained at growing width, their middle layer recorded.

Over training the middle N×N layer is fitted with :func:`mptheory.fit.fit_mp` (fitted MP σ² on the raw
scale, σ²·N on the normalised one: the digest's g), its top singular values, the overlap of its top-k
subspace with the final one and its Eckart–Young tail. Empirical evidence, not proof: the theorems' limits
are not reached. torch is imported only when training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mptheory.dynamics._common import Array, _pos_int, _rng
from mptheory.fit import fit_mp

__all__ = [
    "FITTER",
    "WidthRun",
    "WidthSeries",
    "make_clusters",
    "make_mlp",
    "regularised_loss",
    "train_width_series",
]

#: the σ² estimator of the width experiment
FITTER = "mptheory.fit.fit_mp"


def make_clusters(n: int = 512, d: int = 16, K: int = 4, separation: float = 3.0, noise: float = 1.0,
                  label_noise: float = 0.0,
                  rng: np.random.Generator | int | None = None) -> tuple[Array, Array]:
    """Procedural data set: K Gaussian clusters in ℝ^d with means of norm ``separation``; a fraction
    ``label_noise`` of labels is reassigned uniformly at random.  Returns X (n, d) float32, y (n,)."""
    n, d, K = _pos_int("n", n), _pos_int("d", d), _pos_int("K", K, 2)
    gen = _rng(rng)
    means = gen.standard_normal((K, d))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = gen.integers(0, K, size=n)
    X = means[y] + noise * gen.standard_normal((n, d))
    flip = gen.random(n) < label_noise
    y = np.where(flip, gen.integers(0, K, size=n), y)
    return X.astype(np.float32), y.astype(np.int64)


@dataclass
class WidthRun:
    """One width.  Arrays are indexed by record (``steps``): fitted MP ``sigma2`` of the middle N×N
    layer, ``sigma2_N`` = σ²·N, ``top_sv`` (records, k), ``overlap`` = ‖U_tᵀ U_final‖²_F / k for the
    top-k left singular subspace, ``tail_energy`` = Σ_{i>k} s_i(W)² (the Eckart–Young tail
    ‖W − W_k‖²_F), ``loss`` (regularised objective) and training ``accuracy``."""

    width: int
    steps: Array
    sigma2: Array
    sigma2_N: Array
    top_sv: Array
    overlap: Array
    tail_energy: Array
    loss: Array
    accuracy: Array


@dataclass
class WidthSeries:
    """Result of :func:`train_width_series`; ``fitter`` names the σ² estimator that was used."""

    widths: tuple[int, ...]
    lambda_reg: float
    epochs: int
    top_k: int
    fitter: str
    runs: list[WidthRun]
    seconds: float

    def final_sigma2_N(self) -> Array:
        """σ²·N at the end of training, one entry per width."""
        return np.array([r.sigma2_N[-1] for r in self.runs])

    def initial_sigma2_N(self) -> Array:
        return np.array([r.sigma2_N[0] for r in self.runs])


def make_mlp(d: int, width: int, K: int, seed: int = 0, init: str = "default") -> Any:
    """The MLP of the width experiments: d → N → N → K with ReLU (torch, float32), seeded with
    ``torch.manual_seed(seed)``; ``init="gaussian"`` redraws every weight from N(0, 1/fan_in), biases 0."""
    import torch

    if init not in ("default", "gaussian"):
        raise ValueError(f"init must be 'default' or 'gaussian'; got {init!r}")
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(d, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                              torch.nn.ReLU(), torch.nn.Linear(width, K))
    if init == "gaussian":
        with torch.no_grad():
            for m in net:
                if isinstance(m, torch.nn.Linear):
                    m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features))
                    m.bias.zero_()
    return net


def regularised_loss(net: Any, out: Any, y: Any, lambda_reg: float) -> Any:
    """The training objective CE(out, y) + λ_reg Σ_i ‖W_i‖²_F over the Linear weights of ``net`` (biases
    unpenalised), a torch scalar."""
    import torch

    weights = [m.weight for m in net if isinstance(m, torch.nn.Linear)]
    return torch.nn.functional.cross_entropy(out, y) + lambda_reg * sum((w**2).sum() for w in weights)


def _train_one(N: int, X: Any, y: Any, K: int, k: int, epochs: int, lambda_reg: float, seed: int, lr: float,
               momentum: float, record_every: int) -> WidthRun:
    """Train one MLP of width N and record its middle layer (see :func:`train_width_series`)."""
    import torch

    net = make_mlp(X.shape[1], N, K, seed)
    middle = [m for m in net if isinstance(m, torch.nn.Linear)][1]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    steps: list[int] = []
    s2: list[float] = []
    tops: list[Array] = []
    Us: list[Array] = []
    tails: list[float] = []
    losses: list[float] = []
    accs: list[float] = []
    for step in range(epochs + 1):
        out = net(X)
        loss = regularised_loss(net, out, y, lambda_reg)
        if step % record_every == 0 or step == epochs:
            W = middle.weight.detach().double().numpy().copy()
            U, sv, _ = np.linalg.svd(W)
            steps.append(step)
            s2.append(float(fit_mp(W).sigma2))
            tops.append(sv[:k])
            Us.append(U[:, :k])
            tails.append(float(np.sum(sv[k:] ** 2)))
            losses.append(float(loss.detach()))
            accs.append(float((out.argmax(1) == y).float().mean()))
        if step == epochs:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    overlap = np.array([float(np.sum((U.T @ Us[-1]) ** 2)) / k for U in Us])
    s2a = np.asarray(s2)
    return WidthRun(width=N, steps=np.asarray(steps), sigma2=s2a, sigma2_N=s2a * N, top_sv=np.asarray(tops),
                    overlap=overlap, tail_energy=np.asarray(tails), loss=np.asarray(losses),
                    accuracy=np.asarray(accs))


def train_width_series(widths: Sequence[int] | None = None, epochs: int | None = None,
                       lambda_reg: float = 5e-3, seed: int = 0, data: tuple[Any, Any] | None = None, *,
                       quick: bool = True,
                       lr: float = 0.05, momentum: float = 0.9, top_k: int | None = None,
                       record_every: int | None = None) -> WidthSeries:
    """Train L₂-regularised MLPs d → N → N → K (ReLU, full batch, SGD with momentum, CPU) at each width N.

    The objective is CE + λ_reg Σ_i ‖W_i‖²_F over the three weight matrices (biases unpenalised).
    Over training the middle N×N layer is recorded: fitted MP σ², σ²·N (A7/G10: → 0 at stationary
    points), top-k singular values and the overlap of the top-k left singular subspace with the final
    one (G11/G12: spikes stabilise).  ``data`` = (X, y) arrays; default :func:`make_clusters` with K = 4.
    ``quick=True``: widths (32, 64, 128), 300 full-batch steps (well under 30 s on one core);
    ``quick=False``: widths (64, 128, 256, 512), 2000 steps.  ``epochs`` counts full-batch steps.
    """
    import torch

    widths = tuple(widths) if widths is not None else ((32, 64, 128) if quick else (64, 128, 256, 512))
    if len(widths) == 0 or any(int(w) != w or w < 2 for w in widths):
        raise ValueError(f"widths must be integers ≥ 2; got {widths!r}")
    epochs = _pos_int("epochs", epochs if epochs is not None else (300 if quick else 2000))
    if lambda_reg < 0:
        raise ValueError(f"lambda_reg must be ≥ 0; got {lambda_reg!r}")
    record_every = _pos_int("record_every", record_every or max(1, epochs // 15))
    if data is None:
        X_np, y_np = make_clusters(rng=seed)
    else:
        X_np, y_np = np.asarray(data[0], dtype=np.float32), np.asarray(data[1], dtype=np.int64)
        if X_np.ndim != 2 or y_np.shape != (X_np.shape[0],) or X_np.shape[0] == 0:
            raise ValueError(f"data must be (X (n, d), y (n,)); got shapes {X_np.shape}, {y_np.shape}")
    K = int(y_np.max()) + 1
    k = top_k if top_k is not None else K
    k = _pos_int("top_k", k)
    if k >= min(widths):
        raise ValueError(f"top_k = {k} must be smaller than every width {widths}")
    X = torch.from_numpy(X_np)
    y = torch.from_numpy(y_np)
    t0 = time.perf_counter()
    runs = [_train_one(int(N), X, y, K, k, epochs, lambda_reg, seed, lr, momentum, record_every)
            for N in widths]
    return WidthSeries(widths=tuple(int(w) for w in widths), lambda_reg=float(lambda_reg), epochs=epochs,
                       top_k=k, fitter=FITTER, runs=runs, seconds=time.perf_counter() - t0)
