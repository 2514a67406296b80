"""A batch split on out-of-memory leaves the methods' records (`last_terms`, ...) of the whole batch."""

import pytest
import torch
from tiny_models import FitsOnly

from xaibench.core.batching import ChunkSize
from xaibench.methods import METHODS
from xaibench.methods.base import concat_records

RECORDED = {  # method: (its record of the last call, parameters)
    "tgrad": ("last_terms", {}),
    "fullgrad": ("last_terms", {}),
    "intgrad": ("last_completeness", {"steps": 4, "step_batch": 2}),
    "rise": ("last_scores", {"masks": 4, "cell": 4, "mask_batch": 1}),
}


def fields(record):
    """A record as a list of tensors (and names), for comparing two of them."""
    if isinstance(record, torch.Tensor):
        return [record]
    values = []
    for value in vars(record).values():
        values.extend(value if isinstance(value, list) else [value])
    return values


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_records_of_a_split_batch_equal_those_of_the_unsplit_call(name, tiny_resnet, images):
    record, params = RECORDED[name]
    batch = images[:3]
    whole = METHODS.get(name)(FitsOnly(tiny_resnet, 100), **params)
    expected = whole(batch)
    split = METHODS.get(name)(FitsOnly(tiny_resnet, 2), **params)
    size = ChunkSize(4, "batch_size")
    result = split.call_in_chunks(batch, None, size)
    assert size.value == 2  # 3 images did not fit: sub-batches of 2 and 1
    got, want = fields(getattr(split, record)), fields(getattr(whole, record))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if isinstance(b, torch.Tensor):
            assert a.shape == b.shape and a.shape[0] == len(batch)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert a == b
    torch.testing.assert_close(result.maps, expected.maps, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.targets, expected.targets)


def test_records_join_in_order():
    first, second = torch.arange(2.0), torch.arange(2.0, 5.0)
    assert torch.equal(concat_records([first, second]), torch.arange(5.0))
    assert concat_records([first]) is first
