"""Feature visualisation by optimising the input (activation maximisation).

For each unit (a channel of a module's output, or one output of a Linear such as a class logit),
an image starts from noise and is changed by gradient ascent on the unit's mean activation, under
the regularisers of the seeds and of Olah et al. 2017: random jitter, rotation and scaling every
step (`RandomTransforms`), a Gaussian blur every `blur_every` steps (the model class visualisation
of Simonyan et al. 2014 with Yosinski et al. 2015's blur), and optionally a decorrelated Fourier
parameterisation (`FourierImage`). Several units are optimised together, one image each, with one
forward and one backward per step for the whole batch.

Images live in pixel space [0, 1] and are normalised with the model's mean and std before the
forward. The objective is the activation itself (the logit for a class unit, not the softmax
probability, as Simonyan et al. do: maximising the probability can be done by lowering the other
classes' logits instead). Departures from the papers: no L2 penalty on the pixels (the clamp to
[0, 1] and the blur bound the image); scaling is drawn uniformly, not from Lucid's fixed list.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xaibench.core.checks import fits_in_memory, positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.precision import tf32_settings
from xaibench.core.progress import progress_bar
from xaibench.methods.base import saliency_mode
from xaibench.methods.hooks import LayerCall, autograd_enabled, record_layers
from xaibench.methods.layers import validate_layer
from xaibench.methods.targets import explained_score
from xaibench.visualize.parameterisation import PARAMETERISATIONS
from xaibench.visualize.transforms import RandomTransforms

DEFAULT_LR = {"pixel": 0.05, "fourier": 0.1}
"""Adam step sizes that gave clear images in 128-256 steps on EfficientNet-Lite0 (the Fourier
basis is normalised to unit RMS, which makes its pixel steps smaller than Lucid's at equal lr)."""
IMAGE_COPIES = 10
"""Float32 copies of the images an optimisation holds besides the model's activations: the
parameters, their gradient and Adam's two moments, the image, the transformed image and its
sampling grid (two planes), the normalised image and its gradient."""


@dataclass(frozen=True)
class Unit:
    """Channel `channel` of the output of submodule `layer` (`features.28:9`, `classifier.6:1`)."""

    layer: str
    channel: int

    @classmethod
    def parse(cls, text: str) -> Unit:
        layer, sep, channel = text.rpartition(":")
        if not sep or not layer or not channel.isdigit():
            raise ConfigError(
                f"unit {text!r} must be LAYER:CHANNEL with CHANNEL >= 0, e.g. features.28:9 "
                "(a channel of a conv layer) or classifier.6:1 (one output of a Linear)"
            )
        return cls(layer, int(channel))

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"


@dataclass
class Visualisation:
    """The result for N units, row n for `units[n]`.

    images: (N, 3, H, W) in [0, 1] on the CPU; activations: (N,) each unit's mean activation on
    its final image (no transformation); history: (steps, N) the objective at every step (on the
    transformed images); is_class: (N,) True where the unit's layer output is the model's output
    (a class logit); class_probability: (N,) softmax probability of the unit's class on its final
    image, NaN where `is_class` is False; top1, top1_probability: (N,) the model's prediction on
    each final image.
    """

    units: list[Unit]
    images: torch.Tensor
    activations: torch.Tensor
    history: torch.Tensor
    is_class: torch.Tensor
    class_probability: torch.Tensor
    top1: torch.Tensor
    top1_probability: torch.Tensor


class _Objective:
    """Reads every unit's activation from one forward: one hook per distinct layer."""

    def __init__(self, model: nn.Module, units: Sequence[Unit]):
        for layer in {u.layer for u in units}:
            validate_layer(model, layer)
        self.model, self.units = model, list(units)
        self.layers = sorted({u.layer for u in units})
        self.channels = torch.tensor([u.channel for u in units])

    def _reduce(self, call: LayerCall, output: torch.Tensor) -> tuple[torch.Tensor, weakref.ref]:
        """(N, C, ...) -> (N,) image n's mean over positions of its unit's channel, and a weak
        reference to the output (to tell whether it is the model's output)."""
        if output.ndim < 2 or output.shape[0] != len(self.units):
            raise ConfigError(
                f"layer {call.name!r} outputs shape {tuple(output.shape)}; a unit needs an output "
                "(N, C) or (N, C, h, w)"
            )
        mine = [n for n, u in enumerate(self.units) if u.layer == call.name]
        too_big = [self.units[n].channel for n in mine if self.units[n].channel >= output.shape[1]]
        if too_big:
            raise ConfigError(
                f"layer {call.name!r} has {output.shape[1]} channels; channel {too_big[0]} is out "
                f"of range (use 0..{output.shape[1] - 1})"
            )
        rows = torch.arange(len(self.units), device=output.device)
        picked = output[rows, self.channels.to(output.device).clamp(max=output.shape[1] - 1)]
        return picked.reshape(len(rows), -1).float().mean(dim=1), weakref.ref(output)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised images (N, 3, H, W) -> activations (N,), logits, is_class (N,) bool."""
        with record_layers(self.model, self.layers, reduce_output=self._reduce) as recording:
            logits = self.model(images)
        values = torch.zeros(len(self.units), device=images.device)
        is_class = torch.zeros(len(self.units), dtype=torch.bool)
        for layer in self.layers:
            call = recording.last(layer)
            mine = torch.tensor([u.layer == layer for u in self.units])
            layer_values, output = call.reduced_output
            values = torch.where(mine.to(values.device), layer_values, values)
            is_class |= mine & (output() is logits)
        return values, logits, is_class


def visualise_units(
    model: nn.Module,
    units: Sequence[Unit | str],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    size: tuple[int, int] = (224, 224),
    steps: int = 256,
    parameterisation: str = "fourier",
    lr: float | None = None,
    transforms: RandomTransforms | None = None,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Visualisation:
    """Optimise one image per unit so that the unit's mean activation is as large as possible.

    model: returns logits (B, K) and is put in eval mode without parameter gradients for the
    duration; mean, std: its input normalisation; size: (H, W) of the images; parameterisation:
    "fourier" (default) or "pixel"; lr: Adam's step size (default `DEFAULT_LR` of the
    parameterisation);
    transforms: the per-step jitter, rotation and scaling (default `RandomTransforms()`);
    blur_every: blur the images every k steps (0: never) with a Gaussian of `blur_sigma` pixels;
    seed: start images and transformations are drawn from generators seeded with it, so a run is
    reproducible on a given device. Returns a `Visualisation`.
    """
    units = [u if isinstance(u, Unit) else Unit.parse(u) for u in units]
    if not units:
        raise ConfigError("give at least one unit (LAYER:CHANNEL)", param="units")
    if parameterisation not in PARAMETERISATIONS:
        raise ConfigError(
            f"must be one of {sorted(PARAMETERISATIONS)}, got {parameterisation!r}",
            param="parameterisation",
        )
    positive_int(steps, "steps")
    if blur_every < 0:
        raise ConfigError(f"must be >= 0, got {blur_every!r}", param="blur_every")
    device = torch.device(device)
    height, width = size
    fits_in_memory(
        IMAGE_COPIES * len(units) * 3 * height * width * 4,
        device,
        f"optimising {len(units)} image(s) of {height} x {width} pixels (before the model's own "
        "activations)",
        "give a smaller `size`",
        param="size",
    )
    transforms = RandomTransforms() if transforms is None else transforms
    objective = _Objective(model, units)
    start = torch.Generator().manual_seed(seed)
    param = PARAMETERISATIONS[parameterisation](len(units), tuple(size), generator=start)
    param = param.to(device)
    shifts = torch.Generator(device=device).manual_seed(seed + 1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    optimiser = torch.optim.Adam(param.parameters(), lr=lr or DEFAULT_LR[parameterisation])
    history = []
    with saliency_mode(model), autograd_enabled(), tf32_settings():
        for step in progress_bar(range(steps), desc="visualize", unit="step", disable=not progress):
            optimiser.zero_grad(set_to_none=True)
            moved = transforms(param(), shifts)
            values, _, _ = objective((moved - mean_t) / std_t)
            (-values.sum()).backward()
            optimiser.step()
            param.project_()
            if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
                param.blur_(blur_sigma)
            history.append(values.detach())
        with torch.no_grad():
            images = param().detach()
            values, logits, is_class = objective((images - mean_t) / std_t)
    probabilities = logits.float().softmax(dim=1).cpu()
    channels = objective.channels.clamp(max=probabilities.shape[1] - 1).to(logits.device)
    of_unit = explained_score(logits.float(), channels, "probability").cpu()
    top1_probability, top1 = probabilities.max(dim=1)
    return Visualisation(
        units=units,
        images=images.cpu(),
        activations=values.cpu(),
        history=torch.stack(history).cpu(),
        is_class=is_class,
        class_probability=torch.where(is_class, of_unit, torch.nan),
        top1=top1,
        top1_probability=top1_probability,
    )
