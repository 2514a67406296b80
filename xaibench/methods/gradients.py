"""Gradient saliency: vanilla gradient, gradient x input, guided backpropagation, DeconvNet and
Guided Grad-CAM.

Each method here is an `AttributionMethod`: `attribute` gives a per-channel attribution
(B, C, H, W) at the input resolution and `reduce` turns it into the map (B, H, W). The split lets
SmoothGrad (smoothgrad.py) average attributions over noisy copies before the channel reduction, as
the SmoothGrad paper does, and lets Integrated Gradients (integrated.py) sum gradients along a path.

Guided backpropagation and DeconvNet change the backward of every `nn.ReLU` module. Hooks cannot do
that here (a tensor hook on the ReLU output sees the gradient before the ReLU's own mask, which
DeconvNet must drop), so `rectified_relus` swaps the `nn.ReLU` modules for modules whose autograd
function has the modified backward, for the duration of the call, and puts the original modules
back, also on an exception. ReLUs applied functionally (`F.relu`, `torch.relu` inside a model's
`forward`) are not modules and keep their ordinary backward: a model whose `nn.ReLU` modules never
run raises ConfigError, and other activation modules (ReLU6, SiLU, GELU, ...) trigger a warning.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from xaibench.core.batching import ChunkSize, apply_in_chunks
from xaibench.core.errors import ConfigError
from xaibench.core.precision import full_precision
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.cam import GradCAM, LayerMethod
from xaibench.methods.hooks import autograd_enabled, backward, gradient_input, record_layers
from xaibench.methods.targets import ScoreKind, explained_score

Rule = Literal["plain", "guided", "deconvnet"]
OTHER_ACTIVATIONS = (
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)


@dataclass
class Attribution:
    """values: (B, C, H, W) per-channel attribution; targets: (B,) int64; logits: (B, K) or None;
    extras: the explanation's (`Explanation.extras`)."""

    values: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class AttributionMethod(SaliencyMethod):
    """A method with a per-channel attribution (B, C, H, W) reduced over channels to (B, H, W).

    Subclasses implement `attribute` and may override `reduce` (default: max over channels of
    |attribution|, Simonyan et al.'s reduction for gradients).
    """

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = self.attribute(images, targets)
        maps = self.reduce(result.values).float()
        return Explanation(maps, result.targets, result.logits, result.extras)

    @abstractmethod
    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        """(B, C, H, W), (B,) or None (= the top-1 class) -> Attribution with values (B, C, H, W).

        Runs without `saliency_mode`; callers go through `__call__` or set the mode themselves.
        """

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, W): max over channels of |values|."""
        return values.abs().amax(dim=1)


def input_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    kind: ScoreKind = "logit",
) -> Attribution:
    """One forward and one backward: values = d(explained score)/d(images), (B, C, H, W).

    targets (B,) or None (= top-1 of this forward); kind: the score (`explained_score`), the logit
    by default; the returned logits are this forward's.
    """
    with autograd_enabled():
        leaf = gradient_input(images)
        logits = model(leaf)
        targets = top1_targets(logits, targets)
        score = explained_score(logits, targets, kind).sum()
        (grads,) = backward(score, [leaf])
    return Attribution(grads, targets, logits.detach())


def over_image_pairs(
    pair_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    n_images: int,
    count: int,
    pair_batch: ChunkSize,
    device: torch.device,
) -> torch.Tensor:
    """Run `pair_fn` on the (image, k) pairs, k < count, of n_images images; reduce per image.

    pair_fn(image_index (L,), k (L,)) -> (L, ...) sees at most `pair_batch.value` pairs at a time
    (halved on out-of-memory, and kept lower for the caller's next call); reduce((b, count, ...))
    -> (b, ...); the result is (n_images, ...). Images are taken max(1, pair_batch.value // count)
    at a time, so at most max(count, pair_batch.value) pair results are held at once, whatever
    n_images is. Pairs are ordered image-major.
    """

    def for_images(image_index: torch.Tensor) -> torch.Tensor:
        b = image_index.shape[0]
        pair_image = image_index.repeat_interleave(count)
        pair_k = torch.arange(count, device=device).repeat(b)
        values = apply_in_chunks(pair_fn, pair_image, pair_k, chunk_size=pair_batch)
        return reduce(values.view(b, count, *values.shape[1:]))

    images = torch.arange(n_images, device=device)
    return apply_in_chunks(for_images, images, chunk_size=max(1, pair_batch.value // count))


@METHODS.register("gradient", help="vanilla gradient (Simonyan): max over channels of |dy/dx|")
class Gradient(AttributionMethod):
    """Vanilla gradient (Simonyan, Vedaldi, Zisserman, 2014): map = max_c |dy_c/dx|, (B, H, W).

    y_c is the explained logit, as published. `attribute` keeps the signed gradient, so that
    SmoothGrad averages signed gradients and takes the absolute value afterwards, as in the
    SmoothGrad paper.
    """

    name = "gradient"

    def __init__(self, model: nn.Module):
        super().__init__(model)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        return input_gradients(self.model, images, targets, self.explains)


@METHODS.register("gradinput", help="gradient x input, summed over channels")
class GradientInput(AttributionMethod):
    """Gradient x input (Shrikumar et al., 2016): x * dy_c/dx, map = sum over channels (B, H, W).

    y_c is the explained logit, as published. The sum keeps the sign and the first-order link to the score (the attributions of a
    piecewise-linear network without biases sum to the score).
    """

    name = "gradinput"

    def __init__(self, model: nn.Module):
        super().__init__(model)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        result = input_gradients(self.model, images, targets, self.explains)
        result.values = result.values * images
        return result

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, W): sum over channels."""
        return values.sum(dim=1)


@dataclass
class ReLUSwitch:
    """The backward rule of the swapped ReLUs (read at backward time) and how often they ran."""

    rule: Rule
    calls: int = 0


class _RectifiedReLUFunction(torch.autograd.Function):
    """relu(x) whose backward follows `switch.rule`, given the gradient g of the output:
    plain: g * [out > 0]; guided: max(g, 0) * [out > 0]; deconvnet: max(g, 0)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, switch: ReLUSwitch) -> torch.Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.switch = switch
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        rule = ctx.switch.rule
        if rule != "plain":
            grad = torch.relu(grad)
        if rule != "deconvnet":
            (out,) = ctx.saved_tensors
            # one fused pass, the kernel of ReLU's own backward: grad where out > 0, else 0
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        return grad, None


class _RectifiedReLU(nn.Module):
    """Stands in for an `nn.ReLU` module during a rectified call (never in place)."""

    def __init__(self, switch: ReLUSwitch):
        super().__init__()
        self.switch = switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.switch.calls += 1
        return _RectifiedReLUFunction.apply(x, self.switch)


def _no_relu_error(model: nn.Module, method: str) -> ConfigError:
    return ConfigError(
        f"{method}: {type(model).__name__} has no nn.ReLU module, so its backward cannot be "
        "rectified (ReLUs applied with F.relu in forward, and other activations, are not "
        "reached); use a model built from nn.ReLU modules, or the gradient method"
    )


def check_relu_modules(model: nn.Module, method: str) -> None:
    """ConfigError when `model` has no `nn.ReLU` module; a warning naming other activations."""
    kinds = {type(m) for m in model.modules()}
    if not any(issubclass(kind, nn.ReLU) for kind in kinds):
        raise _no_relu_error(model, method)
    others = sorted(k.__name__ for k in kinds if issubclass(k, OTHER_ACTIVATIONS))
    if others:
        warnings.warn(
            f"{method}: only nn.ReLU modules are rectified; the {', '.join(others)} modules of "
            f"{type(model).__name__} keep their ordinary backward",
            stacklevel=3,
        )


@contextmanager
def rectified_relus(model: nn.Module, rule: Rule) -> Iterator[ReLUSwitch]:
    """Swap every `nn.ReLU` module of `model` for one with the backward `rule` during the block.

    A ReLU module used in several places gets one stand-in, used in all of them. The yielded
    switch's `rule` may be changed between backward passes (Guided Grad-CAM runs a plain backward
    to its layer, then a guided one). The original modules are put back when the block ends, also
    on an exception. ConfigError when the model has no ReLU module, or when none ran in the block
    (the model applies its ReLUs functionally). The stand-ins are not in place: a model that relies
    on the side effect of `ReLU(inplace=True)` on its input will compute something else.
    """
    slots = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if isinstance(child, nn.ReLU)
    ]
    if not slots:
        raise _no_relu_error(model, "rectified backward")
    switch = ReLUSwitch(rule)
    stand_ins = {child: _RectifiedReLU(switch) for _, _, child in slots}
    try:
        for parent, name, child in slots:
            parent._modules[name] = stand_ins[child]
        yield switch
        if switch.calls == 0:
            raise ConfigError(
                f"none of the nn.ReLU modules of {type(model).__name__} ran: its forward applies "
                "ReLU functionally (F.relu), which a rectified backward cannot reach"
            )
    finally:
        for parent, name, child in slots:
            parent._modules[name] = child


class RectifiedGradient(AttributionMethod):
    """The input gradient of the explained logit with every `nn.ReLU` backward replaced by `rule`
    (see rectified_relus).

    Map: max over channels of |attribution| (B, H, W), the reduction of the vanilla gradient.
    """

    compilable = False

    rule: ClassVar[Rule]
    requires = ("relu_modules",)

    def __init__(self, model: nn.Module):
        check_relu_modules(model, self.name)
        super().__init__(model)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        with rectified_relus(self.model, self.rule):
            return input_gradients(self.model, images, targets, self.explains)


@METHODS.register(
    "guidedbackprop", help="guided backpropagation: only positive gradients pass ReLUs"
)
class GuidedBackprop(RectifiedGradient):
    """Guided backpropagation (Springenberg et al., 2015), (B, H, W).

    Through each ReLU the gradient g passes as max(g, 0) * [x > 0]. Only `nn.ReLU` modules are
    rectified (see the module docstring).
    """

    name = "guidedbackprop"
    rule = "guided"


@METHODS.register("deconvnet", help="DeconvNet: ReLUs pass max(gradient, 0), ignoring the input")
class DeconvNet(RectifiedGradient):
    """DeconvNet (Zeiler and Fergus, 2014) as a modified backward, (B, H, W).

    Through each ReLU the gradient g passes as max(g, 0) whatever the sign of the ReLU's input.
    Max-pooling routes the gradient to the arg-max (the paper's switches) and convolutions use
    the transposed filters, which is what autograd does. Only `nn.ReLU` modules are rectified.
    """

    name = "deconvnet"
    rule = "deconvnet"


@METHODS.register("guidedgradcam", help="Guided Grad-CAM: guided backprop x upsampled Grad-CAM")
class GuidedGradCAM(LayerMethod, AttributionMethod):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop x Grad-CAM upsampled to (H, W).

    One forward and two backward passes: a plain one to `layer` for Grad-CAM, then a guided one
    to the input, both of the explained logit y_c. Grad-CAM is upsampled bilinearly
    (align_corners=False), as in the paper. Map:
    max over channels of |attribution| (B, H, W). `layer` as for Grad-CAM (`LayerMethod`; None:
    the traced default).
    """

    compilable = False

    name = "guidedgradcam"
    per_image = Passes(1, 2)  # one forward, two backwards: the plain one stops at `layer`
    requires = ("relu_modules", "cam_layer")

    def __init__(self, model: nn.Module, layer: str | None = None):
        check_relu_modules(model, self.name)
        super().__init__(model, layer)
        self.gradcam = GradCAM(model, self.layer)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        with (
            rectified_relus(self.model, "plain") as switch,
            autograd_enabled(),
            record_layers(self.model, [self.layer], activations=True, edges=True) as rec,
            record_layers(self.model, self.layout.watched()) as grids,
        ):
            leaf = gradient_input(images)
            logits = self.model(leaf)
            targets = top1_targets(logits, targets)
            call = rec.last(self.layer)
            grid = self.layout.grid(self.layer, call.shape, grids.calls)
            score = explained_score(logits, targets, self.explains).sum()
            (layer_grads,) = backward(score, [call.edge], retain_graph=True)
            switch.rule = "guided"
            (guided,) = backward(score, [leaf])
        activations = self.layout.to_map(call.activation, grid)
        cam = self.gradcam.cam(activations, self.layout.to_map(full_precision(layer_grads), grid))
        cam = F.interpolate(cam[:, None], size=images.shape[2:], mode="bilinear")
        return Attribution(guided * cam, targets, logits.detach())
