"""Batched evaluation: store + dataset + model -> per-image table, curves and a summary.

Results are checkpointed next to the outputs while the run goes (atomically, at most every
`checkpoint_seconds`), so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xaibench import dist
from xaibench.core.atomic import write_atomic as _atomic
from xaibench.core.batching import ChunkSize
from xaibench.core.choices import DEFAULT_METRICS
from xaibench.core.errors import ConfigError, StoreError
from xaibench.core.precision import forward_settings
from xaibench.core.runtime import prepare_model
from xaibench.core.timing import to_host
from xaibench.data.boxes import BoxFolder
from xaibench.data.dataset import ImageFolderDataset, image_id_problem, make_loader
from xaibench.data.preprocess import preprocessing_of
from xaibench.metrics import (
    METRICS,
    MetricContext,
    Protocol,
    get_protocol,
    saliency_at_input_size,
    score_function,
)
from xaibench.metrics.base import Metric
from xaibench.metrics.mc_dropout import MC_COLUMNS, MCDropout
from xaibench.models import load_model
from xaibench.models.factory import LoadedModel
from xaibench.pipelines import checkpoint as checkpoints
from xaibench.pipelines.settings import RunSettings, world_of
from xaibench.results import layout
from xaibench.results.stats import summarise
from xaibench.store import open_store
from xaibench.store.base import SaliencyStore
from xaibench.store.meta import READING_FIX

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """per_image: one row per image; curves: name -> (N, points); summary: one row per metric."""

    per_image: pd.DataFrame
    curves: dict[str, np.ndarray]
    summary: pd.DataFrame
    protocol: Protocol
    stem: str

    def paths(self, out_dir: Path) -> dict[str, Path]:
        return layout.evaluation_paths(out_dir, self.stem)


@dataclass
class WrittenEvaluation:
    """One store's evaluation and the files it was written to (`write_evaluation`)."""

    store: Path
    evaluation: Evaluation
    paths: dict[str, Path]


def evaluate_stores(
    stores: Sequence[Path],
    model: str,
    data_dir: Path,
    settings: RunSettings,
    *,
    weights: str = "default",
    own_model: Mapping[str, Any] | None = None,
    labels_file: Path | None = None,
    subset_file: Path | None = None,
    protocol: str = "polycam",
    preprocessing: str = "protocol",
    step: int | None = None,
    road_percentages: Sequence[str | float] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    boxes: Path | None = None,
    out_dir: Path | None = None,
    limit: int | None = None,
    allow_incomplete: bool = False,
    mc_dropout: int = 0,
    mc_seed: int = 0,
    columns: Mapping[str, str] | None = None,
    world: dist.World | None = None,
) -> list[WrittenEvaluation]:
    """Evaluate each store of `stores` (`evaluate_store`, with `limit`, `allow_incomplete`,
    `mc_dropout` and `mc_seed`) on the images of `data_dir` under `protocol` with
    `step` and `road_percentages` (`evaluation_protocol`), and write its tables into `out_dir`
    (default: metrics/ beside the store), resuming from and then removing its checkpoint there.
    The images are preprocessed as `preprocessing` says (`Protocol.preprocess_for`), which must
    be how the stores were made; `own_model` holds what a model of the user's own states about
    itself (`load_model`'s mean, std, input_size, crop).

    With `boxes`, the metrics that need boxes are added to `metrics`. `metric_params` (metric ->
    setting -> value) are the settings of metrics that have their own, the `quantus.` ones
    (`evaluation_metric_objects`). `columns` (name -> value)
    are added to the per-image and summary tables, e.g. the digest of the config that asked for
    them. Under torchrun the processes are launched here (`dist.launch`, logs in the first output
    folder's logs/) unless `world` is given; each evaluates its share of the rows and process 0
    writes the tables: the written evaluations come back on process 0, an empty list on the others.
    """
    metrics = evaluation_metrics(metrics, boxes)
    evaluation_metric_objects(metrics, metric_params)  # a bad setting fails before any work
    destinations = evaluation_dirs(stores, out_dir)
    chosen = evaluation_protocol(protocol, step, road_percentages)
    written = []
    launched = dist.launch(settings.device, destinations[0] / "logs") if world is None else None
    with launched or nullcontext(world) as world:
        loaded = load_model(model, weights, **(own_model or {}))
        preprocess = chosen.preprocess_for(loaded, preprocessing)
        dataset = ImageFolderDataset(
            data_dir, preprocess, labels_file=labels_file, subset_file=subset_file
        )
        for store, destination in zip(stores, destinations, strict=True):
            checkpoint = checkpoint_path(destination, store, chosen)
            evaluation = evaluate_store(
                store,
                loaded,
                dataset,
                chosen,
                metrics,
                settings.on(world.device),
                metric_params=metric_params,
                limit=limit,
                allow_incomplete=allow_incomplete,
                checkpoint=checkpoint,
                world=world,
                mc_dropout=mc_dropout,
                mc_seed=mc_seed,
                boxes=boxes,
            )
            if world.is_main:
                paths = write_evaluation(evaluation, destination, checkpoint, columns)
                written.append(WrittenEvaluation(store, evaluation, paths))
    return written


