"""A store has one writer at a time: its lock file is refused to a second writer, naming the first,
taken over from a dead process of this host, and removed when the writer closes."""

import json
import os
import socket
import subprocess
import sys

import pytest
from store_helpers import N, ids, labels, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.store import create_or_resume, open_store
from xaibench.store.lock import StoreLock, lock_path
from xaibench.store.shards import merge_shards, shard_path


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("suffix", ["h5", "npz"])
def test_a_second_writer_is_refused_naming_the_first(tmp_path, suffix):
    path = tmp_path / f"s.{suffix}"
    with create_or_resume(path, meta(), ids(), labels()) as first:
        write_rows(first, [0])
        with pytest.raises(StoreError) as refused:
            create_or_resume(path, meta(), ids(), labels())
        message = str(refused.value)
        assert f"process {os.getpid()} on host {socket.gethostname()}" in message
        assert "wait for that run to finish" in message and "delete" in message
        write_rows(first, [1])  # the first writer goes on
        with open_store(path) as reader:  # readers take no lock
            assert reader.done[:2].all()
    assert not list(tmp_path.glob("*.lock"))
    with create_or_resume(path, meta(), ids(), labels()) as again:
        assert again.pending_indices().tolist() == list(range(2, N))


def test_the_lock_file_names_its_holder_and_goes_with_an_error(tmp_path):
    path = tmp_path / "s.h5"
    with create_or_resume(path, meta(), ids(), labels()):
        holder = json.loads(lock_path(path).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"]
    with pytest.raises(StoreError, match="ids"):  # refused after the lock was taken
        create_or_resume(path, meta(), ids()[::-1], labels())
    assert not lock_path(path).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    path = tmp_path / "s.h5"
    pid = dead_pid()
    holder = {"pid": pid, "host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00"}
    lock_path(path).write_text(json.dumps(holder))
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [0])
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {pid}" in caplog.text
    assert not lock_path(path).exists()


@pytest.mark.parametrize(
    "holder",
    [{"pid": 1, "host": "another-host", "started": "2024-01-01T00:00:00+00:00"}, "alive", {}],
)
def test_a_lock_of_a_live_process_or_another_host_is_refused(tmp_path, holder):
    path = tmp_path / "s.h5"
    if holder == "alive":  # a live process of this host that holds no flock on it
        holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}
    lock_path(path).write_text(json.dumps(holder) if holder else "")
    with pytest.raises(StoreError, match=f"delete {lock_path(path)}") as refused:
        create_or_resume(path, meta(), ids(), labels())
    if holder:
        assert f"process {holder['pid']} on host {holder['host']}" in str(refused.value)
    assert not path.exists() and lock_path(path).exists()


def test_a_shard_store_has_its_own_lock_and_the_merge_takes_them(tmp_path):
    path = tmp_path / "s.h5"
    for rank, rows in enumerate([range(0, 6), range(6, N)]):
        shard = shard_path(path, rank, 2)
        shard.parent.mkdir(exist_ok=True)
        with create_or_resume(shard, meta(), ids(), labels()) as store:
            write_rows(store, rows)
            assert lock_path(shard).exists()
    with StoreLock(shard_path(path, 1, 2)), pytest.raises(StoreError, match="being written"):
        merge_shards(path, meta(), ids(), labels())
    merge_shards(path, meta(), ids(), labels())
    with open_store(path) as merged:
        assert merged.complete
    assert not list(tmp_path.rglob("*.lock"))
