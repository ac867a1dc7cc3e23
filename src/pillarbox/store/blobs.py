"""Message blobs: written once, streamed, fsync'd with their directory, never changed.

A blob is the message as received, with our ``Received:`` field in front.  It
is shared by the queue entry and by every mailbox that holds the message
(single-instance storage), and removed when the last reference goes.

Layout: ``<data_dir>/blobs/<XX>/<id>``, where ``XX`` is the 5th and 6th hex
digit of the id: the arrival time in units of 2^28 µs (about 4.5 minutes),
modulo 256.  Messages that arrive together share a directory, so a group
commit fsyncs one directory rather than one per message, and over a day the
256 directories fill evenly.  A person debugging can ``cat`` any message.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path

_BUFFER = 65536


def disk_full(exc: OSError) -> bool:
    """Whether writing failed for want of space (answered 452 4.3.1, not 451)."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def new_id() -> str:
    """A queue/blob id: 13 hex digits of microseconds, 5 random hex digits.

    Sortable by arrival, unique across processes without coordination, and
    short enough to read out over the phone.
    """
    return f"{time.time_ns() // 1000:013X}{secrets.randbits(20):05X}"


def shard(blob_id: str) -> str:
    """The directory of a blob (see the module docstring)."""
    return blob_id[4:6]


class BlobStore:
    """The directory of blobs: paths, writers, removal and orphan collection."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root) + "/"

    def path(self, blob_id: str) -> Path:
        return self.root / shard(blob_id) / blob_id

    def path_str(self, blob_id: str) -> str:
        """:meth:`path` as a string, made without pathlib (the read path of
        every FETCH that needs a message's octets)."""
        return self._prefix + shard(blob_id) + "/" + blob_id

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



class BlobWriter:
    """Streams one message into its blob through a bounded write buffer.

    Nothing touches the disk until the buffer first fills (64 KiB), so a small
    message costs no file creation in the event loop: ``take_small()`` hands
    its bytes to whoever makes it durable (the queue manager writes, fsyncs
    and commits it in its own threads).  A larger message is streamed into
    its file as it arrives, never held whole in memory.

    ``write()`` may raise ``OSError`` (ENOSPC, EDQUOT …); the session turns
    that into 452 4.3.1.  ``sync()`` makes the data durable: fsync of the
    file (its directory is synced once per group commit, see ``sync_dirs``).
    """

    __slots__ = ("path", "_fd", "_buf", "_buffered", "size", "closed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self._buf.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= _BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._fd is None:
            self._fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640
            )
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._buffered = 0
            _write_all(self._fd, data)

    def prepend(self, data: bytes) -> None:
        """Put ``data`` in front of what was written (see :meth:`insert`)."""
        self.insert(0, data)

    def insert(self, offset: int, data: bytes) -> None:
        """Put ``data`` at ``offset`` of what was written: a trace field known only
        at the end of DATA (``Authentication-Results:``, ``DKIM-Signature:``),
        below our ``Received:`` line.

        A message still in the buffer costs a join.  One already in its file
        is copied around ``data`` into a new file by the kernel
        (``copy_file_range``), which then takes the blob's name; nothing was
        acknowledged yet, so nothing depends on the old file.
        """
        if not 0 <= offset <= self.size:
            raise ValueError(f"offset {offset} outside the {self.size} octets written")
        if self._fd is None:
            whole = b"".join(self._buf)
            self._buf[:] = [whole[:offset], data, whole[offset:]]
            self._buffered += len(data)
            self.size += len(data)
            return
        self.flush()
        tmp = self.path.with_name(self.path.name + ".pre")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            self._copy(fd, 0, offset)
            _write_all(fd, data)
            self._copy(fd, offset, self.size - offset)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        self.size += len(data)

    def _copy(self, fd: int, offset: int, length: int) -> None:
        """Append ``length`` octets of our file from ``offset`` to ``fd``."""
        while length > 0:
            n = os.copy_file_range(self._fd, fd, length, offset, None)  # type: ignore[arg-type]
            if n <= 0:
                raise OSError(f"short copy of {self.path}")
            offset += n
            length -= n

    def content(self, start: int = 0, limit: int = 1 << 62) -> bytes | None:
        """The bytes written from ``start`` on, or None when more than ``limit``
        (a check that needs the message whole, such as DKIM's, reads it here)."""
        if self.size - start > limit:
            return None
        if self._fd is None:
            return b"".join(self._buf)[start:]
        self.flush()
        return os.pread(self._fd, self.size - start, start)

    def take_small(self) -> bytes | None:
        """The whole message if it never left the buffer (no file exists), else None."""
        if self._fd is not None:
            return None
        data = b"".join(self._buf)
        self._buf.clear()
        self._buffered = 0
        self.closed = True
        return data

    def sync(self) -> None:
        """Flush, fsync and close the file."""
        self.flush()
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self.closed = True

    def finish(self) -> None:
        """Flush and close without fsync: another process makes it durable."""
        self.flush()
        assert self._fd is not None
        os.close(self._fd)
        self.closed = True

    def discard(self) -> None:
        self._buf.clear()
        if self._fd is None:
            self.closed = True
            return
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


def segment_separator(blob_id: str, size: int) -> bytes:
    """The line in front of each message in a segment file, for people reading it."""
    return f"=== pillarbox blob {blob_id} size {size} ===\r\n".encode()


def write_segment(path: Path, parts: list[bytes]) -> None:
    """Create a segment file from ``parts`` and fsync it (one file per group commit)."""
    write_new(path, b"".join(parts))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data`` and fsync it: a small blob handed over whole."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def sync_file(path: Path, flags: int = 0) -> None:
    """fsync a file (or, with O_DIRECTORY, a directory) by path.

    fsync acts on the inode, so this makes durable what another process
    wrote and closed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dirs(paths: set[Path]) -> None:
    """fsync each directory once, so new directory entries survive a power cut."""
    for d in paths:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    sync_file(path, os.O_DIRECTORY)
