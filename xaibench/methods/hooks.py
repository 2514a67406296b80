"""Record what named submodules output during a forward pass, and the gradients that reach them.

`record_layers` is the one place where xaibench registers hooks. It puts a forward hook on each
named submodule; each time a module runs, the hook appends a `LayerCall` and, when asked, copies the
output, captures the output's gradient edge and registers a tensor hook that receives
d(backpropagated scalar)/d(output). Every hook, forward and tensor, is removed when the `with` block
ends, also on an exception.

A tensor hook registered inside the forward hook fires with the gradient of the value the module
returned, even when a later in-place operation (`ReLU(inplace=True)`, `out += identity`) overwrites
that tensor; this is what makes hooked layers safe on torchvision's VGG and ResNet.

`backward` is the one place where xaibench's methods backpropagate: under a gradient scale
(`xaibench.core.precision.gradient_scaling`, fp16) it scales the score, and it and the tensor
hooks of `record_layers` divide the gradients by the same scale before a method reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils.hooks import RemovableHandle

from xaibench.core.errors import ConfigError
from xaibench.core.precision import current_gradient_scale, full_precision

GradientReducer = Callable[["LayerCall", torch.Tensor], Any]
OutputReducer = Callable[["LayerCall", torch.Tensor], Any]
_in_flight_scale = 1.0
"""The scale of the backward `backward` is running (1 outside it), which the hooks divide by."""


@dataclass
class LayerCall:
    """One run of a hooked module.

    `shape` is the output's shape (None when the output is not a tensor). `activation` is a
    detached copy of the output (a later in-place op cannot change it). `gradient` is
    d(scalar)/d(output), same shape as the output. `edge` is the output's gradient edge:
    `torch.autograd.grad(s, inputs=[edge])` stops the backward at this layer. `reduced` is what the
    `reduce_gradient` callback returned, `reduced_output` what `reduce_output` returned.
    Fields that were not asked for stay None.
    """

    name: str
    shape: torch.Size | None
    activation: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    edge: GradientEdge | None = None
    reduced: Any = None
    reduced_output: Any = None


class Recording:
    """The `LayerCall`s of one `record_layers` block, in the order the modules finished."""

    def __init__(self) -> None:
        self.calls: list[LayerCall] = []

    def last(self, name: str) -> LayerCall:
        """The last call of `name` (a reused module runs several times); ConfigError if none."""
        for call in reversed(self.calls):
            if call.name == name:
                return call
        raise ConfigError(f"layer {name!r} did not run in the forward pass; pick one that does")


@contextmanager
def record_layers(
    model: nn.Module,
    names: Sequence[str],
    *,
    activations: bool = False,
    gradients: bool = False,
    edges: bool = False,
    reduce_gradient: GradientReducer | None = None,
    reduce_output: OutputReducer | None = None,
) -> Iterator[Recording]:
    """Hook the submodules `names` of `model` for the duration of the block.

    activations: keep `output.detach().clone()`; gradients: keep d(scalar)/d(output);
    edges: keep the output's gradient edge; reduce_gradient(call, grad): called inside the tensor
    hook, its result stored in `call.reduced`, so that a method can shrink a (B, C, h, w) gradient
    as soon as it exists instead of keeping it; reduce_output(call, output): called on the live
    output (still attached to the graph, before any later in-place op overwrites it), its result
    stored in `call.reduced_output`, so that an objective can be differentiated through a layer
    followed by `ReLU(inplace=True)`. Outputs that are not tensors are recorded with
    `shape=None` and raise ConfigError if anything but the shape was asked for.
    """
    recording = Recording()
    handles: list[RemovableHandle] = []
    wants_grad = gradients or reduce_gradient is not None

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def forward_hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                if activations or edges or wants_grad or reduce_output is not None:
                    raise ConfigError(
                        f"layer {name!r} ({type(module).__name__}) returns "
                        f"{type(output).__name__}, not a tensor; pick a layer that returns one"
                    )
                recording.calls.append(LayerCall(name, None))
                return
            call = LayerCall(name, output.shape)
            recording.calls.append(call)
            if activations:
                call.activation = full_precision(output.detach()).clone()
            if (edges or wants_grad) and not output.requires_grad:
                raise ConfigError(
                    f"the output of layer {name!r} does not depend on anything that requires "
                    "grad; run the forward with images.requires_grad_(True)"
                )
            if reduce_output is not None:
                call.reduced_output = reduce_output(call, output)
            if edges:
                call.edge = get_gradient_edge(output)
            if wants_grad:
                handles.append(output.register_hook(gradient_hook(call)))

        return forward_hook

    def gradient_hook(call: LayerCall) -> Callable[[torch.Tensor], None]:
        def on_gradient(grad: torch.Tensor) -> None:
            grad = full_precision(grad)
            if _in_flight_scale != 1.0:
                grad = grad / _in_flight_scale
            if gradients:
                call.gradient = grad
            if reduce_gradient is not None:
                call.reduced = reduce_gradient(call, grad)

        return on_gradient

    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
        yield recording
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def module_stack(model: nn.Module) -> Iterator[list[str]]:
    """The names of the submodules of `model` running right now, outermost first, as a live list.

    Code called inside a forward (a `TorchFunctionMode`, say) reads `stack[-1]` to learn which
    module called it; the root module is "". Hooks are removed when the block ends, and a forward
    that raises leaves the list as it was.
    """
    stack: list[str] = []
    handles: list[RemovableHandle] = []

    def push(name: str) -> Callable[..., None]:
        return lambda _module, _inputs: stack.append(name)

    def pop(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(push(name)))
            handles.append(module.register_forward_hook(pop, always_call=True))
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def backward(
    score: torch.Tensor,
    inputs: Sequence[torch.Tensor | GradientEdge],
    *,
    retain_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """d(score)/d(inputs) for a scalar `score`: one gradient per input (a tensor, or a gradient
    edge from `record_layers`), shaped like it, as `torch.autograd.grad` gives them.

    With the gradient scale S of `current_gradient_scale` above 1 (fp16), score * S is
    backpropagated and every gradient, these and those the hooks of `record_layers` receive, is
    divided by S in float32; while they hold an Inf or NaN (and the score is finite), S is halved
    and the backward run again, down to S = 1 (the graph is kept for that). At S = 1 the gradients
    are autograd's own, untouched.
    """
    global _in_flight_scale
    scale = current_gradient_scale()
    if scale == 1.0:
        return torch.autograd.grad(score, inputs, retain_graph=retain_graph)
    while True:
        _in_flight_scale = scale
        try:
            grads = torch.autograd.grad(score * scale, inputs, retain_graph=True)
        finally:
            _in_flight_scale = 1.0
        if scale == 1.0 or _keep(grads, score):
            return tuple(full_precision(g) / scale for g in grads)
        scale = max(scale / 2, 1.0)


def _keep(grads: Sequence[torch.Tensor], score: torch.Tensor) -> bool:
    """Whether the gradients are finite, or the score is not (no scale would help): one wait."""
    finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    return bool(finite | ~torch.isfinite(score).all())


@contextmanager
def autograd_enabled() -> Iterator[None]:
    """Gradients on, also inside a caller's `torch.no_grad()` or `torch.inference_mode()`."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def gradient_input(images: torch.Tensor) -> torch.Tensor:
    """A leaf copy of `images` (B, C, H, W) that requires grad; the caller's tensor is untouched.

    Call it inside `autograd_enabled()`. Inference-mode tensors are cloned (autograd cannot
    save them); others share storage with `images`.
    """
    leaf = images.detach()
    if leaf.is_inference():
        leaf = leaf.clone()
    return leaf.requires_grad_(True)
