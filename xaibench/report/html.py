"""The report's two renderings, from jinja2 templates in `report/templates/`: HTML with every
figure embedded as a base64 data URI (one file, no external asset, nothing fetched), and Markdown
that links the PNGs written next to it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pandas as pd

from xaibench.report.tables import (
    KEYS,
    comparison_cells,
    comparison_markdown,
    format_numbers,
    interval_text,
    metric_heading,
    number_text,
)
from xaibench.results.paired import GROUP_COLUMNS

if TYPE_CHECKING:
    from xaibench.report.build import ReportContent

_ENVIRONMENTS: dict[bool, jinja2.Environment] = {}


def _environment(autoescape: bool) -> jinja2.Environment:
    if autoescape not in _ENVIRONMENTS:
        _ENVIRONMENTS[autoescape] = jinja2.Environment(
            loader=jinja2.PackageLoader("xaibench.report", "templates"),
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
    return _ENVIRONMENTS[autoescape]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def summary_groups(content: ReportContent) -> dict[str, Any]:
    """The summary table for the template: metric headings and, per (model, protocol) group, one
    row per method of cells {mean, interval, best}."""
    rows, metrics, cells = comparison_cells(content.summary)
    groups: list[dict[str, Any]] = []
    for row in rows:
        if not groups or (groups[-1]["model"], groups[-1]["protocol"]) != row[:2]:
            groups.append({"model": row[0], "protocol": row[1], "rows": []})
        entries = []
        for metric in metrics:
            cell = cells.get((row, metric))
            entries.append(
                {"mean": "", "interval": "", "best": False}
                if cell is None
                else {
                    "mean": number_text(cell.mean),
                    "interval": interval_text(cell),
                    "best": cell.best,
                }
            )
        groups[-1]["rows"].append({"method": row[2], "cells": entries})
    return {"metrics": [metric_heading(m) for m in metrics], "groups": groups}


def _records(frame: pd.DataFrame) -> dict[str, Any]:
    """A table for the template: column names, which are numeric, rows of formatted text."""
    formatted = format_numbers(frame)
    return {
        "columns": list(frame.columns),
        "numeric": [pd.api.types.is_numeric_dtype(t) for t in frame.dtypes],
        "rows": formatted.astype(str).values.tolist(),
    }


def _template_context(content: ReportContent) -> dict[str, Any]:
    per_image = content.evaluations.per_image
    counts = per_image.groupby(list(KEYS), sort=False).size()
    rankings: dict[str, dict[str, Any]] = {}
    pairs: dict[str, Any] = {}
    if content.paired is not None:
        by = list(GROUP_COLUMNS)
        for key, group in content.paired.rankings.groupby(by, sort=False):
            rankings[" · protocol ".join(key)] = {
                metric_heading(metric): _records(ranked.drop(columns=[*by, "metric"]))
                for metric, ranked in group.groupby("metric", sort=False)
            }
        for key, group in content.paired.pairs.groupby(by, sort=False):
            pairs[" · protocol ".join(key)] = _records(group.drop(columns=by))
    return {
        "c": content,
        "summary": summary_groups(content),
        "images": int(counts.max()),
        "methods": list(dict.fromkeys(per_image["method"])),
        "rankings": rankings,
        "pairs": pairs,
        "protocols": content.protocols,
        "stores": [
            {
                "file": _store_name(path, content),
                "model": meta.model,
                "method": meta.method,
                "weights": meta.weights,
                "target": meta.target,
                "params": json.dumps(meta.method_params, sort_keys=True),
                "created": meta.created,
                "versions": ", ".join(
                    [
                        f"xaibench {meta.xaibench_version}",
                        f"torch {meta.torch_version}",
                        *(
                            [f"{meta.method_library['name']} {meta.method_library['version']}"]
                            if meta.method_library
                            else []
                        ),
                    ]
                ),
            }
            for path, meta in content.stores
        ],
        "preprocessing": preprocessing_groups(content),
    }


def preprocessing_groups(content: ReportContent) -> list[dict[str, Any]]:
    """The stores' preprocessing settings, once per distinct setting: the store files sharing it
    and its fields (floats to 4 decimals for reading; the stores keep them exactly)."""

    def readable(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(readable(v) for v in value) + "]"
        if isinstance(value, float):
            return f"{value:.4g}"
        return "none" if value is None else str(value)

    groups: dict[str, dict[str, Any]] = {}
    for path, meta in content.stores:
        key = json.dumps(meta.preprocess, sort_keys=True)
        if key not in groups:
            fields = {k: readable(v) for k, v in sorted(meta.preprocess.items())}
            groups[key] = {"files": [], "fields": fields}
        groups[key]["files"].append(_store_name(path, content))
    return list(groups.values())


def _store_name(path: Path, content: ReportContent) -> str:
    """A store's file name, under its folder's name when the report covers several folders."""
    return f"{path.parent.name}/{path.name}" if len(content.run_dirs) > 1 else path.name


def render_html(content: ReportContent) -> str:
    """The report as one HTML page; every figure inline as a data URI."""
    return (
        _environment(True)
        .get_template("report.html.j2")
        .render(**_template_context(content), data_uri=data_uri)
    )


def render_markdown(content: ReportContent) -> str:
    """The report as Markdown; figures are the PNG files written next to it."""
    tables = comparison_markdown(content.summary, content.paired)
    return (
        _environment(False)
        .get_template("report.md.j2")
        .render(**_template_context(content), tables=tables)
    )
