"""The queue's bookkeeping: outcomes onto recipients, retries, expiry and reports.

Everything here runs inside one store transaction (``QueueWork`` of
``pillarbox.store.base``), so what it records and the reports it queues
commit together: a crash neither loses a report nor sends one twice.  It
decides; the store reads and writes.  It is used by the queue manager after
each attempt and by ``pillarbox queue bounce``.

A *round* is one attempt at an entry: local delivery of its local
recipients and one remote attempt per destination domain, all at once.  Each
part's outcomes are applied as they come (with a report of that event, if any
recipient asked for one); when the last part is in, ``end_round`` finishes
the entry (nothing pending), returns it (expired: ``Action: failed``,
RFC 3464 2.3.3), warns (``Action: delayed``, once per recipient) or defers it
on the back-off schedule (``pillarbox.queue.schedule``).

Every outcome is permanent or transient, and that alone decides between
retry and bounce (STYLE.md rule 5).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pillarbox.deliver.outbound import Outcome
from pillarbox.deliver.recipients import Verdict, resolve, split_address
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.queue.report import Event, Message, build_report, wanted
from pillarbox.queue.schedule import Schedule
from pillarbox.store.base import (
    Envelope, EnvelopeRecipient, NotFound, QueueEntry, QueueWork, RecipientState,
)

__all__ = ["EXPIRED_STATUS", "Ledger", "Round"]

EXPIRED_STATUS = "4.4.7"     # RFC 3463: delivery time expired
LEASE_SECONDS = 60.0         # a new report: the fast path delivers it, the poll after this
_RESULT_STATUS = {"delivered": "delivered", "relayed": "relayed", "failed": "failed",
                  "deferred": "pending"}


@dataclass(slots=True)
class Round:
    """What a transaction of bookkeeping did, for the manager to act on and log."""

    reports: list[str] = field(default_factory=list)      # new entries (reports) queued
    finished: int = 0                                      # entries done and gone
    log: list[dict[str, object]] = field(default_factory=list)

    def note(self, event: str, **fields: object) -> None:
        self.log.append({"event": event, **fields})


def _event(r: RecipientState, action: str, status: str, reply: str,
           remote_mta: str | None) -> Event:
    return Event(r.idx, r.address, action, status, reply, r.notify, r.orcpt, remote_mta)


class Ledger:
    def __init__(self, schedule: Schedule, reporting_mta: str, postmaster: str, *,
                 report_lease: float = LEASE_SECONDS,
                 return_path: Callable[[str], str] | None = None,
                 delimiters: str = "") -> None:
        self.schedule = schedule
        self.reporting_mta = reporting_mta
        self.postmaster = postmaster
        self.delimiters = delimiters      # sub-addresses, for aliases of report recipients
        # Where reports to a reverse path go (SRS addresses of forwarded copies
        # are reversed to their original senders: receive/srs.py).
        self.return_path = return_path
        # The manager delivers its reports on the fast path; others leave them due.
        self.report_lease = report_lease

    # ------------------------------------------------------------- reports

    def report(self, work: QueueWork, entry: QueueEntry, events: Iterable[Event],
               now: float, out: Round) -> None:
        """Queue one report of ``events`` of ``entry``, if any recipient asked for one."""
        chosen = wanted(events)
        if not chosen:
            return
        sender = entry.reverse_path
        if sender and self.return_path is not None:
            sender = self.return_path(sender)
        message = Message(entry.id, sender, entry.arrived, entry.dsn_ret,
                          entry.dsn_envid, tuple(r.address for r in entry.recipients),
                          entry.requiretls)
        try:
            original = work.original(entry.id, header_only=entry.dsn_ret != "FULL")
        except (OSError, NotFound) as exc:
            original = (b"X-Pillarbox-Note: the original message could not be read ("
                        + str(exc).encode("ascii", "replace") + b")\r\n\r\n")
        actions = ",".join(sorted({e.action for e in chosen}))
        try:
            report = build_report(
                message, chosen, reporting_mta=self.reporting_mta, postmaster=self.postmaster,
                original=original, now=now, give_up=self.schedule.give_up_at(entry.arrived),
            )
        except Exception as exc:  # noqa: BLE001 - a bug; one message must not stall the batch
            out.note("report failed", queue_id=entry.id, action=actions, error=repr(exc),
                     level=logging.ERROR)
            return
        if report is None:
            out.note("report dropped", queue_id=entry.id, action=actions,
                     reason="the null reverse path: only failures are told, to the "
                     "postmaster, and not when they were for the postmaster")
            return
        envelope = _expanded(work, report.envelope, self.delimiters)
        report_id = work.add_message(report.data, envelope, now + self.report_lease)
        out.reports.append(report_id)
        out.note("report queued", queue_id=entry.id, report=report_id, action=actions,
                 to=",".join(r.address for r in envelope.recipients),
                 recipients=",".join(e.address for e in chosen))

    # ------------------------------------------------------------ outcomes

    def apply(self, work: QueueWork, queue_id: str, outcomes: Iterable[Outcome],
              now: float, out: Round, *, last: bool) -> None:
        """Record one remote attempt's outcomes; report this event; end the round if
        it was the entry's last outstanding part."""
        outcomes = list(outcomes)
        entries = work.entries([queue_id])
        entry = entries.get(queue_id)
        if entry is None:
            return    # deleted or bounced meanwhile (queue delete / bounce)
        by_idx = {r.idx: r for r in entry.recipients}
        events: list[Event] = []
        for o in outcomes:
            r = by_idx.get(o.idx)
            status = _RESULT_STATUS[o.result]
            if r is None or not work.settle(queue_id, o.idx, status, o.reply, o.status,
                                            o.remote_mta, now):
                continue   # not pending any more (bounced meanwhile), or not ours
            # What settle() wrote, so that the entry need not be read again.
            by_idx[o.idx] = dataclasses.replace(
                r, status=status, last_reply=o.reply, status_code=o.status,
                remote_mta=o.remote_mta, attempts=r.attempts + 1, last_attempt=now)
            if o.result in ("failed", "relayed"):
                # 'delivered' to a next hop that does DSN: it reports success itself
                # (RFC 3461 6.2.6).
                events.append(_event(r, o.result, o.status, o.reply, o.remote_mta))
        entry = dataclasses.replace(entry, recipients=tuple(by_idx[r.idx]
                                                            for r in entry.recipients))
        if events:
            self.report(work, entry, events, now, out)
        if last:
            self.end_round(work, queue_id, now, out, entry=entry)

    def end_round(self, work: QueueWork, queue_id: str, now: float, out: Round,
                  reply: str | None = None, *, entry: QueueEntry | None = None) -> None:
        """Finish, return, warn about or defer an entry whose attempt is complete;
        ``reply``: why it waits, if not its recipients' last reply; ``entry``: the
        entry as it stands in this transaction, if the caller has it."""
        if entry is None:
            entry = work.entries([queue_id]).get(queue_id)
        if entry is None:
            return
        pending = [r for r in entry.recipients if r.status == "pending"]
        if not pending:
            work.finish(queue_id)
            out.finished += 1
            return
        if self.schedule.expired(entry.arrived, now):
            self._give_up(work, entry, pending, now, out)
            return
        if self.schedule.warn_due(entry.arrived, now):
            unwarned = [r for r in pending if not r.warned]
            if unwarned:
                self.report(work, entry, [
                    _event(r, "delayed", r.status_code or "4.0.0",
                           r.last_reply or "not yet tried", r.remote_mta)
                    for r in unwarned
                ], now, out)
                # Once per recipient, whether or not its NOTIFY wanted this one.
                work.mark_warned(queue_id, [r.idx for r in unwarned])
        latest = max(pending, key=lambda r: r.last_attempt or 0.0)
        reply = reply or latest.last_reply or "451 4.3.0 Not yet delivered"
        work.defer(queue_id, self.schedule.next_attempt(entry.attempts + 1, now, entry.arrived),
                   reply)
        out.note("deferred", queue_id=queue_id, pending=len(pending), reply=reply)

    def _give_up(self, work: QueueWork, entry: QueueEntry, pending: list[RecipientState],
                 now: float, out: Round) -> None:
        events = []
        for r in pending:
            reply = r.last_reply or "451 4.4.7 Not delivered before the message expired"
            work.settle(entry.id, r.idx, "failed", reply, EXPIRED_STATUS, r.remote_mta, now)
            events.append(_event(r, "failed", EXPIRED_STATUS, reply, r.remote_mta))
        out.note("expired", queue_id=entry.id, recipients=len(pending))
        self.report(work, entry, events, now, out)
        work.finish(entry.id)
        out.finished += 1

    def bounce(self, work: QueueWork, queue_id: str, reply: str, status: str, now: float,
               out: Round) -> bool:
        """Fail every pending recipient now, with one report (``queue bounce``)."""
        entry = work.entries([queue_id]).get(queue_id)
        if entry is None:
            return False
        events = []
        for r in entry.recipients:
            if r.status == "pending" and work.settle(queue_id, r.idx, "failed", reply, status,
                                                     None, now):
                events.append(_event(r, "failed", status, reply, None))
        self.report(work, entry, events, now, out)
        work.finish(queue_id)
        out.finished += 1
        return True

    def local_events(self, work: QueueWork, entry: QueueEntry,
                     happened: list[tuple[int, str, str]], now: float, out: Round) -> None:
        """Report what local delivery did: (idx, action, reply) of ``entry``'s recipients."""
        by_idx = {r.idx: r for r in entry.recipients}
        events = [
            _event(by_idx[idx], action, "2.0.0" if action == "delivered"
                   else (by_idx[idx].status_code or "5.1.1"), reply, None)
            for idx, action, reply in happened if idx in by_idx
        ]
        self.report(work, entry, events, now, out)


def _expanded(work: QueueWork, envelope: Envelope, delimiters: str) -> Envelope:
    """A report's envelope with its recipient's aliases to other domains expanded,
    as the receiving session and sendmail expand them: each remote target a
    recipient with the alias as ORCPT (RFC 3461 §4.2), the alias itself kept only
    if it also reaches an account of ours.  (Local delivery would otherwise give
    the accounts their copy and the outside mailboxes nothing.)"""
    recipients: list[EnvelopeRecipient] = []
    for r in envelope.recipients:
        local, domain = split_address(r.address)
        resolution = resolve(work.directory(), local, domain, delimiters) if domain else None
        if resolution is None or not resolution.forwards:
            recipients.append(r)
            continue
        if resolution.verdict is not Verdict.FORWARD:
            recipients.append(r)
        orcpt = r.orcpt or f"rfc822;{xtext_encode(r.address)}"
        recipients += [EnvelopeRecipient(target, r.notify, orcpt) for target in resolution.forwards
                       if target.lower() != r.address.lower()]
    return dataclasses.replace(envelope, recipients=tuple(recipients))
