"""Strict JSON and atomic writes: the one way every command of both packages writes a file.

* :func:`jsonable` turns results into strict JSON values (non-finite floats become ``null``, never the
  invalid tokens ``NaN``/``Infinity``); :func:`dumps_json` serialises with ``allow_nan=False``.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` write a temporary
  file in the target's directory, fsync it and :func:`os.replace` it onto the target, so a reader never
  sees a half-written file and a crash leaves the previous file (or nothing) in place.
* :func:`make_staging_dir` makes a hidden sibling directory in which a multi-file output is assembled
  and then renamed into place.

``mpprune.io`` builds provenance and publishing rules on top of these; ``mptheory`` never imports
``mpprune``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "jsonable",
    "dumps_json",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "make_staging_dir",
]

_MAX_DEPTH = 40


def jsonable(obj: Any, _depth: int = 0) -> Any:
    """A strict-JSON version of ``obj``.

    Non-finite floats → ``None``; numpy and torch scalars and arrays → Python numbers and lists; ``Path``
    → ``str``; objects with a ``to_dict()`` method → that dict; dataclass instances → a dict of their
    fields; callables → their ``__name__``; anything else → ``repr``.
    """
    if _depth > _MAX_DEPTH:
        return repr(obj)
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, _depth + 1) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        detach = getattr(obj, "detach", None)
        value = detach().cpu().tolist() if callable(detach) else tolist()
        return jsonable(value, _depth + 1)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict) and not isinstance(obj, type):
        return jsonable(to_dict(), _depth + 1)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return jsonable({"type": type(obj).__name__, **fields}, _depth + 1)
    if callable(obj):
        return getattr(obj, "__name__", repr(obj))
    return repr(obj)


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of :func:`jsonable` ``(obj)`` (UTF-8 characters kept), ending in a newline."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, fsync, os.replace.

    The parent directory must exist (it is not created: a missing folder is the caller's bad input).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """:func:`atomic_write_text` of :func:`dumps_json` ``(obj)``."""
    return atomic_write_text(path, dumps_json(obj))


def make_staging_dir(target: str | Path) -> Path:
    """A fresh hidden directory next to ``target`` (same file system, so it can be renamed onto it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())
    return staging
