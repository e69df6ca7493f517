"""Taylor models in one variable: sound enclosures of a tail and of its slope along a segment.

A :class:`Taylor` of order ``K`` encloses, elementwise, a tensor-valued function ``x(t)`` of one variable
``t in [-1, 1]`` as a polynomial plus a remainder function whose size and slope are bounded::

    x(t) = p_0 + p_1 t + ... + p_K t^K + e(t),        |e(t)| <= rv,   |e'(t)| <= rd    for every t in [-1, 1].

The certificate engine maps the theta-interval ``[m - delta, m + delta]`` of one sample to ``t``; the pruned
layer's output ``u(theta) = u_0 + theta R psi_1`` is then the exact model ``p_0 = u_0 + m R psi_1``,
``p_1 = delta R psi_1`` (plus its rounding error in ``rv``, ``rd``), and the rules here carry it through the
tail op by op. At the logits ``sup_t |z'(t)| <= sum_j j |p_j| + rd`` (:meth:`Taylor.slope_sup`), and
``sup_theta ||dz/dtheta||_inf <= max_k (sum_j j |p_jk| + rd_k) / delta``. The polynomial part is propagated
exactly (signed, so the cancellations of a linear map are kept); only the remainder, of order
``delta^(K+1)``, is propagated by absolute values, which is what makes high orders pay off on deep tails.

The rules, each a theorem about such enclosures (``||P|| = sum_j |p_j|`` bounds ``|P(t)|`` and
``||P'|| = sum_j j |p_j|`` bounds ``|P'(t)|`` on [-1, 1]; products and ``|.|`` entrywise or matrix-wise):

* **affine maps** ``y = L x + beta`` (Linear, Conv, BatchNorm in eval, sums, means, average pooling,
  scalings, products with a fixed matrix): coefficients mapped by ``L``, the remainder bounds by ``|L|``.
* **products** (attention scores ``q k^T``, ``attn @ v``, gates, LayerNorm's ``x_c / sigma``):
  ``(P + e)(Q + f) = [PQ]_{<=K} + [PQ]_{>K} + P f + e Q + e f``; the truncated terms and the remainder
  products are bounded by ``sum_{j>K} |c_j|``, ``||P|| rv_y``, ... and their slopes by the product rule.
* **smooth elementwise maps** ``f`` (GELU in erf and tanh form, SiLU, sigmoid, tanh, erf, exp, powers
  ``x^p`` -- 1/x, 1/sqrt(x), sqrt(x)): with ``x = p_0 + P~(t) + e(t)``, the power series
  ``sum_{j<=K} f^(j)(p_0)/j! P~^j`` truncated at degree K, plus bounds on what it leaves out (see
  :func:`smooth`): the input remainder through ``sup |f'|`` over the hull (mean value theorem), Lagrange's
  remainder through ``M >= sup |f^(K+1)|`` over the hull, and the terms of degree > K. The derivative bounds
  are a global constant for the bounded maps (:data:`SUP_DERIV`, checked in the tests) and the value at the
  worse end of the hull for exp and the powers.
* **softmax, LayerNorm, RMSNorm, attention** are composed from those rules (``exp(x - max) / sum``,
  ``(x - mu) (var + eps)^(-1/2)``, ``softmax(q k^T s + mask) v``).
* **piecewise-linear maps** (ReLU, LeakyReLU with a slope in [0, 1], Hardtanh/ReLU6/clamp, MaxPool2d):
  exact where the hull of the input lies in one linear piece (one argmax), else the interval hull of the
  value and of the slope.

**Rounding.** All tensors are float64. Every rule adds the rounding error of what it computes to the
remainder bounds (a sum of ``k`` products is off by at most ``gamma_k = k u / (1 - k u)`` times the sum of
their absolute values, ``u = 2^-53``; library ``exp``/``erf``/``tanh``/``pow`` and the short formulas for
derivatives are trusted to :data:`FN_ERR` relative to the scale of the value) and rounds every bound up by a
further ``gamma``, so an enclosure computed in floating point holds for the exact real-number map. A NaN
bound becomes ``+inf``.

This module depends on torch and numpy only (no mpprune import).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpprune.certify.taylor_functions import FN_ERR, FUNCTIONS, SUP_DERIV, Elementwise

__all__ = [
    "FN_ERR",
    "FUNCTIONS",
    "SUP_DERIV",
    "U",
    "Elementwise",
    "Taylor",
    "add",
    "add_const",
    "affine",
    "clamp_like",
    "gamma",
    "gelu_tanh",
    "layer_norm",
    "masked_fill",
    "matmul",
    "matmul_const",
    "max_pool2d",
    "mul",
    "rms_norm",
    "scale",
    "sdpa",
    "smooth",
    "softmax",
    "where",
]

Tensor = torch.Tensor

#: the unit roundoff of float64
U = 2.0**-53
#: absorbs underflow in every bound
TINY = 1e-300


def gamma(k: int) -> float:
    """``gamma_k = k u / (1 - k u)``: the relative error bound of a floating-point sum of k products."""
    return k * U / (1.0 - k * U)


def _up(r: Tensor, k: int = 4) -> Tensor:
    """A bound rounded up: ``r (1 + gamma_{k+2}) + TINY``; NaN (``0 * inf``) becomes +inf."""
    return torch.nan_to_num(r * (1.0 + gamma(k + 2)) + TINY, nan=math.inf, posinf=math.inf)


def _fabs(x: Tensor) -> Tensor:
    """``|x|`` with infinite entries read as 0: the rounding scale of a centre (an entry that is exactly
    +-inf, a masked attention score, is a constant and is not rounded)."""
    return torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x))


def _widen(x: Tensor, sign: float) -> Tensor:
    """``x`` moved outward (sign -1: down, +1: up) by its rounding error; infinite entries stay."""
    return x + sign * torch.where(torch.isfinite(x), 2 * U * x.abs() + TINY, torch.zeros_like(x))


@dataclass
class Taylor:
    """``x(t) = sum_j coef[j] t^j + e(t)`` with ``|e| <= rv`` and ``|e'| <= rd`` for every ``t in [-1, 1]``.

    ``coef[0]`` is the centre (the value at t = 0 for the models the rules build from a seed, up to rounding
    and to the piecewise-linear hulls); ``coef[1]`` is then the slope at t = 0."""

    coef: list[Tensor]
    rv: Tensor
    rd: Tensor

    @classmethod
    def constant(cls, a: Tensor, order: int) -> Taylor:
        z = torch.zeros_like(a)
        return cls([a] + [z] * order, z, z)

    @property
    def order(self) -> int:
        return len(self.coef) - 1

    @property
    def a(self) -> Tensor:
        return self.coef[0]

    @property
    def shape(self) -> torch.Size:
        return self.coef[0].shape

    def map(self, fn: Callable[[Tensor], Tensor]) -> Taylor:
        """A structural op (reshape, index, permute, ...) applied to every part."""
        return Taylor([fn(p) for p in self.coef], fn(self.rv), fn(self.rd))

    def norm(self, start: int = 0) -> Tensor:
        """``sum_{j>=start} |coef[j]|``: bounds ``|P(t) - P_{<start}(t)|`` on [-1, 1]."""
        out = torch.zeros_like(self.coef[0])
        for p in self.coef[start:]:
            out = out + p.abs()
        return out

    def dnorm(self) -> Tensor:
        """``sum_j j |coef[j]|``: bounds ``|P'(t)|`` on [-1, 1]."""
        out = torch.zeros_like(self.coef[0])
        for j, p in enumerate(self.coef[1:], 1):
            out = out + j * p.abs()
        return out

    def spread(self) -> Tensor:
        """``h >= |x(t) - coef[0]|`` for every t (rounded up)."""
        return _up(self.norm(1) + self.rv, self.order + 1)

    def hull(self) -> tuple[Tensor, Tensor]:
        """``lo <= x(t) <= hi`` for every t (rounded outward)."""
        h = self.spread()
        return _widen(self.a - h, -1.0), _widen(self.a + h, 1.0)

    def slope_sup(self) -> Tensor:
        """``sup_t |x'(t)| <= sum_j j |coef[j]| + rd`` (rounded up)."""
        return _up(self.dnorm() + self.rd, self.order + 1)

    def slope_hull(self) -> tuple[Tensor, Tensor]:
        """``lo <= x'(t) <= hi`` for every t (rounded outward)."""
        if self.order == 0:
            h = self.rd
            c = torch.zeros_like(self.a)
        else:
            c = self.coef[1]
            rest = torch.zeros_like(c)
            for j, p in enumerate(self.coef[2:], 2):
                rest = rest + j * p.abs()
            h = _up(rest + self.rd, self.order + 1)
        return _widen(c - h, -1.0), _widen(c + h, 1.0)


