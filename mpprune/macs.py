"""MAC accounting of the executed graph: dense, with token merging, and at sparse execution.

:func:`count_macs` runs one forward of a copy of the model (on the ``meta`` device when it can, so
ViT-B/16 at 224 px is counted without computing anything) under torch's own op tracer,
:class:`torch.utils.flop_counter.FlopCounterMode`, and turns every traced op into MACs
(1 MAC = 2 FLOPs). The user's model is never modified: hooks, ToMe and the forward all act on the copy.

What counts
    Every matrix product the forward executes, as aten ops rather than module calls: convolutions
    (``Cout·Hout·Wout·(Cin/groups)·kh·kw`` per image), Linear with or without bias
    (``tokens·in·out``), activation-by-activation products (the attention matmuls ``QKᵀ`` and ``AV``,
    ``2·T²·d`` per ViT block, whether written out or fused in ``scaled_dot_product_attention``,
    including the CPU flash kernel that FlopCounterMode alone does not count), matrix-vector products,
    and the cosine-similarity product of ToMe's bipartite matching. A hook-based counter (Conv2d and
    Linear modules only) misses the attention matmuls; this one does not.

What does not count
    BatchNorm, LayerNorm, activations, softmax, pooling, residual adds, biases, scaling, the ToMe
    merge itself (gathers and scatter-adds) and everything else that is not a multiply-accumulate
    product. Ops that look like products but have no formula (e.g. a custom kernel) are listed in
    :attr:`MacCount.uncounted` rather than silently counted as zero.

Attribution
    An op that reads the weight of a Linear or Conv2d (directly or through a view such as ``W.t()``)
    is charged to that layer, even when a parent module calls ``F.linear(x, self.qkv.weight)``; an op
    run inside a Linear/Conv2d whose weight is computed on access is charged to that layer too.
    Products of two activations are charged to the module they ran in (``attention`` inside an
    attention module or as fused SDPA, ``tome_match`` for ToMe's matching, ``matmul`` elsewhere), and
    a product with another parameter (e.g. ``nn.MultiheadAttention.in_proj_weight``) to that
    parameter's name, as ``matmul``. Layer names are those of ``model.named_modules()``.

Sparse execution
    A prunable layer (:func:`mpprune.layers.find_layers`) executes at a density read from its weight,
    in its matrix view (k:n runs along the input axis):

    * ``k:n`` (``source="detected"``): for n in 4, 8, 12, 16, 32 dividing the input dimension, k is
      the largest number of nonzeros in any group of n consecutive inputs; the pattern with the
      lowest k/n below 1 is taken (ties: the smallest n, so a 2:4 layer, which is also 4:8, reports
      2:4) and the layer executes at k/n (as a k:n kernel would, even when its density is lower);
    * ``patterns={name: "k:n"}`` (``source="given"``) sets the pattern of a layer whatever its
      weight holds (e.g. to count a planned pattern before pruning);
    * otherwise, a layer with zeros executes at its density, nonzeros/size (``source="density"``);
      a layer without zeros at 1 (``"dense"``); weights on the meta device cannot be read and execute
      at 1 (``"unknown"``).

    Ops that do not read a prunable weight execute at density 1 (``"activation"``, ``"param"``).
    Dense MACs ignore sparsity.

Token merging
    ``tome_r`` (see :func:`mpprune.tome.resolve_r`) is applied with :func:`mpprune.tome.apply_tome` to
    the copy, so the counted graph is the one ToMe executes; the token counts per block are those
    measured in the traced forward (:func:`mpprune.tome.tome_token_counts`, equal to
    :func:`mpprune.tome.tome_schedule`). ``dense`` is always the model *without* token merging (a model
    already patched is unpatched on the copy), so ``reduction`` compounds ToMe and sparsity, as in the
    paper's tables. With ``tome_r=0`` a model already patched is counted with its own schedule.

Conventions (both are computed; ``convention`` picks the one on the top-level fields)
    ``"executed"`` (the default): each op is charged the tokens it really sees. In a ToMe block the
    qkv and output projections and the attention matmuls see the ``T_l`` tokens entering block l, the
    MLP sees the ``T_l - r_l`` tokens left after the merge, and the matching product is counted.

    ``"paper"`` (the CAST paper's accounting, digest §3.13): every op of block l is charged the
    ``T_l`` tokens entering block l, so the MLP is charged ``T_l`` instead of ``T_l - r_l`` (its
    MACs scaled by ``T_l / (T_l - r_l)``), and ToMe's matching product is not counted. Everything
    else is identical (same graph, same ops, same sparsity rule); without ToMe the two conventions
    agree. For ViT-B/16 at 224 px with r = 8 (``T_l = 197 - 8(l-1)``) and 2:4 in every Linear
    including the head, the paper convention gives a 59.81 % reduction and the executed one 61.07 %.

Reading the result
    ``.dense``: MACs of one image (batch 1) through the model without ToMe, all weights dense.
    ``.merged``: MACs of the counted graph (ToMe applied) with dense weights (equal to ``.dense``
    without ToMe). ``.sparse``: the counted graph at sparse execution, sum over ops of MACs x density.
    ``.reduction = 1 - sparse / dense`` and ``.speedup = 1 / (1 - reduction) = dense / sparse``: a
    *theoretical* speed-up, the ratio of multiply-accumulates; it is not a measurement (memory
    traffic, kernels and the ops that are not counted decide the real speed).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mpprune.layers import KINDS, find_layers, matrix_view
from mpprune.masks import KN_GROUP_SIZES, detect_kn, parse_kn
from mpprune.tome import RSpec, ToMeBlock, apply_tome, is_tome_patched, remove_tome, tome_token_counts
from mptheory.errors import BadInput

__all__ = [
    "CONVENTIONS",
    "KN_GROUP_SIZES",
    "LayerMacs",
    "MacTotals",
    "MacCount",
    "count_macs",
    "detect_kn",
    "parse_kn",
]

#: The two accountings of a ToMe graph (module docstring); the first is the default.
CONVENTIONS = ("executed", "paper")

_aten = torch.ops.aten
# names that suggest a multiply-accumulate product: an executed op matching this without a formula is
# reported in MacCount.uncounted
_PRODUCT_NAME = re.compile(r"(mm|matmul|conv|attention|linear|einsum|dot|bilinear|mv)")


# --------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class LayerMacs:
    """One row of the table: the MACs of one (module, op kind), summed over its calls, batch 1.

    ``dense``: MACs in the graph without ToMe; ``merged``: MACs in the counted graph (ToMe applied,
    charged by the convention of the table) with dense weights; ``density``: the fraction executed;
    ``pattern``: the k:n pattern ("2:4") or None; ``source``: which rule set the density
    ("detected", "given", "density", "dense", "unknown", "activation", "param"; module docstring).
    ``calls``: how many traced ops the row sums (in the counted graph).
    """

    name: str
    op: str
    dense: int
    merged: int
    density: float
    pattern: str | None
    source: str
    calls: int

    @property
    def sparse(self) -> float:
        """MACs of the counted graph at sparse execution: ``merged * density``."""
        return self.merged * self.density

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparse": self.sparse}


@dataclass(frozen=True)
class MacTotals:
    """Totals under one convention: ``dense`` (no ToMe, dense weights), ``merged`` (ToMe, dense
    weights), ``sparse`` (ToMe, sparse execution); ``reduction`` and theoretical ``speedup``."""

    dense: int
    merged: int
    sparse: float

    @property
    def reduction(self) -> float:
        """``1 - sparse / dense`` (0 for a model with no MACs)."""
        return 1.0 - self.sparse / self.dense if self.dense else 0.0

    @property
    def tome_reduction(self) -> float:
        """The share of token merging alone: ``1 - merged / dense``."""
        return 1.0 - self.merged / self.dense if self.dense else 0.0

    @property
    def speedup(self) -> float:
        """Theoretical speed-up ``1 / (1 - reduction) = dense / sparse`` (inf when nothing executes)."""
        if self.sparse == 0:
            return math.inf if self.dense else 1.0
        return self.dense / self.sparse

    def to_dict(self) -> dict[str, Any]:
        extra = {"reduction": self.reduction, "tome_reduction": self.tome_reduction, "speedup": self.speedup}
        return {**asdict(self), **extra}


@dataclass(frozen=True)
class MacCount:
    """What :func:`count_macs` returns: totals under both conventions, the table of the chosen one.

    ``convention``: the convention of the top-level fields and of ``layers``; ``totals``: both
    conventions; ``layers``: one :class:`LayerMacs` per (module, op kind) in trace order;
    ``input_size``: the traced input shape (batch 1); ``tome_r``: the requested r per block (None
    without ToMe); ``tokens``: ``(n_attn, n_mlp)`` per block as measured in the traced forward (None
    without ToMe); ``traced_on``: "meta" or the device of a real forward (when the meta forward
    failed); ``uncounted``: product-like ops that ran without a MAC formula.
    """

    convention: str
    totals: Mapping[str, MacTotals]
    layers: tuple[LayerMacs, ...]
    input_size: tuple[int, ...]
    tome_r: tuple[int, ...] | None = None
    tokens: tuple[tuple[int, int], ...] | None = None
    traced_on: str = "meta"
    uncounted: tuple[str, ...] = field(default_factory=tuple)

    @property
    def dense(self) -> int:
        return self.totals[self.convention].dense

    @property
    def merged(self) -> int:
        return self.totals[self.convention].merged

    @property
    def sparse(self) -> float:
        return self.totals[self.convention].sparse

    @property
    def reduction(self) -> float:
        return self.totals[self.convention].reduction

    @property
    def speedup(self) -> float:
        return self.totals[self.convention].speedup

    def by_op(self) -> dict[str, MacTotals]:
        """Totals per op kind (``linear``, ``qkv``, ``conv2d``, ``attention``, ...) in this convention."""
        acc: dict[str, list[float]] = {}
        for row in self.layers:
            a = acc.setdefault(row.op, [0, 0, 0.0])
            a[0] += row.dense
            a[1] += row.merged
            a[2] += row.sparse
        return {k: MacTotals(int(v[0]), int(v[1]), float(v[2])) for k, v in acc.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": self.convention,
            "input_size": list(self.input_size),
            "tome_r": None if self.tome_r is None else list(self.tome_r),
            "tokens": None if self.tokens is None else [list(t) for t in self.tokens],
            "traced_on": self.traced_on,
            "uncounted": list(self.uncounted),
            **self.totals[self.convention].to_dict(),
            "conventions": {k: v.to_dict() for k, v in self.totals.items()},
            "layers": [row.to_dict() for row in self.layers],
        }

    def table(self) -> str:
        """The per-layer table as plain text (MACs in millions)."""
        lines = [f"{'layer':<40} {'op':<18} {'dense M':>10} {'merged M':>10} {'density':>8} source"]
        for r in self.layers:
            src = r.source if r.pattern is None else f"{r.source} {r.pattern}"
            lines.append(
                f"{r.name or '<model>':<40} {r.op:<18} {r.dense / 1e6:>10.3f} {r.merged / 1e6:>10.3f} "
                f"{r.density:>8.4f} {src}"
            )
        t = self.totals[self.convention]
        lines.append(
            f"total ({self.convention}): dense {t.dense / 1e9:.4f} G, merged {t.merged / 1e9:.4f} G, "
            f"sparse {t.sparse / 1e9:.4f} G, reduction {100 * t.reduction:.2f} %, "
            f"theoretical speed-up {t.speedup:.3f}x"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# tracing


@dataclass
class _Op:
    """One traced op: who is charged (``owner``), the kind, the module it ran in, its FLOPs."""

    owner: str
    kind: str
    context: str
    flops: int


def _sdpa_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of QKᵀ and AV for (…, s_q, d) queries, (…, s_k, d) keys and (…, s_k, d_v) values."""
    lead = math.prod(q[:-2])
    return 2 * lead * q[-2] * k[-2] * (q[-1] + v[-1])


