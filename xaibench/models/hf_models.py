"""Hugging Face image classifiers: `hf/MODEL_ID`, built by transformers'
`AutoModelForImageClassification`, read only from local files, never downloaded.

MODEL_ID is a repository on the Hugging Face hub (`hf/google/vit-base-patch16-224`, optionally
`@REVISION`), read from the hub cache's snapshot of it, or a folder that `save_pretrained` wrote
(`hf/./my-vit`, `hf//data/models/vit`), as transformers itself tells the two apart: an existing
folder is a folder. The model returns its `logits` (`returning_logits`), so every method and metric
sees (B, classes).

Input size, mean, std and the model's own preprocessing (`MODEL_PREPROCESSING`) come from the
model's image processor (`preprocessor_config.json`, `processor_preprocess`). Weights:

- `default`: the weights beside the config (`model.safetensors`, `pytorch_model.bin`, or their
  shards), recorded as `hf-hub:REPO@REVISION` for a hub snapshot, by their sha256 for a folder.
- `none`: random initialisation from the config.
- a path: a state dict (`xaibench.models.factory`), as for every model.

transformers is an optional dependency (`pip install 'xaibench[hf]'`), imported on first use.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from xaibench.core.errors import ConfigError, ModelError
from xaibench.data.preprocess import MODEL_PREPROCESSING, Preprocess
from xaibench.models.factory import DEFAULT_INPUT_SIZE, ModelSpec, returning_logits

PREFIX = "hf/"
"""How a model name asks for a Hugging Face classifier: `hf/MODEL_ID`."""
EXTRA = "pip install 'xaibench[hf]'"
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""The files `from_pretrained` reads the weights from (or the index of their shards)."""
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""PIL's resampling filters, as image processors state them (`resample`), by their names."""


def is_hf_name(name: str) -> bool:
    """Whether `name` asks for a Hugging Face classifier (`hf/...`)."""
    return name.startswith(PREFIX)


def transformers_module() -> ModuleType:
    """The transformers package; ModelError naming the extra to install when it is missing."""
    try:
        import transformers
    except ImportError as error:
        raise ModelError(
            f"Hugging Face models need the package transformers: {EXTRA}", param="model"
        ) from error
    return transformers


def hf_names(pattern: str = "*") -> list[str]:
    """The image classifiers in the Hugging Face hub cache, as `hf/REPO`, matching the wildcard
    `pattern`: the repositories whose cached config names a `...ForImageClassification`."""
    from huggingface_hub import constants

    found = []
    for config in sorted(Path(constants.HF_HUB_CACHE).glob("models--*/snapshots/*/config.json")):
        repo = config.parents[2].name[len("models--") :].replace("--", "/")
        name = PREFIX + repo
        if name in found or not fnmatch.fnmatchcase(name, pattern):
            continue
        if any(
            a.endswith("ForImageClassification")
            for a in _read_json(config).get("architectures") or []
        ):
            found.append(name)
    return found


def family_help(name: str) -> str:
    """One line about the Hugging Face classifier `name`."""
    return f"Hugging Face {name[len(PREFIX) :]}"


def family_spec(name: str) -> ModelSpec:
    """How to build the Hugging Face classifier `name` (`hf_spec`)."""
    return hf_spec(name)


@lru_cache(maxsize=32)
def hf_spec(name: str) -> ModelSpec:
    """How to build the Hugging Face classifier `name` (`hf/...`), with the input size, mean and
    std of its image processor."""
    transformers = transformers_module()
    folder, repo = _folder(name)
    config = _config(transformers, name, folder)
    processor = _read_json(folder / "preprocessor_config.json")
    mean, std = processor_statistics(processor, name)
    try:
        own: Preprocess | ConfigError = processor_preprocess(processor, name)
        input_size = own.input_size
    except ConfigError as refusal:
        own, side = refusal, config.to_dict().get("image_size") or DEFAULT_INPUT_SIZE[0]
        input_size = tuple(side) if isinstance(side, list | tuple) else (side, side)

    def own_preprocess(_choice: str) -> Preprocess:
        if isinstance(own, ConfigError):
            raise own
        return own

    def build(choice: str) -> tuple[nn.Module, str]:
        auto = transformers.AutoModelForImageClassification
        if choice == "none":
            with _quiet(transformers):
                model = auto.from_config(config)
            return returning_logits(model), "none"
        if choice != "default":
            raise ConfigError(
                f"{choice!r} is not a file; `weights` for {name} is default (the weights in "
                f"{folder}), none or a state-dict file",
                param="weights",
            )
        files = [folder / file for file in WEIGHTS_FILES if (folder / file).is_file()]
        if not files:
            raise ModelError(
                f"the weights of {name} are not in {folder}, and xaibench does not download; "
                f"expected {WEIGHTS_FILES[0]} there"
                + (f" (`hf download {repo}` puts it there)" if repo else "")
                + ". Pass a state-dict file as `weights`, or `weights` none for random weights",
                param="weights",
            )
        try:
            with _quiet(transformers):
                model = auto.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelError(
                f"could not load the weights of {name} from {folder}: {error}", param="weights"
            ) from error
        tag = f"hf-hub:{repo}@{folder.name}" if repo else _digest(files[0], folder)
        return returning_logits(model), tag

    return ModelSpec(build, mean, std, input_size, own_preprocess=own_preprocess)


