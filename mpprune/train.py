"""The shared pieces of training: recipe, optimiser groups, schedule, seeding, DDP, checkpoint and resume.

:func:`fit` is the one training loop (``mpprune.distill`` and ``mpprune.vit_mnist`` give it their loss):

* **Recipe** (:class:`Recipe`): epochs, *global* batch size, AdamW or SGD (Nesterov momentum), learning
  rate, weight decay, linear warm-up then cosine to 0 (:func:`warmup_cosine`), seed.
* **Parameter groups** (:func:`param_groups`): no weight decay on biases, normalisation weights (every
  parameter with fewer than two dimensions) and embeddings (``pos_embed``, ``cls_token``, ``dist_token``,
  ``reg_token``: :data:`NO_DECAY_NAMES`).
* **Frozen masks**: with a :class:`~mpprune.masks.MaskStore` the optimiser is wrapped by
  :meth:`MaskStore.enforce` (gradients of pruned entries zeroed before, weights and every optimiser state
  tensor of the weight's shape re-masked after every step), and :func:`~mpprune.masks.check_legal` runs
  before the first and after the last step.
* **Data order**: every epoch is a seeded permutation (``DistributedSampler(seed=recipe.seed)``, also with
  one process), cut into global batches of ``recipe.batch_size``; the incomplete last batch is dropped.
  With ``W`` processes each takes ``batch_size / W`` items of every global batch, so a global batch holds
  the same items whatever ``W`` is, and the gradient DDP averages is the one of the global batch.
* **Distributed** (:func:`dist_env`): under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
  initialised with gloo on CPU and nccl on CUDA, the model is wrapped in ``DistributedDataParallel`` and
  only rank 0 writes. BatchNorm statistics stay per process (no SyncBatchNorm).
* **Checkpoints** (:func:`save_train_state`, :func:`load_train_state`): every ``checkpoint_every`` steps
  and at the end, one file holding the model, optimiser and scheduler states, the step, and the random
  number generator states of every process (torch, CUDA, numpy, ``random``), written atomically
  (a temporary file in the same folder, fsync, rename: an interrupted write never leaves a file that looks
  complete). A fingerprint of the recipe, the parameters, the masks and the data size is stored with it;
  resuming from a checkpoint of another run is refused.
* **Exact resume**: a resumed run skips the batches its epoch has already seen (by index: nothing is
  loaded for them) and restores every generator, so on CPU with a data pipeline that draws its randomness
  from those generators (``num_workers=0``) it ends with bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from mpprune.errors import BadInput
from mpprune.masks import MaskStore, check_legal
from mptheory.io import atomic_write_bytes, jsonable

__all__ = [
    "OPTIMIZERS",
    "NO_DECAY_NAMES",
    "TRAIN_STATE_FORMAT",
    "Recipe",
    "DistEnv",
    "FitResult",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "param_groups",
    "make_optimizer",
    "warmup_cosine",
    "make_scheduler",
    "dist_env",
    "unwrap",
    "save_train_state",
    "load_train_state",
    "fit",
]

#: Optimisers a recipe may name.
OPTIMIZERS = ("adamw", "sgd")
#: Parameters (by the last component of their name) that get no weight decay, besides every 0-/1-D one.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token")
TRAIN_STATE_FORMAT = "mpprune-train-state"
TRAIN_STATE_VERSION = 1

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ recipe
@dataclass(frozen=True)
class Recipe:
    """How to train: the optimiser, the schedule and the data order.

    Attributes:
        epochs: passes over the training data.
        batch_size: the *global* batch (all processes together).
        optimizer: ``"adamw"`` or ``"sgd"`` (SGD with ``momentum``, Nesterov when ``nesterov``).
        lr: peak learning rate (reached at the end of the warm-up).
        weight_decay: decoupled (AdamW) or L2 (SGD) decay of the weights that take decay
            (:func:`param_groups`).
        warmup_steps: linear warm-up steps; clipped to half the run when the run is shorter
            (:meth:`warmup_for`).
        momentum, nesterov: SGD only.
        betas: AdamW only.
        max_steps: stop after this many optimiser steps (None: ``epochs`` full epochs); the schedule
            ends at the earlier of the two.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        seed: seeds the initial generators and the data order of every epoch.
    """

    epochs: int = 3
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 500
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    max_steps: int | None = None
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"recipe: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise BadInput(f"recipe: epochs must be an integer >= 1, got {self.epochs!r}")
        bs = self.batch_size
        if isinstance(bs, bool) or int(bs) != bs or bs < 1:
            raise BadInput(f"recipe: batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BadInput(f"recipe: lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BadInput(f"recipe: weight_decay must be >= 0, got {self.weight_decay!r}")
        if int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise BadInput(f"recipe: warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.max_steps is not None and (int(self.max_steps) != self.max_steps or self.max_steps < 1):
            raise BadInput(f"recipe: max_steps must be an integer >= 1 or None, got {self.max_steps!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise BadInput(f"recipe: grad_clip must be a positive number or None, got {self.grad_clip!r}")
        if not (0 <= self.momentum < 1):
            raise BadInput(f"recipe: momentum must lie in [0, 1), got {self.momentum!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise BadInput(f"recipe: betas must be two numbers in [0, 1), got {self.betas!r}")

    def total_steps(self, n_items: int) -> int:
        """Optimiser steps of the run on ``n_items`` training items (full global batches only)."""
        per_epoch = n_items // self.batch_size
        total = self.epochs * per_epoch
        return total if self.max_steps is None else min(total, int(self.max_steps))

    def warmup_for(self, total_steps: int) -> int:
        """The warm-up actually used: ``warmup_steps``, at most half of ``total_steps``."""
        return min(int(self.warmup_steps), total_steps // 2)

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **jsonable(dataclasses.asdict(self))}


def seed_everything(seed: int) -> None:
    """Seed ``torch`` (CPU and CUDA), ``numpy``'s global generator and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator that user code may draw from
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of torch (CPU and every CUDA device), numpy's global generator and ``random``, as
    plain values and tensors (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    rs = state["random"]
    random.setstate((rs[0], tuple(rs[1]), rs[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------ optimiser, schedule
def param_groups(
    model: nn.Module, weight_decay: float, no_decay_names: Sequence[str] = NO_DECAY_NAMES
) -> list[dict[str, Any]]:
    """Two optimiser groups of the trainable parameters: ``[{"params": decayed, "weight_decay": wd},
    {"params": rest, "weight_decay": 0.0}]``.

    No decay for every parameter with fewer than two dimensions (biases, LayerNorm/BatchNorm weights,
    LayerScale gammas) and for those whose last name component is in ``no_decay_names`` (position
    embeddings, class/distillation/register tokens). Each parameter appears once (shared ones too).
    """
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or name.rsplit(".", 1)[-1] in no_decay_names:
            rest.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": rest, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over :func:`param_groups` of ``model``, as ``recipe`` says."""
    groups = param_groups(model, recipe.weight_decay)
    if not any(g["params"] for g in groups):
        raise BadInput("the model has no trainable parameters")
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor of optimiser step ``step`` (0-based): linear warm-up ``(step+1)/warmup``
    over the first ``warmup_steps`` steps, then ``(1 + cos(pi t))/2`` with ``t`` going from 0 at the end
    of the warm-up to 1 at ``total_steps`` (the factor reaches 0 after the last step)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`warmup_cosine` (call ``.step()`` after every optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps)
    )


# ------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: ``rank`` of ``world_size`` (1: no process group), its ``device``, and
    the ``backend`` of the process group (None without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(device: str | torch.device | None = None) -> DistEnv:
    """This process's :class:`DistEnv`, initialising the process group under ``torchrun``.

    ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` come from the environment (``torchrun`` sets them); with a
    world size above 1 the default process group is initialised (unless it already is) with nccl when
    the device is CUDA and gloo otherwise. ``device`` defaults to ``cuda:LOCAL_RANK`` when CUDA is
    available, else the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistEnv(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    else:
        backend = str(dist.get_backend())
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev,
                   backend=backend)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; else ``model``."""
    inner = getattr(model, "module", None)
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) and isinstance(
        inner, nn.Module
    ):
        return inner
    return model


def _all_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


# ------------------------------------------------------------------------------------- checkpoints
def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state (a dict of tensors and plain values) atomically with ``torch.save``: the
    bytes go to a temporary file in the same folder, are fsynced and renamed onto ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInput(f"checkpoint folder {path.parent} does not exist")
    buf = io.BytesIO()
    torch.save({"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, **state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_train_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by :func:`save_train_state` (``weights_only`` unpickling).

    Raises BadInput for a file that is not a training state of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's bad input
        raise BadInput(f"cannot read training checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise BadInput(f"{path} is not an {TRAIN_STATE_FORMAT} file")
    if state.get("version") != TRAIN_STATE_VERSION:
        raise BadInput(
            f"{path}: training-state version {state.get('version')} (expected {TRAIN_STATE_VERSION})"
        )
    return state


def _fingerprint(model: nn.Module, masks: MaskStore | None, recipe: Recipe, n_items: int,
                 extra: dict[str, Any] | None) -> dict[str, Any]:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
    m = hashlib.sha256()
    if masks is not None:
        for name, _, mask in sorted(masks.entries(), key=lambda e: e[0]):  # a reloaded store's order varies
            m.update(name.encode())
            m.update(mask.detach().cpu().numpy().tobytes())
    return jsonable({
        "recipe": recipe.to_dict(),
        "parameters": h.hexdigest(),
        "masks": m.hexdigest() if masks is not None else None,
        "n_items": int(n_items),
        "extra": extra or {},
    })


# ------------------------------------------------------------------------------------------- loop
@dataclass
class FitResult:
    """What :func:`fit` did: ``steps`` optimiser steps of ``total_steps`` (``warmup_steps`` of warm-up),
    ``losses`` (the mean loss over all processes of every step this call ran), ``resumed_from`` (the
    step of the checkpoint it resumed from, or None), ``checkpoint`` (the last file written, or None),
    ``world_size``."""

    steps: int
    total_steps: int
    warmup_steps: int
    losses: list[float]
    resumed_from: int | None
    checkpoint: Path | None
    world_size: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "steps": self.steps, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
            "resumed_from": self.resumed_from, "checkpoint": self.checkpoint,
            "world_size": self.world_size, "final_loss": self.losses[-1] if self.losses else None,
            "mean_loss": float(np.mean(self.losses)) if self.losses else None,
        })


def _to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise BadInput("training data must yield (inputs, labels) pairs")
    x, y = batch[0], batch[1]
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _epoch_batches(sampler: DistributedSampler, epoch: int, per_rank: int, steps: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    batches = list(BatchSampler(sampler, per_rank, drop_last=True))
    return batches[:steps]


@contextmanager
def _enforced(masks: MaskStore | None, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    if masks is None:
        yield
        return
    masks.enforce(optimizer)
    try:
        yield
    finally:
        masks.remove()


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    recipe: Recipe,
    *,
    masks: MaskStore | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    fingerprint_extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` in place with ``loss_fn(model, inputs, labels) -> scalar loss``.

    Seeds torch, numpy's global generator and ``random`` with ``recipe.seed + rank`` first (or restores
    their states from the checkpoint), so dropout and random augmentations are reproducible.

    Args:
        model: the module to train (moved to ``device``; left in eval mode at the end).
        loss_fn: called with the (possibly DDP-wrapped) model and one per-process batch; the loss must
            be a mean over the batch, so that DDP's gradient average is the global batch's gradient.
        dataset: a map-style dataset of ``(input, label)`` from a training split (a dataset or the
            ``.dataset`` of a DataLoader; a ``.split`` other than ``"train"`` is refused).
        recipe: the :class:`Recipe`.
        masks: frozen masks of ``model``'s weights (bound by name to ``model``), enforced after every step.
        checkpoint: file of the training state, written every ``checkpoint_every`` steps and at the end;
            with ``resume`` an existing one is loaded and the run continues from its step.
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU (:func:`dist_env`).
        num_workers: DataLoader workers (exact resume needs 0 when the data pipeline draws random numbers).
        progress: a tqdm bar on rank 0.
        on_step: ``on_step(step, loss)`` after every optimiser step (and checkpoint), on every process.
        fingerprint_extra: further JSON values that must match for a checkpoint to be resumed.

    Raises:
        BadInput: a validation split, fewer items than one global batch, a global batch that the world
            size does not divide, masks that do not fit the model, a checkpoint of another run.
    """
    from tqdm.auto import tqdm

    from mpprune.data import require_train_split  # not at module level: mpprune.models imports this chain

    if isinstance(dataset, DataLoader):
        dataset = dataset.dataset
    require_train_split(dataset, "training data")
    try:
        n_items = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise BadInput("training data must be a map-style dataset (with len and indexing)") from exc
    if checkpoint_every is not None and (int(checkpoint_every) != checkpoint_every or checkpoint_every < 1):
        raise BadInput(f"checkpoint_every must be an integer >= 1 or None, got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint is None:
        raise BadInput("checkpoint_every needs a checkpoint file")
    env = dist_env(device)
    if recipe.batch_size % env.world_size:
        raise BadInput(
            f"global batch {recipe.batch_size} is not divisible by the world size {env.world_size}"
        )
    steps_per_epoch = n_items // recipe.batch_size
    if steps_per_epoch < 1:
        raise BadInput(f"{n_items} training items are fewer than one global batch of {recipe.batch_size}")
    total = recipe.total_steps(n_items)
    warmup = recipe.warmup_for(total)
    per_rank = recipe.batch_size // env.world_size

    model.to(env.device)
    bound = masks.bind(model) if masks is not None else None
    if bound is not None:
        check_legal(bound, model)
    fp = _fingerprint(model, bound, recipe, n_items, fingerprint_extra)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, total, warmup)
    seed_everything(recipe.seed + env.rank)

    step = 0
    resumed_from: int | None = None
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.exists():
        state = load_train_state(ckpt, map_location=env.device)
        if state.get("fingerprint") != fp:
            raise BadInput(
                f"training checkpoint {ckpt} belongs to another run (recipe, parameters, masks or data "
                "differ); remove it or pass resume=False"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = resumed_from = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
        else:
            warnings.warn(
                f"{ckpt} was written by {len(rngs)} processes, this run has {env.world_size}: random "
                "generators are re-seeded, the resumed run is not bit-identical", stacklevel=2,
            )
            seed_everything(recipe.seed + env.rank + 7919 * step)

    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=recipe.seed, drop_last=True
    )
    losses: list[float] = []
    written: Path | None = None

    def write(complete: bool) -> None:
        nonlocal written
        rng = [rng_state()]
        if env.distributed:
            gathered: list[Any] = [None] * env.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if env.is_main and ckpt is not None:
            written = save_train_state(ckpt, {
                "fingerprint": fp, "step": step, "complete": complete,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
            })
        if env.distributed:
            dist.barrier()

    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=not (progress and env.is_main))
    with _enforced(bound, optimizer):
        while step < total:
            epoch, done = divmod(step, steps_per_epoch)
            batches = _epoch_batches(sampler, epoch, per_rank, steps_per_epoch)[done:]
            batches = batches[: total - step]
            # its own generator: creating the iterator draws a worker seed, which must not come from
            # the global generator (a resumed run creates one more iterator than an uninterrupted run)
            gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
            loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                pin_memory=env.device.type == "cuda", generator=gen)
            net.train()
            for batch in loader:
                x, y = _to_device(batch, env.device)
                loss = loss_fn(net, x, y)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"{desc}: loss is {float(loss)} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                value = _all_mean(float(loss.detach()), env)
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if checkpoint_every is not None and step % checkpoint_every == 0 and step < total:
                    write(complete=False)
                if on_step is not None:
                    on_step(step, value)
    bar.close()
    if ckpt is not None and resumed_from != total:
        write(complete=True)
    elif ckpt is not None:
        written = ckpt
    model.eval()
    if bound is not None:
        check_legal(bound, model)
    return FitResult(steps=step, total_steps=total, warmup_steps=warmup, losses=losses,
                     resumed_from=resumed_from, checkpoint=written, world_size=env.world_size)