def _mv_flops(a: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of mv (matrix a), dot and vdot (vector a): 2 per entry of a."""
    return 2 * math.prod(a)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas FlopCounterMode lacks: the CPU fused SDPA kernel and matrix-vector products."""
    out: dict[Any, Any] = {_aten.mv: _mv_flops, _aten.dot: _mv_flops, _aten.vdot: _mv_flops}
    out[_aten.addmv] = lambda bias, *args, **kwargs: _mv_flops(*args, **kwargs)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    ):
        if hasattr(_aten, name):
            out[getattr(_aten, name)] = _sdpa_flops
    return out


def _is_attention_op(packet: Any) -> bool:
    return "attention" in str(packet)


class _Tracer(FlopCounterMode):
    """FlopCounterMode that also records, for each counted op, which weight or module it belongs to.

    ``weights`` maps ``id(parameter)`` of a prunable layer's weight to ``(layer name, layer kind)``;
    ``params`` maps ``id`` of any other parameter to its qualified name; ``stack`` is the module
    stack kept by forward hooks on the traced copy.
    """

    def __init__(
        self,
        weights: dict[int, tuple[str, str]],
        params: dict[int, str],
        layer_modules: dict[int, tuple[str, str]],
        stack: list[tuple[str, nn.Module]],
    ) -> None:
        super().__init__(display=False, custom_mapping=_extra_formulas())
        self.weights = weights
        self.params = params
        self.layer_modules = layer_modules
        self.stack = stack
        self.ops: list[_Op] = []
        self.uncounted: set[str] = set()

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet not in self.flop_registry:
            name = str(func_packet)
            if _PRODUCT_NAME.search(name.rsplit(".", 1)[-1]) and "backward" not in name:
                self.uncounted.add(name)
            return super()._count_flops(func_packet, out, args, kwargs)
        flops = int(self.flop_registry[func_packet](*args, **(kwargs or {}), out_val=out))
        self.ops.append(self._classify(func_packet, args, flops))
        return super()._count_flops(func_packet, out, args, kwargs)

    def _classify(self, packet: Any, args: Any, flops: int) -> _Op:
        context, module = self.stack[-1] if self.stack else ("", None)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        roots = [t if t._base is None else t._base for t in tensors]
        for t in roots:
            hit = self.weights.get(id(t))
            if hit is not None:
                return _Op(hit[0], hit[1], context, flops)
        if _is_attention_op(packet):
            return _Op(context, "attention", context, flops)
        if module is not None and id(module) in self.layer_modules:
            name, kind = self.layer_modules[id(module)]
            return _Op(name, kind, context, flops)
        for t in roots:
            pname = self.params.get(id(t))
            if pname is not None:
                return _Op(pname, "matmul", context, flops)
        if isinstance(module, ToMeBlock):
            return _Op(context, "tome_match", context, flops)
        if module is not None and "attention" in type(module).__name__.lower():
            return _Op(context, "attention", context, flops)
        return _Op(context, "matmul", context, flops)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on the meta device (no storage is copied)."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    return copy.deepcopy(model, memo)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass
