"""Publishing outputs, input checksums and provenance (DESIGN, "Checkpoints" and "Errors").

Every file goes through :mod:`mptheory.io` (strict JSON, atomic writes), and every command follows the
output rule of :mod:`mptheory.cli` (re-exported here): each output path is validated before any work --
creatable, not an input, and new, an empty folder, or a previous output of the same command (a folder: of
the same configuration) -- a folder is assembled in a hidden staging folder and renamed into place at the
end, a file the command did not create is never replaced, and stale staging folders are cleaned on the next
run. On top of it this module holds ``mpprune``'s rules:

* **An input is never written over** (:func:`check_not_input`): an output may not be an input, lie inside
  an input directory, hold an input, or be the directory where an input file lives.
  :func:`check_output` and :func:`check_output_json` are the rule with the inputs added;
  :func:`check_new_output` refuses any existing non-empty output directory.
* :func:`publish_files` writes a set of files as one unit (assembled in a staging folder, then renamed into
  place, replacing a previous output as a whole); :func:`staged_output` does the same for a command that
  writes its files one by one. A failure leaves nothing behind.
* :func:`input_record` is the sha256 checksum record of an input file or directory; :func:`provenance`
  the package versions and the git commit recorded in every manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import platform
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from mpprune.errors import BadInput
from mptheory.cli import (
    OUTPUT_KEY,
    OutputDir,
    check_output_dir,
    check_output_file,
    clean_stale_staging,
    config_digest,
    ensure_parents,
    make_staging,
    output_record,
    publish_dir,
    read_output_record,
    remove_created,
)

__all__ = [
    "VERSIONED_PACKAGES",
    "sha256_file",
    "input_record",
    "check_not_input",
    "check_new_output",
    "check_output",
    "check_output_json",
    "OUTPUT_KEY",
    "OutputDir",
    "config_digest",
    "output_record",
    "read_output_record",
    "check_output_dir",
    "check_output_file",
    "make_staging",
    "clean_stale_staging",
    "ensure_parents",
    "remove_created",
    "publish_dir",
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
def check_not_input(out: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse (:class:`BadInput`) an output that is an input, lies inside an input directory, holds an input,
    or is the directory where an input file lives: an input is never overwritten (symbolic links resolved)."""
    o = Path(out).resolve()
    for inp in inputs:
        ip = Path(inp).resolve()
        if ip == o:
            raise BadInput(f"refusing to write to {out}: it is an input ({inp})")
        if ip.is_file() and ip.parent == o:
            raise BadInput(
                f"refusing to write to {out}: the input checkpoint {inp} lives there "
                "(an input is never overwritten; choose another output directory)"
            )
        if ip.is_dir() and ip in o.parents:
            raise BadInput(f"refusing to write to {out}: it lies inside the input directory {inp}")
        if o in ip.parents:
            raise BadInput(f"refusing to write to {out}: the input {inp} lies inside it")


def check_new_output(out: str | Path, inputs: Sequence[str | Path] = ()) -> None:
    """:func:`check_not_input`, and refuse an existing output that is not an empty directory."""
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"output {out} already exists and is not an empty directory (nothing overwritten)")


def check_output(
    out: str | Path,
    *,
    command: str,
    marker: str,
    config_sha256: str | None = None,
    inputs: Sequence[str | Path] = (),
    flag: str = "--out",
) -> OutputDir:
    """The output rule for a folder (:func:`mptheory.cli.check_output_dir`) with the inputs added
    (:func:`check_not_input`): validated before any work, :class:`BadInput` naming the reason."""
    check_not_input(out, inputs)
    return check_output_dir(out, command=command, marker=marker, config_sha256=config_sha256, flag=flag)


def check_output_json(
    path: str | Path | None,
    *,
    command: str,
    inputs: Sequence[str | Path] = (),
    outputs: Sequence[str | Path] = (),
    flag: str = "--json",
) -> Path | None:
    """The output rule for a JSON report file (:func:`mptheory.cli.check_output_file`; None and ``-``,
    standard output, give None): it may not be an input, lie inside an input directory, or lie inside one
    of the command's output folders ``outputs`` (which are published whole)."""
    target = check_output_file(path, command=command, flag=flag)
    if target is None:
        return None
    check_not_input(target, inputs)
    for o in outputs:
        if Path(o).resolve() in target.parents:
            raise BadInput(f"{flag} {path} lies inside the output folder {o}: write the report elsewhere")
    return target


# ------------------------------------------------------------------------------------------ publish
def publish_files(out_dir: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name → bytes) as the folder ``out_dir``, as one unit: they are assembled in a hidden
    staging folder next to it, which is renamed into place (:func:`mptheory.cli.publish_dir`; a previous
    output there, validated by the caller, is replaced as a whole). A failure leaves nothing behind."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"output {out} exists and is not a directory")
    created = ensure_parents(out)
    staging = make_staging(out)
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created)
        raise
    return out


@contextlib.contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """A hidden staging directory next to ``out`` that is renamed onto ``out`` when the block succeeds
    (:func:`mptheory.cli.publish_dir`: ``out`` new, empty, or a previous output validated by the caller) and
    removed when it fails, with any folder created above it: the output appears complete or not at all."""
    out = Path(out)
    created = ensure_parents(out)
    staging = make_staging(out)
    try:
        yield staging
        publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created)
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
