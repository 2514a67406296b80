"""The shared setting checks: what passes, and errors that name the setting."""

import pytest

from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.metrics import Protocol
from xaibench.store.writer import BackgroundWriter


def test_positive_int_passes_integers_of_at_least_one():
    assert positive_int(1, "n") == 1 and positive_int(4000, "n") == 4000


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "8", None])
def test_positive_int_names_the_setting_and_the_value(value):
    with pytest.raises(
        ConfigError, match=rf"^rise: masks must be a positive integer, got {value!r}$"
    ):
        positive_int(value, "rise: masks")


def test_settings_across_packages_use_it():
    with pytest.raises(ConfigError, match="protocol field 'step' must be a positive integer"):
        Protocol("x", step=True)
    with pytest.raises(ConfigError, match="depth must be a positive integer, got 0"):
        BackgroundWriter(None, depth=0)


def test_integer_at_least_takes_numpy_integers_and_names_its_bound():
    import numpy as np

    from xaibench.core.checks import integer_at_least

    assert integer_at_least(np.int64(0), "workers", 0) == 0
    with pytest.raises(ConfigError, match=r"^workers must be an integer >= 0, got -1$"):
        integer_at_least(-1, "workers", 0)