def _expand(x: Taylor, shape: torch.Size) -> Taylor:
    return x if x.shape == shape else x.map(lambda t: t.expand(shape))


def _stack(ts: Sequence[Tensor]) -> Tensor:
    shape = torch.broadcast_shapes(*(t.shape for t in ts))
    return torch.stack([t.expand(shape) for t in ts])


# -- affine maps ------------------------------------------------------------------------------------


def affine(
    x: Taylor,
    lin: Callable[[Tensor], Tensor],
    abs_lin: Callable[[Tensor], Tensor],
    k: int,
    bias: Tensor | None = None,
    coef_err: float = 0.0,
    bias_err: Tensor | None = None,
) -> Taylor:
    """``y = L x + bias`` for a fixed linear map ``L`` given as ``lin`` (signed) and ``abs_lin`` (``|L|``).

    ``lin`` and ``abs_lin`` take a stack of inputs (one extra leading dimension) and map each; every output
    entry is a sum of at most ``k`` products. ``bias`` broadcasts against one output. ``coef_err``: the
    coefficients of ``lin`` are within ``coef_err |L|`` of the exact map's (computed scales); ``bias_err``:
    a bound on the error of a computed ``bias``."""
    g = gamma(k + 1) + coef_err
    ys = lin(torch.stack(x.coef))
    coef = list(ys.unbind(0))
    if bias is not None:
        coef[0] = coef[0] + bias
    err_v = x.rv + g * x.norm()
    err_d = x.rd + g * x.dnorm()
    rv, rd = abs_lin(torch.stack([err_v, err_d])).unbind(0)
    if bias is not None:
        rv = rv + g * bias.abs()
    if bias_err is not None:
        rv = rv + bias_err
    return Taylor(coef, _up(rv, k), _up(rd, k))


