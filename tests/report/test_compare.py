"""`xaibench compare` on a real small evaluation: Markdown with the best in bold, LaTeX, refusals."""

import re
import shutil

import pandas as pd
import pytest
from tiny_run import METHODS, METRICS, PROTOCOLS, STEP

from xaibench.core.errors import ResultsError
from xaibench.metrics import METRICS as REGISTRY


def markdown_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """(protocol, method) -> cells of the summary table."""
    rows = {}
    for line in text.split("## Rankings")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 + len(METRICS) and cells[0].startswith("tiny_models"):
            rows[cells[1], cells[2]] = cells[3:]
    return rows


def expected_means(run, protocol: str) -> pd.DataFrame:
    """Method x metric means from the per-image CSVs, in summary units (percent metrics x 100)."""
    means = pd.DataFrame({m: run.per_image(m, protocol)[list(METRICS)].mean() for m in METHODS}).T
    return means * [REGISTRY.get(m).summary_scale for m in METRICS]


def test_markdown_table_bolds_the_best_mean_of_each_group_and_metric(tiny_run, tmp_path, invoke):
    result = invoke("compare", tiny_run.metrics_dir, "--resamples", 500, "--digits", 5)
    assert result.exit_code == 0, result.output
    rows = markdown_rows(result.output)
    assert len(rows) == len(METHODS) * len(PROTOCOLS)
    for protocol in PROTOCOLS:
        means = expected_means(tiny_run, protocol)
        name = f"{protocol}(step={STEP})"
        for column, metric in enumerate(METRICS):
            higher = REGISTRY.get(metric).higher_is_better
            best = means[metric].max() if higher else means[metric].min()
            for method in METHODS:
                cell = rows[name, method][column]
                mean = float(re.match(r"\**(-?[\d.]+) \[", cell).group(1))
                assert mean == pytest.approx(means.loc[method, metric], abs=1e-5)
                is_best = round(means.loc[method, metric], 5) == round(best, 5)
                assert cell.startswith("**") == is_best, (protocol, metric, method, cell)
    assert "### insertion ↑" in result.output and "### deletion ↓" in result.output
    assert "## Paired comparisons" in result.output and "wilcoxon_p" in result.output


def test_latex_table_is_booktabs_with_the_best_in_bold(tiny_run, tmp_path, invoke):
    latex = tmp_path / "table.tex"
    result = invoke(
        "compare", tiny_run.metrics_dir, "--latex", latex, "--resamples", 500, "--no-paired"
    )
    assert result.exit_code == 0, result.output
    text = latex.read_text()
    lines = text.splitlines()
    assert r"\toprule" in lines and r"\bottomrule" in lines
    assert lines.count(r"\midrule") == 2  # under the header, and between the two protocols
    assert r"ins\_del $\uparrow$" in text and r"deletion $\downarrow$" in text
    means = expected_means(tiny_run, "polycam")
    best = means["deletion"].idxmin()
    row = next(line for line in lines if f"polycam(step={STEP}) & {best} &" in line)
    deletion_cell = row.split(" & ")[3 + METRICS.index("deletion")]
    assert deletion_cell.startswith(rf"\textbf{{{means.loc[best, 'deletion']:.3f}}} [")
    assert row.startswith(r"tiny\_models:tiny\_cnn & ")
    pm = tmp_path / "pm.tex"
    invoke("compare", tiny_run.metrics_dir, "--latex", pm, "--latex-style", "pm", "--no-paired")
    assert r"$\pm$" in pm.read_text() and "[" not in pm.read_text().split(r"\midrule")[1]


def test_paired_tests_refuse_different_image_sets_naming_the_files(tiny_run, tmp_path, invoke):
    other = tmp_path / "other"
    other.mkdir()
    subset = tiny_run.per_image("tgrad", "polycam").iloc[:2].assign(method="tgrad_subset")
    target = other / f"tgrad_subset-polycam(step={STEP}).per_image.csv"
    subset.to_csv(target, index=False)
    source = tiny_run.metrics_dir / f"tgrad-polycam(step={STEP}).per_image.csv"
    with pytest.raises(ResultsError, match="different images") as error:
        invoke("compare", source, target)
    assert str(source) in str(error.value) and str(target) in str(error.value)
    result = invoke("compare", source, target, "--no-paired", "--resamples", 200)
    assert result.exit_code == 0 and "tgrad_subset" in result.output


def test_the_same_evaluation_twice_and_foreign_csvs_are_refused(tiny_run, tmp_path, invoke):
    source = tiny_run.metrics_dir / f"gradcam-rise(step={STEP}).per_image.csv"
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    with pytest.raises(ResultsError, match="both hold model") as error:
        invoke("compare", source, copy)
    assert str(source) in str(error.value) and str(copy) in str(error.value)
    foreign = tmp_path / "x.per_image.csv"
    pd.DataFrame({"image_id": ["a"], "insertion": [0.5]}).to_csv(foreign, index=False)
    with pytest.raises(ResultsError, match=r"x.per_image.csv lacks the column\(s\) model"):
        invoke("compare", foreign)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no"):
        invoke("compare", tmp_path / "empty")
