"""SmoothGrad, SmoothGrad-squared, VarGrad and Integrated Gradients."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.gradients import Gradient
from xaibench.methods.integrated import IntegratedGradients, path_points
from xaibench.methods.smoothgrad import SmoothGrad, VarGrad, noise_bank, shifted_fields

NOISE_NAMES = ["smoothgrad", "smoothgrad_sq", "vargrad"]
QUADRATURES = [
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
]


def pearson(a, b):
    """Per-image Pearson correlation of (B, H, W) maps."""
    return [
        float(np.corrcoef(x.detach().flatten().numpy(), y.detach().flatten().numpy())[0, 1])
        for x, y in zip(a, b, strict=True)
    ]


class Recorder(nn.Module):
    """Runs `model` and keeps every input it is given (to read back Captum's noisy copies)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach())
        return self.model(x)


def captum_noise_tunnel(name, base, model, images, targets, samples, stdev, **kwargs):
    """Captum's NoiseTunnel over `base` and the standard noise (B, S, C, H, W) it drew."""
    attr = pytest.importorskip("captum.attr")
    base_class = {
        "gradient": attr.Saliency,
        "gradinput": attr.InputXGradient,
        "guidedbackprop": attr.GuidedBackprop,
    }[base]
    recorder = Recorder(model)
    tunnel = attr.NoiseTunnel(base_class(recorder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets requires_grad on the input
        values = tunnel.attribute(
            images,
            nt_type=name,
            nt_samples=samples,
            stdevs=stdev,
            target=targets,
            **kwargs,
        )
    (noisy,) = recorder.inputs  # image-major: row b * samples + s
    noise = noisy.view(len(images), samples, *images.shape[1:]) - images[:, None]
    return values.detach(), noise / stdev


def replaying(method, noise):
    """Make `method` use the standard noise (B, S, C, H, W) instead of its own."""
    method.standard_noise = lambda bank, keys, image_index, sample: noise[image_index, sample]
    return method


def image_ranges(images):
    flat = images.flatten(1)
    return flat.amax(dim=1) - flat.amin(dim=1)


@pytest.mark.parametrize(
    ("name", "base"),
    [(n, "gradient") for n in NOISE_NAMES]
    + [("smoothgrad", "gradinput"), ("vargrad", "guidedbackprop")],
)
def test_noise_tunnel_matches_captum_on_the_same_noise(name, base, make_vgg, images):
    model = make_vgg(inplace=False)
    images = images / image_ranges(images).view(-1, 1, 1, 1)  # one range, so one Captum stdev
    targets = torch.tensor([0, 1, 2, 3])
    # Saliency's abs=False: SmoothGrad averages signed gradients (see test_captum_default_abs)
    kwargs = {"abs": False} if base == "gradient" else {}
    expected, noise = captum_noise_tunnel(name, base, model, images, targets, 6, 0.2, **kwargs)
    method = replaying(METHODS.get(name)(model, base=base, samples=6, noise=0.2), noise)
    result = method(images, targets)
    expected = method.base.reduce(expected)
    assert all(r >= 0.99 for r in pearson(result.maps, expected))
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_captum_default_abs_averages_magnitudes(make_vgg, images):
    """Captum's Saliency takes |gradient| per sample (abs=True by default), so its SmoothGrad is
    mean |g|; the SmoothGrad paper averages g and takes |.| afterwards, which xaibench does."""
    model = make_vgg(inplace=False)
    images = images / image_ranges(images).view(-1, 1, 1, 1)
    targets = torch.tensor([0, 1, 2, 3])
    magnitudes, noise = captum_noise_tunnel(
        "smoothgrad", "gradient", model, images, targets, 6, 0.2
    )
    ours = replaying(SmoothGrad(model, samples=6, noise=0.2), noise)(images, targets).maps
    assert not torch.allclose(ours, magnitudes.amax(dim=1), rtol=1e-2, atol=0)
    assert (ours <= magnitudes.amax(dim=1) + 1e-12).all()  # |mean g| <= mean |g|


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_chunked_equals_unchunked_and_seeded(name, tiny_resnet, images):
    def run(**params):
        return METHODS.get(name)(tiny_resnet, samples=5, **params)(images).maps

    whole = run(sample_batch=20)
    scale = whole.abs().max()
    for chunk in (1, 3, 7):
        torch.testing.assert_close(run(sample_batch=chunk), whole, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(run(sample_batch=20), whole, rtol=0, atol=0)
    assert not torch.allclose(run(sample_batch=20, seed=1), whole)


@pytest.mark.parametrize("name", [*NOISE_NAMES, "intgrad"])
def test_shape_finite_and_batch_invariance(name, small_vgg):
    images = torch.randn(3, 3, 45, 53, generator=torch.Generator().manual_seed(3))
    params = {"steps": 6} if name == "intgrad" else {"samples": 4}
    method = METHODS.get(name)(small_vgg, **params)
    together = method(images)
    assert together.maps.shape == (3, 45, 53) and together.maps.dtype == torch.float32
    assert torch.isfinite(together.maps).all()
    with torch.no_grad():
        torch.testing.assert_close(together.logits, small_vgg(images))
    for i in range(3):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5 * scale)


def test_zero_noise_gives_the_base_method(tiny_resnet, images):
    targets = torch.tensor([0, 1, 2, 3])
    plain = Gradient(tiny_resnet)(images, targets).maps
    torch.testing.assert_close(
        SmoothGrad(tiny_resnet, samples=3, noise=0.0)(images, targets).maps, plain
    )
    assert VarGrad(tiny_resnet, samples=3, noise=0.0)(images, targets).maps.abs().max() < 1e-12


def test_noise_is_standard_normal_and_keyed():
    bank = noise_bank(0, 4, (3, 64, 64), torch.device("cpu"))
    assert abs(bank.mean().item()) < 0.02 and abs(bank.std().item() - 1) < 0.02
    torch.testing.assert_close(noise_bank(0, 4, (3, 64, 64), torch.device("cpu")), bank)
    keys, samples = torch.tensor([5, 5, 5, 6]), torch.tensor([0, 1, 3, 0])
    fields = shifted_fields(bank, keys, samples)
    assert fields.shape == (4, 3, 64, 64)
    torch.testing.assert_close(shifted_fields(bank, keys[2:], samples[2:]), fields[2:])
    # each field is a circular shift of its bank entry; images with other keys get other shifts
    small = bank[:, :, :8, :8].contiguous()
    for field, sample in zip(shifted_fields(small, keys, samples), samples, strict=True):
        rolled = [small[sample].roll((dy, dx), dims=(1, 2)) for dy in range(8) for dx in range(8)]
        assert any(torch.equal(field, r) for r in rolled)
    assert not torch.equal(fields[0], fields[3])
    correlation = np.corrcoef(fields[0].flatten().numpy(), fields[3].flatten().numpy())[0, 1]
    assert abs(correlation) < 0.05


def test_the_noise_bank_is_drawn_once_per_shape_and_device(tiny_resnet, images, monkeypatch):
    """Later batches reuse the first call's bank, so their maps equal those of a fresh method."""
    from xaibench.methods import smoothgrad

    draws = []
    monkeypatch.setattr(
        smoothgrad,
        "noise_bank",
        lambda *args: draws.append(args[2]) or noise_bank(*args),
    )
    method = SmoothGrad(tiny_resnet, samples=3)
    first, second = method(images[:2]), method(images[2:])
    assert draws == [(3, 64, 64)]
    torch.testing.assert_close(second.maps, SmoothGrad(tiny_resnet, samples=3)(images[2:]).maps)
    torch.testing.assert_close(first.maps, SmoothGrad(tiny_resnet, samples=3)(images[:2]).maps)
    assert len(draws) == 3
    method(images[:, :, :32, :32])
    assert draws[-1] == (3, 32, 32) and len(draws) == 4


def test_noise_scales_with_the_image_range(tiny_resnet, images):
    """sigma = noise * (max - min) of each image: with z = 1 the copies are x + sigma."""
    images = images * torch.tensor([1.0, 2.0, 5.0, 10.0]).view(-1, 1, 1, 1)
    method = replaying(SmoothGrad(tiny_resnet, samples=2, noise=0.1), torch.ones(4, 2, 3, 64, 64))
    seen = []
    attribute = method.base.attribute
    method.base.attribute = lambda noisy, targets: seen.append(noisy) or attribute(noisy, targets)
    method(images)
    (noisy,) = seen
    shift = (noisy.view(4, 2, -1) - images.view(4, 1, -1)).mean(dim=2)
    torch.testing.assert_close(shift, 0.1 * image_ranges(images)[:, None].expand(4, 2))


def test_base_choice(tiny_resnet, images):
    method = METHODS.get("smoothgrad")(
        tiny_resnet, base="guidedgradcam", samples=2, base_params={"layer": "layer1"}
    )
    assert method.params["base_params"] == {"layer": "layer1"}
    assert method(images).maps.shape == (4, 64, 64)
    with pytest.raises(ConfigError, match="not a gradient-type method"):
        SmoothGrad(tiny_resnet, base="gradcam")
    with pytest.raises(ConfigError, match="samples"):
        SmoothGrad(tiny_resnet, samples=0)


@pytest.mark.parametrize("baseline", ["zeros", "black"])
@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_integrated_gradients_match_captum(quadrature, baseline, make_vgg, images):
    attr = pytest.importorskip("captum.attr")
    model = make_vgg(inplace=False)
    method = IntegratedGradients(model, steps=8, method=quadrature, baseline=baseline)
    result = method(images)
    baselines = method.baseline_image(images).expand_as(images)
    expected, captum_gap = attr.IntegratedGradients(model).attribute(
        images,
        baselines=baselines,
        target=result.targets,
        n_steps=8,
        method=quadrature,
        return_convergence_delta=True,
    )
    expected = expected.detach().sum(dim=1)
    score_differences = expected.flatten(1).sum(dim=1) - captum_gap.float()
    if quadrature == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/n (halved at the ends) on nodes 1/(n-1) apart, so they
        # sum to (n-1)/n; ours are 1/(n-1), the trapezoid rule, so ours are n/(n-1) times Captum's
        expected = expected * 8 / 7
    assert all(r >= 0.99 for r in pearson(result.maps, expected))
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    completeness = result.extras["completeness"]
    torch.testing.assert_close(completeness.attribution_sums, result.maps.flatten(1).sum(dim=1))
    torch.testing.assert_close(completeness.score_differences, score_differences)


def test_completeness_improves_with_steps(tiny_resnet, images):
    gaps = []
    for steps in (4, 64):
        done = IntegratedGradients(tiny_resnet, steps=steps)(images).extras["completeness"]
        gaps.append((done.gap.abs() / done.score_differences.abs()).max().item())
    assert gaps[1] < 0.01 and gaps[1] < gaps[0]


def test_integrated_gradients_chunked_equals_unchunked(tiny_resnet, images):
    whole = IntegratedGradients(tiny_resnet, steps=6, step_batch=24)(images).maps
    scale = whole.abs().max()
    for chunk in (1, 4, 5):
        chunked = IntegratedGradients(tiny_resnet, steps=6, step_batch=chunk)(images).maps
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("quadrature", QUADRATURES)
def test_path_points(quadrature):
    nodes, weights = path_points(quadrature, 6)
    assert nodes.shape == weights.shape == (6,)
    assert ((nodes >= 0) & (nodes <= 1)).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact_degree = {"gausslegendre": 11, "riemann_middle": 1, "riemann_trapezoid": 1}
    degree = exact_degree.get(quadrature, 0)
    torch.testing.assert_close((weights * nodes**degree).sum().item(), 1 / (degree + 1))


def test_baselines_and_options(tiny_resnet, images):
    black = IntegratedGradients(tiny_resnet, baseline="black").baseline_image(images)
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(black[0, :, 5, 7], expected)
    zeros = IntegratedGradients(tiny_resnet).baseline_image(images)
    assert zeros.shape == (1, 3, 64, 64) and not zeros.any()
    with pytest.raises(ConfigError, match="baseline"):
        IntegratedGradients(tiny_resnet, baseline="blur")
    with pytest.raises(ConfigError, match="method must be one of"):
        IntegratedGradients(tiny_resnet, method="simpson")
    with pytest.raises(ConfigError, match="steps >= 2"):
        IntegratedGradients(tiny_resnet, steps=1, method="riemann_trapezoid")


def test_intgrad_places_its_constants_once_per_dtype_and_device(tiny_resnet, images):
    method = IntegratedGradients(tiny_resnet, steps=3, baseline="black")
    first = method(images[:2]).maps
    placed = dict(method.placed)
    assert sorted(name for name, _, _ in placed) == ["black", "nodes", "weights"]
    second = method(images[2:]).maps
    assert all(method.placed[key] is tensor for key, tensor in placed.items())
    fresh = IntegratedGradients(tiny_resnet, steps=3, baseline="black")
    torch.testing.assert_close(second, fresh(images[2:]).maps, rtol=0, atol=0)
    torch.testing.assert_close(first, fresh(images[:2]).maps, rtol=0, atol=0)
