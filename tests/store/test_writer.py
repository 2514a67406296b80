"""The background store writer: same stores as writing in place, errors surface, nothing is lost."""

import threading

import numpy as np
import pytest
import torch
from store_helpers import N, ids, labels, maps_of, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings
from xaibench.store import create_or_resume, open_store
from xaibench.store.h5 import H5Store
from xaibench.store.writer import BackgroundWriter


def run(image_folder, out, write_queue):
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    generate(
        load_model("tiny_models:tiny_cnn"),
        ["tgrad", "gradcam", "random"],
        dataset,
        out,
        settings=RunSettings.resolve(torch.device("cpu"), batch_size=2, progress=False),
        write_queue=write_queue,
    )


def test_background_writes_give_the_same_stores(image_folder, tmp_path):
    run(image_folder, tmp_path / "inline", write_queue=0)
    run(image_folder, tmp_path / "background", write_queue=2)
    for method in ("tgrad", "gradcam", "random"):
        name = f"tiny_models_tiny_cnn/{method}.h5"
        with (
            open_store(tmp_path / "inline" / name) as a,
            open_store(tmp_path / "background" / name) as b,
        ):
            assert b.complete
            np.testing.assert_array_equal(b.read_maps(np.arange(6)), a.read_maps(np.arange(6)))
            np.testing.assert_array_equal(b.targets, a.targets)
            np.testing.assert_array_equal(b.scores, a.scores)


class GatedStore:
    """A store whose writes from the `hold_from`-th on wait for `release` (set by the test), and
    whose `fail_at`-th write raises OSError; `holding` is set once a write waits. Only writes off
    the main thread wait: one on it fails the test's assertions instead of hanging it."""

    def __init__(self, store, fail_at=None, hold_from=None):
        self.store, self.path, self.fail_at, self.hold_from = store, store.path, fail_at, hold_from
        self.calls, self.written, self.threads = 0, 0, set()
        self.holding, self.release = threading.Event(), threading.Event()

    def write(self, rows):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        background = threading.current_thread() is not threading.main_thread()
        if background and self.hold_from is not None and self.calls >= self.hold_from:
            self.holding.set()
            self.release.wait()
        if self.calls == self.fail_at:
            raise OSError("No space left on device")
        self.store.write(rows)
        self.written += 1

    def pending_indices(self):
        return self.store.pending_indices()

    def close(self):
        self.store.close()


def new_store(tmp_path):
    return create_or_resume(tmp_path / "s.h5", meta(), ids(), labels())


def test_close_writes_everything_queued_off_the_main_thread(tmp_path):
    held = GatedStore(new_store(tmp_path), hold_from=1)
    writer = BackgroundWriter(held, depth=2)
    batches = np.arange(N).reshape(-1, 2)
    for rows in batches[:3]:  # one in the held write, `depth` in the queue
        write_rows(writer, rows)
    assert held.written == 0  # the main thread went on before any write was done
    held.release.set()
    for rows in batches[3:]:
        write_rows(writer, rows)
    writer.close()
    assert held.written == len(batches)  # close returned only once every queued write was done
    assert threading.current_thread().name not in held.threads
    with open_store(tmp_path / "s.h5") as store:
        assert store.complete
        np.testing.assert_array_equal(store.read_maps(np.arange(N)), maps_of(np.arange(N)))


def test_a_failed_write_is_raised_with_the_store_path_and_earlier_rows_are_kept(tmp_path):
    failing = GatedStore(new_store(tmp_path), fail_at=3, hold_from=3)
    writer = BackgroundWriter(failing, depth=1)
    for rows in np.arange(6).reshape(-1, 2):
        write_rows(writer, rows)
    assert failing.holding.wait(timeout=60)  # the writer thread is in the write that fails
    write_rows(writer, np.arange(6, 8))  # queued behind it: no failure to report yet
    failing.release.set()
    with pytest.raises(StoreError, match=r"s\.h5: background write failed \(OSError: No space"):
        # The first raises, or its put waits for the writer thread to take rows 6-7, which it does
        # only after recording the failure: then the second raises.
        write_rows(writer, np.arange(8, 10))
        write_rows(writer, np.arange(10, 12))
    with pytest.raises(StoreError, match="No space left"):
        writer.close()
    with open_store(tmp_path / "s.h5") as store:
        np.testing.assert_array_equal(np.flatnonzero(store.done), np.arange(4))
        np.testing.assert_array_equal(store.read_maps(np.arange(4)), maps_of(np.arange(4)))


def test_a_failure_at_the_last_write_is_raised_by_close(tmp_path):
    writer = BackgroundWriter(GatedStore(new_store(tmp_path), fail_at=1), depth=2)
    write_rows(writer, np.arange(2))
    with pytest.raises(StoreError, match=r"s\.h5"):
        writer.close()
    with open_store(tmp_path / "s.h5") as store:
        assert not store.done.any()


def test_generate_surfaces_a_writer_error_and_keeps_the_finished_rows(
    image_folder, tmp_path, monkeypatch
):
    original, calls = H5Store.write, []

    def fail_on_second_write(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk quota exceeded")
        return original(self, rows)

    monkeypatch.setattr(H5Store, "write", fail_on_second_write)
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    with pytest.raises(StoreError, match=r"tgrad\.h5: background write failed.*disk quota"):
        generate(
            load_model("tiny_models:tiny_cnn"),
            ["tgrad"],
            dataset,
            tmp_path,
            settings=RunSettings.resolve(torch.device("cpu"), batch_size=2, progress=False),
        )
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "tgrad.h5") as store:
        np.testing.assert_array_equal(np.flatnonzero(store.done), [0, 1])
