"""Occlusion (Zeiler and Fergus, 2014): saliency from the score drop when a window is occluded.

A window of `window` pixels slides over the image by `stride` pixels; at each position the window,
all channels of it, is filled with `baseline` and the image is run through the model. A pixel's
saliency is the drop of the explained score, clean image minus occluded image, averaged over the
window positions that cover the pixel:
    S(y, x) = mean over windows w covering (y, x) of [s_c(x) - s_c(x with w occluded)].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.core.batching import ChunkSizes, apply_in_chunks
from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.targets import explained_score


def pixel_pair(value: object, name: str) -> tuple[int, int]:
    """An int n or a pair [h, w] of positive ints -> (h, w); ConfigError naming `name` else."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ConfigError(f"{name} must be an int or a pair [h, w], got {list(value)!r}")
        return positive_int(value[0], name), positive_int(value[1], name)
    side = positive_int(value, f"{name} (an int or a pair [h, w])")
    return side, side


def window_starts(side: int, window: int, stride: int) -> list[int]:
    """The first pixel of each window position along an axis of `side` pixels: 0, stride,
    2 * stride, ..., until the window has reached the last pixel, ceil((side - window) / stride)
    + 1 positions. The last window is cut off by the border when (side - window) is not a
    multiple of the stride, so every pixel is covered (stride <= window)."""
    return [i * stride for i in range(math.ceil((side - window) / stride) + 1)]