def scale(x: Taylor, k: Tensor | float, divide: bool = False) -> Taylor:
    """``x * k`` (or ``x / k``) for a constant ``k`` (tensor or number, broadcasting)."""
    coef = [p / k for p in x.coef] if divide else [p * k for p in x.coef]
    ka = k.abs() if isinstance(k, Tensor) else abs(k)
    if divide:
        ka = 1.0 / ka
    y = Taylor(coef, x.rv * ka, x.rd * ka)
    rv = y.rv + U * (_fabs(coef[0]) + y.norm(1))
    rd = y.rd + U * y.dnorm()
    shape = coef[0].shape
    return Taylor(coef, _up(rv.expand(shape), 2), _up(rd.expand(shape), 2))


def add(x: Taylor, y: Taylor) -> Taylor:
    """``x + y`` (broadcasting; orders may differ)."""
    K = max(x.order, y.order)
    z = torch.zeros((), dtype=x.a.dtype, device=x.a.device)
    coef = [(x.coef[j] if j <= x.order else z) + (y.coef[j] if j <= y.order else z) for j in range(K + 1)]
    s = Taylor(coef, x.rv + y.rv, x.rd + y.rd)
    return Taylor(coef, _up(s.rv + U * s.norm(), 2), _up(s.rd + U * s.dnorm(), 2))