class _Trace:
    ops: list[_Op]
    r: list[int] | None  # the requested r per block (None without ToMe)
    tokens: list[tuple[int, int]] | None  # (n_attn, n_mlp) per block, measured
    mlp_blocks: dict[str, int]  # name of each ToMe block's MLP -> block index
    uncounted: set[str]


class _ForwardFailed(Exception):
    """The traced forward raised (wraps the model's own exception)."""


def _patched(model: nn.Module) -> list[nn.Module]:
    """The ToMe-patched modules of ``model`` (itself included)."""
    return [m for m in model.modules() if is_tome_patched(m)]


def _prepare(model: nn.Module, tome_r: RSpec | None, on_meta: bool) -> nn.Module:
    """The copy to trace: on meta (or a full copy), in eval mode; ToMe removed (None), kept (0) or set."""
    work = _meta_copy(model) if on_meta else copy.deepcopy(model)
    work.eval()
    if tome_r is None:
        for m in _patched(work):
            remove_tome(m)
    elif not _is_zero(tome_r):
        apply_tome(work, tome_r)
    return work


def _trace(model: nn.Module, input_size: tuple[int, ...], tome_r: RSpec | None, on_meta: bool) -> _Trace:
    work = _prepare(model, tome_r, on_meta)
    layers = find_layers(work)
    # only weights stored as parameters: a weight computed on access (a parametrization) is a fresh
    # tensor whose id could be reused by an activation; such layers are found by the module stack
    stored = [(li, li.module._parameters.get("weight")) for li in layers]
    weights = {id(w): (li.name, li.kind) for li, w in stored if w is not None}
    layer_modules = {id(li.module): (li.name, li.kind) for li in layers}
    params = {id(p): n for n, p in work.named_parameters() if id(p) not in weights}
    stack: list[tuple[str, nn.Module]] = []
    handles = []
    for name, mod in work.named_modules():

        def pre(m: nn.Module, _args: Any, _name: str = name) -> None:
            stack.append((_name, m))

        def post(_m: nn.Module, _args: Any, _out: Any) -> None:
            stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post, always_call=True))
    dtype = _float_dtype(model)
    if on_meta:
        x = torch.empty(input_size, dtype=dtype, device="meta")
    else:
        x = torch.randn(input_size, generator=torch.Generator().manual_seed(0), dtype=dtype)
        x = x.to(_device(model))
    tracer = _Tracer(weights, params, layer_modules, stack)
    try:
        with torch.no_grad(), tracer:
            work(x)
    except BadInput:
        raise
    except Exception as exc:
        raise _ForwardFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    total = sum(op.flops for op in tracer.ops)
    if total != tracer.get_total_flops():
        raise RuntimeError(
            f"count_macs: recorded {total} FLOPs but FlopCounterMode counted {tracer.get_total_flops()} "
            f"(torch {torch.__version__} changed its flop counter)"
        )
    r_list = tokens = None
    mlp_blocks: dict[str, int] = {}
    patched = _patched(work)
    if len(patched) > 1:
        raise BadInput(f"count_macs: {len(patched)} token-merging models inside one model are not supported")
    if patched:
        vit: Any = patched[0]
        r_list = list(vit._tome_state.r)
        tokens = tome_token_counts(patched[0])
        for name, mod in work.named_modules():
            if isinstance(mod, ToMeBlock):
                mlp_blocks[f"{name}.mlp"] = mod._tome_index
    return _Trace(tracer.ops, r_list, tokens, mlp_blocks, tracer.uncounted)


