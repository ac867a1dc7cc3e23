"""Byte-exact transcripts of the sans-IO IMAP server core (RFC 9051, RFC 3501).

``Session`` drives ``IMAPServerConnection`` with a small fake session layer
(``answer``): it feeds the client's bytes in the given pieces, answers every
event, and collects what the core sends.  The property tests in
``tests/fuzz/test_imap_fuzz.py`` use it too.
"""

from __future__ import annotations

import pytest

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap import responses as r
from pillarbox.protocols.imap.server import (
    NEED_DATA,
    PAUSED,
    IMAPProtocolError,
    IMAPServerConnection,
    Limits,
    State,
)

GREETING = b"* OK [CAPABILITY IMAP4rev2 IMAP4rev1 LITERAL+] Pillarbox ready\r\n"


def answer(core: IMAPServerConnection, ev: c.Event) -> None:
    """A fake session layer: accepts nearly everything, refuses a few names."""
    if isinstance(ev, c.BadCommand):
        core.send(r.rejection(ev))
        return
    if isinstance(ev, c.AuthResponse):
        tag = core.pending.tag if core.pending else "*"
        if ev.cancelled:
            core.send(r.Tagged(tag, "BAD", "AUTHENTICATE cancelled"))
        elif ev.data == b"\x00bob\x00pw":
            core.send(r.Tagged(tag, "OK", "Logged in"))
        else:
            core.send(r.Tagged(tag, "NO", "Wrong password", r.AUTHENTICATIONFAILED))
        return
    if isinstance(ev, c.IdleDone):
        tag = core.pending.tag if core.pending else "*"
        core.send(r.Tagged(tag, "OK", "IDLE done"))
        return
    assert isinstance(ev, c.Command)
    tag = ev.tag
    if isinstance(ev, c.Login):
        if ev.password == "pw":
            core.send(r.Tagged(tag, "OK", "Logged in"))
        else:
            core.send(r.Tagged(tag, "NO", "Wrong password", r.AUTHENTICATIONFAILED))
    elif isinstance(ev, c.Authenticate):
        if ev.initial is None:
            core.send(r.Continuation(data=b""))
        elif ev.initial == b"\x00bob\x00pw":
            core.send(r.Tagged(tag, "OK", "Logged in"))
        else:
            core.send(r.Tagged(tag, "NO", "Wrong password", r.AUTHENTICATIONFAILED))
    elif isinstance(ev, c.Idle):
        core.send(r.Continuation("idling"))
    elif isinstance(ev, c.Select):
        if ev.mailbox == "missing":
            core.send(r.Tagged(tag, "NO", "No such mailbox", r.NONEXISTENT))
        else:
            core.send(r.Exists(2))
            core.send(r.Tagged(tag, "OK", "Selected", r.READ_ONLY if ev.readonly
                               else r.READ_WRITE))
    elif isinstance(ev, c.Enable):
        known = [x for x in ev.capabilities if x in ("IMAP4REV2", "UTF8=ACCEPT", "CONDSTORE")]
        core.send(r.EnabledData(tuple(known)))
        core.send(r.Tagged(tag, "OK", "Enabled"))
    elif isinstance(ev, c.Logout):
        core.send(r.Untagged("BYE", "Logging out"))
        core.send(r.Tagged(tag, "OK", "Logged out"))
    elif isinstance(ev, c.Create):
        # echoes the decoded name, to show the UTF-8 mode at work
        core.send(r.ListData(ev.mailbox))
        core.send(r.Tagged(tag, "OK", "Created"))
    elif isinstance(ev, c.Append):
        sizes = ",".join(str(len(m.data)) for m in ev.messages)
        core.send(r.Tagged(tag, "OK", f"Appended {sizes}"))
    else:
        core.send(r.Tagged(tag, "OK", f"{type(ev).__name__} done"))


