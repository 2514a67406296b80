"""RISE (Petsiuk, Das and Saenko, 2018): saliency from the class probability of randomly masked images.

Each of N smooth random masks M_i (H, W) in [0, 1] is multiplied into the image, and the saliency is
the masks averaged with the masked images' class probabilities as weights:
    S = sum_i p_c(M_i * x) M_i / (N p),
with p the probability that a grid cell is kept (p = E[M], the paper's normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.batching import ChunkSizes, apply_in_chunks
from xaibench.core.checks import fits_in_memory, positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.targets import explained_score


def draw_bytes(masks: int, cell: int) -> int:
    """Bytes `RISE.draw` holds at its peak: the uniform draws (float32) and the kept cells (bool)
    of `masks` x `cell` x `cell` grid cells, and the shifts (float32, two per mask)."""
    return masks * cell * cell * 5 + masks * 2 * 4


@METHODS.register(
    "rise", help="RISE: random smooth masks weighted by the masked images' probability"
)
class RISE(SaliencyMethod):
    """RISE saliency (B, H, W) at the input resolution, from `masks` forwards per image.

    Masks, as in the paper: a `cell` x `cell` grid of cells, each kept (1) with probability `keep`,
    else 0, is upsampled bilinearly to (cell + 1) x (cell + 1) cells of ceil(H / cell) x
    ceil(W / cell) pixels, and an H x W window is cut from it at a random shift of 0 to one cell
    along each axis; `cell` = 7 gives the paper's 7 x 7 grid (32-pixel cells at 224). The scores
    are softmax probabilities of the explained class, as in the paper (the explained score,
    `explains`). A masked pixel is 0 in the model's input,
    which for normalised images is the dataset's mean colour (as in the authors' code, which masks
    the normalised tensor).

    The masks' random grids and shifts are drawn from a CPU generator seeded with `seed` and moved
    to the images' device, once per device (kept on the instance: later calls reuse them; the
    masks themselves are upsampled from them chunk by chunk, never all held at once), so every
    image of a run is explained with the same N masks, an image's map does not depend on its
    batch, and a seed draws the same masks on every device. The forwards run in chunks of `mask_batch` masks for the whole batch (B x mask_batch
    images per forward; None: about `default_chunk_size` images per forward); the maps do not
    depend on it. A chunk lowered on out-of-memory stays lower for later calls of the same batch
    size.

    Departure from the paper's code: upsampling uses PyTorch's bilinear interpolation, which
    repeats the edge values beyond the grid's outer cell centres where scikit-image's `resize`
    reflects them; the two differ only in the outer half cell of the upsampled grid.

    The explanation's extras["scores"] (B, N) hold p_c(M_i * x) for each image and mask.
    """

    name = "rise"
    explains = "probability"

    def __init__(
        self,
        model: nn.Module,
        masks: int = 4000,
        cell: int = 7,
        keep: float = 0.5,
        mask_batch: int | None = None,
        seed: int = 0,
    ):
        counts = {"masks": masks, "cell": cell, "mask_batch": mask_batch}
        for label, value in counts.items():
            if value is None and label == "mask_batch":
                continue
            positive_int(value, f"rise: {label}")
        if not 0 < keep <= 1:
            raise ConfigError(f"rise: keep must be a probability in (0, 1], got {keep!r}")
        fits_in_memory(
            draw_bytes(masks, cell),
            "cpu",
            f"rise: drawing {masks:,} masks of {cell} x {cell} cells",
            "give fewer masks or cells",
            param="params",
        )
        super().__init__(model, masks=masks, cell=cell, keep=keep, mask_batch=mask_batch, seed=seed)
        self.num_masks, self.cell, self.keep = masks, cell, keep
        self.mask_batch, self.seed = mask_batch, seed
        self.chunk_sizes = ChunkSizes("mask_batch")
        self.draws: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """1 + masks forwards per image (the clean one and one per masked copy), no backward."""
        return Passes(1 + positive_int(cls.full_settings(params)["masks"], "rise: masks"), 0)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        batch, _, height, width = images.shape
        if self.cell > min(height, width):
            raise ConfigError(
                f"rise: cell {self.cell} makes cells smaller than a pixel of the {height} x "
                f"{width} images; give cell <= {min(height, width)}",
                param="params",
            )
        grids, shifts = self.draw(images.device)
        saliency = images.new_zeros(batch, height, width)

        def score_masks(grid: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            """A chunk of m masks' draws -> (m, B) scores; adds the chunk's share to `saliency`."""
            nonlocal saliency
            masks = self.upsample(grid, shift, (height, width)).to(images.dtype)
            masked = (images[:, None] * masks[None, :, None]).flatten(0, 1)
            each = targets.repeat_interleave(len(masks))
            scores = explained_score(self.model(masked), each, self.explains).view(batch, -1)
            saliency = saliency + torch.einsum("bm,mhw->bhw", scores, masks)
            return scores.T

        with torch.no_grad():
            logits = self.model(images)
            targets = top1_targets(logits, targets)
            chunk = self.chunk_sizes.get(
                self.mask_batch or max(1, default_chunk_size(images.device) // batch)
            )
            scores = apply_in_chunks(score_masks, grids, shifts, chunk_size=chunk)
        maps = saliency / (self.num_masks * self.keep)
        return Explanation(maps.float(), targets, logits, {"scores": scores.T})

    def draw(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded draws on `device`: grids (N, cell, cell) bool (True = kept) and shifts (N, 2)
        in [0, 1).

        Drawn on the CPU, the same on every device, and copied to `device` on its first call only.
        A shift is a fraction of a cell; `upsample` turns it into whole pixels of the image's cells.
        """
        device = torch.device(device)
        if device not in self.draws:
            generator = torch.Generator().manual_seed(self.seed)
            shape = (self.num_masks, self.cell, self.cell)
            grids = torch.rand(shape, generator=generator) < self.keep
            shifts = torch.rand((self.num_masks, 2), generator=generator)
            self.draws[device] = grids.to(device), shifts.to(device)
        return self.draws[device]

    def upsample(
        self, grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """grids (m, cell, cell) bool, shifts (m, 2) from `draw` -> masks (m, H, W) float32."""
        cells = [math.ceil(side / self.cell) for side in size]
        grid_size = [(self.cell + 1) * c for c in cells]
        smooth = F.interpolate(
            grids[:, None].float(), size=grid_size, mode="bilinear", align_corners=False
        )[:, 0]
        offsets = torch.stack((shifts[:, 0] * cells[0], shifts[:, 1] * cells[1]), dim=1).long()
        rows = offsets[:, :1] + torch.arange(size[0], device=grids.device)
        cols = offsets[:, 1:] + torch.arange(size[1], device=grids.device)
        index = torch.arange(len(grids), device=grids.device)[:, None, None]
        return smooth[index, rows[:, :, None], cols[:, None, :]]

    def generate_masks(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """All N masks (N, H, W) float32 of a call on images of `size` on `device`."""
        return self.upsample(*self.draw(device), size)
