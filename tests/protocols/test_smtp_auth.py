"""Byte-exact transcripts of SMTP AUTH in the sans-IO core (RFC 4954).

The core owns the syntax and sequence of AUTH; the test plays the session:
it answers ``AuthStart`` / ``AuthResponse`` with ``challenge()`` or
``respond()``, as ``receive.session`` does with the authenticator.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.reply import AUTH_OK, Reply
from pillarbox.protocols.smtp.server import Limits, State
from tests.fuzz.test_smtp_server_fuzz import reply_codes
from tests.protocols.test_smtp_server import EHLO, EHLO_REPLY, MAIL, R_MAIL, Session
from tests.strategies import any_bytes, pieces

MECHS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
FAILED = Reply(535, "5.7.8", "Authentication failed")
R_OK = b"235 2.7.0 Authentication successful\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth_session(*, mechanisms: tuple[str, ...] = MECHS, required: bool = False,
                 limits: Limits = Limits(), **kwargs: object) -> Session:
    session = Session(limits, **kwargs)  # type: ignore[arg-type]
    conn = session.conn
    conn.auth_enabled = True
    conn.mechanisms = mechanisms
    conn.auth_required = required
    session.feed(EHLO)
    return session


def pending(session: Session) -> ev.AuthStart | ev.AuthResponse:
    event = session.events[-1]
    assert isinstance(event, (ev.AuthStart, ev.AuthResponse)), session.events
    return event


def test_ehlo_advertises_the_offered_mechanisms() -> None:
    session = Session()
    session.conn.auth_enabled = True
    session.conn.mechanisms = MECHS
    out = session.feed(EHLO)
    assert b"250-AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n" in out
    assert out.index(b"250-DSN") < out.index(b"250-AUTH")


def test_no_mechanisms_no_auth_line_and_538() -> None:
    session = Session()
    session.conn.auth_enabled = True
    out = session.feed(EHLO)
    assert out.endswith(EHLO_REPLY) and b"AUTH" not in out
    assert session.feed(b"AUTH PLAIN\r\n") == (
        b"538 5.7.11 Encryption required for authentication: use STARTTLS first\r\n")


def test_auth_not_enabled_is_502_and_not_advertised() -> None:
    session = Session()
    assert b"AUTH" not in session.feed(EHLO)
    assert session.feed(b"AUTH PLAIN =\r\n") == b"502 5.5.1 Command not implemented\r\n"


def test_plain_with_initial_response() -> None:
    session = auth_session()
    token = b64(b"\0alice@example.test\0secret")
    assert session.feed(b"AUTH PLAIN " + token + b"\r\n") == b""
    event = pending(session)
    assert event == ev.AuthStart("PLAIN", b"\0alice@example.test\0secret")
    assert "secret" not in repr(event)
    session.conn.respond(AUTH_OK)
    assert session.conn.data_to_send() == R_OK
    assert session.conn.authenticated and session.conn.state is State.READY


def test_login_exchange_with_challenges() -> None:
    session = auth_session()
    session.feed(b"auth login\r\n")
    assert pending(session) == ev.AuthStart("LOGIN", None)
    session.conn.challenge(b"Username:")
    assert session.conn.data_to_send() == b"334 VXNlcm5hbWU6\r\n"
    assert session.feed(b64(b"alice@example.test") + b"\r\n") == b""
    assert pending(session) == ev.AuthResponse(b"alice@example.test")
    session.conn.challenge(b"Password:")
    assert session.conn.data_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    session.feed(b64(b"secret") + b"\r\n")
    assert pending(session) == ev.AuthResponse(b"secret")
    session.conn.respond(AUTH_OK)
    assert session.conn.data_to_send() == R_OK


def test_empty_challenge_and_empty_responses() -> None:
    session = auth_session()
    session.feed(b"AUTH PLAIN =\r\n")   # "=": an initial response of zero length
    assert pending(session) == ev.AuthStart("PLAIN", b"")
    session.conn.challenge(b"")
    assert session.conn.data_to_send() == b"334 \r\n"
    session.feed(b"\r\n")                # an empty response
    assert pending(session) == ev.AuthResponse(b"")


def test_star_cancels_with_501() -> None:
    session = auth_session()
    session.feed(b"AUTH LOGIN\r\n")
    session.conn.challenge(b"Username:")
    session.conn.data_to_send()
    assert session.feed(b"*\r\n") == b"501 5.7.0 Authentication cancelled by the client\r\n"
    assert isinstance(session.events[-1], ev.AuthCancelled)
    assert session.conn.state is State.READY and not session.conn.authenticated
    assert session.feed(MAIL) == R_MAIL


def test_bad_base64_ends_the_exchange_with_501_5_5_2() -> None:
    session = auth_session()
    out = session.feed(b"AUTH PLAIN not*base64\r\n")
    assert out == b"501 5.5.2 Cannot decode base64; authentication exchange ended\r\n"
    session.feed(b"AUTH LOGIN\r\n")
    session.conn.challenge(b"Username:")
    session.conn.data_to_send()
    assert session.feed(b"YWxp=ZQ\r\n").startswith(b"501 5.5.2 ")
    assert isinstance(session.events[-1], ev.ProtocolViolation)
    assert session.conn.state is State.READY


def test_failure_is_counted_and_auth_may_be_tried_again() -> None:
    session = auth_session()
    session.feed(b"AUTH PLAIN " + b64(b"\0a@b.test\0wrong") + b"\r\n")
    session.conn.respond(FAILED)
    assert session.conn.data_to_send() == b"535 5.7.8 Authentication failed\r\n"
    assert session.conn.errors == 1 and not session.conn.authenticated
    session.feed(b"AUTH PLAIN " + b64(b"\0a@b.test\0right") + b"\r\n")
    session.conn.respond(AUTH_OK)
    assert session.conn.data_to_send() == R_OK


def test_auth_only_once() -> None:
    session = auth_session()
    session.feed(b"AUTH PLAIN =\r\n")
    session.conn.respond(AUTH_OK)
    session.conn.data_to_send()
    assert session.feed(b"AUTH PLAIN =\r\n") == (
        b"503 5.5.1 Already authenticated; AUTH only once (RFC 4954 4)\r\n")
    # EHLO does not undo a login (only STARTTLS would, RFC 3207 4.2).
    session.feed(EHLO)
    assert session.conn.authenticated


@pytest.mark.parametrize("before", [MAIL, MAIL + b"RCPT TO:<bob@example.test>\r\n"])
def test_auth_not_during_a_transaction(before: bytes) -> None:
    session = auth_session()
    session.feed(before)
    assert session.feed(b"AUTH PLAIN =\r\n") == (
        b"503 5.5.1 AUTH is not allowed during a mail transaction (RFC 4954 4)\r\n")


def test_auth_needs_ehlo() -> None:
    session = Session(greet=False)
    session.conn.auth_enabled, session.conn.mechanisms = True, MECHS
    assert session.feed(b"AUTH PLAIN =\r\n") == b"503 5.5.1 Send EHLO first\r\n"
    session.feed(b"HELO client.test\r\n")
    assert session.feed(b"AUTH PLAIN =\r\n") == b"503 5.5.1 Send EHLO first\r\n"


@pytest.mark.parametrize("line, reply", [
    (b"AUTH\r\n", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
    (b"AUTH PLAIN a b\r\n", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
    (b"AUTH PL@IN\r\n", b"501 5.5.4 Invalid SASL mechanism name\r\n"),
    (b"AUTH CRAM-MD5\r\n",
     b"504 5.5.4 Unrecognized authentication type; offered: SCRAM-SHA-256 PLAIN LOGIN\r\n"),
])
def test_bad_auth_commands(line: bytes, reply: bytes) -> None:
    assert auth_session().feed(line) == reply


def test_submission_mail_needs_auth() -> None:
    session = auth_session(required=True)
    assert session.feed(MAIL) == b"530 5.7.0 Authentication required\r\n"
    session.feed(b"AUTH PLAIN =\r\n")
    session.conn.respond(AUTH_OK)
    session.conn.data_to_send()
    assert session.feed(MAIL) == R_MAIL


def test_pipelined_mail_after_auth_waits_for_the_outcome() -> None:
    session = auth_session(required=True)
    out = session.feed(b"AUTH PLAIN " + b64(b"\0a@b.test\0pw") + b"\r\n" + MAIL)
    assert out == b""            # nothing before the exchange ends
    session.conn.respond(AUTH_OK)
    session.run()
    assert session.conn.data_to_send() == R_OK + R_MAIL


def test_long_initial_response_up_to_12288_octets() -> None:
    session = auth_session()
    token = b64(b"x" * 9000)     # 12000 octets of base64: beyond the 2048 of a command
    session.feed(b"AUTH PLAIN " + token + b"\r\n")
    assert pending(session) == ev.AuthStart("PLAIN", b"x" * 9000)
    session.conn.challenge(b"")
    session.conn.data_to_send()
    assert session.feed(b"A" * 12300 + b"\r\n") == (
        b"500 5.5.6 Authentication exchange line is too long\r\n")
    assert session.conn.state is State.READY


def test_starttls_forgets_the_login() -> None:
    session = auth_session(tls_available=True)
    session.feed(b"AUTH PLAIN =\r\n")
    session.conn.respond(AUTH_OK)
    session.conn.data_to_send()
    session.feed(b"STARTTLS\r\n")
    assert not session.conn.authenticated


def test_mail_auth_parameter_is_accepted_and_dropped() -> None:
    session = auth_session()
    assert session.feed(b"MAIL FROM:<a@b.test> AUTH=<>\r\n") == R_MAIL
    event = session.of(ev.MailFrom)[-1]
    assert event.params.size is None
    plain = Session()
    plain.feed(EHLO)
    assert plain.feed(b"MAIL FROM:<a@b.test> AUTH=<>\r\n").startswith(b"555 ")


def test_challenge_outside_an_exchange_is_a_bug() -> None:
    session = auth_session()
    with pytest.raises(RuntimeError):
        session.conn.challenge(b"x")


def test_source_route_is_flagged_on_rcpt() -> None:
    session = auth_session()
    session.feed(MAIL, b"RCPT TO:<@a.test,@b.test:bob@c.test>\r\nRCPT TO:<bob@c.test>\r\n")
    first, second = session.of(ev.RcptTo)
    assert first.source_route and not second.source_route
    assert first.forward_path == second.forward_path


# ------------------------------------------------------------------ property
# The invariant of tests/fuzz, with AUTH enabled: whatever bytes arrive, the
# core raises nothing and sends only well-formed replies, while a session
# answers the exchanges with challenges, successes and failures in turn.


class AuthSession(Session):
    """The transcript driver, answering AUTH events too (challenge, then 235 or 535)."""

    steps = 0

    def run(self) -> None:
        while True:
            super().run()
            event = self.events[-1] if self.events else None
            conn = self.conn
            waiting = isinstance(event, (ev.AuthStart, ev.AuthResponse)) and conn._pending is event
            if not waiting:
                return
            self.steps += 1
            if self.steps % 3 == 1:
                conn.challenge(b"more")
            else:
                conn.respond(AUTH_OK if self.steps % 3 == 2 else FAILED)


AUTH_PREFIXES = [EHLO, EHLO + b"AUTH PLAIN\r\n", EHLO + b"AUTH LOGIN =\r\n",
                 EHLO + b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=a,r=x") + b"\r\n" + MAIL]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(AUTH_PREFIXES), stream=any_bytes(), required=st.booleans(),
       data=st.data())
def test_arbitrary_bytes_with_auth(prefix: bytes, stream: bytes, required: bool,
                                   data: st.DataObject) -> None:
    session = AuthSession(Limits(max_command_line=80, max_auth_line=200))
    session.conn.auth_enabled = True
    session.conn.mechanisms = MECHS
    session.conn.auth_required = required
    out = session.feed(*data.draw(pieces(prefix + stream)))
    reply_codes(out)
