"""Byte-exact transcripts of the POP3 server core (``pillarbox.protocols.pop3.server``).

The ``Session`` driver feeds client bytes, answers the events that wait for
a decision with a scripted maildrop, and collects what the core sends.
"""

from __future__ import annotations

import base64

import pytest

from pillarbox.protocols.pop3 import events as ev
from pillarbox.protocols.pop3.message import DotStuffer, stuff, top
from pillarbox.protocols.pop3.replies import Code, Reply, err, ok
from pillarbox.protocols.pop3.server import Limits, POP3ServerConnection, State

GREETING = b"+OK pop.test Pillarbox POP3 ready\r\n"

MESSAGES = [
    b"Subject: one\r\n\r\nHello\r\n.hidden dot\r\n",
    b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n",
]


class Session:
    """The core with a scripted session above it: password ``secret``, two messages."""

    def __init__(self, *, tls_available: bool = True, tls_active: bool = False,
                 plaintext: bool = True,
                 mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256"),
                 limits: Limits = Limits()) -> None:
        self.core = POP3ServerConnection(
            "pop.test", limits, tls_available=tls_available, tls_active=tls_active,
            plaintext_allowed=plaintext, mechanisms=mechanisms,
        )
        self.events: list[object] = []
        self.deleted: set[int] = set()
        self.auth_steps: list[bytes | None] = []
        self.core.greeting()
        assert self.core.data_to_send() == GREETING

    def send(self, data: bytes, max_body: int | None = None) -> bytes:
        core = self.core
        core.receive_data(data)
        out = b""
        while True:
            event = core.next_event()
            if event is ev.PAUSED and core.sending:
                out += core.data_to_send(max_body)
                continue
            if event is ev.NEED_DATA or event is ev.PAUSED:
                break
            self.events.append(event)
            self.answer(event)
            out += core.data_to_send(max_body)
            if isinstance(event, ev.Closing):
                break
        return out + core.data_to_send(max_body)

    def answer(self, event: object) -> None:
        core = self.core
        if isinstance(event, ev.PassLogin):
            core.respond(ok("Logged in") if event.password == "secret"
                         else err("Authentication failed", Code.AUTH))
        elif isinstance(event, (ev.AuthStart, ev.AuthResponse)):
            data = event.initial if isinstance(event, ev.AuthStart) else event.data
            self.auth_steps.append(data)
            if data is None:
                core.challenge(b"")
            elif data == b"more":
                core.challenge(b"server says")
            elif data == b"\0alice\0secret" or data == b"":
                core.respond(ok("Logged in"))
            else:
                core.respond(err("Authentication failed", Code.AUTH))
        elif isinstance(event, ev.Stat):
            core.respond(ok(f"{len(MESSAGES)} {sum(map(len, MESSAGES))}"))
        elif isinstance(event, ev.List):
            if event.msg is None:
                core.respond_lines(ok("2 messages"), [f"{i} {len(m)}" for i, m in
                                                     enumerate(MESSAGES, 1)])
            elif 1 <= event.msg <= 2:
                core.respond(ok(f"{event.msg} {len(MESSAGES[event.msg - 1])}"))
            else:
                core.respond(err("No such message"))
        elif isinstance(event, ev.Uidl):
            core.respond_lines(ok(), ["1 a", "2 b"])
        elif isinstance(event, (ev.Retr, ev.Top, ev.Dele)) and not 1 <= event.msg <= 2:
            core.respond(err("No such message"))
        elif isinstance(event, ev.Retr):
            core.respond_message(ok("octets follow"), MESSAGES[event.msg - 1])
        elif isinstance(event, ev.Top):
            core.respond_message(ok(), top(MESSAGES[event.msg - 1], event.lines))
        elif isinstance(event, ev.Dele):
            self.deleted.add(event.msg)
            core.respond(ok(f"Message {event.msg} deleted"))
        elif isinstance(event, ev.Rset):
            self.deleted.clear()
            core.respond(ok())
        elif isinstance(event, ev.Quit):
            core.respond(ok("Bye"))

    def login(self) -> None:
        assert self.send(b"USER alice\r\nPASS secret\r\n") == b"+OK Send PASS\r\n+OK Logged in\r\n"
        assert self.core.state is State.TRANSACTION


