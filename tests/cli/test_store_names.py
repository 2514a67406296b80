"""`generate --name`: variants of one method in stores of their own, side by side in the tables,
compare and the report."""

import h5py
import numpy as np
import pandas as pd
import pytest

from xaibench.core.errors import ConfigError
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"
FOLDER = "tiny_models_tiny_cnn"


def generate(invoke, data, out, *extra):
    result = invoke(
        "generate", "--model", MODEL, "--data", data, "--out", out, "--batch-size", 3,
        "--quiet", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_variants_of_one_method_sit_side_by_side(image_folder, tmp_path, invoke):
    runs = tmp_path / "runs"
    generate(invoke, image_folder, runs, "--saliency", "gradcam")
    generate(invoke, image_folder, runs, "--saliency", "gradcam", "--layer", "0", "--name",
             "gradcam-layer0")  # fmt: skip
    stores = runs / FOLDER
    with open_store(stores / "gradcam.h5") as plain, open_store(stores / "gradcam-layer0.h5") as v:
        assert (plain.meta.name, plain.meta.label) == (None, "gradcam")
        assert (v.meta.name, v.meta.label, v.meta.method) == (
            "gradcam-layer0",
            "gradcam-layer0",
            "gradcam",
        )
        assert v.meta.method_params["layer"] == "0"
        assert not np.array_equal(plain.read_maps([0]).shape, v.read_maps([0]).shape)
    with h5py.File(stores / "gradcam.h5") as plain:  # a store without a name records none
        assert "name" not in plain.attrs
    metrics = tmp_path / "metrics"
    for stem in ("gradcam", "gradcam-layer0"):
        result = invoke(
            "evaluate", "--model", MODEL, "--store", stores / f"{stem}.h5", "--data",
            image_folder, "--out", metrics, "--metrics", "deletion", "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    variant = pd.read_csv(metrics / "gradcam-layer0-polycam.per_image.csv")
    assert set(variant["method"]) == {"gradcam-layer0"}
    compared = invoke("compare", metrics).output
    rows = [line for line in compared.splitlines() if line.startswith("|")]
    assert any("gradcam-layer0" in row for row in rows)
    assert any("| gradcam |" in row.replace("**", "") for row in rows)
    assert "gradcam-layer0" in compared.split("Paired", 1)[-1]  # the pair is tested


def test_a_resumed_variant_keeps_its_name_and_settings(image_folder, tmp_path, invoke):
    runs = tmp_path / "runs"
    args = ("--saliency", "gradcam", "--layer", "0", "--name", "v1", "--limit", 3)
    generate(invoke, image_folder, runs, *args)
    again = invoke(
        "generate", "--model", MODEL, "--data", image_folder, "--out", runs, "--batch-size", 3,
        "--quiet", "--saliency", "gradcam", "--layer", "3", "--name", "v1",
        catch_exceptions=True,
    )  # fmt: skip
    assert again.exit_code != 0  # other settings under the same name: another run's store
    assert "method_params" in str(again.exception) or "layer" in str(again.exception)


@pytest.mark.parametrize(
    ("name", "methods", "message"),
    [
        ("v1", "gradcam,gradient", "give one method, not 2"),
        ("../up", "gradcam", "use letters, digits"),
        (".hidden", "gradcam", "use letters, digits"),
        ("tgrad", "gradcam", "another method's name"),
    ],
)
def test_bad_names_are_refused_before_any_work(image_folder, tmp_path, invoke, name, methods,
                                               message):  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        invoke(
            "generate", "--model", "no_such_model", "--data", image_folder, "--out",
            tmp_path / "runs", "--saliency", methods, "--name", name,
        )  # fmt: skip
    assert not (tmp_path / "runs").exists()
