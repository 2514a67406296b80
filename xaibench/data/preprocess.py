"""Image preprocessing: `Preprocess` turns a PIL image into a model's input and is recorded in every
store; a `Preprocessing` builds it for a model's mean, std and input size.

Both named protocols (`polycam`, `rise`, xaibench.metrics.protocols, docs/metrics) use
`POLYCAM_PREPROCESSING`: resize the image directly to the input size (no crop), convert to [0, 1]
and normalise with the model's mean and std.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize (and optionally centre-crop) a PIL image, then normalise it.

    `name` names the preprocessing (a `Preprocessing`'s name); `resize` is (h, w) for a direct
    resize or an int for "shorter side to this length"; `crop` is the side of a centre crop, or
    None. The result is (3, *input_size) float32.
    """

    name: str = "polycam"
    resize: tuple[int, int] | int = (224, 224)
    crop: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def input_size(self) -> tuple[int, int]:
        if self.crop is not None:
            return (self.crop, self.crop)
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize needs a crop to give a fixed input size")
        return tuple(self.resize)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        if self.crop is not None:
            image = TF.center_crop(image, [self.crop, self.crop])
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    def unnormalise(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image (3, H, W) back to (H, W, 3) in [0, 1], as the model saw it."""
        mean = torch.tensor(self.mean, device=image.device)[:, None, None]
        std = torch.tensor(self.std, device=image.device)[:, None, None]
        return (image * std + mean).clamp(0, 1).permute(1, 2, 0)

    @classmethod
    def from_dict(cls, recorded: dict) -> Preprocess:
        """The preprocessing `to_dict` recorded (a store's `preprocess`), rebuilt; a record
        without a name is the default protocol's."""
        resize = recorded["resize"]
        return cls(
            name=recorded.get("name", cls.name),
            resize=tuple(resize) if isinstance(resize, list) else resize,
            crop=recorded.get("crop"),
            mean=tuple(recorded["mean"]),
            std=tuple(recorded["std"]),
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["input_size"] = list(self.input_size)
        return d


@dataclass(frozen=True)
class Preprocessing:
    """A named preprocessing: resize directly to the model's input size (no crop), ToTensor, the
    model's normalisation. `name` is the name the `Preprocess` it builds records."""

    name: str

    def for_model(
        self,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        input_size: tuple[int, int] = (224, 224),
    ) -> Preprocess:
        """The preprocessing of images into a (3, *input_size) input normalised by `mean`, `std`."""
        return Preprocess(self.name, tuple(input_size), None, tuple(mean), tuple(std))


POLYCAM_PREPROCESSING = Preprocessing("polycam")
"""The T-Grad authors' evaluation preprocessing (docs/metrics), which both named protocols use."""
