"""--compile: forward-only work and hook-free methods run compiled, hooked calls run eagerly."""

import shutil

import pytest
import torch
from tiny_models import tiny_cnn

from xaibench.core.precision import forward_settings
from xaibench.methods import METHODS
from xaibench.metrics import score_function

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
        reason="torch.compile (inductor) needs a C++ compiler on a CPU, and none is on PATH",
    ),
]
CPU = torch.device("cpu")


def test_compiled_forward_scores_like_eager_and_hooked_methods_run_eagerly():
    torch._dynamo.reset()
    model = tiny_cnn()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4])
    score_fn = score_function(model)
    eager_scores = score_fn(x, targets)
    eager_cam = METHODS.get("gradcam")(model, layer="3")(x)
    eager_grad = METHODS.get("gradinput")(model)(x)
    with forward_settings(model, CPU, compile=True):
        compiled_scores = score_fn(x, targets)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        cam = METHODS.get("gradcam")(model, layer="3")(x)  # hooks on layer 3: eager
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
        grad = METHODS.get("gradinput")(model)(x)  # no hooks: compiled, backward included
    assert frames >= 1
    torch.testing.assert_close(compiled_scores, eager_scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cam.maps, eager_cam.maps)
    torch.testing.assert_close(grad.maps, eager_grad.maps, rtol=1e-4, atol=1e-6)
    assert "forward" not in model.__dict__


def test_a_model_compiles_once_and_tail_batches_reuse_the_padded_graph():
    torch._dynamo.reset()
    model = tiny_cnn().eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
    with torch.no_grad(), forward_settings(model, CPU, compile=True):
        full = model(x)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        tail = model(x[:5])  # padded to 8: the same graph
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    with torch.no_grad(), forward_settings(model, CPU, compile=True):  # a later stage
        again = model(x[:7])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert tail.shape == (5, 1000) and again.shape == (7, 1000)
    torch.testing.assert_close(full, eager, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tail, full[:5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, full[:7], rtol=1e-5, atol=1e-6)


def test_a_copy_of_a_compiled_model_compiles_its_own_forward():
    import copy

    torch._dynamo.reset()
    model = tiny_cnn().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), forward_settings(model, CPU, compile=True):
        model(x)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(2)
        eager = twin(x)
        with forward_settings(twin, CPU, compile=True):
            compiled = twin(x)  # the twin's weights, not the original's
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
