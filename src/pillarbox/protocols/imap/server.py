"""The IMAP server connection core, sans-IO (RFC 9051 with RFC 3501 compatibility).

Public API (h11's model)::

    core = IMAPServerConnection(Limits(...), literal_plus=True, tls_active=False)
    core.send(Untagged("OK", "Pillarbox ready", CapabilityCode(caps)))   # greeting
    core.receive_data(data)              # bytes from the socket (b"" is harmless)
    ev = core.next_event()               # a Command, AuthResponse, IdleDone, BadCommand,
                                         # or NEED_DATA / PAUSED
    core.send(response)                  # any responses.Response; queues its bytes
    core.send_data(octets)               # untagged data the session rendered itself
    core.data_to_send() -> bytes         # everything queued, for the socket
    core.closed                          # BYE sent: write data_to_send(), then close
    core.starting_tls / core.start_tls_done()
    core.starting_compression / core.compression_started() -> bytes
    core.pending                         # the command awaiting its tagged response
    core.state, core.utf8, core.rev2, core.errors, core.tls_active, core.compressing,
    core.buffered

``next_event`` hands on one command at a time and **parses lazily**: the next
command is framed and parsed only when the session asks for it after it sent
the tagged response to the previous one.  Until then ``next_event`` returns
``PAUSED``.  So a command pipelined behind LOGIN or SELECT is judged in the
state that LOGIN or SELECT left, and in the UTF-8 mode an ENABLE turned on.
A ``BadCommand`` does not pause: the session sends ``responses.rejection(ev)``
and asks for the next event.  The session loop is::

    core.receive_data(data)
    while (ev := core.next_event()) not in (NEED_DATA, PAUSED):
        ... execute ev: core.send(...) untagged responses, then the tagged one ...
    transport.write(core.data_to_send()); close if core.closed

The core learns what happened by watching the responses it sends (table
``_AFTER``): a tagged OK to LOGIN or AUTHENTICATE authenticates; OK to SELECT
or EXAMINE selects, NO deselects (RFC 9051 §6.3.2); OK to CLOSE or UNSELECT
deselects; ``* BYE`` (or the tagged answer to LOGOUT) ends the session;
``* PREAUTH`` authenticates; ``* ENABLED IMAP4rev2`` or ``UTF8=ACCEPT`` turns on
UTF-8 mailbox names (RFC 9051 §5.1, RFC 6855); a ``Continuation`` sent while
AUTHENTICATE or IDLE is pending makes the next line an ``AuthResponse`` (RFC
9051 §6.2.2) or the ``IdleDone`` (RFC 2177) instead of a command.  Which
command is allowed in which state is the table ``_ALLOWED`` (RFC 9051 §6);
the rest is refused with a ``BadCommand`` and never reaches the session.

Framing decisions:

- **Line ends.**  CRLF only (RFC 9051 §2.2, and the project's rule: strict
  syntax at the boundary).  A bare LF still ends the line, so the client
  hears at once what is wrong, and the line is refused with BAD; a CR inside
  a line is a syntax error.  (Dovecot accepts a bare LF; IMAP has no dot
  terminator, so there is no smuggling risk either way, and strictness is the
  simpler rule to state.)  Empty lines between commands are ignored.
- **Literals** (RFC 9051 §4.3, RFC 7888): a synchronizing ``{n}`` within the
  limit gets ``+ OK`` from the core itself; a ``{n+}`` needs none.  Over the
  limit (``appendlimit`` for APPEND, ``max_literal`` otherwise, and
  ``max_command`` for the whole command), or a ``{n+}`` over 4096 without
  LITERAL+, the command is refused before the literal is read: ``NO [TOOBIG]``
  for APPEND (RFC 7889), ``BAD [TOOBIG]`` otherwise.  The client then sends no
  synchronizing literal; a non-synchronizing one is already on its way and
  the core skips exactly ``n`` octets (without buffering them) and the rest of
  that command, however many lines and literals it has.
- **Long lines**: a line over ``max_line`` (literals excluded) is refused as
  soon as that is known and skipped to its end, without buffering it; a line
  that goes on past ``max(16 * max_line, 1 MiB)`` gets ``* BYE`` and the end.
- **STARTTLS**: after the tagged OK, whatever the client pipelined behind the
  command is dropped (command injection, CVE-2011-0411), and so is anything
  received until ``start_tls_done()``; responses queued meanwhile are held
  back so that they go out under TLS.
- **COMPRESS=DEFLATE** (RFC 4978): after the tagged OK the core pauses; the
  adapter takes ``data_to_send()`` (the OK, uncompressed), calls
  ``compression_started()``, which returns the input already buffered (the
  first compressed octets) for the adapter to inflate and feed back, and
  compresses everything from then on.
- **Errors**: every BAD sent counts; at ``max_errors`` the core adds
  ``* BYE Too many errors`` and the session ends.

Any exception other than ``IMAPProtocolError`` (raised only for misuse of
this API) escaping the core is a bug; ``tests/fuzz/test_imap_fuzz.py`` says so.
The parser is ``parser.py`` (grammar) over ``tokens.py`` (tokens); responses
are ``responses.py``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap import responses as r
from pillarbox.protocols.imap.parser import ParseError, parse_command, parse_head
from pillarbox.protocols.sentinel import Sentinel

__all__ = [
    "IMAPProtocolError", "IMAPServerConnection", "Limits", "NEED_DATA", "PAUSED", "State",
]


class IMAPProtocolError(Exception):
    """The session used the core wrongly (our fault, not the client's)."""


_Sentinel = Sentinel   # the cores' one marker type (protocols/sentinel.py)


NEED_DATA = _Sentinel("NEED_DATA")   # nothing to do until more bytes arrive
PAUSED = _Sentinel("PAUSED")         # waiting for the session (a tagged response, TLS, …)


@dataclass(frozen=True, slots=True)
class Limits:
    """Octet limits of one connection; all positive except ``max_errors`` (0: none)."""

    max_line: int = 65536            # one line of a command, literals excluded
    max_literal: int = 65536         # one literal of any command but APPEND
    appendlimit: int = 52428800      # one APPEND message (RFC 7889 APPENDLIMIT)
    max_command: int = 104857600     # a whole command with its literals (MULTIAPPEND)
    max_errors: int = 10             # BAD responses before BYE

    def __post_init__(self) -> None:
        for name in ("max_line", "max_literal", "appendlimit", "max_command"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


class State(enum.Enum):
    """The connection states of RFC 9051 §3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


S = State
_ANY = frozenset({S.NOT_AUTHENTICATED, S.AUTHENTICATED, S.SELECTED})
_NOAUTH = frozenset({S.NOT_AUTHENTICATED})
_AUTH = frozenset({S.AUTHENTICATED, S.SELECTED})
_SEL = frozenset({S.SELECTED})

# The one table of commands and states (RFC 9051 §6.1-§6.4; ID RFC 2971 §3.1
# any state; ENABLE RFC 5161 §3.1 authenticated only; COMPRESS RFC 4978 §3).
_ALLOWED: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "STARTTLS": _NOAUTH, "AUTHENTICATE": _NOAUTH, "LOGIN": _NOAUTH,
    "ENABLE": frozenset({S.AUTHENTICATED}),
    "SELECT": _AUTH, "EXAMINE": _AUTH, "CREATE": _AUTH, "DELETE": _AUTH, "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH, "UNSUBSCRIBE": _AUTH, "LIST": _AUTH, "LSUB": _AUTH,
    "NAMESPACE": _AUTH, "STATUS": _AUTH, "APPEND": _AUTH, "IDLE": _AUTH, "GETQUOTA": _AUTH,
    "GETQUOTAROOT": _AUTH, "SETQUOTA": _AUTH, "COMPRESS": _AUTH,
    "CHECK": _SEL, "CLOSE": _SEL, "UNSELECT": _SEL, "EXPUNGE": _SEL, "SEARCH": _SEL,
    "FETCH": _SEL, "STORE": _SEL, "COPY": _SEL, "MOVE": _SEL, "SORT": _SEL, "THREAD": _SEL,
    "UID COPY": _SEL, "UID MOVE": _SEL, "UID FETCH": _SEL, "UID SEARCH": _SEL,
    "UID STORE": _SEL, "UID EXPUNGE": _SEL, "UID SORT": _SEL, "UID THREAD": _SEL,
}

# What a tagged response to a pending command does to the state.
_AFTER: dict[tuple[type[c.Command], str], State] = {
    (c.Login, "OK"): S.AUTHENTICATED,
    (c.Authenticate, "OK"): S.AUTHENTICATED,
    (c.Select, "OK"): S.SELECTED,            # EXAMINE too
    (c.Select, "NO"): S.AUTHENTICATED,       # a failed SELECT deselects (RFC 9051 §6.3.2)
    (c.Close, "OK"): S.AUTHENTICATED,
    (c.Unselect, "OK"): S.AUTHENTICATED,
    (c.Logout, "OK"): S.LOGOUT,
}

# "{n}", "{n+}", "~{n}" at the end of a line (RFC 9051 §9 literal, RFC 7888, RFC 3516).
_MARKER = re.compile(rb"~?\{([0-9]{1,30})(\+?)\}\Z")
_TAG_PEEK = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+(?= )')
_TAIL = 64                       # bytes of a skipped line kept to find a literal marker
_LITERAL_MINUS = 4096            # RFC 7888 §5: LITERAL- non-synchronizing literals
_MAX_OCTETS = (1 << 63) - 1
_CONTINUE = b"+ OK\r\n"


def _refusal_text(name: str, state: State) -> str:
    allowed = _ALLOWED[name]
    if state is S.NOT_AUTHENTICATED:
        return f"{name}: log in first"
    if allowed is _NOAUTH:
        return f"{name}: already authenticated"
    if name == "ENABLE":
        return "ENABLE is only allowed before a mailbox is selected (RFC 5161 §3.1)"
    return f"{name}: no mailbox selected"


class IMAPServerConnection:
    """One IMAP connection seen from the server, without any I/O."""

    def __init__(
        self, limits: Limits = Limits(), *, literal_plus: bool = True, tls_active: bool = False
    ) -> None:
        self.limits = limits
        self.literal_plus = literal_plus   # LITERAL+ announced (else LITERAL-)
        self.tls_active = tls_active
        self.state = S.NOT_AUTHENTICATED
        self.utf8 = False                  # UTF-8 mailbox names (RFC 9051 §5.1 / RFC 6855)
        self.rev2 = False                  # ENABLE IMAP4rev2 done
        self.compressing = False
        self.errors = 0
        self._in = bytearray()
        self._out: list[bytes] = []
        self._held: list[bytes] | None = None   # responses after STARTTLS/COMPRESS OK
        self._switch: str | None = None         # "tls" or "compress" pending
        self._pending: c.Command | None = None  # handed on, no tagged response yet
        self._mode: str | None = None           # "auth" / "idle": next line is not a command
        # The command being framed.
        self._lines: list[bytes] = []      # its lines, without CRLF
        self._literals: list[bytes] = []   # its literals' octets, in order
        self._tag = ""
        self._name = ""
        self._size = 0
        self._literal_left = 0
        # Discarding input.
        self._skip_left = 0          # octets of a refused literal
        self._skip_line = False      # skipping to the end of a line
        self._skip_tail = b""
        self._skip_count = 0
        self._discard = False        # the rest of a refused command follows
        self._close_after: str | None = None  # BYE at the next next_event()

    # ------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self.state is S.LOGOUT

    @property
    def starting_tls(self) -> bool:
        return self._switch == "tls"

    @property
    def starting_compression(self) -> bool:
        return self._switch == "compress"

    @property
    def buffered(self) -> int:
        """Octets received and not yet processed (for the adapter's back-pressure)."""
        return len(self._in)

    @property
    def pending(self) -> c.Command | None:
        """The command handed on whose tagged response has not been sent."""
        return self._pending

    def receive_data(self, data: bytes) -> None:
        if self.state is S.LOGOUT or self._switch == "tls":
            return  # after STARTTLS's OK and before the handshake: dropped (injection)
        self._in += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send(self, response: r.Response) -> None:
        """Queue ``response`` and learn from it (see the module docstring)."""
        data = response.render(self.utf8)
        (self._out if self._held is None else self._held).append(data)
        if isinstance(response, r.Tagged):
            self._tagged(response)
        elif isinstance(response, r.Untagged):
            if response.status == "BYE":
                self._logout()
            elif response.status == "PREAUTH" and self.state is S.NOT_AUTHENTICATED:
                self.state = S.AUTHENTICATED
            elif response.status == "BAD":
                self._count_error()
        elif isinstance(response, r.Continuation):
            if isinstance(self._pending, c.Authenticate):
                self._mode = "auth"
            elif isinstance(self._pending, c.Idle):
                self._mode = "idle"
        elif isinstance(response, r.EnabledData):
            enabled = {cap.upper() for cap in response.capabilities}
            if "IMAP4REV2" in enabled:
                self.rev2 = self.utf8 = True
            if "UTF8=ACCEPT" in enabled:
                self.utf8 = True

    def send_data(self, data: bytes) -> None:
        """Queue untagged data responses the session rendered itself (FETCH,
        EXISTS, LIST ... lines): the core learns nothing from data responses,
        so they skip ``send``'s bookkeeping, the most frequent output of all."""
        (self._out if self._held is None else self._held).append(data)

    def start_tls_done(self) -> None:
        """The TLS handshake after STARTTLS's OK succeeded (RFC 9051 §6.2.1)."""
        if self._switch != "tls":
            raise IMAPProtocolError("start_tls_done() without a STARTTLS OK")
        self._switch = None
        self.tls_active = True
        self._in.clear()
        self._release_held()

    def compression_started(self) -> bytes:
        """The adapter compresses from now on (RFC 4978 §4); returns the octets
        already received after COMPRESS (compressed), to inflate and feed back."""
        if self._switch != "compress":
            raise IMAPProtocolError("compression_started() without a COMPRESS OK")
        self._switch = None
        self.compressing = True
        leftover = bytes(self._in)
        self._in.clear()
        self._release_held()
        return leftover

    def next_event(self) -> c.Event | _Sentinel:
        while True:
            if self._close_after is not None and self.state is not S.LOGOUT:
                self._bye(self._close_after)
            if self.state is S.LOGOUT:
                return NEED_DATA
            if self._switch is not None or (self._pending is not None and self._mode is None):
                return PAUSED
            event = self._step()
            if event is not None:
                if isinstance(event, c.Command):
                    self._pending = event
                return event

    # ------------------------------------------------------------ responses

    def _tagged(self, response: r.Tagged) -> None:
        pending = self._pending
        if pending is not None and response.tag == pending.tag:
            self._pending = None
            self._mode = None
            new_state = _AFTER.get((type(pending), response.status))
            if new_state is S.LOGOUT:
                self._logout()
            elif new_state is not None and self.state is not S.LOGOUT:
                self.state = new_state
            if response.status == "OK" and self.state is not S.LOGOUT:
                if isinstance(pending, c.StartTLS):
                    # RFC 9051 §6.2.1 / CVE-2011-0411: nothing sent before the
                    # handshake may be taken as a command under TLS.
                    self._switch = "tls"
                    self._in.clear()
                    self._held = []
                elif isinstance(pending, c.Compress):
                    self._switch = "compress"
                    self._held = []
        if response.status == "BAD":
            self._count_error()

    def _count_error(self) -> None:
        self.errors += 1
        limit = self.limits.max_errors
        if limit and self.errors >= limit and self.state is not S.LOGOUT:
            self._bye("Too many errors")

    def _bye(self, text: str) -> None:
        self._out.append(r.Untagged("BYE", text).render())
        self._logout()

    def _logout(self) -> None:
        self.state = S.LOGOUT
        self._in.clear()
        self._release_held()

    def _release_held(self) -> None:
        if self._held is not None:
            self._out += self._held
            self._held = None

    # -------------------------------------------------------------- framing

    def _step(self) -> c.Event | _Sentinel | None:
        """One step of framing: an event, NEED_DATA, or None to go on."""
        buf = self._in
        if self._skip_left:
            n = min(self._skip_left, len(buf))
            del buf[:n]
            self._skip_left -= n
            return NEED_DATA if self._skip_left else None
        if self._literal_left:
            n = self._literal_left
            if len(buf) < n:
                return NEED_DATA
            self._literals.append(bytes(buf[:n]))
            del buf[:n]
            self._literal_left = 0
            return None
        if self._discard and not self._skip_line:
            self._start_skip()
        if self._skip_line:
            return self._skip_to_line_end()
        lf = buf.find(b"\n")
        limit = self.limits.max_line
        if lf < 0:
            if len(buf) > limit + 1:   # even without a final CR, over the limit
                return self._too_long(bytes(buf[:limit]))
            return NEED_DATA
        if lf > limit + 1 or (lf == limit + 1 and buf[lf - 1] != 0x0D):
            return self._too_long(bytes(buf[:limit]))
        line = bytes(buf[:lf])
        del buf[: lf + 1]
        crlf = line.endswith(b"\r")
        if crlf:
            line = line[:-1]
        if self._mode is not None:
            return self._mode_line(line, crlf)
        if self._lines:
            return self._continuation_line(line, crlf)
        return self._first_line(line, crlf)

    def _start_skip(self) -> None:
        self._skip_line = True
        self._skip_tail = b""
        self._skip_count = 0

    def _skip_to_line_end(self) -> c.Event | _Sentinel | None:
        buf = self._in
        lf = buf.find(b"\n")
        cap = max(16 * self.limits.max_line, 1 << 20)
        end = lf if lf >= 0 else len(buf)
        self._skip_tail = (self._skip_tail + bytes(buf[max(0, end - _TAIL) : end]))[-_TAIL:]
        del buf[: lf + 1 if lf >= 0 else end]
        self._skip_count += end
        if self._skip_count > cap:
            self._bye("Line too long")
            return NEED_DATA
        if lf < 0:
            return NEED_DATA
        self._skip_line = False
        if self._discard:
            self._discard = False
            tail = self._skip_tail[:-1] if self._skip_tail.endswith(b"\r") else self._skip_tail
            self._skip_literal(tail)
        return None

    def _skip_literal(self, line: bytes) -> None:
        """After a refusal: if ``line`` announced a non-synchronizing literal, skip it
        and the rest of the command.  A synchronizing one the client will not send."""
        m = _MARKER.search(line[-_TAIL:])
        if m is None or not m[2]:
            return
        size = int(m[1])
        if size > _MAX_OCTETS:
            # Cannot be skipped: close once the refusal has been sent.
            self._close_after = "Literal size out of range"
            return
        self._skip_left = size
        self._discard = True

    def _too_long(self, head: bytes) -> c.Event:
        """The current line is over max_line: refuse it now, skip it as it comes."""
        text = f"Line too long (more than {self.limits.max_line} octets)"
        if self._mode is not None:
            tag = self._pending.tag if self._pending is not None else "*"
            self._mode = None
            self._start_skip()
            return c.BadCommand(tag, text)
        tag = self._tag if self._lines else self._peek_tag(head)
        self._reset_command()
        self._discard = True
        self._start_skip()
        return c.BadCommand(tag, text)

    @staticmethod
    def _peek_tag(line: bytes) -> str:
        m = _TAG_PEEK.match(line)
        return m[0].decode("ascii") if m else "*"

    def _reset_command(self) -> None:
        self._lines = []
        self._literals = []
        self._tag = ""
        self._name = ""
        self._size = 0
        self._literal_left = 0

    def _refuse(self, tag: str, text: str, line: bytes, *, code: str | None = None,
                status: str = "BAD") -> c.Event:
        """Refuse the command being framed; ``line`` is its last line read."""
        self._reset_command()
        self._skip_literal(line)
        return c.BadCommand(tag, text, code, status)

    # --------------------------------------------------------------- lines

    def _mode_line(self, line: bytes, crlf: bool) -> c.Event:
        mode, self._mode = self._mode, None
        pending = self._pending
        tag = pending.tag if pending is not None else "*"
        if not crlf:
            return c.BadCommand(tag, "Line must end with CRLF (RFC 9051 §2.2)")
        if mode == "idle":
            if line.upper() == b"DONE":
                return c.IdleDone()
            return c.BadCommand(tag, "Expected DONE to end IDLE (RFC 2177)")
        if line == b"*":
            return c.AuthResponse(cancelled=True)
        try:
            return c.AuthResponse(base64.b64decode(line, validate=True))
        except (binascii.Error, ValueError):
            return c.BadCommand(tag, "Invalid base64 in AUTHENTICATE response (RFC 9051 §6.2.2)")

    def _first_line(self, line: bytes, crlf: bool) -> c.Event | None:
        if not line and crlf:
            return None  # an empty line between commands: ignored
        try:
            tag, name = parse_head(line)
        except ParseError as exc:
            return self._refuse(exc.tag or self._peek_tag(line), exc.text, line)
        if not crlf:
            return self._refuse(tag, "Line must end with CRLF (RFC 9051 §2.2)", line)
        states = _ALLOWED.get(name)
        if states is None:
            return self._refuse(tag, f"Unknown command {name}", line)
        if self.state not in states:
            return self._refuse(tag, _refusal_text(name, self.state), line)
        if name == "STARTTLS" and self.tls_active:
            return self._refuse(tag, "TLS is already active", line)
        self._tag = tag
        self._name = name
        return self._add_line(line)

    def _continuation_line(self, line: bytes, crlf: bool) -> c.Event | None:
        if not crlf:
            return self._refuse(self._tag, "Line must end with CRLF (RFC 9051 §2.2)", line)
        return self._add_line(line)

    def _add_line(self, line: bytes) -> c.Event | None:
        """Add a line to the command; ask for its literal, or parse the whole."""
        self._lines.append(line)
        self._size += len(line) + 2
        limits = self.limits
        m = _MARKER.search(line[-_TAIL:])
        if m is None:
            if self._size > limits.max_command:
                return self._refuse(self._tag, "Command too long", line, code="TOOBIG")
            return self._parse()
        size = int(m[1])
        nonsync = bool(m[2])
        append = self._name == "APPEND"
        if nonsync and not self.literal_plus and size > _LITERAL_MINUS:
            return self._refuse(
                self._tag, "Non-synchronizing literal over 4096 octets (LITERAL-, RFC 7888 §5)",
                line, code="TOOBIG",
            )
        if append and size > limits.appendlimit:
            return self._refuse(self._tag, f"Message over the APPENDLIMIT of {limits.appendlimit}"
                                " octets", line, code="TOOBIG", status="NO")
        if not append and size > limits.max_literal:
            return self._refuse(self._tag, f"Literal over {limits.max_literal} octets", line,
                                code="TOOBIG")
        if self._size + size > limits.max_command:
            return self._refuse(self._tag, f"Command over {limits.max_command} octets", line,
                                code="TOOBIG", status="NO" if append else "BAD")
        self._size += size
        self._literal_left = size
        if not size:
            self._literals.append(b"")
        if not nonsync:
            self._out.append(_CONTINUE)
        return None

    def _parse(self) -> c.Event:
        # The literals go to the parser as they are: an APPEND's message is
        # copied once, out of the input buffer, and never joined.
        data = b"\r\n".join(self._lines)
        literals = self._literals
        tag = self._tag
        self._reset_command()
        try:
            return parse_command(data, utf8=self.utf8, literals=literals)
        except ParseError as exc:
            return c.BadCommand(exc.tag or tag, exc.text, exc.code, exc.status)
