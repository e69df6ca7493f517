"""Every run config under experiments/ is valid: a dry run (mpprune run CONFIG --dry-run) passes and
writes nothing; experiments/configs/ holds one config per row of the paper's tables; the configs the
READMEs name exist."""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from pathlib import Path

import pytest

from mpprune.cli import main
from mpprune.run import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").rglob("*.toml"))
ROWS = sorted((ROOT / "experiments" / "configs").glob("*.toml"))


def test_there_are_configs() -> None:
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in CONFIGS}
    assert {"mnist_cnn_seb_gate.toml", "efficientnet_lite0_spectra.toml",
            "small/vit_mnist_seb_kn_tome_distill.toml", "small/mnist_cnn_seb_kn_distill.toml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_config_dry_runs_and_writes_nothing(config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rows' checkpoints and ImageNet folders are missing here
        assert main(["run", str(config), "--dry-run", "--out", str(out), "--quiet", "--json", "-"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and set(plan["stages"]) == set(STAGES)
    assert plan["stages"]["load"] == "run" and plan["model"]["parameters"] > 0
    assert list(tmp_path.iterdir()) == []


# The rows of digest §4.1 (4), §4.2 (17, its first row being §4.1's Hybrid row) and §4.3 (21).
ROW_COUNTS = {"t41": 4, "t42": 16, "t43": 21}


def test_one_config_per_row_of_the_papers_tables() -> None:
    by_table: dict[str, list[Path]] = {}
    for p in ROWS:
        by_table.setdefault(p.name.split("_", 1)[0], []).append(p)
    assert {k: len(v) for k, v in by_table.items()} == ROW_COUNTS
    for p in ROWS:
        cfg = tomllib.loads(p.read_text())
        model, data = cfg["model"], cfg["data"]
        # a timm model from a local checkpoint file named after it, ImageNet train/val folders
        assert model["checkpoint"] == f"data/checkpoints/{model['name']}.safetensors", p.name
        assert (data["calib"], data["eval"]) == ("data/imagenet/train", "data/imagenet/val"), p.name
        assert "distill" in cfg, p.name
        table = p.name[:3]
        if table in ("t41", "t42"):
            assert "kn" not in cfg and "tome" not in cfg, p.name
        else:
            assert "kn" in cfg and cfg.get("tome", {}).get("r", 8) == 8, p.name
            assert ("method" in cfg) == ("dense" not in p.name), p.name  # dense source: no [method]
        assert f"mpprune run experiments/configs/{p.name}" in p.read_text(), p.name


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
