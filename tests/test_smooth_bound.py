"""The sound smooth-tail bound (``estimator="taylor_bound"``): Taylor models in theta, op rules, the cascade.

Soundness is checked against independent numbers: the slope ``||dz/dtheta||_inf`` by forward-mode AD on a
dense theta grid (torch's own derivative rules, not ours) and the realised logit change; exactness on tails
with a closed-form answer; the cascade's verdicts against the full, unstopped computation; the global
derivative bounds of the smooth maps against sympy.
"""

from __future__ import annotations

import copy
import math

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from certify_helpers import magnitude
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpprune.certify import certify_layer
from mpprune.certify import taylor as tm
from mpprune.certify.estimators import taylor_bound
from mpprune.certify.segment import Segment
from mpprune.certify.taylor_mode import RULES, UnsupportedTailOp
from mpprune.certify.taylor_tail import TaylorTail
from mptheory.certificates import prediction_margin
from mptheory.errors import EXIT_REFUSED, BadInput, Refusal, exit_code
from mptheory.lipschitz import ESTIMATORS as LIPSCHITZ_ESTIMATORS

# -- small random nets with smooth and piecewise-linear tails ---------------------------------------------


class Attention(nn.Module):
    """One self-attention block: explicit ``q @ k^T * scale -> softmax -> @ v`` or SDPA."""

    def __init__(self, d: int, heads: int, fused: bool, sharp: float = 1.0) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads, self.fused, self.sharp = heads, fused, sharp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            o = F.scaled_dot_product_attention(q * self.sharp, k, v)
        else:
            a = (q * self.sharp) @ k.transpose(-2, -1) * (C // h) ** -0.5
            o = a.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """One op of a random tail on ``(B, N, d)`` tokens."""

    def __init__(self, kind: str, d: int) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("attn", "sdpa", "attn_ties"):
            self.attn = Attention(d, 2, kind == "sdpa", sharp=0.01 if kind == "attn_ties" else 1.0)
        if kind in ("ln", "ln_flat"):
            self.ln = nn.LayerNorm(d, eps=1e-6 if kind == "ln" else 1e-9)
        if kind in ("res_mlp", "gate", "relu_mlp"):
            self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k in ("attn", "sdpa", "attn_ties"):
            return x + self.attn(x)
        if k == "ln":
            return self.ln(x)
        if k == "ln_flat":  # a nearly constant row: LayerNorm with a tiny variance
            return self.ln(0.001 * x + 1.0)
        if k == "res_mlp":
            return x + self.fc2(F.gelu(self.fc1(x)))
        if k == "relu_mlp":
            return x + self.fc2(F.relu(self.fc1(x)))
        if k == "gate":
            return x * torch.sigmoid(self.fc2(F.silu(self.fc1(x))))
        return {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
                "tanh": torch.tanh, "relu": F.relu}[k](x)  # fmt: skip


class RandomNet(nn.Module):
    """``inp`` (the pruned layer) -> random tail -> mean over tokens -> ``head``."""

    def __init__(self, kinds: list[str], d: int, seed: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(5, d)
        self.blocks = nn.Sequential(*(Block(k, d) for k in kinds))
        self.head = nn.Linear(d, 4)
        with torch.no_grad():
            for name, p in self.named_parameters():
                fan = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(
                    torch.randn(p.shape, generator=g) * (scale if name.startswith("inp") else 1.0) / fan**0.5
                )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)).mean(dim=1))


SMOOTH_TAILS = [
    ["gelu", "ln", "res_mlp"],
    ["attn", "ln", "silu"],
    ["sdpa", "tanh", "gate"],
    ["ln_flat", "attn_ties", "gelu_tanh"],
    ["relu", "attn", "relu_mlp"],
    ["attn", "res_mlp", "ln", "attn", "ln"],
]


def _case(kinds: list[str], seed: int, sparsity: float = 0.5, scale: float = 1.0, n: int = 4, d: int = 8):
    model = RandomNet(kinds, d, seed, scale)
    x = torch.randn(n, 3, 5, generator=torch.Generator().manual_seed(seed + 1))
    W = model.inp.weight.detach()
    S = magnitude(W, sparsity)
    return model, x, S, W - S


