"""The SQL of the queue: scheduling, outcomes, reports and administration.

Two halves:

- ``SQLiteQueueWork``: the queue manager's (and ``queue bounce``'s) writes
  inside one transaction: apply a recipient's outcome, defer, lease, finish
  an entry, and queue a new message (a delivery status notification) whose
  blob is written and fsync'd before the transaction commits.
- ``QueueStoreMixin``: the reads and administrative writes of ``SQLiteStore``
  (what is due, ``queue list/show/retry/hold/release/shape``), and a reader
  of a queued message for remote delivery.

What is due is read with one query per state, each an ordered range of the
``queue_due`` index (state, next_attempt): ``state IN (...) ORDER BY
next_attempt`` would sort every due row, which with a million deferred
entries costs more than the delivery it schedules.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from pillarbox.store.base import Envelope, NotFound, QueueEntry, RecipientState
from pillarbox.store.blobs import new_id, sync_dirs, write_new

if TYPE_CHECKING:
    from pillarbox.store.directory import Directory
    from pillarbox.store.sqlite.store import SQLiteStore

_CHUNK = 400
_ENTRY = ("id, reverse_path, size, arrived, client_address, helo, state, attempts,"
          " next_attempt, last_reply, body, smtputf8, dsn_ret, dsn_envid, quarantine,"
          " requiretls, tls_required_no")
_RECIPIENT = ("queue_id, idx, address, status, notify, orcpt, last_reply, attempts,"
              " last_attempt, status_code, remote_mta, warned")
HEADER_LIMIT = 256 * 1024   # what a report returns at most of a header (RET=HDRS)


def _entries(conn: sqlite3.Connection, where: str, args: tuple[object, ...]) -> list[QueueEntry]:
    heads = conn.execute(f"SELECT {_ENTRY} FROM queue {where}", args).fetchall()
    rcpts: dict[str, list[RecipientState]] = {}
    ids = [h[0] for h in heads]
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
            f"SELECT {_RECIPIENT} FROM recipients WHERE queue_id IN ({marks})"
            " ORDER BY queue_id, idx", chunk,
        ):
            rcpts.setdefault(r[0], []).append(RecipientState(
                r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], bool(r[11])))
    return [
        QueueEntry(qid, rp, size, arrived, client, helo, state, attempts, nxt, last, body,
                   bool(utf8), ret, envid, tuple(rcpts.get(qid, ())), bool(junk),
                   bool(requiretls), bool(tls_no))
        for (qid, rp, size, arrived, client, helo, state, attempts, nxt, last, body, utf8,
             ret, envid, junk, requiretls, tls_no) in heads
    ]


class SQLiteQueueWork:
    """``QueueWork`` on one connection inside a write transaction."""

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    def directory(self) -> Directory:
        return self._store.directory(self._conn)

    def entries(self, queue_ids: list[str]) -> dict[str, QueueEntry]:
        out: dict[str, QueueEntry] = {}
        for start in range(0, len(queue_ids), _CHUNK):
            chunk = queue_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for e in _entries(self._conn, f"WHERE id IN ({marks})", tuple(chunk)):
                out[e.id] = e
        return out

    def settle(self, queue_id: str, idx: int, status: str, reply: str, code: str | None,
               remote_mta: str | None, now: float) -> bool:
        """Record one recipient's outcome, if it is still pending; whether it was."""
        cur = self._conn.execute(
            "UPDATE recipients SET status = ?, last_reply = ?, status_code = ?, remote_mta = ?,"
            " attempts = attempts + 1, last_attempt = ?"
            " WHERE queue_id = ? AND idx = ? AND status = 'pending'",
            (status, reply, code, remote_mta, now, queue_id, idx),
        )
        return cur.rowcount > 0

    def mark_warned(self, queue_id: str, idxs: list[int]) -> None:
        self._conn.executemany(
            "UPDATE recipients SET warned = 1 WHERE queue_id = ? AND idx = ?",
            [(queue_id, i) for i in idxs],
        )

    def defer(self, queue_id: str, next_attempt: float, reply: str) -> None:
        """Count a failed try and schedule the next; a held entry stays held."""
        self._conn.execute(
            "UPDATE queue SET state = CASE state WHEN 'hold' THEN 'hold' ELSE 'deferred' END,"
            " attempts = attempts + 1, next_attempt = ?, last_reply = ? WHERE id = ?",
            (next_attempt, reply, queue_id),
        )

    def lease(self, queue_ids: list[str], until: float) -> None:
        """Remote attempts are under way: keep the poll away until ``until`` (a restart
        makes active entries due at once)."""
        self._conn.executemany(
            "UPDATE queue SET state = CASE state WHEN 'hold' THEN 'hold' ELSE 'active' END,"
            " next_attempt = ? WHERE id = ?",
            [(until, qid) for qid in queue_ids],
        )

    def finish(self, queue_id: str) -> None:
        """Every recipient is settled: the entry goes, and the queue's reference to its blob."""
        if self._conn.execute("DELETE FROM queue WHERE id = ?", (queue_id,)).rowcount:
            self._conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
            self._conn.execute("UPDATE blobs SET refs = refs - 1 WHERE id = ?", (queue_id,))

    def original(self, queue_id: str, header_only: bool) -> bytes:
        """The queued message's bytes (or its header section, bounded) for a report."""
        row = self._conn.execute(
            "SELECT segment, offset, size FROM blobs WHERE id = ?", (queue_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no blob {queue_id}")
        segment, offset, size = row
        with open(self._store.blobs.path(segment or queue_id), "rb") as f:
            f.seek(offset)
            if not header_only:
                return f.read(size)
            data = f.read(min(size, HEADER_LIMIT))
        end = data.find(b"\r\n\r\n")
        return data[: end + 4] if end >= 0 else data

    def add_message(self, data: bytes, envelope: Envelope, next_attempt: float) -> str:
        """Queue a new message (a report): its blob is on stable storage before the
        commit that makes it an entry; if the transaction rolls back, the file is an
        orphan, removed at the next start."""
        blob_id = new_id()
        path = self._store.blobs.path(blob_id)
        write_new(path, data)
        sync_dirs({path.parent})
        self._store.insert_entry(self._conn, blob_id, len(data), envelope, next_attempt)
        return blob_id


class _Slice(io.RawIOBase):
    """Exactly ``size`` bytes of an open file from ``offset``: one message of a segment."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self._f, self._pos, self._end = f, offset, offset + size
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        data = self._f.read(want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class QueueStoreMixin:
    """The queue's reads and administrative writes, for ``SQLiteStore``."""

    # Provided by SQLiteStore.
    if TYPE_CHECKING:
        @property
        def reader(self) -> sqlite3.Connection: ...

        def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

        def open_blob(self, blob_id: str) -> tuple[BinaryIO, int, int]: ...

    # ---------------------------------------------------------- the manager

    def queue_due(self, now: float, limit: int) -> list[str]:
        """Entries whose next attempt has come, earliest first (held ones never)."""
        out: list[str] = []
        for state in ("active", "deferred"):
            if len(out) >= limit:
                break
            out += [r[0] for r in self.reader.execute(
                "SELECT id FROM queue WHERE state = ? AND next_attempt <= ?"
                " ORDER BY next_attempt LIMIT ?", (state, now, limit - len(out)),
            )]
        return out

    def make_active_due(self, now: float) -> int:
        """At start: entries leased by a manager that is gone are due at once."""
        with self.queue_transaction() as conn:
            return conn.execute(
                "UPDATE queue SET next_attempt = ? WHERE state = 'active'", (now,)
            ).rowcount

    def queue_state(self, queue_id: str) -> str | None:
        row = self.reader.execute("SELECT state FROM queue WHERE id = ?", (queue_id,)).fetchone()
        return row[0] if row else None

    def open_message(self, queue_id: str) -> BinaryIO:
        """A fresh reader of exactly the queued message (``OutboundMessage.open_body``)."""
        f, offset, size = self.open_blob(queue_id)
        return io.BufferedReader(_Slice(f, offset, size))

    @contextlib.contextmanager
    def queue_work(self) -> Iterator[SQLiteQueueWork]:
        """A write transaction for queue work outside the manager (``queue bounce``)."""
        with self.queue_transaction() as conn:
            yield SQLiteQueueWork(self, conn)  # type: ignore[arg-type]

    def queue_transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self.transaction()

    # ----------------------------------------------------- administration

    @staticmethod
    def _filters(state: str | None, domain: str | None, sender: str | None
                 ) -> tuple[str, tuple[object, ...]]:
        clauses: list[str] = []
        args: list[object] = []
        if state:
            clauses.append("state = ?")
            args.append(state)
        if sender is not None:
            clauses.append("lower(reverse_path) = ?")
            args.append(sender.lower())
        if domain:
            # The domain is what follows the last '@' (a quoted local part may hold one).
            d = "@" + domain.lower()
            clauses.append(
                "id IN (SELECT queue_id FROM recipients WHERE status = 'pending'"
                " AND substr(lower(address), -?) = ?)"
            )
            args += [len(d), d]
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)

    def queue_select(self, state: str | None = None, domain: str | None = None,
                     sender: str | None = None, ids: list[str] | None = None,
                     ) -> list[QueueEntry]:
        """Entries by state, by the domain of a pending recipient, by reverse path."""
        where, args = self._filters(state, domain, sender)
        if ids is not None:
            found: list[QueueEntry] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                w = f"{where} AND id IN ({marks})" if where else f"WHERE id IN ({marks})"
                found += _entries(self.reader, w, (*args, *chunk))
            return sorted(found, key=lambda e: e.id)
        return _entries(self.reader, where + " ORDER BY id", args)

    def queue_set(self, queue_ids: list[str], *, state: str | None = None,
                  due: float | None = None, only: tuple[str, ...] = ()) -> list[str]:
        """Change state and/or next attempt of entries (``only``: in these states);
        the ids changed."""
        sets: list[str] = []
        args: list[object] = []
        if state is not None:
            sets.append("state = ?")
            args.append(state)
        if due is not None:
            sets.append("next_attempt = ?")
            args.append(due)
        sql = f"UPDATE queue SET {', '.join(sets)} WHERE id = ?"
        if only:
            sql += f" AND state IN ({','.join('?' * len(only))})"
        changed: list[str] = []
        # One short transaction per chunk: the queue manager's commits go on between
        # them, even when a whole queue of a million entries is changed.
        for start in range(0, len(queue_ids), _CHUNK):
            with self.queue_transaction() as conn:
                for qid in queue_ids[start : start + _CHUNK]:
                    if conn.execute(sql, (*args, qid, *only)).rowcount:
                        changed.append(qid)
        return changed

    def queue_ids(self, state: str | None = None, domain: str | None = None) -> list[str]:
        where, args = self._filters(state, domain, None)
        return [r[0] for r in self.reader.execute(f"SELECT id FROM queue {where} ORDER BY id",
                                                  args)]

    def queue_pending_recipients(self, state: str | None = None
                                 ) -> Iterator[tuple[str, str, float, str]]:
        """(queue id, address, arrival time, entry state) of every pending recipient,
        streamed, grouped by queue id (``queue shape`` over a queue of any length)."""
        sql = ("SELECT r.queue_id, r.address, q.arrived, q.state FROM recipients r"
               " JOIN queue q ON q.id = r.queue_id WHERE r.status = 'pending'")
        args: tuple[object, ...] = ()
        if state:
            sql += " AND q.state = ?"
            args = (state,)
        # In the order of the recipients' key: a caller needs to remember one entry only.
        yield from self.reader.execute(sql + " ORDER BY r.queue_id", args)
