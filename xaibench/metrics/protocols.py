"""Named evaluation protocols: preprocessing, substrate, step, curve end points, AUC rule and score
space.

Published insertion/deletion numbers are only comparable under the same protocol (docs/metrics), so
each setting is defined once: `Protocol` holds the settings and their defaults, and `PROTOCOLS`, the
one registry of protocol names, is built from the plain table of what each named protocol sets,
`xaibench.core.choices.PROTOCOL_SETTINGS` (which the CLI lists without importing torch). The metric
settings are recorded with `Protocol.to_dict()` in each output and can be overridden by name with
`get_protocol(name, **overrides)`; the preprocessing (`Protocol.preprocess`, or the model's own with
`Protocol.preprocess_for(loaded, "model")`) is recorded by every store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy.ndimage import gaussian_filter

from xaibench.core.checks import positive_int
from xaibench.core.choices import PREPROCESSINGS, PROTOCOL_SETTINGS
from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POLYCAM_PREPROCESSING,
    Preprocess,
    Preprocessing,
)

if TYPE_CHECKING:
    from xaibench.models.factory import LoadedModel

KERNEL_SIZE = 11
SIGMA = 5.0
AUC_RULES = ("mean", "trapezoid")
SCORES = ("probability", "logits")


def blur(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): torchvision Gaussian blur 11 x 11, sigma 5, reflect pad."""
    return TF.gaussian_blur(images, [KERNEL_SIZE, KERNEL_SIZE], [SIGMA, SIGMA])


