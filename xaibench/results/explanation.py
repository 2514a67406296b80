"""One image explained by several methods, as `xaibench explain` computes and draws it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xaibench.methods.tgrad import TGradTerms


@dataclass
class ImageExplanation:
    """image: (H, W, 3) in [0, 1] as the model saw it; top: (class index, name, probability)
    best first; target: (class index, name, probability) of the class explained; maps: method ->
    (H, W) at input size; terms: T-Grad's terms when asked for."""

    image: np.ndarray
    top: list[tuple[int, str, float]]
    target: tuple[int, str, float]
    maps: dict[str, np.ndarray]
    terms: TGradTerms | None = None
