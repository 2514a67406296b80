import pytest
import torch

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, RandomBaseline
from xaibench.methods.baselines import hash32, image_fingerprints


def test_map_depends_only_on_seed_and_pixels(images):
    method = RandomBaseline(None, seed=7)
    targets = torch.zeros(4, dtype=torch.long)
    maps = method(images, targets).maps
    shuffled = method(images[[2, 0, 3, 1]], targets).maps
    torch.testing.assert_close(shuffled, maps[[2, 0, 3, 1]], rtol=0, atol=0)
    alone = method(images[1:2].clone(), targets[:1]).maps
    torch.testing.assert_close(alone[0], maps[1], rtol=0, atol=0)
    assert not torch.equal(maps[0], maps[1])
    assert not torch.equal(RandomBaseline(None, seed=8)(images, targets).maps, maps)
    nudged = images.clone()
    nudged[0, 1, 5, 7] += 0.01
    changed = method(nudged, targets).maps
    assert not torch.equal(changed[0], maps[0]) and torch.equal(changed[1:], maps[1:])


def test_values_are_uniform_in_unit_interval(images):
    maps = RandomBaseline(None)(images, torch.zeros(4, dtype=torch.long)).maps
    assert maps.dtype == torch.float32 and maps.shape == (4, 64, 64)
    assert maps.min() >= 0 and maps.max() < 1
    counts = torch.histc(maps, bins=10, min=0, max=1)
    expected = maps.numel() / 10
    assert ((counts - expected).abs() < 5 * expected**0.5).all()
    assert abs(float(maps.mean()) - 0.5) < 0.01


def test_resolution_and_params():
    method = METHODS.get("random")(None, resolution=7, seed=3)
    assert method.params == {"resolution": 7, "seed": 3}
    maps = method(torch.zeros(2, 3, 32, 48), torch.tensor([1, 2])).maps
    assert maps.shape == (2, 7, 7)
    assert RandomBaseline(None)(torch.zeros(1, 3, 33, 47), torch.tensor([0])).maps.shape == (
        1,
        33,
        47,
    )
    with pytest.raises(ConfigError, match="resolution"):
        RandomBaseline(None, resolution=0)


def test_forward_only_when_targets_are_missing(small_vgg, images):
    calls = []
    handle = small_vgg.register_forward_hook(lambda m, i, o: calls.append(o))
    method = RandomBaseline(small_vgg)
    given = method(images, torch.tensor([1, 2, 3, 4]))
    assert calls == [] and given.logits is None
    assert given.targets.tolist() == [1, 2, 3, 4]
    top1 = method(images)
    handle.remove()
    assert len(calls) == 1
    assert torch.equal(top1.targets, calls[0].argmax(dim=1))
    torch.testing.assert_close(top1.logits, calls[0])
    torch.testing.assert_close(top1.maps, given.maps, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="targets"):
        RandomBaseline(None)(images)


def test_integer_arithmetic_is_exact():
    x = torch.tensor([0, 1, 2**31, 2**32 - 1])
    hashed = hash32(x)
    assert ((hashed >= 0) & (hashed < 2**32)).all()
    assert len(set(hash32(torch.arange(100_000)).tolist())) == 100_000
    # extreme pixel values still give fingerprints in range, the same in float64 or float32
    images = torch.tensor([-1e4, 1e4, 0.5, -0.25]).view(1, 1, 2, 2).expand(2, 3, 2, 2)
    fingerprints = image_fingerprints(images)
    assert fingerprints[0] == fingerprints[1] and 0 <= fingerprints[0] < 2**31 - 1
    assert torch.equal(image_fingerprints(images.double()), fingerprints)


@pytest.mark.parametrize("value", [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1])
def test_hash32_of_an_int_is_its_hash_as_a_tensor(value):
    assert isinstance(hash32(value), int)
    assert hash32(value) == int(hash32(torch.tensor(value)))
