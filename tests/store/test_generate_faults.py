"""Whole `xaibench generate` processes against the faults of a store's disk and of its writers: a
real full file system (a small tmpfs, where this machine can mount one), and a second run on the
same store while the first writes it, with HDF5's own file locking off."""

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from launch import ROOT, command, environment
from store_helpers import assert_same, contents
from tiny_models import GATE
from tiny_run import make_image_folder

from xaibench.store import open_store
from xaibench.store.lock import lock_path

METHODS = "gradient,random"


def generate(data: Path, out: Path, model: str = "tiny_models:tiny_cnn") -> list[str]:
    return command(
        "generate", "--model", model, "--saliency", METHODS, "--data", data, "--out", out,
        "--batch-size", 2, "--quiet",
    )  # fmt: skip


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env={**environment(), **env}, capture_output=True, text=True, timeout=300
    )


def stores(out: Path, folder: str = "tiny_models_tiny_cnn") -> dict[str, Path]:
    return {m: out / folder / f"{m}.h5" for m in METHODS.split(",")}


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/full, unmounted afterwards; the test is skipped where it cannot
    be mounted (not root, no CAP_SYS_ADMIN)."""
    mounted = tmp_path / "full"
    mounted.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mounted)], capture_output=True
    )
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip() or 'no mount'}")
    yield mounted
    subprocess.run(["umount", str(mounted)], check=True)


def test_a_full_disk_stops_generate_with_one_error_and_a_rerun_completes(tmp_path, small_tmpfs):
    data = make_image_folder(tmp_path / "val")
    whole = tmp_path / "whole"
    assert run(generate(data, whole)).returncode == 0
    out = small_tmpfs / "runs"
    failed = run(generate(data, out))
    assert failed.returncode == 2, failed.stderr[-3000:]  # an error, not a crash
    first = stores(out)["gradient"]
    assert f"cannot write store {first}" in failed.stderr
    assert "No space left on device" in failed.stderr and "the disk may be full" in failed.stderr
    assert "Exception ignored" not in failed.stderr
    with open_store(first) as partial, open_store(stores(whole)["gradient"]) as reference:
        done = np.flatnonzero(partial.done)
        assert 0 < len(done) < len(partial)  # some rows were written before the disk filled
        np.testing.assert_array_equal(partial.read_maps(done), reference.read_maps(done))
    assert not list(out.rglob("*.lock"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = run(generate(data, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for method, path in stores(out).items():
        assert_same(contents(path)[1:], contents(stores(whole)[method])[1:])  # all but `created`


def test_a_second_generate_on_a_store_being_written_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "val")
    out = tmp_path / "runs"
    unlocked = {"HDF5_USE_FILE_LOCKING": "FALSE"}
    gated = generate(data, out, model="tiny_models:gated_tiny_cnn")
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(240)  # a guard against a hang, not a measured bound
        host, port = gate.getsockname()[:2]
        first = subprocess.Popen(
            gated, cwd=ROOT, env={**environment(), GATE: f"{host}:{port}", **unlocked},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        connection = gate.accept()[0]
        with connection:  # the first run waits at its second image until this closes
            connection.settimeout(240)
            pid = int(connection.makefile().readline())
            second = run(gated, **unlocked)
        assert first.wait(timeout=240) == 0, first.stderr.read()[-3000:]
        first.stderr.close()
    assert second.returncode == 2, second.stderr[-3000:]
    path = stores(out, "tiny_models_gated_tiny_cnn")["gradient"]
    assert f"store {path} is being written by process {pid} on host" in second.stderr
    assert f"delete {lock_path(path)}" in second.stderr
    reference = tmp_path / "whole"
    assert run(generate(data, reference)).returncode == 0
    for method, written in stores(out, "tiny_models_gated_tiny_cnn").items():
        assert not lock_path(written).exists()
        assert_same(contents(written)[1:], contents(stores(reference)[method])[1:])
    assert not os.path.exists(out / "tiny_models_gated_tiny_cnn" / "random.h5.lock")
