"""Evaluation outputs of several runs merged into comparison tables: Markdown, LaTeX, paired tests.

Reads the per-image CSVs `evaluate` writes (`METHOD-PROTOCOL.per_image.csv`); a row of the merged
table is a method, a column a metric, and (model, protocol) identify the groups within which the
best value is marked and the paired tests are run. A metric appears only under the protocols it was
evaluated under, and evaluations whose protocols differ only in settings a metric does not read
(`xaibench.metrics.protocols.SETTINGS_READ`) are one protocol for that metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from xaibench.core.choices import LATEX_STYLES
from xaibench.core.errors import ResultsError
from xaibench.metrics.base import METRICS
from xaibench.metrics.protocols import PROTOCOLS, SETTINGS, get_protocol, settings_read_by
from xaibench.results.layout import PER_IMAGE_SUFFIX
from xaibench.results.paired import GROUP_COLUMNS, higher_is_better, paired_comparisons, rankings
from xaibench.results.stats import (
    BOOTSTRAP_RESAMPLES,
    interval_columns,
    summarise,
    summary_markdown,
)

REQUIRED_COLUMNS = ("image_id", "model", "method", "protocol", "protocol_settings")
KEYS = (*GROUP_COLUMNS, "method")


@dataclass
class Block:
    """Metrics evaluated on the same rows under the same protocols as shown: `rows` holds those rows
    of the stacked per-image tables (in their order), with `protocol` the protocol the metrics are
    shown under and `protocol_settings` only the settings they read (`settings_read_by`)."""

    metrics: list[str]
    rows: pd.DataFrame


@dataclass
class Evaluations:
    """per_image: the stacked per-image tables with a `source` column (the file each row came
    from); metrics: the metric columns found, in order of appearance; blocks: the evaluations of
    each metric as compared (`metric_blocks`), whose rows and metrics every table is made of."""

    per_image: pd.DataFrame
    metrics: list[str]
    blocks: list[Block]

    @cached_property
    def groups(self) -> list[tuple[str, str]]:
        """(model, protocol) as shown, in order of appearance."""
        shown = pd.concat([block.rows[list(GROUP_COLUMNS)] for block in self.blocks])
        return list(dict.fromkeys(shown.sort_index(kind="stable").itertuples(False, None)))


def per_image_files(paths: Iterable[Path]) -> list[Path]:
    """The per-image CSVs named by `paths`: files as given, folders searched (not recursively)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(path.glob(f"*{PER_IMAGE_SUFFIX}"))
            if not inside:
                raise ResultsError(
                    f"{path} holds no *{PER_IMAGE_SUFFIX}; give the metrics/ folder that "
                    "`xaibench evaluate` wrote, or the CSV files themselves"
                )
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise ResultsError(f"{path} does not exist; give evaluation folders or per-image CSVs")
    return list(dict.fromkeys(found))


