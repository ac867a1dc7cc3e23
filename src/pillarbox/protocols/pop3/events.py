"""Events that the POP3 server core hands to the session layer.

Those that name a decision (logins, AUTH steps, the TRANSACTION commands and
QUIT in TRANSACTION) wait for the session: the core pauses until it answers
with ``respond()``, ``respond_lines()``, ``respond_message()`` or
``challenge()``, which keeps pipelined commands (RFC 2449 6.6) in order.  The
others are information: the core has already answered.

Message numbers are parsed as numbers (1 or more); whether they name a
message of the maildrop is the session's to decide (RFC 1939 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from pillarbox.protocols.pop3.replies import Reply
from pillarbox.protocols.sentinel import Sentinel


_Sentinel = Sentinel   # the cores' one marker type (protocols/sentinel.py)


NEED_DATA = _Sentinel("NEED_DATA")   # nothing more without more bytes
PAUSED = _Sentinel("PAUSED")         # waiting for the session, TLS or output to drain


# ------------------------------------------------------------- AUTHORIZATION


@dataclass(frozen=True, slots=True)
class PassLogin:
    """USER then PASS (RFC 1939 7): waits for ``respond()``."""

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH mechanism [initial-response] (RFC 5034 4): waits for ``challenge()``
    or ``respond()``.  ``initial`` is None without an initial response, and
    ``b""`` for the ``=`` that stands for an empty one."""

    mechanism: str
    initial: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client response in an AUTH exchange, decoded: waits as ``AuthStart`` does."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client sent ``*`` (RFC 5034 4); the core has answered -ERR."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STLS was answered +OK (RFC 2595 4): start the handshake, then call
    ``tls_established()``."""


# --------------------------------------------------------------- TRANSACTION


@dataclass(frozen=True, slots=True)
class Stat:
    """STAT (RFC 1939 5): waits for ``respond()``."""


@dataclass(frozen=True, slots=True)
class List:
    """LIST [msg] (RFC 1939 5): one message (``respond()``) or all (``respond_lines()``)."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Uidl:
    """UIDL [msg] (RFC 1939 7): as ``List``."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    """RETR msg (RFC 1939 5): ``respond_message()`` or ``respond()`` with -ERR."""

    msg: int


@dataclass(frozen=True, slots=True)
class Top:
    """TOP msg n (RFC 1939 7): the header and the first ``lines`` lines of the body."""

    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    """DELE msg (RFC 1939 5): waits for ``respond()``."""

    msg: int


@dataclass(frozen=True, slots=True)
class Rset:
    """RSET (RFC 1939 5): waits for ``respond()``."""


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT in TRANSACTION: enter UPDATE (RFC 1939 6), remove the deleted
    messages, then ``respond()``; the core closes after the reply."""


# ---------------------------------------------------------------- any state


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A command was refused; the core has answered (for the log)."""

    command: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Closing:
    """The core sent its last reply: close the connection once it is written."""

    reply: Reply


Event = (
    PassLogin | AuthStart | AuthResponse | AuthCancelled | StartTLS | Stat | List | Uidl
    | Retr | Top | Dele | Rset | Quit | ProtocolViolation | Closing
)

# The events the session must answer before the core goes on.
DECISIONS = (PassLogin, AuthStart, AuthResponse, Stat, List, Uidl, Retr, Top, Dele, Rset, Quit)
