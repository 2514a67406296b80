"""Saliency methods. Importing this package registers every method in `METHODS`.

method = METHODS.get("tgrad")(model, **params)
explanation = method(images, targets=None)  # maps (B, h, w), targets (B,), logits (B, K)
"""

from xaibench.methods.base import METHODS, Explanation, SaliencyMethod, saliency_mode, top1_targets
from xaibench.methods.baselines import RandomBaseline
from xaibench.methods.cam import CAMMethod, GradCAM, explain_together, layer_pass
from xaibench.methods.layers import find_target_layer, validate_layer
from xaibench.methods.tgrad import TGrad, TGradTerms

__all__ = [
    "METHODS",
    "CAMMethod",
    "Explanation",
    "GradCAM",
    "RandomBaseline",
    "SaliencyMethod",
    "TGrad",
    "TGradTerms",
    "explain_together",
    "find_target_layer",
    "layer_pass",
    "saliency_mode",
    "top1_targets",
    "validate_layer",
]