def read_per_image(path: Path) -> pd.DataFrame:
    """One per-image CSV of `evaluate`, with a `source` column; ResultsError if it is not one."""
    try:
        frame = pd.read_csv(path, dtype={c: str for c in REQUIRED_COLUMNS})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ResultsError(
            f"cannot read {path} ({error}); give a per-image CSV of evaluate"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(
            f"{path} lacks the column(s) {', '.join(missing)}; it is not a per-image table written "
            "by `xaibench evaluate`"
        )
    if not any(METRICS.knows(c) for c in frame.columns):
        raise ResultsError(f"{path} has no metric column (see `xaibench list metrics`)")
    return frame.assign(source=str(path))


def load_evaluations(paths: Iterable[Path]) -> Evaluations:
    """Stack the per-image tables under `paths`; one (model, protocol, method) per file.

    ResultsError naming both files when two of them hold the same (model, protocol, method).
    """
    frames = [read_per_image(path) for path in per_image_files(paths)]
    if not frames:
        raise ResultsError("no evaluation to compare; give folders or per-image CSVs")
    owner: dict[tuple, str] = {}
    for frame in frames:
        for key in dict.fromkeys(frame[list(KEYS)].itertuples(False, None)):
            source = frame["source"].iloc[0]
            if key in owner and owner[key] != source:
                raise ResultsError(
                    f"{owner[key]} and {source} both hold model {key[0]}, protocol {key[1]}, "
                    f"method {key[2]}; give only one of them"
                )
            owner[key] = source
    per_image = pd.concat(frames, ignore_index=True)
    metrics = [c for c in dict.fromkeys(c for f in frames for c in f.columns) if METRICS.knows(c)]
    held = {frame["source"].iloc[0]: set(frame.columns) for frame in frames}
    return Evaluations(per_image, metrics, metric_blocks(per_image, metrics, held))


def metric_blocks(
    per_image: pd.DataFrame, metrics: Sequence[str], held: Mapping[str, set[str]]
) -> list[Block]:
    """The evaluations of each metric as compared, metrics with the same rows in one `Block`.

    per_image: the stacked tables, one (model, protocol, method) per file; held: file -> its
    columns. A metric is taken only from the files that have its column. Evaluations of one
    model under protocols of the same name that agree on every setting the metric reads are one
    protocol for it, shown as the name with the overrides they share (`get_protocol`), so that
    "polycam" and "polycam(road_percentages=10_50_90)" are one protocol for insertion. A method
    held by several of them is taken from the evaluation under the shown protocol itself, else
    from the first.
    """
    unit = per_image.groupby(list(KEYS), sort=False).ngroup()
    units = per_image.drop_duplicates(list(KEYS)).reset_index(drop=True)
    settings = [
        _settings(text, source)
        for text, source in zip(units["protocol_settings"], units["source"], strict=True)
    ]
    blocks: dict[tuple, list[str]] = {}
    for metric in metrics:
        shown = _shown_protocols(units, settings, held, metric)
        blocks.setdefault(tuple(sorted(shown.items())), []).append(metric)
    out = []
    for shown_items, names in blocks.items():
        shown = dict(shown_items)
        read = [k for k in SETTINGS if any(k in settings_read_by(m) for m in names)]
        reduced = {
            i: json.dumps({k: settings[i].get(k) for k in read}, sort_keys=True) for i in shown
        }
        mask = unit.isin(list(shown))
        rows = per_image[mask].assign(
            protocol=unit[mask].map(shown), protocol_settings=unit[mask].map(reduced)
        )
        out.append(Block(names, rows))
    return out


def _settings(text: str, source: str) -> dict:
    """A file's `protocol_settings`, the JSON object `evaluate` records."""
    try:
        settings = json.loads(text)
    except (TypeError, ValueError):
        settings = None
    if not isinstance(settings, dict):
        raise ResultsError(f"{source}: its protocol_settings {text!r} are not a JSON object")
    return settings


def _shown_protocols(
    units: pd.DataFrame, settings: list[dict], held: Mapping[str, set[str]], metric: str
) -> dict[int, str]:
    """Unit (row of `units`) -> the protocol its `metric` is shown under, for the units taken."""
    read = settings_read_by(metric)
    models, labels, methods, sources = (list(units[c]) for c in (*KEYS, "source"))
    same: dict[tuple, list[int]] = {}
    for i, label in enumerate(labels):
        if metric not in held[sources[i]]:
            continue
        name = label.partition("(")[0]
        if name in PROTOCOLS and all(k in settings[i] for k in read):
            key = (models[i], name, json.dumps([settings[i][k] for k in read]))
        else:
            key = (models[i], label, None)
        same.setdefault(key, []).append(i)
    shown: dict[int, str] = {}
    for members in same.values():
        label = _shared_label([labels[i] for i in members], [settings[i] for i in members])
        chosen: dict[str, int] = {}
        for i in sorted(members, key=lambda i: labels[i] != label):
            chosen.setdefault(methods[i], i)
        shown.update(dict.fromkeys(chosen.values(), label))
    return shown


def _shared_label(labels: list[str], settings: list[dict]) -> str:
    """The protocol name of evaluations labelled `labels` with `settings`, seen as one: their label
    when they share it, else the named protocol with the overrides they all have."""
    if len(set(labels)) == 1:
        return labels[0]
    common = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in settings[0].items()
        if k in SETTINGS and all(k in other and other[k] == v for other in settings)
    }
    return get_protocol(labels[0].partition("(")[0], **common).name


def comparison_summary(
    evaluations: Evaluations, resamples: int = BOOTSTRAP_RESAMPLES
) -> pd.DataFrame:
    """`summarise` per (model, protocol, method) of the metrics evaluated there: groups, methods
    and metrics in the order the evaluations were given."""
    table = pd.concat(
        [
            summarise(block.rows, block.metrics, by=KEYS, resamples=resamples)
            for block in evaluations.blocks
        ],
        ignore_index=True,
    )
    group = {key: i for i, key in enumerate(evaluations.groups)}
    method = {name: i for i, name in enumerate(dict.fromkeys(evaluations.per_image["method"]))}
    metric = {name: i for i, name in enumerate(evaluations.metrics)}
    order = [
        (group[m, p], method[name], metric[row_metric])
        for m, p, name, row_metric in table[[*KEYS, "metric"]].itertuples(False, None)
    ]
    return table.iloc[sorted(range(len(table)), key=order.__getitem__)].reset_index(drop=True)