class Session:
    """The client side of one connection: feed bytes, collect events and output."""

    def __init__(self, limits: Limits = Limits(), *, tls: bool = True, **kwargs: bool) -> None:
        self.core = IMAPServerConnection(limits, **kwargs)
        self.tls = tls
        self.events: list[c.Event] = []
        self.core.send(r.Untagged("OK", "Pillarbox ready", r.CapabilityCode(
            ("IMAP4rev2", "IMAP4rev1", "LITERAL+"))))
        self.out = [self.core.data_to_send()]

    def feed(self, *pieces: bytes) -> bytes:
        """Feed ``pieces`` one by one; return everything sent after the greeting."""
        for piece in pieces:
            self.core.receive_data(piece)
            self.run()
        return b"".join(self.out[1:])

    def run(self) -> None:
        core = self.core
        while True:
            ev = core.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                self.out.append(core.data_to_send())
                if core.starting_tls:
                    core.start_tls_done()
                    continue
                if core.starting_compression:
                    leftover = core.compression_started()
                    core.receive_data(leftover)  # "inflating" is the identity here
                    continue
                break
            assert isinstance(ev, (c.Command, c.AuthResponse, c.IdleDone, c.BadCommand)), ev
            self.events.append(ev)
            if isinstance(ev, c.StartTLS) and not self.tls:
                core.send(r.Tagged(ev.tag, "NO", "TLS not available"))
            else:
                answer(core, ev)
        self.out.append(core.data_to_send())

    @property
    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


LOGIN = b"a1 LOGIN bob pw\r\n"
R_LOGIN = b"a1 OK Logged in\r\n"
SELECT = b"a2 SELECT INBOX\r\n"
R_SELECT = b"* 2 EXISTS\r\na2 OK [READ-WRITE] Selected\r\n"


def transcript(*pieces: bytes, limits: Limits = Limits(), **kw: bool) -> tuple[Session, bytes]:
    s = Session(limits, **kw)
    return s, s.feed(*pieces)


# ------------------------------------------------------------------ basics


def test_greeting_is_rendered_as_sent() -> None:
    s = Session()
    assert s.out[0] == GREETING


def test_login_select_fetch_logout() -> None:
    s, out = transcript(LOGIN, SELECT, b"a3 FETCH 1:* (FLAGS)\r\n", b"a4 LOGOUT\r\n")
    assert out == (R_LOGIN + R_SELECT + b"a3 OK Fetch done\r\n"
                   + b"* BYE Logging out\r\na4 OK Logged out\r\n")
    assert s.kinds == ["Login", "Select", "Fetch", "Logout"]
    assert s.core.closed and s.core.state is State.LOGOUT


def test_bytes_after_logout_are_ignored() -> None:
    s, out = transcript(b"a LOGOUT\r\nb NOOP\r\n", b"c NOOP\r\n")
    assert out == b"* BYE Logging out\r\na OK Logged out\r\n"
    assert s.kinds == ["Logout"]


def test_bye_from_the_session_closes() -> None:
    s = Session()
    s.core.send(r.Untagged("BYE", "Server shutting down"))
    assert s.core.closed
    assert s.core.data_to_send() == b"* BYE Server shutting down\r\n"
    s.core.receive_data(b"a NOOP\r\n")
    assert s.core.next_event() is NEED_DATA


def test_preauth_greeting_authenticates() -> None:
    core = IMAPServerConnection()
    core.send(r.Untagged("PREAUTH", "Welcome"))
    assert core.state is State.AUTHENTICATED
    core.receive_data(b"a SELECT INBOX\r\n")
    assert isinstance(core.next_event(), c.Select)


def test_empty_lines_between_commands_are_ignored() -> None:
    s, out = transcript(b"\r\n\r\na NOOP\r\n\r\n")
    assert out == b"a OK Noop done\r\n"


# --------------------------------------------------------------- the state table


@pytest.mark.parametrize(
    ("prefix", "line", "reply"),
    [
        (b"", b"a SELECT INBOX", b"a BAD SELECT: log in first"),
        (b"", b"a FETCH 1 FLAGS", b"a BAD FETCH: log in first"),
        (b"", b"a UID FETCH 1 FLAGS", b"a BAD UID FETCH: log in first"),
        (b"", b"a ENABLE UTF8=ACCEPT", b"a BAD ENABLE: log in first"),
        (b"", b"a IDLE", b"a BAD IDLE: log in first"),
        (LOGIN, b"a LOGIN bob pw", b"a BAD LOGIN: already authenticated"),
        (LOGIN, b"a AUTHENTICATE PLAIN", b"a BAD AUTHENTICATE: already authenticated"),
        (LOGIN, b"a STARTTLS", b"a BAD STARTTLS: already authenticated"),
        (LOGIN, b"a FETCH 1 FLAGS", b"a BAD FETCH: no mailbox selected"),
        (LOGIN, b"a CLOSE", b"a BAD CLOSE: no mailbox selected"),
        (LOGIN, b"a CHECK", b"a BAD CHECK: no mailbox selected"),
        (LOGIN, b"a UID EXPUNGE 1:3", b"a BAD UID EXPUNGE: no mailbox selected"),
        (LOGIN + SELECT, b"a ENABLE CONDSTORE",
         b"a BAD ENABLE is only allowed before a mailbox is selected (RFC 5161 \xc2\xa73.1)"),
        (b"", b"a FROB", b"a BAD Unknown command FROB"),
        (LOGIN + SELECT, b"a UID FROB 1", b"a BAD Unknown command UID FROB"),
    ],
)
def test_commands_not_allowed_in_the_state_are_refused(
    prefix: bytes, line: bytes, reply: bytes
) -> None:
    s, out = transcript(prefix + line + b"\r\n")
    assert out.endswith(reply + b"\r\n")
    assert s.kinds[-1] == "BadCommand"


