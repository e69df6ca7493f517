"""Simulations of the additive signal-plus-noise model (digest §1.5–1.6, §2.3–2.4: A1–A8, G1–G15).

Every function returns data (numpy arrays in small dataclasses); the claims registry and the figures
decide what to assert or plot. Nothing here imports timm, and ``import mptheory.dynamics`` does not import
torch (training and the certificate's cross-entropy import it when they run). One file per simulation:

* :mod:`~mptheory.dynamics.three_layer` — :class:`ThreeLayerNet`, :func:`make_three_layer`:
  X = λ∘W₃∘λ∘W₂∘λ∘W₁ s with W₂ = S₂ + R₂, R₂ iid N(0, σ²/N), S₂ low rank (ESM 1 §3); :func:`outer_scale`
  a(N, s) of the G1 threshold;
* :mod:`~mptheory.dynamics.logit_bounds` — :func:`simulate_logit_bounds`: G1 (τ_N, per-sample failure
  ≤ 1/N), G4 (τ_{N,δ}, simultaneous failure ≤ δ, and the CE bound), G2 (accuracy bound);
* :mod:`~mptheory.dynamics.thresholding` — :func:`simulate_thresholding`: G8 support sandwich
  {|S| > 2t} ⊆ supp 𝓗_t(W) ⊆ supp S;
* :mod:`~mptheory.dynamics.bbp` — :func:`bbp_experiment`: G13/G14 square BBP map (the maps themselves
  are :func:`mptheory.spikes.outlier_location_square` and :func:`mptheory.spikes.inverse_bbp_square`);
* :mod:`~mptheory.dynamics.t13` — :func:`weyl_gap`, :func:`rank_esd_gap`, :func:`eckart_young_gap`,
  :func:`markov_tail_gap`, :func:`check_t13`: the deterministic facts behind G11/G15 (test matrix T13), on
  matrices from :func:`random_perturbation`, aggregated by :func:`perturbation_result`;
* :mod:`~mptheory.dynamics.g7_band` — :func:`g7_band`: L(S+ϑR) − L(W) against −λ_reg(1−ϑ²)‖R‖²_F
  within the finite-N band;
* :mod:`~mptheory.dynamics.width` — :func:`train_width_series`: A7/G9–G12 experiment (L₂-regularised MLPs
  at growing width; fitted MP σ², σ²·N, top singular values and top-k subspace overlap over training), with
  the MLP (:func:`make_mlp`) and objective (:func:`regularised_loss`) the theory figures train too.

``sigma2`` is the noise variance of the normalised model (noise entries N(0, σ²/N): the digest's g), except
for the fitted raw-scale σ² of :class:`WidthRun` (``sigma2_N`` = σ²·N is the normalised one).
"""

from mptheory.dynamics.bbp import BBPResult, bbp_experiment
from mptheory.dynamics.g7_band import G7Band, g7_band
from mptheory.dynamics.logit_bounds import LogitBoundSim, simulate_logit_bounds
from mptheory.dynamics.t13 import (
    check_t13,
    eckart_young_gap,
    markov_tail_gap,
    perturbation_result,
    random_perturbation,
    rank_esd_gap,
    relative_slack,
    weyl_gap,
)
from mptheory.dynamics.three_layer import ThreeLayerNet, make_three_layer, outer_scale
from mptheory.dynamics.thresholding import ThresholdSim, simulate_thresholding
from mptheory.dynamics.width import (
    WidthRun,
    WidthSeries,
    make_clusters,
    make_mlp,
    regularised_loss,
    train_width_series,
)

__all__ = [
    "BBPResult",
    "G7Band",
    "LogitBoundSim",
    "ThreeLayerNet",
    "ThresholdSim",
    "WidthRun",
    "WidthSeries",
    "bbp_experiment",
    "check_t13",
    "eckart_young_gap",
    "g7_band",
    "make_clusters",
    "make_mlp",
    "make_three_layer",
    "markov_tail_gap",
    "outer_scale",
    "perturbation_result",
    "random_perturbation",
    "rank_esd_gap",
    "regularised_loss",
    "relative_slack",
    "simulate_logit_bounds",
    "simulate_thresholding",
    "train_width_series",
    "weyl_gap",
]
