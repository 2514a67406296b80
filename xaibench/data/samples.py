"""A small sample dataset of real photographs from scikit-image's data folder (no download).

The images are copied byte for byte into class folders named by WNID, so the sample is a
class-folder dataset like the arranged ImageNet val. Each class below is the top-1 prediction of
EfficientNet-Lite0 (ImageNet weights) on the photograph; camera.png is grayscale, which exercises the
RGB conversion.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from xaibench.core.atomic import write_stream_atomic
from xaibench.core.errors import DataError

# (scikit-image file, WNID, class index): the class index is checked against the WNID in the tests.
SAMPLES = (
    ("chelsea.png", "n02124075", 285),  # Egyptian cat
    ("coffee.png", "n07920052", 967),  # espresso
    ("rocket.jpg", "n03773504", 657),  # missile
    ("camera.png", "n04485082", 872),  # tripod
    ("motorcycle_left.png", "n03785016", 665),  # moped
    ("motorcycle_right.png", "n03785016", 665),  # moped
)


def _skimage_data() -> Path:
    try:
        return Path(str(resources.files("skimage.data")))
    except ModuleNotFoundError:
        raise DataError(
            "the sample dataset needs scikit-image; install it with `pip install xaibench[demo]`"
        ) from None


def build_sample_dataset(dest: str | Path) -> Path:
    """Write the sample images to `dest/<WNID>/<file>`; files already there are kept. Returns dest."""
    dest = Path(dest)
    source = _skimage_data()
    for name, wnid, _index in SAMPLES:
        target = dest / wnid / name
        if target.exists():
            continue
        if not (source / name).is_file():
            raise DataError(
                f"{name} is missing from scikit-image's data folder {source}; reinstall "
                "scikit-image"
            )
        with open(source / name, "rb") as photo:
            write_stream_atomic(target, photo)
    return dest
