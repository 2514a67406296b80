"""Batched saliency generation: dataset + model + methods -> one store per (model, method)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xaibench import dist
from xaibench.core.batching import ChunkSize, run_in_chunks
from xaibench.core.errors import ConfigError
from xaibench.core.precision import forward_settings
from xaibench.core.runtime import prepare_model
from xaibench.core.timing import SpanClock, to_host
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.methods import METHODS
from xaibench.methods.base import Explanation, SaliencyMethod
from xaibench.methods.cam import explain_together, pass_groups, shares_layer_pass
from xaibench.methods.targets import explained_score
from xaibench.models.factory import LoadedModel
from xaibench.pipelines import stores as run_stores
from xaibench.pipelines.settings import RunSettings, world_of
from xaibench.results.layout import STORE_FORMATS, store_path
from xaibench.store.base import Rows
from xaibench.store.h5 import COMPRESSIONS
from xaibench.store.meta import TARGETS, StoreMeta
from xaibench.store.writer import DEFAULT_DEPTH, BackgroundWriter


@dataclass
class MethodRun:
    """One method's store and its bookkeeping during a run."""

    method: SaliencyMethod
    store_path: Path
    store: object
    pending: set[int]
    map_shape: tuple[int, ...] | None = None
    batch_size: ChunkSize | None = None


@dataclass
class GenerateSummary:
    """images: rows explained in this run (skipped ones not counted); seconds: wall time."""

    images: int
    seconds: float
    stores: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    """Method -> the batch size it ran at, when CUDA out-of-memory made it lower than asked for."""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def generate(
    loaded: LoadedModel,
    methods: Sequence[str],
    dataset: ImageFolderDataset,
    out_dir: Path,
    settings: RunSettings,
    *,
    target: str = "predicted",
    store_format: str = "h5",
    method_params: dict[str, dict] | None = None,
    write_queue: int = DEFAULT_DEPTH,
    compression: str | None = "lzf",
    world: dist.World | None = None,
    name: str | None = None,
) -> GenerateSummary:
    """Explain every image of `dataset` with each method; resume stores that exist.

    Each method's store is `out_dir/MODEL/METHOD.h5`; with `name` (one method only) it is
    `MODEL/NAME.h5` and records `name`, which the tables show in place of the method: variants of
    one method (another layer, other settings, `target` "label") side by side.

    Images are read once per batch and shared by all methods; each method writes its own store,
    with the generation time per image of each row: the time of the method's call on the batch,
    its device work included (`SpanClock`: CUDA timing events, read with one wait per batch),
    divided by the batch size. CAM methods sharing one pass each record the whole pass's time,
    what that map costs to make on its own.
    Images that cannot be decoded (with the dataset's `skip_bad`) are recorded as done rows with a
    NaN map, target -1 and a NaN score, so the store completes and evaluation leaves them out.

    With a `world` of several processes (`dist.launch` under torchrun), each process explains its
    share of the images into its own shard store and process 0 merges them into the stores; the
    summary counts the images of all processes; `settings` are on the world's device.
    The forward runs at `settings.precision`, compiled with `settings.compile`, with deterministic
    algorithms only with `settings.deterministic`; stores are written by
    a background thread with up to `write_queue` batches queued (0: in this thread); new stores'
    maps are compressed with `compression` ("lzf", "gzip" or None: faster to write, larger). A
    method that runs out of CUDA memory goes on at half the batch size (`summary.batch_sizes`).
    """
    check_generate(methods, dataset, settings, target, store_format, compression, name)
    world = world_of(settings, world)
    model = prepare_model(loaded.model, settings.device)
    runs, outputs = _open_runs(
        model, loaded, methods, dataset, out_dir, settings.precision, target, store_format,
        method_params or {}, write_queue, compression, world, name,
    )  # fmt: skip
    groups = _pass_groups(runs, settings.batch_size)
    labels = torch.as_tensor(dataset.labels) if target == "label" else None
    started = time.perf_counter()
    try:
        with forward_settings(
            model, settings.device, settings.precision, settings.compile, settings.deterministic
        ):
            explained = _explain_all(model, groups, dataset, labels, settings, world, loaded.name)
            _record_all_skipped(runs, dataset, world)
    finally:
        _close_all(runs)
    run_stores.finish_stores(world, outputs, dataset.ids, dataset.labels)
    counts = world.all_gather((explained, dataset.bad_ids))
    return GenerateSummary(
        images=sum(images for images, _ in counts),
        seconds=time.perf_counter() - started,
        stores=[r.store_path for r in runs],
        skipped=[image_id for _, bad in counts for image_id in bad],
        batch_sizes={r.method.name: r.batch_size.value for r in runs if r.batch_size.reduced},
    )


