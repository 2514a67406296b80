"""`quantus.NAME` metrics against Quantus called directly on the same model, images, classes, maps
and settings; their forwards, directions, seeds, refusals and errors."""

import inspect
import sys

import numpy as np
import pytest
import torch
from tiny_models import tiny_cnn

from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.metrics import METRICS, MetricContext, get_protocol, metric_params, score_function
from xaibench.metrics.quantus_metrics import REFUSED, SUPPORTED
from xaibench.pipelines.evaluate import evaluation_metric_objects

quantus = pytest.importorskip("quantus")

SIDE = 32
ROWS = np.array([7, 8, 9])
CASES = {
    "quantus.Sparseness": {},
    "quantus.Complexity": {"abs": False},
    "quantus.FaithfulnessCorrelation": {"nr_runs": 5, "subset_size": 64, "seed": 3},
    "quantus.Monotonicity": {"features_in_step": 64},
    "quantus.FaithfulnessEstimate": {"features_in_step": 128},
}


class Counting(torch.nn.Module):
    """`net`, counting the images it is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, images):
        self.images += len(images)
        return self.net(images)


def context(protocol="polycam", model=None, saliency=None):
    torch.manual_seed(0)
    model = model or tiny_cnn()
    images = torch.randn(len(ROWS), 3, SIDE, SIDE)
    saliency = torch.rand(len(ROWS), SIDE, SIDE) if saliency is None else saliency
    targets = torch.tensor([1, 200, 3])
    chosen = get_protocol(protocol)
    score = score_function(model, chosen.score)
    clean = score(images, targets)
    return MetricContext(
        images, saliency, targets, clean, score, chosen, model=model, rows=ROWS.copy()
    )


def direct(name, params, ctx, keep=slice(None)):
    """Quantus's class called as its documentation shows, NumPy seeded as xaibench seeds it."""
    settings = {k: v for k, v in params.items() if k != "seed"}
    metric = getattr(quantus, name.removeprefix("quantus."))(
        disable_warnings=True, return_aggregate=False, **settings
    )
    np.random.seed(np.random.SeedSequence([params.get("seed", 0), int(ROWS[0])]).generate_state(1))
    return np.asarray(
        metric(
            model=ctx.model,
            x_batch=ctx.images.numpy()[keep],
            y_batch=ctx.targets.numpy()[keep],
            a_batch=ctx.saliency.numpy()[keep][:, None],
            device="cpu",
            softmax=ctx.protocol.score == "probability",
        ),
        dtype=float,
    )


@pytest.mark.parametrize("protocol", ["polycam", "rise"])
@pytest.mark.parametrize("name", CASES)
def test_values_equal_quantus_called_directly(name, protocol):
    ctx = context(protocol)
    metric = METRICS.get(name).configured(CASES[name])
    values = metric.score_batch(ctx).values[name]
    assert values.shape == (len(ROWS),) and torch.isfinite(values).all()
    np.testing.assert_allclose(values.numpy(), direct(name, CASES[name], ctx), rtol=1e-12)


def test_a_seed_reproduces_and_another_differs_and_numpys_state_is_kept():
    name, params = "quantus.FaithfulnessCorrelation", CASES["quantus.FaithfulnessCorrelation"]
    ctx = context()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = METRICS.get(name).configured(params).score_batch(ctx).values[name]
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    again = METRICS.get(name).configured(params).score_batch(ctx).values[name]
    other = METRICS.get(name).configured({**params, "seed": 4}).score_batch(ctx).values[name]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_a_nonfinite_map_is_flagged_and_left_out():
    saliency = torch.rand(len(ROWS), SIDE, SIDE)
    saliency[1, 3, 4] = float("nan")
    ctx = context(saliency=saliency)
    result = METRICS.get("quantus.Sparseness").configured({}).score_batch(ctx)
    values = result.values["quantus.Sparseness"]
    assert result.flags["nonfinite_map"].tolist() == [False, True, False]
    assert torch.isnan(values[1])
    np.testing.assert_allclose(
        values[[0, 2]].numpy(), direct("quantus.Sparseness", {}, ctx, keep=[0, 2]), rtol=1e-12
    )


FORWARDS = {
    **CASES,
    "quantus.MonotonicityCorrelation": {"features_in_step": 128, "nr_samples": 2},
    "quantus.Completeness": {},
    "quantus.EffectiveComplexity": {},
}


@pytest.mark.parametrize("name", FORWARDS)
def test_declared_forwards_are_the_forwards_quantus_runs(name):
    model = Counting(tiny_cnn()).eval()
    ctx = context(model=model)
    model.images = 0
    metric = METRICS.get(name).configured(FORWARDS[name])
    metric.score_batch(ctx)
    assert metric.forwards(ctx.protocol, SIDE * SIDE) == {name: model.images / len(ROWS)}


