"""The POP3 server core, sans-IO (RFC 1939 with RFC 2449, 2595, 5034, 3206).

Bytes go in with ``receive_data()``; ``next_event()`` returns the next event
(``pillarbox.protocols.pop3.events``), ``NEED_DATA`` or ``PAUSED``; replies
accumulate and are taken with ``data_to_send()``.  The core owns syntax, the
state machine (one table, ``_SEQUENCE``) and limits; the session above it
decides on logins and on the maildrop through ``respond()``,
``respond_lines()``, ``respond_message()`` and ``challenge()``.

Extensions (RFC 2449 6): TOP, UIDL, USER, SASL (RFC 5034), RESP-CODES,
AUTH-RESP-CODE (RFC 3206), PIPELINING, EXPIRE NEVER, STLS (RFC 2595).

A message is sent piece by piece: after ``respond_message()``,
``data_to_send(n)`` gives at most about ``n`` octets of it at a time (the
adapter asks again when the socket drains), and the core reads no further
command until all of it is out.
"""

from __future__ import annotations

import binascii
import enum
import re
from dataclasses import dataclass

from pillarbox.protocols.pop3 import events as ev
from pillarbox.protocols.pop3.message import DotStuffer
from pillarbox.protocols.pop3.replies import (
    AUTH_CANCELLED,
    BARE_LINE_ENDING,
    LINE_TOO_LONG,
    NOT_UTF8,
    OK,
    PLAINTEXT_REFUSED,
    TOO_MANY_ERRORS,
    UNKNOWN_COMMAND,
    RemoteProtocolError,
    Reply,
    err,
    ok,
    render_lines,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of one session (0 means none).

    RFC 2449 4 allows 255 octets for a command line; a little more is taken,
    since some clients send long user names.  A line of an AUTH exchange may
    be longer (RFC 5034 4 sets no limit; SCRAM messages are a few hundred).
    """

    max_command_line: int = 1024
    max_auth_line: int = 16384
    max_errors: int = 20


class State(enum.Enum):
    """Where a session stands (RFC 1939 3)."""

    AUTHORIZATION = "authorization"  # before a successful login
    AUTH = "auth"                    # in an AUTH exchange, reading a client response
    TLS = "tls"                      # +OK to STLS sent, handshake pending
    TRANSACTION = "transaction"      # logged in, the maildrop is ours
    UPDATE = "update"                # QUIT received: deleted messages are being removed
    CLOSED = "closed"


S = State
_AUTHORIZATION = frozenset({S.AUTHORIZATION})
_TRANSACTION = frozenset({S.TRANSACTION})
_BOTH = frozenset({S.AUTHORIZATION, S.TRANSACTION})
_LOGGED_IN = err("Already logged in")
_LOG_IN_FIRST = err("Log in first (USER and PASS, or AUTH)")

# The one table of the state machine: for each command, the states in which
# it is accepted and the reply when it is not.  Commands absent from the
# table are unknown.  RFC 1939 3 and 5-7, RFC 2449 5, RFC 2595 4, RFC 5034 4.
_SEQUENCE: dict[str, tuple[frozenset[State], Reply]] = {
    "USER": (_AUTHORIZATION, _LOGGED_IN),
    "PASS": (_AUTHORIZATION, _LOGGED_IN),
    "APOP": (_AUTHORIZATION, _LOGGED_IN),
    "AUTH": (_AUTHORIZATION, _LOGGED_IN),
    "STLS": (_AUTHORIZATION, err("STLS is only allowed before login (RFC 2595 4)")),
    "CAPA": (_BOTH, UNKNOWN_COMMAND),
    "QUIT": (_BOTH, UNKNOWN_COMMAND),
    "STAT": (_TRANSACTION, _LOG_IN_FIRST),
    "LIST": (_TRANSACTION, _LOG_IN_FIRST),
    "UIDL": (_TRANSACTION, _LOG_IN_FIRST),
    "RETR": (_TRANSACTION, _LOG_IN_FIRST),
    "TOP": (_TRANSACTION, _LOG_IN_FIRST),
    "DELE": (_TRANSACTION, _LOG_IN_FIRST),
    "NOOP": (_TRANSACTION, _LOG_IN_FIRST),
    "RSET": (_TRANSACTION, _LOG_IN_FIRST),
}

# Mechanisms that carry the password itself (RFC 4616, and LOGIN's draft):
# over TLS only, unless the session allows plaintext (RFC 2595 2.3).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})

_NUMBER = re.compile(r"[0-9]{1,10}", re.ASCII)
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}", re.ASCII)   # RFC 4422 3.1


class POP3ServerConnection:
    """One POP3 session seen from the server side, without any I/O.

    ``plaintext_allowed`` (USER/PASS, AUTH PLAIN and LOGIN) and
    ``mechanisms`` (what CAPA and AUTH offer) are the session's to set; it
    sets them again after STLS.
    """

    def __init__(
        self,
        hostname: str,
        limits: Limits = Limits(),
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        plaintext_allowed: bool = False,
        mechanisms: tuple[str, ...] = (),
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.plaintext_allowed = plaintext_allowed
        self.mechanisms = mechanisms
        self.state = S.AUTHORIZATION
        self.errors = 0
        self.username: str | None = None    # given by USER, waiting for PASS
        self._in = bytearray()
        self._out: list[bytes] = []
        self._pending: ev.Event | None = None
        self._closing: ev.Closing | None = None
        self._skip_line = False
        self._body: memoryview | None = None
        self._body_pos = 0
        self._stuffer = DotStuffer()

    # ------------------------------------------------------------ public API

    def greeting(self, reply: Reply | None = None) -> None:
        """Queue the greeting (RFC 1939 4); no APOP timestamp, APOP is not offered."""
        self._send(reply or ok(f"{self.hostname} Pillarbox POP3 ready"))

    def receive_data(self, data: bytes) -> None:
        if self.state is S.TLS or self.state is S.CLOSED:
            return  # sent after STLS before the handshake: discarded (RFC 2595 4)
        self._in += data

    def data_to_send(self, max_body: int | None = None) -> bytes:
        """Replies so far, and of a message being sent at most ``max_body`` octets more."""
        out = b"".join(self._out)
        self._out.clear()
        body = self._body
        if body is None:
            return out
        end = len(body) if max_body is None else min(len(body), self._body_pos + max_body)
        piece = self._stuffer.feed(body[self._body_pos : end])
        self._body_pos = end
        if end < len(body):
            return out + piece
        self._body = None
        return out + piece + self._stuffer.end()

    @property
    def sending(self) -> bool:
        """A message is still being sent: call ``data_to_send()`` again."""
        return self._body is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet processed (for the adapter's back-pressure)."""
        return len(self._in)

    @property
    def closed(self) -> bool:
        return self.state is S.CLOSED

    @property
    def pending(self) -> ev.Event | None:
        """The event waiting for the session's answer."""
        return self._pending

    def respond(self, reply: Reply) -> None:
        """Answer the pending event with one status line."""
        pending = self._take_pending()
        if pending is None:
            return
        self._send(reply)
        if isinstance(pending, ev.Quit):
            self.state = S.CLOSED
            self._closing = ev.Closing(reply)
        elif isinstance(pending, (ev.PassLogin, ev.AuthStart, ev.AuthResponse)):
            if reply.ok:
                self.state = S.TRANSACTION
            else:
                self.state = S.AUTHORIZATION
                self._closing = self._count_error()

    def respond_lines(self, reply: Reply, lines: list[str] | tuple[str, ...]) -> None:
        """Answer LIST or UIDL without argument with a multi-line reply (RFC 1939 3)."""
        if self._take_pending() is not None:
            self._out.append(render_lines(reply, lines))

    def respond_message(self, reply: Reply, content: bytes) -> None:
        """Answer RETR or TOP: ``reply``, then ``content`` byte-stuffed, then ``.``."""
        if self._take_pending() is None:
            return
        self._send(reply)
        self._body = memoryview(content)
        self._body_pos = 0
        self._stuffer = DotStuffer()

    def challenge(self, data: bytes) -> None:
        """Answer ``AuthStart`` or ``AuthResponse`` with a server challenge (RFC 5034 4)."""
        if self._take_pending() is None:
            return
        self._out.append(b"+ " + binascii.b2a_base64(data, newline=False) + b"\r\n")
        self.state = S.AUTH

    def tls_established(self) -> None:
        """The handshake after STLS succeeded: start again from AUTHORIZATION (RFC 2595 4)."""
        self.tls_active = True
        self.state = S.AUTHORIZATION
        self.username = None
        self._in.clear()

    def close(self, reply: Reply) -> None:
        """Send a last reply (idle time-out, shutdown) and close."""
        if self.state is not S.CLOSED:
            self._body = None
            self._send(reply)
            self.state = S.CLOSED

    def next_event(self) -> ev.Event | ev._Sentinel:
        """The next event; loops over commands that need nothing from the session."""
        if self._closing is not None:
            closing, self._closing = self._closing, None
            return closing
        while True:
            if self._pending is not None or self._body is not None or self.state is S.TLS:
                return ev.PAUSED
            if self.state is S.CLOSED or self.state is S.UPDATE:
                return ev.NEED_DATA
            event = self._auth_line() if self.state is S.AUTH else self._command_event()
            if event is not None:
                return event

    # -------------------------------------------------------------- internals

    def _take_pending(self) -> ev.Event | None:
        pending = self._pending
        if pending is None:
            raise RuntimeError("no pending event to answer")
        self._pending = None
        if self.state is S.CLOSED:
            return None  # close() has sent the last reply
        return pending

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.render())

    def _count_error(self) -> ev.Closing | None:
        self.errors += 1
        limit = self.limits.max_errors
        if limit and self.errors >= limit and self.state is not S.CLOSED:
            self._send(TOO_MANY_ERRORS)
            self.state = S.CLOSED
            return ev.Closing(TOO_MANY_ERRORS)
        return None

    def _violation(self, command: str, reply: Reply) -> ev.Event:
        self._send(reply)
        return self._count_error() or ev.ProtocolViolation(command, reply)

    def _wait(self, event: ev.Event) -> ev.Event:
        self._pending = event
        return event

    def _read_line(self, limit: int) -> bytes | None | Reply:
        """The next line without CRLF, None if incomplete, or an error reply.

        Only CRLF ends a line (RFC 1939 3).  A bare LF still ends it, and the
        line is refused whole, so a client that sends LF alone hears at once
        what is wrong; a bare CR inside a line refuses it too.
        """
        buf = self._in
        lf = buf.find(b"\n")
        if self._skip_line:
            if lf < 0:
                buf.clear()
                return None
            del buf[: lf + 1]
            self._skip_line = False
            return LINE_TOO_LONG
        if lf < 0:
            if limit and len(buf) > limit:
                buf.clear()
                self._skip_line = True
            return None
        line = bytes(buf[:lf])
        del buf[: lf + 1]
        if limit and lf + 1 > limit:
            return LINE_TOO_LONG
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            return BARE_LINE_ENDING
        return line[:-1]

    def _command_event(self) -> ev.Event | ev._Sentinel | None:
        line = self._read_line(self.limits.max_command_line)
        if line is None:
            return ev.NEED_DATA
        if isinstance(line, Reply):
            return self._violation("", line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._violation("", NOT_UTF8)
        keyword, _, arg = text.partition(" ")
        # RFC 1939 3: keywords are ASCII, case-insensitive; str.upper() would
        # make "ı" an "I".
        keyword = keyword.upper() if keyword.isascii() else keyword
        entry = _SEQUENCE.get(keyword)
        if entry is None:
            return self._violation(keyword[:20], UNKNOWN_COMMAND)
        states, refusal = entry
        if self.state not in states:
            if keyword == "STLS" and self.tls_active:
                refusal = err("Command not permitted when TLS active (RFC 2595 4)")
            return self._violation(keyword, refusal)
        try:
            return _HANDLERS[keyword](self, arg)
        except RemoteProtocolError as exc:
            return self._violation(keyword, exc.reply)

    # ------------------------------------------------------------ arguments

    @staticmethod
    def _no_argument(keyword: str, arg: str) -> None:
        if arg.strip(" "):
            raise RemoteProtocolError(err(f"{keyword} takes no argument"))

    @staticmethod
    def _number(text: str, what: str = "message number") -> int:
        if _NUMBER.fullmatch(text) is None:
            raise RemoteProtocolError(err(f"Invalid {what}: a decimal number is expected"))
        return int(text)

    def _optional_msg(self, keyword: str, arg: str) -> int | None:
        args = arg.split()
        if len(args) > 1:
            raise RemoteProtocolError(err(f"Syntax: {keyword} [msg]"))
        return self._number(args[0]) if args else None

    def _msg(self, keyword: str, arg: str) -> int:
        args = arg.split()
        if len(args) != 1:
            raise RemoteProtocolError(err(f"Syntax: {keyword} msg"))
        return self._number(args[0])

    # ------------------------------------------------- AUTHORIZATION commands

    def _user(self, arg: str) -> ev.Event | None:
        if not self.plaintext_allowed:
            raise RemoteProtocolError(PLAINTEXT_REFUSED)
        name = arg.strip(" ")
        if not name:
            raise RemoteProtocolError(err("Syntax: USER name"))
        self.username = name
        self._send(ok("Send PASS"))
        return None

    def _pass(self, arg: str) -> ev.Event:
        if not self.plaintext_allowed:
            raise RemoteProtocolError(PLAINTEXT_REFUSED)
        username, self.username = self.username, None
        if username is None:
            raise RemoteProtocolError(err("Send USER first"))
        # RFC 1939 7: the password is the rest of the line, spaces included.
        return self._wait(ev.PassLogin(username, arg))

    def _apop(self, arg: str) -> ev.Event:
        raise RemoteProtocolError(err("APOP is not offered: use USER and PASS, or AUTH"))

    def _auth(self, arg: str) -> ev.Event | None:
        args = arg.split()
        if not args:
            # The RFC 1734 listing that some clients still ask for.
            self._out.append(render_lines(ok("Mechanisms follow"), self.mechanisms))
            return None
        if len(args) > 2:
            raise RemoteProtocolError(err("Syntax: AUTH mechanism [initial-response]"))
        mechanism = args[0].upper() if args[0].isascii() else args[0]
        if _MECHANISM.fullmatch(mechanism) is None:
            raise RemoteProtocolError(err("Invalid mechanism name"))
        if mechanism in PLAINTEXT_MECHANISMS and not self.plaintext_allowed:
            raise RemoteProtocolError(PLAINTEXT_REFUSED)
        if mechanism not in self.mechanisms:
            raise RemoteProtocolError(err(f"Unrecognized authentication type {mechanism}"))
        initial = None
        if len(args) == 2:
            initial = b"" if args[1] == "=" else _decode_base64(args[1])
        self.username = None
        return self._wait(ev.AuthStart(mechanism, initial))

    def _auth_line(self) -> ev.Event | ev._Sentinel | None:
        """A client response in an AUTH exchange (RFC 5034 4)."""
        line = self._read_line(self.limits.max_auth_line)
        if line is None:
            return ev.NEED_DATA
        self.state = S.AUTHORIZATION
        if isinstance(line, Reply):
            return self._violation("AUTH", line)
        if line == b"*":
            self._send(AUTH_CANCELLED)
            return ev.AuthCancelled()
        try:
            data = _decode_base64(line.decode("ascii"))
        except (UnicodeDecodeError, RemoteProtocolError):
            return self._violation("AUTH", err("Invalid base64 in AUTH response; exchange ended"))
        self.state = S.AUTH
        return self._wait(ev.AuthResponse(data))

    def _stls(self, arg: str) -> ev.Event:
        self._no_argument("STLS", arg)
        if self.tls_active:
            raise RemoteProtocolError(err("Command not permitted when TLS active (RFC 2595 4)"))
        if not self.tls_available:
            raise RemoteProtocolError(err("STLS is not available"))
        self._send(ok("Begin TLS negotiation"))
        # RFC 2595 4: what the client sent after STLS is plaintext that must
        # not be executed under TLS.
        self._in.clear()
        self.username = None
        self.state = S.TLS
        return ev.StartTLS()

    def _capa(self, arg: str) -> None:
        self._no_argument("CAPA", arg)
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self.state is S.AUTHORIZATION:
            if self.plaintext_allowed:
                lines.append("USER")
            if self.mechanisms:
                lines.append("SASL " + " ".join(self.mechanisms))
            if self.tls_available and not self.tls_active:
                lines.append("STLS")
        lines.append("IMPLEMENTATION Pillarbox")
        self._out.append(render_lines(ok("Capability list follows"), lines))

    def _quit(self, arg: str) -> ev.Event:
        self._no_argument("QUIT", arg)
        if self.state is S.TRANSACTION:
            self.state = S.UPDATE   # RFC 1939 6
            return self._wait(ev.Quit())
        reply = ok(f"{self.hostname} Pillarbox POP3 signing off")
        self._send(reply)
        self.state = S.CLOSED
        return ev.Closing(reply)

    # --------------------------------------------------- TRANSACTION commands

    def _stat(self, arg: str) -> ev.Event:
        self._no_argument("STAT", arg)
        return self._wait(ev.Stat())

    def _list(self, arg: str) -> ev.Event:
        return self._wait(ev.List(self._optional_msg("LIST", arg)))

    def _uidl(self, arg: str) -> ev.Event:
        return self._wait(ev.Uidl(self._optional_msg("UIDL", arg)))

    def _retr(self, arg: str) -> ev.Event:
        return self._wait(ev.Retr(self._msg("RETR", arg)))

    def _top(self, arg: str) -> ev.Event:
        args = arg.split()
        if len(args) != 2:
            raise RemoteProtocolError(err("Syntax: TOP msg n"))
        msg = self._number(args[0])
        return self._wait(ev.Top(msg, self._number(args[1], "number of lines")))

    def _dele(self, arg: str) -> ev.Event:
        return self._wait(ev.Dele(self._msg("DELE", arg)))

    def _noop(self, arg: str) -> None:
        self._no_argument("NOOP", arg)
        self._send(OK)

    def _rset(self, arg: str) -> ev.Event:
        self._no_argument("RSET", arg)
        return self._wait(ev.Rset())


def _decode_base64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RemoteProtocolError(err("Invalid base64")) from None


_HANDLERS = {
    "USER": POP3ServerConnection._user,
    "PASS": POP3ServerConnection._pass,
    "APOP": POP3ServerConnection._apop,
    "AUTH": POP3ServerConnection._auth,
    "STLS": POP3ServerConnection._stls,
    "CAPA": POP3ServerConnection._capa,
    "QUIT": POP3ServerConnection._quit,
    "STAT": POP3ServerConnection._stat,
    "LIST": POP3ServerConnection._list,
    "UIDL": POP3ServerConnection._uidl,
    "RETR": POP3ServerConnection._retr,
    "TOP": POP3ServerConnection._top,
    "DELE": POP3ServerConnection._dele,
    "NOOP": POP3ServerConnection._noop,
    "RSET": POP3ServerConnection._rset,
}

__all__ = ["Limits", "POP3ServerConnection", "State", "PLAINTEXT_MECHANISMS"]