def check_generate(
    methods: Sequence[str],
    dataset: ImageFolderDataset,
    settings: RunSettings,
    target: str,
    store_format: str,
    compression: str | None = "lzf",
    name: str | None = None,
) -> None:
    """ConfigError, naming the parameter, for a request `generate` cannot run."""
    if len(set(methods)) != len(methods):
        raise ConfigError(f"names a method twice: {', '.join(methods)}", param="methods")
    if name is not None:
        check_store_name(name, methods)
    refused = [
        name
        for name in methods
        if settings.compile and not METHODS.get(name, param="methods").compilable
    ]
    if refused:
        raise ConfigError(
            f"cannot run {', '.join(refused)}: they swap modules of the model during each call, "
            "so the compiled forward would recompile on every batch; leave out `compile`",
            param="compile",
        )
    check_target(target, dataset)
    if store_format not in STORE_FORMATS:
        raise ConfigError(
            f"{store_format!r}: use one of {', '.join(STORE_FORMATS)}", param="store_format"
        )
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"{compression!r}: use one of {', '.join(map(str, COMPRESSIONS))}", param="compression"
        )


STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_store_name(name: str, methods: Sequence[str]) -> None:
    """ConfigError unless `name` can name the store of the one method in `methods`: a file stem
    of letters, digits and . _ + - that is no other method's name."""
    if len(methods) != 1:
        raise ConfigError(
            f"{name!r} names one store: give one method, not {len(methods)}", param="name"
        )
    if not STORE_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r}: use letters, digits and . _ + - (a file name, e.g. gradcam-layer3)",
            param="name",
        )
    if name != methods[0] and METHODS.knows(name):
        raise ConfigError(
            f"{name!r} is another method's name; give the variant a name of its own",
            param="name",
        )


def check_target(target: str, dataset: ImageFolderDataset) -> None:
    """ConfigError unless `target` is one of `TARGETS` that every image of `dataset` has."""
    if target not in TARGETS:
        raise ConfigError(f"{target!r}: use one of {', '.join(TARGETS)}", param="target")
    if target == "label" and (dataset.labels < 0).any():
        first = dataset.ids[int(np.argmax(dataset.labels < 0))]
        raise ConfigError(
            f"'label' needs a label for every image, but {first} has none; "
            "give `labels_file` or use `target` 'predicted'",
            param="target",
        )


