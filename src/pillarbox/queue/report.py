"""What a sender hears about their message: delivery status notifications (RFC 3461/3464).

The queue manager calls :func:`build_report` once per message and event (one
attempt's outcomes for one destination, a local delivery batch, an expiry, a
delay warning): one report covers every recipient that event concerns, and
only those (RFC 3461 6.2: a DSN names only the recipients it reports on).

Who is told what (RFC 3461 4.1, 6.2):

- ``NOTIFY=NEVER``: nothing, ever.
- ``NOTIFY`` absent: failures and delays (the MTA's choice RFC 3461 4.1 leaves
  open; Postfix's default too).
- otherwise what it lists: ``SUCCESS``, ``FAILURE``, ``DELAY``.
- ``Action: delivered`` for a final delivery here; ``Action: relayed`` for a
  next hop that took the message without DSN (RFC 3461 6.2.6); a next hop that
  does DSN reports success itself, so we say nothing then.

A report has the null reverse path (RFC 5321 4.5.5), so a report is never
reported on.  When a message with the null reverse path (a report) cannot be
delivered, the postmaster gets the failure report instead, as Postfix's
"double bounce"; if that fails too, it is logged and dropped: nobody is left
to tell.

The first part says in plain words what happened and what the sender can do;
the remote server's reply is quoted exactly there and in ``Diagnostic-Code``
(which ``pillarbox.mime.dsn`` keeps on one line).  ``RET=FULL`` returns the
whole message, ``RET=HDRS`` or none its header (RFC 3461 4.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pillarbox.mime.dsn import RecipientStatus, build_dsn
from pillarbox.protocols.smtp.params import xtext_decode
from pillarbox.store.base import Envelope, EnvelopeRecipient

__all__ = ["Event", "Report", "build_report", "notify_allows", "wanted"]

Kind = Literal["SUCCESS", "FAILURE", "DELAY"]
_KIND_OF_ACTION: dict[str, Kind] = {
    "failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS",
}


@dataclass(frozen=True, slots=True)
class Event:
    """What happened to one recipient, to be reported (RFC 3464 2.3)."""

    idx: int
    address: str
    action: str                  # failed / delayed / delivered / relayed
    status: str                  # RFC 3463 code: "5.1.1"
    reply: str                   # exactly as received, or our own reply-shaped text
    notify: str | None = None
    orcpt: str | None = None     # 'addr-type;xtext'
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """The reported message's envelope, as the queue has it."""

    queue_id: str
    reverse_path: str
    arrived: float
    dsn_ret: str | None
    dsn_envid: str | None
    recipients: tuple[str, ...]  # every forward path of the entry
    requiretls: bool = False     # sent with REQUIRETLS: so is its report (RFC 8689 5)


@dataclass(frozen=True, slots=True)
class Report:
    """A report to queue: its envelope and its bytes."""

    envelope: Envelope
    data: bytes


def notify_allows(notify: str | None, kind: Kind) -> bool:
    """Whether a recipient's NOTIFY asks for reports of ``kind`` (RFC 3461 4.1)."""
    if notify is None:
        return kind in ("FAILURE", "DELAY")
    asked = {part.strip().upper() for part in notify.split(",")}
    return "NEVER" not in asked and kind in asked


def wanted(events: Iterable[Event]) -> list[Event]:
    """The events whose recipients asked to hear of them."""
    return [e for e in events if notify_allows(e.notify, _KIND_OF_ACTION[e.action])]


def _original_recipient(orcpt: str | None) -> str | None:
    if not orcpt or ";" not in orcpt:
        return None
    addr_type, _, value = orcpt.partition(";")
    try:
        value = xtext_decode(value)
    except ValueError:
        pass   # shown as received
    return f"{addr_type};{value}"


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or address


