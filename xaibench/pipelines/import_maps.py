"""`import_maps`: maps another tool made into a store, so that evaluate, compare and report score
them like xaibench's own."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xaibench.core.errors import ConfigError, DataError
from xaibench.core.precision import forward_settings
from xaibench.core.runtime import prepare_model
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.methods import METHODS
from xaibench.methods.targets import explained_score
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.generate import check_target
from xaibench.pipelines.settings import RunSettings
from xaibench.store import create_or_resume
from xaibench.store.base import Rows, SaliencyStore
from xaibench.store.foreign import (
    ForeignMaps,
    as_map,
    common_shape,
    map_problem,
    match_images,
    open_foreign_maps,
)
from xaibench.store.meta import StoreMeta

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHOWN_PROBLEMS = 20
"""Problems listed one by one in the error; the rest are counted."""


@dataclass
class ImportSummary:
    """images: rows imported in this run; skipped: images recorded without a map (`skip_bad`);
    problems: "FILE: reason" for each map not imported; seconds: wall time."""

    store: Path
    images: int
    seconds: float
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def import_maps(
    source: Path,
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    store_path: Path,
    settings: RunSettings,
    *,
    method: str,
    target: str = "predicted",
    skip_bad: bool = False,
    h5_maps: str | None = None,
    h5_ids: str | None = None,
) -> ImportSummary:
    """Store the maps at `source` (`open_foreign_maps`) of every image of `dataset` in a store at
    `store_path` (.h5 or .npz) as the maps of `method` on `loaded`, with what evaluate needs: each
    image's class explained (`target`: the model's top-1 class or the label, from one forward per
    image at `settings.precision`) and its probability. The store records the model, weights,
    preprocessing and the source; `method` is a name of the user's (not one of xaibench's).

    Resumable: rows already in the store are kept. Maps that are missing, of another shape than
    the first, or hold NaN or infinite values are reported per file: DataError listing them, after
    storing every other map (fix them and run again to add them); with `skip_bad` they are
    recorded as rows with a NaN map and target -1, which evaluate leaves out, and the summary
    lists them.
    """
    _check_request(method, target, dataset)
    started = time.perf_counter()
    with open_foreign_maps(source, dataset.ids, h5_maps=h5_maps, h5_ids=h5_ids) as maps:
        names, refused = match_images(dataset.ids, maps.names)
        meta = StoreMeta(
            model=loaded.name,
            weights=loaded.weights,
            method=method,
            method_params={"imported_from": str(Path(source).resolve()), "format": maps.kind},
            target=target,
            preprocess=dataset.preprocess.to_dict(),
            precision=settings.precision,
        )
        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        store = create_or_resume(store_path, meta, dataset.ids, dataset.labels)
        try:
            imported, bad = _import_rows(maps, names, store, loaded, dataset, settings, target)
        except BaseException:
            store.close()
            raise
        pending = store.pending_indices().tolist()
        unmatched = [row for row in pending if dataset.ids[row] in refused]
        problems = [f"{dataset.ids[row]}: {refused[dataset.ids[row]]}" for row in unmatched]
        problems += [problem for _, problem in bad]
        undecodable = [row for row in pending if row in dataset.bad]
        skipped = sorted({*unmatched, *(row for row, _ in bad), *undecodable})
        if skip_bad:
            _record_skipped(store, skipped)
        store.close()
    summary = ImportSummary(
        Path(store_path),
        imported,
        time.perf_counter() - started,
        skipped=[dataset.ids[i] for i in skipped] if skip_bad else [],
        problems=problems,
    )
    if problems and not skip_bad:
        raise DataError(_problems_text(summary, source))
    return summary


def _check_request(method: str, target: str, dataset: ImageFolderDataset) -> None:
    if not SAFE_NAME.fullmatch(method):
        raise ConfigError(
            f"{method!r}: name the imported maps with letters, digits, '.', '-' and '_' (it is "
            "the store's file name and the method column of the tables)",
            param="method",
        )
    if method in METHODS:
        raise ConfigError(
            f"{method!r} is xaibench's own method; name maps made elsewhere otherwise (e.g. "
            f"{method}-imported), so the tables tell them apart",
            param="method",
        )
    check_target(target, dataset)


def _import_rows(
    maps: ForeignMaps,
    names: dict[str, str],
    store: SaliencyStore,
    loaded: LoadedModel,
    dataset: ImageFolderDataset,
    settings: RunSettings,
    target: str,
) -> tuple[int, list[tuple[int, str]]]:
    """Write every pending row whose image has a good map; returns the rows written and the
    (row, "FILE: reason") of the maps refused."""
    todo = [int(i) for i in store.pending_indices() if dataset.ids[i] in names]
    done = np.flatnonzero(store.done)
    if len(done):
        shape = tuple(store.read_maps(done[:1]).shape[1:])
    else:
        shape = common_shape(maps, (names[dataset.ids[row]] for row in todo))
    model = prepare_model(loaded.model, settings.device)
    labels = torch.as_tensor(dataset.labels)
    loader = make_loader(
        dataset, settings.batch_size, settings.workers, indices=todo, device=settings.device
    )
    bar = _progress(len(todo), settings.progress)
    written, bad = 0, []
    with forward_settings(model, settings.device, settings.precision, False), torch.no_grad():
        for images, indices in loader:
            logits = model(images.to(settings.device, non_blocking=True)).float()
            chosen = logits.argmax(dim=1) if target == "predicted" else labels[indices]
            chosen = chosen.to(logits.device)
            scores = explained_score(logits, chosen, "probability").cpu().numpy()
            keep, rows = [], []
            for position, row in enumerate(indices.tolist()):  # the maps come from files
                name = names[dataset.ids[row]]
                array = maps.read(name)
                problem = map_problem(array, shape)
                if problem is not None:
                    bad.append((row, f"{maps.where(name)}: {problem}"))
                    continue
                keep.append(position)
                rows.append(as_map(array))
            if keep:
                store.write(
                    Rows(indices.numpy()[keep], np.stack(rows), chosen.cpu().numpy()[keep],
                         scores[keep])
                )  # fmt: skip
                written += len(keep)
            bar.update(len(indices))
    bar.close()
    return written, bad


def _record_skipped(store: SaliencyStore, rows: list[int]) -> None:
    """Rows without a usable map as done rows: NaN map, target -1, NaN score."""
    if not rows:
        return
    done = np.flatnonzero(store.done)
    if not len(done):
        raise DataError("no map could be imported, so the store has no map size")
    shape = store.read_maps(done[:1]).shape[1:]
    store.write(
        Rows(
            np.asarray(rows, np.int64),
            np.full((len(rows), *shape), np.nan, np.float32),
            np.full(len(rows), -1, np.int64),
            np.full(len(rows), np.nan, np.float32),
        )
    )


def _problems_text(summary: ImportSummary, source: Path) -> str:
    shown = summary.problems[:SHOWN_PROBLEMS]
    more = len(summary.problems) - len(shown)
    lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
    return (
        f"{len(summary.problems)} map(s) of {source} not imported ({summary.images} imported "
        f"into {summary.store}, which keeps them):\n  {lines}\nfix them and run again to add "
        "them, or pass `skip_bad` to record those images without a map"
    )


def _progress(total: int, enabled: bool):
    from xaibench.core.progress import progress_bar

    return progress_bar(total=total, unit="img", desc="import", disable=not enabled)
