"""timm models: `timm/NAME` (any `timm.list_models()` name, optionally with a pretrained tag,
`timm/resnet50.a1_in1k`) or `timm/hf-hub:ORG/NAME` (a model card on the Hugging Face hub), built
by timm's own factory, `timm.create_model`.

Input size, mean, std, interpolation and crop fraction come from the model's pretrained config as
timm resolves it (`timm.data.resolve_model_data_config`), so the model's own preprocessing
(`MODEL_PREPROCESSING`) is the one its published accuracy was measured with. Weights:

- `default`: timm's pretrained weights, read only from the local caches, never downloaded: the
  Hugging Face hub cache for weights on the hub (nearly all of timm's), the torch hub cache
  (`checkpoints/`) for those behind a plain URL. Where the file is absent, the error names where
  it is expected.
- `none`: random initialisation.
- a path: a state dict (`xaibench.models.factory`), as for every model.

timm is an optional dependency (`pip install 'xaibench[timm]'`), imported on first use.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from xaibench.core.errors import ConfigError, ModelError
from xaibench.data.preprocess import MODEL_PREPROCESSING, Preprocess, centre_crop
from xaibench.models.factory import ModelSpec

PREFIX = "timm/"
"""How a model name asks for timm: `timm/NAME`."""
HF_HUB = "hf-hub:"
"""How a timm name points at the Hugging Face hub: `timm/hf-hub:ORG/NAME[@REVISION]`."""
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""The weights files of a timm model card, in the order timm reads them."""
EXTRA = "pip install 'xaibench[timm]'"


def is_timm_name(name: str) -> bool:
    """Whether `name` asks for a timm model (`timm/...`)."""
    return name.startswith(PREFIX)


def timm_module() -> ModuleType:
    """The timm package; ModelError naming the extra to install when it is missing."""
    try:
        import timm
    except ImportError as error:
        raise ModelError(f"timm models need the package timm: {EXTRA}", param="model") from error
    return timm


def timm_names(pattern: str = "*") -> list[str]:
    """timm's architectures as `timm/NAME` matching the wildcard `pattern`, in timm's order."""
    return [
        PREFIX + name
        for name in timm_module().list_models()
        if fnmatch.fnmatchcase(PREFIX + name, pattern)
    ]


def family_help(name: str) -> str:
    """One line about the timm model `name`."""
    return f"timm {name[len(PREFIX) :]}"


def family_spec(name: str) -> ModelSpec:
    """How to build the timm model `name` (`timm_spec`)."""
    return timm_spec(name)


@lru_cache(maxsize=32)
def timm_spec(name: str) -> ModelSpec:
    """How to build the timm model `name` (`timm/...`), with the input size, mean and std of its
    pretrained config, read off the architecture built on the meta device."""
    timm = timm_module()
    source, hub = _source(timm, name[len(PREFIX) :])
    with torch.device("meta"):
        skeleton = _create(timm, source)
    config = timm.data.resolve_model_data_config(skeleton)
    _, height, width = config["input_size"]
    mean, std = tuple(config["mean"]), tuple(config["std"])
    own = _own_preprocess(name, config)

    def build(choice: str) -> tuple[nn.Module, str]:
        if choice == "none":
            return _create(timm, source), "none"
        if choice != "default":
            raise ConfigError(
                f"{choice!r} is not a file; a timm model's weights are chosen by the tag of its "
                f"name (timm/NAME.TAG, see `timm.list_pretrained()`), so `weights` for {name} "
                "is default, none or a state-dict file",
                param="weights",
            )
        if hub is not None:
            tag = _snapshot_weights(name, hub)  # before timm looks: the error says where
            return _create(timm, source, pretrained=True), tag
        file, tag = _cached_weights(name, skeleton.pretrained_cfg)
        return _create(timm, source, file=file), tag

    return ModelSpec(build, mean, std, (height, width), own_preprocess=lambda _choice: own())


def _source(timm: ModuleType, rest: str) -> tuple[str, tuple[str, Path] | None]:
    """(the name `timm.create_model` takes, (repository, snapshot folder) of a hub model card or
    None).

    A hub model card is read from the Hugging Face hub cache's snapshot of it, as a local folder
    (`local-dir:`); a registry name is checked against timm's registry and its pretrained tags.
    """
    if rest.startswith(HF_HUB):
        repo, _, revision = rest[len(HF_HUB) :].partition("@")
        config = _hub_file(repo, "config.json", revision or None)
        if config is None:
            raise ModelError(
                f"the config of {PREFIX}{rest} is not in the Hugging Face hub cache "
                f"({_hub_cache()}), and xaibench does not download; fetch the model card once "
                f"(`hf download {repo}`, or huggingface_hub.snapshot_download) and run again",
                param="model",
            )
        snapshot = Path(config).parent
        return f"local-dir:{snapshot}", (repo, snapshot)
    architecture, _, tag = rest.partition(".")
    if not timm.is_model(architecture):
        known = timm.list_models()
        close = difflib.get_close_matches(architecture, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown timm model {architecture!r}.{hint} Run `xaibench list models "
            f"'{PREFIX}{architecture[:3]}*'` to see timm's models by pattern",
            param="model",
        )
    if tag and f"{architecture}.{tag}" not in timm.list_pretrained(f"{architecture}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{architecture}.*")]
        raise ConfigError(
            f"timm has no pretrained tag {tag!r} for {architecture} "
            f"(known: {', '.join(tags) or 'none'})",
            param="model",
        )
    return rest, None


