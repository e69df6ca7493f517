"""Publishing outputs, input checksums and provenance (DESIGN, "Checkpoints" and "Errors").

Every file goes through :mod:`mptheory.io` (strict JSON, atomic writes, staging directories). On top of
it this module holds the rules of ``mpprune``'s outputs:

* :func:`publish_files` writes a set of files as one unit: a new directory is assembled under a hidden
  temporary name and renamed into place; an existing directory gets each file replaced atomically, the
  last one (the manifest: the commit marker) last. A failure leaves nothing behind.
* :func:`staged_output` does the same for a command that writes its files one by one.
* **An input is never written over** (:func:`check_not_input`): an output may not be an input, lie inside
  an input directory, or be the directory where an input file lives; :func:`check_new_output` further
  refuses an existing non-empty output directory.
* :func:`input_record` is the sha256 checksum record of an input file or directory; :func:`provenance`
  the package versions and the git commit recorded in every manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mpprune.errors import BadInput
from mptheory.io import atomic_write_bytes, make_staging_dir

__all__ = [
    "VERSIONED_PACKAGES",
    "sha256_file",
    "input_record",
    "check_not_input",
    "check_new_output",
    "publish_files",
    "staged_output",
    "versions",
    "git_commit",
    "provenance",
    "utc_now",
]

#: Packages whose versions every manifest records (with the Python version).
VERSIONED_PACKAGES = ("torch", "timm", "numpy", "safetensors", "mpprune")


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string, to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ checksums
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_record(path: str | Path) -> dict[str, Any]:
    """Checksum record of an input file, or of a directory (sha256 over sorted (relative path, sha256)).

    Raises FileNotFoundError when the input does not exist.
    """
    p = Path(path)
    if p.is_file():
        return {"path": str(p.resolve()), "kind": "file", "size": p.stat().st_size, "sha256": sha256_file(p)}
    if p.is_dir():
        h = hashlib.sha256()
        n = 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
            n += 1
        return {"path": str(p.resolve()), "kind": "directory", "files": n, "sha256": h.hexdigest()}
    raise FileNotFoundError(f"input {p} does not exist")


# --------------------------------------------------------------------------------- input protection
def check_not_input(out_dir: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse (:class:`BadInput`) an output that is an input, lies inside an input directory, or is the
    directory where an input file lives: an input is never overwritten."""
    out = Path(out_dir).resolve()
    for inp in inputs:
        ip = Path(inp).resolve()
        if ip == out:
            raise BadInput(f"refusing to write to {out_dir}: it is an input ({inp})")
        if ip.is_file():
            if ip.parent == out:
                raise BadInput(
                    f"refusing to write to {out_dir}: the input checkpoint {inp} lives there "
                    "(an input is never overwritten; choose another output directory)"
                )
        elif ip.is_dir() and (ip in out.parents):
            raise BadInput(f"refusing to write to {out_dir}: it lies inside the input directory {inp}")


def check_new_output(out: str | Path, inputs: Sequence[str | Path] = ()) -> None:
    """:func:`check_not_input`, and refuse an existing output that is not an empty directory."""
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"output {out} already exists and is not an empty directory (nothing overwritten)")


# ------------------------------------------------------------------------------------------ publish
def publish_files(out_dir: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name → bytes, in order: the last one is the commit marker) into ``out_dir``.

    A new directory is assembled in a hidden sibling and renamed into place, so it appears complete or
    not at all; an existing directory has each file replaced atomically, in order.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a directory")
    if not out.exists():
        staging = make_staging_dir(out)
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
    return out


@contextlib.contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """A hidden staging directory next to ``out`` that is renamed onto ``out`` when the block succeeds
    (``out`` may exist only as an empty directory, see :func:`check_new_output`) and removed when it
    fails: the output appears complete or not at all."""
    out = Path(out)
    staging = make_staging_dir(out)
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty, checked by check_new_output
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------- provenance
def versions() -> dict[str, str | None]:
    """``{"python": ..., package: version or None}`` for :data:`VERSIONED_PACKAGES`."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the repository holding this package, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status)} if commit else None


def provenance() -> dict[str, Any]:
    """``{"versions": versions(), "git": git_commit()}``: what every manifest records."""
    return {"versions": versions(), "git": git_commit()}
