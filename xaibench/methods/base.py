"""The saliency-method contract shared by every method.

A method takes a batch of normalised images (B, 3, H, W) and optional per-image targets (B,) and
returns an `Explanation`: maps (B, h, w) float32 at the method's native resolution on the images'
device, the classes explained, the clean-image logits when the method ran a forward pass (so the
caller need not run another one to score the image), and the method's extras: what else it computed
of each image (T-Grad's terms, Integrated Gradients' completeness check, ...). Each method also
declares the model passes it runs per image (`SaliencyMethod.passes`), without a model.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from xaibench.core.batching import ChunkSize, run_in_chunks
from xaibench.core.errors import ConfigError
from xaibench.core.registry import Registry
from xaibench.methods.targets import ScoreKind


@dataclass
class Explanation:
    """maps: (B, h, w) float32; targets: (B,) int64; logits: (B, K) or None.

    extras: name -> what else the method computed of the batch, image-major (`join_batches` joins
    sub-batches'): T-Grad's and FullGrad's "terms", Integrated Gradients' "completeness", RISE's
    "scores"; empty for the other methods.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: list[Explanation]) -> Explanation:
        """The explanations of consecutive sub-batches as one; logits only if every part has them,
        extras joined name by name (`join_batches`)."""
        if len(parts) == 1:
            return parts[0]
        logits = [p.logits for p in parts]
        names = list(parts[0].extras)
        if any(list(p.extras) != names for p in parts):
            raise ValueError("the sub-batches' explanations have different extras")
        return cls(
            torch.cat([p.maps for p in parts]),
            torch.cat([p.targets for p in parts]),
            None if any(x is None for x in logits) else torch.cat(logits),
            {name: join_batches([p.extras[name] for p in parts]) for name in names},
        )


def join_batches(parts: list[Any]) -> Any:
    """The values of consecutive sub-batches as the value of one batch.

    Tensors (b, ...) are concatenated along dim 0, lists element by element, dataclasses field by
    field; any other value (a layer's name) must be equal in every part (ValueError otherwise).
    """
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, list):
        if any(len(part) != len(first) for part in parts):
            raise ValueError("the sub-batches' lists differ in length")
        return [join_batches(list(items)) for items in zip(*parts, strict=True)]
    if is_dataclass(first) and not isinstance(first, type):
        joined = {
            f.name: join_batches([getattr(part, f.name) for part in parts]) for f in fields(first)
        }
        return type(first)(**joined)
    if any(part != first for part in parts):
        raise ValueError(f"the sub-batches differ: {first!r} and another value")
    return first


@dataclass(frozen=True)
class Passes:
    """The passes of the model a method runs per image explained: forwards and backwards, counts.

    A forward is one image through the model, with or without autograd (a batch of masked or noisy
    copies of an image counts one forward per copy); a backward is one image's gradient propagated
    from its score. These count passes, not FLOPs: a forward that skips part of the network
    (Ablation-CAM's masked forwards skip the layer's own forward) and a backward that stops at a
    layer (the CAM methods' stop at theirs) count as one each. `p + q` adds two counts, `n * p`
    scales one.
    """

    forwards: int
    backwards: int

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.forwards + other.forwards, self.backwards + other.backwards)

    def __mul__(self, factor: int) -> Passes:
        return Passes(self.forwards * factor, self.backwards * factor)

    __rmul__ = __mul__


