from pathlib import Path

import h5py
import numpy as np
import pytest
from store_helpers import N, assert_same, contents, ids, labels, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.store import create_or_resume
from xaibench.store.npz import partial_path
from xaibench.store.shards import (
    done_rows,
    merge_shards,
    remove_stale_shards,
    shard_dir,
    shard_path,
    shard_paths,
)


def write_shard(path, rank, size, rows, **changes):
    shard = shard_path(path, rank, size)
    shard.parent.mkdir(parents=True, exist_ok=True)
    with create_or_resume(shard, meta(**changes), ids(), labels()) as store:
        write_rows(store, rows)
    return shard


def write_whole(path):
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, range(N))
    return path


def merge(path):
    return merge_shards(path, meta(), ids(), labels())


def test_shard_names():
    path = shard_path(Path("runs/vgg16/tgrad.h5"), 3, 8)
    assert path.as_posix() == "runs/vgg16/tgrad.h5.shards/rank-00003-of-00008.h5"


@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_shards_of_two_launches_and_an_unfinished_store_merge_into_the_whole(tmp_path, suffix):
    whole = write_whole(tmp_path / f"whole.{suffix}")
    path = tmp_path / f"merged.{suffix}"
    with create_or_resume(path, meta(), ids(), labels()) as store:  # one process, interrupted
        write_rows(store, [0, 1])
    write_shard(path, 0, 2, [2, 3, 4])  # two processes, killed
    write_shard(path, 1, 2, [5])
    for rank, rows in enumerate([[6, 7], [8, 9, 10], [11]]):  # three processes
        write_shard(path, rank, 3, rows)
    assert done_rows(path, meta(), ids(), labels()).all()
    assert len(merge(path)) == 5
    assert not shard_dir(path).exists() and not partial_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([whole.name, path.name])
    assert_same(contents(path), contents(whole))


def test_done_rows_is_the_union_of_the_store_and_its_shards(tmp_path):
    path = tmp_path / "s.h5"
    assert not done_rows(path, meta(), ids(), labels()).any()
    write_shard(path, 1, 2, [4, 7])
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [0])
    assert np.flatnonzero(done_rows(path, meta(), ids(), labels())).tolist() == [0, 4, 7]
    write_shard(path, 0, 2, [1], method="tgrad")
    with pytest.raises(StoreError, match=r"rank-00000-of-00002\.h5 was written with method="):
        done_rows(path, meta(), ids(), labels())


def test_every_per_row_dataset_and_its_attributes_survive_the_merge(tmp_path):
    path = tmp_path / "s.h5"
    seconds = np.linspace(0.1, 1.2, N, dtype=np.float32)
    for rank, rows in enumerate([np.arange(0, 5), np.arange(5, N)]):
        shard = write_shard(path, rank, 2, rows)
        with h5py.File(shard, "r+") as f:
            quality = f.create_dataset("quality", data=np.full(N, np.nan, np.float32))
            quality[rows] = seconds[rows] * 10
            quality.attrs["unit"] = "dB"
            f["seconds"][rows] = seconds[rows]
            pairs = f.create_dataset("timing/pairs", data=np.zeros((N, 2), np.int32))
            pairs[rows] = np.stack([rows, rows * 2], axis=1)
            f.create_dataset("methods", data=np.array([b"tgrad", b"gradcam"]))
    merge(path)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["seconds"][:], seconds)
        np.testing.assert_array_equal(f["quality"][:], seconds * 10)
        assert f["quality"].attrs["unit"] == "dB"
        np.testing.assert_array_equal(f["timing/pairs"][:, 1], np.arange(N) * 2)
        assert f["methods"][:].tolist() == [b"tgrad", b"gradcam"]
        assert f["maps"].compression == "lzf" and f["maps"].fletcher32
        assert f["maps"].chunks == (1, *f["maps"].shape[1:])


def test_a_row_missing_or_done_twice_is_refused_and_nothing_is_removed(tmp_path):
    path = tmp_path / "s.h5"
    write_shard(path, 0, 2, range(6))
    write_shard(path, 1, 2, range(6, N - 1))
    with pytest.raises(StoreError, match=r"1 image\(s\) are in no store.*00000011"):
        merge(path)
    write_shard(path, 0, 1, [N - 1, 3])
    with pytest.raises(StoreError, match=r"00000003.*done in both.*rank-00000-of-00001"):
        merge(path)
    assert len(shard_paths(path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5.shards"]


def test_stale_shards_of_a_complete_store_are_removed(tmp_path):
    path = write_whole(tmp_path / "s.h5")
    write_shard(path, 0, 2, [0])
    assert done_rows(path, meta(), ids(), labels()).all()
    remove_stale_shards(path)
    assert not shard_dir(path).exists()


def test_maps_compressed_otherwise_are_decoded_and_written_again(tmp_path):
    whole = write_whole(tmp_path / "whole.h5")
    path = tmp_path / "s.h5"
    with create_or_resume(path, meta(), ids(), labels(), compression="gzip") as store:
        write_rows(store, range(4))
    write_shard(path, 0, 1, range(4, N))  # lzf, after the gzip file that created `maps`
    merge(path)
    assert_same(contents(path), contents(whole))
    with h5py.File(path) as f:
        assert f["maps"].compression == "gzip"


def test_a_per_row_float_field_no_source_has_for_a_row_reads_as_nan(tmp_path):
    path = tmp_path / "s.h5"
    for rank, rows in enumerate([np.arange(0, 5), np.arange(5, N)]):
        shard = write_shard(path, rank, 2, rows)
        if rank == 0:  # only the first shard carries the field
            with h5py.File(shard, "r+") as f:
                quality = f.create_dataset("quality", data=np.zeros(N, np.float32))
                quality[rows] = 1.0
    merge(path)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["quality"][:5], np.ones(5))
        assert np.isnan(f["quality"][5:]).all()
