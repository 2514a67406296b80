"""Models by name: torchvision classifiers, EfficientNet-Lite0, or a user's `module:callable`."""

from xaibench.data.preprocess import Preprocess
from xaibench.models.factory import MODELS, LoadedModel, list_model_names, load_model

__all__ = [
    "MODELS",
    "LoadedModel",
    "Preprocess",
    "list_model_names",
    "load_model",
]