def _folder(name: str) -> tuple[Path, str | None]:
    """(the folder holding the model's config, the hub repository or None for a folder)."""
    model_id = name[len(PREFIX) :]
    if Path(model_id).is_dir():
        return Path(model_id).resolve(), None
    repo, _, revision = model_id.partition("@")
    from huggingface_hub import constants, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE
    found = try_to_load_from_cache(repo, "config.json", cache_dir=cache, revision=revision or None)
    if not isinstance(found, str):
        raise ModelError(
            f"{model_id} is not a folder, and the Hugging Face hub cache ({cache}) holds no "
            f"config of it; xaibench does not download: fetch it once (`hf download {repo}`, or "
            "huggingface_hub.snapshot_download) or give the folder save_pretrained wrote",
            param="model",
        )
    return Path(found).parent, repo


def _config(transformers: ModuleType, name: str, folder: Path) -> Any:
    """The model's transformers config; ConfigError when it is not an image classifier."""
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot read the config of {name} in {folder}: {error}") from error
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if config.model_type not in mapping:
        raise ConfigError(
            f"{name} is a {config.model_type!r} model, which transformers has no image "
            "classifier for (AutoModelForImageClassification); give an image classifier",
            param="model",
        )
    config.return_dict = True
    return config


def processor_statistics(
    processor: dict[str, Any], name: str
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the image processor normalises by ((0,)*3, (1,)*3 without `do_normalize`);
    ModelError when there is no processor, or it states none."""
    if not processor.get("do_normalize", True):
        return (0.0,) * 3, (1.0,) * 3
    if "image_mean" not in processor or "image_std" not in processor:
        raise ModelError(
            f"{name} has no image processor stating its mean and std (image_mean, image_std in "
            "its preprocessor_config.json); save the processor beside the model "
            "(processor.save_pretrained), or load it as a model of your own (module:callable) "
            "with `mean` and `std`",
            param="model",
        )
    return tuple(processor["image_mean"]), tuple(processor["image_std"])


def processor_preprocess(processor: dict[str, Any], name: str) -> Preprocess:
    """The `Preprocess` of an image processor's settings (its `preprocessor_config.json`).

    Resize to `size` ({height, width}, or {shortest_edge}: the shorter side), then the centre
    crop `crop_size` when `do_center_crop`; ConvNeXt's processor (`crop_pct`) resizes the shorter
    side to shortest_edge / crop_pct and crops shortest_edge below 384, and warps to
    shortest_edge x shortest_edge from 384 on. Pixels scaled to [0, 1], normalised by
    `image_mean`, `image_std` (0 and 1 without `do_normalize`); `resample`, PIL's filter.

    Departure: the crop's offset is rounded as torchvision's `center_crop` rounds it (as the
    processors' torchvision backend does); their PIL backend floors it, so where the margin is
    odd the two can differ by one pixel. ConfigError (naming `preprocessing`) for settings it
    does not reproduce.
    """

    def refuse(what: str) -> ConfigError:
        return ConfigError(
            f"{name}'s image processor {what}, which xaibench's preprocessing does not "
            "reproduce; use `preprocessing` protocol",
            param="preprocessing",
        )

    if (
        processor.get("do_rescale", True)
        and abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12
    ):
        raise refuse(f"rescales by {processor['rescale_factor']} instead of 1/255")
    if not processor.get("do_rescale", True) or processor.get("rescale_offset"):
        raise refuse("does not scale pixels to [0, 1]")
    mean, std = processor_statistics(processor, name)
    resample = processor.get("resample", 2)
    if resample not in PIL_RESAMPLE:
        raise refuse(f"resamples with filter {resample!r}")
    interpolation = PIL_RESAMPLE[resample]
    size = processor.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if not processor.get("do_resize", True) or not size:
        raise refuse("does not resize to a fixed size")
    crop = None
    if "crop_pct" in processor and processor["crop_pct"] is not None:
        if "shortest_edge" not in size or "ConvNext" not in processor.get(
            "image_processor_type", ""
        ):
            raise refuse(f"crops a fraction ({processor['crop_pct']}) of the image")
        side = size["shortest_edge"]
        if side < 384:
            resize: int | tuple[int, int] = int(side / processor["crop_pct"])
            crop = side
        else:
            resize = (side, side)
    elif set(size) == {"height", "width"}:
        resize = (size["height"], size["width"])
    elif set(size) == {"shortest_edge"}:
        resize = size["shortest_edge"]
    else:
        raise refuse(f"resizes to {size}")
    if processor.get("do_center_crop"):
        crop_size = processor.get("crop_size") or {}
        if isinstance(crop_size, int):
            crop_size = {"height": crop_size, "width": crop_size}
        if set(crop_size) != {"height", "width"}:
            raise refuse(f"crops to {crop_size}")
        h, w = crop_size["height"], crop_size["width"]
        crop = h if h == w else (h, w)
    if crop is None and isinstance(resize, int):
        raise refuse("resizes the shorter side without a crop (no fixed input size)")
    return Preprocess(MODEL_PREPROCESSING, resize, crop, mean, std, interpolation)


def _digest(first: Path, folder: Path) -> str:
    """ "sha256:<hex>" of a folder's weights: of the file, or of its shards in name order."""
    digest = hashlib.sha256()
    if first.name.endswith(".index.json"):
        shards = sorted(set(_read_json(first).get("weight_map", {}).values()))
        paths = [folder / shard for shard in shards]
    else:
        paths = [first]
    for path in paths:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from error


@contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers' loading bars and notes off, as they were afterwards."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
