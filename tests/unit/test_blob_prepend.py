"""BlobWriter.prepend: a trace header known only at the end of DATA goes in
front of what was spooled, in memory or on disk, and nothing else changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pillarbox.store.blobs import BlobWriter


@pytest.mark.parametrize("size", [10, 65535, 65536, 300_000])
def test_prepend_puts_the_header_in_front(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    writer = BlobWriter(path)
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    for i in range(0, len(body), 4096):
        writer.write(body[i:i + 4096])
    writer.prepend(b"Authentication-Results: mx.test; none\r\n")
    expected = b"Authentication-Results: mx.test; none\r\n" + body
    assert writer.size == len(expected)
    assert writer.content() == expected
    assert writer.content(39) == body
    assert writer.content(0, limit=len(expected) - 1) is None
    small = writer.take_small()
    if small is None:
        writer.sync()
        assert path.read_bytes() == expected
        assert sorted(os.listdir(tmp_path)) == ["blob"]     # no .pre left behind
    else:
        assert small == expected
        assert not path.exists()


def test_writing_goes_on_after_a_prepend(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path / "blob")
    writer.write(b"a" * 70000)
    writer.prepend(b"H: 1\r\n")
    writer.write(b"tail")
    writer.sync()
    assert (tmp_path / "blob").read_bytes() == b"H: 1\r\n" + b"a" * 70000 + b"tail"


@pytest.mark.parametrize("size", [100, 70000])
def test_insert_below_the_first_line(tmp_path: Path, size: int) -> None:
    writer = BlobWriter(tmp_path / "blob")
    writer.write(b"Received: from x\r\n")
    writer.write(b"y" * size)
    writer.insert(18, b"Authentication-Results: mx.test; none\r\n")
    expected = b"Received: from x\r\nAuthentication-Results: mx.test; none\r\n" + b"y" * size
    assert writer.content() == expected
    with pytest.raises(ValueError):
        writer.insert(writer.size + 1, b"x")
    if writer.take_small() is None:
        writer.sync()
        assert (tmp_path / "blob").read_bytes() == expected