def explain(message: Message, events: list[Event], reporting_mta: str,
            give_up: datetime | None) -> str:
    """The first part: what happened, in plain words, and what the sender can do."""
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    when = datetime.fromtimestamp(message.arrived, UTC).strftime("%Y-%m-%d %H:%M UTC")
    failed = [e for e in events if e.action == "failed"]
    delayed = [e for e in events if e.action == "delayed"]
    done = [e for e in events if e.action in ("delivered", "relayed")]
    if failed:
        lines += [f"Your message of {when} could not be delivered to "
                  + ("this recipient:" if len(failed) == 1 else "these recipients:"), ""]
        for e in failed:
            lines += _quoted(e)
        lines.append("The message was not delivered to " + ("it" if len(failed) == 1 else "them")
                     + " and will not be tried again. What you can do:")
        if any(not e.status.startswith("4") for e in failed):
            lines += [
                "- The receiving side refused it for good: check the address for typing",
                "  mistakes, or reach the recipient another way and ask what address to use.",
                "  The reply above often says what was wrong.",
            ]
        if any(e.status in ("5.7.30", "5.7.10") for e in failed) and message.requiretls:
            lines += [
                "- Your message asked for REQUIRETLS (RFC 8689): it may travel only over",
                "  verified TLS to servers that promise the same, and the path to the",
                "  recipient's domain did not offer that. Send it again without REQUIRETLS",
                "  if it may travel less protected, or ask the recipient's mail administrator.",
            ]
        if any(e.status.startswith("4") for e in failed):
            lines += [
                "- The problem was temporary but lasted until the message expired: you may",
                "  send it again later, or ask the recipient whether their mail works.",
            ]
        lines.append("")
    if delayed:
        until = f" until {give_up.strftime('%Y-%m-%d %H:%M UTC')}" if give_up else ""
        lines += [f"Your message of {when} has not yet been delivered to "
                  + ("this recipient:" if len(delayed) == 1 else "these recipients:"), ""]
        for e in delayed:
            lines += _quoted(e)
        lines += [
            f"Nothing is lost: the mail system keeps trying{until}, and tells you",
            "if it gives up. You do not need to send the message again.",
            "",
        ]
    if done:
        lines += [f"Your message of {when} was delivered, as you asked to be told:", ""]
        for e in done:
            if e.action == "relayed":
                lines.append(f"  <{e.address}>: handed on to {e.remote_mta or _domain(e.address)},")
                lines.append("  which does not report delivery; no further notice will come.")
            else:
                lines.append(f"  <{e.address}>: delivered to the recipient's mailbox.")
        lines.append("")
    lines.append("The report below is for mail programs; "
                 + ("your message is attached." if message.dsn_ret == "FULL"
                    else "the header of your message is attached."))
    return "\n".join(lines) + "\n"


def _quoted(e: Event) -> list[str]:
    who = f"the server {e.remote_mta}" if e.remote_mta else "the mail system"
    out = [f"  <{e.address}>", f"  {who} said:"]
    out += [f"    {line}" for line in e.reply.splitlines() or [e.reply]]
    out.append("")
    return out


def build_report(
    message: Message, events: list[Event], *, reporting_mta: str, postmaster: str,
    original: bytes, now: float, give_up: float | None = None,
) -> Report | None:
    """The report for ``events`` (already filtered by NOTIFY), or None if nobody is to get it.

    ``original`` is the message as stored (or its header, for ``RET=HDRS``).
    """
    if not events:
        return None
    to = message.reverse_path
    if not to:
        # A report (or other null-sender mail) that cannot be delivered: only
        # failures go on, to the postmaster, unless it was already for them.
        events = [e for e in events if e.action == "failed"]
        pm = postmaster.lower()
        if not events or all(r.lower() == pm for r in message.recipients):
            return None
        to = postmaster
    give_up_at = datetime.fromtimestamp(give_up, UTC) if give_up else None
    last = datetime.fromtimestamp(now, UTC)
    statuses = [
        RecipientStatus(
            final_recipient=e.address,
            action=e.action,  # type: ignore[arg-type]  # checked by _KIND_OF_ACTION
            status=e.status,
            original_recipient=_original_recipient(e.orcpt),
            remote_mta=e.remote_mta,
            diagnostic_code=e.reply if e.reply else None,
            last_attempt=last,
            will_retry_until=give_up_at if e.action == "delayed" else None,
        )
        for e in events
    ]
    data = build_dsn(
        reporting_mta=reporting_mta,
        from_addr=f"MAILER-DAEMON@{reporting_mta}",
        to_addr=to,
        original=original,
        recipients=statuses,
        return_content="full" if message.dsn_ret == "FULL" else "headers",
        envelope_id=message.dsn_envid,
        arrival_date=datetime.fromtimestamp(message.arrived, UTC),
        explanation=explain(message, events, reporting_mta, give_up_at),
        date=last,
    )
    envelope = Envelope(
        reverse_path="",
        recipients=(EnvelopeRecipient(to),),
        client_address="127.0.0.1",
        helo=reporting_mta,
        # 7-bit, but for a returned message/global (RFC 6533), which needs both.
        body=None if data.isascii() else "8BITMIME",
        smtputf8=not to.isascii() or not data.isascii(),
        # RFC 8689 5: the report holds the message's header, so it is protected
        # as the message was.
        requiretls=message.requiretls,
    )
    return Report(envelope, data)
