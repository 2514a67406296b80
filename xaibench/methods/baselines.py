"""Baselines: maps that carry no information about the model, the floor every method should beat."""

from __future__ import annotations

import torch
from torch import nn

from xaibench.errors import ConfigError
from xaibench.methods.base import METHODS, Explanation, SaliencyMethod, top1_targets

_MASK32 = 2**32 - 1
_PRIME = 2**31 - 1
_QUANTUM = 2**16
"""Pixels are rounded to multiples of 1 / _QUANTUM before fingerprinting."""


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mix of int64 values in [0, 2^32), element-wise, exact on any device.

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
    seed_hash = hash32(torch.tensor(seed % 2**32, device=keys.device))
    stream = hash32((keys + seed_hash) & _MASK32)
    pixel = hash32(torch.arange(size[0] * size[1], device=keys.device))
    bits = hash32((hash32(stream[:, None] ^ pixel) + stream[:, None]) & _MASK32)
    return ((bits >> 8).float() * 2.0**-24).view(-1, *size)


@METHODS.register("random", help="seeded uniform noise per image: the floor a method should beat")
class RandomBaseline(SaliencyMethod):
    """Uniform noise in [0, 1) of shape (B, h, w), reproducible per image.

    An image's map depends only on (seed, the image's pixels), not on its place in the batch, the
    batch size or the device. resolution: side of the square map, None = the input's (H, W).

    The maps ignore the model (`needs_model` is False): `model` may be None, and is only run, in
    inference mode, when no targets are given, to pick the top-1 classes; its logits are then
    returned. Without a model, targets are required.
    """

    name = "random"
    needs_model = False

    def __init__(
        self, model: nn.Module | None = None, resolution: int | None = None, seed: int = 0
    ):
        if resolution is not None and resolution < 1:
            raise ConfigError(f"random: resolution must be a positive integer, got {resolution}")
        super().__init__(model, resolution=resolution, seed=seed)
        self.resolution, self.seed = resolution, seed

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> Explanation:
        if self.model is not None:
            return super().__call__(images, targets)
        if targets is None:
            raise ConfigError("random: give targets, or build the method with a model to pick them")
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
        size = tuple(images.shape[2:]) if self.resolution is None else (self.resolution,) * 2
        maps = seeded_uniform(image_fingerprints(images), self.seed, size)
        return Explanation(maps, targets, logits)
