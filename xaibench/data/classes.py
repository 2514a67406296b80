"""The 1000 ImageNet-1k classes, keyed by WNID.

Class index = position of the WNID among the 1000 sorted WNIDs (the order torchvision and most
ImageNet checkpoints use). Names repeat (two classes are called "crane"), so everything is keyed by
WNID.
"""

from __future__ import annotations

import csv
import re
from functools import cache
from importlib import resources

from xaibench.core.errors import DataError

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

    def __len__(self) -> int:
        return len(self.wnids)


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
