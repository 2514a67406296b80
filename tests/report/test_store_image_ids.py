"""A store whose image ids leave the data folder: the report refuses it and reads no file outside."""

import re
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image
from tiny_run import METHODS

from xaibench.core.errors import DataError


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_an_id_outside_the_data_folder_is_refused_naming_the_id_and_the_store(
    tiny_run, tmp_path, invoke, kind
):
    data = shutil.copytree(tiny_run.data, tmp_path / "data")
    secret = tmp_path / "outside.png"  # an image the old report would have shown
    Image.fromarray(np.full((40, 48, 3), 255, np.uint8)).save(secret)
    image_id = str(secret) if kind == "absolute" else "../outside.png"
    run = tiny_run.copy_to(tmp_path / "run")
    for method in METHODS:
        with h5py.File(run / f"{method}.h5", "r+") as file:
            file["ids"][0] = image_id
    out = tmp_path / "report"
    result = invoke(
        "report", run, "--out", out, "--data", data, "--images", 2, "--resamples", 100,
        catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and isinstance(result.exception, DataError), result.output
    stores = "|".join(re.escape(str(run / f"{method}.h5")) for method in METHODS)
    named = rf"^store ({stores}) has image id {re.escape(repr(image_id))}, which "
    assert re.search(named, str(result.exception)), str(result.exception)
    assert not (out / "saliency-grid.png").exists() and not (out / "report.html").exists()
