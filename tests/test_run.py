"""The run config (mpprune.config) and the staged, resumable run (mpprune.run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpprune import run as R
from mpprune.checkpoint import load_pruned
from mpprune.config import load_config, make_method, parse_config, parse_gate
from mpprune.data import calibration_dataset, eval_dataset
from mpprune.errors import BadInput
from mpprune.models import model_spec


# ------------------------------------------------------------------------------------------ config
def test_parse_gate_and_method_validation() -> None:
    assert parse_gate("min_certified=0.99,elastic_net=1e-3:1e-4,backoff=bisect") == {
        "min_certified": 0.99, "elastic_net": (1e-3, 1e-4), "backoff": "bisect"}
    for bad in ("min_certified", "", "1x=2"):
        with pytest.raises(ValueError):
            parse_gate(bad)
    with pytest.raises(ValueError, match="classical_rmt takes no sparsity"):
        make_method("classical_rmt", 0.5)
    with pytest.raises(ValueError, match="unknown method"):
        make_method("random", 0.5)
    with pytest.raises(ValueError, match="needs a sparsity"):
        make_method("seb")
    with pytest.raises(ValueError, match="unknown model"):
        model_spec("not-a-model-xyz")


def test_calibration_refuses_validation_paths(tmp_path: Path) -> None:
    for name in ("val", "validation", "test"):
        d = tmp_path / name
        d.mkdir()
        with pytest.raises(ValueError, match="training split"):
            calibration_dataset(d, model_spec("mnist-cnn"))
    assert calibration_dataset("digits", model_spec("tiny-mlp")).split == "train"
    assert eval_dataset("digits", model_spec("tiny-mlp")).split == "val"



# ------------------------------------------------------------------------------------------- resume
def _config(out: Path) -> dict:
    return {"out": str(out), "model": {"name": "tiny-mlp"}, "method": {"name": "magnitude", "sparsity": 0.5},
            "data": {"calib": "digits", "n_calib": 100, "batch_size": 50}}


def test_run_resumes_after_a_crash(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    cfg = _config(out)
    calls: dict[str, int] = {}
    originals = dict(R.STAGE_FUNCTIONS)

    def counting(stage: str, crash: bool = False):
        def fn(r):
            calls[stage] = calls.get(stage, 0) + 1
            if crash:
                raise RuntimeError(f"simulated crash in {stage}")
            return originals[stage](r)
        return fn

    for s in R.STAGES:
        monkeypatch.setitem(R.STAGE_FUNCTIONS, s, counting(s, crash=(s == "evaluate")))
    with pytest.raises(RuntimeError, match="simulated crash in evaluate"):
        R.run(cfg, progress=False)
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == list(R.STAGES[: R.STAGES.index("evaluate")])  # up to certify
    assert not (out / "model").exists()

    calls.clear()
    for s in R.STAGES:
        monkeypatch.setitem(R.STAGE_FUNCTIONS, s, counting(s))
    final = R.run(cfg, progress=False)
    assert calls == {s: 1 for s in R.STAGES[R.STAGES.index("evaluate"):]}  # completed stages were skipped
    assert final["completed"] == list(R.STAGES)
    # the final checkpoint is the stage-checkpointed pruned model, and it is really 50 % sparse
    stage_model, _, _ = load_pruned(out / "stages" / "prune")
    final_model, _, manifest = load_pruned(out / "model")
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
        R.run(other, progress=False)
    calls.clear()
    R.run(dict(other, analyze=False), resume=False, progress=False)
    assert calls == {s: 1 for s in R.STAGES}


def test_run_from_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'out = "{tmp_path / "o"}"\nanalyze = false\n[model]\nname = "tiny-mlp"\n'
        '[method]\nname = "seb"\nsparsity = 0.4\n[data]\ncalib = "digits"\nn_calib = 50\n'
    )
    state = R.run(cfg, progress=False)
    assert state["completed"] == list(R.STAGES)
    _, masks, man = load_pruned(tmp_path / "o" / "model")
    total = sum(int(m.numel()) for m in masks.to_state_dict().values())
    zeros = sum(int((~m).sum()) for m in masks.to_state_dict().values())
    assert zeros == int(0.4 * total)
    assert man["config"]["method"]["name"] == "seb"
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\n[model]\nname = "tiny-mlp"\n[method]\nname = "seb"\nsparsity = 1.5\n')
    with pytest.raises(ValueError, match="sparsity"):
        load_config(bad)


# ------------------------------------------------------------------------------------- config errors
def _base() -> dict:
    return {"out": "o", "model": {"name": "tiny-mlp"}, "method": {"name": "seb", "sparsity": 0.5},
            "data": {"calib": "digits"}}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(seeds=1), r"unknown key \['seeds'\]; allowed: out, model, method, data, gate"),
        (lambda c: c["data"].update(n_calb=5),
         r"\[data\]: unknown key \['n_calb'\]; allowed: calib, n_calib"),
        (lambda c: c["model"].update(weights="x"), r"\[model\]: unknown key \['weights'\]; allowed: name"),
        (lambda c: c["method"].update(beta=1.0), r"unknown option\(s\) \['beta'\]; allowed: .*strength"),
        (lambda c: c["method"].update(name="random"), r"unknown method 'random'; known: classical_rmt"),
        (lambda c: c["model"].update(kwargs={"depth": 3}), r"takes no option\(s\) \['depth'\]; its options"),
        (lambda c: c["data"].update(n_calib=0), r"n_calib must be >= 1"),
        (lambda c: c["data"].update(calib="x/val"), "training split"),
        (lambda c: c.update(gate={"min_certifed": 0.9}), r"gate: unknown key \['min_certifed'\]; allowed: "
                                                         r"min_certified"),
        (lambda c: c.update(gate={"min_certified": 0.9}, data=None), "a gate needs calibration data"),
        (lambda c: c.update(method={"name": "ser", "sparsity": 0.5}, data=None),
         "selects with training data"),
        (lambda c: c.update(analyze="no"), "analyze must be true or false"),
        (lambda c: c.pop("model"), "missing required section 'model'"),
    ],
)
def test_bad_config_names_the_key_and_the_allowed_ones(edit, match) -> None:
    cfg = _base()
    edit(cfg)
    with pytest.raises(BadInput, match=match):
        parse_config(cfg)


def test_config_round_trip_and_registry_names(tmp_path: Path) -> None:
    from mpprune.methods import SEB
    from mpprune.methods.api import method_config, method_names

    cfg = parse_config(_base() | {"method": {"name": "seb", "sparsity": 0.4, "strength": 0.0}})
    assert cfg.method is not None and cfg.method.build() == SEB(sparsity=0.4, strength=0.0)
    assert parse_config(cfg.to_dict()) == cfg  # the dict form parses back to the same config
    # the method names are the registry's: every name builds its registered config type
    import dataclasses

    assert set(method_names()) == {"magnitude", "seb", "ser", "hybrid", "classical_rmt", "nm"}
    for name in method_names():
        takes_sparsity = "sparsity" in {f.name for f in dataclasses.fields(method_config(name))}
        obj = make_method(name, 0.3 if takes_sparsity else None)
        assert type(obj) is method_config(name)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_base()))
    assert load_config(path) == parse_config(_base())
    path.write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_config(path)


# ------------------------------------------------------------------------------------------ dry run
def test_dry_run_checks_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(out) | {"gate": {"min_certified": 0.5, "estimator": "product_norm"}}
    plan = R.dry_run(cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    absent = {"kn": "skip: no [kn] in the config", "tome": "skip: no [tome] in the config",
              "distill": "skip: no [distill] in the config",
              "gate": "skip: the gate ran inside the prune stage (no later stage changes the weights)"}
    assert plan["stages"] == {s: absent.get(s, "run") for s in R.STAGES}
    assert plan["model"]["parameters"] == sum(p.numel() for p in nn.Sequential(
        nn.Linear(64, 32), nn.Linear(32, 10)).parameters())
    assert plan["method"]["type"] == "Magnitude" and plan["gate"]["min_certified"] == 0.5
    spectra = R.dry_run({"out": str(out), "model": {"name": "tiny-cnn"}, "analyze": True})
    assert spectra["stages"]["analyze"] == "run"
    assert spectra["stages"]["prune"] == "skip: no [method] in the config"
    # a missing checkpoint: the dry run warns and lists it (every other check made), a real run refuses it
    missing = cfg | {"model": {"name": "tiny-mlp", "checkpoint": str(tmp_path / "missing.pt")}}
    with pytest.warns(UserWarning, match="does not exist"):
        plan = R.dry_run(missing)
    assert plan["missing"] == [str(tmp_path / "missing.pt")] and plan["stages"]["load"] == "run"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        R.run(missing, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_run_never_writes_over_an_input(tmp_path: Path) -> None:
    ck = tmp_path / "in" / "w.pt"
    ck.parent.mkdir()
    torch.save(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict(), ck)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cfg = {"out": str(ck.parent), "model": {"name": "tiny-mlp", "checkpoint": str(ck)},
           "method": {"name": "magnitude", "sparsity": 0.5}}
    with pytest.raises(BadInput, match="input checkpoint"):
        R.run(cfg, progress=False)
    with pytest.raises(BadInput, match="input checkpoint"):
        R.dry_run(cfg)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_bad_weights_leave_no_run_directory(tmp_path: Path) -> None:
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        m[0].weight[0, 0] = float("inf")
    ck = tmp_path / "w.pt"
    torch.save(m.state_dict(), ck)
    out = tmp_path / "run"
    with pytest.raises(BadInput, match="NaN/Inf"):
        R.run({"out": str(out), "model": {"name": "tiny-mlp", "checkpoint": str(ck)},
               "method": {"name": "magnitude", "sparsity": 0.5}}, progress=False)
    assert not out.exists()


def test_spectra_only_run(tmp_path: Path) -> None:
    state = R.run({"out": str(tmp_path / "s"), "model": {"name": "tiny-cnn"}}, progress=False)
    assert state["completed"] == list(R.STAGES)
    assert state["results"]["prune"] == {"skipped": "no [method] in the config"}
    rep = json.loads((tmp_path / "s" / "stages" / "analyze" / "spectrum.json").read_text())
    assert len(rep["layers"]) == 5 and not (tmp_path / "s" / "model").exists()


# --------------------------------------------------------------------- pipeline sections of the config
def _vit(out: Path) -> dict:
    return {"out": str(out), "model": {"name": "vit-mnist", "kwargs": {"embed_dim": 32, "depth": 2,
                                                                       "num_heads": 2}},
            "method": {"name": "magnitude", "sparsity": 0.5}, "data": {"calib": "mnist", "n_calib": 64}}


def test_tome_and_distill_sections_parse_and_refuse(tmp_path: Path) -> None:
    base = _vit(tmp_path / "o")
    cfg = parse_config(base | {"tome": {"r": 2, "inflection": -0.5}, "macs": False,
                               "distill": {"epochs": 1, "lr": 1e-4, "n_train": 100, "checkpoint_every": 5}})
    assert cfg.tome is not None and cfg.tome.schedule() == (2, -0.5) and cfg.macs is False
    assert cfg.distill is not None and cfg.distill.build().lr == 1e-4 and cfg.distill.n_train == 100
    assert parse_config(cfg.to_dict()) == cfg  # the recorded config parses back to itself
    for bad, match in [({"tome": {"r": -1}}, "r must be >= 0"),
                       ({"tome": {"r": [1, 2], "inflection": 0.5}}, "inflection applies to an integer r"),
                       ({"tome": {"rr": 2}}, "unknown key"),
                       ({"distill": {"lr": "fast"}}, "lr must be a number"),
                       ({"distill": {"epochs": 0}}, "epochs must be an integer >= 1"),
                       ({"distill": {"checkpoint_every": 0}}, "checkpoint_every must be >= 1"),
                       ({"distill": {"optimiser": "adamw"}}, "unknown key")]:
        with pytest.raises(BadInput, match=match):
            parse_config(base | bad)
    with pytest.raises(BadInput, match=r"\[distill\] fine-tunes a pruned model"):
        parse_config({k: v for k, v in base.items() if k != "method"} | {"distill": {}})
    with pytest.raises(BadInput, match="TRAIN split of 'data.calib'"):
        parse_config({k: v for k, v in base.items() if k != "data"} | {"distill": {}})


def test_dry_run_validates_the_pipeline_stages(tmp_path: Path) -> None:
    out = tmp_path / "o"
    plan = R.dry_run(_vit(out) | {"tome": {"r": 2}, "distill": {"epochs": 1}, "gate": {"min_certified": 0.9}})
    assert plan["stages"]["tome"] == plan["stages"]["distill"] == plan["stages"]["gate"] == "run"
    assert plan["stages"]["kn"] == "skip: no [kn] in the config" and plan["stages"]["macs"] == "run"
    assert plan["tome"] == {"r": [2, 2], "prop_attn": True} and plan["distill"]["epochs"] == 1
    assert plan["missing"] == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(BadInput, match="need timm's VisionTransformer"):  # ToMe checked on the architecture
        R.dry_run(_config(out) | {"tome": {"r": 2}})
    with pytest.raises(BadInput, match="ToMe"):
        R.dry_run(_vit(out) | {"tome": {"r": [1, 1, 1]}})  # one r per block: the model has 2
    assert list(tmp_path.iterdir()) == []


def test_kn_section_is_validated(tmp_path: Path) -> None:
    cfg = _vit(tmp_path / "o") | {"kn": {"pattern": "2:4", "layers": ["blocks.*.mlp.*"]}}
    with pytest.raises(BadInput, match="pattern"):
        parse_config(_vit(tmp_path / "o") | {"kn": {"pattern": "5:4"}})
    plan = R.dry_run(cfg)
    assert plan["kn"]["include"] == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1",
                                     "blocks.1.mlp.fc2"]
    with pytest.raises(BadInput, match="match no prunable layer"):
        R.dry_run(cfg | {"kn": {"pattern": "2:4", "layers": ["nothing.*"]}})
    with pytest.raises(BadInput, match="unknown key"):
        parse_config(cfg | {"kn": {"pattern": "2:4", "source": "x"}})  # the run gives the source


def test_timm_checkpoints_need_95_percent_key_coverage(tmp_path: Path) -> None:
    from mpprune.models import load_timm

    src = load_timm("test_vit", num_classes=5)
    state = src.state_dict()
    total = sum(p.numel() for p in src.parameters())
    # drop the head (a small share of the parameters): loads, with a warning naming the missing keys
    head = {k: v for k, v in state.items() if not k.startswith("head.")}
    assert sum(v.numel() for k, v in state.items() if k.startswith("head.")) < 0.05 * total
    torch.save(head, tmp_path / "nohead.pth")
    with pytest.warns(UserWarning, match="2 model key"):
        model = load_timm("test_vit", tmp_path / "nohead.pth", num_classes=5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in head.items())
    # drop the blocks: far below 95 % -> refused, naming the count of missing keys
    few = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    torch.save(few, tmp_path / "few.pth")
    missing = len([k for k in state if k.startswith("blocks.")])
    with pytest.raises(BadInput, match=rf"{missing} of its {len(state)} keys are missing"):
        load_timm("test_vit", tmp_path / "few.pth", num_classes=5)


def test_vit_mnist_is_registered_without_training_for_dry_runs() -> None:
    from mpprune.models import MODELS, build_model

    entry = MODELS["vit-mnist"]
    assert entry.num_classes == 10 and entry.asset is None and "embed_dim" in entry.options
    model = build_model(model_spec("vit-mnist", embed_dim=32, depth=1, num_heads=2), load_weights=False)
    assert type(model).__name__ == "VisionTransformer" and len(model.blocks) == 1
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert tuple(entry.transform({})(__import__("PIL.Image").Image.new("L", (28, 28))).shape) == (1, 28, 28)


def test_distillation_data_of_an_image_folder_get_timms_training_transforms(tmp_path: Path) -> None:
    """[distill] on an ImageFolder: the TRAIN split, a stratified n_train subset, timm's training
    augmentation (RandAugment, random erasing) for a timm model; none with augment = false."""
    from PIL import Image

    from mpprune.stages import Run, _train_split

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / "imgs" / c / f"{i}.png")
    base = {"out": str(tmp_path / "o"), "model": {"name": "test_vit", "num_classes": 2},
            "method": {"name": "magnitude", "sparsity": 0.5}, "data": {"calib": str(tmp_path / "imgs")}}
    for augment in (True, False):
        cfg = parse_config(base | {"distill": {"n_train": 4, "augment": augment}})
        r = Run(config=cfg, out=tmp_path / "o", state={"completed": [], "results": {}})
        ds = _train_split(r)
        assert ds.split == "train" and len(ds) == 4 and sorted(ds.targets.tolist()) == [0, 0, 1, 1]
        x, _ = ds[0]
        assert tuple(x.shape) == (3, 160, 160)
        inner: object = ds
        while not hasattr(inner, "transform"):  # SplitDataset(Subset(SplitDataset(ImageFolder)))
            inner = getattr(inner, "base", None) or inner.dataset
        text = repr(inner.transform)
        assert ("RandAugment" in text and "RandomErasing" in text) == augment
