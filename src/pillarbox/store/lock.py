"""The data directory has one owner: an exclusive lock on ``<data_dir>/lock``.

``pillarbox serve`` takes the lock before it reads or cleans anything in the
data directory (DESIGN.md, processes and cores), and holds it for the life of
the server: the file descriptor is inherited by every forked child, and an
``flock(2)`` lock belongs to the open file description, so it stays held
until the last process that shares it exits.  A second server on the same
directory fails at once with ``DataDirBusy``, naming the directory and the
PID of the holder, and changes nothing.

Why it matters: start-up cleans up (``SQLiteStore.collect_orphans`` removes
blob files that no row names: messages whose session died before its 250).
Against a live directory that would remove the blobs a running server has
written and is about to commit, which loses acknowledged mail.

The CLI works beside a running server without the lock (the store's own
transactions serialise it) and asks ``DataDirLock.holder()`` when it needs
to know whether a server is running.

The lock file holds the holder's PID as one decimal line, for people and
for the error message; the lock itself, not the file's content, is what
counts, so a stale PID after a crash does no harm.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from pillarbox.store.base import StoreError

LOCK_NAME = "lock"
_TRIES = 5


class DataDirBusy(StoreError):
    """Another process holds the data directory: the operator's doing, not a bug."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        if pid is not None and not _alive(pid):
            # The supervisor is gone and its children, which share the lock,
            # are still stopping (or were left behind where they cannot learn
            # of its death): "stop PID N" would send the operator nowhere.
            super().__init__(
                f"the data directory {data_dir} is still held by the processes of a "
                f"Pillarbox server whose supervisor (PID {pid}) has exited; they stop "
                f"within seconds (fuser -v {data_dir / LOCK_NAME} shows them)"
            )
            return
        holder = f"PID {pid}" if pid is not None else "a process whose PID is not known yet"
        super().__init__(
            f"the data directory {data_dir} is in use by another Pillarbox server "
            f"({holder}); stop it first, or give this server its own server.data_dir"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:    # another user's: there all the same
        return True
    return True


class DataDirLock:
    """The exclusive lock of one data directory.

    ``acquire()`` takes it (or raises ``DataDirBusy``); ``release()`` gives it
    up, and must only be called by the process that took it, never by a
    forked child: unlocking releases it for every process sharing the
    descriptor.  A child that merely exits keeps the lock held for the
    others.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock without waiting; create the directory if it is missing."""
        if self._fd is not None:
            return self
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            # A file where the directory should be: mkdir's "File exists"
            # would read as though all were well.
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.data_dir)
            ) from None
        # O_CLOEXEC: forked children share it (fork keeps descriptors), but a
        # program the server might exec does not.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # A few tries 20 ms apart: ``holder()`` of a CLI takes a shared lock
        # for an instant, which must not stop a server from starting.
        for attempt in range(_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if attempt == _TRIES - 1:
                    os.close(fd)
                    raise DataDirBusy(self.data_dir, self._read_pid()) from None
                time.sleep(0.02)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the taker only; see the class docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> int | None:
        """Whether a server runs on the directory: the PID holding the lock, else None.

        For a process that holds the lock itself, its own PID.  When the lock
        is held but the PID not yet written (the instant after another
        process took it), the answer is 0.
        """
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid = self._read_pid()
                    return pid if pid is not None else 0
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _read_pid(self) -> int | None:
        """The PID in the lock file; the holder writes it just after locking."""
        for _ in range(_TRIES):
            try:
                text = self.path.read_text(encoding="ascii", errors="replace").strip()
            except OSError:
                return None
            if text.isdigit():
                return int(text)
            time.sleep(0.02)
        return None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
