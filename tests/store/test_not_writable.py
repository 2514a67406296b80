"""A valid store that cannot be written (read-only file system, permissions) is reported as not
writable, naming it, and never as corrupt or to be deleted; a finished one is read as it is."""

import errno
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest
from store_helpers import ids, labels, meta, write_rows

from xaibench.core.errors import StoreError
from xaibench.store import create_or_resume, open_store

HERE = Path(__file__).parent


def refusing_writes(monkeypatch, code: int) -> None:
    """h5py.File raises the OSError h5py raises for `code` when a file is opened for writing."""
    real = h5py.File

    def file(path, mode="r", *args, **kwargs):
        if mode != "r":
            message = f"Unable to synchronously open file (unable to open file: name = '{path}')"
            raise OSError(code, message)
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", file)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_resuming_a_store_that_cannot_be_written_says_so(tmp_path, monkeypatch, code):
    path = tmp_path / "s.h5"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [0, 1])
    refusing_writes(monkeypatch, code)
    with pytest.raises(StoreError, match=rf"store {path} is not writable") as raised:
        create_or_resume(path, meta(), ids(), labels())
    assert "corrupt" not in str(raised.value) and "delete" not in str(raised.value)
    with open_store(path) as store:  # still readable, and intact
        assert store.done[:2].all() and not store.done[2:].any()


def test_a_store_that_cannot_be_read_for_its_permissions_says_so(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    with create_or_resume(path, meta(), ids(), labels()) as store:
        write_rows(store, [0])

    def file(name, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, f"Unable to open file (name = '{name}')")

    monkeypatch.setattr(h5py, "File", file)
    with pytest.raises(StoreError, match="check its permissions") as raised:
        open_store(path)
    assert "corrupt" not in str(raised.value) and "delete" not in str(raised.value)


def test_a_store_on_a_read_only_mount_is_not_called_corrupt(tmp_path):
    """On a real read-only bind mount, where this machine allows one (root, mount namespaces)."""
    source, mounted = tmp_path / "source", tmp_path / "mounted"
    source.mkdir(), mounted.mkdir()
    with create_or_resume(source / "s.h5", meta(), ids(), labels()) as store:
        write_rows(store, [0])
    with create_or_resume(source / "done.npz", meta(), ids(), labels()) as store:
        write_rows(store, range(len(ids())))
    mount = ["mount", "--bind", "-o", "ro", str(source), str(mounted)]
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", *mount]).returncode:
        pytest.skip("no read-only bind mount on this machine")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from store_helpers import ids, labels, meta
        from xaibench.core.errors import StoreError
        from xaibench.store import create_or_resume
        try:
            create_or_resume({str(mounted / "s.h5")!r}, meta(), ids(), labels())
        except StoreError as error:
            print(error)
        with create_or_resume({str(mounted / "done.npz")!r}, meta(), ids(), labels()) as store:
            print("finished store resumed, pending", len(store.pending_indices()))
    """)
    shell = f'{shlex.join(mount)} && exec {shlex.quote(sys.executable)} -c "$0"'
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell, script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"store {mounted / 's.h5'} is not writable" in result.stdout
    assert "Read-only file system" in result.stdout and "delete" not in result.stdout
    assert "finished store resumed, pending 0" in result.stdout
