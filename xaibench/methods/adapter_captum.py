"""Captum's attribution classes as methods named `captum.CLASS` (`captum.IntegratedGradients`).

A member is a class exported by `captum.attr` that attributes a model's output to its input or to
a layer: an `Attribution` with an `attribute` method whose constructor takes the model first
(`forward_func` or `model`) and, for the layer classes, the layer, with no other argument left
without a default. The neuron classes (which explain a unit chosen by `neuron_selector`, not a
class) and the wrappers of other attributions (`NoiseTunnel`) are not members.

The batch goes to one `attribute` call with `target=` the (B,) tensor of per-image classes; the
attributions (B, C, h, w) are reduced over channels by `reduce` (`REDUCTIONS`, default the signed
sum) to maps (B, h, w): at the input's resolution, or the layer's for the layer classes. The
adapter's settings besides the class's own: `reduce`; `seed` (the global generators seeded for each
call, for the sampling classes); `layer` (layer classes: a module name, default the CAM layer,
`find_target_layer`); `baselines` (classes whose `attribute` takes them): a number, the value of
every pixel of the reference image in the normalised space (default 0.0, the normalisation's mean
image), given as that number to the classes that take one, and as a batch of two constant images
(DeepLiftShap needs more than one) to those that draw their baselines from a distribution
(GradientShap, DeepLiftShap). With `return_convergence_delta`, the delta is the explanation's extra
"convergence_delta" (B,).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from xaibench.core.errors import ConfigError
from xaibench.methods.adapter import REDUCTIONS, Peer, PeerMethod, arguments, make, required
from xaibench.methods.base import METHODS, Passes
from xaibench.methods.hooks import autograd_enabled

PREFIX = "captum."
CAPTUM = Peer("captum.attr", "captum", "captum")
_MODEL_ARGUMENTS = ("forward_func", "model")
_FILLED = ("inputs", "target", "additional_forward_args")
"""`attribute` arguments the adapter fills in: never settings."""
_PASSES = {
    "Saliency": lambda s: Passes(1, 1),
    "InputXGradient": lambda s: Passes(1, 1),
    "GuidedBackprop": lambda s: Passes(1, 1),
    "Deconvolution": lambda s: Passes(1, 1),
    "LayerGradCam": lambda s: Passes(1, 1),
    "LayerGradientXActivation": lambda s: Passes(1, 1),
    "GuidedGradCam": lambda s: Passes(2, 2),
    "IntegratedGradients": lambda s: Passes(1, 1) * s.get("n_steps", 50),
    "GradientShap": lambda s: Passes(1, 1) * s.get("n_samples", 5),
}
"""Classes -> their passes per image with settings s (captum's defaults where left out): one
forward and one backward per gradient, each Integrated Gradients step or GradientShap sample
being one; Guided Grad-CAM runs Grad-CAM and guided backpropagation."""
_RELU_RULES = ("GuidedBackprop", "Deconvolution", "GuidedGradCam")
"""Classes that change the backward of the model's nn.ReLU modules."""


class CaptumMethod(PeerMethod):
    """A Captum attribution class (see the module's docstring); one instance per method.

    call_signature: every argument name of the class's `attribute`; draws_baselines: whether its
    `baselines` are a distribution it samples from (an argument without a default).
    """

    peer = CAPTUM
    call_signature: ClassVar[tuple[str, ...]] = ()
    draws_baselines: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, **params: Any):
        super().__init__(model, **params)
        self.reduce = self.params["reduce"]
        if self.reduce not in REDUCTIONS:
            raise ConfigError(
                f"{self.name}: reduce {self.reduce!r}: use one of {', '.join(REDUCTIONS)}",
                param="params",
            )
        value = self.params.get("baselines", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"{self.name}: baselines {value!r}: give a number, the value of every pixel of "
                "the reference image in the normalised space",
                param="params",
            )
        modules = (self.layer_module,) if self.takes_layer else ()
        self.attribution = self.peer_class(model, *modules, **self.construct_kwargs)

    @classmethod
    def peer_passes(cls, settings: Mapping[str, Any]) -> Passes | None:
        count = _PASSES.get(cls.peer_class.__name__)
        return None if count is None else count(settings)

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs = images.detach()
        if inputs.is_inference():
            inputs = inputs.clone()
        kwargs = dict(self.call_kwargs)
        if "target" in self.call_signature:
            kwargs["target"] = targets
        if "baselines" in self.own_settings:
            kwargs["baselines"] = self.baselines(inputs)
        with autograd_enabled():
            result = self.attribution.attribute(inputs, **kwargs)
        extras = {}
        if kwargs.get("return_convergence_delta"):
            result, delta = result
            extras["convergence_delta"] = delta.detach()
        if not isinstance(result, torch.Tensor) or result.ndim != 4:
            shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result)
            where = f"layer {self.params['layer']!r}" if self.takes_layer else "the input"
            raise ConfigError(
                f"{self.name} attributed {where} as {shape}, not (B, C, h, w); "
                + ("pick a convolutional layer" if self.takes_layer else "it cannot make a map"),
                param="layer" if self.takes_layer else "methods",
            )
        return REDUCTIONS[self.reduce](result.detach()), extras

    def baselines(self, inputs: torch.Tensor) -> float | torch.Tensor:
        """The `baselines` argument: the number itself, or two constant images (2, C, H, W) for
        the classes that draw baselines from a distribution."""
        value = float(self.params["baselines"])
        if not self.draws_baselines:
            return value
        return torch.full((2, *inputs.shape[1:]), value, dtype=inputs.dtype, device=inputs.device)


