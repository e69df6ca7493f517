"""The model builders behind the registry (:mod:`mpprune.models`): timm models from local files under a
key-coverage rule, the bundled MNIST CNN, EfficientNet-Lite0 and MiniLM loaders, and the tiny seeded nets
of the tests and demos. Each returns an ``nn.Module`` in eval mode; a bad file is
:class:`~mpprune.errors.BadInput`, a missing one ``FileNotFoundError``. Registering a model is
:func:`mpprune.models.register_model`'s job, not this module's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mpprune.errors import BadInput

__all__ = [
    "MIN_KEY_COVERAGE",
    "MnistCNN",
    "load_timm",
    "load_mnist_cnn",
    "load_efficientnet_lite0",
    "load_minilm_linears",
    "tiny_mlp",
    "tiny_cnn",
]


def _asset(key: str) -> Path:
    from mpprune.models import asset_path  # the registry knows the assets (and imports this module)

    return asset_path(key)


def _check_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise BadInput(f"checkpoint {path} is not a file")
    return path


#: A timm checkpoint must supply at least this fraction of the model's parameters (by count of entries).
MIN_KEY_COVERAGE = 0.95


def load_timm(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Create timm model ``name``, from a local ``checkpoint`` file or randomly initialised (checkpoint=None).

    ``num_classes`` is the classifier size of the checkpoint (default: the architecture's). The file is
    read with timm's reader (``state_dict``/``model``/EMA entries, safetensors or torch) and passed
    through the architecture's own ``checkpoint_filter_fn`` when its timm module has one (as timm does for
    pretrained weights). Key coverage: every tensor of the file that the model holds must have the model's
    shape, and the tensors found must cover at least :data:`MIN_KEY_COVERAGE` of the model's parameter
    entries; a model tensor the file lacks (at most 5 %) keeps its initial value, with a warning naming
    how many. Never downloads.

    Raises:
        BadInput: unknown model name, a path that is not a file, a tensor of another shape, or a file
            covering less than 95 % of the parameters (naming how many keys are missing).
        FileNotFoundError: the checkpoint does not exist.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise BadInput(f"unknown timm model {name!r}; similar names: {close}")
    if num_classes is not None and num_classes < 1:
        raise BadInput(f"num_classes must be >= 1, got {num_classes}")
    extra: dict[str, object] = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if checkpoint is None:
        return timm.create_model(name, pretrained=False, **extra).eval()  # type: ignore[arg-type]
    path = _check_file(checkpoint)
    model = timm.create_model(name, pretrained=False, **extra)  # type: ignore[arg-type]
    state = _timm_state(path, model)
    _load_covered(model, state, path)
    return model.eval()


def _timm_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` as timm reads it, through the architecture's ``checkpoint_filter_fn``."""
    import sys

    from timm.models import load_state_dict

    state = load_state_dict(str(path), use_ema=True)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state = filter_fn(state, model)
    return dict(state)


