"""The SMTP client core, sans-IO (RFC 5321 §3-4 seen from the sending side).

Bytes from the server go in with ``receive_data()`` (``receive_eof()`` when
the connection closes); ``next_event()`` returns the next event or
``NEED_DATA``; commands are asked for with methods (``hello()``,
``starttls()``, ``auth()``, ``send_envelope()``, ``send_content()``,
``end_content()``, ``reset()``, ``quit()``) and their bytes taken with
``data_to_send()``.  Nothing here knows about sockets, time or TLS records.

What the core owns:

- reply syntax (RFC 5321 §4.2): multi-line replies, one code per reply,
  limits on line length and on lines per reply, so that a hostile server
  cannot make us buffer without bound;
- the order of commands, including RFC 2920 pipelining: with PIPELINING,
  MAIL, the RCPTs and DATA leave in one write, and only EHLO, DATA, BDAT
  LAST, STARTTLS, AUTH, NOOP and QUIT end a group (RFC 2920 §3.1); without it,
  one command at a time, and RCPTs and DATA are not sent after a refused MAIL
  or when every RCPT was refused;
- the service extensions (EHLO, falling back to HELO on a 5xx, RFC 5321
  §3.2): SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN
  (RFC 3461), CHUNKING (RFC 3030), ENHANCEDSTATUSCODES (RFC 2034), STARTTLS
  (RFC 3207), AUTH (RFC 4954) and REQUIRETLS (RFC 8689, only under TLS).
  Parameters are only sent to a server that offered their extension;
- content framing: DATA with dot-stuffing (RFC 5321 §4.5.2) and every bare CR
  or LF made a CRLF (RFC 5321 §2.3.8 forbids sending them), or BDAT chunks.

The exception tree::

    SMTPClientError           the session cannot go on
    ├── ServerProtocolError   the server's fault: a malformed or unexpected reply
    └── LocalClientError      ours: a command out of sequence, an envelope the
                              server cannot take as asked (e.g. SMTPUTF8 not offered)

Any other exception escaping the core is a bug.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from pillarbox.protocols.smtp.client_events import (
    NEED_DATA,
    AuthDone,
    ConnectionClosed,
    EnvelopeDone,
    Event,
    Extensions,
    Greeting,
    HelloDone,
    MessageDone,
    ReplyEvent,
    ServerClosing,
    ServerReply,
    StartTLSDone,
    _Sentinel,
)
from pillarbox.protocols.smtp.params import utf8_addr_encode, xtext_decode, xtext_encode

__all__ = [
    "NEED_DATA",
    "AuthDone",
    "ClientLimits",
    "ConnectionClosed",
    "EnvelopeDone",
    "Envelope",
    "Event",
    "Extensions",
    "Greeting",
    "HelloDone",
    "LocalClientError",
    "LoginClient",
    "MessageDone",
    "PlainClient",
    "Recipient",
    "ReplyEvent",
    "SASLClient",
    "SMTPClientConnection",
    "SMTPClientError",
    "ServerClosing",
    "ServerProtocolError",
    "ServerReply",
    "StartTLSDone",
    "State",
]


# ------------------------------------------------------------------- errors


class SMTPClientError(Exception):
    """The client session cannot go on; ``str()`` says what was wrong."""


class ServerProtocolError(SMTPClientError):
    """The server broke the protocol: a malformed reply, a reply to nothing, a limit."""


class LocalClientError(SMTPClientError):
    """We asked for something the session cannot do now or with this server."""


# -------------------------------------------------------------- the envelope


@dataclass(frozen=True, slots=True)
class Recipient:
    """A forward path with its DSN parameters (RFC 3461 §4.1-4.2)."""

    address: str
    notify: str | None = None     # "NEVER" or e.g. "SUCCESS,FAILURE"
    orcpt: str | None = None      # "addr-type;xtext", as the queue stores it


@dataclass(frozen=True, slots=True)
class Envelope:
    """One transaction: reverse path ('' is ``<>``), recipients, MAIL parameters."""

    reverse_path: str
    recipients: tuple[Recipient, ...]
    size: int | None = None       # RFC 1870: octets we will send
    body: str | None = None       # "7BIT" / "8BITMIME" (RFC 6152)
    smtputf8: bool = False        # RFC 6531 §3.4
    ret: str | None = None        # "FULL" / "HDRS" (RFC 3461 §4.3)
    envid: str | None = None      # decoded; sent as xtext (RFC 3461 §4.4)
    requiretls: bool = False      # RFC 8689 §4.2.1: MAIL FROM … REQUIRETLS, under TLS only


# ------------------------------------------------------------------- SASL


class SASLClient(Protocol):
    """The client side of one SASL mechanism (RFC 4422), as AUTH drives it."""

    name: str

    def initial_response(self) -> bytes | None:
        """The initial response sent with AUTH (RFC 4954 §4), or None to wait for 334."""

    def respond(self, challenge: bytes) -> bytes:
        """The answer to a 334 challenge; ValueError if the challenge is wrong."""

    def verify_success(self) -> None:
        """Called on 235; ValueError if the server has not proved itself (SCRAM)."""


class PlainClient:
    """PLAIN (RFC 4616): ``authzid NUL authcid NUL password`` in the initial response."""

    name = "PLAIN"

    def __init__(self, username: str, password: str, authzid: str = "") -> None:
        self._message = f"{authzid}\0{username}\0{password}".encode()

    def initial_response(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        if challenge:
            raise ValueError("PLAIN takes no challenge after the initial response")
        return self._message

    def verify_success(self) -> None:
        return None


class LoginClient:
    """LOGIN (draft-murchison-sasl-login): user name, then password, on 334."""

    name = "LOGIN"

    def __init__(self, username: str, password: str) -> None:
        self._answers = [username.encode(), password.encode()]

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise ValueError("LOGIN was challenged more than twice")
        return self._answers.pop(0)

    def verify_success(self) -> None:
        return None


# ------------------------------------------------------------ state machine


class State(enum.Enum):
    CONNECTED = "waiting for the greeting"
    GREETED = "greeted, EHLO not done"
    READY = "ready for a transaction"
    CONTENT = "sending message content"
    TLS = "STARTTLS accepted, handshake pending"
    CLOSED = "closed"


S = State

# The one table: each command and the states in which it may be asked for.
# Everything that happens between the asking and the answer is tracked by
# the queue of commands in flight, not by more states.
_COMMANDS: dict[str, frozenset[State]] = {
    "hello": frozenset({S.GREETED, S.READY}),
    "starttls": frozenset({S.READY}),
    "auth": frozenset({S.READY}),
    "mail": frozenset({S.READY}),
    "content": frozenset({S.CONTENT}),
    "rset": frozenset({S.READY}),
    "noop": frozenset({S.READY}),
    "quit": frozenset({S.GREETED, S.READY}),
}

# Commands after which nothing may be pipelined (RFC 2920 §3.1; RFC 3030 §4.2).
_SYNC = frozenset({"GREETING", "EHLO", "HELO", "DATA", "BDAT LAST", "STARTTLS", "AUTH",
                   "NOOP", "QUIT", "DOT", "DISCARD"})

_REPLY_LINE = re.compile(r"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)   # RFC 5321 4.2
_BARE = re.compile(rb"\r\n|\r|\n")
_UNSAFE = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Bounds on what a server may make us buffer (RFC 5321 §4.5.3.1.5 says 512)."""

    max_reply_line: int = 4096      # octets, CRLF included
    max_reply_lines: int = 128      # lines in one multi-line reply