@dataclass
class Cell:
    """One (method, metric) entry: mean, interval and whether it is the best of its group."""

    mean: float
    low: float
    high: float
    best: bool


def comparison_cells(
    summary: pd.DataFrame, interval: str = "bootstrap"
) -> tuple[list[tuple], list[str], dict[tuple, Cell]]:
    """Rows (model, protocol, method), metrics, and (row, metric) -> `Cell`.

    The best mean of each (model, protocol, metric) follows the metric's direction; equal best
    means are all best. A group of one method has no best.
    """
    low, high = interval_columns(interval)
    rows = list(dict.fromkeys(summary[list(KEYS)].itertuples(False, None)))
    metrics = list(dict.fromkeys(summary["metric"]))
    cells: dict[tuple, Cell] = {}
    for (model, protocol, metric), group in summary.groupby([*GROUP_COLUMNS, "metric"], sort=False):
        means = group["mean"].to_numpy(dtype=float)
        finite = means[np.isfinite(means)]
        best = (finite.max() if higher_is_better(metric) else finite.min()) if finite.size else None
        for record in group.itertuples(index=False):
            row = (model, protocol, record.method)
            is_best = best is not None and len(group) > 1 and record.mean == best
            cells[row, metric] = Cell(
                record.mean, getattr(record, low), getattr(record, high), is_best
            )
    return rows, metrics, cells


def metric_heading(metric: str) -> str:
    """The metric's name with an arrow for its direction: "insertion ↑", "deletion ↓"."""
    return f"{metric} {'↑' if higher_is_better(metric) else '↓'}"


def number_text(value: float, digits: int = 3) -> str:
    """`value` with `digits` decimals; "NA" when not finite."""
    return "NA" if not np.isfinite(value) else f"{value:.{digits}f}"


def interval_text(cell: Cell, digits: int = 3) -> str:
    """A cell's interval as "[low, high]"."""
    return f"[{number_text(cell.low, digits)}, {number_text(cell.high, digits)}]"


def markdown_comparison(summary: pd.DataFrame, interval: str = "bootstrap", digits: int = 3) -> str:
    """GitHub Markdown: one row per (model, protocol, method), "mean [low, high]" per metric,
    the best of each (model, protocol) group in bold."""
    rows, metrics, cells = comparison_cells(summary, interval)
    lines = [
        "| " + " | ".join([*KEYS, *map(metric_heading, metrics)]) + " |",
        "|" + ":---|" * len(KEYS) + "---:|" * len(metrics),
    ]
    for row in rows:
        entries = []
        for metric in metrics:
            cell = cells.get((row, metric))
            if cell is None:
                entries.append("")
                continue
            text = f"{number_text(cell.mean, digits)} {interval_text(cell, digits)}"
            entries.append(f"**{text}**" if cell.best else text)
        names = [str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join([*names, *entries]) + " |")
    return "\n".join(lines)


_LATEX_SPECIALS = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in str(text))


