"""Byte-exact transcripts of the sans-IO SMTP server core (RFC 5321 and its extensions).

Each test feeds client bytes to ``SMTPServerConnection``, answers the three
decisions (MAIL, RCPT, end of message) with a small policy, and compares what
the core sends with the expected bytes exactly.  ``Session`` is the driver;
the property tests in ``tests/fuzz`` use it too.

Known bugs of the core would be tests marked ``xfail(strict=True, reason="BUG: ...")``:
when one is fixed, its test starts to pass and strict mode turns that into a
failure, so the marker is removed together with the bug.  (None are open.)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.protocols.smtp.params import MailParams, RcptParams
from pillarbox.protocols.smtp.reply import Reply
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection, State

# ------------------------------------------------------------------ the driver

HOST = "mx.test"

Decision = ev.MailFrom | ev.RcptTo | ev.MessageEnd
Policy = Callable[[Decision], Reply | None]

MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")
QUEUED = Reply(250, "2.0.0", "Ok: queued as X")


def default_policy(event: Decision) -> Reply:
    """Accept every sender; refuse recipients whose local part starts with "unknown"."""
    if isinstance(event, ev.MailFrom):
        return MAIL_OK
    if isinstance(event, ev.RcptTo):
        if event.forward_path.local_part.startswith("unknown"):
            return NO_SUCH_USER
        return RCPT_OK
    return QUEUED


class Session:
    """Drives one core: feeds bytes, answers decisions with ``policy``, records events.

    ``messages`` holds the content of every message that reached ``MessageEnd``
    (whatever the policy answered), ``aborted`` the partial content of every
    ``MessageAborted`` one.  A policy that returns None leaves the decision
    pending, for the test to answer with ``conn.respond()``.  On ``StartTLS``
    the handshake is taken to succeed at once unless ``auto_tls`` is False.
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        policy: Policy = default_policy,
        auto_tls: bool = True,
        greet: bool = True,
    ) -> None:
        self.conn = SMTPServerConnection(
            HOST, limits, tls_available=tls_available, tls_active=tls_active
        )
        self.policy = policy
        self.auto_tls = auto_tls
        self.events: list[ev.Event] = []
        self.messages: list[bytes] = []
        self.aborted: list[bytes] = []
        self._content: bytearray | None = None
        if greet:
            self.conn.greeting()

    def feed(self, *pieces: bytes) -> bytes:
        """Feed each piece in turn, running the core after each; return what it sent."""
        for piece in pieces:
            self.conn.receive_data(piece)
            self.run()
        return self.conn.data_to_send()

    def run(self) -> None:
        """Take events until the core needs data or waits for the test."""
        while True:
            event = self.conn.next_event()
            if event is ev.NEED_DATA or event is ev.PAUSED:
                return
            assert not isinstance(event, ev._Sentinel)
            self.record(event)
            if isinstance(event, ev.MailFrom | ev.RcptTo | ev.MessageEnd):
                reply = self.policy(event)
                if reply is None:
                    return
                self.conn.respond(reply)
            elif isinstance(event, ev.StartTLS) and self.auto_tls:
                self.conn.tls_established()

    def record(self, event: ev.Event) -> None:
        self.events.append(event)
        if isinstance(event, ev.MessageStart):
            assert self._content is None, "MessageStart inside a message"
            self._content = bytearray()
        elif isinstance(event, ev.MessageData):
            assert self._content is not None, "MessageData outside a message"
            assert event.data, "empty MessageData"
            self._content += event.data
        elif isinstance(event, ev.MessageEnd):
            assert self._content is not None, "MessageEnd outside a message"
            assert event.size == len(self._content)
            self.messages.append(bytes(self._content))
            self._content = None
        elif isinstance(event, ev.MessageAborted):
            assert self._content is not None, "MessageAborted outside a message"
            self.aborted.append(bytes(self._content))
            self._content = None
        elif isinstance(event, ev.Hello | ev.Reset | ev.StartTLS):
            self._content = None  # any open transaction is gone

    @property
    def kinds(self) -> list[str]:
        """The names of the events, runs of MessageData merged into one."""
        names: list[str] = []
        for event in self.events:
            name = type(event).__name__
            if name == "MessageData" and names and names[-1] == name:
                continue
            names.append(name)
        return names

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    def normalized(self) -> list[object]:
        """Events with runs of MessageData merged: equal whatever the splits of the input."""
        out: list[object] = []
        for event in self.events:
            if isinstance(event, ev.MessageData) and out and isinstance(out[-1], ev.MessageData):
                out[-1] = ev.MessageData(out[-1].data + event.data)
            else:
                out.append(event)
        return out


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def random_pieces(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    return split_at(data, [rng.randrange(len(data) + 1) for _ in range(n)])


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ------------------------------------------------------ client lines, replies

EHLO = b"EHLO client.test\r\n"
HELO = b"HELO client.test\r\n"
MAIL = b"MAIL FROM:<alice@example.test>\r\n"
RCPT = b"RCPT TO:<bob@example.test>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
RSET = b"RSET\r\n"
NOOP = b"NOOP\r\n"

GREETING = b"220 mx.test ESMTP Pillarbox\r\n"
EHLO_REPLY = (
    b"250-mx.test Hello client.test\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 52428800\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-CHUNKING\r\n"
    b"250-DSN\r\n"
    b"250 HELP\r\n"
)
EHLO_REPLY_TLS = EHLO_REPLY.replace(b"250 HELP\r\n", b"250-STARTTLS\r\n250 HELP\r\n")
# Under TLS: no STARTTLS, and REQUIRETLS (RFC 8689 2), offered only there.
EHLO_REPLY_UNDER_TLS = EHLO_REPLY.replace(b"250-DSN\r\n", b"250-DSN\r\n250-REQUIRETLS\r\n")
HELO_REPLY = b"250 mx.test Hello client.test\r\n"
R_OK = b"250 2.0.0 Ok\r\n"
R_MAIL = b"250 2.1.0 Ok\r\n"
R_RCPT = b"250 2.1.5 Ok\r\n"
R_NO_SUCH_USER = b"550 5.1.1 No such user\r\n"
R_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"
R_QUEUED = b"250 2.0.0 Ok: queued as X\r\n"
R_BYE = b"221 2.0.0 mx.test closing connection\r\n"
R_UNKNOWN = b"500 5.5.2 Syntax error, command unrecognized\r\n"
R_TOO_LONG = b"500 5.5.2 Line too long\r\n"
R_BARE_CMD = b"500 5.5.2 Bare CR or LF in command: only CRLF ends a line (RFC 5321 2.3.8)\r\n"
R_BARE_DATA = (
    b"550 5.6.0 Message refused: bare CR or LF in content;"
    b" lines must end with CRLF (RFC 5321 2.3.8)\r\n"
)
R_TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
R_LOOP = b"554 5.4.6 Too many hops: mail loop detected (RFC 5321 6.3)\r\n"
R_TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
R_TOO_MANY_RCPTS = b"452 4.5.3 Too many recipients\r\n"
R_NO_VALID_RCPTS = b"554 5.5.1 No valid recipients\r\n"
R_NEED_MAIL_RCPT = b"503 5.5.1 Bad sequence: need MAIL and RCPT\r\n"
R_BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
R_BDAT_NEEDS_EHLO = b"503 5.5.1 BDAT needs EHLO (RFC 3030)\r\n"
R_BDAT_SYNTAX = b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
R_TLS_READY = b"220 2.0.0 Ready to start TLS\r\n"
R_TLS_ACTIVE = b"503 5.5.1 TLS already active\r\n"


def r_long_line(limit: int) -> bytes:
    return b"500 5.5.2 Message has a line longer than %d octets (RFC 5321 4.5.3.1.6)\r\n" % limit


def r_octets(n: int) -> bytes:
    return b"250 2.0.0 %d octets received\r\n" % n


def ready(limits: Limits = Limits(), **kwargs: object) -> Session:
    """A session greeted and past EHLO, its output taken."""
    session = Session(limits, **kwargs)  # type: ignore[arg-type]
    assert session.feed(EHLO).startswith(GREETING + b"250-mx.test Hello client.test\r\n")
    return session


def in_rcpt(limits: Limits = Limits(), **kwargs: object) -> Session:
    """A session with one sender and one recipient accepted."""
    session = ready(limits, **kwargs)
    assert session.feed(MAIL + RCPT) == R_MAIL + R_RCPT
    return session


def in_data(limits: Limits = Limits(), **kwargs: object) -> Session:
    """A session that got 354 and reads message content."""
    session = in_rcpt(limits, **kwargs)
    assert session.feed(DATA) == R_354
    return session


# ---------------------------------------------------- greeting, EHLO and HELO


def test_greeting_is_220_without_enhanced_code() -> None:
    # RFC 2034 3: no enhanced status code in the greeting.
    assert Session().feed() == GREETING


def test_greeting_can_be_replaced() -> None:
    session = Session(greet=False)
    session.conn.greeting(Reply(554, "", "mx.test no service"))
    assert session.feed() == b"554 mx.test no service\r\n"


def test_ehlo_lists_the_extensions_without_starttls_when_tls_is_unavailable() -> None:
    session = Session()
    assert session.feed(EHLO) == GREETING + EHLO_REPLY
    assert session.events == [ev.Hello("EHLO", "client.test")]
    assert session.conn.state is State.READY and session.conn.esmtp


def test_ehlo_offers_starttls_when_available() -> None:
    assert Session(tls_available=True).feed(EHLO) == GREETING + EHLO_REPLY_TLS


def test_ehlo_does_not_offer_starttls_when_tls_is_already_active() -> None:
    session = Session(tls_available=True, tls_active=True)
    assert session.feed(EHLO) == GREETING + EHLO_REPLY_UNDER_TLS


def test_ehlo_size_shows_the_configured_limit() -> None:
    session = Session(Limits(max_message_size=1000))
    assert session.feed(EHLO) == GREETING + EHLO_REPLY.replace(b"SIZE 52428800", b"SIZE 1000")


def test_ehlo_size_without_number_when_unlimited() -> None:
    # RFC 1870 4: "SIZE" alone says there is no fixed maximum.
    session = Session(Limits(max_message_size=0))
    assert session.feed(EHLO) == GREETING + EHLO_REPLY.replace(b"SIZE 52428800", b"SIZE")


def test_verbs_are_case_insensitive() -> None:
    assert Session().feed(b"eHlO client.test\r\n") == GREETING + EHLO_REPLY


def test_helo_has_no_extensions() -> None:
    session = Session()
    assert session.feed(HELO) == GREETING + HELO_REPLY
    assert session.events == [ev.Hello("HELO", "client.test")]
    assert not session.conn.esmtp


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"EHLO \r\n", b"EHLO a b\r\n"])
def test_ehlo_needs_exactly_one_domain(line: bytes) -> None:
    session = Session()
    assert session.feed(line) == GREETING + b"501 5.5.4 Syntax: EHLO hostname\r\n"
    assert session.conn.state is State.GREETED


