"""Public hypothesis strategies for random-matrix tests (composable building blocks).

Every strategy draws its random numbers from a hypothesis-drawn seed, so failures shrink and replay.

>>> from hypothesis import given
>>> from mptheory.strategies import spiked_matrices
>>> @given(spiked_matrices(shape=(200, 100), n_super=(1, 2)))
... def test_top_singular_value_is_an_outlier(sm): ...

``spiked_matrices`` returns :class:`mptheory.spikes.SpikedMatrix` (``W = signal + noise`` and the truth:
``sigma2``, ``signal_singular_values``, ``factors`` relative to the BBP threshold, ``n_detectable``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from mptheory.spikes import SpikedMatrix, make_spiked_matrix

__all__ = ["SpikedMatrix", "shapes", "spiked_matrices", "pure_noise", "signal_factors", "seeds"]


def _as_strategy(value: Any, kind: str) -> SearchStrategy[Any]:
    """Accept a constant, an inclusive ``(lo, hi)`` range, or a strategy."""
    if isinstance(value, SearchStrategy):
        return value
    if kind == "shape":
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return st.just(value)
        raise ValueError(f"shape must be an (N, M) tuple of ints or a strategy, got {value!r}")
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = value
        if kind == "int":
            if int(lo) > int(hi) or int(lo) < 0:
                raise ValueError(f"invalid integer range {value!r}")
            return st.integers(int(lo), int(hi))
        if float(lo) > float(hi):
            raise ValueError(f"invalid range {value!r}")
        return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
    if kind == "int":
        return st.just(int(value))
    return st.just(float(value))


def seeds() -> SearchStrategy[int]:
    """Seeds for ``numpy.random.default_rng``."""
    return st.integers(0, 2**32 - 1)


@st.composite
def shapes(
    draw: st.DrawFn,
    min_side: int = 8,
    max_side: int = 64,
    min_ratio: float = 0.1,
    max_ratio: float = 1.0,
    orientation: str = "any",
) -> tuple[int, int]:
    """Matrix shapes ``(N, M)`` with ``min_side ≤ min(N, M) ≤ max(N, M) ≤ max_side``.

    ``min/max`` lies in ``[min_ratio, max_ratio]`` when possible; ``orientation`` is ``"any"``, ``"tall"``
    (N ≥ M) or ``"wide"``.
    """
    if not (2 <= min_side <= max_side):
        raise ValueError(f"need 2 <= min_side <= max_side, got {min_side}, {max_side}")
    if not (0.0 < min_ratio <= max_ratio <= 1.0):
        raise ValueError(f"need 0 < min_ratio <= max_ratio <= 1, got {min_ratio}, {max_ratio}")
    if orientation not in ("any", "tall", "wide"):
        raise ValueError(f"orientation must be 'any', 'tall' or 'wide', got {orientation!r}")
    n = draw(st.integers(min_side, max_side))
    lo = max(min_side, int(np.ceil(min_ratio * n)))
    hi = max(lo, min(n, int(np.floor(max_ratio * n))))
    p = draw(st.integers(lo, hi))
    tall = orientation == "tall" or (orientation == "any" and draw(st.booleans()))
    return (n, p) if tall else (p, n)


def signal_factors(
    n_super: int | tuple[int, int] | SearchStrategy[int] = (0, 3),
    n_sub: int | tuple[int, int] | SearchStrategy[int] = (0, 2),
    super_factor: tuple[float, float] = (1.3, 4.0),
    sub_factor: tuple[float, float] = (0.0, 0.8),
) -> SearchStrategy[np.ndarray]:
    """Signal singular values as multiples of the BBP threshold: supercritical ones in ``super_factor``
    (lower end must exceed 1) mixed with subcritical ones in ``sub_factor`` (upper end below 1)."""
    if not (1.0 < super_factor[0] <= super_factor[1]):
        raise ValueError(f"super_factor must satisfy 1 < lo <= hi, got {super_factor!r}")
    if not (0.0 <= sub_factor[0] <= sub_factor[1] < 1.0):
        raise ValueError(f"sub_factor must satisfy 0 <= lo <= hi < 1, got {sub_factor!r}")
    ks = _as_strategy(n_super, "int")
    k0 = _as_strategy(n_sub, "int")
    sup = st.floats(*super_factor, allow_nan=False, allow_infinity=False)
    sub = st.floats(*sub_factor, allow_nan=False, allow_infinity=False)

    @st.composite
    def _draw(draw: st.DrawFn) -> np.ndarray:
        a = draw(_fixed_list(sup, draw(ks)))
        b = draw(_fixed_list(sub, draw(k0)))
        return np.asarray(a + b, dtype=np.float64)

    return _draw()


def _fixed_list(elem: SearchStrategy[float], k: int) -> SearchStrategy[list[float]]:
    return st.lists(elem, min_size=k, max_size=k)


@st.composite
def spiked_matrices(
    draw: st.DrawFn,
    shape: tuple[int, int] | SearchStrategy[tuple[int, int]] | None = None,
    sigma2: float | tuple[float, float] | SearchStrategy[float] = (0.05, 20.0),
    n_super: int | tuple[int, int] | SearchStrategy[int] = (0, 3),
    n_sub: int | tuple[int, int] | SearchStrategy[int] = (0, 2),
    super_factor: tuple[float, float] = (1.3, 4.0),
    sub_factor: tuple[float, float] = (0.0, 0.8),
    noise: str = "gaussian",
) -> SpikedMatrix:
    """Signal-plus-noise matrices ``W = U diag(θ) Vᵀ + R`` with known truth.

    ``θ_i = factor_i · σ√n c^{1/4}`` (the raw BBP threshold, :func:`mptheory.spikes.bbp_singular_threshold`);
    ``R`` iid N(0, σ²) (or Rademacher·σ with ``noise="rademacher"``).  ``shape`` defaults to
    :func:`shapes` ``()``; the total rank is capped at ``min(shape)``.
    """
    shp = draw(_as_strategy(shape, "shape") if shape is not None else shapes())
    s2 = draw(_as_strategy(sigma2, "float"))
    fac = draw(signal_factors(n_super, n_sub, super_factor, sub_factor))
    fac = fac[: min(shp)]
    seed = draw(seeds())
    return make_spiked_matrix(shp, fac, sigma2=s2, rng=np.random.default_rng(seed), noise=noise)  # type: ignore[arg-type]


def pure_noise(
    shape: tuple[int, int] | SearchStrategy[tuple[int, int]] | None = None,
    sigma2: float | tuple[float, float] | SearchStrategy[float] = (0.05, 20.0),
    noise: str = "gaussian",
) -> SearchStrategy[SpikedMatrix]:
    """Pure-noise matrices (a :class:`SpikedMatrix` with zero signal, ``n_detectable == 0``)."""
    return spiked_matrices(shape=shape, sigma2=sigma2, n_super=0, n_sub=0, noise=noise)


# ============================================================================================
# Other strategies (networks, masks) live in mptheory.strategies_nets and are re-exported below.
# ============================================================================================
from mptheory.strategies_nets import (  # noqa: E402  (networks and masks; imports torch)
    adversarial_margin_cases,
    cert_cases,
    dead_column_cases,
    disjoint_triples,
    linear_tail_cases,
    masks,
    multilayer_cases,
    small_relu_nets,
    thetas,
)

__all__ += [
    "adversarial_margin_cases",
    "cert_cases",
    "dead_column_cases",
    "disjoint_triples",
    "linear_tail_cases",
    "masks",
    "multilayer_cases",
    "small_relu_nets",
    "thetas",
]
