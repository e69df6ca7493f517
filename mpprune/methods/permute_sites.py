"""Permutation sites: where an input-channel permutation can be folded into a model, and the folding.

A site is one tensor whose channels may be reordered: the layers that read it (*consumers*: their input
columns), the layers that write it (*producers*: their output rows and biases) and every per-channel
parameter in between. :func:`find_sites` finds them on the running model, :func:`apply_permutation` folds a
permutation in (weights and, optionally, masks) and :func:`fold_checked` folds it behind a dry run. Kinds:

* ``"chain"`` -- a Linear or Conv2d whose input tensor was produced by another Linear / ungrouped Conv2d
  through channel-wise modules only (activations, dropout, pooling, BatchNorm, LayerNorm over the channel
  axis, LayerScale, depthwise convs), each tensor on the way read by one module: a ViT MLP ``fc1 -> fc2``,
  a conv chain through BatchNorm (``conv -> bn -> relu -> conv``), an EfficientNet block ``conv_pw -> bn ->
  dw -> bn -> conv_pwl``. Found with forward hooks that record which module call produced which tensor
  (apex ASP finds its sibling / co-parent groups with torch.fx instead; peers §2).
* ``"attention"`` -- ``v -> proj`` of an attention module with a fused ``qkv`` Linear, ``proj`` and
  ``num_heads`` (timm ``Attention``): the value rows of ``qkv`` and the input columns of ``proj``, permuted
  within each head only (the head split must not change).
* ``"residual"`` (only when asked) -- the residual stream of a timm ``VisionTransformer``: one permutation
  of the embedding axis for every block's ``qkv`` and ``fc1`` (siblings), the patch embedding, class /
  register tokens, position embedding, every norm and LayerScale, ``proj`` and ``fc2`` rows, and the head's
  input columns.

Every fold made by :func:`fold_checked` is checked by a dry run (apex's idea): the model's output on a sample
batch must not change (float tolerance), else the fold is undone and the reason returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mpprune.certify.capture import logits_of, model_device
from mpprune.errors import BadInput
from mpprune.masks import MaskStore

__all__ = [
    "Edit",
    "Site",
    "apply_permutation",
    "find_sites",
    "fold_checked",
    "inverse_permutation",
    "site_positions",
]


@dataclass(frozen=True)
class Edit:
    """Permute ``getattr(module, attr)`` along ``dim`` on the slice ``offset : offset + channels``."""

    module: str
    attr: str
    dim: int
    offset: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "attr": self.attr, "dim": self.dim, "offset": self.offset}


@dataclass
class Site:
    """One permutable tensor: ``channels`` channels, permuted within blocks of ``block`` channels, read by
    ``consumers`` (their input columns) and written by the producers; ``edits`` fold a permutation."""

    kind: str
    consumers: list[str]
    channels: int
    block: int
    edits: list[Edit]

    @property
    def key(self) -> str:
        return self.consumers[0] if len(self.consumers) == 1 else f"{self.kind}:{self.consumers[0]}"


# ------------------------------------------------------------------------------------------- folding
def _tensor(model: nn.Module, edit: Edit) -> torch.Tensor:
    mods = dict(model.named_modules())
    if edit.module not in mods:
        raise BadInput(f"permutation edit: module {edit.module!r} not found in the model")
    t = getattr(mods[edit.module], edit.attr, None)
    if not isinstance(t, torch.Tensor):
        raise BadInput(f"permutation edit: {edit.module}.{edit.attr} is not a tensor")
    return t


@torch.no_grad()
def apply_permutation(
    model: nn.Module, edits: Sequence[Edit], perm: Sequence[int] | np.ndarray | torch.Tensor,
    masks: MaskStore | None = None,
) -> None:
    """Fold ``perm`` (new channel j = old channel perm[j]) into ``model`` in place, edit by edit; masks of
    ``masks`` whose module weight is edited are permuted the same way."""
    p = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    C = int(p.numel())
    if sorted(p.tolist()) != list(range(C)):
        raise BadInput(f"not a permutation of {C} channels")
    mods = dict(model.named_modules())
    for e in edits:
        t = _tensor(model, e)
        dim = e.dim % t.dim()
        if t.shape[dim] < e.offset + C:
            raise BadInput(
                f"permutation edit {e.module}.{e.attr}: dim {e.dim} has {t.shape[dim]} < {e.offset + C} "
                "entries"
            )
        sl = t.data.narrow(dim, e.offset, C)
        sl.copy_(sl.index_select(dim, p.to(t.device)))
        if masks is not None and e.attr == "weight" and mods[e.module] in masks:
            m = masks[mods[e.module]]
            ms = m.narrow(dim, e.offset, C)
            ms.copy_(ms.index_select(dim, p.to(m.device)))


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """The inverse permutation."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv


# ------------------------------------------------------------------------------------------- dataflow
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _is_elementwise(mod: nn.Module) -> bool:
    if isinstance(mod, _ELEMENTWISE):
        return True
    # timm's activation modules (parameter-free, element-wise): GELUTanh, Swish, HardSwish, ...
    timm_act = type(mod).__module__.startswith("timm.layers.activations")
    return timm_act and not any(True for _ in mod.parameters())


def _family(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Conv2d) and mod.groups == 1:
        return "conv"
    return None


def _passthrough(mod: nn.Module, family: str, C: int) -> bool:
    """Whether ``mod`` maps channel c to channel c only (so a permutation commutes with it)."""
    if _is_elementwise(mod):
        return True
    cname = type(mod).__name__
    if family == "conv":
        if isinstance(mod, _POOLS):
            return True
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.num_features == C:
            return True  # timm's BatchNormAct2d included: its activation is element-wise
        if isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == mod.out_channels == C:
            return True  # depthwise conv
        if cname in ("LayerNorm2d", "LayerScale2d"):
            return True
        return False
    if isinstance(mod, nn.LayerNorm) and tuple(mod.normalized_shape) == (C,):
        return True
    if isinstance(mod, nn.BatchNorm1d) and mod.num_features == C:
        return True
    return cname == "LayerScale"


def _in_channels(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return int(mod.in_features)
    if isinstance(mod, nn.Conv2d):
        return int(mod.in_channels)
    raise BadInput(f"{type(mod).__name__} has no input channels")


def _channel_edits(name: str, mod: nn.Module, C: int) -> list[Edit]:
    """Edits of every parameter / buffer of ``mod`` with C entries along dim 0 (per-channel state)."""
    out = []
    for attr, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
        if t is not None and t.dim() >= 1 and t.shape[0] == C:
            out.append(Edit(name, attr, 0))
    return out


def _has_state(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))


@dataclass
class _Call:
    name: str
    module: nn.Module
    ins: list[int]
    out: int | None
    same: bool  # the output is one of the inputs (identity or in-place)