@lru_cache(maxsize=1)
def _rise_kernel() -> np.ndarray:
    impulse = np.zeros((KERNEL_SIZE, KERNEL_SIZE))
    impulse[KERNEL_SIZE // 2, KERNEL_SIZE // 2] = 1.0
    kernel = gaussian_filter(impulse, SIGMA)
    return kernel / kernel.sum()


def rise_kernel(
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(11, 11) RISE's blur kernel: a unit impulse smoothed by a Gaussian of sigma 5, summing to 1.

    With sigma 5 on an 11 x 11 support the kernel is almost a box filter (values 0.0077-0.0088).
    """
    return torch.as_tensor(_rise_kernel(), dtype=dtype, device=device)


@lru_cache(maxsize=8)
def _placed_rise_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`rise_kernel` on a device, copied there once per (dtype, device), not once per batch."""
    return rise_kernel(dtype, device)


def rise_blur(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): each channel convolved with `rise_kernel`, zero padding.

    RISE convolves with a (3, 3, 11, 11) kernel that is zero off the channel diagonal; a depthwise
    convolution computes the same with a third of the work.
    """
    channels = images.shape[1]
    kernel = _placed_rise_kernel(images.dtype, images.device).expand(channels, 1, -1, -1)
    return F.conv2d(images, kernel, padding=KERNEL_SIZE // 2, groups=channels)


SUBSTRATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "blur": blur,
    "rise_blur": rise_blur,
    "zeros": torch.zeros_like,
}
"""Substrate name -> function of the normalised images (B, 3, H, W) -> (B, 3, H, W).

"zeros" is zero in normalised space, i.e. the normalisation's mean colour.
"""


@dataclass(frozen=True)
class Protocol:
    """A protocol: its name, the preprocessing of its images and every setting of the metrics.

    - `preprocessing`: how images become the model's input (`preprocess`); not a metric setting,
      so neither recorded by `to_dict` nor overridden by `get_protocol`.
    - `step`: pixels changed per step; a curve over H x W pixels has n = ceil(HW / step) steps and
      image k changes the first min(k * step, HW) pixels of the order.
    - `insertion_substrate`, `deletion_substrate`: names in `SUBSTRATES`.
    - `include_start`: whether the curve has the k = 0 point (n + 1 points) or starts at k = 1.
    - `auc`: "mean" = the mean of the curve's points, which is sum / n for a curve k = 1..n;
      "trapezoid" = the trapezoid rule with the points evenly spaced on [0, 1],
      (sum - first / 2 - last / 2) / (points - 1), which is (sum - first / 2 - last / 2) / n for a
      curve k = 0..n. The docs state both rules for those curves only; dividing by the number of
      points (or intervals) keeps the AUC of a constant curve equal to that constant for any
      `include_start`.
    - `score`: "probability" (softmax p_c) or "logits" (y_c), applied by the runner's score
      function.
    - `road_percentages`: the percentages of pixels ROAD removes, each in (0, 100), increasing;
      `road_noise`: the std of the Gaussian noise added to imputed pixels, in [0, 1] pixel units;
      `road_seed`: the seed of that noise.
    - `pointing_tolerance`: the pointing game's tolerance, in input pixels.
    """

    name: str
    step: int = 224
    insertion_substrate: str = "blur"
    deletion_substrate: str = "blur"
    include_start: bool = False
    auc: str = "mean"
    score: str = "probability"
    road_percentages: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    road_noise: float = 0.01
    road_seed: int = 0
    pointing_tolerance: float = 15.0
    preprocessing: Preprocessing = POLYCAM_PREPROCESSING

    def __post_init__(self) -> None:
        positive_int(self.step, "protocol field 'step'")
        for field in ("insertion_substrate", "deletion_substrate"):
            value = getattr(self, field)
            if value not in SUBSTRATES:
                raise ConfigError(
                    f"protocol field {field!r} is {value!r}; choose one of {', '.join(SUBSTRATES)}"
                )
        if self.auc not in AUC_RULES:
            raise ConfigError(f"protocol field 'auc' is {self.auc!r}; choose one of {AUC_RULES}")
        if self.score not in SCORES:
            raise ConfigError(f"protocol field 'score' is {self.score!r}; choose one of {SCORES}")
        if not isinstance(self.include_start, bool):
            raise ConfigError(f"protocol field 'include_start' is not a bool: {self.include_start}")
        object.__setattr__(self, "road_percentages", tuple(self.road_percentages))
        road = self.road_percentages
        if not road or any(not 0 < p < 100 for p in road) or list(road) != sorted(set(road)):
            raise ConfigError(
                f"protocol field 'road_percentages' is {road!r}; give increasing percentages "
                "between 0 and 100 (exclusive), e.g. 10,20,...,90"
            )
        for field in ("road_noise", "pointing_tolerance"):
            if not getattr(self, field) >= 0:
                raise ConfigError(f"protocol field {field!r} must be >= 0: {getattr(self, field)}")

    def preprocess(
        self,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        input_size: tuple[int, int] = (224, 224),
    ) -> Preprocess:
        """The protocol's preprocessing for a model normalising by `mean`, `std` (3,) and taking
        (3, *input_size) inputs."""
        return self.preprocessing.for_model(mean, std, input_size)

    def preprocess_for(self, loaded: LoadedModel, preprocessing: str = "protocol") -> Preprocess:
        """The preprocessing of the images of `loaded`: with `preprocessing` "protocol" the
        protocol's (`preprocess`) at the model's mean, std and input size; with "model" the one
        its weights were evaluated with (`LoadedModel.own_preprocess`)."""
        if preprocessing not in PREPROCESSINGS:
            raise ConfigError(
                f"{preprocessing!r}: use one of {', '.join(PREPROCESSINGS)}", param="preprocessing"
            )
        if preprocessing == "model":
            return loaded.own_preprocess()
        return self.preprocess(loaded.mean, loaded.std, loaded.input_size)

    def n_steps(self, n_pixels: int) -> int:
        """n = ceil(HW / step)."""
        return math.ceil(n_pixels / self.step)

    def pixel_counts(self, n_pixels: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(points,) int64: the number of changed pixels, min(k * step, HW), at each curve point."""
        first = 0 if self.include_start else 1
        k = torch.arange(first, self.n_steps(n_pixels) + 1, device=device)
        return (k * self.step).clamp(max=n_pixels)

    def substrate(self, mode: str, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 3, H, W) substrate of "insertion" or "deletion"."""
        name = {"insertion": self.insertion_substrate, "deletion": self.deletion_substrate}[mode]
        return SUBSTRATES[name](images)

    def area(self, curves: torch.Tensor) -> torch.Tensor:
        """(B, points) -> (B,) area under each curve on x in [0, 1], by the protocol's rule."""
        if self.auc == "mean":
            return curves.mean(dim=1)
        points = curves.shape[1]
        if points < 2:
            raise ConfigError("the trapezoid AUC needs a curve of at least 2 points; lower 'step'")
        ends = (curves[:, 0] + curves[:, -1]) / 2
        return (curves.sum(dim=1) - ends) / (points - 1)

    def to_dict(self) -> dict[str, Any]:
        """The name and every metric setting, JSON-serialisable, for recording next to the results."""
        return {name: getattr(self, name) for name in ("name", *SETTINGS)}


SETTINGS = tuple(f.name for f in fields(Protocol) if f.name not in ("name", "preprocessing"))
"""The metric settings of a protocol: what `to_dict` records and `get_protocol` overrides."""

_CURVE_SETTINGS = ("step", "include_start", "auc", "score")
_ROAD_SETTINGS = ("road_percentages", "road_noise", "road_seed", "score")
SETTINGS_READ: dict[str, tuple[str, ...]] = {
    "insertion": ("insertion_substrate", *_CURVE_SETTINGS),
    "deletion": ("deletion_substrate", *_CURVE_SETTINGS),
    "ins_del": ("insertion_substrate", "deletion_substrate", *_CURVE_SETTINGS),
    "avg_drop": ("score",),
    "increase": ("score",),
    "road_morf": _ROAD_SETTINGS,
    "road_lerf": _ROAD_SETTINGS,
    "pointing_game": ("pointing_tolerance",),
    "energy_pointing": (),
}
"""Native metric -> the settings its values depend on: its results under two protocols that agree
on these are the same measurement."""


def settings_read_by(metric: str) -> tuple[str, ...]:
    """The settings `metric` reads (`SETTINGS_READ`); every setting for a metric not listed there
    (the quantus.NAME ones)."""
    return SETTINGS_READ.get(metric, SETTINGS)


PROTOCOLS: dict[str, Protocol] = {
    name: Protocol(name, preprocessing=POLYCAM_PREPROCESSING, **settings)
    for name, settings in PROTOCOL_SETTINGS.items()
}
"""The named protocols, with their settings from `xaibench.core.choices.PROTOCOL_SETTINGS`."""


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """The named protocol with `overrides` applied.

    An overridden protocol is renamed after what changed, e.g. "polycam(step=16)", so tables that
    group by protocol name never merge results taken under different settings.
    """
    if name not in PROTOCOLS:
        raise UnknownNameError("protocol", name, PROTOCOLS)
    base = PROTOCOLS[name]
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ConfigError(
            f"unknown protocol setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(SETTINGS))}"
        )
    changed = {k: v for k, v in overrides.items() if getattr(base, k) != v}
    if not changed:
        return base
    label = ",".join(f"{k}={_label(v)}" for k, v in sorted(changed.items()))
    return replace(base, name=f"{name}({label})", **changed)


def _label(value: Any) -> str:
    """A setting as it appears in a protocol name: sequences as 10_20_30 (no spaces, no commas)."""
    if isinstance(value, tuple | list):
        return "_".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)
