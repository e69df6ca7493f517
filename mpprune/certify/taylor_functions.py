"""The smooth elementwise maps of the Taylor-model arithmetic (:mod:`mpprune.certify.taylor`): for each of
GELU (erf form), SiLU, sigmoid, tanh, erf, exp, reciprocal, rsqrt and sqrt, its Taylor coefficients
``f^(j)(a) / j!`` at the centres (:class:`Elementwise` ``taylor``) and a bound on ``sup |f^(n)|`` over an
interval (``bound``): global constants for the bounded maps (:data:`SUP_DERIV`), the value at the end of
the interval for exp and the powers. :data:`FUNCTIONS` is the registry :func:`~mpprune.certify.taylor.smooth`
reads; :data:`FN_ERR` the error trusted to the library functions behind them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FN_ERR", "FUNCTIONS", "SUP_DERIV", "Elementwise"]

Tensor = torch.Tensor

#: trusted error of a library elementwise function (exp, erf, tanh, pow, ...) and of the short formulas for
#: its derivatives, relative to the scale of the value: about 90 ulp, where the libraries claim 1-4 ulp and
#: the worst error measured against mpmath (50 digits) over [-40, 40], orders 0..7, is 8 ulp (SiLU's; checked
#: in the tests). It is the main rounding term on deep tails (there 1e-13 made the bound 250x the slope)
FN_ERR = 1e-14


@dataclass(frozen=True)
class Elementwise:
    """A smooth elementwise map for :func:`smooth`.

    ``taylor(a, K)``: the Taylor coefficients ``f^(j)(a) / j!``, j = 0..K; ``bound(lo, hi, n)``: a bound on
    ``sup |f^(n)|`` over ``[lo, hi]``; ``floor``: every computed coefficient is within
    ``FN_ERR (|value| + floor (1 + |a|))`` of the exact one (1 for the maps with bounded derivatives, whose
    formulas lose accuracy only relative to O(1) and to ``|a|``; 0 for the relatively accurate ones)."""

    name: str
    taylor: Callable[[Tensor, int], list[Tensor]]
    bound: Callable[[Tensor, Tensor, int], Tensor | float]
    floor: float = 1.0


def _poly_eval(coeffs: Sequence[float], s: Tensor) -> Tensor:
    """``sum_i coeffs[i] s^i`` (Horner)."""
    out = torch.full_like(s, float(coeffs[-1]))
    for c in reversed(coeffs[:-1]):
        out = out * s + float(c)
    return out


def _chain_polys(n: int, base: Sequence[float], growth: Sequence[float]) -> list[list[float]]:
    """Polynomials ``P_0 = base``, ``P_{m+1} = P_m' * growth`` (numpy coefficient lists, low order first):
    the m-th derivative of a function ``g`` with ``g' = growth(g)`` is ``P_m(g)`` when ``P_0 = s``."""
    out = [list(base)]
    gp = np.polynomial.Polynomial(growth)
    for _ in range(n):
        p = np.polynomial.Polynomial(out[-1])
        out.append(list((p.deriv() * gp).coef))
    return out


_SIGMOID_POLYS = _chain_polys(8, [0.0, 1.0], [0.0, 1.0, -1.0])  # s' = s - s^2
_TANH_POLYS = _chain_polys(8, [0.0, 1.0], [1.0, 0.0, -1.0])  # T' = 1 - T^2


def _derivs_to_taylor(ds: list[Tensor]) -> list[Tensor]:
    return [dj / math.factorial(j) for j, dj in enumerate(ds)]


def _sigmoid_derivs(a: Tensor, n: int) -> list[Tensor]:
    s = torch.sigmoid(a)
    return [_poly_eval(_SIGMOID_POLYS[m], s) for m in range(n + 1)]


def _tanh_taylor(a: Tensor, K: int) -> list[Tensor]:
    T = torch.tanh(a)
    return _derivs_to_taylor([_poly_eval(_TANH_POLYS[m], T) for m in range(K + 1)])


def _sigmoid_taylor(a: Tensor, K: int) -> list[Tensor]:
    return _derivs_to_taylor(_sigmoid_derivs(a, K))


def _silu_taylor(a: Tensor, K: int) -> list[Tensor]:
    s = _sigmoid_derivs(a, K)  # (x s)^(n) = x s^(n) + n s^(n-1)
    return _derivs_to_taylor([F.silu(a)] + [a * s[n] + n * s[n - 1] for n in range(1, K + 1)])


def _hermite_prob(x: Tensor, n: int) -> list[Tensor]:
    """Probabilists' Hermite polynomials He_0..He_n at x (phi^(m) = (-1)^m He_m phi)."""
    out = [torch.ones_like(x), x]
    for m in range(1, n):
        out.append(x * out[m] - m * out[m - 1])
    return out[: n + 1]


