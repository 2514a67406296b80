"""Image folders as a torch Dataset of (preprocessed image, row index), and its DataLoader.

Layouts:
- class folders: `root/<WNID>/<image>` (the arranged ImageNet val); the label is the WNID's index;
- a flat (or any) folder plus a labels file, one image per line:
  `<image> <anything> <WNID>` (e.g. `ILSVRC2012_val_00000001.JPEG 065 n01751748`; the middle column
  is ignored), `<image> <WNID>`, or `<image> <int>` where the int is a 0-based index into the sorted
  WNIDs (the `val.txt` convention of Caffe-era ImageNet tools);
- any folder without labels: every label is -1.

Image ids are paths relative to the root with `/`, sorted; an image in a top-level folder named like a
WNID (`n` + 8 digits) takes that class, unless a labels file is given, which then decides every label.
The listing (`find_images`) follows links to folders but walks each real folder once, so a link
loop or a second link to a folder adds no image; it keeps regular files only (a FIFO, socket,
device or broken link named like an image is skipped with a warning, and never opened).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from xaibench.core.errors import DataError
from xaibench.data.classes import NUM_CLASSES, WNID_PATTERN, imagenet_classes

if TYPE_CHECKING:
    from xaibench.data.preprocess import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImage(NamedTuple):
    """What `__getitem__` returns instead of an image that cannot be decoded (with `skip_bad`)."""

    index: int
    reason: str


def find_images(root: Path) -> list[str]:
    """Relative `/` paths of the image files under `root` (hidden files skipped), sorted.

    Symbolic links to folders are followed, as arranged datasets often link class folders, but
    each real folder is walked once, under its own path when it lies under `root` (the folders
    reached without a link are walked first): a folder reached again (a link loop such as
    `loop -> .`, or a second way to it) is skipped with a warning. Only regular files are listed:
    anything else named like an image (a FIFO, socket, device, broken link) is skipped with a
    warning, and never opened.
    """
    root = Path(root)
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    direct, linked = [PurePosixPath()], []  # folders to walk, reached without / through a link
    while direct or linked:
        via_link = not direct
        rel = (direct or linked).pop()
        folder = root / rel
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue  # an unreadable folder is left out, as os.walk leaves it
        if (info.st_dev, info.st_ino) in seen:
            log.warning("skipping %s: it leads to a folder already listed", folder)
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in reversed(entries):
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                (linked if via_link or entry.is_symlink() else direct).append(rel / entry.name)
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                if _is_regular_file(entry):
                    found.append((rel / entry.name).as_posix())
                else:
                    log.warning("skipping %s: not a regular file", entry.path)
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def list_images(root: Path) -> list[str]:
    """`find_images(root)`; a DataError naming `root` when it is not a folder or holds no image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist; pass the folder that holds the "
            "images (class folders named by WNID, or a flat folder with `labels_file`)"
        )
    ids = find_images(root)
    if not ids:
        raise DataError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}; pass the folder that "
            "holds the images"
        )
    return ids


def image_id_problem(image_id: str) -> str | None:
    """Why `image_id` is not an image id (a relative `/` path inside a data root), or None."""
    path = PurePosixPath(image_id)
    if not image_id or "\0" in image_id:
        return "is empty or holds a NUL character"
    if path.is_absolute():
        return "is an absolute path"
    if ".." in path.parts:
        return "contains '..'"
    return None


def safe_image_path(root: Path, image_id: str, source: str) -> Path:
    """`root / image_id`; DataError naming the id and `source` (e.g. "store PATH") for an id that
    is not a relative path inside `root` (absolute, or with `..`).

    Ids are checked as text: a link under `root` is followed, as `find_images` follows it, since
    the links of a data folder are its owner's (extraction writes none).
    """
    problem = image_id_problem(image_id)
    if problem is not None:
        raise DataError(
            f"{source} has image id {image_id!r}, which {problem}; an image id is a path "
            f"relative to `data_dir` ({root}), inside it"
        )
    return Path(root) / image_id


def check_images_present(
    named: Iterable[str], present: Iterable[str], source: str, root: Path, fix: str
) -> None:
    """DataError when `source` (e.g. "labels file PATH") names images that are not `present`
    under `root`; the message gives the count, the first image missing and `fix`."""
    missing = sorted(set(named) - set(present))
    if missing:
        raise DataError(
            f"{source} names {len(missing)} image(s) not under {root} (first: {missing[0]}); {fix}"
        )