def _classes() -> dict[str, type]:
    attr = CAPTUM.load()
    classes = {}
    for name in sorted(getattr(attr, "__all__", dir(attr))):
        obj = getattr(attr, name, None)
        if _is_member(attr, obj):
            classes[name] = obj
    return classes


def _is_member(attr: Any, obj: Any) -> bool:
    if not (inspect.isclass(obj) and issubclass(obj, attr.Attribution)):
        return False
    if not inspect.isfunction(getattr(obj, "attribute", None)):
        return False
    construct = list(inspect.signature(obj.__init__).parameters)[1:]
    if not construct or construct[0] not in _MODEL_ARGUMENTS:
        return False
    needed = required(arguments(obj.__init__, 2))
    attribute = arguments(obj.attribute, 1)
    return set(needed) <= {"layer"} and "neuron_selector" not in attribute


def members() -> list[str]:
    """The names of every member class of the installed Captum."""
    return list(_classes())


def resolve(member: str, param: str | None = None) -> type[CaptumMethod] | None:
    """The method class of `captum.MEMBER`; None when Captum exports no such member class."""
    CAPTUM.load(param)
    peer_class = _classes().get(member)
    if peer_class is None:
        return None
    construct = arguments(peer_class.__init__, 2)
    takes_layer = construct.pop("layer", None) is not None
    call = {k: p for k, p in arguments(peer_class.attribute, 1).items() if k not in _FILLED}
    draws_baselines = "baselines" in required(call)
    own: dict[str, Any] = {"reduce": "sum", "seed": None}
    if takes_layer:
        own["layer"] = None
    if "baselines" in call:
        own["baselines"] = 0.0
        del call["baselines"]
    requires = ("feature_map",) if takes_layer else ()
    return make(
        CaptumMethod,
        PREFIX + member,
        peer_class,
        construct,
        call,
        own,
        call_signature=tuple(arguments(peer_class.attribute, 1)),
        draws_baselines=draws_baselines,
        uses_target="target" in arguments(peer_class.attribute, 1),
        requires=requires + (("relu_modules",) if member in _RELU_RULES else ()),
    )


METHODS.add_family(
    PREFIX,
    resolve,
    members,
    help="any attribution class of Captum, e.g. captum.IntegratedGradients, captum.Occlusion, "
    "captum.LayerGradCam (`xaibench list methods 'captum.*'`; pip install 'xaibench[captum]')",
)