def _grid_slopes(model: RandomNet, S: torch.Tensor, R: torch.Tensor, x: torch.Tensor, thetas: np.ndarray):
    """Independent: ||dz/dtheta||_inf by torch's forward-mode AD at every theta (shape (T, B)), all thetas in
    one batch: the layer output is ``u(theta) = x S^T + b + theta x R^T`` and the tail is the rest."""
    m = copy.deepcopy(model).double()
    xd = x.double()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        u0 = F.linear(xd, S.double(), m.inp.bias)
        d = F.linear(xd, R.double())
        th = torch.as_tensor(thetas, dtype=torch.float64).reshape(-1, 1, 1, 1)
        T, B = th.shape[0], x.shape[0]
        u = (u0[None] + th * d[None]).flatten(0, 1)

        def tail(v: torch.Tensor) -> torch.Tensor:
            return m.head(m.blocks(v).mean(dim=1))

        out = []
        for chunk_u, chunk_d in zip(u.split(4096), d[None].expand(T, *d.shape).flatten(0, 1).split(4096)):
            out.append(torch.func.jvp(tail, (chunk_u,), (chunk_d.contiguous(),))[1])
    return torch.cat(out).abs().amax(dim=1).reshape(T, B).numpy()


def _realised(model: nn.Module, S: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        z1 = m(x.double())
        m.inp.weight.copy_(S.double())
        z0 = m(x.double())
    return (z1 - z0).abs().amax(dim=1).numpy()


def _check_sound(kinds: list[str], seed: int, n_theta: int, **kw) -> None:
    model, x, S, R = _case(kinds, seed, **kw)
    seg = Segment(model, "inp", S.double(), R.double())
    seg.bind(x)
    tail = TaylorTail(seg)
    rng = np.random.default_rng(seed)
    # the whole segment, and random sub-intervals (where remainders are small and rounding matters most)
    cuts = [(0.0, 1.0)] + [tuple(sorted(rng.uniform(0, 1, 2))) for _ in range(2)]
    for a, b in cuts:
        up, mid, exact = tail.enclose(np.full(x.shape[0], a), np.full(x.shape[0], b))
        th = np.linspace(a, b, n_theta)
        slopes = _grid_slopes(model, S, R, x, th)
        assert np.all(up >= slopes.max(axis=0) * (1 - 1e-12)), (kinds, seed, a, b, up, slopes.max(axis=0))
        if exact:  # the slope at the midpoint is a slope
            np.testing.assert_allclose(
                mid, _grid_slopes(model, S, R, x, np.array([0.5 * (a + b)]))[0], rtol=1e-7
            )
    c = certify_layer(model, "inp", S, [x], "taylor_bound")
    assert c.estimator == "taylor_bound" and c.sound and c.violations == 0
    assert np.all(c.eta >= _realised(model, S, x) * (1 - 1e-12))
    assert np.all(c.eta >= _grid_slopes(model, S, R, x, np.linspace(0, 1, n_theta)).max(axis=0) * (1 - 1e-12))


@pytest.mark.parametrize("kinds", SMOOTH_TAILS, ids=["+".join(k) for k in SMOOTH_TAILS])
def test_bound_never_below_grid_slopes_fast(kinds):
    """Fast twin of the 10^4-point sweep: the sound bound is >= every slope on a 200-point theta grid (whole
    segment and random sub-intervals) and >= the realised logit change."""
    _check_sound(kinds, seed=len(kinds) * 7 + len(kinds[0]), n_theta=200)


@pytest.mark.parametrize("case", ["large_R", "tiny_variance", "softmax_ties"])
def test_bound_adversarial_cases(case):
    """Adversarial tails: a large R (90 % pruned, 4x larger weights), LayerNorm of a nearly constant row,
    softmax over nearly tied scores."""
    if case == "large_R":
        _check_sound(["gelu", "attn", "ln"], seed=3, n_theta=300, sparsity=0.9, scale=4.0)
    elif case == "tiny_variance":
        _check_sound(["ln_flat", "res_mlp"], seed=4, n_theta=300)
    else:
        _check_sound(["attn_ties", "attn_ties", "ln"], seed=5, n_theta=300)


_POOL = ["gelu", "gelu_tanh", "silu", "tanh", "relu", "ln", "ln_flat", "attn", "sdpa", "attn_ties", "res_mlp",
         "relu_mlp", "gate"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16))
