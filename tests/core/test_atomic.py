"""Atomic writes leave either the old file or the new one, and no temporary file."""

import io

import pytest

from xaibench.core.atomic import write_atomic, write_stream_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "table.csv"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old\n")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_stream_is_copied_in_chunks_and_a_failed_read_keeps_the_old_file(tmp_path):
    target = tmp_path / "member.bin"
    data = bytes(range(256)) * 40
    source = io.BytesIO(b"header" + data)
    source.read(6)  # the rest of the stream is written, from where it stands
    write_stream_atomic(target, source, chunk_bytes=1000)
    assert target.read_bytes() == data

    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() >= 1000:
                raise OSError("unexpected end of data")
            return super().read(size)

    with pytest.raises(OSError, match="unexpected end"):
        write_stream_atomic(target, Broken(b"x" * 5000), chunk_bytes=500)
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["member.bin"]
