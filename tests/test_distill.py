"""Frozen-mask distillation: the loss of digest §3.12, masks and k:n legality through training, exact
resume, ToMe-patched students, BatchNorm re-estimation, and 2 torchrun processes vs one."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from torch import nn
from torch.utils.data import Subset, TensorDataset

from mpprune.data import SplitDataset, mnist_digits
from mpprune.distill import DistillRecipe, distill, distill_loss, reestimate_batchnorm
from mpprune.errors import BadInput
from mpprune.masks import MaskStore, check_legal
from mpprune.train import Recipe, load_train_state
from mpprune.vit_mnist import vit_mnist_architecture

# class-token readout: a random average-pooling ViT gives nearly the same logits for every digit
TINY = {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
        "global_pool": "token"}


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 magnitude mask of a (out, in) weight along its input axis (True = kept)."""
    out, inp = weight.shape
    groups = weight.detach().abs().reshape(out, inp // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(out, inp)


def is_two_four(mask: torch.Tensor) -> bool:
    return bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) <= 2).all())


def train_subset(n: int) -> SplitDataset:
    full = mnist_digits("train")
    return SplitDataset(Subset(full, range(n)), "train", targets=full.targets[:n])


def ddp_case(n: int = 128, optimizer: str = "adamw") -> tuple[nn.Module, nn.Module, MaskStore, SplitDataset,
                                                              DistillRecipe]:
    """A tiny ViT teacher, a 2:4-pruned student of it (MLP layers), ``n`` real training digits, a recipe."""
    teacher = vit_mnist_architecture(**TINY, seed=1)
    with torch.no_grad():
        teacher.head.weight.mul_(30.0)  # sharp, input-dependent logits (a fresh ViT's are nearly uniform)
    student = copy.deepcopy(teacher)
    masks = MaskStore()
    for name in ("blocks.0.mlp.fc1", "blocks.0.mlp.fc2"):
        lin = student.get_submodule(name)
        keep = two_four(lin.weight)
        with torch.no_grad():
            lin.weight.mul_(keep)
        masks.add(name, lin, keep)
    lr = 1e-3 if optimizer == "adamw" else 0.05
    recipe = DistillRecipe(epochs=2, batch_size=32, optimizer=optimizer, lr=lr, weight_decay=0.05,
                           warmup_steps=2, seed=4)
    return student, teacher, masks, train_subset(n), recipe


# ------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize(("alpha", "tau", "ls"), [(0.5, 2.0, 0.1), (0.0, 2.0, 0.1), (1.0, 1.0, 0.0),
                                                  (0.3, 4.0, 0.2)])
def test_distill_loss_matches_the_formula(alpha: float, tau: float, ls: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    got = float(distill_loss(s, t, y, alpha, tau, ls))
    sn, tn = s.numpy(), t.numpy()
    k = sn.shape[1]
    target = np.full_like(sn, ls / k)
    target[np.arange(6), y.numpy()] += 1 - ls
    ce = -np.mean(np.sum(target * log_softmax(sn, axis=1), axis=1))
    lp_t, lp_s = log_softmax(tn / tau, axis=1), log_softmax(sn / tau, axis=1)
    kl = np.mean(np.sum(np.exp(lp_t) * (lp_t - lp_s), axis=1))
    assert got == pytest.approx((1 - alpha) * ce + alpha * tau**2 * kl, rel=1e-10)


def test_distill_loss_gradient_does_not_reach_the_teacher() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    distill_loss(s, t, torch.tensor([0, 1, 2, 0])).backward()
    assert s.grad is not None and t.grad is None


def test_distill_recipe_defaults_and_checks() -> None:
    r = DistillRecipe()
    assert (r.alpha, r.tau, r.label_smoothing, r.epochs, r.optimizer) == (0.5, 2.0, 0.1, 3, "adamw")
    for bad in ({"alpha": 1.5}, {"tau": 0.0}, {"label_smoothing": 1.0}, {"lr": -1.0}):
        with pytest.raises(BadInput, match="recipe"):
            DistillRecipe(**bad)


# ------------------------------------------------------------------------------------------ distill
def test_distill_keeps_two_four_masks_and_approaches_the_teacher() -> None:
    student, teacher, masks, data, recipe = ddp_case(256)
    x = torch.stack([data[i][0] for i in range(64)])
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    def kl_to_teacher() -> float:
        with torch.no_grad():
            return float(distill_loss(student.eval()(x), teacher.eval()(x), torch.zeros(64, dtype=torch.long),
                                      alpha=1.0, tau=1.0))

    before = kl_to_teacher()
    # alpha = 1: the loss is the distillation term alone (this random teacher knows no labels)
    res = distill(student, teacher, masks, data, replace(recipe, alpha=1.0), device="cpu", progress=False)
    assert res.model is student and res.fit.steps == 16
    check_legal(masks, student)
    for _, mod, keep in masks.entries():
        assert is_two_four(keep) and torch.all(mod.weight[~keep] == 0)
    assert kl_to_teacher() < 0.5 * before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())


