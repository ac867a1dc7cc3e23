"""What the SMTP client core hands out: the server's replies, its extensions, events.

A :class:`ServerReply` keeps a reply exactly as the server sent it (RFC 5321
§4.2), so that a DSN can quote it (RFC 3464 §2.3.6); :class:`Extensions` is
what the EHLO reply offered (RFC 5321 §4.1.1.1); the events are what
``SMTPClientConnection.next_event()`` returns (``pillarbox.protocols.smtp.client``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pillarbox.protocols.sentinel import Sentinel
from pillarbox.protocols.smtp.reply import Reply, ReplyClass

__all__ = [
    "NEED_DATA",
    "AuthDone",
    "ConnectionClosed",
    "EnvelopeDone",
    "Event",
    "Extensions",
    "Greeting",
    "HelloDone",
    "MessageDone",
    "ReplyEvent",
    "ServerClosing",
    "ServerReply",
    "StartTLSDone",
]

# ------------------------------------------------------------------ replies

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


@dataclass(frozen=True, slots=True)
class ServerReply(ReplyClass):
    """A reply as the server sent it: its code and the text of each line.

    ``lines`` hold what follows ``NNN-`` / ``NNN SP`` on each line, unchanged,
    so that :meth:`quote` gives the reply back exactly (RFC 3464 §2.3.6 wants
    the remote reply in a DSN as it came).
    """

    code: int
    lines: tuple[str, ...]

    @property
    def status(self) -> str:
        """The enhanced status code of the first line (RFC 2034 §4), or ``""``."""
        m = _ENHANCED.match(self.lines[0]) if self.lines else None
        if m is None or m.group(1) != str(self.code)[0]:
            return ""
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"

    def status_or(self, default_detail: str = "0.0") -> str:
        """The enhanced code, or ``X.0.0`` from the basic code (RFC 3463 §3.1)."""
        return self.status or f"{str(self.code)[0]}.{default_detail}"

    @property
    def text(self) -> str:
        """The text of the first line without its enhanced code."""
        first = self.lines[0] if self.lines else ""
        status = self.status
        return first[len(status) + 1 :] if status else first


    def quote(self) -> str:
        """The reply exactly as sent, lines joined by ``"\\n"`` (no CRLF)."""
        last = len(self.lines) - 1
        return "\n".join(
            f"{self.code}{'-' if i < last else ' '}{line}" if line or i < last else f"{self.code}"
            for i, line in enumerate(self.lines)
        )

    def as_reply(self) -> Reply:
        """The reply as the typed value the rest of Pillarbox uses."""
        status = self.status
        texts = tuple(ln[len(status) + 1 :] if status and ln.startswith(status) else ln
                      for ln in self.lines)
        return Reply(self.code, status, texts if len(texts) != 1 else texts[0])

    def __str__(self) -> str:
        return self.quote()


# -------------------------------------------------------------- extensions


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the EHLO reply offered (RFC 5321 §4.1.1.1): keyword → parameters."""

    keywords: dict[str, str] = field(default_factory=dict)
    esmtp: bool = True       # False after the HELO fallback: no extension at all

    @classmethod
    def parse(cls, reply: ServerReply) -> Extensions:
        """The keywords of lines 2.. of a 250 reply to EHLO (``ehlo-line``)."""
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if not keyword:
                continue
            if keyword.upper().startswith("AUTH="):  # the pre-RFC 4954 form
                keyword, params = "AUTH", keyword[5:].replace(",", " ") + " " + params
            keywords.setdefault(keyword.upper(), params.strip())
        return cls(keywords)

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def pipelining(self) -> bool:
        return self.has("PIPELINING")

    @property
    def eightbitmime(self) -> bool:
        return self.has("8BITMIME")

    @property
    def smtputf8(self) -> bool:
        return self.has("SMTPUTF8")

    @property
    def chunking(self) -> bool:
        return self.has("CHUNKING")

    @property
    def dsn(self) -> bool:
        return self.has("DSN")

    @property
    def enhanced_status_codes(self) -> bool:
        return self.has("ENHANCEDSTATUSCODES")

    @property
    def starttls(self) -> bool:
        return self.has("STARTTLS")

    @property
    def requiretls(self) -> bool:
        """RFC 8689 §2; counts only in the EHLO reply under TLS."""
        return self.has("REQUIRETLS")

    @property
    def size(self) -> int | None:
        """SIZE's limit (RFC 1870 §4): 0 is no fixed limit; None: SIZE not offered."""
        if not self.has("SIZE"):
            return None
        value = self.keywords["SIZE"]
        return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else 0

    @property
    def auth(self) -> frozenset[str]:
        """The SASL mechanisms offered (RFC 4954 §3), upper case."""
        return frozenset(m.upper() for m in self.keywords.get("AUTH", "").split())

    def __str__(self) -> str:
        return " ".join(sorted(self.keywords)) if self.esmtp else "(HELO)"


# ------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's banner (RFC 5321 §4.3.1); only 220 lets the session go on."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class HelloDone:
    """EHLO (or HELO after a 5xx to EHLO) was answered."""

    reply: ServerReply
    extensions: Extensions


@dataclass(frozen=True, slots=True)
class StartTLSDone:
    """STARTTLS answered: on 220 start the handshake, then ``tls_established()``."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class AuthDone:
    """AUTH finished: 235 (RFC 4954 §6) or a refusal."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class EnvelopeDone:
    """MAIL and every RCPT answered (and DATA, when sent).

    ``rcpts[i]`` is None when RCPT *i* was never sent (MAIL was refused
    without pipelining).  With ``accepted`` the caller sends the content
    (``send_content``, ``end_content``); otherwise the transaction is over.
    """

    mail: ServerReply
    rcpts: tuple[ServerReply | None, ...]
    data: ServerReply | None
    accepted: bool


@dataclass(frozen=True, slots=True)
class MessageDone:
    """The reply to the end of the content: applies to every accepted recipient."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    """The reply to RSET, NOOP or QUIT."""

    command: str
    reply: ServerReply


@dataclass(frozen=True, slots=True)
class ServerClosing:
    """A 421 that answered nothing (RFC 5321 §3.8): the server is closing."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection ended; ``waiting`` names the command left without a reply."""

    waiting: str | None


_Sentinel = Sentinel   # the cores' one marker type (protocols/sentinel.py)


NEED_DATA = _Sentinel("NEED_DATA")

Event = (Greeting | HelloDone | StartTLSDone | AuthDone | EnvelopeDone | MessageDone
         | ReplyEvent | ServerClosing | ConnectionClosed)