def test_helo_without_domain() -> None:
    assert Session().feed(b"HELO\r\n") == GREETING + b"501 5.5.4 Syntax: HELO hostname\r\n"


def test_mail_parameters_after_helo_are_555() -> None:
    # RFC 5321 4.1.1.11: extension parameters only after EHLO.
    session = Session()
    assert session.feed(HELO, b"MAIL FROM:<alice@example.test> SIZE=10\r\n") == (
        GREETING + HELO_REPLY + b"555 5.5.4 MAIL parameters need EHLO (RFC 5321 4.1.1.11)\r\n"
    )
    assert session.feed(MAIL, b"RCPT TO:<bob@example.test> NOTIFY=NEVER\r\n") == (
        R_MAIL + b"555 5.5.4 RCPT parameters need EHLO (RFC 5321 4.1.1.11)\r\n"
    )
    assert session.feed(RCPT, DATA, b"hi\r\n.\r\n") == R_RCPT + R_354 + R_QUEUED
    assert session.messages == [b"hi\r\n"]


def test_smtputf8_after_helo_is_555() -> None:
    session = Session()
    assert session.feed(HELO, "MAIL FROM:<jörg@example.test> SMTPUTF8\r\n".encode()) == (
        GREETING + HELO_REPLY + b"555 5.5.4 MAIL parameters need EHLO (RFC 5321 4.1.1.11)\r\n"
    )


def test_ehlo_again_resets_the_transaction() -> None:
    session = in_rcpt()
    assert session.feed(EHLO) == EHLO_REPLY
    assert session.feed(DATA) == R_NEED_MAIL_RCPT
    assert session.feed(MAIL, RCPT, DATA, b".\r\n") == R_MAIL + R_RCPT + R_354 + R_QUEUED


# ------------------------------------------------------------ command order


def test_mail_before_helo_is_503() -> None:
    session = Session()
    assert session.feed(MAIL) == (
        GREETING + b"503 5.5.1 Bad sequence of commands: send HELO/EHLO first, or RSET\r\n"
    )
    assert session.events == [ev.ProtocolViolation("MAIL", session.events[0].reply)]


def test_nested_mail_is_503() -> None:
    session = in_rcpt()
    assert session.feed(MAIL) == b"503 5.5.1 Bad sequence: nested MAIL command\r\n"
    session = ready()
    assert session.feed(MAIL, MAIL) == R_MAIL + b"503 5.5.1 Bad sequence: nested MAIL command\r\n"


def test_rcpt_before_mail_is_503() -> None:
    assert ready().feed(RCPT) == b"503 5.5.1 Bad sequence: need MAIL first\r\n"


def test_data_before_mail_is_503() -> None:
    assert ready().feed(DATA) == R_NEED_MAIL_RCPT


def test_data_without_recipient_is_554() -> None:
    # RFC 2920 3.1: DATA after no accepted RCPT gets 554 (or 503).
    assert ready().feed(MAIL, DATA) == R_MAIL + R_NO_VALID_RCPTS


def test_data_after_only_refused_recipients_is_554_and_body_is_then_commands() -> None:
    session = ready()
    out = session.feed(MAIL, b"RCPT TO:<unknown@example.test>\r\n", DATA, b"NOOP\r\n.\r\n")
    assert out == R_MAIL + R_NO_SUCH_USER + R_NO_VALID_RCPTS + R_OK + R_UNKNOWN
    assert session.of(ev.MessageStart) == []


def test_data_or_bdat_after_refused_recipients_is_not_counted_as_an_error() -> None:
    # RFC 2920 3.1: a pipelining client sends DATA even when every RCPT failed.
    session = ready(Limits(max_errors=2))
    refused = b"RCPT TO:<unknown@example.test>\r\n"
    assert session.feed(MAIL, refused, DATA, b"BDAT 1 LAST\r\nx", NOOP) == (
        R_MAIL + R_NO_SUCH_USER + R_NO_VALID_RCPTS + R_NO_VALID_RCPTS + R_OK
    )
    assert not session.conn.closed
    assert session.feed(refused) == R_NO_SUCH_USER + R_TOO_MANY_ERRORS


