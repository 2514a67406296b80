"""Where every output of a run lives: one function per kind of file, used by writers and readers.

runs/                                 the results root (`out_dir` of `generate`)
  vgg16/                              `model_dir`: one folder per model
    tgrad.h5                          `store_path`: one store per method
    logs/                             per-process logs under torchrun
    metrics/                          `metrics_dir`: evaluate's default output folder
      tgrad-polycam.per_image.csv     `evaluation_paths`: STEM + suffix, STEM = `evaluation_stem`
      .tgrad-polycam.checkpoint.npz   `evaluation_checkpoint`
    sanity/                           `sanity_dir`
      tgrad.sanity.csv                `sanity_paths`
      .tgrad.sanity.checkpoint.npz    `sanity_checkpoint`
"""

from __future__ import annotations

from pathlib import Path

STORE_COMPRESSIONS = {"lzf": "lzf", "gzip": "gzip", "none": None}
"""`compression` as a config or the command line names it -> as the stores take it."""
STORE_FORMATS = ("h5", "npz")

PER_IMAGE_SUFFIX = ".per_image.csv"
PARQUET_SUFFIX = ".per_image.parquet"
CURVES_SUFFIX = ".curves.npz"
SUMMARY_SUFFIX = ".summary.csv"
"""The files of one evaluation, each named STEM + suffix."""

CONFIG_COLUMN = "config_sha256"
"""The last column of every table `xaibench run` writes: the sha256 of the experiment's config."""

SANITY_TABLE_SUFFIX = ".sanity.csv"
SANITY_PLOT_SUFFIX = ".sanity.png"


def model_dir(out_dir: Path, model_name: str) -> Path:
    """`runs/vgg16`: the folder of one model's outputs (`module:callable` names made safe)."""
    return Path(out_dir) / model_name.replace(":", "_").replace("/", "_")


def store_path(out_dir: Path, model_name: str, method: str, store_format: str) -> Path:
    """`runs/vgg16/tgrad.h5`: one folder per model, one store per method."""
    return model_dir(out_dir, model_name) / f"{method}.{store_format}"


def logs_dir(out_dir: Path, model_name: str) -> Path:
    """`runs/vgg16/logs`: the per-process logs of a generation under torchrun."""
    return model_dir(out_dir, model_name) / "logs"


def metrics_dir(store: Path) -> Path:
    """`runs/vgg16/metrics`: where the evaluations of a store go unless told otherwise."""
    return Path(store).parent / "metrics"


def sanity_dir(out_dir: Path, model_name: str) -> Path:
    """`runs/vgg16/sanity`: where a model's sanity tables go unless told otherwise."""
    return model_dir(out_dir, model_name) / "sanity"


def evaluation_stem(store: Path, protocol_name: str) -> str:
    """`tgrad-polycam`: the stem of the files of one store's evaluation under a protocol."""
    return f"{Path(store).stem}-{protocol_name}"


def evaluation_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """The per-image table, curves and summary of the evaluation `stem` in `out_dir`."""
    suffixes = {"per_image": PER_IMAGE_SUFFIX, "curves": CURVES_SUFFIX, "summary": SUMMARY_SUFFIX}
    return {name: Path(out_dir) / f"{stem}{suffix}" for name, suffix in suffixes.items()}


def parquet_path(out_dir: Path, stem: str) -> Path:
    """The Parquet copy of the per-image table, written when pyarrow is installed."""
    return Path(out_dir) / f"{stem}{PARQUET_SUFFIX}"


def curves_of(per_image: Path) -> Path:
    """The curves file written beside a per-image table."""
    return Path(str(per_image).removesuffix(PER_IMAGE_SUFFIX) + CURVES_SUFFIX)


def evaluation_checkpoint(out_dir: Path, stem: str) -> Path:
    """`OUT/.STEM.checkpoint.npz`: the hidden checkpoint of an evaluation whose tables go to
    `out_dir`."""
    return Path(out_dir) / f".{stem}.checkpoint.npz"


def sanity_paths(out_dir: Path, method: str) -> dict[str, Path]:
    """`METHOD.sanity.csv` (the table) and `METHOD.sanity.png` (the plot) in `out_dir`."""
    return {
        "table": Path(out_dir) / f"{method}{SANITY_TABLE_SUFFIX}",
        "plot": Path(out_dir) / f"{method}{SANITY_PLOT_SUFFIX}",
    }


def sanity_method(table: Path) -> str:
    """The method of a sanity table, from its file name."""
    return Path(table).name.removesuffix(SANITY_TABLE_SUFFIX)


def sanity_checkpoint(out_dir: Path, method: str) -> Path:
    """`OUT/.METHOD.sanity.checkpoint.npz`: the hidden checkpoint of one method's sanity run."""
    return Path(out_dir) / f".{method}.sanity.checkpoint.npz"