def _atomic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose calls are recorded: Linear, Conv, norms, and every module without children; the
    children of a recorded module are not recorded (timm's BatchNormAct2d runs its activation inside)."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    kinds = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        has_children = any(True for _ in mod.children())
        if isinstance(mod, kinds) or not has_children:
            if name:
                out.append((name, mod))
            if has_children:
                inside.append(name)
    return out


def _trace_calls(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """Run ``model(x)`` once with forward hooks recording, per module call, the ids of its input tensors and
    of its output (the tensors are kept alive so that ids are not reused)."""
    calls: list[_Call] = []
    alive: list[torch.Tensor] = []
    handles = []

    def make(name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            ins = [a for a in args if isinstance(a, torch.Tensor)]
            o = out if isinstance(out, torch.Tensor) else None
            alive.extend(ins)
            if o is not None:
                alive.append(o)
            ids = [id(t) for t in ins]
            same = o is not None and id(o) in ids
            calls.append(_Call(name, mod, ids, id(o) if o is not None else None, same))

        return hook

    for name, mod in _atomic_modules(model):
        handles.append(mod.register_forward_hook(make(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def _chain_sites(model: nn.Module, calls: list[_Call]) -> tuple[list[Site], dict[str, str]]:
    producer: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    n_calls: dict[int, int] = {}
    for i, c in enumerate(calls):
        n_calls[id(c.module)] = n_calls.get(id(c.module), 0) + 1
        for t in c.ins:
            readers.setdefault(t, []).append(i)
        if c.out is not None and not c.same:
            producer[c.out] = i
    sites: list[Site] = []
    skipped: dict[str, str] = {}
    seen: set[int] = set()
    for c in calls:
        fam = _family(c.module)
        if fam is None or id(c.module) in seen:
            continue
        seen.add(id(c.module))
        if n_calls[id(c.module)] > 1:
            skipped[c.name] = "the layer is called more than once per forward"
            continue
        C = _in_channels(c.module)
        if not c.ins:
            continue
        t = c.ins[0]
        chain: list[_Call] = []
        why = None
        while True:
            rd = readers.get(t, [])
            plain = [i for i in rd if not calls[i].same]
            odd = [calls[i].name for i in rd if calls[i].same and not _passthrough(calls[i].module, fam, C)]
            if odd:
                why = f"its input tensor is modified in place by {odd}"
                break
            if len(plain) != 1:
                why = f"its input tensor (or one on the way) is read by {len(plain)} modules"
                break
            p = producer.get(t)
            if p is None:
                why = "its input is not the output of a module (made by a functional op)"
                break
            pc = calls[p]
            pm = pc.module
            out_ch = (
                pm.out_features if isinstance(pm, nn.Linear)
                else pm.out_channels if isinstance(pm, nn.Conv2d) else None
            )
            if _family(pm) == fam and out_ch == C:
                if n_calls[id(pm)] > 1:
                    why = f"its producer {pc.name!r} is called more than once"
                break
            if _passthrough(pm, fam, C) and pc.ins:
                if _has_state(pm) and n_calls[id(pm)] > 1:
                    why = f"the channel-wise module {pc.name!r} on the way is shared"
                    break
                chain.append(pc)
                t = pc.ins[0]
                continue
            why = f"{type(pm).__name__} {pc.name!r} on the way is not channel-wise (or not a {fam} producer)"
            break
        if why is not None:
            skipped[c.name] = why
            continue
        pname = calls[producer[t]].name
        pmod = calls[producer[t]].module
        edits = [Edit(pname, "weight", 0)]
        if getattr(pmod, "bias", None) is not None:
            edits.append(Edit(pname, "bias", 0))
        for link in chain:
            edits.extend(_channel_edits(link.name, link.module, C))
        edits.append(Edit(c.name, "weight", 1))
        sites.append(Site("chain", [c.name], C, C, edits))
    return sites, skipped


def _attention_sites(model: nn.Module) -> list[Site]:
    sites = []
    for name, mod in model.named_modules():
        qkv, proj = getattr(mod, "qkv", None), getattr(mod, "proj", None)
        heads = getattr(mod, "num_heads", None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int)):
            continue
        C = proj.in_features
        if qkv.out_features != 3 * C or heads < 1 or C % heads:
            continue
        pre = f"{name}." if name else ""
        edits = [Edit(pre + "qkv", "weight", 0, 2 * C)]
        if qkv.bias is not None:
            edits.append(Edit(pre + "qkv", "bias", 0, 2 * C))
        norm = getattr(mod, "norm", None)
        if isinstance(norm, nn.Module) and _has_state(norm):
            edits.extend(_channel_edits(pre + "norm", norm, C))
        edits.append(Edit(pre + "proj", "weight", 1))
        sites.append(Site("attention", [pre + "proj"], C, C // heads, edits))
    return sites


def _residual_site(model: nn.Module) -> tuple[Site | None, str | None]:
    """The residual stream of a timm VisionTransformer (module docstring), or (None, reason)."""
    if type(model).__name__ != "VisionTransformer" or not hasattr(model, "blocks"):
        return None, (
            f"residual-stream permutation supports timm VisionTransformer, not {type(model).__name__}"
        )
    if getattr(model, "attn_pool", None) is not None:
        return None, "attention pooling head is not supported"
    pe = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(pe, nn.Conv2d):
        return None, "patch_embed.proj is not a Conv2d"
    C = pe.out_channels
    edits = [Edit("patch_embed.proj", "weight", 0)]
    if pe.bias is not None:
        edits.append(Edit("patch_embed.proj", "bias", 0))
    for attr in ("cls_token", "reg_token", "pos_embed"):
        t = getattr(model, attr, None)
        if isinstance(t, torch.Tensor):
            if t.shape[-1] != C:
                return None, f"{attr} has {t.shape[-1]} channels, not {C}"
            edits.append(Edit("", attr, -1))
    for mname in ("patch_embed.norm", "norm_pre"):
        edits.extend(_norm_edits(model, mname, C))
    consumers: list[str] = []
    for i, blk in enumerate(model.blocks):  # type: ignore[union-attr,arg-type]
        need = ("norm1", "attn", "ls1", "norm2", "mlp", "ls2")
        if not all(hasattr(blk, a) for a in need) or type(blk).__name__ != "Block":
            return None, f"blocks.{i} is {type(blk).__name__}, not a timm Block"
        b = f"blocks.{i}"
        qkv, proj = getattr(blk.attn, "qkv", None), getattr(blk.attn, "proj", None)
        fc1, fc2 = getattr(blk.mlp, "fc1", None), getattr(blk.mlp, "fc2", None)
        if not all(isinstance(m, nn.Linear) for m in (qkv, proj, fc1, fc2)):
            return None, f"{b}: attention or MLP without plain Linear qkv/proj/fc1/fc2"
        for mname in (f"{b}.norm1", f"{b}.ls1", f"{b}.norm2", f"{b}.ls2"):
            edits.extend(_norm_edits(model, mname, C))
        edits.append(Edit(f"{b}.attn.qkv", "weight", 1))
        edits.append(Edit(f"{b}.mlp.fc1", "weight", 1))
        for prod in (f"{b}.attn.proj", f"{b}.mlp.fc2"):
            edits.append(Edit(prod, "weight", 0))
            edits.append(Edit(prod, "bias", 0))
        consumers += [f"{b}.attn.qkv", f"{b}.mlp.fc1"]
    for mname in ("norm", "fc_norm"):
        edits.extend(_norm_edits(model, mname, C))
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        edits.append(Edit("head", "weight", 1))
    elif not isinstance(head, nn.Identity):
        return None, f"head is {type(head).__name__}"
    edits = [e for e in edits if _edit_exists(model, e)]
    return Site("residual", consumers, C, C, edits), None


def _norm_edits(model: nn.Module, name: str, C: int) -> list[Edit]:
    mod = dict(model.named_modules()).get(name)
    return [] if mod is None else _channel_edits(name, mod, C)


def _edit_exists(model: nn.Module, e: Edit) -> bool:
    mod = dict(model.named_modules()).get(e.module)
    return mod is not None and isinstance(getattr(mod, e.attr, None), torch.Tensor)


def find_sites(
    model: nn.Module, x: torch.Tensor, *, residual: bool = False, check: bool = True, rtol: float = 1e-4
) -> tuple[dict[str, Site], dict[str, str], Site | None]:
    """The permutation sites of ``model`` (module docstring), found by one forward of the sample batch ``x``.

    Returns ``(sites, skipped, residual_site)``: ``sites`` maps a consumer layer's name to its chain or
    attention site, ``skipped`` a Linear/Conv2d layer's name to why it has no site, and ``residual_site`` is
    the residual stream of a timm ViT when ``residual`` is True (else None; a model without one is
    recorded in ``skipped`` under ``"<residual>"``). With ``check`` every site is tried with a random
    permutation (seeded) folded in and out again: a site whose fold changes the output on ``x`` -- a tensor
    also read by a functional op the hooks cannot see, e.g. a residual add -- is moved to ``skipped``.
    """
    was = model.training
    model.eval()
    try:
        calls = _trace_calls(model, x.to(model_device(model)))
    finally:
        model.train(was)
    chain, skipped = _chain_sites(model, calls)
    sites: dict[str, Site] = {s.consumers[0]: s for s in chain}
    for s in _attention_sites(model):
        sites[s.consumers[0]] = s
        skipped.pop(s.consumers[0], None)
    res = None
    if residual:
        res, why = _residual_site(model)
        if res is None:
            skipped["<residual>"] = str(why)
        else:
            for name in res.consumers:
                skipped.pop(name, None)
    if check:
        rng = np.random.default_rng(0)
        for name, site in list(sites.items()):
            why = _verify_fold(model, site, _random_perm(site, rng), x, None, rtol, undo=True)
            if why is not None:
                skipped[name] = why.replace("fold undone", "not foldable")
                del sites[name]
        if res is not None:
            why = _verify_fold(model, res, _random_perm(res, rng), x, None, rtol, undo=True)
            if why is not None:
                skipped["<residual>"] = why.replace("fold undone", "not foldable")
                res = None
    return sites, skipped, res


def _random_perm(site: Site, rng: np.random.Generator) -> np.ndarray:
    """A random permutation within the site's blocks."""
    return np.concatenate(
        [b0 + rng.permutation(site.block) for b0 in range(0, site.channels, site.block)]
    ).astype(np.int64)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(model(x.to(model_device(model)))).detach().double().cpu()


def _verify_fold(
    model: nn.Module,
    site: Site,
    perm: np.ndarray,
    x: torch.Tensor,
    masks: MaskStore | None,
    rtol: float,
    undo: bool = False,
) -> str | None:
    """Fold ``perm`` and check the output on ``x``; undo and return the reason when it changed (with
    ``undo`` the fold is undone in any case)."""
    was = model.training
    model.eval()
    try:
        before = _outputs(model, x)
        apply_permutation(model, site.edits, perm, masks)
        after = _outputs(model, x)
        scale = float(before.abs().max()) + 1e-12
        err = float((after - before).abs().max())
        ok = err <= rtol * scale
        if undo or not ok:
            apply_permutation(model, site.edits, inverse_permutation(perm), masks)
        if not ok:
            return f"dry run changed the output by {err:.3g} (> {rtol:g} x {scale:.3g}); fold undone"
        return None
    finally:
        model.train(was)


def fold_checked(
    model: nn.Module,
    site: Site,
    perm: np.ndarray,
    x: torch.Tensor,
    masks: MaskStore | None = None,
    rtol: float = 1e-4,
) -> str | None:
    """Fold ``perm`` into ``model`` at ``site`` (and into the masks of ``masks``), then check on the sample
    batch ``x`` that the output did not change (max abs change <= ``rtol`` x max |output|). If it did, the
    fold is undone and the reason returned; None when the fold stands."""
    return _verify_fold(model, site, perm, x, masks, rtol)


def site_positions(model: nn.Module, site: Site, layout: str) -> tuple[int | None, str | None]:
    """Kernel positions K of the site's consumers when their k:n groups are channel groups, else (None,
    why): Linear and 1x1 conv always, a kxk conv only in the ``"channel"`` layout."""
    mods = dict(model.named_modules())
    K = None
    for name in site.consumers:
        mod = mods[name]
        if isinstance(mod, nn.Conv2d):
            kk = int(np.prod(mod.kernel_size))
            if kk > 1 and layout != "channel":
                return None, (
                    f"{name}: the k:n groups of a {mod.kernel_size} conv in the 'matrix' (im2col) layout run "
                    "across kernel positions, so a channel permutation does not form the groups "
                    "(use layout='channel')"
                )
            k_here = kk
        else:
            k_here = 1
        if K is not None and K != k_here:
            return None, "consumers with different kernel sizes"
        K = k_here
    return K, None