def _trace_any(model: nn.Module, input_size: tuple[int, ...], tome_r: RSpec | None) -> tuple[_Trace, str]:
    """Trace on meta; if the model cannot run on meta, run a real forward on a full copy."""
    try:
        return _trace(model, input_size, tome_r, True), "meta"
    except _ForwardFailed:
        pass
    try:
        return _trace(model, input_size, tome_r, False), str(_device(model))
    except _ForwardFailed as exc:
        raise BadInput(
            f"count_macs: the model failed on an input of shape {input_size} (on meta and on "
            f"{_device(model)}): {exc}"
        ) from exc.__cause__


def _block_of(context: str, mlp_blocks: Mapping[str, int]) -> int | None:
    for prefix, idx in mlp_blocks.items():
        if context == prefix or context.startswith(prefix + "."):
            return idx
    return None


def _aggregate(trace: _Trace, convention: str) -> dict[tuple[str, str], list[int]]:
    """``{(owner, kind): [macs, calls]}`` in trace order, charged by ``convention``."""
    rows: dict[tuple[str, str], list[int]] = {}
    for op in trace.ops:
        flops = op.flops
        if convention == "paper" and trace.tokens is not None:
            if op.kind == "tome_match":
                continue
            blk = _block_of(op.context, trace.mlp_blocks)
            if blk is not None:
                n_attn, n_mlp = trace.tokens[blk]
                if n_mlp and n_attn != n_mlp:
                    flops = flops * n_attn // n_mlp
        r = rows.setdefault((op.owner, op.kind), [0, 0])
        r[0] += flops // 2
        r[1] += 1
    return rows


