"""Delivery status notifications (RFC 3464 inside RFC 6522) and plain system messages.

:func:`build_dsn` writes a ``multipart/report; report-type=delivery-status``
with three parts: a human-readable explanation, the machine-readable
``message/delivery-status`` (per-message fields, then one block per recipient,
RFC 3464 §2.2-2.3) and the returned headers (``text/rfc822-headers``) or the
whole message (``message/rfc822``, made 7-bit first). Reports are marked
``Auto-Submitted: auto-replied`` (RFC 3834 §5) so that they are never answered
automatically, and are sent with a null reverse path by the caller (RFC 5321
§4.5.5).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .dates import format_date
from .encodings import encode_qp
from .generate import address_field, header_field, needs_smtputf8, to_7bit
from .parser import parse

__all__ = ["RecipientStatus", "build_dsn", "build_system_message"]

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a delivery-status part (RFC 3464 §2.3)."""

    final_recipient: str
    action: Action
    status: str  # enhanced status code, RFC 3463: "5.1.1"
    original_recipient: str | None = None  # the ORCPT of RFC 3461, "rfc822;addr"
    remote_mta: str | None = None
    diagnostic_code: str | None = None  # e.g. "550 5.1.1 No such user"
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None

    def fields(self) -> list[str]:
        out = []
        if self.original_recipient:
            orcpt = self.original_recipient
            out.append(f"Original-Recipient: {orcpt if ';' in orcpt else 'rfc822;' + orcpt}")
        # RFC 6533 3: a non-ASCII address is of type "utf-8", in a
        # message/global-delivery-status (build_dsn), never made ASCII.
        kind = "rfc822" if self.final_recipient.isascii() else "utf-8"
        out.append(f"Final-Recipient: {kind};{self.final_recipient}")
        out.append(f"Action: {self.action}")
        out.append(f"Status: {self.status}")
        if self.remote_mta:
            out.append(f"Remote-MTA: dns;{self.remote_mta}")
        if self.diagnostic_code:
            out.append(f"Diagnostic-Code: smtp;{_field_value(self.diagnostic_code)}")
        if self.last_attempt:
            out.append(f"Last-Attempt-Date: {format_date(self.last_attempt)}")
        if self.will_retry_until:
            out.append(f"Will-Retry-Until: {format_date(self.will_retry_until)}")
        return out


def _field_value(text: str) -> str:
    """A delivery-status field value: each line of ``text`` as it is, the lines
    after the first folded onto continuation lines (RFC 5322 §2.2.3), so that a
    multi-line SMTP reply is quoted exactly (RFC 3464 §2.3.6) and unfolds to
    its lines joined by spaces; control characters and non-ASCII become ``?``."""
    lines = ["".join(ch if " " <= ch <= "~" or ch == "\t" else "?" for ch in line).strip()
             for line in text.replace("\r", "").split("\n")]
    return "\r\n ".join(line for line in lines if line)


def _message_id(domain: str) -> str:
    return f"<{secrets.token_hex(12)}@{domain}>"


def _text_part(text: str) -> bytes:
    data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    if data.isascii():
        return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + data
    return (b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encode_qp(data))


def _headers(from_addr: str, to_addr: str, subject: str, when: datetime | None,
             domain: str, extra: list[bytes]) -> bytes:
    when = when or datetime.now(UTC)
    return b"".join([
        address_field("From", [(None, from_addr)]),
        address_field("To", [(None, to_addr)]),
        header_field("Subject", subject),
        b"Date: " + format_date(when).encode() + b"\r\n",
        b"Message-ID: " + _message_id(domain).encode() + b"\r\n",
        b"MIME-Version: 1.0\r\n",
        b"Auto-Submitted: auto-replied\r\n",
        *extra,
    ])


def build_dsn(
    *,
    reporting_mta: str,
    from_addr: str,
    to_addr: str,
    original: bytes,
    recipients: list[RecipientStatus],
    return_content: Literal["headers", "full"] = "headers",
    envelope_id: str | None = None,
    arrival_date: datetime | None = None,
    explanation: str | None = None,
    date: datetime | None = None,
) -> bytes:
    """A complete DSN message (RFC 3464 §2, RFC 6522 §3), CRLF line ends, 7-bit
    unless a recipient's address is not ASCII (RFC 6533: then UTF-8, in
    ``message/global-delivery-status``).

    ``return_content`` follows the RET parameter of RFC 3461 §4.3: ``headers``
    returns only the original header, ``full`` the whole message.
    """
    boundary = "=_report_" + secrets.token_hex(8)
    failed = any(r.action == "failed" for r in recipients)
    subject = ("Undelivered Mail Returned to Sender" if failed
               else "Delivery Status Notification")
    if explanation is None:
        lines = [f"This is the mail system at {reporting_mta}.", ""]
        if failed:
            lines.append("Your message could not be delivered to one or more recipients.")
        else:
            lines.append("This is a report about the delivery of your message.")
        lines.append("")
        for r in recipients:
            why = f": {r.diagnostic_code}" if r.diagnostic_code else ""
            lines.append(f"<{r.final_recipient}>: {r.action} ({r.status}){why}")
        explanation = "\r\n".join(lines) + "\r\n"

    per_message = [f"Reporting-MTA: dns;{reporting_mta}"]
    if envelope_id:
        per_message.append(f"Original-Envelope-Id: {_field_value(envelope_id)}")
    if arrival_date:
        per_message.append(f"Arrival-Date: {format_date(arrival_date)}")
    status_body = "\r\n".join(per_message) + "\r\n"
    for r in recipients:
        status_body += "\r\n" + "\r\n".join(r.fields()) + "\r\n"
    status = status_body.encode("utf-8")
    # RFC 6533 6.2: the fields of an internationalised address are UTF-8, in
    # message/global-delivery-status (ASCII with "?" would name nobody).
    status_type = b"message/delivery-status" if status.isascii() else \
        b"message/global-delivery-status"

    root = parse(original)
    # Internationalised addresses cannot be made 7-bit: return them as RFC 6532
    # content in the RFC 6533 types, whose point is to carry it.
    intl = needs_smtputf8(original)
    if return_content == "full":
        ctype = b"message/global" if intl else b"message/rfc822"
        returned = b"Content-Type: " + ctype + b"\r\n\r\n" + to_7bit(original)
    else:
        ctype = b"message/global-headers" if intl else b"text/rfc822-headers"
        header = to_7bit(original[: root.body_start]) if root.body_start else b"\r\n"
        returned = b"Content-Type: " + ctype + b"\r\n\r\n" + header

    head = _headers(from_addr, to_addr, subject, date, reporting_mta, [
        f"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f"\tboundary=\"{boundary}\"\r\n".encode()])
    b = boundary.encode()
    return b"".join([
        head, b"\r\nThis is a MIME-encapsulated delivery status report.\r\n",
        b"\r\n--", b, b"\r\n", _text_part(explanation),
        b"\r\n--", b, b"\r\nContent-Type: ", status_type, b"\r\n\r\n", status,
        b"\r\n--", b, b"\r\n", returned,
        b"" if returned.endswith(b"\r\n") else b"\r\n",
        b"--", b, b"--\r\n",
    ])


def build_system_message(*, from_addr: str, to_addr: str, subject: str, text: str,
                         domain: str, date: datetime | None = None,
                         auto_submitted: str = "auto-generated") -> bytes:
    """A plain text message from the system (quota warnings, welcome notes...)."""
    head = _headers(from_addr, to_addr, subject, date, domain, [])
    head = head.replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: " + auto_submitted.encode())
    return head + _text_part(text)
