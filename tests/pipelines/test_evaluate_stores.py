"""What evaluate_stores decides before any model loads: metrics, output folders, the protocol."""

from pathlib import Path

import pytest

from xaibench.core.errors import ConfigError
from xaibench.metrics import METRICS
from xaibench.pipelines.evaluate import (
    DEFAULT_METRICS,
    evaluation_dirs,
    evaluation_metrics,
    evaluation_protocol,
)


def test_boxes_add_every_metric_that_needs_them_and_none_is_refused():
    needing = [m for m in METRICS.names() if METRICS.get(m).needs_boxes]
    assert needing and evaluation_metrics(DEFAULT_METRICS, None) == list(DEFAULT_METRICS)
    assert evaluation_metrics(["deletion"], Path("boxes")) == ["deletion", *needing]
    with pytest.raises(
        ConfigError, match=f"^metrics: {needing[0]} needs bounding boxes; pass `boxes`"
    ):
        evaluation_metrics([needing[0]], None)
    with pytest.raises(ConfigError, match=r"^metrics: give at least one"):
        evaluation_metrics([], None)


def test_tables_go_beside_each_store_unless_told_and_never_collide(tmp_path):
    stores = [tmp_path / "a" / "tgrad.h5", tmp_path / "b" / "tgrad.h5"]
    assert evaluation_dirs(stores, None) == [tmp_path / "a" / "metrics", tmp_path / "b" / "metrics"]
    assert evaluation_dirs(stores[:1], tmp_path / "out") == [tmp_path / "out"]
    with pytest.raises(ConfigError, match=r"^stores: two of them would write the same tables"):
        evaluation_dirs(stores, tmp_path / "out")


def test_protocol_overrides_are_read_as_numbers():
    protocol = evaluation_protocol("polycam", 3136, ["1", "2.5"])
    assert protocol.step == 3136 and protocol.road_percentages == (1, 2.5)
    assert isinstance(protocol.road_percentages[0], int)
    assert evaluation_protocol("polycam") == evaluation_protocol("polycam", None, [])
    with pytest.raises(ConfigError, match=r"^road_percentages: 'ten' is not a number"):
        evaluation_protocol("polycam", None, ["ten"])
