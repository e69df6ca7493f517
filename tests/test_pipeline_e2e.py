"""The whole pipeline from one config file, on CPU, on a tiny ViT trained on the real MNIST digits:
load → SEB 0.35 → certificate-aware 2:4 on the MLP ([kn], when mpprune.methods.NM exists) → ToMe r = 2 →
one short distillation epoch → gate → evaluate → MACs → save; and a run crashed in the middle of the
distillation resumes to the same final weights as an uninterrupted run; through torchrun with 2 processes
(slow) the pipeline matches one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mpprune import run as R
from mpprune.checkpoint import kn_legal, load_pruned
from mpprune.models import MNIST_MEAN, MNIST_STD, MODELS, ModelEntry
from mpprune.tome import apply_tome
from mpprune.train import Recipe
from mpprune.vit_mnist import ViTMnistTraining, train_vit_mnist, vit_mnist_architecture

TINY = {"patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
_TRAINED: dict[int, dict[str, torch.Tensor]] = {}


def tiny_architecture(seed: int = 0) -> nn.Module:
    return vit_mnist_architecture(**TINY, seed=seed)


def tiny_load(checkpoint: str | None = None, seed: int = 0) -> nn.Module:
    """The tiny ViT after a short training on 640 real train digits (once per test session)."""
    if seed not in _TRAINED:
        training = ViTMnistTraining(recipe=Recipe(epochs=3, batch_size=64, lr=3e-3, weight_decay=0.05,
                                                  warmup_steps=5, seed=seed), n_train=640)
        model, _ = train_vit_mnist(TINY, training, progress=False)
        _TRAINED[seed] = {k: v.clone() for k, v in model.state_dict().items()}
    model = tiny_architecture(seed)
    model.load_state_dict(_TRAINED[seed])
    return model.eval()


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> str:
    name = "vit-mnist-tiny"
    monkeypatch.setitem(MODELS, name, ModelEntry(
        name=name, description="test only", load=tiny_load, architecture=tiny_architecture,
        transform=MODELS["vit-mnist"].transform, mean=(MNIST_MEAN,), std=(MNIST_STD,), num_classes=10))
    return name




def _config(model: str, out: Path, kn: bool) -> str:
    kn_section = """
[kn]
pattern = "2:4"
cost = "certificate"
layers = ["blocks.*.mlp.fc*"]
skip = []
""" if kn else ""
    return f"""
out = "{out}"
analyze = false
certify = false
[model]
name = "{model}"
[method]
name = "seb"
sparsity = 0.35
{kn_section}
[tome]
r = 2
[distill]
epochs = 1
batch_size = 32
lr = 1e-4
warmup_steps = 2
n_train = 256
checkpoint_every = 2
[data]
calib = "mnist"
n_calib = 32
batch_size = 32
n_eval = 200
[gate]
min_certified = 0.5
n_theta = 2
"""


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_pruned(folder)
    return model.state_dict()


@pytest.mark.parametrize(
    "kn", [False, True],
    ids=["seb-tome-distill", "seb-kn-tome-distill"])
def test_pipeline_end_to_end_and_resume_mid_distillation(
    kn: bool, tiny_vit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mpprune.distill as D

    cfg_a = tmp_path / "a.toml"
    cfg_a.write_text(_config(tiny_vit, tmp_path / "a", kn))
    state = R.run(cfg_a, progress=False)
    assert state["completed"] == list(R.STAGES)
    res = state["results"]
    expected_skips = {"analyze", "certify"} | ({"kn"} if not kn else set())
    assert {s for s, v in res.items() if "skipped" in v} == expected_skips
    assert res["tome"]["r"] == [2, 2]
    assert res["distill"]["fit"]["steps"] == 256 // 32 and res["distill"]["n_train"] == 256
    # the final checkpoint: masks legal and frozen through distillation, evaluation and MACs recorded
    final, masks, manifest = load_pruned(tmp_path / "a" / "model")
    pruned, pmasks, _ = load_pruned(tmp_path / "a" / "stages" / "prune")
    distilled, _, _ = load_pruned(tmp_path / "a" / "stages" / "distill" / "model")
    gated = {row["name"]: row["status"] for row in res["gate"]["gate"]}
    assert gated and set(gated) <= set(masks) and set(pmasks) <= set(masks)
    if kn:  # 2:4 on the MLP: every projected layer is an MLP layer, 2:4-legal after distillation and,
        # unless the gate backed it off, in the final model
        _, dmasks, _ = load_pruned(tmp_path / "a" / "stages" / "distill" / "model")
        assert sorted(res["kn"]["layers"]) == [f"blocks.{i}.mlp.fc{j}" for i in (0, 1) for j in (1, 2)]
        for n in res["kn"]["layers"]:
            assert kn_legal(dict(distilled.named_modules())[n].weight, 2, 4), n
            assert dmasks.pattern(n) == ("2:4", "matrix"), n  # the declaration survives save and load
            # the gate keeps k:n layers k:n (2:4 passed, 3:4 backed off) or leaves them dense
            if gated.get(n) == "passed":
                assert kn_legal(dict(final.named_modules())[n].weight, 2, 4), n
                assert masks.pattern(n) == ("2:4", "matrix"), n
            elif gated.get(n) == "backed_off":
                assert masks.pattern(n) == ("3:4", "matrix"), n
                assert kn_legal(dict(final.named_modules())[n].weight, 3, 4), n
            else:
                assert masks.pattern(n) is None, n
    before, after = pruned.state_dict(), distilled.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)  # distillation changed the weights
    for name, mod, keep in masks.entries():
        assert bool((mod.weight[~keep] == 0).all()), name
    if not kn:  # without k:n the masks are the prune stage's (the gate may only restore weights)
        for name, _, keep in pmasks.entries():
            assert bool((masks[name] | ~keep).all()) or name in {r["name"] for r in res["gate"]["gate"]}
    ev = manifest["evaluation"]
    assert ev["n"] == 200 and 0.0 <= ev["accuracy_pruned"] <= 1.0 and ev["accuracy_dense"] > 0.3
    apply_tome(final, 2)
    from mpprune.data import accuracy, eval_dataset
    from mpprune.models import model_spec

    assert accuracy(final, eval_dataset("mnist", model_spec(tiny_vit)), limit=200) == pytest.approx(
        ev["accuracy_pruned"])
    macs = res["macs"]
    assert macs["input_size"] == [1, 28, 28] and macs["tome"] is True
    assert macs["final_model"]["tome_r"] == [2, 2]
    for conv in ("executed", "paper"):
        assert 0 < macs[conv]["sparse"] < macs[conv]["dense"] == macs["dense_model"]["dense"]
    assert manifest["macs"]["paper"] == macs["paper"]
    assert manifest["config"]["tome"]["r"] == 2

    # a run killed after step 5 of 8 (training states at steps 2 and 4) resumes from step 4 ...
    real = D.distill

    def crashing(*args: Any, **kwargs: Any) -> Any:
        def on_step(step: int, loss: float) -> None:
            if step == 5:
                raise RuntimeError("simulated crash at step 5")

        return real(*args, **kwargs, on_step=on_step)

    cfg_b = tmp_path / "b.toml"
    cfg_b.write_text(_config(tiny_vit, tmp_path / "b", kn))
    monkeypatch.setattr(D, "distill", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        R.run(cfg_b, progress=False)
    crashed = json.loads((tmp_path / "b" / "state.json").read_text())
    assert crashed["completed"] == list(R.STAGES[: R.STAGES.index("distill")])
    assert (tmp_path / "b" / "stages" / "distill" / "train_state.pt").is_file()
    monkeypatch.setattr(D, "distill", real)
    resumed = R.run(cfg_b, progress=False)
    assert resumed["results"]["distill"]["fit"]["resumed_from"] == 4
    # ... to the same weights as the uninterrupted run, bit for bit (CPU)
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_pipeline_through_torchrun_matches_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m mpprune run CONFIG` (gloo on CPU): rank 0 runs every stage, both
    processes distil, each half of every global batch; the final weights match one process's within
    float tolerance (DDP sums the gradients in another order)."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed next to this Python")

    def config(out: Path) -> Path:
        path = out.with_suffix(".toml")
        path.write_text(f"""