@METHODS.register(
    "occlusion", help="Occlusion: the score drop when a sliding window is filled with a baseline"
)
class Occlusion(SaliencyMethod):
    """Occlusion saliency (B, H, W) at the input resolution, one forward per window position.

    Settings, in input pixels: `window`, the occluded window's height and width (an int for a
    square, or [h, w]); `stride`, its step down and across (an int or [h, w]), at most the
    window's side, so that every pixel is covered (Captum also takes a larger one along an axis
    the window spans whole, where it makes no difference; this refuses it). `baseline`: the value
    every channel of the window is set to, in the model's (normalised) input space; the default 0
    is the dataset's mean colour for images normalised by its mean and deviation, a grey close to
    the paper's grey square. The window covers all channels.

    Positions, along each axis: 0, stride, 2 * stride, ... until the window reaches the last row
    (column), ceil((H - h) / stride) + 1 of them (`window_starts`); where (H - h) is not a multiple
    of the stride, the last window overhangs the border and only its part inside the image is
    occluded. This is Captum's rule (`captum.attr.Occlusion`). The window must fit the image:
    ConfigError when it is larger. A pixel's value is the mean of the score drops of the windows
    covering it, which is Captum's attribution with a (3, h, w) window at any of its 3 channels:
    Captum returns (B, 3, H, W) with the same value in every channel, this map.

    The score is the explained class's softmax probability, as in the paper (`explains`), whose
    figure 7 plots the correct class's probability against the position of the grey square.
    Departure from the paper: it draws that probability at each window position, a map of the
    positions; here the drop from the clean image is spread over the window's pixels and averaged
    where windows overlap (Captum's and DeepExplain's form), so the map is at input resolution and
    high where occluding hurts the score.

    The forwards run in chunks of `window_batch` positions for the whole batch (B x window_batch
    occluded images per forward; None: about `default_chunk_size` images per forward); the maps
    do not depend on it. A chunk lowered on out-of-memory stays lower for later calls of the same
    batch size. The explanation's extras["drops"] (B, rows, cols) hold the score drop of each
    window position, rows x cols positions (the paper's map of the positions, as drops).
    """

    name = "occlusion"
    explains = "probability"

    def __init__(
        self,
        model: nn.Module,
        window: int | Sequence[int] = 16,
        stride: int | Sequence[int] = 8,
        baseline: float = 0.0,
        window_batch: int | None = None,
    ):
        self.window, self.stride = self.check_settings(window, stride, baseline, window_batch)
        super().__init__(
            model, window=window, stride=stride, baseline=baseline, window_batch=window_batch
        )
        self.baseline, self.window_batch = float(baseline), window_batch
        self.chunk_sizes = ChunkSizes("window_batch")

    @classmethod
    def check_settings(
        cls, window: object, stride: object, baseline: object, window_batch: object
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, stride) as (h, w) pairs; ConfigError naming the first bad setting."""
        window_hw = pixel_pair(window, f"{cls.name}: window")
        stride_hw = pixel_pair(stride, f"{cls.name}: stride")
        for axis, win, step in zip(("height", "width"), window_hw, stride_hw, strict=True):
            if step > win:
                raise ConfigError(
                    f"{cls.name}: stride {step} is larger than the window's {axis} {win}, which "
                    "would leave pixels that no window covers; give a stride of at most the window"
                )
        if (
            isinstance(baseline, bool)
            or not isinstance(baseline, numbers.Real)
            or not math.isfinite(baseline)
        ):
            raise ConfigError(
                f"{cls.name}: baseline must be a finite number (the value in the normalised "
                f"input space the window is filled with), got {baseline!r}"
            )
        if window_batch is not None:
            positive_int(window_batch, f"{cls.name}: window_batch")
        return window_hw, stride_hw

    @classmethod
    def positions(
        cls, window: tuple[int, int], stride: tuple[int, int], input_size: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """The window's first rows and first columns on an image of `input_size` (H, W);
        ConfigError when the window does not fit it."""
        height, width = (int(side) for side in input_size)
        if window[0] > height or window[1] > width:
            raise ConfigError(
                f"{cls.name}: window {window[0]}x{window[1]} is larger than the {height}x{width} "
                "image; give a smaller window"
            )
        return (
            window_starts(height, window[0], stride[0]),
            window_starts(width, window[1], stride[1]),
        )

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """1 + rows x cols forwards per image (the clean one and one per window position), no
        backward; input_size: (H, W) of the images, required (the positions depend on it)."""
        settings = cls.full_settings(params)
        window, stride = cls.check_settings(
            settings["window"], settings["stride"], settings["baseline"], settings["window_batch"]
        )
        if input_size is None:
            raise ConfigError(
                f"{cls.name}: its passes depend on the input size; give input_size, the (H, W) "
                "of the images"
            )
        rows, cols = cls.positions(window, stride, input_size)
        return Passes(1 + len(rows) * len(cols), 0)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        batch, _, height, width = images.shape
        rows, cols = self.coverage((height, width), images.device)
        n_rows, n_cols = rows.shape[1], cols.shape[1]
        fill = torch.tensor(self.baseline, dtype=images.dtype, device=images.device)
        layout = (
            torch.channels_last
            if images.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )

        with torch.no_grad():
            logits = self.model(images)
            targets = top1_targets(logits, targets)
            dtype = torch.promote_types(logits.dtype, torch.float32)
            clean = explained_score(logits.to(dtype), targets, self.explains)

            def occluded_scores(position: torch.Tensor) -> torch.Tensor:
                """m window positions (row-major indices) -> (m, B) scores of the occluded
                images, all B images x m windows in one forward."""
                row_in, col_in = rows[:, position // n_cols].T, cols[:, position % n_cols].T
                inside = row_in[:, :, None] & col_in[:, None, :]  # (m, H, W)
                occluded = torch.where(inside[None, :, None], fill, images[:, None])
                occluded = occluded.flatten(0, 1).contiguous(memory_format=layout)
                each = targets.repeat_interleave(len(position))
                scores = explained_score(self.model(occluded).to(dtype), each, self.explains)
                return scores.view(batch, -1).T

            chunk = self.chunk_sizes.get(
                self.window_batch or max(1, default_chunk_size(images.device) // batch)
            )
            everywhere = torch.arange(n_rows * n_cols, device=images.device)
            scores = apply_in_chunks(occluded_scores, everywhere, chunk_size=chunk)
        drops = (clean[:, None] - scores.T).reshape(batch, n_rows, n_cols)
        # the windows are products of a row range and a column range, so the sum of the drops
        # of the windows covering each pixel is rows @ drops @ cols.T (and their count alike)
        row_cover, col_cover = rows.to(dtype), cols.to(dtype)
        total = torch.einsum("yi,bij,xj->byx", row_cover, drops, col_cover)
        counts = row_cover.sum(dim=1)[:, None] * col_cover.sum(dim=1)[None, :]
        return Explanation((total / counts).float(), targets, logits, {"drops": drops.float()})

    def coverage(
        self, size: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, rows) and (W, cols) bool: whether pixel row y (column x) lies in the window
        starting at each position's first row (column); a window is the product of the two."""
        starts = self.positions(self.window, self.stride, size)
        covers = []
        for side, first, extent in zip(size, starts, self.window, strict=True):
            pixel = torch.arange(side, device=device)[:, None]
            first_pixel = torch.tensor(first, device=device)[None, :]
            covers.append((pixel >= first_pixel) & (pixel < first_pixel + extent))
        return covers[0], covers[1]
