"""--precision and --compile: one place applies them, results say how they were computed."""

import os

import pytest
import torch
from tiny_models import tiny_cnn

from xaibench.core.errors import ConfigError
from xaibench.core.precision import _Overflows, check_precision, forward_settings, has_hooks
from xaibench.core.runtime import prepare_model
from xaibench.methods import METHODS
from xaibench.metrics import score_function
from xaibench.store import open_store

CPU = torch.device("cpu")


def images(n=3, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def conv_dtypes(model):
    seen = []
    model[0].register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


def test_unknown_precision_and_fp16_on_cpu_are_refused():
    with pytest.raises(ConfigError, match="use one of fp32, tf32, bf16, fp16"):
        check_precision("int8", CPU)
    with pytest.raises(ConfigError, match=r"^precision: fp16 needs a CUDA device.*use bf16"):
        check_precision("fp16", CPU)


def test_bf16_runs_the_forward_in_bfloat16_and_returns_float32():
    model, x = tiny_cnn(), images()
    reference = model(x)
    seen = conv_dtypes(model)
    with forward_settings(model, CPU, "bf16"):
        low = model(x)
    assert seen == [torch.bfloat16]
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.02)
    assert not torch.equal(low, reference)
    assert "forward" not in model.__dict__  # the model's own forward is back
    assert model(x).dtype == torch.float32 and seen[-1] == torch.float32


def test_fp32_and_tf32_on_cpu_compute_exactly_as_before():
    model, x = tiny_cnn(), images()
    reference = model(x)
    for precision in ("fp32", "tf32"):
        with forward_settings(model, CPU, precision):
            assert torch.equal(model(x), reference)


def test_the_forward_is_restored_after_an_error():
    model = tiny_cnn()
    with pytest.raises(RuntimeError), forward_settings(model, CPU, "bf16"):
        model(torch.ones(1, 5, 8, 8))
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_cuda_settings_hold_for_the_block_only_even_after_an_error(precision):
    """The flags are plain settings, so a CPU build shows them set and restored."""
    cuda, before = torch.device("cuda"), (torch.backends.cudnn.benchmark, _tf32())
    model = tiny_cnn()
    with forward_settings(model, cuda, precision):
        assert torch.backends.cudnn.benchmark
        assert _tf32() == (precision == "tf32",) * 2
    assert (torch.backends.cudnn.benchmark, _tf32()) == before
    with pytest.raises(RuntimeError, match="inside"), forward_settings(model, cuda, precision):
        raise RuntimeError("inside")
    assert (torch.backends.cudnn.benchmark, _tf32()) == before


def test_preparing_a_model_for_cuda_changes_no_process_wide_setting():
    class Anywhere(torch.nn.Module):
        def to(self, *args, **kwargs):  # stands for a move to a GPU this machine may lack
            return self

    before = torch.backends.cudnn.benchmark
    prepare_model(Anywhere(), torch.device("cuda"))
    assert torch.backends.cudnn.benchmark == before


def _tf32():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("name", ["tgrad", "gradcam", "gradcampp", "fullgrad", "gradinput"])
def test_methods_under_bf16_give_float32_maps_close_to_fp32(name):
    model, x = tiny_cnn(), images(2, 96)
    method = METHODS.get(name)(model)
    reference = method(x)
    with forward_settings(model, CPU, "bf16"):
        low = method(x)
    assert low.maps.dtype == torch.float32
    assert torch.equal(low.targets, reference.targets)
    for a, b in zip(low.maps, reference.maps, strict=True):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_cam_arithmetic_reads_float32_activations_and_gradients():
    from xaibench.methods.cam import layer_pass

    model = tiny_cnn()
    with forward_settings(model, CPU, "bf16"):
        result = layer_pass(model, "3", images(), None)
    assert result.activations.dtype == torch.float32 == result.gradients.dtype


def test_score_function_runs_in_inference_mode_and_returns_float32():
    model, x = tiny_cnn(), images()
    inside = []
    model.register_forward_hook(lambda m, a, out: inside.append(torch.is_inference_mode_enabled()))
    with forward_settings(model, CPU, "bf16"):
        scores = score_function(model)(x, torch.tensor([1, 2, 3]))
    assert inside == [True] and scores.dtype == torch.float32


def test_cli_records_precision_in_store_and_summary(image_folder, tmp_path, invoke):
    runs = tmp_path / "runs"
    common = ["--model", "tiny_models:tiny_cnn", "--weights", "none", "--data", image_folder]
    result = invoke(
        "generate",
        *common,
        "--saliency",
        "gradcam",
        "--out",
        runs,
        "--quiet",
        "--precision",
        "bf16",
        catch_exceptions=True,
    )
    assert result.exit_code == 0, result.output
    store = runs / "tiny_models_tiny_cnn" / "gradcam.h5"
    with open_store(store) as s:
        assert s.meta.precision == "bf16"
    args = ["evaluate", *common, "--store", store, "--metrics", "avg_drop", "--quiet"]
    result = invoke(*args, "--precision", "bf16", catch_exceptions=True)
    assert result.exit_code == 0, result.output
    summary = (
        runs / "tiny_models_tiny_cnn" / "metrics" / "gradcam-polycam.summary.csv"
    ).read_text()
    assert "precision" in summary.splitlines()[0] and ",bf16," in summary
    result = invoke(*args, "--precision", "fp16", catch_exceptions=True)
    assert result.exit_code != 0 and "fp16 needs a CUDA device" in str(result.exception)


def test_has_hooks_sees_the_hooks_methods_register():
    model = tiny_cnn()
    seen = []

    def look(module, args, out):
        seen.append(has_hooks(model))

    assert not has_hooks(model)
    handle = model[3].register_forward_hook(look)
    model(images(1))
    handle.remove()
    assert seen == [True] and not has_hooks(model)


