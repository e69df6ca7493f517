"""The speed audit: per layer and whole model, the sparse path against dense in the same precision.

:func:`audit` converts a pruned model with the path its device has (the CPU CSR path, or the GPU 2:4
export), which times every eligible layer against the dense layer, and then times the whole model,
dense and converted, over a batch sweep. The :class:`SpeedLedger` it returns is JSON-ready
(:meth:`SpeedLedger.to_dict`, :meth:`SpeedLedger.write`) and carries the versions, device, dtype and
thread count of the measurement, the timer's settings, medians with interquartile ranges, and a plain
statement when the device has no sparse kernel at all (then nothing sparse is timed: the dense model is
the only model there is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpprune.sparse_exec.cpu import sparsify_for_cpu
from mpprune.sparse_exec.decision import Conversion
from mpprune.sparse_exec.semi_structured import SemiStructuredBackend, to_semi_structured
from mpprune.sparse_exec.timing import Timer, Timing, TorchTimer, _Table, environment, time_variants
from mptheory.errors import BadInput

__all__ = ["PATHS", "ModelTiming", "SpeedLedger", "audit", "batch_of"]

#: Sparse execution paths: ``"cpu"`` (CSR via MKL), ``"semi_structured"`` (torch 2:4 on CUDA).
PATHS = ("cpu", "semi_structured")


@dataclass
class ModelTiming:
    """Whole-model forward time at one batch size, dense and with the converted layers."""

    batch: int
    dense: Timing
    sparse: Timing | None

    @property
    def speedup(self) -> float | None:
        return None if self.sparse is None else self.dense.median / self.sparse.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "dense": self.dense.to_dict(),
            "sparse": None if self.sparse is None else self.sparse.to_dict(),
            "speedup": self.speedup,
        }


@dataclass
class SpeedLedger:
    """The audit's record (see the module docstring); :meth:`to_dict` is strict JSON after ``jsonable``."""

    conversion: Conversion
    model_rows: list[ModelTiming]
    environment: dict[str, Any]
    timer: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_available(self) -> bool:
        return self.conversion.kernel_available

    @property
    def note(self) -> str | None:
        """A plain statement of what could not be measured (no kernel, no layer converted), or None."""
        if self.conversion.note is not None:
            return self.conversion.note
        if not self.conversion.converted:
            return "no layer measured faster sparse than dense: the sparse model is the dense model"
        return None

    def to_dict(self) -> dict[str, Any]:
        conv = self.conversion.to_dict()
        return {
            "kind": "mpprune.sparse_exec.SpeedLedger",
            "environment": self.environment,
            "timer": self.timer,
            "settings": self.settings,
            "path": conv["path"],
            "backend": conv["backend"],
            "dtype": conv["dtype"],
            "baseline": f"dense {conv['dtype']} on {conv['device']}, same threads",
            "kernel_available": self.kernel_available,
            "note": self.note,
            "converted": conv["converted"],
            "min_speedup": conv["min_speedup"],
            "layers": conv["layers"],
            "model": [row.to_dict() for row in self.model_rows],
        }

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically; missing parent folders are created)."""
        from mptheory.io import atomic_write_json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_dict())

    def table(self) -> str:
        """The per-layer table, then the whole-model rows, then the note."""
        t = _Table(["batch", "dense ms (IQR)", "sparse ms (IQR)", "speedup"])
        for row in self.model_rows:
            t.add(
                row.batch,
                f"{row.dense.median * 1e3:.3f} ({row.dense.iqr * 1e3:.3f})",
                "-" if row.sparse is None else f"{row.sparse.median * 1e3:.3f} ({row.sparse.iqr * 1e3:.3f})",
                "-" if row.speedup is None else f"{row.speedup:.2f}x",
            )
        c, env = self.conversion, self.environment
        head = (
            f"{c.path} ({c.backend}), {c.dtype} vs dense {c.dtype}, "
            f"{env.get('threads')} thread(s), {env.get('device')}"
        )
        parts = [head, self.conversion.table(), "whole model:", t.render()]
        if self.note:
            parts.append(f"note: {self.note}")
        return "\n".join(parts)


def batch_of(example_input: torch.Tensor, batch: int) -> torch.Tensor:
    """A batch of ``batch`` inputs made by cycling through the rows of ``example_input``."""
    if batch < 1:
        raise BadInput(f"batch sizes must be >= 1, got {batch}")
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise BadInput(
            f"example_input needs a non-empty batch dimension, got shape {tuple(example_input.shape)}"
        )
    idx = torch.arange(batch, device=example_input.device) % example_input.shape[0]
    return example_input.index_select(0, idx).contiguous()


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def audit(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    path: str = "auto",
    dtype: torch.dtype | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    timer: Timer | None = None,
    min_speedup: float = 1.05,
    rounds: int = 2,
    backend: str | SemiStructuredBackend = "auto",
    max_density: float = 0.5,
) -> SpeedLedger:
    """Audit the speed of ``model``'s sparse execution against its dense self in the same precision.

    ``path="auto"`` picks ``"semi_structured"`` (2:4, ``dtype`` default bfloat16) for a model on CUDA and
    ``"cpu"`` (CSR, ``dtype`` default the model's) otherwise. The per-layer decisions are those of
    :func:`~mpprune.sparse_exec.sparsify_for_cpu` / :func:`~mpprune.sparse_exec.to_semi_structured` at the
    batch of ``example_input``; the whole model is then timed dense and converted at every batch size in
    ``batch_sizes`` (inputs cycled from ``example_input``). ``model`` is not modified.
    """
    if path not in ("auto", *PATHS):
        raise BadInput(f"unknown sparse path {path!r}; known: auto, {', '.join(PATHS)}")
    if not batch_sizes:
        raise BadInput("batch_sizes must name at least one batch size")
    device = _model_device(model)
    chosen = path if path != "auto" else ("semi_structured" if device.type == "cuda" else "cpu")
    model_dtype = next((p.dtype for p in model.parameters()), torch.float32)
    run_dtype = (
        dtype if dtype is not None else (torch.bfloat16 if chosen == "semi_structured" else model_dtype)
    )
    timer = timer if timer is not None else TorchTimer(threads=threads)
    n_threads = int(getattr(timer, "threads", None) or threads or torch.get_num_threads())
    dense = model if run_dtype == model_dtype else _cast_copy(model, run_dtype)
    x = example_input.to(device=device)
    if x.is_floating_point():
        x = x.to(run_dtype)
    if chosen == "cpu":
        conversion = sparsify_for_cpu(
            dense,
            x,
            timer=timer,
            min_speedup=min_speedup,
            max_density=max_density,
            rounds=rounds,
            threads=threads,
        )
    else:
        conversion = to_semi_structured(
            dense, x, dtype=run_dtype, backend=backend, timer=timer, min_speedup=min_speedup, rounds=rounds
        )
    rows = [_time_model(timer, dense, conversion, batch_of(x, int(b)), rounds) for b in batch_sizes]
    return SpeedLedger(
        conversion=conversion,
        model_rows=rows,
        environment=environment(device, n_threads),
        timer=timer.to_dict() if hasattr(timer, "to_dict") else {"timer": type(timer).__name__},
        settings={
            "path": chosen,
            "batch_sizes": [int(b) for b in batch_sizes],
            "example_batch": int(x.shape[0]) if x.dim() else None,
            "input_shape": list(x.shape),
            "rounds": rounds,
            "max_density": max_density if chosen == "cpu" else None,
        },
    )


def _time_model(
    timer: Timer, dense: nn.Module, conversion: Conversion, xb: torch.Tensor, rounds: int
) -> ModelTiming:
    label = f"model[batch={xb.shape[0]}]"
    if not conversion.converted:
        t = time_variants(timer, label, [("dense", lambda: dense(xb))], rounds=1)
        return ModelTiming(int(xb.shape[0]), t["dense"], None)
    sparse = conversion.model
    t = time_variants(
        timer, label, [("dense", lambda: dense(xb)), ("sparse", lambda: sparse(xb))], rounds=rounds
    )
    return ModelTiming(int(xb.shape[0]), t["dense"], t["sparse"])


def _cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype=dtype)
