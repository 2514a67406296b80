"""`xaibench list`: the registries' names, and the models' support table with its reasons."""

import sys
import textwrap

import pytest
import torch

from xaibench.cli import main
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
        for pattern in ("nosuchnet*", "hf/*")
    }
    assert said["nosuchnet*"].startswith("no model matches 'nosuchnet*'; `xaibench list models`")
    assert said["hf/*"].startswith("no model matches 'hf/*' among the Hugging Face image")
    assert str(tmp_path / "hf") in said["hf/*"] and "hf download" in said["hf/*"]
    assert all("\n" not in text for text in said.values())  # one line, no empty table


USER_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, activation=nn.ReLU):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), activation(), nn.MaxPool2d(2))
            self.last_conv = nn.Conv2d(8, 16, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.relu(self.last_conv(self.stem(x)))
            return self.fc(torch.flatten(self.pool(x), 1))


    def plain():
        return Net()


    def with_silu():
        return Net(nn.SiLU)


    def raising():
        raise RuntimeError("the weights server is down")


    def not_a_module():
        return "a string"
    """
)


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    """A module of the user's own, `user_nets`, importable as `user_nets:CALLABLE`."""
    (tmp_path / "user_nets.py").write_text(USER_MODELS)
    (tmp_path / "user_broken.py").write_text("RATE = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("user_nets", "user_broken"):
        sys.modules.pop(name, None)


def _table(result) -> list[list[str]]:
    assert result.exit_code == 0, result.output
    return [line.split() for line in result.output.splitlines()]


def test_a_model_of_your_own_gets_its_support_line(invoke, user_models):
    header, plain, note = _table(invoke("list", "models", "user_nets:plain"))
    assert header == ["model", "input", "T-Grad/FullGrad", "guided", "attention", "CAM", "layer"]
    assert plain == ["user_nets:plain", "224", "exact", "yes", "no", "relu"]  # last conv's map
    assert "--why" in note
    silu = _table(invoke("list", "models", "user_nets:with_silu"))[1]
    assert silu == ["user_nets:with_silu", "224", "approx", "partial", "no", "relu"]
    small = _table(invoke("list", "models", "user_nets:plain", "--input-size", 64))[1]
    assert small[:2] == ["user_nets:plain", "64"]
    wide = _table(invoke("list", "models", "user_nets:plain", "--input-size", "64,96"))[1]
    assert wide[:2] == ["user_nets:plain", "64x96"]


def test_a_model_of_your_own_gets_its_reasons(invoke, user_models):
    why = invoke("list", "models", "user_nets:with_silu", "--input-size", 64, "--why")
    assert why.exit_code == 0, why.output
    lines = why.output.splitlines()
    assert lines[0] == "user_nets:with_silu (input 64x64)"
    assert any(line.split()[:3] == ["approximate", "tgrad,", "fullgrad"] for line in lines)
    assert "the terms do not add up to the score exactly: SiLU" in why.output
    assert "only nn.ReLU is rectified, not SiLU" in why.output
    assert "Net has no attention module" in why.output


def test_a_model_of_your_own_is_inspected_with_the_weights_given(invoke, user_models):
    from user_nets import plain

    torch.save(plain().state_dict(), user_models / "plain.pt")
    torch.save({"other": torch.zeros(1)}, user_models / "other.pt")
    row = _table(invoke("list", "models", "user_nets:plain", "--weights", user_models / "plain.pt"))
    assert row[1] == ["user_nets:plain", "224", "exact", "yes", "no", "relu"]
    bad = invoke("list", "models", "user_nets:plain", "--weights", user_models / "other.pt",
                 catch_exceptions=True)  # fmt: skip
    assert bad.exit_code != 0 and "does not fit the model" in str(bad.exception)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("user_nets:no_such_callable", "cannot import model factory 'user_nets:no_such_callable'"),
        ("no_such_module_here:build", "cannot import model factory 'no_such_module_here:build'"),
        ("user_broken:build", "importing 'user_broken' of 'user_broken:build' raised"),
        ("user_nets:raising", "calling 'user_nets:raising' raised RuntimeError"),
        ("user_nets:not_a_module", "user_nets:not_a_module returned str, not a torch.nn.Module"),
    ],
)
def test_a_bad_model_of_your_own_is_one_error_naming_it(capsys, user_models, name, said):
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "models", name])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and not captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {said}")
    assert "--model" not in lines[0]  # `list` takes it as PATTERN
    assert any(fix in lines[0] for fix in ("Use module:callable", "fix ", "make "))


def test_input_size_is_for_a_model_of_your_own(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "models", "vgg1*", "--input-size", "64"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --input-size: 'vgg1*' names")
