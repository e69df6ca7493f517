"""Checkpoints (save_pruned/load_pruned), atomic writes, input protection and resumable runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mpprune import pipeline as P
from mpprune.masks import MaskStore
from mpprune.methods import Magnitude, prune
from mpprune.models import tiny_mlp


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
    model = P.build_model(P.model_spec("tiny-mlp"))
    res = prune(model, Magnitude(sparsity=0.5), progress=False)
    return res.model, res.masks, res.report


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_tiny_identical_outputs(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    out = P.save_pruned(tmp_path / "ck", model, masks, report, config=Magnitude(sparsity=0.5))
    loaded, lmasks, manifest = P.load_pruned(out)
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

    dense = P.build_model(P.model_spec("mnist-cnn"))
    res = prune(dense, Magnitude(sparsity=0.5, scope="layer"), progress=False)
    asset = P._default_checkpoint(dense.mpprune_spec)
    ckpt = P.save_pruned(tmp_path / "mnist", res.model, res.masks, res.report,
                         config={"method": "magnitude"}, inputs=[asset])
    loaded, _, manifest = P.load_pruned(ckpt)
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
    P.save_pruned(tmp_path / "t", m, masks, None, config={})
    fresh = Tied()
    loaded, _, manifest = P.load_pruned(tmp_path / "t", model=fresh)
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
    out = P.save_pruned(tmp_path / "out", model, masks, report, config=Magnitude(sparsity=0.5),
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
    out = P.save_pruned(tmp_path / "c", model, masks, report, config={})
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        P.load_pruned(out)


# ------------------------------------------------------------------------------------------- atomic
def test_failed_save_to_new_dir_leaves_nothing(tmp_path: Path, tiny_pruned, monkeypatch) -> None:
    model, masks, report = tiny_pruned
    before = _listing(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(P.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        P.save_pruned(tmp_path / "new", model, masks, report, config={})
    assert _listing(tmp_path) == before


def test_failed_save_into_existing_dir_keeps_old_files(tmp_path: Path, tiny_pruned, monkeypatch) -> None:
    model, masks, report = tiny_pruned
    out = P.save_pruned(tmp_path / "old", model, masks, report, config={"v": 1})
    before = _listing(tmp_path)
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("simulated crash during replace")
        return real(src, dst)

    monkeypatch.setattr(P.os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        P.save_pruned(out, model, masks, report, config={"v": 2})
    assert _listing(tmp_path) == before  # no temp files, nothing changed


def test_unserialisable_input_writes_nothing(tmp_path: Path) -> None:
    m = tiny_mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"0\.weight.*NaN"):
        P.save_pruned(tmp_path / "x", m, None, None, config={})
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ input protection
def test_refuses_to_write_where_the_input_checkpoint_lives(tmp_path: Path, tiny_pruned) -> None:
    model, masks, report = tiny_pruned
    ck = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ck)
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match="input checkpoint"):
        P.save_pruned(tmp_path, model, masks, report, config={}, inputs=[ck])
    with pytest.raises(ValueError, match="input"):
        P.save_pruned(ck, model, masks, report, config={}, inputs=[ck])
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(ValueError, match="inside the input directory"):
        P.save_pruned(data_dir / "sub", model, masks, report, config={}, inputs=[data_dir])
    data_dir.rmdir()
    assert _listing(tmp_path) == before


# ----------------------------------------------------------------------------------------- helpers
def test_parse_gate_and_method_validation() -> None:
    assert P.parse_gate("min_certified=0.99,elastic_net=1e-3:1e-4,backoff=bisect") == {
        "min_certified": 0.99, "elastic_net": (1e-3, 1e-4), "backoff": "bisect"}
    for bad in ("min_certified", "", "1x=2"):
        with pytest.raises(ValueError):
            P.parse_gate(bad)
    with pytest.raises(ValueError, match="classical_rmt takes no sparsity"):
        P.make_method("classical_rmt", 0.5)
    with pytest.raises(ValueError, match="unknown method"):
        P.make_method("random", 0.5)
    with pytest.raises(ValueError, match="needs a sparsity"):
        P.make_method("seb")
    with pytest.raises(ValueError, match="unknown model"):
        P.model_spec("not-a-model-xyz")


def test_calibration_refuses_validation_paths(tmp_path: Path) -> None:
    for name in ("val", "validation", "test"):
        d = tmp_path / name
        d.mkdir()
        with pytest.raises(ValueError, match="training split"):
            P.calibration_dataset(d, P.model_spec("mnist-cnn"))
    assert P.calibration_dataset("digits", P.model_spec("tiny-mlp")).split == "train"
    assert P.eval_dataset("digits", P.model_spec("tiny-mlp")).split == "val"


# ------------------------------------------------------------------------------------------- resume
def _config(out: Path) -> dict:
    return {"out": str(out), "model": {"name": "tiny-mlp"}, "method": {"name": "magnitude", "sparsity": 0.5},
            "data": {"calib": "digits", "n_calib": 100, "batch_size": 50}}


def test_run_resumes_after_a_crash(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    cfg = _config(out)
    calls: dict[str, int] = {}
    originals = dict(P.STAGE_FUNCTIONS)

    def counting(stage: str, crash: bool = False):
        def fn(r):
            calls[stage] = calls.get(stage, 0) + 1
            if crash:
                raise RuntimeError(f"simulated crash in {stage}")
            return originals[stage](r)
        return fn

    for s in P.STAGES:
        monkeypatch.setitem(P.STAGE_FUNCTIONS, s, counting(s, crash=(s == "evaluate")))
    with pytest.raises(RuntimeError, match="simulated crash in evaluate"):
        P.run(cfg, progress=False)
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == ["load", "analyze", "prune", "certify"]
    assert not (out / "model").exists()

    calls.clear()
    for s in P.STAGES:
        monkeypatch.setitem(P.STAGE_FUNCTIONS, s, counting(s))
    final = P.run(cfg, progress=False)
    assert calls == {"evaluate": 1, "save": 1}  # completed stages were skipped
    assert final["completed"] == list(P.STAGES)
    # the final checkpoint is the stage-checkpointed pruned model, and it is really 50 % sparse
    stage_model, _, _ = P.load_pruned(out / "stages" / "prune")
    final_model, _, manifest = P.load_pruned(out / "model")
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(stage_model(x), final_model(x))
    n_zero = sum(int((m.weight == 0).sum()) for m in final_model if isinstance(m, nn.Linear))
    n_all = sum(m.weight.numel() for m in final_model if isinstance(m, nn.Linear))
    assert n_zero == int(0.5 * n_all)
    ev = final["results"]["evaluate"]
    from mpprune.data import sklearn_digits

    val = sklearn_digits("val")
    xs = torch.stack([val[i][0] for i in range(len(val))])
    ys = torch.tensor([int(val[i][1]) for i in range(len(val))])
    with torch.no_grad():
        assert ev["accuracy_pruned"] == pytest.approx(float((final_model(xs).argmax(1) == ys).float().mean()))
    assert manifest["evaluation"] == ev

    # a different config in the same directory is refused; resume=False starts over
    other = dict(cfg, method={"name": "magnitude", "sparsity": 0.3})
    with pytest.raises(ValueError, match="different config"):
        P.run(other, progress=False)
    calls.clear()
    P.run(dict(other, analyze=False), resume=False, progress=False)
    assert calls == {s: 1 for s in P.STAGES}


def test_run_from_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'out = "{tmp_path / "o"}"\nanalyze = false\n[model]\nname = "tiny-mlp"\n'
        '[method]\nname = "seb"\nsparsity = 0.4\n[data]\ncalib = "digits"\nn_calib = 50\n'
    )
    state = P.run(cfg, progress=False)
    assert state["completed"] == list(P.STAGES)
    _, masks, man = P.load_pruned(tmp_path / "o" / "model")
    total = sum(int(m.numel()) for m in masks.to_state_dict().values())
    zeros = sum(int((~m).sum()) for m in masks.to_state_dict().values())
    assert zeros == int(0.4 * total)
    assert man["config"]["method"]["name"] == "seb"
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\n[model]\nname = "tiny-mlp"\n[method]\nname = "seb"\nsparsity = 1.5\n')
    with pytest.raises(ValueError, match="sparsity"):
        P.load_config(bad)
