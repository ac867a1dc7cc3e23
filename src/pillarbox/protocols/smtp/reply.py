"""SMTP replies: a typed value that renders itself.

Every reply carries its basic code (RFC 5321 §4.2) and, because Pillarbox
advertises ENHANCEDSTATUSCODES, an enhanced status code (RFC 2034, codes from
RFC 3463) on every line except the greeting, whose code RFC 2034 §3 excludes.

The exception tree of the SMTP core::

    SMTPProtocolError            a reply the core sends instead of going on
    ├── RemoteProtocolError      the client broke the protocol (syntax, sequence)
    └── LocalProtocolError       we cannot go on (resources, policy of the core)

Any other exception escaping the core is a bug; the property test in
``tests/fuzz`` states exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass


class ReplyClass:
    """What a reply's code says of the command (RFC 5321 §4.2.1): the replies
    we send (:class:`Reply`) and those we receive (the client core's
    ``ServerReply``) alike."""

    __slots__ = ()
    code: int

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True, slots=True)
class Reply(ReplyClass):
    """One SMTP reply: ``code``, enhanced ``status`` (may be empty), and text lines."""

    code: int
    status: str
    text: str | tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text


    def render(self) -> bytes:
        """Render as wire bytes: ``code-`` continuation lines, ``code SP`` last line."""
        text = self.text
        prefix = f"{self.status} " if self.status else ""
        if isinstance(text, str):     # the usual case: one line
            return f"{self.code} {prefix}{text}\r\n".encode("utf-8", "replace")
        lines = text or ("",)
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        return f"{self.code} {prefix}{' / '.join(self.lines)}"


class SMTPProtocolError(Exception):
    """A protocol failure that the core answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class RemoteProtocolError(SMTPProtocolError):
    """The client's fault: bad syntax, bad sequence, limits exceeded."""


class LocalProtocolError(SMTPProtocolError):
    """Our side cannot go on: we answer and usually close."""


# Replies used in more than one place.  Texts follow RFC 5321 §4.2.2 and the
# enhanced codes RFC 3463 §3 (X.5.x protocol, X.1.x addressing, X.3.x system,
# X.7.x security).
OK = Reply(250, "2.0.0", "Ok")
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_LINE_ENDING = Reply(
    500, "5.5.2", "Bare CR or LF in command: only CRLF ends a line (RFC 5321 2.3.8)"
)
ARG_SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
PARAM_NOT_IMPLEMENTED = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
MAIL_LOOP = Reply(554, "5.4.6", "Too many hops: mail loop detected (RFC 5321 6.3)")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
# SMTP AUTH (RFC 4954 4 and 6).
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled by the client")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
# RFC 3463 X.2.2 mailbox full; transient (RFC 5321 4.2.2), so the sender retries.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
