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

Quota: a recipient whose account is full (the copy would pass its storage or
message limit, RFC 9208) fails transiently with ``452 4.2.2 Mailbox full``,
as Dovecot's LMTP answers: it stays pending and the queue manager defers the
entry, while the other recipients of the entry and of the batch are
delivered.  The RCPT check (``pillarbox.receive.session``) refuses most such
mail at the door; this catches what was accepted while there was room.  A
recipient that reaches several accounts (an alias) waits whole if one of
them is full: delivering to the others now and again at the retry would give
them two copies.  A retry skips the accounts that got their copy in an
earlier attempt through another recipient of the entry (found by the copies'
``delivery`` keys), so the one-copy-per-account rule holds across attempts.

Recipients of other post offices, and what senders must be told: the queue
manager passes a ``Handoff``.  Remote recipients then stay pending and are
listed in it (the manager dispatches them to remote delivery), and so are the
events a sender may have to hear of (a recipient that went away, a delivery
that NOTIFY=SUCCESS asked to hear about, RFC 3461 4.1); an entry with either
is kept for the manager, which reports and finishes it in the same
transaction.  Without a ``Handoff`` (tools, tests) a remote recipient fails
as one that went away.

An alias that forwards to other domains is expanded at RCPT, where the
forwarded copy gets its SRS sender and ARC seal (``receive/forwarding.py``),
and by ``sendmail``; an alias that reaches only other domains is then left
out of the entry.  Met here (a delivery report to a local sender, the
postmaster's copy of a report, an alias changed after the message was
accepted), such an alias has its targets added to the entry as recipients of
their own (ORCPT: the alias), for remote delivery with the entry's reverse
path, and is settled as forwarded; before, it failed as unknown.  An alias
that also reaches an account is in the entry for that account, its remote
targets queued already at RCPT, so they are not followed here (reports have
their aliases expanded as they are made, ``queue/ledger.py``).

This module is the policy; the reads and writes are the store's
(``LocalDelivery`` in ``pillarbox.store.base``, for SQLite
``pillarbox.store.sqlite.delivery``), so another backend slots in here
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pillarbox.deliver.recipients import Verdict, cached, resolve, split_address
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.protocols.smtp.reply import MAILBOX_FULL
from pillarbox.store.base import Delivered, LocalDelivery, Quota

GONE = "550 5.1.1 No such user here (it went away after the message was accepted)"
FULL = str(MAILBOX_FULL)
DELIVERED = "250 2.0.0 delivered"
FORWARDED = "250 2.1.5 forwarded to {}"


@dataclass(frozen=True, slots=True)
class Failure:
    queue_id: str
    recipient: str
    reply: str
    permanent: bool
    idx: int = -1                # the recipient's index in its entry


@dataclass(frozen=True, slots=True)
class LocalEvent:
    """Something local delivery did that the sender may hear of (a DSN)."""

    queue_id: str
    idx: int
    address: str
    action: str                  # "failed" or "delivered" (RFC 3464 2.3.3)
    reply: str


@dataclass(slots=True)
class Handoff:
    """What local delivery leaves to the queue manager (see the module docstring)."""

    remote: list[tuple[str, int, str]] = field(default_factory=list)  # (queue id, idx, address)
    events: list[LocalEvent] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)   # entries left for the manager to finish


def _prefix(reverse_path: str, recipient: str) -> bytes:
    return f"Return-Path: <{reverse_path}>\r\nDelivered-To: {recipient}\r\n".encode()


def would_exceed(q: Quota | None, size: int) -> bool:
    """Whether one more message of ``size`` octets passes a limit (as APPEND checks)."""
    if q is None:
        return False
    if q.storage_limit is not None and q.storage_used + size > q.storage_limit:
        return True
    return q.messages_limit is not None and q.messages_used + 1 > q.messages_limit


def deliver_batch(
    batch: LocalDelivery, queue_ids: list[str], delimiters: str,
    handoff: Handoff | None = None,
) -> tuple[list[Delivered], list[Failure]]:
    """Deliver the pending recipients of ``queue_ids``; runs inside one transaction.

    Lookups are remembered for the batch (the transaction sees one state of
    the directory anyway).  With ``handoff``, remote recipients and reportable
    events go there, and their entries are kept (not finished).
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
        waiting = False  # a recipient failed transiently: the entry stays
        # One copy per mailbox, however many recipients lead there, and
        # whichever attempt made it (a retry after a full mailbox).
        reached = batch.copies_made(queue_id) if entry.attempts else set()
        kept = False     # the manager finishes the entry (remote recipients, a DSN)
        for idx, address in entry.recipients:
            local, domain = split_address(address)
            resolution = resolve(directory, local, domain, delimiters)
            if resolution.verdict is Verdict.REMOTE and handoff is not None:
                handoff.remote.append((queue_id, idx, address))
                kept = True
                continue
            if resolution.verdict is Verdict.FORWARD and handoff is not None:
                # An alias of ours that names only other domains' addresses. The
                # receiving session and sendmail queue its targets instead of it, so
                # here it was never expanded (a report to a local sender or to the
                # postmaster, an alias changed since): its targets join the entry as
                # recipients of their own, for remote delivery.  (An alias that also
                # reaches an account stays in the entry for the account, its remote
                # targets already queued: they are not followed again here.)
                for target_idx, target in batch.add_forwards(
                        queue_id, idx, resolution.forwards, f"rfc822;{xtext_encode(address)}"):
                    handoff.remote.append((queue_id, target_idx, target))
                kept = True
                batch.settle(queue_id, idx, "delivered",
                             FORWARDED.format(", ".join(resolution.forwards)))
                continue
            if resolution.verdict is not Verdict.LOCAL:
                batch.settle(queue_id, idx, "failed", GONE)
                failures.append(Failure(queue_id, address, GONE, True, idx))
                if handoff is not None:
                    handoff.events.append(LocalEvent(queue_id, idx, address, "failed", GONE))
                    kept = True
                continue
            prefix = _prefix(entry.reverse_path, address)
            size = entry.size + len(prefix)
            accounts = [a for a in resolution.accounts if a.id not in reached]
            if any(would_exceed(batch.quota(a.id), size) for a in accounts):
                batch.settle(queue_id, idx, "pending", FULL)
                failures.append(Failure(queue_id, address, FULL, False, idx))
                waiting = True
                continue
            for account in accounts:
                reached.add(account.id)
                uid = batch.append_to_inbox(
                    account.id, queue_id, prefix, size, now, f"{queue_id}/{idx}/{account.id}",
                    junk=entry.quarantine,
                )
                copies += 1
                delivered.append(Delivered(
                    queue_id, entry.reverse_path, address, account.address,
                    "Junk" if entry.quarantine else "INBOX", uid,
                    size, now - entry.arrived,
                ))
            batch.settle(queue_id, idx, "delivered", DELIVERED)
            if handoff is not None and idx in entry.notify_success:
                handoff.events.append(LocalEvent(queue_id, idx, address, "delivered", DELIVERED))
                kept = True
        if handoff is not None and (kept or waiting):
            handoff.kept.add(queue_id)   # reported, scheduled or finished by the manager
        if waiting or kept:
            batch.keep(queue_id, copies)
        else:
            # Every pending recipient is settled now: the queue's own reference goes.
            batch.finish(queue_id, copies)
    batch.flush()
    return delivered, failures
