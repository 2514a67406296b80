"""`run_experiment`: carry out a plan stage by stage, skipping what is done, resuming what was cut
short, and recording everything in run.json.

Each unit runs through the library call its command uses (`prepare_dataset` and `verify_dataset`,
`generate`, `evaluate_stores`, `sanity_check`, the comparison tables, `build_report`), so a run's
stores and tables are those the commands write, with the config's sha256 added as the last column
of every table. A unit whose key changed has its old outputs removed first; one that was running
when the run stopped resumes through its stage's own checkpoints.

Under torchrun every process runs the plan: generate and evaluate share out their images, and the
dataset, sanity, compare and report stages run on process 0 while the others wait.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xaibench import dist
from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import DataError
from xaibench.data.classes import imagenet_classes
from xaibench.data.index import DatasetIndex, subset_rows
from xaibench.experiments.check import check_experiment
from xaibench.experiments.config import Experiment, own_model
from xaibench.experiments.manifest import Manifest
from xaibench.experiments.plan import Plan, Unit, digest, make_plan, method_settings
from xaibench.pipelines.checkpoint import remove_checkpoint
from xaibench.pipelines.settings import RunSettings
from xaibench.results import layout
from xaibench.results.layout import CONFIG_COLUMN, STORE_COMPRESSIONS

Echo = Callable[[str], None]


@dataclass
class DatasetInfo:
    """What the later stages read: the image root, the labels and image lists, the boxes folder,
    the number of images and the digest of their (id, label) list."""

    root: Path
    labels_file: Path | None
    subset_file: Path | None
    boxes: Path | None
    images: int
    index_sha256: str

    def to_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass
class RunResult:
    """What a run did: units run and skipped, its comparison (Markdown) and report path."""

    plan: Plan
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    comparison: str = ""
    report: Path | None = None
    seconds: float = 0.0


def run_experiment(
    experiment: Experiment,
    *,
    progress: bool = True,
    echo: Echo = lambda line: None,
) -> RunResult:
    """Check `experiment`, then run every unit of its plan not already done; `echo` receives one
    line per stage and unit (process 0 only) and `progress` draws each stage's bars."""
    started = time.perf_counter()
    check_experiment(experiment)
    plan = make_plan(experiment)
    run = experiment.config["run"]
    settings = RunSettings.resolve(
        run_device(run["device"]),
        batch_size=run["batch_size"],
        workers=run["workers"],
        chunk_size=run["chunk_size"],
        precision=run["precision"],
        compile=run["compile"],
        progress=progress,
        deterministic=run["deterministic"],
    )
    result = RunResult(plan)
    with dist.launch(settings.device, plan.out / "logs") as world:
        settings = settings.on(world.device)
        manifest = Manifest(plan.out)
        manifest.check_owner(experiment)
        say = echo if world.is_main else (lambda line: None)
        if world.is_main:
            manifest.start(experiment, str(settings.device))
        world.barrier()
        stages = _Stages(plan, manifest, settings, world, say, result)
        stages.run_all()
        if world.is_main:
            manifest.finish()
    result.seconds = time.perf_counter() - started
    return result


