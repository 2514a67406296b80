"""`Registry`: registered names, and families of names made on demand."""

import pytest

from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.core.registry import Registry


def registry_with_family():
    registry: Registry[str] = Registry("thing")
    registry.add("plain", "P", help="a plain one")
    made = []

    def make(name):
        if name == "x.bad":
            raise ConfigError("x.bad cannot be made")
        if name not in ("x.a", "x.b"):
            raise UnknownNameError("thing", name, ["x.a", "x.b"])
        made.append(name)
        return name.upper()

    registry.add_family("x.", make, lambda: ["x.a", "x.b"], help="the x family")
    return registry, made


def test_a_family_makes_its_names_once_and_lists_them_apart():
    registry, made = registry_with_family()
    assert registry.get("x.a") == "X.A" and registry.get("x.a") == "X.A"
    assert made == ["x.a"]
    assert registry.entry("x.b").help == "the x family"
    assert registry.names() == ["plain"]
    assert registry.family_names() == ["x.a", "x.b"] and registry.family_names("*b") == ["x.b"]
    assert "x.a" in registry and "x.c" not in registry and "plain" in registry
    assert [f.prefix for f in registry.families()] == ["x."]


def test_a_familys_errors_name_the_parameter_and_unknown_names_suggest_family_names():
    registry, _ = registry_with_family()
    with pytest.raises(ConfigError, match="cannot be made") as err:
        registry.get("x.bad", param="things")
    assert err.value.param == "things"
    with pytest.raises(UnknownNameError, match=r"Did you mean: x\.a"):
        registry.get("x_a")
    with pytest.raises(ValueError, match="twice"):
        registry.add_family("x.", str, list)
