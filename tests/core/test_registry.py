"""Registry families: names PREFIX + MEMBER resolved on demand, once, with close names when unknown."""

import pytest

from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.core.registry import Registry

MEMBERS = {"Alpha": 1, "Beta": 2}


def registry(calls: list[str]) -> Registry[int]:
    names: Registry[int] = Registry("thing")
    names.add("plain", 0)

    def resolve(member: str, param: str | None) -> int | None:
        calls.append(member)
        if member == "Broken":
            raise ConfigError("the library is missing", param=param)
        return MEMBERS.get(member)

    names.add_family("lib.", resolve, lambda: list(MEMBERS), help="the library's things")
    return names


def test_a_family_name_resolves_once_and_is_not_listed_by_default():
    calls: list[str] = []
    names = registry(calls)
    assert names.get("lib.Alpha") == 1 and names.get("lib.Alpha") == 1
    assert calls == ["Alpha"]
    assert names.names() == ["plain"] and "lib.Alpha" not in names and len(names) == 1
    assert names.names("lib.*") == ["lib.Alpha", "lib.Beta"]
    assert names.names("lib.B*") == ["lib.Beta"]
    assert [f.placeholder for f in names.families()] == ["lib.CLASS"]
    assert names.families("plain*") == []


def test_unknown_members_name_close_ones_and_errors_keep_the_parameter():
    names = registry([])
    with pytest.raises(UnknownNameError, match=r"lib\.Alpha") as error:
        names.get("lib.Alpah", param="methods")
    assert error.value.param == "methods" and "list things 'lib.*'" in str(error.value)
    with pytest.raises(ConfigError, match="missing") as error:
        names.get("lib.Broken", param="methods")
    assert error.value.param == "methods"
    with pytest.raises(UnknownNameError, match="plain"):
        names.get("plan")


def test_overlapping_names_and_prefixes_are_refused():
    names = registry([])
    with pytest.raises(ValueError, match="twice"):
        names.add("lib.Gamma", 3)
    with pytest.raises(ValueError, match="overlaps"):
        names.add_family("lib.sub.", lambda m, p: None, list, help="")
    with pytest.raises(ValueError, match="overlaps"):
        names.add_family("pl", lambda m, p: None, list, help="")


def test_knows_a_familys_members_without_listing_them_as_registered():
    names = registry([])
    assert names.knows("plain") and names.knows("lib.Beta") and not names.knows("lib.Gamma")
    assert not names.knows("other") and "lib.Beta" not in names
