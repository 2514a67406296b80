"""Reading, overriding and checking experiment configs: every problem named before any work."""

import copy
from pathlib import Path

import pytest

from xaibench.core.errors import ConfigError
from xaibench.experiments.check import check_experiment
from xaibench.experiments.config import config_sha256, digest, load_config
from xaibench.experiments.plan import make_plan

MINIMAL = """
[run]
name = "tiny"

[data]
dataset = "folder"
root = "{root}"

[[models]]
name = "vgg16"
weights = "none"

[generate]
methods = ["gradcam", "random"]
"""


def write(tmp_path: Path, text: str, root: Path | None = None) -> Path:
    path = tmp_path / "experiment.toml"
    path.write_text(text.replace("{root}", str(root or tmp_path)), "utf-8")
    return path


def test_every_default_is_filled_in(tmp_path):
    experiment = load_config(write(tmp_path, MINIMAL))
    config = experiment.config
    assert config["run"]["out"] == "runs" and config["run"]["device"] == "auto"
    assert config["evaluate"]["protocols"] == ["polycam"]
    assert config["evaluate"]["metrics"] == [
        "insertion",
        "deletion",
        "ins_del",
        "avg_drop",
        "increase",
    ]
    assert config["generate"]["protocol"] == "polycam"  # the first evaluate protocol
    assert config["models"][0] == {
        "name": "vgg16", "weights": "none", "layer": None,
        "mean": None, "std": None, "input_size": None, "crop": None,
    }  # fmt: skip
    assert config["generate"]["preprocessing"] == "protocol"
    assert "sanity" not in config  # an optional stage only when the file has it
    assert len(experiment.sha256) == 64


def test_sanity_methods_default_to_generated_ones(tmp_path):
    experiment = load_config(write(tmp_path, MINIMAL + "\n[sanity]\nimages = 3\n"))
    assert experiment.config["sanity"]["methods"] == ["gradcam", "random"]
    assert experiment.config["sanity"]["images"] == 3


def test_unknown_key_names_file_section_key_and_close_matches(tmp_path):
    path = write(tmp_path, MINIMAL.replace('dataset = "folder"', 'dataset = "folder"\nsubest = 5'))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "[data]" in message and "'subest'" in message
    assert "did you mean subset" in message


def test_unknown_section_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match=r"no section 'evaluation'; did you mean evaluate\?"):
        load_config(write(tmp_path, MINIMAL + "\n[evaluation]\n"))
    with pytest.raises(ConfigError, match=r"the section \[generate\] is missing"):
        load_config(write(tmp_path, MINIMAL.split("[generate]")[0]))


