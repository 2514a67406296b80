"""Run a function over chunks of a leading dimension, so memory is bounded by the chunk size.

The one batching helper behind every expansion: (image x step) pairs of the causal metrics, and the
channels, masks and samples of perturbation and sampling methods.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xaibench.errors import ConfigError


def apply_in_chunks(
    fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Concatenate `fn(*[t[i : i + chunk_size] for t in tensors])` over i along dim 0.

    All tensors share the leading length N; `fn` maps slices of length L to a tensor (L, ...), so
    the result is (N, ...) and does not depend on `chunk_size`. With N = 0, `fn` is called once on
    the empty tensors so the result keeps `fn`'s trailing shape.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not tensors:
        raise ValueError("apply_in_chunks needs at least one tensor to split")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"leading lengths differ: {[t.shape[0] for t in tensors]}")
    parts = [
        fn(*(t[start : start + chunk_size] for t in tensors))
        for start in range(0, max(n, 1), chunk_size)
    ]
    return torch.cat(parts) if len(parts) > 1 else parts[0]
