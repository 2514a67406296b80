import json
import zipfile

import h5py
import numpy as np
import pytest
from store_helpers import H, N, W, ids, labels, maps_of, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.metrics import PROTOCOLS
from xaibench.store import Rows, StoreWriter, create_or_resume, find_stores, open_store
from xaibench.store.npz import META_KEY, partial_path
from xaibench.store.writer import BackgroundWriter


@pytest.fixture(params=["h5", "npz"])
def path(request, tmp_path):
    return tmp_path / f"gradcam.{request.param}"


def write_all(path, batches=((5, 0, 9), (3, 1), (2, 4, 6, 7, 8, 10, 11))):
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.pending_indices().tolist() == list(range(N))
        for rows in batches:
            write_rows(store, rows)
        assert store.complete
    return path


def test_round_trip(path):
    write_all(path)
    with open_store(path) as store:
        assert len(store) == N
        assert store.meta == meta()
        assert store.ids == ids()
        assert store.labels.tolist() == labels().tolist()
        assert store.targets.tolist() == (np.arange(N) * 7).tolist()
        np.testing.assert_array_equal(store.scores, (np.arange(N) / 100).astype(np.float32))
        assert store.done.dtype == bool and store.done.all()
        assert store.pending_indices().size == 0
        rows = [7, 2, 2, 11, 0]
        read = store.read_maps(rows)
        assert read.dtype == np.float32 and read.shape == (5, H, W)
        np.testing.assert_array_equal(read, maps_of(rows))
        np.testing.assert_array_equal(store.read_maps(range(3, 6)), maps_of([3, 4, 5]))


def test_reader_cannot_write(path):
    write_all(path)
    with open_store(path) as store, pytest.raises(StoreError, match="reading only"):
        write_rows(store, [0])


def test_h5_layout(tmp_path):
    path = write_all(tmp_path / "s.h5")
    with h5py.File(path) as f:
        assert f.attrs["format"] == "xaibench.saliency" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["method_params"]) == meta().method_params
        assert f.attrs["method"] == "gradcam" and f.attrs["target"] == "predicted"
        assert f["maps"].chunks == (1, H, W) and f["maps"].compression == "lzf"
        assert f["maps"].dtype == np.float32 and f["ids"].asstr()[0] == ids()[0]
        assert {k: f[k].dtype for k in ("target", "score", "label", "done")} == {
            "target": np.int64,
            "score": np.float32,
            "label": np.int64,
            "done": bool,
        }


def test_gzip_is_an_option(tmp_path):
    with create_or_resume(tmp_path / "s.h5", meta(), ids(), labels(), compression="gzip") as store:
        write_rows(store, range(N))
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["maps"].compression == "gzip"
    with pytest.raises(StoreError, match="compression"):
        create_or_resume(tmp_path / "t.h5", meta(), ids(), labels(), compression="zstd")


def test_npz_is_keyed_by_file_name_without_pickle(tmp_path):
    path = write_all(tmp_path / "s.npz")
    assert not partial_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    with np.load(path, allow_pickle=False) as archive:
        names = [i.split("/")[-1] for i in ids()]
        assert sorted(archive.files) == sorted([*names, META_KEY])
        for row, name in enumerate(names):
            assert archive[name].dtype == np.float32
            np.testing.assert_array_equal(archive[name], maps_of([row])[0])
        header = json.loads(str(archive[META_KEY]))
        assert archive[META_KEY].dtype.kind == "U"
    attrs = header["attrs"]
    assert attrs["format"] == "xaibench.saliency" and attrs["format_version"] == 1
    assert attrs["method_params"] == meta().method_params and attrs["target"] == "predicted"
    assert header["ids"] == ids() and header["label"] == labels().tolist()
    assert header["target"] == (np.arange(N) * 7).tolist()
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())


def test_npz_refuses_ids_sharing_a_file_name(tmp_path):
    clash = ["a/x.JPEG", "b/x.JPEG"]
    with pytest.raises(StoreError, match=r"'a/x.JPEG' and 'b/x.JPEG'.*\.h5"):
        create_or_resume(tmp_path / "s.npz", meta(), clash, [0, 0])
    assert not list(tmp_path.iterdir())
    with create_or_resume(tmp_path / "s.h5", meta(), clash, [0, 0]) as store:
        assert store.pending_indices().tolist() == [0, 1]


def test_unfinished_run_exposes_rows_not_done(path):
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [4, 1])
    assert not (path.suffix == ".npz" and path.exists())
    with open_store(path) as store:
        assert np.flatnonzero(store.done).tolist() == [1, 4]
        np.testing.assert_array_equal(store.read_maps([4]), maps_of([4]))
        assert np.isnan(store.read_maps([0])).all()
        assert store.targets[0] == -1


@pytest.mark.parametrize(
    "field, change",
    [
        ("method_params", {"method_params": {"layer": "4"}}),
        ("method", {"method": "tgrad"}),
        ("preprocess", {"preprocess": {"name": "rise"}}),
        ("weights", {"weights": "IMAGENET1K_V1"}),
    ],
)
def test_mismatched_run_is_refused_naming_the_field(path, field, change):
    write_all(path)
    with pytest.raises(StoreError, match=rf"{field}=.*this run has {field}="):
        create_or_resume(path, meta(**change), ids(), labels())


