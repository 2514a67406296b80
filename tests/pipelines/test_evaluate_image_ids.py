"""evaluate refuses a store whose image ids are not relative paths inside the data folder."""

import re
import shutil

import h5py
import pytest
from tiny_run import MODEL

from xaibench.core.errors import StoreError


@pytest.mark.parametrize("image_id", ["/etc/passwd", "../outside.png"])
@pytest.mark.parametrize("subset", [False, True])
def test_an_id_outside_the_data_folder_names_the_id_and_the_store(
    tiny_run, tmp_path, invoke, image_id, subset
):
    store = shutil.copy(tiny_run.store("gradcam"), tmp_path / "gradcam.h5")
    with h5py.File(store, "r+") as file:
        kept = file["ids"].asstr()[1]
        file["ids"][0] = image_id
    subset_file = tmp_path / "subset.txt"
    subset_file.write_text(f"{kept}\n")  # a subset leaves the other ids out of the evaluation
    result = invoke(
        "evaluate", "--model", MODEL, "--store", store, "--data", tiny_run.data,
        "--protocol", "polycam", "--metrics", "avg_drop", "--out", tmp_path / "metrics",
        *(["--subset", subset_file] if subset else []), "--quiet", catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and isinstance(result.exception, StoreError), result.output
    expected = f"{store}: field 'ids': image id {image_id!r} "
    assert str(result.exception).startswith(expected), str(result.exception)
    assert re.search(r"relative to `data_dir` \(.*\), inside it$", str(result.exception))
