"""POP3 replies: a typed value that renders itself (RFC 1939 3, RFC 2449 8).

A reply is a status indicator (``+OK`` or ``-ERR``), an optional extended
response code in brackets (RFC 2449 8, RFC 3206: ``[IN-USE]``,
``[LOGIN-DELAY]``, ``[SYS/TEMP]``, ``[SYS/PERM]``, ``[AUTH]``) and a text.
A multi-line reply adds lines, byte-stuffed and ended by ``.`` (RFC 1939 3).

The exception tree of the POP3 core::

    POP3ProtocolError            a reply the core sends instead of going on
    ├── RemoteProtocolError      the client broke the protocol (syntax, sequence)
    └── LocalProtocolError       we cannot go on (a limit of the core)

Any other exception escaping the core is a bug; ``tests/fuzz/test_pop3_fuzz.py``
states exactly that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Code(enum.Enum):
    """Extended response codes (RFC 2449 8.1, RFC 3206 4 and 5)."""

    IN_USE = "IN-USE"            # the maildrop is locked by another session
    LOGIN_DELAY = "LOGIN-DELAY"  # logged in too recently
    SYS_TEMP = "SYS/TEMP"        # a temporary problem on our side: try later
    SYS_PERM = "SYS/PERM"        # a permanent problem on our side: ask an administrator
    AUTH = "AUTH"                # the credentials are wrong or not acceptable


@dataclass(frozen=True, slots=True)
class Reply:
    """One status line: ``+OK text`` or ``-ERR [CODE] text``."""

    ok: bool
    text: str = ""
    code: Code | None = None

    def render(self) -> bytes:
        words = ["+OK" if self.ok else "-ERR"]
        if self.code is not None:
            words.append(f"[{self.code.value}]")
        if self.text:
            words.append(self.text)
        # The text is ours; CR and LF in it would break the framing.
        line = " ".join(words).replace("\r", " ").replace("\n", " ")
        return line.encode("utf-8", "replace") + b"\r\n"

    def __str__(self) -> str:
        return self.render().decode("utf-8").rstrip("\r\n")


def render_lines(reply: Reply, lines: list[str] | tuple[str, ...]) -> bytes:
    """A multi-line reply (RFC 1939 3): status line, stuffed lines, ``.``."""
    out = [reply.render()]
    for line in lines:
        data = line.encode("utf-8", "replace")
        out.append(b"." + data + b"\r\n" if data.startswith(b".") else data + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


def ok(text: str = "") -> Reply:
    return Reply(True, text)


def err(text: str, code: Code | None = None) -> Reply:
    return Reply(False, text, code)


class POP3ProtocolError(Exception):
    """A protocol failure that the core answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class RemoteProtocolError(POP3ProtocolError):
    """The client's fault: bad syntax, bad sequence, a limit exceeded."""


class LocalProtocolError(POP3ProtocolError):
    """Our side cannot go on: we answer and usually close."""


# Replies used in more than one place.
OK = ok()
UNKNOWN_COMMAND = err("Unknown command")
LINE_TOO_LONG = err("Line too long (RFC 2449 4: commands are at most 255 octets)")
BARE_LINE_ENDING = err("Bare CR or LF in command: only CRLF ends a line (RFC 1939 3)")
NOT_UTF8 = err("Command is not valid UTF-8")
TOO_MANY_ERRORS = err("Too many errors, closing connection")
TIMEOUT = err("Idle for too long, closing connection (RFC 1939 3)")
SHUTTING_DOWN = err("Server shutting down, try again later", Code.SYS_TEMP)
TOO_MANY_CONNECTIONS = err("Too many connections, try again later", Code.SYS_TEMP)
NO_SUCH_MESSAGE = err("No such message")
AUTH_CANCELLED = err("Authentication cancelled (RFC 5034 4)")
PLAINTEXT_REFUSED = err(
    "Plaintext authentication is only allowed over TLS: use STLS first", Code.AUTH
)