out = "{out}"
analyze = false
certify = false
[model]
name = "mnist-cnn"
[method]
name = "seb"
sparsity = 0.5
[distill]
epochs = 1
batch_size = 32
lr = 1e-4
warmup_steps = 2
n_train = 256
checkpoint_every = 3
[data]
calib = "mnist"
n_calib = 64
n_eval = 200
""")
        return path

    one = R.run(config(tmp_path / "one"), progress=False)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--standalone", "-m", "mpprune", "run",
                           str(config(tmp_path / "two")), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "state.json").read_text())
    assert two["completed"] == one["completed"] == list(R.STAGES)
    fit_one, fit_two = one["results"]["distill"]["fit"], two["results"]["distill"]["fit"]
    assert (fit_one["world_size"], fit_two["world_size"]) == (1, 2)
    assert fit_one["steps"] == fit_two["steps"] == 8
    a, b = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------- BatchNorm re-estimation as its own step
def _bn_cnn(checkpoint: str | None = None, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, 10)).eval()


def test_distill_reestimates_batchnorm_on_the_training_data(tmp_path, monkeypatch):
    from mpprune.data import mnist_digits

    monkeypatch.setitem(MODELS, "bn-cnn", ModelEntry(
        name="bn-cnn", description="test only", load=_bn_cnn, architecture=_bn_cnn,
        transform=MODELS["mnist-cnn"].transform, mean=(MNIST_MEAN,), std=(MNIST_STD,), num_classes=10))
    cfg = tmp_path / "bn.toml"
    cfg.write_text(f"""
out = "{tmp_path / 'run'}"
analyze = false
certify = false
evaluate = false
macs = false
[model]
name = "bn-cnn"
[method]
name = "magnitude"
sparsity = 0.3
[distill]
epochs = 1
batch_size = 400
lr = 1e-3
warmup_steps = 1
checkpoint_every = 100
bn_batches = 10
[data]
calib = "mnist"
n_calib = 16
batch_size = 16
""")
    res = R.run(cfg, progress=False)["results"]
    assert res["distill"]["bn_reestimated"] == 1
    model, _, _ = load_pruned(tmp_path / "run" / "stages" / "distill" / "model")
    # 10 batches of 400 = the 4,000 training digits; torch's cumulative average of the batch means is then
    # the mean of the BatchNorm's input over all of them, whatever their order (computed here directly)
    train = mnist_digits("train")
    x = torch.stack([train[i][0] for i in range(len(train))])
    assert x.shape[0] == 4000
    with torch.no_grad():
        want = model[0](x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(model[1].running_mean, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[1].running_var, torch.ones(4))
