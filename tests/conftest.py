import numpy as np
import pytest
import torch
from PIL import Image

from xaibench.data.classes import imagenet_classes


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run on 2-core machines; more threads only add contention."""
    torch.set_num_threads(2)


@pytest.fixture()
def image_folder(tmp_path):
    """Six small photographs-to-be in WNID folders, in several colour modes."""
    rng = np.random.default_rng(0)
    classes = imagenet_classes()
    root = tmp_path / "val"
    modes = ["RGB", "L", "RGBA", "CMYK", "RGB", "P"]
    for i, mode in enumerate(modes):
        folder = root / classes.wnid(i * 100)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / f"img{i}.{'jpg' if mode in ('L', 'CMYK') else 'png'}")
    return root
