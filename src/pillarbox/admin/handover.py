"""Handing a submitted message to the queue: the running queue manager, or the store.

``pillarbox sendmail`` (and ``-bs``) end here with a finished blob and its
envelope, and exit 0 only once :func:`commit` returns: the entry is then
committed to the durable queue.  Why two ways, and what happens when the
first breaks off, is in ``pillarbox.admin.sendmail``'s docstring;
:func:`ensure_blob` says how a server starting at the same moment is kept
from removing the blob of a direct commit.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pillarbox.admin.submit import EX_NOPERM, EX_TEMPFAIL, SubmitError
from pillarbox.queue.ipc import enqueue_request, read_frame
from pillarbox.store.base import Envelope, StorageFull
from pillarbox.store.blobs import BlobWriter, new_id, sync_file, write_new
from pillarbox.store.sqlite.store import SQLiteStore

CONNECT_TIMEOUT = 5.0           # seconds to reach the queue manager's socket
ANSWER_TIMEOUT = 120.0          # seconds for its commit (group commit under load)
SETTLE_TIMEOUT = 30.0           # seconds to wait for a starting server's clean-up


@dataclass(frozen=True, slots=True)
class Queued:
    queue_id: str
    via: str                     # "queue manager" or "store"


async def commit(
    store: SQLiteStore, queue_id: str, writer: BlobWriter, envelope: Envelope, socket: Path
) -> Queued:
    """Make the message durable and queue it; return only once it is committed.

    The running queue manager takes it through its socket (it fsyncs, commits
    and delivers at once: ``pillarbox.queue.ipc``); with no server, or one
    that cannot take it, the entry is committed in the store directly
    (``Store.enqueue``: fsync of the blob and its directory, then the
    commit), and the manager delivers it when it polls or starts.  Raises
    ``SubmitError`` (EX_TEMPFAIL) when neither commits it.
    """
    try:
        reader, sock = await asyncio.wait_for(
            asyncio.open_unix_connection(str(socket)), CONNECT_TIMEOUT
        )
    except (OSError, asyncio.TimeoutError):
        keeper = _keeper(writer)
        with keeper:
            await _enqueue_directly(store, queue_id, writer, envelope)
            await ensure_blob(store, queue_id, keeper, socket)
        return Queued(queue_id, "store")
    try:
        small = writer.take_small()
        if small is None:
            writer.finish()
            content: bytes | BinaryIO = _keeper(writer)
        else:
            content = small
        answer = await _hand_over(reader, sock, queue_id, writer.path, writer.size, envelope,
                                  small)
    finally:
        sock.close()
    try:
        if answer is not None and answer.get("ok"):
            return Queued(queue_id, "queue manager")
        if answer is not None and answer.get("full"):
            writer.discard()
            raise SubmitError(f"the mail system is out of storage: {answer.get('error')}",
                              EX_TEMPFAIL)
        if answer is None:
            # Lost on the way: the manager may have committed it.  If not (or not
            # yet), commit a copy under a new id: a duplicate is allowed, a loss is not.
            if store.queue_get(queue_id) is not None:
                return Queued(queue_id, "queue manager")
            copy_id = new_id()
        else:
            copy_id = queue_id       # refused: certainly not committed, the id is free
        data = content if isinstance(content, bytes) else _read(content)
        try:
            if answer is not None and small is None:
                writer.path.unlink(missing_ok=True)   # rewritten under the same name
            copy = store.new_blob(copy_id)
            copy.write(data)
            copy.flush()
        except OSError as exc:
            raise SubmitError(f"cannot write the message: {exc}", EX_TEMPFAIL) from exc
        await _enqueue_directly(store, copy_id, copy, envelope)
        await ensure_blob(store, copy_id, data, socket)
        return Queued(copy_id, "store")
    finally:
        if not isinstance(content, bytes):
            content.close()


def _keeper(writer: BlobWriter) -> BinaryIO:
    """A reader of the finished blob file, opened before its commit (see ``ensure_blob``)."""
    try:
        writer.flush()
        return open(writer.path, "rb")
    except OSError as exc:
        writer.discard()
        raise SubmitError(f"cannot write the message: {exc}", EX_TEMPFAIL) from exc


def _read(f: BinaryIO) -> bytes:
    f.seek(0)
    return f.read()


async def ensure_blob(store: SQLiteStore, queue_id: str, content: bytes | BinaryIO,
                       socket: Path) -> None:
    """After a direct commit: the blob file is still there, or is written again.

    ``serve`` removes, at start and under the data directory's lock, every
    blob file that no row names (``SQLiteStore.collect_orphans``): one being
    written by this command at that moment goes too, and its row would then
    name a missing file.  Such a clean-up runs while its server holds the
    lock and is over once the server's queue manager answers (it is forked
    after).  So: if a server holds the lock, wait for its manager; then, if
    the file is gone, write it again from ``content`` (a reader opened before
    the commit keeps the bytes of an unlinked file).  A clean-up that starts
    after our commit sees our row and leaves the file alone.
    """
    from pillarbox.store.lock import DataDirLock

    lock = DataDirLock(store.data_dir)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while lock.holder() is not None and time.monotonic() < deadline:
        try:
            _, sock = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket)), CONNECT_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.1)
            continue
        sock.close()
        break
    location = store.blob_location(queue_id)
    if location is None or location[0].exists():
        return
    data = content if isinstance(content, bytes) else _read(content)
    try:
        write_new(location[0], data)
        sync_file(location[0].parent, os.O_DIRECTORY)
    except FileExistsError:
        pass


async def _hand_over(
    reader: asyncio.StreamReader, sock: asyncio.StreamWriter, queue_id: str, path: Path,
    size: int, envelope: Envelope, payload: bytes | None,
) -> dict[str, Any] | None:
    """The manager's answer to one ``enqueue`` request; None if none came."""
    sock.write(enqueue_request(1, queue_id, path, size, envelope, payload))
    try:
        await sock.drain()
        return await asyncio.wait_for(read_frame(reader), ANSWER_TIMEOUT)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None


async def _enqueue_directly(
    store: SQLiteStore, queue_id: str, writer: BlobWriter, envelope: Envelope
) -> None:
    try:
        await store.enqueue(queue_id, writer, envelope)
    except StorageFull as exc:
        raise SubmitError(f"the mail system is out of storage: {exc}", EX_TEMPFAIL) from exc
    except OSError as exc:
        writer.discard()
        status = EX_NOPERM if isinstance(exc, PermissionError) else EX_TEMPFAIL
        raise SubmitError(f"cannot queue the message: {exc}", status) from exc
    except Exception as exc:  # noqa: BLE001 - sqlite3 and the like: try again later
        raise SubmitError(f"cannot queue the message: {exc}", EX_TEMPFAIL) from exc
