"""xaibench: benchmark saliency methods for ImageNet classifiers.

`xaibench.explain` and `xaibench.score` (`xaibench.pipelines.in_memory`) explain and score
batches in memory; they import torch on first use, so `import xaibench` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["explain", "score"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from xaibench.pipelines import in_memory

        return getattr(in_memory, name)
    raise AttributeError(f"module 'xaibench' has no attribute {name!r}")
