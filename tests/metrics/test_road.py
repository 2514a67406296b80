"""ROAD: the batched imputation against a one-image sparse solve, and the metric on exact cases."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

import xaibench.metrics.road as road
from xaibench.core.errors import ConfigError
from xaibench.metrics import METRICS, MetricContext, get_protocol, linear_imputation
from xaibench.metrics.road import ROAD_TOLERANCE, gaussian_noise, neighbour_kernel

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def reference_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """One image (C, H, W), removed (H, W): each removed pixel is the weighted mean of its
    in-image neighbours (1/6 direct, 1/12 diagonal), written as a sparse system and solved."""
    c, h, w = image.shape
    unknown = np.flatnonzero(removed.ravel())
    variable = {int(p): i for i, p in enumerate(unknown)}
    matrix = scipy.sparse.lil_matrix((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), c))
    for i, p in enumerate(unknown):
        y, x = divmod(int(p), w)
        for dy, dx in OFFSETS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
            matrix[i, i] += weight
            q = ny * w + nx
            if q in variable:
                matrix[i, variable[q]] -= weight
            else:
                rhs[i] += weight * image[:, ny, nx]
    solution = scipy.sparse.linalg.spsolve(matrix.tocsc(), rhs)
    out = image.reshape(c, -1).copy()
    out[:, unknown] = solution.reshape(len(unknown), c).T
    return out.reshape(c, h, w)


@pytest.mark.parametrize("solver", ["cg", "direct"])
@pytest.mark.parametrize("share", [0.2, 0.6, 0.9])
def test_imputation_matches_a_sparse_solve(share, solver):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 3, 16, 20)).astype(np.float32)
    removed = rng.random((2, 16, 20)) < share
    removed[1, 3:13, 4:15] = True  # a large hole: many CG iterations
    got = linear_imputation(torch.from_numpy(images), torch.from_numpy(removed), solver=solver)
    for i in range(2):
        want = reference_imputation(images[i], removed[i])
        assert np.abs(got[i].numpy() - want).max() < 1e-4
        np.testing.assert_array_equal(got[i].numpy()[:, ~removed[i]], images[i][:, ~removed[i]])


def test_edge_cases_nothing_or_everything_removed():
    images = torch.randn(2, 3, 6, 6)
    removed = torch.zeros(2, 6, 6, dtype=torch.bool)
    removed[1] = True
    for solver in ("cg", "direct"):
        out = linear_imputation(images, removed, solver=solver)
        torch.testing.assert_close(out[0], images[0])
        assert (out[1] == 0).all()
    with pytest.raises(ConfigError, match="solver"):
        linear_imputation(images, removed, solver="lu")


def easy_and_hard(size: int = 24, dtype: torch.dtype = torch.float32):
    """Two images: the first with 5% of its pixels removed (few CG iterations), the second with
    all but a 2-pixel frame (many)."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, size, size, generator=generator, dtype=dtype)
    removed = torch.zeros(2, size, size, dtype=torch.bool)
    removed[0] = torch.rand(size, size, generator=generator) < 0.05
    removed[1, 2:-2, 2:-2] = True
    return images, removed


@pytest.fixture()
def plane_iterations(monkeypatch):
    """Counts the planes of every CG matrix product: the imputation's convolutions after its first
    two (the right-hand side and the diagonal)."""
    sizes: list[int] = []

    def counting(x, *args, **kwargs):
        sizes.append(len(x))
        return F.conv2d(x, *args, **kwargs)

    monkeypatch.setattr(road, "F", SimpleNamespace(conv2d=counting))

    def count(images, removed, **kwargs):
        sizes.clear()
        out = linear_imputation(images, removed, solver="cg", **kwargs)
        return out, sum(sizes[2:])

    return count


def test_every_plane_meets_the_tolerance():
    images, removed = easy_and_hard(dtype=torch.float64)
    out = linear_imputation(images, removed, solver="cg")
    kernel = neighbour_kernel(torch.float64, "cpu")
    mask = removed[:, None].double()
    diagonal = F.conv2d(
        torch.ones(1, 1, *removed.shape[1:], dtype=torch.float64), kernel, padding=1
    )

    def system(x):  # (N, C, H, W) -> A x + (weights of kept neighbours), on the removed pixels
        flat = x.reshape(-1, 1, *x.shape[2:])
        return (diagonal * flat - F.conv2d(flat, kernel, padding=1)).view(x.shape) * mask

    b = -system(images * (1 - mask))
    residual = (b - system(out * mask)).flatten(2).norm(dim=2)
    assert (residual <= ROAD_TOLERANCE * b.flatten(2).norm(dim=2)).all()