class SaliencyMethod(ABC):
    """Base class: subclasses implement `explain`; `__call__` restores the model afterwards.

    `params` holds the method's settings as JSON-serialisable values; they are recorded in the
    store so a run can be reproduced.
    """

    name: ClassVar[str]
    needs_model: ClassVar[bool] = True
    uses_target: ClassVar[bool] = True
    """False for methods whose map does not depend on the class explained (baselines, Eigen-CAM)."""
    explains: ClassVar[ScoreKind] = "logit"
    """The score of the class the method explains (`explained_score`): the logit y_c, or the
    softmax probability p_c for the methods whose paper weights by it (RISE, Score-CAM, Poly-CAM)
    or maps it (Occlusion)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """What the method needs of a model's structure (xaibench.methods.support checks each):
    "cam_layer" (a layer to read as a (B, C, h, w) map by default: a CNN's last feature map, a
    transformer's tokens on their grid), "feature_map" (a chain of (B, C, h, w) maps the score is
    pooled from), "bias_terms" (a network whose score splits into input and bias terms),
    "relu_modules" (nn.ReLU modules to rectify), "class_attention" (attention layers over a class
    token and the patch grid)."""
    per_image: ClassVar[Passes] = Passes(1, 1)
    """The passes per image of a method whose count depends on no setting (`passes`)."""
    compilable: ClassVar[bool] = True
    """False for methods that swap the model's modules or forwards during a call, which would make a
    compiled forward (`compile`) recompile on every batch."""
    library: ClassVar[dict[str, str]] = {}
    """The library that computes the maps, {"name": ..., "version": ...}, for the methods that
    call another library (xaibench.methods.adapter); empty for xaibench's own."""

    def __init__(self, model: nn.Module, **params: Any):
        self.model = model
        self.params = params

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes | None:
        """The `Passes` per image of the method with settings `params` (`full_settings`), None
        where they are not known (some methods of other libraries).

        channels: C of the output (B, C, h, w) of the method's layer, for the methods whose count
        depends on it (Score-CAM, Ablation-CAM; Poly-CAM takes one per layer); input_size: (H, W)
        of the images explained, for the methods whose count depends on it (Occlusion's window
        positions). The others ignore both. Default: `per_image`, for the methods whose count is
        fixed; the others override this.
        """
        cls.full_settings(params)
        return cls.per_image

    @classmethod
    def setting_names(cls) -> list[str]:
        """The names of the settings the method takes (`__init__`'s keywords but `model`)."""
        parameters = inspect.signature(cls).parameters
        return [
            name
            for name, p in parameters.items()
            if name != "model" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    @classmethod
    def full_settings(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with the settings they leave out at `__init__`'s defaults (its signature's).

        ConfigError naming a setting that `__init__` does not take.
        """
        parameters = dict(inspect.signature(cls).parameters)
        parameters.pop("model", None)
        named = {
            name: p
            for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        unknown = [] if takes_any else [key for key in params if key not in named]
        if unknown:
            known = ", ".join(named) or "none"
            raise ConfigError(f"{cls.name} has no setting {unknown[0]!r} (its settings: {known})")
        defaults = {name: p.default for name, p in named.items() if p.default is not p.empty}
        return {**defaults, **params}

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> Explanation:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        with saliency_mode(self.model):
            return self.explain(images, targets)

    @abstractmethod
    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        """(B, 3, H, W), (B,) or None (= the top-1 class) -> Explanation."""

    def call_in_chunks(
        self, images: torch.Tensor, targets: torch.Tensor | None, size: ChunkSize
    ) -> Explanation:
        """`self(images, targets)` in sub-batches of `size` images, halved on out-of-memory
        (`run_in_chunks`). The explanation, extras included, covers the whole batch, in order."""

        def call(part: slice) -> Explanation:
            return self(images[part], None if targets is None else targets[part])

        return Explanation.concat(run_in_chunks(call, len(images), size))


@contextmanager
def saliency_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; both restored afterwards.

    Saliency never needs weight gradients, and computing them costs about a third of the backward.
    """
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, flag in flags.items():
            p.requires_grad_(flag)


def top1_targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The given targets on the logits' device, or the arg-max class of each row."""
    if targets is None:
        return logits.argmax(dim=1)
    return targets.to(device=logits.device, dtype=torch.long)


METHODS: Registry[type[SaliencyMethod]] = Registry("method")