def add_const(x: Taylor, k: Tensor | float) -> Taylor:
    """``x + k`` for a constant ``k`` (broadcasting)."""
    a = x.a + k
    x = _expand(x, a.shape)
    return Taylor([a, *x.coef[1:]], _up(x.rv + U * _fabs(a), 1), x.rd)


# -- products ---------------------------------------------------------------------------------------


def _bilinear(x: Taylor, y: Taylor, op: Callable[[Tensor, Tensor], Tensor], k: int) -> Taylor:
    K = max(x.order, y.order)
    r = max(x.a.dim(), y.a.dim())  # equal ranks, so that the two coefficient dims line up
    P = _stack(x.coef + [torch.zeros_like(x.a)] * (K - x.order))
    Q = _stack(y.coef + [torch.zeros_like(y.a)] * (K - y.order))
    P = P.reshape((K + 1, 1) + (1,) * (r - x.a.dim()) + tuple(x.shape))
    Q = Q.reshape((1, K + 1) + (1,) * (r - y.a.dim()) + tuple(y.shape))
    pairs = op(P, Q)  # (K+1, K+1, ...): op(p_i, q_l)
    coef, high, dhigh = [], None, None
    for j in range(2 * K + 1):
        cj = sum(pairs[i, j - i] for i in range(max(0, j - K), min(j, K) + 1))
        assert isinstance(cj, Tensor)
        if j <= K:
            coef.append(cj)
        else:
            high = cj.abs() if high is None else high + cj.abs()
            dhigh = j * cj.abs() if dhigh is None else dhigh + j * cj.abs()
    nP, nQ, dP, dQ = x.norm(), y.norm(), x.dnorm(), y.dnorm()
    rv = op(nP, y.rv) + op(x.rv, nQ + y.rv)
    rd = op(dP, y.rv) + op(nP, y.rd) + op(x.rd, nQ + y.rv) + op(x.rv, dQ + y.rd)
    if high is not None:
        assert dhigh is not None
        rv, rd = rv + high, rd + dhigh
    # rounding of every coefficient c_j (the truncated ones included): err_j <= g sum_{i+l=j} |p_i||q_l|,
    # so sum_j err_j <= g op(||P||, ||Q||) and sum_j j err_j <= g (op(||P'||, ||Q||) + op(||P||, ||Q'||));
    # each is counted twice (the computed c_j of the truncated terms are bounds only up to their own error)
    g = gamma((K + 1) * (k + 2))
    E = g * op(nP, nQ)
    Ed = g * (op(dP, nQ) + op(nP, dQ))
    return Taylor(coef, _up(rv + 2 * E, k + 2 * K + 4), _up(rd + 2 * Ed, k + 2 * K + 4))


def mul(x: Taylor, y: Taylor) -> Taylor:
    """Elementwise ``x * y`` of two models (broadcasting)."""
    return _bilinear(x, y, torch.mul, 1)


def matmul(x: Taylor, y: Taylor) -> Taylor:
    """``x @ y`` of two models (batched matrix product)."""
    return _bilinear(x, y, torch.matmul, int(x.shape[-1]))


def matmul_const(x: Taylor | Tensor, y: Taylor | Tensor) -> Taylor:
    """``x @ y`` where at least one side is a model and the other may be a constant tensor."""
    if isinstance(x, Taylor) and isinstance(y, Taylor):
        return matmul(x, y)
    if isinstance(x, Taylor):
        assert isinstance(y, Tensor)
        K, Ka = y, y.abs()
        return affine(x, lambda t: t @ K, lambda t: t @ Ka, int(x.shape[-1]))
    assert isinstance(y, Taylor) and isinstance(x, Tensor)
    K2, K2a = x, x.abs()
    return affine(y, lambda t: K2 @ t, lambda t: K2a @ t, int(K2.shape[-1]))


