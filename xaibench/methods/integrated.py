"""Integrated Gradients (Sundararajan, Taly, Yan, 2017).

    IG(x) = (x - b) * integral_0^1 dy_c/dx (b + a (x - b)) da  ~  (x - b) * sum_k w_k g(b + a_k (x - b))

with baseline b and quadrature nodes a_k and weights w_k from `path_points`. The attribution is
(B, C, H, W); the map is its sum over channels (B, H, W), so that the map sums to the attributions'
total, which completeness says is y_c(x) - y_c(b). Each explanation carries that check in its
extras["completeness"] (`Completeness`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from xaibench.core.batching import ChunkSizes
from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from xaibench.methods.base import METHODS, Passes, top1_targets
from xaibench.methods.gradients import (
    Attribution,
    AttributionMethod,
    input_gradients,
    over_image_pairs,
)
from xaibench.methods.targets import explained_score

Quadrature = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
BaselineName = Literal["zeros", "black"]


def path_points(method: Quadrature, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes a_k in [0, 1] and weights w_k (steps,) float64 of a rule for integral_0^1 f(a) da.

    Riemann sums with the node at the left end, right end or middle of each of `steps` equal
    intervals (weights 1/steps); the trapezoid rule on `steps` equally spaced nodes including both
    ends (steps >= 2); Gauss-Legendre with `steps` nodes (exact for polynomials of degree
    < 2 * steps). Same nodes as Captum's approximation methods, and the same weights except for
    the trapezoid rule: Captum weights its nodes, spaced 1/(steps - 1), by 1/steps (halved at the
    ends), so its weights sum to (steps - 1)/steps and its attributions are that much smaller;
    here they are 1/(steps - 1) (halved at the ends), which integrates constants exactly.
    """
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ConfigError("intgrad: riemann_trapezoid needs steps >= 2")
        weights = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    nodes = (torch.arange(steps, dtype=torch.float64) + offset) / steps
    return nodes, torch.full((steps,), 1 / steps, dtype=torch.float64)


@dataclass
class Completeness:
    """attribution_sums: (B,) sum of each image's attributions; score_differences: (B,)
    y_c(x) - y_c(b). Completeness holds when they are equal; the gap shrinks with more steps."""

    attribution_sums: torch.Tensor
    score_differences: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """(B,) attribution_sums - score_differences."""
        return self.attribution_sums - self.score_differences


@METHODS.register("intgrad", help="Integrated Gradients from a baseline, summed over channels")
class IntegratedGradients(AttributionMethod):
    """Integrated Gradients, map = sum over channels of the attribution (B, H, W).

    steps: quadrature nodes; method: the rule (`path_points`); baseline: "zeros" (the zero image
    in the normalised space the model sees, i.e. the dataset mean colour) or "black" (pixel value
    0, i.e. -mean / std per channel after normalisation with `mean` and `std`, which only this
    baseline uses); step_batch: (image x step) pairs per forward (None: the device's default chunk
    size; lowered on out-of-memory and kept lower for later calls). y_c is the explained logit, as
    published. One extra forward of the clean
    images and one of the baseline give the targets, the logits and extras["completeness"].
    """

    name = "intgrad"

    def __init__(
        self,
        model: nn.Module,
        steps: int = 50,
        baseline: BaselineName = "zeros",
        method: Quadrature = "gausslegendre",
        step_batch: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        positive_int(steps, "intgrad: steps")
        if baseline not in get_args(BaselineName):
            raise ConfigError(f"intgrad: baseline must be 'zeros' or 'black', got {baseline!r}")
        if method not in get_args(Quadrature):
            raise ConfigError(
                f"intgrad: method must be one of {', '.join(get_args(Quadrature))}, got {method!r}"
            )
        if step_batch is not None:
            positive_int(step_batch, "intgrad: step_batch")
        self.nodes, self.weights = path_points(method, steps)
        super().__init__(
            model,
            steps=steps,
            baseline=baseline,
            method=method,
            step_batch=step_batch,
            mean=list(mean),
            std=list(std),
        )
        self.steps, self.baseline, self.step_batch = steps, baseline, step_batch
        self.chunk_sizes = ChunkSizes("step_batch")
        self.mean, self.std = mean, std
        self.placed: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """steps + 2 forwards and `steps` backwards per image, whatever `step_batch` is: one
        forward and one backward per path point, the clean forward and the baseline's.

        An upper bound by less than one forward: the baseline is one image, run once per call
        (per batch), and counted here as if once per image; exact for a batch of one image.
        """
        steps = positive_int(cls.full_settings(params)["steps"], "intgrad: steps")
        return Passes(steps + 2, steps)

    def baseline_image(self, images: torch.Tensor) -> torch.Tensor:
        """The baseline (1, C, H, W) for images (B, C, H, W), on their device and dtype."""
        if self.baseline == "zeros":
            return torch.zeros_like(images[:1])
        if images.shape[1] != len(self.mean):
            raise ConfigError(
                f"intgrad: the black baseline needs one mean and std per channel; got "
                f"{len(self.mean)} for {images.shape[1]} channels"
            )

        def black() -> torch.Tensor:
            mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)
            std = torch.tensor(self.std, dtype=images.dtype, device=images.device)
            return (-mean / std).view(1, -1, 1, 1)

        return self.place("black", images, black).expand_as(images[:1]).clone()

    def place(
        self, name: str, like: torch.Tensor, make: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """`make()`, a constant of the method in the dtype and on the device of `like`, made on the
        first call for (name, dtype, device) and kept for the next ones (no copy per batch)."""
        key = (name, like.dtype, like.device)
        if key not in self.placed:
            self.placed[key] = make()
        return self.placed[key]

    def attribute(self, images: torch.Tensor, targets: torch.Tensor | None) -> Attribution:
        baseline = self.baseline_image(images)
        with torch.no_grad():
            logits = self.model(images)
            baseline_logits = self.model(baseline)
        targets = top1_targets(logits, targets)
        delta = images - baseline
        nodes = self.place("nodes", images, lambda: self.nodes.to(images))
        weights = self.place("weights", images, lambda: self.weights.to(images))

        def weighted_gradients(image_index: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            points = baseline + nodes[step].view(-1, 1, 1, 1) * delta[image_index]
            grads = input_gradients(self.model, points, targets[image_index], self.explains).values
            return grads * weights[step].view(-1, 1, 1, 1)

        chunk = self.chunk_sizes.get(self.step_batch or default_chunk_size(images.device))
        summed = over_image_pairs(
            weighted_gradients,
            lambda values: values.sum(dim=1),
            len(images),
            self.steps,
            chunk,
            images.device,
        )
        values = delta * summed
        score = explained_score(logits, targets, self.explains)
        baseline_score = explained_score(baseline_logits.expand_as(logits), targets, self.explains)
        completeness = Completeness(values.flatten(1).sum(dim=1), score - baseline_score)
        return Attribution(values, targets, logits, {"completeness": completeness})

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H, W): sum over channels."""
        return values.sum(dim=1)
