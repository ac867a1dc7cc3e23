"""Events that the SMTP server core hands to the session layer.

Five of them wait for a decision (``MailFrom``, ``RcptTo``, ``MessageEnd``, and
in an AUTH exchange ``AuthStart`` and ``AuthResponse``):
the core pauses until the session calls ``respond()`` with a reply, which keeps
pipelined commands (RFC 2920) in order.  The others are information: the core
has already answered, and the session only acts (opens a spool file, writes
data, starts TLS, closes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pillarbox.protocols.sentinel import Sentinel
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.protocols.smtp.params import MailParams, RcptParams
from pillarbox.protocols.smtp.reply import Reply


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO or EHLO was accepted; the transaction state is reset (RFC 5321 4.1.4)."""

    verb: str
    domain: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM: waits for ``respond()``.  ``reverse_path`` None is the null path."""

    reverse_path: Mailbox | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO: waits for ``respond()``."""

    forward_path: Mailbox
    params: RcptParams
    source_route: bool = False    # the path had a source route (RFC 5321 3.6.1, ignored)


@dataclass(frozen=True, slots=True)
class MessageStart:
    """DATA got its 354, or the first BDAT chunk begins: open the spool."""


@dataclass(frozen=True, slots=True)
class MessageData:
    """Message content, dot-unstuffed (DATA) or as sent (BDAT), in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The whole message arrived intact: waits for ``respond()`` (250 only once safe).
    ``tls_required_no``: its header has one ``TLS-Required: No`` field (RFC 8689 §3)."""

    size: int
    tls_required_no: bool = False


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """The message was refused by the core (``reply`` already sent): drop the spool."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET, or a new EHLO/HELO/STARTTLS: any transaction is gone."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """220 was sent for STARTTLS: begin the TLS handshake, then ``tls_established()``."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A client error the core answered (for logging); ``reply`` was sent."""

    command: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH with an offered mechanism (RFC 4954 4): waits for ``challenge()`` or
    ``respond()``.  ``initial`` is the decoded initial response, None if none was sent."""

    mechanism: str
    initial: bytes | None = field(repr=False)   # may hold a password


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's decoded answer to a 334 challenge: waits like ``AuthStart``."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client answered ``*``: the core sent 501 and the exchange is over (RFC 4954 4)."""


@dataclass(frozen=True, slots=True)
class Closing:
    """The core sent its last reply (221 or 421): flush output, then close."""

    reply: Reply


_Sentinel = Sentinel   # the cores' one marker type (protocols/sentinel.py)


NEED_DATA = _Sentinel("NEED_DATA")
"""No complete command or data in the buffer: feed more bytes."""

PAUSED = _Sentinel("PAUSED")
"""An event waits for ``respond()``, or TLS is being set up."""

Event = (
    Hello | MailFrom | RcptTo | MessageStart | MessageData | MessageEnd | MessageAborted
    | Reset | StartTLS | ProtocolViolation | Closing | AuthStart | AuthResponse | AuthCancelled
)

Decision = MailFrom | RcptTo | MessageEnd | AuthStart | AuthResponse
"""The events that wait for the session's answer."""
