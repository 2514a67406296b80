"""Random geometric transformations applied to the images before every optimisation step.

Jitter (translation), small rotations and scaling (Mordvintsev et al. 2015, Olah et al. 2017
"transformation robustness"): an image that excites a unit only at one exact pixel alignment is
high-frequency noise; asking it to work under small random moves favours structure that survives
them. All three are drawn per image and applied in one bilinear `grid_sample` for the whole batch,
with reflected borders (Lucid pads with a constant and crops instead; reflection avoids teaching
the image a frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomTransforms:
    """jitter: maximum shift in pixels; rotate: maximum angle in degrees; scale: factors are drawn
    uniformly from [1 - scale, 1 + scale]. All zero: the identity."""

    jitter: float = 8.0
    rotate: float = 5.0
    scale: float = 0.05

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), a fresh transformation per image; differentiable."""
        n, _, h, w = images.shape
        if not (self.jitter or self.rotate or self.scale):
            return images
        draws = torch.rand(n, 4, generator=generator, device=generator.device)
        draws = (2 * draws - 1).to(images)
        angle = draws[:, 0] * math.radians(self.rotate)
        zoom = 1 + draws[:, 1] * self.scale
        shift = draws[:, 2:] * self.jitter * 2 / torch.tensor([w, h]).to(images)
        return F.grid_sample(
            images,
            sampling_grid(angle, zoom, shift, (h, w)),
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )


def sampling_grid(
    angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """(N, H, W, 2) grid for `grid_sample`: rotate by `angle` (N,) radians about the centre, magnify
    by `zoom` (N,), move the content by `shift` (N, 2) in normalised (x, y) coordinates (2 / W per
    pixel along x). The rotation is of the pixel grid, so a non-square image is not sheared."""
    h, w = size
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, -shift[:, 0] * cos + shift[:, 1] * sin * h / w], dim=1),
            torch.stack([sin * w / h, cos, -shift[:, 0] * sin * w / h - shift[:, 1] * cos], dim=1),
        ],
        dim=1,
    )
    return F.affine_grid(theta, [angle.shape[0], 1, h, w], align_corners=False)