def test_wrong_type_names_the_type_expected(tmp_path):
    path = write(tmp_path, MINIMAL + '\n[report]\nimages = "four"\n')
    with pytest.raises(ConfigError, match=r"\[report\] images = 'four': expected an integer"):
        load_config(path)
    path = write(tmp_path, MINIMAL.replace('["gradcam", "random"]', '"gradcam"'))
    with pytest.raises(ConfigError, match=r"methods = 'gradcam': expected a list of strings"):
        load_config(path)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[run\nname=")
    with pytest.raises(ConfigError, match=f"{path} is not valid TOML"):
        load_config(path)


def test_overrides_reach_sections_models_and_method_settings(tmp_path):
    experiment = load_config(
        write(tmp_path, MINIMAL),
        [
            "run.device=cpu",
            "data.subset=4",
            "models.0.weights=default",
            "generate.params.gradcam.layer=features",
            'evaluate.protocols=["rise", "polycam"]',
        ],
        out=tmp_path / "elsewhere",
    )
    config = experiment.config
    assert config["run"]["device"] == "cpu" and config["data"]["subset"] == 4
    assert config["models"][0]["weights"] == "default"
    assert config["generate"]["params"] == {"gradcam": {"layer": "features"}}
    assert config["evaluate"]["protocols"] == ["rise", "polycam"]
    assert config["run"]["out"] == str(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.device", "write SECTION.KEY=VALUE"),
        ("models.3.weights=none", r"models has 1 entries .*give an index 0..0"),
        ("models.weights=none", "give the entry.s index"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL), [override])


def test_the_digest_ignores_where_the_run_goes_but_not_what_it_computes(tmp_path):
    path = write(tmp_path, MINIMAL)
    base = load_config(path).sha256
    assert load_config(path, out=tmp_path / "other").sha256 == base
    assert load_config(path, ["data.seed=1"]).sha256 != base
    assert config_sha256(load_config(path).config) == base


def test_keys_added_later_keep_the_digests_while_at_their_defaults(tmp_path):
    """A config that does not set `preprocessing`, a model's `mean` or `metric_params` (added to
    the schema after configs were digested) has the sha256 and unit keys it had; setting them
    changes both."""
    path = write(tmp_path, MINIMAL)
    base = load_config(path)
    keys = [unit.key for unit in make_plan(base).units]
    before = copy.deepcopy(base.config)  # the config as resolved before the keys were added
    del before["generate"]["preprocessing"]
    del before["generate"]["compression"]
    del before["evaluate"]["metric_params"]
    before["models"] = [{k: m[k] for k in ("name", "weights", "layer")} for m in before["models"]]
    del before["run"]["out"]
    del before["run"]["deterministic"]
    assert base.sha256 == digest(before)
    spelled = load_config(path, ["generate.preprocessing=protocol", "models.0.crop=0.875"])
    spelled.config["models"][0]["crop"] = None  # as if never written
    assert spelled.sha256 == base.sha256
    assert [unit.key for unit in make_plan(spelled).units] == keys
    model = load_config(path, ["generate.preprocessing=model"])
    assert model.sha256 != base.sha256
    changed = {u.name for u, k in zip(make_plan(model).units, keys, strict=True) if u.key != k}
    assert "vgg16/gradcam" in changed and "dataset" not in changed
    user = load_config(path, ["models.0.name=my:net", "models.0.mean=[0.5, 0.5, 0.5]"])
    plain = load_config(path, ["models.0.name=my:net"])
    assert user.sha256 != plain.sha256
    assert make_plan(user).units[1].key != make_plan(plain).units[1].key


def test_a_model_of_ones_own_states_its_values_and_others_are_refused_them(tmp_path):
    path = write(tmp_path, MINIMAL)
    user = ["models.0.name=tiny_models:tiny_cnn", "generate.preprocessing=model"]
    with pytest.raises(ConfigError, match=r"\[generate\] preprocessing: .*states no preprocessing"):
        check_experiment(load_config(path, user))
    check_experiment(load_config(path, [*user, "models.0.crop=0.875", "models.0.input_size=[64]"]))
    with pytest.raises(ConfigError, match=r"#1 std: \[0.5, 0.5\]: give 3 numbers"):
        check_experiment(load_config(path, [*user, "models.0.std=[0.5, 0.5]"]))
    with pytest.raises(ConfigError, match=r"#1 input_size: .*in pixels"):
        check_experiment(load_config(path, [*user, "models.0.input_size=[64.5]"]))
    lite = ["models.0.name=efficientnet_lite0", "generate.preprocessing=model"]
    with pytest.raises(ConfigError, match=r"\[generate\] preprocessing: .*states no preprocessing"):
        check_experiment(load_config(path, lite))
    check_experiment(load_config(path, ["models.0.name=timm/test_resnet", lite[1]]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.dataset=imagenet-vall",
            r"\[data\] dataset: unknown dataset 'imagenet-vall'. Did you mean imagenet-val",
        ),
        ("models.0.name=vgg61", r"\[\[models\]\] #1 name: unknown model 'vgg61'"),
        ("models.0.name=timm/resnt10t", r"#1 name: unknown timm model 'resnt10t'"),
        ("models.0.mean=[0.5, 0.5, 0.5]", r"\[\[models\]\] #1 mean: vgg16 states its own"),
        ("generate.preprocessing=own", r"\[generate\] preprocessing: 'own': use protocol or model"),
        (
            "models.0.layer=features.99",
            r"\[\[models\]\] #1 layer: vgg16 has no module 'features.99'",
        ),
        ('generate.methods=["gradcm"]', r"\[generate\] methods: unknown method 'gradcm'"),
        ("generate.params.gradcam.masks=5", r"params.gradcam.masks: gradcam has no such setting"),
        ("generate.params.rise.masks=5", r"params.rise: rise is not among methods"),
        (
            'evaluate.metrics=["pointing_game"]',
            r"pointing_game needs bounding boxes: set boxes = true",
        ),
        ('evaluate.protocols=["polycm"]', r"\[evaluate\] protocols: unknown protocol 'polycm'"),
        ("evaluate.mc_dropout=1", r"mc_dropout: 0 \(none\) or at least 2"),
        ("run.precision=fp8", r"\[run\] precision: 'fp8'"),
        ("run.device=gpu", r"\[run\] device: 'gpu' is not a device"),
        ("data.subset=0", r"\[data\] subset: 0"),
        ("data.boxes=true", r"only imagenet-val comes with bounding boxes"),
        ("report.images=0", r"\[report\] images: 0 is too small"),
    ],
)
def test_check_names_the_key_at_fault(tmp_path, override, message):
    experiment = load_config(write(tmp_path, MINIMAL), [override])
    with pytest.raises(ConfigError, match=message) as error:
        check_experiment(experiment)
    assert str(experiment.source) in str(error.value)


