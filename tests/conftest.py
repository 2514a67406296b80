from collections.abc import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from xaibench.cli import cli
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


@pytest.fixture(scope="session")
def invoke() -> Callable[..., Result]:
    """`xaibench ARGS` through click's CliRunner, each argument as str; an exception is raised
    unless `catch_exceptions=True`; other keywords (`env`, `input`) go to `CliRunner.invoke`."""

    def run(*args, catch_exceptions: bool = False, **kwargs) -> Result:
        arguments = [str(a) for a in args]
        return CliRunner().invoke(cli, arguments, catch_exceptions=catch_exceptions, **kwargs)

    return run
