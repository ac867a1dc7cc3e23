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
  transient failure, a retry that is due) are found by a poll every second
  (at once when ``pillarbox queue retry`` wakes it).  Like Postfix's qmgr it
  holds only a bounded window of them in memory (``pillarbox.queue.dispatch``),
  so a deferred queue of any length neither exhausts memory nor slows intake.

Each delivery transaction delivers the local recipients
(``pillarbox.deliver.local``) and hands the others, grouped by destination
domain, to remote delivery (``RemoteDelivery``, the contract of
``pillarbox.deliver.outbound``).  Remote attempts run concurrently, each as
its own task; their outcomes are recorded, with the reports senders asked
for, by ``pillarbox.queue.ledger``, which also retries, expires and warns on
the schedule of ``pillarbox.queue.schedule``.  Outcomes ride the fresh
path's next commit, with the arrivals and deliveries of that moment: one
commit, not one per outcome, and nothing is done about an outcome (a
report, a finished entry's blob) before that commit.  Without
remote delivery (``remote=None``) remote recipients wait, deferred with a
reply that says so, until they expire.

A fresh entry is written with its first attempt a lease in the future, so the
poll leaves it to the fast path; an entry with remote attempts under way is
leased for longer; at start every active entry is made due, so nothing waits
for a lease that no one holds any more.

Off the delivery path, the manager also compacts segment files that
expunges left sparse (``pillarbox.store.sqlite.compact``), a bounded amount
per run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pillarbox.deliver.local import Failure, Handoff, deliver_batch
from pillarbox.deliver.outbound import Delivery, OutboundMessage, OutboundRecipient, Outcome
from pillarbox.deliver.recipients import Verdict, resolve
from pillarbox.log import log_event
from pillarbox.queue.dispatch import Dispatcher, Unit
from pillarbox.queue.ipc import envelope_from_json, serve_requests
from pillarbox.queue.ledger import LEASE_SECONDS, Ledger, Round
from pillarbox.queue.schedule import Schedule
from pillarbox.store.base import Delivered, Envelope, QueueEntry
from pillarbox.store.blobs import new_id, segment_separator, sync_file, write_segment
from pillarbox.store.sqlite.compact import Compaction, CompactionReport
from pillarbox.store.sqlite.delivery import SQLiteDelivery
from pillarbox.store.sqlite.queue import SQLiteQueueWork
from pillarbox.store.sqlite.store import SQLiteStore, is_full

if TYPE_CHECKING:
    from pillarbox.config import Config

BATCH = 500
POLL_SECONDS = 1.0
REMOTE_LEASE = 3600.0          # an entry with remote attempts under way
ATTEMPT_TIMEOUT = 3000.0       # a remote attempt that takes longer is abandoned (deferred)
COMPACT_SECONDS = 300.0        # how often to look for sparse segments
COMPACT_SOON = 5.0             # after our own collect_blobs, or when a run hit its bound
COLLECT_SECONDS = 1.0          # finished entries' blobs are collected at most this often

REMOTE_DISABLED = ("451 4.3.2 Remote delivery is not enabled on this server;"
                   " the message waits in the queue")
CONGESTED = "451 4.4.5 Too many messages are waiting for {domain}; trying again later"
# A destination that no server of answered (DNS failure, every MX refused or
# silent, 4xx greetings) is not tried again for the next messages for a while,
# as Postfix suspends a dead destination: each waits for its next retry with
# that reply instead of every queued message opening connections at once.
SUSPEND_SECONDS = 30.0         # at most; half the first retry interval if shorter
SUSPENDED = " (not tried: delivery to {domain} is suspended for a while after that failure)"

log = logging.getLogger("pillarbox.queue")


class RemoteDelivery(Protocol):
    """What the manager needs of remote delivery (``pillarbox.deliver.remote``)."""

    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery: ...


@dataclass(slots=True)
class Arrival:
    """A message handed over by a worker, waiting for its commit."""

    blob_id: str
    path: Path | None              # the worker's file; None when it wrote none
    size: int
    envelope: Envelope
    payload: bytes | None          # the whole blob, when the worker wrote no file
    done: asyncio.Future[None]


@dataclass(slots=True)
class Attempt:
    """What one delivery transaction did: local results, remote work, bookkeeping."""

    delivered: list[Delivered] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    ledger: Round = field(default_factory=Round)


@dataclass(slots=True)
class Cycle:
    """What one commit of the fresh path did."""

    outcome: list[BaseException | None]      # per arrival: None if committed
    fresh: list[str]                         # entries it tried to deliver
    attempt: Attempt | None = None
    delivery_error: BaseException | None = None
    recorded: Round = field(default_factory=Round)   # what the remote outcomes did
    unrecorded: list[tuple[Unit, BaseException]] = field(default_factory=list)


@dataclass(slots=True)
class Record:
    """A remote attempt's outcomes, waiting for the next commit."""

    unit: Unit
    outcomes: tuple[Outcome, ...]
    last: bool                               # the entry's last outstanding unit


def socket_path(store: SQLiteStore) -> Path:
    return store.run_dir / "queue.sock"


def local_postmaster(store: SQLiteStore, hostname: str, delimiters: str) -> str:
    """Where reports that cannot be delivered go when ``queue.postmaster`` is not set:
    the postmaster of the server's own name if that resolves locally (to an account,
    or an alias that forwards elsewhere: delivery follows it), else of the first
    local domain whose postmaster does (as RCPT TO:<Postmaster> is routed,
    RFC 5321 4.5.1)."""
    directory = store.directory()
    for domain in [hostname] + [d[0] for d in store.list_domains()]:
        verdict = resolve(directory, "postmaster", domain, delimiters).verdict
        if verdict is Verdict.LOCAL or verdict is Verdict.FORWARD:
            return f"postmaster@{domain}"
    return f"postmaster@{hostname}"


class QueueManager:
    def __init__(
        self, store: SQLiteStore, *, delimiters: str, batch: int = BATCH,
        remote: RemoteDelivery | None = None, schedule: Schedule | None = None,
        hostname: str = "localhost", postmaster: str = "", active_limit: int = 10000,
        concurrency: int = 100, destination_concurrency: int = 20,
        return_path: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.delimiters = delimiters
        self.batch = batch
        self.remote = remote
        self.schedule = schedule or Schedule()
        self.hostname = hostname
        self._postmaster = postmaster
        self.ledger = Ledger(self.schedule, hostname, postmaster or f"postmaster@{hostname}",
                             return_path=return_path, delimiters=delimiters)
        self.dispatcher = Dispatcher(
            self._attempt_remote, concurrency=concurrency,
            destination_concurrency=destination_concurrency, active_limit=active_limit,
        )
        # domain -> (until, reply, status): the destination's last failure (SUSPENDED)
        self._suspended: dict[str, tuple[float, str, str]] = {}
        self._suspend_for = min(SUSPEND_SECONDS, self.schedule.first_retry / 2)
        self._fresh: list[str] = []
        self._intake: list[Arrival] = []
        self._records: list[Record] = []
        self._busy = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._compact_due = time.monotonic() + COMPACT_SOON
        self._collect_pending = False
        self.collect_delay = COLLECT_SECONDS

    @classmethod
    def from_config(cls, store: SQLiteStore, config: Config,
                    remote: RemoteDelivery | None = None,
                    return_path: Callable[[str], str] | None = None) -> QueueManager:
        q = config.queue
        return cls(
            store, delimiters=config.delivery.recipient_delimiter, batch=q.delivery_batch,
            remote=remote,
            schedule=Schedule(q.retry_first, q.retry_max, q.lifetime, q.delay_warning),
            hostname=config.server.hostname, postmaster=q.postmaster,
            active_limit=q.active_limit, concurrency=q.concurrency,
            destination_concurrency=q.destination_concurrency, return_path=return_path,
        )

    # ----------------------------------------------------------------- intake

    async def handle(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Commit one handed-over message; answer only once it is durable."""
        if frame.get("op") == "wake":
            # ``pillarbox queue retry``/``release``: entries were made due.
            self._wake.set()
            return {"ok": True}
        if frame.get("op") != "enqueue":
            return {"ok": False, "error": f"unknown operation {frame.get('op')!r}"}
        blob_id = str(frame["blob"])
        # Compared as text: a Path made and compared per message was a tenth of
        # the intake's CPU here.
        if frame["path"] != self.store.blobs.path_str(blob_id):
            return {"ok": False, "error": "blob path outside the store"}
        size = int(frame["size"])
        payload: bytes | None = frame.get("payload", b"") if frame.get("inline") else None
        if payload is not None and len(payload) != size:
            return {"ok": False, "error": "payload size mismatch"}
        arrival = Arrival(
            blob_id, None if payload is not None else Path(frame["path"]), size,
            envelope_from_json(frame["envelope"]), payload,
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
        """Start the next commit, if none is running: take in, record, and deliver.

        One commit at a time.  It inserts what arrived while the previous one
        was committing (its small messages written into one segment file and
        fsync'd once), records the remote outcomes that came in meanwhile and,
        in the same transaction, delivers the entries the previous commit took
        in.  Batches grow with the load, and a message costs a share of three
        commits, with no polling.
        """
        if self._busy or not (self._intake or self._fresh or self._records):
            return
        batch, self._intake = self._intake, []
        records, self._records = self._records, []
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
        dirs = {a.path.parent for a in batch if a.path is not None}
        if parts:
            dirs.add(segment_path.parent)

        def prepare() -> None:
            if parts:
                write_segment(segment_path, parts)
            for arrival in batch:
                if arrival.path is not None:
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
            if records:
                self._record_in(conn, records, cycle)
            if fresh:
                conn.execute("SAVEPOINT delivery")
                try:
                    cycle.attempt = self._deliver_job(conn, fresh, polled=False, crowded=frozenset())
                except Exception as exc:  # noqa: BLE001 - transient: deferred below
                    conn.execute("ROLLBACK TO delivery")
                    cycle.delivery_error = exc
                conn.execute("RELEASE delivery")
            return cycle

        future = self.store.committer.submit(
            run, prepare=prepare if batch else None, dirs=tuple(dirs)
        )

        def finished(f: concurrent.futures.Future[Cycle]) -> None:
            loop.call_soon_threadsafe(self._cycled, batch, fresh, records, f)

        future.add_done_callback(finished)

    def _record_in(self, conn: sqlite3.Connection, records: list[Record], cycle: Cycle) -> None:
        """The remote outcomes, each in a savepoint of the cycle's transaction (on
        the committer's thread); an entry's later records follow its earlier ones."""
        work = SQLiteQueueWork(self.store, conn)
        now = time.time()
        for record in records:
            conn.execute("SAVEPOINT record")
            try:
                self.ledger.apply(work, record.unit.message.queue_id, record.outcomes, now,
                                  cycle.recorded, last=record.last)
            except Exception as exc:  # noqa: BLE001 - the lease runs out and the poll retries
                conn.execute("ROLLBACK TO record")
                cycle.unrecorded.append((record.unit, exc))
            conn.execute("RELEASE record")

    def _cycled(
        self, batch: list[Arrival], fresh: list[str], records: list[Record],
        future: concurrent.futures.Future[Cycle],
    ) -> None:
        # Still busy while the results are handed out: what they add (reports,
        # the fresh ids) waits in the lists for the next commit, started last.
        try:
            self._settle_cycle(batch, fresh, records, future)
        finally:
            self._busy = False
            self._cycle()

    def _settle_cycle(
        self, batch: list[Arrival], fresh: list[str], records: list[Record],
        future: concurrent.futures.Future[Cycle],
    ) -> None:
        error = future.exception()
        if error is not None:
            # Nothing of this transaction happened.  The fresh entries keep
            # their lease and the poll delivers them when it runs out; so do
            # the entries whose outcomes were not recorded.
            outcome: list[BaseException | None] = [error] * len(batch)
            if fresh:
                log.warning("delivery of %d entries failed with the commit: %s", len(fresh), error)
            for record in records:
                self._unrecorded(record.unit, error)
        else:
            cycle = future.result()
            outcome = cycle.outcome
            for unit, failure in cycle.unrecorded:
                self._unrecorded(unit, failure)
            self._booked(cycle.recorded)
            if cycle.delivery_error is not None:
                log.warning("delivery batch failed, deferring %d entries: %s",
                            len(fresh), cycle.delivery_error)
                self._spawn(self._defer(fresh, f"451 4.3.0 {cycle.delivery_error}"))
            elif cycle.attempt is not None:
                self._attempted(cycle.attempt)
        for arrival, exc in zip(batch, outcome):
            if exc is None:
                self._fresh.append(arrival.blob_id)
            if arrival.done.done():
                continue
            if exc is None:
                arrival.done.set_result(None)
            else:
                arrival.done.set_exception(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------- delivery

    def _deliver_job(self, conn: sqlite3.Connection, ids: list[str], *, polled: bool,
                     crowded: frozenset[str]) -> Attempt:
        """One delivery transaction (on the committer's thread): local recipients,
        remote recipients grouped into units, bookkeeping of what is complete.

        Recipients at ``crowded`` domains (from the poll: the window already holds
        enough of theirs) are not tried: the entry is deferred here and now, saying why
        (4.4.5, system congestion, RFC 3463).
        """
        now = time.time()
        handoff = Handoff()
        attempt = Attempt()
        attempt.delivered, attempt.failures = deliver_batch(
            SQLiteDelivery(self.store, conn), ids, self.delimiters, handoff
        )
        if not handoff.kept:
            return attempt
        work = SQLiteQueueWork(self.store, conn)
        entries = work.entries(sorted(handoff.kept))
        happened: dict[str, list[tuple[int, str, str]]] = {}
        for e in handoff.events:
            happened.setdefault(e.queue_id, []).append((e.idx, e.action, e.reply))
        remote: dict[str, dict[str, list[int]]] = {}
        for qid, idx, address in handoff.remote:
            domain = address.rpartition("@")[2].lower()
            remote.setdefault(qid, {}).setdefault(domain, []).append(idx)
        out = attempt.ledger
        leased: list[str] = []
        for qid in sorted(handoff.kept):
            entry = entries.get(qid)
            if entry is None:
                continue
            if qid in happened:
                self.ledger.local_events(work, entry, happened[qid], now, out)
            domains = remote.get(qid, {})
            units = []
            waits: str | None = None
            for domain, idxs in domains.items():
                if self.remote is None:
                    for idx in idxs:
                        work.settle(qid, idx, "pending", REMOTE_DISABLED, "4.3.2", None, now)
                elif domain in crowded:
                    # Not tried: the recipients keep their last real reply (an expiry
                    # report quotes it); the entry says why it waits.
                    waits = CONGESTED.format(domain=domain)
                else:
                    units.append(self._unit(entry, domain, idxs, polled))
            if units:
                # (The poll never reads an entry the window still holds: run_once.)
                attempt.units += units
                leased.append(qid)
            else:
                self.ledger.end_round(work, qid, now, out, waits)
        work.lease(leased, now + REMOTE_LEASE)
        return attempt

    def _unit(self, entry: QueueEntry, domain: str, idxs: list[int], polled: bool) -> Unit:
        wanted = set(idxs)
        message = OutboundMessage(
            queue_id=entry.id,
            reverse_path=entry.reverse_path,
            recipients=tuple(
                OutboundRecipient(r.idx, r.address, r.notify, r.orcpt)
                for r in entry.recipients if r.idx in wanted
            ),
            size=entry.size,
            open_body=functools.partial(self.store.open_message, entry.id),
            body=entry.body,
            smtputf8=entry.smtputf8,
            dsn_ret=entry.dsn_ret,
            dsn_envid=entry.dsn_envid,
            requiretls=entry.requiretls,
            tls_required_no=entry.tls_required_no,
        )
        return Unit(domain, message, polled)

    def _attempted(self, attempt: Attempt) -> None:
        """On the loop, after a delivery transaction committed."""
        self._announce(attempt.delivered, attempt.failures)
        self._booked(attempt.ledger)
        if attempt.units:
            self.dispatcher.admit(attempt.units)

    def _booked(self, out: Round) -> None:
        for fields in out.log:
            rest: dict[str, Any] = dict(fields)
            event = str(rest.pop("event"))
            log_event(log, event, **rest)
        if out.reports:
            self._fresh += out.reports   # the fast path delivers the reports
            self._cycle()
        if out.finished:
            self._collect_soon()

    # ----------------------------------------------------------------- remote

    async def _attempt_remote(self, unit: Unit) -> None:
        """One remote attempt, run by the dispatcher; its outcome recorded."""
        if self.store.queue_state(unit.message.queue_id) in (None, "hold"):
            # Deleted, bounced or held since it was read: nothing to try.  A held
            # entry waits for ``queue release``, which makes it due.
            self.dispatcher.done(unit)
            return
        assert self.remote is not None
        started = time.monotonic()
        # Messages with a TLS requirement of their own (REQUIRETLS, TLS-Required: No)
        # are judged by it, neither suspended nor suspending.
        plain = not (unit.message.requiretls or unit.message.tls_required_no)
        held = self._suspended.get(unit.domain) if plain else None
        if held is not None and held[0] > started:
            outcomes = self._all_deferred(
                unit, held[1] + SUSPENDED.format(domain=unit.domain), held[2])
            self._log_remote(unit, Delivery(outcomes), outcomes, 0.0)
            self._record(unit, outcomes)
            return
        try:
            # (A timeout scope, not wait_for: no second task per attempt.)
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                delivery = await self.remote.deliver(unit.domain, unit.message)
            outcomes = self._checked(unit, delivery)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            outcomes = self._all_deferred(
                unit, f"451 4.4.1 No outcome from {unit.domain} within {ATTEMPT_TIMEOUT:.0f} s",
                "4.4.1")
            delivery = Delivery(outcomes)
        except Exception as exc:  # noqa: BLE001 - our fault; the recipients wait for a retry
            plain = False          # not the destination's failure: nothing to suspend
            log.exception("remote delivery to %s failed for %s", unit.domain,
                          unit.message.queue_id)
            outcomes = self._all_deferred(
                unit, f"451 4.3.0 Remote delivery failed here (a bug): {exc!r}", "4.3.0")
            delivery = Delivery(outcomes)
        self._log_remote(unit, delivery, outcomes, time.monotonic() - started)
        if plain:
            self._suspend_or_resume(unit.domain, outcomes)
        self._record(unit, outcomes)

    def _suspend_or_resume(self, domain: str, outcomes: tuple[Outcome, ...]) -> None:
        """Suspend ``domain`` if no server of it answered for any recipient; a
        server that answered (whatever it said) ends a suspension."""
        if outcomes and all(o.result == "deferred" and o.remote_mta is None for o in outcomes):
            now = time.monotonic()
            if len(self._suspended) > 10000:      # bounded: the expired ones go first
                self._suspended = {d: v for d, v in self._suspended.items() if v[0] > now}
            first = outcomes[0]
            self._suspended[domain] = (now + self._suspend_for, first.reply, first.status)
        else:
            self._suspended.pop(domain, None)

    @staticmethod
    def _all_deferred(unit: Unit, reply: str, status: str) -> tuple[Outcome, ...]:
        return tuple(Outcome(r.idx, "deferred", reply, status) for r in unit.message.recipients)

    @staticmethod
    def _checked(unit: Unit, delivery: Delivery) -> tuple[Outcome, ...]:
        """One outcome per recipient of the unit: unknown ones dropped, missing ones
        deferred (remote delivery's fault, said so in the reply)."""
        asked = {r.idx for r in unit.message.recipients}
        seen: dict[int, Outcome] = {}
        for o in delivery.outcomes:
            if o.idx in asked and o.idx not in seen and o.result in (
                    "delivered", "relayed", "deferred", "failed"):
                seen[o.idx] = o
            else:
                log.error("remote delivery gave a stray outcome for %s: %r",
                          unit.message.queue_id, o)
        for idx in asked - seen.keys():
            seen[idx] = Outcome(idx, "deferred",
                                "451 4.3.0 Remote delivery reported no outcome", "4.3.0")
        return tuple(seen[r.idx] for r in unit.message.recipients)

    def _record(self, unit: Unit, outcomes: tuple[Outcome, ...]) -> None:
        """Have a unit's outcomes applied by the next commit (``_cycle``), with its
        report and, for the entry's last unit, the end of its round.  The unit's
        slot is free at once: it waits for no connection."""
        self._records.append(Record(unit, outcomes, self.dispatcher.done(unit)))
        self._cycle()

    @staticmethod
    def _unrecorded(unit: Unit, exc: BaseException) -> None:
        log_event(log, "recording the outcome failed", queue_id=unit.message.queue_id,
                  domain=unit.domain, error=repr(exc), level=logging.ERROR)

    def _log_remote(self, unit: Unit, delivery: Delivery, outcomes: tuple[Outcome, ...],
                    seconds: float) -> None:
        by_idx = {r.idx: r.address for r in unit.message.recipients}
        for o in outcomes:
            status = {"delivered": "sent", "relayed": "sent", "failed": "bounced",
                      "deferred": "deferred"}[o.result]
            log_event(
                log, o.result, queue_id=unit.message.queue_id,
                from_=f"<{unit.message.reverse_path}>", to=by_idx.get(o.idx),
                relay=o.remote_mta, tls=delivery.tls, dsn=o.status, status=status,
                reply=o.reply, seconds=round(seconds, 3),
                level=logging.INFO if o.result in ("delivered", "relayed") else logging.WARNING,
            )

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no commit, remote attempt or follow-up job is under way (tests,
        tools); the fresh path's reports are delivered too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._busy or self._fresh or self._intake or self._records
               or not self.dispatcher.idle
               or any(not t.done() for t in self._tasks)):
            if loop.time() > deadline:
                raise TimeoutError("the queue manager did not settle")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------- loop

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        if not self._postmaster:
            self.ledger.postmaster = local_postmaster(self.store, self.hostname, self.delimiters)
        self._make_active_due()
        self._server = await serve_requests(socket_path(self.store), self.handle)
        poller = asyncio.create_task(self._poll())
        await self._stop.wait()
        self._server.close()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await self.dispatcher.close()
        for task in list(self._tasks):
            task.cancel()

    def _make_active_due(self) -> None:
        self.store.make_active_due(time.time())

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()

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
        """Deliver one batch of due entries; return how many were taken.

        At most the room left in the window: entries waiting for remote
        attempts stay in memory until their attempts are done.
        """
        room = min(self.batch, self.dispatcher.room())
        if room <= 0:
            return 0
        ids = [i for i in self.store.queue_due(time.time(), room)
               if not self.dispatcher.holds(i)]
        if ids:
            await self.deliver(ids)
        return len(ids)

    async def deliver(self, ids: list[str]) -> None:
        store = self.store
        crowded = self.dispatcher.crowded_domains()
        try:
            attempt: Attempt = await asyncio.wrap_future(store.committer.submit(
                lambda conn: self._deliver_job(conn, ids, polled=True, crowded=crowded)
            ))
        except Exception as exc:  # noqa: BLE001 - transient: defer the whole batch
            log.warning("delivery batch failed, deferring %d entries: %s", len(ids), exc)
            await self._defer(ids, f"451 4.3.0 {exc}")
            return
        self._attempted(attempt)

    def _announce(self, delivered: list[Delivered], failures: list[Failure]) -> None:
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
        if any(f.permanent for f in failures):
            self._collect_soon()

    def _collect_soon(self) -> None:
        """Remove the blobs of finished entries, at most once per ``COLLECT_SECONDS``
        (``collect_blobs`` scans the blob table), off the loop."""
        if self._collect_pending:
            return
        self._collect_pending = True

        async def collect() -> None:
            await asyncio.sleep(self.collect_delay)
            self._collect_pending = False
            try:
                if await asyncio.to_thread(self.store.collect_blobs):
                    self._compact_due = min(self._compact_due, time.monotonic() + COMPACT_SOON)
            except Exception:  # noqa: BLE001 - collected next time
                log.warning("collecting blobs failed", exc_info=True)

        self._spawn(collect())

    async def _defer(self, ids: list[str], reply: str) -> None:
        """Defer whole entries after a delivery transaction failed (a transient error)."""
        schedule = self.schedule

        def job(conn: sqlite3.Connection) -> None:
            now = time.time()
            work = SQLiteQueueWork(self.store, conn)
            for entry in work.entries(ids).values():
                work.defer(entry.id,
                           schedule.next_attempt(entry.attempts + 1, now, entry.arrived), reply)

        with contextlib.suppress(Exception):
            await asyncio.wrap_future(self.store.committer.submit(job))
