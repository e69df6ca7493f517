"""G1/G2/G4 by simulation on the three-layer model: per-sample and simultaneous logit thresholds, the
cross-entropy bound and the accuracy bound (digest §2.4), with R₂ redrawn in every draw.

Margins and cross-entropy are those of :mod:`mptheory.certificates` (one definition), imported when a
simulation runs so that ``import mptheory.dynamics`` does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mptheory.dynamics._common import Array, _pos_int, _prob, _rng
from mptheory.dynamics.three_layer import make_three_layer

__all__ = ["LogitBoundSim", "simulate_logit_bounds"]


@dataclass
class LogitBoundSim:
    """Frequencies from :func:`simulate_logit_bounds` (R₂ redrawn in every draw).

    ``dX`` (draws, T): ‖X(s, S₂) − X(s, W₂)‖∞; ``tau``/``tau_delta`` (T,): the G1/G4 thresholds.
    ``g1_rate``: fraction of (draw, sample) pairs with dX > τ_N (theory ≤ 1/N, in fact ≤ 1/(8N³)).
    ``g4_rate``: fraction of draws where some sample has dX > τ_{N,δ} (theory ≤ δ).
    ``g4_loss_rate``: fraction of draws with |ΔL_CE| > (2/|T|) Σ τ_{N,δ} (theory ≤ δ).
    ``g2_rate``: fraction of draws where |acc_W − acc_S| > (1/|T|)#{|δX_W| ≤ 2τ_N} (theory ≤ |T|/N).
    """

    N: int
    T: int
    draws: int
    sigma2: float
    delta: float
    tau_scale: float
    dX: Array
    tau: Array
    tau_delta: Array
    g1_rate: float
    g4_rate: float
    g4_loss_rate: float
    g2_rate: float
    acc_dense: Array
    acc_pruned: Array


def simulate_logit_bounds(N: int = 200, T: int = 20, draws: int = 100, sigma2: float = 1.0,
                          delta: float = 0.05,
                          activation: str = "abs", d: int = 10, K: int = 5, tau_scale: float = 1.0,
                          rng: np.random.Generator | int | None = None) -> LogitBoundSim:
    """G1/G2/G4 by simulation: fixed W₁, S₂, W₃, inputs and labels; R₂ iid N(0, σ²/N) redrawn.

    ``tau_scale`` multiplies τ_N and τ_{N,δ} (use < 1 for negative controls only).  Requires
    0 < σ² ≤ 1 (the G1 constant assumes σ² ≤ 1).
    """
    from mptheory.certificates import cross_entropy, true_margin

    N, T, draws = _pos_int("N", N), _pos_int("T", T), _pos_int("draws", draws)
    if not (0.0 < sigma2 <= 1.0):
        raise ValueError(f"G1 assumes 0 < sigma2 ≤ 1; got sigma2 = {sigma2!r}")
    delta = _prob("delta", delta)
    gen = _rng(rng)
    net = make_three_layer(N, d=d, K=K, sigma2=sigma2, activation=activation, rng=gen)
    X = gen.standard_normal((T, d))
    y = gen.integers(0, K, size=T)
    tau = tau_scale * net.tau(X)
    tau_d = tau_scale * net.tau_delta(X, delta)
    ZS = net.logits(X, net.S2)
    ce_S = cross_entropy(ZS, y)
    acc_S = np.empty(draws)
    acc_W = np.empty(draws)
    dX = np.empty((draws, T))
    loss_fail = np.zeros(draws, dtype=bool)
    g2_fail = np.zeros(draws, dtype=bool)
    for k in range(draws):
        R2 = gen.standard_normal((N, N)) * math.sqrt(sigma2 / N)
        ZW = net.logits(X, net.S2 + R2)
        dX[k] = np.abs(ZW - ZS).max(axis=1)
        loss_fail[k] = abs(cross_entropy(ZW, y) - ce_S) > 2.0 * tau_d.mean()
        mW = true_margin(ZW, y)
        acc_W[k] = np.mean(mW > 0)
        acc_S[k] = np.mean(true_margin(ZS, y) > 0)
        g2_fail[k] = abs(acc_W[k] - acc_S[k]) > np.mean(np.abs(mW) <= 2.0 * tau)
    return LogitBoundSim(N=N, T=T, draws=draws, sigma2=float(sigma2), delta=delta, tau_scale=float(tau_scale),
                         dX=dX,
                         tau=tau, tau_delta=tau_d, g1_rate=float(np.mean(dX > tau[None, :])),
                         g4_rate=float(np.mean(np.any(dX > tau_d[None, :], axis=1))),
                         g4_loss_rate=float(loss_fail.mean()), g2_rate=float(g2_fail.mean()),
                         acc_dense=acc_W, acc_pruned=acc_S)
