"""What the pipelines share: where and how fast a run goes, with the device's defaults filled once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from xaibench import dist
from xaibench.core.checks import integer_at_least, positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.precision import resolve_precision
from xaibench.core.runtime import (
    default_batch_size,
    default_chunk_size,
    default_workers,
    resolve_device,
)


@dataclass(frozen=True)
class RunSettings:
    """The settings `generate`, `evaluate_store`, `sanity_check` and the verify checks share.

    batch_size: images per batch; workers: image decoding processes; chunk_size: perturbed images
    per forward (evaluate); precision ("auto" becomes the device's: tf32 on CUDA, fp32 elsewhere),
    compile and deterministic: the forward's (xaibench/core/precision.py); progress: draw progress
    bars. Build with `resolve`, which fills in the device's defaults.
    """

    device: torch.device
    batch_size: int
    workers: int
    chunk_size: int
    precision: str = "auto"
    compile: bool = False
    progress: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, torch.device):
            raise ConfigError(f"device must be a torch.device, got {self.device!r}")
        positive_int(self.batch_size, "batch_size")
        integer_at_least(self.workers, "workers", 0)
        positive_int(self.chunk_size, "chunk_size")
        for name in ("compile", "progress", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        object.__setattr__(self, "precision", resolve_precision(self.precision, self.device))

    @classmethod
    def resolve(
        cls,
        device: torch.device | str | None = None,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        chunk_size: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        progress: bool = True,
        deterministic: bool = False,
    ) -> RunSettings:
        """The settings on `device` (`resolve_device`: cpu when None), each size left None taken
        from the device's defaults (`DEFAULT_BATCH_SIZE`, `DEFAULT_WORKERS`, `DEFAULT_CHUNK_SIZE`
        of xaibench/core/runtime.py); every value is checked, the error naming the parameter."""
        chosen = resolve_device(None if device is None else str(device))
        return cls(
            chosen,
            default_batch_size(chosen) if batch_size is None else batch_size,
            default_workers(chosen) if workers is None else workers,
            default_chunk_size(chosen) if chunk_size is None else chunk_size,
            precision,
            compile,
            progress,
            deterministic,
        )

    def on(self, device: torch.device) -> RunSettings:
        """The same settings on `device`, of the same type: the World's device, where
        `dist.launch` put this process (`cuda` becomes `cuda:LOCAL_RANK` under torchrun)."""
        if device.type != self.device.type:
            raise ConfigError(
                f"device {device} is not a {self.device.type} device like {self.device}"
            )
        return dataclasses.replace(self, device=device)


def world_of(settings: RunSettings, world: dist.World | None) -> dist.World:
    """`world`, or one process on the settings' device; ConfigError if the settings run on another
    device than the world's (use `settings.on(world.device)`)."""
    if world is None:
        return dist.World(device=settings.device)
    if world.device != settings.device:
        raise ConfigError(
            f"device {settings.device} is not this process's device {world.device}; "
            "pass settings.on(world.device)"
        )
    return world