# -- smooth elementwise maps ------------------------------------------------------------------------


#: the degrees above K whose coefficients the smooth rule computes (rather than bounds) before truncating
_EXTRA_DEGREES = 2


def _trunc_mul(P: list[Tensor | None], Q: list[Tensor | None], L: int) -> list[Tensor | None]:
    """The coefficients of degree <= L of the product of two polynomials (elementwise; None = 0)."""
    out: list[Tensor | None] = []
    for m in range(L + 1):
        c = None
        for i in range(max(0, m - len(Q) + 1), min(m, len(P) - 1) + 1):
            p, q = P[i], Q[m - i]
            if p is not None and q is not None:
                c = p * q if c is None else c + p * q
        out.append(c)
    return out


def smooth(x: Taylor, f: Elementwise) -> Taylor:
    """``f(x)`` elementwise, for ``x = a + P~(t) + e(t)`` (``P~`` the polynomial part without its constant,
    ``|P~| <= n``, ``|P~'| <= n_1``; ``e`` the remainder, ``|e| <= rv``, ``|e'| <= rd``).

    The result is the power series ``sum_{j<=K} d_j [P~^j]_{<=K}`` (``d_j = f^(j)(a)/j!``, truncated at
    degree K) and a remainder made of three parts, each bounded with its slope:

    * the input remainder: ``|f(a + P~ + e) - f(a + P~)| <= (|f'(a)| + M_2 h) rv`` (mean value theorem;
      ``h = n + rv`` is the hull's radius, ``M_2 >= sup |f''|`` over the hull), slope
      ``<= M_2 rv n_1 + (|f'(a)| + M_2 h) rd``;
    * Lagrange's remainder at ``a + P~``: ``<= M n^(K+1)/(K+1)!``, slope ``<= M n^K n_1/K!``
      (``M >= sup |f^(K+1)|`` over the hull);
    * the degree > K part of each ``P~^j``: at most that of ``|P~|^j`` (the polynomial of absolute values),
      ``n^j - sum_{m<=K} [|P~|^j]_m``, slope ``j n^(j-1) n_1 - sum_m m [|P~|^j]_m``;

    plus the errors of the computed ``d_j`` and the rounding of the power series."""
    K = x.order
    d = f.taylor(x.a, K)
    lo, hi = x.hull()
    M = f.bound(lo, hi, K + 1)
    M2 = f.bound(lo, hi, 2) if K > 1 else M
    zero = torch.zeros_like(x.a)
    n, n1, h = x.norm(1), x.dnorm(), x.spread()
    g = gamma((K + 1) ** 2 + 2)
    scale_a = f.floor * (1.0 + _fabs(x.a)) if f.floor else zero
    err = [FN_ERR * (dj.abs() + scale_a) for dj in d]  # the errors of the computed d_j
    slope = d[1].abs() + err[1] + M2 * h  # >= sup |f'| over the hull
    rv = slope * x.rv + M * n ** (K + 1) / math.factorial(K + 1) + err[0]
    rd = M2 * x.rv * n1 + slope * x.rd + M * n**K * n1 / math.factorial(K)
    # the power series to degree L = K + EXTRA: the coefficients of degree K+1..L of sum_j d_j P~^j are
    # computed (so that their cancellations across j count), the rest is bounded by the powers of |P~|
    L = K + _EXTRA_DEGREES
    Pt2: list[Tensor | None] = [None, *x.coef[1:]] + [None] * (L - K)
    Pa2: list[Tensor | None] = [None, *(p.abs() for p in x.coef[1:])] + [None] * (L - K)
    c: list[Tensor] = [d[0]] + [zero] * L
    Q, A = Pt2, Pa2  # [P~^j]_{<=L} and [|P~|^j]_{<=L}
    for j in range(1, K + 1):
        if j > 1:
            Q, A = _trunc_mul(Q, Pt2, L), _trunc_mul(A, Pa2, L)
        S, S1 = zero, zero
        for m in range(j, L + 1):
            qm, am = Q[m], A[m]
            if qm is not None and am is not None:
                c[m] = c[m] + d[j] * qm
                S, S1 = S + am, S1 + m * am
        nj, nj1 = n**j, n ** (j - 1)
        # the degree > L part of P~^j is at most that of |P~|^j, whose coefficients sum to n^j exactly
        high = torch.clamp(nj * (1 + 2 * g) - S * (1 - g), min=0.0)
        dhigh = torch.clamp(j * nj1 * n1 * (1 + 2 * g) - S1 * (1 - g), min=0.0)
        dj = d[j].abs() + err[j]
        rv = rv + dj * high + (g * d[j].abs() + err[j]) * nj
        rd = rd + dj * dhigh + (g * d[j].abs() + err[j]) * j * nj1 * n1
    for m in range(K + 1, L + 1):  # the computed terms of degree K+1..L, moved into the remainder
        rv = rv + c[m].abs()
        rd = rd + m * c[m].abs()
    coef = c[: K + 1]
    # the sums above are of nonnegative terms: rounded up below with a margin for their length
    return Taylor(coef, _up(rv, 3 * K + 8), _up(rd, 3 * K + 8))


