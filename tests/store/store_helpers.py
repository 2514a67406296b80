"""Shared store fixtures: a run's metadata, ids and deterministic maps."""

import numpy as np

from xaibench.store import Rows, StoreMeta, open_store

N, H, W = 12, 8, 6


def meta(**changes) -> StoreMeta:
    fields = dict(
        model="tiny_models:tiny_cnn",
        weights="none",
        method="gradcam",
        method_params={"layer": "3", "relu": True},
        target="predicted",
        preprocess={"name": "polycam", "resize": [224, 224], "crop": None},
        created="2024-01-01T00:00:00+00:00",
        torch_version="2.14.1",
    )
    return StoreMeta(**{**fields, **changes})


def ids(n: int = N) -> list[str]:
    return [f"n0{i % 3:07d}/ILSVRC2012_val_{i:08d}.JPEG" for i in range(n)]


def labels(n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 3


def maps_of(rows) -> np.ndarray:
    """(b, H, W) float32: a smooth map per row, different for every row."""
    rows = np.asarray(rows, dtype=np.float32)[:, None, None]
    y, x = np.mgrid[:H, :W].astype(np.float32)
    return np.sin(rows + 0.3 * y) * np.cos(0.7 * x - rows)


def write_rows(store, rows) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    store.write(Rows(rows, maps_of(rows), rows * 7, (rows / 100).astype(np.float32)))


def contents(path):
    """Everything a reader sees in a store, for comparing two runs."""
    with open_store(path) as store:
        return (
            store.meta,
            store.ids,
            store.labels.tolist(),
            store.targets.tolist(),
            store.scores.tolist(),
            store.done.tolist(),
            store.read_maps(range(len(store))),
        )


def assert_same(a, b):
    assert a[:-1] == b[:-1]
    np.testing.assert_array_equal(a[-1], b[-1])
