"""The queue manager: takes in what workers received, and delivers it.

Two paths lead to delivery:

- **Fresh mail.**  Workers hand envelopes over through ``pillarbox.queue.ipc``.
  What arrives while one intake job commits forms the next job: its small
  messages written into one segment file and fsync'd once, its rows inserted;
  once committed, the ids join the next delivery batch, which the same
  committer thread runs in a following transaction.  Under load, one
  transaction carries new entries and the delivery of the previous ones, so a
  message costs a share of two commits and no polling.
- **The queue.**  Entries that the fast path could not finish (a restart, a
  transient failure, a retry that is due) are found by a poll every second.
  Like Postfix's qmgr it reads at most ``batch`` entries at a time, so a huge
  deferred queue cannot exhaust memory.

A fresh entry is written with its first attempt a lease in the future, so the
poll leaves it to the fast path; at start every active entry is made due, so
nothing waits for a lease that no one holds any more.  Transient failures
defer an entry with exponential back-off; after ``MAX_LIFETIME`` it is held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox.deliver.local import deliver_batch
from pillarbox.log import log_event
from pillarbox.queue.ipc import envelope_from_json, serve_requests
from pillarbox.store.base import Envelope
from pillarbox.store.blobs import new_id, segment_separator, sync_file, write_segment
from pillarbox.store.sqlite.store import SQLiteStore, is_full

BATCH = 500
POLL_SECONDS = 1.0
LEASE_SECONDS = 60.0
FIRST_RETRY = 300.0
MAX_RETRY = 4 * 3600.0
MAX_LIFETIME = 5 * 86400.0

log = logging.getLogger("pillarbox.queue")


@dataclass(slots=True)
class Arrival:
    """A message handed over by a worker, waiting for its commit."""

    blob_id: str
    path: Path
    size: int
    envelope: Envelope
    payload: bytes | None          # the whole blob, when the worker wrote no file
    done: asyncio.Future[None]


def socket_path(store: SQLiteStore) -> Path:
    return store.run_dir / "queue.sock"


class QueueManager:
    def __init__(self, store: SQLiteStore, *, delimiters: str, batch: int = BATCH) -> None:
        self.store = store
        self.delimiters = delimiters
        self.batch = batch
        self._fresh: list[str] = []
        self._intake: list[Arrival] = []
        self._intake_busy = False
        self._kick = asyncio.Event()
        self._stopping = False
        self._server: asyncio.AbstractServer | None = None

    # ----------------------------------------------------------------- intake

    async def handle(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Commit one handed-over message; answer only once it is durable."""
        if frame.get("op") != "enqueue":
            return {"ok": False, "error": f"unknown operation {frame.get('op')!r}"}
        blob_id = str(frame["blob"])
        path = Path(frame["path"])
        if path != self.store.blobs.path(blob_id):
            return {"ok": False, "error": "blob path outside the store"}
        size = int(frame["size"])
        payload: bytes | None = frame.get("payload", b"") if frame.get("inline") else None
        if payload is not None and len(payload) != size:
            return {"ok": False, "error": "payload size mismatch"}
        arrival = Arrival(
            blob_id, path, size, envelope_from_json(frame["envelope"]), payload,
            asyncio.get_running_loop().create_future(),
        )
        self._intake.append(arrival)
        self._take_in()
        try:
            await arrival.done
        except Exception as exc:  # noqa: BLE001 - reported to the worker
            log_event(log, "enqueue failed", queue_id=blob_id, error=repr(exc),
                      level=logging.ERROR)
            return {"ok": False, "full": is_full(exc), "error": str(exc)}
        self._fresh.append(blob_id)
        self._kick.set()
        return {"ok": True}

    def _take_in(self) -> None:
        """Hand what has arrived to the committer as one job, one at a time.

        While a job is being committed, new arrivals wait here and form the
        next one: the batch grows with the load.  The small messages of a job
        are written into one segment file, so a batch costs one file
        creation and one fsync, not one per message.
        """
        if self._intake_busy or not self._intake:
            return
        batch, self._intake = self._intake, []
        self._intake_busy = True
        loop = asyncio.get_running_loop()
        segment_id = new_id()
        segment_path = self.store.blobs.path(segment_id)
        parts: list[bytes] = []
        places: list[tuple[str, int] | None] = []
        offset = 0
        for arrival in batch:
            if arrival.payload is None:
                places.append(None)
                continue
            separator = segment_separator(arrival.blob_id, arrival.size)
            offset += len(separator)
            places.append((segment_id, offset))
            parts += (separator, arrival.payload)
            offset += arrival.size
        dirs = {a.path.parent for a in batch if a.payload is None}
        if parts:
            dirs.add(segment_path.parent)

        def prepare() -> None:
            if parts:
                write_segment(segment_path, parts)
            for arrival in batch:
                if arrival.payload is None:
                    sync_file(arrival.path)

        def run(conn: sqlite3.Connection) -> list[BaseException | None]:
            outcome: list[BaseException | None] = []
            for arrival, place in zip(batch, places):
                conn.execute("SAVEPOINT arrival")
                try:
                    self.store.insert_entry(
                        conn, arrival.blob_id, arrival.size, arrival.envelope,
                        time.time() + LEASE_SECONDS, place,
                    )
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO arrival")
                    outcome.append(exc)
                else:
                    outcome.append(None)
                conn.execute("RELEASE arrival")
            return outcome

        future = self.store.committer.submit(run, prepare=prepare, dirs=tuple(dirs))

        def finished(f: concurrent.futures.Future[list[BaseException | None]]) -> None:
            loop.call_soon_threadsafe(self._taken_in, batch, f)

        future.add_done_callback(finished)

    def _taken_in(
        self, batch: list[Arrival], future: concurrent.futures.Future[list[BaseException | None]]
    ) -> None:
        self._intake_busy = False
        error = future.exception()
        outcome = [error] * len(batch) if error is not None else future.result()
        for arrival, exc in zip(batch, outcome):
            if arrival.done.done():
                continue
            if exc is None:
                arrival.done.set_result(None)
            else:
                arrival.done.set_exception(exc)
        self._take_in()

    # ------------------------------------------------------------------- loop

    def stop(self) -> None:
        self._stopping = True
        self._kick.set()

    async def run(self) -> None:
        self._make_active_due()
        self._server = await serve_requests(socket_path(self.store), self.handle)
        poller = asyncio.create_task(self._poll())
        while not self._stopping:
            await self._kick.wait()
            self._kick.clear()
            while self._fresh:
                ids, self._fresh = self._fresh[: self.batch], self._fresh[self.batch :]
                await self.deliver(ids)
        self._server.close()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller

    def _make_active_due(self) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE queue SET next_attempt = ? WHERE state = 'active'", (time.time(),)
            )

    async def _poll(self) -> None:
        while not self._stopping:
            try:
                while await self.run_once():
                    pass
            except Exception:  # noqa: BLE001 - never let the manager die; retry next round
                log.exception("queue run failed; retrying")
            await asyncio.sleep(POLL_SECONDS)

    async def run_once(self) -> int:
        """Deliver one batch of due entries; return how many were taken."""
        rows = self.store.reader.execute(
            "SELECT id FROM queue WHERE state IN ('active', 'deferred') AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (time.time(), self.batch),
        ).fetchall()
        if rows:
            await self.deliver([r[0] for r in rows])
        return len(rows)

    async def deliver(self, ids: list[str]) -> None:
        store = self.store
        try:
            delivered, failures = await asyncio.wrap_future(
                store.committer.submit(lambda conn: deliver_batch(store, conn, ids, self.delimiters))
            )
        except Exception as exc:  # noqa: BLE001 - transient: defer the whole batch
            log.warning("delivery batch failed, deferring %d entries: %s", len(ids), exc)
            await self._defer(ids, f"451 4.3.0 {exc}")
            return
        for d in delivered:
            log_event(
                log, "delivered", queue_id=d.queue_id, from_=f"<{d.sender}>", to=d.recipient,
                account=d.account, mailbox=d.mailbox, uid=d.uid, size=d.size,
                delay=round(d.delay, 3), status="sent",
            )
        for f in failures:
            log_event(
                log, "bounced" if f.permanent else "deferred", queue_id=f.queue_id,
                to=f.recipient, status="bounced" if f.permanent else "deferred", reply=f.reply,
                level=logging.WARNING,
            )
        if failures:
            store.collect_blobs()

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
                state = "hold" if now - arrived > MAX_LIFETIME else "deferred"
                conn.execute(
                    "UPDATE queue SET state = ?, attempts = attempts + 1, next_attempt = ?,"
                    " last_reply = ? WHERE id = ?",
                    (state, now + delay, reply, queue_id),
                )

        with contextlib.suppress(Exception):
            await asyncio.wrap_future(self.store.committer.submit(job))
