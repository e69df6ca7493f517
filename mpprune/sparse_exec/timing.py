"""Timing for the speed audit: medians and IQRs, paired dense/sparse rounds, an injectable timer.

A *timer* is any callable ``timer(fn, *, layer, variant) -> Timing``: it runs ``fn()`` (warm-up included)
and returns the per-call times it measured. ``layer`` names what is timed (a layer name, or
``"model[batch=8]"``) and ``variant`` which version of it (``"dense"``, ``"sparse"``,
``"sparse[tile=32]"``...), so a test can pass a fake timer that answers from a table without running
anything. The real one, :class:`TorchTimer`, is ``torch.utils.benchmark.Timer.blocked_autorange`` at a
fixed thread count (it synchronises CUDA and picks the number of calls per block).

Dense and sparse versions are timed in alternating rounds (:func:`time_variants`) so that a machine
whose load drifts during the measurement biases both the same way; the samples of all rounds are pooled.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

__all__ = [
    "Timing",
    "Timer",
    "TorchTimer",
    "time_variants",
    "environment",
]


@dataclass(frozen=True)
class Timing:
    """Per-call times in seconds (one sample per measured block), with median and interquartile range."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")
        if any(not (s > 0 and np.isfinite(s)) for s in self.samples):
            raise ValueError(f"timing samples must be positive and finite, got {self.samples}")

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def q1(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.samples, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def merged(self, other: Timing) -> Timing:
        """The pooled samples of two measurements of the same thing."""
        return Timing(self.samples + other.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr, "n": self.n}


class Timer(Protocol):
    """``timer(fn, *, layer, variant) -> Timing``: time ``fn()`` (see the module docstring)."""

    def __call__(self, fn: Callable[[], object], *, layer: str, variant: str) -> Timing: ...


@dataclass
class TorchTimer:
    """``torch.utils.benchmark.Timer`` at ``threads`` threads: ``warmup`` untimed calls, then
    ``blocked_autorange(min_run_time)``; each sample is the mean time of one call within a block.

    ``threads=None`` uses ``torch.get_num_threads()`` at construction.
    """

    threads: int | None = None
    min_run_time: float = 0.2
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.threads is None:
            self.threads = torch.get_num_threads()
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.min_run_time > 0:
            raise ValueError(f"min_run_time must be > 0, got {self.min_run_time}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def __call__(self, fn: Callable[[], object], *, layer: str, variant: str) -> Timing:
        from torch.utils import benchmark

        assert self.threads is not None
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            for _ in range(self.warmup):
                fn()
        finally:
            torch.set_num_threads(previous)
        timer = benchmark.Timer(
            stmt="fn()", globals={"fn": fn}, num_threads=self.threads, label=layer, description=variant
        )
        measurement = timer.blocked_autorange(min_run_time=self.min_run_time)
        return Timing(tuple(float(t) for t in measurement.times))

    def to_dict(self) -> dict[str, Any]:
        return {
            "timer": "torch.utils.benchmark.Timer.blocked_autorange",
            "threads": self.threads,
            "min_run_time_s": self.min_run_time,
            "warmup_calls": self.warmup,
        }


def time_variants(
    timer: Timer, layer: str, variants: Sequence[tuple[str, Callable[[], object]]], rounds: int = 2
) -> dict[str, Timing]:
    """Time each ``(variant, fn)`` of one layer in ``rounds`` alternating rounds, samples pooled."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out: dict[str, Timing] = {}
    for _ in range(rounds):
        for variant, fn in variants:
            t = timer(fn, layer=layer, variant=variant)
            out[variant] = out[variant].merged(t) if variant in out else t
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str, threads: int | None = None) -> dict[str, Any]:
    """Versions, device and thread count for a speed ledger."""
    import mpprune

    dev = torch.device(device)
    env: dict[str, Any] = {
        "device": str(dev),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch": torch.__version__,
        "mpprune": mpprune.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mkl": bool(torch.backends.mkl.is_available()),
        "cuda": torch.version.cuda,
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(dev)
        env["compute_capability"] = list(torch.cuda.get_device_capability(dev))
        env["cusparselt"] = bool(torch.backends.cusparselt.is_available())
    return env


@dataclass
class _Table:
    """Fixed-width text table (used by the ledger's and the benchmark's printouts)."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [self.header, *self.rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
