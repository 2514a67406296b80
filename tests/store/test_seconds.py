"""The per-row generation time: written, exported to npz, absent from older stores."""

import json

import h5py
import numpy as np
from store_helpers import N, ids, labels, maps_of, meta

from xaibench.store import Rows, create_or_resume, open_store
from xaibench.store.npz import META_KEY


def write(store, rows, seconds=None):
    rows = np.asarray(rows)
    store.write(Rows(rows, maps_of(rows), rows, rows / 100, seconds=seconds))


def test_seconds_round_trip_and_npz_header(tmp_path):
    for suffix in ("h5", "npz"):
        path = tmp_path / f"gradcam.{suffix}"
        with create_or_resume(path, meta(), ids(), labels()) as store:
            write(store, range(N - 1), seconds=np.arange(N - 1) / 10)
            write(store, [N - 1])  # a row written without a time
        with open_store(path) as store:
            np.testing.assert_allclose(store.seconds[:-1], np.arange(N - 1) / 10, rtol=1e-6)
            assert np.isnan(store.seconds[-1])
    with np.load(tmp_path / "gradcam.npz", allow_pickle=False) as archive:
        header = json.loads(str(archive[META_KEY]))
    assert header["seconds"][-1] is None  # null, not a NaN literal
    assert header["seconds"][1] == np.float32(0.1).item()


def test_a_store_without_seconds_reads_nan_and_gains_them_when_resumed(tmp_path):
    path = tmp_path / "gradcam.h5"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write(store, range(4))
    with h5py.File(path, "r+") as f:
        del f["seconds"]  # as written before the field existed
    with open_store(path) as store:
        assert np.isnan(store.seconds).all()
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write(store, range(4, N), seconds=np.full(N - 4, 0.5))
    with open_store(path) as store:
        assert store.complete and np.isnan(store.seconds[:4]).all()
        assert (store.seconds[4:] == 0.5).all()
