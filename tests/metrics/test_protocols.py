import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage

from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.data.preprocess import Preprocess
from xaibench.metrics import PROTOCOLS, SUBSTRATES, Protocol, get_protocol, protocols
from xaibench.metrics.protocols import rise_kernel


def test_named_protocols_follow_the_docs():
    polycam, rise = PROTOCOLS["polycam"], PROTOCOLS["rise"]
    assert (polycam.step, polycam.insertion_substrate, polycam.deletion_substrate) == (
        224,
        "blur",
        "blur",
    )
    assert (polycam.include_start, polycam.auc, polycam.score) == (False, "mean", "probability")
    assert (rise.step, rise.insertion_substrate, rise.deletion_substrate) == (
        224,
        "rise_blur",
        "zeros",
    )
    assert (rise.include_start, rise.auc, rise.score) == (True, "trapezoid", "probability")


def test_pixel_counts_cover_every_step_and_clamp_the_last():
    assert get_protocol("polycam").pixel_counts(224 * 224).tolist() == [
        224 * k for k in range(1, 225)
    ]
    assert get_protocol("rise", step=4).pixel_counts(10).tolist() == [0, 4, 8, 10]
    assert get_protocol("polycam", step=4).pixel_counts(10).tolist() == [4, 8, 10]


def test_auc_rules_on_a_hand_curve():
    curve = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]])
    assert get_protocol("rise").area(curve).item() == pytest.approx(0.5)
    assert get_protocol("polycam").area(curve[:, 1:]).item() == pytest.approx(0.375)


def test_auc_rules_differ_by_half_the_end_difference_over_n():
    curves = torch.rand(6, 11, dtype=torch.float64)
    n = curves.shape[1] - 1
    difference = get_protocol("polycam").area(curves[:, 1:]) - get_protocol("rise").area(curves)
    torch.testing.assert_close(difference, (curves[:, -1] - curves[:, 0]) / (2 * n))


@pytest.mark.parametrize("name", ["polycam", "rise"])
@pytest.mark.parametrize("include_start", [False, True])
def test_both_auc_rules_give_a_constant_curve_its_constant(name, include_start):
    protocol = get_protocol(name, include_start=include_start)
    curve = torch.full((2, 9), 0.3, dtype=torch.float64)
    torch.testing.assert_close(protocol.area(curve), torch.full((2,), 0.3, dtype=torch.float64))


def test_trapezoid_of_one_point_is_refused():
    with pytest.raises(ConfigError, match="at least 2 points"):
        get_protocol("rise").area(torch.ones(1, 1))


def test_get_protocol_overrides_rename_and_record_every_setting():
    protocol = get_protocol("polycam", step=16, deletion_substrate="zeros")
    assert protocol.name == "polycam(deletion_substrate=zeros,step=16)"
    assert protocol.to_dict() == {
        "name": "polycam(deletion_substrate=zeros,step=16)",
        "step": 16,
        "insertion_substrate": "blur",
        "deletion_substrate": "zeros",
        "include_start": False,
        "auc": "mean",
        "score": "probability",
        "road_percentages": (10, 20, 30, 40, 50, 60, 70, 80, 90),
        "road_noise": 0.01,
        "road_seed": 0,
        "pointing_tolerance": 15.0,
    }
    assert get_protocol("rise", step=224) is PROTOCOLS["rise"]


def test_a_protocol_preprocesses_with_the_model_normalisation_and_both_share_one_preprocessing():
    pre = get_protocol("rise").preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (64, 64))
    assert pre == Preprocess("polycam", (64, 64), None, (0.5,) * 3, (0.25,) * 3)
    assert get_protocol("polycam", step=16).preprocess() == PROTOCOLS["rise"].preprocess()
    assert PROTOCOLS["rise"].preprocess().to_dict() == {
        "name": "polycam",
        "resize": [224, 224],
        "crop": None,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "input_size": [224, 224],
    }
    assert "preprocessing" not in PROTOCOLS["rise"].to_dict()
    with pytest.raises(ConfigError, match="preprocessing"):
        get_protocol("rise", preprocessing=PROTOCOLS["polycam"].preprocessing)
    with pytest.raises(UnknownNameError, match="torchcam"):
        get_protocol("torchcam")


def test_bad_names_and_settings_raise_typed_errors():
    with pytest.raises(UnknownNameError, match="polycam"):
        get_protocol("polycan")
    with pytest.raises(ConfigError, match="stepsize"):
        get_protocol("rise", stepsize=3)
    with pytest.raises(ConfigError, match="deletion_substrate"):
        Protocol("x", deletion_substrate="noise")
    with pytest.raises(ConfigError, match="step"):
        Protocol("x", step=0)
    with pytest.raises(ConfigError, match="auc"):
        Protocol("x", auc="simpson")


def test_rise_kernel_is_a_normalised_smoothed_impulse():
    kernel = rise_kernel(torch.float64)
    assert kernel.shape == (11, 11)
    assert kernel.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(kernel, kernel.flip(0))
    torch.testing.assert_close(kernel, kernel.T)
    assert kernel[5, 5] == kernel.max() and kernel[0, 0] == kernel.min()
    assert 0.85 * kernel.max() < kernel.min()  # sigma 5 on 11 x 11: almost a box filter


def test_rise_blur_is_a_zero_padded_convolution_of_each_channel():
    images = torch.randn(2, 3, 13, 17, dtype=torch.float64)
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    kernel = ndimage.gaussian_filter(impulse, 5)
    kernel /= kernel.sum()
    expected = np.stack(
        [
            [ndimage.correlate(channel, kernel, mode="constant", cval=0.0) for channel in image]
            for image in images.numpy()
        ]
    )
    torch.testing.assert_close(SUBSTRATES["rise_blur"](images), torch.from_numpy(expected))


def test_substrates_keep_shape_device_and_dtype():
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(SUBSTRATES["blur"](images), TF.gaussian_blur(images, 11, 5.0))
    assert SUBSTRATES["zeros"](images).abs().sum() == 0
    for substrate in SUBSTRATES.values():
        out = substrate(images)
        assert (out.shape, out.dtype, out.device) == (images.shape, images.dtype, images.device)


def test_rise_blur_places_its_kernel_once_per_dtype_and_device(monkeypatch):
    made = []
    monkeypatch.setattr(
        protocols, "rise_kernel", lambda *args: made.append(args) or rise_kernel(*args)
    )
    protocols._placed_rise_kernel.cache_clear()
    images = torch.rand(2, 3, 16, 16)
    first = protocols.rise_blur(images)
    torch.testing.assert_close(protocols.rise_blur(images), first, rtol=0, atol=0)
    protocols.rise_blur(images.double())
    assert made == [(torch.float32, images.device), (torch.float64, images.device)]
    protocols._placed_rise_kernel.cache_clear()
