"""Datasets: the ImageNet class table, image folders, and a small sample of real photographs.

The names below are imported from their modules when first read (PEP 562), so the modules that need
no torch (the archive table, the public datasets, the index files) load without it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageFolderDataset": "xaibench.data.dataset",
    "ImageNetClasses": "xaibench.data.classes",
    "build_sample_dataset": "xaibench.data.samples",
    "imagenet_classes": "xaibench.data.classes",
    "make_loader": "xaibench.data.dataset",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
