"""The batched metrics against a one-image implementation written straight from docs/metrics."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import ndimage
from torch import nn

from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZE, STEP = 16, 32


def probability(model, image, target):
    with torch.no_grad():
        return torch.softmax(model(image[None]), dim=1)[0, target].item()


def reference_substrate(image, name):
    if name == "blur":
        return TF.gaussian_blur(image[None], [11, 11], [5.0, 5.0])[0]
    if name == "zeros":
        return torch.zeros_like(image)
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    kernel = ndimage.gaussian_filter(impulse, 5)
    kernel /= kernel.sum()
    channels = [
        ndimage.correlate(c, kernel, mode="constant", cval=0.0) for c in image.double().numpy()
    ]
    return torch.from_numpy(np.stack(channels)).to(image.dtype)


def reference_causal(model, image, saliency, target, protocol_name, mode):
    """One image, one perturbed image per step, AUC as the docs write it."""
    height, width = saliency.shape
    n_pixels = height * width
    n = math.ceil(n_pixels / STEP)
    values = saliency.flatten().tolist()
    order = sorted(range(n_pixels), key=lambda p: -values[p])  # sorted() is stable
    if protocol_name == "polycam":
        substrate = reference_substrate(image, "blur")
        steps = range(1, n + 1)
    else:
        substrate = reference_substrate(image, "rise_blur" if mode == "insertion" else "zeros")
        steps = range(0, n + 1)
    curve = []
    for k in steps:
        changed = torch.zeros(n_pixels, dtype=torch.bool)
        changed[order[: min(k * STEP, n_pixels)]] = True
        changed = changed.view(height, width)
        if mode == "deletion":
            perturbed = image.clone()
            perturbed[:, changed] = substrate[:, changed]
        else:
            perturbed = substrate.clone()
            perturbed[:, changed] = image[:, changed]
        curve.append(probability(model, perturbed, target))
    if protocol_name == "polycam":
        return sum(curve) / n
    return (sum(curve) - curve[0] / 2 - curve[-1] / 2) / n


def reference_confidence(model, image, saliency, target):
    normalised = (saliency - saliency.min()) / (saliency.max() - saliency.min())
    y = probability(model, image, target)
    o = probability(model, image * normalised, target)
    return max(0.0, y - o) / y, 1.0 if o > y else 0.0


def random_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    with torch.no_grad():
        net[-1].weight.mul_(8)  # spread the softmax so scores move with the perturbations
    return net


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("protocol_name", ["polycam", "rise"])
def test_batched_metrics_equal_the_one_image_reference(device, protocol_name):
    net = random_net()
    torch.manual_seed(1)
    images = torch.randn(3, 3, SIZE, SIZE)
    saliency = torch.rand(3, SIZE, SIZE)
    saliency[2] = (saliency[2] * 4).floor()  # many ties
    with torch.no_grad():
        targets = net(images).argmax(dim=1)

    on_device = net.to(device)
    score_fn = score_function(on_device)
    ctx = MetricContext(
        images.to(device),
        saliency.to(device),
        targets.to(device),
        score_fn(images.to(device), targets.to(device)),
        score_fn,
        get_protocol(protocol_name, step=STEP),
        chunk_size=8,
    )
    names = ["insertion", "deletion", "ins_del", "avg_drop", "increase"]
    results = {name: METRICS.get(name).score_batch(ctx).values[name] for name in names}
    net = on_device.cpu()

    expected = {name: [] for name in names}
    for image, sal, target in zip(images, saliency, targets.tolist(), strict=True):
        insertion = reference_causal(net, image, sal, target, protocol_name, "insertion")
        deletion = reference_causal(net, image, sal, target, protocol_name, "deletion")
        drop, increase = reference_confidence(net, image, sal, target)
        for name, value in zip(
            expected, (insertion, deletion, insertion - deletion, drop, increase), strict=True
        ):
            expected[name].append(value)
    for name, values in expected.items():
        torch.testing.assert_close(
            results[name].cpu().double(),
            torch.tensor(values, dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )
    spread = torch.tensor(expected["insertion"]) - torch.tensor(expected["deletion"])
    assert spread.abs().max() > 1e-3  # the test net's scores do react to the perturbations