def test_bound_never_below_grid_slopes_dense(seed):
    """The sound bound is >= the largest slope on a 10^4-point theta grid, on random nets with random smooth
    and PL tails (2-5 ops from the pool), random sparsity and weight scale."""
    rng = np.random.default_rng(seed)
    kinds = [str(k) for k in rng.choice(_POOL, size=int(rng.integers(2, 6)))]
    sparsity, scale = float(rng.uniform(0.3, 0.9)), float(rng.choice([1.0, 3.0]))
    _check_sound(kinds, seed=100 + seed, n_theta=10_000, sparsity=sparsity, scale=scale)


# -- exactness --------------------------------------------------------------------------------------------


def test_affine_tail_is_exact():
    """An affine tail has the constant slope ||W_2 R psi_1||_inf: the bound equals it (one piece)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Linear(9, 4)).eval()
    x = torch.randn(7, 6)
    S = magnitude(model[0].weight.detach(), 0.5)
    R = (model[0].weight.detach() - S).double()
    c = certify_layer(model, "0", S, [x], "taylor_bound")
    exact = (x.double() @ R.T @ model[1].weight.detach().double().T).abs().amax(dim=1).numpy()
    np.testing.assert_allclose(c.eta, exact, rtol=1e-12)
    assert np.all(c.eta >= exact)


def test_single_gelu_matches_closed_form():
    """z = GELU(u_0 + theta d): sup |z_i'| = |d_i| max |GELU'| over [u_0i, u_0i + d_i], attained at an end or
    at the extremum +-sqrt(2) of GELU'. The bound on fine pieces converges to it from above."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.GELU()).eval()
    x = torch.randn(5, 5)
    S = magnitude(model[0].weight.detach(), 0.6)
    seg = Segment(model, "0", S.double(), (model[0].weight.detach() - S).double())
    seg.bind(x)
    with torch.no_grad():
        u0 = F.linear(x.double(), S.double(), model[0].bias.double())
        d = F.linear(x.double(), (model[0].weight.detach() - S).double())

    def dgelu(t: np.ndarray) -> np.ndarray:
        cdf = 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))
        return cdf + t * np.exp(-t * t / 2) / math.sqrt(2 * math.pi)

    lo, hi = np.minimum(u0, u0 + d).numpy(), np.maximum(u0, u0 + d).numpy()
    best = np.maximum(np.abs(dgelu(lo)), np.abs(dgelu(hi)))
    for c in (math.sqrt(2), -math.sqrt(2)):
        best = np.where((lo <= c) & (c <= hi), np.maximum(best, abs(dgelu(np.array(c)))), best)
    exact = (np.abs(d.numpy()) * best).max(axis=1)
    tail = TaylorTail(seg)
    n = 16
    up = np.max([tail.enclose(np.full(5, j / n), np.full(5, (j + 1) / n))[0] for j in range(n)], axis=0)
    assert np.all(up >= exact * (1 - 1e-12))
    np.testing.assert_allclose(up, exact, rtol=1e-3)


# -- the cascade ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", [["gelu", "ln", "res_mlp"], ["attn", "ln", "silu"]])
def test_cascade_verdicts_equal_full_computation(kinds):
    """Stopping a sample once certified or proven uncertifiable gives the verdicts of the full computation
    (every piece refined to the same depth); the cascade does less work and its bounds stay sound."""
    model, x, S, R = _case(kinds, seed=11, n=8, sparsity=0.7)
    seg = Segment(model, "inp", S.double(), R.double())
    z1 = seg.bind(x)
    z0 = seg.logits(0.0)
    nr = seg.removed.numpy()
    real = (z1 - z0).abs().amax(dim=1).numpy()
    margin = prediction_margin(z1.numpy())
    ref, _ = taylor_bound(seg, x, nr, margin=margin, realised=real, stop=False, max_depth=3, max_evals=10**6)
    # margins at the scale of the refined bounds, so that the verdicts are mixed and need refinement
    margin = 2 * ref * np.linspace(0.6, 1.4, x.shape[0])
    full, _ = taylor_bound(seg, x, nr, margin=margin, realised=real, stop=False, max_depth=3, max_evals=10**6)
    stats: dict = {}
    casc, _ = taylor_bound(
        seg, x, nr, margin=margin, realised=real, max_depth=3, max_evals=10**6, stats=stats
    )
    np.testing.assert_array_equal(casc < margin / 2, full < margin / 2)
    assert 0 < np.sum(full < margin / 2) < x.shape[0]  # both verdicts occur
    assert stats["evals"] < x.shape[0] * (2**4 - 1)  # fewer piece bounds than the full tree
    slopes = _grid_slopes(model, S, R, x, np.linspace(0, 1, 400)).max(axis=0)
    assert np.all(casc >= slopes * (1 - 1e-12)) and np.all(full >= slopes * (1 - 1e-12))


