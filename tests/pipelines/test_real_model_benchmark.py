"""The benchmark's point on a real model: on real photographs, with EfficientNet-Lite0's ImageNet
weights, T-Grad and Grad-CAM beat the random baseline.

Runs generate and evaluate as library calls on four photographs (cat, espresso, rocket, camera).
"""

import shutil

import pytest
import torch

from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.samples import build_sample_dataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")
pytestmark = pytest.mark.slow

METHODS = ("tgrad", "gradcam", "random")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mean_aucs(tmp_path_factory):
    """(method, protocol) -> {"insertion": mean AUC, "deletion": mean AUC}."""
    root = tmp_path_factory.mktemp("real")
    data = build_sample_dataset(root / "data")
    shutil.rmtree(data / "n03785016")  # keep one photograph per class: the two mopeds go
    loaded = load_model("efficientnet_lite0")
    results = {}
    for protocol in ("polycam", "rise"):
        preprocess = get_protocol(protocol).preprocess(loaded.mean, loaded.std, loaded.input_size)
        dataset = ImageFolderDataset(data, preprocess)
        if protocol == "polycam":
            generate(
                loaded,
                METHODS,
                dataset,
                root / "runs",
                settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
            )
        for method in METHODS:
            evaluation = evaluate_store(
                root / "runs" / "efficientnet_lite0" / f"{method}.h5",
                loaded,
                dataset,
                get_protocol(protocol),
                ["insertion", "deletion"],
                settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
            )
            table = evaluation.per_image
            assert len(table) == 4 and table[["insertion", "deletion"]].notna().all().all()
            results[method, protocol] = table[["insertion", "deletion"]].mean().to_dict()
    print("\nmean AUCs on 4 photographs, efficientnet_lite0:")
    for (method, protocol), aucs in sorted(results.items()):
        print(
            f"  {method:8} {protocol:8} insertion {aucs['insertion']:.3f} deletion {aucs['deletion']:.3f}"
        )
    return results


@pytest.mark.parametrize("protocol", ["polycam", "rise"])
@pytest.mark.parametrize("method", ["tgrad", "gradcam"])
def test_insertion_beats_the_random_baseline(mean_aucs, method, protocol):
    assert mean_aucs[method, protocol]["insertion"] > mean_aucs["random", protocol]["insertion"]


@pytest.mark.parametrize("method", ["tgrad", "gradcam"])
def test_deletion_beats_the_random_baseline_under_rise(mean_aucs, method):
    """Under `polycam` the blur substrate does not separate methods from noise reliably
    (docs/metrics): those numbers are printed by the fixture, not asserted."""
    assert mean_aucs[method, "rise"]["deletion"] < mean_aucs["random", "rise"]["deletion"]