CAPA_COMMON = b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\n"


# ------------------------------------------------------------------ replies


def test_reply_rendering() -> None:
    assert ok("fine").render() == b"+OK fine\r\n"
    assert ok().render() == b"+OK\r\n"
    assert err("locked", Code.IN_USE).render() == b"-ERR [IN-USE] locked\r\n"
    assert Reply(False, "a\r\nb").render() == b"-ERR a  b\r\n"
    assert str(err("x", Code.SYS_TEMP)) == "-ERR [SYS/TEMP] x"


# ------------------------------------------------------------ AUTHORIZATION


def test_capa_before_login_offers_stls_user_and_sasl() -> None:
    s = Session()
    assert s.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\n" + CAPA_COMMON
        + b"USER\r\nSASL PLAIN LOGIN SCRAM-SHA-256\r\nSTLS\r\nIMPLEMENTATION Pillarbox\r\n.\r\n"
    )


def test_capa_without_plaintext_hides_user() -> None:
    s = Session(plaintext=False, mechanisms=("SCRAM-SHA-256",))
    assert s.send(b"capa\r\n") == (
        b"+OK Capability list follows\r\n" + CAPA_COMMON
        + b"SASL SCRAM-SHA-256\r\nSTLS\r\nIMPLEMENTATION Pillarbox\r\n.\r\n"
    )


def test_capa_after_login_lists_no_login_capabilities() -> None:
    s = Session()
    s.login()
    assert s.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\n" + CAPA_COMMON + b"IMPLEMENTATION Pillarbox\r\n.\r\n"
    )


def test_user_pass_login() -> None:
    s = Session()
    s.login()
    assert s.events == [ev.PassLogin("alice", "secret")]


def test_password_is_the_rest_of_the_line() -> None:
    s = Session()
    s.send(b"USER alice\r\nPASS my secret \r\n")
    assert s.events[-1] == ev.PassLogin("alice", "my secret ")


def test_wrong_password_returns_to_authorization_and_forgets_user() -> None:
    s = Session()
    out = s.send(b"USER alice\r\nPASS wrong\r\nPASS secret\r\n")
    assert out == (b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"
                   b"-ERR Send USER first\r\n")
    assert s.core.state is State.AUTHORIZATION
    assert s.core.errors == 2


def test_plaintext_refused_without_tls() -> None:
    s = Session(plaintext=False, mechanisms=("SCRAM-SHA-256",))
    refused = b"-ERR [AUTH] Plaintext authentication is only allowed over TLS: use STLS first\r\n"
    assert s.send(b"USER alice\r\n") == refused
    assert s.send(b"PASS secret\r\n") == refused
    assert s.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") == refused
    assert not [e for e in s.events if isinstance(e, (ev.PassLogin, ev.AuthStart))]


def test_transaction_commands_need_login() -> None:
    s = Session()
    for command in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 0",
                    b"UIDL"):
        assert s.send(command + b"\r\n") == b"-ERR Log in first (USER and PASS, or AUTH)\r\n"


def test_unknown_command_and_apop() -> None:
    s = Session()
    assert s.send(b"XYZZY\r\n") == b"-ERR Unknown command\r\n"
    assert s.send(b"APOP alice 0123\r\n") == (
        b"-ERR APOP is not offered: use USER and PASS, or AUTH\r\n"
    )
    assert [type(e) for e in s.events] == [ev.ProtocolViolation, ev.ProtocolViolation]


def test_quit_in_authorization_closes() -> None:
    s = Session()
    assert s.send(b"QUIT\r\nNOOP\r\n") == b"+OK pop.test Pillarbox POP3 signing off\r\n"
    assert isinstance(s.events[-1], ev.Closing)
    assert s.core.closed


# ---------------------------------------------------------------------- AUTH


def test_auth_plain_with_initial_response() -> None:
    s = Session()
    initial = base64.b64encode(b"\0alice\0secret")
    assert s.send(b"AUTH PLAIN " + initial + b"\r\n") == b"+OK Logged in\r\n"
    assert s.events == [ev.AuthStart("PLAIN", b"\0alice\0secret")]
    assert s.core.state is State.TRANSACTION


