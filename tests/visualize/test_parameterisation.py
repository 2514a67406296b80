"""Fourier and pixel parameterisations: invertible, in range, 1/f spectrum, blur, colour matrix."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xaibench.data.dataset import load_rgb
from xaibench.data.samples import SAMPLES, build_sample_dataset
from xaibench.visualize.parameterisation import (
    COLOUR_CORRELATION,
    FourierImage,
    PixelImage,
    frequencies,
)


@pytest.mark.parametrize("size", [(32, 32), (33, 40)])
def test_fourier_image_inverts_exactly(size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    param = FourierImage.from_images(images)
    torch.testing.assert_close(param(), images, atol=1e-5, rtol=0)


def test_fourier_image_stays_in_range_whatever_the_spectrum():
    param = FourierImage(3, (24, 24), noise=50.0, generator=torch.Generator().manual_seed(1))
    images = param()
    assert images.shape == (3, 3, 24, 24)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.2  # not stuck at grey


@pytest.mark.parametrize("decay_power", [1.0, 1.5])
def test_fourier_basis_has_power_falling_as_f_to_minus_two_decay(decay_power):
    """White coefficients through the basis: the image's power spectrum is |X|^2 scale^2, so the
    radially averaged power falls as f^(-2 decay_power)."""
    param = FourierImage(
        64, (64, 64), noise=1.0, decay_power=decay_power, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        power = torch.fft.rfft2(param.spatial(), norm="ortho").abs().pow(2).mean(dim=(0, 1))
    f = frequencies((64, 64))
    bins = torch.logspace(math.log10(2 / 64), math.log10(0.45), 12)
    centre, mean_power = [], []
    for low, high in itertools.pairwise(bins):
        inside = (f >= low) & (f < high)
        centre.append(f[inside].log().mean().item())
        mean_power.append(power[inside].mean().log().item())
    slope = np.polyfit(centre, mean_power, 1)[0]
    assert slope == pytest.approx(-2 * decay_power, abs=0.15)


def test_fourier_interior_coefficients_are_the_scaled_parameters():
    param = FourierImage(2, (16, 16), noise=1.0, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        coefficients = torch.fft.rfft2(param.spatial(), norm="ortho")
        expected = torch.view_as_complex(param.spectrum) * param.scale
    # column 0 and the Nyquist column are made Hermitian by the real inverse FFT; the rest is exact
    torch.testing.assert_close(coefficients[..., 1:-1], expected[..., 1:-1], atol=1e-5, rtol=1e-5)


def test_fourier_blur_equals_a_circular_gaussian_blur_of_the_spatial_image():
    param = FourierImage(1, (32, 32), noise=1.0, generator=torch.Generator().manual_seed(4))
    sigma = 1.5
    with torch.no_grad():
        before = param.spatial()
        radius = 12
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
        padded = F.pad(before.double(), (radius,) * 4, mode="circular")
        expected = F.conv2d(padded, kernel.expand(3, 1, -1, -1), groups=3)
        param.blur_(sigma)
        after = param.spatial()
    torch.testing.assert_close(after.double(), expected, atol=2e-3 * before.abs().max(), rtol=0)


def test_pixel_image_blur_and_projection():
    param = PixelImage(2, (32, 32), noise=0.5, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        param.pixels.add_(0.3)
    param.project_()
    assert param().min() >= 0 and param().max() <= 1
    rough = param().diff(dim=-1).abs().mean()
    mean = param().mean()
    param.blur_(1.0)
    assert param().diff(dim=-1).abs().mean() < 0.6 * rough
    assert param().mean().item() == pytest.approx(mean.item(), abs=0.01)


def test_colour_matrix_is_a_square_root_of_a_natural_photo_colour_correlation(tmp_path):
    """M M^T is a colour covariance with the structure of real photographs' (five of them here,
    not ImageNet, so only the structure is compared): all channels strongly correlated, adjacent
    channels more than red and blue, and a luminance-like first principal axis."""
    assert COLOUR_CORRELATION.norm(dim=0).max() == pytest.approx(1.0)
    covariance = COLOUR_CORRELATION @ COLOUR_CORRELATION.T
    assert torch.linalg.eigvalsh(covariance).min() > 0
    model_corr = covariance / torch.outer(covariance.diag().sqrt(), covariance.diag().sqrt())
    root = build_sample_dataset(tmp_path / "samples")
    pixels = np.concatenate(
        [
            np.asarray(load_rgb(root / wnid / name), np.float64).reshape(-1, 3)
            for name, wnid, _ in SAMPLES
            if name != "camera.png"  # grayscale: perfectly correlated by construction
        ]
    )
    photo_corr = torch.from_numpy(np.corrcoef(pixels.T)).float()
    for corr in (model_corr, photo_corr):
        assert corr.min() > 0.5
        assert min(corr[0, 1], corr[1, 2]) > corr[0, 2]
        axis = torch.linalg.eigh(corr).eigenvectors[:, -1]
        assert abs(axis @ torch.ones(3)) / math.sqrt(3) > 0.95