def test_a_model_listed_twice_is_refused(tmp_path):
    text = MINIMAL + '\n[[models]]\nname = "vgg16"\n'
    with pytest.raises(ConfigError, match="vgg16 is listed twice"):
        check_experiment(load_config(write(tmp_path, text)))


def test_a_valid_config_passes_the_checks(tmp_path):
    check_experiment(load_config(write(tmp_path, MINIMAL), ["models.0.layer=features.28"]))


def test_the_docs_list_every_key_of_the_schema():
    from xaibench.experiments.config import MODEL_KEYS, SCHEMA

    docs = (Path(__file__).parents[2] / "docs" / "experiments.md").read_text("utf-8")
    for section, keys in [*SCHEMA.items(), ("[models]", MODEL_KEYS)]:
        assert f"### `[{section}]`" in docs
        for key in keys:
            assert f"| `{key}` |" in docs, f"{section}.{key}"


QUANTUS_EVALUATE = """
[evaluate]
metrics = ["insertion", "quantus.Complexity"]

[evaluate.metric_params."quantus.Complexity"]
{setting}
"""


def test_metric_params_left_empty_keep_the_digest_and_are_checked_when_given(tmp_path):
    pytest.importorskip("quantus")
    plain = load_config(write(tmp_path, MINIMAL))
    assert plain.config["evaluate"]["metric_params"] == {}  # every default written back
    empty = load_config(write(tmp_path, MINIMAL + "\n[evaluate]\nmetric_params = {}\n"))
    assert empty.sha256 == plain.sha256
    given = load_config(write(tmp_path, MINIMAL + QUANTUS_EVALUATE.format(setting="abs = false")))
    assert given.config["evaluate"]["metric_params"] == {"quantus.Complexity": {"abs": False}}
    check_experiment(given)
    wrong = load_config(write(tmp_path, MINIMAL + QUANTUS_EVALUATE.format(setting="ab = false")))
    with pytest.raises(ConfigError, match=r"\[evaluate\] metric_params: .*no setting 'ab'"):
        check_experiment(wrong)


def test_compression_is_a_setting_of_the_stores_not_of_their_maps(tmp_path):
    path = write(tmp_path, MINIMAL)
    base = load_config(path)
    none = load_config(path, ["generate.compression=none"])
    assert none.sha256 != base.sha256  # the config records it
    keys = {u.name: u.key for u in make_plan(base).units}
    assert {u.name: u.key for u in make_plan(none).units} == keys  # nothing to redo for it
    with pytest.raises(ConfigError, match=r"compression.*'zstd': use one of lzf, gzip, none"):
        check_experiment(load_config(path, ["generate.compression=zstd"]))


def test_deterministic_is_left_out_of_the_digest_unless_set(tmp_path):
    path = write(tmp_path, MINIMAL)
    base = load_config(path)
    assert base.config["run"]["deterministic"] is False
    assert load_config(path, ["run.deterministic=false"]).sha256 == base.sha256
    assert load_config(path, ["run.deterministic=true"]).sha256 != base.sha256
    keys = [unit.key for unit in make_plan(base).units]
    assert [u.key for u in make_plan(load_config(path, ["run.deterministic=true"])).units] == keys


def test_precision_auto_resolves_to_the_devices_and_keeps_a_cpu_runs_digest(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    auto = load_config(path, ["run.device=cpu"])
    assert auto.config["run"]["precision"] == "fp32"
    assert auto.sha256 == load_config(path, ["run.device=cpu", "run.precision=fp32"]).sha256
    assert load_config(path).config["run"]["precision"] == "fp32"  # auto device: no CUDA here
    cuda = load_config(path, ["run.device=cuda:1"])
    assert cuda.config["run"]["precision"] == "tf32"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert load_config(path).config["run"]["precision"] == "tf32"
    assert load_config(path, ["run.precision=bf16"]).config["run"]["precision"] == "bf16"
