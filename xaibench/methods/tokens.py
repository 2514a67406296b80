"""Token grids: a vision transformer's layer outputs read as (B, C, h, w) maps.

A CNN's layers output maps (B, C, h, w). A vision transformer's layers output tokens instead:
ViT and DeiT a sequence (B, N, C), N = P prefix tokens (the class token; DeiT's distillation
token; timm's register tokens) followed by the h x w patch tokens in row-major order; Swin a grid
with channels last (B, h, w, C). `Layout` says which of the three a layer outputs, found by tracing
the model (`layer_layout`), and reads it as a map the way pytorch-grad-cam's `reshape_transform`
does: prefix tokens dropped, patch tokens laid on their grid, channels first. The patch grid
(h, w) of a sequence is the output size of the patch embedding, the last nn.Conv2d to run before
the first token sequence (`patch_grid_layer`), read in the same forward, so the layout holds at
any input size the model accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.hooks import LayerCall

Kind = Literal["map", "channels_last", "tokens"]


@dataclass(frozen=True)
class Layout:
    """How one layer's output becomes a map (B, C, h, w).

    kind "map": it is one; "channels_last": (B, h, w, C), permuted; "tokens": (B, N, C) with
    N = P + h*w, the first P tokens dropped and the rest laid on the grid (h, w) of `grid_layer`'s
    output (B, C', h, w) in the same forward.
    """

    kind: Kind = "map"
    grid_layer: str | None = None

    def watched(self) -> list[str]:
        """The layers whose output shapes `to_map` needs besides the layer itself."""
        return [self.grid_layer] if self.grid_layer is not None else []

    def grid(self, layer: str, shape: torch.Size, grids: Sequence[LayerCall]) -> tuple[int, int]:
        """The output `shape` of `layer`, checked against the layout -> its grid (h, w).

        grids: the calls of `watched()` in the forward (`Recording.calls`). ConfigError when the
        shape does not fit, with the layout that was expected.
        """
        if self.kind == "tokens":
            (h, w) = _last(grids, self.grid_layer).shape[2:]
            if len(shape) != 3 or not 0 <= shape[1] - h * w < h * w:
                raise ConfigError(
                    f"layer {layer!r} outputs shape {tuple(shape)}, not a token sequence "
                    f"(B, P + {h}*{w}, C) over the patch grid of {self.grid_layer!r}"
                )
            return h, w
        if len(shape) != 4:
            raise ConfigError(
                f"layer {layer!r} outputs shape {tuple(shape)}, not a (B, C, h, w) map, a "
                "(B, h, w, C) grid or a (B, N, C) token sequence; pick a layer that outputs one"
            )
        return (shape[1], shape[2]) if self.kind == "channels_last" else (shape[2], shape[3])

    def channels(self, shape: torch.Size | None) -> int | None:
        """C of the map that an output of `shape` becomes; None when it is not one."""
        if self.kind == "map":
            return shape[1] if shape is not None and len(shape) == 4 else None
        return shape[-1] if shape is not None else None

    def to_map(self, output: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The layer's output (or a gradient of that shape) on the grid (h, w) -> (B, C, h, w)."""
        if self.kind == "channels_last":
            return output.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            b, n, c = output.shape
            h, w = grid
            return output[:, n - h * w :].transpose(1, 2).reshape(b, c, h, w)
        return output

    def to_output(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Maps (L, C, h, w) back in the layer's layout; a sequence takes its prefix tokens from
        `like` (L, N, C), the output the maps were read from."""
        if self.kind == "channels_last":
            return maps.permute(0, 2, 3, 1)
        if self.kind == "tokens":
            prefix = like.shape[1] - maps.shape[2] * maps.shape[3]
            return torch.cat([like[:, :prefix], maps.flatten(2).transpose(1, 2)], dim=1)
        return maps


FEATURE_MAP = Layout()
"""The layout of a layer that outputs (B, C, h, w)."""


def layer_layout(model: nn.Module, calls: Sequence[LayerCall], layer: str) -> Layout:
    """The layout of `layer`'s output at its last run among the traced `calls` (`trace_layers`).

    A 3-D output (B, N, C) whose N is P + h*w for the patch grid (h, w) (`patch_grid_layer`),
    0 <= P < h*w, is a token sequence. A 4-D output is a grid with channels last when its shape
    is in `channels_last_shapes`, else a (B, C, h, w) map. ConfigError for other outputs, and for
    a layer that did not run.
    """
    runs = [call for call in calls if call.name == layer]
    if not runs or runs[-1].shape is None:
        raise ConfigError(f"layer {layer!r} does not output a tensor in the forward pass")
    shape = runs[-1].shape
    if len(shape) == 4:
        return Layout("channels_last" if shape in channels_last_shapes(model, calls) else "map")
    if len(shape) != 3:
        FEATURE_MAP.grid(layer, shape, calls)  # raises: neither a map nor a sequence
    grid_layer = patch_grid_layer(model, calls)
    layout = Layout("tokens", grid_layer)
    if grid_layer is None:
        raise ConfigError(
            f"layer {layer!r} outputs shape {tuple(shape)}, and no nn.Conv2d patch embedding "
            "runs before a token sequence to lay it on a grid; pick a layer that outputs "
            "(B, C, h, w)"
        )
    layout.grid(layer, shape, calls)
    return layout


def patch_grid_layer(model: nn.Module, calls: Sequence[LayerCall]) -> str | None:
    """The patch embedding: the last nn.Conv2d to output (B, C, h, w) before the first 3-D
    output of the trace; None when there is none (or no 3-D output)."""
    first = next((i for i, c in enumerate(calls) if c.shape is not None and len(c.shape) == 3), 0)
    convs = [
        call
        for call in calls[:first]
        if isinstance(model.get_submodule(call.name), nn.Conv2d) and len(call.shape) == 4
    ]
    return convs[-1].name if convs else None


def is_token_sequence(call: LayerCall, grid: tuple[int, int]) -> bool:
    """Whether the call's output is (B, P + h*w, C) for the patch grid (h, w), 0 <= P < h*w."""
    h, w = grid
    return call.shape is not None and len(call.shape) == 3 and 0 <= call.shape[1] - h * w < h * w


def channels_last_shapes(model: nn.Module, calls: Sequence[LayerCall]) -> set[torch.Size]:
    """The 4-D shapes (B, h, w, C) of the trace that have their channels last.

    Those that an nn.LayerNorm over the last dimension (normalized_shape (C,)) outputs, and whose
    dimension 1 is not C: Swin's blocks, stages and final norm, ConvNeXt's block internals.
    (torchvision's `LayerNorm2d`, which normalises (B, C, h, w) over C, is told apart by the
    shape.) A LayerNorm's output has its input's shape, so this is also the shape it reads.
    """
    shapes = set()
    for call in calls:
        shape = call.shape
        if shape is None or len(shape) != 4 or shape[1] == shape[3]:
            continue
        module = model.get_submodule(call.name)
        if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (shape[3],):
            shapes.add(shape)
    return shapes


def is_attention(module: nn.Module) -> bool:
    """Whether `module` computes attention that `xaibench.methods.attention` can read:
    nn.MultiheadAttention (torchvision's ViT), a timm-style module with a `fused_attn` switch
    and an `attn_drop` child that its unfused path applies to the probabilities (timm's ViT,
    DeiT, Swin), or a transformers attention module (`is_transformers_attention`)."""
    return (
        isinstance(module, nn.MultiheadAttention)
        or (
            hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module)
        )
        or is_transformers_attention(module)
    )


def is_transformers_attention(module: nn.Module) -> bool:
    """Whether `module` is the innermost `...Attention` module of a Hugging Face transformers
    model that picks its implementation from `config._attn_implementation` and returns
    (output, probabilities) with the eager one (transformers' ViT, DeiT, BEiT, DINOv2)."""

    def qualifies(m: nn.Module) -> bool:
        config = getattr(m, "config", None)
        return type(m).__name__.endswith("Attention") and hasattr(config, "_attn_implementation")

    return qualifies(module) and not any(qualifies(m) for m in list(module.modules())[1:])


def _last(calls: Sequence[LayerCall], name: str | None) -> LayerCall:
    for call in reversed(calls):
        if call.name == name:
            return call
    raise ConfigError(f"the patch embedding {name!r} did not run in the forward pass")