def gelu_tanh(x: Taylor) -> Taylor:
    """``F.gelu(x, approximate="tanh") = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, composed."""
    x3 = mul(mul(x, x), x)
    u = scale(add(x, scale(x3, 0.044715)), math.sqrt(2.0 / math.pi))
    return scale(mul(x, add_const(smooth(u, FUNCTIONS["tanh"]), 1.0)), 0.5)


# -- composites: softmax, LayerNorm, attention ------------------------------------------------------


def _reduce(x: Taylor, dims: tuple[int, ...], mean: bool) -> Taylor:
    """Sum or mean over ``dims`` (negative, keepdim)."""
    n = 1
    for d in dims:
        n *= int(x.shape[d])

    def op(t: Tensor) -> Tensor:
        return t.mean(dim=dims, keepdim=True) if mean else t.sum(dim=dims, keepdim=True)

    return affine(x, op, op, max(n, 1))


def softmax(x: Taylor, dim: int) -> Taylor:
    """``softmax(x, dim)`` as ``e / sum(e)``, ``e = exp(x - s)`` with ``s`` the max of the centres (a
    constant shift, so the rule is exact in exact arithmetic)."""
    dim = dim if dim < 0 else dim - x.a.dim()
    s = x.a.amax(dim=dim, keepdim=True)
    s = torch.where(torch.isfinite(s), s, torch.zeros_like(s))
    e = smooth(add_const(x, -s), FUNCTIONS["exp"])
    return mul(e, smooth(_reduce(e, (dim,), mean=False), FUNCTIONS["reciprocal"]))


