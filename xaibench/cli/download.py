"""`xaibench download`: fetch, verify, extract and index ImageNet val, a public subset, or a
layout already on disk."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import click

from xaibench.cli.options import OutFolder, seed_type, url
from xaibench.data.index import DatasetIndex, write_subset
from xaibench.data.prepare import DATASETS, IMAGENET_URL_ENV, prepare_dataset


@click.command("download")
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option(
    "--dest",
    required=True,
    type=OutFolder(),
    help="Folder for the archives, images and index files (one dataset per folder).",
)
@click.option(
    "--url-base",
    default=None,
    callback=url,
    help=f"Server folder holding the archives under their file names (for imagenet-val also "
    f"${IMAGENET_URL_ENV}); for public datasets a mirror of the pinned URL.",
)
@click.option(
    "--archive",
    "archives",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="An archive you already have (verified in place, never changed); repeatable.",
)
@click.option(
    "--boxes", is_flag=True, help="imagenet-val: also the bounding boxes (DEST/boxes/*.xml)."
)
@click.option(
    "--sha256",
    default=None,
    help="A whole-file sha256 you trust, checked with the pinned size and checksums "
    "(Imagewoof's publisher records no whole-file checksum).",
)
@click.option(
    "--checksums",
    "checksums_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="imagenet-val: a file of `SHA256  FILENAME` lines (as sha256sum writes) for archives you "
    "verified yourself (a mirror, a re-packed copy): each is checked against your sha256 instead "
    "of the published checksums, and dataset.json records it as yours.",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="local: the ImageNet layout on disk (WNID folders, Kaggle's LOC_val_solution.csv, or "
    "any folder with --labels).",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="local: labels file for --source (`name [number] WNID` or `name INDEX` lines).",
)
@click.option(
    "--subset",
    type=click.IntRange(min=1),
    default=None,
    help="Also write DEST/subset-N-seedS.txt: N images, stratified by class when N >= 1000.",
)
@click.option("--seed", type=seed_type, default=0, show_default=True, help="Seed of --subset.")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Retries per download (exponential backoff from 1 s); a re-run resumes too.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def download_command(
    dataset: str,
    dest: Path,
    url_base: str | None,
    archives: tuple[Path, ...],
    boxes: bool,
    sha256: str | None,
    checksums_file: Path | None,
    source: Path | None,
    labels_file: Path | None,
    subset: int | None,
    seed: int,
    retries: int,
    quiet: bool,
) -> None:
    """Prepare DATASET in --dest: download (resumable) or take --archive files, verify size and
    checksums, extract safely, arrange, and write the index files (labels.txt, image_list.txt,
    classes.tsv, dataset.json). Safe to re-run; a killed run is completed by the next one.

    \b
    imagenet-val: needs --archive files or --url-base (ImageNet needs an account)
    imagenette[-320|-160], imagewoof[-320|-160], imagenetv2-matched-frequency: pinned URLs
    local: index --source in place, without copying
    """
    progress = not quiet
    used = {
        "--url-base": url_base is not None,
        "--archive": bool(archives),
        "--boxes": boxes,
        "--sha256": sha256 is not None,
        "--checksums": checksums_file is not None,
        "--source": source is not None,
        "--labels": labels_file is not None,
    }
    check_applicable(dataset, used)
    index, layout = prepare_dataset(
        dataset,
        dest,
        url_base=url_base,
        archives=archives,
        boxes=boxes,
        sha256=sha256,
        checksums=read_checksums(checksums_file) if checksums_file else None,
        source=source,
        labels_file=labels_file,
        retries=retries,
        progress=progress,
    )
    if layout is not None:
        click.echo(f"recognised {layout} at {source}")
    report(index, dest)
    if subset is not None:
        path = write_subset(dest, subset, seed)
        click.echo(f"subset of {subset} images (seed {seed}): {path}; use --subset {path}")


def check_applicable(dataset: str, used: dict[str, bool]) -> None:
    """Refuse options that do nothing for DATASET (`used`: option -> given), rather than ignore."""
    applicable = {
        "imagenet-val": {"--url-base", "--archive", "--boxes", "--checksums"},
        "local": {"--source", "--labels"},
    }.get(dataset, {"--url-base", "--archive", "--sha256"})
    for option, given in used.items():
        if given and option not in applicable:
            raise click.BadParameter(f"does not apply to {dataset}", param_hint=option)
    if dataset == "local" and not used["--source"]:
        raise click.BadParameter("local needs the folder to index", param_hint="--source")


def read_checksums(path: Path) -> dict[str, str]:
    """File name -> sha256 of a checksum file in sha256sum's format (`HEX  NAME` or `HEX *NAME`;
    blank lines and `#` comments are skipped)."""
    checksums = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"\s*([0-9a-fA-F]{64}) [ *](.+?)\s*", line)
        if match is None:
            raise click.BadParameter(
                f"{path}:{number}: expected `SHA256  FILENAME`, got {line!r}",
                param_hint="--checksums",
            )
        checksums[PurePosixPath(match.group(2).replace("\\", "/")).name] = match.group(1).lower()
    return checksums


def report(index: DatasetIndex, dest: Path) -> None:
    classes = len(set(index.labels.tolist()))
    click.echo(f"{index.name}: {len(index.ids)} images in {classes} classes -> {dest}")
    click.echo(f"use: xaibench generate --data {index.root} --labels {index.labels_file} ...")
