"""Finding and checking the layers CAM methods read, by tracing the model, never by its name."""

from __future__ import annotations

import difflib
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import saliency_mode
from xaibench.methods.hooks import LayerCall, record_layers
from xaibench.methods.tokens import (
    FEATURE_MAP,
    Layout,
    channels_last_shapes,
    is_attention,
    is_token_sequence,
    layer_layout,
    patch_grid_layer,
)
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
    """The default CAM layer (`default_layer`) of one traced forward of a zero image.

    Traces one eval-mode forward (`trace_layers`) of `input_size`, None: the model's own
    (`model_input_size`, 299 x 299 for Inception v3 from `load_model`). Raises ConfigError when no
    module qualifies.
    """
    input_size = input_size or model_input_size(model)
    calls = trace_layers(model, input_size)
    hint = "pass the CAM layer explicitly as `layer`"
    return default_layer(model, calls, input_size, hint).name


def resolve_layer(
    model: nn.Module, layer: str | None = None, input_size: tuple[int, int] | None = None
) -> tuple[str, Layout]:
    """The layer a CAM method reads (`layer`, None: `default_layer`) and its output's `Layout`.

    One traced forward (`trace_layers`, at `input_size`, None: the model's own) finds both. A
    given layer of a model without nn.LayerNorm and attention modules is not traced: no output of
    such a model has channels last or is a token sequence (`layer_layout`), so it is read as
    (B, C, h, w). ConfigError for an unknown layer (`validate_layer`) and as `default_layer`
    and `layer_layout` raise.
    """
    if layer is not None:
        validate_layer(model, layer)
        if not any(isinstance(m, nn.LayerNorm) or is_attention(m) for m in model.modules()):
            return layer, FEATURE_MAP
    input_size = input_size or model_input_size(model)
    calls = trace_layers(model, input_size)
    if layer is None:
        hint = "pass the CAM layer explicitly as `layer`"
        layer = default_layer(model, calls, input_size, hint).name
    return layer, layer_layout(model, calls, layer)


def default_layer(
    model: nn.Module, calls: list[LayerCall], input_size: tuple[int, int], hint: str
) -> LayerCall:
    """The call (`trace_layers`) of the layer CAM methods read by default.

    CNNs, Swin, MaxViT: the last module to finish with a map, (B, C, h, w) or channels last
    (B, h, w, C) (`channels_last_shapes`), with h, w > 1. The score is pooled from it, so every
    position reaches the score with a gradient of its own, as from a CNN's last stage. When an
    outer module returns its last child's output unchanged (a `Sequential`), the outer one
    finishes last and is chosen: `layer4` on ResNet, `features` on VGG, DenseNet, EfficientNet
    and MobileNet (on VGG that is the output of `features.30`); Swin's final norm (`permute` on
    torchvision's, whose (B, C, h, w) output the head pools; `norm`, channels last, on timm's). A
    module that runs several times counts at its last run. Adaptive pooling is never chosen
    (VGG's AdaptiveAvgPool2d to 7 x 7 would upsample small inputs).

    ViT, DeiT: when token sequences (B, P + h*w, C) over the patch grid follow the last map (the
    patch embedding), the input of the last attention module (`is_attention`): the last token
    sequence to finish before that module starts, `encoder.layers.encoder_layer_11.ln_1` on
    torchvision's ViT-B/16, `blocks.11.norm1` on timm's, the layer pytorch-grad-cam's tutorial
    reads. Later layers do not mix tokens: the head reads the class token alone, so from the
    last attention on, the patch tokens' gradients are 0 (the final norm's Grad-CAM would be
    all 0); the last attention's input is the last place where every patch token reaches the
    score, through the class token's attention to it.

    ConfigError, ending with `hint`, when no module qualifies.
    """
    channels_last = channels_last_shapes(model, calls)
    maps = [i for i, call in enumerate(calls) if _is_grid(call.shape, channels_last)]
    size = f"{input_size[0]}x{input_size[1]}"
    name = type(model).__name__
    if not maps:
        raise ConfigError(
            f"no layer of {name} outputs a (B, C, h, w) map with h, w > 1 on a {size} input; {hint}"
        )
    last = calls[maps[-1]]
    later = [c for c in calls[maps[-1] + 1 :] if c.shape is not None and len(c.shape) == 3]
    if not later:
        return last
    found = _attention_input(model, calls)
    if found is not None:
        return found
    raise ConfigError(
        f"{name} has no feature map the class score is pooled from: its last map, "
        f"{last.name!r} {tuple(last.shape)}, is followed by a sequence ({later[0].name!r} "
        f"outputs {tuple(later[0].shape)}) that no attention module xaibench reads "
        f"(nn.MultiheadAttention, timm's Attention, transformers' attention) mixes over the "
        f"patch grid; {hint} to read a layer anyway"
    )


def _attention_input(model: nn.Module, calls: list[LayerCall]) -> LayerCall | None:
    """The last token sequence to finish before the last attention module's last run starts,
    outside that module; None without attention over a patch grid, or when the sequence the last
    attention reads is not over the patch grid (transformers' Swin, whose stages merge patches
    into shorter sequences: no layer of its last stage is a token grid xaibench can lay out)."""
    grid_layer = patch_grid_layer(model, calls)
    attention = [i for i, c in enumerate(calls) if is_attention(model.get_submodule(c.name))]
    if grid_layer is None or not attention:
        return None
    grid = tuple(next(c for c in reversed(calls) if c.name == grid_layer).shape[2:])
    module = calls[attention[-1]].name
    runs = [i for i, c in enumerate(calls) if c.name == module]
    previous = runs[-2] if len(runs) > 1 else -1
    start = next(
        i
        for i in range(previous + 1, len(calls))
        if calls[i].name == module or calls[i].name.startswith(module + ".")
    )
    sequences = [c for c in calls[:start] if c.shape is not None and len(c.shape) == 3]
    if not sequences or not is_token_sequence(sequences[-1], grid):
        return None
    return sequences[-1]


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


def _is_grid(shape: torch.Size | None, channels_last: set[torch.Size]) -> bool:
    """A (B, C, h, w) map, or a (B, h, w, C) grid with channels last, with h, w > 1."""
    if shape in channels_last:
        return min(shape[1:3]) > 1
    return _is_feature_map(shape)


def _top_level(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none)"
