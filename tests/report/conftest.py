"""A small real run made with the library's own generate and evaluate, shared by the report tests:
tiny model, three images, three methods, two protocols (steps of 3136 pixels: 16-point curves)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.evaluate import evaluate_store, write_evaluation
from xaibench.generate import generate
from xaibench.metrics import get_protocol
from xaibench.models import load_model, protocol_preprocess

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


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("run")
    data = make_images(root / "val")
    loaded = load_model(MODEL, "default")
    dataset = ImageFolderDataset(
        data, protocol_preprocess("polycam", loaded.mean, loaded.std, loaded.input_size)
    )
    cpu = torch.device("cpu")
    summary = generate(
        loaded, METHODS, dataset, root / "runs", device=cpu, batch_size=4, progress=False
    )
    for protocol in PROTOCOLS:
        for store in summary.stores:
            evaluation = evaluate_store(
                store,
                loaded,
                dataset,
                get_protocol(protocol, step=STEP),
                METRICS,
                device=cpu,
                batch_size=4,
                progress=False,
            )
            write_evaluation(evaluation, store.parent / "metrics")
    return Run(data, summary.stores[0].parent)
