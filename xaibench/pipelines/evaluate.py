"""Batched evaluation: store + dataset + model -> per-image table, curves and a summary.

Results are checkpointed next to the outputs while the run goes (atomically, at most every
`checkpoint_seconds`), so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xaibench import dist
from xaibench.core.atomic import write_atomic as _atomic
from xaibench.core.batching import ChunkSize
from xaibench.core.errors import ConfigError, StoreError
from xaibench.core.precision import check_precision, forward_settings
from xaibench.core.runtime import default_chunk_size, prepare_model
from xaibench.data.boxes import BoxFolder
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.metrics import (
    METRICS,
    MetricContext,
    Protocol,
    saliency_at_input_size,
    score_function,
)
from xaibench.metrics.mc_dropout import MC_COLUMNS, MCDropout
from xaibench.models.factory import LoadedModel
from xaibench.pipelines import checkpoint as checkpoints
from xaibench.results import layout
from xaibench.results.stats import summarise
from xaibench.store import open_store
from xaibench.store.base import SaliencyStore

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


def checkpoint_path(out_dir: Path, store_path: Path, protocol: Protocol) -> Path:
    """`OUT/.STEM.checkpoint.npz`: the hidden checkpoint of the evaluation whose tables go to
    `out_dir` (the `checkpoint` of `evaluate_store`)."""
    return layout.evaluation_checkpoint(out_dir, layout.evaluation_stem(store_path, protocol.name))


def check_store_matches(
    store: SaliencyStore, loaded: LoadedModel, dataset: ImageFolderDataset
) -> np.ndarray:
    """Refuse a store made with another model, weights, preprocessing or image list.

    Returns (N,) the dataset index of every store row; with a subset of the images
    (`dataset.subset_file`), -1 for the store's rows outside it, which are not evaluated.
    """
    preprocess = dataset.preprocess.to_dict()
    store.check_run({"model": loaded.name, "weights": loaded.weights, "preprocess": preprocess})
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    missing = [image_id for image_id in store.ids if image_id not in position]
    if missing and dataset.subset_file is None:
        raise StoreError(
            f"{store.path}: field 'ids': {len(missing)} image(s) of the store are not in "
            f"{dataset.root}, first {missing[0]!r}; point --data at the folder the store was made from"
        )
    rows = np.array([position.get(image_id, -1) for image_id in store.ids], dtype=np.int64)
    if not (rows >= 0).any():
        raise StoreError(
            f"{store.path}: none of its images is in the subset {dataset.subset_file}; "
            "give the subset the store was made from, or a subset of it"
        )
    known = (rows >= 0) & (store.labels >= 0) & (dataset.labels[rows] >= 0)
    if (store.labels[known] != dataset.labels[rows][known]).any():
        first = int(np.flatnonzero(store.labels[known] != dataset.labels[rows][known])[0])
        raise StoreError(
            f"{store.path}: field 'labels' differs for {store.ids[np.flatnonzero(known)[first]]}; "
            "the store was made with another labelling of the images"
        )
    return rows


def evaluate_store(
    store_path: Path,
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    protocol: Protocol,
    metrics: Sequence[str],
    *,
    device: torch.device,
    batch_size: int,
    chunk_size: int | None = None,
    workers: int = 0,
    limit: int | None = None,
    allow_incomplete: bool = False,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = 60.0,
    precision: str = "fp32",
    compile: bool = False,
    progress: bool = True,
    world: dist.World | None = None,
    mc_dropout: int = 0,
    mc_seed: int = 0,
    boxes: Path | None = None,
) -> Evaluation:
    """Evaluate the done rows of the store at `store_path` (the first `limit` of them if given)
    with `metrics` under `protocol`. Rows of images skipped at generation (target -1) are left out.

    With `checkpoint`, results so far are saved there every `checkpoint_seconds` and when the run is
    interrupted, and a later call with the same store, protocol and metrics resumes from them.

    With a `world` of several processes (`dist.launch` under torchrun), each process evaluates its
    share of the rows (saving them to its own checkpoint beside `checkpoint`), and every process
    returns the evaluation of all rows.

    With `mc_dropout` K > 0, the columns mc_mean and mc_var (xaibench.metrics.mc_dropout) are added.

    `boxes`: a folder of bounding-box XML files (`xaibench.data.boxes`), which the localisation
    metrics need. The store's generation time per image goes into the column seconds_per_image.

    The forward runs at `precision`, compiled with `compile` (xaibench/core/precision.py); perturbed
    images go through it in chunks of `chunk_size`, halved on CUDA out-of-memory. Both are recorded
    in the summary.
    """
    world = world or dist.World(device=device)
    check_precision(precision, device)
    chunk = ChunkSize(chunk_size or default_chunk_size(device), "chunk_size")
    metric_objects = [METRICS.get(name) for name in metrics]
    box_folder = BoxFolder(boxes, dataset) if boxes is not None else None
    needing = [m.name for m in metric_objects if m.needs_boxes]
    if needing and box_folder is None:
        raise ConfigError(f"{', '.join(needing)} need bounding boxes; pass --boxes DIR")
    with open_store(store_path) as store:
        dataset_rows = check_store_matches(store, loaded, dataset)
        if not store.complete and not allow_incomplete:
            raise StoreError(
                f"{store.path}: {int((~store.done).sum())} of {len(store)} rows are not done; "
                "finish it by re-running generate, or pass --allow-incomplete to evaluate the rest"
            )
        rows = np.flatnonzero(store.done & (store.targets >= 0) & (dataset_rows >= 0))[:limit]
        if len(rows) == 0:
            raise StoreError(f"{store.path} has no finished row with a map to evaluate")
        model = prepare_model(loaded.model, device).eval()
        score_fn = score_function(model, protocol.score)
        mc = (
            MCDropout(model, mc_dropout, seed=mc_seed, input_size=loaded.input_size)
            if mc_dropout
            else None
        )
        key = _run_key(store, protocol, [*metrics, *([mc.key()] if mc else [])], precision, boxes)
        state = _Results.resume(checkpoints.checkpoint_files(checkpoint), key, len(store))
        world.barrier()  # every process has read the checkpoints before any saves its own
        checkpoint = checkpoints.checkpoint_of(world, checkpoint)
        remaining = rows[~state.done[rows]]
        todo = world.shard(remaining)
        bar = world.progress(
            len(rows),
            len(rows) - len(remaining),
            unit="img",
            desc=f"{store.meta.method}/{protocol.name}",
            disable=not progress,
        )
        last_save = time.monotonic()
        loader = make_loader(dataset, batch_size, workers, dataset_rows[todo], device=device)
        store_row_of = {index: row for row, index in enumerate(dataset_rows.tolist()) if index >= 0}
        try:
            with forward_settings(model, device, precision, compile):
                for images, indices in loader:
                    batch_rows = np.array([store_row_of[i] for i in indices.tolist()])
                    images = images.to(device, non_blocking=True).contiguous(
                        memory_format=torch.channels_last
                    )
                    maps = torch.from_numpy(store.read_maps(batch_rows)).to(device)
                    targets = torch.from_numpy(store.targets[batch_rows]).to(device)
                    batch_boxes = None
                    if box_folder is not None:
                        batch_boxes = box_folder.batch(
                            indices.numpy(), store.targets[batch_rows], device
                        )
                    ctx = MetricContext(
                        images=images,
                        saliency=saliency_at_input_size(maps, tuple(images.shape[-2:])),
                        targets=targets,
                        clean_scores=score_fn(images, targets),
                        score_fn=score_fn,
                        protocol=protocol,
                        chunk_size=chunk,
                        boxes=batch_boxes,
                        pixel_std=dataset.preprocess.std,
                    )
                    results = [m.score_batch(ctx) for m in metric_objects]
                    results += [mc.score_batch(ctx, batch_rows)] if mc else []
                    state.add(batch_rows, ctx.clean_scores, results)
                    bar.update(len(batch_rows))
                    if checkpoint and time.monotonic() - last_save > checkpoint_seconds:
                        state.save(checkpoint)
                        last_save = time.monotonic()
        except BaseException:
            if checkpoint:
                state.save(checkpoint)
            raise
        bar.close()
        state = _Results.from_arrays(
            key, len(store), checkpoints.gather_rows(world, state.arrays(), todo)
        )
        per_image = state.table(store, rows, protocol)
        curves = {name: values[rows] for name, values in state.curves.items()}
    value_columns = [c for c in state.values if c in METRICS or c in MC_COLUMNS]
    value_columns.append("seconds_per_image")
    summary = summarise(per_image, value_columns, by=["model", "method", "protocol"])
    summary["protocol_settings"] = per_image["protocol_settings"].iloc[0]
    summary["precision"] = precision
    summary["chunk_size"] = chunk.value
    return Evaluation(
        per_image, curves, summary, protocol, layout.evaluation_stem(store_path, protocol.name)
    )


def write_evaluation(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Per-image CSV (and Parquet when pyarrow is installed), curves npz, summary CSV; atomic."""
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
    """Per-row results gathered over batches, with a resumable checkpoint file."""

    def __init__(self, key: str, n: int):
        self.key, self.n = key, n
        self.done = np.zeros(n, dtype=bool)
        self.clean = np.full(n, np.nan, dtype=np.float32)
        self.values: dict[str, np.ndarray] = {}
        self.curves: dict[str, np.ndarray] = {}

    @classmethod
    def resume(cls, paths: Sequence[Path], key: str, n: int) -> _Results:
        """The results saved in the checkpoints `paths` of this evaluation (one per process), merged."""
        parts = [saved for path in paths if (saved := cls._read(path, key)) is not None]
        if not parts:
            return cls(key, n)
        state = cls.from_arrays(key, n, checkpoints.merge_rows(parts))
        log.info("resuming from %s: %d rows already evaluated", paths[0], int(state.done.sum()))
        return state

    @staticmethod
    def _read(path: Path, key: str) -> dict[str, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["key"]) != key:
                    log.warning("%s is from another evaluation; leaving it out", path)
                    return None
                return {name: saved[name] for name in saved.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log.warning("cannot read checkpoint %s (%s); leaving it out", path, error)
            return None

    @classmethod
    def from_arrays(cls, key: str, n: int, arrays: dict[str, np.ndarray]) -> _Results:
        """The inverse of `arrays`."""
        state = cls(key, n)
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
        (N,) and `curve:NAME` (N, points), and the evaluation's `key`."""
        arrays = {"key": np.array(self.key), "done": self.done, "clean": self.clean}
        arrays.update({f"value:{k}": v for k, v in self.values.items()})
        arrays.update({f"curve:{k}": v for k, v in self.curves.items()})
        return arrays

    def add(self, rows: np.ndarray, clean: torch.Tensor, results) -> None:
        self.clean[rows] = clean.float().cpu().numpy()
        for result in results:
            for name, tensor in {**result.values, **result.diagnostics, **result.flags}.items():
                flag = tensor.dtype == torch.bool
                if name not in self.values:
                    self.values[name] = np.zeros(self.n, bool) if flag else np.full(self.n, np.nan)
                self.values[name][rows] = tensor.cpu().numpy() if flag else tensor.double().cpu()
            for name, tensor in result.curves.items():
                if name not in self.curves:
                    self.curves[name] = np.full((self.n, tensor.shape[1]), np.nan, np.float32)
                self.curves[name][rows] = tensor.float().cpu().numpy()
        self.done[rows] = True

    def save(self, path: Path) -> None:
        arrays = self.arrays()
        _atomic(path, lambda p: np.savez(p, **arrays))

    def table(self, store: SaliencyStore, rows: np.ndarray, protocol: Protocol) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "image_id": [store.ids[i] for i in rows],
                "label": store.labels[rows],
                "target": store.targets[rows],
                "clean_score": self.clean[rows],
                "seconds_per_image": store.seconds[rows],
                "model": store.meta.model,
                "method": store.meta.method,
                "protocol": protocol.name,
                "protocol_settings": json.dumps(protocol.to_dict(), sort_keys=True),
            }
        )
        for name, values in self.values.items():
            frame[name] = values[rows]
        return frame
