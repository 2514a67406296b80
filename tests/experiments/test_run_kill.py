"""A `xaibench run` killed with SIGKILL during generate, then again during evaluate, completes when
run again, with the tables of a run never interrupted; one more run does no work."""

import json
import os
import signal
import socket
import subprocess

import pandas as pd
from launch import ROOT, command, environment
from tiny_models import GATE, GATE_NO_GRAD

GATED = "tiny_models:gated_tiny_cnn"
FOLDER = "tiny_models_gated_tiny_cnn"


def run(config, out, **env) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command("run", config, "--out", out, "--quiet"),
        cwd=ROOT, env={**environment(), **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def killed_run(config, out, **env) -> None:
    """`run` stopped by SIGKILL when the gated model reaches its second image."""
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(240)  # a guard against a hang, not a measured bound
        host, port = gate.getsockname()[:2]
        launched = subprocess.Popen(
            command("run", config, "--out", out, "--quiet"),
            cwd=ROOT, env={**environment(), GATE: f"{host}:{port}", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        connection = gate.accept()[0]
        with connection:
            connection.settimeout(240)
            os.kill(int(connection.makefile().readline()), signal.SIGKILL)
            assert launched.wait(timeout=120) == -signal.SIGKILL


def statuses(out) -> dict[str, str]:
    stages = json.loads((out / "run.json").read_text("utf-8"))["stages"]
    return {name: stage["status"] for name, stage in stages.items()}


def tables(out) -> dict[str, pd.DataFrame]:
    """Every CSV of the run but the measured generation time, the one thing runs do not share."""
    found = {}
    for path in [*sorted((out / FOLDER / "metrics").glob("*.csv")), out / "comparison.csv"]:
        frame = pd.read_csv(path, dtype=str)
        if "seconds_per_image" in frame:
            frame = frame.drop(columns="seconds_per_image")
        if "metric" in frame:
            frame = frame[frame["metric"] != "seconds_per_image"].reset_index(drop=True)
        found[path.name] = frame
    return found


def test_a_killed_run_completes_with_the_tables_of_an_uninterrupted_one(image_folder, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'[run]\nname = "tiny"\ndevice = "cpu"\nbatch_size = 1\n'
        f'[data]\ndataset = "folder"\nroot = "{image_folder}"\n'
        f'[[models]]\nname = "{GATED}"\nweights = "none"\n'
        '[generate]\nmethods = ["gradient", "gradinput"]\n'
        '[evaluate]\nmetrics = ["insertion", "deletion"]\nstep = 4096\n'
        "[report]\nimages = 2\nresamples = 99\n",
        "utf-8",
    )
    reference, out = tmp_path / "uninterrupted", tmp_path / "killed"
    run(config, reference)

    killed_run(config, out)  # at the second image generate explains
    assert statuses(out)["generate"] == "running"
    killed_run(config, out, **{GATE_NO_GRAD: "1"})  # at the second forward evaluate scores
    assert statuses(out)["generate"] == "done" and statuses(out)["evaluate"] == "running"

    completed = run(config, out)
    assert "[2/5] generate: done, skipped" in completed.stdout
    assert set(statuses(out).values()) == {"done"}
    ours, theirs = tables(out), tables(reference)
    assert sorted(ours) == sorted(theirs) and len(ours) == 5  # 2 per-image, 2 summaries, comparison
    for name, frame in theirs.items():
        pd.testing.assert_frame_equal(ours[name], frame, obj=name)

    again = run(config, out)
    assert "0 unit(s) run, 7 already done" in again.stdout
