"""Bad input at the terminal ends in one clear `error:` line (exit code 2) naming the flag or the
file and the fix: never a traceback, a crash or a silently wrong run."""

import errno
import os

import click
import numpy as np
import pandas as pd
import pytest
from box_helpers import voc

from xaibench.cli import COMMANDS, main
from xaibench.cli.options import url
from xaibench.core.atomic import write_atomic, write_text_atomic
from xaibench.core.errors import ConfigError
from xaibench.core.lazy import load
from xaibench.data.classes import imagenet_classes
from xaibench.methods.settings import method_params
from xaibench.metrics import METRICS
from xaibench.store import Rows, create_or_resume, open_store

MODEL = "tiny_models:tiny_cnn"
SIZE = (48, 40)  # the image folder's images, width x height


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """`xaibench ARGS` through the console entry point: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def one_error(capsys, *args) -> str:
    """The `error:` line of `xaibench ARGS`, checked to be the only one, with exit code 2."""
    code, lines = run_main(capsys, *args)
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines)
    return errors[0]


def options(keep) -> list[tuple[str, str]]:
    """(command, flag) of every option of every command for which `keep(option)` holds."""
    found = []
    for name, target in sorted(COMMANDS.items()):
        for param in load(target).params:
            if isinstance(param, click.Option) and keep(param):
                found.append((name, param.opts[0]))
    return found


FLOAT_OPTIONS = options(lambda p: isinstance(p.type, click.types.FloatParamType))
SEED_OPTIONS = options(lambda p: p.name.endswith("seed"))


def test_the_walk_finds_the_float_and_seed_options():
    assert {("visualize", "--rotate"), ("sanity", "--threshold"), ("generate", "--crop")} <= set(
        FLOAT_OPTIONS
    )
    assert {("download", "--seed"), ("evaluate", "--mc-seed"), ("visualize", "--seed")} <= set(
        SEED_OPTIONS
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize(("command", "flag"), FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinities(capsys, command, flag, value):
    line = one_error(capsys, command, flag, value)
    assert line == f"error: {flag}: {value!r} is not a finite number; give a number such as 0.5"


@pytest.mark.parametrize("flag", ["--mean", "--std"])
def test_comma_separated_numbers_refuse_nan_and_infinities(capsys, flag):
    line = one_error(capsys, "generate", flag, "0.5,nan,inf")
    assert line == f"error: {flag}: '0.5,nan,inf': give finite numbers, not nan or inf"


@pytest.mark.parametrize("value", ["nan", "10,inf,20"])
def test_road_percentages_refuse_nan_and_infinities(capsys, tmp_path, value):
    args = ["evaluate", "--model", "m", "--store", tmp_path / "s.h5", "--data", tmp_path]
    line = one_error(capsys, *args, "--road-percentages", value)
    assert line.startswith("error: --road-percentages: '")
    assert "give percentages between 0 and 100" in line


@pytest.mark.parametrize(("command", "flag"), SEED_OPTIONS)
def test_every_seed_option_refuses_a_negative_seed(capsys, command, flag):
    assert one_error(capsys, command, flag, -1) == f"error: {flag}: -1 is not in the range x>=0"


def test_sanity_refuses_a_threshold_a_correlation_cannot_reach(capsys):
    line = one_error(capsys, "sanity", "--threshold", 1.5)
    assert line == "error: --threshold: 1.5 is not in the range -1<=x<=1"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rise.keep=abc", "rise.keep=abc: rise's setting 'keep' takes a number, not text 'abc'"),
        ("rise.seed=abc", "rise.seed=abc: rise's setting 'seed' takes an integer, not text 'abc'"),
        ("random.seed=abc", "random.seed=abc: random's setting 'seed' takes an integer, not text 'abc'"),
        ("rise.masks=4.5", "rise.masks=4.5: rise's setting 'masks' takes an integer, not a decimal number '4.5'"),
        ("rise.keep=true", "rise.keep=true: rise's setting 'keep' takes a number, not a boolean 'true'"),
        ("random.resolution=[8]", "random.resolution=[8]: random's setting 'resolution' takes an integer or null, not a list '[8]'"),
        ("rise.keep=NaN", "'rise.keep=NaN': NaN is not finite; give finite numbers (no NaN or Infinity)"),
        ("rise.keep=1e999", "'rise.keep=1e999': 1e999 is not finite; give finite numbers (no NaN or Infinity)"),
        ("smoothgrad.noise=Infinity", "'smoothgrad.noise=Infinity': Infinity is not finite; give finite numbers (no NaN or Infinity)"),
        ("occlusion.window=[8,NaN]", "'occlusion.window=[8,NaN]': [8,NaN] is not finite; give finite numbers (no NaN or Infinity)"),
    ],
)  # fmt: skip
def test_a_method_setting_of_the_wrong_type_or_not_finite_is_refused(
    capsys, tmp_path, setting, message
):
    method = setting.split(".")[0]
    args = ["generate", "--model", "m", "--saliency", method, "--data", tmp_path]
    assert one_error(capsys, *args, "--param", setting) == f"error: --param: {message}"


def test_settings_of_the_declared_types_pass_an_int_being_a_float_too():
    given = ("rise.keep=1", "rise.mask_batch=null", "random.resolution=8", "tgrad.shift_term=false")
    assert method_params(["rise", "random", "tgrad"], given) == {
        "rise": {"keep": 1, "mask_batch": None},
        "random": {"resolution": 8},
        "tgrad": {"shift_term": False},
    }


def test_a_metric_setting_that_is_not_finite_is_refused(capsys, tmp_path):
    args = ["evaluate", "--model", "m", "--store", tmp_path / "s.h5", "--data", tmp_path]
    line = one_error(capsys, *args, "--metric-param", "quantus.Sparseness.x=NaN")
    assert line == (
        "error: --metric-param: 'quantus.Sparseness.x=NaN': NaN is not finite; give finite "
        "numbers (no NaN or Infinity)"
    )


@pytest.mark.parametrize("given", ["not a url", "example.org/imagenet", "http://", "ftp:/x"])
def test_a_url_base_that_is_not_a_url_is_refused(capsys, tmp_path, given):
    args = ["download", "imagenet-val", "--dest", tmp_path / "d", "--url-base", given]
    assert one_error(capsys, *args) == (
        f"error: --url-base: {given!r} is not a URL; give the server folder as "
        "http(s)://HOST/FOLDER (or file:///FOLDER)"
    )
    assert not (tmp_path / "d").exists()


def test_an_imagenet_url_of_the_environment_that_is_not_a_url_is_refused(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("XAIBENCH_IMAGENET_URL", "imagenet mirror")
    assert one_error(capsys, "download", "imagenet-val", "--dest", tmp_path / "d") == (
        "error: $XAIBENCH_IMAGENET_URL: 'imagenet mirror' is not a URL; give the server folder "
        "as http(s)://HOST/FOLDER (or file:///FOLDER)"
    )


@pytest.mark.parametrize("given", ["http://host/folder", "https://h:8080/a/b", "file:///srv/in"])
def test_urls_the_downloader_opens_pass(given):
    assert url(None, None, given) == given


@pytest.mark.parametrize(
    ("setting", "wanted"),
    [("rise.masks=10000000000", "10,000,000,000 masks of 7 x 7"), ("rise.cell=100000", "4,000 masks of 100000 x 100000")],
)  # fmt: skip
def test_a_rise_draw_larger_than_memory_is_refused_before_it_is_made(
    capsys, image_folder, tmp_path, setting, wanted
):
    args = ["generate", "--model", MODEL, "--weights", "none", "--saliency", "rise"]
    args += ["--data", image_folder, "--out", tmp_path / "runs", "--quiet", "--param", setting]
    line = one_error(capsys, *args)
    assert line.startswith(f"error: --param: rise: drawing {wanted} cells takes ")
    assert line.endswith(" GiB of memory of this machine; give fewer masks or cells")


def test_rise_cells_smaller_than_a_pixel_are_refused(capsys, image_folder, tmp_path):
    args = ["generate", "--model", MODEL, "--weights", "none", "--saliency", "rise", "--quiet"]
    args += ["--data", image_folder, "--out", tmp_path / "runs"]
    line = one_error(capsys, *args, "--param", "rise.cell=300", "--param", "rise.masks=2")
    assert line == (
        "error: --param: rise: cell 300 makes cells smaller than a pixel of the 224 x 224 images; "
        "give cell <= 224"
    )


def test_a_visualisation_larger_than_memory_is_refused(capsys, tmp_path):
    args = ["visualize", "--model", MODEL, "--weights", "none", "--unit", "8:1", "--quiet"]
    line = one_error(capsys, *args, "--size", 100000, "--out", tmp_path / "v")
    assert line.startswith(
        "error: --size: optimising 1 image(s) of 100000 x 100000 pixels (before the model's own "
        "activations) takes 1,117.6 GiB, more than the "
    )
    assert line.endswith("GiB of memory of this machine; give a smaller --size")


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--out", "{file}"],
        ["evaluate", "--out", "{file}"],
        ["import-maps", "--out", "{file}"],
        ["sanity", "--out", "{file}"],
        ["visualize", "--out", "{file}"],
        ["activations", "--out", "{file}"],
        ["report", "--out", "{file}"],
        ["run", "--out", "{file}"],
        ["download", "--dest", "{file}"],
        ["explain", "--out", "{file}/explain.png"],
    ],
)
def test_an_output_folder_that_is_a_file_is_refused(capsys, tmp_path, args):
    file = tmp_path / "taken"
    file.write_text("")
    line = one_error(capsys, *[a.format(file=file) for a in args])
    assert line == f"error: {args[1]}: {file} is a file; give a folder"


def test_an_output_folder_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    line = one_error(capsys, "generate", "--out", tmp_path / "taken" / "runs")
    assert (
        line
        == f"error: --out: {tmp_path / 'taken'} is a file, so {tmp_path}/taken/runs cannot be a folder"
    )


def test_a_read_only_output_folder_is_refused(capsys, tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: p != tmp_path and real(p, mode))
    line = one_error(capsys, "generate", "--out", tmp_path / "runs")
    assert line == f"error: --out: {tmp_path} is read-only; give a folder you can write to"


def test_an_output_folder_on_a_full_disk_is_refused(capsys, tmp_path, monkeypatch):
    real = os.statvfs

    class Full:
        def __init__(self, status):
            self.f_flag, self.f_blocks, self.f_bavail = status.f_flag, 1000, 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    line = one_error(capsys, "visualize", "--out", tmp_path / "v")
    assert line == (
        f"error: --out: the disk of {tmp_path} is full; free space on it or give a folder on "
        "another disk"
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [(errno.ENOSPC, "free space on its disk or write elsewhere"), (errno.EROFS, "give a folder you can write to")],
)  # fmt: skip
def test_a_write_the_file_system_refuses_names_the_file(tmp_path, code, advice):
    def refuse(tmp):
        raise OSError(code, os.strerror(code), str(tmp))

    with pytest.raises(ConfigError) as refused:
        write_atomic(tmp_path / "table.csv", refuse)
    assert str(refused.value) == f"cannot write {tmp_path}/table.csv: {os.strerror(code)}; {advice}"
    assert not list(tmp_path.iterdir())


def test_a_folder_that_cannot_be_made_names_it(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match=f"cannot write {tmp_path}/taken/sub: "):
        write_text_atomic(tmp_path / "taken" / "sub" / "a.txt", "x")


def test_a_model_module_that_fails_on_import_names_it_and_the_error(capsys, tmp_path, monkeypatch):
    (tmp_path / "failing_on_import.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    (tmp_path / "not_python_at_all.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(tmp_path)
    args = ["generate", "--saliency", "random", "--data", tmp_path, "--out", tmp_path / "runs"]
    line = one_error(capsys, *args, "--model", "failing_on_import:build")
    assert line == (
        "error: --model: importing 'failing_on_import' of 'failing_on_import:build' raised "
        "RuntimeError: needs a GPU driver; fix the module failing_on_import"
    )
    line = one_error(capsys, *args, "--model", "not_python_at_all:build")
    assert line.startswith(
        "error: --model: importing 'not_python_at_all' of 'not_python_at_all:build' raised "
        "SyntaxError: "
    )


NATIVE = [name for name in METRICS.names() if not name.startswith("quantus.")]


def test_evaluate_scores_a_store_whose_maps_are_all_nan(capsys, invoke, image_folder, tmp_path):
    """Every native metric gives NaN and the non-finite flag for every image, in one run."""
    result = invoke(
        "generate", "--model", MODEL, "--saliency", "centre", "--data", image_folder,
        "--out", tmp_path / "runs", "--batch-size", 4, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    source = tmp_path / "runs" / MODEL.replace(":", "_") / "centre.h5"
    nan_store = source.with_name("nan.h5")
    with open_store(source) as store:
        meta, ids, labels = store.meta, store.ids, store.labels.copy()
        targets, scores = store.targets.copy(), store.scores.copy()
        shape = store.read_maps([0]).shape[1:]
    with create_or_resume(nan_store, meta, ids, labels) as store:
        rows = np.arange(len(ids))
        store.write(Rows(rows, np.full((len(ids), *shape), np.nan), targets, scores))
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    for image_id, target in zip(ids, targets, strict=True):
        name = image_id.rsplit("/", 1)[1].rsplit(".", 1)[0]
        wnid = imagenet_classes().wnid(int(target))
        (boxes / f"{name}.xml").write_text(voc([(wnid, 1, 1, 20, 20)], SIZE))
    main([
        "evaluate", "--model", MODEL, "--store", str(nan_store), "--data", str(image_folder),
        "--out", str(tmp_path / "m"), "--batch-size", "4", "--quiet", "--boxes", str(boxes),
        "--metrics", ",".join(NATIVE),
    ])  # fmt: skip
    assert "error" not in capsys.readouterr().err
    per_image = pd.read_csv(next((tmp_path / "m").glob("*.per_image.csv")))
    assert len(per_image) == len(ids)
    assert per_image[NATIVE].isna().all().all()
    assert per_image["nonfinite_map"].all()
