"""Administration of the queue: what ``pillarbox queue`` does (like Postfix's
``mailq``, ``postqueue -f``, ``postsuper -h/-H/-d`` and ``qshape``).

Service functions in the manner of ``pillarbox.admin.commands``: they take an
open store and what the administrator typed, act through the store's own
transactions (so they work beside a running server), and never print.

Changing the queue beside a running server is safe because the queue
manager re-reads an entry's state before each remote attempt and records
outcomes only for recipients still pending: a held entry is not tried, a
deleted or bounced one is left alone.  ``retry`` and ``release`` wake the
manager (``pillarbox.queue.ipc``, op ``wake``) so that what they made due
goes at once; without a running server they change the queue only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from pillarbox.admin.commands import AdminError, _queue_id
from pillarbox.admin.names import normalize_domain
from pillarbox.store.base import NotFound, QueueEntry
from pillarbox.store.sqlite.store import SQLiteStore

__all__ = [
    "AGE_BUCKETS", "BOUNCE_REPLY", "STATES", "Selection", "Shape", "bounce", "hold",
    "list_entries", "release", "retry", "shape", "wake",
]

STATES = ("active", "deferred", "hold")
BOUNCE_REPLY = "554 5.0.0 Returned to the sender by the administrator of this mail system"
# qshape's age buckets, in minutes: each twice the one before.
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries a command acts on: ids, the entries with a pending recipient
    at a domain, or all of them."""

    ids: tuple[str, ...] = ()
    domain: str | None = None
    all: bool = False

    def resolve(self, store: SQLiteStore, state: str | None = None) -> list[str]:
        chosen = sum((bool(self.ids), self.domain is not None, self.all))
        if chosen != 1:
            raise AdminError("name the entries: queue IDs, --domain DOMAIN or --all")
        if self.ids:
            ids = [_queue_id(i) for i in self.ids]
            for ident in ids:
                if store.queue_get(ident) is None:
                    raise NotFound(f"no queue entry {ident}")
            return ids
        domain = normalize_domain(self.domain) if self.domain is not None else None
        return store.queue_ids(state, domain)


def _state(state: str | None) -> str | None:
    if state is not None and state not in STATES:
        raise AdminError(f"unknown state {state!r}: expected one of {', '.join(STATES)}")
    return state


def list_entries(store: SQLiteStore, *, state: str | None = None, domain: str | None = None,
                 sender: str | None = None) -> list[QueueEntry]:
    """Entries by state, by the domain of a pending recipient, by reverse path
    (``""`` or ``"<>"``: the null reverse path, i.e. reports)."""
    if sender is not None:
        sender = sender.strip().removeprefix("<").removesuffix(">")
    return store.queue_select(_state(state),
                              normalize_domain(domain) if domain is not None else None, sender)


def retry(store: SQLiteStore, selection: Selection) -> list[str]:
    """Make entries due now (held ones stay held) and wake the manager."""
    ids = selection.resolve(store)
    changed = store.queue_set(ids, due=time.time(), only=("active", "deferred"))
    if changed:
        wake(store)
    return changed


def hold(store: SQLiteStore, selection: Selection) -> list[str]:
    """Keep entries from delivery until ``release`` (Postfix's ``postsuper -h``)."""
    ids = selection.resolve(store)
    return store.queue_set(ids, state="hold", only=("active", "deferred"))


def release(store: SQLiteStore, selection: Selection) -> list[str]:
    """Held entries go back to the queue, due now."""
    ids = selection.resolve(store, "hold" if not selection.ids else None)
    changed = store.queue_set(ids, state="deferred", due=time.time(), only=("hold",))
    if changed:
        wake(store)
    return changed


def bounce(store: SQLiteStore, selection: Selection, *, hostname: str, postmaster: str,
           delimiters: str = "+", reply: str = BOUNCE_REPLY) -> tuple[list[str], list[str]]:
    """Fail every pending recipient of the entries now, with one failure report per
    entry to its sender (RFC 3464, as NOTIFY allows); the entries go.  Returns the
    entries bounced and the reports queued."""
    ids = selection.resolve(store)
    # Imported here: the DSN machinery is not needed to list the queue.
    from pillarbox.queue.ledger import Ledger, Round
    from pillarbox.queue.manager import local_postmaster
    from pillarbox.queue.schedule import Schedule

    ledger = Ledger(Schedule(), hostname,
                    postmaster or local_postmaster(store, hostname, delimiters),
                    report_lease=0.0)
    done: list[str] = []
    out = Round()
    for ident in ids:
        with store.queue_work() as work:
            if ledger.bounce(work, ident, reply, reply.split()[1], time.time(), out):
                done.append(ident)
    store.collect_blobs()
    if out.reports:
        wake(store)
    return done, out.reports


@dataclass(slots=True)
class Shape:
    """Messages per destination domain and age (``qshape``): one count per message
    and domain it still has pending recipients at."""

    buckets: tuple[int, ...] = AGE_BUCKETS
    rows: dict[str, list[int]] = field(default_factory=dict)   # domain -> counts

    def add(self, domain: str, age_minutes: float) -> None:
        row = self.rows.setdefault(domain, [0] * (len(self.buckets) + 1))
        for i, limit in enumerate(self.buckets):
            if age_minutes < limit:
                row[i] += 1
                return
        row[-1] += 1

    def table(self, top: int | None = None) -> list[tuple[str, int, list[int]]]:
        """(domain, total, counts) largest first, with a TOTAL row at the top."""
        rows = sorted(self.rows.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        if top is not None:
            rows = rows[:top]
        totals = [sum(col) for col in zip(*self.rows.values())] or [0] * (len(self.buckets) + 1)
        return [("TOTAL", sum(totals), totals)] + [(d, sum(c), c) for d, c in rows]


def shape(store: SQLiteStore, *, state: str | None = None, now: float | None = None) -> Shape:
    now = time.time() if now is None else now
    out = Shape()
    current = ""                       # the rows come grouped by entry
    seen: set[str] = set()
    for queue_id, address, arrived, _ in store.queue_pending_recipients(_state(state)):
        if queue_id != current:
            current, seen = queue_id, set()
        domain = address.rpartition("@")[2].lower()
        if domain not in seen:
            seen.add(domain)
            out.add(domain, (now - arrived) / 60.0)
    return out


def wake(store: SQLiteStore, timeout: float = 2.0) -> bool:
    """Tell a running queue manager to look at the queue now; whether one answered."""
    from pillarbox.queue.ipc import encode, read_frame

    path = store.run_dir / "queue.sock"     # pillarbox.queue.manager.socket_path
    if not path.exists():
        return False

    async def ask() -> bool:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(encode({"id": 1, "op": "wake"}))
            await writer.drain()
            answer = await read_frame(reader)
            return bool(answer and answer.get("ok"))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return asyncio.run(asyncio.wait_for(ask(), timeout))
    except (OSError, TimeoutError, ValueError):
        return False