def _load_covered(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` under the key-coverage rule of :func:`load_timm`."""
    own = model.state_dict()
    reshaped = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    if reshaped:
        k = reshaped[0]
        raise BadInput(f"cannot load the checkpoint {path}: {len(reshaped)} tensor(s) of another shape than "
                       f"the model's, e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} "
                       "in the model (another architecture or num_classes?)")
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    covered = sum(p.numel() for n, p in params.items() if n in state)
    missing = sorted(k for k in own if k not in state)
    if total and covered / total < MIN_KEY_COVERAGE:
        raise BadInput(f"cannot load the checkpoint {path}: it covers {100 * covered / total:.1f} % of the "
                       f"model's parameters (at least {100 * MIN_KEY_COVERAGE:.0f} % needed); {len(missing)} "
                       f"of its {len(own)} keys are missing, e.g. {missing[:3]}")
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        warnings.warn(f"checkpoint {path}: {len(missing)} model key(s) missing from the file keep their "
                      f"initial values (e.g. {missing[:3]}); {len(unexpected)} key(s) of the file unused "
                      f"(e.g. {unexpected[:3]}); {100 * covered / total:.2f} % of the parameters loaded",
                      stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


class MnistCNN(nn.Module):
    """The architecture of the ``digit-recognizer`` MNIST CNN (3 conv+ReLU+maxpool stages, 2 Linear).

    Input ``(B, 1, 28, 28)``, normalised with :data:`MNIST_MEAN`, :data:`MNIST_STD`; output 10 logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise BadInput(f"MnistCNN expects input of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        x = self.conv_layers(x)
        return self.fc_layers(torch.flatten(x, 1))


def load_mnist_cnn(checkpoint: str | Path | None = None) -> MnistCNN:
    """The trained MNIST CNN (bundled ``handwriting_model.pth`` unless ``checkpoint`` is given)."""
    path = _asset("mnist-cnn") if checkpoint is None else _check_file(checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MnistCNN()
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_efficientnet_lite0(checkpoint: str | Path | None = None) -> nn.Module:
    """ImageNet EfficientNet-Lite0 as timm ``tf_efficientnet_lite0`` with the bundled weights.

    The checkpoint uses other key names (``_conv_stem``, ``_blocks.i._depthwise_conv``, ...) but the same
    tensors in the same order; entries are mapped by position, and each pair must agree in shape and in
    the last key component (weight/bias/running_mean/...), else ValueError.
    """
    import timm

    path = _asset("efficientnet-lite0") if checkpoint is None else _check_file(checkpoint)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise BadInput(f"{path}: {len(src)} tensors, tf_efficientnet_lite0 has {len(dst)}")
    mapped: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise BadInput(
                f"{path}: entry {sk} {tuple(sv.shape)} does not match timm {dk} {tuple(dv.shape)}"
            )
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=True)
    return model.eval()


class _Container(nn.Module):
    """An empty module used to mirror dotted parameter paths."""


def load_minilm_linears(
    checkpoint: str | Path | None = None, *, as_module: bool = False
) -> dict[str, torch.Tensor] | nn.Module:
    """The Linear weights of all-MiniLM-L6-v2 (float32), read with safetensors.

    A Linear is a 2-D ``X.weight`` with a 1-D ``X.bias`` of matching length (embedding tables have no
    bias and are excluded). Returns ``{X: weight}`` (``X`` as in the file, e.g.
    ``encoder.layer.0.attention.self.query``), or with ``as_module=True`` an eval-mode module whose
    ``named_modules()`` holds one ``nn.Linear`` (with bias) at each path ``X``.
    """
    from safetensors import safe_open

    path = _asset("minilm") if checkpoint is None else _check_file(checkpoint)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[k] = f.get_tensor(k)
    if checkpoint is not None:
        _check_minilm_coverage(path, {k: tuple(v.shape) for k, v in tensors.items()})
    linears: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for k, w in tensors.items():
        if not k.endswith(".weight") or w.dim() != 2:
            continue
        base = k[: -len(".weight")]
        b = tensors.get(base + ".bias")
        if b is not None and b.dim() == 1 and b.shape[0] == w.shape[0]:
            linears[base] = (w.float(), b.float())
    if not linears:
        raise BadInput(f"{path}: no Linear weights found")
    if not as_module:
        return {k: w for k, (w, _) in linears.items()}
    root = _Container()
    for base, (w, b) in linears.items():
        parts = base.split(".")
        node: nn.Module = root
        for p in parts[:-1]:
            child = node._modules.get(p)
            if child is None:
                child = _Container()
                node.add_module(p, child)
            node = child
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        node.add_module(parts[-1], lin)
    return root.eval()


def _check_minilm_coverage(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint that does not hold every Linear weight and bias of the bundled all-MiniLM-L6-v2
    with its shape (the architecture of ``minilm``, read from the bundled file's header only): another
    model's weights are not MiniLM."""
    from safetensors import safe_open

    with safe_open(str(_asset("minilm")), framework="pt") as f:
        every = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    want: dict[str, tuple[int, ...]] = {}
    for k, shape in every.items():
        bias = every.get(k[: -len(".weight")] + ".bias") if k.endswith(".weight") else None
        if len(shape) == 2 and bias is not None and bias == (shape[0],):
            want |= {k: shape, k[: -len(".weight")] + ".bias": bias}
    missing = sorted(k for k in want if k not in shapes)
    wrong = sorted(k for k in want if k in shapes and shapes[k] != want[k])
    if missing or wrong:
        detail = f"{len(missing)} of its {len(want)} tensors missing (e.g. {missing[:3]})" if missing else (
            f"{len(wrong)} tensors of another shape (e.g. {wrong[0]}: {shapes[wrong[0]]} instead of "
            f"{want[wrong[0]]})")
        raise BadInput(f"checkpoint {path} does not cover the minilm architecture: {detail}")


def tiny_mlp(sizes: Sequence[int] = (64, 32, 10), *, seed: int = 0) -> nn.Sequential:
    """A Linear/ReLU MLP with the given layer widths, seeded init, eval mode."""
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise BadInput(f"sizes must hold at least two positive widths, got {sizes}")
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        bound = 1.0 / a**0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def tiny_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, *, seed: int = 0) -> nn.Sequential:
    """A small CNN (conv, grouped conv, depthwise conv, pointwise conv, Linear head) for 8x8+ inputs."""
    if width < 4 or width % 4:
        raise BadInput(f"width must be a positive multiple of 4, got {width}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, groups=2),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, num_classes),
        )
    return model.eval()
