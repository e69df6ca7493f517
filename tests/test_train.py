"""The shared training pieces: schedule, parameter groups, recipe checks, atomic training states, exact
resume of :func:`mpprune.train.fit` and frozen masks through it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from mpprune.data import SplitDataset
from mpprune.errors import BadInput
from mpprune.masks import MaskStore
from mpprune.train import (
    Recipe,
    fit,
    load_train_state,
    make_optimizer,
    make_scheduler,
    param_groups,
    rng_state,
    save_train_state,
    set_rng_state,
    warmup_cosine,
)


def _data(n: int = 96, d: int = 12, split: str = "train", seed: int = 0) -> SplitDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return SplitDataset(TensorDataset(x, y), split, targets=y.numpy())


def _mlp(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 4))


def _noisy_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # draws from torch's global generator (like a random augmentation) besides the model's dropout
    return F.cross_entropy(net(x + 0.1 * torch.randn_like(x)), y)


RECIPE = Recipe(epochs=3, batch_size=16, lr=1e-2, weight_decay=0.05, warmup_steps=4, seed=3)


# ------------------------------------------------------------------------------------------ schedule
@given(total=st.integers(2, 400), warm_frac=st.floats(0, 0.5))
def test_warmup_cosine_shape(total: int, warm_frac: float) -> None:
    warmup = int(warm_frac * total)
    f = np.array([warmup_cosine(s, total, warmup) for s in range(total + 1)])
    assert np.all(f >= 0) and np.all(f <= 1 + 1e-12)
    if warmup:
        np.testing.assert_allclose(f[:warmup], np.arange(1, warmup + 1) / warmup)
    assert np.all(np.diff(f[warmup:]) <= 1e-12)  # non-increasing after the warm-up
    assert f[warmup] == pytest.approx(1.0)
    assert f[total] == pytest.approx(0.0, abs=1e-12)
    if (total - warmup) % 2 == 0:
        assert f[warmup + (total - warmup) // 2] == pytest.approx(0.5)


def test_recipe_steps_and_warmup_clip() -> None:
    r = Recipe(epochs=3, batch_size=16, warmup_steps=500)
    assert r.total_steps(100) == 3 * 6  # 6 full global batches per epoch, the rest dropped
    assert r.warmup_for(18) == 9
    assert Recipe(epochs=3, batch_size=16, max_steps=5).total_steps(100) == 5
    assert Recipe(warmup_steps=10).warmup_for(1000) == 10


@pytest.mark.parametrize("bad", [
    {"optimizer": "adam"}, {"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("nan")},
    {"weight_decay": -1.0}, {"warmup_steps": -1}, {"max_steps": 0}, {"grad_clip": 0.0},
    {"momentum": 1.0}, {"betas": (0.9, 1.0)},
])
def test_recipe_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(BadInput, match="recipe"):
        Recipe(**bad)


# ----------------------------------------------------------------------------------- param groups
def test_param_groups_no_decay_on_biases_norms_and_embeddings() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                              num_heads=2, init_values=1e-5)
    decay, rest = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in rest["params"]}
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())
    for n, p in model.named_parameters():
        expect_decay = p.ndim >= 2 and n not in ("pos_embed", "cls_token")
        assert (n in decayed) == expect_decay, n
    assert {"pos_embed", "cls_token", "blocks.0.ls1.gamma", "norm.weight", "head.bias"} <= kept
    assert {"patch_embed.proj.weight", "blocks.1.mlp.fc1.weight", "head.weight"} <= decayed


def test_make_optimizer_kinds() -> None:
    model = _mlp()
    adamw = make_optimizer(model, Recipe(optimizer="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    sgd = make_optimizer(model, Recipe(optimizer="sgd", lr=1e-3, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    frozen = _mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(BadInput, match="no trainable"):
        make_optimizer(frozen, Recipe())


# ------------------------------------------------------------------------------------- train state
def test_rng_state_round_trip() -> None:
    import random

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002 - the global generator
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_save_train_state_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.pt"
    save_train_state(path, {"step": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_train_state(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the previous state is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no partial file left
    assert load_train_state(path)["step"] == 1
    with pytest.raises(OSError):
        monkeypatch.setattr(os, "replace", boom)
        save_train_state(tmp_path / "new.pt", {"step": 0})
    monkeypatch.undo()
    assert not (tmp_path / "new.pt").exists()


def test_load_train_state_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"step": 3}, tmp_path / "plain.pt")
    with pytest.raises(BadInput, match="not an mpprune-train-state"):
        load_train_state(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(BadInput, match="cannot read"):
        load_train_state(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_train_state(tmp_path / "missing.pt")


# -------------------------------------------------------------------------------------------- fit
class _Kill(Exception):
    pass


def _killer(at: int):
    def on_step(step: int, loss: float) -> None:
        if step == at:
            raise _Kill

    return on_step


def test_fit_resume_is_bit_identical(tmp_path: Path) -> None:
    data = _data()
    full = _mlp()
    res_full = fit(full, _noisy_loss, data, RECIPE, device="cpu", progress=False)
    assert res_full.steps == res_full.total_steps == 18 and res_full.resumed_from is None

    ckpt = tmp_path / "state.pt"
    broken = _mlp()
    with pytest.raises(_Kill):  # killed mid-epoch 2 (step 9 of 18), after the checkpoint of step 8
        fit(broken, _noisy_loss, data, RECIPE, device="cpu", progress=False, checkpoint=ckpt,
            checkpoint_every=4, on_step=_killer(9))
    state = load_train_state(ckpt)
    assert state["step"] == 8 and state["complete"] is False
    resumed = _mlp(seed=99)  # the weights come from the checkpoint
    res = fit(resumed, _noisy_loss, data, RECIPE, device="cpu", progress=False, checkpoint=ckpt,
              checkpoint_every=4)
    assert res.resumed_from == 8 and res.steps == 18 and len(res.losses) == 10
    assert res.losses == res_full.losses[8:]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    final = load_train_state(ckpt)
    assert final["step"] == 18 and final["complete"] is True
    # a finished run resumes to a no-op
    again = fit(_mlp(seed=5), _noisy_loss, data, RECIPE, device="cpu", progress=False, checkpoint=ckpt)
    assert again.resumed_from == 18 and again.losses == []


def test_fit_resume_without_restoring_differs(tmp_path: Path) -> None:
    """The resume test is not vacuous: restarting from the checkpoint's weights without the optimiser
    and generator states ends elsewhere."""
    data = _data()
    full = _mlp()
    fit(full, _noisy_loss, data, RECIPE, device="cpu", progress=False)
    ckpt = tmp_path / "s.pt"
    with pytest.raises(_Kill):
        fit(_mlp(), _noisy_loss, data, RECIPE, device="cpu", progress=False, checkpoint=ckpt,
            checkpoint_every=4, on_step=_killer(9))
    naive = _mlp()
    naive.load_state_dict(load_train_state(ckpt)["model"])
    fit(naive, _noisy_loss, data, Recipe(**{**RECIPE.__dict__, "epochs": 2}), device="cpu", progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), naive.state_dict().values()))


def test_fit_refuses_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "s.pt"
    fit(_mlp(), _noisy_loss, _data(), RECIPE, device="cpu", progress=False, checkpoint=ckpt)
    other = Recipe(**{**RECIPE.__dict__, "lr": 5e-3})
    with pytest.raises(BadInput, match="another run"):
        fit(_mlp(), _noisy_loss, _data(), other, device="cpu", progress=False, checkpoint=ckpt)
    res = fit(_mlp(), _noisy_loss, _data(), other, device="cpu", progress=False, checkpoint=ckpt,
              resume=False)
    assert res.resumed_from is None and load_train_state(ckpt)["fingerprint"]["recipe"]["lr"] == 5e-3


def test_fit_refuses_bad_data_and_options(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="training split"):
        fit(_mlp(), _noisy_loss, _data(split="val"), RECIPE, device="cpu", progress=False)
    with pytest.raises(BadInput, match="fewer than one global batch"):
        fit(_mlp(), _noisy_loss, _data(n=10), RECIPE, device="cpu", progress=False)
    with pytest.raises(BadInput, match="needs a checkpoint"):
        fit(_mlp(), _noisy_loss, _data(), RECIPE, device="cpu", progress=False, checkpoint_every=2)
    with pytest.raises(BadInput, match="folder"):
        fit(_mlp(), _noisy_loss, _data(), RECIPE, device="cpu", progress=False,
            checkpoint=tmp_path / "missing" / "s.pt", checkpoint_every=2)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fit_keeps_frozen_masks(optimizer: str) -> None:
    model = _mlp(dropout=0.0)
    masks = MaskStore()
    for name in ("0", "3"):
        lin = model.get_submodule(name)
        w = lin.weight.detach()
        keep = w.abs() >= w.abs().median()  # about half pruned
        with torch.no_grad():
            w.mul_(keep)
        masks.add(name, lin, keep)
    before = {n: m.get_submodule(n).weight.detach().clone() for n, m in [("0", model), ("3", model)]}
    recipe = Recipe(epochs=2, batch_size=16, optimizer=optimizer, lr=5e-2, weight_decay=0.1, warmup_steps=1)
    fit(model, _noisy_loss, _data(), recipe, masks=masks, device="cpu", progress=False)
    for name, _, keep in masks.entries():
        w = model.get_submodule(name).weight.detach()
        assert torch.all(w[~keep] == 0)
        assert not torch.equal(w[keep], before[name][keep])  # the kept weights did train
    # the masks' optimiser hooks were removed: a later optimiser step may regrow the zeros
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    F.cross_entropy(model(torch.randn(4, 12)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert int((model.get_submodule("0").weight == 0).sum()) < int((~masks["0"]).sum())


def test_fit_refuses_masks_that_do_not_hold() -> None:
    model = _mlp()
    masks = MaskStore()
    masks.add("0", model.get_submodule("0"), torch.zeros(16, 12, dtype=torch.bool))  # weights are not zero
    with pytest.raises(BadInput, match="not zero"):
        fit(model, _noisy_loss, _data(), RECIPE, masks=masks, device="cpu", progress=False)


def test_scheduler_follows_warmup_cosine() -> None:
    model = _mlp(dropout=0.0)
    opt = make_optimizer(model, Recipe(lr=0.1, weight_decay=0.0))
    sched = make_scheduler(opt, 12, 3)
    used = []
    for _ in range(12):
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    expected = [0.1 * warmup_cosine(s, 12, 3) for s in range(12)]
    np.testing.assert_allclose(np.array(used), np.array([expected, expected]).T, rtol=1e-12)
    assert max(expected) == pytest.approx(0.1) and expected[-1] > 0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
