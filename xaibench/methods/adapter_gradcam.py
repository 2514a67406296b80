"""pytorch-grad-cam's CAM classes as methods named `gradcam-lib.CLASS` (`gradcam-lib.EigenGradCAM`).

A member is a class exported by `pytorch_grad_cam` whose constructor takes `(model,
target_layers)` first and whose call takes the images and `targets`: every CAM of the installed
version (GradCAM, ScoreCAM, EigenGradCAM, KPCA_CAM, FEM, ShapleyCAM, FinerCAM, RandomCAM, ...).

Each call builds the class on the model and the layer (`layer`, a module name, default the CAM
layer `find_target_layer` finds), gives it the whole batch with one `ClassifierOutputTarget` per
image (FinerCAM: one `FinerWeightedTarget` per image, the class against the classes whose logits
are closest to its own at positions `comparison_categories`, as FinerCAM picks them itself for its
top-1 class), and releases its hooks after, also on an exception. The library's maps are already
(B, H, W): at the input's resolution, each scaled to [0, 1] by the library. Settings besides the
class's constructor and call arguments: `layer`, and `seed` (NumPy's and torch's global
generators seeded for each call: RandomCAM draws its weights from NumPy's). A constructor argument
whose default is a class of the library (FinerCAM's `base_method`) takes the name of another one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from xaibench.core.errors import ConfigError
from xaibench.methods.adapter import Peer, PeerMethod, arguments, make
from xaibench.methods.base import METHODS, Passes
from xaibench.methods.hooks import autograd_enabled, gradient_input

PREFIX = "gradcam-lib."
GRADCAM = Peer("pytorch_grad_cam", "grad-cam", "gradcam")
_FILLED = ("input_tensor", "targets", "target_idx")
"""Call arguments the adapter fills in (FinerCAM's `target_idx`: the per-image targets)."""
_GRADIENT_CAMS = (
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "GradCAMElementWise",
    "EigenGradCAM", "RandomCAM",
)  # fmt: skip
"""Classes that run one forward and one backward (to the layer) per image."""
_FORWARD_CAMS = ("EigenCAM", "KPCA_CAM", "FEM")
"""Classes that run one forward per image and no backward."""


class GradCAMLibMethod(PeerMethod):
    """A pytorch-grad-cam class (see the module's docstring)."""

    peer = GRADCAM

    @classmethod
    def peer_passes(cls, settings: Mapping[str, Any]) -> Passes | None:
        if settings.get("aug_smooth"):
            return None
        name = cls.peer_class.__name__
        if name in _GRADIENT_CAMS:
            return Passes(1, 1)
        return Passes(1, 0) if name in _FORWARD_CAMS else None

    def convert(self, key: str, value: Any) -> Any:
        default = self.construct[key].default
        if not (inspect.isclass(default) and isinstance(value, str)):
            return value
        library = GRADCAM.load("params")
        chosen = getattr(library, value, None)
        if not inspect.isclass(chosen):
            raise ConfigError(
                f"{self.name}: {key} {value!r} is not a class of pytorch_grad_cam; "
                f"use one of {', '.join(members())}",
                param="params",
            )
        return chosen

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        cam = self.peer_class(self.model, [self.layer_module], **self.construct_kwargs)
        try:
            with autograd_enabled(), _weights_tracked(self.model, not getattr(cam, "detach", True)):
                inputs = gradient_input(images) if _uses_gradients(cam) else images.detach()
                maps = cam(inputs, self.targets(images, targets), **self.call_kwargs)
        finally:
            _release(cam)
        return torch.from_numpy(np.ascontiguousarray(maps)).to(images.device), {}

    def targets(self, images: torch.Tensor, targets: torch.Tensor) -> list:
        """One score target per image for the library (its classes take Python ints)."""
        library = GRADCAM.load()
        if "comparison_categories" not in self.call:
            classes = targets.tolist()
            return [library.utils.model_targets.ClassifierOutputTarget(c) for c in classes]
        with torch.no_grad():
            logits = self.model(images)
        return _finer_targets(library, logits, targets, self.call_kwargs, self.peer_class)


def _finer_targets(
    library: Any, logits: torch.Tensor, targets: torch.Tensor, settings: dict, peer_class: type
) -> list:
    """FinerCAM's targets for given classes: each class against the classes whose logits are
    nearest its own, at the ranks `comparison_categories` (default the library's)."""
    module = inspect.getmodule(peer_class)
    ranks = settings.get("comparison_categories")
    if ranks is None:
        ranks = getattr(module, "DEFAULT_COMPARISON_CATEGORIES", (1, 2, 3))[: logits.shape[1] - 1]
    ranks = [r for r in ranks if r < logits.shape[1]]
    alpha = settings.get("alpha", 1)
    chosen = logits.gather(1, targets[:, None])
    order = (logits - chosen).abs().argsort(dim=1, stable=True)[:, ranks].tolist()
    weighted = library.utils.model_targets.FinerWeightedTarget
    classes = targets.tolist()
    return [weighted(c, nearest, alpha) for c, nearest in zip(classes, order, strict=True)]


@contextmanager
def _weights_tracked(model: torch.nn.Module, tracked: bool) -> Iterator[None]:
    """The model's weights require grad in the block when `tracked`, and not after.

    The classes that keep the layer's gradients attached (`detach` False: ShapleyCAM)
    differentiate them again; above a layer followed by linear pieces and pooling, that gradient
    depends on the activations only through the weights, so autograd builds its graph only when
    they require grad, as they do outside `saliency_mode`. Their calls use `autograd.grad`, which
    leaves no `.grad` on the weights.
    """
    if not tracked:
        yield
        return
    parameters = list(model.parameters())
    for p in parameters:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(False)


def _uses_gradients(cam: Any) -> bool:
    return getattr(cam, "uses_gradients", True)


def _release(cam: Any) -> None:
    """Remove the hooks the class put on the model."""
    exit_ = getattr(cam, "__exit__", None)
    if exit_ is not None:
        exit_(None, None, None)


def _call_arguments(cls: type) -> dict[str, inspect.Parameter] | None:
    """The arguments of the class's call (its `forward` when `__call__` takes only *args), or None
    when it takes no `targets`."""
    for function in (cls.__call__, getattr(cls, "forward", None)):
        if function is None:
            continue
        call = arguments(function, 1)
        if "targets" in call:
            return call
    return None


def _classes() -> dict[str, type]:
    library = GRADCAM.load()
    classes = {}
    for name in sorted(dir(library)):
        obj = getattr(library, name)
        if name.startswith("_") or not inspect.isclass(obj):
            continue
        first = list(inspect.signature(obj.__init__).parameters)[1:3]
        if first == ["model", "target_layers"] and _call_arguments(obj) is not None:
            classes[name] = obj
    return classes


def members() -> list[str]:
    """The names of every member class of the installed pytorch-grad-cam."""
    return list(_classes())


def resolve(member: str, param: str | None = None) -> type[GradCAMLibMethod] | None:
    """The method class of `gradcam-lib.MEMBER`; None when there is no such member class."""
    GRADCAM.load(param)
    peer_class = _classes().get(member)
    if peer_class is None:
        return None
    construct = arguments(peer_class.__init__, 3)
    call = {k: p for k, p in (_call_arguments(peer_class) or {}).items() if k not in _FILLED}
    return make(
        GradCAMLibMethod,
        PREFIX + member,
        peer_class,
        construct,
        call,
        {"layer": None, "seed": None},
        requires=("feature_map",),
    )


METHODS.add_family(
    PREFIX,
    resolve,
    members,
    help="any CAM class of pytorch-grad-cam, e.g. gradcam-lib.EigenGradCAM, gradcam-lib.ScoreCAM "
    "(`xaibench list methods 'gradcam-lib.*'`; pip install 'xaibench[gradcam]')",
)
