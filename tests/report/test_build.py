"""`xaibench report` on a real small run: every file, with the run's methods, numbers and settings."""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny_run import METHODS, METRICS, PROTOCOLS, STEP

from xaibench.core.errors import ResultsError
from xaibench.metrics import METRICS as REGISTRY
from xaibench.pipelines.sanity import write_sanity
from xaibench.report.build import build_report
from xaibench.results.sanity import SANITY_COLUMNS, SanityResult

LAYERS = ["original", "8", "3", "1", "0"]


def synthetic_sanity(run_dir, methods=("tgrad", "random")):
    """Synthetic `xaibench sanity` tables, written by its writer: tgrad decays with
    randomisation, random stays at 1."""
    folder = run_dir / "sanity"
    rng = np.random.default_rng(0)
    for method in methods:
        rows = []
        for image in ("a.png", "b.png"):
            for stage, layer in enumerate(LAYERS):
                value = 1.0 if method == "random" else 0.5**stage + rng.normal(0, 0.01)
                rows.append((image, stage, layer, value, abs(value), 0.9 * value))
        table = pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
        write_sanity(SanityResult(method, table, stages=[]), folder)
    return folder


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory, invoke):
    run_dir = tiny_run.copy_to(tmp_path_factory.mktemp("copy") / tiny_run.run_dir.name)
    synthetic_sanity(run_dir)
    out = tmp_path_factory.mktemp("report")
    result = invoke(
        "report", run_dir, "--out", out, "--data", tiny_run.data, "--images", 3,
        "--resamples", 500,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_report_writes_every_file(report):
    names = sorted(p.name for p in report.iterdir())
    curves = [f"curves-tiny_models_tiny_cnn-{p}_step_{STEP}.png" for p in PROTOCOLS]
    assert names == sorted(["report.html", "report.md", "saliency-grid.png", "sanity.png", *curves])
    for name in names:
        if name.endswith(".png"):
            assert Image.open(report / name).format == "PNG"
    width, height = Image.open(report / "saliency-grid.png").size
    assert (width, height) == (240 * (1 + len(METHODS)), 240 * 3)  # 3 images x (image + methods)


def test_html_is_self_contained_and_holds_the_runs_numbers(tiny_run, report):
    html = (report / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for uri in sources:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert len(sources) == 4  # two curve figures, the grid, the sanity plot
    for protocol in PROTOCOLS:
        for method in METHODS:
            means = tiny_run.per_image(method, protocol)[list(METRICS)].mean()
            for metric in METRICS:
                shown = f"{means[metric] * REGISTRY.get(metric).summary_scale:.3f}"
                assert f">{shown}<small>" in html, (protocol, method, metric)
    settings = json.loads(tiny_run.per_image("tgrad", "rise")["protocol_settings"].iloc[0])
    assert '<th>insertion_substrate</th><td class="code">rise_blur</td>' in html
    assert settings["insertion_substrate"] == "rise_blur"
    assert "Paired tests" in html and "wilcoxon_p" in html and "tgrad.h5" in html


def test_markdown_links_the_pngs_and_holds_the_tables(tiny_run, report):
    markdown = (report / "report.md").read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (report / link).is_file(), link
    assert len(re.findall(r"!\[", markdown)) == 4
    means = tiny_run.per_image("gradcam", "polycam")[["avg_drop"]].mean() * 100
    row = next(
        line for line in markdown.splitlines() if f"polycam(step={STEP}) | gradcam |" in line
    )
    assert f"{means['avg_drop']:.3f} [" in row
    assert "| step | `3136` |" in markdown and "## Rankings" in markdown


def test_without_data_the_grid_is_skipped_and_the_report_says_so(tiny_run, tmp_path):
    written = build_report(tiny_run.run_dir, tmp_path, resamples=200)
    assert "saliency-grid.png" not in written and not (tmp_path / "saliency-grid.png").exists()
    for name in ("report.html", "report.md"):
        text = (tmp_path / name).read_text()
        assert "No image folder was given" in text and "`xaibench report RUN --data DIR`" in text
        assert "No sanity-check results" in text


def test_sanity_tables_of_another_layout_are_refused_naming_the_file(tiny_run, tmp_path):
    run = tiny_run.copy_to(tmp_path / "run")
    (run / "sanity").mkdir()
    bad = run / "sanity" / "tgrad.sanity.csv"
    pd.DataFrame({"image_id": ["a"], "stage": [0], "spearman": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ResultsError, match=re.escape(str(bad))):
        build_report(run, tmp_path / "out", resamples=200)


def test_a_run_without_metrics_is_refused(tmp_path):
    with pytest.raises(ResultsError, match="no metrics/ folder"):
        build_report(tmp_path, tmp_path / "out")
