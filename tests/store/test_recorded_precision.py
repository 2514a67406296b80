"""Stores record the precision of their maps; a resumed run must use the same one."""

import h5py
import pytest
from store_helpers import ids, labels, meta

from xaibench.core.errors import StoreError
from xaibench.store import create_or_resume, open_store


def test_store_records_precision_and_refuses_to_resume_at_another(tmp_path):
    path = tmp_path / "s.h5"
    create_or_resume(path, meta(precision="bf16"), ids(), labels()).close()
    with open_store(path) as store:
        assert store.meta.precision == "bf16"
    with pytest.raises(StoreError, match='precision="bf16", but this run has precision="fp32"'):
        create_or_resume(path, meta(), ids(), labels())


def test_a_store_written_before_precision_was_recorded_reads_as_fp32(tmp_path):
    path = tmp_path / "old.h5"
    create_or_resume(path, meta(), ids(), labels()).close()
    with h5py.File(path, "r+") as f:
        del f.attrs["precision"]
    with open_store(path) as store:
        assert store.meta.precision == "fp32"
    create_or_resume(path, meta(), ids(), labels()).close()
