"""Offline demo: real photographs, EfficientNet-Lite0 with its ImageNet weights, three methods,
every metric under the default protocol, and the HTML report. Runs the commands a user would type,
and prints them.

    python scripts/demo.py --out demo-runs
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from xaibench.data.samples import build_sample_dataset

MODEL = "efficientnet_lite0"
METHODS = ("tgrad", "gradcam", "random")


def run(*args: str) -> None:
    print(f"\n$ xaibench {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "xaibench", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-runs"))
    args = parser.parse_args()

    data = build_sample_dataset(args.out / "data")
    print(f"sample dataset: {data} ({sum(1 for p in data.rglob('*') if p.is_file())} photographs)")
    run(
        "generate",
        "--model",
        MODEL,
        "--saliency",
        ",".join(METHODS),
        "--data",
        str(data),
        "--out",
        str(args.out),
    )
    stores = [arg for m in METHODS for arg in ("--store", str(args.out / MODEL / f"{m}.h5"))]
    run("evaluate", "--model", MODEL, *stores, "--data", str(data))
    run("report", str(args.out / MODEL), "--out", str(args.out / "report"), "--data", str(data))


if __name__ == "__main__":
    main()
