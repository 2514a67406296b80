"""Finding and checking the layers CAM methods read, by tracing the model, never by its name."""

from __future__ import annotations

import difflib
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import saliency_mode
from xaibench.methods.hooks import LayerCall, record_layers
from xaibench.models.factory import model_input_size

_RESAMPLERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def trace_layers(
    model: nn.Module,
    input_size: tuple[int, int] | None = None,
    watch: AbstractContextManager | None = None,
) -> list[LayerCall]:
    """Every run of every named submodule in one eval-mode forward of a zero image, in order.

    The image is (1, 3, *input_size) on the model's device (the meta device costs nothing);
    input_size None is the model's own (`model_input_size`: 224 x 224 unless marked).
    Adaptive pooling layers are left out: their output size is fixed by the layer, not by the
    image. `watch`, a context manager such as a `TorchFunctionMode`, is entered around the
    forward, which then runs with autograd on and an image that requires grad, so that the watcher
    can tell tensors that depend on the image by their `requires_grad`. The model's mode and
    `requires_grad` flags are restored. What the forward raises propagates.
    """
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    names = [name for name, m in model.named_modules() if name and not isinstance(m, _RESAMPLERS)]
    dummy = torch.zeros(1, 3, *(input_size or model_input_size(model)), device=device, dtype=dtype)
    dummy.requires_grad_(watch is not None)
    with (
        saliency_mode(model),
        torch.set_grad_enabled(watch is not None),
        record_layers(model, names) as recording,
        watch or nullcontext(),
    ):
        model(dummy)
    return recording.calls


def feature_maps(
    calls: list[LayerCall], model_name: str, input_size: tuple[int, int], hint: str
) -> list[LayerCall]:
    """The calls (`trace_layers`) whose outputs are feature maps a CAM can read, in order.

    A feature map is a (B, C, h, w) output with h, w > 1. When a token sequence (a 3-D
    (B, N, C) output) follows the last of them, as in a vision transformer, that map is the patch
    embedding: the score is not pooled from it but from tokens mixed afterwards, so there is no
    map to read by default. Raises ConfigError, ending with `hint`, in both cases.
    """
    spatial = [i for i, call in enumerate(calls) if _is_feature_map(call.shape)]
    size = f"{input_size[0]}x{input_size[1]}"
    if not spatial:
        raise ConfigError(
            f"no layer of {model_name} outputs a (B, C, h, w) map with h, w > 1 on a {size} "
            f"input; {hint}"
        )
    last = calls[spatial[-1]]
    tokens = next(
        (c for c in calls[spatial[-1] + 1 :] if c.shape is not None and len(c.shape) == 3), None
    )
    if tokens is not None:
        raise ConfigError(
            f"{model_name} has no feature map the class score is pooled from: its last "
            f"(B, C, h, w) output, {last.name!r} {tuple(last.shape)}, becomes a token sequence "
            f"({tokens.name!r} outputs {tuple(tokens.shape)}) that later layers mix, as in a "
            f"vision transformer's patch embedding; {hint} to read a layer anyway"
        )
    return [calls[i] for i in spatial]


def find_target_layer(model: nn.Module, input_size: tuple[int, int] | None = None) -> str:
    """The default CAM layer: the last module to finish with a feature map (`feature_maps`).

    Traces one eval-mode forward of a zero image (`trace_layers`) of `input_size`, None: the
    model's own (`model_input_size`, 299 x 299 for Inception v3 from `load_model`). When an outer
    module returns its last child's output unchanged (a `Sequential`), the outer one finishes last
    and is chosen: `layer4` on ResNet, `features` on VGG, DenseNet, EfficientNet and MobileNet (on
    VGG that is the output of `features.30`). A module that runs several times counts at its last
    run.
    Adaptive pooling is never chosen (VGG's AdaptiveAvgPool2d to 7 x 7 would upsample small
    inputs). Raises ConfigError when no module qualifies, and for vision transformers, whose only
    (B, C, h, w) map is the patch embedding.
    """
    input_size = input_size or model_input_size(model)
    calls = trace_layers(model, input_size)
    hint = "pass the CAM layer explicitly as `layer`"
    return feature_maps(calls, type(model).__name__, input_size, hint)[-1].name


def validate_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; ConfigError listing close names when there is none."""
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return model.get_submodule(name)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"top-level names: {_top_level(model)}"
    raise ConfigError(f"{type(model).__name__} has no layer {name!r}; {hint}")


def _is_feature_map(shape: torch.Size | None) -> bool:
    return shape is not None and len(shape) == 4 and min(shape[2:]) > 1


def _top_level(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none)"
