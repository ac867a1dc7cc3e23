"""The queue manager: finds what is due and delivers it, in batches.

Like Postfix's qmgr it keeps only a bounded window of work in memory: it
reads at most ``BATCH`` due entries at a time, so a huge deferred queue
cannot exhaust it.  Workers wake it through a datagram socket in the data
directory after each commit; without wake-ups it still looks every second,
so a lost datagram delays mail by a second at most and never loses it.

Transient failures defer the entry with exponential back-off; entries older
than ``MAX_LIFETIME`` fail permanently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from pillarbox.deliver.local import deliver_batch
from pillarbox.log import log_event
from pillarbox.store.sqlite.store import SQLiteStore

BATCH = 500
POLL_SECONDS = 1.0
FIRST_RETRY = 300.0
MAX_RETRY = 4 * 3600.0
MAX_LIFETIME = 5 * 86400.0

log = logging.getLogger("pillarbox.queue")


def wakeup_path(store: SQLiteStore) -> Path:
    return store.run_dir / "queue.sock"


class Waker:
    """The workers' side of the wake-up channel: one datagram, fire and forget."""

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendto(b"!", self._path)

    def close(self) -> None:
        self._sock.close()


class QueueManager:
    def __init__(self, store: SQLiteStore, *, delimiters: str, batch: int = BATCH) -> None:
        self.store = store
        self.batch = batch
        self.delimiters = delimiters
        self._wake = asyncio.Event()
        self._sock: socket.socket | None = None
        self._stopping = False

    def listen(self) -> None:
        path = wakeup_path(self.store)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_datagram)

    def _on_datagram(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(64)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        self.listen()
        while not self._stopping:
            try:
                while await self.run_once():
                    pass
            except Exception:  # noqa: BLE001 - never let the manager die; retry next round
                log.exception("queue run failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()

    async def run_once(self) -> int:
        """Deliver one batch of due entries; return how many were taken."""
        now = time.time()
        rows = self.store.reader.execute(
            "SELECT id FROM queue WHERE state IN ('active', 'deferred') AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (now, self.batch),
        ).fetchall()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        store = self.store

        def job(conn):  # type: ignore[no-untyped-def]
            return deliver_batch(store, conn, ids, self.delimiters)

        try:
            delivered, failures = await asyncio.wrap_future(store.committer.submit(job))
        except Exception as exc:  # noqa: BLE001 - transient: defer the whole batch
            log.warning("delivery batch failed, deferring %d entries: %s", len(ids), exc)
            await self._defer(ids, f"451 4.3.0 {exc}")
            return 0
        for d in delivered:
            log_event(
                log, "delivered", queue_id=d.queue_id, to=d.recipient, account=d.account,
                mailbox=d.mailbox, uid=d.uid, status="sent",
            )
        for f in failures:
            log_event(
                log, "bounced" if f.permanent else "deferred", queue_id=f.queue_id,
                to=f.recipient, status="bounced" if f.permanent else "deferred", reply=f.reply,
                level=logging.WARNING,
            )
        store.collect_blobs() if failures else None
        return len(ids)

    async def _defer(self, ids: list[str], reply: str) -> None:
        now = time.time()

        def job(conn):  # type: ignore[no-untyped-def]
            for queue_id in ids:
                row = conn.execute(
                    "SELECT attempts, arrived FROM queue WHERE id = ?", (queue_id,)
                ).fetchone()
                if row is None:
                    continue
                attempts, arrived = row
                delay = min(FIRST_RETRY * (2**attempts), MAX_RETRY)
                state = "deferred"
                if now - arrived > MAX_LIFETIME:
                    state = "hold"
                conn.execute(
                    "UPDATE queue SET state = ?, attempts = attempts + 1, next_attempt = ?,"
                    " last_reply = ? WHERE id = ?",
                    (state, now + delay, reply, queue_id),
                )

        with contextlib.suppress(Exception):
            await asyncio.wrap_future(self.store.committer.submit(job))