def _create(
    timm: ModuleType, source: str, *, pretrained: bool = False, file: Path | None = None
) -> nn.Module:
    """`timm.create_model(source)`, random (no file, not pretrained), from a cached `file`, or
    from a hub snapshot (`pretrained`, a `local-dir:` source)."""
    kwargs: dict[str, Any] = {"pretrained": pretrained or file is not None}
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        return timm.create_model(source, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        if not kwargs["pretrained"]:
            raise
        raise ModelError(
            f"could not load the cached weights of {source}: {error}. Pass a weights file as "
            "`weights`, or `weights` none for random weights",
            param="weights",
        ) from error


def _cached_weights(name: str, pretrained_cfg: dict[str, Any]) -> tuple[Path, str]:
    """(the cached file of the default weights of `name`, the weights tag it is recorded by).

    The hub's files are looked up in the Hugging Face hub cache, a URL's in the torch hub cache,
    as timm would save them; ModelError saying where the file is expected when it is absent.
    """
    if pretrained_cfg.get("custom_load"):
        raise ModelError(
            f"{name}'s default weights come in a format of the model's own, which timm "
            "converts on download; pass them as a state dict with `weights`",
            param="weights",
        )
    hub_id, url = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("url")
    expected = []
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        files = [pretrained_cfg["hf_hub_filename"]] if pretrained_cfg.get("hf_hub_filename") else []
        for filename in files or HF_WEIGHTS:
            found = _hub_file(repo, filename, revision or None)
            if found is not None:
                return Path(found), f"hf-hub:{repo}@{Path(found).parent.name}"
        folder = repo.replace("/", "--")
        expected.append(
            f"{_hub_cache()}/models--{folder}/snapshots/REVISION/{(files or HF_WEIGHTS)[0]} "
            f"(`hf download {repo}` puts it there)"
        )
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if path.is_file():
            return path, f"timm:{path.name}"
        expected.append(f"{path} (from {url})")
    if not expected:
        raise ModelError(
            f"timm has no pretrained weights for {name}; use `weights` none, or a state dict",
            param="weights",
        )
    raise ModelError(
        f"the default weights of {name} are not in the local cache, and xaibench does not "
        f"download; expected at {' or '.join(expected)}. Pass a state-dict file as `weights`, "
        "or `weights` none for random weights",
        param="weights",
    )


def _snapshot_weights(name: str, hub: tuple[str, Path]) -> str:
    """The weights tag of the hub snapshot `hub` (repository, folder), `hf-hub:REPO@REVISION`;
    ModelError saying where the weights are expected when the snapshot lacks them."""
    repo, snapshot = hub
    if not any((snapshot / filename).is_file() for filename in HF_WEIGHTS):
        raise ModelError(
            f"the weights of {name} are not in the Hugging Face hub cache, and xaibench does not "
            f"download; expected at {snapshot / HF_WEIGHTS[0]} (`hf download {repo}` puts them "
            "there). Pass a state-dict file as `weights`, or `weights` none for random weights",
            param="weights",
        )
    return f"hf-hub:{repo}@{snapshot.name}"


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_file(repo: str, filename: str, revision: str | None) -> str | None:
    """The path of `filename` of the hub repository `repo` in the Hugging Face hub cache, or None;
    never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=_hub_cache(), revision=revision)
    return found if isinstance(found, str) else None


def _own_preprocess(name: str, config: dict[str, Any]) -> Callable[[], Preprocess]:
    """A function giving the preprocessing of timm's evaluation transform for the resolved data
    `config` (`timm.data.create_transform(**config)`); ConfigError for a crop mode it does not
    reproduce."""
    _, height, width = config["input_size"]
    fraction, mode = config["crop_pct"], config.get("crop_mode") or "center"
    interpolation, mean, std = config["interpolation"], tuple(config["mean"]), tuple(config["std"])

    def own() -> Preprocess:
        if mode == "squash":  # each side to side / fraction, then the centre crop
            resize = (math.floor(height / fraction), math.floor(width / fraction))
            crop = height if height == width else (height, width)
            return Preprocess(MODEL_PREPROCESSING, resize, crop, mean, std, interpolation)
        if mode == "center" and height == width:
            return centre_crop(height, fraction, interpolation, mean, std)
        raise ConfigError(
            f"{name} is evaluated with timm's {mode!r} crop of a {height}x{width} input, which "
            "xaibench's preprocessing does not reproduce; use `preprocessing` protocol",
            param="preprocessing",
        )

    return own