def test_a_plane_freezes_independently_of_the_harder_planes_it_is_solved_with(plane_iterations):
    images, removed = easy_and_hard()
    both, together = plane_iterations(images, removed)
    easy, easy_count = plane_iterations(images[:1], removed[:1])
    hard, hard_count = plane_iterations(images[1:], removed[1:])
    # The same arithmetic per plane: bit-identical to solving each image alone (on the CPU).
    assert torch.equal(both[0], easy[0]) and torch.equal(both[1], hard[0])
    assert together == easy_count + hard_count
    # Iterating every plane until the slowest one converges would do this many products:
    assert 3 * easy_count < hard_count and together < 2 * hard_count


def test_running_out_of_iterations_warns_once_with_the_planes_short_of_the_tolerance(caplog):
    images, removed = easy_and_hard()
    removed[0] = False  # nothing to solve: these planes meet the tolerance at once
    with caplog.at_level(logging.WARNING, logger=road.__name__):
        out = linear_imputation(images, removed, solver="cg", max_iterations=15)
    assert len(caplog.records) == 1
    assert "after 15 iterations with 3 of 6 planes" in caplog.records[0].getMessage()
    assert torch.equal(out[0], images[0]) and out.isfinite().all()


def test_a_linear_ramp_is_imputed_exactly_away_from_the_border():
    y, x = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    ramp = (0.3 * x - 0.2 * y + 1)[None, None].expand(1, 3, 12, 12).contiguous()
    removed = torch.zeros(1, 12, 12, dtype=torch.bool)
    removed[0, 3:9, 2:10] = True
    torch.testing.assert_close(linear_imputation(ramp, removed), ramp, atol=1e-5, rtol=0)


def test_noise_is_a_fixed_standard_normal_stream():
    keys = torch.arange(64)
    first = gaussian_noise(keys, 0, (3, 16, 16))
    assert abs(first.mean().item()) < 0.02 and abs(first.std().item() - 1) < 0.02
    torch.testing.assert_close(gaussian_noise(keys[5:9], 0, (3, 16, 16)), first[5:9])
    assert not torch.equal(gaussian_noise(keys, 1, (3, 16, 16)), first)


class WeightedSum:
    """score(z) = sum of weight * z: a linear model whose answers are exact."""

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, images, targets):
        return (images * self.weight).flatten(1).sum(dim=1)


def test_morf_and_lerf_on_an_exact_case():
    """A ramp with a spike at q; the map ranks q first and an interior pixel r last. Removing 1%
    (one pixel of 10 x 10) imputes the ramp value exactly: MoRF loses the spike, LeRF nothing."""
    y, x = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    ramp = (0.1 * x + 0.05 * y)[None, None].expand(1, 3, 10, 10).contiguous()
    spiked = ramp.clone()
    spiked[0, :, 4, 4] += 2.0
    saliency = torch.full((1, 10, 10), 0.5)
    saliency[0, 4, 4], saliency[0, 7, 2] = 1.0, 0.0
    score = WeightedSum(torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(0)))
    protocol = get_protocol("polycam", road_percentages=(1,), road_noise=0.0)
    targets = torch.zeros(1, dtype=torch.long)
    ctx = MetricContext(spiked, saliency, targets, score(spiked, targets), score, protocol)
    morf = METRICS.get("road_morf").score_batch(ctx)
    lerf = METRICS.get("road_lerf").score_batch(ctx)
    torch.testing.assert_close(morf.values["road_morf"], score(ramp, targets), atol=1e-4, rtol=0)
    torch.testing.assert_close(lerf.values["road_lerf"], score(spiked, targets), atol=1e-4, rtol=0)
    assert set(morf.diagnostics) == {"road_morf_1"} and morf.curves["road_morf"].shape == (1, 1)


def test_noise_lands_on_removed_pixels_only_and_is_scaled_by_the_std():
    """With a zero image the imputation is 0, so the score is the noise the metric added."""
    images = torch.zeros(2, 3, 8, 8)
    saliency = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    protocol = get_protocol("polycam", road_percentages=(25, 50), road_noise=0.5)

    def sum_of_squares(batch, targets):
        return batch.pow(2).flatten(1).sum(dim=1)

    targets = torch.zeros(2, dtype=torch.long)
    ctx = MetricContext(
        images, saliency, targets, targets.float(), sum_of_squares, protocol, pixel_std=(1, 2, 4)
    )
    curves = METRICS.get("road_morf").score_batch(ctx).curves["road_morf"]
    expected_per_pixel = 0.25 * (1 + 1 / 4 + 1 / 16)  # sum over channels of (0.5 / std)^2
    np.testing.assert_allclose(curves / torch.tensor([16, 32]), expected_per_pixel, rtol=0.4)
    chunked = METRICS.get("road_morf").score_batch(
        MetricContext(
            images,
            saliency,
            targets,
            targets.float(),
            sum_of_squares,
            protocol,
            chunk_size=1,
            pixel_std=(1, 2, 4),
        )
    )
    torch.testing.assert_close(chunked.curves["road_morf"], curves)


def test_bad_percentages_are_refused():
    for bad in [(0, 10), (50, 20), (10, 100)]:
        with pytest.raises(ConfigError, match="road_percentages"):
            get_protocol("polycam", road_percentages=bad)