def test_compile_is_refused_for_methods_that_swap_modules(image_folder, tmp_path, invoke):
    result = invoke(
        "generate",
        "--model",
        "tiny_models:tiny_cnn",
        "--weights",
        "none",
        "--data",
        image_folder,
        "--saliency",
        "gradcam,guidedbackprop",
        "--out",
        tmp_path,
        "--compile",
        catch_exceptions=True,
    )
    assert result.exit_code != 0
    assert "compile: cannot run guidedbackprop: they swap modules" in str(result.exception)


def test_the_stages_outside_forward_settings_compute_as_generate_does_by_default(tmp_path):
    """Sanity checks, explain and visualize run their forwards with the TF32 flags generate's
    default precision sets on CUDA (auto: tf32), whatever the user's flags; on a CPU the flags
    change nothing."""
    before = _tf32()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with forward_settings(tiny_cnn(), torch.device("cuda")):  # no forward runs
            default = _tf32()
        assert default == (True, True)
        _check_the_stages_tf32(tmp_path, default)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _check_the_stages_tf32(tmp_path, expected):
    from tiny_run import make_images

    from xaibench.data.dataset import ImageFolderDataset
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.pipelines.explain import explain_image
    from xaibench.pipelines.sanity import sanity_check
    from xaibench.pipelines.settings import RunSettings
    from xaibench.visualize.activations import layer_activations
    from xaibench.visualize.optimise import visualise_units

    loaded = load_model("tiny_models:tiny_cnn")
    seen = []
    loaded.model.register_forward_pre_hook(lambda module, args: seen.append(_tf32()))
    data = make_images(tmp_path / "val", 2)
    dataset = ImageFolderDataset(data, get_protocol("polycam").preprocess())
    # the settings a sanity check gets on CUDA by default (auto: tf32); it computes at them
    settings = RunSettings.resolve(CPU, batch_size=2, progress=False, precision="tf32")
    stages = {
        "sanity": lambda: sanity_check(loaded, "gradient", dataset, settings, depth=1),
        "explain": lambda: explain_image(
            next(data.rglob("*.png")), loaded, ["gradcam"], device=CPU
        ),
        "visualize": lambda: visualise_units(
            loaded.model, ["0:1"], mean=loaded.mean, std=loaded.std, size=(32, 32), steps=1
        ),
        "activations": lambda: layer_activations(loaded.model, images(1, 32), ["0"]),
    }
    for name, stage in stages.items():
        seen.clear()
        stage()
        assert seen and set(seen) == {expected}, name
        assert _tf32() == (False, False), name  # the user's settings again


def _determinism():
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


def test_deterministic_holds_for_the_block_only_even_after_an_error(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before, model = _determinism(), tiny_cnn()
    with forward_settings(model, torch.device("cuda"), deterministic=True):
        assert _determinism() == (True, False, True, ":4096:8")
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert _determinism() == before
    with (
        pytest.raises(RuntimeError, match="inside"),
        forward_settings(model, CPU, deterministic=True),
    ):
        raise RuntimeError("inside")
    assert _determinism() == before
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with forward_settings(model, CPU, deterministic=True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_leaves_cpu_numbers_alone_and_refuses_a_nondeterministic_op():
    model, x = tiny_cnn(), images()
    reference = model(x)
    with forward_settings(model, CPU, deterministic=True):
        assert torch.equal(model(x), reference)

    class Scatter(torch.nn.Module):
        def forward(self, x):  # put_ without accumulate has no deterministic implementation
            return x.flatten().clone().put_(torch.tensor([0, 0]), x.flatten()[:2]).view_as(x)

    refused = r"^deterministic: .*put_.*leave out `deterministic`"
    with (
        pytest.raises(ConfigError, match=refused),
        forward_settings(Scatter(), CPU, deterministic=True) as scatter,
    ):
        scatter(x)
    assert not torch.are_deterministic_algorithms_enabled()


def test_non_finite_logits_are_counted_without_a_sync_and_reported(caplog):
    class Overflowing(torch.nn.Module):
        def forward(self, x):
            return torch.where(x[:, :1, 0, 0] > 0, float("inf"), 1.0).expand(-1, 4)

    x = images(6)
    counted = _Overflows(CPU)
    forward = counted.counting(Overflowing())
    forward(x)
    forward(x[:2])
    expected = int((x[:, 0, 0, 0] > 0).sum() + (x[:2, 0, 0, 0] > 0).sum())
    assert expected > 0 and int(counted.rows) == expected
    with caplog.at_level("WARNING"):
        counted.report()
    assert f"fp16: {expected} images' forwards gave Inf or NaN logits" in caplog.text
    caplog.clear()
    _Overflows(CPU).report()
    assert caplog.text == ""


def test_auto_is_tf32_on_cuda_and_fp32_elsewhere():
    from xaibench.core.precision import resolve_precision
    from xaibench.pipelines.settings import RunSettings

    assert resolve_precision("auto", torch.device("cuda")) == "tf32"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert RunSettings.resolve("cpu").precision == "fp32"  # what the records hold
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


def test_the_stages_outside_forward_settings_allow_tf32_as_the_default_does():
    from xaibench.core.precision import tf32_settings

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_settings():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with tf32_settings("fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_padded_sizes_are_the_next_power_of_two():
    from xaibench.core.precision import padded_size

    assert [padded_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 255, 256, 257)] == [
        1, 2, 4, 4, 8, 8, 16, 256, 256, 512,
    ]  # fmt: skip
