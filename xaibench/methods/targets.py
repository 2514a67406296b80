"""The class score a method explains, defined once for every method, metric and store.

A method explains the score of one class per image: the logit y_c (the default, as most methods
are published), or the softmax probability p_c where the method's paper weights by it (RISE,
Score-CAM, Poly-CAM) or maps it (Occlusion). `explained_score` computes either from the logits.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from xaibench.core.errors import ConfigError

ScoreKind = Literal["logit", "probability"]
"""logit: y_c, the class's logit; probability: p_c, its softmax probability over the classes."""


def explained_score(
    logits: torch.Tensor, targets: torch.Tensor, kind: ScoreKind = "logit"
) -> torch.Tensor:
    """(B, K) logits, (B,) classes -> (B,): y_c or p_c (`kind`) of each row's class.

    Computed in the logits' dtype; callers cast them first where they want another.
    """
    if kind not in get_args(ScoreKind):
        raise ConfigError(f"score kind must be one of {get_args(ScoreKind)}, got {kind!r}")
    scores = logits.softmax(dim=1) if kind == "probability" else logits
    return scores.gather(1, targets[:, None].long()).squeeze(1)
