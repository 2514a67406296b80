"""`build_report`: one or several run folders (`runs/MODEL`, each with its stores, `metrics/` and
`sanity/`) into one self-contained HTML page and a Markdown page with the figures next to it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from xaibench.core.atomic import write_bytes_atomic, write_text_atomic
from xaibench.core.choices import DEFAULT_GRID_IMAGES
from xaibench.core.errors import ResultsError
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import read_image, safe_image_path
from xaibench.data.preprocess import Preprocess
from xaibench.metrics.base import saliency_at_input_size
from xaibench.report import html
from xaibench.report.plots import (
    figure_png,
    image_grid_figure,
    mean_curves_figure,
    overlay,
)
from xaibench.report.tables import (
    Evaluations,
    PairedTables,
    comparison_summary,
    load_evaluations,
    paired_tables,
)
from xaibench.results import layout
from xaibench.results.layout import CONFIG_COLUMN, SANITY_TABLE_SUFFIX
from xaibench.results.sanity import SANITY_COLUMNS
from xaibench.results.sanity_figure import sanity_figure
from xaibench.results.stats import BOOTSTRAP_RESAMPLES
from xaibench.store import find_stores, open_store
from xaibench.store.base import SaliencyStore
from xaibench.store.meta import StoreMeta


@dataclass
class FigureFile:
    """A PNG of the report: file name in the out folder, caption, bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class ReportContent:
    """Everything the templates show."""

    title: str
    run_dirs: list[Path]
    generated: str
    evaluations: Evaluations
    summary: pd.DataFrame
    paired: PairedTables | None
    paired_note: str
    protocols: dict[str, dict]
    stores: list[tuple[Path, StoreMeta]]
    curves: list[FigureFile] = field(default_factory=list)
    grids: list[FigureFile] = field(default_factory=list)
    grid_notes: list[str] = field(default_factory=list)
    sanity: list[FigureFile] = field(default_factory=list)
    sanity_notes: list[str] = field(default_factory=list)

    @property
    def figures(self) -> list[FigureFile]:
        return [*self.curves, *self.grids, *self.sanity]


def build_report(
    run_dirs: Path | Sequence[Path],
    out_dir: Path,
    data_dir: Path | None = None,
    *,
    grid_images: int = DEFAULT_GRID_IMAGES,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Path]:
    """Write `out_dir/report.html` (images embedded as data URIs, no external asset),
    `out_dir/report.md` and its PNGs; returns name -> path of every file written.

    run_dirs: one model's folder, or several (one per model) compared in one report: one summary,
    ranking and curve figure per (model, protocol), one overlay grid and sanity figure per folder.
    The saliency grid needs the images: with `data_dir` the first `grid_images` images every
    store of a folder explains are read through the stores' preprocessing; without it the report
    says so.
    """
    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else list(map(Path, run_dirs))
    out_dir = Path(out_dir)
    for run_dir in run_dirs:
        if not (run_dir / "metrics").is_dir():
            raise ResultsError(
                f"{run_dir} has no metrics/ folder; run `xaibench evaluate` on its stores first"
            )
    evaluations = load_evaluations([run_dir / "metrics" for run_dir in run_dirs])
    try:
        paired, paired_note = paired_tables(evaluations), ""
    except ResultsError as error:
        paired, paired_note = None, f"Paired comparisons skipped: {error}"
    stores = {run_dir: _store_metas(run_dir) for run_dir in run_dirs}
    content = ReportContent(
        title=f"xaibench report: {', '.join(dict.fromkeys(evaluations.per_image['model']))}",
        run_dirs=run_dirs,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        evaluations=evaluations,
        summary=comparison_summary(evaluations, resamples),
        paired=paired,
        paired_note=paired_note,
        protocols=_protocols(evaluations),
        stores=[entry for metas in stores.values() for entry in metas],
        curves=_curve_figures(evaluations),
    )
    if data_dir is None:
        content.grid_notes.append(
            "No image folder was given, so the saliency overlays are not shown; build the report "
            "with the images the run explained (`xaibench report RUN --data DIR`)."
        )
    for run_dir in run_dirs:
        _add_folder_figures(
            content, run_dir, stores[run_dir], data_dir, grid_images, len(run_dirs) > 1
        )
    written = {}
    for figure in content.figures:
        written[figure.name] = write_bytes_atomic(out_dir / figure.name, figure.png)
    written["report.md"] = write_text_atomic(out_dir / "report.md", html.render_markdown(content))
    written["report.html"] = write_text_atomic(out_dir / "report.html", html.render_html(content))
    return written


def _add_folder_figures(
    content: ReportContent,
    run_dir: Path,
    stores: list[tuple[Path, StoreMeta]],
    data_dir: Path | None,
    grid_images: int,
    several: bool,
) -> None:
    """The overlay grid and sanity figure of one model's folder, or the notes saying why not;
    with `several` folders the files and captions name the folder."""
    suffix = f"-{safe_name(run_dir.name)}" if several else ""
    of = f" ({run_dir.name})" if several else ""
    if data_dir is not None and not stores:
        content.grid_notes.append(
            f"No saliency store (*.h5, *.hdf5, *.npz) in {run_dir}: no overlays."
        )
    elif data_dir is not None:
        figure, shown = _grid_figure([path for path, _ in stores], Path(data_dir), grid_images)
        content.grids.append(
            FigureFile(
                f"saliency-grid{suffix}.png",
                f"Saliency overlays{of} of the first {shown} images explained by every store "
                "(each map min-max scaled; the class explained is under the image id).",
                figure_png(figure),
            )
        )
    sanity = sorted((run_dir / "sanity").glob(f"*{SANITY_TABLE_SUFFIX}"))
    if not sanity:
        content.sanity_notes.append(
            f"No sanity-check results ({run_dir / 'sanity'}/METHOD{SANITY_TABLE_SUFFIX}); "
            "`xaibench sanity` writes them."
        )
        return
    content.sanity.append(
        FigureFile(
            f"sanity{suffix}.png",
            f"Model parameter randomisation{of} (cascading, from the top): mean similarity of "
            "each method's maps to its maps on the original model, per stage.",
            figure_png(sanity_figure(read_sanity(sanity))),
        )
    )


