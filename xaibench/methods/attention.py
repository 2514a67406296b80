"""Maps from a vision transformer's attention: attention rollout and gradient-weighted attention.

Both read the attention probabilities A (B, heads, N, N) of every layer of a ViT or DeiT, over
N = P + h*w tokens (P prefix tokens, the class token first, then the patch grid), and return the
class token's row of a product of per-layer matrices, over the patch tokens, on the patch grid
(B, h, w). `attention_probabilities` captures A during a forward: torchvision's ViT calls
nn.MultiheadAttention with need_weights=False, which fuses the softmax away, so its forward is
swapped for an explicit one (the same projections, softmax and output projection) for the call;
timm's attention modules have an unfused path that applies `attn_drop` to A, switched on for the
call (`fused_attn = False`); transformers' return A from their eager implementation, chosen for
the call (`config._attn_implementation = "eager"`). The patch grid (h, w) is the patch
embedding's output size in the same forward (`patch_grid_layer`). A loop runs over the layers; images and heads are batched.
"""

from __future__ import annotations

import numbers
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.core.precision import full_precision
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.hooks import autograd_enabled, backward, gradient_input, record_layers
from xaibench.methods.layers import trace_layers
from xaibench.methods.targets import explained_score
from xaibench.methods.tokens import is_attention, is_transformers_attention, patch_grid_layer
from xaibench.models.factory import model_input_size

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[HeadFusion, ...] = ("mean", "max", "min")


