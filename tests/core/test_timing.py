"""The synchronised timer shared by generate and the benchmark scripts."""

import pytest
import torch

from xaibench.core import timing

CPU = torch.device("cpu")


def test_timed_returns_the_result_and_waits_for_the_device_at_both_ends(monkeypatch):
    events = []
    monkeypatch.setattr(timing, "synchronise", lambda device: events.append("sync"))
    result, took = timing.timed(CPU, lambda x: events.append("call") or x * 2, 21)
    assert result == 42
    assert events == ["sync", "call", "sync"]
    assert took >= 0


def test_seconds_covers_the_whole_call_and_the_wait_for_its_device_work(monkeypatch):
    """On a clock that only the call (2 s) and the waits for the device (0.5 s each) advance: the
    call and the wait after it are measured, the wait for earlier work before it is not."""
    now = [100.0]

    def advance(seconds):
        now[0] += seconds

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing, "synchronise", lambda device: advance(0.5))
    assert timing.seconds(CPU, advance, 2.0) == 2.5
    assert now[0] == 103.0  # both waits happened


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seconds_waits_for_queued_cuda_work():
    device = torch.device("cuda")
    x = torch.randn(4096, 4096, device=device)
    timing.synchronise(device)
    took = timing.seconds(device, lambda: [x @ x for _ in range(20)])
    assert took > 0
    assert torch.cuda.current_stream(device).query()
