"""Options shared by several commands: a bad --param is refused before any model loads."""

import pytest

from xaibench.core.errors import ConfigError

MODEL = "tiny_models:tiny_cnn"


@pytest.mark.parametrize("command", ["generate", "sanity", "explain"])
def test_a_bad_param_fails_before_the_model_loads(
    command, image_folder, tmp_path, monkeypatch, invoke
):
    monkeypatch.setattr(
        "xaibench.models.load_model", lambda *a, **k: pytest.fail("loaded the model")
    )
    image = next(p for p in image_folder.rglob("*") if p.is_file())
    where = [image] if command == "explain" else ["--data", image_folder]
    args = [command, *where, "--model", MODEL, "--saliency", "gradcam", "--param", "gradcam.x=1"]
    result = invoke(*args, catch_exceptions=True)
    assert isinstance(result.exception, ConfigError)
    assert "gradcam has no setting 'x'" in str(result.exception)
