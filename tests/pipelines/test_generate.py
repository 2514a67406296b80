"""Library-level generation: CAM methods on one layer share one forward and backward per batch."""

import numpy as np
import torch

from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings
from xaibench.store import open_store

CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")


def run(image_folder, out, methods):
    loaded = load_model("tiny_models:tiny_cnn")
    forwards = []
    loaded.model.register_forward_hook(lambda m, args, out: forwards.append(args[0].shape[0]))
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    generate(
        loaded,
        methods,
        dataset,
        out,
        settings=RunSettings.resolve(torch.device("cpu"), batch_size=4, progress=False),
    )
    return [n for n in forwards if n > 1]  # leave out the one-image traces that find the layer


def test_cam_methods_on_one_layer_share_one_pass(image_folder, tmp_path):
    shared_forwards = run(image_folder, tmp_path / "shared", CAMS)
    assert shared_forwards == [4, 2]  # one forward per batch of 6 images, not one per method
    for method in CAMS:
        assert run(image_folder, tmp_path / method, (method,)) == [4, 2]
        name = f"tiny_models_tiny_cnn/{method}.h5"
        with (
            open_store(tmp_path / "shared" / name) as shared,
            open_store(tmp_path / method / name) as alone,
        ):
            rows = np.arange(len(shared))
            np.testing.assert_allclose(
                shared.read_maps(rows), alone.read_maps(rows), rtol=1e-5, atol=1e-7
            )
            np.testing.assert_array_equal(shared.targets, alone.targets)


def test_compression_changes_how_maps_are_stored_not_what_they_are(invoke, image_folder, tmp_path):
    import h5py

    stores = {}
    for compression in ("lzf", "gzip", "none"):
        out = tmp_path / compression
        invoke("generate", "--model", "tiny_models:tiny_cnn", "--saliency", "gradient",
               "--data", image_folder, "--out", out, "--compression", compression, "--quiet")  # fmt: skip
        stores[compression] = out / "tiny_models_tiny_cnn" / "gradient.h5"
    for compression, path in stores.items():
        with h5py.File(path, "r") as f:
            assert f["maps"].compression == (None if compression == "none" else compression)
        with open_store(path) as store, open_store(stores["lzf"]) as reference:
            rows = np.arange(len(store))
            np.testing.assert_array_equal(store.read_maps(rows), reference.read_maps(rows))


def test_an_unknown_compression_is_refused_before_anything_is_written(image_folder, tmp_path):
    import pytest

    from xaibench.core.errors import ConfigError

    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    settings = RunSettings.resolve(torch.device("cpu"), batch_size=4, progress=False)
    with pytest.raises(ConfigError, match="'zstd': use one of lzf, gzip, None") as error:
        generate(load_model("tiny_models:tiny_cnn"), ["gradient"], dataset, tmp_path / "runs", settings,
                 compression="zstd")  # fmt: skip
    assert error.value.param == "compression" and not (tmp_path / "runs").exists()