# --------------------------------------------------------------------------------------------------
# sparsity per layer


def _densities(
    model: nn.Module, patterns: Mapping[str, str] | None
) -> dict[str, tuple[float, str | None, str]]:
    """``{layer name: (density, pattern or None, source)}`` for every prunable layer of ``model``."""
    layers = find_layers(model)
    by_name = {li.name: li for li in layers}
    given = dict(patterns or {})
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise BadInput(
            f"count_macs: patterns name layers that are not prunable layers of the model: {unknown}; "
            f"known: {sorted(by_name)[:8]}{' ...' if len(by_name) > 8 else ''}"
        )
    out: dict[str, tuple[float, str | None, str]] = {}
    for li in layers:
        w = matrix_view(li.module)
        if li.name in given:
            k, n = parse_kn(given[li.name])
            if w.shape[1] % n:
                raise BadInput(
                    f"count_macs: pattern {k}:{n} does not divide layer {li.name!r} "
                    f"(matrix view {tuple(w.shape)}, input axis {w.shape[1]})"
                )
            out[li.name] = (k / n, f"{k}:{n}", "given")
            continue
        if w.is_meta:
            out[li.name] = (1.0, None, "unknown")
            continue
        kn = detect_kn(w)
        if kn is not None:
            out[li.name] = (kn[0] / kn[1], f"{kn[0]}:{kn[1]}", "detected")
            continue
        nnz = int(torch.count_nonzero(w))
        if nnz < w.numel():
            out[li.name] = (nnz / w.numel(), None, "density")
        else:
            out[li.name] = (1.0, None, "dense")
    return out


