"""Wall-clock timing of device work: CUDA is synchronised before the clock is read."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

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
