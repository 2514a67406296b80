"""Tiny archives with the real ImageNet layouts, and a local HTTP server for them (no internet).

- `val_tar`: flat `ILSVRC2012_val_XXXXXXXX.JPEG` entries, as in ILSVRC2012_img_val.tar;
- `devkit_tar`: `ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}`,
  meta.mat written with scipy.io.savemat with the real `synsets` fields: the 1000 leaves under a
  seeded permutation of devkit IDs in which ID 1 is n02119789 (as in the real devkit), plus two
  inner nodes (num_children > 0) that must not become classes;
- `boxes_tar`: `val/ILSVRC2012_val_XXXXXXXX.xml` Pascal VOC files.
"""

from __future__ import annotations

import http.server
import io
import re
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from xaibench.data.classes import imagenet_classes

KIT_FOX = "n02119789"
SYNSET_FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


def jpeg_bytes(seed: int, side: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def val_tar(path: Path, count: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for number in range(1, count + 1):
            add_bytes(tar, f"ILSVRC2012_val_{number:08d}.JPEG", jpeg_bytes(number))
    return path


def devkit_wnids(seed: int = 0) -> list[str]:
    """WNID of devkit ID i + 1 at position i: a seeded permutation with ID 1 = n02119789."""
    others = [w for w in imagenet_classes().wnids if w != KIT_FOX]
    return [KIT_FOX, *np.random.default_rng(seed).permutation(others).tolist()]


def meta_mat(wnids: list[str]) -> bytes:
    classes = imagenet_classes()
    names = {w: classes.names(classes.index_of(w)) if w in classes.wnids else w for w in wnids}
    rows = [
        (i, w, names[w], f"gloss of {w}", 0, np.zeros((0,)), 0, 1300)
        for i, w in enumerate(wnids, 1)
    ]
    n = len(wnids)
    rows += [
        (n + 1, "n00001740", "entity", "the root", 2, np.array([n + 2, 1]), 19, 0),
        (n + 2, "n00002137", "abstraction", "an inner node", 1, np.array([2]), 18, 0),
    ]
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for k, row in enumerate(rows):
        synsets[k, 0] = tuple(row)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def devkit_tar(path: Path, ground_truth: list[int], wnids: list[str] | None = None) -> Path:
    wnids = wnids or devkit_wnids()
    top = "ILSVRC2012_devkit_t12"
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, f"{top}/data/meta.mat", meta_mat(wnids))
        truth = "".join(f"{i}\n" for i in ground_truth).encode()
        add_bytes(tar, f"{top}/data/ILSVRC2012_validation_ground_truth.txt", truth)
        add_bytes(tar, f"{top}/readme.txt", b"devkit")
    return path


def box_xml(number: int, wnid: str) -> bytes:
    return (
        f"<annotation><filename>ILSVRC2012_val_{number:08d}</filename><object><name>{wnid}</name>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "</annotation>"
    ).encode()


def boxes_tar(path: Path, wnids: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for number, wnid in enumerate(wnids, 1):
            add_bytes(tar, f"val/ILSVRC2012_val_{number:08d}.xml", box_xml(number, wnid))
    return path


class ArchiveServer:
    """Serves `files` (name -> bytes) on 127.0.0.1 with Range support.

    `cut[name] = n` makes the next response for `name` stop after byte n of the file and drop the
    connection (once). `requests` records (name, Range header) of every request. With
    `ranges = False` the server ignores Range and always sends the whole file.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.ranges:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                stop = server.cut.pop(name, None)
                if stop is None:
                    self.wfile.write(data[start:])
                    return
                self.wfile.write(data[start:stop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