def read_labels_file(path: Path) -> dict[str, int]:
    """Image id -> class index, from a labels file in one of the module's formats; DataError
    naming the file and the lines of an image listed twice."""
    classes = imagenet_classes()
    labels = {}
    first_line: dict[str, int] = {}
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read labels file {path} ({error}); check the path") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"labels file {path}, line {number}"
        if len(fields) not in (2, 3):
            raise DataError(f"{where}: expected `<image> [<number>] <WNID>`, got {line!r}")
        name, label = fields[0], fields[-1]
        if name in first_line:
            raise DataError(
                f"{where}: image {name!r} is labelled again (first on line "
                f"{first_line[name]}); give each image one line"
            )
        first_line[name] = number
        if WNID_PATTERN.fullmatch(label):
            try:
                labels[name] = classes.index_of(label)
            except DataError as error:
                raise DataError(f"{where}: {error}") from None
        elif len(fields) == 2 and label.isdigit() and int(label) < NUM_CLASSES:
            labels[name] = int(label)
        else:
            raise DataError(
                f"{where}: {label!r} is neither a WNID nor a class index 0..{NUM_CLASSES - 1}"
            )
    return labels


def folder_labels(ids: Sequence[str]) -> np.ndarray:
    """(N,) int64: the class of each id's top-level WNID folder, -1 for ids outside one."""
    classes = imagenet_classes()
    tops = [i.split("/", 1)[0] if "/" in i else "" for i in ids]
    return np.array(
        [classes.index_of(t) if WNID_PATTERN.fullmatch(t) else -1 for t in tops], dtype=np.int64
    )


def load_rgb(path: Path) -> Image.Image:
    """Decode an image as 8-bit RGB (grayscale, CMYK, palette and alpha images are converted).

    Alpha is dropped, not composited: the colour under transparent pixels is kept, as
    torchvision's ImageFolder loader and the T-Grad authors' scripts do. 16-bit grayscale is scaled to 8 bits
    (PIL's own conversion would clip it at 255). A path that is not a regular file (a FIFO, a
    device) raises OSError without being read.
    """
    with open(path, "rb", opener=_open_without_blocking) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError("not a regular file")
        with Image.open(handle) as image:
            image.load()
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA")
            elif image.mode.startswith("I"):
                scaled = (np.asarray(image, np.float64) / 257).clip(0, 255).round()
                image = Image.fromarray(scaled.astype(np.uint8))
            return image.convert("RGB")


def _open_without_blocking(name: str, flags: int) -> int:
    """`os.open` for `open(..., opener=)`: a FIFO without a writer opens at once instead of
    hanging (a regular file reads as usual; Windows, which has no FIFO files, has no flag)."""
    return os.open(name, flags | getattr(os, "O_NONBLOCK", 0))


def read_image(path: Path, fix: str) -> Image.Image:
    """`load_rgb(path)`; a DataError naming the file and `fix` when it is missing or undecodable."""
    try:
        return load_rgb(path)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; {fix}") from None
    except DECODE_ERRORS as error:
        raise DataError(f"cannot decode image {path} ({error}); {fix}") from None


