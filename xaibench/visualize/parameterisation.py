"""Image parameterisations for feature visualisation: what the optimiser changes.

Both produce a batch of RGB images (N, 3, H, W) in pixel space [0, 1] from learnable parameters and
know how to blur themselves in place (the regulariser applied every k steps).

- `PixelImage`: the pixels themselves, kept in [0, 1] by clamping after each step (projected
  gradient ascent, as in Simonyan et al. 2014 and the model class visualisations of the seeds).
- `FourierImage`: Olah et al. 2017 ("Feature Visualization", Distill), section "Preconditioning and
  Parameterization": a spectrum per image and channel in a 1/f-scaled Fourier basis, mapped to
  space by an orthonormal inverse real FFT, then to correlated RGB with `COLOUR_CORRELATION` and
  squashed to [0, 1] by a sigmoid. Gradient steps on white spectrum coefficients are then steps
  on natural-image-like (1/f) images with decorrelated colours, which removes most of the
  high-frequency noise plain pixel ascent produces.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from torch import nn

from xaibench.core.choices import PARAMETERISATION_NAMES

# The square root (from an SVD) of the RGB colour covariance of ImageNet images, as published with
# Lucid (tensorflow/lucid, lucid/optvis/param/color.py), the library behind Olah et al. 2017.
# rgb = M @ decorrelated per pixel; its columns are scaled so the largest has norm 1, as Lucid does.
_COLOUR_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
COLOUR_CORRELATION = (_COLOUR_SVD_SQRT / _COLOUR_SVD_SQRT.norm(dim=0).max()).float()
"""(3, 3): decorrelated colour -> RGB (before the sigmoid)."""


class PixelImage(nn.Module):
    """N images (N, 3, H, W) in [0, 1], the pixels being the parameters; starts from uniform noise
    around mid-grey (0.5 +- `noise`)."""

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        *,
        noise: float = 0.1,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        start = 0.5 + noise * (2 * torch.rand(n, 3, *size, generator=generator) - 1)
        self.pixels = nn.Parameter(start.clamp(0, 1))

    def forward(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def project_(self) -> None:
        """Back into [0, 1] after an optimiser step."""
        self.pixels.clamp_(0, 1)

    @torch.no_grad()
    def blur_(self, sigma: float) -> None:
        """Gaussian blur of every image, kernel 2 * ceil(3 sigma) + 1, reflected borders."""
        self.pixels.copy_(gaussian_blur(self.pixels, sigma))


class FourierImage(nn.Module):
    """N images (N, 3, H, W) in [0, 1] from spectra in a 1/f-scaled Fourier basis (module docstring).

    `spectrum` is (N, 3, H, W // 2 + 1) complex, stored as real pairs; the spatial image is
    irfft2(spectrum * scale, norm="ortho"), with `scale` (H, W // 2 + 1) = 1 / max(f, 1 / max(H, W))
    ** decay_power, divided by its root mean square so that white coefficients of standard
    deviation s give spatial values of standard deviation about s at any size. (Lucid multiplies by
    sqrt(H W) and divides by a constant 4 instead; the ratio is the same up to a constant.)
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        *,
        noise: float = 0.01,
        decay_power: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.size = tuple(size)
        self.register_buffer("scale", spectrum_scale(self.size, decay_power))
        self.register_buffer("colour", COLOUR_CORRELATION.clone())
        h, w = self.size
        start = noise * torch.randn(n, 3, h, w // 2 + 1, 2, generator=generator)
        self.spectrum = nn.Parameter(start)

    def spatial(self) -> torch.Tensor:
        """(N, 3, H, W): the decorrelated image before colour mixing and sigmoid."""
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(coefficients, s=self.size, norm="ortho")

    def forward(self) -> torch.Tensor:
        mixed = torch.einsum("rc,nchw->nrhw", self.colour, self.spatial())
        return torch.sigmoid(mixed)

    @classmethod
    def from_images(cls, images: torch.Tensor, *, decay_power: float = 1.0) -> FourierImage:
        """The parameters whose `forward()` is `images` (N, 3, H, W), values in (0, 1)."""
        n, _, h, w = images.shape
        param = cls(n, (h, w), noise=0.0, decay_power=decay_power).to(images.device)
        logits = torch.logit(images.double())
        spatial = torch.einsum("rc,nchw->nrhw", torch.linalg.inv(param.colour.double()), logits)
        coefficients = torch.fft.rfft2(spatial, norm="ortho") / param.scale
        with torch.no_grad():
            param.spectrum.copy_(torch.view_as_real(coefficients.to(torch.complex64)))
        return param

    def project_(self) -> None:
        """Nothing to do: the sigmoid keeps every image in [0, 1]."""

    @torch.no_grad()
    def blur_(self, sigma: float) -> None:
        """Gaussian blur of the spatial image, done exactly in the Fourier basis: each coefficient
        is multiplied by the Gaussian's transfer function exp(-2 pi^2 sigma^2 |f|^2) (circular
        boundaries, unlike `PixelImage.blur_`'s reflected ones)."""
        f2 = frequencies(self.size) ** 2
        self.spectrum.mul_(torch.exp(-2 * math.pi**2 * sigma**2 * f2)[..., None])


def frequencies(size: tuple[int, int]) -> torch.Tensor:
    """(H, W // 2 + 1): |f| in cycles per pixel of each coefficient of a real 2-D FFT."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fy**2 + fx**2)


def spectrum_scale(size: tuple[int, int], decay_power: float = 1.0) -> torch.Tensor:
    """(H, W // 2 + 1): 1 / max(|f|, 1 / max(H, W)) ** decay_power, normalised to unit RMS."""
    floor = 1.0 / max(size)
    scale = 1.0 / frequencies(size).clamp(min=floor) ** decay_power
    return scale / scale.pow(2).mean().sqrt()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) blurred by a Gaussian of standard deviation `sigma` (pixels), kernel
    2 * ceil(3 sigma) + 1 taps (at most the image side), reflected borders."""
    side = min(images.shape[-2:])
    taps = min(2 * max(1, math.ceil(3 * sigma)) + 1, side - 1 if side % 2 == 0 else side)
    return TF.gaussian_blur(images, [taps, taps], [sigma, sigma])


PARAMETERISATIONS = dict(zip(PARAMETERISATION_NAMES, (PixelImage, FourierImage), strict=True))
