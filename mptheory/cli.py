"""Command line: ``mptheory verify`` (the claims registry) and ``mptheory figures`` (theory figures), and the
output rule every command that writes follows, in both packages.

``mptheory verify [--quick] [--json FILE] [--only ID ...] [--seed N]`` prints the verdict table, the
negative-control table and the symbolic section, writes ``{"claims": [...], ...}`` to FILE, and exits
3 ("refused") if any claim fails or any negative control is missed. ``mptheory figures --out DIR [--quick]``
writes the PNGs and ``DIR/manifest.json``. Exit codes follow :mod:`mptheory.errors` (0 success, 2 bad input
with nothing written, 3 refused, 1 internal error).

The output rule (:func:`check_output_file`, :func:`check_output_dir`, :func:`publish_dir`; ``mpprune.io``
adds its inputs to it): every output path is validated before any work -- it can be created, it is not an
input, and it is new, an empty folder, or a previous output of the same command (a folder: of the same
configuration), recognised by the :func:`output_record` its marker file holds; a folder is assembled in a
hidden staging folder and renamed into place at the end, a file written to a temporary file and renamed
(:mod:`mptheory.io`); a file the command did not create is never replaced; staging folders left by a killed
run are removed by the next run of the same target, others are named.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mptheory.errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED, BadInput, exit_code
from mptheory.io import atomic_write_json, jsonable

__all__ = [
    "build_parser",
    "format_table",
    "main",
    "OUTPUT_KEY",
    "OutputDir",
    "config_digest",
    "output_record",
    "read_output_record",
    "check_output_file",
    "check_output_dir",
    "make_staging",
    "clean_stale_staging",
    "ensure_parents",
    "remove_created",
    "publish_dir",
]

# ------------------------------------------------------------------------------------------------
# The output rule of every command that writes, in both packages (mpprune.io builds on these):
#
# 1. before any work, every output path is validated: it can be created (its folder exists, or its nearest
#    existing ancestor is a folder, and files can be created there), and it is new, an empty folder, or a
#    previous output of the same command -- a folder of the same configuration too -- recognised by the
#    record under OUTPUT_KEY in its marker file (an output of ours lists every entry it wrote);
# 2. a folder is assembled in a hidden staging folder next to it and published by a rename at the end (a
#    previous output is renamed aside first and removed once the new one is in place); a file is written
#    to a temporary file and renamed (mptheory.io);
# 3. a file the command did not create is never replaced;
# 4. staging folders of the same target left by a process that no longer runs are removed by the next
#    run; others (a live process, an older naming) are named to the user.
OUTPUT_KEY = "output"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.p(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
_TEMP_RE = re.compile(r"^\..+\.tmp$")
_MAX_RECORD_BYTES = 64 << 20


def config_digest(config: Any) -> str:
    """sha256 of the canonical strict JSON of ``config`` (sorted keys): "the same configuration"."""
    return hashlib.sha256(json.dumps(jsonable(config), sort_keys=True).encode()).hexdigest()


def output_record(command: str, config: Any = None, entries: Iterable[str] | None = None) -> dict[str, Any]:
    """The record a command stores under :data:`OUTPUT_KEY` in its marker file: ``command`` (e.g.
    ``"mptheory figures"``), the ``config_sha256`` of :func:`config_digest` and, for a folder, the sorted
    ``entries`` it wrote."""
    rec: dict[str, Any] = {"command": command}
    if config is not None:
        rec["config_sha256"] = config_digest(config)
    if entries is not None:
        rec["entries"] = sorted(set(entries))
    return rec


def read_output_record(path: str | Path) -> dict[str, Any] | None:
    """The :func:`output_record` in the JSON file ``path``, or None (absent, not JSON, no record)."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > _MAX_RECORD_BYTES:
            return None
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rec = doc.get(OUTPUT_KEY) if isinstance(doc, dict) else None
    return rec if isinstance(rec, dict) and isinstance(rec.get("command"), str) else None