def evaluation_metrics(metrics: Sequence[str], boxes: Path | None) -> list[str]:
    """`metrics` (at least one, each registered), with every metric that needs bounding boxes
    added when `boxes` is given; ConfigError for a metric that needs them without `boxes`."""
    if not metrics:
        raise ConfigError("give at least one metric", param="metrics")
    chosen = list(metrics)
    if boxes is not None:
        chosen += [m for m in METRICS.names() if METRICS.get(m).needs_boxes and m not in chosen]
    needing = [name for name in chosen if METRICS.get(name, param="metrics").needs_boxes]
    if needing and boxes is None:
        raise ConfigError(_needs_boxes(needing), param="metrics")
    return chosen


def evaluation_metric_objects(
    metrics: Sequence[str], metric_params: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Metric]:
    """The metrics named `metrics`, each with its settings of `metric_params` (metric -> setting
    -> value, `Metric.configured`); ConfigError for settings of a metric not among `metrics`."""
    params = dict(metric_params or {})
    strangers = [name for name in params if name not in metrics]
    if strangers:
        raise ConfigError(
            f"settings of {', '.join(strangers)}, which is not among `metrics` "
            f"({', '.join(metrics)})",
            param="metric_params",
        )
    return [METRICS.get(name, param="metrics").configured(params.get(name, {})) for name in metrics]


def evaluation_dirs(stores: Sequence[Path], out_dir: Path | None) -> list[Path]:
    """Where the tables of each store go: `out_dir`, or the metrics/ folder beside the store.
    ConfigError when two stores would write the same tables (same name, same folder)."""
    destinations = [Path(out_dir) if out_dir else layout.metrics_dir(store) for store in stores]
    outputs = [(d.resolve(), Path(s).stem) for d, s in zip(destinations, stores, strict=True)]
    if len(set(outputs)) != len(outputs):
        raise ConfigError(
            "two of them would write the same tables (same method name and output folder); "
            "evaluate them separately with different `out_dir` folders",
            param="stores",
        )
    return destinations


def evaluation_protocol(
    name: str, step: int | None = None, road_percentages: Sequence[str | float] | None = None
) -> Protocol:
    """The protocol `name` with `step` (pixels per insertion/deletion step) and
    `road_percentages` (numbers, or their text: "10" or "12.5") in place of its own."""
    overrides: dict[str, Any] = {"step": step} if step else {}
    if road_percentages:
        overrides["road_percentages"] = tuple(_percentage(p) for p in road_percentages)
    return get_protocol(name, **overrides)