def test_data_with_argument_is_501() -> None:
    session = in_rcpt()
    assert session.feed(b"DATA now\r\n") == b"501 5.5.4 DATA takes no arguments\r\n"
    assert session.feed(DATA, b".\r\n") == R_354 + R_QUEUED


def test_unknown_command_is_500() -> None:
    assert ready().feed(b"FOO bar\r\n") == R_UNKNOWN


def test_empty_line_is_500() -> None:
    assert ready().feed(b"\r\n") == R_UNKNOWN


def test_command_not_utf8_is_500() -> None:
    assert ready().feed(b"NOOP \xff\r\n") == b"500 5.5.2 Command is not valid UTF-8\r\n"


@pytest.mark.parametrize("verb", [b"SEND", b"SOML", b"SAML", b"TURN", b"ETRN", b"ATRN", b"AUTH"])
def test_obsolete_and_unoffered_commands_are_502(verb: bytes) -> None:
    assert ready().feed(verb + b" x\r\n") == b"502 5.5.1 Command not implemented\r\n"


def test_vrfy_is_252() -> None:
    # RFC 5321 3.5.3: 252 keeps addresses from being harvested.
    assert ready().feed(b"VRFY bob\r\n") == (
        b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    )


def test_vrfy_without_argument_is_501() -> None:
    assert ready().feed(b"VRFY\r\n") == b"501 5.5.4 Syntax: VRFY address\r\n"


def test_expn_is_502() -> None:
    assert ready().feed(b"EXPN staff\r\n") == b"502 5.5.1 EXPN not available\r\n"


def test_help_is_214() -> None:
    assert Session().feed(b"HELP\r\n", b"HELP MAIL\r\n") == GREETING + 2 * (
        b"214-2.0.0 Pillarbox SMTP; commands:"
        b" EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS\r\n"
        b"214 2.0.0 See RFC 5321\r\n"
    )


def test_noop_is_250_with_or_without_argument() -> None:
    assert Session().feed(NOOP, b"NOOP anything\r\n") == GREETING + R_OK + R_OK


def test_rset_is_250_and_resets_the_transaction() -> None:
    session = in_rcpt()
    assert session.feed(RSET) == R_OK
    assert session.events[-1] == ev.Reset()
    assert session.conn.state is State.READY
    assert session.feed(RCPT, DATA) == (
        b"503 5.5.1 Bad sequence: need MAIL first\r\n" + R_NEED_MAIL_RCPT
    )
    assert session.feed(MAIL, RCPT) == R_MAIL + R_RCPT


def test_rset_before_helo_keeps_the_need_for_helo() -> None:
    session = Session()
    assert session.feed(RSET) == GREETING + R_OK
    assert session.conn.state is State.GREETED


def test_rset_with_argument_is_501() -> None:
    assert ready().feed(b"RSET all\r\n") == b"501 5.5.4 RSET takes no arguments\r\n"


def test_quit_is_221_and_closes() -> None:
    session = ready()
    assert session.feed(QUIT, NOOP) == R_BYE
    assert session.events[-1] == ev.Closing(Reply(221, "2.0.0", "mx.test closing connection"))
    assert session.conn.closed and session.conn.state is State.CLOSED
    assert session.feed(NOOP) == b""


def test_quit_with_argument_is_501() -> None:
    assert ready().feed(b"QUIT now\r\n") == b"501 5.5.4 QUIT takes no arguments\r\n"


def test_close_sends_its_reply_once() -> None:
    session = in_rcpt()
    session.conn.close(Reply(421, "4.4.2", "Timeout exceeded, closing connection"))
    session.conn.close(Reply(421, "4.3.2", "again"))
    assert session.feed(NOOP) == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert session.conn.closed


def test_nothing_is_sent_after_close() -> None:
    def policy(event: Decision) -> Reply | None:
        return None if isinstance(event, ev.MessageEnd) else default_policy(event)

    session = in_data(policy=policy)
    assert session.feed(b"hi\r\n.\r\n") == b""
    session.conn.close(Reply(421, "4.4.2", "Timeout exceeded, closing connection"))
    session.conn.respond(QUEUED)
    assert session.conn.data_to_send() == b"421 4.4.2 Timeout exceeded, closing connection\r\n"


def test_respond_without_pending_decision_is_an_error_of_the_caller() -> None:
    with pytest.raises(RuntimeError):
        ready().conn.respond(MAIL_OK)


# ------------------------------------------------- bad command lines, limits


@pytest.mark.parametrize("line", [b"NO\rOP\r\n", b"NOOP\rNOOP\r\n", b"NOOP\r\r\n", b"\rNOOP\r\n"])
def test_bare_cr_in_command_is_500_and_session_goes_on(line: bytes) -> None:
    # RFC 5321 2.3.8: only CRLF ends a line; a bare CR stays inside it.
    for pieces in ([line], bytewise(line)):
        session = ready()
        assert session.feed(*pieces, NOOP) == R_BARE_CMD + R_OK
        assert session.kinds == ["Hello", "ProtocolViolation"]


@pytest.mark.parametrize("line", [b"NOOP\n", b"\n", b"NO\nOP", b"NOOP\n\n"])
def test_bare_lf_in_command_is_500_and_session_goes_on(line: bytes) -> None:
    session = ready()
    out = session.feed(line + b"x\r\n", NOOP)
    assert out.startswith(R_BARE_CMD) and out.endswith(R_OK)
    assert session.kinds[1] == "ProtocolViolation"


def test_bare_lf_ends_a_refused_command_line() -> None:
    # A decision, not an accident: a bare LF still ends the (refused) line, so
    # a client that sends LF alone hears 500 at once instead of waiting for a
    # reply that would never come.  What follows is read as the next command,
    # which the client could have sent properly anyway: no smuggling, since
    # DATA content is where a bare LF could hide a second message, and there
    # it is refused whole.
    session = ready()
    out = session.feed(b"NOOP\nMAIL FROM:<a@example.test>\r\n")
    assert out.startswith(R_BARE_CMD)
    assert len(session.of(ev.MailFrom)) == 1


def test_command_line_too_long_is_500_and_session_goes_on() -> None:
    limits = Limits(max_command_line=64)
    session = ready(limits)
    assert session.feed(b"NOOP " + b"x" * 100 + b"\r\n", NOOP) == R_TOO_LONG + R_OK


def test_command_line_too_long_fed_in_pieces() -> None:
    limits = Limits(max_command_line=64)
    session = ready(limits)
    long_line = b"MAIL FROM:<" + b"x" * 300 + b"@example.test>\r\n"
    assert session.feed(*bytewise(long_line), NOOP) == R_TOO_LONG + R_OK
    assert session.of(ev.MailFrom) == []


def test_command_line_at_the_limit_is_accepted() -> None:
    # The limit counts the CRLF (RFC 5321 4.5.3.1.4).
    line = b"NOOP " + b"x" * 57 + b"\r\n"
    assert len(line) == 64
    for pieces in ([line], bytewise(line)):
        assert ready(Limits(max_command_line=64)).feed(*pieces) == R_OK
        assert ready(Limits(max_command_line=63)).feed(*pieces) == R_TOO_LONG


