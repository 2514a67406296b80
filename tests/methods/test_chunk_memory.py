"""Methods that chunk their own forwards keep a chunk size lowered on out-of-memory across calls."""

import pytest
import torch
from tiny_models import FitsOnly

from xaibench.methods import METHODS

LIMIT = 4
"""Images per forward the simulated device holds."""

CHUNKED = {
    "smoothgrad": {"samples": 8, "sample_batch": 8},
    "intgrad": {"steps": 8, "step_batch": 8},
    "rise": {"masks": 8, "cell": 4, "mask_batch": 4},  # 2 images x 4 masks per forward
    "occlusion": {"window": 32, "stride": 16, "window_batch": 4},  # 2 images x 4 windows
    "scorecam": {"channel_batch": 8},
    "ablationcam": {"channel_batch": 8},
    "polycam": {"channel_batch": 8},
}


class RecordingFits(FitsOnly):
    """`FitsOnly` that records the batch size of every forward it is asked for in `sizes`."""

    def __init__(self, net: torch.nn.Module, limit: int):
        super().__init__(net, limit)
        self.sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(images.shape[0])
        return super().forward(images)


@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_an_out_of_memory_back_off_is_remembered_by_the_next_call(name, tiny_resnet, images):
    batch = images[:2]
    model = RecordingFits(tiny_resnet, LIMIT)
    method = METHODS.get(name)(model, **CHUNKED[name])
    first = method(batch)
    first_sizes, model.sizes = model.sizes, []
    second = method(batch)
    assert sum(size > LIMIT for size in first_sizes) == 1  # one failed chunk, then halved
    assert max(model.sizes) == LIMIT  # the next call starts at the lowered size, no failure
    unlimited = RecordingFits(tiny_resnet, 10**6)
    reference = METHODS.get(name)(unlimited, **CHUNKED[name])(batch)
    assert max(unlimited.sizes) > LIMIT  # the reference ran its chunks at the full size
    for result in (first, second):
        torch.testing.assert_close(result.maps, reference.maps, rtol=1e-5, atol=1e-6)
        assert torch.equal(result.targets, reference.targets)