def latex_comparison(
    summary: pd.DataFrame,
    interval: str = "bootstrap",
    digits: int = 3,
    style: str = "brackets",
) -> str:
    """A booktabs table for papers (needs `\\usepackage{booktabs}`).

    style "brackets": "mean [low, high]"; "pm": "mean $\\pm$ h" with h = (high - low) / 2, the
    half-width (exact for the t-interval, the average of both sides for the bootstrap). The best
    mean of each (model, protocol) group is bold; a rule separates the groups.
    """
    if style not in LATEX_STYLES:
        raise ResultsError(f"LaTeX style {style!r}: use one of {', '.join(LATEX_STYLES)}")
    rows, metrics, cells = comparison_cells(summary, interval)

    def entry(cell: Cell | None) -> str:
        if cell is None:
            return "--"
        mean = number_text(cell.mean, digits)
        mean = rf"\textbf{{{mean}}}" if cell.best else mean
        if style == "pm":
            return rf"{mean} $\pm$ {number_text((cell.high - cell.low) / 2, digits)}"
        return f"{mean} {interval_text(cell, digits)}"

    arrows = {m: r"$\uparrow$" if higher_is_better(m) else r"$\downarrow$" for m in metrics}
    header = ["Model", "Protocol", "Method", *(f"{latex_escape(m)} {arrows[m]}" for m in metrics)]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{lll" + "r" * len(metrics) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    previous = None
    for row in rows:
        if previous is not None and row[:2] != previous:
            lines.append(r"\midrule")
        previous = row[:2]
        names = [latex_escape(v) for v in row]
        lines.append(" & ".join([*names, *(entry(cells.get((row, m))) for m in metrics)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


@dataclass
class PairedTables:
    """rankings: `metrics.paired.rankings`; pairs: `metrics.paired.paired_comparisons`."""

    rankings: pd.DataFrame
    pairs: pd.DataFrame


def paired_tables(evaluations: Evaluations) -> PairedTables:
    """Rankings and paired tests of every (model, protocol) group and metric evaluated there, by
    group, then metric; ResultsError naming the files when the methods of a group were evaluated
    on different images or protocol settings."""
    blocks = evaluations.blocks
    ranked = [rankings(block.rows, block.metrics) for block in blocks]
    pairs = [paired_comparisons(block.rows, block.metrics) for block in blocks]
    return PairedTables(_by_group(ranked, evaluations), _by_group(pairs, evaluations))


def _by_group(tables: list[pd.DataFrame], evaluations: Evaluations) -> pd.DataFrame:
    """The tables of the blocks as one, rows by (model, protocol) group, then metric, then as
    given."""
    table = pd.concat([t for t in tables if not t.empty] or tables[:1], ignore_index=True)
    group = {key: i for i, key in enumerate(evaluations.groups)}
    metric = {name: i for i, name in enumerate(evaluations.metrics)}
    order = [
        (group[m, p], metric[name])
        for m, p, name in table[[*GROUP_COLUMNS, "metric"]].itertuples(False, None)
    ]
    return table.iloc[sorted(range(len(table)), key=order.__getitem__)].reset_index(drop=True)


def format_numbers(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Floats as text with `digits` decimals (p-values in scientific notation below 0.001);
    missing numbers, and missing ranks, as "NA"."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_integer_dtype(out[column]) and out[column].isna().any():
            out[column] = ["NA" if pd.isna(v) else str(v) for v in out[column]]  # ranks
            continue
        if not pd.api.types.is_float_dtype(out[column]):
            continue
        p_value = column in ("wilcoxon_p", "p_next")
        out[column] = [
            "NA"
            if not np.isfinite(v)
            else (f"{v:.2e}" if p_value and v < 1e-3 else f"{v:.{digits}f}")
            for v in out[column]
        ]
    return out


def ranking_markdown(tables: PairedTables, digits: int = 3) -> dict[str, str]:
    """Metric -> a Markdown ranking table (every group, best first)."""
    out = {}
    for metric, ranked in tables.rankings.groupby("metric", sort=False):
        ranked = ranked.drop(columns="metric")
        numbers = ranked.select_dtypes("number").columns
        out[metric] = summary_markdown(format_numbers(ranked, digits), right_align=numbers)
    return out


def pairs_markdown(tables: PairedTables, digits: int = 3) -> str:
    """The paired comparisons as one Markdown table ("" when no group has two methods)."""
    if tables.pairs.empty:
        return ""
    numbers = tables.pairs.select_dtypes("number").columns
    return summary_markdown(format_numbers(tables.pairs, digits), right_align=numbers)


def comparison_markdown(
    summary: pd.DataFrame,
    tables: PairedTables | None,
    *,
    interval: str = "bootstrap",
    digits: int = 3,
) -> str:
    """The whole comparison as Markdown: summary table, then, with `tables` (`paired_tables`),
    rankings per metric and paired tests."""
    label = "percentile bootstrap" if interval == "bootstrap" else "Student's t"
    parts = [
        "## Summary",
        f"Mean [95% {label} CI] over images; best of each (model, protocol) in bold; ↑ higher "
        "is better, ↓ lower is better; avg_drop and increase in %.",
        markdown_comparison(summary, interval, digits),
    ]
    if tables is not None:
        parts += [
            "## Rankings",
            "Methods best first by mean; mean_rank: the average of the per-image ranks (1 = best); "
            "p_next: two-sided Wilcoxon signed-rank p against the next method down.",
        ]
        for metric, text in ranking_markdown(tables, digits).items():
            parts += [f"### {metric_heading(metric)}", text]
        pairs = pairs_markdown(tables, digits)
        if pairs:
            parts += [
                "## Paired comparisons",
                "Per pair of methods on the same images: mean_diff = mean of A - B; win_rate = "
                "share of images where A is better than B by the metric's direction, ties counted "
                "as half; wilcoxon_p: two-sided Wilcoxon signed-rank test (zero differences "
                "dropped).",
                pairs,
            ]
    return "\n\n".join(parts) + "\n"
