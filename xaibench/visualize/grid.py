"""Image grids with a caption under each tile and activation-map figures, written as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from xaibench.core.atomic import write_atomic

LABEL_HEIGHT = 12
"""Pixels of caption strip under each tile."""
TILE_INCHES = 1.6
"""Side of one activation tile (160 pixels at `FIGURE_DPI`), while the figure fits the cap."""
MAX_FIGURE_INCHES = 20.0
"""Activation figures grow with the channels shown up to this width and height; past it the
tiles shrink."""
COLORBAR_INCHES = 1.2
"""Width an activation figure adds for its colour bar."""
TITLE_INCHES = 0.5
"""Height an activation figure adds for its title."""
TILE_HEIGHT = 1.3
"""Height of a tile row over its width: the tile and its two lines of text."""
FIGURE_DPI = 100
ACTIVATION_COLORMAP = "viridis"


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


def activation_figure(maps: torch.Tensor, channels: torch.Tensor, title: str = "") -> Figure:
    """Channels `channels` (n,) of one image's feature maps `maps` (C, h, w) as a figure.

    A grid of ceil(sqrt(n)) columns, one tile per channel titled "ch INDEX" with its own minimum
    and maximum under it, every tile on one colour scale (the minimum to the maximum of the tiles
    shown, `ACTIVATION_COLORMAP`, nearest-neighbour so each cell is the map's own) read off one
    colour bar. Tiles are `TILE_INCHES` square until the figure would pass `MAX_FIGURE_INCHES`
    on a side; then they shrink, and their text with them (down to 4 points).
    """
    chosen = maps[channels].detach().float().cpu().numpy()
    columns = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / columns)
    tile = min(
        TILE_INCHES,
        (MAX_FIGURE_INCHES - COLORBAR_INCHES) / columns,
        (MAX_FIGURE_INCHES - TITLE_INCHES) / (rows * TILE_HEIGHT),
    )
    figure = Figure(
        figsize=(columns * tile + COLORBAR_INCHES, rows * tile * TILE_HEIGHT + TITLE_INCHES),
        layout="constrained",
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    text = tile / TILE_INCHES
    low, high = float(chosen.min()), float(chosen.max())
    for axes in grid.flat[len(chosen) :]:
        axes.set_axis_off()
    for axes, channel, values in zip(grid.flat, channels.tolist(), chosen, strict=False):
        axes.imshow(values, cmap=ACTIVATION_COLORMAP, vmin=low, vmax=high, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"ch {channel}", fontsize=max(4.0, 9 * text), pad=2)
        axes.set_xlabel(f"{values.min():.3g} to {values.max():.3g}", fontsize=max(4.0, 7 * text))
    figure.colorbar(grid.flat[0].images[0], ax=grid, label="activation")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_png(image: Image.Image | torch.Tensor | Figure, path: Path) -> Path:
    """Write `image` (PIL, (3, H, W) in [0, 1], or a matplotlib Figure at `FIGURE_DPI`) as PNG at
    `path`, atomically."""
    if isinstance(image, Figure):
        return write_atomic(path, lambda tmp: image.savefig(tmp, format="png", dpi=FIGURE_DPI))
    image = to_pil(image) if isinstance(image, torch.Tensor) else image
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
