"""The 1000 ImageNet-1k classes, keyed by WNID.

Class index = position of the WNID among the 1000 sorted WNIDs (the order torchvision and most
ImageNet checkpoints use). Names repeat (two classes are called "crane"), so everything is keyed by
WNID.
"""

from __future__ import annotations

import csv
import difflib
import re
from functools import cache
from importlib import resources

from xaibench.core.errors import ConfigError, DataError

WNID_PATTERN = re.compile(r"n\d{8}")
NUM_CLASSES = 1000


class ImageNetClasses:
    """WNIDs (sorted) and names of the ImageNet-1k classes."""

    def __init__(self, wnids: list[str], names: list[str]):
        self.wnids = wnids
        self._names = names
        self._index = {wnid: i for i, wnid in enumerate(wnids)}

    def index_of(self, wnid: str) -> int:
        """The class index of a WNID; DataError naming it if it is not an ImageNet-1k class."""
        try:
            return self._index[wnid]
        except KeyError:
            raise DataError(
                f"{wnid!r} is not one of the 1000 ImageNet-1k WNIDs (e.g. n01440764); "
                "check the class folder name or the labels file"
            ) from None

    def names(self, index: int) -> str:
        """The comma-separated names of class `index`."""
        return self._names[index]

    def short_name(self, index: int) -> str:
        """The first name of class `index`; "" for an index outside the 1000 (a model of one's own
        may have more outputs)."""
        return self._names[index].split(",")[0] if 0 <= index < len(self._names) else ""

    def wnid(self, index: int) -> str:
        return self.wnids[index]

    def resolve(self, spec: str) -> int:
        """The class index `spec` names: an index 0..999, a WNID, or one of a class's names
        (case-insensitive). ConfigError naming close names when it names no class or several."""
        text = spec.strip()
        if text.isascii() and text.isdigit():
            if int(text) < len(self):
                return int(text)
            raise ConfigError(f"class {spec!r}: an index must be below {len(self)}", param="target")
        if WNID_PATTERN.fullmatch(text):
            return self.index_of(text)
        wanted = text.lower()
        matches = [i for i, names in enumerate(self._names) if wanted in _synonyms(names)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            which = "; ".join(f"{i} ({self.wnids[i]}: {self._names[i]})" for i in matches)
            raise ConfigError(
                f"class {spec!r} names {len(matches)} classes: {which}; give the index or WNID",
                param="target",
            )
        every = sorted({name for names in self._names for name in _synonyms(names)})
        close = difflib.get_close_matches(wanted, every, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(
            f"class {spec!r} is not an ImageNet-1k class name; {hint}"
            "give a class index 0..999, a WNID (e.g. n01440764) or a name",
            param="target",
        )

    def __len__(self) -> int:
        return len(self.wnids)


def _synonyms(names: str) -> list[str]:
    return [name.strip().lower() for name in names.split(",")]


@cache
def imagenet_classes() -> ImageNetClasses:
    """The class table shipped in `xaibench/data/imagenet_classes.tsv`, read once."""
    text = resources.files("xaibench.data").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    wnids = [row["wnid"] for row in rows]
    if (
        len(wnids) != NUM_CLASSES
        or wnids != sorted(wnids)
        or [int(row["index"]) for row in rows] != list(range(NUM_CLASSES))
    ):
        raise DataError(
            "xaibench/data/imagenet_classes.tsv must list 1000 WNIDs sorted, indexed 0..999; "
            "reinstall xaibench"
        )
    return ImageNetClasses(wnids, [row["names"] for row in rows])
