"""Message blobs: written once, streamed, fsync'd with their directory, never changed.

A blob is the message as received, with our ``Received:`` field in front.  It
is shared by the queue entry and by every mailbox that holds the message
(single-instance storage), and removed when the last reference goes.

Layout: ``<data_dir>/blobs/<last two characters of the id>/<id>``.  The id
is time-ordered with random low bits, so its last characters spread blobs
evenly over 256 directories.  A person debugging can ``cat`` any message.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

_BUFFER = 65536


def new_id() -> str:
    """A queue/blob id: 13 hex digits of microseconds, 5 random hex digits.

    Sortable by arrival, unique across processes without coordination, and
    short enough to read out over the phone.
    """
    return f"{time.time_ns() // 1000:013X}{secrets.randbits(20):05X}"


class BlobStore:
    """The directory of blobs: paths, writers, removal and orphan collection."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id[-2:] / blob_id

    def ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.root / f"{i:02X}").mkdir(exist_ok=True)
        _fsync_dir(self.root)

    def writer(self, blob_id: str) -> BlobWriter:
        return BlobWriter(self.path(blob_id))

    def remove(self, blob_id: str) -> None:
        try:
            os.unlink(self.path(blob_id))
        except FileNotFoundError:
            pass

    def all_ids(self) -> set[str]:
        ids: set[str] = set()
        for shard in self.root.iterdir():
            if shard.is_dir():
                ids.update(p.name for p in shard.iterdir() if not p.name.startswith("."))
        return ids

    def open(self, blob_id: str) -> int:
        return os.open(self.path(blob_id), os.O_RDONLY)


class BlobWriter:
    """Streams one message into its blob with a bounded write buffer.

    ``write()`` may raise ``OSError`` (ENOSPC, EDQUOT …); the session turns
    that into 452 4.3.1.  ``sync()`` makes the data durable: fsync of the
    file, then of its directory (the durability contract of DESIGN.md), and
    runs in the group-commit thread, not in the event loop.
    """

    __slots__ = ("path", "_fd", "_buf", "size", "closed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self._buf: list[bytes] = []
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self._buf.append(data)
        self.size += len(data)
        if sum(map(len, self._buf)) >= _BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def sync(self) -> None:
        """Flush, fsync and close the file (not its directory: see ``sync_dirs``)."""
        self.flush()
        os.fsync(self._fd)
        os.close(self._fd)
        self.closed = True

    def finish(self) -> None:
        """Flush and close without fsync: another process makes it durable."""
        self.flush()
        os.close(self._fd)
        self.closed = True

    def discard(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                os.close(self._fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def sync_file(path: Path) -> None:
    """fsync a file written and closed by another process (fsync acts on the inode)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dirs(paths: set[Path]) -> None:
    """fsync each directory once, so new directory entries survive a power cut."""
    for d in paths:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
