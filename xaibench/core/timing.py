"""Timing of device work, and copying results to the host, with as few waits for the device as
possible: `timed` waits at both ends of one call; `SpanClock` times several spans of a batch and
waits once, when they are read; `to_host` copies several tensors with one wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def synchronise(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device; nothing to wait for elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """`fn(*args, **kwargs)` and the seconds it took, the device's queued work finished at both
    ends."""
    synchronise(device)
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronise(device)
    return result, time.perf_counter() - started


def seconds(device: torch.device, fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """The seconds `fn(*args, **kwargs)` took, as `timed` measures them (its result dropped)."""
    return timed(device, fn, *args, **kwargs)[1]


class SpanClock:
    """The seconds of consecutive spans of work on `device`, without waiting for it in between.

    On CUDA a span is a pair of timing events on the current stream: its seconds run from the
    stream reaching the span's start (the work queued before it done) to its finishing the span's
    work, what `timed` measures, while the host goes on queueing work. `read` waits for the last
    span's end, once (not at all after `to_host` has waited for the device). On the CPU, where work
    is done as it is called, a span is timed with `time.perf_counter`.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.spans: list[Any] = []

    @contextmanager
    def span(self) -> Iterator[int]:
        """Time the work of the `with` block as one more span; yields its position in `read`."""
        if self.device.type != "cuda":
            started = time.perf_counter()
            yield len(self.spans)
            self.spans.append(time.perf_counter() - started)
            return
        stream = torch.cuda.current_stream(self.device)
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record(stream)
        yield len(self.spans)
        end.record(stream)
        self.spans.append((start, end))

    def read(self) -> list[float]:
        """The seconds of every span so far, in order."""
        if self.device.type != "cuda" or not self.spans:
            return list(self.spans)
        self.spans[-1][1].synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in self.spans]


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The tensors as NumPy arrays, with one wait for the device for all of them: the copies from
    CUDA are queued without blocking, then each CUDA device they are on is synchronised once."""
    host = [t.detach().to("cpu", non_blocking=True) for t in tensors]
    for device in dict.fromkeys(t.device for t in tensors if t.device.type == "cuda"):
        synchronise(device)
    return [t.numpy() for t in host]
