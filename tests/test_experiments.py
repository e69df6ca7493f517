"""Every run config under experiments/ is valid: a dry run (mpprune run CONFIG --dry-run) passes and
writes nothing; the configs the README names exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mpprune.cli import main
from mpprune.run import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.toml"))


def test_there_are_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"mnist_cnn_seb_gate.toml", "efficientnet_lite0_spectra.toml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_dry_runs_and_writes_nothing(config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", str(config), "--dry-run", "--out", str(out), "--quiet", "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and set(plan["stages"]) == set(STAGES)
    assert plan["stages"]["load"] == "run" and plan["model"]["parameters"] > 0
    assert list(tmp_path.iterdir()) == []


def test_readme_run_configs_exist() -> None:
    """Every `mpprune run X.toml` in the READMEs names a file of the repository."""
    for readme in (ROOT / "README.md", ROOT / "experiments" / "README.md"):
        named = re.findall(r"mpprune run (\S+\.toml)", readme.read_text())
        assert named, readme
        for rel in named:
            assert (ROOT / rel).is_file(), f"{readme.name} names {rel}, which does not exist"


def test_mnist_config_matches_the_prune_command() -> None:
    """The README's `mpprune prune` command and the MNIST config describe the same prune stage."""
    from mpprune.cli import build_parser, prune_config
    from mpprune.config import load_config

    args = build_parser().parse_args(
        ["prune", "--model", "mnist-cnn", "--method", "seb", "--sparsity", "0.5", "--calib", "mnist",
         "--gate", "min_certified=0.99", "--out", "unused"])
    flags = prune_config(args)
    cfg = load_config(ROOT / "experiments" / "mnist_cnn_seb_gate.toml")
    assert (flags.model, flags.method, flags.data, dict(flags.gate or {})) == (
        cfg.model, cfg.method, cfg.data, dict(cfg.gate or {}))
