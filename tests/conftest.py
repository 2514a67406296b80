import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run on 2-core machines; more threads only add contention."""
    torch.set_num_threads(2)
