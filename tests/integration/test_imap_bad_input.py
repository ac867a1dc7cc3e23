"""Bad input to the IMAP server over raw sockets: every malformed command gets a
tagged BAD that says what is wrong and the session goes on; literals over the
limits are refused before they are sent; a dropped APPEND stores nothing; a
message that breaks every MIME rule is still stored and fetchable; too many
errors end the session (RFC 9051 §2.2, §4.3, §7.1; RFC 7888; RFC 7889)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server, add_account
from tests.integration.imap_client import Raw, assert_clean_log, new_account, status_of

APPENDLIMIT = 102400


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("imapbad") / "data"
    data.mkdir()
    add_account(data, "alice@example.test")
    server = Server(data, {"imap.max_literal": str(APPENDLIMIT)}).start()
    yield server
    server.stop()
    assert_clean_log(server)


def _fresh(server: Server, user: str, select: bool = True) -> Raw:
    raw = Raw(server.imap_port)
    raw.login(user)
    if select:
        assert status_of(raw.command("SELECT INBOX")) == b"OK"
    return raw


# (command, what the BAD text must say)
MALFORMED = [
    (b"FROBNICATE", rb"Unknown command FROBNICATE"),
    (b"SELECT", rb"Expected SP after SELECT"),
    (b'SELECT "unterminated', rb"quoted string"),
    (b"FETCH x FLAGS", rb"sequence set"),
    (b"FETCH 0 FLAGS", rb"sequence|number|0"),
    (b"FETCH 1 (FLAGS", rb"\)|end"),
    (b"FETCH 1 BODY[HEADER.FIELDS]", rb"HEADER\.FIELDS"),
    (b"FETCH 1 BODY[1.0]", rb"section|part|0"),
    (b"FETCH 1 FROB", rb"FROB"),
    (b"STORE 1 FOO (\\Seen)", rb"FLAGS"),
    (b"STORE 1 +FLAGS (\\Nonsense)", rb"\\Nonsense"),
    (b"SEARCH", rb"SEARCH"),
    (b"SEARCH BEFORE 32-Foo-2020", rb"date"),
    (b"SEARCH LARGER abc", rb"number"),
    (b"UID", rb"UID"),
    (b"UID FROB 1:*", rb"UID FROB"),
    (b"COPY 1", rb"SP|mailbox"),
    (b"LIST \"\"", rb"SP|mailbox|pattern"),
    (b"STATUS INBOX (FROBS)", rb"FROBS"),
    (b"LOGIN a b", rb"already authenticated"),
    (b"ENABLE CONDSTORE", rb"ENABLE"),            # only before SELECT (RFC 5161 §3.1)
    (b"SELECT INBOX extra", rb"Unexpected|after|SELECT"),
    (b"SORT (SUBJECT) ALL", rb"charset|SORT|SP"),
    (b"APPEND INBOX (\\Seen", rb"\)|flag"),
    (b"NOOP \x00", rb"NUL|character|Unexpected|after"),
    (b"FETCH 1 BODY[]<5.0>", rb"partial|0|range"),
]


def test_malformed_commands_get_a_useful_bad_and_the_session_survives(srv: Server) -> None:
    user = new_account(srv)
    raw = _fresh(srv, user)
    raw.command("APPEND INBOX {5+}\r\nHello")
    for n, (command, text) in enumerate(MALFORMED):
        if n and n % 8 == 0:    # stay below the error limit (10 BADs end a session)
            raw.close()
            raw = _fresh(srv, user)
        tag = f"b{n}"
        lines = raw.command(command, tag)
        assert lines[-1].startswith(tag.encode() + b" BAD "), (command, lines)
        assert re.search(text, lines[-1][len(tag) + 5:], re.IGNORECASE), (command, lines)
        assert len(lines[-1]) > len(tag) + 10, lines   # a reason, not just "BAD"
    assert status_of(raw.command("NOOP")) == b"OK"
    assert b"* 1 FETCH" in raw.command("FETCH 1 FLAGS")[0]
    raw.close()


def test_tags_states_and_bare_lf(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    # Not logged in: commands of later states are refused with a reason.
    lines = raw.command("SELECT INBOX")
    assert status_of(lines) == b"BAD" and b"log in first" in lines[-1], lines
    # A line without a command, and a tag that is not a tag: untagged BAD.
    raw.send(b"lonelytag\r\n")
    line = raw.line()
    assert re.match(rb"(\* |lonelytag )BAD ", line), line
    raw.send(b"* NOOP\r\n")
    assert raw.line().startswith(b"* BAD "), "a tag of * is refused"
    raw.send(b"+ NOOP\r\n")
    assert raw.line().split(b" ")[1] == b"BAD"
    # A bare LF ends a line but is refused (RFC 9051 §2.2: CRLF).
    raw.send(b"lf1 NOOP\n")
    line = raw.line()
    assert line.startswith(b"lf1 BAD ") and b"CRLF" in line, line
    raw.send(b"lf2 NOOP\r\n")
    assert raw.line().startswith(b"lf2 OK")
    raw.login(user)
    lines = raw.command("LOGIN x y")
    assert status_of(lines) == b"BAD" and b"already authenticated" in lines[-1]
    # A literal in a login: synchronizing literal, "+", then the rest.
    raw.close()
    raw = Raw(srv.imap_port)
    raw.send(b'l1 LOGIN {%d}\r\n' % len(user))
    assert raw.line().startswith(b"+")
    raw.send(user.encode() + b" secret\r\n")
    assert raw.until("l1")[-1].startswith(b"l1 OK")
    raw.close()


def test_long_lines_and_big_literals_are_refused_before_they_are_read(srv: Server) -> None:
    user = new_account(srv)
    raw = _fresh(srv, user)
    # A line over imap.max_line (64 KiB): BAD, skipped, the session goes on.
    raw.send(b"long1 SEARCH SUBJECT " + b"x" * 70000 + b"\r\n")
    line = raw.line()
    assert line.startswith(b"long1 BAD") and b"too long" in line.lower(), line
    assert status_of(raw.command("NOOP")) == b"OK"

    # APPEND over APPENDLIMIT: NO [TOOBIG] at once, and never a "+" (RFC 7889 §4).
    raw.send(b"big1 APPEND INBOX {%d}\r\n" % (APPENDLIMIT + 1))
    line = raw.line()
    assert line.startswith(b"big1 NO [TOOBIG]"), line
    assert status_of(raw.command("NOOP")) == b"OK"
    # The same with a non-synchronizing literal: refused, its octets skipped.
    big = b"y" * (APPENDLIMIT + 1)
    raw.send(b"big2 APPEND INBOX {%d+}\r\n%s\r\n" % (len(big), big))
    lines = raw.until("big2")
    assert lines[-1].startswith(b"big2 NO [TOOBIG]"), lines[-1][:200]
    assert status_of(raw.command("NOOP")) == b"OK"
    # Within the limit it is accepted.
    fits = b"Subject: fits\r\n\r\n" + b"z" * (APPENDLIMIT - 100)
    raw.send(b"fit1 APPEND INBOX {%d}\r\n" % len(fits))
    assert raw.line().startswith(b"+")
    raw.send(fits + b"\r\n")
    assert raw.until("fit1")[-1].startswith(b"fit1 OK [APPENDUID")
    # A literal of another command is bounded like a line: BAD [TOOBIG], no "+".
    raw.send(b"lit1 SEARCH SUBJECT {100000}\r\n")
    line = raw.line()
    assert line.startswith(b"lit1 BAD [TOOBIG]"), line
    assert status_of(raw.command("NOOP")) == b"OK"
    # A non-synchronizing one is on its way already: refused, and all of that
    # command skipped, its later lines and literals too (RFC 7888 §4).
    blob = b"w" * 100000
    raw.send(b"lit3 SEARCH SUBJECT {%d+}\r\n%s BODY {5+}\r\nhello\r\nlit4 NOOP\r\n"
             % (len(blob), blob))
    line = raw.line()
    assert line.startswith(b"lit3 BAD [TOOBIG]"), line
    assert raw.line().startswith(b"lit4 OK")
    # An absurd literal size.
    raw.send(b"lit2 APPEND INBOX {99999999999999999999999}\r\n")
    line = raw.line()
    assert line.startswith(b"lit2 ") and (b"NO" in line or b"BAD" in line), line
    assert not line.startswith(b"+")
    assert raw.command("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 1)")
    raw.close()


def _count(server: Server, user: str) -> int:
    return server.query(
        "SELECT count(*) FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
        " JOIN accounts a ON b.account = a.id WHERE a.address = ?", (user,))[0][0]


def test_an_interrupted_append_stores_nothing(srv: Server) -> None:
    user = new_account(srv)
    blobs = _blob_files(srv)
    for marker, wait_plus in ((b"{5000}", True), (b"{5000+}", False)):
        raw = _fresh(srv, user, select=False)
        raw.send(b"a1 APPEND INBOX " + marker + b"\r\n")
        if wait_plus:
            assert raw.line().startswith(b"+")
        raw.send(b"Subject: cut\r\n\r\n" + b"q" * 2000)
        time.sleep(0.2)
        raw.sock.shutdown(socket.SHUT_RDWR)
        raw.close()
    # A MULTIAPPEND cut after its first message: nothing either (RFC 3502 §6.3.11).
    raw = _fresh(srv, user, select=False)
    one = b"Subject: one\r\n\r\nbody\r\n"
    raw.send(b"a2 APPEND INBOX {%d+}\r\n%s {5000+}\r\nSubject: two" % (len(one), one))
    time.sleep(0.2)
    raw.close()
    time.sleep(0.5)
    raw = _fresh(srv, user, select=False)
    assert raw.command("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 0)")
    raw.close()
    assert _count(srv, user) == 0
    assert _blob_files(srv) == blobs       # not even a blob file was left behind


def _blob_files(server: Server) -> set[str]:
    return {str(p) for p in (server.data_dir / "blobs").rglob("*") if p.is_file()}


BROKEN = (
    b"From: <<<@@@>>>\r\n"
    b"To: undisclosed-recipients:;, ,,\"unterminated\r\n"
    b"Subject: =?X-UNKNOWN?Q?broken=ZZ?= \xff\xfe raw 8-bit \r\n"
    b"Date: the day after tomorrow\r\n"
    b"Header without a colon\r\n"
    b"X-Long: " + b"a" * 5000 + b"\r\n"
    b"Message-ID: not-an-id\r\n"
    b"MIME-Version: 9.9\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"; boundary=\"again\"; charset\r\n"
    b"Content-Transfer-Encoding: x-unheard-of\r\n"
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative\r\n"     # no boundary at all
    b"\r\n"
    b"--nested\r\n"
    b"Content-Type: text/plain; charset=\"no-such-charset\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"!!!! this is not base64 ====\r\n"
    b"--outer\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"=ZZ=4 soft break at the end=\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Not: really a message\r\n"
    b"--outer\r\n"
    b"Content-Type: /\r\n"
    b"\r\n"
    b"\x01\x02\x7f controls and a bare \n LF and a bare \r CR\r\n"
    # no closing delimiter, no final CRLF
    b"--outer"
)


def test_a_message_that_breaks_every_mime_rule_is_stored_and_fetchable(srv: Server) -> None:
    user = new_account(srv)
    raw = _fresh(srv, user, select=False)
    raw.send(b"ap APPEND INBOX {%d}\r\n" % len(BROKEN))
    assert raw.line().startswith(b"+")
    raw.send(BROKEN + b"\r\n")
    lines = raw.until("ap")
    assert lines[-1].startswith(b"ap OK"), lines
    raw.command("SELECT INBOX")
    for items in ("BODYSTRUCTURE", "BODY", "ENVELOPE", "BODY.PEEK[1]", "BODY.PEEK[TEXT]",
                  "BODY.PEEK[1.1]", "BODY.PEEK[2.MIME]", "BODY.PEEK[3.1]", "BODY.PEEK[9.9]",
                  "BINARY.PEEK[1]", "BINARY.PEEK[2]", "BINARY.SIZE[4]", "BODY.PEEK[HEADER]",
                  "RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (Subject From)]"):
        lines = raw.command(f"FETCH 1 ({items})")
        assert status_of(lines) in (b"OK", b"NO"), (items, lines)
        if status_of(lines) == b"NO":     # only BINARY may refuse (RFC 3516 UNKNOWN-CTE)
            assert items.startswith("BINARY") and b"UNKNOWN-CTE" in lines[-1], (items, lines)
        else:
            assert lines[0].startswith(b"* 1 FETCH ("), (items, lines)
    lines = raw.command("FETCH 1 (BODY.PEEK[])")
    assert lines[0].endswith(BROKEN + b")"), "the message comes back octet for octet"
    assert b"RFC822.SIZE %d" % len(BROKEN) in raw.command("FETCH 1 RFC822.SIZE")[0]
    for criteria in ("SUBJECT broken", "BODY base64", "TEXT soft", "FROM x", "HEADER X-Long a"):
        assert status_of(raw.command(f"SEARCH {criteria}")) == b"OK", criteria
    assert status_of(raw.command("SORT (SUBJECT FROM DATE) UTF-8 ALL")) == b"OK"
    assert status_of(raw.command("THREAD REFERENCES UTF-8 ALL")) == b"OK"

    # NUL octets need a literal8 (RFC 9051 §4.3, RFC 3516 §4.4): a plain literal is BAD.
    with_nul = BROKEN.replace(b"\x01\x02\x7f controls", b"\x00\x01\x02 NULs")
    raw.send(b"ap0 APPEND INBOX {%d}\r\n" % len(with_nul))
    assert raw.line().startswith(b"+")
    raw.send(with_nul + b"\r\n")
    lines = raw.until("ap0")
    assert lines[-1].startswith(b"ap0 BAD") and b"literal8" in lines[-1], lines
    raw.send(b"ap1 APPEND INBOX ~{%d}\r\n" % len(with_nul))
    assert raw.line().startswith(b"+")
    raw.send(with_nul + b"\r\n")
    lines = raw.until("ap1")
    assert lines[-1].startswith(b"ap1 OK"), lines
    raw.command("NOOP")
    lines = raw.command("FETCH 2 (BINARY.PEEK[4] BODYSTRUCTURE)")
    assert status_of(lines) == b"OK", lines
    assert b"\x00\x01\x02 NULs and a bare \n LF and a bare \r CR" in lines[0], lines
    raw.close()


def test_too_many_errors_end_the_session(srv: Server) -> None:
    raw = Raw(srv.imap_port)
    for n in range(9):
        assert raw.command(f"GARBAGE{n}", f"e{n}")[-1].startswith(b"e%d BAD" % n)
    raw.send(b"e9 GARBAGE9\r\n")
    assert raw.line().startswith(b"e9 BAD")
    line = raw.line()
    assert line.startswith(b"* BYE") and b"errors" in line.lower(), line
    assert raw.closed()


@pytest.mark.slow
def test_idle_timeout_logs_out(server_factory) -> None:
    server = server_factory({"imap.idle_timeout": "60s"})
    raw = Raw(server.imap_port, timeout=90)
    raw.login("alice@example.test")
    raw.command("SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line().startswith(b"+")
    start = time.monotonic()
    line = raw.line()
    waited = time.monotonic() - start
    assert line.startswith(b"* BYE") and b"idle" in line.lower(), line
    assert 55 < waited < 75, waited
    assert raw.closed()


def test_a_bad_line_in_idle_ends_idle_and_its_updates(srv: Server) -> None:
    user = new_account(srv)
    writer = _fresh(srv, user)
    for i in range(3):
        writer.command("APPEND INBOX {5+}\r\nmsg %d" % i)
    raw = _fresh(srv, user)
    raw.send(b"i1 IDLE\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"NOT DONE\r\n")
    line = raw.line()
    assert line.startswith(b"i1 BAD") and b"DONE" in line, line
    # IDLE is over: a change elsewhere is told at the next command, not before
    # (no EXPUNGE or FETCH while no command is in progress, RFC 9051 §7.5.1).
    writer.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    writer.command("EXPUNGE")
    raw.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        raw.line()
    raw.sock.settimeout(10)
    lines = raw.command("NOOP")
    assert lines == [b"* 1 EXPUNGE", lines[-1]] and status_of(lines) == b"OK", lines
    # A second IDLE works as usual.
    raw.send(b"i2 IDLE\r\n")
    assert raw.line().startswith(b"+")
    writer.command("APPEND INBOX {5+}\r\nmsg 9")
    assert raw.line() == b"* 3 EXISTS"
    raw.send(b"DONE\r\n")
    assert [line for line in raw.until("i2") if not line.endswith(b"RECENT")][-1].startswith(
        b"i2 OK")
    raw.close()
    writer.close()


def test_commands_sent_before_a_half_close_are_answered(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.send(f"h1 LOGIN {user} secret\r\nh2 SELECT INBOX\r\nh3 LOGOUT\r\n".encode())
    raw.sock.shutdown(socket.SHUT_WR)      # like `printf ... | nc`: no more input
    lines = raw.until("h3")
    assert [line.split()[:2] for line in lines if not line.startswith(b"*")] == [
        [b"h1", b"OK"], [b"h2", b"OK"], [b"h3", b"OK"]], lines
    assert raw.closed()
    # Without LOGOUT: the answers, then the server closes too.
    raw = Raw(srv.imap_port)
    raw.send(b"h4 NOOP\r\nh5 CAPABILITY\r\n")
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.until("h5")[-1].startswith(b"h5 OK")
    assert raw.closed()