def test_too_many_errors_is_421_and_closes() -> None:
    session = ready(Limits(max_errors=3))
    out = session.feed(b"FOO\r\n", b"BAR\r\n", b"BAZ\r\n", NOOP)
    assert out == R_UNKNOWN * 3 + R_TOO_MANY_ERRORS
    assert session.events[-1] == ev.Closing(
        Reply(421, "4.7.0", "Too many errors, closing connection")
    )
    assert session.conn.state is State.CLOSED
    assert session.feed(NOOP) == b""


def test_errors_count_only_negative_replies() -> None:
    session = ready(Limits(max_errors=3))
    assert session.feed(NOOP * 10, MAIL, RCPT, b"VRFY x\r\n", b"HELP\r\n").startswith(
        R_OK * 10 + R_MAIL + R_RCPT + b"252 "
    )
    out = session.feed(
        b"RCPT TO:<unknown1@example.test>\r\n",  # the session's refusal counts
        RSET,
        NOOP,
        b"RCPT TO:<unknown2@example.test>\r\n",  # 503 from the core counts
        NOOP,
        b"FOO\r\n",
    )
    assert out == (
        R_NO_SUCH_USER
        + R_OK
        + R_OK
        + b"503 5.5.1 Bad sequence: need MAIL first\r\n"
        + R_OK
        + R_UNKNOWN
        + R_TOO_MANY_ERRORS
    )
    assert session.conn.closed
    assert isinstance(session.events[-1], ev.Closing)


def test_too_many_errors_through_respond_emits_closing() -> None:
    session = ready(Limits(max_errors=2))
    out = session.feed(
        MAIL, b"RCPT TO:<unknown1@example.test>\r\n", b"RCPT TO:<unknown2@example.test>\r\n"
    )
    assert out == R_MAIL + R_NO_SUCH_USER + R_NO_SUCH_USER + R_TOO_MANY_ERRORS
    assert session.conn.closed
    assert isinstance(session.events[-1], ev.Closing)


def test_max_command_line_zero_means_no_limit() -> None:
    session = Session(Limits(max_command_line=0))
    assert session.feed(EHLO, b"NOOP " + b"x" * 5000 + b"\r\n") == GREETING + EHLO_REPLY + R_OK


def test_max_errors_zero_means_no_limit() -> None:
    session = ready(Limits(max_errors=0))
    assert session.feed(b"FOO\r\n" * 30, NOOP) == R_UNKNOWN * 30 + R_OK
    assert not session.conn.closed


def test_max_received_headers_zero_means_no_limit() -> None:
    session = in_data(Limits(max_received_headers=0))
    assert session.feed(b"Received: from a\r\n" * 100 + b"\r\nhi\r\n.\r\n") == R_QUEUED


@pytest.mark.parametrize(
    "line", ["maıl FROM:<alice@example.test>\r\n", "ſtarttls\r\n", "quıt\r\n"]
)
def test_non_ascii_look_alike_verbs_are_unknown(line: str) -> None:
    session = ready(tls_available=True)
    assert session.feed(line.encode()) == R_UNKNOWN
    assert session.kinds == ["Hello", "ProtocolViolation"]


@pytest.mark.parametrize("arg", ["3 laſt", "3\u3000LAST"])
def test_bdat_non_ascii_look_alike_last_is_501(arg: str) -> None:
    session = in_rcpt()
    assert session.feed(f"BDAT {arg}\r\n".encode(), NOOP) == R_BDAT_SYNTAX + R_OK


# ------------------------------------------------------------ MAIL and RCPT


def test_mail_and_rcpt_events_carry_paths_and_default_params() -> None:
    session = ready()
    assert session.feed(MAIL, RCPT) == R_MAIL + R_RCPT
    assert session.events[1:] == [
        ev.MailFrom(Mailbox("alice", "example.test"), MailParams()),
        ev.RcptTo(Mailbox("bob", "example.test"), RcptParams()),
    ]
    assert session.conn.state is State.RCPT


def test_null_reverse_path() -> None:
    session = ready()
    assert session.feed(b"MAIL FROM:<>\r\n") == R_MAIL
    assert session.events[-1] == ev.MailFrom(None, MailParams())


def test_rcpt_postmaster_without_domain() -> None:
    # RFC 5321 4.5.1: <Postmaster> must be accepted without a domain.
    session = ready()
    assert session.feed(MAIL, b"RCPT TO:<Postmaster>\r\n") == R_MAIL + R_RCPT
    assert session.events[-1] == ev.RcptTo(Mailbox("Postmaster", ""), RcptParams())


def test_unknown_recipient_refused_by_policy_keeps_the_transaction() -> None:
    session = ready()
    out = session.feed(MAIL, b"RCPT TO:<unknown@example.test>\r\n", RCPT, DATA, b"x\r\n.\r\n")
    assert out == R_MAIL + R_NO_SUCH_USER + R_RCPT + R_354 + R_QUEUED


def test_sender_refused_by_policy_leaves_no_transaction() -> None:
    def policy(event: Decision) -> Reply:
        if isinstance(event, ev.MailFrom):
            return Reply(550, "5.7.1", "Sender refused")
        return default_policy(event)

    session = ready(policy=policy)
    assert session.feed(MAIL, RCPT) == (
        b"550 5.7.1 Sender refused\r\n" + b"503 5.5.1 Bad sequence: need MAIL first\r\n"
    )
    assert session.conn.state is State.READY


def test_mail_params_are_passed_in_the_event() -> None:
    session = ready()
    line = b"MAIL FROM:<alice@example.test> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=q+2B1\r\n"
    assert session.feed(line) == R_MAIL
    assert session.events[-1] == ev.MailFrom(
        Mailbox("alice", "example.test"),
        MailParams(size=1000, body="8BITMIME", ret="HDRS", envid="q+1"),
    )


def test_rcpt_dsn_params_are_passed_in_the_event() -> None:
    session = ready()
    line = b"RCPT TO:<bob@example.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;bob+40example.test\r\n"
    assert session.feed(MAIL, line) == R_MAIL + R_RCPT
    assert session.events[-1] == ev.RcptTo(
        Mailbox("bob", "example.test"),
        RcptParams(notify=("SUCCESS", "FAILURE"), orcpt=("rfc822", "bob@example.test")),
    )


def test_mail_size_over_the_limit_is_552() -> None:
    # RFC 1870 6.1: a declared SIZE above the maximum is refused at MAIL.
    session = ready(Limits(max_message_size=1000))
    assert session.feed(b"MAIL FROM:<a@example.test> SIZE=1001\r\n") == R_TOO_BIG
    assert session.feed(b"MAIL FROM:<a@example.test> SIZE=1000\r\n") == R_MAIL


def test_mail_body_value_outside_the_offer_is_501() -> None:
    assert ready().feed(b"MAIL FROM:<a@example.test> BODY=BINARYMIME\r\n") == (
        b"501 5.5.4 BODY must be 7BIT or 8BITMIME (RFC 6152)\r\n"
    )


def test_unknown_mail_param_is_555() -> None:
    assert ready().feed(b"MAIL FROM:<a@example.test> FOO=1\r\n") == (
        b"555 5.5.4 Unsupported parameter: FOO\r\n"
    )


def test_unknown_rcpt_param_is_555() -> None:
    assert ready().feed(MAIL, b"RCPT TO:<b@example.test> SIZE=1\r\n") == (
        R_MAIL + b"555 5.5.4 Unsupported parameter: SIZE\r\n"
    )


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (
            b"MAIL FROM:<bad>\r\n",
            b"501 5.1.7 Bad sender address syntax: expected local-part@domain\r\n",
        ),
        (
            b"MAIL FROM:a@example.test\r\n",
            b"501 5.5.4 Syntax error: the path must be enclosed in <>\r\n",
        ),
        (b"MAIL TO:<a@example.test>\r\n", b"501 5.5.4 Syntax error: expected FROM:<address>\r\n"),
    ],
)
def test_bad_sender_syntax_is_501(line: bytes, reply: bytes) -> None:
    assert ready().feed(line) == reply


