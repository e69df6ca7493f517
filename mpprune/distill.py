"""Frozen-mask distillation (digest §3.12) and BatchNorm re-estimation, each its own step.

:func:`distill` fine-tunes a pruned student against its dense teacher with

    loss = (1 − α)·CE_ls(student, y) + α·τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ))

(α = 0.5, τ = 2, label smoothing 0.1 by default: :class:`DistillRecipe`), AdamW or SGD with warm-up then
cosine decay to 0 and no weight decay on biases, norms and embeddings (:mod:`mpprune.train`). The masks
are enforced through every optimiser step by :meth:`MaskStore.enforce` (pruned gradients zeroed before
the step; weights, momentum and Adam moments re-masked after it), so a k:n-legal mask stays legal and
the student leaves with exactly its pruned entries at zero. Permutations are folded into the weights
(DESIGN), so nothing more is needed for them. A ToMe-patched student (:func:`mpprune.tome.apply_tome`)
trains as it runs.

Distributed: run the same script under ``torchrun --nproc_per_node N``; :func:`mpprune.train.fit`
initialises the process group (gloo on CPU, nccl on CUDA), shards every global batch of
``recipe.batch_size`` over the processes and wraps the student in ``DistributedDataParallel``; the
teacher runs unwrapped on each process's share. Checkpoints every N steps, exact resume and progress bars
come from :func:`mpprune.train.fit`.

:func:`reestimate_batchnorm` recomputes BatchNorm running statistics on training data (torch's
``update_bn``: cumulative averages over the batches), averaged over processes under ``torchrun``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mpprune.data import require_train_split
from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.train import FitResult, Recipe, fit
from mptheory.io import jsonable

__all__ = [
    "DistillRecipe",
    "DistillResult",
    "distill_loss",
    "distill",
    "reestimate_batchnorm",
]


@dataclass(frozen=True)
class DistillRecipe(Recipe):
    """A :class:`~mpprune.train.Recipe` plus the loss: ``alpha`` (weight of the distillation term),
    ``tau`` (temperature), ``label_smoothing`` of the cross-entropy. Defaults: digest §3.12 (α = 0.5,
    τ = 2, smoothing 0.1, 3 epochs, AdamW 1e-4, weight decay 0.05, batch 256, 500 warm-up steps)."""

    alpha: float = 0.5
    tau: float = 2.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise BadInput(f"recipe: alpha must lie in [0, 1], got {self.alpha!r}")
        if not self.tau > 0:
            raise BadInput(f"recipe: tau must be > 0, got {self.tau!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BadInput(f"recipe: label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    tau: float = 2.0,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """``(1 − α)·CE_ls(s, y) + α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``, both terms means over the batch."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    log_s = F.log_softmax(student_logits / tau, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * tau * tau * kl


@dataclass
class DistillResult:
    """The distilled ``model`` (the student, trained in place, eval mode) and what :func:`fit` did."""

    model: nn.Module
    fit: FitResult

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self.fit.to_dict())


def _weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    masks: MaskStore | None,
    train_data: Dataset,
    recipe: DistillRecipe | None = None,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Distil ``teacher`` (dense, frozen, eval mode) into ``student`` (pruned; trained in place).

    Args:
        student: the pruned model (a ToMe-patched one too).
        teacher: the dense model; never updated (its outputs are computed without gradients).
        masks: the student's frozen masks (True = kept), bound by name to ``student``; None trains
            every weight.
        train_data: a map-style dataset of ``(input, label)`` from a TRAINING split.
        recipe: :class:`DistillRecipe` (default: the digest's).
        checkpoint, checkpoint_every, resume: the training state file, written every
            ``checkpoint_every`` steps and at the end; an existing one of the same run is resumed
            (bit-identical on CPU). The teacher's weights are part of the run's fingerprint.
        device, num_workers, progress, on_step: see :func:`mpprune.train.fit`.

    Returns a :class:`DistillResult`; the student's masked entries are exactly zero.
    """
    recipe = DistillRecipe() if recipe is None else recipe
    if not isinstance(recipe, DistillRecipe):
        raise BadInput(f"distill needs a DistillRecipe, got {type(recipe).__name__}")
    if teacher is student:
        raise BadInput("the teacher must be a separate (dense) model, not the student itself")
    require_train_split(train_data, "distillation data")
    fp_teacher = _weights_sha256(teacher)
    dev_holder: dict[str, torch.device] = {}

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if "device" not in dev_holder or dev_holder["device"] != x.device:
            teacher.to(x.device)
            dev_holder["device"] = x.device
        with torch.no_grad():
            t = teacher.eval()(x)
        return distill_loss(net(x), t, y, recipe.alpha, recipe.tau, recipe.label_smoothing)

    res = fit(
        student, loss_fn, train_data, recipe, masks=masks, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, device=device, num_workers=num_workers,
        progress=progress, desc="distill", on_step=on_step, fingerprint_extra={"teacher": fp_teacher},
    )
    return DistillResult(model=student, fit=res)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module,
    data: Iterable[Any],
    *,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> int:
    """Recompute the running mean and variance of every BatchNorm layer of ``model`` from ``data``.

    ``data`` is an iterable of input batches or ``(inputs, labels)`` pairs from a TRAINING split (a
    DataLoader, a list of batches); at most ``max_batches`` are used. The statistics are torch's
    ``update_bn`` cumulative averages over the batches; in a process group they are averaged over the
    processes (exact for equal batch counts). The model's train/eval mode is restored. Returns the number
    of BatchNorm layers re-estimated (0: the model has none and nothing is run).
    """
    from torch.optim.swa_utils import update_bn

    require_train_split(data, "BatchNorm re-estimation data")
    if max_batches is not None and max_batches < 1:
        raise BadInput(f"max_batches must be >= 1 or None, got {max_batches}")
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    batches = iter(data if max_batches is None else itertools.islice(data, max_batches))
    first = next(batches, None)
    if first is None:
        raise BadInput("BatchNorm re-estimation data yielded no batches")
    update_bn(itertools.chain([first], batches), model,
              device=torch.device(device) if device is not None else None)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf.div_(world)
    return len(bns)
