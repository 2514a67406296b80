"""Device choice, per-device defaults and process tuning, decided once at the top of a run.

Imports torch only inside the functions that need it: the CLI calls `tune_allocator` before every
command, `--help` included.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

from xaibench.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Batch and chunk sizes that run fastest per device type: on a 2-core CPU, small chunks beat big
# ones, under fp32 and bf16 alike (docs/perf-notes); on a GPU, larger batches keep the device busy.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}
DEFAULT_CHUNK_SIZE = {"cpu": 16, "cuda": 256}
# Decoding processes: on CPU they compete with the model for the cores; a GPU needs them fed.
DEFAULT_WORKERS = {"cpu": 0, "cuda": 4}


def resolve_device(device: str | None = None, cuda: bool = False) -> torch.device:
    """`device` wins over `cuda`; CUDA asked for but absent is an error, not a silent fallback."""
    import torch

    name = device or ("cuda" if cuda else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"{name!r} is not a device (use cpu, cuda or cuda:N)", param="device"
        ) from error
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "CUDA was asked for but no CUDA device is available; use `device` cpu"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{name}: only {torch.cuda.device_count()} CUDA device(s) are visible",
                param="device",
            )
    return chosen


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH_SIZE.get(device.type, 8)


def default_chunk_size(device: torch.device) -> int:
    return DEFAULT_CHUNK_SIZE.get(device.type, 16)


def default_workers(device: torch.device) -> int:
    return DEFAULT_WORKERS.get(device.type, 0)


def tune_allocator() -> None:
    """Keep glibc from returning large tensors to the OS after every pass.

    Without it a CPU run page-faults its activations back in on every batch and slows down over a long
    run (docs/perf-notes: 1.6x for resnet50 at batch 32). Same effect as MALLOC_MMAP_MAX_=0 and
    MALLOC_TRIM_THRESHOLD_=64 GiB in the environment. A no-op outside glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 36)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to the device in channels_last layout (+24% to +89% on CPU convnets, perf-notes).

    Changes no process-wide setting: `core.precision.forward_settings` turns on cuDNN's autotuner
    for the duration of a run.
    """
    import torch

    return model.to(device=device, memory_format=torch.channels_last)
