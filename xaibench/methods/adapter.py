"""Methods of other libraries run as xaibench methods: the shared part of the adapters.

A library's method is named `PREFIX.CLASS` (`captum.Occlusion`, `gradcam-lib.EigenGradCAM`); the
registry resolves the name on first use (`METHODS.add_family`) to a `PeerMethod` subclass made for
that class, so the library is imported only when one of its methods is asked for. Its settings are
the adapter's own (`own_settings`: the layer, the map's reduction, baselines, a seed) and the
class's constructor and call arguments, checked against their signatures; the maps are (B, h, w)
float32 on the images' device, and the library's name and version are recorded with the store
(`SaliencyMethod.library`). Reference: docs/adapters.md.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import Explanation, Passes, SaliencyMethod
from xaibench.methods.layers import find_target_layer, validate_layer

REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda values: values.sum(dim=1),
    "abs_sum": lambda values: values.abs().sum(dim=1),
    "max_abs": lambda values: values.abs().amax(dim=1),
}
"""(B, C, h, w) attributions -> (B, h, w) maps: the signed channel sum (the default), the sum of
absolute values, the largest absolute value."""


@dataclass(frozen=True)
class Peer:
    """A library the adapters call: its import name, distribution and the extra that installs it."""

    module: str
    distribution: str
    extra: str

    def load(self, param: str | None = None) -> ModuleType:
        """The library's module; ConfigError naming the extra to install when it is missing."""
        try:
            return importlib.import_module(self.module)
        except ImportError as error:
            raise ConfigError(
                f"{self.distribution} is not installed ({error}); install it with "
                f"pip install 'xaibench[{self.extra}]'",
                param=param,
            ) from None

    def version(self) -> str:
        return metadata.version(self.distribution)


def arguments(function: Callable, skip: int) -> dict[str, inspect.Parameter]:
    """The named parameters of `function` after its first `skip` ones (self counted), by name."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p for p in parameters if p.kind in kinds}


def required(parameters: Mapping[str, inspect.Parameter]) -> list[str]:
    return [name for name, p in parameters.items() if p.default is inspect.Parameter.empty]


def peer_value(value: Any) -> Any:
    """A JSON setting as the libraries take it: lists become tuples (window shapes, strides)."""
    if isinstance(value, list):
        return tuple(peer_value(item) for item in value)
    return value


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """torch's and NumPy's global generators seeded with `seed` for the block and restored after;
    seed None leaves them as they are."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


class PeerMethod(SaliencyMethod):
    """A class of another library as a method: `explain` gives it the batch and per-image targets.

    Subclasses made per class (`make`) set `peer_class`, `construct` and `call` (the constructor's
    and the call's settings, by name, from their signatures), `own_settings` (the adapter's, with
    defaults) and `takes_layer`. When no targets are given, one forward without autograd picks the
    top-1 class of each image, and its logits are the explanation's; with targets, the
    explanation has no logits (the caller runs that forward). Peers may hook or swap modules
    during a call, so their forwards are not compiled.
    """

    peer: ClassVar[Peer]
    peer_class: ClassVar[type]
    construct: ClassVar[dict[str, inspect.Parameter]]
    call: ClassVar[dict[str, inspect.Parameter]]
    own_settings: ClassVar[dict[str, Any]]
    takes_layer: ClassVar[bool] = False
    compilable = False

    def __init__(self, model: nn.Module, **params: Any):
        settings = self.full_settings(params)
        own = {key: settings[key] for key in self.own_settings}
        if self.takes_layer:
            own["layer"] = find_target_layer(model) if own["layer"] is None else own["layer"]
            self.layer_module = validate_layer(model, own["layer"])
        super().__init__(model, **{**params, **own})
        self.seed = own["seed"]
        given = {key: peer_value(value) for key, value in params.items()}
        self.construct_kwargs = {
            k: self.convert(k, v) for k, v in given.items() if k in self.construct
        }
        self.call_kwargs = {k: v for k, v in given.items() if k in self.call}

    @classmethod
    def setting_names(cls) -> list[str]:
        return [*cls.own_settings, *cls.construct, *cls.call]

    @classmethod
    def full_settings(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with the adapter's own settings at their defaults where left out.

        ConfigError naming the settings the class takes, for a setting it does not take, and for
        a required argument of the class left out. Defaults of the library's own arguments are
        the library's and are not filled in.
        """
        names = cls.setting_names()
        unknown = [key for key in params if key not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(
                f"{cls.name} has no setting {unknown[0]!r} ({hint}its settings: {', '.join(names)})",
                param="params",
            )
        missing = [
            key for key in [*required(cls.construct), *required(cls.call)] if key not in params
        ]
        if missing:
            raise ConfigError(
                f"{cls.name} needs the setting {missing[0]!r} (an argument of "
                f"{cls.peer_class.__name__} without a default), e.g. {cls.name}.{missing[0]}=VALUE",
                param="params",
            )
        return {**cls.own_settings, **params}

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: Any = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes | None:
        """The library's passes per image (`peer_passes`) and the forward that picks the top-1
        class or gives the clean logits (run here when no targets are given, by the caller
        otherwise); None where the library's count is not known."""
        settings = cls.full_settings(params)
        peer = cls.peer_passes(settings)
        return None if peer is None else peer + Passes(1, 0)

    @classmethod
    def peer_passes(cls, settings: Mapping[str, Any]) -> Passes | None:
        """The passes per image the library's call runs with `settings`; None: not known."""
        return None

    def convert(self, key: str, value: Any) -> Any:
        """A constructor setting as the class takes it (a class's name -> the class)."""
        return value

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        logits = None
        if targets is None:
            with torch.no_grad():
                logits = self.model(images)
            targets = logits.argmax(dim=1)
        else:
            targets = targets.to(device=images.device, dtype=torch.long)
        with seeded(self.seed, images.device):
            maps, extras = self.attribute(images, targets)
        return Explanation(maps.float(), targets, logits, extras)

    def attribute(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(B, 3, H, W), (B,) -> the library's maps reduced to (B, h, w), and extras."""
        raise NotImplementedError


def make(
    base: type[PeerMethod],
    name: str,
    peer_class: type,
    construct: dict[str, inspect.Parameter],
    call: dict[str, inspect.Parameter],
    own_settings: dict[str, Any],
    **attributes: Any,
) -> type[PeerMethod]:
    """The `PeerMethod` subclass of `base` for `peer_class`, registered as `name`."""
    paragraph = " ".join((inspect.getdoc(peer_class) or "").strip().split("\n\n")[0].split())
    summary = paragraph.split(". ")[0].rstrip(".")
    version = base.peer.version()
    doc = f"{peer_class.__name__} of {base.peer.distribution} {version}" + (
        f": {summary}" if summary else ""
    )
    namespace = {
        "__doc__": doc,
        "__module__": base.__module__,
        "name": name,
        "peer_class": peer_class,
        "construct": construct,
        "call": call,
        "own_settings": own_settings,
        "takes_layer": "layer" in own_settings,
        "library": {"name": base.peer.distribution, "version": version},
        **attributes,
    }
    return type(f"{base.__name__}_{peer_class.__name__}", (base,), namespace)
