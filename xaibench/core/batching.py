"""Run a function over chunks of a leading dimension, so memory is bounded by the chunk size.

The one batching helper behind every expansion: (image x step) pairs of the causal metrics, the
channels, masks and samples of perturbation and sampling methods, and generate's method calls. On
CUDA out-of-memory the chunk is halved and the failed chunk run again (`ChunkSize`); the chunks
already finished are kept, and a method keeps its lowered sizes for its next calls (`ChunkSizes`).
Out-of-memory is `torch.OutOfMemoryError`, or the RuntimeError cuDNN and cuBLAS raise when their
workspace cannot be allocated (`is_out_of_memory`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from xaibench.core.checks import positive_int
from xaibench.core.errors import OutOfMemory

log = logging.getLogger(__name__)
T = TypeVar("T")

ALLOCATION_FAILURES = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory")
"""Texts of the RuntimeErrors that report a failed device allocation rather than a bug."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory: `torch.OutOfMemoryError`, xaibench's
    `OutOfMemory` from a chunked call inside, or a cuDNN/cuBLAS allocation failure."""
    if isinstance(error, (torch.OutOfMemoryError, OutOfMemory)):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error) for t in ALLOCATION_FAILURES)


class ChunkSize:
    """A chunk size that halves on `torch.OutOfMemoryError` and keeps the smaller value after.

    Share one instance across the batches of a run, so that a size found too large is not tried
    again on every batch. `value` is the size in use; `reduced` tells whether it was ever halved.
    """

    def __init__(self, value: int, name: str = "chunk_size"):
        positive_int(value, name)
        self.value, self.requested, self.name = value, value, name

    @property
    def reduced(self) -> bool:
        return self.value < self.requested

    def halve(self, error: BaseException, tried: int | None = None) -> None:
        """Halve the size after `error` on a chunk of `tried` items (default: the size; a last
        chunk may be shorter, and halving a size above it would retry the same chunk); OutOfMemory
        when it is already 1.

        At 1 the size goes back to the requested one before raising: the failure is handed to an
        enclosing chunking (generate's batch), which halves instead, and this size starts afresh
        on the smaller work rather than staying at 1 for the rest of the run.
        """
        if tried is not None:
            self.value = max(1, min(self.value, tried))
        if self.value == 1:
            self.value = self.requested
            raise OutOfMemory(
                f"out of device memory with a {self.name} of 1 ({error}); free the device, use "
                "`precision` bf16, a smaller model or input size, or run on another device"
            ) from error
        self.value //= 2
        log.warning("out of device memory: %s lowered to %d", self.name, self.value)

    def __repr__(self) -> str:
        return f"ChunkSize({self.value}, requested={self.requested})"


class ChunkSizes:
    """One `ChunkSize` per requested value, made on first use and kept after.

    A method that chunks its own work holds one, so that a size halved on out-of-memory in one
    call starts halved in its next call asking for the same value (same setting, device and,
    where the default depends on it, batch size), instead of failing and halving again.
    """

    def __init__(self, name: str = "chunk_size"):
        self.name = name
        self.sizes: dict[int, ChunkSize] = {}

    def get(self, requested: int) -> ChunkSize:
        """The kept ChunkSize of `requested`; a new one the first time it is asked for."""
        if requested not in self.sizes:
            self.sizes[requested] = ChunkSize(requested, self.name)
        return self.sizes[requested]


def as_chunk_size(chunk_size: int | ChunkSize) -> ChunkSize:
    return chunk_size if isinstance(chunk_size, ChunkSize) else ChunkSize(chunk_size)


def run_in_chunks(fn: Callable[[slice], T], n: int, size: ChunkSize) -> list[T]:
    """[fn(slice(start, stop)) for consecutive slices covering range(max(n, 1))].

    Slices are `size.value` long (the last may be shorter); a slice whose call runs out of device
    memory (`is_out_of_memory`, including `OutOfMemory` from a chunked call inside it that could
    not go lower) is run again at half its length, from the same start.
    """
    parts, start = [], 0
    while start < max(n, 1):
        stop = min(start + size.value, n) if n else 0
        try:
            parts.append(fn(slice(start, stop)))
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            failure = error
        else:
            start = max(stop, 1)
            continue
        size.halve(failure, max(stop - start, 1))
        del failure
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return parts


def apply_in_chunks(
    fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, chunk_size: int | ChunkSize
) -> torch.Tensor:
    """Concatenate `fn(*[t[i : i + chunk_size] for t in tensors])` over i along dim 0.

    All tensors share the leading length N; `fn` maps slices of length L to a tensor (L, ...), so
    the result is (N, ...) and does not depend on `chunk_size`. With N = 0, `fn` is called once on
    the empty tensors so the result keeps `fn`'s trailing shape.
    """
    size = as_chunk_size(chunk_size)
    if not tensors:
        raise ValueError("apply_in_chunks needs at least one tensor to split")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"leading lengths differ: {[t.shape[0] for t in tensors]}")
    parts = run_in_chunks(lambda part: fn(*(t[part] for t in tensors)), n, size)
    if len(parts) == 1:
        return parts[0]
    try:
        return torch.cat(parts)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        # The joined result does not fit, at any chunk size: the caller's work must shrink.
        raise OutOfMemory(
            f"out of device memory joining {n} results of {size.name} chunks ({error})"
        ) from error
