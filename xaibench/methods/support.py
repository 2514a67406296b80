"""Which saliency methods a model supports, read off its structure (never off its name).

One traced forward of a zero image, on the meta device for a registered name (no weights are
allocated, so every torchvision model is inspected in a fraction of a second), records:

- the layers' outputs (`trace_layers`): the layer CAM methods read by default (`default_layer`: a
  CNN's last feature map, Swin's final grid, the input of a ViT's last attention, read as a map
  through its `Layout`), whether the score is pooled from a chain of (B, C, h, w) feature maps
  (Poly-CAM's stages, `feature_maps`; not in a vision transformer, whose only such map is the
  patch embedding), and which nn.ReLU modules ran (guided backpropagation and DeconvNet rectify
  those);
- every torch function applied to a tensor that depends on the image (`PieceTrace`): whether the
  score splits exactly into an input term and bias terms (T-Grad, FullGrad), that is whether the
  network is built only from linear pieces (convolution, eval batch-norm, linear, ReLU, max- and
  average pooling, concatenation, addition, reshaping and channel shuffles), and otherwise which
  pieces make the split approximate (ReLU6 clipping, SiLU, Hardswish, gating products, LayerNorm,
  constants added outside a layer's bias) or impossible (attention). The input transform of
  torchvision's pretrained GoogLeNet and Inception v3 (`xaibench.models.input_transform`) is not
  traced: T-Grad and FullGrad give its shift a term of its own, so it leaves the split exact.

Models with attention modules run one more forward with their attention probabilities captured
(`attention_grid`): attention rollout and gradient-weighted attention need every layer to attend
over a class token and the patch grid.

Each method declares what it needs (`SaliencyMethod.requires`); `method_support` checks it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from xaibench.core.errors import ConfigError, XaibenchError
from xaibench.methods import METHODS
from xaibench.methods.attention import attention_grid
from xaibench.methods.gradients import OTHER_ACTIVATIONS
from xaibench.methods.layers import default_layer, feature_maps, trace_layers
from xaibench.methods.tgrad import effective_biases
from xaibench.methods.tokens import layer_layout
from xaibench.models.factory import (
    is_user_model,
    load_model,
    mark_input_size,
    model_input_size,
    model_spec,
)
from xaibench.models.input_transform import input_shift, without_input_transform

Status = Literal["yes", "approximate", "partial", "no"]
"""yes: as defined; approximate: runs, but the bias decomposition is not exact; partial: runs, but
only part of the network gets the method's treatment; no: refused or meaningless."""

REQUIREMENTS = ("cam_layer", "feature_map", "bias_terms", "relu_modules", "class_attention")
"""What methods can require of a model (`SaliencyMethod.requires`): a default CAM layer (a map,
or a transformer's tokens on their grid), a chain of (B, C, h, w) feature maps (Poly-CAM), a
split of the score into input and bias terms, nn.ReLU modules, attention over a class token and
the patch grid."""

_RANK: dict[str, int] = {"yes": 0, "partial": 1, "approximate": 1, "no": 2}

LINEAR_PIECES = frozenset(
    {
        # bias-carrying layers whose biases the decomposition collects, and piecewise-linear maps
        "conv2d", "linear", "batch_norm", "relu", "relu_", "threshold",
        "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
        "adaptive_max_pool2d", "dropout", "interpolate", "pad",
        # joining, splitting and rearranging (channel shuffle is a view and a transpose)
        "cat", "stack", "chunk", "split", "__getitem__", "narrow", "select", "flatten", "view",
        "reshape", "transpose", "permute", "contiguous", "squeeze", "unsqueeze", "expand",
        "clone", "channel_shuffle", "roll", "swapaxes", "new_zeros",
        # sums and sign changes
        "mean", "sum", "neg", "__neg__",
    }
)  # fmt: skip
"""Torch functions after which the score is still exactly input term + bias terms."""

_SUMS = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__"})
_SUMS |= {"__isub__", "__rsub__"}
_PRODUCTS = frozenset({"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_"})
_PRODUCTS |= {"__truediv__", "__itruediv__", "matmul", "__matmul__", "bmm", "einsum"}
_BOOKKEEPING = frozenset({"size", "dim", "__get__", "_assert", "numel", "is_floating_point"})
_ATTENTION = frozenset(
    {"softmax", "_softmax", "multi_head_attention_forward", "scaled_dot_product_attention"}
)
_PIECE_NAMES = {
    "hardtanh": "ReLU6 clipping",
    "relu6": "ReLU6 clipping",
    "silu": "SiLU",
    "hardswish": "Hardswish",
    "sigmoid": "sigmoid",
    "hardsigmoid": "hard sigmoid",
    "gelu": "GELU",
    "tanh": "tanh",
    "layer_norm": "LayerNorm",
    "group_norm": "GroupNorm",
    "normalize": "L2 normalisation",
}


