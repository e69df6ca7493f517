"""Real-model loading (mpprune.models) and split discipline / calibration sampling (mpprune.data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from mpprune.data import (
    SplitDataset,
    calibration_batches,
    calibration_indices,
    image_folder,
    mnist_digits,
    sklearn_digits,
    stratified_split_indices,
)
from mpprune.layers import find_layers
from mpprune.models import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    asset_path,
    load_efficientnet_lite0,
    load_minilm_linears,
    load_mnist_cnn,
    load_timm,
    tiny_cnn,
    tiny_mlp,
)

# ---------------------------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------------------------


def test_mnist_cnn_is_accurate_on_real_val_digits():
    model = load_mnist_cnn()
    assert not model.training
    val = mnist_digits("val")
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.as_tensor(val.targets)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert len(val) == 1000
    assert acc >= 0.95
    # wrong normalisation must hurt: the check really depends on loading + preprocessing being right
    raw = mnist_digits("val", normalize=False)
    xr = torch.stack([raw[i][0] for i in range(len(raw))]) * 5.0 - 3.0
    with torch.no_grad():
        acc_bad = (model(xr).argmax(1) == y).float().mean().item()
    assert acc_bad < acc


# ImageNet classes that describe the sample photo (a Chinese temple/palace by a lake):
# 449 boathouse, 483 castle, 497 church, 663 monastery, 698 palace, 832 stupa, 442 bell cote, 975 lakeside
PLAUSIBLE_CHINA = {442, 449, 483, 497, 663, 698, 832, 975}


def test_efficientnet_lite0_classifies_sample_photo():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    img = sklearn_datasets.load_sample_image("china.jpg")  # (427, 640, 3) uint8
    x = torch.as_tensor(np.array(img)).permute(2, 0, 1).float()[None] / 255.0
    width = round(224 * img.shape[1] / img.shape[0])
    x = F.interpolate(x, size=(224, width), mode="bilinear", antialias=True)
    left = (x.shape[-1] - 224) // 2
    x = x[..., left : left + 224]
    mean = torch.tensor(EFFICIENTNET_LITE0_MEAN)[:, None, None]
    std = torch.tensor(EFFICIENTNET_LITE0_STD)[:, None, None]
    model = load_efficientnet_lite0()
    assert not model.training
    with torch.no_grad():
        p = model((x - mean) / std).softmax(-1)[0]
    top5 = p.topk(5).indices.tolist()
    assert top5[0] in PLAUSIBLE_CHINA
    assert len(PLAUSIBLE_CHINA.intersection(top5)) >= 3
    assert p[top5[0]] > 0.2
    kinds = [i.kind for i in find_layers(model)]
    assert kinds.count("conv2d_depthwise") == 16 and kinds.count("linear") == 1


def test_load_timm_local_checkpoint_round_trip(tmp_path):
    src = load_timm("test_vit", num_classes=7)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ckpt.pth"
    torch.save(src.state_dict(), path)
    model = load_timm("test_vit", checkpoint=path, num_classes=7)
    assert not model.training
    for (k, a), (_, b) in zip(src.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


def test_timm_name_with_a_local_checkpoint_through_the_spec(tmp_path):
    """Any timm name is a model: model_spec/build_model load it strictly from a local file."""
    from mpprune.errors import BadInput
    from mpprune.models import build_model, model_spec

    src = load_timm("test_vit", num_classes=5)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    spec = model_spec("test_vit", path, num_classes=5)
    assert spec["kind"] == "timm"
    model = build_model(spec)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), model.state_dict().values()))
    with pytest.raises(BadInput, match="cannot load the checkpoint"):
        build_model(model_spec("test_vit", path, num_classes=3))  # the head does not fit


def test_load_timm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_timm("test_vit", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a file"):
        load_timm("test_vit", checkpoint=tmp_path)
    with pytest.raises(ValueError, match="unknown timm model"):
        load_timm("no_such_model_xyz")
    with pytest.raises(FileNotFoundError):
        load_mnist_cnn(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown asset"):
        asset_path("nope")


def test_minilm_linears_match_file():
    safetensors = pytest.importorskip("safetensors")
    weights = load_minilm_linears()
    assert isinstance(weights, dict)
    # 6 layers x (query, key, value, attention.output.dense, intermediate.dense, output.dense) + pooler
    assert len(weights) == 37
    assert weights["encoder.layer.0.attention.self.query"].shape == (384, 384)
    assert weights["encoder.layer.5.intermediate.dense"].shape == (1536, 384)
    assert weights["encoder.layer.5.output.dense"].shape == (384, 1536)
    assert not any("embeddings" in k for k in weights)
    with safetensors.safe_open(str(asset_path("minilm")), framework="pt") as f:
        ref = f.get_tensor("encoder.layer.3.attention.self.value.weight")
        bias = f.get_tensor("encoder.layer.3.attention.self.value.bias")
    assert torch.equal(weights["encoder.layer.3.attention.self.value"], ref)
    module = load_minilm_linears(as_module=True)
    assert isinstance(module, nn.Module) and not module.training
    lin = module.get_submodule("encoder.layer.3.attention.self.value")
    x = torch.randn(2, 384)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), x @ ref.T + bias)
    assert {i.name for i in find_layers(module)} == set(weights)


def test_tiny_models_deterministic_and_eval():
    a, b = tiny_mlp((8, 6, 3), seed=1), tiny_mlp((8, 6, 3), seed=1)
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(tiny_mlp((8, 6, 3), seed=2)[0].weight, a[0].weight)
    cnn = tiny_cnn()
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    kinds = [i.kind for i in find_layers(cnn)]
    assert kinds == ["conv2d", "conv2d_grouped", "conv2d_depthwise", "conv2d", "linear"]
    with pytest.raises(ValueError, match="sizes"):
        tiny_mlp((5,))


# ---------------------------------------------------------------------------------------------
# data: splits
# ---------------------------------------------------------------------------------------------


def test_mnist_digits_split_is_stratified_disjoint_and_seeded():
    tr, va = mnist_digits("train"), mnist_digits("val")
    assert (tr.split, va.split) == ("train", "val")
    assert np.bincount(tr.targets).tolist() == [400] * 10
    assert np.bincount(va.targets).tolist() == [100] * 10
    xtr = torch.stack([tr[i][0] for i in range(len(tr))]).reshape(len(tr), -1)
    xva = torch.stack([va[i][0] for i in range(len(va))]).reshape(len(va), -1)
    # disjoint and covering: the multiset of rows equals the file's (compared via row hashes)
    raw = np.loadtxt(asset_path("mnist_5k"), delimiter=",", dtype=np.float32)[:, :784] / 255.0
    back = torch.cat([xtr, xva]) * 0.3081 + 0.1307
    assert float(back.min()) > -1e-5 and float(back.max()) < 1 + 1e-5
    np.testing.assert_allclose(np.sort(back.numpy().sum(1)), np.sort(raw.sum(1)), rtol=1e-4)
    again = mnist_digits("val")
    assert torch.equal(torch.stack([again[i][0] for i in range(5)]), xva[:5].reshape(5, 1, 28, 28))
    other = mnist_digits("val", seed=1)
    assert not np.array_equal(
        torch.stack([other[i][0] for i in range(50)]).numpy(), xva[:50].reshape(50, 1, 28, 28).numpy()
    )
    with pytest.raises(ValueError, match="test_fraction"):
        mnist_digits("test")
    with pytest.raises(ValueError, match="split"):
        mnist_digits("validation")


@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    f_val=st.floats(0.05, 0.5),
    seed=st.integers(0, 100),
)
def test_stratified_split_partitions_each_class(counts, f_val, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    parts = stratified_split_indices(y, [1 - f_val, f_val], seed)
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))  # disjoint and covering
    for c, n_c in enumerate(counts):
        n_val = int(np.sum(y[parts[1]] == c))
        assert abs(n_val - f_val * n_c) <= 0.5 + 1e-9


def test_sklearn_digits_splits():
    tr, va = sklearn_digits("train"), sklearn_digits("val")
    assert len(tr) + len(va) == 1797 and tr.split == "train" and va.split == "val"
    x, y = tr[0]
    assert x.shape == (64,) and 0 <= float(x.min()) and float(x.max()) <= 1 and 0 <= int(y) <= 9
    assert sklearn_digits("test", test_fraction=0.1)[0][0].shape == (64,)
    assert sklearn_digits("train", flatten=False)[0][0].shape == (1, 8, 8)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (4, 4), (k * 40, 0, 0)).save(d / f"{k}.png")
    ds = image_folder(tmp_path, "val")
    assert ds.split == "val" and len(ds) == 6 and ds.classes == ["cat", "dog"]
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="train split"):
        calibration_batches(ds, 2)
    with pytest.raises(FileNotFoundError):
        image_folder(tmp_path / "nope", "train")


# ---------------------------------------------------------------------------------------------
# data: calibration
# ---------------------------------------------------------------------------------------------


def _toy(split: str, y: np.ndarray) -> SplitDataset:
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # item i carries its own index
    return SplitDataset(TensorDataset(x, torch.as_tensor(y)), split, targets=y)


def test_calibration_refuses_non_train_and_bad_sizes():
    y = np.repeat(np.arange(3), 10)
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="train split"):
            calibration_batches(_toy(split, y), 5)
    with pytest.raises(ValueError, match="carry its split"):
        calibration_batches(TensorDataset(torch.zeros(4, 1), torch.zeros(4)), 2)
    with pytest.raises(ValueError, match="empty"):
        calibration_batches(_toy("train", np.zeros(0, dtype=np.int64)), 1)
    with pytest.raises(ValueError, match="n must be"):
        calibration_batches(_toy("train", y), 0)
    with pytest.raises(ValueError, match="n must be"):
        calibration_batches(_toy("train", y), 31)
    with pytest.raises(ValueError, match="batch_size"):
        calibration_batches(_toy("train", y), 3, batch_size=0)
    with pytest.raises(ValueError, match="split must be"):
        SplitDataset(TensorDataset(torch.zeros(2, 1)), "validation", targets=[0, 1])


@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
    bs=st.integers(1, 16),
)
def test_calibration_is_stratified_distinct_and_seeded(counts, frac, seed, bs):
    y = np.repeat(np.arange(len(counts)), counts)
    ds = _toy("train", y)
    n = max(1, int(frac * len(y)))
    batches = calibration_batches(ds, n, batch_size=bs, seed=seed)
    idx = torch.cat([xb[:, 0] for xb, _ in batches]).long().numpy()
    labels = torch.cat([yb for _, yb in batches]).numpy()
    assert len(idx) == n == len(set(idx.tolist()))
    assert all(len(xb) <= bs for xb, _ in batches)
    assert np.array_equal(labels, y[idx])  # labels travel with their inputs
    for c, n_c in enumerate(counts):
        got = int(np.sum(labels == c))
        assert abs(got - n * n_c / len(y)) < 1.0 + 1e-9 and got <= n_c
    again = calibration_batches(ds, n, batch_size=bs, seed=seed)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_calibration_seed_changes_sample_and_covers_classes_on_real_digits():
    tr = mnist_digits("train")
    a = calibration_indices(tr.targets, 100, seed=0)
    b = calibration_indices(tr.targets, 100, seed=1)
    assert set(a.tolist()) != set(b.tolist())
    assert np.bincount(tr.targets[a], minlength=10).tolist() == [10] * 10
    batches = calibration_batches(tr, 64, batch_size=32)
    assert [tuple(xb.shape) for xb, _ in batches] == [(32, 1, 28, 28), (32, 1, 28, 28)]


# ---------------------------------------------------------------------------------------------
# the model registry
# ---------------------------------------------------------------------------------------------


def test_registry_is_the_one_list_of_models(capsys):
    from mpprune.cli import main
    from mpprune.models import MODELS, assets, model_names

    assert model_names() == tuple(MODELS) == ("mnist-cnn", "efficientnet-lite0", "minilm", "tiny-mlp",
                                              "tiny-cnn", "vit-mnist")
    assert set(assets()) == {"mnist-cnn", "efficientnet-lite0", "minilm", "mnist-5k"}
    assert asset_path("mnist_cnn") == asset_path("mnist-cnn") == MODELS["mnist-cnn"].asset.locate()
    main(["prune", "--help"])
    text = "".join(capsys.readouterr().out.split())  # the help is wrapped, also at hyphens
    assert all(name in text for name in model_names())


def test_adding_a_model_is_one_entry(tmp_path):
    from mpprune.data import calibration_dataset
    from mpprune.errors import BadInput
    from mpprune.models import MODELS, ModelEntry, build_model, image_transform, model_spec, register_model

    def wide(width: int = 12) -> nn.Module:
        return tiny_mlp((64, width, 10), seed=5)

    def load(checkpoint=None, width: int = 12) -> nn.Module:
        model = wide(width)
        if checkpoint is not None:
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval()

    register_model(ModelEntry(name="wide-mlp", description="test", load=load, architecture=wide,
                              num_classes=10, flat_input=True,
                              transform=lambda opts: (lambda img: torch.zeros(64))))
    try:
        assert MODELS["wide-mlp"].options == ("width",)
        spec = model_spec("wide-mlp", width=20)
        model = build_model(spec)
        assert model[0].out_features == 20 and model.mpprune_spec["name"] == "wide-mlp"
        with pytest.raises(BadInput, match=r"takes no option\(s\) \['depth'\]; its options: \['width'\]"):
            model_spec("wide-mlp", depth=2)
        assert calibration_dataset("digits", spec)[0][0].shape == (64,)  # flat_input: digits flattened
        assert image_transform(spec)(None).shape == (64,)
        ck = tmp_path / "w.pt"
        torch.save(wide(20).state_dict(), ck)
        loaded = build_model(model_spec("wide-mlp", ck, width=20))
        assert torch.equal(loaded[0].weight, wide(20)[0].weight)
        with pytest.raises(BadInput, match="cannot load the checkpoint"):
            build_model(model_spec("wide-mlp", ck, width=12))  # shapes do not fit
    finally:
        MODELS.pop("wide-mlp")


def test_builtin_transforms_and_architectures():
    from PIL import Image

    from mpprune.errors import BadInput
    from mpprune.models import MNIST_MEAN, MNIST_STD, MnistCNN, build_model, image_transform, model_spec

    img = Image.new("RGB", (40, 30), (255, 255, 255))
    x = image_transform(model_spec("mnist-cnn"))(img)
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, (1 - MNIST_MEAN) / MNIST_STD))
    assert image_transform(model_spec("efficientnet-lite0"))(img).shape == (3, 224, 224)
    assert image_transform(model_spec("tiny-cnn", in_channels=3))(img).shape == (3, 32, 32)
    assert image_transform(model_spec("tiny-mlp"))(img).shape == (64,)
    with pytest.raises(BadInput, match="no image input"):
        image_transform(model_spec("minilm"))
    arch = build_model(model_spec("mnist-cnn"), load_weights=False)
    trained = load_mnist_cnn().fc_layers[2].weight
    assert type(arch) is MnistCNN and not torch.equal(arch.fc_layers[2].weight, trained)


def test_data_sources_and_accuracy(tmp_path):
    from PIL import Image

    from mpprune.data import (
        BUILTIN_DATASETS,
        VALIDATION_DIR_NAMES,
        accuracy,
        calibration_dataset,
        eval_dataset,
        is_builtin_dataset,
    )
    from mpprune.errors import BadInput
    from mpprune.models import model_spec

    assert tuple(BUILTIN_DATASETS) == ("mnist", "digits") and is_builtin_dataset("digits")
    assert not is_builtin_dataset(str(tmp_path))
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            Image.new("L", (10, 10), 200 if cls == "a" else 20).save(d / "0.png")
    spec = model_spec("tiny-mlp")
    tr = calibration_dataset(tmp_path / "imgs", spec)
    assert tr.split == "train" and tr[0][0].shape == (64,)  # the registry's transform for tiny-mlp
    assert eval_dataset(tmp_path / "imgs", spec).split == "val"
    for name in VALIDATION_DIR_NAMES:
        with pytest.raises(BadInput, match="training split"):
            calibration_dataset(tmp_path / "imgs" / name, spec)
    with pytest.raises(FileNotFoundError, match="builtin data sets: mnist, digits"):
        calibration_dataset(tmp_path / "missing", spec)
    model = nn.Sequential(nn.Linear(64, 2))
    ds = TensorDataset(torch.randn(9, 64), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0]))
    with torch.no_grad():
        pred = model(ds.tensors[0]).argmax(1)
    assert accuracy(model, ds, limit=4, batch_size=3) == float((pred[:4] == ds.tensors[1][:4]).float().mean())