def test_bad_recipient_syntax_is_501() -> None:
    assert ready().feed(MAIL, b"RCPT TO:<>\r\n") == R_MAIL + (
        b"501 5.1.3 Bad recipient address syntax:"
        b" the null path is only a reverse path (RFC 5321 4.5.5)\r\n"
    )


def test_non_ascii_sender_needs_smtputf8() -> None:
    # RFC 6531 3.4: 553 5.6.7 without the SMTPUTF8 parameter.
    session = ready()
    assert session.feed("MAIL FROM:<jörg@bücher.test>\r\n".encode()) == (
        b"553 5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)\r\n"
    )
    assert session.feed("MAIL FROM:<jörg@bücher.test> SMTPUTF8\r\n".encode()) == R_MAIL
    assert session.events[-1] == ev.MailFrom(
        Mailbox("jörg", "bücher.test"), MailParams(smtputf8=True)
    )
    assert session.feed("RCPT TO:<zoë@bücher.test>\r\n".encode()) == R_RCPT


def test_non_ascii_recipient_needs_smtputf8_in_mail() -> None:
    session = ready()
    assert session.feed(MAIL, "RCPT TO:<zoë@example.test>\r\n".encode()) == (
        R_MAIL + b"553 5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)\r\n"
    )


def test_smtputf8_ends_with_its_transaction() -> None:
    session = ready()
    assert session.feed(b"MAIL FROM:<a@example.test> SMTPUTF8\r\n", RSET, MAIL) == (
        R_MAIL + R_OK + R_MAIL
    )
    assert session.feed("RCPT TO:<zoë@example.test>\r\n".encode()) == (
        b"553 5.6.7 Non-ASCII address requires SMTPUTF8 (RFC 6531)\r\n"
    )


def test_too_many_recipients_is_452() -> None:
    # RFC 5321 4.5.3.1.10; refused recipients do not count.
    session = ready(Limits(max_recipients=2))
    out = session.feed(
        MAIL,
        b"RCPT TO:<unknown@example.test>\r\n",
        b"RCPT TO:<a@example.test>\r\n",
        b"RCPT TO:<b@example.test>\r\n",
        b"RCPT TO:<c@example.test>\r\n",
    )
    assert out == R_MAIL + R_NO_SUCH_USER + R_RCPT + R_RCPT + R_TOO_MANY_RCPTS
    assert len(session.of(ev.RcptTo)) == 3
    # The count starts again with the next transaction.
    assert session.feed(DATA, b".\r\n", MAIL, RCPT, RCPT) == (
        R_354 + R_QUEUED + R_MAIL + R_RCPT + R_RCPT
    )


# -------------------------------------------------------------------- DATA

MESSAGE = (
    b"From: alice@example.test\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b"..leading dot\r\n"
    b"...\r\n"
    b". space\r\n"
    b"not.a.dot\r\n"
    b"..\r\n"
    b"end\r\n"
    b".\r\n"
)
MESSAGE_CONTENT = (
    b"From: alice@example.test\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..\r\n"
    b" space\r\n"
    b"not.a.dot\r\n"
    b".\r\n"
    b"end\r\n"
)
SESSION = EHLO + MAIL + RCPT + DATA + MESSAGE + QUIT
SESSION_REPLIES = GREETING + EHLO_REPLY + R_MAIL + R_RCPT + R_354 + R_QUEUED + R_BYE


def test_data_delivers_the_unstuffed_message() -> None:
    # RFC 5321 4.5.2: a leading period is removed; a line of "." alone ends DATA.
    session = in_rcpt()
    assert session.feed(DATA, MESSAGE) == R_354 + R_QUEUED
    assert session.messages == [MESSAGE_CONTENT]
    assert session.kinds[3:] == ["MessageStart", "MessageData", "MessageEnd"]
    assert session.events[-1] == ev.MessageEnd(len(MESSAGE_CONTENT))
    assert session.conn.state is State.READY


def test_a_second_transaction_after_the_first() -> None:
    session = in_rcpt()
    out = session.feed(DATA, b"one\r\n.\r\n", MAIL, RCPT, DATA, b"two\r\n.\r\n")
    assert out == R_354 + R_QUEUED + R_MAIL + R_RCPT + R_354 + R_QUEUED
    assert session.messages == [b"one\r\n", b"two\r\n"]


def test_whole_session_in_one_feed() -> None:
    session = Session()
    assert session.feed(SESSION) == SESSION_REPLIES
    assert session.messages == [MESSAGE_CONTENT]
    assert session.kinds == [
        "Hello", "MailFrom", "RcptTo", "MessageStart", "MessageData", "MessageEnd", "Closing"
    ]


def test_session_fed_byte_by_byte_is_the_same() -> None:
    whole = Session()
    whole.feed(SESSION)
    session = Session()
    assert session.feed(*bytewise(SESSION)) == SESSION_REPLIES
    assert session.messages == [MESSAGE_CONTENT]
    assert session.normalized() == whole.normalized()


def test_session_split_at_every_point_is_the_same() -> None:
    whole = Session()
    whole.feed(SESSION)
    for i in range(len(SESSION) + 1):
        session = Session()
        assert session.feed(SESSION[:i], SESSION[i:]) == SESSION_REPLIES, i
        assert session.normalized() == whole.normalized(), i


@pytest.mark.parametrize("seed", range(20))
def test_session_in_random_pieces_is_the_same(seed: int) -> None:
    rng = random.Random(seed)
    whole = Session()
    whole.feed(SESSION)
    session = Session()
    assert session.feed(*random_pieces(SESSION, rng, rng.randrange(1, 40))) == SESSION_REPLIES
    assert session.normalized() == whole.normalized()


@pytest.mark.parametrize("cut", range(1, 5))
def test_end_of_data_split_across_feeds(cut: int) -> None:
    body = b"line\r\n.\r\n"
    end = len(body) - 5  # where "\r\n.\r\n" starts
    session = in_data()
    assert session.feed(body[: end + cut]) == b""
    assert session.of(ev.MessageEnd) == []
    assert session.feed(body[end + cut :], NOOP) == R_QUEUED + R_OK
    assert session.messages == [b"line\r\n"]


def test_empty_message() -> None:
    session = in_data()
    assert session.feed(b".\r\n") == R_QUEUED
    assert session.messages == [b""]
    assert session.events[-1] == ev.MessageEnd(0)


def test_message_without_header_section() -> None:
    session = in_data()
    assert session.feed(b"\r\nonly a body\r\n.\r\n") == R_QUEUED
    assert session.messages == [b"\r\nonly a body\r\n"]


def test_message_of_one_line_without_any_blank_line() -> None:
    session = in_data()
    assert session.feed(b"just text\r\n.\r\n") == R_QUEUED
    assert session.messages == [b"just text\r\n"]


def test_message_data_is_handed_on_before_the_end() -> None:
    session = in_data()
    assert session.feed(b"Subject: x\r\n\r\nfirst\r\npartial") == b""
    assert session.messages == []
    assert b"".join(e.data for e in session.of(ev.MessageData)) == b"Subject: x\r\n\r\nfirst\r\n"
    assert session.feed(b" line\r\n.\r\n") == R_QUEUED
    assert session.messages == [b"Subject: x\r\n\r\nfirst\r\npartial line\r\n"]