def test_forwards_that_depend_on_the_images_are_unknown():
    metric = METRICS.get("quantus.Infidelity").configured({})
    assert metric.forwards(get_protocol("polycam"), SIDE * SIDE) is None


def test_directions_are_quantuss_and_every_quantus_metric_is_supported_or_refused():
    for name, supported in SUPPORTED.items():
        direction = getattr(quantus, name).score_direction.name
        assert supported.higher_is_better == (direction == "HIGHER"), name
        assert METRICS.get(f"quantus.{name}").higher_is_better == supported.higher_is_better
    classes = {
        n
        for n, o in vars(quantus).items()
        if inspect.isclass(o) and issubclass(o, quantus.Metric) and o is not quantus.Metric
    }
    assert classes == set(SUPPORTED) | set(REFUSED)


def test_settings_and_key_record_the_version_params_and_seed():
    metric = METRICS.get("quantus.FaithfulnessCorrelation").configured({"nr_runs": 7, "seed": 2})
    assert metric.settings() == {
        "library": "quantus",
        "version": quantus.__version__,
        "class": "FaithfulnessCorrelation",
        "params": {"nr_runs": 7},
        "seed": 2,
    }
    assert metric.key() != METRICS.get("quantus.FaithfulnessCorrelation").configured({}).key()
    assert METRICS.get("insertion").settings() is None


def test_a_func_setting_named_by_text_is_the_quantus_function():
    ctx = context()
    params = {"features_in_step": 128, "similarity_func": "correlation_spearman"}
    metric = METRICS.get("quantus.FaithfulnessEstimate").configured(params)
    values = metric.score_batch(ctx).values["quantus.FaithfulnessEstimate"]
    reference = {**params, "similarity_func": quantus.correlation_spearman}
    np.testing.assert_allclose(
        values.numpy(), direct("quantus.FaithfulnessEstimate", reference, ctx), rtol=1e-12
    )
    with pytest.raises(ConfigError, match="no function 'nope'"):
        METRICS.get("quantus.FaithfulnessEstimate").configured({"similarity_func": "nope"})


def test_an_unknown_setting_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"no setting 'nr_run' \(its settings: .*nr_runs") as err:
        METRICS.get("quantus.FaithfulnessCorrelation").configured({"nr_run": 3})
    assert err.value.param == "metric_params"
    with pytest.raises(ConfigError, match="no setting 'return_aggregate'"):
        METRICS.get("quantus.Sparseness").configured({"return_aggregate": True})
    with pytest.raises(ConfigError, match="seed: give an integer"):
        METRICS.get("quantus.Sparseness").configured({"seed": "one"})


def test_a_typo_names_close_matches_and_a_refused_metric_says_why():
    with pytest.raises(UnknownNameError, match=r"Did you mean: quantus\.Sparseness") as err:
        METRICS.get("quantus.Sparsenes", param="metrics")
    assert err.value.param == "metrics"
    with pytest.raises(ConfigError, match="MaxSensitivity is not supported: it re-explains"):
        METRICS.get("quantus.MaxSensitivity")
    assert METRICS.knows("quantus.Sparseness") and not METRICS.knows("quantus.MaxSensitivity")


def test_without_quantus_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "quantus", None)  # import quantus raises ImportError
    metric = METRICS.get("quantus.Sparseness")  # naming it needs no quantus
    assert metric.higher_is_better
    with pytest.raises(ConfigError, match=r"pip install 'xaibench\[quantus\]'"):
        metric.configured({})


def test_settings_go_to_chosen_metrics_that_have_settings():
    texts = ["quantus.FaithfulnessCorrelation.nr_runs=4", "quantus.Complexity.normalise=false"]
    params = metric_params(texts)
    assert params == {
        "quantus.FaithfulnessCorrelation": {"nr_runs": 4},
        "quantus.Complexity": {"normalise": False},
    }
    metrics = evaluation_metric_objects(
        ["insertion", "quantus.FaithfulnessCorrelation", "quantus.Complexity"], params
    )
    assert metrics[1].params == {"nr_runs": 4} and metrics[0] is METRICS.get("insertion")
    with pytest.raises(ConfigError, match="not among `metrics`"):
        evaluation_metric_objects(["quantus.Complexity"], params)
    with pytest.raises(ConfigError, match="insertion has no settings of its own"):
        evaluation_metric_objects(["insertion"], {"insertion": {"step": 3}})
    with pytest.raises(ConfigError, match=r"write METRIC\.KEY=VALUE"):
        metric_params(["nr_runs=4"])