@dataclass(slots=True)
class _Command:
    name: str                   # "MAIL", "RCPT", "BDAT", ...
    line: bytes                 # what to write (may carry a BDAT chunk)
    index: int = -1             # RCPT: the recipient's index


@dataclass(slots=True)
class _Transaction:
    envelope: Envelope
    bdat: bool
    mail: ServerReply | None = None
    rcpts: list[ServerReply | None] = field(default_factory=list)
    data: ServerReply | None = None
    failed_chunk: ServerReply | None = None
    phase: str = "envelope"     # "envelope" → "content" (accepted) → "ending" (end sent)


class SMTPClientConnection:
    """One SMTP session seen from the client side, without any I/O."""

    def __init__(self, helo_name: str, limits: ClientLimits = ClientLimits(), *,
                 use_chunking: bool = True) -> None:
        if not helo_name or _UNSAFE.search(helo_name) or " " in helo_name:
            raise ValueError(f"bad HELO name {helo_name!r}")
        self.helo_name = helo_name
        self.limits = limits
        self.use_chunking = use_chunking
        self.state = S.CONNECTED
        self.extensions = Extensions(esmtp=False)
        self.tls_active = False
        self.fixed_line_endings = 0   # bare CR/LF turned into CRLF in content
        self._in = bytearray()
        self._out: list[bytes] = []
        self._lines: list[str] = []   # the lines of the reply being read
        self._code = ""
        self._eof = False
        self._inflight: deque[_Command] = deque([_Command("GREETING", b"")])
        self._unsent: deque[_Command] = deque()
        self._tx: _Transaction | None = None
        self._replies = 0
        self._sasl: SASLClient | None = None
        self._bol = True              # content: at the beginning of a line
        self._cr = False              # content: a CR held back from the last chunk
        self._chunk: bytes | None = None   # BDAT: the chunk held back for LAST

    # ------------------------------------------------------------ plumbing

    def receive_data(self, data: bytes) -> None:
        if self.state is not S.CLOSED:
            self._in += data

    def receive_eof(self) -> None:
        self._eof = True

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.state is S.CLOSED

    @property
    def awaiting(self) -> str | None:
        """The command whose reply is awaited now (for the adapter's time-outs)."""
        return self._inflight[0].name if self._inflight else None

    @property
    def replies(self) -> int:
        """How many replies have been read so far."""
        return self._replies

    @property
    def waiting(self) -> bool:
        """True while replies are outstanding."""
        return bool(self._inflight or self._unsent)

    def next_event(self) -> Event | _Sentinel:
        """The next event, or NEED_DATA; raises :class:`ServerProtocolError`."""
        while True:
            reply = self._read_reply()
            if reply is None:
                if self._eof and not self._in:
                    return self._connection_closed()
                if self._eof:
                    self.state = S.CLOSED
                    raise ServerProtocolError(
                        f"connection closed in the middle of a reply: {bytes(self._in[:80])!r}")
                return NEED_DATA
            event = self._dispatch(reply)
            self._flush()
            if event is not None:
                return event

    def _connection_closed(self) -> Event | _Sentinel:
        if self.state is S.CLOSED and not self._inflight:
            return NEED_DATA
        waiting = self._inflight[0].name if self._inflight else None
        self._inflight.clear()
        self._unsent.clear()
        self.state = S.CLOSED
        return ConnectionClosed(waiting)

    def _read_reply(self) -> ServerReply | None:
        """One complete reply from the buffer (RFC 5321 §4.2), or None."""
        limits = self.limits
        while True:
            buf = self._in
            lf = buf.find(b"\n", 0, limits.max_reply_line)
            if lf < 0:
                if len(buf) >= limits.max_reply_line:
                    self._fail(f"reply line longer than {limits.max_reply_line} octets")
                return None
            raw = bytes(buf[:lf]).removesuffix(b"\r")
            del buf[: lf + 1]
            text = raw.decode("utf-8", "replace")
            m = _REPLY_LINE.fullmatch(text)
            if m is None:
                self._fail(f"malformed reply line {text[:80]!r} (RFC 5321 4.2: "
                           "a three-digit code, then SP or '-')")
            code, sep, rest = m.group(1), m.group(2), m.group(3) or ""
            if self._lines and code != self._code:
                self._fail(f"reply code changed from {self._code} to {code} "
                           "inside a multi-line reply (RFC 5321 4.2.1)")
            self._code = code
            self._lines.append(rest)
            if len(self._lines) > limits.max_reply_lines:
                self._fail(f"multi-line reply of more than {limits.max_reply_lines} lines")
            if sep != "-":
                lines, self._lines = tuple(self._lines), []
                return ServerReply(int(code), lines)

    def _fail(self, what: str) -> NoReturn:
        self.state = S.CLOSED
        self._in.clear()
        raise ServerProtocolError(what)

    def _check(self, command: str) -> None:
        if self.state not in _COMMANDS[command]:
            raise LocalClientError(f"{command} not possible while {self.state.value}")
        if self._tx is not None and self._tx.phase != "content":
            raise LocalClientError(f"{command} while a transaction's replies are outstanding")
        if command != "content" and self._inflight and not self.extensions.pipelining:
            raise LocalClientError(f"{command} while waiting for the reply to "
                                   f"{self._inflight[0].name}")

    def _queue(self, name: str, line: bytes, index: int = -1) -> None:
        self._unsent.append(_Command(name, line, index))

    def _flush(self) -> None:
        """Write what may go now: all of a group with PIPELINING, else one command."""
        while self._unsent and self.state is not S.CLOSED:
            if self._inflight:
                if not self.extensions.pipelining or self._inflight[-1].name in _SYNC:
                    return
            cmd = self._unsent.popleft()
            self._out.append(cmd.line)
            self._inflight.append(cmd)

    # -------------------------------------------------------------- commands

    def hello(self) -> None:
        """EHLO (RFC 5321 §4.1.1.1); HELO follows by itself if EHLO gets a 5xx."""
        self._check("hello")
        self._queue("EHLO", f"EHLO {self.helo_name}\r\n".encode())
        self._flush()

    def starttls(self) -> None:
        """STARTTLS (RFC 3207 §4); only when offered."""
        self._check("starttls")
        if self.tls_active or not self.extensions.starttls:
            raise LocalClientError("STARTTLS is not offered" if not self.tls_active
                                   else "TLS is already active")
        self._queue("STARTTLS", b"STARTTLS\r\n")
        self._flush()

    def tls_established(self) -> None:
        """The handshake after 220 succeeded: forget the extensions (RFC 3207 §4.2)."""
        if self.state is not S.TLS:
            raise LocalClientError(f"tls_established() while {self.state.value}")
        self.tls_active = True
        self.state = S.GREETED
        self.extensions = Extensions(esmtp=False)
        self._in.clear()

    def auth(self, mechanism: SASLClient) -> None:
        """AUTH (RFC 4954 §4) with an initial response where the mechanism has one."""
        self._check("auth")
        if mechanism.name.upper() not in self.extensions.auth:
            raise LocalClientError(f"AUTH {mechanism.name} is not offered (offered: "
                                   f"{' '.join(sorted(self.extensions.auth)) or 'none'})")
        self._sasl = mechanism
        initial = mechanism.initial_response()
        line = f"AUTH {mechanism.name}"
        if initial is not None:
            line += " " + (base64.b64encode(initial).decode("ascii") or "=")
        self._queue("AUTH", f"{line}\r\n".encode("ascii"))
        self._flush()

    def send_envelope(self, envelope: Envelope) -> None:
        """MAIL, each RCPT, and DATA (pipelined when offered); BDAT waits for content."""
        self._check("mail")
        if not envelope.recipients:
            raise LocalClientError("a transaction needs at least one recipient")
        ext = self.extensions
        bdat = self.use_chunking and ext.chunking and ext.pipelining
        self._tx = _Transaction(envelope, bdat)
        self._queue("MAIL", self._mail_line(envelope))
        for i, rcpt in enumerate(envelope.recipients):
            self._queue("RCPT", self._rcpt_line(rcpt, envelope.smtputf8), i)
        if not bdat:
            self._queue("DATA", b"DATA\r\n")
        self._bol, self._cr, self._chunk = True, False, None
        self._flush()

    def _mail_line(self, env: Envelope) -> bytes:
        ext = self.extensions
        params = []
        if env.size is not None and ext.size is not None:
            params.append(f"SIZE={env.size}")
        if env.body == "8BITMIME":
            if not ext.eightbitmime:
                raise LocalClientError("BODY=8BITMIME to a server without 8BITMIME "
                                       "(convert to 7-bit first, RFC 6152 3)")
            params.append("BODY=8BITMIME")
        if env.smtputf8:
            if not ext.smtputf8:
                raise LocalClientError("the message needs SMTPUTF8 and the server does "
                                       "not offer it (RFC 6531 3.5)")
            params.append("SMTPUTF8")
        if env.requiretls:
            if not self.tls_active or not ext.requiretls:
                raise LocalClientError("the message needs REQUIRETLS and the server does not "
                                       "offer it under TLS (RFC 8689 4.2.1)")
            params.append("REQUIRETLS")
        if ext.dsn:
            if env.ret:
                params.append(f"RET={_word(env.ret.upper(), 'RET')}")
            if env.envid:
                params.append(f"ENVID={xtext_encode(env.envid)}")
        path = _path(env.reverse_path, "reverse path", env.smtputf8)
        return " ".join([f"MAIL FROM:{path}", *params]).encode() + b"\r\n"

    def _rcpt_line(self, rcpt: Recipient, smtputf8: bool) -> bytes:
        params = []
        if self.extensions.dsn:
            if rcpt.notify:
                params.append(f"NOTIFY={_word(rcpt.notify.upper(), 'NOTIFY')}")
            if rcpt.orcpt:
                params.append(f"ORCPT={_orcpt(rcpt.orcpt)}")
        if not rcpt.address:
            raise LocalClientError("empty forward path")
        path = _path(rcpt.address, "forward path", smtputf8)
        return " ".join([f"RCPT TO:{path}", *params]).encode() + b"\r\n"

    def send_content(self, chunk: bytes) -> None:
        """A piece of the message: dot-stuffed for DATA, framed for BDAT."""
        self._check("content")
        assert self._tx is not None
        data = self._normalise(chunk)
        if not self._tx.bdat:
            if self._bol and data.startswith(b"."):
                data = b"." + data
            data = data.replace(b"\r\n.", b"\r\n..")
            if data:
                self._bol = data.endswith(b"\n")
                self._out.append(data)
            return
        if data:
            self._bol = data.endswith(b"\n")
        if self._chunk:
            self._bdat(self._chunk, last=False)
        self._chunk = data

    def end_content(self) -> None:
        """End the message: ``CRLF . CRLF`` (RFC 5321 §4.1.1.4) or ``BDAT n LAST``."""
        self._check("content")
        assert self._tx is not None
        # A message ends with a CRLF (RFC 5321 4.1.1.4, RFC 5322 2.1): a held
        # CR becomes one, and a last line without a line ending gets one.
        tail = b"\r\n" if self._cr or not self._bol else b""
        self._cr = False
        self._bol = True
        if self._tx.bdat:
            self._bdat((self._chunk or b"") + tail, last=True)
            self._chunk = None
        else:
            self._out.append(tail + b".\r\n")
            self._inflight.append(_Command("DOT", b""))
        self.state = S.READY
        self._tx.phase = "ending"   # MessageDone ends the transaction

    def _bdat(self, data: bytes, *, last: bool) -> None:
        head = f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode()
        self._queue("BDAT LAST" if last else "BDAT", head + data)
        self._flush()

    def _normalise(self, chunk: bytes) -> bytes:
        """Every bare CR or LF becomes CRLF (RFC 5321 §2.3.8), across chunk edges."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\r") != crlf or chunk.count(b"\n") != crlf:
            chunk = _BARE.sub(b"\r\n", chunk)
            self.fixed_line_endings += 1
        return chunk

    def reset(self) -> None:
        """RSET (RFC 5321 §4.1.1.5), e.g. before the next message on this connection."""
        self._check("rset")
        self._queue("RSET", b"RSET\r\n")
        self._flush()

    def noop(self) -> None:
        self._check("noop")
        self._queue("NOOP", b"NOOP\r\n")
        self._flush()

    def quit(self) -> None:
        """QUIT (RFC 5321 §4.1.1.10); after a refused greeting too."""
        self._check("quit")
        self._queue("QUIT", b"QUIT\r\n")
        self._flush()

    # --------------------------------------------------------------- replies

    def _dispatch(self, reply: ServerReply) -> Event | None:
        if not self._inflight:
            if reply.code == 421:
                self._close()
                return ServerClosing(reply)
            self._fail(f"reply to no command: {reply.quote()[:120]!r}")
        cmd = self._inflight.popleft()
        self._replies += 1
        handler = _HANDLERS[cmd.name]
        event = handler(self, cmd, reply)
        if reply.code == 421 and self.state is not S.CLOSED:
            # RFC 5321 3.8: 421 closes the session, whatever it answered.
            event = event or ServerClosing(reply)
            pending = self._tx_event_on_close(reply)
            self._close()
            return pending or event
        return event

    def _close(self) -> None:
        self.state = S.CLOSED
        self._inflight.clear()
        self._unsent.clear()

    def _tx_event_on_close(self, reply: ServerReply) -> Event | None:
        """What a 421 means for a transaction still open (RFC 5321 3.8)."""
        tx = self._tx
        if tx is None:
            return None
        if tx.phase == "envelope" and tx.mail is not None:
            return self._envelope_done(accepted=False)
        if tx.phase != "envelope":
            return self._message_done(tx.failed_chunk or reply)
        return None

    def _on_greeting(self, cmd: _Command, reply: ServerReply) -> Event:
        self.state = S.GREETED
        return Greeting(reply)

    def _on_ehlo(self, cmd: _Command, reply: ServerReply) -> Event | None:
        if reply.code == 250:
            self.extensions = Extensions.parse(reply)
            self.state = S.READY
            return HelloDone(reply, self.extensions)
        if reply.is_permanent:
            # RFC 5321 3.2: a server that does not know EHLO; try HELO.
            self._unsent.appendleft(_Command("HELO", f"HELO {self.helo_name}\r\n".encode()))
            return None
        return HelloDone(reply, Extensions(esmtp=False))

    def _on_helo(self, cmd: _Command, reply: ServerReply) -> Event:
        self.extensions = Extensions(esmtp=False)
        if reply.code == 250:
            self.state = S.READY
        return HelloDone(reply, self.extensions)

    def _on_starttls(self, cmd: _Command, reply: ServerReply) -> Event:
        if reply.code == 220:
            self.state = S.TLS
            if self._in:
                # RFC 3207 5: nothing may follow 220 in plaintext (injection).
                self._fail("the server sent data after its 220 to STARTTLS, before TLS")
        return StartTLSDone(reply)

    def _on_auth(self, cmd: _Command, reply: ServerReply) -> Event | None:
        sasl = self._sasl
        assert sasl is not None
        if reply.code == 334:
            try:
                challenge = base64.b64decode(reply.lines[0].strip().encode("ascii"), validate=True)
                answer = sasl.respond(challenge)
            except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
                self._fail(f"bad AUTH {sasl.name} challenge {reply.quote()[:80]!r}: {exc}")
            line = base64.b64encode(answer).decode("ascii") + "\r\n"
            self._unsent.appendleft(_Command("AUTH", line.encode("ascii")))
            return None
        self._sasl = None
        if reply.code == 235:
            try:
                sasl.verify_success()
            except ValueError as exc:
                self._fail(f"AUTH {sasl.name} succeeded without the server's proof: {exc}")
        return AuthDone(reply)

    def _on_mail(self, cmd: _Command, reply: ServerReply) -> Event | None:
        tx = self._tx
        assert tx is not None
        tx.mail = reply
        if not reply.is_positive and not self._pipelined():
            self._unsent.clear()     # RCPTs and DATA of this transaction
            return self._envelope_done(accepted=False)
        return self._maybe_envelope_done()

    def _on_rcpt(self, cmd: _Command, reply: ServerReply) -> Event | None:
        tx = self._tx
        assert tx is not None
        tx.rcpts.append(reply)
        if (not self._pipelined() and not tx.bdat and cmd.index == len(tx.envelope.recipients) - 1
                and not any(r is not None and r.is_positive for r in tx.rcpts)):
            self._unsent.clear()     # DATA: no recipient to send to
            return self._envelope_done(accepted=False)
        return self._maybe_envelope_done()

    def _on_data(self, cmd: _Command, reply: ServerReply) -> Event | None:
        tx = self._tx
        assert tx is not None
        tx.data = reply
        accepted = self._any_rcpt() and tx.mail is not None and tx.mail.is_positive
        if reply.code == 354 and not accepted:
            # RFC 2920 3.1: every RCPT failed, yet DATA was accepted: end it empty.
            self._out.append(b".\r\n")
            self._inflight.append(_Command("DISCARD", b""))
        if reply.code == 354 and accepted:
            self.state = S.CONTENT
            return self._envelope_done(accepted=True)
        return self._envelope_done(accepted=False)

    def _on_discard(self, cmd: _Command, reply: ServerReply) -> None:
        return None

    def _on_bdat(self, cmd: _Command, reply: ServerReply) -> Event | None:
        tx = self._tx
        assert tx is not None
        if not reply.is_positive and tx.failed_chunk is None:
            tx.failed_chunk = reply
        if cmd.name == "BDAT LAST":
            return self._message_done(tx.failed_chunk or reply)
        return None

    def _on_dot(self, cmd: _Command, reply: ServerReply) -> Event:
        return self._message_done(reply)

    def _message_done(self, reply: ServerReply) -> Event:
        self._tx = None
        return MessageDone(reply)

    def _on_simple(self, cmd: _Command, reply: ServerReply) -> Event:
        if cmd.name == "QUIT":
            self._close()
        elif cmd.name == "RSET" and reply.is_positive and self.state is S.CONTENT:
            self.state = S.READY
        return ReplyEvent(cmd.name, reply)

    def _pipelined(self) -> bool:
        return self.extensions.pipelining

    def _any_rcpt(self) -> bool:
        tx = self._tx
        return tx is not None and any(r is not None and r.is_positive for r in tx.rcpts)

    def _maybe_envelope_done(self) -> Event | None:
        tx = self._tx
        assert tx is not None
        if len(tx.rcpts) < len(tx.envelope.recipients) or not tx.bdat:
            return None   # more RCPT replies to come, or DATA's reply decides
        accepted = tx.mail is not None and tx.mail.is_positive and self._any_rcpt()
        if accepted:
            self.state = S.CONTENT
        return self._envelope_done(accepted=accepted)

    def _envelope_done(self, *, accepted: bool) -> Event:
        tx = self._tx
        assert tx is not None and tx.mail is not None
        rcpts = list(tx.rcpts) + [None] * (len(tx.envelope.recipients) - len(tx.rcpts))
        tx.phase = "content"
        if not accepted:
            self._tx = None
        return EnvelopeDone(tx.mail, tuple(rcpts), tx.data, accepted)


_Handler = Callable[[SMTPClientConnection, _Command, ServerReply], "Event | None"]

_HANDLERS: dict[str, _Handler] = {
    "GREETING": SMTPClientConnection._on_greeting,
    "EHLO": SMTPClientConnection._on_ehlo,
    "HELO": SMTPClientConnection._on_helo,
    "STARTTLS": SMTPClientConnection._on_starttls,
    "AUTH": SMTPClientConnection._on_auth,
    "MAIL": SMTPClientConnection._on_mail,
    "RCPT": SMTPClientConnection._on_rcpt,
    "DATA": SMTPClientConnection._on_data,
    "DISCARD": SMTPClientConnection._on_discard,
    "BDAT": SMTPClientConnection._on_bdat,
    "BDAT LAST": SMTPClientConnection._on_bdat,
    "DOT": SMTPClientConnection._on_dot,
    "RSET": SMTPClientConnection._on_simple,
    "NOOP": SMTPClientConnection._on_simple,
    "QUIT": SMTPClientConnection._on_simple,
}


# ---------------------------------------------------------- envelope syntax


def _path(address: str, what: str, smtputf8: bool) -> str:
    """``<address>``, refusing what could inject a command (CR, LF, controls)."""
    if _UNSAFE.search(address):
        raise LocalClientError(f"{what} {address!r} contains characters that cannot be sent")
    if not smtputf8 and not address.isascii():
        raise LocalClientError(f"non-ASCII {what} {address!r} needs SMTPUTF8 (RFC 6531 3.3)")
    return f"<{address}>"


def _word(value: str, what: str) -> str:
    if not value or not re.fullmatch(r"[A-Z0-9,]+", value):
        raise LocalClientError(f"bad {what} value {value!r}")
    return value


def _orcpt(stored: str) -> str:
    """The ORCPT value for the wire: ``rfc822;xtext``, or ``utf-8;`` as RFC 6533 §3 has it."""
    addr_type, sep, encoded = stored.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", addr_type):
        raise LocalClientError(f"bad stored ORCPT {stored!r}")
    try:
        address = xtext_decode(encoded)
    except ValueError:
        raise LocalClientError(f"stored ORCPT {stored!r} is not xtext") from None
    if addr_type.lower() == "utf-8":
        return f"utf-8;{utf8_addr_encode(address)}"
    return f"{addr_type};{xtext_encode(address)}"
