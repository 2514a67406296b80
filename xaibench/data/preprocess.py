"""Image preprocessing: `Preprocess` turns a PIL image into a model's input and is recorded in every
store; a `Preprocessing` builds it for a model's mean, std and input size.

Both named protocols (`polycam`, `rise`, xaibench.metrics.protocols, docs/metrics) use
`POLYCAM_PREPROCESSING`: resize the image directly to the input size (no crop), convert to [0, 1]
and normalise with the model's mean and std. A model's own preprocessing (`MODEL_PREPROCESSING`,
the one its weights were evaluated with: shorter side resized, then a centre crop, with its
interpolation) is built by `centre_crop` (docs/preprocessing.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from xaibench.core.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = tuple(mode.value for mode in TF.InterpolationMode)
"""The resize's interpolation names: torchvision's `InterpolationMode` values (on PIL images, every
mode but nearest is antialiased, as torchvision's and timm's transforms resize them)."""
DEFAULT_INTERPOLATION = "bilinear"
"""The interpolation of the named protocols' preprocessing; `Preprocess.to_dict` records any other."""
MODEL_PREPROCESSING = "model"
"""The name a model's own preprocessing (`centre_crop`) records."""


@dataclass(frozen=True)
class Preprocess:
    """Resize (and optionally centre-crop) a PIL image, then normalise it.

    `name` names the preprocessing (a `Preprocessing`'s name, or `MODEL_PREPROCESSING`); `resize`
    is (h, w) for a direct resize or an int for "shorter side to this length" (the longer side
    to int(resize * long / short)); `crop` is the side of a square centre crop, its (h, w), or
    None; `interpolation` one of `INTERPOLATIONS`. The result is (3, *input_size) float32: the
    same operations as torchvision's `ImageClassification` and timm's evaluation transform.
    """

    name: str = "polycam"
    resize: tuple[int, int] | int = (224, 224)
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}"
            )

    @property
    def input_size(self) -> tuple[int, int]:
        if isinstance(self.crop, int):
            return (self.crop, self.crop)
        if self.crop is not None:
            return tuple(self.crop)
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize needs a crop to give a fixed input size")
        return tuple(self.resize)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        mode = TF.InterpolationMode(self.interpolation)
        image = TF.resize(image, size, interpolation=mode, antialias=True)
        if self.crop is not None:
            image = TF.center_crop(image, list(self.input_size))
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
        resize, crop = recorded["resize"], recorded.get("crop")
        return cls(
            name=recorded.get("name", cls.name),
            resize=tuple(resize) if isinstance(resize, list) else resize,
            crop=tuple(crop) if isinstance(crop, list) else crop,
            mean=tuple(recorded["mean"]),
            std=tuple(recorded["std"]),
            interpolation=recorded.get("interpolation", DEFAULT_INTERPOLATION),
        )

    def to_dict(self) -> dict:
        """The settings, JSON-serialisable; `interpolation` only when it is not bilinear, so the
        record of the named protocols' preprocessing is the one stores have always held."""
        d = asdict(self)
        d["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        d["crop"] = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["input_size"] = list(self.input_size)
        if self.interpolation == DEFAULT_INTERPOLATION:
            del d["interpolation"]
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


def preprocessing_of(recorded: dict) -> str:
    """The preprocessing setting (`xaibench.core.choices.PREPROCESSINGS`) a `Preprocess.to_dict`
    record was made under: "model" for a model's own, "protocol" for a named protocol's."""
    return "model" if recorded.get("name") == MODEL_PREPROCESSING else "protocol"


def centre_crop(
    input_size: tuple[int, int] | int,
    crop_fraction: float,
    interpolation: str = DEFAULT_INTERPOLATION,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Preprocess:
    """A model's own preprocessing: the shorter side resized to floor(side / crop_fraction), then
    a centre crop of the (square) input size, as timm's evaluation transform does ("center" crop
    mode) and torchvision's `ImageClassification` with resize_size = floor(crop / fraction)."""
    sides = {input_size} if isinstance(input_size, int) else set(input_size)
    if len(sides) != 1:
        raise ConfigError(
            f"a centre crop keeps the aspect ratio, so it needs a square input size, not "
            f"{input_size}",
            param="input_size",
        )
    if not 0 < crop_fraction <= 1:
        raise ConfigError(f"{crop_fraction} is not a fraction in (0, 1]", param="crop")
    (side,) = sides
    resize = math.floor(side / crop_fraction)
    return Preprocess(MODEL_PREPROCESSING, resize, side, tuple(mean), tuple(std), interpolation)
