"""A batch split on out-of-memory gives the explanation of the whole batch, extras included."""

from dataclasses import dataclass

import pytest
import torch
from tiny_models import FitsOnly

from xaibench.core.batching import ChunkSize
from xaibench.methods import METHODS, Explanation
from xaibench.methods.base import join_batches

EXTRAS = {  # method: (the names of its extras, parameters)
    "tgrad": (["terms"], {}),
    "fullgrad": (["terms"], {}),
    "intgrad": (["completeness"], {"steps": 4, "step_batch": 2}),
    "rise": (["scores"], {"masks": 4, "cell": 4, "mask_batch": 1}),
    "occlusion": (["drops"], {"window": 32, "stride": 16, "window_batch": 1}),
}


def fields(extra):
    """An extra as a list of tensors (and names), for comparing two of them."""
    if isinstance(extra, torch.Tensor):
        return [extra]
    values = []
    for value in vars(extra).values():
        values.extend(value if isinstance(value, list) else [value])
    return values


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_the_extras_of_a_split_batch_equal_those_of_the_unsplit_call(name, tiny_resnet, images):
    names, params = EXTRAS[name]
    batch = images[:3]
    expected = METHODS.get(name)(FitsOnly(tiny_resnet, 100), **params)(batch)
    split = METHODS.get(name)(FitsOnly(tiny_resnet, 2), **params)
    size = ChunkSize(4, "batch_size")
    result = split.call_in_chunks(batch, None, size)
    assert size.value < 3  # 3 images did not fit: smaller sub-batches
    assert list(result.extras) == list(expected.extras) == names
    for extra in names:
        got, want = fields(result.extras[extra]), fields(expected.extras[extra])
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            if isinstance(b, torch.Tensor):
                assert a.shape == b.shape and a.shape[0] == len(batch)
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert a == b
    torch.testing.assert_close(result.maps, expected.maps, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.targets, expected.targets)


@dataclass
class Record:
    names: list[str]
    maps: list[torch.Tensor]
    values: torch.Tensor


def test_extras_join_in_order():
    first, second = torch.arange(2.0), torch.arange(2.0, 5.0)
    assert torch.equal(join_batches([first, second]), torch.arange(5.0))
    parts = [Record(["a", "b"], [first, first[:, None]], first) for _ in range(2)]
    joined = join_batches(parts)
    assert joined.names == ["a", "b"]
    assert torch.equal(joined.maps[1], torch.cat([first, first])[:, None])
    assert torch.equal(joined.values, torch.cat([first, first]))


def test_extras_of_different_layers_do_not_join():
    values = torch.zeros(1)
    with pytest.raises(ValueError, match="differ"):
        join_batches([Record(["a"], [values], values), Record(["b"], [values], values)])
    with pytest.raises(ValueError, match="length"):
        join_batches([Record(["a"], [values], values), Record(["a", "b"], [values], values)])


def test_explanations_join_their_extras_by_name():
    maps, targets = torch.zeros(1, 2, 2), torch.zeros(1, dtype=torch.long)
    parts = [
        Explanation(maps, targets, extras={"scores": torch.full((1, 3), float(i))}) for i in (1, 2)
    ]
    joined = Explanation.concat(parts)
    assert torch.equal(joined.extras["scores"], torch.tensor([[1.0] * 3, [2.0] * 3]))
    with pytest.raises(ValueError, match="different extras"):
        Explanation.concat([parts[0], Explanation(maps, targets)])
