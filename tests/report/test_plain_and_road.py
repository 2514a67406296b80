"""`compare` and `report` of a folder with the plain evaluations and the README's ROAD evaluation
under its own protocol: each metric only where it was evaluated, and the metrics that do not read
the ROAD percentages under one protocol."""

import re

import pandas as pd
import pytest
from tiny_run import BATCH_SIZE, METHODS, METRICS, MODEL, PROTOCOLS, STEP

from xaibench.core.errors import ResultsError
from xaibench.metrics import METRICS as REGISTRY
from xaibench.report.build import build_report
from xaibench.report.tables import load_evaluations, paired_tables

ROAD_METRICS = ("avg_drop", "increase", "road_morf", "road_lerf")  # the README's ROAD example
PLAIN = {protocol: f"{protocol}(step={STEP})" for protocol in PROTOCOLS}
ROAD = f"polycam(road_percentages=10_50_90,step={STEP})"
EVALUATED = {
    **{(label, metric): True for label in PLAIN.values() for metric in METRICS},
    (ROAD, "road_morf"): True,
    (ROAD, "road_lerf"): True,
}
"""(protocol, metric) pairs that belong in the tables: avg_drop and increase read no ROAD setting,
so the ROAD evaluation's values of them are the polycam ones, not a protocol of their own."""


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory, invoke):
    """The tiny run (polycam and rise) with the ROAD evaluation of its stores added."""
    run_dir = tiny_run.copy_to(tmp_path_factory.mktemp("road") / tiny_run.run_dir.name)
    stores = [a for method in METHODS for a in ("--store", run_dir / f"{method}.h5")]
    result = invoke(
        "evaluate", "--model", MODEL, *stores, "--data", tiny_run.data, "--step", STEP,
        "--metrics", ",".join(ROAD_METRICS), "--road-percentages", "10,50,90",
        "--batch-size", BATCH_SIZE, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run_dir / "metrics" / f"tgrad-{ROAD}.per_image.csv").exists()
    return run_dir


def table_rows(text: str, first: str) -> list[dict[str, str]]:
    """Heading -> cell of every row of the Markdown tables in `text` whose first heading is
    `first`."""
    rows, inside = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            inside = False
        elif cells[0] == first:
            inside, header = True, cells
        elif inside and not cells[0].startswith(":--"):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def check_tables(text: str) -> None:
    """Every summary cell, ranking row and paired test of `text` is of an evaluated (protocol,
    metric), and every evaluated one is there, with every method and image."""
    summary = table_rows(text.split("## Rankings")[0], "model")
    assert len(summary) == len(METHODS) * (len(PLAIN) + 1)
    shown = set()
    for row in summary:
        for heading, cell in row.items():
            metric = heading.split(" ")[0]
            if REGISTRY.knows(metric):
                assert bool(cell) == ((row["protocol"], metric) in EVALUATED), (row, metric)
                assert not cell.strip("*").startswith("NA"), (row, metric)
                if cell:
                    shown.add((row["protocol"], metric))
    assert shown == set(EVALUATED)
    ranking_text = text.split("## Rankings")[1].split("## Paired")[0]
    assert "<NA>" not in text
    assert all(row["rank"] != "NA" for row in table_rows(ranking_text, "model"))
    ranked = {}
    for section in ranking_text.split("### ")[1:]:
        metric = section.split(" ")[0]
        for row in table_rows(section, "model"):
            ranked.setdefault((row["protocol"], metric), []).append(row["method"])
    assert set(ranked) == set(EVALUATED)
    assert all(sorted(methods) == sorted(METHODS) for methods in ranked.values())
    pairs = table_rows(text.split("## Paired comparisons")[1], "model")
    assert {(row["protocol"], row["metric"]) for row in pairs} == set(EVALUATED)
    assert len(pairs) == len(EVALUATED) * 3  # every two of the three methods
    assert {row["n"] for row in pairs} == {"6"}


def test_compare_shows_each_metric_only_under_the_protocols_it_was_evaluated(run_dir, invoke):
    result = invoke("compare", run_dir / "metrics", "--resamples", 300, "--digits", 5)
    assert result.exit_code == 0, result.output
    check_tables(result.output)
    assert "NA [NA, NA]" not in result.output


def test_metrics_not_reading_the_road_percentages_are_one_protocol(tiny_run, run_dir, invoke):
    result = invoke("compare", run_dir / "metrics", "--resamples", 300, "--digits", 5)
    summary = table_rows(result.output.split("## Rankings")[0], "model")
    for row in summary:
        if row["protocol"] == PLAIN["polycam"]:
            means = tiny_run.per_image(row["method"], "polycam")["avg_drop"].mean() * 100
            assert float(re.match(r"\**(-?[\d.]+) ", row["avg_drop ↓"]).group(1)) == pytest.approx(
                means, abs=1e-5
            )
    road = pd.read_csv(run_dir / "metrics" / f"tgrad-{ROAD}.per_image.csv")
    plain = tiny_run.per_image("tgrad", "polycam")
    assert road["avg_drop"].tolist() == pytest.approx(plain["avg_drop"].tolist())  # same values
    evaluations = load_evaluations([run_dir / "metrics"])
    assert evaluations.groups == [
        (MODEL, ROAD),
        (MODEL, PLAIN["polycam"]),
        (MODEL, PLAIN["rise"]),
    ]
    tables = paired_tables(evaluations)
    avg_drop = tables.rankings[tables.rankings["metric"] == "avg_drop"]
    assert sorted(set(avg_drop["protocol"])) == sorted(PLAIN.values())


def test_report_shows_no_missing_cells_ranks_or_empty_tests(run_dir, tmp_path):
    written = build_report(run_dir, tmp_path, resamples=300)
    check_tables(written["report.md"].read_text())
    html = written["report.html"].read_text()
    for missing in ("NA [NA, NA]", ">nan<", "&lt;NA&gt;", "<NA>"):
        assert missing not in html
    assert html.count(f"tiny_models:tiny_cnn &middot; protocol {ROAD}") == 1
    assert f"tiny_models:tiny_cnn · protocol {ROAD}</h3>" in html  # its rankings and tests
    cells = re.findall(r'<td class="num[^"]*">([^<]*)<small>', html)
    assert len(cells) == len(METHODS) * (len(PLAIN) + 1) * (len(METRICS) + 2)
    assert sum(1 for cell in cells if cell) == len(METHODS) * len(EVALUATED)


def test_protocol_settings_that_are_not_json_are_refused_naming_the_file(run_dir, tmp_path):
    source = run_dir / "metrics" / f"tgrad-{ROAD}.per_image.csv"
    broken = tmp_path / source.name
    pd.read_csv(source).assign(protocol_settings="step=3136").to_csv(broken, index=False)
    with pytest.raises(ResultsError, match=re.escape(f"{broken}: its protocol_settings")):
        load_evaluations([broken])
