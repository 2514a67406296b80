"""A small real run made with the library's own generate and evaluate, shared by the report tests:
tiny model, three images, three methods, two protocols (steps of 3136 pixels: 16-point curves)."""

import pytest
import torch
from report_run import METHODS, METRICS, MODEL, PROTOCOLS, STEP, Run, make_images

from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store, write_evaluation
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("run")
    data = make_images(root / "val")
    loaded = load_model(MODEL, "default")
    dataset = ImageFolderDataset(
        data, get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    )
    cpu = torch.device("cpu")
    summary = generate(
        loaded,
        METHODS,
        dataset,
        root / "runs",
        settings=RunSettings.resolve(cpu, batch_size=4, progress=False),
    )
    for protocol in PROTOCOLS:
        for store in summary.stores:
            evaluation = evaluate_store(
                store,
                loaded,
                dataset,
                get_protocol(protocol, step=STEP),
                METRICS,
                settings=RunSettings.resolve(cpu, batch_size=4, progress=False),
            )
            write_evaluation(evaluation, store.parent / "metrics")
    return Run(data, summary.stores[0].parent)
