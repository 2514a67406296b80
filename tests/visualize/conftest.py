import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread per optimisation: a step is a chain of small ops, and on a loaded 2-core machine
    two threads synchronising on each of them run far slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
