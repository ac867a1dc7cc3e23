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

Off the delivery path, the manager also compacts segment files that
expunges left sparse (``pillarbox.store.sqlite.compact``), a bounded amount
per run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillarbox.deliver.local import Failure, deliver_batch
from pillarbox.log import log_event
from pillarbox.queue.ipc import envelope_from_json, serve_requests
from pillarbox.store.base import Delivered, Envelope
from pillarbox.store.blobs import new_id, segment_separator, sync_file, write_segment
from pillarbox.store.sqlite.compact import Compaction, CompactionReport
from pillarbox.store.sqlite.delivery import SQLiteDelivery
from pillarbox.store.sqlite.store import SQLiteStore, is_full

BATCH = 500
POLL_SECONDS = 1.0
LEASE_SECONDS = 60.0
FIRST_RETRY = 300.0
MAX_RETRY = 4 * 3600.0
MAX_LIFETIME = 5 * 86400.0
COMPACT_SECONDS = 300.0        # how often to look for sparse segments
COMPACT_SOON = 5.0             # after our own collect_blobs, or when a run hit its bound

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


@dataclass(slots=True)
class Cycle:
    """What one commit of the fresh path did."""

    outcome: list[BaseException | None]      # per arrival: None if committed
    fresh: list[str]                         # entries it tried to deliver
    delivered: list[Delivered] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    delivery_error: BaseException | None = None


def socket_path(store: SQLiteStore) -> Path:
    return store.run_dir / "queue.sock"