def _percentage(value: str | float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number", param="road_percentages") from None
    if not math.isfinite(number):
        raise ConfigError(
            f"{value!r}: give percentages between 0 and 100 (exclusive), e.g. 10,50,90",
            param="road_percentages",
        )
    return int(number) if number.is_integer() else number


def checkpoint_path(out_dir: Path, store_path: Path, protocol: Protocol) -> Path:
    """`OUT/.STEM.checkpoint.npz`: the hidden checkpoint of the evaluation whose tables go to
    `out_dir` (the `checkpoint` of `evaluate_store`)."""
    return layout.evaluation_checkpoint(out_dir, layout.evaluation_stem(store_path, protocol.name))


def check_store_matches(
    store: SaliencyStore, loaded: LoadedModel, dataset: ImageFolderDataset
) -> np.ndarray:
    """Refuse a store made with another model, weights, preprocessing or image list, or whose
    image ids are not relative paths inside the data folder.

    Returns (N,) the dataset index of every store row; with a subset of the images
    (`dataset.subset_file`), -1 for the store's rows outside it, which are not evaluated.
    """
    preprocess = dataset.preprocess.to_dict()
    made, here = preprocessing_of(store.meta.preprocess), preprocessing_of(preprocess)
    if made != here:
        raise StoreError(
            f"{store.path} was made with the {made} preprocessing ({_preprocess_text(made)}), "
            f"but this evaluation uses the {here} one; evaluate it with `preprocessing` {made}",
            param="preprocessing",
        )
    store.check_run(
        {"model": loaded.name, "weights": loaded.weights, "preprocess": preprocess},
        fix=READING_FIX,
    )
    for image_id in store.ids:
        problem = image_id_problem(image_id)
        if problem is not None:
            raise StoreError(
                f"{store.path}: field 'ids': image id {image_id!r} {problem}; an image id is a "
                f"path relative to `data_dir` ({dataset.root}), inside it"
            )
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    missing = [image_id for image_id in store.ids if image_id not in position]
    if missing and dataset.subset_file is None:
        raise StoreError(
            f"{store.path}: field 'ids': {len(missing)} image(s) of the store are not in "
            f"{dataset.root}, first {missing[0]!r}; point `data_dir` at the folder the store was "
            "made from"
        )
    rows = np.array([position.get(image_id, -1) for image_id in store.ids], dtype=np.int64)
    if not (rows >= 0).any():
        raise StoreError(
            f"{store.path}: none of its images is in the subset {dataset.subset_file}; "
            "give as `subset_file` the subset the store was made from, or a subset of it"
        )
    known = (rows >= 0) & (store.labels >= 0) & (dataset.labels[rows] >= 0)
    if (store.labels[known] != dataset.labels[rows][known]).any():
        first = int(np.flatnonzero(store.labels[known] != dataset.labels[rows][known])[0])
        raise StoreError(
            f"{store.path}: field 'labels' differs for {store.ids[np.flatnonzero(known)[first]]}; "
            "the store was made with another labelling of the images"
        )
    return rows


def _preprocess_text(preprocessing: str) -> str:
    if preprocessing == "model":
        return "the model's own: resize, centre crop, its interpolation"
    return "the protocol's: a direct resize to the input size"


def evaluate_store(
    store_path: Path,
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    protocol: Protocol,
    metrics: Sequence[str],
    settings: RunSettings,
    *,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int | None = None,
    allow_incomplete: bool = False,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = 60.0,
    world: dist.World | None = None,
    mc_dropout: int = 0,
    mc_seed: int = 0,
    boxes: Path | None = None,
) -> Evaluation:
    """Evaluate the done rows of the store at `store_path` (the first `limit` of them if given)
    with `metrics` (with their `metric_params`, `evaluation_metric_objects`) under `protocol`.
    Rows of images skipped at generation (target -1) are left out.

    With `checkpoint`, results so far are saved there every `checkpoint_seconds` and when the run is
    interrupted, and a later call with the same store, protocol and metrics resumes from them.

    With a `world` of several processes (`dist.launch` under torchrun), each process evaluates its
    share of the rows (saving them to its own checkpoint beside `checkpoint`), and every process
    returns the evaluation of all rows; `settings` are on the world's device.

    With `mc_dropout` K > 0, the columns mc_mean and mc_var (xaibench.metrics.mc_dropout) are added.
    `boxes`: a folder of bounding-box XML files (`xaibench.data.boxes`), which the localisation
    metrics need. The store's generation time per image goes into the column seconds_per_image.

    The forward runs at `settings.precision`, compiled with `settings.compile`, with deterministic
    algorithms only with `settings.deterministic`; perturbed images go through it in chunks of
    `settings.chunk_size`, halved on CUDA out-of-memory. The precision, the chunk size and a
    deterministic run are recorded in the summary.
    """
    world = world_of(settings, world)
    metric_objects, box_folder = _metrics_and_boxes(metrics, metric_params, boxes, dataset)
    with open_store(store_path) as store:
        dataset_rows, rows = _rows_to_evaluate(store, loaded, dataset, limit, allow_incomplete)
        scorer = BatchScorer.of(
            loaded, metric_objects, box_folder, protocol, settings, mc_dropout, mc_seed
        )
        key = _run_key(store, protocol, scorer.key(), settings.precision, boxes)
        saved = checkpoints.Checkpoint(checkpoint, key, world, run="evaluation")
        state = _Results.resume(saved, len(store))
        world.barrier()  # every process has read the checkpoints before any saves its own
        todo = world.shard(rows[~state.done[rows]])
        with saved.saving(state.arrays, checkpoint_seconds) as tick:
            _score_rows(
                scorer, store, dataset, dataset_rows, rows, todo, settings, world, state, tick
            )
        state = _Results.from_arrays(
            len(store), checkpoints.gather_rows(world, state.arrays(), todo)
        )
        per_image = state.table(store, rows, protocol, _metric_settings(metric_objects))
        curves = {name: values[rows] for name, values in state.curves.items()}
    summary = _summary(per_image, state, settings, scorer.chunks)
    stem = layout.evaluation_stem(store_path, protocol.name)
    return Evaluation(per_image, curves, summary, protocol, stem)


def _metrics_and_boxes(
    metrics: Sequence[str],
    metric_params: Mapping[str, Mapping[str, Any]] | None,
    boxes: Path | None,
    dataset: ImageFolderDataset,
) -> tuple[list[Metric], BoxFolder | None]:
    """The metrics of these names with their settings, and the box folder, which some need."""
    metric_objects = evaluation_metric_objects(metrics, metric_params)
    box_folder = BoxFolder(boxes, dataset) if boxes is not None else None
    needing = [m.name for m in metric_objects if m.needs_boxes]
    if needing and box_folder is None:
        raise ConfigError(_needs_boxes(needing), param="metrics")
    return metric_objects, box_folder


def _metric_settings(metrics: Sequence[Metric]) -> str | None:
    """The `metric_settings` column: JSON of metric -> `Metric.settings()` of the metrics that
    have any (the `quantus.` ones), None when none has."""
    recorded = {m.name: m.settings() for m in metrics if m.settings() is not None}
    return json.dumps(recorded, sort_keys=True) if recorded else None


def _needs_boxes(needing: Sequence[str]) -> str:
    verb = "needs" if len(needing) == 1 else "need"
    return f"{', '.join(needing)} {verb} bounding boxes; pass `boxes`, a folder of them"


def _rows_to_evaluate(
    store: SaliencyStore,
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    limit: int | None,
    allow_incomplete: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The dataset index of every store row (`check_store_matches`), and the store rows to
    evaluate: done, with a map (target >= 0), of an image of the dataset, the first `limit`."""
    dataset_rows = check_store_matches(store, loaded, dataset)
    if not store.complete and not allow_incomplete:
        raise StoreError(
            f"{store.path}: {int((~store.done).sum())} of {len(store)} rows are not done; "
            "finish it by re-running generate, or pass `allow_incomplete` to evaluate the rest"
        )
    rows = np.flatnonzero(store.done & (store.targets >= 0) & (dataset_rows >= 0))[:limit]
    if len(rows) == 0:
        raise StoreError(f"{store.path} has no finished row with a map to evaluate")
    return dataset_rows, rows


def metric_chunks(metrics: Sequence[Metric], chunk_size: int) -> dict[str, ChunkSize]:
    """One `ChunkSize` of `chunk_size` per chunk name (`Metric.chunks`) the metrics use, shared by
    the metrics of that name over the batches of a run."""
    names = dict.fromkeys([Metric.chunks, *(m.chunks for m in metrics)])
    return {name: ChunkSize(chunk_size, "chunk_size") for name in names}


@dataclass
class BatchScorer:
    """What scores a batch, for `evaluate_store` and `xaibench.score`: the model's score function, the metrics (and MC dropout), the boxes,
    the protocol and the chunk sizes of the perturbed images (`Metric.chunks` -> size)."""

    model: torch.nn.Module
    score_fn: Callable
    metrics: list[Metric]
    mc: MCDropout | None
    boxes: BoxFolder | None
    protocol: Protocol
    chunks: dict[str, ChunkSize]

    @classmethod
    def of(
        cls,
        loaded: LoadedModel,
        metrics: list[Metric],
        boxes: BoxFolder | None,
        protocol: Protocol,
        settings: RunSettings,
        mc_dropout: int,
        mc_seed: int,
    ) -> BatchScorer:
        model = prepare_model(loaded.model, settings.device).eval()
        score_fn = score_function(model, protocol.score)
        mc = (
            MCDropout(model, mc_dropout, seed=mc_seed, input_size=loaded.input_size)
            if mc_dropout
            else None
        )
        chunks = metric_chunks(metrics, settings.chunk_size)
        return cls(model, score_fn, metrics, mc, boxes, protocol, chunks)

    def key(self) -> list[str]:
        """The metrics' part of the run's key: their keys (`Metric.key`), and MC dropout's."""
        return [*(m.key() for m in self.metrics), *([self.mc.key()] if self.mc else [])]

    def __call__(
        self,
        images: torch.Tensor,
        maps: torch.Tensor,
        targets: np.ndarray,
        indices: torch.Tensor | None,
        batch_rows: np.ndarray,
        pixel_std: Sequence[float] | None,
    ) -> tuple[torch.Tensor, list]:
        """The clean scores (B,) and every metric's result on images (B, 3, H, W), maps (B, h, w)
        and targets (B,) of dataset rows `indices` (read only for the boxes) and store rows
        `batch_rows`."""
        device = images.device
        target_tensor = torch.from_numpy(targets).to(device, non_blocking=True)
        batch_boxes = None
        if self.boxes is not None:
            batch_boxes = self.boxes.batch(indices.numpy(), targets, device)
        ctx = MetricContext(
            images=images,
            saliency=saliency_at_input_size(maps, tuple(images.shape[-2:])),
            targets=target_tensor,
            clean_scores=self.score_fn(images, target_tensor),
            score_fn=self.score_fn,
            protocol=self.protocol,
            chunk_size=self.chunks[Metric.chunks],
            boxes=batch_boxes,
            pixel_std=pixel_std,
            model=self.model,
            rows=batch_rows,
        )
        results = [
            m.score_batch(
                ctx if m.chunks == Metric.chunks else ctx.with_chunk_size(self.chunks[m.chunks])
            )
            for m in self.metrics
        ]
        results += [self.mc.score_batch(ctx, batch_rows)] if self.mc else []
        return ctx.clean_scores, results


def _score_rows(
    scorer: BatchScorer,
    store: SaliencyStore,
    dataset: ImageFolderDataset,
    dataset_rows: np.ndarray,
    rows: np.ndarray,
    todo: np.ndarray,
    settings: RunSettings,
    world: dist.World,
    state: _Results,
    tick: Callable[[], None],
) -> None:
    """Score the store rows `todo` (this process's share of `rows`) batch by batch into `state`,
    calling `tick` after each batch; the progress bar counts the `rows` of every process."""
    device = settings.device
    bar = world.progress(
        len(rows),
        int(state.done[rows].sum()),
        unit="img",
        desc=f"{store.meta.label}/{scorer.protocol.name}",
        disable=not settings.progress,
    )
    loader = make_loader(dataset, settings.batch_size, settings.workers, dataset_rows[todo], device)
    store_row_of = {index: row for row, index in enumerate(dataset_rows.tolist()) if index >= 0}
    with forward_settings(
        scorer.model, device, settings.precision, settings.compile, settings.deterministic
    ):
        for images, indices in loader:
            batch_rows = np.array([store_row_of[i] for i in indices.tolist()])
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            maps = torch.from_numpy(store.read_maps(batch_rows)).to(device, non_blocking=True)
            targets = store.targets[batch_rows]
            clean, results = scorer(
                images, maps, targets, indices, batch_rows, dataset.preprocess.std
            )
            state.add(batch_rows, clean, results)
            bar.update(len(batch_rows))
            tick()
    bar.close()


def _summary(
    per_image: pd.DataFrame, state: _Results, settings: RunSettings, chunks: dict[str, ChunkSize]
) -> pd.DataFrame:
    """One row per metric and of the generation time per image, with the run's settings: the
    chunk size is the one the metric ran at (`Metric.chunks`); a column `deterministic` (True)
    only for a run with `settings.deterministic`."""
    value_columns = [c for c in state.values if METRICS.knows(c) or c in MC_COLUMNS]
    value_columns.append("seconds_per_image")
    summary = summarise(per_image, value_columns, by=["model", "method", "protocol"])
    summary["protocol_settings"] = per_image["protocol_settings"].iloc[0]
    if "metric_settings" in per_image:
        summary["metric_settings"] = per_image["metric_settings"].iloc[0]
    summary["precision"] = settings.precision
    if settings.deterministic:
        summary["deterministic"] = True
    group = [
        METRICS.get(m).chunks if METRICS.knows(m) else Metric.chunks for m in summary["metric"]
    ]
    summary["chunk_size"] = [chunks[name].value for name in group]
    return summary


def write_evaluation(
    evaluation: Evaluation,
    out_dir: Path,
    checkpoint: Path | None = None,
    columns: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Per-image CSV (and Parquet when pyarrow is installed), curves npz, summary CSV; atomic.
    `columns` (name -> value) are added, last, to the per-image and summary tables.

    Then removes `checkpoint` (the `checkpoint` of `evaluate_store`) and every process's file beside
    it: the results it held are written.
    """
    if columns:
        evaluation.per_image = evaluation.per_image.assign(**columns)
        evaluation.summary = evaluation.summary.assign(**columns)
    paths = _write_tables(evaluation, out_dir)
    checkpoints.remove_checkpoint(checkpoint)
    return paths


def _write_tables(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    paths = evaluation.paths(out_dir)
    _atomic(paths["per_image"], lambda p: evaluation.per_image.to_csv(p, index=False))
    _atomic(paths["summary"], lambda p: evaluation.summary.to_csv(p, index=False))
    settings = json.dumps(evaluation.protocol.to_dict(), sort_keys=True)
    _atomic(
        paths["curves"],
        lambda p: np.savez_compressed(
            p,
            ids=np.array(evaluation.per_image["image_id"], dtype=str),
            protocol=np.array(settings),
            **evaluation.curves,
        ),
    )
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return paths
    paths["parquet"] = layout.parquet_path(out_dir, evaluation.stem)
    _atomic(paths["parquet"], lambda p: evaluation.per_image.to_parquet(p, index=False))
    return paths


def _run_key(
    store: SaliencyStore,
    protocol: Protocol,
    metrics: Sequence[str],
    precision: str,
    boxes: Path | None,
) -> str:
    return json.dumps(
        {
            "store": store.meta.to_dict(),
            "protocol": protocol.to_dict(),
            "metrics": list(metrics),
            "precision": precision,
            "boxes": None if boxes is None else str(Path(boxes).resolve()),
        },
        sort_keys=True,
    )


class _Results:
    """Per-row results gathered over batches, saved in and resumed from a `Checkpoint`."""

    def __init__(self, n: int):
        self.n = n
        self.done = np.zeros(n, dtype=bool)
        self.clean = np.full(n, np.nan, dtype=np.float32)
        self.values: dict[str, np.ndarray] = {}
        self.curves: dict[str, np.ndarray] = {}

    @classmethod
    def resume(cls, checkpoint: checkpoints.Checkpoint, n: int) -> _Results:
        """The results saved in the files of `checkpoint` (one per process), merged."""
        parts = checkpoint.load()
        if not parts:
            return cls(n)
        state = cls.from_arrays(n, checkpoints.merge_rows(parts))
        log.info(
            "resuming from %s: %d rows already evaluated", checkpoint.path, int(state.done.sum())
        )
        return state

    @classmethod
    def from_arrays(cls, n: int, arrays: dict[str, np.ndarray]) -> _Results:
        """The inverse of `arrays`."""
        state = cls(n)
        state.done, state.clean = arrays["done"], arrays["clean"]
        for name, array in arrays.items():
            kind, _, column = name.partition(":")
            if kind == "value":
                state.values[column] = array
            elif kind == "curve":
                state.curves[column] = array
        return state

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays, as the checkpoint holds them: `done`, `clean`, `value:NAME`
        (N,) and `curve:NAME` (N, points)."""
        arrays = {"done": self.done, "clean": self.clean}
        arrays.update({f"value:{k}": v for k, v in self.values.items()})
        arrays.update({f"curve:{k}": v for k, v in self.curves.items()})
        return arrays

    def add(self, rows: np.ndarray, clean: torch.Tensor, results) -> None:
        """Keep the clean scores (B,) and the metrics' results of store `rows` (B,), all copied
        to the host with one wait for the device (`to_host`)."""
        values = {
            name: tensor if tensor.dtype == torch.bool else tensor.double()
            for result in results
            for name, tensor in {**result.values, **result.diagnostics, **result.flags}.items()
        }
        curves = {name: t.float() for result in results for name, t in result.curves.items()}
        host = to_host([clean.float(), *values.values(), *curves.values()])
        self.clean[rows] = host[0]
        for name, array in zip(values, host[1 : 1 + len(values)], strict=True):
            if name not in self.values:
                flag = array.dtype == bool
                self.values[name] = np.zeros(self.n, bool) if flag else np.full(self.n, np.nan)
            self.values[name][rows] = array
        for name, array in zip(curves, host[1 + len(values) :], strict=True):
            if name not in self.curves:
                self.curves[name] = np.full((self.n, array.shape[1]), np.nan, np.float32)
            self.curves[name][rows] = array
        self.done[rows] = True

    def table(
        self,
        store: SaliencyStore,
        rows: np.ndarray,
        protocol: Protocol,
        metric_settings: str | None = None,
    ) -> pd.DataFrame:
        """One row per store row of `rows`; the column metric_settings when given."""
        frame = pd.DataFrame(
            {
                "image_id": [store.ids[i] for i in rows],
                "label": store.labels[rows],
                "target": store.targets[rows],
                "clean_score": self.clean[rows],
                "seconds_per_image": store.seconds[rows],
                "model": store.meta.model,
                "method": store.meta.label,
                "protocol": protocol.name,
                "protocol_settings": json.dumps(protocol.to_dict(), sort_keys=True),
            }
        )
        if metric_settings is not None:
            frame["metric_settings"] = metric_settings
        for name, values in self.values.items():
            frame[name] = values[rows]
        return frame
