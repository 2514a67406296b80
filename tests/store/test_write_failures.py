"""A store write that fails (a full disk) stops the run with one error naming the store; only rows
whose maps are in the file are done, and a re-run completes the store to the maps of a run never
interrupted. Done rows whose map, target or score differ from what was written are found and
written again."""

import errno

import h5py
import numpy as np
import pytest
from store_helpers import N, assert_same, contents, ids, labels, maps_of, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.store import create_or_resume, open_store
from xaibench.store.writer import BackgroundWriter

BATCHES = [range(0, 4), range(4, 8), range(8, 12)]


def failing_map_writes(monkeypatch, at: int) -> None:
    """The `at`-th write (from 1) into a `maps` dataset raises the OSError of a full disk."""
    real = h5py.Dataset.__setitem__
    calls = []

    def setitem(self, key, value):
        if self.name == "/maps":
            calls.append(key)
            if len(calls) == at:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


def uninterrupted(tmp_path, suffix):
    path = tmp_path / f"whole.{suffix}"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        for batch in BATCHES:
            write_rows(store, batch)
    return contents(path)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_a_failed_write_stops_the_run_and_a_rerun_completes_the_store(
    tmp_path, monkeypatch, background, suffix
):
    path = tmp_path / f"s.{suffix}"
    failing_map_writes(monkeypatch, at=2)
    store = create_or_resume(path, meta(), ids(), labels())
    writer = BackgroundWriter(store) if background else store
    working = path if suffix == "h5" else path.with_name(path.name + ".partial.h5")
    with pytest.raises(StoreError, match="the disk may be full") as raised:
        for batch in BATCHES:
            write_rows(writer, batch)
        writer.close()
    writer.close()  # closing again after the failure raises nothing more
    assert f"cannot write store {working}" in str(raised.value)
    monkeypatch.undo()
    assert not path.with_name(working.name + ".lock").exists()  # released after the failure
    with open_store(path) as partial:  # the rows before the failure stay, none after it is done
        assert partial.done.tolist() == [True] * 4 + [False] * (N - 4)
        np.testing.assert_array_equal(partial.read_maps(range(4)), maps_of(range(4)))
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.pending_indices().tolist() == list(range(4, N))
        write_rows(store, store.pending_indices())
    assert_same(contents(path), uninterrupted(tmp_path, suffix))


def test_a_failed_write_fails_every_later_write(tmp_path, monkeypatch):
    failing_map_writes(monkeypatch, at=1)
    with create_or_resume(tmp_path / "s.h5", meta(), ids(), labels()) as store:
        with pytest.raises(StoreError, match="No space left on device"):
            write_rows(store, [0])
        monkeypatch.undo()
        with pytest.raises(StoreError, match="the disk may be full"):
            write_rows(store, [1])
        assert not store.done.any()


def completed(path):
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, range(N))
    return contents(path)


def test_a_done_row_whose_map_bytes_changed_on_disk_is_written_again(tmp_path):
    path = tmp_path / "s.h5"
    expected = completed(path)
    with h5py.File(path, "r+") as f:
        f["maps"][5] = np.zeros_like(f["maps"][5])
    with open_store(path) as store, pytest.raises(StoreError, match="row 5"):
        store.read_maps([4, 5])  # a reader refuses the row, naming it
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.pending_indices().tolist() == [5]
        write_rows(store, [5])
    assert_same(contents(path), expected)


def test_a_done_row_whose_chunk_was_lost_is_written_again(tmp_path):
    """A map that never reached the disk reads as the fill value, NaN: not what was written."""
    path = tmp_path / "s.h5"
    expected = completed(path)
    with h5py.File(path, "r+") as f:
        maps = f["maps"]
        del f["maps"]
        lost = f.create_dataset_like("maps", maps)
        lost[:7] = maps[:7]
        lost[8:] = maps[8:]
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.pending_indices().tolist() == [7]
        write_rows(store, [7])
    assert_same(contents(path), expected)


@pytest.mark.parametrize("field", ["target", "score"])
def test_a_done_row_whose_target_or_score_changed_is_noticed(tmp_path, field):
    path = tmp_path / "s.h5"
    expected = completed(path)
    with h5py.File(path, "r+") as f:
        f[field][3] = f[field][3] + 1
    with open_store(path) as store, pytest.raises(StoreError, match="row 3"):
        store.read_maps(range(N))
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.pending_indices().tolist() == [3]
        write_rows(store, [3])
    assert_same(contents(path), expected)


def test_a_store_without_checksums_reads_as_unverified(tmp_path):
    """A store written before rows had checksums: its rows are read and resumed as they are."""
    path = tmp_path / "s.h5"
    expected = completed(path)
    with h5py.File(path, "r+") as f:
        del f["checksum"]
        f["score"][3] = f["score"][3] + 1
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.complete
        assert store.read_maps(range(N)).shape == expected[-1].shape
