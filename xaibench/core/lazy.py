"""Objects named by where they live, imported only when first asked for.

The CLI names each command as "module:attribute" and imports its module when the command is
looked up, so `xaibench --help` loads neither torch nor torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any


def load(target: str) -> Any:
    """`package.module:attribute` -> that attribute, importing the module if it is not yet."""
    module, separator, attribute = target.partition(":")
    if not separator or not attribute:
        raise ValueError(f"{target!r}: expected 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)
