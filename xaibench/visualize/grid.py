"""Image grids with a caption under each tile, written as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from xaibench.core.atomic import write_atomic

LABEL_HEIGHT = 12
"""Pixels of caption strip under each tile."""


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, H, W) in [0, 1] -> an 8-bit RGB image."""
    image = image.detach().float().clamp(0, 1).expand(3, -1, -1)
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def labelled_grid(
    tiles: torch.Tensor, labels: Sequence[str], *, columns: int | None = None, padding: int = 2
) -> Image.Image:
    """N tiles (N, 1 or 3, h, w) in [0, 1] in a grid of `columns` (default ceil(sqrt(N))), each
    with its label underneath, on white. The image is
    (columns * (w + padding) + padding) wide and (rows * (h + LABEL_HEIGHT + padding) + padding)
    high."""
    n, _, h = tiles.shape[:3]
    if len(labels) != n:
        raise ValueError(f"{n} tiles but {len(labels)} labels")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    cells = F.pad(
        tiles.float().clamp(0, 1).expand(-1, 3, -1, -1), (0, padding, 0, padding), value=1.0
    )
    cells = F.pad(cells, (0, 0, 0, LABEL_HEIGHT), value=1.0)
    cells = torch.cat([cells, cells.new_ones(rows * columns - n, *cells.shape[1:])])
    cell_h, cell_w = cells.shape[-2:]
    canvas = cells.view(rows, columns, 3, cell_h, cell_w).permute(2, 0, 3, 1, 4)
    canvas = F.pad(
        canvas.reshape(3, rows * cell_h, columns * cell_w), (padding, 0, padding, 0), value=1.0
    )
    image = to_pil(canvas)
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, label in enumerate(labels):
        row, column = divmod(i, columns)
        x = padding + column * cell_w
        y = padding + row * cell_h + h + padding
        draw.text((x, y), label, fill=(0, 0, 0), font=font)
    return image


def activation_grid(
    maps: torch.Tensor, channels: torch.Tensor, *, min_side: int = 48, columns: int | None = None
) -> Image.Image:
    """Channels `channels` (n,) of one image's feature maps `maps` (C, h, w) as a labelled grid.

    Each channel is scaled to [0, 1] by its own minimum and maximum (a constant channel is black)
    and enlarged by the smallest integer factor that makes it at least `min_side` pixels high, with
    nearest-neighbour sampling, so each tile shows the map's real cells.
    """
    chosen = maps[channels].float()
    low = chosen.amin(dim=(1, 2), keepdim=True)
    span = chosen.amax(dim=(1, 2), keepdim=True) - low
    scaled = torch.where(span > 0, (chosen - low) / span.clamp(min=1e-12), 0.0)
    factor = max(1, math.ceil(min_side / maps.shape[-2]))
    tiles = F.interpolate(scaled[:, None], scale_factor=factor, mode="nearest")
    return labelled_grid(tiles, [str(int(c)) for c in channels], columns=columns)


def save_png(image: Image.Image | torch.Tensor, path: Path) -> Path:
    """Write `image` (PIL, or (3, H, W) in [0, 1]) as PNG at `path`, atomically."""
    image = to_pil(image) if isinstance(image, torch.Tensor) else image
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
