import pytest

from xaibench.core.errors import DataError
from xaibench.data.classes import imagenet_classes


def test_index_is_the_position_among_sorted_wnids():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes.wnids == sorted(classes.wnids)
    assert classes.index_of("n02119789") == 278
    assert classes.wnid(278) == "n02119789"
    assert classes.names(278).startswith("kit fox")
    assert classes.index_of("n01440764") == 0
    assert classes.index_of("n15075141") == 999


def test_repeated_names_are_distinct_classes():
    classes = imagenet_classes()
    cranes = [i for i in range(len(classes)) if classes.names(i) == "crane"]
    assert len(cranes) == 2
    assert len({classes.wnid(i) for i in cranes}) == 2


def test_unknown_wnid_is_named():
    with pytest.raises(DataError, match="n99999999"):
        imagenet_classes().index_of("n99999999")


def test_table_is_read_once():
    assert imagenet_classes() is imagenet_classes()


def test_short_name_is_the_first_name_and_empty_outside_the_1000():
    classes = imagenet_classes()
    assert classes.short_name(278) == "kit fox"
    assert classes.short_name(1000) == "" and classes.short_name(-1) == ""