@pytest.mark.parametrize(
    "line", [b"a CAPABILITY", b"a NOOP", b"a ID NIL", b"a LOGOUT"],
)
@pytest.mark.parametrize("prefix", [b"", LOGIN, LOGIN + SELECT])
def test_commands_of_any_state(prefix: bytes, line: bytes) -> None:
    s, out = transcript(prefix + line + b"\r\n")
    assert s.kinds[-1] not in ("BadCommand",)


def test_failed_select_deselects() -> None:
    s, out = transcript(LOGIN, SELECT, b"a3 SELECT missing\r\n", b"a4 FETCH 1 FLAGS\r\n")
    assert out == (R_LOGIN + R_SELECT + b"a3 NO [NONEXISTENT] No such mailbox\r\n"
                   + b"a4 BAD FETCH: no mailbox selected\r\n")
    assert s.core.state is State.AUTHENTICATED


@pytest.mark.parametrize("verb", [b"CLOSE", b"UNSELECT"])
def test_close_and_unselect_deselect(verb: bytes) -> None:
    s, out = transcript(LOGIN + SELECT + b"a3 " + verb + b"\r\na4 EXPUNGE\r\n")
    assert out.endswith(b"a4 BAD EXPUNGE: no mailbox selected\r\n")
    assert s.core.state is State.AUTHENTICATED


def test_examine_selects_read_only() -> None:
    s, out = transcript(LOGIN + b"a2 EXAMINE INBOX\r\n")
    assert out == R_LOGIN + b"* 2 EXISTS\r\na2 OK [READ-ONLY] Selected\r\n"
    assert s.core.state is State.SELECTED


def test_failed_login_stays_unauthenticated() -> None:
    s, out = transcript(b"a LOGIN bob nope\r\nb SELECT INBOX\r\n")
    assert out == (b"a NO [AUTHENTICATIONFAILED] Wrong password\r\n"
                   b"b BAD SELECT: log in first\r\n")


# ------------------------------------------------------------------ pipelining


def test_pipelined_commands_are_judged_after_the_previous_response() -> None:
    # One read: LOGIN, then commands that are only allowed once LOGIN succeeded.
    s, out = transcript(LOGIN + SELECT + b"a3 FETCH 1 FLAGS\r\na4 NOOP\r\n")
    assert out == R_LOGIN + R_SELECT + b"a3 OK Fetch done\r\na4 OK Noop done\r\n"


def test_next_event_pauses_until_the_tagged_response() -> None:
    core = IMAPServerConnection()
    core.receive_data(LOGIN + b"a2 SELECT INBOX\r\n")
    ev = core.next_event()
    assert isinstance(ev, c.Login)
    assert core.next_event() is PAUSED
    core.send(r.Untagged("OK", "untagged does not complete it"))
    assert core.next_event() is PAUSED
    core.send(r.Tagged("a1", "OK", "Logged in"))
    assert isinstance(core.next_event(), c.Select)


def test_enable_utf8_applies_to_the_next_pipelined_command() -> None:
    # "Entwürfe" in UTF-8 after ENABLE; the echo shows how the name was decoded.
    stream = (LOGIN + b"a2 CREATE Entw&APw-rfe\r\na3 ENABLE UTF8=ACCEPT\r\n"
              + "a4 CREATE Entwürfe\r\n".encode() + b"a5 CREATE Entw&APw-rfe\r\n")
    s, out = transcript(stream)
    assert out == (R_LOGIN
                   + b'* LIST () "/" Entw&APw-rfe\r\na2 OK Created\r\n'
                   + b"* ENABLED UTF8=ACCEPT\r\na3 OK Enabled\r\n"
                   + '* LIST () "/" "Entwürfe"\r\na4 OK Created\r\n'.encode()
                   + b'* LIST () "/" Entw&APw-rfe\r\na5 OK Created\r\n')
    assert s.core.utf8 and not s.core.rev2
    creates = [e for e in s.events if isinstance(e, c.Create)]
    assert [e.mailbox for e in creates] == ["Entwürfe", "Entwürfe", "Entw&APw-rfe"]