class QueueManager:
    def __init__(self, store: SQLiteStore, *, delimiters: str, batch: int = BATCH) -> None:
        self.store = store
        self.delimiters = delimiters
        self.batch = batch
        self._fresh: list[str] = []
        self._intake: list[Arrival] = []
        self._busy = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._compact_due = time.monotonic() + COMPACT_SOON

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
        self._cycle()
        try:
            await arrival.done
        except Exception as exc:  # noqa: BLE001 - reported to the worker
            log_event(log, "enqueue failed", queue_id=blob_id, error=repr(exc),
                      level=logging.ERROR)
            return {"ok": False, "full": is_full(exc), "error": str(exc)}
        return {"ok": True}

    def _cycle(self) -> None:
        """Start the next commit, if none is running: take in, and deliver.

        One commit at a time.  It inserts what arrived while the previous one
        was committing (its small messages written into one segment file and
        fsync'd once) and, in the same transaction, delivers the entries the
        previous commit took in.  Batches grow with the load, and a message
        costs a share of two commits, with no polling.
        """
        if self._busy or not (self._intake or self._fresh):
            return
        batch, self._intake = self._intake, []
        fresh, self._fresh = self._fresh[: self.batch], self._fresh[self.batch :]
        self._busy = True
        loop = asyncio.get_running_loop()
        small = any(arrival.payload is not None for arrival in batch)
        segment_id = new_id() if small else ""
        segment_path = self.store.blobs.path(segment_id) if small else Path()
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

        def run(conn: sqlite3.Connection) -> Cycle:
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
            cycle = Cycle(outcome, fresh)
            if fresh:
                conn.execute("SAVEPOINT delivery")
                try:
                    cycle.delivered, cycle.failures = deliver_batch(
                        SQLiteDelivery(self.store, conn), fresh, self.delimiters
                    )
                except Exception as exc:  # noqa: BLE001 - transient: deferred below
                    conn.execute("ROLLBACK TO delivery")
                    cycle.delivery_error = exc
                conn.execute("RELEASE delivery")
            return cycle

        future = self.store.committer.submit(
            run, prepare=prepare if batch else None, dirs=tuple(dirs)
        )

        def finished(f: concurrent.futures.Future[Cycle]) -> None:
            loop.call_soon_threadsafe(self._cycled, batch, fresh, f)

        future.add_done_callback(finished)

    def _cycled(
        self, batch: list[Arrival], fresh: list[str], future: concurrent.futures.Future[Cycle]
    ) -> None:
        self._busy = False
        error = future.exception()
        if error is not None:
            # Nothing of this transaction happened.  The fresh entries keep
            # their lease and the poll delivers them when it runs out.
            outcome: list[BaseException | None] = [error] * len(batch)
            if fresh:
                log.warning("delivery of %d entries failed with the commit: %s", len(fresh), error)
        else:
            cycle = future.result()
            outcome = cycle.outcome
            if cycle.delivery_error is not None:
                log.warning("delivery batch failed, deferring %d entries: %s",
                            len(fresh), cycle.delivery_error)
                self._tasks.add(asyncio.ensure_future(
                    self._defer(fresh, f"451 4.3.0 {cycle.delivery_error}")))
            else:
                self._report(cycle.delivered, cycle.failures)
                if any(not f.permanent for f in cycle.failures):
                    # The fresh entries' lease keeps the poll away until this commits.
                    self._tasks.add(asyncio.ensure_future(self._defer_waiting(cycle.failures)))
        for arrival, exc in zip(batch, outcome):
            if exc is None:
                self._fresh.append(arrival.blob_id)
            if arrival.done.done():
                continue
            if exc is None:
                arrival.done.set_result(None)
            else:
                arrival.done.set_exception(exc)
        self._tasks = {t for t in self._tasks if not t.done()}
        self._cycle()

    # ------------------------------------------------------------------- loop

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    async def run(self) -> None:
        self._make_active_due()
        self._server = await serve_requests(socket_path(self.store), self.handle)
        poller = asyncio.create_task(self._poll())
        await self._stop.wait()
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
            if time.monotonic() >= self._compact_due:
                try:
                    await self.compact()
                except Exception:  # noqa: BLE001 - the space waits for the next run
                    log.exception("segment compaction failed")
            await asyncio.sleep(POLL_SECONDS)

    async def compact(self) -> CompactionReport | None:
        """One bounded run of segment compaction (``pillarbox.store.sqlite.compact``).

        Off the delivery path: planning, copying and fsyncing run on a
        thread; only the repointing of rows goes through the committer, as a
        job of its own between delivery commits.
        """
        store = self.store
        self._compact_due = time.monotonic() + COMPACT_SECONDS
        run = await asyncio.to_thread(Compaction.plan, store)
        if run is None:
            return None
        await asyncio.to_thread(run.write)
        try:
            await asyncio.wrap_future(store.committer.submit(run.repoint))
        except Exception:
            await asyncio.to_thread(run.abandon)
            raise
        report = await asyncio.to_thread(run.finish)
        if run.limited:
            self._compact_due = time.monotonic() + COMPACT_SOON
        log_event(log, "compacted", segments=report.segments, blobs=report.blobs,
                  freed=report.freed, written=report.written)
        return report

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
                store.committer.submit(
                    lambda conn: deliver_batch(SQLiteDelivery(store, conn), ids, self.delimiters)
                )
            )
        except Exception as exc:  # noqa: BLE001 - transient: defer the whole batch
            log.warning("delivery batch failed, deferring %d entries: %s", len(ids), exc)
            await self._defer(ids, f"451 4.3.0 {exc}")
            return
        self._report(delivered, failures)
        await self._defer_waiting(failures)   # before the poll could take them again

    async def _defer_waiting(self, failures: list[Failure]) -> None:
        """Defer the entries with a recipient that failed transiently (a full mailbox:
        it stays pending), with the same back-off as a failed batch."""
        waiting = {f.queue_id: f.reply for f in failures if not f.permanent}
        by_reply: dict[str, list[str]] = {}
        for queue_id, reply in waiting.items():
            by_reply.setdefault(reply, []).append(queue_id)
        for reply, ids in by_reply.items():
            await self._defer(ids, reply)

    def _report(self, delivered: list[Delivered], failures: list[Failure]) -> None:
        if delivered:
            # Wake the IDLE sessions of the INBOXes that got mail, in every worker.
            try:
                self.store.notifier.publish(self.store.inbox_ids({d.account for d in delivered}))
            except Exception:  # noqa: BLE001 - a hint only; the sessions' sweep catches up
                log.warning("announcing deliveries failed", exc_info=True)
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
        if failures and self.store.collect_blobs():
            self._compact_due = min(self._compact_due, time.monotonic() + COMPACT_SOON)

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
