"""The ``mpprune`` command line: help, end-to-end prune/analyze/run, exit code 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpprune.checkpoint import load_pruned
from mpprune.cli import main
from mpprune.io import sha256_file
from mpprune.models import build_model, default_checkpoint, model_spec, tiny_mlp
from mpprune.run import STAGES

COMMANDS = ("analyze", "prune", "run", "bench", "demo")


def _tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.mark.parametrize("cmd", [None, *COMMANDS])
def test_help_exits_zero(cmd: str | None, capsys) -> None:
    argv = ["--help"] if cmd is None else [cmd, "--help"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "usage: mpprune" in text
    if cmd is not None:
        assert cmd in text
    # every command documents the three kinds of failure and their exit codes
    assert "exit codes: 0 success; 2 bad input" in " ".join(text.split())


def test_usage_error_exits_two(capsys) -> None:
    assert main(["prune", "--model", "tiny-mlp"]) == 2  # missing --method/--out
    assert main(["frobnicate"]) == 2
    assert "usage" in capsys.readouterr().err


def test_prune_tiny_mlp_end_to_end(tmp_path: Path) -> None:
    from mpprune.data import sklearn_digits

    out = tmp_path / "p"
    summary = tmp_path / "summary.json"
    rc = main(["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", "0.5", "--calib",
               "digits", "--n-calib", "100", "--out", str(out), "--json", str(summary), "--quiet"])
    assert rc == 0
    assert _tree(out) == ["manifest.json", "masks.safetensors", "model.safetensors", "prune_report.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    model, masks, man = load_pruned(out)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in lin)
    total = sum(m.weight.numel() for m in lin)
    assert zeros == int(0.5 * total)
    rep = json.loads(summary.read_text())
    assert rep["global_sparsity"] == pytest.approx(zeros / total)
    # accuracy reported by the CLI equals an independent evaluation of the saved model
    val = sklearn_digits("val")
    xs = torch.stack([val[i][0] for i in range(len(val))])
    ys = torch.tensor([int(val[i][1]) for i in range(len(val))])
    with torch.no_grad():
        acc = float((model(xs).argmax(1) == ys).float().mean())
    assert rep["evaluation"]["accuracy_pruned"] == pytest.approx(acc)
    assert man["config"]["data"]["calib"] == "digits" and man["config"]["method"]["type"] == "Magnitude"


def test_prune_mnist_cnn_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "mnist"
    argv = ["prune", "--model", "mnist-cnn", "--method", "seb", "--sparsity", "0.5", "--calib", "mnist",
            "--n-calib", "64", "--out", str(out), "--json", str(tmp_path / "s.json"), "--quiet"]
    assert main(argv) == 0
    model, masks, man = load_pruned(out)
    rep = json.loads((tmp_path / "s.json").read_text())
    ev = rep["evaluation"]
    assert ev["n"] == 1000 and ev["accuracy_dense"] > 0.9  # the real trained CNN on real val digits
    assert man["inputs"][0]["sha256"] == sha256_file(default_checkpoint(model_spec("mnist-cnn")))
    assert man["sparsity"]["global"] == pytest.approx(sum(
        int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ) / sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))))


def test_prune_with_gate_saves_certified_layers(tmp_path: Path) -> None:
    pytest.importorskip("mpprune.certify")
    out = tmp_path / "g"
    rc = main(["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", "0.3", "--calib",
               "digits", "--n-calib", "16", "--gate", "min_certified=0.5,estimator=product_norm,max_bisect=2",
               "--out", str(out), "--json", str(tmp_path / "s.json"), "--quiet", "--no-eval"])
    assert rc == 0
    model, _, man = load_pruned(out)
    layers = json.loads((tmp_path / "s.json").read_text())["gate_layers"]
    assert {g["name"] for g in layers} == {"0", "2"}
    mods = dict(model.named_modules())
    for g in layers:
        w = mods[g["name"]].weight.detach()
        # the saved weights carry exactly the sparsity the gate settled on ...
        assert g["sparsity_final"] == pytest.approx(float((w == 0).sum()) / w.numel())
        # ... and a layer the gate kept pruned meets the rule with a sound estimator
        if g["status"] in ("passed", "backed_off"):
            assert g["certified_fraction"] >= 0.5 and g["sound"] is True
    assert man["certificate"] is not None and man["config"]["gate"]["min_certified"] == 0.5


def test_analyze_writes_reports(tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert main(["analyze", "--model", "tiny-cnn", "--out", str(out), "--quiet"]) == 0
    assert _tree(out) == ["spectrum.json", "spectrum.md", "spectrum.png"]
    rep = json.loads((out / "spectrum.json").read_text())
    model = build_model(model_spec("tiny-cnn"))
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert len(rep["layers"]) == n_layers


def _assert_bad(argv: list[str], capsys, match: str, out: Path, root: Path) -> None:
    before = _tree(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not out.exists()
    assert _tree(root) == before  # nothing written, no staging directory left


def test_bad_inputs_exit_two_and_write_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    base = ["prune", "--method", "magnitude", "--sparsity", "0.5", "--out", str(out), "--quiet"]
    # missing checkpoint
    _assert_bad([*base, "--model", "mnist-cnn", "--checkpoint", str(tmp_path / "nope.pth")],
                capsys, "does not exist", out, tmp_path)
    # NaN weights
    m = tiny_mlp()
    with torch.no_grad():
        m[2].weight[1, 3] = float("nan")
    ck = tmp_path / "ck" / "nan.pt"
    ck.parent.mkdir()
    torch.save(m.state_dict(), ck)
    _assert_bad([*base, "--model", "tiny-mlp", "--checkpoint", str(ck)], capsys, "NaN", out, tmp_path)
    # empty calibration folder (no class folders / no images)
    empty = tmp_path / "train_imgs"
    (empty / "cls0").mkdir(parents=True)
    _assert_bad([*base, "--model", "mnist-cnn", "--calib", str(empty)], capsys, "error", out, tmp_path)
    # validation split as calibration data
    val = tmp_path / "val"
    val.mkdir()
    _assert_bad([*base, "--model", "mnist-cnn", "--calib", str(val)], capsys, "training split", out,
                tmp_path)
    # output where the input checkpoint lives
    good = tmp_path / "ck" / "good.pt"
    torch.save(tiny_mlp().state_dict(), good)
    bad_out = ["prune", "--method", "magnitude", "--sparsity", "0.5", "--model", "tiny-mlp", "--checkpoint",
               str(good), "--out", str(good.parent), "--quiet"]
    before = _tree(tmp_path)
    assert main(bad_out) == 2
    assert "input checkpoint" in capsys.readouterr().err
    assert _tree(tmp_path) == before
    # bad sparsity, bad gate, unknown model
    _assert_bad([*base[:4], "1.5", *base[5:], "--model", "tiny-mlp"], capsys, "sparsity", out, tmp_path)
    _assert_bad([*base, "--model", "tiny-mlp", "--calib", "digits", "--gate", "min_certified"], capsys,
                "key=value", out, tmp_path)
    _assert_bad([*base, "--model", "no-such-model-xyz"], capsys, "unknown model", out, tmp_path)


def test_existing_output_is_not_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", "0.5", "--out",
               str(out), "--quiet"])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert _tree(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_run_command_with_json_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"out": str(tmp_path / "r"), "analyze": False, "model": {"name": "tiny-mlp"},
                               "method": {"name": "magnitude", "sparsity": 0.25},
                               "data": {"calib": "digits", "n_calib": 50}}))
    assert main(["run", str(cfg), "--quiet", "--json", str(tmp_path / "state.json")]) == 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed"] == list(STAGES)
    _, masks, _ = load_pruned(tmp_path / "r" / "model")
    sd = masks.to_state_dict()
    assert sum(int((~m).sum()) for m in sd.values()) == int(0.25 * sum(m.numel() for m in sd.values()))
    assert main(["run", str(tmp_path / "missing.toml"), "--quiet"]) == 2


def test_prune_and_run_are_one_code_path(tmp_path: Path) -> None:
    """`mpprune prune FLAGS` and `mpprune run CONFIG` with the same settings write the same pruned model."""
    pytest.importorskip("mpprune.certify")
    gate = "min_certified=0.5,estimator=product_norm,max_bisect=2"
    flags = ["--model", "tiny-mlp", "--method", "seb", "--sparsity", "0.6", "--calib", "digits",
             "--n-calib", "24", "--batch-size", "8", "--seed", "3", "--gate", gate]
    assert main(["prune", *flags, "--out", str(tmp_path / "p"), "--quiet"]) == 0
    cfg = tmp_path / "same.toml"
    cfg.write_text(
        'analyze = false\n[model]\nname = "tiny-mlp"\n[method]\nname = "seb"\nsparsity = 0.6\n'
        '[data]\ncalib = "digits"\nn_calib = 24\nbatch_size = 8\nseed = 3\n'
        '[gate]\nmin_certified = 0.5\nestimator = "product_norm"\nmax_bisect = 2\n'
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    a, ma, man_a = load_pruned(tmp_path / "p")
    b, mb, man_b = load_pruned(tmp_path / "r" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(ma[k], mb[k]) for k in ma.to_state_dict())
    assert man_a["report"]["layers"] == man_b["report"]["layers"]
    # ... and the model is really pruned, behind the gate (the comparison could fail)
    dense = build_model(model_spec("tiny-mlp"))
    assert not torch.equal(dense[2].weight, a[2].weight) and int((a[2].weight == 0).sum()) > 0
    assert {g["status"] for g in man_a["certificate"]["layers"]} <= {"passed", "backed_off", "left_dense"}
    assert man_a["config"]["method"]["type"] == "SEB" and man_b["config"]["method"]["name"] == "seb"


class _NotHere(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "code", "said"),
    [
        ("limit", 3, "refused (LimitExceeded): probe budget of 7 exceeded"),
        ("refusal", 3, "refused (_CustomRefusal): tail not piecewise linear"),
        ("bad", 2, "error: layer '0' is odd"),
        ("stray", 1, "internal error: ValueError: math domain error"),
        ("other", 1, "internal error: _NotHere"),
    ],
)
def test_exit_code_follows_the_kind_of_error(tmp_path: Path, capsys, monkeypatch, exc, code, said) -> None:
    """Failures are told apart by base class: refusals and limits exit 3, bad input 2, anything else
    (a stray ValueError included) 1 as an internal error; nothing is written in every case."""
    from mpprune import run as R
    from mpprune.errors import BadInput, LimitExceeded, Refusal

    class _CustomRefusal(Refusal):  # e.g. the certifier's NotPiecewiseLinear
        pass

    errors = {"limit": LimitExceeded("probe budget of 7 exceeded"),
              "refusal": _CustomRefusal("tail not piecewise linear"),
              "bad": BadInput("layer '0' is odd"), "stray": ValueError("math domain error"),
              "other": _NotHere("?")}

    def boom(r):
        raise errors[exc]

    monkeypatch.setitem(R.STAGE_FUNCTIONS, "prune", boom)
    out = tmp_path / "o"
    rc = main(["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", "0.5",
               "--out", str(out), "--quiet"])
    assert rc == code
    assert said in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_run_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'out = "{tmp_path / "never"}"\n[model]\nname = "tiny-mlp"\n'
                   '[method]\nname = "magnitude"\nsparsity = 0.5\n')
    before = _tree(tmp_path)
    assert main(["run", str(cfg), "--dry-run", "--json", "-"]) == 0
    text = capsys.readouterr().out
    plan = json.loads(text[text.index("{"):])
    assert plan["dry_run"] is True and plan["stages"]["prune"] == "run"
    assert plan["stages"]["certify"] == "skip: no calibration data in the config"
    assert _tree(tmp_path) == before
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\n[model]\nname = "tiny-mlp"\n'
                   '[method]\nname = "seb"\nsparsity = 0.5\nbeta = 1\n')
    assert main(["run", str(bad), "--dry-run", "--quiet"]) == 2
    assert "allowed:" in capsys.readouterr().err


def test_unreadable_checkpoint_is_bad_input(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "ck" / "junk.pt"
    junk.parent.mkdir()
    junk.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "o"
    for cmd in (["prune", "--method", "magnitude", "--sparsity", "0.5"], ["analyze"]):
        rc = main([*cmd, "--model", "tiny-mlp", "--checkpoint", str(junk), "--out", str(out), "--quiet"])
        assert rc == 2
        assert "cannot load the checkpoint" in capsys.readouterr().err
    assert _tree(tmp_path) == ["ck", "ck/junk.pt"]


# ------------------------------------------------------------------------------- bench --speed (audit)
def _pruned_tiny(tmp_path: Path, sparsity: str = "0.9") -> Path:
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", sparsity,
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_bench_speed_audits_a_pruned_checkpoint(tmp_path):
    ck = _pruned_tiny(tmp_path)
    target = tmp_path / "ledger.json"
    rc = main(["bench", "--speed", str(ck), "--input-shape", "64", "--batch-sizes", "1", "3",
               "--threads", "1", "--rounds", "1", "--json", str(target), "--quiet"])
    assert rc == 0
    doc = json.loads(target.read_text())
    assert doc["kind"] == "mpprune.sparse_exec.SpeedLedger" and doc["path"] == "cpu"
    assert doc["environment"]["threads"] == 1 and doc["audit"] == str(ck)
    assert [row["batch"] for row in doc["model"]] == [1, 3]
    model, _, _ = load_pruned(ck)
    pruned = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if n.endswith("weight")}
    assert {row["name"] for row in doc["layers"]} <= pruned and doc["layers"]
    for row in doc["layers"]:  # the ledger's sparsity is the checkpoint's, measured from its tensors
        w = model.get_submodule(row["name"]).weight
        assert row["sparsity"] == pytest.approx(float((w == 0).float().mean()), abs=1e-6)
    for row in doc["model"]:  # the speed-up is the ratio of the medians it reports
        if row["sparse"] is not None:
            assert row["speedup"] == pytest.approx(row["dense"]["median"] / row["sparse"]["median"])


@pytest.mark.parametrize("extra, named", [
    ([], "--input-shape"),  # tiny-mlp declares no input size
    (["--input-shape", "0"], "--input-shape"),
    (["--input-shape", "64", "--batch-sizes", "0"], "--batch-sizes"),
    (["--input-shape", "64", "--threads", "0"], "--threads"),
])
def test_bench_speed_bad_input_writes_nothing(tmp_path, capsys, extra, named):
    ck = _pruned_tiny(tmp_path)
    target = tmp_path / "ledger.json"
    capsys.readouterr()
    assert main(["bench", "--speed", str(ck), "--json", str(target), "--quiet", *extra]) == 2
    assert not target.exists()
    assert named in capsys.readouterr().err


def test_bench_speed_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    assert main(["bench", "--speed", str(tmp_path / "missing"), "--input-shape", "64", "--quiet"]) == 2


def test_prune_passes_method_options_to_nm(tmp_path):
    out = tmp_path / "nm"
    assert main(["prune", "--model", "tiny-mlp", "--method", "nm", "--method-options",
                 "pattern=1:4,cost=magnitude,skip=head+", "--out", str(out), "--quiet", "--no-eval"]) == 0
    model, _, manifest = load_pruned(out)
    w = model[0].weight.detach()  # the first Linear (64 inputs) is projected, the head is skipped
    assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) == 1
    assert torch.count_nonzero(model[2].weight) == model[2].weight.numel()


@pytest.mark.parametrize("spec, named", [("pattern=4:3", "pattern"), ("bogus=1", "bogus"),
                                         ("sparsity=0.5", "--sparsity"), ("pattern", "key=value")])
def test_prune_method_options_bad_input(tmp_path, capsys, spec, named):
    out = tmp_path / "nm"
    assert main(["prune", "--model", "tiny-mlp", "--method", "nm", "--method-options", spec,
                 "--out", str(out), "--quiet", "--no-eval"]) == 2
    assert not out.exists() and named in capsys.readouterr().err
