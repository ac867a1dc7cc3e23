"""The SMTP server core, sans-IO (RFC 5321 with its service extensions).

Bytes go in with ``receive_data()``; ``next_event()`` returns the next event
(``pillarbox.protocols.smtp.events``), ``NEED_DATA`` or ``PAUSED``; replies
accumulate and are taken with ``data_to_send()``.  The core owns syntax,
sequence and limits; the session layer above it decides on senders,
recipients and messages through ``respond()``.

Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030),
DSN (RFC 3461), STARTTLS (RFC 3207), AUTH (RFC 4954), REQUIRETLS (RFC 8689).

REQUIRETLS is offered only under TLS (RFC 8689 §2), and ``MAIL FROM:<…>
REQUIRETLS`` is refused without it (530 5.7.10).  The header section of each
message is scanned for one ``TLS-Required: No`` field (RFC 8689 §3), which
``MessageEnd.tls_required_no`` reports; the session tags the message with
either (§4.1).

AUTH is the core's syntax and sequence only: the session layer says which
SASL mechanisms are offered now (``mechanisms``: none until TLS, unless
the connection may send passwords in clear), runs the exchange
(``pillarbox.auth``) and answers each ``AuthStart`` / ``AuthResponse`` with
``challenge()`` (334) or ``respond()`` (235, 535, 454 ...).  On the
submission ports ``auth_required`` makes MAIL wait for a login (530 5.7.0,
RFC 4954 6).

Strict line endings close SMTP smuggling: only CRLF ends a command line, only
``CRLF . CRLF`` ends DATA, and a bare CR or LF anywhere makes the command or
the message refused (RFC 5321 2.3.8 and 4.1.1.4).
"""

from __future__ import annotations

import binascii
import enum
import re
from dataclasses import dataclass

from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.address import parse_path, split_argument
from pillarbox.protocols.smtp.params import parse_mail_params, parse_params, parse_rcpt_params
from pillarbox.protocols.smtp.reply import (
    ARG_SYNTAX_ERROR,
    AUTH_CANCELLED,
    AUTH_LINE_TOO_LONG,
    AUTH_REQUIRED,
    BAD_SEQUENCE,
    BARE_LINE_ENDING,
    LINE_TOO_LONG,
    MAIL_LOOP,
    MESSAGE_TOO_BIG,
    NOT_IMPLEMENTED,
    OK,
    PARAM_NOT_IMPLEMENTED,
    SYNTAX_ERROR,
    TOO_MANY_ERRORS,
    TOO_MANY_RECIPIENTS,
    RemoteProtocolError,
    Reply,
)