def _gelu_taylor(a: Tensor, K: int) -> list[Tensor]:
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    he = _hermite_prob(a, max(K, 1))
    # Phi^(n) = phi^(n-1) = (-1)^(n-1) He_{n-1} phi;  (x Phi)^(n) = x Phi^(n) + n Phi^(n-1)
    Phi = [cdf] + [(-1) ** (n - 1) * he[n - 1] * pdf for n in range(1, K + 1)]
    return _derivs_to_taylor([F.gelu(a)] + [a * Phi[n] + n * Phi[n - 1] for n in range(1, K + 1)])


def _erf_taylor(a: Tensor, K: int) -> list[Tensor]:
    g = torch.exp(-a * a) * (2.0 / math.sqrt(math.pi))
    H = [torch.ones_like(a), 2 * a]  # physicists' Hermite: (e^{-x^2})^(m) = (-1)^m H_m e^{-x^2}
    for m in range(1, K):
        H.append(2 * a * H[m] - 2 * m * H[m - 1])
    return _derivs_to_taylor([torch.erf(a)] + [(-1) ** (n - 1) * H[n - 1] * g for n in range(1, K + 1)])


def _exp_taylor(a: Tensor, K: int) -> list[Tensor]:
    e = torch.exp(a)
    return [e / math.factorial(j) for j in range(K + 1)]


def _exp_bound(lo: Tensor, hi: Tensor, n: int) -> Tensor:
    return torch.exp(hi) * (1.0 + FN_ERR)


def _binom(p: float, j: int) -> float:
    out = 1.0
    for i in range(j):
        out *= (p - i) / (i + 1)
    return out


def _power(p: float) -> Elementwise:
    """``x^p`` (p = -1: both signs; otherwise x > 0). Taylor coefficients ``binom(p, j) a^(p-j)``; the
    bound on ``|f^(n)| = |p (p-1) ... (p-n+1)| |x|^(p-n)`` is taken at the end of the hull nearer 0 (the
    exponent is negative for every order used), +inf when the hull reaches 0."""

    def taylor(a: Tensor, K: int) -> list[Tensor]:
        return [_binom(p, j) * a ** (p - j) for j in range(K + 1)]

    def bound(lo: Tensor, hi: Tensor, n: int) -> Tensor:
        if p == -1.0:
            m = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
        else:
            m = torch.where(lo > 0, lo, torch.zeros_like(lo))
        ff = abs(_binom(p, n)) * math.factorial(n)
        q = p - n
        top = (
            torch.where(m > 0, m**q * ff, torch.full_like(m, math.inf))
            if q < 0
            else ff * torch.maximum(m.abs(), hi.abs()) ** q
        )
        return top * (1.0 + FN_ERR)

    return Elementwise(f"pow({p:g})", taylor, bound, floor=0.0)


#: ``SUP_DERIV[name][n]`` >= sup over the real line of ``|f^(n)|`` (n = 2..7), rounded up from a 10^-5 grid on
#: [-30, 30] (the derivatives decay outside); tests/test_smooth_bound.py checks them independently.
SUP_DERIV: dict[str, dict[int, float]] = {
    "gelu": {2: 0.7980, 3: 0.7790, 4: 1.5961, 5: 2.8431, 6: 7.1822, 7: 16.451},
    "silu": {2: 0.5001, 3: 0.3083, 4: 0.5001, 5: 0.6582, 6: 1.5002, 7: 2.9090},
    "sigmoid": {2: 0.09623, 3: 0.12501, 4: 0.12770, 5: 0.25002, 6: 0.40837, 7: 1.0627},
    "tanh": {2: 0.7699, 3: 2.0001, 4: 4.0863, 5: 16.001, 6: 52.271, 7: 272.03},
    "erf": {2: 0.9679, 3: 2.2568, 4: 4.4051, 5: 13.542, 6: 36.918, 7: 135.42},
}


def _sup_bound(name: str) -> Callable[[Tensor, Tensor, int], float]:
    def bound(lo: Tensor, hi: Tensor, n: int) -> float:
        table = SUP_DERIV[name]
        if n not in table:
            raise ValueError(f"{name}: no bound on the derivative of order {n} (orders 2..7)")
        return table[n]

    return bound


#: The smooth elementwise maps, by name (the tanh form of GELU is composed: :func:`gelu_tanh`).
FUNCTIONS: dict[str, Elementwise] = {
    f.name: f
    for f in (
        Elementwise("gelu", _gelu_taylor, _sup_bound("gelu")),
        Elementwise("silu", _silu_taylor, _sup_bound("silu")),
        Elementwise("sigmoid", _sigmoid_taylor, _sup_bound("sigmoid")),
        Elementwise("tanh", _tanh_taylor, _sup_bound("tanh")),
        Elementwise("erf", _erf_taylor, _sup_bound("erf")),
        Elementwise("exp", _exp_taylor, _exp_bound, floor=0.0),
        Elementwise("reciprocal", _power(-1.0).taylor, _power(-1.0).bound, floor=0.0),
        Elementwise("rsqrt", _power(-0.5).taylor, _power(-0.5).bound, floor=0.0),
        Elementwise("sqrt", _power(0.5).taylor, _power(0.5).bound, floor=0.0),
    )
}
