"""The local notification channel: "mailbox N changed", to every process.

A delivery by the queue manager, an IMAP write in one worker, an import by
the CLI: each must reach the IDLE sessions of every worker within a second
(DESIGN.md, processes and cores).  Each listening process binds a Unix
datagram socket in Linux's abstract namespace (no path-length limit, nothing
to clean up when the process dies) and, while it has a session in IDLE,
leaves a marker file named after it in ``<data_dir>/run/notify/``; a writer
sends one datagram, the ids of the changed mailboxes, to every marker's
socket.  A worker whose sessions are all between commands gets none: they
read their mailbox before their next answer anyway, and under a steady load
every write woke every worker for nothing.  A marker whose socket refuses
(its process is gone) is removed by the first writer that finds it.

Datagrams are hints, never the truth: a listener re-reads the mailbox from
the store.  A full socket buffer drops a datagram (the sender never waits);
listeners therefore also sweep their mailboxes now and then
(``pillarbox.access.imap.hub``), so a lost hint costs latency, not mail.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path

_MAX_IDS_PER_DATAGRAM = 4000


def _namespace(directory: Path) -> bytes:
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:20]
    return b"\0pillarbox/" + digest.encode() + b"/"


class Notifier:
    """Sends change hints to every listener of one data directory."""

    # The markers' directory is listed again when its mtime moves, and on every
    # publish while that mtime is this recent: a marker made within the same
    # tick of the file system's clock as the last listing leaves it unchanged.
    _RACY_NS = 2_000_000_000

    def __init__(self, run_dir: Path) -> None:
        self.directory = run_dir / "notify"
        self._path = str(self.directory)
        self._sock: socket.socket | None = None
        self._names: list[tuple[str, bytes]] = []   # (marker, socket address)
        self._listed = -1          # the directory's mtime when it was listed

    def _listeners(self) -> list[tuple[str, bytes]]:
        """The markers and their sockets, listed again only when the directory
        changed (a ``stat`` per publish instead of a ``listdir``)."""
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._listed or time.time_ns() - mtime < self._RACY_NS:
            try:
                names = os.listdir(self._path)
            except FileNotFoundError:
                return []
            prefix = _namespace(self.directory)
            self._names = [(name, prefix + name.encode()) for name in names]
            self._listed = mtime
        return self._names

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        return self._sock

    def publish(self, mailbox_ids: Iterable[int]) -> None:
        ids = sorted(set(mailbox_ids))
        if not ids:
            return
        names = self._listeners()
        if not names:
            return
        sock = self._socket()
        for start in range(0, len(ids), _MAX_IDS_PER_DATAGRAM):
            payload = " ".join(map(str, ids[start:start + _MAX_IDS_PER_DATAGRAM])).encode()
            for name, address in names:
                try:
                    sock.sendto(payload, address)
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        with contextlib.suppress(OSError):
                            os.unlink(self.directory / name)
                        self._listed = -1
                    # EAGAIN: that listener is congested; its sweep catches up.

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Listener:
    """This process's inbox of change hints; read it when ``fileno()`` is readable."""

    def __init__(self, run_dir: Path, *, advertised: bool = True) -> None:
        directory = run_dir / "notify"
        directory.mkdir(parents=True, exist_ok=True)
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.marker = directory / self.name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(_namespace(directory) + self.name.encode())
        self.sock.setblocking(False)
        self.advertised = False
        if advertised:
            self.advertise()

    def advertise(self) -> None:
        """Leave the marker: writers send here from their next publish on
        (its directory's mtime moves, which makes them list it again)."""
        if not self.advertised:
            self.marker.touch()
            self.advertised = True

    def withdraw(self) -> None:
        """Take the marker away: nothing here waits for hints now."""
        if self.advertised:
            with contextlib.suppress(OSError):
                os.unlink(self.marker)
            self.advertised = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> set[int]:
        """Every mailbox id waiting in the socket (empty when none)."""
        ids: set[int] = set()
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return ids
            for word in data.split():
                if word.isdigit():
                    ids.add(int(word))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.marker)
        self.sock.close()
