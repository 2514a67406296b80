"""Typed errors name the parameter at fault, in Python terms."""

import pytest

from xaibench.core.errors import (
    ConfigError,
    DataError,
    ModelError,
    OutOfMemory,
    ResultsError,
    StoreError,
    UnknownNameError,
    XaibenchError,
)
from xaibench.core.registry import Registry
from xaibench.data.archives import ChecksumError, DownloadError
from xaibench.data.extract import UnsafeArchiveError


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def test_an_error_with_a_parameter_reads_param_colon_message():
    error = ConfigError("fp16 needs a CUDA device; use bf16", param="precision")
    assert error.param == "precision" and error.message == "fp16 needs a CUDA device; use bf16"
    assert str(error) == "precision: fp16 needs a CUDA device; use bf16"
    plain = ConfigError("no source for a.tar")
    assert plain.param is None and str(plain) == "no source for a.tar"


def test_every_subclass_passes_the_parameter_through():
    subclasses = _subclasses(XaibenchError) - {UnknownNameError}
    assert {ConfigError, DataError, StoreError, ModelError, ResultsError, OutOfMemory} <= subclasses
    assert {ChecksumError, DownloadError, UnsafeArchiveError} <= subclasses
    for cls in subclasses:
        error = cls("pass `boxes`", param="boxes")
        assert (error.param, str(error)) == ("boxes", "boxes: pass `boxes`"), cls
        with pytest.raises(cls, match=r"^boxes: pass `boxes`$"):
            raise error


def test_an_unknown_name_names_its_parameter_and_the_close_names():
    registry = Registry[int]("method")
    registry.add("gradcam", 1)
    with pytest.raises(UnknownNameError) as info:
        registry.get("gradcm", param="methods")
    assert info.value.param == "methods" and info.value.close == ["gradcam"]
    assert str(info.value) == (
        "methods: unknown method 'gradcm'. Did you mean: gradcam? "
        "Run `xaibench list methods` to see all 1."
    )
    with pytest.raises(UnknownNameError, match=r"^unknown method 'x'"):
        registry.get("x")
