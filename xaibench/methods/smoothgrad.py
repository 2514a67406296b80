"""SmoothGrad, SmoothGrad-squared and VarGrad: a gradient-type method over noisy copies of the image.

Each wraps any `AttributionMethod` (`base`, default "gradient") and aggregates its per-channel
attributions (B, C, H, W) over `samples` noisy copies x + sigma * z, z ~ N(0, 1), before the base's
channel reduction:
    smoothgrad:    mean_s a_s                      (Smilkov et al., 2017)
    smoothgrad_sq: mean_s a_s^2                    (Hooker et al., 2019)
    vargrad:       mean_s a_s^2 - (mean_s a_s)^2   (Adebayo et al., 2018)
sigma = noise * (max(x) - min(x)) per image, the paper's noise level as a fraction of the input
range (in the normalised space the model sees). The (image x sample) pairs run through the base in
chunks of `sample_batch` pairs.

Noise: the seed gives `samples` standard normal fields (C, H, W), drawn on the first call and kept
for the later calls on images of the same shape and device (`NoiseAggregate.bank`); sample s of
an image is field s shifted circularly by an offset hashed from (the image's pixels, s). The
samples of one image are independent, as in the paper; two images share fields only under
different shifts (an equal shift has odds 1 / (H W)). The noise thus depends only on (seed, the
image, s): results are deterministic per seed, the same on every device up to arithmetic, and
independent of the batch and of the chunk size. Drawing a field per (image, sample) from a
counter-based hash instead costs as much as the forward and backward of a ResNet-18 on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.core.batching import ChunkSizes
from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.baselines import hash32, image_fingerprints
from xaibench.methods.gradients import AttributionMethod, over_image_pairs

_MASK32 = 2**32 - 1


def noise_bank(seed: int, count: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(count, *shape) float32 standard normal fields, drawn on the CPU from `seed` (so the same on
    every device), then moved to `device`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, *shape), generator=generator).to(device)


def shifted_fields(bank: torch.Tensor, keys: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """bank (S, C, H, W), keys (L,) int64, sample (L,) -> (L, C, H, W): bank[sample] shifted
    circularly by a (row, column) offset hashed from (key, sample)."""
    _, channels, height, width = bank.shape
    offset = hash32((hash32(keys) + sample) & _MASK32)
    device = bank.device
    rows = (torch.arange(height, device=device) + offset[:, None] % height) % height
    cols = (torch.arange(width, device=device) + offset[:, None] // height % width) % width
    channel = torch.arange(channels, device=device)
    return bank[
        sample[:, None, None, None],
        channel[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class NoiseAggregate(SaliencyMethod):
    """Base of SmoothGrad and its variants; subclasses define `aggregate`.

    model, base (name of a gradient-type method), base_params (its keyword arguments), samples
    (noisy copies per image), noise (std as a fraction of each image's value range), sample_batch
    (pairs per base call; None: the device's default chunk size; lowered on out-of-memory and
    kept lower for later calls), seed. The score explained is the base method's (`explains`).
    """

    def __init__(
        self,
        model: nn.Module,
        base: str = "gradient",
        samples: int = 50,
        noise: float = 0.15,
        sample_batch: int | None = None,
        seed: int = 0,
        base_params: dict[str, Any] | None = None,
    ):
        base_class = self.base_method(base)
        positive_int(samples, f"{self.name}: samples")
        if not noise >= 0:
            raise ConfigError(f"{self.name}: noise must be >= 0, got {noise!r}")
        if sample_batch is not None:
            positive_int(sample_batch, f"{self.name}: sample_batch")
        self.base = base_class(model, **(base_params or {}))
        super().__init__(
            model,
            base=base,
            base_params=self.base.params,
            samples=samples,
            noise=noise,
            sample_batch=sample_batch,
            seed=seed,
        )
        self.samples, self.noise, self.seed = samples, noise, seed
        self.sample_batch = sample_batch
        self.chunk_sizes = ChunkSizes("sample_batch")
        self.banks: dict[tuple[int, int, tuple[int, ...], torch.device], torch.Tensor] = {}

    @classmethod
    def base_method(cls, base: str) -> type[AttributionMethod]:
        """The registered method `base`; ConfigError unless it is gradient-type."""
        base_class = METHODS.get(base)
        if not issubclass(base_class, AttributionMethod):
            gradient_type = [e.name for e in METHODS if issubclass(e.obj, AttributionMethod)]
            raise ConfigError(
                f"{cls.name}: base {base!r} is not a gradient-type method; "
                f"use one of {', '.join(gradient_type)}"
            )
        return base_class

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """One clean forward per image, then `samples` times the base method's passes (one
        forward and one backward for the default gradient), whatever `sample_batch` is.

        channels and input_size go to the base's `passes`; an upper bound where the base's is
        (intgrad's).
        """
        settings = cls.full_settings(params)
        samples = positive_int(settings["samples"], f"{cls.name}: samples")
        base_class = cls.base_method(settings["base"])
        base = base_class.passes(settings["base_params"] or {}, channels, input_size)
        return Passes(1, 0) + samples * base

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        with torch.no_grad():
            logits = self.model(images)
        targets = top1_targets(logits, targets)
        keys = image_fingerprints(images)
        bank = self.bank(tuple(images.shape[1:]), images.device)
        flat = images.flatten(1)
        sigma = self.noise * (flat.amax(dim=1) - flat.amin(dim=1))

        def noisy_attributions(image_index: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
            noise = self.standard_noise(bank, keys, image_index, sample).to(images.dtype)
            noisy = images[image_index] + sigma[image_index].view(-1, 1, 1, 1) * noise
            return self.base.attribute(noisy, targets[image_index]).values

        chunk = self.chunk_sizes.get(self.sample_batch or default_chunk_size(images.device))
        values = over_image_pairs(
            noisy_attributions, self.aggregate, len(images), self.samples, chunk, images.device
        )
        return Explanation(self.base.reduce(values).float(), targets, logits)

    def bank(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The seed's `noise_bank` (samples, *shape) on `device`: drawn and copied there on the first
        call asking for it, kept for the next ones (one per seed, samples, shape and device)."""
        key = (self.seed, self.samples, shape, device)
        if key not in self.banks:
            self.banks[key] = noise_bank(self.seed, self.samples, shape, device)
        return self.banks[key]

    def standard_noise(
        self,
        bank: torch.Tensor,
        keys: torch.Tensor,
        image_index: torch.Tensor,
        sample: torch.Tensor,
    ) -> torch.Tensor:
        """N(0, 1) noise (L, C, H, W) of the pairs (image_index (L,), sample (L,)).

        bank (samples, C, H, W): the seed's fields (`noise_bank`); keys (B,): the batch's image
        fingerprints. Sample s of an image is field s shifted by an offset hashed from (the
        image's key, s) (`shifted_fields`). Override to supply noise drawn elsewhere (the tests
        replay Captum's).
        """
        return shifted_fields(bank, keys[image_index], sample)

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        """(b, samples, C, H, W) attributions -> (b, C, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} must define aggregate")


@METHODS.register("smoothgrad", help="SmoothGrad: a gradient method averaged over noisy copies")
class SmoothGrad(NoiseAggregate):
    """SmoothGrad: the mean attribution over noisy copies, then the base's channel reduction."""

    name = "smoothgrad"

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        return values.mean(dim=1)


@METHODS.register("smoothgrad_sq", help="SmoothGrad-squared: mean squared attribution over noise")
class SmoothGradSquared(NoiseAggregate):
    """SmoothGrad-squared: the mean squared attribution over noisy copies, then the reduction."""

    name = "smoothgrad_sq"

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        return values.square().mean(dim=1)


@METHODS.register("vargrad", help="VarGrad: variance of a gradient method over noisy copies")
class VarGrad(NoiseAggregate):
    """VarGrad: the variance (1/n, not 1/(n-1)) of the attribution over noisy copies."""

    name = "vargrad"

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        return values.var(dim=1, correction=0)
