"""Saliency methods. Importing this package registers every method in `METHODS`, and the
families of other libraries' methods (`captum.CLASS`, `gradcam-lib.CLASS`, xaibench.methods.adapter).

method = METHODS.get("tgrad")(model, **params)
explanation = method(images, targets=None)  # maps (B, h, w), targets (B,), logits (B, K)
"""

from xaibench.methods import adapter_captum, adapter_gradcam  # noqa: F401  (their families)
from xaibench.methods.attention import AttentionGradient, AttentionRollout
from xaibench.methods.base import (
    METHODS,
    Explanation,
    Passes,
    SaliencyMethod,
    saliency_mode,
    top1_targets,
)
from xaibench.methods.baselines import CentreBaseline, ConstantBaseline, RandomBaseline
from xaibench.methods.cam import CAMMethod, GradCAM, explain_together, layer_pass
from xaibench.methods.cam_perturbation import AblationCAM, ScoreCAM
from xaibench.methods.fullgrad import FullGrad
from xaibench.methods.gradients import (
    DeconvNet,
    Gradient,
    GradientInput,
    GuidedBackprop,
    GuidedGradCAM,
)
from xaibench.methods.integrated import IntegratedGradients
from xaibench.methods.layers import find_target_layer, validate_layer
from xaibench.methods.occlusion import Occlusion
from xaibench.methods.polycam import PolyCAM, PolyCAMMinus, PolyCAMPlusMinus
from xaibench.methods.rise import RISE
from xaibench.methods.smoothgrad import SmoothGrad, SmoothGradSquared, VarGrad
from xaibench.methods.tgrad import TGrad, TGradTerms

__all__ = [
    "METHODS",
    "RISE",
    "AblationCAM",
    "AttentionGradient",
    "AttentionRollout",
    "CAMMethod",
    "CentreBaseline",
    "ConstantBaseline",
    "DeconvNet",
    "Explanation",
    "FullGrad",
    "GradCAM",
    "Gradient",
    "GradientInput",
    "GuidedBackprop",
    "GuidedGradCAM",
    "IntegratedGradients",
    "Occlusion",
    "Passes",
    "PolyCAM",
    "PolyCAMMinus",
    "PolyCAMPlusMinus",
    "RandomBaseline",
    "SaliencyMethod",
    "ScoreCAM",
    "SmoothGrad",
    "SmoothGradSquared",
    "TGrad",
    "TGradTerms",
    "VarGrad",
    "explain_together",
    "find_target_layer",
    "layer_pass",
    "saliency_mode",
    "top1_targets",
    "validate_layer",
]
