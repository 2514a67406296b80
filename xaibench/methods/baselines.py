"""Baselines: maps that carry no information about the model, the floor every method should beat."""

from __future__ import annotations

from abc import abstractmethod
from typing import TypeVar

import torch
from torch import nn

from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets

_MASK32 = 2**32 - 1
_PRIME = 2**31 - 1
_QUANTUM = 2**16
"""Pixels are rounded to multiples of 1 / _QUANTUM before fingerprinting."""
Hashable = TypeVar("Hashable", torch.Tensor, int)


def hash32(x: Hashable) -> Hashable:
    """A bijective 32-bit mix of int64 values in [0, 2^32), element-wise, exact on any device; of
    a Python int in that range, the same value as of a tensor holding it.

    Both multipliers are odd and below 2^31, so every product stays below 2^63 (no overflow).
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def image_fingerprints(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B,) int64 in [0, 2^31 - 1): a function of each image's pixels only.

    Pixels are quantised to integers (round(x * 2^16), computed in float32), weighted by a hash of
    their index and summed modulo the prime 2^31 - 1, with every product reduced before the sum:
    exact integer arithmetic, so the same image gives the same value on any device and in any batch.
    """
    quantised = torch.round(images.detach().float().flatten(1) * _QUANTUM).long()
    index = torch.arange(quantised.shape[1], device=images.device)
    weights = hash32(index) % _PRIME + 1
    return ((quantised % _PRIME) * weights % _PRIME).sum(dim=1) % _PRIME


def seeded_uniform(keys: torch.Tensor, seed: int, size: tuple[int, int]) -> torch.Tensor:
    """keys (B,) int64 -> (B, *size) float32 in [0, 1), a counter-based hash of (seed, key, pixel).

    The seed is used modulo 2^32.
    """
    seed_hash = hash32(seed % 2**32)
    stream = hash32((keys + seed_hash) & _MASK32)
    pixel = hash32(torch.arange(size[0] * size[1], device=keys.device))
    bits = hash32((hash32(stream[:, None] ^ pixel) + stream[:, None]) & _MASK32)
    return ((bits >> 8).float() * 2.0**-24).view(-1, *size)


class ModelFreeBaseline(SaliencyMethod):
    """A map that ignores the model: the shared target and logits handling of the baselines.

    `needs_model` is False: `model` may be None, and is only run, in inference mode, when no
    targets are given, to pick the top-1 classes; its logits are then returned. Without a model,
    targets are required. Subclasses implement `baseline_maps`.
    """

    needs_model = False
    uses_target = False
    per_image = Passes(0, 0)
    """No pass: the map ignores the model. Called without targets, the method runs one forward per
    image to pick the top-1 classes, which is not counted here."""

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> Explanation:
        if self.model is not None:
            return super().__call__(images, targets)
        if targets is None:
            raise ConfigError(
                f"{self.name}: give targets, or build the method with a model to pick them"
            )
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        return self.explain(images, targets)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        logits = None
        if targets is None:
            with torch.inference_mode():
                logits = self.model(images)
            targets = top1_targets(logits, None)
        else:
            targets = targets.to(device=images.device, dtype=torch.long)
        return Explanation(self.baseline_maps(images), targets, logits)

    @abstractmethod
    def baseline_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w) float32 on the images' device."""


@METHODS.register("random", help="seeded uniform noise per image: the floor a method should beat")
class RandomBaseline(ModelFreeBaseline):
    """Uniform noise in [0, 1) of shape (B, h, w), reproducible per image.

    An image's map depends only on (seed, the image's pixels), not on its place in the batch, the
    batch size or the device. resolution: side of the square map, None = the input's (H, W).
    """

    name = "random"

    def __init__(
        self, model: nn.Module | None = None, resolution: int | None = None, seed: int = 0
    ):
        if resolution is not None:
            positive_int(resolution, "random: resolution")
        super().__init__(model, resolution=resolution, seed=seed)
        self.resolution, self.seed = resolution, seed

    def baseline_maps(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[2:]) if self.resolution is None else (self.resolution,) * 2
        return seeded_uniform(image_fingerprints(images), self.seed, size)


@METHODS.register("centre", help="a Gaussian centred on the image: the centre-bias floor")
class CentreBaseline(ModelFreeBaseline):
    """exp(-((y - H/2)^2 / (2 (sigma H)^2) + (x - W/2)^2 / (2 (sigma W)^2))), (B, H, W).

    Pixel (i, j) sits at (y, x) = (i + 1/2, j + 1/2), so the map is symmetric about the centre,
    also for odd sides. sigma is a fraction of each side (0.25: a quarter of the height along y,
    of the width along x). Objects in photographs are often near the centre, so this map scores
    well above the random one; a method should beat it too.
    """

    name = "centre"

    def __init__(self, model: nn.Module | None = None, sigma: float = 0.25):
        if not sigma > 0:
            raise ConfigError(f"centre: sigma must be a positive fraction of the side, got {sigma}")
        super().__init__(model, sigma=sigma)
        self.sigma = sigma

    def baseline_maps(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        y = _centred_coordinates(height, self.sigma, images.device)
        x = _centred_coordinates(width, self.sigma, images.device)
        gaussian = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
        return gaussian.expand(batch, height, width).contiguous()


def _centred_coordinates(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n,) float32: offsets of the pixel centres from the middle of the side, over sigma * n."""
    centres = torch.arange(n, device=device, dtype=torch.float32) + 0.5
    return (centres - n / 2) / (sigma * n)


@METHODS.register("constant", help="the same value at every pixel: ranks pixels in raster order")
class ConstantBaseline(ModelFreeBaseline):
    """A map of ones (B, H, W): no pixel is preferred to another.

    Every pixel ties, so what the metrics measure is their tie-break: the insertion and deletion
    metrics rank tied pixels by flat pixel index (a stable sort), so this map inserts or deletes
    the image in raster order, top row first, and reports a tie fraction of 1.
    """

    name = "constant"

    def __init__(self, model: nn.Module | None = None):
        super().__init__(model)

    def baseline_maps(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        return torch.ones(batch, height, width, device=images.device)
