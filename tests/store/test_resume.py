import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from store_helpers import N, assert_same, contents, ids, labels, maps_of, meta, write_rows

from xaibench.store import Rows, create_or_resume, open_store
from xaibench.store.npz import partial_path

HERE = Path(__file__).parent


@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tmp_path, suffix):
    whole, resumed = tmp_path / f"whole.{suffix}", tmp_path / f"resumed.{suffix}"
    with create_or_resume(whole, meta(), ids(), labels()) as store:
        write_rows(store, range(N))
    with create_or_resume(resumed, meta(), ids(), labels()) as store:
        write_rows(store, [3, 0, 8])
    with create_or_resume(resumed, meta(created="a later run"), ids(), labels()) as store:
        pending = store.pending_indices()
        assert pending.dtype == np.int64
        assert pending.tolist() == [i for i in range(N) if i not in (0, 3, 8)]
        write_rows(store, pending)
    assert_same(contents(resumed), contents(whole))
    with create_or_resume(resumed, meta(), ids(), labels()) as store:
        assert store.pending_indices().size == 0


def test_a_stale_working_file_of_a_finished_npz_is_removed(tmp_path):
    path = tmp_path / "s.npz"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, range(N))
    partial_path(path).write_bytes(b"left over")
    with create_or_resume(path, meta(), ids(), labels()) as store:
        assert store.complete
    assert not partial_path(path).exists()


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from store_helpers import ids, labels, maps_of, meta
    from xaibench.store import Rows, create_or_resume

    n = int(sys.argv[2])
    store = create_or_resume(sys.argv[1], meta(), ids(n), labels(n))
    for start in range(0, n, 2):
        rows = np.arange(start, start + 2)
        big = np.repeat(np.repeat(maps_of(rows), 8, axis=1), 8, axis=2)
        store.write(Rows(rows, big, rows * 7, (rows / 100).astype(np.float32)))
        print(start, flush=True)
    """
)


@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_sigkill_mid_run_leaves_a_store_whose_done_rows_are_complete(tmp_path, suffix):
    n = 600
    path = tmp_path / f"s.{suffix}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    for _ in range(5):
        child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert not path.exists() or suffix == "h5"

    def expected(rows):
        return np.repeat(np.repeat(maps_of(rows), 8, axis=1), 8, axis=2)

    with create_or_resume(path, meta(), ids(n), labels(n)) as store:
        done = np.flatnonzero(store.done)
        assert 10 <= len(done) < n
        assert done.tolist() == list(range(len(done)))  # rows are written in order
        np.testing.assert_array_equal(store.read_maps(done), expected(done))
        assert store.targets[done].tolist() == (done * 7).tolist()
        pending = store.pending_indices()
        assert pending.tolist() == list(range(len(done), n))
        store.write(Rows(pending, expected(pending), pending * 7, pending / 100))
    with open_store(path) as store:
        assert store.complete
        np.testing.assert_array_equal(store.read_maps(range(n)), expected(np.arange(n)))
        assert store.targets.tolist() == (np.arange(n) * 7).tolist()
