"""`xaibench` in a subprocess, alone or under torchrun, with one thread and tests/ importable (so
`tiny_models:NAME` models load), for the tests that kill or launch whole runs."""

import os
import sys
from pathlib import Path

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def environment() -> dict[str, str]:
    """This environment with tests/ and the project on PYTHONPATH and one OpenMP thread: the
    numbers of every subprocess are then those of any other."""
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def command(*args, nproc: int | None = None) -> list[str]:
    """`python -m xaibench ARGS`, or the same under `torchrun --standalone --nproc-per-node N`."""
    launcher = [sys.executable, "-m", "xaibench"]
    if nproc is not None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(nproc), "-m", "xaibench"]
    return launcher + [str(a) for a in args]