# Content of DATA is handed on in pieces of about this size, so that a
# session never holds a whole message (the spool gets it as it comes).
_FLUSH = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of RFC 5321 4.5.3 and the configuration (0 means none)."""

    max_message_size: int = 52428800
    max_recipients: int = 1000
    max_command_line: int = 2048
    max_text_line: int = 1000
    max_errors: int = 20
    max_received_headers: int = 50
    # RFC 4954 4: the AUTH command line and each response may be 12288 octets.
    max_auth_line: int = 12288


class State(enum.Enum):
    """Where a session stands (RFC 5321 4.1.4 command ordering)."""

    GREETED = "greeted"          # banner sent, no HELO/EHLO yet
    READY = "ready"              # HELO/EHLO done, no transaction
    MAIL = "mail"                # MAIL accepted, no recipient yet
    RCPT = "rcpt"                # at least one recipient accepted
    DATA = "data"                # reading DATA content
    BDAT = "bdat"                # reading a BDAT chunk
    BDAT_WAIT = "bdat_wait"      # between BDAT chunks, transaction open
    TLS = "tls"                  # 220 to STARTTLS sent, handshake pending
    AUTH = "auth"                # 334 sent, reading the client's SASL response
    CLOSED = "closed"


S = State
_HELLOED = frozenset({S.READY, S.MAIL, S.RCPT, S.BDAT_WAIT})

# The one table of the state machine: for each command, the states in which
# it is accepted, and the reply when it is not.  Commands absent from a state
# get the reply given; commands not in the table at all are unknown (500).
_SEQUENCE: dict[str, tuple[frozenset[State], Reply]] = {
    "EHLO": (frozenset({S.GREETED, S.READY, S.MAIL, S.RCPT, S.BDAT_WAIT}), BAD_SEQUENCE),
    "HELO": (frozenset({S.GREETED, S.READY, S.MAIL, S.RCPT, S.BDAT_WAIT}), BAD_SEQUENCE),
    "MAIL": (
        frozenset({S.READY}),
        Reply(503, "5.5.1", "Bad sequence of commands: send HELO/EHLO first, or RSET"),
    ),
    "RCPT": (frozenset({S.MAIL, S.RCPT}), Reply(503, "5.5.1", "Bad sequence: need MAIL first")),
    "DATA": (frozenset({S.MAIL, S.RCPT}), Reply(503, "5.5.1", "Bad sequence: need MAIL and RCPT")),
    "BDAT": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "RSET": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "NOOP": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "QUIT": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "VRFY": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "EXPN": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "HELP": (frozenset(_HELLOED | {S.GREETED}), BAD_SEQUENCE),
    "STARTTLS": (frozenset({S.GREETED, S.READY}), BAD_SEQUENCE),
    # RFC 4954 4: not during a mail transaction; EHLO first (checked below).
    "AUTH": (
        frozenset({S.GREETED, S.READY}),
        Reply(503, "5.5.1", "AUTH is not allowed during a mail transaction (RFC 4954 4)"),
    ),
}

# Transitions after a decision of the session layer, by event kind and
# whether the reply was positive.
_AFTER_DECISION: dict[tuple[type, bool], State | None] = {
    (ev.MailFrom, True): S.MAIL,
    (ev.MailFrom, False): None,     # unchanged
    (ev.RcptTo, True): S.RCPT,
    (ev.RcptTo, False): None,
    (ev.MessageEnd, True): S.READY,
    (ev.MessageEnd, False): S.READY,
    (ev.AuthStart, True): S.READY,
    (ev.AuthStart, False): S.READY,
    (ev.AuthResponse, True): S.READY,
    (ev.AuthResponse, False): S.READY,
}

# RFC 3030 2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ], in ASCII.
_BDAT_ARG = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.ASCII | re.IGNORECASE)

_OBSOLETE = frozenset({"SEND", "SOML", "SAML", "TURN", "ETRN", "ATRN"})

# RFC 4422 3.1: sasl-mech = 1*20 (UPPER-ALPHA / DIGIT / "-" / "_")
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}", re.ASCII)

_HELP = Reply(
    214,
    "2.0.0",
    (
        "Pillarbox SMTP; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
        "See RFC 5321",
    ),
)


class SMTPServerConnection:
    """One SMTP session seen from the server side, without any I/O.

    ``auth_enabled`` (AUTH exists here at all), ``mechanisms`` (offered now)
    and ``auth_required`` (submission) are the session layer's to set, and
    to set again after STARTTLS; ``authenticated`` is True after a 235.
    """

    def __init__(
        self,
        hostname: str,
        limits: Limits = Limits(),
        *,
        tls_available: bool = False,
        tls_active: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.auth_enabled = False
        self.mechanisms: tuple[str, ...] = ()
        self.auth_required = False
        self.authenticated = False
        self.state = S.GREETED
        self.helo_name: str | None = None
        self.esmtp = False
        self.smtputf8 = False       # this transaction asked for SMTPUTF8
        self.errors = 0
        self.recipients = 0
        self._in = bytearray()
        self._out: list[bytes] = []
        self._pending: ev.Decision | None = None
        self._closing: ev.Closing | None = None  # 421 sent by respond(), event not yet taken
        self._skip_line = False     # discarding the rest of an over-long command line
        # Message content state, shared by DATA and BDAT.
        self._bol = True            # DATA: at the beginning of a line
        self._size = 0
        self._content_error: Reply | None = None
        self._carry_cr = False      # content so far ends in CR
        self._line_len = 0          # length of the current partial text line
        self._in_headers = True
        self._hdr_tail = b"\r\n"
        self._received = 0
        self._tls_required: bytearray | None = None  # the TLS-Required: value being read
        self._tls_required_fields = [0, 0]   # TLS-Required fields seen, those with "No"
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_failed: Reply | None = None
        self._resume_state = S.READY

    # ------------------------------------------------------------ public API

    def greeting(self, reply: Reply | None = None) -> None:
        """Queue the 220 banner (RFC 5321 4.3.1); no enhanced code (RFC 2034 3)."""
        self._send(reply or Reply(220, "", f"{self.hostname} ESMTP Pillarbox"))

    def receive_data(self, data: bytes) -> None:
        if self.state is S.TLS or self.state is S.CLOSED:
            return  # bytes sent after STARTTLS before the handshake: discarded (RFC 3207 6)
        self._in += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not yet processed (for the adapter's back-pressure)."""
        return len(self._in)

    @property
    def in_data(self) -> bool:
        return self.state is S.DATA or self.state is S.BDAT

    @property
    def closed(self) -> bool:
        return self.state is S.CLOSED

    def respond(self, reply: Reply) -> None:
        """Answer the pending ``MailFrom``, ``RcptTo``, ``MessageEnd``, or end an AUTH
        exchange (``AuthStart``, ``AuthResponse``) with its final reply."""
        pending = self._pending
        if pending is None:
            raise RuntimeError("respond() without a pending event")
        self._pending = None
        if self.state is S.CLOSED:
            return  # close() has sent the last reply
        new_state = _AFTER_DECISION[(type(pending), reply.is_positive)]
        if isinstance(pending, ev.MessageEnd):
            self._reset_transaction()
        elif reply.is_positive and isinstance(pending, ev.RcptTo):
            self.recipients += 1
        elif reply.is_positive and isinstance(pending, ev.MailFrom):
            self.smtputf8 = pending.params.smtputf8
        elif reply.is_positive and isinstance(pending, (ev.AuthStart, ev.AuthResponse)):
            self.authenticated = True
        if new_state is not None:
            self.state = new_state
        self._send(reply)
        if not reply.is_positive and not isinstance(pending, ev.MessageEnd):
            self._closing = self._count_error()

    def challenge(self, data: bytes) -> None:
        """Answer ``AuthStart`` or ``AuthResponse`` with a server challenge:
        ``334`` and the data in base64 (RFC 4954 4); the next line is the answer."""
        pending = self._pending
        if not isinstance(pending, (ev.AuthStart, ev.AuthResponse)):
            raise RuntimeError("challenge() outside an AUTH exchange")
        self._pending = None
        if self.state is S.CLOSED:
            return
        self._out.append(b"334 " + binascii.b2a_base64(data, newline=False) + b"\r\n")
        self.state = S.AUTH

    def abort_message(self, reply: Reply) -> None:
        """The session cannot keep this message (e.g. the disk is full): the core
        reads the rest of it and answers ``reply`` instead of emitting MessageEnd."""
        if self._content_error is None:
            self._content_error = reply

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: forget everything (RFC 3207 4.2)."""
        self.tls_active = True
        self.state = S.GREETED
        self.helo_name = None
        self.esmtp = False
        self.authenticated = False
        self._in.clear()
        self._reset_transaction()

    def close(self, reply: Reply) -> None:
        """Send a last reply (421 on time-out or shutdown) and close."""
        if self.state is not S.CLOSED:
            self._send(reply)
            self.state = S.CLOSED

    def next_event(self) -> ev.Event | ev._Sentinel:
        """The next event; loops over steps that need nothing from the session."""
        if self._closing is not None:
            closing, self._closing = self._closing, None
            return closing
        while True:
            if self._pending is not None or self.state is S.TLS:
                return ev.PAUSED
            state = self.state
            if state is S.CLOSED:
                return ev.NEED_DATA
            if state is S.DATA:
                event = self._data_event()
            elif state is S.BDAT:
                event = self._bdat_event()
            elif state is S.AUTH:
                event = self._auth_line()
            else:
                event = self._command_event()
            if event is not None:
                return event

    # -------------------------------------------------------------- internals

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

    def _reset_transaction(self) -> None:
        self.recipients = 0
        self.smtputf8 = False
        self._bol = True
        self._size = 0
        self._content_error = None
        self._carry_cr = False
        self._line_len = 0
        self._in_headers = True
        self._hdr_tail = b"\r\n"
        self._received = 0
        self._tls_required = None
        self._tls_required_fields = [0, 0]
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_failed = None

    # ---------------------------------------------------------- command lines

    def _read_line(self, limit: int | None = None) -> bytes | None | Reply:
        """The next command line without CRLF, None if incomplete, or an error reply.

        A line must end in CRLF (RFC 5321 2.3.8).  A bare LF still ends the
        line, which is then refused whole with 500 5.5.2: a client that sends
        LF alone hears at once what is wrong instead of waiting for a reply
        that would never come.  A bare CR inside a line refuses it too.
        """
        buf = self._in
        lf = buf.find(b"\n")
        if limit is None:
            limit = self.limits.max_command_line
            # RFC 4954 4: an AUTH line with its initial response may be longer.
            if buf[:5].upper() == b"AUTH " and self.auth_enabled:
                limit = max(limit, self.limits.max_auth_line)
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
        line = self._read_line()
        if line is None:
            return ev.NEED_DATA
        if isinstance(line, Reply):
            return self._violation("", line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._violation("", Reply(500, "5.5.2", "Command is not valid UTF-8"))
        verb, _, arg = text.partition(" ")
        # RFC 5321 2.4: verbs are ASCII; str.upper() would make "ı" an "I".
        verb = verb.upper() if verb.isascii() else verb
        allowed = _SEQUENCE.get(verb)
        if allowed is None:
            if verb in _OBSOLETE:
                return self._violation(verb, NOT_IMPLEMENTED)
            return self._violation(verb, SYNTAX_ERROR)
        states, refusal = allowed
        if self.state not in states:
            if verb == "STARTTLS" and self.tls_active:
                refusal = Reply(503, "5.5.1", "TLS already active")
            elif verb == "DATA" and self.state is S.BDAT_WAIT:
                refusal = Reply(503, "5.5.1", "DATA not allowed after BDAT; use BDAT LAST")
            elif verb == "MAIL" and self.state in (S.MAIL, S.RCPT, S.BDAT_WAIT):
                refusal = Reply(503, "5.5.1", "Bad sequence: nested MAIL command")
            elif verb == "AUTH" and not self.auth_enabled:
                refusal = NOT_IMPLEMENTED
            return self._violation(verb, refusal)
        try:
            return _HANDLERS[verb](self, arg.strip(" "))
        except RemoteProtocolError as exc:
            return self._violation(verb, exc.reply)

    def _violation(self, verb: str, reply: Reply) -> ev.Event:
        self._send(reply)
        closing = self._count_error()
        return closing or ev.ProtocolViolation(verb, reply)

    # ----------------------------------------------------------- the commands

    def _hello(self, verb: str, arg: str) -> ev.Event:
        if not arg or " " in arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        self._reset_transaction()
        self.state = S.READY
        self.helo_name = arg
        self.esmtp = verb == "EHLO"
        if self.esmtp:
            lines = [f"{self.hostname} Hello {arg}", "PIPELINING"]
            size = self.limits.max_message_size
            lines.append(f"SIZE {size}" if size else "SIZE")
            lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
            if self.tls_active:
                lines.append("REQUIRETLS")     # RFC 8689 2: only once TLS protects the session
            if self.auth_enabled and self.mechanisms:
                lines.append("AUTH " + " ".join(self.mechanisms))
            if self.tls_available and not self.tls_active:
                lines.append("STARTTLS")
            lines.append("HELP")
            self._out.append(Reply(250, "", tuple(lines)).render())
        else:
            self._send(Reply(250, "", f"{self.hostname} Hello {arg}"))
        return ev.Hello(verb, arg)

    def _ehlo(self, arg: str) -> ev.Event:
        return self._hello("EHLO", arg)

    def _helo(self, arg: str) -> ev.Event:
        return self._hello("HELO", arg)

    def _mail(self, arg: str) -> ev.Event:
        if self.auth_required and not self.authenticated:
            raise RemoteProtocolError(AUTH_REQUIRED)
        path_text, params_text = split_argument(arg, "FROM")
        params = parse_params(params_text) if params_text else []
        if params and not self.esmtp:
            raise RemoteProtocolError(
                Reply(555, "5.5.4", "MAIL parameters need EHLO (RFC 5321 4.1.1.11)")
            )
        if self.auth_enabled:
            params = _without_auth_param(params)
        mail_params = parse_mail_params(params, max_size=self.limits.max_message_size,
                                        requiretls=self.tls_active)
        path = parse_path(path_text, reverse=True, smtputf8=mail_params.smtputf8)
        event = ev.MailFrom(path, mail_params)
        self._pending = event
        return event

    def _rcpt(self, arg: str) -> ev.Event | None:
        path_text, params_text = split_argument(arg, "TO")
        params = parse_params(params_text) if params_text else []
        if params and not self.esmtp:
            raise RemoteProtocolError(
                Reply(555, "5.5.4", "RCPT parameters need EHLO (RFC 5321 4.1.1.11)")
            )
        rcpt_params = parse_rcpt_params(params)
        path = parse_path(path_text, reverse=False, smtputf8=self.smtputf8)
        assert path is not None
        limit = self.limits.max_recipients
        if limit and self.recipients >= limit:
            # RFC 5321 4.5.3.1.10: 452 for too many recipients, and the client
            # sends the rest in another transaction: an answer, not an error.
            self._send(TOO_MANY_RECIPIENTS)
            return None
        event = ev.RcptTo(path, rcpt_params, path_text.startswith("<@"))
        self._pending = event
        return event

    def _data(self, arg: str) -> ev.Event | None:
        if arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", "DATA takes no arguments"))
        if self.state is not S.RCPT:
            # Every RCPT was refused; a pipelining client sends DATA anyway
            # (RFC 2920 3.1), so this is an answer, not another error.
            self._send(NO_VALID_RECIPIENTS)
            return None
        self.state = S.DATA
        self._send(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return ev.MessageStart()

    def _bdat(self, arg: str) -> ev.Event | ev._Sentinel | None:
        m = _BDAT_ARG.fullmatch(arg)
        if m is None:
            raise RemoteProtocolError(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
        self._bdat_left = int(m[1])
        self._bdat_last = m[2] is not None
        first = self.state in (S.MAIL, S.RCPT)
        if self.state is S.BDAT_WAIT:
            pass
        elif self.state is S.RCPT and self.esmtp:
            pass
        else:
            # RFC 3030 3: the chunk is read and thrown away, then refused.
            if not self.esmtp:
                self._bdat_failed = Reply(503, "5.5.1", "BDAT needs EHLO (RFC 3030)")
            elif self.state is S.MAIL:
                self._bdat_failed = NO_VALID_RECIPIENTS
            else:
                self._bdat_failed = Reply(503, "5.5.1", "Bad sequence: need MAIL and RCPT")
            self._resume_state = self.state
            self.state = S.BDAT
            return None
        self._resume_state = S.BDAT_WAIT
        self.state = S.BDAT
        return ev.MessageStart() if first else None

    def _rset(self, arg: str) -> ev.Event:
        if arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", "RSET takes no arguments"))
        self._reset_transaction()
        if self.state is not S.GREETED:
            self.state = S.READY
        self._send(OK)
        return ev.Reset()

    def _noop(self, arg: str) -> None:
        self._send(OK)

    def _quit(self, arg: str) -> ev.Event:
        if arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", "QUIT takes no arguments"))
        reply = Reply(221, "2.0.0", f"{self.hostname} closing connection")
        self._send(reply)
        self.state = S.CLOSED
        return ev.Closing(reply)

    def _vrfy(self, arg: str) -> None:
        if not arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", "Syntax: VRFY address"))
        # RFC 5321 3.5.3: 252 keeps addresses from being harvested.
        self._send(
            Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
        )

    def _expn(self, arg: str) -> ev.Event:
        raise RemoteProtocolError(Reply(502, "5.5.1", "EXPN not available"))

    def _help(self, arg: str) -> None:
        self._send(_HELP)

    def _starttls(self, arg: str) -> ev.Event:
        if arg:
            raise RemoteProtocolError(Reply(501, "5.5.4", "STARTTLS takes no arguments"))
        if not self.tls_available or self.tls_active:
            raise RemoteProtocolError(
                Reply(503, "5.5.1", "TLS already active")
                if self.tls_active
                else Reply(454, "4.7.0", "TLS not available")
            )
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        # RFC 3207 4.2 and 6: whatever the client pipelined after STARTTLS is
        # plaintext that must not be executed under TLS.
        self._in.clear()
        self.state = S.TLS
        self._reset_transaction()
        return ev.StartTLS()

    def _auth(self, arg: str) -> ev.Event:
        """AUTH mechanism [initial-response] (RFC 4954 4)."""
        if not self.auth_enabled:
            raise RemoteProtocolError(NOT_IMPLEMENTED)
        if self.authenticated:
            raise RemoteProtocolError(
                Reply(503, "5.5.1", "Already authenticated; AUTH only once (RFC 4954 4)"))
        if not self.esmtp:
            raise RemoteProtocolError(Reply(503, "5.5.1", "Send EHLO first"))
        parts = arg.split(" ")
        if not arg or len(parts) > 2:
            raise RemoteProtocolError(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        mechanism = parts[0].upper() if parts[0].isascii() else parts[0]
        if _MECHANISM.fullmatch(mechanism) is None:
            raise RemoteProtocolError(Reply(501, "5.5.4", "Invalid SASL mechanism name"))
        if not self.mechanisms:
            raise RemoteProtocolError(Reply(
                538, "5.7.11", "Encryption required for authentication: use STARTTLS first"))
        if mechanism not in self.mechanisms:
            raise RemoteProtocolError(Reply(
                504, "5.5.4",
                f"Unrecognized authentication type; offered: {' '.join(self.mechanisms)}"))
        initial: bytes | None = None
        if len(parts) == 2:
            # RFC 4954 4: "=" is an initial response of zero length.
            initial = b"" if parts[1] == "=" else _base64(parts[1])
            if initial is None:
                raise RemoteProtocolError(BAD_BASE64)
        event = ev.AuthStart(mechanism, initial)
        self._pending = event
        return event

    def _auth_line(self) -> ev.Event | ev._Sentinel | None:
        """A client response in an AUTH exchange: base64, or ``*`` to cancel (RFC 4954 4)."""
        line = self._read_line(self.limits.max_auth_line)
        if line is None:
            return ev.NEED_DATA
        self.state = S.READY
        if isinstance(line, Reply):
            return self._violation("AUTH", AUTH_LINE_TOO_LONG if line is LINE_TOO_LONG else line)
        if line == b"*":
            self._send(AUTH_CANCELLED)
            return ev.AuthCancelled()
        data = _base64(line.decode("latin-1"))
        if data is None:
            return self._violation("AUTH", BAD_BASE64)
        self.state = S.AUTH
        event = ev.AuthResponse(data)
        self._pending = event
        return event

    # ------------------------------------------------------------- content

    def _data_event(self) -> ev.Event | ev._Sentinel | None:
        """Take the next piece of DATA content, ending at a line boundary."""
        buf = self._in
        if self._bol and buf[:3] == b".\r\n":
            del buf[:3]
            return self._message_end(b"")
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            raw = bytes(buf[: end + 2])
            del buf[: end + 5]
            return self._message_end(raw)
        cut = buf.rfind(b"\r\n")
        if cut >= 0:
            raw = bytes(buf[: cut + 2])
            del buf[: cut + 2]
        elif len(buf) > _FLUSH:
            # A very long line: hand it on without its last byte, which may be
            # the CR of a CRLF.
            raw = bytes(buf[:-1])
            del buf[:-1]
        else:
            return ev.NEED_DATA
        if not raw:
            return ev.NEED_DATA
        data = self._unstuff(raw)
        self._bol = raw.endswith(b"\r\n")
        return self._content(data)

    def _unstuff(self, raw: bytes) -> bytes:
        """RFC 5321 4.5.2: a leading period on a line is removed."""
        if self._bol and raw[:1] == b".":
            raw = raw[1:]
        if b"\r\n." in raw:
            raw = raw.replace(b"\r\n.", b"\r\n")
        return raw

    def _message_end(self, raw: bytes) -> ev.Event | ev._Sentinel | None:
        if raw:
            data = self._unstuff(raw)
            event = self._content(data)
            if event is not None:
                # Content to emit before the end: push the terminator back.
                self._in[:0] = b".\r\n"
                self._bol = True
                return event
        self.state = S.READY
        return self._finish()

    def _finish(self) -> ev.Event:
        error = self._content_error
        if error is None and self._carry_cr:
            error = BARE_LINE_ENDING_DATA
        if error is None:
            self._end_tls_required()
            event = ev.MessageEnd(self._size, self._tls_required_fields == [1, 1])
            self._pending = event
            return event
        self._send(error)
        self._reset_transaction()
        return ev.MessageAborted(error)

    def _bdat_event(self) -> ev.Event | ev._Sentinel | None:
        buf = self._in
        if self._bdat_left:
            if not buf:
                return ev.NEED_DATA
            take = min(self._bdat_left, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            self._bdat_left -= take
            if self._bdat_failed is None:
                return self._content(data)
            return None
        # The chunk is complete.
        self.state = self._resume_state
        if self._bdat_failed is not None:
            reply, self._bdat_failed = self._bdat_failed, None
            if self.state is S.BDAT_WAIT:
                self.state = S.READY
                self._reset_transaction()
            if reply is NO_VALID_RECIPIENTS:
                self._send(reply)  # as for DATA: an answer, not another error
                return None
            return self._violation("BDAT", reply)
        if self._bdat_last:
            self.state = S.READY
            return self._finish()
        if self._content_error is not None:
            # Refuse now; later chunks of this message get 503 (RFC 3030 3).
            error = self._content_error
            self._reset_transaction()
            self.state = S.READY
            self._send(error)
            return ev.MessageAborted(error)
        self._send(Reply(250, "2.0.0", f"{self._size} octets received"))
        return None

    def _content(self, data: bytes) -> ev.MessageData | None:
        """Check a piece of message content; return the event that hands it on."""
        if self._content_error is not None or not data:
            return None
        limits = self.limits
        self._size += len(data)
        if limits.max_message_size and self._size > limits.max_message_size:
            self._content_error = MESSAGE_TOO_BIG
            return None
        check = data
        if self._carry_cr:
            check = b"\r" + check
        self._carry_cr = check.endswith(b"\r")
        if self._carry_cr:
            check = check[:-1]
        crlf = check.count(b"\r\n")
        if check.count(b"\n") != crlf or check.count(b"\r") != crlf:
            self._content_error = BARE_LINE_ENDING_DATA
            return None
        max_line = limits.max_text_line
        if max_line:
            first = check.find(b"\r\n")
            if first < 0:
                self._line_len += len(check)
                longest = self._line_len + 2
            else:
                longest = self._line_len + first + 2
                last = check.rfind(b"\r\n")
                if last > first and last - first > max_line:
                    inner = max(map(len, check[first + 2 : last].split(b"\r\n"))) + 2
                    longest = max(longest, inner)
                self._line_len = len(check) - last - 2
            if longest > max_line:
                self._content_error = Reply(
                    500,
                    "5.5.2",
                    f"Message has a line longer than {max_line} octets (RFC 5321 4.5.3.1.6)",
                )
                return None
        if self._in_headers:
            self._scan_headers(check)
            if self._content_error is not None:
                return None
        return ev.MessageData(data)

    def _scan_headers(self, data: bytes) -> None:
        """Count Received: fields in the header section (RFC 5321 6.3 loop check).

        ``_hdr_tail`` always starts with a CRLF (a virtual one before the first
        line), so a field name and the blank line that ends the section are
        found whatever the pieces the content arrives in.
        """
        text = self._hdr_tail + data
        end = text.find(b"\r\n\r\n")
        shortened = False
        if end >= 0:
            region = text[: end + 2]
            self._in_headers = False
            self._hdr_tail = b"\r\n"
        else:
            cut = text.rfind(b"\r\n")
            region = text[:cut]
            tail = text[cut:]
            if len(tail) > 1024:
                # A very long field: what matters is its start (the name) and
                # its last bytes (a CRLF CRLF may complete across the cut).
                tail = tail[:16] + tail[-3:]
                shortened = True
            self._hdr_tail = tail
        if region:
            lower = region.lower()
            self._received += lower.count(b"\r\nreceived:")
            limit = self.limits.max_received_headers
            if limit and self._received > limit:
                self._content_error = MAIL_LOOP
            if self._tls_required is not None or b"\r\ntls-required:" in lower:
                self._scan_tls_required(region)
        if shortened:
            self._tls_required_cut()
        if not self._in_headers:
            self._end_tls_required()

    def _scan_tls_required(self, region: bytes) -> None:
        """RFC 8689 §3: ``"TLS-Required:" [FWS] "No" CRLF`` (case-insensitive),
        unfolded across lines and pieces; ``region`` is whole lines after a CRLF."""
        for line in region.split(b"\r\n")[1:]:
            if line[:1] in (b" ", b"\t"):
                if self._tls_required is not None:
                    if len(self._tls_required) + len(line) > 256:
                        self._tls_required[:] = b"(too long)"
                    else:
                        self._tls_required += line
                continue
            self._end_tls_required()
            if line[:13].lower() == b"tls-required:":
                value = line[13:]
                self._tls_required = bytearray(value if len(value) <= 256 else b"(too long)")

    def _tls_required_cut(self) -> None:
        """The line that goes on in the next piece was cut short (over 1 KiB): a
        TLS-Required field it belongs to is too long to be a plain "No"."""
        tail = self._hdr_tail
        if tail[2:3] in (b" ", b"\t"):
            if self._tls_required is not None:
                self._tls_required[:] = b"(too long)"
        elif tail[:15].lower() == b"\r\ntls-required:":
            self._end_tls_required()
            self._tls_required = bytearray(b"(too long)")
            self._hdr_tail = b"\r\n " + tail[-3:]     # read on as its continuation

    def _end_tls_required(self) -> None:
        if self._tls_required is not None:
            value = bytes(self._tls_required).strip(b" \t").lower()
            self._tls_required_fields[0] += 1
            self._tls_required_fields[1] += value == b"no"
            self._tls_required = None


NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")

# RFC 4954 4: a client response that is not base64 ends the exchange with 501 5.5.2.
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64; authentication exchange ended")


def _base64(text: str) -> bytes | None:
    """Strict base64 (RFC 4648 4), or None."""
    if not text.isascii():
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True) if text else b""
    except (binascii.Error, ValueError):
        return None


def _without_auth_param(params: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """MAIL's AUTH= (RFC 4954 5) is accepted and dropped: Pillarbox trusts no
    claim of the client about who submitted a message (it is ``AUTH=<>``)."""
    kept = []
    for keyword, value in params:
        if keyword.upper() == "AUTH":
            if not value:
                raise RemoteProtocolError(Reply(501, "5.5.4", "AUTH= needs a value (RFC 4954 5)"))
            continue
        kept.append((keyword, value))
    return kept

BARE_LINE_ENDING_DATA = Reply(
    550,
    "5.6.0",
    "Message refused: bare CR or LF in content; lines must end with CRLF (RFC 5321 2.3.8)",
)

_HANDLERS = {
    "EHLO": SMTPServerConnection._ehlo,
    "HELO": SMTPServerConnection._helo,
    "MAIL": SMTPServerConnection._mail,
    "RCPT": SMTPServerConnection._rcpt,
    "DATA": SMTPServerConnection._data,
    "BDAT": SMTPServerConnection._bdat,
    "RSET": SMTPServerConnection._rset,
    "NOOP": SMTPServerConnection._noop,
    "QUIT": SMTPServerConnection._quit,
    "VRFY": SMTPServerConnection._vrfy,
    "EXPN": SMTPServerConnection._expn,
    "HELP": SMTPServerConnection._help,
    "STARTTLS": SMTPServerConnection._starttls,
    "AUTH": SMTPServerConnection._auth,
}

__all__ = ["Limits", "SMTPServerConnection", "State", "BARE_LINE_ENDING", "ARG_SYNTAX_ERROR",
           "PARAM_NOT_IMPLEMENTED"]