def layer_norm(
    x: Taylor, normalized_shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Taylor:
    """``F.layer_norm``: ``(x - mean) (var + eps)^(-1/2) * weight + bias`` over the last dims."""
    dims = tuple(range(-len(normalized_shape), 0))
    mu = _reduce(x, dims, mean=True)
    xc = add(x, scale(mu, -1.0))
    var = _reduce(mul(xc, xc), dims, mean=True)
    y = mul(xc, smooth(add_const(var, float(eps)), FUNCTIONS["rsqrt"]))
    if weight is not None:
        y = scale(y, weight)
    if bias is not None:
        y = add_const(y, bias)
    return y


def rms_norm(x: Taylor, normalized_shape: tuple[int, ...], weight: Tensor | None, eps: float) -> Taylor:
    """``F.rms_norm``: ``x (mean(x^2) + eps)^(-1/2) * weight`` over the last dims."""
    dims = tuple(range(-len(normalized_shape), 0))
    ms = _reduce(mul(x, x), dims, mean=True)
    y = mul(x, smooth(add_const(ms, float(eps)), FUNCTIONS["rsqrt"]))
    return scale(y, weight) if weight is not None else y


def sdpa(
    q: Taylor | Tensor,
    k: Taylor | Tensor,
    v: Taylor | Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale_factor: float | None = None,
) -> Taylor:
    """``F.scaled_dot_product_attention`` (no dropout): ``softmax(q k^T * scale + mask) v``."""
    E = int(q.shape[-1])
    sf = 1.0 / math.sqrt(E) if scale_factor is None else float(scale_factor)
    kt: Taylor | Tensor = (
        k.map(lambda t: t.transpose(-2, -1)) if isinstance(k, Taylor) else k.transpose(-2, -1)
    )
    s = scale(matmul_const(q, kt), sf)
    L, S = int(s.shape[-2]), int(s.shape[-1])
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=s.a.device).tril()
        s = masked_fill(s, ~keep, -math.inf)
    if attn_mask is not None:
        s = (
            masked_fill(s, ~attn_mask, -math.inf)
            if attn_mask.dtype == torch.bool
            else add_const(s, attn_mask)
        )
    return matmul_const(softmax(s, -1), v)


def masked_fill(x: Taylor, mask: Tensor, value: float) -> Taylor:
    """``x.masked_fill(mask, value)`` for a constant mask: the filled entries are the constant ``value``."""
    shape = torch.broadcast_shapes(x.shape, mask.shape)
    x = _expand(x, shape)
    coef = [x.a.masked_fill(mask, value)] + [p.masked_fill(mask, 0.0) for p in x.coef[1:]]
    return Taylor(coef, x.rv.masked_fill(mask, 0.0), x.rd.masked_fill(mask, 0.0))


def where(cond: Tensor, x: Taylor, y: Taylor) -> Taylor:
    """``torch.where(cond, x, y)`` for a constant condition (broadcasting)."""
    K = max(x.order, y.order)
    shape = torch.broadcast_shapes(cond.shape, x.shape, y.shape)
    x, y = _expand(_pad_order(x, K), shape), _expand(_pad_order(y, K), shape)
    c = cond.expand(shape)
    coef = [torch.where(c, p, q) for p, q in zip(x.coef, y.coef, strict=True)]
    return Taylor(coef, torch.where(c, x.rv, y.rv), torch.where(c, x.rd, y.rd))


def _pad_order(x: Taylor, K: int) -> Taylor:
    if x.order >= K:
        return x
    z = torch.zeros_like(x.a)
    return Taylor(x.coef + [z] * (K - x.order), x.rv, x.rd)


# -- piecewise-linear maps --------------------------------------------------------------------------


def _hull_model(vlo: Tensor, vhi: Tensor, dlo: Tensor, dhi: Tensor, K: int) -> Taylor:
    """The model of a value in [vlo, vhi] whose slope is in [dlo, dhi]: ``mid_v + mid_d t + e(t)``."""
    a = 0.5 * (vlo + vhi)
    b = 0.5 * (dlo + dhi)
    rv = _up(0.5 * (vhi - vlo) + b.abs() + U * _fabs(a), 2)
    rd = _up(0.5 * (dhi - dlo) + U * b.abs(), 2)
    z = torch.zeros_like(a)
    return Taylor([a, b] + [z] * (K - 1), rv, rd) if K >= 1 else Taylor([a], rv + b.abs(), rd + b.abs())


