"""xaibench: benchmark saliency methods for ImageNet classifiers."""

__version__ = "0.1.0"
