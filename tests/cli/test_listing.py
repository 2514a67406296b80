"""`xaibench list`: the registries' names, and the models' support table with its reasons."""

import pytest

from xaibench.models import MODELS


@pytest.mark.parametrize(
    ("what", "expected"),
    [("models", "vgg16"), ("methods", "tgrad"), ("metrics", "avg_drop")],
)
def test_list(what, expected, invoke):
    result = invoke("list", what, "vgg*" if what == "models" else "*")
    assert result.exit_code == 0 and expected in result.output


def test_list_models_table_and_reasons(invoke):
    table = invoke("list", "models", "vgg1*")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    header = ["model", "input", "T-Grad/FullGrad", "guided", "attention", "CAM", "layer"]
    assert lines[0].split() == header
    assert lines[1].split() == ["vgg11", "224", "exact", "yes", "no", "features"]
    assert len(lines) == 1 + len(MODELS.names("vgg1*")) + 1 and "--why" in lines[-1]
    why = invoke("list", "models", "vit_b_16", "--why")
    assert why.exit_code == 0
    assert "vit_b_16 (input 224x224)" in why.output and "attention" in why.output
    assert why.output.count("no ") >= 3
    vit = invoke("list", "models", "vit_b_16").output.splitlines()[1]
    assert vit.split() == [
        "vit_b_16", "224", "no", "no", "yes", "encoder.layers.encoder_layer_11.ln_1"
    ]  # fmt: skip
    names = invoke("list", "models", "vgg1*", "--no-support", catch_exceptions=True)
    assert [line.split()[0] for line in names.output.splitlines()] == MODELS.names("vgg1*")


def test_a_pattern_matching_no_model_says_so_and_where_to_look(invoke, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    said = {
        pattern: invoke("list", "models", pattern).output.strip()
        for pattern in ("nosuchnet*", "hf/*", "tiny_models:tiny_cnn")
    }
    assert said["nosuchnet*"].startswith("no model matches 'nosuchnet*'; `xaibench list models`")
    assert said["hf/*"].startswith("no model matches 'hf/*' among the Hugging Face image")
    assert str(tmp_path / "hf") in said["hf/*"] and "hf download" in said["hf/*"]
    assert "a model of your own (module:callable) is not listed" in said["tiny_models:tiny_cnn"]
    assert all("\n" not in text for text in said.values())  # one line, no empty table
