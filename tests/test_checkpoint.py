"""Checkpoints (mpprune.checkpoint: save_pruned/load_pruned), atomic publishing and input protection
(mpprune.io)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mpprune.checkpoint import load_pruned, save_pruned
from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.methods import Magnitude, prune
from mpprune.models import build_model, default_checkpoint, model_spec, tiny_mlp


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(d: Path) -> dict[str, str]:
    """Every file below ``d`` (hidden included) with its sha256: proves nothing was added or changed."""
    return {str(p.relative_to(d)): _sha(p) for p in sorted(d.rglob("*")) if p.is_file()} | {
        str(p.relative_to(d)) + "/": "dir" for p in sorted(d.rglob("*")) if p.is_dir()
    }


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "parametrizations", None)
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def tiny_pruned() -> tuple[nn.Module, MaskStore, object]:
    model = build_model(model_spec("tiny-mlp"))
    res = prune(model, Magnitude(sparsity=0.5), progress=False)
    return res.model, res.masks, res.report


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_tiny_identical_outputs(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    out = save_pruned(tmp_path / "ck", model, masks, report, config=Magnitude(sparsity=0.5))
    loaded, lmasks, manifest = load_pruned(out)
    assert type(loaded) is nn.Sequential and _no_hooks(loaded)
    assert loaded is not model
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for name, m in masks.to_state_dict().items():
        assert torch.equal(lmasks[name], m)
        # masked entries of the loaded weight are exactly zero, kept ones equal the pruned model's
        w_loaded = lmasks.module(name).weight.detach()
        assert torch.equal(w_loaded, masks.module(name).weight.detach())
        assert bool((w_loaded[~m] == 0).all())
    assert manifest["model"]["name"] == "tiny-mlp"


def test_round_trip_mnist_cnn_real_digits(tmp_path: Path) -> None:
    from mpprune.data import mnist_digits

    dense = build_model(model_spec("mnist-cnn"))
    res = prune(dense, Magnitude(sparsity=0.5, scope="layer"), progress=False)
    asset = default_checkpoint(dense.mpprune_spec)
    ckpt = save_pruned(tmp_path / "mnist", res.model, res.masks, res.report,
                         config={"method": "magnitude"}, inputs=[asset])
    loaded, _, manifest = load_pruned(ckpt)
    val = mnist_digits("val")
    x = torch.stack([val[i][0] for i in range(256)])
    with torch.no_grad():
        assert torch.equal(res.model(x), loaded(x))
        # the pruned model is really different from the dense one (the test could fail)
        assert not torch.equal(dense(x), loaded(x))
    # per-layer sparsity in the manifest equals an independent zero count on the loaded weights
    mods = dict(loaded.named_modules())
    for name, s in manifest["sparsity"]["per_layer"].items():
        w = mods[name].weight.detach()
        assert s == pytest.approx(float((w == 0).sum()) / w.numel(), abs=0)
        assert s == pytest.approx(int(0.5 * w.numel()) / w.numel(), abs=1e-12)
    assert manifest["inputs"][0]["sha256"] == _sha(Path(manifest["inputs"][0]["path"]))


def test_tied_weights_save_and_load(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.b.weight = self.a.weight  # shared memory: plain safetensors refuses this

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    m = Tied()
    masks = MaskStore.from_model_zeros(m)
    save_pruned(tmp_path / "t", m, masks, None, config={})
    fresh = Tied()
    loaded, _, manifest = load_pruned(tmp_path / "t", model=fresh)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    assert loaded.a.weight is loaded.b.weight
    assert manifest["model"] is None


# ---------------------------------------------------------------------------------------- manifest
def test_manifest_keys_and_checksums(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    ck = tmp_path / "in" / "weights.pt"
    ck.parent.mkdir()
    torch.save(model.state_dict(), ck)
    out = save_pruned(tmp_path / "out", model, masks, report, config=Magnitude(sparsity=0.5),
                        inputs=[ck],
                        certificate={"certified_fraction": 0.995, "per_sample": list(range(200))})
    man = json.loads((out / "manifest.json").read_text())
    for key in ("format", "format_version", "model", "config", "versions", "git", "inputs", "files", "masks",
                "sparsity", "report", "certificate", "created"):
        assert key in man
    assert man["versions"]["torch"] == torch.__version__.split("+")[0]
    assert man["inputs"][0]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    for f in ("model.safetensors", "masks.safetensors"):
        assert man["files"][f]["sha256"] == _sha(out / f)
    assert man["config"]["type"] == "Magnitude" and man["config"]["sparsity"] == 0.5
    # mask summary against an independent count
    total = sum(int(m.numel()) for m in masks.to_state_dict().values())
    zeros = sum(int((~m).sum()) for m in masks.to_state_dict().values())
    assert man["masks"]["global_sparsity"] == pytest.approx(zeros / total)
    # long per-sample lists are summarised in the manifest, kept in full in certificate.json
    assert man["certificate"]["per_sample"] == {"len": 200, "min": 0.0, "mean": 99.5, "max": 199.0}
    assert json.loads((out / "certificate.json").read_text())["per_sample"] == list(range(200))


def test_corrupted_checkpoint_is_refused(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    out = save_pruned(tmp_path / "c", model, masks, report, config={})
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        load_pruned(out)


# ------------------------------------------------------------------------------------------- atomic
def test_failed_save_to_new_dir_leaves_nothing(tmp_path: Path, tiny_pruned, monkeypatch) -> None:
    model, masks, report = tiny_pruned
    before = _listing(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_pruned(tmp_path / "new", model, masks, report, config={})
    assert _listing(tmp_path) == before


def test_failed_save_into_existing_dir_keeps_old_files(tmp_path: Path, tiny_pruned, monkeypatch) -> None:
    model, masks, report = tiny_pruned
    out = save_pruned(tmp_path / "old", model, masks, report, config={"v": 1})
    before = _listing(tmp_path)
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("simulated crash during replace")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        save_pruned(out, model, masks, report, config={"v": 2})
    assert _listing(tmp_path) == before  # no temp files, nothing changed


def test_unserialisable_input_writes_nothing(tmp_path: Path) -> None:
    m = tiny_mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"0\.weight.*NaN"):
        save_pruned(tmp_path / "x", m, None, None, config={})
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ input protection
def test_refuses_to_write_where_the_input_checkpoint_lives(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    ck = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ck)
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match="input checkpoint"):
        save_pruned(tmp_path, model, masks, report, config={}, inputs=[ck])
    with pytest.raises(ValueError, match="input"):
        save_pruned(ck, model, masks, report, config={}, inputs=[ck])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(ValueError, match="inside the input directory"):
        save_pruned(data_dir / "sub", model, masks, report, config={}, inputs=[data_dir])
    data_dir.rmdir()
    assert _listing(tmp_path) == before


# ------------------------------------------------------------------------------------------------ io
def test_publish_files_is_all_or_nothing(tmp_path: Path, monkeypatch) -> None:
    from mpprune.io import publish_files, staged_output

    out = publish_files(tmp_path / "new", {"a.txt": b"1", "manifest.json": b"{}"})
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]
    publish_files(out, {"a.txt": b"2"})  # an existing directory: files replaced one by one, atomically
    assert (out / "a.txt").read_bytes() == b"2"
    before = _listing(tmp_path)
    with pytest.raises(RuntimeError, match="half way"), staged_output(tmp_path / "staged") as d:
        (d / "x").write_text("partial")
        raise RuntimeError("half way")
    assert _listing(tmp_path) == before  # neither the output nor a staging directory is left
    (tmp_path / "empty").mkdir()
    with staged_output(tmp_path / "empty") as d:
        (d / "x").write_text("done")
    assert (tmp_path / "empty" / "x").read_text() == "done"


def test_check_new_output_and_provenance(tmp_path: Path) -> None:
    from mpprune.errors import BadInput
    from mpprune.io import check_new_output, input_record, provenance, sha256_file

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(BadInput, match="already exists"):
        check_new_output(tmp_path / "full")
    check_new_output(tmp_path / "fresh")
    rec = input_record(tmp_path / "full")
    assert rec["kind"] == "directory" and rec["files"] == 1
    assert input_record(tmp_path / "full" / "f")["sha256"] == sha256_file(tmp_path / "full" / "f") == \
        hashlib.sha256(b"x").hexdigest()
    with pytest.raises(FileNotFoundError):
        input_record(tmp_path / "nope")
    prov = provenance()
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] and "git" in prov


@pytest.mark.parametrize("layout", ["matrix", "channel"])
def test_declared_kn_patterns_survive_save_and_load(tmp_path, layout):
    from mpprune.masks import PatternViolation

    model = nn.Sequential(nn.Conv2d(8, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    masks = MaskStore()
    with torch.no_grad():
        for name, n in (("0", 4), ("3", 8)):
            mod = dict(model.named_modules())[name]
            w = mod.weight
            if layout == "channel" and w.dim() == 4:  # at most 1 of every 4 input channels per position
                keep = torch.zeros_like(w, dtype=torch.bool)
                keep[:, 0::4] = True
            else:
                keep = torch.zeros(w.shape[0], w[0].numel() // n, n, dtype=torch.bool)
                keep[..., 0] = True
                keep = keep.reshape(w.shape)
            w.mul_(keep)
            masks.add(name, mod, keep)
            masks.declare(name, f"1:{n}", layout if w.dim() == 4 else "matrix")
    save_pruned(tmp_path / "ck", model, masks, None, config={"method": "test"}, factory=None)
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert manifest["masks"]["layers"]["0"]["pattern"] == "1:4"
    _, loaded, _ = load_pruned(tmp_path / "ck", model=copy.deepcopy(model))
    assert loaded.patterns() == masks.patterns()
    # an edited layout is caught against the tensors (with a 2x2 kernel the channel-legal mask is not
    # im2col-legal, and back)
    m = manifest["masks"]["layers"]["0"]
    m["layout"] = "matrix" if m["layout"] == "channel" else "channel"
    (tmp_path / "ck" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((BadInput, PatternViolation)):
        load_pruned(tmp_path / "ck", model=copy.deepcopy(model), verify=False)