class PieceTrace(TorchFunctionMode):
    """Records the pieces of a forward that break the input-plus-biases split of the score.

    Only calls with an argument that requires grad count (the traced image requires grad, the
    parameters do not, see `trace_layers`). `pieces`: readable name -> number of calls;
    `attention`: whether softmax attention ran; `relus`: calls of F.relu (nn.ReLU's included).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pieces: dict[str, int] = {}
        self.attention = False
        self.relus = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        operands = tree_leaves(args)
        dependent = sum(_depends(a) for a in [*operands, *tree_leaves(kwargs)])
        if dependent:
            self._classify(getattr(func, "__name__", str(func)), dependent, operands)
        return func(*args, **kwargs)

    def _classify(self, name: str, dependent: int, operands: list[Any]) -> None:
        self.relus += name in ("relu", "relu_")
        if name in LINEAR_PIECES or name in _BOOKKEEPING:
            return
        if name in _SUMS:
            if any(_is_constant(a) for a in operands):
                self._add("a constant added outside any layer's bias")
        elif name in _PRODUCTS:
            if dependent > 1:
                self._add("a product of two activations (gating, e.g. squeeze-and-excitation)")
        elif name in _ATTENTION:
            self.attention = True
            self._add("attention")
        else:
            self._add(_PIECE_NAMES.get(name, name))

    def _add(self, piece: str) -> None:
        self.pieces[piece] = self.pieces.get(piece, 0) + 1


def _depends(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def _is_constant(value: Any) -> bool:
    """A number other than 0, or a tensor that does not depend on the image."""
    if isinstance(value, torch.Tensor):
        return not value.requires_grad
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0


@dataclass(frozen=True)
class Finding:
    """One structural requirement: its status and why (empty when it is simply met)."""

    status: Status
    reason: str = ""


@dataclass
class ModelSupport:
    """What a model offers the saliency methods, at `input_size` (H, W).

    findings: requirement (`REQUIREMENTS`) -> Finding; cam_layer: the default CAM layer, or None;
    pieces: the pieces that break the bias split.
    """

    input_size: tuple[int, int]
    findings: dict[str, Finding]
    cam_layer: str | None = None
    pieces: dict[str, int] = field(default_factory=dict)

    def method(self, name: str) -> Finding:
        """The support of the registered method `name`: its worst requirement, reasons joined."""
        needs = [self.findings[key] for key in METHODS.get(name).requires]
        if not needs:
            return Finding("yes")
        worst = max(needs, key=lambda f: _RANK[f.status]).status
        reasons = "; ".join(f.reason for f in needs if f.status != "yes")
        return Finding(worst, reasons)

    def methods(self) -> dict[str, Finding]:
        """Every registered method -> its Finding."""
        return {name: self.method(name) for name in METHODS.names()}


def inspect_model(model: nn.Module, input_size: tuple[int, int] | None = None) -> ModelSupport:
    """The support of an instantiated model (any device, meta included) at input (H, W), None:
    the model's own (`model_input_size`).

    When the traced forward fails at this size, every requirement is "no" with the error. A model's
    input transform (`input_shift`) is switched off for the trace and restored after.
    """
    name = type(model).__name__
    input_size = input_size or model_input_size(model)
    trace = PieceTrace()
    try:
        with without_input_transform(model):
            calls = trace_layers(model, input_size, watch=trace)
    except (RuntimeError, AssertionError, ValueError, TypeError, XaibenchError) as error:
        h, w = input_size
        failed = Finding("no", f"{name} fails on a {h}x{w} input ({type(error).__name__}: {error})")
        return ModelSupport(input_size, dict.fromkeys(REQUIREMENTS, failed))
    findings = {
        "bias_terms": _bias_terms(model, trace),
        "relu_modules": _relu_modules(model, {call.name for call in calls}, trace.relus > 0),
        "class_attention": _class_attention(model, input_size),
    }
    try:
        feature_maps(calls, name, input_size, "pass `layers`")
        findings["feature_map"] = Finding("yes")
    except ConfigError as error:
        findings["feature_map"] = Finding("no", str(error))
    cam_layer = None
    try:
        cam_layer = default_layer(model, calls, input_size, "pass `layer`").name
        layout = layer_layout(model, calls, cam_layer)
        findings["cam_layer"] = Finding("yes", f"default layer {cam_layer!r}{_READ[layout.kind]}")
    except ConfigError as error:
        findings["cam_layer"] = Finding("no", str(error))
    return ModelSupport(input_size, findings, cam_layer, dict(trace.pieces))


_READ = {
    "map": "",
    "channels_last": " (a (B, h, w, C) grid, read channels first)",
    "tokens": " (a token sequence, read on the patch grid without the class token)",
}


def _class_attention(model: nn.Module, input_size: tuple[int, int]) -> Finding:
    try:
        found = attention_grid(model, input_size)
    except ConfigError as error:
        return Finding("no", str(error))
    return Finding("yes", f"{len(found.layers)} attention layers over a class token and patches")


def _bias_terms(model: nn.Module, trace: PieceTrace) -> Finding:
    try:
        effective_biases(model)  # refuses a batch-norm without running statistics
    except ConfigError as error:
        return Finding("no", str(error))
    if trace.attention:
        return Finding(
            "no",
            "attention: the score depends on products of activations inside a softmax, so it "
            "has no split into input and bias terms",
        )
    if trace.pieces:
        listed = ", ".join(trace.pieces)
        return Finding("approximate", f"the terms do not add up to the score exactly: {listed}")
    reason = "built from linear pieces: input and bias terms add up to the score"
    if input_shift(model) is not None:
        reason += " (the input transform's shift is a term of its own)"
    return Finding("yes", reason)


def _relu_modules(model: nn.Module, ran: set[str], functional_relus: bool) -> Finding:
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, OTHER_ACTIVATIONS)})
    if not any(n in ran for n in relus):
        why = "has no nn.ReLU module" if not relus else "never runs its nn.ReLU modules"
        how = ["it applies F.relu"] if functional_relus else []
        how += [f"its activation modules: {', '.join(others)}"] if others else []
        detail = f" ({'; '.join(how)})" if how else ""
        return Finding("no", f"{type(model).__name__} {why} to rectify{detail}")
    if others:
        return Finding("partial", f"only nn.ReLU is rectified, not {', '.join(others)}")
    return Finding("yes")


def support_by_name(
    name: str, weights: str = "none", *, input_size: tuple[int, int] | int | None = None
) -> ModelSupport:
    """The support of a registered, timm or Hugging Face model at its input size, or of a model of
    the user's own (`module:callable`) at `input_size` ((H, W) or a side; default 224 x 224).

    weights "none" inspects the architecture on the meta device (`skeleton`); any other choice
    loads the model as `load_model` does (its structure can depend on the weights: torchvision's
    GoogLeNet and Inception v3 transform their input when pretrained weights are loaded, which
    `inspect_model` accounts for, so both choices give them the same verdict). A model of the
    user's own is built by `load_model` whatever the choice (none: as its callable builds it; a
    path: with that state dict loaded), and `load_model`'s errors are raised: ConfigError where
    the callable cannot be imported, raises or returns no nn.Module, or for `input_size` with
    another model.
    """
    if is_user_model(name) or input_size is not None:
        loaded = load_model(name, weights, input_size=input_size)
        return inspect_model(loaded.model, loaded.input_size)
    spec = model_spec(name)
    model = skeleton(name) if weights == "none" else load_model(name, weights).model
    return inspect_model(model, spec.input_size)


def skeleton(name: str) -> nn.Module:
    """The registered or timm model `name` with random weights on the meta device (shapes only).

    Built under `torch.device("meta")`; architectures whose constructor computes with tensors
    (RegNet's widths) fail there and are built with their parameters and buffers moved to the
    meta device as they are registered instead (`_meta_parameters`). Marked with the model's
    input size, as `load_model` marks it (`mark_input_size`).
    """
    spec = model_spec(name)
    with warnings.catch_warnings():  # torchvision's notes on GoogLeNet's future initialisation
        warnings.simplefilter("ignore", FutureWarning)
        try:
            with torch.device("meta"):
                model = spec.build("none")[0]
        except (NotImplementedError, RuntimeError):
            with _meta_parameters():
                model = spec.build("none")[0]
    return mark_input_size(model, spec.input_size)


@contextmanager
def _meta_parameters() -> Iterator[None]:
    """Every parameter and buffer registered in the block is moved to the meta device, by torch's
    global registration hooks (`register_module_parameter_registration_hook`)."""

    def parameter_on_meta(
        module: nn.Module, name: str, param: nn.Parameter | None
    ) -> nn.Parameter | None:
        if param is None:
            return None
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer_on_meta(module: nn.Module, name: str, tensor: Any) -> Any:
        return tensor.to("meta") if isinstance(tensor, torch.Tensor) else None

    handles = [
        register_module_parameter_registration_hook(parameter_on_meta),
        register_module_buffer_registration_hook(buffer_on_meta),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
