"""The small ViT: architecture, augmentation, deterministic training on the real MNIST training digits
(tiny configurations only), the cache outside the clone, and the command. The full model is built only
by the ``slow`` test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import mpprune.vit_mnist as vm
from mpprune.data import mnist_digits
from mpprune.errors import BadInput
from mpprune.train import Recipe

TINY = {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
TINY_TRAINING = vm.ViTMnistTraining(
    recipe=Recipe(epochs=1, batch_size=64, lr=3e-3, weight_decay=0.05, warmup_steps=2, seed=0),
    n_train=256, threads=1,
)


def test_architecture() -> None:
    model = vm.vit_mnist_architecture()
    assert isinstance(model, VisionTransformer) and not model.training
    p = vm.ARCH_DEFAULTS["patch_size"]
    assert model.patch_embed.num_patches == (28 // p) ** 2 and model.num_prefix_tokens == 1
    assert model.global_pool == "avg" and len(model.blocks) == vm.ARCH_DEFAULTS["depth"]
    assert vm.vit_mnist_architecture(global_pool="token").global_pool == "token"
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    again = vm.vit_mnist_architecture()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = vm.vit_mnist_architecture(seed=1)
    assert not torch.equal(model.head.weight, other.head.weight)
    for bad in ({"patch_size": 5}, {"embed_dim": 30, "num_heads": 4}, {"depth": 0}, {"global_pool": "map"}):
        with pytest.raises(BadInput):
            vm.vit_mnist_architecture(**bad)


def test_augment() -> None:
    bg = (0.0 - 0.1307) / 0.3081
    x = mnist_digits("train")[0][0][None].repeat(8, 1, 1, 1)
    assert torch.equal(vm.augment(x, 0, 0, 0), x)
    blank = torch.full((4, 1, 28, 28), bg)
    torch.testing.assert_close(vm.augment(blank, 10, 0.1, 2), blank)  # the background stays background
    torch.manual_seed(0)
    a = vm.augment(x, 10, 0.1, 2)
    torch.manual_seed(0)
    b = vm.augment(x, 10, 0.1, 2)
    assert torch.equal(a, b) and not torch.equal(a, x)
    # a pure shift of at most 2 pixels moves the ink's centre of mass by at most 2 pixels
    shifted = vm.augment(x, 0, 0, 2)
    grid = torch.arange(28, dtype=torch.float32)

    def centre(img: torch.Tensor) -> torch.Tensor:
        ink = (img[:, 0] - bg).clamp(min=0)
        mass = ink.sum((1, 2))[:, None]
        return torch.stack([(ink.sum(2) * grid).sum(1), (ink.sum(1) * grid).sum(1)], 1) / mass

    moved = (centre(shifted) - centre(x)).abs()
    assert float(moved.max()) <= 2.0 + 0.05 and float(moved.max()) > 0.1


def test_cache_dir_is_outside_the_clone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(vm.CACHE_ENV, raising=False)
    default = vm.cache_dir()
    assert default == Path.home() / ".cache" / "mpprune"
    repo = Path(__file__).resolve().parents[1]
    assert repo not in default.resolve().parents
    monkeypatch.setenv(vm.CACHE_ENV, str(tmp_path))
    assert vm.cache_dir() == tmp_path
    assert vm.cached_path(TINY, TINY_TRAINING).parent == tmp_path / "vit-mnist"
    # the key follows the architecture and the recipe, not the thread count
    assert vm.cache_key(TINY, TINY_TRAINING) == vm.cache_key(TINY, replace(TINY_TRAINING, threads=2))
    assert vm.cache_key(TINY, TINY_TRAINING) != vm.cache_key({**TINY, "depth": 2}, TINY_TRAINING)
    seeded = replace(TINY_TRAINING, recipe=replace(TINY_TRAINING.recipe, seed=1))
    assert vm.cache_key(TINY, TINY_TRAINING) != vm.cache_key(TINY, seeded)
    with pytest.raises(BadInput, match="unknown option"):
        vm.cache_key({"width": 3}, TINY_TRAINING)


def test_training_is_deterministic_and_seeded() -> None:
    m1, man1 = vm.train_vit_mnist(TINY, TINY_TRAINING, progress=False)
    m2, man2 = vm.train_vit_mnist(TINY, TINY_TRAINING, progress=False)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    same = {k: v for k, v in man1.items() if k != "wall_s"}
    assert same == {k: v for k, v in man2.items() if k != "wall_s"}
    seeded = replace(TINY_TRAINING, recipe=replace(TINY_TRAINING.recipe, seed=1))
    m3, _ = vm.train_vit_mnist(TINY, seeded, progress=False)
    assert not torch.equal(m1.head.weight, m3.head.weight)
    assert man1["steps"] == 4 and man1["train_data"]["n"] == 256 and man1["seed"] == 0
    full = mnist_digits("train")
    assert man1["train_data"]["sha256"] != vm.data_sha256(full)  # the first 256 digits only
    one_step = replace(TINY_TRAINING, recipe=replace(TINY_TRAINING.recipe, max_steps=1), n_train=None)
    _, man_all = vm.train_vit_mnist(TINY, one_step, progress=False)
    expected = {"source": "mnist_digits('train')", "n": 4000, "sha256": vm.data_sha256(full)}
    assert man_all["train_data"] == expected
    assert 0.0 <= man1["val_accuracy"] <= 1.0 and man1["val_n"] == 1000


def test_a_short_training_learns_the_digits() -> None:
    """Fast twin of the slow full-model test: a width-32 one-block ViT, the 4,000 real training digits,
    4 epochs without augmentation (500 steps) -- measured 0.707 on the 1,000 held-out digits."""
    training = replace(TINY_TRAINING, n_train=None, rotate=0.0, scale=0.0, shift=0.0,
                       recipe=replace(TINY_TRAINING.recipe, epochs=4, batch_size=32, warmup_steps=10))
    _, manifest = vm.train_vit_mnist({**TINY, "embed_dim": 32}, training, progress=False)
    assert manifest["val_accuracy"] > 0.5  # chance is 0.1


def test_build_cached_publishes_once_and_is_read_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(vm.CACHE_ENV, str(tmp_path))
    folder = vm.build_cached(TINY, TINY_TRAINING, progress=False)
    assert folder == vm.cached_path(TINY, TINY_TRAINING)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{folder.name}.lock", folder.name]
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("seed", "epochs", "train_data", "val_accuracy", "versions", "architecture", "training",
                "weights_sha256", "threads"):
        assert key in manifest, key
    assert manifest["versions"]["torch"] is not None and manifest["train_data"]["n"] == 256
    train = vm.train_vit_mnist

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(vm, "train_vit_mnist", no_training)
    assert vm.build_cached(TINY, TINY_TRAINING, progress=False) == folder
    model = vm.load_vit_mnist(**TINY, training=TINY_TRAINING)
    trained, _ = train(TINY, TINY_TRAINING, progress=False)
    for (k, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    # a checkpoint file is loaded instead of the cache
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    again = vm.load_vit_mnist(tmp_path / "w.safetensors", **TINY)
    assert torch.equal(again.head.weight, model.head.weight)
    with pytest.raises(FileNotFoundError):
        vm.load_vit_mnist(tmp_path / "missing.safetensors", **TINY)
    # weights that do not match the manifest are refused
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BadInput, match="do not match their manifest"):
        vm.load_vit_mnist(**TINY, training=TINY_TRAINING)


def test_command_builds_and_reports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(vm, "ARCH_DEFAULTS", TINY)
    monkeypatch.setattr(vm, "DEFAULT_RECIPE", TINY_TRAINING)
    assert vm.main(["--cache", str(tmp_path), "--epochs", "1", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "val accuracy" in out and str(tmp_path) in out
    folder = next((tmp_path / "vit-mnist").iterdir(), None)
    assert folder is not None


@pytest.mark.slow
def test_full_model_reaches_its_accuracy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Builds the cached model from scratch (minutes on 2 cores)."""
    monkeypatch.setenv(vm.CACHE_ENV, str(tmp_path))
    folder = vm.build_cached(progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["val_accuracy"] >= 0.97
    model = vm.load_vit_mnist()
    from mpprune.data import accuracy

    assert accuracy(model, mnist_digits("val")) == manifest["val_accuracy"]