def test_cascade_budget_keeps_sound_bound_and_says_so():
    """A budget too small to decide leaves samples open: not certified, eta still sound, the notes say so."""
    model, x, S, R = _case(["attn", "ln", "res_mlp"], seed=12, n=6, sparsity=0.8)
    c = certify_layer(model, "inp", S, [x], "taylor_bound", max_evals=1)
    full = certify_layer(model, "inp", S, [x], "taylor_bound")
    slopes = _grid_slopes(model, S, R, x, np.linspace(0, 1, 300)).max(axis=0)
    assert np.all(c.eta >= slopes * (1 - 1e-12)) and np.all(c.eta >= full.eta * (1 - 1e-12))
    assert c.sound and any("left open by the budget" in n for n in c.notes)
    assert c.certified_fraction <= full.certified_fraction


class Pole(nn.Module):
    """``z = head(1 / a(x))``, ``a(x)``'s first output crossing 0 at theta = 1/2: an unbounded slope."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 2), nn.Linear(2, 2)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
            self.a.bias.copy_(torch.tensor([-1.5, 3.0]))
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.copy_(
                torch.tensor([0.0, 100.0])
            )  # a wide margin: the realised change cannot decide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(1.0 / self.a(x))


def test_unbounded_slope_is_never_certified_and_gives_up_early():
    """A pole on the segment: the sound bound is +inf (not certified, eta >= the realised change); the cascade
    probes a short piece at theta = 1/2, finds it unbounded and stops instead of bisecting to the budget."""
    model = Pole().eval()
    x = torch.ones(1, 4)
    S = model.a.weight.detach().clone()
    S[0, 1] = 0.0  # u_0(theta) = -1/2 + theta
    c = certify_layer(model, "a", S, [x], "taylor_bound")
    assert c.sound and np.isinf(c.eta[0]) and not c.certified[0] and c.violations == 0
    assert any("1 left open by the budget" in n and "2 piece bounds" in n for n in c.notes), c.notes


def test_progress_bar_can_be_shown_and_disabled(capsys):
    model, x, S, _ = _case(["gelu", "ln"], seed=13, n=3)
    certify_layer(model, "inp", S, [x], "taylor_bound", progress=True)
    assert "taylor_bound inp" in capsys.readouterr().err
    certify_layer(model, "inp", S, [x], "taylor_bound", progress=False)
    assert "taylor_bound" not in capsys.readouterr().err


# -- auto, refusals, registry -----------------------------------------------------------------------------


def test_auto_uses_the_sound_bound_on_smooth_tails_and_never_reports_an_estimate_as_sound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    x = torch.randn(10, 6)
    S = magnitude(model[0].weight.detach(), 0.5)
    c = certify_layer(model, "0", S, [x], "auto")
    assert c.estimator == "taylor_bound" and c.sound and c.violations == 0
    assert any("taylor_bound" in n for n in c.notes)
    e = certify_layer(model, "0", S, [x], "segment_max_slope")
    assert not e.sound and np.all(c.eta >= e.eta * (1 - 1e-12))  # the bound is above the grid estimate


class Unsupported(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.a, self.b, self.op = nn.Linear(4, 6), nn.Linear(6, 3), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.op == "cumsum":
            h = torch.cumsum(F.gelu(h), dim=1)
        elif self.op == "branch":
            h = F.gelu(h) if h.sum() > 0 else h
        elif self.op == "inplace_const":
            buf = torch.zeros_like(h)
            buf.add_(F.gelu(h))
            h = buf
        elif self.op == "float32":
            h = F.gelu(h).float().double()
        return self.b(h)


@pytest.mark.parametrize("op", ["cumsum", "branch", "inplace_const", "float32"])
def test_unsupported_ops_are_refused_naming_op_and_layer(op):
    torch.manual_seed(2)
    model = Unsupported(op).eval()
    x = torch.randn(5, 4)
    S = magnitude(model.a.weight.detach(), 0.5)
    with pytest.raises(UnsupportedTailOp, match="layer 'a'") as info:
        certify_layer(model, "a", S, [x], "taylor_bound")
    assert isinstance(info.value, Refusal) and not isinstance(info.value, BadInput)
    assert exit_code(info.value) == EXIT_REFUSED
    named = {"cumsum": "cumsum", "branch": "gt", "inplace_const": "add", "float32": "float"}[op]
    assert named in str(info.value)
    c = certify_layer(model, "a", S, [x], "auto")  # auto: the labelled estimate, and why
    assert c.estimator == "segment_max_slope" and not c.sound
    assert any("no rule" in n for n in c.notes)


def test_registry_and_rules():
    assert LIPSCHITZ_ESTIMATORS["taylor_bound"].sound
    for op in ("linear", "conv2d", "layer_norm", "softmax", "scaled_dot_product_attention", "gelu", "silu",
               "matmul", "add", "mul", "max_pool2d", "relu", "batch_norm", "mean"):  # fmt: skip
        assert op in RULES


def test_timm_vit_with_fused_attention():
    """timm's VisionTransformer (fused SDPA and the explicit form): auto gives the sound bound on a block's
    layer, above the estimate and the realised change; the two attention forms give the same numbers."""
    timm = pytest.importorskip("timm")
    kw = dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1, num_heads=2,
              mlp_ratio=2.0, global_pool="avg")  # fmt: skip
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(**kw).eval()
    x = torch.randn(4, 1, 8, 8)
    name = "blocks.0.attn.qkv"
    S = magnitude(dict(model.named_modules())[name].weight.detach(), 0.3)
    certs = []
    for fused in (True, False):
        for mod in model.modules():
            if hasattr(mod, "fused_attn"):
                mod.fused_attn = fused
        c = certify_layer(model, name, S, [x], "auto")
        assert c.estimator == "taylor_bound" and c.sound and c.violations == 0
        e = certify_layer(model, name, S, [x], "segment_max_slope")
        assert np.all(c.eta >= e.eta * (1 - 1e-9)) and np.all(c.eta >= c.realised)
        certs.append(c)
    np.testing.assert_allclose(certs[0].eta, certs[1].eta, rtol=1e-6)


# -- the arithmetic ---------------------------------------------------------------------------------------


_X = sp.symbols("x", real=True)
_SYMPY = {
    "gelu": _X * (1 + sp.erf(_X / sp.sqrt(2))) / 2,
    "silu": _X / (1 + sp.exp(-_X)),
    "sigmoid": 1 / (1 + sp.exp(-_X)),
    "tanh": sp.tanh(_X),
    "erf": sp.erf(_X),
}


@pytest.mark.parametrize("name", sorted(_SYMPY))
def test_taylor_coefficients_and_global_derivative_bounds(name):
    """The coefficients f^(j)(a)/j! equal sympy's; SUP_DERIV[name][n] >= sup |f^(n)| (grid maximum refined by
    a bound on the next derivative over the grid spacing)."""
    f = _SYMPY[name]
    a = torch.tensor([-7.5, -2.0, -0.3, 0.0, 0.4, 1.7, 6.0], dtype=torch.float64)
    coef = tm.FUNCTIONS[name].taylor(a, 6)
    for j in range(7):
        ref = sp.lambdify(_X, sp.diff(f, _X, j) / sp.factorial(j), "mpmath")  # independent of our formulas
        np.testing.assert_allclose(coef[j].numpy(), [float(ref(float(v))) for v in a], rtol=1e-9, atol=1e-13)
    grid = np.linspace(-12, 12, 24_001)
    h = grid[1] - grid[0]
    for n in range(2, 8):
        dn = sp.lambdify(_X, sp.diff(f, _X, n), ["numpy", "scipy"])
        vals = np.abs(dn(grid))
        # L >= sup |f^(n+1)| (the table's next entry, or a generous grid value for the last order)
        L = (
            tm.SUP_DERIV[name].get(n + 1)
            or 2 * np.abs(sp.lambdify(_X, sp.diff(f, _X, n + 1), ["numpy", "scipy"])(grid)).max()
        )
        best = vals.max()
        sup = best
        maybe = np.maximum(vals[:-1], vals[1:]) + 0.5 * h * L >= best  # the cells that may hold the maximum
        for i in np.flatnonzero(maybe):
            fine = np.linspace(grid[i], grid[i + 1], 201)
            sup = max(sup, np.abs(dn(fine)).max() + 0.5 * (fine[1] - fine[0]) * L)
        assert best <= tm.SUP_DERIV[name][n], (name, n)
        assert tm.SUP_DERIV[name][n] >= sup, (name, n, tm.SUP_DERIV[name][n], sup)
        assert tm.SUP_DERIV[name][n] <= 1.002 * best  # and not loose


_MP = {
    "gelu": lambda x: x * (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2,
    "silu": lambda x: x / (1 + mpmath.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
    "tanh": mpmath.tanh,
    "erf": mpmath.erf,
    "exp": mpmath.exp,
    "reciprocal": lambda x: 1 / x,
    "rsqrt": lambda x: 1 / mpmath.sqrt(x),
    "sqrt": mpmath.sqrt,
}


@pytest.mark.parametrize("name", sorted(_MP))
def test_computed_coefficients_are_within_the_trusted_error(name):
    """Every computed coefficient f^(j)(a)/j!, j = 0..7, is within FN_ERR (|d_j| + floor (1 + |a|)) of the
    exact one (mpmath, 40 digits), with a factor 8 to spare: the trusted error of the smooth rule holds."""
    rng = np.random.default_rng(sorted(_MP).index(name))
    if name in ("reciprocal", "rsqrt", "sqrt"):
        a = 10 ** rng.uniform(-6, 4, 40)
    elif name == "exp":
        a = rng.uniform(-60, 5, 40)
    else:
        a = np.concatenate([rng.uniform(-40, 40, 20), rng.uniform(-6, 6, 20)])
    f = tm.FUNCTIONS[name]
    K = 7
    coef = f.taylor(torch.tensor(a), K)
    with mpmath.workdps(40):
        for i, v in enumerate(a):
            exact = mpmath.taylor(_MP[name], mpmath.mpf(float(v)), K)
            for j in range(K + 1):
                c = float(coef[j][i])
                err = float(abs(mpmath.mpf(c) - exact[j]))
                assert err <= tm.FN_ERR / 8 * (abs(c) + f.floor * (1 + abs(v))), (name, float(v), j, err)


def _random_model(
    g: torch.Generator,
    shape: tuple[int, ...],
    K: int,
    offset: float = 0.0,
    spread: float = 1.0,
    rv_scale: float = 1e-3,
    rd_scale: float = 1e-2,
):
    """A random Taylor model and one function it encloses: ``P(t) + e(t)`` with the adversarial remainder
    ``e(t) = rv cos(w t + phi)``, ``w = rd / rv`` (so ``|e| <= rv`` and ``|e'| <= rd`` are both attained)."""

    def rnd(scale: float) -> torch.Tensor:
        return scale * torch.randn(shape, generator=g, dtype=torch.float64)

    coef = [offset + spread * rnd(1.0)] + [rnd(0.3**j * spread) for j in range(1, K + 1)]
    rv = rv_scale * torch.rand(shape, generator=g, dtype=torch.float64)
    rd = rd_scale * torch.rand(shape, generator=g, dtype=torch.float64)
    phi = 6.3 * torch.rand(shape, generator=g, dtype=torch.float64)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return sum(c * t**j for j, c in enumerate(coef)) + rv * torch.cos(rd / rv * t + phi)

    return tm.Taylor(coef, rv, rd), fn


def _check_rule(rule, fn, inputs, name: str) -> None:
    """``rule`` on the models must enclose ``fn`` on the functions they enclose, value and slope, at 101 t
    (evaluated together: t runs along a new leading dimension)."""
    y = rule(*(m for m, _ in inputs))
    t = torch.linspace(-1, 1, 101, dtype=torch.float64).reshape((-1,) + (1,) * y.a.dim())
    val, dval = torch.func.jvp(lambda s: fn(*(f(s) for _, f in inputs)), (t,), (torch.ones_like(t),))
    poly = sum(c * t**j for j, c in enumerate(y.coef))
    dpoly = sum(j * c * t ** (j - 1) for j, c in enumerate(y.coef) if j)
    assert torch.all((val - poly).abs() <= y.rv + 1e-12), (name, ((val - poly).abs() - y.rv).max())
    assert torch.all((dval - dpoly).abs() <= y.rd + 1e-12), (name, ((dval - dpoly).abs() - y.rd).max())


@pytest.mark.parametrize("seed", range(3))
def test_every_rule_encloses_its_function(seed):
    """Property of each rule: random input models with adversarial remainders; the output model encloses
    the op applied to the enclosed functions (values and slopes by torch's forward-mode AD in t)."""
    g = torch.Generator().manual_seed(seed)
    K = 3
    X = _random_model(g, (2, 3, 4), K)
    Y = _random_model(g, (2, 3, 4), K)
    P = _random_model(g, (2, 3, 4), K, offset=3.0, spread=0.3)  # positive: powers, reciprocal
    M4 = _random_model(g, (2, 4, 5), K)
    W = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 3, generator=g) > 0.3
    mask[:, 0] = True
    # a large, nearly constant remainder: its effect on the slope goes through f'' (the M_2 rv n_1 term)
    X2 = _random_model(g, (2, 3, 4), K, rv_scale=5e-2, rd_scale=1e-5)
    for name in ("gelu", "silu", "sigmoid", "tanh", "erf", "exp"):
        for inp in (X, X2):
            _check_rule(lambda a, n=name: tm.smooth(a, tm.FUNCTIONS[n]), getattr(torch, name, None) or
                        {"gelu": F.gelu, "silu": F.silu}[name], [inp], name)  # fmt: skip
    for name, fn in (("reciprocal", torch.reciprocal), ("rsqrt", torch.rsqrt), ("sqrt", torch.sqrt)):
        _check_rule(lambda a, n=name: tm.smooth(a, tm.FUNCTIONS[n]), fn, [P], name)
    checks = [
        ("gelu_tanh", tm.gelu_tanh, lambda a: F.gelu(a, approximate="tanh"), [X]),
        ("mul", tm.mul, torch.mul, [X, Y]),
        ("add", tm.add, torch.add, [X, Y]),
        ("matmul", tm.matmul, torch.matmul, [X, M4]),
        ("matmul_const", lambda a: tm.matmul_const(a, W.T), lambda a: a @ W.T, [X]),
        ("affine", lambda a: tm.affine(a, lambda t: F.linear(t, W), lambda t: F.linear(t, W.abs()), 4, w[:1]),
         lambda a: F.linear(a, W, w[:1]), [X]),
        ("scale", lambda a: tm.scale(a, w), lambda a: a * w, [X]),
        ("divide", lambda a: tm.scale(a, w, divide=True), lambda a: a / w, [X]),
        ("add_const", lambda a: tm.add_const(a, w), lambda a: a + w, [X]),
        ("softmax", lambda a: tm.softmax(a, -1), lambda a: a.softmax(-1), [X]),
        ("layer_norm", lambda a: tm.layer_norm(a, (4,), w, w, 1e-5),
         lambda a: F.layer_norm(a, (4,), w, w, 1e-5), [X]),
        ("rms_norm", lambda a: tm.rms_norm(a, (4,), w, 1e-6), lambda a: F.rms_norm(a, (4,), w, 1e-6), [X]),
        ("sdpa", lambda q, k, v: tm.sdpa(q, k, v, mask),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask),
         [_random_model(g, (2, 3, 4), K) for _ in range(3)]),
        ("masked_fill", lambda a: tm.masked_fill(a, mask[:, :1].expand(3, 4), -2.0),
         lambda a: a.masked_fill(mask[:, :1].expand(3, 4), -2.0), [X]),
        ("where", lambda a, b: tm.where(mask[:, :1], a, b),
         lambda a, b: torch.where(mask[:, :1], a, b), [X, Y]),
        ("relu", lambda a: tm.clamp_like(a, torch.relu, (0.0,), (0.0, 1.0))[0], torch.relu, [X]),
        ("hardtanh",
         lambda a: tm.clamp_like(a, lambda t: t.clamp(-0.5, 0.5), (-0.5, 0.5), (0.0, 1.0, 0.0))[0],
         lambda a: a.clamp(-0.5, 0.5), [X]),
        ("max_pool2d", lambda a: tm.max_pool2d(a, (2, 2), (1, 1), (1, 1), (1, 1))[0],
         lambda a: F.max_pool2d(a.flatten(0, 1), 2, 1, 1).reshape(a.shape[:2] + (2, 4, 5)),
         [_random_model(g, (1, 2, 3, 4), K)]),
    ]  # fmt: skip
    with sdpa_kernel(SDPBackend.MATH):
        for name, rule, fn, inputs in checks:
            _check_rule(rule, fn, inputs, name)


def test_bad_order_is_refused():
    model, x, S, R = _case(["gelu"], seed=1)
    seg = Segment(model, "inp", S.double(), R.double())
    with pytest.raises(ValueError, match="order"):
        TaylorTail(seg, 0)
