"""Batched evaluation: store + dataset + model -> per-image table, curves and a summary.

Results are checkpointed next to the outputs while the run goes (atomically, at most every
`checkpoint_seconds`), so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from xaibench.batching import ChunkSize
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.errors import StoreError
from xaibench.metrics import (
    METRICS,
    MetricContext,
    Protocol,
    saliency_at_input_size,
    score_function,
    summarise,
)
from xaibench.models.factory import LoadedModel
from xaibench.precision import check_precision, forward_settings
from xaibench.runtime import default_chunk_size, prepare_model
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
        stem = self.stem
        return {
            "per_image": Path(out_dir) / f"{stem}.per_image.csv",
            "curves": Path(out_dir) / f"{stem}.curves.npz",
            "summary": Path(out_dir) / f"{stem}.summary.csv",
        }


def check_store_matches(
    store: SaliencyStore, loaded: LoadedModel, dataset: ImageFolderDataset
) -> np.ndarray:
    """Refuse a store made with another model, weights, preprocessing or image list.

    Returns (N,) the dataset index of every store row.
    """
    preprocess = dict(dataset.preprocess.to_dict(), name=store.meta.preprocess.get("name"))
    store.check_run({"model": loaded.name, "weights": loaded.weights, "preprocess": preprocess})
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    missing = [image_id for image_id in store.ids if image_id not in position]
    if missing:
        raise StoreError(
            f"{store.path}: field 'ids': {len(missing)} image(s) of the store are not in "
            f"{dataset.root}, first {missing[0]!r}; point --data at the folder the store was made from"
        )
    rows = np.array([position[image_id] for image_id in store.ids], dtype=np.int64)
    known = (store.labels >= 0) & (dataset.labels[rows] >= 0)
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
) -> Evaluation:
    """Evaluate the done rows of the store at `store_path` (the first `limit` of them if given)
    with `metrics` under `protocol`. Rows of images skipped at generation (target -1) are left out.

    With `checkpoint`, results so far are saved there every `checkpoint_seconds` and when the run is
    interrupted, and a later call with the same store, protocol and metrics resumes from them.
    The forward runs at `precision`, compiled with `compile` (xaibench/precision.py); perturbed
    images go through it in chunks of `chunk_size`, halved on CUDA out-of-memory. Both are recorded
    in the summary.
    """
    check_precision(precision, device)
    chunk = ChunkSize(chunk_size or default_chunk_size(device), "chunk_size")
    metric_objects = [METRICS.get(name) for name in metrics]
    with open_store(store_path) as store:
        dataset_rows = check_store_matches(store, loaded, dataset)
        if not store.complete and not allow_incomplete:
            raise StoreError(
                f"{store.path}: {int((~store.done).sum())} of {len(store)} rows are not done; "
                "finish it by re-running generate, or pass --allow-incomplete to evaluate the rest"
            )
        rows = np.flatnonzero(store.done & (store.targets >= 0))[:limit]
        if len(rows) == 0:
            raise StoreError(f"{store.path} has no finished row with a map to evaluate")
        model = prepare_model(loaded.model, device).eval()
        score_fn = score_function(model, protocol.score)
        key = _run_key(store, protocol, metrics, precision)
        state = _Results.resume(checkpoint, key, len(store))
        todo = rows[~state.done[rows]]
        bar = tqdm(
            total=len(rows),
            initial=len(rows) - len(todo),
            unit="img",
            desc=f"{store.meta.method}/{protocol.name}",
            disable=not progress,
        )
        last_save = time.monotonic()
        loader = make_loader(dataset, batch_size, workers, dataset_rows[todo], device=device)
        store_row_of = dict(zip(dataset_rows.tolist(), range(len(dataset_rows)), strict=True))
        restore = contextlib.ExitStack()
        try:
            restore.enter_context(forward_settings(model, device, precision, compile))
            for images, indices in loader:
                batch_rows = np.array([store_row_of[i] for i in indices.tolist()])
                images = images.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last
                )
                maps = torch.from_numpy(store.read_maps(batch_rows)).to(device)
                targets = torch.from_numpy(store.targets[batch_rows]).to(device)
                ctx = MetricContext(
                    images=images,
                    saliency=saliency_at_input_size(maps, tuple(images.shape[-2:])),
                    targets=targets,
                    clean_scores=score_fn(images, targets),
                    score_fn=score_fn,
                    protocol=protocol,
                    chunk_size=chunk,
                )
                state.add(
                    batch_rows, ctx.clean_scores, [m.score_batch(ctx) for m in metric_objects]
                )
                bar.update(len(batch_rows))
                if checkpoint and time.monotonic() - last_save > checkpoint_seconds:
                    state.save(checkpoint)
                    last_save = time.monotonic()
        except BaseException:
            if checkpoint:
                state.save(checkpoint)
            raise
        finally:
            restore.close()
        bar.close()
        per_image = state.table(store, rows, protocol)
        curves = {name: values[rows] for name, values in state.curves.items()}
    value_columns = [c for c in state.values if c in METRICS]
    summary = summarise(per_image, value_columns, by=["model", "method", "protocol"])
    summary["protocol_settings"] = per_image["protocol_settings"].iloc[0]
    summary["precision"] = precision
    summary["chunk_size"] = chunk.value
    return Evaluation(
        per_image, curves, summary, protocol, f"{Path(store_path).stem}-{protocol.name}"
    )


def write_evaluation(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Per-image CSV (and Parquet when pyarrow is installed), curves npz, summary CSV; atomic."""
    paths = evaluation.paths(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
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
    paths["parquet"] = paths["per_image"].with_suffix(".parquet")
    _atomic(paths["parquet"], lambda p: evaluation.per_image.to_parquet(p, index=False))
    return paths


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def _run_key(
    store: SaliencyStore, protocol: Protocol, metrics: Sequence[str], precision: str
) -> str:
    return json.dumps(
        {
            "store": store.meta.to_dict(),
            "protocol": protocol.to_dict(),
            "metrics": list(metrics),
            "precision": precision,
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
    def resume(cls, path: Path | None, key: str, n: int) -> _Results:
        state = cls(key, n)
        if path is None or not path.exists():
            return state
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["key"]) != key:
                    log.warning("%s is from another evaluation; starting afresh", path)
                    return state
                state.done, state.clean = saved["done"], saved["clean"]
                for name in saved.files:
                    kind, _, column = name.partition(":")
                    if kind == "value":
                        state.values[column] = saved[name]
                    elif kind == "curve":
                        state.curves[column] = saved[name]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log.warning("cannot read checkpoint %s (%s); starting afresh", path, error)
            return cls(key, n)
        log.info("resuming from %s: %d rows already evaluated", path, int(state.done.sum()))
        return state

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
        arrays = {"key": np.array(self.key), "done": self.done, "clean": self.clean}
        arrays.update({f"value:{k}": v for k, v in self.values.items()})
        arrays.update({f"curve:{k}": v for k, v in self.curves.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(path, lambda p: np.savez(p, **arrays))

    def table(self, store: SaliencyStore, rows: np.ndarray, protocol: Protocol) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "image_id": [store.ids[i] for i in rows],
                "label": store.labels[rows],
                "target": store.targets[rows],
                "clean_score": self.clean[rows],
                "model": store.meta.model,
                "method": store.meta.method,
                "protocol": protocol.name,
                "protocol_settings": json.dumps(protocol.to_dict(), sort_keys=True),
            }
        )
        for name, values in self.values.items():
            frame[name] = values[rows]
        return frame