def test_auth_exchange_with_challenges() -> None:
    s = Session()
    assert s.send(b"AUTH scram-sha-256\r\n") == b"+ \r\n"
    assert s.core.state is State.AUTH
    assert s.send(base64.b64encode(b"more") + b"\r\n") == (
        b"+ " + base64.b64encode(b"server says") + b"\r\n"
    )
    assert s.send(b"\r\n") == b"+OK Logged in\r\n"
    assert s.events == [ev.AuthStart("SCRAM-SHA-256", None), ev.AuthResponse(b"more"),
                        ev.AuthResponse(b"")]


def test_auth_empty_initial_response() -> None:
    s = Session()
    assert s.send(b"AUTH PLAIN =\r\n") == b"+OK Logged in\r\n"
    assert s.events == [ev.AuthStart("PLAIN", b"")]


def test_auth_cancel() -> None:
    s = Session()
    assert s.send(b"AUTH LOGIN\r\n*\r\n") == (
        b"+ \r\n-ERR Authentication cancelled (RFC 5034 4)\r\n"
    )
    assert isinstance(s.events[-1], ev.AuthCancelled)
    assert s.core.state is State.AUTHORIZATION
    s.login()


def test_auth_bad_base64() -> None:
    s = Session()
    assert s.send(b"AUTH PLAIN !!!\r\n") == b"-ERR Invalid base64\r\n"
    assert s.send(b"AUTH PLAIN\r\n%%%\r\n") == (
        b"+ \r\n-ERR Invalid base64 in AUTH response; exchange ended\r\n"
    )
    assert s.core.state is State.AUTHORIZATION


def test_auth_unknown_mechanism_and_listing() -> None:
    s = Session()
    assert s.send(b"AUTH CRAM-MD5\r\n") == b"-ERR Unrecognized authentication type CRAM-MD5\r\n"
    assert s.send(b"AUTH\r\n") == (
        b"+OK Mechanisms follow\r\nPLAIN\r\nLOGIN\r\nSCRAM-SHA-256\r\n.\r\n"
    )


def test_auth_failure_counts_as_error() -> None:
    s = Session()
    assert s.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0bad") + b"\r\n") == (
        b"-ERR [AUTH] Authentication failed\r\n"
    )
    assert s.core.errors == 1
    assert s.core.state is State.AUTHORIZATION


# ---------------------------------------------------------------------- STLS


