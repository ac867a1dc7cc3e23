"""Local delivery: from a queue entry into mailboxes, exactly once.

Delivery of a batch is one SQLite transaction: for each pending recipient,
resolve it to accounts, append the message to each account's INBOX (a new
UID and MODSEQ, the blob shared, a per-copy prefix of ``Return-Path:`` and
``Delivered-To:`` as RFC 5321 4.4 asks of final delivery), and mark the
recipient delivered.  Appending and marking commit together, so a crash
leaves either both or neither: a message is in each mailbox exactly once.
The unique ``delivery`` key (queue id, recipient, account) guards this a
second time.

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

from pillarbox.deliver.recipients import Verdict, resolve, split_address
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
    """Deliver the pending recipients of ``queue_ids``; runs inside one transaction."""
    directory = store.directory(conn)
    delivered: list[Delivered] = []
    failures: list[Failure] = []
    inbox_cache: dict[int, int] = {}
    now = time.time()
    for queue_id in queue_ids:
        entry = conn.execute(
            "SELECT reverse_path, size, arrived FROM queue WHERE id = ?", (queue_id,)
        ).fetchone()
        if entry is None:
            continue  # deleted meanwhile (queue delete)
        reverse_path, size, arrived = entry
        pending = conn.execute(
            "SELECT idx, address FROM recipients WHERE queue_id = ? AND status = 'pending'",
            (queue_id,),
        ).fetchall()
        new_refs = 0
        reached: set[int] = set()  # one copy per mailbox, however many recipients lead there
        for idx, address in pending:
            local, domain = split_address(address)
            resolution = resolve(directory, local, domain, delimiters)
            if resolution.verdict is not Verdict.LOCAL:
                reply = "550 5.1.1 No such user here (it went away after the message was accepted)"
                conn.execute(
                    "UPDATE recipients SET status = 'failed', last_reply = ? WHERE queue_id = ? AND idx = ?",
                    (reply, queue_id, idx),
                )
                failures.append(Failure(queue_id, address, reply, True))
                continue
            prefix = _prefix(reverse_path, address)
            for account in resolution.accounts:
                if account.id in reached:
                    continue
                reached.add(account.id)
                mailbox_id = inbox_cache.get(account.id)
                if mailbox_id is None:
                    row = conn.execute(
                        "SELECT id FROM mailboxes WHERE account = ? AND name = 'INBOX'",
                        (account.id,),
                    ).fetchone()
                    if row is None:
                        mailbox_id = store._create_mailbox(conn, account.id, "INBOX", None)
                    else:
                        mailbox_id = row[0]
                    inbox_cache[account.id] = mailbox_id
                uid, modseq = conn.execute(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
                    " WHERE id = ? RETURNING uidnext - 1, highestmodseq",
                    (mailbox_id,),
                ).fetchone()
                cur = conn.execute(
                    "INSERT OR IGNORE INTO messages (mailbox, uid, blob, prefix, size, internal_date,"
                    " flags, modseq, delivery) VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)",
                    (
                        mailbox_id, uid, queue_id, prefix, size + len(prefix), now, modseq,
                        f"{queue_id}/{idx}/{account.id}",
                    ),
                )
                if cur.rowcount:
                    new_refs += 1
                    delivered.append(Delivered(
                        queue_id, reverse_path, address, account.address, "INBOX", uid,
                        size + len(prefix), now - arrived,
                    ))
            conn.execute(
                "UPDATE recipients SET status = 'delivered', last_reply = '250 2.0.0 delivered'"
                " WHERE queue_id = ? AND idx = ?",
                (queue_id, idx),
            )
        remaining = conn.execute(
            "SELECT count(*) FROM recipients WHERE queue_id = ? AND status = 'pending'",
            (queue_id,),
        ).fetchone()[0]
        if remaining == 0:
            # The queue's own reference goes; mailboxes keep theirs.
            conn.execute("DELETE FROM recipients WHERE queue_id = ?", (queue_id,))
            conn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))
            new_refs -= 1
        if new_refs:
            conn.execute("UPDATE blobs SET refs = refs + ? WHERE id = ?", (new_refs, queue_id))
    return delivered, failures
