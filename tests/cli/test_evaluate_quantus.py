"""`xaibench evaluate --metrics ...,quantus.NAME` end to end: the column in the per-image table and
the summary with the settings and Quantus's version recorded, `compare` over it, and refusals."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
from tiny_run import MODEL, STEP

from xaibench.cli import main

quantus = pytest.importorskip("quantus")

STORES = ("gradcam", "random")


def evaluate(invoke, tiny_run, out, *extra, stores=STORES):
    paths = [a for method in stores for a in ("--store", tiny_run.store(method))]
    return invoke(
        "evaluate", "--model", MODEL, *paths, "--data", tiny_run.data, "--out", out,
        "--step", STEP, "--batch-size", 4, "--quiet", *extra, catch_exceptions=True,
    )  # fmt: skip


def test_quantus_column_lands_in_the_tables_and_compare_shows_it(tiny_run, tmp_path, invoke):
    out = tmp_path / "m"
    result = evaluate(invoke, tiny_run, out, "--metrics", "insertion,quantus.Sparseness")
    assert result.exit_code == 0, result.output
    assert "quantus.Sparseness" in result.output
    for method in STORES:
        per_image = pd.read_csv(out / f"{method}-polycam(step={STEP}).per_image.csv")
        native = tiny_run.per_image(method, "polycam")
        assert "metric_settings" not in native
        np.testing.assert_array_equal(per_image["insertion"], native["insertion"])
        recorded = json.loads(per_image["metric_settings"].iloc[0])
        assert recorded == {
            "quantus.Sparseness": {
                "library": "quantus",
                "version": quantus.__version__,
                "class": "Sparseness",
                "params": {},
                "seed": 0,
            }
        }
        values = per_image["quantus.Sparseness"]
        assert values.notna().all() and ((values >= 0) & (values <= 1)).all()
        summary = pd.read_csv(out / f"{method}-polycam(step={STEP}).summary.csv")
        row = summary.set_index("metric").loc["quantus.Sparseness"]
        assert row["mean"] == pytest.approx(values.mean())
        assert json.loads(row["metric_settings"]) == recorded
    result = invoke("compare", out, "--resamples", 200)
    assert result.exit_code == 0, result.output
    assert "### quantus.Sparseness ↑" in result.output
    header = next(line for line in result.output.splitlines() if "quantus.Sparseness" in line)
    assert "insertion" in header


def test_settings_go_to_quantus_and_a_resumed_key_differs(tiny_run, tmp_path, invoke):
    out = tmp_path / "m"
    extra = ("--metrics", "quantus.Complexity", "--metric-param", "quantus.Complexity.abs=false")
    result = evaluate(invoke, tiny_run, out, *extra, stores=("gradcam",))
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(out / f"gradcam-polycam(step={STEP}).per_image.csv")
    settings = json.loads(per_image["metric_settings"].iloc[0])["quantus.Complexity"]
    assert settings["params"] == {"abs": False}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--metrics", "quantus.Sparsnes"), "--metrics: unknown metric 'quantus.Sparsnes'. Did you "
         "mean: quantus.Sparseness"),
        (("--metrics", "quantus.MaxSensitivity"), "--metrics: quantus.MaxSensitivity is not "
         "supported: it re-explains perturbed inputs"),
        (("--metrics", "quantus.Sparseness", "--metric-param", "quantus.Sparseness.ab=1"),
         "--metric-param: quantus.Sparseness has no setting 'ab' (its settings: abs,"),
        (("--metrics", "insertion", "--metric-param", "quantus.Sparseness.abs=1"),
         "--metric-param: settings of quantus.Sparseness, which is not among --metrics"),
    ],
)  # fmt: skip
def test_bad_quantus_input_is_one_line_naming_the_flag(tiny_run, tmp_path, capsys, extra, message):
    code, lines = run_main(capsys, tiny_run, tmp_path / "m", *extra)
    assert code != 0 and len(lines) == 1
    assert message in lines[0]


def test_without_quantus_evaluate_names_the_extra(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "quantus", None)  # import quantus raises ImportError
    code, lines = run_main(capsys, tiny_run, tmp_path / "m", "--metrics", "quantus.Sparseness")
    assert code != 0
    assert lines == [
        "error: --metrics: the Quantus metrics need the quantus package: "
        "pip install 'xaibench[quantus]'"
    ]


def run_main(capsys, tiny_run, out, *extra):
    """`xaibench evaluate` through `main`, as at the terminal: exit code and stderr lines."""
    args = ["evaluate", "--model", MODEL, "--store", tiny_run.store("gradcam"), "--data"]
    args += [tiny_run.data, "--out", out, "--step", STEP, "--quiet", *extra]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()