# --------------------------------------------------------------------------------------------------
# the entry point


def _is_zero(tome_r: RSpec | None) -> bool:
    """Whether ``tome_r`` is the plain int 0 (no token merging requested)."""
    return isinstance(tome_r, int) and not isinstance(tome_r, bool) and tome_r == 0


def _input_shape(input_size: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise BadInput(f"count_macs: input_size must be a tuple of ints, got {input_size!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise BadInput(f"count_macs: input_size must be positive sizes, got {input_size!r}")
    if len(shape) == 3 or len(shape) == 1:  # (C, H, W) image or (features,) vector: one sample
        return (1, *shape)
    if shape[0] != 1:
        raise BadInput(
            f"count_macs: input_size {shape} must be (C, H, W), (features,) or start with a batch of 1; "
            "MACs are per sample"
        )
    return shape


def _iter_rows(
    trace_rows: dict[tuple[str, str], list[int]],
    base_rows: dict[tuple[str, str], list[int]],
    dens: Mapping[str, tuple[float, str | None, str]],
    params: set[str],
) -> Iterator[LayerMacs]:
    keys = list(trace_rows) + [k for k in base_rows if k not in trace_rows]
    for key in keys:
        name, kind = key
        merged, calls = trace_rows.get(key, [0, 0])
        dense = base_rows.get(key, [0, 0])[0]
        if name in dens and kind in KINDS:
            density, pattern, source = dens[name]
        else:
            density, pattern, source = 1.0, None, "param" if name in params else "activation"
        yield LayerMacs(name, kind, dense, merged, density, pattern, source, calls)


def count_macs(
    model: nn.Module,
    input_size: tuple[int, ...],
    tome_r: RSpec = 0,
    *,
    patterns: Mapping[str, str] | None = None,
    convention: str = "executed",
) -> MacCount:
    """MACs of one image through ``model``: dense, with token merging ``tome_r``, at sparse execution.

    Args:
        model: any ``nn.Module``; it is copied, never modified (module docstring).
        input_size: ``(C, H, W)`` (an image), ``(features,)`` (a vector), or the full input shape with a batch
            of 1 such as ``(1, 3, 224, 224)``
            (a 3-tuple is always read as an image without the batch). MACs are per image.
        tome_r: the ToMe schedule (``int``, list per block, or ``(r, inflection)``); 0: no merging.
        patterns: ``{layer name: "k:n"}`` to set the pattern of layers instead of reading it from
            their weights.
        convention: "executed" (default) or "paper": which totals and table the result shows (both
            totals are always in ``.totals``).

    Raises:
        BadInput: a bad input size, convention or pattern, a pattern naming an unknown layer or not
            dividing its input axis, ToMe on an unsupported model, or a model that rejects the input.
    """
    if convention not in CONVENTIONS:
        raise BadInput(f"count_macs: convention must be one of {CONVENTIONS}, got {convention!r}")
    if not isinstance(model, nn.Module):
        raise BadInput(f"count_macs expects an nn.Module, got {type(model).__name__}")
    shape = _input_shape(input_size)
    dens = _densities(model, patterns)
    params = {n for n, _ in model.named_parameters()}

    base, base_on = _trace_any(model, shape, None)
    base_rows = _aggregate(base, "executed")
    if _is_zero(tome_r) and not _patched(model):
        merged, merged_on = base, base_on
    else:
        merged, merged_on = _trace_any(model, shape, tome_r)

    totals: dict[str, MacTotals] = {}
    table: tuple[LayerMacs, ...] = ()
    for conv in CONVENTIONS:
        rows = tuple(_iter_rows(_aggregate(merged, conv), base_rows, dens, params))
        totals[conv] = MacTotals(
            dense=sum(r.dense for r in rows),
            merged=sum(r.merged for r in rows),
            sparse=float(sum(r.sparse for r in rows)),
        )
        if conv == convention:
            table = rows
    return MacCount(
        convention=convention,
        totals=totals,
        layers=table,
        input_size=shape,
        tome_r=None if merged.r is None else tuple(merged.r),
        tokens=None if merged.tokens is None else tuple(merged.tokens),
        traced_on=base_on if base_on == merged_on else f"{base_on}, {merged_on}",
        uncounted=tuple(sorted(base.uncounted | merged.uncounted)),
    )
