"""`xaibench sanity` end to end through click's CliRunner: the table and the plot, resuming."""

import numpy as np
import pandas as pd
from PIL import Image
from sanity_helpers import interrupt_randomise

from xaibench.results.layout import sanity_checkpoint
from xaibench.results.sanity import SANITY_COLUMNS

MODEL = "tiny_models:tiny_cnn"


def test_sanity_command_writes_the_table_and_the_plot(image_folder, tmp_path, monkeypatch, invoke):
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "sanity", "--model", MODEL, "--saliency", "centre", "--data", image_folder,
        "--limit", 3, "--quiet", "--depth", 1, "--seed", 5,
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


def test_the_command_resumes_from_its_checkpoint_then_removes_it(
    image_folder, tmp_path, monkeypatch, invoke
):
    out = tmp_path / "out"
    args = ["sanity", "--model", MODEL, "--saliency", "gradinput", "--data", str(image_folder),
            "--limit", "4", "--batch-size", "2", "--depth", "1", "--quiet", "--out", str(out)]  # fmt: skip
    calls = interrupt_randomise(monkeypatch, 6)  # in the second batch (4 stages per batch)
    assert invoke(*args, catch_exceptions=True).exit_code != 0
    saved = sanity_checkpoint(out, "gradinput")
    assert saved.exists() and saved.name.startswith(".")
    with np.load(saved) as rows:
        assert len(set(rows["image_id"])) == 2
    calls.clear()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls == [1] * 4  # only the second batch of two images is explained again
    assert not saved.exists()
    assert pd.read_csv(out / "gradinput.sanity.csv")["image_id"].nunique() == 4
