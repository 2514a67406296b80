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


def test_span_clock_times_each_span_on_the_cpu(monkeypatch):
    now = [10.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    clock = timing.SpanClock(CPU)
    for seconds in (2.0, 0.5):
        with clock.span() as index:
            now[0] += seconds
        assert index == len(clock.spans) - 1
    assert clock.read() == [2.0, 0.5]


class FakeEvent:
    """A CUDA timing event on a clock the test advances; `synchronize` is counted."""

    now = 0.0
    waits = 0

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.at = None

    def record(self, stream=None):
        self.at = FakeEvent.now

    def synchronize(self):
        FakeEvent.waits += 1

    def elapsed_time(self, end):
        return (end.at - self.at) * 1000


def test_span_clock_on_cuda_records_events_and_waits_once_when_read(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: "stream")
    monkeypatch.setattr(timing, "synchronise", lambda device: pytest.fail("no device-wide wait"))
    clock = timing.SpanClock(torch.device("cuda"))
    for seconds in (3.0, 1.5, 0.25):
        with clock.span():
            FakeEvent.now += seconds
        FakeEvent.now += 100.0  # work outside the spans is not counted
    assert FakeEvent.waits == 0
    assert clock.read() == [3.0, 1.5, 0.25]
    assert FakeEvent.waits == 1


def test_to_host_copies_without_blocking_and_has_nothing_to_wait_for_on_the_cpu(monkeypatch):
    copies, waits = [], []
    original = torch.Tensor.to

    def to(tensor, *args, **kwargs):
        copies.append(kwargs.get("non_blocking"))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(timing, "synchronise", waits.append)
    arrays = timing.to_host([torch.arange(3), torch.ones(2, 2, requires_grad=True) * 2])
    assert [a.tolist() for a in arrays] == [[0, 1, 2], [[2.0, 2.0], [2.0, 2.0]]]
    assert copies == [True, True] and waits == []  # nothing to wait for on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_span_clock_measures_queued_cuda_work_and_to_host_waits_for_it():
    device = torch.device("cuda")
    x = torch.randn(4096, 4096, device=device)
    timing.synchronise(device)
    clock = timing.SpanClock(device)
    with clock.span():
        y = [x @ x for _ in range(20)][-1]
    with clock.span():
        pass
    (host,) = timing.to_host([y.sum()])
    assert torch.cuda.current_stream(device).query()
    busy, idle = clock.read()
    assert busy > 0 and busy > idle >= 0
    assert host.shape == ()
