"""Similarity of saliency maps (sanity/similarity.py) against scipy and scikit-image."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from xaibench.sanity import spearman, ssim


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.random((4, 9, 7))
    b = a + rng.normal(scale=0.3, size=a.shape)
    a[1] = np.floor(a[1] * 3)  # many ties
    b[2] = np.round(b[2], 1)
    got = spearman(torch.tensor(a), torch.tensor(b)).numpy()
    want = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_equal_maps_correlate_fully_even_when_constant():
    constant = torch.full((2, 5, 5), 0.3)
    other = torch.rand(2, 5, 5)
    assert spearman(constant, constant).tolist() == [1.0, 1.0]
    assert torch.isnan(spearman(constant, other)).all()


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(1)
    a = rng.random((3, 20, 17))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    b[2] = a[2]
    got = ssim(torch.tensor(a), torch.tensor(b)).numpy()
    want = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert got[2] == pytest.approx(1.0)
