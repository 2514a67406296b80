"""The tiny run shared by the evaluate, report and sanity tests (built once per test session by the
`tiny_run` fixture of tests/conftest.py): its settings, its layout and the images it is made of."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from xaibench.data.classes import imagenet_classes

MODEL = "tiny_models:tiny_cnn"
METHODS = ("tgrad", "gradcam", "random")
PROTOCOLS = ("polycam", "rise")
METRICS = ("insertion", "deletion", "ins_del", "avg_drop", "increase")
STEP = 3136  # pixels per step: 16-point curves
BATCH_SIZE = 4
MODES = ("RGB", "L", "RGBA", "CMYK", "RGB", "P")  # one image of each, in this order
IMAGES = len(MODES)


@dataclass(frozen=True)
class Run:
    """A generated and evaluated run: `data` the image folder, `run_dir` the stores of the model
    (`run_dir/METHOD.h5`) with their tables in `run_dir/metrics`. Shared by many tests, so read
    only: a test that writes next to it works on `copy_to(tmp_path / ...)`."""

    data: Path
    run_dir: Path

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def store(self, method: str) -> Path:
        return self.run_dir / f"{method}.h5"

    def per_image(self, method: str, protocol: str) -> pd.DataFrame:
        return pd.read_csv(self.metrics_dir / f"{method}-{protocol}(step={STEP}).per_image.csv")

    def copy_to(self, dest: Path) -> Path:
        """The run folder (stores, metrics/) copied to `dest`, for a test that adds to it."""
        shutil.copytree(self.run_dir, dest)
        return dest

    def files(self) -> dict[str, tuple[int, int]]:
        """Size and modification time of every file of the run and its images, by path."""
        return {
            str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for root in (self.data, self.run_dir)
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }


def make_image_folder(root: Path) -> Path:
    """Six small photographs-to-be in WNID folders (classes 0, 100, ... 500), one in each of
    `MODES`: JPEG for L and CMYK, PNG for the others."""
    rng = np.random.default_rng(0)
    classes = imagenet_classes()
    for i, mode in enumerate(MODES):
        folder = root / classes.wnid(i * 100)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / f"img{i}.{'jpg' if mode in ('L', 'CMYK') else 'png'}")
    return root


def make_images(root: Path, count: int = 3) -> Path:
    """`count` RGB PNGs in WNID folders (classes 0, 100, ...)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / imagenet_classes().wnid(i * 100)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png"
        )
    return root