def test_stls_discards_pipelined_input_and_restarts() -> None:
    s = Session()
    assert s.send(b"STLS\r\nUSER evil\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert isinstance(s.events[-1], ev.StartTLS)
    assert s.core.state is State.TLS
    assert s.send(b"USER more evil\r\n") == b""     # still before the handshake
    s.core.tls_established()
    assert s.core.tls_active and s.core.username is None
    assert b"STLS" not in s.send(b"CAPA\r\n")
    assert s.send(b"STLS\r\n") == b"-ERR Command not permitted when TLS active (RFC 2595 4)\r\n"
    s.login()


def test_stls_unavailable_and_after_login() -> None:
    s = Session(tls_available=False)
    assert s.send(b"STLS\r\n") == b"-ERR STLS is not available\r\n"
    s.login()
    assert s.send(b"STLS\r\n") == b"-ERR STLS is only allowed before login (RFC 2595 4)\r\n"


def test_stls_takes_no_argument() -> None:
    s = Session()
    assert s.send(b"STLS now\r\n") == b"-ERR STLS takes no argument\r\n"


# --------------------------------------------------------------- TRANSACTION


def test_transaction_commands_with_parsed_arguments() -> None:
    s = Session()
    s.login()
    s.events.clear()
    out = s.send(b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nDELE 1\r\nRSET\r\nNOOP\r\n")
    size1, size2 = len(MESSAGES[0]), len(MESSAGES[1])
    assert out == (
        f"+OK 2 {size1 + size2}\r\n"
        f"+OK 2 messages\r\n1 {size1}\r\n2 {size2}\r\n.\r\n"
        f"+OK 2 {size2}\r\n"
        "+OK\r\n1 a\r\n2 b\r\n.\r\n"
        "+OK Message 1 deleted\r\n"
        "+OK\r\n"
        "+OK\r\n"
    ).encode()
    assert s.events == [ev.Stat(), ev.List(None), ev.List(2), ev.Uidl(None), ev.Dele(1),
                        ev.Rset()]


def test_retr_is_byte_stuffed_and_terminated() -> None:
    s = Session()
    s.login()
    assert s.send(b"RETR 1\r\n") == (
        b"+OK octets follow\r\nSubject: one\r\n\r\nHello\r\n..hidden dot\r\n.\r\n"
    )


def test_retr_in_small_pieces_gives_the_same_bytes() -> None:
    whole = Session()
    whole.login()
    pieces = Session()
    pieces.login()
    assert whole.send(b"RETR 1\r\nNOOP\r\n") == pieces.send(b"RETR 1\r\nNOOP\r\n", max_body=3)


def test_commands_wait_while_a_message_is_sent() -> None:
    s = Session()
    s.login()
    s.core.receive_data(b"RETR 2\r\nNOOP\r\n")
    event = s.core.next_event()
    assert event == ev.Retr(2)
    s.answer(event)
    first = s.core.data_to_send(4)
    assert first == b"+OK octets follow\r\nSubj"
    assert s.core.sending
    assert s.core.next_event() is ev.PAUSED
    rest = s.core.data_to_send()
    assert not s.core.sending
    assert first + rest == b"+OK octets follow\r\n" + MESSAGES[1] + b".\r\n"
    assert s.core.next_event() is ev.NEED_DATA
    assert s.core.data_to_send() == b"+OK\r\n"


def test_top() -> None:
    s = Session()
    s.login()
    assert s.send(b"TOP 2 1\r\n") == b"+OK\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
    assert s.send(b"TOP 2 0\r\n") == b"+OK\r\nSubject: two\r\nX: y\r\n\r\n.\r\n"
    assert s.events[-1] == ev.Top(2, 0)


@pytest.mark.parametrize("command, reply", [
    (b"RETR", b"-ERR Syntax: RETR msg"),
    (b"RETR x", b"-ERR Invalid message number: a decimal number is expected"),
    (b"RETR -1", b"-ERR Invalid message number: a decimal number is expected"),
    (b"RETR 1 2", b"-ERR Syntax: RETR msg"),
    (b"DELE 12345678901", b"-ERR Invalid message number: a decimal number is expected"),
    (b"LIST 1 2", b"-ERR Syntax: LIST [msg]"),
    (b"TOP 1", b"-ERR Syntax: TOP msg n"),
    (b"TOP 1 x", b"-ERR Invalid number of lines: a decimal number is expected"),
    (b"STAT 1", b"-ERR STAT takes no argument"),
    (b"USER bob", b"-ERR Already logged in"),
    (b"AUTH PLAIN", b"-ERR Already logged in"),
])
def test_bad_arguments(command: bytes, reply: bytes) -> None:
    s = Session()
    s.login()
    assert s.send(command + b"\r\n") == reply + b"\r\n"
    assert isinstance(s.events[-1], ev.ProtocolViolation)


def test_message_number_range_is_the_sessions() -> None:
    s = Session()
    s.login()
    assert s.send(b"LIST 0\r\nLIST 9\r\n") == b"-ERR No such message\r\n" * 2
    assert s.events[-2:] == [ev.List(0), ev.List(9)]


def test_quit_in_transaction_enters_update_and_waits() -> None:
    s = Session()
    s.login()
    s.core.receive_data(b"DELE 1\r\nQUIT\r\nNOOP\r\n")
    s.answer(s.core.next_event())
    assert s.core.next_event() == ev.Quit()
    assert s.core.state is State.UPDATE
    assert s.core.next_event() is ev.PAUSED
    s.core.respond(ok("Bye"))
    assert s.core.next_event() == ev.Closing(ok("Bye"))
    assert s.core.closed
    assert s.core.data_to_send() == b"+OK Message 1 deleted\r\n+OK Bye\r\n"
    assert s.core.next_event() is ev.NEED_DATA


def test_keywords_are_case_insensitive() -> None:
    s = Session()
    out = s.send(b"user alice\r\nPaSs secret\r\nstat\r\n")
    assert out == (b"+OK Send PASS\r\n+OK Logged in\r\n"
                   + f"+OK 2 {sum(map(len, MESSAGES))}\r\n".encode())


# -------------------------------------------------------------- line limits


def test_line_too_long_is_refused_and_the_session_goes_on() -> None:
    s = Session()
    out = s.send(b"USER " + b"a" * 2000 + b"\r\nCAPA\r\n")
    assert out.startswith(b"-ERR Line too long (RFC 2449 4: commands are at most 255 octets)\r\n"
                          b"+OK Capability list follows\r\n")


def test_line_too_long_across_pieces() -> None:
    s = Session()
    assert s.send(b"NOOP" + b"x" * 1500) == b""
    assert s.send(b"y" * 1500) == b""
    assert s.send(b"\r\nQUIT\r\n") == (
        b"-ERR Line too long (RFC 2449 4: commands are at most 255 octets)\r\n"
        b"+OK pop.test Pillarbox POP3 signing off\r\n"
    )


def test_bare_line_endings_are_refused() -> None:
    s = Session()
    bare = b"-ERR Bare CR or LF in command: only CRLF ends a line (RFC 1939 3)\r\n"
    assert s.send(b"CAPA\n") == bare
    assert s.send(b"CA\rPA\r\n") == bare


def test_not_utf8() -> None:
    s = Session()
    assert s.send(b"USER \xff\r\n") == b"-ERR Command is not valid UTF-8\r\n"


def test_too_many_errors_closes() -> None:
    s = Session(limits=Limits(max_errors=3))
    out = s.send(b"X\r\nY\r\nZ\r\nCAPA\r\n")
    assert out == b"-ERR Unknown command\r\n" * 3 + b"-ERR Too many errors, closing connection\r\n"
    assert s.core.closed
    assert isinstance(s.events[-1], ev.Closing)


def test_pipelined_commands_are_answered_in_order() -> None:
    s = Session()
    out = s.send(b"USER alice\r\nPASS secret\r\nSTAT\r\nRETR 2\r\nQUIT\r\n")
    assert out == (
        b"+OK Send PASS\r\n+OK Logged in\r\n"
        + f"+OK 2 {sum(map(len, MESSAGES))}\r\n".encode()
        + b"+OK octets follow\r\n" + MESSAGES[1] + b".\r\n+OK Bye\r\n"
    )


def test_close_while_pending_ignores_late_answer() -> None:
    s = Session()
    s.core.receive_data(b"USER alice\r\nPASS secret\r\n")
    event = s.core.next_event()
    assert isinstance(event, ev.PassLogin)
    s.core.close(err("Idle"))
    s.core.respond(ok("Logged in"))
    assert s.core.data_to_send() == b"+OK Send PASS\r\n-ERR Idle\r\n"
    assert s.core.closed


def test_respond_without_pending_is_a_bug() -> None:
    s = Session()
    with pytest.raises(RuntimeError):
        s.core.respond(ok())


# -------------------------------------------------------------- the message


@pytest.mark.parametrize("content, wire", [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.\r\n..b\r\n", b"a\r\n..\r\n...b\r\n.\r\n"),
    (b"bare\nlf\n.dot\n", b"bare\r\nlf\r\n..dot\r\n.\r\n"),
    (b"mixed\r\nend\n", b"mixed\r\nend\r\n.\r\n"),
    (b"cr\r", b"cr\r\r\n.\r\n"),
    (b"a\rb\r\n", b"a\rb\r\n.\r\n"),
])
def test_stuff(content: bytes, wire: bytes) -> None:
    assert stuff(content) == wire
    for cut in range(len(content) + 1):
        stuffer = DotStuffer()
        out = stuffer.feed(content[:cut]) + stuffer.feed(content[cut:]) + stuffer.end()
        assert out == wire, cut
    one = DotStuffer()
    assert b"".join(one.feed(content[i:i + 1]) for i in range(len(content))) + one.end() == wire


def test_top_function() -> None:
    msg = b"A: 1\r\nB: 2\r\n\r\nx\r\ny\r\nz"
    assert top(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nx\r\ny\r\n"
    assert top(msg, 3) == msg
    assert top(msg, 10**9) == msg
    assert top(b"A: 1\r\nno body", 1) == b"A: 1\r\nno body"
    assert top(b"A: 1\n\nx\ny\n", 1) == b"A: 1\n\nx\n"
    assert top(b"\r\nbody\r\n", 0) == b"\r\n"
