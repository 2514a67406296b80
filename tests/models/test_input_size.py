"""Default layers are traced at the model's own input size (299 x 299 for Inception v3)."""

import pytest
import torch
from torch import nn

from xaibench.methods import METHODS, layers, polycam
from xaibench.methods.support import skeleton
from xaibench.models import load_model
from xaibench.models.factory import model_input_size


def last_feature_map_by_hooks(model, size):
    """(name, output shape) of the last named module, adaptive pooling aside, to finish with a
    (1, C, h, w) output, h, w > 1, in one eval forward of a zero image of `size` (meta device)."""
    finished = []
    handles = [
        module.register_forward_hook(lambda m, i, out, name=name: finished.append((name, out)))
        for name, module in model.named_modules()
        if name and not isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    maps = [
        (name, tuple(out.shape))
        for name, out in finished
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) > 1
    ]
    return maps[-1]


def test_cam_default_layer_of_inception_is_traced_at_299(monkeypatch):
    model = skeleton("inception_v3")  # weights=None, on the meta device
    assert model_input_size(model) == (299, 299)
    traced = []
    trace = layers.trace_layers

    def recording_trace(model, input_size=None, watch=None):
        traced.append(input_size)
        return trace(model, input_size, watch)

    monkeypatch.setattr(layers, "trace_layers", recording_trace)
    monkeypatch.setattr(polycam, "trace_layers", recording_trace)
    gradcam = METHODS.get("gradcam")(model)
    assert traced == [(299, 299)]
    name, shape = last_feature_map_by_hooks(model, (299, 299))
    assert gradcam.layer == name == "Mixed_7c"
    assert shape[2:] == (8, 8)  # 5 x 5 at 224
    assert METHODS.get("polycam")(model).layers[-1] == name
    assert traced[-1] == (299, 299)


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
def test_load_model_marks_the_input_size():
    assert model_input_size(load_model("inception_v3", "none").model) == (299, 299)
    assert model_input_size(load_model("tiny_models:tiny_cnn").model) == (224, 224)
    assert model_input_size(nn.Conv2d(3, 3, 1)) == (224, 224)  # not built by xaibench