def test_commands_pipelined_after_the_end_of_data_run_after_the_decision() -> None:
    session = in_data()
    assert session.feed(b"x\r\n.\r\n" + MAIL + RSET) == R_QUEUED + R_MAIL + R_OK


def test_message_refused_by_policy_returns_to_ready() -> None:
    def policy(event: Decision) -> Reply:
        if isinstance(event, ev.MessageEnd):
            return Reply(554, "5.7.1", "Spam")
        return default_policy(event)

    session = in_data(policy=policy)
    assert session.feed(b"buy\r\n.\r\n", MAIL) == b"554 5.7.1 Spam\r\n" + R_MAIL


@pytest.mark.parametrize(
    "body",
    [
        b"bare LF\nhere\r\n",
        b"bare CR\rhere\r\n",
        b"ends in LF\n",
        b"CR CR LF\r\r\n",
        b"LF CR\n\r",
        b"\n",
        b"ok\r\n\rafter\r\n",
    ],
)
def test_bare_line_ending_in_data_is_550_and_no_message_end(body: bytes) -> None:
    for pieces in ([body + b"\r\n.\r\n"], bytewise(body + b"\r\n.\r\n")):
        session = in_data()
        assert session.feed(*pieces, NOOP) == R_BARE_DATA + R_OK
        assert session.of(ev.MessageEnd) == []
        assert session.kinds[-1] == "MessageAborted"
        assert session.aborted and session.messages == []


@pytest.mark.parametrize("fake_end", [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r"])
def test_smuggled_end_of_data_does_not_end_data(fake_end: bytes) -> None:
    # SMTP smuggling: only CRLF.CRLF ends DATA, so nothing after a fake end
    # runs as a command, and the message itself is refused.
    smuggled = b"Subject: x\r\n\r\nhi" + fake_end + b"MAIL FROM:<evil@example.test>\r\n"
    session = in_data()
    assert session.feed(smuggled) == b""
    assert session.of(ev.MailFrom)[1:] == []
    assert session.feed(b"RCPT TO:<victim@example.test>\r\n", DATA, b"more\r\n.\r\n") == R_BARE_DATA
    assert session.of(ev.RcptTo)[1:] == []
    assert session.of(ev.MessageEnd) == []
    assert session.conn.state is State.READY


def test_text_line_too_long_is_500_at_the_end() -> None:
    # RFC 5321 4.5.3.1.6: 1000 octets with the CRLF.
    session = in_data()
    assert session.feed(b"a" * 998 + b"\r\n") == b""
    assert session.feed(b"b" * 999 + b"\r\n", b"c\r\n") == b""
    assert session.feed(b".\r\n", NOOP) == r_long_line(1000) + R_OK
    assert session.of(ev.MessageEnd) == []
    assert session.kinds[-1] == "MessageAborted"


def test_text_line_at_the_limit_is_accepted_in_any_pieces() -> None:
    body = b"..\r\n" + b"a" * 998 + b"\r\n." + b"b" * 998 + b"\r\n.\r\n"
    content = b".\r\n" + b"a" * 998 + b"\r\n" + b"b" * 998 + b"\r\n"
    rng = random.Random(7)
    for pieces in ([body], bytewise(body), random_pieces(body, rng, 9)):
        session = in_data()
        assert session.feed(*pieces) == R_QUEUED
        assert session.messages == [content]


def test_text_line_limit_is_configurable() -> None:
    session = in_data(Limits(max_text_line=10))
    assert session.feed(b"12345678\r\n123456789\r\n.\r\n") == r_long_line(10)


def test_no_text_line_limit_with_zero() -> None:
    line = bytes(random.Random(1).choice(b"abcdefghij") for _ in range(300_000))
    session = in_data(Limits(max_text_line=0))
    pieces = [line[i : i + 7001] for i in range(0, len(line), 7001)]
    assert session.feed(*pieces) == b""
    # Handed on while it arrives: the session never has to hold it whole.
    assert len(session.of(ev.MessageData)) >= 3
    assert session.feed(b"\r\n.\r\n") == R_QUEUED
    assert session.messages == [line + b"\r\n"]


def test_long_line_starting_with_a_dot_is_unstuffed_once() -> None:
    line = b"." + b"x" * 100_000
    session = in_data(Limits(max_text_line=0))
    assert session.feed(b"." + line[:70_000], line[70_000:] + b"\r\n.\r\n") == R_QUEUED
    assert session.messages == [line + b"\r\n"]


def test_message_over_the_size_limit_is_552_at_the_end() -> None:
    session = in_data(Limits(max_message_size=100))
    assert session.feed(b"x" * 60 + b"\r\n", b"y" * 60 + b"\r\n") == b""
    assert session.feed(b"z\r\n.\r\n", NOOP) == R_TOO_BIG + R_OK
    assert session.of(ev.MessageEnd) == []
    assert session.kinds[-1] == "MessageAborted"
    assert session.feed(MAIL) == R_MAIL


def test_message_of_exactly_the_size_limit_is_accepted() -> None:
    session = in_data(Limits(max_message_size=100))
    body = b"x" * 98 + b"\r\n"
    assert session.feed(body + b".\r\n") == R_QUEUED
    assert session.events[-1] == ev.MessageEnd(100)


def test_size_counts_the_unstuffed_content() -> None:
    session = in_data(Limits(max_message_size=10))
    # Eight dots on the wire are seven in the message: 9 octets with the CRLF.
    assert session.feed(b"." * 8 + b"\r\n.\r\n") == R_QUEUED
    assert session.messages == [b"." * 7 + b"\r\n"]


RECEIVED = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n"


def test_too_many_received_fields_is_554_loop() -> None:
    # RFC 5321 6.3: a mail loop.
    session = in_data(Limits(max_received_headers=3))
    assert session.feed(RECEIVED * 4 + b"\r\nbody\r\n.\r\n", NOOP) == R_LOOP + R_OK
    assert session.of(ev.MessageEnd) == []


def test_received_field_name_is_case_insensitive() -> None:
    session = in_data(Limits(max_received_headers=1))
    assert session.feed(RECEIVED + RECEIVED.upper() + b"\r\n.\r\n") == R_LOOP


def test_exactly_max_received_fields_is_accepted() -> None:
    session = in_data(Limits(max_received_headers=3))
    assert session.feed(RECEIVED * 3 + b"\r\nbody\r\n.\r\n") == R_QUEUED


def test_received_in_the_body_does_not_count() -> None:
    session = in_data(Limits(max_received_headers=1))
    assert session.feed(RECEIVED + b"Subject: x\r\n\r\n" + RECEIVED * 5 + b".\r\n") == R_QUEUED


def test_received_counts_in_a_message_without_blank_line() -> None:
    session = in_data(Limits(max_received_headers=1))
    assert session.feed(RECEIVED * 2 + b".\r\n") == R_LOOP


def test_received_fields_split_across_feeds_are_counted() -> None:
    message = RECEIVED * 4 + b"\r\nbody\r\n.\r\n"
    session = in_data(Limits(max_received_headers=3))
    assert session.feed(*bytewise(message)) == R_LOOP


def test_received_in_the_body_does_not_count_when_fed_in_pieces() -> None:
    session = in_data(Limits(max_received_headers=1))
    out = session.feed(RECEIVED + b"Subject: x\r\n", b"\r\n" + RECEIVED * 5 + b".\r\n")
    assert out == R_QUEUED


def test_received_in_the_middle_of_a_long_header_line_does_not_count() -> None:
    # A long header line (allowed with max_text_line=0) that holds "Received:"
    # exactly 1024 octets before the end of the first chunk.
    first = b"X-Long: " + b"a" * 2000 + b"Received: x" + b"a" * 1013
    rest = b"\r\n\r\nbody\r\n"
    session = in_rcpt(Limits(max_text_line=0, max_received_headers=1))
    whole = RECEIVED + first + rest
    out = session.feed(b"BDAT %d\r\n" % (len(RECEIVED + first)), RECEIVED + first)
    out += session.feed(b"BDAT %d LAST\r\n" % len(rest), rest)
    assert out == r_octets(len(RECEIVED + first)) + R_QUEUED
    assert session.messages == [whole]


def test_abort_message_during_data_answers_at_the_end() -> None:
    session = in_data()
    assert session.feed(b"Subject: x\r\n") == b""
    session.conn.abort_message(Reply(452, "4.3.1", "Insufficient system storage"))
    assert session.feed(b"\r\nrest\r\n", b".\r\n", NOOP) == (
        b"452 4.3.1 Insufficient system storage\r\n" + R_OK
    )
    assert session.of(ev.MessageEnd) == []
    assert session.kinds[-1] == "MessageAborted"
    assert session.aborted == [b"Subject: x\r\n"]


# -------------------------------------------------------------------- BDAT


def test_bdat_chunks() -> None:
    # RFC 3030 2: each chunk but the last gets 250; content is taken as sent.
    session = in_rcpt()
    assert session.feed(b"BDAT 5\r\nHello") == r_octets(5)
    assert session.feed(b"BDAT 8 LAST\r\n world\r\n") == R_QUEUED
    assert session.messages == [b"Hello world\r\n"]
    assert session.kinds[3:] == ["MessageStart", "MessageData", "MessageEnd"]
    assert session.conn.state is State.READY


def test_bdat_zero_last_ends_the_message() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 6\r\nab\r\ncd", b"BDAT 2\r\n\r\n", b"BDAT 0 LAST\r\n") == (
        r_octets(6) + r_octets(8) + R_QUEUED
    )
    assert session.messages == [b"ab\r\ncd\r\n"]


def test_bdat_zero_last_alone_is_an_empty_message() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 0 LAST\r\n") == R_QUEUED
    assert session.messages == [b""]


def test_bdat_last_is_case_insensitive() -> None:
    session = in_rcpt()
    assert session.feed(b"bdat 4 last\r\nab\r\n") == R_QUEUED


def test_bdat_content_is_not_unstuffed_and_crlf_dot_crlf_does_not_end_it() -> None:
    content = b"a\r\n.\r\n..b\r\n.\r\n"
    session = in_rcpt()
    assert session.feed(b"BDAT %d LAST\r\n" % len(content) + content) == R_QUEUED
    assert session.messages == [content]


def test_bdat_fed_byte_by_byte() -> None:
    stream = b"BDAT 7\r\nab\r\n.\r\n" + b"BDAT 3 LAST\r\nc\r\n" + NOOP
    session = in_rcpt()
    assert session.feed(*bytewise(stream)) == r_octets(7) + R_QUEUED + R_OK
    assert session.messages == [b"ab\r\n.\r\nc\r\n"]


def test_bdat_chunk_may_end_in_cr_with_lf_in_the_next() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 3\r\nab\r", b"BDAT 1 LAST\r\n\n") == r_octets(3) + R_QUEUED
    assert session.messages == [b"ab\r\n"]


def test_bdat_message_ending_in_cr_is_550() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 3\r\nab\r", b"BDAT 0 LAST\r\n") == r_octets(3) + R_BARE_DATA
    assert session.of(ev.MessageEnd) == []


def test_bare_lf_in_bdat_is_550_at_the_chunk_end() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 4\r\na\nb\r", NOOP) == R_BARE_DATA + R_OK
    assert session.kinds[-1] == "MessageAborted"
    # RFC 3030 3: the transaction is over; later chunks are read and refused.
    assert session.feed(b"BDAT 2 LAST\r\n\r\n", NOOP) == R_NEED_MAIL_RCPT + R_OK


def test_bare_cr_in_last_bdat_chunk_is_550() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 4 LAST\r\na\rb\n") == R_BARE_DATA
    assert session.of(ev.MessageEnd) == []


def test_bdat_without_mail_reads_the_chunk_then_503() -> None:
    session = ready()
    assert session.feed(b"BDAT 6\r\nNOOP\r\n", NOOP) == R_NEED_MAIL_RCPT + R_OK
    assert session.of(ev.MessageStart) == []


def test_bdat_with_mail_but_no_rcpt_is_554() -> None:
    session = ready()
    assert session.feed(MAIL, b"BDAT 6 LAST\r\nNOOP\r\n", NOOP) == (
        R_MAIL + R_NO_VALID_RCPTS + R_OK
    )
    assert session.conn.state is State.MAIL
    assert session.feed(RCPT, b"BDAT 0 LAST\r\n") == R_RCPT + R_QUEUED


def test_bdat_before_ehlo_reads_the_chunk_then_503() -> None:
    session = Session()
    assert session.feed(b"BDAT 6\r\nNOOP\r\n", NOOP) == GREETING + R_BDAT_NEEDS_EHLO + R_OK


def test_bdat_after_helo_is_503() -> None:
    session = Session()
    out = session.feed(HELO, MAIL, RCPT, b"BDAT 3 LAST\r\nabc", NOOP)
    assert out == GREETING + HELO_REPLY + R_MAIL + R_RCPT + R_BDAT_NEEDS_EHLO + R_OK
    assert session.conn.state is State.RCPT


def test_data_after_bdat_is_503() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 3\r\nabc", DATA) == (
        r_octets(3) + b"503 5.5.1 DATA not allowed after BDAT; use BDAT LAST\r\n"
    )
    assert session.feed(b"BDAT 2 LAST\r\n\r\n") == R_QUEUED
    assert session.messages == [b"abc\r\n"]