@contextmanager
def attention_probabilities(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, each attention layer (`is_attention`) appends its probabilities
    A (B, heads, N, N) to the yielded list each time it runs, in forward order, on the graph
    (a gradient of the output with respect to them is the gradient through the attention).

    nn.MultiheadAttention runs an explicit forward instead of its own: q, k, v from
    `in_proj_weight`, A = softmax(q k^T / sqrt(d)) per head, then `out_proj`; the same function
    up to rounding, for batch-first self-attention without masks or bias_k/bias_v (ConfigError
    otherwise, at the call). timm-style modules run with `fused_attn = False` and a hook on
    `attn_drop`; transformers' modules with their eager implementation, read from their output
    (output, A). Forwards and flags are restored when the block ends, also on an exception.
    """
    captured: list[torch.Tensor] = []
    modules = [m for m in model.modules() if is_attention(m)]
    handles, flags, implementations = [], {}, {}
    try:
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                module.forward = _explicit_attention(module, captured)
            elif is_transformers_attention(module):
                config = module.config
                implementations.setdefault(id(config), (config, config._attn_implementation))
                config._attn_implementation = "eager"
                handles.append(
                    module.register_forward_hook(lambda _m, _args, out: captured.append(out[1]))
                )
            else:
                flags[module] = module.fused_attn
                module.fused_attn = False
                handles.append(
                    module.attn_drop.register_forward_hook(
                        lambda _m, _args, out: captured.append(out)
                    )
                )
        yield captured
    finally:
        for module in modules:
            if isinstance(module, nn.MultiheadAttention):
                module.__dict__.pop("forward", None)
        for module, flag in flags.items():
            module.fused_attn = flag
        for config, implementation in implementations.values():
            config._attn_implementation = implementation
        for handle in handles:
            handle.remove()


def _explicit_attention(
    module: nn.MultiheadAttention, captured: list[torch.Tensor]
) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """`module`'s forward with the probabilities computed explicitly and appended to `captured`."""

    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = (
            module.batch_first
            and module._qkv_same_embed_dim
            and module.bias_k is None
            and query is key is value
            and key_padding_mask is None
            and attn_mask is None
            and not is_causal
        )
        if not plain:
            raise ConfigError(
                "the attention maps read nn.MultiheadAttention only as batch-first "
                "self-attention without masks or bias_k/bias_v"
            )
        b, n, c = query.shape
        heads = module.num_heads
        qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        probs = torch.softmax((q * (c // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        captured.append(probs)
        mixed = F.dropout(probs, module.dropout, module.training) @ v
        out = F.linear(
            mixed.transpose(1, 2).reshape(b, n, c), module.out_proj.weight, module.out_proj.bias
        )
        if not need_weights:
            return out, None
        return out, probs.mean(dim=1) if average_attn_weights else probs

    return forward


@dataclass(frozen=True)
class AttentionGrid:
    """What the attention maps read of a model: its attention layers (module names) and the
    patch embedding whose output (B, C, h, w) gives the patch grid (`patch_grid_layer`)."""

    layers: tuple[str, ...]
    grid_layer: str


def attention_grid(model: nn.Module, input_size: tuple[int, int] | None = None) -> AttentionGrid:
    """The `AttentionGrid` of `model`, checked on one traced forward of a zero image at
    `input_size` (None: the model's own, `model_input_size`).

    ConfigError unless every attention layer attends over one sequence of P + h*w tokens with a
    class token, P >= 1, over the patch grid (h, w): none for a CNN, nor for Swin, whose
    attention runs within windows.
    """
    name = type(model).__name__
    layers = tuple(n for n, m in model.named_modules() if is_attention(m))
    if not layers:
        raise ConfigError(
            f"{name} has no attention module these maps read (nn.MultiheadAttention, timm's "
            "Attention, transformers' eager attention)"
        )
    input_size = input_size or model_input_size(model)
    with attention_probabilities(model) as captured:
        calls = trace_layers(model, input_size)
    grid_layer = patch_grid_layer(model, calls)
    if grid_layer is None:
        raise ConfigError(f"{name} has no nn.Conv2d patch embedding before its token sequence")
    h, w = next(c for c in reversed(calls) if c.name == grid_layer).shape[2:]
    sizes = sorted({tuple(a.shape[-2:]) for a in captured})
    if len(sizes) != 1 or sizes[0][0] != sizes[0][1] or not h * w < sizes[0][0] < 2 * h * w:
        raise ConfigError(
            f"{name}'s attention runs over {' and '.join(f'{s[0]}' for s in sizes)} tokens, not "
            f"over a class token and the {h}x{w} patch grid of {grid_layer!r} (as in windowed "
            "attention)"
        )
    return AttentionGrid(layers, grid_layer)


class AttentionMethod(SaliencyMethod):
    """A map from the attention probabilities of every layer (`attention_probabilities`).

    Subclasses implement `relevance`: the per-layer matrices (L x (B, heads, N, N)), and their
    gradients for the methods that use them, -> the token relevance matrix (B, N, N), whose class
    token row over the patch tokens is the map (B, h, w).
    """

    requires = ("class_attention",)
    compilable = False
    uses_gradients: bool = False
    """Whether `relevance` needs dy_c/dA: one backward of the explained scores to the attention."""

    def __init__(self, model: nn.Module, **params: Any):
        self.attention = attention_grid(model)
        super().__init__(model, **params)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        with (
            autograd_enabled(),
            attention_probabilities(self.model) as probs,
            record_layers(self.model, [self.attention.grid_layer]) as grids,
        ):
            inputs = gradient_input(images) if self.uses_gradients else images.detach()
            logits = self.model(inputs)
            targets = top1_targets(logits, targets)
            grads = None
            if self.uses_gradients:
                score = explained_score(logits, targets, self.explains).sum()
                grads = backward(score, probs)
        h, w = grids.last(self.attention.grid_layer).shape[2:]
        probs = [full_precision(a.detach()) for a in probs]
        relevance = self.relevance(probs, None if grads is None else list(grads))
        b, n = relevance.shape[:2]
        maps = relevance[:, 0, n - h * w :].reshape(b, h, w)
        return Explanation(maps.float(), targets, logits.detach())

    @abstractmethod
    def relevance(
        self, probs: list[torch.Tensor], grads: list[torch.Tensor] | None
    ) -> torch.Tensor:
        """L x (B, heads, N, N) probabilities (and gradients) -> (B, N, N)."""


@METHODS.register(
    "rollout",
    help="Attention rollout: attention with the residual identity, multiplied over layers",
)
class AttentionRollout(AttentionMethod):
    """Attention rollout (Abnar and Zuidema, 2020): the class token's row of
    Ã_L ... Ã_2 Ã_1 over the patch tokens, on the patch grid (B, h, w).

    Per layer, the heads' probabilities are fused (`head_fusion`: mean as in the paper, or the
    max or min over heads, as in Gildenblat's vit-explain), the residual is accounted for as
    Ã = 0.5 A + 0.5 I, and the rows are renormalised to sum to 1 (a no-op for the mean, whose
    rows already do). discard_ratio: the fraction r of each image's fused entries, the smallest,
    set to 0 before the identity is added (vit-explain's setting, not in the paper; default 0).
    The map does not depend on the target class; one forward, no backward.
    """

    name = "rollout"
    uses_target = False
    per_image = Passes(1, 0)  # one forward, no backward

    def __init__(
        self, model: nn.Module, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
    ):
        if head_fusion not in HEAD_FUSIONS:
            raise ConfigError(
                f"rollout: head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got "
                f"{head_fusion!r}"
            )
        if isinstance(discard_ratio, bool) or not (
            isinstance(discard_ratio, numbers.Real) and 0 <= discard_ratio < 1
        ):
            raise ConfigError(f"rollout: discard_ratio must be in [0, 1), got {discard_ratio!r}")
        super().__init__(model, head_fusion=head_fusion, discard_ratio=discard_ratio)
        self.head_fusion, self.discard_ratio = head_fusion, discard_ratio

    def relevance(
        self, probs: list[torch.Tensor], grads: list[torch.Tensor] | None
    ) -> torch.Tensor:
        rollout = None
        for attention in probs:
            fused = fuse_heads(attention, self.head_fusion)
            fused = discard_smallest(fused, self.discard_ratio)
            eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            step = 0.5 * fused + 0.5 * eye
            step = step / step.sum(dim=-1, keepdim=True)
            rollout = step if rollout is None else step @ rollout
        return rollout


@METHODS.register(
    "attn_grad",
    help="Gradient-weighted attention (Chefer et al. 2021): relevance of grad x attention",
)
class AttentionGradient(AttentionMethod):
    """Chefer, Gur and Wolf (2021), "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", the rule for self-attention (their eq. 5-6):
    R = I, then for each layer from the first, Ā = E_h[(∇A ⊙ A)^+] and R <- R + Ā R; the map is the
    class token's row of R over the patch tokens, on the patch grid (B, h, w).

    ∇A = dy_c/dA is the gradient of the explained logit with respect to each layer's attention
    probabilities, from one forward and one backward (which stops at the first layer's attention).
    This is the ICCV 2021 method, not their CVPR 2021 "Transformer Interpretability Beyond
    Attention Visualization", which weights the attention by LRP relevances instead of A itself.
    As in the authors' code, every layer takes part, and the map is returned raw (they normalise
    it for display).
    """

    name = "attn_grad"
    uses_gradients = True

    def __init__(self, model: nn.Module):  # no settings: an unknown one is refused
        super().__init__(model)

    def relevance(
        self, probs: list[torch.Tensor], grads: list[torch.Tensor] | None
    ) -> torch.Tensor:
        relevance = None
        for attention, grad in zip(probs, grads, strict=True):
            weighted = torch.relu(full_precision(grad) * attention).mean(dim=1)
            if relevance is None:
                relevance = torch.eye(
                    weighted.shape[-1], dtype=weighted.dtype, device=weighted.device
                ).expand_as(weighted)
            relevance = relevance + weighted @ relevance
        return relevance


def fuse_heads(attention: torch.Tensor, how: HeadFusion) -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N): the mean, max or min over the heads."""
    if how == "mean":
        return attention.mean(dim=1)
    return attention.amax(dim=1) if how == "max" else attention.amin(dim=1)


def discard_smallest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N, N) with the int(ratio * N * N) smallest entries of each matrix set to 0."""
    b, n, _ = fused.shape
    count = int(ratio * n * n)
    if count == 0:
        return fused
    flat = fused.reshape(b, n * n)
    smallest = flat.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, smallest, 0.0).view(b, n, n)
