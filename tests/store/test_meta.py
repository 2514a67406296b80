import json

import pytest
from store_helpers import meta

from xaibench.core.errors import ConfigError, StoreError
from xaibench.store import StoreMeta
from xaibench.store.meta import RUN_FIELDS


def test_json_and_attribute_round_trips():
    m = meta(preprocess={"name": "eval", "mean": (0.5, 0.5, 0.5)})
    assert StoreMeta.from_json(m.to_json()) == StoreMeta.from_dict(m.to_dict())
    back = StoreMeta.from_attrs(m.to_attrs())
    assert back.preprocess == {"name": "eval", "mean": [0.5, 0.5, 0.5]}
    assert back.to_dict() == json.loads(m.to_json())
    assert isinstance(m.to_attrs()["method_params"], str)


def test_a_preprocessing_recorded_under_the_rise_protocol_name_reads_as_polycam():
    recorded = meta(preprocess={"name": "rise", "resize": [224, 224], "crop": None})
    polycam = {"name": "polycam", "resize": [224, 224], "crop": None}
    for read in (
        StoreMeta.from_attrs(recorded.to_attrs()),
        StoreMeta.from_dict(recorded.to_dict()),
    ):
        assert read.preprocess == polycam
        read.check_compatible({"preprocess": polycam})
        with pytest.raises(StoreError, match="preprocess"):
            read.check_compatible({"preprocess": {**polycam, "name": "eval"}})


def test_versions_and_creation_time_are_filled_in():
    m = StoreMeta("resnet50", "IMAGENET1K_V2", "tgrad", {}, "label", {})
    assert m.xaibench_version and m.torch_version and m.created[:2] == "20"


def test_check_compatible_names_the_field_and_both_values():
    m = meta()
    m.check_compatible(meta(created="later").run_fields())
    m.check_compatible({"preprocess": {"crop": None, "resize": (224, 224), "name": "polycam"}})
    with pytest.raises(StoreError) as error:
        m.check_compatible(meta(method_params={"layer": "4", "relu": True}).run_fields())
    message = str(error.value)
    assert "method_params" in message and '"layer": "3"' in message and '"layer": "4"' in message
    assert "delete" in message
    with pytest.raises(StoreError, match="target"):
        m.check_compatible({"target": "label"})


def test_run_fields_and_validation():
    assert set(meta().run_fields()) == set(RUN_FIELDS)
    with pytest.raises(ConfigError, match="top1"):
        meta(target="top1")
    with pytest.raises(ValueError, match="colour"):
        meta().check_compatible({"colour": "red"})
    with pytest.raises(StoreError, match="created"):
        StoreMeta.from_dict({k: v for k, v in meta().to_dict().items() if k != "created"})