class ImageFolderDataset(Dataset):
    """Images under `root` -> `(image (3, H, W) float32, row index)`.

    `ids` (N,) relative paths and `labels` (N,) int64 (-1 unknown) are known up front. An image that
    cannot be decoded raises DataError, or with `skip_bad=True` comes back as a `BadImage`, which
    `make_loader`'s batches drop and record in `bad_ids` (also when decoded in worker processes).
    `subset_file` keeps only the ids listed in it (first column of each line, e.g. a subset written
    by `xaibench download --subset`); `limit` then keeps the first `limit` ids. `found` is the
    listing of `root` by `list_images` when the caller already has it (the folder is not walked).
    """

    def __init__(
        self,
        root: str | Path,
        preprocess: Preprocess,
        labels_file: str | Path | None = None,
        limit: int | None = None,
        skip_bad: bool = False,
        subset_file: str | Path | None = None,
        found: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        self.preprocess = preprocess
        self.skip_bad = skip_bad
        self.bad: dict[int, str] = {}
        ids = list_images(self.root) if found is None else list(found)
        if labels_file is None:
            labels = folder_labels(ids)
        else:
            labels = self._labels_from_file(Path(labels_file), ids)
        self.subset_file = None if subset_file is None else Path(subset_file)
        if self.subset_file is not None:
            keep = self._subset_rows(self.subset_file, ids)
            ids, labels = [ids[i] for i in keep], labels[keep]
        self.ids = ids[:limit]
        self.labels = labels[:limit]

    def _labels_from_file(self, path: Path, ids: list[str]) -> np.ndarray:
        by_id = read_labels_file(path)
        check_images_present(
            by_id,
            ids,
            f"labels file {path}",
            self.root,
            "pass the folder that holds them, or a labels file for this folder",
        )
        unlabelled = len(ids) - len(by_id)
        if unlabelled:
            log.warning("%d image(s) under %s are not in %s: label -1", unlabelled, self.root, path)
        return np.array([by_id.get(i, -1) for i in ids], dtype=np.int64)

    def _subset_rows(self, path: Path, ids: list[str]) -> np.ndarray:
        try:
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read subset file {path} ({error}); check the path") from None
        wanted = {f[0] for f in (line.split() for line in lines) if f and not f[0].startswith("#")}
        check_images_present(
            wanted,
            ids,
            f"subset file {path}",
            self.root,
            "pass the folder the subset was made from",
        )
        return np.array([i for i, image_id in enumerate(ids) if image_id in wanted], np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.ids[index]

    def open_image(self, index: int) -> Image.Image:
        """The RGB image of row `index`, before preprocessing; DataError if it cannot be decoded."""
        return read_image(
            self.image_path(index), "replace the file, or pass `skip_bad` to leave it out"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadImage:
        """(3, H, W) float32 image and `index`, or a `BadImage` when skipping undecodable files."""
        if not self.skip_bad:
            return self.preprocess(self.open_image(index)), index
        try:
            image = load_rgb(self.image_path(index))
        except DECODE_ERRORS as error:
            self.bad[index] = f"undecodable image {self.image_path(index)} ({error})"
            return BadImage(index, self.bad[index])
        return self.preprocess(image), index

    @property
    def bad_ids(self) -> list[str]:
        """Ids of the images found undecodable so far (with `skip_bad`)."""
        return [self.ids[i] for i in sorted(self.bad)]


class Batch(NamedTuple):
    """A collated batch: images (B, 3, H, W) (None if every image was bad), indices (B,), bad."""

    images: torch.Tensor | None
    indices: torch.Tensor
    bad: list[BadImage]


def collate(items: list[tuple[torch.Tensor, int] | BadImage]) -> Batch:
    """Stack the decoded images; set the `BadImage`s aside."""
    bad = [item for item in items if isinstance(item, BadImage)]
    good = [item for item in items if not isinstance(item, BadImage)]
    images = torch.stack([image for image, _ in good]) if good else None
    return Batch(images, torch.tensor([i for _, i in good], dtype=torch.int64), bad)


class ImageLoader(DataLoader):
    """A DataLoader yielding `(images (B, 3, H, W), indices (B,) int64)`.

    Bad images are dropped from their batch and recorded in the dataset's `bad` in this process,
    since worker processes hold their own copies of the dataset; a batch of only bad images is
    skipped, so B may be smaller than the batch size.
    """

    dataset: ImageFolderDataset

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self._batches()
        except DataError as error:
            # A worker's error comes back wrapped in its traceback: keep the one-line message.
            message = str(error)
            if "DataError: " in message:
                message = message.rsplit("DataError: ", 1)[1].strip()
            raise DataError(message) from None

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in super().__iter__():
            for item in batch.bad:
                log.warning("skipping %s", item.reason)
                self.dataset.bad[item.index] = item.reason
            if batch.images is not None:
                yield batch.images, batch.indices


def make_loader(
    dataset: ImageFolderDataset,
    batch_size: int,
    workers: int = 0,
    indices: Sequence[int] | np.ndarray | None = None,
    device: torch.device | None = None,
) -> ImageLoader:
    """Batches of `dataset` rows `indices` (all rows if None) in the order given.

    Pinned memory when the batches go to a CUDA device, so copies can overlap compute.
    """
    rows = range(len(dataset)) if indices is None else [int(i) for i in indices]
    return ImageLoader(
        dataset,
        batch_size=batch_size,
        sampler=rows,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device is not None and device.type == "cuda",
    )
