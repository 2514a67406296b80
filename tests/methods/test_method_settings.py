"""--param and --layer read into each method's settings (methods/settings.py), with their refusals."""

import re

import pytest


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("random.masks=3", "random has no setting 'masks'"),
        ("tgrad.layer=x", "tgrad is not among `methods`"),
        ("colour=red", "none of random takes 'colour'"),
        ("resolution", "write [METHOD.]KEY=VALUE"),
    ],
)
def test_bad_method_settings_are_named(setting, message):
    from xaibench.core.errors import ConfigError
    from xaibench.methods.settings import method_params

    with pytest.raises(ConfigError, match=re.escape(f"params: {setting!r}: {message}")):
        method_params(["random"], (setting,))


def test_layer_is_a_module_name_for_every_method_that_takes_one():
    from xaibench.core.errors import ConfigError
    from xaibench.methods.settings import method_params

    chosen = method_params(["gradcam", "random", "layercam"], ("gradcam.layer=1",), "3")
    assert chosen == {"gradcam": {"layer": "3"}, "layercam": {"layer": "3"}}
    chosen = method_params(["gradcam", "scorecam"], ("gradcam.layer=2", "scorecam.channel_batch=4"))
    assert chosen == {"gradcam": {"layer": "2"}, "scorecam": {"channel_batch": 4}}
    with pytest.raises(ConfigError, match=re.escape("layer: 3: none of random takes a layer")):
        method_params(["random"], (), "3")
