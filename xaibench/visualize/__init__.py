"""Global explanations: feature visualisation by optimisation and layer-wise activation maps."""

from xaibench.visualize.activations import choose_channels, layer_activations
from xaibench.visualize.grid import activation_figure, labelled_grid, save_png
from xaibench.visualize.optimise import Unit, Visualisation, visualise_units
from xaibench.visualize.parameterisation import COLOUR_CORRELATION, FourierImage, PixelImage
from xaibench.visualize.transforms import RandomTransforms

__all__ = [
    "COLOUR_CORRELATION",
    "FourierImage",
    "PixelImage",
    "RandomTransforms",
    "Unit",
    "Visualisation",
    "activation_figure",
    "choose_channels",
    "labelled_grid",
    "layer_activations",
    "save_png",
    "visualise_units",
]