def test_mismatched_ids_or_labels_are_refused(path):
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [0])
    other = ids()
    other[5] = "elsewhere.JPEG"
    with pytest.raises(StoreError, match=r"ids differ.*row 5.*elsewhere"):
        create_or_resume(path, meta(), other, labels())
    with pytest.raises(StoreError, match=r"ids of 12 images.*has 11"):
        create_or_resume(path, meta(), ids(11), labels(11))
    with pytest.raises(StoreError, match=r"labels differ.*row 0"):
        create_or_resume(path, meta(), ids(), labels() + 1)


def test_write_checks_its_arguments(tmp_path):
    with create_or_resume(tmp_path / "s.h5", meta(), ids(), labels()) as store:
        with pytest.raises(ValueError, match="distinct"):
            store.write(Rows(np.array([1, 1]), maps_of([1, 1]), [0, 0], [0.0, 0.0]))
        with pytest.raises(ValueError, match="distinct"):
            store.write(Rows(np.array([N]), maps_of([N]), [0], [0.0]))
        write_rows(store, [0])
        with pytest.raises(ValueError, match=r"\(8, 6\)"):
            store.write(Rows(np.array([1]), np.zeros((1, 4, 4)), [0], [0.0]))
        assert store.done.tolist() == [True] + [False] * (N - 1)


def test_rows_take_the_store_dtypes_and_check_their_shapes():
    rows = Rows([2, 0], maps_of([2, 0]).astype(np.float64), [1, 5], [0.5, 0.25])
    assert rows.indices.dtype == rows.targets.dtype == np.int64 and len(rows) == 2
    assert rows.maps.dtype == rows.scores.dtype == rows.seconds.dtype == np.float32
    assert np.isnan(rows.seconds).all()  # not recorded
    with pytest.raises(ValueError, match=r"maps must be \(2, h, w\)"):
        Rows([2, 0], maps_of([2]), [1, 5], [0.5, 0.25])
    with pytest.raises(ValueError, match=r"scores must be \(2,\)"):
        Rows([2, 0], maps_of([2, 0]), [1, 5], [0.5])
    with pytest.raises(ValueError, match=r"seconds must be \(2,\)"):
        Rows([2, 0], maps_of([2, 0]), [1, 5], [0.5, 0.25], seconds=np.zeros(3))


def test_writable_stores_and_the_background_writer_are_store_writers(path):
    store = create_or_resume(path, meta(), ids(), labels())
    writer = BackgroundWriter(store)
    assert isinstance(store, StoreWriter) and isinstance(writer, StoreWriter)
    write_rows(writer, range(N))
    writer.close()
    with open_store(path) as store:
        assert store.complete
        np.testing.assert_array_equal(store.read_maps(range(N)), maps_of(range(N)))


@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_corrupt_files_are_store_errors_naming_the_file(tmp_path, suffix):
    path = write_all(tmp_path / f"s.{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match=rf"s\.{suffix}.*corrupt"):
        open_store(path).read_maps(range(N))
    path.write_bytes(b"\0" * 100)
    with pytest.raises(StoreError, match=rf"s\.{suffix}"):
        open_store(path)


def test_files_that_are_not_stores(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not an xaibench saliency store"):
        open_store(tmp_path / "other.h5")
    np.savez_compressed(tmp_path / "legacy.npz", **{"a.JPEG": np.zeros((2, 2))})
    with pytest.raises(StoreError, match="__xaibench__"):
        open_store(tmp_path / "legacy.npz")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "absent.h5")
    with pytest.raises(StoreError, match=r"\.h5 or \.hdf5 or \.npz"):
        open_store(tmp_path / "maps.pt")


def test_newer_format_version_is_refused(tmp_path):
    path = write_all(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(StoreError, match="format_version 2"):
        open_store(path)


def test_corrupt_map_chunks_are_store_errors(tmp_path):
    path = tmp_path / "s.h5"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        rows = np.arange(N)
        store.write(Rows(rows, np.random.default_rng(0).random((N, 64, 64)), rows, rows / N))
    data = bytearray(path.read_bytes())
    data[-len(data) // 4 :] = bytes(len(data) // 4)
    path.write_bytes(bytes(data))
    with open_store(path) as store, pytest.raises(StoreError, match=r"s\.h5.*corrupt"):
        store.read_maps(range(N))


def test_find_stores_lists_finished_and_hdf5_stores_but_not_npz_working_files(tmp_path):
    for name in ("b.h5", "a.npz", "c.hdf5", "d.npz.partial.h5", "notes.txt", "e.NPZ"):
        (tmp_path / name).touch()
    assert [p.name for p in find_stores(tmp_path)] == ["a.npz", "b.h5", "c.hdf5", "e.NPZ"]


def test_a_store_written_under_the_rise_protocol_name_is_resumed_and_matched(path):
    """Stores record the preprocessing's name; older ones recorded the protocol's, e.g. "rise"."""
    preprocess = PROTOCOLS["rise"].preprocess().to_dict()
    with create_or_resume(path, meta(preprocess={**preprocess, "name": "rise"}), ids(), labels()):
        pass  # a store as a run with --protocol rise wrote it before
    with create_or_resume(path, meta(preprocess=preprocess), ids(), labels()) as store:
        write_rows(store, range(N))
    for protocol in PROTOCOLS.values():
        with open_store(path) as store:
            store.check_run({"preprocess": protocol.preprocess().to_dict()})
            with pytest.raises(StoreError, match="preprocess"):
                store.check_run({"preprocess": protocol.preprocess(input_size=(8, 8)).to_dict()})