def clamp_like(
    x: Taylor, fn: Callable[[Tensor], Tensor], breaks: tuple[float, ...], slopes: tuple[float, ...]
) -> tuple[Taylor, bool]:
    """A continuous, nondecreasing piecewise-linear map ``fn`` with ``breaks`` (increasing) and ``slopes``
    (``len(breaks) + 1`` values in [0, 1]) -- ReLU, LeakyReLU, Hardtanh, ReLU6, clamp.

    Where the hull of ``x`` lies in one piece the map is ``slope x + const`` there (exact); elsewhere the
    value is the interval ``[fn(lo), fn(hi)]`` and the slope the hull of ``slope * x'`` over the pieces the
    hull meets. Also returns whether any entry straddled a break (``coef[1]`` is then not a slope)."""
    lo, hi = x.hull()
    dlo, dhi = x.slope_hull()
    edges = (-math.inf, *breaks, math.inf)
    out: Taylor | None = None
    undecided = torch.ones_like(x.a, dtype=torch.bool)
    smin = torch.full_like(x.a, math.inf)
    smax = torch.full_like(x.a, -math.inf)
    for j, s in enumerate(slopes):
        left, right = edges[j], edges[j + 1]
        inside = (lo >= left) & (hi <= right)
        meets = (hi >= left) & (lo <= right)
        smin = torch.where(meets, torch.clamp(smin, max=s), smin)
        smax = torch.where(meets, torch.clamp(smax, min=s), smax)
        if bool(inside.any()):
            piece = scale(x, s) if s != 1.0 else x
            piece = Taylor([fn(x.a), *piece.coef[1:]], _up(piece.rv + 2 * U * _fabs(x.a), 1), piece.rd)
            out = piece if out is None else where(inside, piece, out)
        undecided &= ~inside
    straddle = bool(undecided.any())
    if straddle:
        d_lo = torch.minimum(smin * dlo, smax * dlo)
        d_hi = torch.maximum(smin * dhi, smax * dhi)
        hull = _hull_model(_widen(fn(lo), -1.0), _widen(fn(hi), 1.0), d_lo, d_hi, x.order)
        out = hull if out is None else where(undecided, hull, out)
    assert out is not None
    return out, straddle


def max_pool2d(
    x: Taylor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Taylor, bool]:
    """``F.max_pool2d`` (no ceil mode): the argmax entry where one window entry is certainly largest, else
    the hull of the value and of the slopes of every entry that can be largest. Also returns whether any
    window was undecided (as :func:`clamp_like`)."""
    N, C, H, W = x.shape
    ph, pw = padding

    def windows(t: Tensor, fill: float) -> Tensor:
        t = F.pad(t, (pw, pw, ph, ph), value=fill).reshape(N * C, 1, H + 2 * ph, W + 2 * pw)
        cols = F.unfold(t, kernel_size, dilation=dilation, stride=stride)
        return cols.reshape(N, C, cols.shape[1], cols.shape[2])  # (N, C, window, position)

    Ho = (H + 2 * ph - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * pw - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    lo, hi = x.hull()
    dlo, dhi = x.slope_hull()
    wlo, whi = windows(lo, -math.inf), windows(hi, -math.inf)
    best_lo, arg = wlo.max(dim=2, keepdim=True)
    cand = whi >= best_lo
    certain = cand.sum(dim=2, keepdim=True) == 1
    fills = [-math.inf] + [0.0] * x.order
    sel = Taylor(
        [torch.gather(windows(p, f), 2, arg) for p, f in zip(x.coef, fills, strict=True)],
        torch.gather(windows(x.rv, 0.0), 2, arg),
        torch.gather(windows(x.rd, 0.0), 2, arg),
    )
    vhi = whi.amax(dim=2, keepdim=True)
    inf = torch.full_like(wlo, math.inf)
    d_lo = torch.where(cand, windows(dlo, math.inf), inf).amin(dim=2, keepdim=True)
    d_hi = torch.where(cand, windows(dhi, -math.inf), -inf).amax(dim=2, keepdim=True)
    out = where(certain, sel, _hull_model(best_lo, vhi, d_lo, d_hi, x.order))
    return out.map(lambda t: t.reshape(N, C, Ho, Wo)), not bool(certain.all())