def _probe_writable(folder: Path, where: str) -> None:
    """Refuse (:class:`BadInput`) a folder in which no file can be created (read-only, ``/proc``, ...)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise BadInput(f"{where}: cannot create files in {folder} ({exc.strerror or exc})") from exc


def check_output_file(path: str | Path | None, *, command: str, flag: str = "--json") -> Path | None:
    """Validate a file output before any work (``None`` and ``-``, standard output, give None).

    Its folder must exist and accept new files; an existing file is replaced only when it is a previous
    output of ``command`` (its JSON holds that :func:`output_record`). Returns the path to write, with
    symbolic links resolved. Raises :class:`BadInput` naming the flag and the reason.
    """
    if path is None or str(path) == "-":
        return None
    p = Path(path)
    where = f"{flag} {path}"
    parent = p.parent
    if not parent.is_dir():
        if parent.exists():
            raise BadInput(f"{where}: {parent} is not a folder")
        raise BadInput(f"{where}: folder {parent} does not exist")
    target = (parent.resolve() / p.name).resolve()
    if target.is_dir():
        raise BadInput(f"{where} is a folder")
    if target.exists():
        rec = read_output_record(target)
        if not target.is_file() or rec is None or rec["command"] != command:
            raise BadInput(f"{where} already exists and was not written by `{command}` "
                           "(nothing overwritten): remove it or choose another path")
    _probe_writable(target.parent, where)
    return target


@dataclass(frozen=True)
class OutputDir:
    """A validated folder output: its resolved ``path``; ``state`` ``"new"``, ``"empty"`` or
    ``"previous"`` (a previous output of the same command); the previous output's ``record``."""

    path: Path
    state: str
    record: dict[str, Any] | None = None


def _nearest_existing(p: Path) -> Path:
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            return q
    return Path(p.anchor or ".")


def check_output_dir(
    path: str | Path, *, command: str, marker: str, config_sha256: str | None = None, flag: str = "--out"
) -> OutputDir:
    """Validate a folder output before any work.

    A symbolic link is followed. The folder must be new (its nearest existing ancestor a folder that accepts
    new files), empty, or a previous output of ``command``: ``marker`` (a JSON file in it) holds that
    :func:`output_record` -- with ``config_sha256`` when given (None: any configuration) -- and the folder
    holds nothing else than the entries the record lists (hidden ``*.tmp`` temporaries aside). Raises
    :class:`BadInput` naming the flag and the reason.
    """
    where = f"{flag} {path}"
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise BadInput(f"{where} is a symbolic link to nothing ({os.readlink(p)})")
    if p.exists():
        p = p.resolve()
        if not p.is_dir():
            raise BadInput(f"{where} exists and is not a folder")
        _probe_writable(p.parent, where)  # publishing renames next to it
        entries = sorted(e.name for e in p.iterdir() if not _TEMP_RE.match(e.name))
        if not entries:
            return OutputDir(p, "empty")
        rec = read_output_record(p / marker)
        if rec is None and (p / marker).exists():
            raise BadInput(f"{where} already exists and is not an output of `{command}`: its {p / marker} "
                           "cannot be read as its record (another file, or a damaged one; nothing "
                           "overwritten): choose a new or empty folder, or remove this one if it is a "
                           "damaged output of yours")
        if rec is None or rec["command"] != command:
            what = "" if rec is None else f" (its {marker} records `{rec['command']}`)"
            raise BadInput(f"{where} already exists and is not empty, and is not an output of `{command}`"
                           f"{what} (nothing overwritten): choose a new or empty folder")
        if config_sha256 is not None and rec.get("config_sha256") != config_sha256:
            raise BadInput(f"{where} holds an output of `{command}` for a different configuration "
                           f"(recorded in {p / marker}; nothing overwritten): choose another folder")
        foreign = sorted(set(entries) - set(rec.get("entries") or ()) - {marker})
        if foreign:
            raise BadInput(f"{where} holds files that `{command}` did not write: {foreign[:5]} "
                           "(nothing overwritten): choose another folder")
        return OutputDir(p, "previous", rec)
    p = p.resolve()
    anchor = _nearest_existing(p.parent)
    if not anchor.is_dir():
        raise BadInput(f"{where}: cannot be created, {anchor} is not a folder")
    _probe_writable(anchor, where)
    return OutputDir(p, "new")


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def make_staging(target: str | Path) -> Path:
    """A new hidden folder next to ``target`` (whose parent must exist), named after the target and this
    process (``.NAME.pPID-XXXX.tmp``) so that a later run can tell a stale one from a live one."""
    target = Path(target)
    prefix = f".{target.name}.p{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is no mode for a published folder
    return staging


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(target: str | Path) -> list[Path]:
    """Remove the staging folders (and temporary files) of ``target`` left by processes that no longer run;
    return the temporaries kept (of a live process, or named the older way ``.NAME.XXXX.tmp``) so that the
    caller can name them."""
    target = Path(target)
    parent, prefix = target.parent, f".{target.name}."
    kept: list[Path] = []
    if not parent.is_dir():
        return kept
    for e in sorted(parent.iterdir()):
        if not (e.name.startswith(prefix) and e.name.endswith(".tmp")):
            continue
        m = _STAGING_RE.match(e.name)
        if m is not None and m["name"] == target.name:
            if not _alive(int(m["pid"])):
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e, ignore_errors=True)
                else:
                    e.unlink(missing_ok=True)
            elif int(m["pid"]) != os.getpid():
                kept.append(e)
        elif "." not in e.name[len(prefix):-len(".tmp")]:
            kept.append(e)
    return kept


