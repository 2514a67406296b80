"""Batched saliency generation: dataset + model + methods -> one store per (model, method)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import xaibench
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.errors import ConfigError
from xaibench.methods import METHODS
from xaibench.methods.base import SaliencyMethod
from xaibench.models.factory import LoadedModel
from xaibench.runtime import prepare_model
from xaibench.store import create_or_resume
from xaibench.store.meta import StoreMeta

TARGETS = ("predicted", "label")
STORE_FORMATS = ("h5", "npz")


@dataclass
class MethodRun:
    """One method's store and its bookkeeping during a run."""

    method: SaliencyMethod
    store_path: Path
    store: object
    pending: set[int]
    seconds: float = 0.0
    written: int = 0


@dataclass
class GenerateSummary:
    images: int
    seconds: float
    stores: list[Path] = field(default_factory=list)
    method_seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def store_path(out_dir: Path, model_name: str, method: str, store_format: str) -> Path:
    """`runs/vgg16/tgrad.h5`: one folder per model, one store per method."""
    return (
        Path(out_dir) / model_name.replace(":", "_").replace("/", "_") / f"{method}.{store_format}"
    )


def generate(
    loaded: LoadedModel,
    methods: Sequence[str],
    dataset: ImageFolderDataset,
    out_dir: Path,
    *,
    device: torch.device,
    batch_size: int,
    target: str = "predicted",
    store_format: str = "h5",
    workers: int = 0,
    method_params: dict[str, dict] | None = None,
    progress: bool = True,
) -> GenerateSummary:
    """Explain every image of `dataset` with each method; resume stores that exist.

    Images are read once per batch and shared by all methods; each method writes its own store.
    """
    if target not in TARGETS:
        raise ConfigError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    if store_format not in STORE_FORMATS:
        raise ConfigError(f"--store {store_format!r}: use one of {', '.join(STORE_FORMATS)}")
    if target == "label" and (dataset.labels < 0).any():
        first = dataset.ids[int(np.argmax(dataset.labels < 0))]
        raise ConfigError(
            f"--target label needs a label for every image, but {first} has none; "
            "give a labels file or use --target predicted"
        )
    model = prepare_model(loaded.model, device)
    params = method_params or {}
    runs = []
    for name in methods:
        method = METHODS.get(name)(model, **params.get(name, {}))
        path = store_path(out_dir, loaded.name, name, store_format)
        meta = StoreMeta(
            model=loaded.name,
            weights=loaded.weights,
            method=name,
            method_params=method.params,
            target=target,
            preprocess=dataset.preprocess.to_dict(),
            xaibench_version=xaibench.__version__,
            torch_version=torch.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        store = create_or_resume(path, meta, dataset.ids, dataset.labels)
        runs.append(MethodRun(method, path, store, set(store.pending_indices().tolist())))

    todo = sorted(set().union(*(r.pending for r in runs)))
    labels = torch.as_tensor(dataset.labels)
    started = time.perf_counter()
    try:
        loader = make_loader(dataset, batch_size, workers, indices=todo)
        bar = tqdm(total=len(todo), unit="img", desc=loaded.name, disable=not progress)
        for images, indices in loader:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            clean_logits = None
            for run in runs:
                rows = [i for i, index in enumerate(indices.tolist()) if index in run.pending]
                if not rows:
                    continue
                selected = torch.as_tensor(rows)
                batch, batch_indices = images[selected.to(device)], indices[selected]
                targets = labels[batch_indices].to(device) if target == "label" else None
                clock = time.perf_counter()
                explanation = run.method(batch, targets)
                logits = explanation.logits
                if logits is None:
                    if clean_logits is None:
                        with torch.inference_mode():
                            clean_logits = model(images)
                    logits = clean_logits[selected.to(device)]
                scores = logits.float().softmax(dim=1).gather(1, explanation.targets[:, None])[:, 0]
                maps = explanation.maps.detach().float().cpu().numpy()
                run.seconds += _elapsed(clock, device)
                run.store.write(
                    batch_indices.numpy(),
                    maps,
                    explanation.targets.cpu().numpy(),
                    scores.detach().cpu().numpy(),
                    dataset.labels[batch_indices.numpy()],
                )
                run.written += len(rows)
                run.pending.difference_update(batch_indices.tolist())
            bar.update(len(indices))
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{bar.n / max(elapsed, 1e-9):.1f} img/s")
        bar.close()
    finally:
        for run in runs:
            run.store.close()
    return GenerateSummary(
        images=len(todo),
        seconds=time.perf_counter() - started,
        stores=[r.store_path for r in runs],
        method_seconds={r.method.name: r.seconds for r in runs},
        skipped=list(getattr(dataset, "bad_ids", [])),
    )


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
