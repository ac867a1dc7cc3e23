"""Local delivery: from a queue entry into mailboxes, exactly once.

Delivery of a batch is one SQLite transaction: for each pending recipient,
resolve it to accounts, append the message to each account's INBOX (a new
UID and MODSEQ, the blob shared, a per-copy prefix of ``Return-Path:`` and
``Delivered-To:`` as RFC 5321 4.4 asks of final delivery), and mark the
recipient delivered.  Appending and marking commit together, so a crash
leaves either both or neither: a message is in each mailbox exactly once.
The unique ``delivery`` key (queue id, recipient, account) guards this a
second time: a repeated delivery fails the whole transaction, which the queue
manager retries later rather than ever writing a second copy.

Two recipients of one message that lead to the same account (an alias and
the account itself) give one copy, as Postfix's duplicate filter does.

Every outcome is permanent or transient (STYLE.md rule 5): a recipient that
no longer resolves is a permanent failure; a database error is transient and
the whole entry is retried later.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from pillarbox.deliver.recipients import Verdict, cached, resolve, split_address
from pillarbox.store.base import Delivered
from pillarbox.store.sqlite.store import SQLiteStore


@dataclass(frozen=True, slots=True)
class Failure:
    queue_id: str
    recipient: str
    reply: str
    permanent: bool


def _prefix(reverse_path: str, recipient: str) -> bytes:
    return f"Return-Path: <{reverse_path}>\r\nDelivered-To: {recipient}\r\n".encode()


def deliver_batch(
    store: SQLiteStore, conn: sqlite3.Connection, queue_ids: list[str], delimiters: str
) -> tuple[list[Delivered], list[Failure]]:
    """Deliver the pending recipients of ``queue_ids``; runs inside one transaction.

    Work is done in bulk: entries and recipients are read with one query
    each, lookups are remembered for the batch, UIDs are handed out in memory
    and each mailbox's counters written once.
    """
    directory = cached(store.directory(conn), ttl=3600.0)
    delivered: list[Delivered] = []
    failures: list[Failure] = []
    now = time.time()
    entries: dict[str, tuple[str, int, float]] = {}
    pending: dict[str, list[tuple[int, str]]] = {}
    for chunk in _chunks(queue_ids, 400):
        marks = ",".join("?" * len(chunk))
        for qid, reverse_path, size, arrived in conn.execute(
            f"SELECT id, reverse_path, size, arrived FROM queue WHERE id IN ({marks})", chunk
        ):
            entries[qid] = (reverse_path, size, arrived)
        for qid, idx, address in conn.execute(
            "SELECT queue_id, idx, address FROM recipients"
            f" WHERE queue_id IN ({marks}) AND status = 'pending' ORDER BY queue_id, idx",
            chunk,
        ):
            pending.setdefault(qid, []).append((idx, address))
    mailboxes: dict[int, list[int]] = {}   # account -> [mailbox id, next uid, modseq]
    new_messages: list[tuple[object, ...]] = []
    done: list[tuple[str, str, int]] = []
    finished: list[tuple[str]] = []
    refs: list[tuple[int, str]] = []
    for queue_id in queue_ids:
        entry = entries.pop(queue_id, None)
        if entry is None:
            continue  # deleted meanwhile (queue delete), or listed twice
        reverse_path, size, arrived = entry
        new_refs = 0
        reached: set[int] = set()  # one copy per mailbox, however many recipients lead there
        for idx, address in pending.get(queue_id, ()):
            local, domain = split_address(address)
            resolution = resolve(directory, local, domain, delimiters)
            if resolution.verdict is not Verdict.LOCAL:
                reply = "550 5.1.1 No such user here (it went away after the message was accepted)"
                done.append(("failed", reply, queue_id, idx))  # type: ignore[arg-type]
                failures.append(Failure(queue_id, address, reply, True))
                continue
            prefix = _prefix(reverse_path, address)
            for account in resolution.accounts:
                if account.id in reached:
                    continue
                reached.add(account.id)
                box = mailboxes.get(account.id)
                if box is None:
                    box = mailboxes[account.id] = _inbox(store, conn, account.id)
                uid, box[1] = box[1], box[1] + 1
                box[2] += 1
                new_messages.append((
                    box[0], uid, queue_id, prefix, size + len(prefix), now, box[2],
                    f"{queue_id}/{idx}/{account.id}",
                ))
                new_refs += 1
                delivered.append(Delivered(
                    queue_id, reverse_path, address, account.address, "INBOX", uid,
                    size + len(prefix), now - arrived,
                ))
            done.append(("delivered", "250 2.0.0 delivered", queue_id, idx))  # type: ignore[arg-type]
        # Every pending recipient is settled now: the queue's own reference goes.
        finished.append((queue_id,))
        refs.append((new_refs - 1, queue_id))
    conn.executemany(
        "INSERT INTO messages (mailbox, uid, blob, prefix, size, internal_date, flags, modseq,"
        " delivery) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)",
        new_messages,
    )
    conn.executemany(
        "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
        [(box[1], box[2], box[0]) for box in mailboxes.values()],
    )
    conn.executemany(
        "UPDATE recipients SET status = ?, last_reply = ? WHERE queue_id = ? AND idx = ?", done
    )
    conn.executemany("DELETE FROM recipients WHERE queue_id = ?", finished)
    conn.executemany("DELETE FROM queue WHERE id = ?", finished)
    conn.executemany("UPDATE blobs SET refs = refs + ? WHERE id = ?", [r for r in refs if r[0]])
    return delivered, failures


def _inbox(store: SQLiteStore, conn: sqlite3.Connection, account_id: int) -> list[int]:
    row = conn.execute(
        "SELECT id, uidnext, highestmodseq FROM mailboxes WHERE account = ? AND name = 'INBOX'",
        (account_id,),
    ).fetchone()
    if row is None:
        mailbox_id = store.create_mailbox(conn, account_id, "INBOX", None)
        row = (mailbox_id, 1, 1)
    return list(row)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
