import math

import pytest
import torch
import torch.nn.functional as F

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.rise import RISE


def reference_rise(model, image, target, masks, keep):
    """The paper's sum_i p_c(M_i * x) M_i / (N p) for ONE image (1, 3, H, W), mask by mask."""
    saliency = torch.zeros(image.shape[2:], dtype=image.dtype)
    scores = []
    with torch.no_grad():
        for mask in masks:
            probs = F.softmax(model(image * mask), dim=1)
            scores.append(probs[0, target])
            saliency += probs[0, target] * mask
    return saliency / (len(masks) * keep), torch.stack(scores)


def reference_masks(grids, shifts, size, cell):
    """The paper's mask recipe, one mask at a time, from the method's own random draws."""
    cells = [math.ceil(side / cell) for side in size]
    masks = []
    for grid, shift in zip(grids, shifts, strict=True):
        up = F.interpolate(
            grid.float()[None, None], size=[(cell + 1) * c for c in cells], mode="bilinear"
        )[0, 0]
        dy, dx = int(shift[0] * cells[0]), int(shift[1] * cells[1])
        masks.append(up[dy : dy + size[0], dx : dx + size[1]])
    return torch.stack(masks)


@pytest.mark.parametrize("size", [(32, 32), (27, 35)])
def test_equals_the_paper_one_image_and_one_mask_at_a_time(small_vgg, size):
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5)).double()
    model = small_vgg.double()
    method = RISE(model, masks=24, cell=5, keep=0.4, mask_batch=7, seed=3)
    result = method(images)
    grids, shifts = method.draw(images.device)
    masks = reference_masks(grids, shifts, size, cell=5).double()
    torch.testing.assert_close(method.generate_masks(size, images.device).double(), masks)
    for i in range(len(images)):
        expected, scores = reference_rise(model, images[i : i + 1], result.targets[i], masks, 0.4)
        torch.testing.assert_close(result.maps[i].double(), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.extras["scores"][i], scores, rtol=1e-5, atol=1e-8)


def test_masks_follow_the_recipe():
    method = RISE(None, masks=500, cell=7, keep=0.3, seed=1)
    masks = method.generate_masks((64, 64), torch.device("cpu"))
    assert masks.shape == (500, 64, 64) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.3) < 0.02
    grids, shifts = method.draw(torch.device("cpu"))
    assert grids.shape == (500, 7, 7) and shifts.shape == (500, 2)
    assert abs(float(grids.float().mean()) - 0.3) < 0.02
    offsets = (shifts * 10).long()
    assert offsets.min() == 0 and offsets.max() == 9
    assert torch.equal(RISE(None, masks=500, keep=0.3, seed=1).draw(torch.device("cpu"))[0], grids)
    assert not torch.equal(
        RISE(None, masks=500, keep=0.3, seed=2).draw(torch.device("cpu"))[0], grids
    )


def test_chunked_equals_unchunked(tiny_resnet, images):
    images = images[:, :, :32, :32]
    whole = RISE(tiny_resnet, masks=20, mask_batch=20)(images)
    for mask_batch in (1, 7, None):
        chunked = RISE(tiny_resnet, masks=20, mask_batch=mask_batch)(images)
        torch.testing.assert_close(chunked.maps, whole.maps, rtol=1e-5, atol=1e-7)
        assert torch.equal(chunked.targets, whole.targets)


def test_batch_invariance_shape_and_params(small_vgg, images):
    images = images[:, :, :32, :40]
    method = METHODS.get("rise")(small_vgg, masks=20, cell=4, seed=9)
    assert method.params == {"masks": 20, "cell": 4, "keep": 0.5, "mask_batch": None, "seed": 9}
    together = method(images)
    assert together.maps.shape == (4, 32, 40) and together.maps.dtype == torch.float32
    assert torch.isfinite(together.maps).all() and (together.maps >= 0).all()
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(together.logits, small_vgg(images))


def test_finds_what_the_model_looks_at():
    """A model whose class-0 logit is the mean of the top-left quadrant of the first channel."""

    class Quadrant(torch.nn.Module):
        def forward(self, x):
            signal = 8 * (x[:, 0, :16, :16].mean(dim=(1, 2)) - 0.5)
            return torch.stack([signal, torch.zeros_like(signal)], dim=1)

    images = torch.ones(2, 3, 32, 32)
    maps = RISE(Quadrant(), masks=400, cell=4, seed=0)(images, torch.tensor([0, 1])).maps
    assert maps[0, :16, :16].mean() > 1.2 * maps[0, 16:, 16:].mean()
    assert maps[1, :16, :16].mean() < 0.9 * maps[1, 16:, 16:].mean()


def test_rejects_bad_settings(small_vgg):
    for bad in ({"masks": 0}, {"cell": 1.5}, {"keep": 0}, {"keep": 1.5}, {"mask_batch": 0}):
        with pytest.raises(ConfigError, match="rise"):
            RISE(small_vgg, **bad)


def test_draws_are_the_cpu_generators_and_do_not_depend_on_the_device(monkeypatch):
    """The grids and shifts are drawn from a seeded CPU generator, then copied to the device:
    a meta device (standing for a GPU) receives exactly the CPU draws."""
    generator = torch.Generator().manual_seed(4)
    expected_grids = torch.rand((50, 5, 5), generator=generator) < 0.5
    expected_shifts = torch.rand((50, 2), generator=generator)
    grids, shifts = RISE(None, masks=50, cell=5, seed=4).draw(torch.device("cpu"))
    assert torch.equal(grids, expected_grids) and torch.equal(shifts, expected_shifts)
    moved = []
    to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved.append(self)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    on_meta = RISE(None, masks=50, cell=5, seed=4).draw(torch.device("meta"))
    monkeypatch.undo()
    assert all(t.is_meta for t in on_meta)
    assert [t.device.type for t in moved] == ["cpu", "cpu"]
    assert torch.equal(moved[0], grids) and torch.equal(moved[1], shifts)


def test_draws_are_made_once_per_device_and_reused_by_later_batches(
    tiny_resnet, images, monkeypatch
):
    images = images[:, :, :32, :32]
    method = RISE(tiny_resnet, masks=12, mask_batch=5)
    first = method(images[:2])
    draws = method.draws[torch.device("cpu")]
    calls = []
    rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: calls.append(a) or rand(*a, **k))
    again = method(images[:2])
    method(images[2:])
    monkeypatch.undo()
    assert calls == [] and method.draws[torch.device("cpu")] is draws
    assert torch.equal(again.maps, first.maps)
    assert torch.equal(method.draw(torch.device("cpu"))[0], draws[0])