def _store_metas(run_dir: Path) -> list[tuple[Path, StoreMeta]]:
    metas = []
    for path in find_stores(run_dir):
        with open_store(path) as store:
            metas.append((path, store.meta))
    return metas


def _protocols(evaluations: Evaluations) -> dict[str, dict]:
    frame = evaluations.per_image.drop_duplicates("protocol")
    return {
        name: json.loads(text)
        for name, text in zip(frame["protocol"], frame["protocol_settings"], strict=True)
    }


def safe_name(text: str) -> str:
    """A file-name fragment: runs of characters other than letters, digits, '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def _curve_figures(evaluations: Evaluations) -> list[FigureFile]:
    """One figure of mean insertion and deletion curves per (model, protocol)."""
    figures = []
    sources = evaluations.per_image.drop_duplicates("source")
    for (model, protocol), group in sources.groupby(["model", "protocol"], sort=False):
        curves, include_start = {}, False
        for method, source in zip(group["method"], group["source"], strict=True):
            path = layout.curves_of(Path(source))
            if not path.exists():
                continue
            with np.load(path, allow_pickle=False) as saved:
                include_start = bool(json.loads(str(saved["protocol"]))["include_start"])
                curves[method] = {k: saved[k] for k in ("insertion", "deletion") if k in saved}
        if not any(curves.values()):
            continue
        figures.append(
            FigureFile(
                f"curves-{safe_name(model)}-{safe_name(protocol)}.png",
                f"Mean insertion and deletion curves, {model}, protocol {protocol}.",
                figure_png(mean_curves_figure(curves, include_start, f"{model}, {protocol}")),
            )
        )
    return figures


def read_sanity(paths: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """Method -> the long table of `runs/MODEL/sanity/METHOD.sanity.csv`; ResultsError naming a
    file whose columns are not exactly `SANITY_COLUMNS`."""
    results = {}
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype={"image_id": str, "layer": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise ResultsError(f"cannot read sanity results {path} ({error})") from None
        columns, extra = tuple(frame.columns), frame.columns[len(SANITY_COLUMNS) :]
        if columns[: len(SANITY_COLUMNS)] != SANITY_COLUMNS or set(extra) - {CONFIG_COLUMN}:
            raise ResultsError(
                f"{path} has columns {', '.join(frame.columns)}; a sanity table has exactly "
                f"{', '.join(SANITY_COLUMNS)}, and {CONFIG_COLUMN} when a config asked for it "
                "(written by `xaibench sanity` or `xaibench run`)"
            )
        results[layout.sanity_method(path)] = frame
    return results


def _grid_figure(store_paths: Sequence[Path], data_dir: Path, count: int) -> tuple[Figure, int]:
    """The first `count` images explained by every store, each with every method's overlay;
    the figure and the number of images it shows."""
    stores = [open_store(path) for path in store_paths]
    try:
        usable = [
            [store.ids[i] for i in np.flatnonzero(store.done & (store.targets >= 0))]
            for store in stores
        ]
        common = set.intersection(*map(set, usable))
        chosen = [image_id for image_id in usable[0] if image_id in common][:count]
        if not chosen:
            raise ResultsError(f"the stores in {store_paths[0].parent} explain no image in common")
        first = stores[0]
        preprocess = Preprocess.from_dict(first.meta.preprocess)
        images = [
            _display_image(
                safe_image_path(data_dir, image_id, f"store {first.path}"), preprocess, first.path
            )
            for image_id in chosen
        ]
        size = images[0].shape[:2]
        maps = [overlay_row(store, chosen, size) for store in stores]
        classes = imagenet_classes()
        row = {image_id: i for i, image_id in enumerate(first.ids)}
        titles = [
            f"{image_id}\n{classes.short_name(int(first.targets[row[image_id]]))}"
            for image_id in chosen
        ]
        panels = [
            [image, *(overlay(image, method_maps[r]) for method_maps in maps)]
            for r, image in enumerate(images)
        ]
        methods = ["image", *(store.meta.label for store in stores)]
    finally:
        for store in stores:
            store.close()
    return image_grid_figure(panels, methods, titles), len(chosen)


def overlay_row(
    store: SaliencyStore, image_ids: Sequence[str], size: tuple[int, int]
) -> np.ndarray:
    """(n, H, W) the store's maps of `image_ids`, resized to the input size as the metrics do."""
    row = {image_id: i for i, image_id in enumerate(store.ids)}
    maps = store.read_maps(np.array([row[i] for i in image_ids]))
    return saliency_at_input_size(torch.from_numpy(maps), size).numpy()


def _display_image(path: Path, preprocess: Preprocess, store_path: Path) -> np.ndarray:
    """(H, W, 3) in [0, 1]: the image as the model saw it (preprocessed, then un-normalised)."""
    fix = f"it is an image of {store_path}: pass as `data_dir` the folder the run explained"
    return preprocess.unnormalise(preprocess(read_image(path, fix))).numpy()