def _open_runs(
    model: torch.nn.Module,
    loaded: LoadedModel,
    methods: Sequence[str],
    dataset: ImageFolderDataset,
    out_dir: Path,
    precision: str,
    target: str,
    store_format: str,
    method_params: dict[str, dict],
    write_queue: int,
    compression: str | None,
    world: dist.World,
    store_name: str | None = None,
) -> tuple[list[MethodRun], list[tuple[Path, StoreMeta]]]:
    """Each method on `model`, its store (opened or resumed, `run_stores.open_stores`) and the
    rows it still needs; and the (final store path, run metadata) of every method. `store_name`:
    the one method's variant name (`generate`'s `name`)."""
    planned = []
    for name in methods:
        method = METHODS.get(name)(model, **method_params.get(name, {}))
        path = store_path(out_dir, loaded.name, store_name or name, store_format)
        meta = StoreMeta(
            model=loaded.name,
            weights=loaded.weights,
            method=name,
            method_params=method.params,
            target=target,
            preprocess=dataset.preprocess.to_dict(),
            precision=precision,
            method_library=dict(method.library),
            name=store_name,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        planned.append((method, path, meta))
    outputs = [(path, meta) for _, path, meta in planned]
    opened = run_stores.open_stores(world, outputs, dataset.ids, dataset.labels, compression)
    runs = [
        MethodRun(
            method, path, BackgroundWriter(store, write_queue) if write_queue else store, pending
        )
        for (method, path, _), (store, pending) in zip(planned, opened, strict=True)
    ]
    return runs, outputs


def _pass_groups(runs: list[MethodRun], batch_size: int) -> list[list[MethodRun]]:
    """The runs grouped by `shared_pass_groups`; each group shares one batch size, which CUDA
    out-of-memory lowers for the whole group."""
    groups = [[runs[i] for i in group] for group in shared_pass_groups([r.method for r in runs])]
    for group in groups:
        size = ChunkSize(batch_size, "batch_size")
        for run in group:
            run.batch_size = size
    return groups


def _explain_all(
    model: torch.nn.Module,
    groups: list[list[MethodRun]],
    dataset: ImageFolderDataset,
    labels: torch.Tensor | None,
    settings: RunSettings,
    world: dist.World,
    desc: str,
) -> int:
    """Explain the images some run still needs, batch by batch, with every group that needs them;
    `labels` (N,) are the targets, or None for the predicted classes. Returns the images read."""
    todo = sorted(set().union(*(r.pending for group in groups for r in group)))
    device = settings.device
    labels = None if labels is None else labels.to(device)
    started = time.perf_counter()
    loader = make_loader(
        dataset, settings.batch_size, settings.workers, indices=todo, device=device
    )
    total = sum(world.all_gather(len(todo)))
    bar = world.progress(total, unit="img", desc=desc, disable=not settings.progress)
    explained = 0
    for images, indices in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        _explain_batch(model, groups, images, indices, labels)
        explained += len(indices)
        bar.update(explained + len(dataset.bad) - bar.n)
        elapsed = time.perf_counter() - started
        bar.set_postfix_str(f"{explained / max(elapsed, 1e-9):.1f} img/s")
    bar.close()
    return explained


def _explain_batch(
    model: torch.nn.Module,
    groups: list[list[MethodRun]],
    images: torch.Tensor,
    indices: torch.Tensor,
    labels: torch.Tensor | None,
) -> None:
    """Explain images (B, 3, H, W) of dataset rows `indices` (B,) with each group, each on the
    images its runs still need, and write them; `labels` (N,) on the images' device, or None.

    The groups' work is queued one after the other, each timed as a span of a `SpanClock`; the
    device is waited for once per batch, when the rows of every group are copied to the host.
    """
    device = images.device
    dataset_rows = indices.numpy()
    row_list = dataset_rows.tolist()
    targets = None if labels is None else labels[indices.to(device, non_blocking=True)]
    clock = SpanClock(device)
    clean_logits = None
    done: list[tuple[MethodRun, np.ndarray, int, list[torch.Tensor]]] = []
    for group in groups:
        wanted = [i for i, row in enumerate(row_list) if any(row in r.pending for r in group)]
        if not wanted:
            continue
        selected = None
        if len(wanted) < len(row_list):
            selected = torch.as_tensor(wanted).to(device, non_blocking=True)
        batch = images if selected is None else images[selected]
        batch_targets = targets if targets is None or selected is None else targets[selected]
        with clock.span() as span:
            explanations = _explain(group, batch, batch_targets)
        for run, explanation in zip(group, explanations, strict=True):
            logits = explanation.logits
            if logits is None:
                if clean_logits is None:
                    clean_logits = _clean_logits(model, images, group[0].batch_size)
                logits = clean_logits if selected is None else clean_logits[selected]
            scores = explained_score(logits.float(), explanation.targets, "probability")
            tensors = [explanation.maps.float(), explanation.targets, scores]
            done.append((run, dataset_rows[wanted], span, tensors))
    arrays = iter(to_host([tensor for *_, tensors in done for tensor in tensors]))
    seconds = clock.read()
    for run, rows, span, _ in done:
        maps, run_targets, scores = next(arrays), next(arrays), next(arrays)
        _write_pending(run, rows, maps, run_targets, scores, seconds[span] / len(rows))


def _record_all_skipped(
    runs: list[MethodRun], dataset: ImageFolderDataset, world: dist.World
) -> None:
    """Write the undecodable images of every run (`_record_skipped`). A process whose share held
    only undecodable images takes the map size from another."""
    shapes = world.all_gather([run.map_shape for run in runs])
    for i, run in enumerate(runs):
        run.map_shape = run.map_shape or next((s[i] for s in shapes if s[i]), None)
        _record_skipped(run, sorted(run.pending & set(dataset.bad)))


def _write_pending(
    run: MethodRun,
    rows: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    scores: np.ndarray,
    seconds_per_image: float,
) -> None:
    """Write the rows of a batch still pending in the run's store: dataset `rows` (B,), maps
    (B, h, w), targets (B,), the targets' probabilities (B,) and the generation time per image."""
    mine = np.array([row in run.pending for row in rows.tolist()])
    run.store.write(
        Rows(
            rows[mine],
            maps[mine],
            targets[mine],
            scores[mine],
            seconds=np.full(int(mine.sum()), seconds_per_image, np.float32),
        )
    )
    run.map_shape = tuple(maps.shape[1:])
    run.pending.difference_update(rows[mine].tolist())


def _record_skipped(run: MethodRun, rows: list[int]) -> None:
    """Write undecodable images as done rows: NaN map, target -1, NaN score."""
    if not rows:
        return
    if run.map_shape is None:
        raise ConfigError(
            f"no image of this run could be decoded, so {run.store_path} has no map size; "
            "check the `data_dir` folder"
        )
    indices = np.asarray(rows, dtype=np.int64)
    run.store.write(
        Rows(
            indices,
            np.full((len(rows), *run.map_shape), np.nan, dtype=np.float32),
            np.full(len(rows), -1, dtype=np.int64),
            np.full(len(rows), np.nan, dtype=np.float32),
        )
    )
    run.pending.difference_update(rows)


def _close_all(runs: list[MethodRun]) -> None:
    """Close every store, even when closing one of them fails; re-raise the first failure."""
    failure = None
    for run in runs:
        try:
            run.store.close()
        except BaseException as error:  # Ctrl-C or SIGTERM while closing one: close the rest
            failure = failure or error
    if failure is not None:
        raise failure


def shared_pass_groups(methods: Sequence[SaliencyMethod]) -> list[list[int]]:
    """Positions of `methods` grouped so that CAM methods reading the same layer for the same
    score share one forward and backward (`explain_group`); every other method is a group of its
    own (`shares_layer_pass`, `pass_groups`). Groups keep the methods' order."""
    return pass_groups(
        [(m.layer, m.explains) if shares_layer_pass(type(m)) else None for m in methods]
    )


def explain_group(
    methods: Sequence[SaliencyMethod], images: torch.Tensor, targets: torch.Tensor | None
) -> list[Explanation]:
    """One explanation per method of a `shared_pass_groups` group on images (B, 3, H, W), targets
    (B,) or None: the method's own call, or one pass shared by the group's CAM methods."""
    if len(methods) == 1:
        return [methods[0](images, targets)]
    return explain_together(methods, images, targets)


def _explain(
    group: list[MethodRun], images: torch.Tensor, targets: torch.Tensor | None
) -> list[Explanation]:
    """One explanation per run of the group, in sub-batches that fit the device (`run_in_chunks`)."""
    methods = [run.method for run in group]
    if len(methods) == 1:
        return [methods[0].call_in_chunks(images, targets, group[0].batch_size)]

    def explain(part: slice) -> list[Explanation]:
        return explain_group(methods, images[part], None if targets is None else targets[part])

    parts = run_in_chunks(explain, len(images), group[0].batch_size)
    return [Explanation.concat(list(runs)) for runs in zip(*parts, strict=True)]


@torch.inference_mode()
def _clean_logits(model: torch.nn.Module, images: torch.Tensor, size: ChunkSize) -> torch.Tensor:
    return torch.cat(run_in_chunks(lambda part: model(images[part]), len(images), size))
