"""Sanity check: similarity measures against scipy and scikit-image, the stages, the flag, the CLI."""

import copy
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from xaibench.cli import cli
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.preprocess import Preprocess
from xaibench.models import load_model
from xaibench.pipelines.sanity import sanity_check
from xaibench.pipelines.settings import RunSettings
from xaibench.results.layout import sanity_checkpoint
from xaibench.results.sanity import SANITY_COLUMNS
from xaibench.sanity import (
    randomisation_stages,
    randomise,
    spearman,
    ssim,
)

MODEL = "tiny_models:tiny_cnn"


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.random((4, 9, 7))
    b = a + rng.normal(scale=0.3, size=a.shape)
    a[1] = np.floor(a[1] * 3)  # many ties
    b[2] = np.round(b[2], 1)
    got = spearman(torch.tensor(a), torch.tensor(b)).numpy()
    want = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_equal_maps_correlate_fully_even_when_constant():
    constant = torch.full((2, 5, 5), 0.3)
    other = torch.rand(2, 5, 5)
    assert spearman(constant, constant).tolist() == [1.0, 1.0]
    assert torch.isnan(spearman(constant, other)).all()


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(1)
    a = rng.random((3, 20, 17))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    b[2] = a[2]
    got = ssim(torch.tensor(a), torch.tensor(b)).numpy()
    want = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert got[2] == pytest.approx(1.0)


def blocks_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
            body=nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(4, 10),
        )
    ).eval()


def test_stages_follow_the_forward_pass_backwards_at_either_granularity():
    model = blocks_model()
    modules = randomisation_stages(model, (16, 16))
    assert [s.name for s in modules] == ["head", "body.0", "stem.1", "stem.0"]
    blocks = randomisation_stages(model, (16, 16), depth=1)
    assert [(s.name, s.modules) for s in blocks] == [
        ("head", ("head",)),
        ("body", ("body.0",)),
        ("stem", ("stem.0", "stem.1")),
    ]


def test_randomisation_is_cumulative_and_reproducible():
    model = blocks_model()
    stages = randomisation_stages(model, (16, 16))
    runs = []
    for _ in range(2):
        copy_ = copy.deepcopy(model)
        states = []
        for index, stage in enumerate(stages, 1):
            randomise(copy_, stage, seed=3, index=index)
            states.append({k: v.clone() for k, v in copy_.state_dict().items()})
        runs.append(states)
    original = model.state_dict()
    for first, second in zip(*runs, strict=True):
        assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, same weights
    after_two = runs[0][1]  # head and body.0 randomised, the stem untouched
    assert not torch.equal(after_two["head.weight"], original["head.weight"])
    assert not torch.equal(after_two["body.0.weight"], original["body.0.weight"])
    assert torch.equal(after_two["stem.0.weight"], original["stem.0.weight"])
    assert torch.equal(runs[0][2]["head.weight"], after_two["head.weight"])  # kept, not redrawn
    other = copy.deepcopy(model)
    randomise(other, stages[0], seed=4, index=1)
    assert not torch.equal(other.state_dict()["head.weight"], runs[0][0]["head.weight"])


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


def test_sanity_command_writes_the_table_and_the_plot(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["sanity", "--model", MODEL, "--saliency", "centre", "--data", str(image_folder),
         "--limit", "3", "--quiet", "--depth", "1", "--seed", "5"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "tiny_models_tiny_cnn" / "sanity"
    table = pd.read_csv(out / "centre.sanity.csv", keep_default_na=False)
    assert tuple(table.columns) == SANITY_COLUMNS
    assert table["stage"].tolist() == [s for s in range(5) for _ in range(3)]
    assert table["layer"].tolist()[::3] == ["", "8", "3", "1", "0"]
    with Image.open(out / "centre.sanity.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    assert "centre: mean Spearman 1.000" in result.output and "FLAGGED" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["centre.sanity.csv", "centre.sanity.png"]


def interrupt_randomise(monkeypatch, at: int) -> list:
    """Count the calls of sanity's `randomise` (a list of 1s) and raise KeyboardInterrupt at call
    number `at`; clearing the list starts the count again."""
    import xaibench.pipelines.sanity as sanity_run

    calls = []
    real = sanity_run.randomise

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity_run, "randomise", counted)
    return calls


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


def test_the_command_resumes_from_its_checkpoint_then_removes_it(
    image_folder, tmp_path, monkeypatch
):

    out = tmp_path / "out"
    args = ["sanity", "--model", MODEL, "--saliency", "gradinput", "--data", str(image_folder),
            "--limit", "4", "--batch-size", "2", "--depth", "1", "--quiet", "--out", str(out)]  # fmt: skip
    calls = interrupt_randomise(monkeypatch, 6)  # in the second batch (4 stages per batch)
    assert CliRunner().invoke(cli, args).exit_code != 0
    saved = sanity_checkpoint(out, "gradinput")
    assert saved.exists() and saved.name.startswith(".")
    with np.load(saved) as rows:
        assert len(set(rows["image_id"])) == 2
    calls.clear()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls == [1] * 4  # only the second batch of two images is explained again
    assert not saved.exists()
    assert pd.read_csv(out / "gradinput.sanity.csv")["image_id"].nunique() == 4


def test_stage_summary_is_the_t_interval_of_each_stage_and_statistic():
    from scipy import stats

    from xaibench.results.sanity import SANITY_STATISTICS, stage_summary

    rng = np.random.default_rng(3)
    stages = [(0, ""), (1, "8"), (2, "3"), (3, "1")]
    rows = [
        (f"img{i}", stage, layer, *rng.normal(size=3))
        for stage, layer in stages
        for i in range(1 if stage == 3 else 5)
    ]
    table = pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
    table.loc[[1, 2], "ssim"] = np.nan
    table.loc[table["stage"] == 2, "spearman"] = np.nan
    summary = stage_summary(table, confidence=0.9)
    assert [tuple(r) for r in summary[["stage", "layer", "statistic"]].itertuples(index=False)] == [
        (stage, layer, name) for stage, layer in stages for name in SANITY_STATISTICS
    ]
    for row in summary.itertuples(index=False):
        values = table.loc[table["stage"] == row.stage, row.statistic].dropna().to_numpy()
        if len(values) == 0:
            assert np.isnan([row.mean, row.ci_low, row.ci_high]).all()
            continue
        assert row.mean == pytest.approx(values.mean(), rel=1e-12)
        if len(values) == 1:
            assert np.isnan(row.ci_low) and np.isnan(row.ci_high)
            continue
        low, high = stats.t.interval(0.9, len(values) - 1, values.mean(), stats.sem(values))
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), rel=1e-12)