def test_mail_after_bdat_is_nested() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 1\r\na", MAIL) == (
        r_octets(1) + b"503 5.5.1 Bad sequence: nested MAIL command\r\n"
    )


def test_rset_between_chunks_ends_the_transaction() -> None:
    session = in_rcpt()
    assert session.feed(b"BDAT 1\r\na", RSET, b"BDAT 1 LAST\r\nb") == (
        r_octets(1) + R_OK + R_NEED_MAIL_RCPT
    )
    assert session.messages == []


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT\r\n",
        b"BDAT x\r\n",
        b"BDAT -1\r\n",
        b"BDAT +1\r\n",
        b"BDAT 1.5\r\n",
        b"BDAT 5 NOTLAST\r\n",
        b"BDAT 5 LAST more\r\n",
        b"BDAT 1234567890123456789\r\n",
    ],
)
def test_bdat_bad_syntax_is_501(line: bytes) -> None:
    session = in_rcpt()
    assert session.feed(line) == R_BDAT_SYNTAX
    assert session.conn.state is State.RCPT


@pytest.mark.parametrize("size", ["²", "¹ LAST", "٣ LAST", "３"])
def test_bdat_non_ascii_digits_are_501(size: str) -> None:
    # str.isdigit() is true for all of these; int("²") raises ValueError.
    session = in_rcpt()
    assert session.feed(f"BDAT {size}\r\n".encode(), b"abc\r\n", NOOP) == (
        R_BDAT_SYNTAX + R_UNKNOWN + R_OK
    )


