"""Maps written by another tool, read one image at a time so that `import_maps` can store them.

Three sources (`open_foreign_maps`):
- a folder of `.npy` files, one map per image (`n01440764/img0.npy`, or flat: `img0.npy`);
- an `.npz` archive keyed by image file name, as the T-Grad authors' scripts write it;
- an HDF5 file with an (N, h, w) dataset, its rows named by a dataset of image ids or, without
  one, in the order of the image list.

An image id (`n01440764/img0.png`) is matched by the first of its names the source holds: the id,
the id without its suffix, its file name, its file name without the suffix (`image_names`). A map
is (h, w), or (1, h, w) / (h, w, 1), of real finite numbers (`map_problem`).
"""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar

import h5py
import numpy as np

from xaibench.core.errors import DataError

NPY = ".npy"


def image_names(image_id: str) -> list[str]:
    """The names a source may know the image `image_id` by, most specific first."""
    path = PurePosixPath(image_id)
    names = [image_id, str(path.with_suffix("")), path.name, path.stem]
    return list(dict.fromkeys(names))


def match_images(ids: Sequence[str], names: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Image id -> the source's name for its map (`image_names`), and image id -> why it has
    none: no name matches, or its name is the one map of several images."""
    available = set(names)
    chosen: dict[str, str] = {}
    refused = {}
    for image_id in ids:
        found = next((n for n in image_names(image_id) if n in available), None)
        if found is None:
            refused[image_id] = "no map"
        else:
            chosen[image_id] = found
    owners: dict[str, list[str]] = {}
    for image_id, name in chosen.items():
        owners.setdefault(name, []).append(image_id)
    for name, shared in owners.items():
        if len(shared) > 1:
            for image_id in shared:
                refused[image_id] = f"{name} is the one map of {', '.join(shared)}"
                del chosen[image_id]
    return chosen, refused


def map_problem(array: np.ndarray, shape: tuple[int, ...] | None) -> str | None:
    """Why `array` cannot be a map of a store whose maps are `shape` (None: any (h, w)), or
    None when it can; `as_map` gives its (h, w) form."""
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        return f"dtype {array.dtype}: a map holds real numbers"
    squeezed = as_map(array)
    if squeezed.ndim != 2:
        hint = "; reduce its channels first (e.g. sum them)" if array.ndim == 3 else ""
        return f"shape {array.shape}: a map is (h, w){hint}"
    if shape is not None and squeezed.shape != shape:
        return f"shape {squeezed.shape}, but the store's maps are {shape}"
    bad = int(np.count_nonzero(~np.isfinite(squeezed)))
    if bad:
        return f"{bad} NaN or infinite value(s)"
    return None


def common_shape(maps: ForeignMaps, names: Iterable[str]) -> tuple[int, ...] | None:
    """The (h, w) most of the maps `names` have (the first of equally common ones), from their
    headers; None when none is a map."""
    counts = Counter(_squeezed(maps.shape(name)) for name in names)
    shapes = [shape for shape, _ in counts.most_common() if len(shape) == 2]
    return shapes[0] if shapes else None


def npy_shape(file: BinaryIO) -> tuple[int, ...]:
    """The shape in the header of the .npy data in `file`, which is read no further."""
    version = np.lib.format.read_magic(file)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    return tuple(read_header(file)[0])


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `as_map` gives an array of `shape`."""
    if len(shape) == 3 and shape[0] == 1:
        return shape[1:]
    if len(shape) == 3 and shape[-1] == 1:
        return shape[:2]
    return shape


def as_map(array: np.ndarray) -> np.ndarray:
    """(h, w) from (h, w), (1, h, w) or (h, w, 1); any other shape unchanged."""
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        return array[..., 0]
    return array


class ForeignMaps(ABC):
    """A source of maps: `names` (what it holds), `read(name)` one map, `where(name)` the file
    (and key) to name in a message."""

    kind: ClassVar[str]
    path: Path
    names: list[str]

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The map stored as `name`, as written (`map_problem` checks it)."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of the map stored as `name`, read without its values."""

    def where(self, name: str) -> str:
        return f"{self.path}[{name}]"

    @abstractmethod
    def close(self) -> None:
        """Release the source's file."""

    def __enter__(self) -> ForeignMaps:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NpyFolder(ForeignMaps):
    """`FOLDER/**/NAME.npy`: one map per file, named by its path under the folder."""

    kind = "npy-folder"

    def __init__(self, path: Path):
        self.path = path
        self._files = {
            str(file.relative_to(path).with_suffix("").as_posix()): file
            for file in sorted(path.rglob(f"*{NPY}"))
        }
        if not self._files:
            raise DataError(f"{path} holds no {NPY} file")
        self.names = list(self._files)

    def read(self, name: str) -> np.ndarray:
        return np.load(self._files[name], allow_pickle=False)

    def shape(self, name: str) -> tuple[int, ...]:
        with open(self._files[name], "rb") as file:
            return npy_shape(file)

    def where(self, name: str) -> str:
        return str(self._files[name])

    def close(self) -> None:
        """Nothing held open: `read` opens and closes each file."""


class NpzArchive(ForeignMaps):
    """An `.npz` archive: one member per map, named by the image's file name."""

    kind = "npz"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DataError(f"{path} cannot be read as npz ({error})") from None
        self.names = list(self._archive.files)

    def read(self, name: str) -> np.ndarray:
        return self._archive[name]

    def shape(self, name: str) -> tuple[int, ...]:
        with self._archive.zip.open(f"{name}{NPY}") as member:
            return npy_shape(member)

    def close(self) -> None:
        self._archive.close()


class H5Maps(ForeignMaps):
    """An (N, h, w) HDF5 dataset `maps`; rows named by the string dataset `ids` when given (or
    when the file has a dataset "ids"), else by their position in the image list."""

    kind = "h5"

    def __init__(self, path: Path, maps: str | None, ids: str | None, image_ids: Sequence[str]):
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except OSError as error:
            raise DataError(f"{path} cannot be read as HDF5 ({error})") from None
        try:
            self._maps = self._dataset(maps or self._only_stack(), "h5_maps")
            named = ids or ("ids" if "ids" in self._file else None)
            if named is None and len(self._maps) != len(image_ids):
                raise DataError(
                    f"{path}: {self._maps.name} has {len(self._maps)} rows and no `h5_ids` names "
                    f"them, so they must follow the {len(image_ids)} images in order",
                    param="h5_ids",
                )
            if named is None:
                row_names = list(image_ids)
            else:
                row_names = [_text(v) for v in self._dataset(named, "h5_ids")[()]]
            if len(row_names) != len(self._maps):
                raise DataError(
                    f"{path}: {named} names {len(row_names)} rows, {self._maps.name} has "
                    f"{len(self._maps)}",
                    param="h5_ids",
                )
        except BaseException:
            self._file.close()
            raise
        self._rows = {name: row for row, name in enumerate(row_names)}
        self.names = row_names

    def _dataset(self, name: str, param: str) -> h5py.Dataset:
        item = self._file.get(name)
        if not isinstance(item, h5py.Dataset):
            datasets = [n for n, i in self._file.items() if isinstance(i, h5py.Dataset)]
            raise DataError(
                f"{self.path} has no dataset {name!r} (its datasets: {', '.join(datasets)})",
                param=param,
            )
        return item

    def _only_stack(self) -> str:
        stacks = [
            name
            for name, item in self._file.items()
            if isinstance(item, h5py.Dataset) and item.ndim in (3, 4)
        ]
        if len(stacks) != 1:
            found = ", ".join(stacks) or "none"
            raise DataError(
                f"{self.path}: name the dataset of maps with `h5_maps` (datasets of maps: {found})",
                param="h5_maps",
            )
        return stacks[0]

    def read(self, name: str) -> np.ndarray:
        return self._maps[self._rows[name]]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._maps.shape[1:])

    def where(self, name: str) -> str:
        return f"{self.path}:{self._maps.name}[{self._rows[name]}] ({name})"

    def close(self) -> None:
        self._file.close()


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_foreign_maps(
    source: Path,
    image_ids: Sequence[str],
    *,
    h5_maps: str | None = None,
    h5_ids: str | None = None,
) -> ForeignMaps:
    """The maps at `source`: a folder of .npy files, an .npz archive or an .h5/.hdf5 file.

    h5_maps, h5_ids: the HDF5 datasets of the maps (default: the file's one 3-D dataset) and of
    the image ids naming their rows (default: "ids" if present, else rows in `image_ids`' order).
    """
    source = Path(source)
    if source.is_dir():
        return NpyFolder(source)
    if not source.is_file():
        raise DataError(f"{source} does not exist")
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return NpzArchive(source)
    if suffix in (".h5", ".hdf5"):
        return H5Maps(source, h5_maps, h5_ids, image_ids)
    raise DataError(f"{source}: give a folder of {NPY} files, an .npz archive or an .h5 file")
