"""Issue 10: nothing of the user's is ever overwritten, nothing is written on a refusal, and validation data
is refused for what it is. One test (or a few) per numbered case of the issue; each asserts the exit code,
the message, and that the user's files are byte-identical afterwards (every file hashed before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mpprune import run as R
from mpprune.checkpoint import load_pruned, save_pruned
from mpprune.cli import main
from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.models import check_finite, default_checkpoint, model_spec, tiny_mlp
from mptheory import cli as mpt_cli

PRUNE = ["prune", "--model", "tiny-mlp", "--method", "magnitude", "--sparsity", "0.5", "--quiet"]


# --------------------------------------------------------------------------------------------- helpers
def _hashes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones included, symbolic links not followed): a file's sha256, a
    link's target, ``dir`` for a folder."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(argv: list[str], capsys, root: Path, code: int, *needles: str, cli=main) -> str:
    """Run ``cli(argv)``; assert its exit code, that stderr holds every needle and no traceback, and that
    nothing under ``root`` changed. Returns stderr."""
    capsys.readouterr()
    before = _hashes(root)
    assert cli(argv) == code
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    assert _hashes(root) == before
    return err


def _no_work(monkeypatch) -> None:
    """Make model building, claim verification and figure making fail loudly: a refusal must come first."""
    def boom(*_a, **_k):
        raise AssertionError("work started before the refusal")

    import mptheory.claims
    import mptheory.figures

    monkeypatch.setattr(R, "build_model", boom)
    monkeypatch.setattr("mpprune.models.build_model", boom)
    monkeypatch.setattr(mptheory.claims, "verify", boom)
    monkeypatch.setattr(mptheory.figures, "FIGURES", [])


def _images(root: Path, classes: dict[str, list[int]]) -> None:
    """An ImageFolder under ``root``: one folder per class, one 8x8 grey PNG per listed grey level."""
    from PIL import Image

    for cls, levels in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for level in levels:
            Image.new("L", (8, 8), level).save(root / cls / f"{level}.png")


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    """``imgs/{train,val}/{a,b}``: train grey levels 0..9 / 100..109, val 50..54 / 150..154 (distinct)."""
    _images(tmp_path / "imgs" / "train", {"a": list(range(10)), "b": list(range(100, 110))})
    _images(tmp_path / "imgs" / "val", {"a": list(range(50, 55)), "b": list(range(150, 155))})
    return tmp_path / "imgs"


def _dead_staging(target: Path) -> Path:
    """A staging folder of ``target`` made by a process that has exited: what a killed save leaves."""
    code = ("import sys; from mpprune.io import make_staging; s = make_staging(sys.argv[1]); "
            "(s / 'model.safetensors').write_bytes(b'half'); print(s)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]))
    out = subprocess.run([sys.executable, "-c", code, str(target)], check=True, capture_output=True,
                         text=True, env=env)
    return Path(out.stdout.strip())


def _run_config(tmp_path: Path, **extra) -> Path:
    cfg = {"model": {"name": "tiny-mlp"}, "method": {"name": "magnitude", "sparsity": 0.5},
           "analyze": False, "data": {"calib": "digits", "n_calib": 50}} | extra
    path = tmp_path / "cfg" / "run.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


# ---------------------------------------------------------------------------- 1. run over user files
@pytest.mark.parametrize("user_file", ["model/model.safetensors", "notes.txt", "state.json"])
def test_case_01_run_never_replaces_a_folder_it_did_not_write(tmp_path: Path, capsys, user_file) -> None:
    cfg = _run_config(tmp_path)
    d = tmp_path / "D"
    (d / user_file).parent.mkdir(parents=True, exist_ok=True)
    (d / user_file).write_bytes(b"the user's own bytes")
    for extra in ([], ["--no-resume"]):
        _refused(["run", str(cfg), "--out", str(d), "--quiet", *extra], capsys, tmp_path, 2,
                 f"--out {d}", "nothing overwritten")
    # the same folder once it holds a run of this config (and a user file next to it): still refused
    out = tmp_path / "ok"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    (out / "mine.txt").write_text("keep")
    _refused(["run", str(cfg), "--out", str(out), "--quiet", "--no-resume"], capsys, tmp_path, 2,
             "files that `mpprune run` did not write", "mine.txt")


def test_case_01_a_previous_run_of_the_same_config_is_resumed_or_started_over(tmp_path: Path) -> None:
    cfg = _run_config(tmp_path)
    out = tmp_path / "r"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert oct(out.stat().st_mode & 0o777) == oct((out / "model").stat().st_mode & 0o777)  # umask, not 0700
    first = _hashes(out / "model")
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0  # all stages done: nothing redone
    assert main(["run", str(cfg), "--out", str(out), "--quiet", "--no-resume"]) == 0  # started over
    assert _hashes(out / "model").keys() == first.keys()
    assert _hashes(out / "model")["model.safetensors"] == first["model.safetensors"]
    assert not [p for p in tmp_path.rglob(".*.tmp")]


# ------------------------------------------------------------------------------- 2. figures manifest
def test_case_02_figures_never_replace_a_manifest_they_did_not_write(tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    d = tmp_path / "D"
    d.mkdir()
    (d / "manifest.json").write_text('{"mine": true}\n')
    _no_work(monkeypatch)
    _refused(["figures", "--out", str(d), "--quick"], capsys, tmp_path, 2,
             "not an output of `mptheory figures`", "nothing overwritten", cli=mpt_cli.main)


def test_case_02_figures_replace_their_own_output_of_the_same_options_only(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    from mptheory import figures

    def tiny(out: Path, quick: bool = False) -> Path:
        (out / "tiny.png").write_bytes(b"\x89PNG tiny")
        return out / "tiny.png"

    spec = figures.FigureSpec("bbp_map", tiny, "t", "c")
    monkeypatch.setattr(figures, "FIGURES", [spec])
    out = tmp_path / "figs"
    assert mpt_cli.main(["figures", "--out", str(out), "--quick"]) == 0
    assert mpt_cli.main(["figures", "--out", str(out), "--quick"]) == 0  # its own output: replaced whole
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tiny.png"]
    _refused(["figures", "--out", str(out)], capsys, tmp_path, 2, "different configuration",
             cli=mpt_cli.main)
    (out / "user.txt").write_text("mine")
    _refused(["figures", "--out", str(out), "--quick"], capsys, tmp_path, 2, "did not write", "user.txt",
             cli=mpt_cli.main)
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------- 3. split discipline by content
def test_case_03_validation_data_is_refused_whatever_its_name(tmp_path: Path, imgs: Path, capsys,
                                                              monkeypatch) -> None:
    _no_work(monkeypatch)
    link = tmp_path / "calibration_images"
    link.symlink_to(imgs / "val")
    _images(tmp_path / "imagenet_val2012", {"a": [1], "b": [2]})
    (tmp_path / "holder").mkdir()
    _images(tmp_path / "holder" / "val", {"a": [3], "b": [4]})
    _images(tmp_path / "pool" / "train", {"a": [1, 2]})
    (tmp_path / "pool" / "train" / "a" / "dup.png").write_bytes((imgs / "val" / "b" / "150.png").read_bytes())
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes((imgs / "train" / "a" / "0.png").read_bytes())
    out = tmp_path / "out"
    cases = [
        (["--calib", str(link)], ["rule 'resolved path", "holds the word 'val'"]),
        (["--calib", str(tmp_path / "imagenet_val2012")], ["rule 'folder name'", "'val'"]),
        (["--calib", str(tmp_path / "holder")], ["split folder(s) ['val'] but no train/ folder",
                                                     "rule 'split layout'"]),
        (["--calib", str(imgs), "--eval", str(imgs / "train")], ["evaluation data must come from",
                                                                   "holds the word 'train'"]),
        (["--calib", str(tmp_path / "pool"), "--eval", str(imgs)], ["share 1 image(s) by content (sha256)",
                                                                      "dup.png"]),
        (["--calib", str(flat)], ["has no class subfolders", "rule 'class folders'"]),
    ]
    for flags, needles in cases:
        _refused([*PRUNE, *flags, "--n-calib", "4", "--out", str(out)], capsys, tmp_path, 2, *needles)
    assert not out.exists()


def test_case_03_the_manifest_records_resolved_paths_and_the_rule(tmp_path: Path, imgs: Path) -> None:
    link = tmp_path / "data_link"
    link.symlink_to(imgs)
    out = tmp_path / "p"
    assert main([*PRUNE, "--calib", str(link), "--eval", str(link), "--n-calib", "8", "--out", str(out)]) == 0
    _, _, man = load_pruned(out)
    cal, ev = man["data"]["calibration"], man["data"]["evaluation"]
    assert cal["path"] == str((imgs / "train").resolve()) and cal["source"] == str(link)
    assert cal["rule"] == "the train/ folder of a split layout" and cal["split"] == "train"
    assert ev["path"] == str((imgs / "val").resolve()) and ev["split"] == "val"
    assert man["data"]["overlap"] == {"checked": True, "compared": "sha256 of file contents",
                                      "calibration_files": 8, "evaluation_files": 10, "shared": 0}
    assert man["evaluation"]["split"] == "val" and man["evaluation"]["path"] == ev["path"]


# ------------------------------------------------------------------------- 4. --json checked first
def test_case_04_a_bad_json_path_is_refused_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    _no_work(monkeypatch)
    out = tmp_path / "p"
    out.mkdir()  # the user's empty folder: it stays empty
    (tmp_path / "user.json").write_text('{"mine": 1}')
    _refused([*PRUNE, "--out", str(out), "--json", str(tmp_path / "missing" / "x.json")], capsys, tmp_path,
             2, "--json", "does not exist")
    _refused([*PRUNE, "--out", str(out), "--json", str(tmp_path / "user.json")], capsys, tmp_path, 2,
             "was not written by `mpprune prune`", "nothing overwritten")
    _refused([*PRUNE, "--out", str(out), "--json", str(out / "s.json")], capsys, tmp_path, 2,
             "lies inside the output folder")
    assert list(out.iterdir()) == []


# ------------------------------------------------------------- 5. refusals in a run leave nothing behind
def test_case_05_a_refused_run_writes_nothing_and_the_fixed_config_runs(tmp_path: Path, imgs: Path,
                                                                        capsys) -> None:
    out = tmp_path / "r"
    for bad in ({"data": {"calib": str(imgs / "val"), "n_calib": 4}},
                {"gate": {"min_certified": 2}}):
        cfg = _run_config(tmp_path, **bad)
        _refused(["run", str(cfg), "--out", str(out), "--quiet"], capsys, tmp_path, 2,
                 "training split" if "data" in bad else "min_certified must lie in [0, 1], got 2")
        assert not out.exists()
    fixed = _run_config(tmp_path, gate={"min_certified": 0.0, "estimator": "segment_max_slope",
                                        "n_theta": 8})
    assert main(["run", str(fixed), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "state.json").read_text())["completed"] == list(R.STAGES)


def test_case_05_a_refusal_found_in_a_stage_is_undone(tmp_path: Path, monkeypatch) -> None:
    cfg = _run_config(tmp_path)
    out = tmp_path / "r"
    empty = tmp_path / "empty"
    empty.mkdir()

    def refuse(_r):
        raise BadInput("refused in evaluate")

    monkeypatch.setitem(R.STAGE_FUNCTIONS, "evaluate", refuse)
    for target in (out, empty):  # a new folder and the user's empty folder
        before = _hashes(tmp_path)
        with pytest.raises(BadInput, match="refused in evaluate"):
            R.run(cfg, out=target, progress=False)
        assert _hashes(tmp_path) == before
    # a resumed run: what the refused call wrote is undone, state.json restored byte for byte
    def crash(_r):
        raise RuntimeError("crash")

    monkeypatch.setitem(R.STAGE_FUNCTIONS, "evaluate", crash)
    with pytest.raises(RuntimeError):
        R.run(cfg, out=out, progress=False)
    before = _hashes(tmp_path)
    monkeypatch.setitem(R.STAGE_FUNCTIONS, "evaluate", refuse)
    with pytest.raises(BadInput):
        R.run(cfg, out=out, progress=False)
    assert _hashes(tmp_path) == before


# ------------------------------------------------------------------ 6. impossible outputs, refused first
def test_case_06_an_output_that_cannot_be_written_is_refused_first(tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    _no_work(monkeypatch)
    user = tmp_path / "user"
    user.mkdir()
    (user / "photo.jpg").write_bytes(b"precious")
    link = tmp_path / "link"
    link.symlink_to(user)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, needle in (("/dev/null/x", "/dev/null is not a folder"), ("/proc/x", "cannot create files"),
                        (str(link), "not an output of `mpprune prune`"),
                        (str(dangling), "symbolic link to nothing")):
        _refused([*PRUNE, "--out", out], capsys, tmp_path, 2, f"--out {out}", needle)
    cfg = _run_config(tmp_path)
    _refused(["run", str(cfg), "--out", "/dev/null/x", "--quiet"], capsys, tmp_path, 2, "/dev/null")
    _refused(["analyze", "--model", "tiny-mlp", "--out", "/dev/null/x", "--quiet"], capsys, tmp_path, 2,
             "/dev/null")


def test_case_06_a_symbolic_link_to_an_empty_folder_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(real)
    assert main([*PRUNE, "--out", str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (real / "manifest.json").is_file()
    assert real.stat().st_mode & 0o777 == 0o750  # the user's folder keeps its mode


# --------------------------------------------------------------------- 7. a checkpoint of another model
def test_case_07_a_checkpoint_must_cover_the_named_architecture(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    from mpprune.models import MnistCNN, tiny_cnn

    ck = tmp_path / "ck"
    ck.mkdir()
    save_file({k: v.contiguous() for k, v in MnistCNN().state_dict().items()}, str(ck / "mnist.safetensors"))
    torch.save(tiny_mlp().state_dict(), ck / "mlp.pt")
    torch.save(tiny_cnn().state_dict(), ck / "cnn.pt")
    mnist_pth = str(default_checkpoint(model_spec("mnist-cnn")))
    cases = [("minilm", ck / "mnist.safetensors", "does not cover the minilm architecture"),
             ("minilm", mnist_pth, "cannot load the checkpoint"),
             ("mnist-cnn", ck / "mlp.pt", "cannot load the checkpoint"),
             ("tiny-mlp", mnist_pth, "cannot load the checkpoint"),
             ("tiny-cnn", ck / "mlp.pt", "cannot load the checkpoint"),
             ("efficientnet-lite0", ck / "cnn.pt", "tensors, tf_efficientnet_lite0 has")]
    for name, path, needle in cases:
        _refused(["analyze", "--model", name, "--checkpoint", str(path), "--out", str(tmp_path / "a"),
                  "--quiet", "--no-plot"], capsys, tmp_path, 2, needle)
        assert not (tmp_path / "a").exists()


def test_case_07_minilm_with_a_tensor_missing_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from mpprune.models import load_minilm_linears

    tensors = load_file(str(default_checkpoint(model_spec("minilm"))))
    dropped = "encoder.layer.3.intermediate.dense.bias"
    assert dropped in tensors
    del tensors[dropped]
    path = tmp_path / "partial.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(BadInput, match=r"does not cover the minilm architecture: 1 of its \d+ tensors"):
        load_minilm_linears(path, as_module=True)


# ------------------------------------------------------------------------ 8. mptheory input types
def test_case_08_fit_mp_refuses_a_complex_matrix() -> None:
    import warnings

    from mptheory import fit_mp

    w = np.random.default_rng(0).standard_normal((64, 32)) * (1 + 1j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="complex"):
            fit_mp(w)


@pytest.mark.parametrize("ratio", ["0.5", True])
def test_case_08_marchenko_pastur_refuses_a_ratio_that_is_no_number(ratio) -> None:
    from mptheory.mp import MarchenkoPastur

    with pytest.raises((TypeError, ValueError)):
        MarchenkoPastur(ratio=ratio)


# ------------------------------------------------------------------- 9. the manifest checked at load
def _saved(tmp_path: Path) -> Path:
    from mpprune.masks import weight_of

    model = tiny_mlp()
    masks = MaskStore()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            m = torch.ones_like(weight_of(mod), dtype=torch.bool)
            m.view(-1)[::2] = False
            masks.add(name, mod, m)
            with torch.no_grad():
                mod.weight.mul_(m)
    out = tmp_path / "ck"
    save_pruned(out, model, masks, None, config={"method": {"name": "magnitude", "sparsity": 0.5}},
                factory=model_spec("tiny-mlp"))
    return out


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: m["sparsity"].update({"global": 0.1}), "says sparsity global = 0.1"),
    (lambda m: m["sparsity"]["per_layer"].update({"0": 0.9}), "says layer '0' has sparsity 0.9"),
    (lambda m: m["masks"]["layers"]["2"].update({"kept": 1}), "the mask of layer '2' has kept 1"),
    (lambda m: m["masks"]["layers"]["0"].update({"pattern": "1:4"}), "keeps the 1:4 pattern"),
    (lambda m: m["model"].update({"name": "tiny-cnn"}), "do not fit the model its manifest names"),
    (lambda m: m["model"]["kwargs"].update({"sizes": [64, 16, 10]}), "do not fit the model"),
    (lambda m: m.pop("format_version"), "format_version must be an integer"),
    (lambda m: m.update({"format_version": 99}), "format_version 99 is not one this mpprune reads"),
])
def test_case_09_an_edited_manifest_is_refused(tmp_path: Path, edit, needle) -> None:
    from mpprune.errors import exit_code

    out = _saved(tmp_path)
    load_pruned(out)  # the untouched checkpoint loads
    man = json.loads((out / "manifest.json").read_text())
    edit(man)
    (out / "manifest.json").write_text(json.dumps(man))
    before = _hashes(tmp_path)
    with pytest.raises(BadInput, match=needle) as info:
        load_pruned(out)
    assert exit_code(info.value) == 2
    assert _hashes(tmp_path) == before


def test_case_09_a_true_pattern_is_recorded_and_verified(tmp_path: Path) -> None:
    from mpprune.checkpoint import kn_legal

    model = tiny_mlp()
    masks = MaskStore()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            m = torch.zeros_like(mod.weight, dtype=torch.bool)
            m.view(m.shape[0], -1, 4)[:, :, :2] = True  # 2 of every 4 kept
            masks.add(name, mod, m)
            with torch.no_grad():
                mod.weight.mul_(m)
    assert kn_legal(model[0].weight, 2, 4) and not kn_legal(model[0].weight, 1, 4)
    out = tmp_path / "kn"
    save_pruned(out, model, masks, None, config={"method": {"pattern": "2:4"}},
                factory=model_spec("tiny-mlp"))
    _, _, man = load_pruned(out)
    assert {v.get("pattern") for v in man["masks"]["layers"].values()} == {"2:4"}


# ------------------------------------------------------------------------ 10. options checked by type
def test_case_10_options_are_checked_by_type_at_parse_time(tmp_path: Path, capsys, monkeypatch) -> None:
    _no_work(monkeypatch)
    out = tmp_path / "p"
    gate = [*PRUNE, "--calib", "digits", "--out", str(out), "--gate"]
    for spec, needles in (
        ("foo=1", ["unknown key ['foo']", "allowed: min_certified (a number)", "n_theta (an integer)"]),
        ("n_theta=-5", ["n_theta must be >= 2, got -5"]),
        ("min_certified=true", ["min_certified must be a number, got True", "allowed:"]),
        ("final_report=maybe", ["final_report must be true or false, got 'maybe'"]),
        ("max_bisect=2.5", ["max_bisect must be an integer, got 2.5"]),
    ):
        _refused([*gate, spec], capsys, tmp_path, 2, *needles)
    _refused(["prune", "--model", "mnist-cnn", "--num-classes", "1000", "--method", "magnitude",
              "--sparsity", "0.5", "--out", str(out)], capsys, tmp_path, 2,
             "num_classes=1000 cannot be honoured")
    for raw, needle in (({"bogus_field": 1}, "unknown key"),
                        ({"method": {"name": "seb", "sparsity": "0.5"}}, "sparsity"),
                        ({"model": {"name": "tiny-cnn", "kwargs": {"width": "16"}}},
                         "width must be an integer"),
                        ({"gate": {"min_certified": 0.5, "final_report": "maybe"}}, "final_report")):
        cfg = _run_config(tmp_path, **raw)
        _refused(["run", str(cfg), "--out", str(out), "--quiet"], capsys, tmp_path, 2, needle)
    assert not out.exists()


def test_case_10_num_classes_is_honoured_or_refused_never_just_recorded() -> None:
    from mpprune.models import build_model

    spec = model_spec("tiny-cnn", num_classes=5)
    assert spec["kwargs"] == {"num_classes": 5} and spec["num_classes"] is None
    assert build_model(spec)(torch.zeros(1, 1, 32, 32)).shape == (1, 5)
    assert model_spec("mnist-cnn", num_classes=10)["num_classes"] == 10  # its own class count
    with pytest.raises(BadInput, match="cannot be honoured"):
        model_spec("tiny-mlp", num_classes=3)
    from mpprune.config import ModelConfig

    with pytest.raises(BadInput, match=r"num_classes = 5 contradicts \[model.kwargs\] num_classes = 4"):
        ModelConfig.parse({"name": "tiny-cnn", "num_classes": 5, "kwargs": {"num_classes": 4}})
    assert ModelConfig.parse({"name": "tiny-cnn", "kwargs": {"num_classes": 4}}).spec()["kwargs"] == {
        "num_classes": 4}


# ------------------------------------------------------------------------ 11. NaN/Inf anywhere
def test_case_11_nan_in_a_bias_or_a_buffer_is_refused(tmp_path: Path, capsys) -> None:
    m = tiny_mlp()
    with torch.no_grad():
        m[2].bias[3] = float("nan")
    ck = tmp_path / "ck" / "nan_bias.pt"
    ck.parent.mkdir()
    torch.save(m.state_dict(), ck)
    _refused([*PRUNE, "--checkpoint", str(ck), "--out", str(tmp_path / "p")], capsys, tmp_path, 2,
             "parameter '2.bias' of shape (10,) has 1 NaN/Inf entries")
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    bn[1].running_var[0] = float("inf")
    with pytest.raises(BadInput, match=r"buffer '1.running_var' of shape \(4,\) has 1 NaN/Inf"):
        check_finite(bn)


def test_case_11_library_prune_refuses_a_nan_bias() -> None:
    import mpprune as mpp

    m = tiny_mlp()
    with torch.no_grad():
        m[0].bias[0] = float("nan")
    with pytest.raises(BadInput, match="bias"):
        mpp.prune(m, mpp.Magnitude(sparsity=0.5), progress=False)


# ----------------------------------------------------------------- 12. mptheory outputs checked first
def test_case_12_mptheory_outputs_are_checked_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    from proofs_checks.__main__ import main as proofs_main

    _no_work(monkeypatch)
    _refused(["figures", "--out", "/dev/null/x", "--quick"], capsys, tmp_path, 2,
             "--out /dev/null/x: cannot be created, /dev/null is not a folder", cli=mpt_cli.main)
    _refused(["verify", "--quick", "--json", "/dev/null/x"], capsys, tmp_path, 2,
             "--json /dev/null/x: /dev/null is not a folder", cli=mpt_cli.main)
    assert "PASS" not in capsys.readouterr().out
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    _refused(["verify", "--quick", "--json", str(tmp_path / "mine.json")], capsys, tmp_path, 2,
             "was not written by `mptheory verify`", cli=mpt_cli.main)
    _refused(["--json", str(tmp_path / "mine.json")], capsys, tmp_path, 2,
             "was not written by `python -m proofs_checks`", cli=proofs_main)


# ------------------------------------------------------------- 13. stale temporaries, the state's errors
def test_case_13_a_killed_save_leaves_nothing_the_next_run_keeps(tmp_path: Path, capsys) -> None:
    out = tmp_path / "p"
    stale = _dead_staging(out)
    live = tmp_path / f".p.p{os.getppid()}-abc.tmp"
    live.mkdir()
    old = tmp_path / ".p.abcd1234.tmp"
    old.mkdir()
    capsys.readouterr()
    assert main([*PRUNE, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert not stale.exists()  # its process is gone: removed
    assert live.is_dir() and old.is_dir()  # a live process's and an older naming: kept and named
    assert f"left in place: {live}" in err and f"left in place: {old}" in err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "masks.safetensors",
                                                     "model.safetensors", "prune_report.json"]


def test_case_13_a_killed_run_is_cleaned_on_resume(tmp_path: Path, monkeypatch) -> None:
    cfg = _run_config(tmp_path)
    out = tmp_path / "r"

    def crash(_r):
        raise RuntimeError("killed")

    monkeypatch.setitem(R.STAGE_FUNCTIONS, "save", crash)
    with pytest.raises(RuntimeError):
        R.run(cfg, out=out, progress=False)
    monkeypatch.undo()
    stale = _dead_staging(out / "model")
    (out / "stages" / ".certificate.json.x1y2.tmp").write_text("half")
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert not stale.exists() and not list(out.rglob(".*.tmp"))
    load_pruned(out / "model")


def test_case_13_state_errors_name_the_file_and_the_flag(tmp_path: Path, capsys) -> None:
    cfg = _run_config(tmp_path)
    out = tmp_path / "r"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    other = _run_config(tmp_path, method={"name": "magnitude", "sparsity": 0.3})
    err = _refused(["run", str(other), "--out", str(out), "--quiet"], capsys, tmp_path, 2,
                   f"{out.resolve() / 'state.json'} records a run of a different config", "--no-resume")
    assert "resume=False" not in err.split("--no-resume")[0]
    (out / "state.json").write_text('{"damaged')
    _refused(["run", str(cfg), "--out", str(out), "--quiet"], capsys, tmp_path, 2,
             f"its {out.resolve() / 'state.json'} cannot be read as its record", "nothing overwritten")


# ------------------------------------------------------------------------- the rule for mpprune demo
def test_demo_follows_the_output_rule(tmp_path: Path, capsys, monkeypatch) -> None:
    import mpprune.demo

    seen: list[Path] = []

    def fake_demo(out, quick=False, estimator=None):
        seen.append(Path(out))
        (Path(out) / "part.json").write_text("{}")
        (Path(out) / "demo_summary.json").write_text("{}")
        return {"out": str(out), "quick": quick, "failed": [], "skipped": []}

    monkeypatch.setattr(mpprune.demo, "run_demo", fake_demo)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    assert seen[-1].name.startswith(".demo.p") and seen[-1].parent == tmp_path  # worked in a staging folder
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["out"] == str(out) and summary["output"]["command"] == "mpprune demo"
    assert summary["output"]["entries"] == ["demo_summary.json", "part.json"]
    assert main(["demo", "--out", str(out), "--quick"]) == 0  # its own output, same options: replaced
    _refused(["demo", "--out", str(out)], capsys, tmp_path, 2, "different configuration")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    _refused(["demo", "--out", str(user), "--quick"], capsys, tmp_path, 2, "not an output of `mpprune demo`")
    assert not list(tmp_path.glob(".*.tmp"))