def test_enable_imap4rev2_sets_rev2() -> None:
    s, out = transcript(LOGIN + b"a2 ENABLE IMAP4rev2\r\n")
    assert out == R_LOGIN + b"* ENABLED IMAP4REV2\r\na2 OK Enabled\r\n"
    assert s.core.rev2 and s.core.utf8


def test_eight_bit_mailbox_name_without_utf8_is_refused() -> None:
    s, out = transcript(LOGIN + "a2 CREATE Entwürfe\r\n".encode())
    assert out == R_LOGIN + (b"a2 BAD Mailbox name has 8-bit octets: use modified UTF-7"
                             b" (RFC 3501 \xc2\xa75.1.3) or ENABLE UTF8=ACCEPT\r\n")


# -------------------------------------------------------------------- literals


def test_synchronizing_literal_gets_a_continuation() -> None:
    s = Session()
    assert s.feed(b"a LOGIN {3}\r\n") == b"+ OK\r\n"
    assert s.feed(b"bob {2}\r\n") == b"+ OK\r\n+ OK\r\n"
    out = s.feed(b"pw\r\n")
    assert out == b"+ OK\r\n+ OK\r\na OK Logged in\r\n"
    assert s.events == [c.Login("a", "bob", "pw")]


def test_non_synchronizing_literals_need_no_continuation() -> None:
    s, out = transcript(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n")
    assert out == b"a OK Logged in\r\n"
    assert s.events == [c.Login("a", "bob", "pw")]


def test_literal_octets_are_not_parsed_as_commands() -> None:
    body = b"b LOGOUT\r\n\r\nc NOOP\r\n"
    s, out = transcript(LOGIN + b"a2 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n"
                        b"a3 NOOP\r\n")
    assert out == R_LOGIN + b"a2 OK Appended %d\r\na3 OK Noop done\r\n" % len(body)
    append = s.events[1]
    assert isinstance(append, c.Append) and append.messages[0].data == body


def test_multiappend_with_literal8() -> None:
    s, out = transcript(LOGIN + b"a2 APPEND INBOX (\\Seen) {3}\r\n", b"abc ~{3}\r\n",
                        b"a\x00b\r\n")
    assert out == R_LOGIN + b"+ OK\r\n+ OK\r\na2 OK Appended 3,3\r\n"
    append = s.events[1]
    assert isinstance(append, c.Append)
    assert [(m.data, m.binary) for m in append.messages] == [(b"abc", False), (b"a\x00b", True)]


def test_literal_zero() -> None:
    s, out = transcript(b"a LOGIN {0}\r\n {2}\r\npw\r\n")
    assert s.events == [c.Login("a", "", "pw")]
    assert out == b"+ OK\r\n+ OK\r\na OK Logged in\r\n"


LIMITS = Limits(max_line=100, max_literal=10, appendlimit=20, max_command=1000, max_errors=5)


def test_synchronizing_literal_over_the_limit_is_refused_before_reading() -> None:
    s, out = transcript(b"a LOGIN {11}\r\n", b"a2 NOOP\r\n", limits=LIMITS)
    assert out == b"a BAD [TOOBIG] Literal over 10 octets\r\na2 OK Noop done\r\n"


def test_append_over_appendlimit_is_no_toobig() -> None:
    s, out = transcript(LOGIN + b"a2 APPEND INBOX {21}\r\n", b"a3 NOOP\r\n", limits=LIMITS)
    assert out == R_LOGIN + (b"a2 NO [TOOBIG] Message over the APPENDLIMIT of 20 octets\r\n"
                             b"a3 OK Noop done\r\n")
    assert s.core.errors == 0   # NO is not a protocol error


def test_non_synchronizing_literal_over_the_limit_is_skipped_exactly() -> None:
    junk = b"x NOOP\r\n" * 3 + b"yy"   # 26 octets that must not be taken as commands
    s, out = transcript(LOGIN + b"a2 APPEND INBOX {26+}\r\n" + junk + b"\r\na3 NOOP\r\n",
                        limits=LIMITS)
    assert out == R_LOGIN + (b"a2 NO [TOOBIG] Message over the APPENDLIMIT of 20 octets\r\n"
                             b"a3 OK Noop done\r\n")


def test_skipping_goes_on_through_the_rest_of_the_command() -> None:
    # The refused command goes on after its literal with another literal.
    stream = (b"a LOGIN {12+}\r\n" + b"a2 NOOP\r\nzz" + b" {3+}\r\nb3 \r\n" + b"a3 NOOP\r\n")
    s, out = transcript(stream, limits=LIMITS)
    assert out == b"a BAD [TOOBIG] Literal over 10 octets\r\na3 OK Noop done\r\n"


@pytest.mark.parametrize("cut", range(1, 40, 3))
def test_skipping_a_literal_does_not_depend_on_the_cuts(cut: int) -> None:
    stream = b"a LOGIN {12+}\r\n" + b"a2 NOOP\r\nzz" + b" {3+}\r\nb3 \r\n" + b"a3 NOOP\r\n"
    _, whole = transcript(stream, limits=LIMITS)
    _, pieces = transcript(stream[:cut], stream[cut:], limits=LIMITS)
    assert pieces == whole


def test_literal_minus_caps_non_synchronizing_literals_at_4096() -> None:
    data = b"x" * 4097
    limits = Limits(max_literal=10000)
    s, out = transcript(b"a LOGIN {4097+}\r\n" + data + b" pw\r\nb NOOP\r\n", limits=limits,
                        literal_plus=False)
    assert out == (b"a BAD [TOOBIG] Non-synchronizing literal over 4096 octets"
                   b" (LITERAL-, RFC 7888 \xc2\xa75)\r\nb OK Noop done\r\n")
    s, out = transcript(b"a LOGIN {4096+}\r\n" + b"x" * 4096 + b" pw\r\n", limits=limits,
                        literal_plus=False)
    assert out == b"a OK Logged in\r\n"


def test_state_refusal_skips_a_non_synchronizing_literal() -> None:
    s, out = transcript(b"a APPEND INBOX {8+}\r\nb NOOP\r\n\r\nc NOOP\r\n")
    assert out == b"a BAD APPEND: log in first\r\nc OK Noop done\r\n"


def test_state_refusal_sends_no_continuation() -> None:
    s, out = transcript(b"a APPEND INBOX {8}\r\n", b"c NOOP\r\n")
    assert out == b"a BAD APPEND: log in first\r\nc OK Noop done\r\n"


def test_whole_command_limit() -> None:
    limits = Limits(max_literal=10, appendlimit=10, max_command=30)
    s, out = transcript(LOGIN + b"a2 APPEND INBOX {5+}\r\n12345 {5+}\r\n12345 {5}\r\n",
                        b"a3 NOOP\r\n", limits=limits)
    assert out == R_LOGIN + (b"a2 NO [TOOBIG] Command over 30 octets\r\n"
                             b"a3 OK Noop done\r\n")


def test_syntax_error_after_literals() -> None:
    s, out = transcript(b"a LOGIN {3+}\r\nbob\r\nb NOOP\r\n")
    assert out == (b"a BAD Expected SP after user name\r\n"
                   b"b OK Noop done\r\n")


# ------------------------------------------------------------------ line limits


def test_line_too_long_is_refused_and_skipped() -> None:
    line = b"a7 NOOP " + b"x" * 200 + b"\r\n"
    s, out = transcript(line + b"b NOOP\r\n", limits=LIMITS)
    assert out == b"a7 BAD Line too long (more than 100 octets)\r\nb OK Noop done\r\n"


def test_line_too_long_is_refused_before_its_end_arrives() -> None:
    s = Session(LIMITS)
    assert s.feed(b"a7 NOOP " + b"x" * 200) == b"a7 BAD Line too long (more than 100 octets)\r\n"
    assert s.core.buffered == 0          # not buffered: skipped as it comes
    assert s.feed(b"x" * 50 + b"\r\nb NOOP\r\n").endswith(b"b OK Noop done\r\n")


def test_line_of_exactly_max_line_is_accepted() -> None:
    line = b"a NOOP"
    limits = Limits(max_line=len(line))
    s, out = transcript(line + b"\r\n", line + b"x\r\n", limits=limits)
    assert out == b"a OK Noop done\r\na BAD Line too long (more than 6 octets)\r\n"


def test_long_line_ending_in_a_non_synchronizing_literal_skips_it() -> None:
    stream = b"a LOGIN " + b"x" * 120 + b" {8+}\r\n" + b"b NOOP\r\n" + b"\r\nc NOOP\r\n"
    s, out = transcript(stream, limits=LIMITS)
    assert out == b"a BAD Line too long (more than 100 octets)\r\nc OK Noop done\r\n"


def test_endless_line_gets_bye() -> None:
    s = Session(Limits(max_line=100))
    out = b""
    for _ in range(20):
        out = s.feed(b"y" * 65536)
    assert out == (b"* BAD Line too long (more than 100 octets)\r\n"
                   b"* BYE Line too long\r\n")
    assert s.core.closed


# ------------------------------------------------------------------ line endings


def test_bare_lf_is_refused() -> None:
    s, out = transcript(b"a NOOP\nb NOOP\r\n")
    assert out == b"a BAD Line must end with CRLF (RFC 9051 \xc2\xa72.2)\r\nb OK Noop done\r\n"


def test_bare_cr_inside_a_line_is_a_syntax_error() -> None:
    s, out = transcript(b"a NOOP\rb NOOP\r\n")
    assert out.startswith(b"a BAD ")
    assert s.kinds == ["BadCommand"]


def test_no_tag() -> None:
    s, out = transcript(b"(junk\r\n+x NOOP\r\n")
    assert out == (b"* BAD Missing or invalid tag (at '(junk')\r\n"
                   b"* BAD Missing or invalid tag (at '+x NOOP')\r\n")


# ------------------------------------------------------------------ max errors


def test_too_many_errors_end_the_session() -> None:
    s, out = transcript(b"a FROB\r\n" * 6, limits=LIMITS)
    assert out == b"a BAD Unknown command FROB\r\n" * 5 + b"* BYE Too many errors\r\n"
    assert s.core.closed
    assert s.core.errors == 5


def test_bad_from_the_session_counts_too() -> None:
    core = IMAPServerConnection(Limits(max_errors=2))
    core.send(r.Tagged("a", "BAD", "no"))
    core.send(r.Untagged("BAD", "garbage"))
    assert core.data_to_send() == b"a BAD no\r\n* BAD garbage\r\n* BYE Too many errors\r\n"
    assert core.closed


# ------------------------------------------------------------------ AUTHENTICATE


def test_authenticate_exchange() -> None:
    s, out = transcript(b"a AUTHENTICATE PLAIN\r\n", b"AGJvYgBwdw==\r\n", b"b NOOP\r\n")
    assert out == b"+ \r\na OK Logged in\r\nb OK Noop done\r\n"
    assert s.events[1] == c.AuthResponse(b"\x00bob\x00pw")
    assert s.core.state is State.AUTHENTICATED


def test_authenticate_response_line_pipelined_with_the_command() -> None:
    # The line after AUTHENTICATE is read only once the challenge was sent.
    s, out = transcript(b"a AUTHENTICATE PLAIN\r\nAGJvYgBwdw==\r\nb SELECT INBOX\r\n")
    assert out == b"+ \r\na OK Logged in\r\n* 2 EXISTS\r\nb OK [READ-WRITE] Selected\r\n"


def test_authenticate_with_initial_response() -> None:
    s, out = transcript(b"a AUTHENTICATE PLAIN AGJvYgBwdw==\r\n")
    assert out == b"a OK Logged in\r\n"


def test_authenticate_cancelled() -> None:
    s, out = transcript(b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n")
    assert out == b"+ \r\na BAD AUTHENTICATE cancelled\r\nb OK Noop done\r\n"
    assert s.events[1] == c.AuthResponse(cancelled=True)
    assert s.core.state is State.NOT_AUTHENTICATED


def test_authenticate_bad_base64() -> None:
    s, out = transcript(b"a AUTHENTICATE PLAIN\r\n!!!\r\nb NOOP\r\n")
    assert out == (b"+ \r\na BAD Invalid base64 in AUTHENTICATE response (RFC 9051 \xc2\xa76.2.2)"
                   b"\r\nb OK Noop done\r\n")


def test_authenticate_line_that_looks_like_a_literal_is_not_one() -> None:
    s, out = transcript(b"a AUTHENTICATE PLAIN\r\n{5}\r\nb NOOP\r\n")
    assert out.startswith(b"+ \r\na BAD Invalid base64")
    assert out.endswith(b"b OK Noop done\r\n")


# ----------------------------------------------------------------------- IDLE


def test_idle_done() -> None:
    s = Session()
    out = s.feed(LOGIN, b"a2 IDLE\r\n")
    assert out == R_LOGIN + b"+ idling\r\n"
    assert s.core.next_event() is NEED_DATA
    s.core.send(r.Exists(3))            # a notification while idling
    out = s.feed(b"done\r\n")
    assert out.endswith(b"+ idling\r\n* 3 EXISTS\r\na2 OK IDLE done\r\n")
    assert s.kinds == ["Login", "Idle", "IdleDone"]


def test_idle_anything_but_done_is_bad_and_ends_it() -> None:
    s, out = transcript(LOGIN + b"a2 IDLE\r\na3 NOOP\r\na4 NOOP\r\n")
    assert out == R_LOGIN + (b"+ idling\r\na2 BAD Expected DONE to end IDLE (RFC 2177)\r\n"
                             b"a4 OK Noop done\r\n")


# ------------------------------------------------------------------ STARTTLS


def test_starttls_drops_pipelined_commands() -> None:
    # CVE-2011-0411: "a2 LOGIN" arrived in plaintext with STARTTLS and must not run.
    s = Session()
    core = s.core
    core.receive_data(b"a1 STARTTLS\r\na2 LOGIN bob pw\r\n")
    ev = core.next_event()
    assert isinstance(ev, c.StartTLS)
    core.send(r.Tagged("a1", "OK", "Begin TLS negotiation now"))
    assert core.starting_tls
    core.send(r.Untagged("OK", "held until TLS is up"))
    assert core.data_to_send() == b"a1 OK Begin TLS negotiation now\r\n"
    core.receive_data(b"a3 LOGIN bob pw\r\n")   # before the handshake: dropped too
    assert core.next_event() is PAUSED
    core.start_tls_done()
    assert core.data_to_send() == b"* OK held until TLS is up\r\n"
    assert core.next_event() is NEED_DATA
    core.receive_data(b"a4 STARTTLS\r\n")
    assert core.next_event() == c.BadCommand("a4", "TLS is already active")


def test_starttls_refused_keeps_the_pipeline() -> None:
    s, out = transcript(b"a1 STARTTLS\r\na2 NOOP\r\n", tls=False)
    assert out == b"a1 NO TLS not available\r\na2 OK Noop done\r\n"


def test_start_tls_done_without_starttls_is_a_bug() -> None:
    with pytest.raises(IMAPProtocolError):
        IMAPServerConnection().start_tls_done()
    with pytest.raises(IMAPProtocolError):
        IMAPServerConnection().compression_started()


def test_implicit_tls_refuses_starttls() -> None:
    s, out = transcript(b"a STARTTLS\r\n", tls_active=True)
    assert out == b"a BAD TLS is already active\r\n"


# ------------------------------------------------------------------ COMPRESS


def test_compress_hands_back_the_buffered_input() -> None:
    core = IMAPServerConnection()
    core.send(r.Untagged("PREAUTH", "hi"))
    core.data_to_send()
    core.receive_data(b"a COMPRESS DEFLATE\r\n<deflated bytes>")
    ev = core.next_event()
    assert ev == c.Compress("a", "DEFLATE")
    core.send(r.Tagged("a", "OK", "DEFLATE active"))
    core.send(r.Exists(4))
    assert core.starting_compression
    assert core.next_event() is PAUSED
    assert core.data_to_send() == b"a OK DEFLATE active\r\n"   # the last plain bytes
    core.receive_data(b" more")
    assert core.compression_started() == b"<deflated bytes> more"
    assert core.compressing
    assert core.data_to_send() == b"* 4 EXISTS\r\n"             # to be compressed
    core.receive_data(b"b NOOP\r\n")
    assert core.next_event() == c.Noop("b")


def test_compress_refused_goes_on_plain() -> None:
    core = IMAPServerConnection()
    core.send(r.Untagged("PREAUTH", "hi"))
    core.receive_data(b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    assert isinstance(core.next_event(), c.Compress)
    core.send(r.Tagged("a", "NO", "[COMPRESSIONACTIVE]"))
    assert not core.starting_compression
    assert core.next_event() == c.Noop("b")


# ----------------------------------------------------------------- parse errors


def test_parse_errors_reach_the_session_as_bad_command() -> None:
    s, out = transcript(LOGIN + SELECT + b"a3 FETCH 1 (FLAGS\r\na4 SEARCH FOO\r\n")
    assert out == R_LOGIN + R_SELECT + (b"a3 BAD Missing ')' after FETCH items"
                                        b" (at end of command)\r\n"
                                        b"a4 BAD Unknown SEARCH key FOO\r\n")


def test_unknown_charset_is_no_badcharset() -> None:
    s, out = transcript(LOGIN + SELECT + b"a3 SEARCH CHARSET X-FOO TEXT a\r\n")
    assert out.endswith(b"a3 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset X-FOO\r\n")
    assert s.core.errors == 0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        Limits(max_line=0)


# ------------------------------------------------------------------ more framing


def test_refused_head_still_skips_its_non_synchronizing_literal() -> None:
    s, out = transcript(b"(junk {9+}\r\nb LOGOUT\r\n\r\nc NOOP\r\n")
    assert out == b"* BAD Missing or invalid tag (at '(junk {9+}')\r\nc OK Noop done\r\n"


def test_bare_lf_after_a_literal_marker_still_skips_the_literal() -> None:
    s, out = transcript(b"a LOGIN {6+}\nb NOOP\r\n\r\nc NOOP\r\n")
    assert out == (b"a BAD Line must end with CRLF (RFC 9051 \xc2\xa72.2)\r\n"
                   b"c OK Noop done\r\n")


def test_bare_lf_on_a_continuation_line() -> None:
    s, out = transcript(b"a LOGIN {3+}\r\nbob pw\nc NOOP\r\n")
    assert out == (b"a BAD Line must end with CRLF (RFC 9051 \xc2\xa72.2)\r\n"
                   b"c OK Noop done\r\n")


def test_command_too_long_without_literals() -> None:
    limits = Limits(max_line=100, max_command=20)
    s, out = transcript(b"a LOGIN {3+}\r\nbob pw_is_rather_long\r\nb NOOP\r\n", limits=limits)
    assert out == b"a BAD [TOOBIG] Command too long\r\nb OK Noop done\r\n"


def test_literal8_outside_append_is_a_syntax_error_after_framing() -> None:
    s, out = transcript(b"a LOGIN ~{3+}\r\nbob pw\r\nb NOOP\r\n")
    assert out == (b"a BAD literal8 (~{n}) is only allowed for APPEND data (RFC 3516)\r\n"
                   b"b OK Noop done\r\n")


def test_bad_command_does_not_pause() -> None:
    core = IMAPServerConnection()
    core.receive_data(b"a FROB\r\nb NOOP\r\n")
    assert core.next_event() == c.BadCommand("a", "Unknown command FROB")
    assert core.pending is None
    assert core.next_event() == c.Noop("b")
    assert core.pending == c.Noop("b")


def test_literal_announced_in_idle_done_line_is_not_a_literal() -> None:
    s, out = transcript(LOGIN + b"a2 IDLE\r\nDONE {5+}\r\na3 NOOP\r\n")
    assert out == R_LOGIN + (b"+ idling\r\na2 BAD Expected DONE to end IDLE (RFC 2177)\r\n"
                             b"a3 OK Noop done\r\n")


def test_line_too_long_while_idling_ends_idle() -> None:
    limits = Limits(max_line=20)
    s, out = transcript(LOGIN + b"a2 IDLE\r\n" + b"D" * 30 + b"\r\na3 NOOP\r\n", limits=limits)
    assert out == R_LOGIN + (b"+ idling\r\na2 BAD Line too long (more than 20 octets)\r\n"
                             b"a3 OK Noop done\r\n")


def test_absurd_non_synchronizing_literal_size_gets_bye() -> None:
    s, out = transcript(b"a LOGIN {" + b"9" * 25 + b"+}\r\n")
    assert out == (b"a BAD [TOOBIG] Literal over 65536 octets\r\n"
                   b"* BYE Literal size out of range\r\n")
    assert s.core.closed


@pytest.mark.parametrize("cut", range(0, 60, 4))
def test_pipelined_session_does_not_depend_on_the_cuts(cut: int) -> None:
    stream = (b"a1 LOGIN {3}\r\nbob pw\r\na2 SELECT INBOX\r\na3 IDLE\r\nDONE\r\n"
              b"a4 APPEND INBOX {5+}\r\nhello\r\na5 LOGOUT\r\n")
    _, whole = transcript(stream)
    _, pieces = transcript(stream[:cut], stream[cut:])
    assert pieces == whole
    assert whole == (b"+ OK\r\na1 OK Logged in\r\n" + R_SELECT + b"+ idling\r\na3 OK IDLE done\r\n"
                     b"a4 OK Appended 5\r\n* BYE Logging out\r\na5 OK Logged out\r\n")
