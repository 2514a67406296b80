"""Datasets: the ImageNet class table, image folders, and a small sample of real photographs."""

from xaibench.data.classes import ImageNetClasses, imagenet_classes
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.data.samples import build_sample_dataset

__all__ = [
    "ImageFolderDataset",
    "ImageNetClasses",
    "build_sample_dataset",
    "imagenet_classes",
    "make_loader",
]