def run_device(name: str) -> str:
    """`run.device`: "auto" is CUDA when a CUDA device is visible, else the CPU."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Stages:
    """The stages of one run, sharing its plan, manifest, settings and World."""

    def __init__(self, plan, manifest, settings, world, say, result):
        self.plan, self.manifest, self.settings = plan, manifest, settings
        self.world, self.say, self.result = world, say, result
        self.config = plan.experiment.config
        self.sha256 = plan.experiment.sha256
        self.dataset: DatasetInfo | None = None

    def run_all(self) -> None:
        stages = list(self.plan.stages())
        for number, (stage, units) in enumerate(stages, 1):
            todo = [u for u in units if not self.manifest.is_done(u)]
            if stage == "dataset" and not todo:
                self.dataset = self._recorded_dataset()
            state = "done, skipped" if not todo else f"{len(todo)} of {len(units)} to do"
            self.say(f"[{number}/{len(stages)}] {stage}: {state}")
            self.result.skipped += [unit.name for unit in units if unit not in todo]
            getattr(self, f"_{stage}")(todo)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _begin(self, unit: Unit) -> None:
        def begin() -> None:
            if self.manifest.is_stale(unit):
                _remove_outputs(unit)
            self.manifest.mark(unit, "running")

        self.world.on_main(begin)
        self.say(f"  {unit.stage} {unit.name}")

    def _end(self, unit: Unit, **extra: object) -> None:
        if self.world.is_main:
            self.manifest.mark(unit, "done", **extra)
        self.result.ran.append(unit.name)

    def _on_main(self, units: list[Unit], work: Callable[[Unit], dict | None]) -> None:
        """`work(unit)` on process 0 for each unit, the other processes waiting (and stopping
        when it fails: `World.on_main`); recorded before the others read the manifest."""
        for unit in units:
            self._begin(unit)
            self.world.on_main(lambda unit=unit: self._end(unit, **(work(unit) or {})))

    # -- stages ---------------------------------------------------------------------------------

    def _dataset(self, units: list[Unit]) -> None:
        if not units:
            return
        self._on_main(units, lambda unit: {"dataset": self._prepare().to_dict()})
        self.dataset = self._recorded_dataset()

    def _recorded_dataset(self) -> DatasetInfo:
        recorded = self.manifest.unit(self.plan.stage("dataset")[0]).get("dataset")
        if recorded is None:  # written by another process: read it again
            self.manifest = Manifest(self.plan.out)
            recorded = self.manifest.unit(self.plan.stage("dataset")[0])["dataset"]

        def path(key: str) -> Path | None:
            return None if recorded[key] is None else Path(recorded[key])

        return DatasetInfo(
            Path(recorded["root"]),
            path("labels_file"),
            path("subset_file"),
            path("boxes"),
            int(recorded["images"]),
            recorded["index_sha256"],
        )

    def _prepare(self) -> DatasetInfo:
        data = self.config["data"]
        root, labels_file, index = self._prepared_root(data)
        ids, labels = _listing(root, labels_file, index)
        if data["verify"]:
            self._verify(root, ids, labels, labels_file, index)
        subset = self.plan.units[0].outputs[0] if self.plan.units[0].outputs else None
        if isinstance(data["subset"], int):
            rows = subset_rows(labels, data["subset"], data["seed"])
            ids, labels = [ids[i] for i in rows], labels[rows]
            classes = imagenet_classes()
            lines = "".join(
                f"{i} {k} {classes.wnid(k)}\n" for i, k in zip(ids, labels.tolist(), strict=True)
            )
            write_text_atomic(subset, lines)
        elif subset is not None:
            wanted = {line.split()[0] for line in subset.read_text("utf-8").splitlines() if line}
            keep = [i for i, image_id in enumerate(ids) if image_id in wanted]
            ids, labels = [ids[i] for i in keep], labels[keep]
        boxes = Path(data["root"]) / "boxes" if data["boxes"] else None
        listing = [f"{i}\t{k}" for i, k in zip(ids, labels.tolist(), strict=True)]
        return DatasetInfo(root, labels_file, subset, boxes, len(ids), digest(listing))

    def _prepared_root(self, data: dict) -> tuple[Path, Path | None, DatasetIndex | None]:
        kind, root = data["dataset"], Path(data["root"])
        labels = None if data["labels"] is None else Path(data["labels"])
        if kind == "folder":
            return root, labels, None
        if kind == "samples":
            from xaibench.data.samples import build_sample_dataset

            return build_sample_dataset(root), None, None
        from xaibench.data.prepare import prepare_dataset

        index, layout_name = prepare_dataset(
            kind,
            root,
            url_base=data["url_base"],
            archives=[Path(a) for a in data["archives"]],
            boxes=data["boxes"],
            sha256=data["sha256"],
            source=None if data["source"] is None else Path(data["source"]),
            labels_file=labels,
            progress=self.settings.progress,
        )
        if layout_name is not None:
            self.say(f"    recognised {layout_name} at {data['source']}")
        return index.root, index.labels_file, index

    def _verify(self, root, ids, labels, labels_file, index) -> None:
        from xaibench.pipelines.verify import PreparedFolder, verify_dataset

        if index is None:
            index = DatasetIndex(root.name, root, ids, labels, None, labels_file)
        report = verify_dataset(PreparedFolder(index, ids), self.settings)
        expected, skip_bad = index.expected_per_class, self.config["data"]["skip_bad"]
        problems = []
        if report.unlabelled and self.config["generate"]["target"] == "label":
            problems.append(
                f"{report.unlabelled} image(s) without a label, which target 'label' needs"
            )
        if report.deviations:
            problems.append(f"{len(report.deviations)} class(es) without {expected} images")
        if report.missing:
            problems.append(f"{len(report.missing)} listed image(s) missing")
        if report.unreadable and not skip_bad:
            problems.append(
                f"{len(report.unreadable)} undecodable image(s), first {report.unreadable[0]} "
                "(set skip_bad = true in [data] to leave them out)"
            )
        if problems:
            raise DataError(f"{root}: {'; '.join(problems)}; see `xaibench verify {root}`")
        self.say(f"    {len(ids)} images verified under {root}")

    def _dataset_for(self, model: dict, limit: int | None = None):
        from xaibench.data.dataset import ImageFolderDataset
        from xaibench.metrics import get_protocol
        from xaibench.models import load_model

        generate = self.config["generate"]
        loaded = load_model(model["name"], model["weights"], **own_model(model))
        protocol = get_protocol(generate["protocol"])
        preprocess = protocol.preprocess_for(loaded, generate["preprocessing"])
        info = self.dataset
        dataset = ImageFolderDataset(
            info.root,
            preprocess,
            labels_file=info.labels_file,
            subset_file=info.subset_file,
            skip_bad=self.config["data"]["skip_bad"],
            limit=limit,
        )
        return loaded, dataset

    def _generate(self, units: list[Unit]) -> None:
        from xaibench.pipelines.generate import generate

        generate_config = self.config["generate"]
        for model in self.config["models"]:
            mine = [u for u in units if u.model["name"] == model["name"]]
            if not mine:
                continue
            for unit in mine:
                self._begin(unit)
            loaded, dataset = self._dataset_for(model)
            methods = [u.method for u in mine]
            params = {m: method_settings(self.config, model, m) for m in methods}
            summary = generate(
                loaded,
                methods,
                dataset,
                self.plan.out,
                self.settings,
                target=generate_config["target"],
                store_format=generate_config["store"],
                compression=STORE_COMPRESSIONS[generate_config["compression"]],
                method_params={m: p for m, p in params.items() if p},
                world=self.world,
            )
            self.say(
                f"    {model['name']}: {summary.images} images in {summary.seconds:.1f} s "
                f"({summary.images_per_second:.2f} img/s)"
            )
            for unit in mine:
                self._end(unit, skipped_images=summary.skipped)

    def _evaluate(self, units: list[Unit]) -> None:
        from xaibench.pipelines.evaluate import evaluate_stores

        evaluate = self.config["evaluate"]
        info = self.dataset
        groups: dict[tuple[str, str], list[Unit]] = {}
        for unit in units:
            groups.setdefault((unit.model["name"], unit.protocol), []).append(unit)
        for (name, protocol), mine in groups.items():
            for unit in mine:
                self._begin(unit)
            model = mine[0].model
            stores = [
                layout.store_path(self.plan.out, name, u.method, self.config["generate"]["store"])
                for u in mine
            ]
            evaluate_stores(
                stores,
                name,
                info.root,
                self.settings,
                weights=model["weights"],
                own_model=own_model(model),
                labels_file=info.labels_file,
                subset_file=info.subset_file,
                protocol=protocol,
                preprocessing=self.config["generate"]["preprocessing"],
                step=evaluate["step"],
                road_percentages=evaluate["road_percentages"],
                metrics=evaluate["metrics"],
                metric_params=evaluate["metric_params"],
                boxes=info.boxes,
                mc_dropout=evaluate["mc_dropout"],
                mc_seed=evaluate["mc_seed"],
                columns={CONFIG_COLUMN: self.sha256},
                world=self.world,
            )
            for unit in mine:
                self._end(unit)

    def _sanity(self, units: list[Unit]) -> None:
        self._on_main(units, self._sanity_unit)

    def _sanity_unit(self, unit: Unit) -> None:
        from xaibench.pipelines.sanity import sanity_check, write_sanity

        sanity = self.config["sanity"]
        loaded, dataset = self._dataset_for(unit.model, limit=sanity["images"])
        folder = layout.sanity_dir(self.plan.out, unit.model["name"])
        checkpoint = layout.sanity_checkpoint(folder, unit.method)
        result = sanity_check(
            loaded,
            unit.method,
            dataset,
            RunSettings.resolve(
                self.settings.device,
                batch_size=self.settings.batch_size,
                workers=self.settings.workers,
                progress=self.settings.progress,
            ),
            seed=sanity["seed"],
            depth=sanity["depth"],
            method_params=method_settings(self.config, unit.model, unit.method),
            threshold=sanity["threshold"],
            checkpoint=checkpoint,
        )
        write_sanity(result, folder, checkpoint, {CONFIG_COLUMN: self.sha256})
        verdict = "FLAGGED" if result.flagged else "passes"
        self.say(f"    final mean Spearman {result.final_spearman:.3f}: {verdict}")

    def _compare(self, units: list[Unit]) -> None:
        self._on_main(units, self._compare_unit)
        if not units and self.world.is_main:
            self.result.comparison = self.plan.stage("compare")[0].outputs[0].read_text("utf-8")

    def _compare_unit(self, unit: Unit) -> None:
        from xaibench.core.errors import ResultsError
        from xaibench.report.tables import (
            comparison_markdown,
            comparison_summary,
            load_evaluations,
            paired_tables,
        )

        folders = [layout.metrics_dir(u.outputs[0]) for u in self.plan.stage("generate")]
        evaluations = load_evaluations(list(dict.fromkeys(folders)))
        summary = comparison_summary(evaluations, self.config["report"]["resamples"])
        try:
            tables = paired_tables(evaluations)
        except ResultsError as error:
            tables = None
            self.say(f"    paired comparisons skipped: {error}")
        experiment = self.plan.experiment
        header = (
            f"# {self.config['run']['name']}\n\nConfig {experiment.source}, "
            f"{CONFIG_COLUMN} {self.sha256}.\n\n"
        )
        markdown = header + comparison_markdown(summary, tables)
        markdown_path, csv_path = unit.outputs
        write_text_atomic(markdown_path, markdown)
        write_text_atomic(
            csv_path, summary.assign(**{CONFIG_COLUMN: self.sha256}).to_csv(index=False)
        )
        self.result.comparison = markdown

    def _report(self, units: list[Unit]) -> None:
        self._on_main(units, self._report_unit)
        self.result.report = self.plan.stage("report")[0].outputs[0]

    def _report_unit(self, unit: Unit) -> None:
        from xaibench.report.build import build_report

        report = self.config["report"]
        build_report(
            [layout.model_dir(self.plan.out, model["name"]) for model in self.config["models"]],
            unit.outputs[0].parent,
            self.dataset.root,
            grid_images=report["images"],
            resamples=report["resamples"],
        )


def _listing(
    root: Path, labels_file: Path | None, index: DatasetIndex | None
) -> tuple[list[str], np.ndarray]:
    """The ids under `root` and their labels (from the index, the labels file, or the WNID
    folders; -1 where none)."""
    from xaibench.data.dataset import folder_labels, list_images, read_labels_file

    ids = list_images(root)
    if index is not None:
        by_id = dict(zip(index.ids, index.labels.tolist(), strict=True))
    elif labels_file is not None:
        by_id = read_labels_file(labels_file)
    else:
        return ids, folder_labels(ids)
    return ids, np.array([by_id.get(i, -1) for i in ids], dtype=np.int64)


def _remove_outputs(unit: Unit) -> None:
    """Remove what a unit of other settings wrote: its files, a store's shard folder, an
    evaluation's or sanity run's checkpoint."""
    for path in unit.outputs:
        path = Path(path)
        path.unlink(missing_ok=True)
        shutil.rmtree(path.with_name(path.name + ".shards"), ignore_errors=True)
    if unit.stage == "evaluate":
        stem = unit.outputs[0].name.removesuffix(layout.PER_IMAGE_SUFFIX)
        remove_checkpoint(layout.evaluation_checkpoint(unit.outputs[0].parent, stem))
    if unit.stage == "sanity":
        remove_checkpoint(layout.sanity_checkpoint(unit.outputs[0].parent, unit.method))
