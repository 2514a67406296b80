from collections.abc import Callable, Iterator

import pytest
import torch
from click.testing import CliRunner, Result
from tiny_run import BATCH_SIZE, METHODS, METRICS, MODEL, PROTOCOLS, STEP, Run, make_image_folder

from xaibench.cli import cli


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run on 2-core machines; more threads only add contention."""
    torch.set_num_threads(2)


@pytest.fixture()
def image_folder(tmp_path):
    """Six small photographs-to-be in WNID folders, in several colour modes (`make_image_folder`)."""
    return make_image_folder(tmp_path / "val")


@pytest.fixture(scope="session")
def invoke() -> Callable[..., Result]:
    """`xaibench ARGS` through click's CliRunner, each argument as str; an exception is raised
    unless `catch_exceptions=True`; other keywords (`env`, `input`) go to `CliRunner.invoke`."""

    def run(*args, catch_exceptions: bool = False, **kwargs) -> Result:
        arguments = [str(a) for a in args]
        return CliRunner().invoke(cli, arguments, catch_exceptions=catch_exceptions, **kwargs)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, invoke) -> Iterator[Run]:
    """One small real run, made once per test session with `xaibench generate` and `evaluate` on the
    images of `image_folder`: the tiny model, `METHODS` at batch size 4, each store evaluated under
    both `PROTOCOLS` (`METRICS`, steps of `STEP` pixels) into `metrics/` beside it.

    Read only: a test that writes next to it copies it first (`Run.copy_to`). Its files are checked
    unchanged at the end of the test session."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = make_image_folder(root / "val")
    runs = root / "runs"
    result = invoke(
        "generate", "--model", MODEL, "--saliency", ",".join(METHODS), "--data", data,
        "--out", runs, "--batch-size", BATCH_SIZE, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = Run(data, runs / MODEL.replace(":", "_"))
    stores = [a for method in METHODS for a in ("--store", run.store(method))]
    for protocol in PROTOCOLS:
        result = invoke(
            "evaluate", "--model", MODEL, *stores, "--data", data, "--protocol", protocol,
            "--step", STEP, "--metrics", ",".join(METRICS), "--batch-size", BATCH_SIZE, "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    files = run.files()
    yield run
    assert run.files() == files, "a test changed the shared tiny run; copy it first (Run.copy_to)"
