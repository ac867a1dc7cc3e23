"""The hand-over from protocol workers to the queue manager.

With the embedded SQLite store, one process writes the queue: the queue
manager.  A worker streams a message into its blob, then sends the envelope
here over a Unix socket in the data directory; the manager makes the blob
durable (fsync of the file and its directory), commits the envelope together
with every other envelope that arrived meanwhile (group commit), and answers.
Only then does the worker say ``250``.  This is Postfix's smtpd → cleanup →
qmgr hand-over in one step, and it keeps SQLite's single write lock inside
one process, where it is never fought over (docs/architecture.md).

Framing: two 4-byte big-endian lengths, a JSON object, then that many bytes
of payload (a small message travels whole, so that no worker blocks on
creating its file).  Requests carry an ``id`` that the answer repeats, so a
worker can have many requests in flight on one connection.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from pillarbox.store.base import Envelope, EnvelopeRecipient, StorageFull

_HEADER = struct.Struct(">II")
MAX_FRAME = 16 * 1024 * 1024


class QueueUnavailable(Exception):
    """The queue manager cannot be reached: the session answers 451 4.3.0.

    Whether a message in flight was committed is then unknown, so its blob
    stays; if it has no row, it is collected at the next start.
    """


class QueueRefused(QueueUnavailable):
    """The queue manager answered that it did not commit the message."""


def encode(obj: dict[str, Any], payload: bytes = b"") -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return _HEADER.pack(len(data), len(payload)) + data + payload


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame; its payload, if any, under the key ``payload``."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    length, payload_length = _HEADER.unpack(header)
    if length > MAX_FRAME or payload_length > MAX_FRAME:
        raise ValueError(f"frame of {length}+{payload_length} bytes")
    frame: dict[str, Any] = json.loads(await reader.readexactly(length))
    if payload_length:
        frame["payload"] = await reader.readexactly(payload_length)
    return frame


class FrameWriter:
    """Frames for one stream, written together once per turn of the loop.

    Answers that one commit settles, or requests that one delivery batch
    starts, go out in one ``write(2)`` instead of one each, and the other
    side reads them in one wake-up.  ``flush()`` before closing the stream.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._parts: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self.flush)
        self._parts.append(frame)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            if not self.writer.is_closing():
                self.writer.write(data)


# The fields by name, read once: dataclasses.asdict() deep-copies every value
# through a recursive walk, which cost a worker 2 % of its CPU per message.
_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope) if f.name != "recipients")
_RECIPIENT_FIELDS = tuple(f.name for f in fields(EnvelopeRecipient))


def envelope_to_json(envelope: Envelope) -> dict[str, Any]:
    obj: dict[str, Any] = {name: getattr(envelope, name) for name in _ENVELOPE_FIELDS}
    obj["recipients"] = [{name: getattr(r, name) for name in _RECIPIENT_FIELDS}
                         for r in envelope.recipients]
    return obj


def envelope_from_json(obj: dict[str, Any]) -> Envelope:
    recipients = tuple(EnvelopeRecipient(**r) for r in obj.pop("recipients"))
    return Envelope(recipients=recipients, **obj)


def enqueue_request(request_id: int, blob_id: str, path: Path, size: int,
                    envelope: Envelope, payload: bytes | None = None) -> bytes:
    """The frame that hands one message to the queue manager (workers, sendmail)."""
    return encode({
        "id": request_id, "op": "enqueue", "blob": blob_id, "path": str(path),
        "size": size, "envelope": envelope_to_json(envelope), "inline": payload is not None,
    }, payload or b"")


class QueueClient:
    """A worker's connection to the queue manager; reconnects when it must."""

    def __init__(self, path: Path, *, connect_timeout: float = 15.0) -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._frames: FrameWriter | None = None       # ... its frames, once per turn
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.connect_timeout
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.path))
                    break
                except OSError:
                    # The manager is (re)starting: the supervisor brings it back.
                    if loop.time() > deadline:
                        raise QueueUnavailable(f"no queue manager at {self.path}") from None
                    await asyncio.sleep(0.1)
            self._writer = writer
            self._frames = FrameWriter(writer)
            self._reader_task = asyncio.create_task(self._read_answers(reader))
            return writer

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                future = self._pending.pop(frame["id"], None)
                if future is not None and not future.done():
                    future.set_result(frame)
        except (OSError, ValueError):
            pass
        finally:
            self._writer = None
            # Requests in flight are unknown: committed or not.  The session
            # answers 451, and the client's retry may duplicate a message,
            # which SMTP allows (RFC 5321 6.1); it never loses one.
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(QueueUnavailable("queue manager connection lost"))
            self._pending.clear()

    async def enqueue(
        self, blob_id: str, path: Path, size: int, envelope: Envelope,
        payload: bytes | None = None,
    ) -> None:
        """Hand a message over; ``payload`` is its whole blob when no file was written.

        The messages that sessions finish in one turn of the loop go to the
        manager in one write (``FrameWriter``), which it reads in one wake-up."""
        writer = await self._connect()
        frames = self._frames
        self._next += 1
        request_id = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = enqueue_request(request_id, blob_id, path, size, envelope, payload)
        if frames is not None and frames.writer is writer:
            frames.write(frame)
        else:
            writer.write(frame)
        answer = await asyncio.shield(future)
        if answer.get("ok"):
            return
        if answer.get("full"):
            raise StorageFull(answer.get("error", "storage full"))
        raise QueueRefused(answer.get("error", "queue manager refused"))

    async def close(self) -> None:
        if self._frames is not None:
            self._frames.flush()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_requests(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """The manager's side: one task per request, answers in any order."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out = FrameWriter(writer)

        async def answer(frame: dict[str, Any]) -> None:
            try:
                result = await handler(frame)
            except Exception as exc:  # noqa: BLE001 - reported to the worker, which answers 451
                result = {"ok": False, "error": repr(exc)}
            result["id"] = frame.get("id")
            out.write(encode(result))

        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                task = asyncio.create_task(answer(frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (OSError, ValueError, json.JSONDecodeError):
            pass
        except asyncio.CancelledError:
            return  # shutting down: the worker sees the connection close
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            out.flush()
            writer.close()

    path.unlink(missing_ok=True)
    return await asyncio.start_unix_server(connection, str(path))
