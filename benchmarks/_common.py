"""Small helpers shared by the benchmark scripts (timing, quiet WeightWatcher, JSON output)."""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mptheory.io import atomic_write_json


def median_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def weightwatcher() -> Any:
    """Import WeightWatcher quietly (installed by the ``bench`` extra only); None when it is missing."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import weightwatcher as ww
    except ImportError:
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as strict JSON (non-finite numbers become ``null``), atomically, creating the
    parent directory; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(p, payload)
