"""bf16 against fp32 on a real model: EfficientNet-Lite0 (ImageNet weights) on real photographs.

The tolerances are those stated in docs/perf-notes.md, set from the differences measured on these
photographs (printed with `pytest -s`).
"""

import shutil

import numpy as np
import pytest
import torch

from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.samples import build_sample_dataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings
from xaibench.store import open_store

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")
pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
METHODS = ("tgrad", "gradcam")
STEP = 8 * 224  # 28 curve points instead of 224, to keep the test short
# Per image, the Pearson correlation of the bf16 map with the fp32 map is at least this
# (measured: T-Grad 0.973-0.995, Grad-CAM 0.9978-0.9999).
MAP_CORRELATION = {"tgrad": 0.96, "gradcam": 0.995}
# |bf16 - fp32| of insertion and deletion AUCs (in [0, 1]), per image and for the mean over the
# images (measured per image: up to 0.055).
AUC_TOLERANCE, MEAN_AUC_TOLERANCE = 0.08, 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """precision -> {"maps": {method: (N, h, w)}, "targets": ..., "aucs": {method: (N, 2)}}."""
    root = tmp_path_factory.mktemp("precision")
    data = build_sample_dataset(root / "data")
    for wnid in ("n03785016", "n04485082"):  # keep the cat, the espresso and the rocket
        shutil.rmtree(data / wnid)
    loaded = load_model("efficientnet_lite0")
    dataset = ImageFolderDataset(
        data, get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    )
    results = {}
    for precision in ("fp32", "bf16"):
        out = root / precision
        generate(
            loaded,
            METHODS,
            dataset,
            out,
            settings=RunSettings.resolve(CPU, batch_size=3, precision=precision, progress=False),
        )
        result = results[precision] = {"maps": {}, "targets": {}, "aucs": {}}
        for method in METHODS:
            path = out / "efficientnet_lite0" / f"{method}.h5"
            with open_store(path) as store:
                result["maps"][method] = store.read_maps(range(len(store)))
                result["targets"][method] = store.targets.copy()
            evaluation = evaluate_store(
                path,
                loaded,
                dataset,
                get_protocol("polycam", step=STEP),
                ["insertion", "deletion"],
                settings=RunSettings.resolve(
                    CPU, batch_size=3, chunk_size=28, precision=precision, progress=False
                ),
            )
            result["aucs"][method] = evaluation.per_image[["insertion", "deletion"]].to_numpy()
    for method in METHODS:
        correlation = map_correlations(results, method)
        gap = np.abs(results["bf16"]["aucs"][method] - results["fp32"]["aucs"][method])
        print(
            f"\n{method}: map correlation bf16 vs fp32 {np.round(correlation, 5)}; "
            f"|AUC bf16 - fp32| insertion {np.round(gap[:, 0], 4)} deletion {np.round(gap[:, 1], 4)}; "
            f"of the means {np.round(np.abs(gap.mean(0)), 4)}"
        )
    return results


def map_correlations(results, method):
    return np.array(
        [
            np.corrcoef(a.ravel(), b.ravel())[0, 1]
            for a, b in zip(
                results["fp32"]["maps"][method], results["bf16"]["maps"][method], strict=True
            )
        ]
    )


@pytest.mark.parametrize("method", METHODS)
def test_bf16_maps_follow_fp32(runs, method):
    np.testing.assert_array_equal(runs["bf16"]["targets"][method], runs["fp32"]["targets"][method])
    assert runs["bf16"]["maps"][method].dtype == np.float32
    assert (map_correlations(runs, method) > MAP_CORRELATION[method]).all()


@pytest.mark.parametrize("method", METHODS)
def test_bf16_insertion_and_deletion_stay_within_the_stated_tolerance(runs, method):
    low, full = runs["bf16"]["aucs"][method], runs["fp32"]["aucs"][method]
    np.testing.assert_allclose(low, full, rtol=0, atol=AUC_TOLERANCE)
    np.testing.assert_allclose(low.mean(0), full.mean(0), rtol=0, atol=MEAN_AUC_TOLERANCE)
