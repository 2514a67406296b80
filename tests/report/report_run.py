"""The small real run the report tests share: its settings, layout and images."""

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
STEP = 3136


@dataclass
class Run:
    data: Path
    run_dir: Path

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def per_image(self, method: str, protocol: str) -> pd.DataFrame:
        return pd.read_csv(self.metrics_dir / f"{method}-{protocol}(step={STEP}).per_image.csv")


def make_images(root: Path, count: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / imagenet_classes().wnid(i * 100)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png"
        )
    return root
