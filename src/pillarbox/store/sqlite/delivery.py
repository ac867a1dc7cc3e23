"""The SQL of local delivery: one batch inside the caller's SQLite transaction.

``pillarbox.deliver.local`` holds the policy (who a recipient is, one copy
per account, what a failure means) and talks to ``LocalDelivery`` of
``pillarbox.store.base``; this is its SQLite implementation.  Work is done in
bulk, because the queue manager delivers hundreds of entries per commit:
entries and recipients are read with one query per 400 ids, UIDs are handed
out in memory, and each mailbox's counters are written once in ``flush()``.

UIDs and MODSEQs are safe to hand out in memory because the batch runs in
one write transaction (``BEGIN IMMEDIATE``): no other writer can append to
the same mailbox before it commits (RFC 9051 2.3.1.1: UIDs strictly
ascending).

Quota usage is read once per account and batch (the sum over the account's
messages, ~10 ms for 100,000 of them; accounts without limits skip it), and
what the batch appends is added in memory, since nothing is flushed yet.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pillarbox.store.base import PendingEntry, Quota
from pillarbox.store.directory import Directory

if TYPE_CHECKING:
    from pillarbox.store.sqlite.store import SQLiteStore

_CHUNK = 400   # ids per IN (...) list, below SQLite's variable limit


def _status_code(reply: str) -> str | None:
    """The RFC 3463 code of a reply such as ``550 5.1.1 ...``, for the DSN's Status field."""
    parts = reply.split(None, 2)
    if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return parts[1]
    return None


