"""The sanity-check pipeline: dataset + model + method -> per-image, per-stage similarity table.

Per batch, a deep copy of the model is reset to the original weights, the method explains the
images (stage 0, which also fixes the targets: the original model's top-1 classes), and then the
stages are randomised one after the other, cumulatively, with one explanation of the batch per
stage. Every stage is seeded from (seed, stage), so each batch sees the same randomised models and
a run is reproducible, and the rows of an image do not depend on its batch: a run interrupted
with a `checkpoint` resumes with the images not yet done. The model passed in is never changed.

Maps are compared at the model's input size (bilinear, as the metrics see them; docs/metrics).
Departures from Adebayo et al. 2018: layers are re-initialised with their own
`reset_parameters()` (batch-norm layers thus get weight 1, bias 0 and fresh running statistics),
and a method is flagged when the mean Spearman correlation with the original maps at the last
stage (every parameterised layer randomised; NaN counted as 0) is above `threshold`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from xaibench.core.atomic import write_atomic
from xaibench.core.errors import ConfigError
from xaibench.core.precision import tf32_settings
from xaibench.core.progress import progress_bar
from xaibench.core.runtime import prepare_model
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.methods import METHODS
from xaibench.metrics.base import saliency_at_input_size
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.checkpoint import Checkpoint, remove_checkpoint
from xaibench.pipelines.settings import RunSettings
from xaibench.results import layout
from xaibench.results.sanity import (
    DEFAULT_THRESHOLD,
    SANITY_COLUMNS,
    SANITY_STATISTICS,
    SanityResult,
)
from xaibench.sanity.similarity import map_similarity
from xaibench.sanity.stages import randomisation_stages, randomise

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def sanity_check(
    loaded: LoadedModel,
    method: str,
    dataset: ImageFolderDataset,
    settings: RunSettings,
    *,
    seed: int = 0,
    depth: int | None = None,
    method_params: Mapping[str, Any] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SanityResult:
    """Cascading randomisation of `loaded.model` for `method` on every image of `dataset`, on
    `settings.device` in batches of `settings.batch_size`, in float32 (`settings.precision` fp32,
    or tf32: the CUDA default, TF32 convolutions), eager; `threshold` in [-1, 1].

    With `checkpoint`, the rows so far are saved there every `checkpoint_seconds` and when the run
    is interrupted; a later call with the same settings skips the images already done.
    """
    if settings.precision not in ("fp32", "tf32") or settings.compile:
        raise ConfigError(
            f"sanity_check runs in float32 (fp32 or tf32) without compile, not "
            f"precision={settings.precision!r}, compile={settings.compile}"
        )
    if not -1 <= threshold <= 1:  # NaN too
        raise ConfigError(f"threshold {threshold!r}: give a Spearman correlation in [-1, 1]")
    with tf32_settings(settings.precision):  # every forward, the tracing ones too
        device = settings.device
        original = prepare_model(loaded.model, device).eval()
        randomised = copy.deepcopy(original)
        input_size = tuple(dataset.preprocess.input_size)
        stages = randomisation_stages(randomised, input_size, depth)
        params = dict(method_params or {})
        explain = METHODS.get(method)(randomised, **params)
        stage_names = ["", *(stage.name for stage in stages)]
        key = json.dumps(
            {
                "model": loaded.name,
                "weights": loaded.weights,
                "method": method,
                "params": params,
                "seed": seed,
                "stages": stage_names,
                "preprocess": dataset.preprocess.to_dict(),
            },
            sort_keys=True,
        )
        saved = Checkpoint(checkpoint, key, run="sanity run")
        frames = _resume(saved)
        done = set().union(*(set(f["image_id"]) for f in frames))
        todo = [i for i, image_id in enumerate(dataset.ids) if image_id not in done]
        loader = make_loader(dataset, settings.batch_size, settings.workers, todo, device)
        bar = progress_bar(
            total=len(dataset) * len(stage_names),
            initial=(len(dataset) - len(todo)) * len(stage_names),
            unit="map",
            desc=f"{method} sanity",
            disable=not settings.progress,
        )
        with saved.saving(lambda: _arrays(frames), checkpoint_seconds) as tick:
            for images, indices in loader:
                images = images.to(device, non_blocking=True)
                images = images.contiguous(memory_format=torch.channels_last)
                ids = [dataset.ids[i] for i in indices.tolist()]
                frames.append(_batch_rows(explain, randomised, original, stages, images, ids, seed))
                bar.update(len(ids) * len(stage_names))
                tick()
        bar.close()
        table = _table(frames).sort_values(["stage", "image_id"], kind="stable", ignore_index=True)
        return SanityResult(method, table, stages, threshold)


def _batch_rows(explain, randomised, original, stages, images, ids, seed) -> pd.DataFrame:
    """The rows of one batch: reset the copy, explain, then randomise and explain stage by stage."""
    input_size = tuple(images.shape[-2:])
    randomised.load_state_dict(original.state_dict())
    first = explain(images)
    reference = saliency_at_input_size(first.maps.detach(), input_size)
    columns: dict[str, list] = {name: [] for name in SANITY_COLUMNS}
    for index in range(len(stages) + 1):
        if index == 0:
            maps = reference
        else:
            randomise(randomised, stages[index - 1], seed, index)
            maps = saliency_at_input_size(explain(images, first.targets).maps.detach(), input_size)
        scores = map_similarity(reference, maps)
        columns["image_id"] += ids
        columns["stage"] += [index] * len(ids)
        columns["layer"] += [stages[index - 1].name if index else ""] * len(ids)
        for name in SANITY_STATISTICS:
            columns[name] += scores[name].cpu().tolist()
    return pd.DataFrame(columns, columns=list(SANITY_COLUMNS))


def _table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SANITY_COLUMNS)


def _arrays(frames: list[pd.DataFrame]) -> dict[str, np.ndarray]:
    """The rows so far as the checkpoint holds them: one array (rows,) per column."""
    table = _table(frames)
    arrays = {name: np.asarray(table[name], dtype=str) for name in ("image_id", "layer")}
    arrays["stage"] = np.asarray(table["stage"], dtype=np.int64)
    arrays.update({name: np.asarray(table[name], dtype=np.float64) for name in SANITY_STATISTICS})
    return arrays


def _resume(checkpoint: Checkpoint) -> list[pd.DataFrame]:
    """The rows saved by the same run, or none. A checkpoint of another run is removed."""
    parts = checkpoint.load(remove_stale=True)
    if not parts or not len(parts[0]["image_id"]):
        return []
    rows = pd.DataFrame({name: parts[0][name] for name in SANITY_COLUMNS})
    log.info(
        "resuming from %s: %d images already done", checkpoint.path, rows["image_id"].nunique()
    )
    return [rows]


def write_sanity(
    result: SanityResult,
    out_dir: Path,
    checkpoint: Path | None = None,
    columns: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """`METHOD.sanity.csv` (the table, with `columns` (name -> value) added last) and
    `METHOD.sanity.png` (the plot) in `out_dir`, atomic; then removes `checkpoint` (the
    `checkpoint` of `sanity_check`), whose rows are written."""
    paths = layout.sanity_paths(out_dir, result.method)
    table = result.table.assign(**columns) if columns else result.table
    write_atomic(paths["table"], lambda p: table.to_csv(p, index=False, na_rep="NaN"))
    write_atomic(paths["plot"], lambda p: plot_sanity(result).savefig(p, format="png", dpi=120))
    remove_checkpoint(checkpoint)
    return paths


def plot_sanity(result: SanityResult) -> Figure:
    """`sanity_figure` of one method with its threshold, titled with the verdict."""
    from xaibench.results.sanity_figure import sanity_figure

    figure = sanity_figure({result.method: result.table}, threshold=result.threshold)
    verdict = "FLAGGED: maps do not depend on the model" if result.flagged else "passes"
    figure.suptitle(
        f"{result.method}: {verdict} (final mean Spearman {result.final_spearman:.3f}, "
        f"threshold {result.threshold:g})",
        fontsize=10,
    )
    return figure
