"""Random jitter, rotation and scaling: exact identity, shifts and rotations; an isometry of pixels."""

import math

import torch
import torch.nn.functional as F

from xaibench.visualize.transforms import RandomTransforms, sampling_grid


def warp(images, angle=0.0, zoom=1.0, shift=(0.0, 0.0)):
    n, _, h, w = images.shape
    grid = sampling_grid(
        torch.full((n,), angle), torch.full((n,), zoom), torch.tensor([shift] * n), (h, w)
    )
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def test_identity_and_integer_shifts_are_exact():
    images = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp(images), images)
    moved = warp(images, shift=(2 * 3 / 16, 2 * 1 / 12))  # 3 pixels right, 1 down
    torch.testing.assert_close(moved[..., 1:, 3:], images[..., :-1, :-3])


def test_quarter_turn_of_a_square_image_is_rot90():
    images = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    turned = warp(images, angle=math.pi / 2)
    assert any(
        torch.allclose(turned, torch.rot90(images, k, dims=(2, 3)), atol=1e-5) for k in (1, 3)
    )


def test_rotation_of_a_non_square_image_keeps_pixel_distances():
    h, w = 20, 40
    grid = sampling_grid(torch.tensor([0.4]), torch.ones(1), torch.zeros(1, 2), (h, w))[0]
    pixels = grid * torch.tensor([w / 2, h / 2])  # where each output pixel samples, in pixels
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    source = torch.stack([xs, ys], dim=-1).view(-1, 2)
    sampled = pixels.view(-1, 2)
    pairs = torch.randint(0, h * w, (200, 2), generator=torch.Generator().manual_seed(2))
    before = (source[pairs[:, 0]] - source[pairs[:, 1]]).norm(dim=1)
    after = (sampled[pairs[:, 0]] - sampled[pairs[:, 1]]).norm(dim=1)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_random_transforms_differ_per_image_and_are_seeded():
    images = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1)
    transforms = RandomTransforms(jitter=3, rotate=10, scale=0.1)
    a = transforms(images, torch.Generator().manual_seed(0))
    b = transforms(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a[1], a[2])
    assert RandomTransforms(0, 0, 0)(images, torch.Generator()) is images
