"""The sanity-check pipeline: the flag, reproducibility, batch independence and resuming."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sanity_helpers import interrupt_randomise

from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.preprocess import Preprocess
from xaibench.models import load_model
from xaibench.pipelines.sanity import sanity_check
from xaibench.pipelines.settings import RunSettings

MODEL = "tiny_models:tiny_cnn"


@pytest.fixture()
def small_images(image_folder):
    return ImageFolderDataset(image_folder, Preprocess(resize=(32, 32)))


def run(method, dataset, batch_size=4, **kwargs):
    settings = RunSettings.resolve(torch.device("cpu"), batch_size=batch_size, progress=False)
    return sanity_check(load_model(MODEL), method, dataset, settings, **kwargs)


@pytest.mark.parametrize("method", ["centre", "constant", "random"])
def test_maps_that_ignore_the_model_are_flagged(method, small_images):
    result = run(method, small_images)
    assert result.flagged and result.final_spearman == 1.0
    assert (result.table["ssim"] == 1.0).all()


@pytest.mark.parametrize("method", ["gradient", "tgrad"])
def test_gradient_methods_pass(method, small_images):
    result = run(method, small_images)
    assert not result.flagged and result.final_spearman < 0.5
    first = result.table[result.table["stage"] == 0]
    assert (first["spearman"] == 1.0).all() and (first["layer"] == "").all()
    assert result.table.groupby("stage")["spearman"].mean().iloc[1:].max() < 0.9


def test_runs_are_reproducible_batch_independent_and_leave_the_model_alone(small_images):
    loaded = load_model(MODEL)
    before = copy.deepcopy(loaded.model.state_dict())
    cpu = torch.device("cpu")
    tables = [
        sanity_check(
            loaded,
            "gradinput",
            small_images,
            settings=RunSettings.resolve(cpu, batch_size=b, progress=False),
        )
        for b in (4, 6)
    ]
    pd.testing.assert_frame_equal(tables[0].table, tables[1].table, atol=1e-6, rtol=0)
    reseeded = sanity_check(
        loaded,
        "gradinput",
        small_images,
        settings=RunSettings.resolve(cpu, batch_size=4, progress=False),
        seed=1,
    )
    assert not np.allclose(reseeded.table["spearman"], tables[0].table["spearman"])
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_interrupted_run_resumes_from_its_checkpoint(small_images, tmp_path, monkeypatch):
    full = run("gradinput", small_images).table
    checkpoint = tmp_path / "gradinput.checkpoint.npz"
    interrupt_randomise(monkeypatch, 6)  # in the second batch (4 stages per batch)
    with pytest.raises(KeyboardInterrupt):
        run("gradinput", small_images, checkpoint=checkpoint)
    with np.load(checkpoint) as saved:
        assert len(set(saved["image_id"])) == 4
    monkeypatch.undo()
    resumed = run("gradinput", small_images, checkpoint=checkpoint).table
    pd.testing.assert_frame_equal(resumed, full, atol=1e-6, rtol=0)


def test_another_runs_rows_are_not_resumed_after_a_save_cut_short(
    small_images, tmp_path, monkeypatch
):
    from xaibench.pipelines.checkpoint import Checkpoint

    checkpoint = tmp_path / "gradinput.checkpoint.npz"
    interrupt_randomise(monkeypatch, 6)  # seed 0: the rows of the first batch are saved
    with pytest.raises(KeyboardInterrupt):
        run("gradinput", small_images, checkpoint=checkpoint)
    monkeypatch.undo()

    def cut(self, arrays):  # killed while its first save writes
        raise KeyboardInterrupt

    interrupt_randomise(monkeypatch, 2)
    monkeypatch.setattr(Checkpoint, "save", cut)
    with pytest.raises(KeyboardInterrupt):
        run("gradinput", small_images, checkpoint=checkpoint, seed=1)
    monkeypatch.undo()
    resumed = run("gradinput", small_images, checkpoint=checkpoint, seed=1).table
    fresh = run("gradinput", small_images, seed=1).table
    pd.testing.assert_frame_equal(resumed, fresh, atol=1e-6, rtol=0)


def test_sanity_runs_at_fp32_or_tf32_and_refuses_other_settings(tmp_path):
    from tiny_run import make_images

    from xaibench.core.errors import ConfigError
    from xaibench.data.dataset import ImageFolderDataset
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.pipelines.sanity import sanity_check
    from xaibench.pipelines.settings import RunSettings

    loaded = load_model("tiny_models:tiny_cnn")
    dataset = ImageFolderDataset(
        make_images(tmp_path / "val", 2), get_protocol("polycam").preprocess()
    )

    def run(**options):
        settings = RunSettings.resolve("cpu", batch_size=2, progress=False, **options)
        return sanity_check(loaded, "gradient", dataset, settings, depth=1)

    fp32, tf32 = run(precision="fp32"), run(precision="tf32")  # the CUDA default
    pd.testing.assert_frame_equal(fp32.table, tf32.table)  # the same on a CPU
    with pytest.raises(ConfigError, match="float32"):
        run(precision="bf16")
    for threshold in (float("nan"), 1.5):
        with pytest.raises(ConfigError, match="in \\[-1, 1\\]"):
            sanity_check(
                loaded, "gradient", dataset, RunSettings.resolve("cpu"), threshold=threshold
            )