def ensure_parents(target: str | Path) -> list[Path]:
    """Create the missing folders above ``target``; returns those created (outermost first), for
    :func:`remove_created`."""
    created = [q for q in reversed(Path(target).parents) if not q.exists()]
    for q in created:
        q.mkdir()
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove the folders :func:`ensure_parents` created, innermost first, where they are still empty."""
    for q in reversed(list(created)):
        with contextlib.suppress(OSError):
            q.rmdir()


def publish_dir(staging: str | Path, target: str | Path) -> Path:
    """Rename the complete ``staging`` folder onto ``target``: created, or replacing an empty folder, or --
    for a previous output of the same command, validated by :func:`check_output_dir` -- renaming the old
    folder aside first (restored if the second rename fails) and removing it after."""
    staging, target = Path(staging), Path(target)
    if target.is_dir() and any(target.iterdir()):
        aside = make_staging(target)
        try:
            os.replace(target, aside)
        except BaseException:
            aside.rmdir()
            raise
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if target.is_dir():  # an empty folder of the user's: the published one keeps its mode
            shutil.copymode(target, staging)
        os.replace(staging, target)
    return target



def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.3g}"


def format_table(result: object) -> str:
    """Readable text tables of a :class:`mptheory.claims.VerdictList`."""
    from mptheory.claims import VerdictList

    if not isinstance(result, VerdictList):
        raise TypeError(f"expected a VerdictList, got {type(result).__name__}")
    lines = [f"{'id':<5} {'kind':<13} {'evidence':<11} {'cases':>7} {'viol':>5} {'worst slack':>12} "
             f"{'med. tight':>10} {'secs':>6}  verdict", "-" * 88]
    for v in result:
        lines.append(f"{v.id:<5} {v.kind:<13} {str(v.details.get('evidence', '')):<11} {v.cases:>7} "
                     f"{v.violations:>5} {_fmt(v.worst_slack):>12} {_fmt(v.median_tightness):>10} "
                     f"{v.seconds:>6.1f}  {v.verdict.upper()}")
    if result.controls:
        lines += ["", "Negative controls (a wrong bound must be caught):",
                  f"{'control':<38} {'claim':<5} {'cases':>6} {'viol':>5}  status", "-" * 66]
        for c in result.controls:
            lines.append(f"{c.name:<38} {c.claim:<5} {c.cases:>6} {c.violations:>5}  {c.status.upper()}")
    if result.symbolic:
        lines += ["", "Symbolic checks (proofs_checks, sympy):"]
        for s in result.symbolic:
            claims = ",".join(s.details.get("claims", []))
            lines.append(f"{s.id:<28} {claims:<28} {s.seconds:>6.1f}s  {s.verdict.upper()}")
    n_fail = sum(v.verdict != "pass" for v in [*result, *result.symbolic])
    n_miss = sum(c.status != "caught" for c in result.controls)
    lines += ["", f"{len(result)} claims, {n_fail} failed; {len(result.controls)} controls, {n_miss} missed; "
                  f"{result.seconds:.1f} s ({'quick' if result.quick else 'full'}, seed {result.seed}) -> "
                  f"{'PASS' if result.passed else 'FAIL'}"]
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    from mptheory.claims import REGISTRY, verify

    ids = None
    if args.only:
        ids = [i.strip().upper() for part in args.only for i in part.split(",") if i.strip()]
        unknown = [i for i in ids if i not in REGISTRY]
        if unknown:
            raise BadInput(f"unknown claim id(s) {unknown}; known: {' '.join(REGISTRY)}")
    target = check_output_file(args.json, command="mptheory verify")  # before any work
    result = verify(ids, quick=args.quick, progress=not args.no_progress, seed=args.seed,
                    controls=not args.no_controls)
    print(format_table(result))
    if target is not None:
        options = {"only": ids, "quick": args.quick, "seed": args.seed, "controls": not args.no_controls}
        atomic_write_json(target, result.to_dict() | {OUTPUT_KEY: output_record("mptheory verify", options)})
        print(f"wrote {target}")
    return EXIT_OK if result.passed else EXIT_REFUSED


def _cmd_figures(args: argparse.Namespace) -> int:
    from mptheory.figures import make_all

    t0 = time.perf_counter()
    manifest = make_all(args.out, quick=args.quick, only=args.only)
    for entry in manifest["figures"]:
        print(f"{entry['file']:<32} {entry['title']}")
    print(f"wrote {len(manifest['figures'])} figures and {Path(args.out) / 'manifest.json'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mptheory",
        description="Numerical verification of the MP-pruning theorems (digest §2) and theory figures.",
        epilog=EXIT_CODES_HELP,
    )
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify", help="run the claims registry and print the verdict table",
        description="Check every registered claim (D1–D12, R1–R5, A1–A8, G1–G15): deterministic claims as "
                    "inequalities over ≥10⁴ generated cases (a few hundred with --quick), probabilistic "
                    "ones as Monte-Carlo frequencies within a binomial tolerance. Negative controls (wrong "
                    "bounds) must be caught. Exit code 3 if any claim fails or any control is missed.",
        epilog=EXIT_CODES_HELP)
    v.add_argument("--quick", action="store_true", help="small case counts (about a minute on 2 cores)")
    v.add_argument("--json", metavar="FILE", help="write the verdicts as JSON to FILE")
    v.add_argument("--only", nargs="+", metavar="ID", help="check only these claim ids (e.g. D1 R2 G14)")
    v.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    v.add_argument("--no-controls", action="store_true", help="skip the negative controls")
    v.add_argument("--no-progress", action="store_true", help="do not print per-claim progress to stderr")
    v.set_defaults(func=_cmd_verify)
    f = sub.add_parser(
        "figures", help="regenerate the theory figures and DIR/manifest.json",
        description="Write the theory figures (PNG, matplotlib Agg) and a manifest naming, for each file, "
                    "its title, the claim ids it illustrates and a caption.",
        epilog=EXIT_CODES_HELP)
    f.add_argument("--out", required=True, metavar="DIR", help="output directory")
    f.add_argument("--quick", action="store_true", help="smaller simulations (under two minutes)")
    f.add_argument("--only", nargs="+", metavar="NAME", help="make only these figures (by name)")
    f.set_defaults(func=_cmd_figures)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mptheory`` console script; returns the exit code of
    :func:`mptheory.errors.exit_code` (bad input 2, refused 3, internal error 1 with its traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # mapped to the three kinds of error
        code = exit_code(exc)
        if code == EXIT_INTERNAL:
            traceback.print_exc()
            print(f"mptheory {args.command}: internal error ({type(exc).__name__}); please report it "
                  "with the traceback above", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return code

if __name__ == "__main__":
    raise SystemExit(main())
