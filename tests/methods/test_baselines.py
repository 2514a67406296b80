import pytest
import torch

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.baselines import CentreBaseline, ConstantBaseline
from xaibench.metrics.causal import pixel_ranks


@pytest.mark.parametrize("size", [(64, 64), (45, 53)])
def test_centre_is_a_centred_gaussian(size):
    images = torch.randn(3, 3, *size)
    maps = CentreBaseline(None, sigma=0.2)(images, torch.zeros(3, dtype=torch.long)).maps
    assert maps.shape == (3, *size) and maps.dtype == torch.float32
    assert torch.equal(maps[0], maps[1]) and torch.equal(maps[0], maps[2])
    height, width = size
    y = torch.arange(height) + 0.5 - height / 2
    x = torch.arange(width) + 0.5 - width / 2
    sigma_y, sigma_x = 0.2 * height, 0.2 * width
    expected = torch.exp(-(y[:, None] ** 2) / (2 * sigma_y**2) - x[None, :] ** 2 / (2 * sigma_x**2))
    torch.testing.assert_close(maps[0], expected)
    torch.testing.assert_close(maps[0], maps[0].flip(0))
    torch.testing.assert_close(maps[0], maps[0].flip(1))
    top = divmod(int(maps[0].argmax()), width)
    assert abs(top[0] - (height - 1) / 2) <= 0.5 and abs(top[1] - (width - 1) / 2) <= 0.5


def test_centre_width_follows_sigma():
    images = torch.zeros(1, 3, 64, 64)
    targets = torch.zeros(1, dtype=torch.long)
    narrow = CentreBaseline(None, sigma=0.1)(images, targets).maps
    wide = CentreBaseline(None, sigma=0.5)(images, targets).maps
    assert narrow[0, 0, 0] < wide[0, 0, 0] and narrow.mean() < wide.mean()
    with pytest.raises(ConfigError, match="sigma"):
        CentreBaseline(None, sigma=0)


def test_constant_ties_every_pixel_and_ranks_them_in_raster_order():
    maps = ConstantBaseline(None)(torch.randn(2, 3, 5, 7), torch.tensor([1, 2])).maps
    assert maps.shape == (2, 5, 7) and (maps == 1).all()
    ranks, ties = pixel_ranks(maps)
    assert torch.equal(ranks, torch.arange(35).expand(2, 35)) and (ties == 1).all()


@pytest.mark.parametrize("name", ["centre", "constant"])
def test_model_free_baselines_contract(name, small_vgg, images, no_hooks_left):
    cls = METHODS.get(name)
    assert not cls.needs_model
    method = cls(small_vgg)
    calls = []
    handle = small_vgg.register_forward_hook(lambda m, i, o: calls.append(o))
    given = method(images, torch.tensor([1, 2, 3, 4]))
    assert calls == [] and given.logits is None and given.targets.tolist() == [1, 2, 3, 4]
    top1 = method(images)
    handle.remove()
    assert len(calls) == 1 and torch.equal(top1.targets, calls[0].argmax(dim=1))
    torch.testing.assert_close(top1.logits, calls[0])
    torch.testing.assert_close(top1.maps, given.maps, rtol=0, atol=0)
    alone = method(images[1:2], torch.tensor([2]))
    torch.testing.assert_close(alone.maps[0], given.maps[1], rtol=0, atol=0)
    assert torch.isfinite(given.maps).all() and given.maps.device == images.device
    no_hooks_left(small_vgg)
    with pytest.raises(ConfigError, match=name):
        cls(None)(images)


def test_params():
    assert METHODS.get("centre")(None).params == {"sigma": 0.25}
    assert METHODS.get("constant")(None).params == {}
