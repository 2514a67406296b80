"""`xaibench generate` end to end through click's CliRunner, on a tiny model and synthetic images."""

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.data.classes import imagenet_classes
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"


@pytest.fixture()
def generate(invoke):
    """`xaibench generate` of tgrad, gradcam and random at batch size 4 (the shared tiny run's
    settings), with `extra` options."""

    def run(data, out, *extra):
        return invoke(
            "generate", "--model", MODEL, "--saliency", "tgrad,gradcam,random", "--data", data,
            "--out", out, "--batch-size", 4, "--quiet", *extra,
        )  # fmt: skip

    return run


def test_generate_writes_one_complete_store_per_method(image_folder, tmp_path, generate):
    result = generate(image_folder, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "img/s" in result.output
    for method, shape in [("tgrad", (224, 224)), ("gradcam", (14, 14)), ("random", (224, 224))]:
        with open_store(tmp_path / "runs" / "tiny_models_tiny_cnn" / f"{method}.h5") as store:
            assert store.complete and len(store) == 6
            assert store.meta.method == method and store.meta.model == MODEL
            assert store.read_maps([0]).shape == (1, *shape)
            assert np.isfinite(store.read_maps(np.arange(6))).all()
            assert ((store.scores > 0) & (store.scores <= 1)).all()
            assert store.labels.tolist() == [i * 100 for i in range(6)]


def test_rerun_resumes_and_a_killed_run_equals_an_uninterrupted_one(
    image_folder, tmp_path, monkeypatch, generate, tiny_run
):
    from xaibench.store.h5 import H5Store

    original, calls = H5Store.write, []

    def write_then_die(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # the second batch of the first method
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(H5Store, "write", write_then_die)
    interrupted = generate(image_folder, tmp_path / "resumed")
    assert interrupted.exit_code != 0 and "Aborted" in interrupted.output
    monkeypatch.setattr(H5Store, "write", original)

    result = generate(image_folder, tmp_path / "resumed")
    assert result.exit_code == 0, result.output
    assert "2 images" in result.output  # the second batch only
    for method in ("tgrad", "gradcam", "random"):  # against the uninterrupted tiny run
        with (
            open_store(tiny_run.store(method)) as a,
            open_store(tmp_path / "resumed" / f"tiny_models_tiny_cnn/{method}.h5") as b,
        ):
            assert b.complete
            np.testing.assert_allclose(
                b.read_maps(np.arange(6)), a.read_maps(np.arange(6)), rtol=1e-5, atol=1e-7
            )
            np.testing.assert_array_equal(a.targets, b.targets)
    assert "nothing to do" in generate(image_folder, tmp_path / "resumed").output


def test_npz_store_is_keyed_by_file_name(image_folder, tmp_path, generate):
    assert generate(image_folder, tmp_path / "runs", "--store", "npz").exit_code == 0
    path = tmp_path / "runs" / "tiny_models_tiny_cnn" / "tgrad.npz"
    with np.load(path, allow_pickle=False) as archive:
        assert "img0.png" in archive.files and archive["img0.png"].shape == (224, 224)


def test_corrupt_image_is_named_and_skip_bad_skips_it(image_folder, tmp_path, generate, invoke):
    bad = image_folder / imagenet_classes().wnid(0) / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    result = invoke(
        "generate", "--model", MODEL, "--saliency", "gradcam", "--data", image_folder,
        "--out", tmp_path / "runs", "--quiet", catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and "broken.jpg" in str(result.exception)
    result = generate(image_folder, tmp_path / "skipping", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output


def test_unknown_method_lists_close_names(image_folder, invoke):
    result = invoke(
        "generate", "--model", MODEL, "--saliency", "tgard", "--data", image_folder,
        catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and "tgrad" in str(result.exception)


def test_skipped_images_complete_the_store_and_evaluate_leaves_them_out(
    image_folder, tmp_path, generate, invoke
):
    bad = image_folder / imagenet_classes().wnid(0) / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    result = generate(image_folder, tmp_path / "runs", "--store", "npz", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "1 image(s) skipped" in result.output
    store_path = tmp_path / "runs" / "tiny_models_tiny_cnn" / "gradcam.npz"
    with open_store(store_path) as store:
        assert store.complete and len(store) == 7
        row = store.ids.index(f"{imagenet_classes().wnid(0)}/broken.jpg")
        assert store.targets[row] == -1 and np.isnan(store.read_maps([row])).all()
    # the broken file is still there: evaluate never reads the skipped row
    result = invoke(
        "evaluate", "--model", MODEL, "--store", store_path, "--data", image_folder,
        "--out", tmp_path / "metrics", "--metrics", "deletion,avg_drop", "--step", 3136, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "metrics" / "gradcam-polycam(step=3136).per_image.csv")
    assert len(per_image) == 6 and "broken.jpg" not in " ".join(per_image["image_id"])


def test_target_label_explains_the_ground_truth_class(image_folder, tmp_path, generate):
    result = generate(image_folder, tmp_path / "runs", "--target", "label")
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "runs" / "tiny_models_tiny_cnn" / "gradcam.h5") as store:
        assert store.meta.target == "label"
        np.testing.assert_array_equal(store.targets, store.labels)


def test_duplicate_methods_are_refused(image_folder, invoke):
    result = invoke(
        "generate", "--model", MODEL, "--saliency", "random,random", "--data", image_folder,
        catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and "twice" in str(result.exception)


def test_method_settings_reach_the_methods_and_the_store(image_folder, tmp_path, invoke):
    result = invoke(
        "generate",
        "--model",
        MODEL,
        "--saliency",
        "random,rise",
        "--data",
        image_folder,
        "--out",
        tmp_path,
        "--param",
        "random.resolution=7",
        "--param",
        "masks=16",
        "--param",
        "rise.cell=4",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "random.h5") as store:
        assert store.read_maps([0]).shape == (1, 7, 7)
        assert store.meta.method_params["resolution"] == 7
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "rise.h5") as store:
        assert store.meta.method_params["masks"] == 16 and store.meta.method_params["cell"] == 4


def test_generate_on_a_vision_transformer(image_folder, tmp_path, invoke):
    # torchvision's ViT class, tiny (tests/tiny_models.py): 7 x 7 patches and a class token
    model = "tiny_models:tiny_vit"
    methods = ("gradcam", "eigencam", "rollout", "attn_grad")
    result = invoke(
        "generate", "--model", model, "--saliency", ",".join(methods), "--data", image_folder,
        "--out", tmp_path / "runs", "--batch-size", 4, "--param", "rollout.head_fusion=max",
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for method in methods:
        with open_store(tmp_path / "runs" / "tiny_models_tiny_vit" / f"{method}.h5") as store:
            assert store.complete and len(store) == 6
            maps = store.read_maps(np.arange(6))
            assert maps.shape == (6, 7, 7) and np.isfinite(maps).all() and maps.max() > 0
            if method == "gradcam":
                assert store.meta.method_params == {"layer": "encoder.layers.encoder_layer_1.ln_1"}
            if method == "rollout":
                assert store.meta.method_params == {"head_fusion": "max", "discard_ratio": 0.0}


def test_deterministic_reaches_the_forward_settings_and_keeps_the_cpu_maps(
    image_folder, tmp_path, generate, monkeypatch
):
    from xaibench.methods.cam import GradCAM

    seen = []
    explain = GradCAM.explain

    def spied(self, images, targets):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return explain(self, images, targets)

    monkeypatch.setattr(GradCAM, "explain", spied)
    assert generate(image_folder, tmp_path / "plain").exit_code == 0
    assert seen and not any(seen)
    seen.clear()
    result = generate(image_folder, tmp_path / "deterministic", "--deterministic")
    assert result.exit_code == 0, result.output
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    for method in ("tgrad", "gradcam"):
        stores = [
            tmp_path / run / "tiny_models_tiny_cnn" / f"{method}.h5"
            for run in ("plain", "deterministic")
        ]
        with open_store(stores[0]) as plain, open_store(stores[1]) as repeated:
            assert np.array_equal(plain.read_maps(np.arange(6)), repeated.read_maps(np.arange(6)))