class SQLiteDelivery:
    """``LocalDelivery`` on one SQLite connection that is inside a transaction."""

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        # (account, junk) -> [mailbox id, uidnext, modseq]
        self._mailboxes: dict[tuple[int, bool], list[int]] = {}
        self._messages: list[tuple[object, ...]] = []
        self._settled: list[tuple[str, str, str | None, str, int]] = []
        self._finished: list[tuple[str]] = []
        self._refs: list[tuple[int, str]] = []
        self._quotas: dict[int, Quota | None] = {}          # account -> as committed
        self._added: dict[int, list[int]] = {}              # account -> [octets, messages]
        self._now = time.time()

    def directory(self) -> Directory:
        return self._store.directory(self._conn)

    def pending(self, queue_ids: list[str]) -> dict[str, PendingEntry]:
        heads: dict[str, tuple[str, int, float, int, int]] = {}
        recipients: dict[str, list[tuple[int, str]]] = {}
        success: dict[str, set[int]] = {}
        for start in range(0, len(queue_ids), _CHUNK):
            chunk = queue_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for qid, reverse_path, size, arrived, attempts, junk in self._conn.execute(
                "SELECT id, reverse_path, size, arrived, attempts, quarantine FROM queue"
                f" WHERE id IN ({marks})", chunk,
            ):
                heads[qid] = (reverse_path, size, arrived, attempts, junk)
            for qid, idx, address, notify in self._conn.execute(
                "SELECT queue_id, idx, address, notify FROM recipients"
                f" WHERE queue_id IN ({marks}) AND status = 'pending' ORDER BY queue_id, idx",
                chunk,
            ):
                recipients.setdefault(qid, []).append((idx, address))
                if notify and "SUCCESS" in notify.upper():
                    success.setdefault(qid, set()).add(idx)
        return {
            qid: PendingEntry(
                qid, reverse_path, size, arrived, tuple(recipients.get(qid, ())), attempts,
                frozenset(success.get(qid, ())), bool(junk),
            )
            for qid, (reverse_path, size, arrived, attempts, junk) in heads.items()
        }

    def append_to_inbox(
        self, account_id: int, queue_id: str, prefix: bytes, size: int,
        internal_date: float, delivery: str, *, junk: bool = False,
    ) -> int:
        box = self._mailboxes.get((account_id, junk))
        if box is None:
            box = self._mailboxes[account_id, junk] = (
                self._junk(account_id) if junk else self._inbox(account_id))
        uid, box[1] = box[1], box[1] + 1
        added = self._added.setdefault(account_id, [0, 0])
        added[0] += size
        added[1] += 1
        box[2] += 1
        self._messages.append(
            (box[0], uid, queue_id, prefix, size, internal_date, box[2], delivery)
        )
        return uid

    def settle(self, queue_id: str, idx: int, status: str, reply: str) -> None:
        self._settled.append((status, reply, _status_code(reply), queue_id, idx))

    def quota(self, account_id: int) -> Quota | None:
        if account_id not in self._quotas:
            self._quotas[account_id] = self._store.quota_if_limited(account_id, self._conn)
        q = self._quotas[account_id]
        if q is None:
            return None
        octets, count = self._added.get(account_id, (0, 0))
        return Quota(q.storage_used + octets, q.storage_limit,
                     q.messages_used + count, q.messages_limit)

    def copies_made(self, queue_id: str) -> set[int]:
        # Keys are 'queue id/recipient index/account id': a range of the
        # unique index on ``delivery`` ('0' sorts right after '/').
        rows = self._conn.execute(
            "SELECT delivery FROM messages WHERE delivery >= ? AND delivery < ?",
            (f"{queue_id}/", f"{queue_id}0"),
        ).fetchall()
        return {int(r[0].rsplit("/", 1)[1]) for r in rows}

    def keep(self, queue_id: str, copies: int) -> None:
        if copies:   # the queue keeps its reference; the new copies add theirs
            self._refs.append((copies, queue_id))

    def finish(self, queue_id: str, copies: int) -> None:
        self._finished.append((queue_id,))
        if copies != 1:   # the queue's reference goes, ``copies`` mailbox references come
            self._refs.append((copies - 1, queue_id))

    def add_forwards(self, queue_id: str, idx: int, targets: Sequence[str],
                     orcpt: str) -> list[tuple[int, str]]:
        conn = self._conn
        row = conn.execute("SELECT notify, orcpt FROM recipients WHERE queue_id = ? AND idx = ?",
                           (queue_id, idx)).fetchone()
        notify, orcpt = (row[0], row[1] or orcpt) if row is not None else (None, orcpt)
        present = {a.lower() for (a,) in conn.execute(
            "SELECT address FROM recipients WHERE queue_id = ?", (queue_id,))}
        (next_idx,) = conn.execute(
            "SELECT coalesce(max(idx), -1) + 1 FROM recipients WHERE queue_id = ?",
            (queue_id,)).fetchone()
        added: list[tuple[int, str]] = []
        for target in targets:
            if target.lower() in present:
                continue
            present.add(target.lower())
            conn.execute(
                "INSERT INTO recipients (queue_id, idx, address, notify, orcpt, status)"
                " VALUES (?, ?, ?, ?, ?, 'pending')", (queue_id, next_idx, target, notify, orcpt))
            added.append((next_idx, target))
            next_idx += 1
        return added

    def flush(self) -> None:
        conn = self._conn
        conn.executemany(
            "INSERT INTO messages (mailbox, uid, blob, prefix, size, internal_date, flags, modseq,"
            " delivery) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)",
            self._messages,
        )
        conn.executemany(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            [(box[1], box[2], box[0]) for box in self._mailboxes.values()],
        )
        conn.executemany(
            "UPDATE recipients SET status = ?, last_reply = ?, status_code = ?,"
            " remote_mta = NULL, attempts = attempts + 1, last_attempt = ?"
            " WHERE queue_id = ? AND idx = ?",
            [(status, reply, code, self._now, qid, idx)
             for status, reply, code, qid, idx in self._settled],
        )
        conn.executemany("DELETE FROM recipients WHERE queue_id = ?", self._finished)
        conn.executemany("DELETE FROM queue WHERE id = ?", self._finished)
        conn.executemany("UPDATE blobs SET refs = refs + ? WHERE id = ?", self._refs)
        self._messages, self._settled, self._finished, self._refs = [], [], [], []

    def _junk(self, account_id: int) -> list[int]:
        """The account's \\Junk mailbox (RFC 6154), made as "Junk" if it has none."""
        row = self._conn.execute(
            "SELECT id, uidnext, highestmodseq FROM mailboxes WHERE account = ?"
            " AND special_use = '\\Junk' ORDER BY id LIMIT 1", (account_id,),
        ).fetchone()
        if row is None:
            name = "Junk"
            while self._conn.execute("SELECT 1 FROM mailboxes WHERE account = ? AND name = ?",
                                     (account_id, name)).fetchone():
                name += "_"
            mailbox_id = self._store.create_mailbox(self._conn, account_id, name, "\\Junk")
            row = (mailbox_id, 1, 1)
        return list(row)

    def _inbox(self, account_id: int) -> list[int]:
        row = self._conn.execute(
            "SELECT id, uidnext, highestmodseq FROM mailboxes WHERE account = ? AND name = 'INBOX'",
            (account_id,),
        ).fetchone()
        if row is None:
            mailbox_id = self._store.create_mailbox(self._conn, account_id, "INBOX", None)
            row = (mailbox_id, 1, 1)
        return list(row)