def test_distill_resume_after_a_kill_is_bit_identical(tmp_path: Path) -> None:
    student, teacher, masks, data, recipe = ddp_case()
    distill(student, teacher, masks, data, recipe, device="cpu", progress=False)

    s2, t2, m2, _, _ = ddp_case()
    ckpt = tmp_path / "distill.pt"

    def kill(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(s2, t2, m2, data, recipe, device="cpu", progress=False, checkpoint=ckpt,
                checkpoint_every=2, on_step=kill)
    assert load_train_state(ckpt)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["distill.pt"]  # no half-written file beside it
    s3, t3, m3, _, _ = ddp_case()
    res = distill(s3, t3, m3, data, recipe, device="cpu", progress=False, checkpoint=ckpt, checkpoint_every=2)
    assert res.fit.resumed_from == 2 and res.fit.steps == 8
    for (k, a), b in zip(student.state_dict().items(), s3.state_dict().values()):
        assert torch.equal(a, b), k


def test_distill_refuses_another_teacher_on_resume(tmp_path: Path) -> None:
    student, teacher, masks, data, recipe = ddp_case()
    ckpt = tmp_path / "d.pt"
    distill(student, teacher, masks, data, recipe, device="cpu", progress=False, checkpoint=ckpt)
    s2, _, m2, _, _ = ddp_case()
    other = vit_mnist_architecture(**TINY, seed=2)
    with pytest.raises(BadInput, match="another run"):
        distill(s2, other, m2, data, recipe, device="cpu", progress=False, checkpoint=ckpt)


def test_distill_trains_a_tome_patched_student() -> None:
    from mpprune.tome import apply_tome, is_tome_patched, tome_token_counts

    student, teacher, masks, data, recipe = ddp_case()
    apply_tome(student, 2)
    before = student.blocks[0].mlp.fc1.weight.detach().clone()
    distill(student, teacher, masks, data, recipe, device="cpu", progress=False)
    assert is_tome_patched(student)
    student(data[0][0][None])
    assert tome_token_counts(student) == [(17, 15)]  # 16 patches + class token, 2 merged before the MLP
    check_legal(masks, student)
    w = student.blocks[0].mlp.fc1.weight.detach()
    assert not torch.equal(w, before) and torch.all(w[~masks["blocks.0.mlp.fc1"]] == 0)


def test_distill_refusals() -> None:
    student, teacher, masks, data, recipe = ddp_case()
    with pytest.raises(BadInput, match="separate"):
        distill(student, student, masks, data, recipe, device="cpu", progress=False)
    with pytest.raises(BadInput, match="DistillRecipe"):
        distill(student, teacher, masks, data, Recipe(), device="cpu", progress=False)  # type: ignore[arg-type]
    val = mnist_digits("val")
    with pytest.raises(BadInput, match="training split"):
        distill(student, teacher, masks, val, recipe, device="cpu", progress=False)


# ------------------------------------------------------------------------------- BatchNorm statistics
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_reestimate_batchnorm_is_the_average_of_batch_statistics() -> None:
    model = _bn_net().eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(8, 1, 8, 8, generator=g) * (i + 1) + i for i in range(3)]
    data = SplitDataset(TensorDataset(torch.cat(xs), torch.zeros(24, dtype=torch.long)), "train",
                        targets=np.zeros(24, dtype=int))
    batches = [(x, torch.zeros(8, dtype=torch.long)) for x in xs]
    assert reestimate_batchnorm(model, batches) == 1
    assert not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        feats = [model[0](x) for x in xs]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    # max_batches: only the first batch counts
    reestimate_batchnorm(model, batches, max_batches=1)
    torch.testing.assert_close(model[1].running_mean, feats[0].mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    # a DataLoader over a training split works; a validation split is refused
    from torch.utils.data import DataLoader

    assert reestimate_batchnorm(model, DataLoader(data, batch_size=8)) == 1
    val = SplitDataset(data.base, "val", targets=data.targets)
    with pytest.raises(BadInput, match="training split"):
        reestimate_batchnorm(model, DataLoader(val, batch_size=8))
    with pytest.raises(BadInput, match="no batches"):
        reestimate_batchnorm(model, [])


def test_reestimate_batchnorm_without_batchnorm_does_nothing() -> None:
    model = vit_mnist_architecture(**TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert reestimate_batchnorm(model, [torch.zeros(2, 1, 28, 28)]) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# ------------------------------------------------------------------------------------------ torchrun
_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_distill import ddp_case
from mpprune.distill import distill
torch.set_num_threads(1)
student, teacher, masks, data, recipe = ddp_case(optimizer="sgd")
res = distill(student, teacher, masks, data, recipe, device="cpu", progress=False)
if torch.distributed.get_rank() == 0:
    torch.save({{"state": student.state_dict(), "world": res.fit.world_size, "losses": res.fit.losses}},
               {out!r})
torch.distributed.destroy_process_group()
"""


def test_torchrun_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_distill.py"
    out = tmp_path / "ddp.pt"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world"] == 2

    student, teacher, masks, data, recipe = ddp_case(optimizer="sgd")
    start = {k: v.clone() for k, v in student.state_dict().items()}
    res = distill(student, teacher, masks, data, recipe, device="cpu", progress=False)
    assert res.fit.world_size == 1
    np.testing.assert_allclose(ddp["losses"], res.fit.losses, rtol=1e-4, atol=1e-5)
    moved = max(float((v - start[k]).abs().max()) for k, v in student.state_dict().items())
    # SGD: DDP's gradient average differs from one process's by round-off only. (Adam would turn the
    # round-off of gradients that are zero in exact arithmetic -- the attention key bias, since softmax
    # ignores a constant shift -- into steps of size ~lr whose sign round-off decides.)
    assert moved > 100 * 1e-5  # training moved the weights far beyond the tolerance below
    for k, v in student.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for name, _, keep in masks.entries():
        assert torch.all(ddp["state"][name + ".weight"][~keep] == 0)


# ---------------------------------------------------------------- the helpers of benchmarks/pipeline_small
def test_pipeline_small_two_four_helper_and_layers() -> None:
    from benchmarks.pipeline_small import eligible_layers, local_two_four, two_four_mask

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 16, generator=g)
    keep = two_four_mask(w)
    assert is_two_four(keep) and int(keep.sum()) == 6 * 8
    groups = w.abs().reshape(6, 4, 4)
    kept = torch.where(keep.reshape(6, 4, 4), groups, torch.full_like(groups, float("inf")))
    dropped = torch.where(~keep.reshape(6, 4, 4), groups, torch.full_like(groups, -float("inf")))
    assert torch.all(kept.min(-1).values >= dropped.max(-1).values)  # the two largest of each group
    prefer = torch.zeros(6, 16, dtype=torch.bool)
    prefer[:, ::4] = True  # the source keeps slot 0 of every group: it is kept whatever its size
    assert torch.all(two_four_mask(w, prefer)[:, ::4])
    assert is_two_four(two_four_mask(w, prefer))
    vit = vit_mnist_architecture(**TINY)
    layers = eligible_layers(vit)
    assert layers == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    model, masks = local_two_four(vit, layers)
    check_legal(masks, model)
    assert all(is_two_four(m) for _, _, m in masks.entries())
    assert torch.equal(model.head.weight, vit.head.weight)
