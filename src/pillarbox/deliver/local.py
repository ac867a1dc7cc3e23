"""Local delivery: from a queue entry into mailboxes, exactly once.

Delivery of a batch is one store transaction: for each pending recipient,
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

This module is the policy; the reads and writes are the store's
(``LocalDelivery`` in ``pillarbox.store.base``, for SQLite
``pillarbox.store.sqlite.delivery``), so another backend slots in here
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pillarbox.deliver.recipients import Verdict, cached, resolve, split_address
from pillarbox.store.base import Delivered, LocalDelivery

GONE = "550 5.1.1 No such user here (it went away after the message was accepted)"


@dataclass(frozen=True, slots=True)
class Failure:
    queue_id: str
    recipient: str
    reply: str
    permanent: bool


def _prefix(reverse_path: str, recipient: str) -> bytes:
    return f"Return-Path: <{reverse_path}>\r\nDelivered-To: {recipient}\r\n".encode()


def deliver_batch(
    batch: LocalDelivery, queue_ids: list[str], delimiters: str
) -> tuple[list[Delivered], list[Failure]]:
    """Deliver the pending recipients of ``queue_ids``; runs inside one transaction.

    Lookups are remembered for the batch (the transaction sees one state of
    the directory anyway).
    """
    directory = cached(batch.directory(), ttl=3600.0)
    delivered: list[Delivered] = []
    failures: list[Failure] = []
    now = time.time()
    entries = batch.pending(queue_ids)
    for queue_id in queue_ids:
        entry = entries.pop(queue_id, None)
        if entry is None:
            continue  # deleted meanwhile (queue delete), or listed twice
        copies = 0
        reached: set[int] = set()  # one copy per mailbox, however many recipients lead there
        for idx, address in entry.recipients:
            local, domain = split_address(address)
            resolution = resolve(directory, local, domain, delimiters)
            if resolution.verdict is not Verdict.LOCAL:
                batch.settle(queue_id, idx, "failed", GONE)
                failures.append(Failure(queue_id, address, GONE, True))
                continue
            prefix = _prefix(entry.reverse_path, address)
            size = entry.size + len(prefix)
            for account in resolution.accounts:
                if account.id in reached:
                    continue
                reached.add(account.id)
                uid = batch.append_to_inbox(
                    account.id, queue_id, prefix, size, now, f"{queue_id}/{idx}/{account.id}"
                )
                copies += 1
                delivered.append(Delivered(
                    queue_id, entry.reverse_path, address, account.address, "INBOX", uid,
                    size, now - entry.arrived,
                ))
            batch.settle(queue_id, idx, "delivered", "250 2.0.0 delivered")
        # Every pending recipient is settled now: the queue's own reference goes.
        batch.finish(queue_id, copies)
    batch.flush()
    return delivered, failures