def test_bdat_over_the_size_limit_is_552_at_the_chunk_end() -> None:
    session = in_rcpt(Limits(max_message_size=10))
    assert session.feed(b"BDAT 6\r\n123456", b"BDAT 6\r\nabcdef") == (
        r_octets(6) + R_TOO_BIG
    )
    assert session.of(ev.MessageEnd) == []
    assert session.feed(b"BDAT 1 LAST\r\nx", NOOP) == R_NEED_MAIL_RCPT + R_OK


def test_bdat_last_over_the_size_limit_is_552() -> None:
    session = in_rcpt(Limits(max_message_size=10))
    assert session.feed(b"BDAT 11 LAST\r\n012345678\r\n", NOOP) == R_TOO_BIG + R_OK


def test_bdat_text_line_too_long_is_500() -> None:
    session = in_rcpt(Limits(max_text_line=10))
    assert session.feed(b"BDAT 6\r\n123456", b"BDAT 6 LAST\r\n7890\r\n") == (
        r_octets(6) + r_long_line(10)
    )


def test_bdat_received_loop() -> None:
    content = RECEIVED * 2 + b"\r\n"
    session = in_rcpt(Limits(max_received_headers=1))
    assert session.feed(b"BDAT %d LAST\r\n" % len(content), content) == R_LOOP


# ---------------------------------------------------------------- STARTTLS


def test_starttls() -> None:
    # RFC 3207 4.2: after the handshake everything starts again from EHLO.
    session = ready(tls_available=True)
    assert session.feed(b"STARTTLS\r\n") == R_TLS_READY
    assert session.events[-1] == ev.StartTLS()
    assert session.conn.tls_active and session.conn.state is State.GREETED
    assert session.feed(MAIL) == (
        b"503 5.5.1 Bad sequence of commands: send HELO/EHLO first, or RSET\r\n"
    )
    assert session.feed(EHLO) == EHLO_REPLY_UNDER_TLS
    assert session.feed(b"STARTTLS\r\n") == R_TLS_ACTIVE
    assert session.feed(MAIL, RCPT, DATA, b"x\r\n.\r\n") == R_MAIL + R_RCPT + R_354 + R_QUEUED


def test_starttls_again_before_ehlo_is_503() -> None:
    session = ready(tls_available=True)
    assert session.feed(b"STARTTLS\r\n", b"STARTTLS\r\n") == R_TLS_READY + R_TLS_ACTIVE


def test_starttls_discards_what_was_pipelined_after_it() -> None:
    # RFC 3207 6: plaintext sent with STARTTLS must not run under TLS.
    session = ready(tls_available=True)
    assert session.feed(b"STARTTLS\r\nMAIL FROM:<evil@example.test>\r\n") == R_TLS_READY
    assert session.of(ev.MailFrom) == []
    assert session.feed(EHLO) == EHLO_REPLY_UNDER_TLS


def test_data_fed_before_the_handshake_is_discarded() -> None:
    session = ready(tls_available=True, auto_tls=False)
    assert session.feed(b"STARTTLS\r\n", b"EHLO evil.test\r\nMAIL FROM:<e@example.test>\r\n") == (
        R_TLS_READY
    )
    assert session.conn.next_event() is ev.PAUSED
    session.conn.tls_established()
    assert session.feed(b"") == b""
    assert session.feed(EHLO) == EHLO_REPLY_UNDER_TLS
    assert session.of(ev.Hello) == [ev.Hello("EHLO", "client.test")] * 2


def test_starttls_before_ehlo_is_allowed() -> None:
    session = Session(tls_available=True)
    assert session.feed(b"STARTTLS\r\n", EHLO) == GREETING + R_TLS_READY + EHLO_REPLY_UNDER_TLS


def test_starttls_unavailable_is_454() -> None:
    assert ready().feed(b"STARTTLS\r\n") == b"454 4.7.0 TLS not available\r\n"


def test_starttls_with_argument_is_501() -> None:
    session = ready(tls_available=True)
    assert session.feed(b"STARTTLS now\r\n") == b"501 5.5.4 STARTTLS takes no arguments\r\n"


def test_starttls_inside_a_transaction_is_503() -> None:
    session = in_rcpt(tls_available=True)
    assert session.feed(b"STARTTLS\r\n") == R_BAD_SEQUENCE


def test_starttls_when_constructed_with_tls_active_is_503() -> None:
    session = ready(tls_available=True, tls_active=True)
    assert session.feed(b"STARTTLS\r\n") == R_TLS_ACTIVE


# -------------------------------------------------------------- pipelining


def test_pipelined_transaction_pauses_at_each_decision() -> None:
    # RFC 2920 3.1: replies in the order of the commands; the core waits for
    # each decision before it reads the next command.
    conn = SMTPServerConnection(HOST, Limits())
    conn.greeting()
    conn.receive_data(EHLO + MAIL + RCPT + b"RCPT TO:<unknown@example.test>\r\n" + DATA
                      + b"hi\r\n.\r\n" + QUIT)
    assert conn.next_event() == ev.Hello("EHLO", "client.test")
    assert isinstance(conn.next_event(), ev.MailFrom)
    assert conn.next_event() is ev.PAUSED
    assert conn.next_event() is ev.PAUSED
    assert conn.data_to_send() == GREETING + EHLO_REPLY
    conn.respond(MAIL_OK)
    assert isinstance(conn.next_event(), ev.RcptTo)
    assert conn.next_event() is ev.PAUSED
    assert conn.data_to_send() == R_MAIL
    conn.respond(RCPT_OK)
    assert isinstance(conn.next_event(), ev.RcptTo)
    assert conn.next_event() is ev.PAUSED
    conn.respond(NO_SUCH_USER)
    assert conn.next_event() == ev.MessageStart()
    assert conn.data_to_send() == R_RCPT + R_NO_SUCH_USER + R_354
    assert conn.next_event() == ev.MessageData(b"hi\r\n")
    assert conn.next_event() == ev.MessageEnd(4)
    assert conn.next_event() is ev.PAUSED
    assert conn.data_to_send() == b""
    conn.respond(QUEUED)
    assert conn.next_event() == ev.Closing(Reply(221, "2.0.0", "mx.test closing connection"))
    assert conn.next_event() is ev.NEED_DATA
    assert conn.data_to_send() == R_QUEUED + R_BYE


def test_pipelined_bdat_transactions() -> None:
    session = ready()
    stream = (MAIL + RCPT + b"BDAT 3\r\nab\r" + b"BDAT 1 LAST\r\n\n"
              + MAIL + RCPT + RCPT + b"BDAT 3 LAST\r\nc\r\n" + QUIT)
    expected = (R_MAIL + R_RCPT + r_octets(3) + R_QUEUED
                + R_MAIL + R_RCPT + R_RCPT + R_QUEUED + R_BYE)
    assert session.feed(stream) == expected
    assert session.messages == [b"ab\r\n", b"c\r\n"]
    session = ready()
    assert session.feed(*bytewise(stream)) == expected


def test_pipelined_commands_after_a_pending_decision_wait() -> None:
    held: list[Decision] = []

    def policy(event: Decision) -> Reply | None:
        if isinstance(event, ev.RcptTo):
            held.append(event)
            return None
        return default_policy(event)

    session = ready(policy=policy)
    assert session.feed(MAIL, RCPT, NOOP, NOOP) == R_MAIL
    session.conn.respond(RCPT_OK)
    session.run()
    assert session.conn.data_to_send() == R_RCPT + R_OK + R_OK
    assert len(held) == 1
