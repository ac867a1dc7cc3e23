"""IMAP against a real ``pillarbox serve``: Python's imaplib and raw sockets.

One server serves the module (a fresh account per test, so the tests do not
meet); the tests that need other settings start their own.  RFC 9051
(IMAP4rev2) with RFC 3501 compatibility and the extensions the server
announces: UIDPLUS (RFC 4315), MOVE (RFC 6851), CONDSTORE/QRESYNC (RFC 7162),
ESEARCH/SEARCHRES (RFC 4731, RFC 5182), LIST-EXTENDED/LIST-STATUS/SPECIAL-USE
(RFC 5258, RFC 5819, RFC 6154), MULTIAPPEND (RFC 3502), BINARY (RFC 3516),
SORT/THREAD (RFC 5256), QUOTA (RFC 9208), ID (RFC 2971), COMPRESS (RFC 4978),
IDLE (RFC 2177), SASL-IR (RFC 4959), SCRAM-SHA-256 (RFC 7677).
"""

from __future__ import annotations

import base64
import imaplib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server, add_account
from tests.integration.imap_client import (
    PASSWORD, Raw, ScramClient, append, assert_clean_log, login, message, new_account, ok,
    status_of, unverified,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("imap") / "data"
    data.mkdir()
    add_account(data, "alice@example.test")
    server = Server(data).start()
    yield server
    server.stop()
    assert_clean_log(server)


# ---------------------------------------------------------------- logging in


def test_login_plain_starttls_and_implicit_tls(srv: Server) -> None:
    user = new_account(srv)
    plain = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    assert "STARTTLS" in plain.capabilities and "AUTH=PLAIN" in plain.capabilities
    ok(plain.login(user, PASSWORD))
    assert "IDLE" in plain.capabilities
    plain.logout()

    starttls = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    ok(starttls.starttls(unverified()))
    assert "STARTTLS" not in starttls.capabilities
    ok(starttls.login(user, PASSWORD))
    ok(starttls.select("INBOX"))
    starttls.logout()

    implicit = login(srv, user, tls="imaps")
    assert "STARTTLS" not in implicit.capabilities
    ok(implicit.noop())
    implicit.logout()


def test_wrong_password_is_refused_with_authenticationfailed(srv: Server) -> None:
    user = new_account(srv)
    client = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login(user, "wrong")
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login("nobody@example.test", PASSWORD)
    ok(client.login(user, PASSWORD))  # the session survives failures
    client.logout()


def test_authenticate_plain_with_and_without_sasl_ir(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    lines = raw.command(f"AUTHENTICATE PLAIN {token}")   # RFC 4959 initial response
    assert status_of(lines) == b"OK", lines
    assert b"[CAPABILITY " in lines[-1]
    assert status_of(raw.command("SELECT INBOX")) == b"OK"
    raw.close()

    client = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    ok(client.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode()))
    assert client.state == "AUTH"
    client.logout()

    # AUTHENTICATE LOGIN: the two challenges, then the two answers.
    client = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    challenges: list[bytes] = []
    answers = iter([user.encode(), PASSWORD.encode()])

    def login_mechanism(challenge: bytes) -> bytes:
        challenges.append(challenge)
        return next(answers)

    ok(client.authenticate("LOGIN", login_mechanism))
    assert challenges == [b"Username:", b"Password:"]
    client.logout()

    raw = Raw(srv.imap_port)
    bad = base64.b64encode(f"\0{user}\0nope".encode()).decode()
    lines = raw.command(f"AUTHENTICATE PLAIN {bad}")
    assert status_of(lines) == b"NO" and b"[AUTHENTICATIONFAILED]" in lines[-1], lines
    raw.close()


def test_authenticate_scram_sha_256(srv: Server) -> None:
    user = new_account(srv)
    client = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    assert "AUTH=SCRAM-SHA-256" in client.capabilities
    scram = ScramClient(user, PASSWORD)
    ok(client.authenticate("SCRAM-SHA-256", scram))
    assert scram.verified, "the server's signature was never checked"
    ok(client.select("INBOX"))
    client.logout()

    client = imaplib.IMAP4("127.0.0.1", srv.imap_port, timeout=15)
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        client.authenticate("SCRAM-SHA-256", ScramClient(user, "not the password"))
    client.logout()

    # Over implicit TLS, SCRAM works the same.
    client = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps_port, ssl_context=unverified(), timeout=15)
    ok(client.authenticate("SCRAM-SHA-256", ScramClient(user, PASSWORD)))
    client.logout()


def test_plaintext_refused_without_tls_when_loopback_is_not_trusted(server_factory) -> None:
    server = server_factory({"auth.allow_plaintext_on_loopback": "false"})
    client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=15)
    assert "LOGINDISABLED" in client.capabilities
    assert "AUTH=PLAIN" not in client.capabilities
    assert "STARTTLS" in client.capabilities
    typ, data = client._simple_command("LOGIN", "alice@example.test", PASSWORD)
    assert typ == "NO" and b"[PRIVACYREQUIRED]" in data[0], (typ, data)
    raw = Raw(server.imap_port)
    token = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode()).decode()
    lines = raw.command(f"AUTHENTICATE PLAIN {token}")
    assert status_of(lines) == b"NO" and b"PRIVACYREQUIRED" in lines[-1], lines
    raw.close()

    ok(client.starttls(unverified()))
    assert "LOGINDISABLED" not in client.capabilities
    assert "AUTH=PLAIN" in client.capabilities
    ok(client.login("alice@example.test", PASSWORD))
    client.logout()
    # SCRAM never reveals the password: allowed without TLS.
    client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=15)
    ok(client.authenticate("SCRAM-SHA-256", ScramClient("alice@example.test", PASSWORD)))
    client.logout()


# ---------------------------------------------------------------- SELECT, FETCH

MULTIPART = (
    "From: Carol <carol@example.test>\r\n"
    "To: Alice <alice@example.test>\r\n"
    "Cc: bob@example.test\r\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Carol\r\n"
    "Date: Tue, 03 Nov 2026 09:30:00 +0100\r\n"
    "Message-ID: <multi@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "preamble\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Caf=C3=A9 ist gut, quokka.\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    + base64.encodebytes("the platypus sings at dawn\r\n".encode()).decode().replace("\n", "\r\n")
    + "--b1\r\n"
    'Content-Type: application/octet-stream; name="data.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="data.bin"\r\n'
    "\r\n"
    + base64.encodebytes(b"\x00\x01binary-wombat\xff").decode().replace("\n", "\r\n")
    + "--b1--\r\n"
).encode()


def _fetch_one(client: imaplib.IMAP4, which: str, items: str, *, uid: bool = False) -> bytes:
    """The whole response to a FETCH of one message, literals inlined."""
    data = ok(client.uid("FETCH", which, items) if uid else client.fetch(which, items))
    out = b""
    for part in data:
        if isinstance(part, tuple):
            out += part[0] + part[1]
        elif part is not None:
            out += part
    return out


def test_select_and_examine(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    for i in range(3):
        append(client, message(f"m{i}"), flags="\\Seen" if i == 0 else "")
    typ, data = client.select("INBOX")
    assert typ == "OK" and data == [b"3"]
    assert client.state == "SELECTED"
    raw = Raw(srv.imap_port)
    raw.login(user)
    lines = raw.command("SELECT INBOX")
    text = b"\r\n".join(lines)
    assert b"* 3 EXISTS" in text
    assert b"* FLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen)" in text
    assert re.search(rb"\* OK \[PERMANENTFLAGS \([^)]*\\\*", text), text
    validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text)
    assert validity
    assert b"[UIDNEXT 4]" in text
    assert b"[UNSEEN 2]" in text         # IMAP4rev1: the first unseen (RFC 3501 §6.3.1)
    assert b"* 0 RECENT" in text         # the imaplib session above claimed them
    assert b"[READ-WRITE]" in lines[-1]

    lines = raw.command("EXAMINE INBOX")
    text = b"\r\n".join(lines)
    assert b"[READ-ONLY]" in lines[-1]
    assert b"[UIDVALIDITY " + validity[1] + b"]" in text
    assert re.search(rb"\[PERMANENTFLAGS \(\)\]", text), text
    lines = raw.command("FETCH 2 BODY[]")
    assert b"\\Seen" not in b"".join(lines)      # EXAMINE never sets \Seen
    assert status_of(raw.command("STORE 2 +FLAGS (\\Flagged)")) == b"NO"
    assert status_of(raw.command("EXPUNGE")) == b"NO"
    lines = raw.command("FETCH 2 FLAGS")
    assert b"\\Seen" not in lines[0] and b"\\Flagged" not in lines[0]

    lines = raw.command("SELECT Nonexistent")
    assert status_of(lines) == b"NO" and b"[NONEXISTENT]" in lines[-1]
    # A failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2).
    assert status_of(raw.command("FETCH 1 FLAGS")) == b"BAD"
    raw.close()
    client.logout()


def test_fetch_items(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    uid = append(client, MULTIPART, date='"03-Nov-2026 09:31:00 +0100"')
    ok(client.select("INBOX"))

    assert _fetch_one(client, "1", "(BODY.PEEK[])").endswith(MULTIPART + b")")
    assert b"\\Seen" not in _fetch_one(client, "1", "(FLAGS)")

    header = _fetch_one(client, "1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert b"BODY[HEADER.FIELDS (SUBJECT)]" in header.upper()
    assert header.endswith(b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from Carol\r\n\r\n)")
    rest = _fetch_one(client, "1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject Date)])")
    assert b"From: Carol" in rest and b"Subject:" not in rest and b"Date:" not in rest

    structure = _fetch_one(client, "1", "(BODYSTRUCTURE)")
    assert b'("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 26 0' in structure
    assert b'"base64"' in structure
    assert b'("attachment" ("filename" "data.bin"))' in structure
    assert b'"mixed" ("boundary" "b1")' in structure
    body = _fetch_one(client, "1", "(BODY)")
    assert b'"mixed")' in body and b"attachment" not in body  # BODY: no extension data

    envelope = _fetch_one(client, "1", "(ENVELOPE)")
    assert (b'ENVELOPE ("Tue, 03 Nov 2026 09:30:00 +0100" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from '
            b'Carol" (("Carol" NIL "carol" "example.test")) (("Carol" NIL "carol" '
            b'"example.test")) (("Carol" NIL "carol" "example.test")) (("Alice" NIL "alice" '
            b'"example.test")) ((NIL NIL "bob" "example.test")) NIL NIL "<multi@example.test>")'
            ) in envelope, envelope

    part1 = _fetch_one(client, "1", "(BODY.PEEK[1])")
    assert part1.endswith(b"Caf=C3=A9 ist gut, quokka.)")
    mime = _fetch_one(client, "1", "(BODY.PEEK[3.MIME])")
    assert b"Content-Disposition: attachment" in mime
    binary = _fetch_one(client, "1", "(BINARY.PEEK[3])")
    assert binary.endswith(b"\x00\x01binary-wombat\xff)"), binary
    text = _fetch_one(client, "1", "(BINARY.PEEK[1])")
    assert "Café ist gut".encode() in text
    assert b"BINARY.SIZE[3] 16" in _fetch_one(client, "1", "(BINARY.SIZE[3])")

    partial = _fetch_one(client, "1", "(BODY.PEEK[]<0.10>)")
    assert b"BODY[]<0> {10}" in partial and partial.endswith(MULTIPART[:10] + b")")
    partial = _fetch_one(client, "1", "(BODY.PEEK[1]<3.3>)")
    assert partial.endswith(b"BODY[1]<3> {3}\r\n=C3)") or partial.endswith(b"=C3)")
    beyond = _fetch_one(client, "1", f"(BODY.PEEK[]<{len(MULTIPART) + 10}.5>)")
    assert b"BODY[]<%d> {0})" % (len(MULTIPART) + 10) in beyond, beyond

    size = _fetch_one(client, "1", "(RFC822.SIZE INTERNALDATE UID)")
    assert f"RFC822.SIZE {len(MULTIPART)}".encode() in size
    assert f"UID {uid}".encode() in size
    date = re.search(rb'INTERNALDATE "([^"]+)"', size)
    assert date
    assert time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + date[1] + b'"')) == \
        time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "03-Nov-2026 09:31:00 +0100"'))
    assert b"HEADER" in _fetch_one(client, str(uid), "(RFC822.HEADER)", uid=True)

    # BODY[] (not PEEK) sets \Seen and says so in the same FETCH (RFC 9051 §6.4.5).
    fetched = _fetch_one(client, "1", "(BODY[1])")
    assert re.search(rb"FLAGS \([^)]*\\Seen", fetched), fetched
    assert b"\\Seen" in _fetch_one(client, "1", "(FLAGS)")

    # Bad FETCH items: BAD, the session goes on.
    typ, data = client._simple_command("FETCH", "1", "(BODY[9])")
    assert typ == "OK"  # a part that does not exist is empty (RFC 9051 §6.4.5)
    with pytest.raises(imaplib.IMAP4.error, match="BAD.*NOSUCHITEM"):
        client.fetch("1", "(NOSUCHITEM)")
    with pytest.raises(imaplib.IMAP4.error, match="BAD.*message number 7"):
        client.fetch("7", "(FLAGS)")      # beyond the mailbox (RFC 9051 §9 seq-number)
    ok(client.noop())
    client.logout()


# ---------------------------------------------------------------- SEARCH

def _search(client: imaplib.IMAP4, *criteria: str, charset: str | None = None,
            literal: bytes | None = None, uid: bool = False) -> list[int]:
    if literal is not None:
        client.literal = literal
    if uid:
        data = ok(client.uid("SEARCH", *([f"CHARSET {charset}"] if charset else []), *criteria))
    else:
        data = ok(client.search(charset, *criteria))
    return [int(n) for n in data[0].split()]


def test_search(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    grusse = message("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Berlin")
    qp = message("plain alpha", "Caf=C3=A9 und quokka\r\n",
                 headers="X-Tag: red\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; "
                 "charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n")
    b64 = message("big one", base64.encodebytes(("the platypus sings\r\n" + "x" * 6000).encode())
                  .decode().replace("\n", "\r\n"),
                  headers="MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                  "Content-Transfer-Encoding: base64\r\n")
    beta = message("beta")
    uids = [
        append(client, grusse, flags="\\Seen", date='"01-Oct-2026 12:00:00 +0000"'),
        append(client, qp, date='"15-Oct-2026 12:00:00 +0000"'),
        append(client, b64, date='"01-Nov-2026 12:00:00 +0000"'),
        append(client, beta, flags="\\Seen \\Flagged", date='"20-Nov-2026 12:00:00 +0000"'),
    ]
    ok(client.select("INBOX"))
    assert _search(client, "ALL") == [1, 2, 3, 4]
    assert _search(client, "UNSEEN") == [2, 3]
    assert _search(client, "SUBJECT", charset="UTF-8", literal="Grüße".encode()) == [1]
    assert _search(client, "SUBJECT", charset="UTF-8", literal="GRÜSSE".encode()) in ([], [1])
    assert _search(client, "SUBJECT", charset="UTF-8", literal="grüße".encode()) == [1]
    assert _search(client, "BODY", "quokka") == [2]
    assert _search(client, "BODY", charset="UTF-8", literal="Café".encode()) == [2]
    assert _search(client, "BODY", "platypus") == [3]
    assert _search(client, "TEXT", "platypus") == [3]
    assert _search(client, "BODY", "Y2Fm") == []        # the encoded form is not the text
    assert _search(client, "HEADER", "X-Tag", "red") == [2]
    assert _search(client, "HEADER", "X-Tag", '""') == [2]
    assert _search(client, "LARGER", "4000") == [3]
    assert _search(client, "SMALLER", "4000") == [1, 2, 4]
    assert _search(client, "SINCE", "01-Nov-2026") == [3, 4]
    assert _search(client, "BEFORE", "15-Oct-2026") == [1]
    assert _search(client, "ON", "15-Oct-2026") == [2]
    assert _search(client, "SENTON", "02-Nov-2026") == [1, 2, 3, 4]
    assert _search(client, "UID", f"{uids[1]}:{uids[2]}") == [2, 3]
    assert _search(client, "UID", f"{uids[2]}:*", uid=True) == uids[2:]
    assert _search(client, "2:*", "SEEN") == [4]
    assert _search(client, "OR", "SUBJECT", "beta", "SUBJECT", "alpha") == [2, 4]
    assert _search(client, "NOT", "SEEN") == [2, 3]
    assert _search(client, "SEEN", "NOT", "FLAGGED") == [1]
    assert _search(client, "(OR FLAGGED HEADER X-Tag red)", "NOT", "SUBJECT", "beta") == [2]
    assert _search(client, "FROM", "carol@example.test") == [1, 2, 3, 4]
    assert _search(client, "SUBJECT", "nothing-like-this") == []
    typ, data = client._simple_command("SEARCH", "CHARSET", "X-NO-SUCH", "ALL")
    assert typ == "NO" and b"[BADCHARSET" in data[0]
    with pytest.raises(imaplib.IMAP4.error, match="BAD.*FROBNICATE"):
        client.search(None, "FROBNICATE")
    ok(client.noop())
    client.logout()


# ---------------------------------------------------------------- STORE, COPY, MOVE

def test_store_flags_and_keywords(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    for i in range(3):
        append(client, message(f"s{i}"))
    client.logout()
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("SELECT INBOX")
    lines = raw.command("STORE 1 +FLAGS (\\Flagged \\Seen)")
    assert lines[0] == b"* 1 FETCH (FLAGS (\\Flagged \\Recent \\Seen))", lines
    lines = raw.command("STORE 1 -FLAGS (\\Seen)")
    assert b"* 1 FETCH" in lines[0] and b"\\Seen" not in lines[0] and b"\\Flagged" in lines[0]
    lines = raw.command("STORE 1 FLAGS (\\Answered $Forwarded)")
    fetch = [line for line in lines if b"FETCH" in line]
    assert len(fetch) == 1 and b"\\Flagged" not in fetch[0], lines
    assert b"\\Answered" in fetch[0] and b"$Forwarded" in fetch[0], lines
    # A new keyword: FLAGS and PERMANENTFLAGS grow, before a FETCH shows it.
    assert lines[0].startswith(b"* FLAGS (") and b"$Forwarded" in lines[0], lines
    assert lines[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$Forwarded" in lines[1], lines
    assert lines[2].startswith(b"* 1 FETCH"), lines
    lines = raw.command("STORE 2:3 +FLAGS.SILENT (\\Deleted Project-X)")
    assert status_of(lines) == b"OK"
    assert not any(b"FETCH" in line for line in lines), lines   # .SILENT: no FETCH
    assert any(line.startswith(b"* FLAGS") and b"Project-X" in line for line in lines), lines
    lines = raw.command("FETCH 1:3 (FLAGS)")
    assert b"$Forwarded" in lines[0] and b"Project-X" in lines[1] and b"\\Deleted" in lines[2]
    lines = raw.command("UID STORE 1:* -FLAGS.SILENT (Project-X)")
    assert status_of(lines) == b"OK" and len(lines) == 1
    lines = raw.command("FETCH 2 (FLAGS)")
    assert b"Project-X" not in lines[0] and b"\\Deleted" in lines[0]
    before = raw.command("FETCH 1 FLAGS")[0]
    # \Recent is the server's to set (RFC 3501 §2.3.2): ignored in a STORE.
    assert status_of(raw.command("STORE 1 +FLAGS.SILENT (\\Recent)")) == b"OK"
    lines = raw.command("STORE 1 +FLAGS (\\Bogus)")
    assert status_of(lines) == b"BAD" and b"\\Bogus" in lines[-1], lines
    assert raw.command("FETCH 1 FLAGS")[0] == before
    raw.close()


def test_copy_move_and_uid_expunge(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    uids = [append(client, message(f"c{i}")) for i in range(5)]
    client.logout()
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("SELECT INBOX")
    lines = raw.command("STATUS Archive (UIDVALIDITY)")
    archive_validity = re.search(rb"UIDVALIDITY (\d+)", lines[0])
    assert archive_validity, lines
    lines = raw.command("COPY 1:2 Archive")
    assert re.search(rb"OK \[COPYUID %s %d:%d 1:2\]" % (archive_validity[1], uids[0], uids[1]),
                     lines[-1]), lines
    lines = raw.command("COPY 1 NoSuchBox")
    assert status_of(lines) == b"NO" and b"[TRYCREATE]" in lines[-1]

    lines = raw.command(f"UID MOVE {uids[2]} Trash")
    assert status_of(lines) == b"OK"
    assert any(line.startswith(b"* OK [COPYUID ") for line in lines), lines
    assert b"* 3 EXPUNGE" in lines
    lines = raw.command("MOVE 1 Archive")   # message 1 is now uids[0]
    assert b"* 1 EXPUNGE" in lines
    assert b"[COPYUID %s %d 3]" % (archive_validity[1], uids[0]) in b"".join(lines), lines
    assert b"MESSAGES 3" in raw.command("STATUS Archive (MESSAGES)")[0]
    assert b"MESSAGES 1" in raw.command("STATUS Trash (MESSAGES)")[0]

    # INBOX now holds uids[1], uids[3], uids[4]; delete all three, UID EXPUNGE one.
    raw.command("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    lines = raw.command(f"UID EXPUNGE {uids[3]}")
    # The expunged message was \Recent here (IMAP4rev1): the new count follows.
    assert lines[:-1] == [b"* 2 EXPUNGE", b"* 2 RECENT"], lines
    lines = raw.command("UID SEARCH DELETED")
    assert lines[0] == b"* SEARCH %d %d" % (uids[1], uids[4])
    lines = raw.command("EXPUNGE")
    assert lines[:-1] == [b"* 2 EXPUNGE", b"* 1 EXPUNGE", b"* 0 RECENT"], lines
    assert b"* SEARCH" == raw.command("SEARCH ALL")[0].rstrip()
    raw.close()


# ---------------------------------------------------------------- APPEND

def test_append_flags_date_multiappend(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    status = ok(client.status("INBOX", "(UIDVALIDITY UIDNEXT)"))[0]
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status)[1])  # type: ignore[index]
    typ, data = client.append("INBOX", "(\\Seen \\Draft $Label1)", '"05-Oct-2026 12:00:00 +0200"',
                              message("appended"))
    assert typ == "OK" and data[0].startswith(b"[APPENDUID %d 1]" % validity)
    ok(client.select("INBOX"))
    fetched = _fetch_one(client, "1", "(FLAGS INTERNALDATE)")
    assert b"\\Seen" in fetched and b"\\Draft" in fetched and b"$Label1" in fetched
    date = re.search(rb'INTERNALDATE "[^"]+"', fetched)
    assert date and time.mktime(imaplib.Internaldate2tuple(date[0])) == time.mktime(
        imaplib.Internaldate2tuple(b'INTERNALDATE "05-Oct-2026 12:00:00 +0200"'))
    client.logout()

    raw = Raw(srv.imap_port)
    raw.login(user)
    one, two = message("multi one"), message("multi two")
    # MULTIAPPEND (RFC 3502) with LITERAL+: one command, two messages.
    raw.send(b"m1 APPEND INBOX (\\Flagged) {%d+}\r\n%s (\\Seen) {%d+}\r\n%s\r\n"
             % (len(one), one, len(two), two))
    lines = raw.until("m1")
    assert re.search(rb"m1 OK \[APPENDUID %d 2:3\]" % validity, lines[-1]), lines
    # Synchronizing literals: wait for each "+".
    raw.send(b"m2 APPEND Archive {%d}\r\n" % len(one))
    assert raw.line().startswith(b"+")
    raw.send(one + b' "06-Oct-2026 08:00:00 +0000" {%d}\r\n' % len(two))
    assert raw.line().startswith(b"+")
    raw.send(two + b"\r\n")
    lines = raw.until("m2")
    assert re.search(rb"m2 OK \[APPENDUID \d+ 1:2\]", lines[-1]), lines
    # MULTIAPPEND is atomic: one bad message and nothing is stored.
    raw.send(b"m3 APPEND INBOX {%d+}\r\n%s (\\Bogus) {%d+}\r\n%s\r\n"
             % (len(one), one, len(two), two))
    lines = raw.until("m3")
    assert lines[-1].split()[1] in (b"BAD", b"NO"), lines
    assert b"MESSAGES 3" in raw.command("STATUS INBOX (MESSAGES)")[0]
    lines = raw.command('APPEND "No Such" {5+}\r\nHello')
    assert status_of(lines) == b"NO" and b"[TRYCREATE]" in lines[-1], lines
    raw.command("SELECT INBOX")
    lines = raw.command("FETCH 2:3 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"\\Flagged" in lines[0] and b"multi one" in lines[0]
    assert b"\\Seen" in lines[1] and b"multi two" in lines[1]
    raw.close()


def test_append_over_quota(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    append(client, message("fits", "x" * 1000))
    # The administrator sets the quota beside the running server.
    subprocess.run([sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={srv.data_dir}",
                    "user", "quota", user, "--storage", "3000"], check=True,
                   capture_output=True, timeout=60)
    typ, data = client.append("INBOX", None, None, message("too big", "y" * 3000))
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
    lines = _quota(client)
    assert re.search(rb'"" \(STORAGE 2 2\)', lines), lines   # in KiB (RFC 9208 §5.1)
    append(client, message("still fits", "z" * 800))
    ok(client.select("INBOX"))
    typ, data = client.copy("1:2", "Archive")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
    # A MOVE within the account uses no more space: allowed at the limit, so that
    # a user over quota can still move mail to the Trash and expunge it.
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("SELECT INBOX")
    lines = raw.command("MOVE 1 Trash")
    assert status_of(lines) == b"OK", lines
    raw.close()
    # MULTIAPPEND over the quota stores none of its messages (RFC 3502 §6.3.11).
    raw = Raw(srv.imap_port)
    raw.login(user)
    one, two = message("multi a", "m" * 400), message("multi b", "n" * 400)
    lines = raw.command(b"APPEND Archive {%d+}\r\n%s {%d+}\r\n%s" % (len(one), one, len(two),
                                                                       two))
    assert status_of(lines) == b"NO" and b"[OVERQUOTA]" in lines[-1], lines
    assert raw.command("STATUS Archive (MESSAGES)")[0].endswith(b"(MESSAGES 0)")
    raw.close()
    sql(srv, "UPDATE accounts SET quota_storage = NULL, quota_messages = 2 WHERE address = ?",
        (user,))
    typ, data = client.append("INBOX", None, None, message("one too many"))
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
    client.logout()


def sql(server: Server, statement: str, args: tuple = ()) -> None:
    """Change the store beside the running server (an administrator's UPDATE)."""
    conn = sqlite3.connect(server.db, timeout=30)
    try:
        with conn:
            conn.execute(statement, args)
    finally:
        conn.close()


def _quota(client: imaplib.IMAP4) -> bytes:
    typ, data = client.getquotaroot("INBOX")
    assert typ == "OK", data
    flat = b""
    for part in data:
        for item in part if isinstance(part, list) else [part]:
            flat += (item if isinstance(item, bytes) else b"") + b"\n"
    return b"QUOTA " + flat


def test_getquotaroot_reports_usage_and_limits(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("APPEND INBOX {%d+}\r\n%s" % (2048, "a" * 2048))
    lines = raw.command("GETQUOTAROOT INBOX")
    assert lines[0] == b'* QUOTAROOT INBOX ""', lines
    assert status_of(lines) == b"OK"
    sql(srv, "UPDATE accounts SET quota_storage = 10240, quota_messages = 100 WHERE address = ?",
        (user,))
    lines = raw.command("GETQUOTAROOT INBOX")
    quota = [line for line in lines if line.startswith(b"* QUOTA ")]
    # RFC 9208 §5.1: STORAGE in units of 1024 octets.
    assert quota and b"STORAGE 2 10" in quota[0] and b"MESSAGE 1 100" in quota[0], lines
    assert status_of(raw.command('GETQUOTA ""')) == b"OK"
    assert status_of(raw.command('SETQUOTA "" (STORAGE 1)')) == b"NO"
    raw.close()


# ---------------------------------------------------------------- mailboxes

def _names(client: imaplib.IMAP4, pattern: str = "*") -> dict[str, bytes]:
    out = {}
    for line in ok(client.list('""', pattern)):
        m = re.match(rb'\(([^)]*)\) (?:"/"|NIL) "?(.*?)"?$', line)
        assert m, line
        out[m[2].decode()] = m[1]
    return out


def test_create_delete_rename(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    ok(client.create("Projects/2026/Q1"))     # superiors created as needed (RFC 9051 §6.3.4)
    names = _names(client)
    assert {"Projects", "Projects/2026", "Projects/2026/Q1"} <= set(names)
    # The superiors are names only (\Noselect) until created themselves.
    assert b"\\HasChildren" in names["Projects"] and b"\\Noselect" in names["Projects"]
    assert b"\\HasNoChildren" in names["Projects/2026/Q1"]
    typ, data = client.select("Projects")
    assert typ == "NO"
    ok(client.create("Projects"))
    assert b"\\Noselect" not in _names(client)["Projects"]
    typ, data = client.create("Projects")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = client.create("inbox")
    assert typ == "NO"
    append(client, message("in a project"), mailbox="Projects/2026/Q1")

    ok(client.rename("Projects", "Work"))       # children move with it
    names = _names(client)
    assert {"Work", "Work/2026", "Work/2026/Q1"} <= set(names)
    assert not any(n.startswith("Projects") for n in names)
    assert b"MESSAGES 1" in ok(client.status("Work/2026/Q1", "(MESSAGES)"))[0]
    typ, data = client.rename("Work", "Archive")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = client.rename("Nothing", "Other")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]

    # Renaming INBOX moves its messages and leaves it empty (RFC 9051 §6.3.6).
    append(client, message("inbox one"))
    append(client, message("inbox two"))
    ok(client.create("INBOX/Sub"))
    ok(client.rename("INBOX", '"Old Inbox"'))
    names = _names(client)     # INBOX's children stay where they are (RFC 9051 §6.3.6)
    assert "INBOX/Sub" in names and "Old Inbox/Sub" not in names, names
    typ, data = client.rename("Work", "Work/Inside")
    assert typ == "NO", data   # not into itself
    assert b"MESSAGES 2" in ok(client.status('"Old Inbox"', "(MESSAGES)"))[0]
    assert b"MESSAGES 0" in ok(client.status("INBOX", "(MESSAGES)"))[0]
    ok(client.select("INBOX"))
    append(client, message("new inbox mail"))
    ok(client.close())

    # Mailbox names outside ASCII: modified UTF-7 (RFC 3501 §5.1.3).
    ok(client.create("Entw&APw-rfe"))
    assert "Entw&APw-rfe" in _names(client)
    # Not modified UTF-7: taken literally (as Dovecot does) and listed encoded.
    ok(client.create("Bad&Name"))
    assert "Bad&-Name" in _names(client)
    ok(client.select('"Bad&-Name"'))
    ok(client.close())

    typ, data = client.delete("INBOX")
    assert typ == "NO"
    typ, data = client.delete("Nothing")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    typ, data = client.delete("Work")      # it has a child (RFC 9051 §7.1 HASCHILDREN)
    assert typ == "NO" and b"[HASCHILDREN]" in data[0], data
    ok(client.delete("Work/2026/Q1"))      # Work/2026 was only a name: gone with it
    assert "Work/2026" not in _names(client)
    ok(client.delete("Work"))
    assert not any(n.startswith("Work") for n in _names(client))
    client.logout()


def test_subscribe_lsub_list_extended_special_use(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("CREATE Lists")
    raw.command("CREATE Lists/python")
    assert status_of(raw.command("UNSUBSCRIBE Lists")) == b"OK"
    assert status_of(raw.command("SUBSCRIBE Lists/python")) == b"OK"
    lsub = raw.command('LSUB "" *')
    names = {line.rsplit(b" ", 1)[-1].strip(b'"') for line in lsub[:-1]}
    assert b"Lists/python" in names and b"Lists" not in names and b"INBOX" in names
    subscribed = raw.command('LIST (SUBSCRIBED) "" *')
    assert all(b"\\Subscribed" in line for line in subscribed[:-1])
    assert any(line.endswith(b"Lists/python") or line.endswith(b'"Lists/python"')
               for line in subscribed), subscribed
    # RECURSIVEMATCH: Lists has a subscribed child though it is not subscribed itself.
    recursive = raw.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert any(b"CHILDINFO" in line and b"SUBSCRIBED" in line for line in recursive), recursive
    # A subscribed mailbox that is deleted stays subscribed (RFC 9051 §6.3.9) and
    # LIST (SUBSCRIBED) shows it \NonExistent (RFC 5258 §3.4).
    raw.command("CREATE Ghost")
    assert status_of(raw.command("SUBSCRIBE Ghost")) == b"OK"
    assert status_of(raw.command("DELETE Ghost")) == b"OK"
    ghost = raw.command('LIST (SUBSCRIBED) "" Ghost')
    assert b"\\NonExistent" in ghost[0] and b"\\Subscribed" in ghost[0], ghost

    # LIST-STATUS (RFC 5819).
    raw.command("APPEND Lists/python {5+}\r\nHello")
    lines = raw.command('LIST "" "Lists/*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    status = [line for line in lines if line.startswith(b"* STATUS")]
    assert status and b"MESSAGES 1" in status[0] and b"UNSEEN 1" in status[0], lines
    assert b"SIZE 5" in status[0]

    # SPECIAL-USE (RFC 6154): the five well-known mailboxes are found by their use.
    lines = raw.command('LIST (SPECIAL-USE) "" *')
    uses = {}
    for line in lines[:-1]:
        m = re.match(rb'\* LIST \(([^)]*)\) "/" "?([^"]*)"?$', line)
        assert m, line
        flags = {f for f in m[1].split() if f in
                 {b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive", b"\\All",
                  b"\\Flagged"}}
        assert flags, line
        uses[flags.pop()] = m[2]
    assert uses == {b"\\Sent": b"Sent", b"\\Drafts": b"Drafts", b"\\Trash": b"Trash",
                    b"\\Junk": b"Junk", b"\\Archive": b"Archive"}, uses
    lines = raw.command('LIST "" % RETURN (SPECIAL-USE CHILDREN)')
    assert any(b"\\Sent" in line for line in lines)
    # CREATE-SPECIAL-USE (RFC 6154 §3).
    lines = raw.command("CREATE Outbox2 (USE (\\Sent))")
    assert status_of(lines) == b"NO" and b"[USEATTR]" in lines[-1], lines  # Sent has it
    assert status_of(raw.command("DELETE Archive")) == b"OK"
    assert status_of(raw.command('CREATE "Old Mail" (USE (\\Archive))')) == b"OK"
    assert b"\\Archive" in raw.command('LIST "" "Old Mail"')[0]
    lines = raw.command("CREATE Bogus (USE (\\Nonsense))")
    assert status_of(lines) == b"NO" and b"USEATTR" in lines[-1], lines
    # Patterns: % stops at the hierarchy delimiter.
    top = raw.command('LIST "" %')
    assert not any(b"Lists/python" in line for line in top)
    assert raw.command('LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""'
    raw.close()


def test_namespace_status_id(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    lines = raw.command("NAMESPACE")
    assert lines[0] == b'* NAMESPACE (("" "/")) NIL NIL', lines
    raw.command("APPEND INBOX (\\Seen) {5+}\r\nHello")
    raw.command("APPEND INBOX (\\Deleted) {6+}\r\nHello!")
    lines = raw.command("STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT SIZE "
                        "HIGHESTMODSEQ DELETED APPENDLIMIT)")
    assert status_of(lines) == b"OK", lines
    line = lines[0]
    for item in (b"MESSAGES 2", b"UNSEEN 1", b"UIDNEXT 3", b"SIZE 11", b"DELETED 1",
                 b"APPENDLIMIT 52428800"):
        assert item in line, (item, line)
    assert re.search(rb"HIGHESTMODSEQ \d+", line) and re.search(rb"UIDVALIDITY \d+", line)
    assert status_of(raw.command("STATUS Nothing (MESSAGES)")) == b"NO"
    assert status_of(raw.command("STATUS INBOX (FROBS)")) == b"BAD"

    lines = raw.command('ID ("name" "pytest" "version" "1")')
    assert lines[0].startswith(b'* ID ("name" "Pillarbox"'), lines
    assert status_of(raw.command("ID NIL")) == b"OK"
    raw.close()
    raw = Raw(srv.imap_port)     # ID before login (RFC 2971 §3.1)
    assert raw.command("ID NIL")[0].startswith(b"* ID (")
    raw.close()


# ---------------------------------------------------------------- CONDSTORE, QRESYNC

def _modseqs(lines: list[bytes]) -> dict[int, int]:
    """MODSEQ by UID (or by sequence number where a FETCH has no UID)."""
    out = {}
    for line in lines:
        fetch = re.match(rb"\* (\d+) FETCH ", line)
        modseq = re.search(rb"MODSEQ \((\d+)\)", line)
        if fetch and modseq:
            uid = re.search(rb"[( ]UID (\d+)", line)
            out[int(uid[1] if uid else fetch[1])] = int(modseq[1])
    return out


def test_condstore_and_qresync(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    for i in range(5):
        raw.command("APPEND INBOX {4+}\r\nmsg%d" % i)
    lines = raw.command("ENABLE QRESYNC")
    assert lines[0].startswith(b"* ENABLED") and b"QRESYNC" in lines[0], lines
    lines = raw.command("SELECT INBOX")
    text = b"\r\n".join(lines)
    validity = int(re.search(rb"UIDVALIDITY (\d+)", text)[1])  # type: ignore[index]
    h0 = int(re.search(rb"HIGHESTMODSEQ (\d+)", text)[1])  # type: ignore[index]

    lines = raw.command("STORE 1 +FLAGS (\\Flagged)")
    assert re.match(rb"\* 1 FETCH \(UID 1 FLAGS \([^)]*\) MODSEQ \(\d+\)\)$", lines[0]), lines
    changed = _modseqs(lines)
    assert list(changed) == [1] and changed[1] > h0, lines
    lines = raw.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})")
    assert len(lines) == 2 and lines[0].startswith(b"* 1 FETCH") and b"MODSEQ" in lines[0], lines
    lines = raw.command("FETCH 2 (MODSEQ)")
    m2 = _modseqs(lines)[2]
    # UNCHANGEDSINCE (RFC 7162 §3.1.3): message 2 changed after modseq 1 → MODIFIED.
    lines = raw.command(f"STORE 2,3 (UNCHANGEDSINCE {m2 - 1}) +FLAGS (\\Seen)")
    assert b"[MODIFIED 2:3]" in lines[-1], lines
    lines = raw.command(f"STORE 2 (UNCHANGEDSINCE {m2}) +FLAGS (\\Seen)")
    assert status_of(lines) == b"OK" and b"MODIFIED" not in lines[-1], lines
    lines = raw.command(f"SEARCH MODSEQ {h0 + 1}")
    assert lines[0].startswith(b"* SEARCH 1 2") and b"(MODSEQ " in lines[0], lines

    # An expunge under QRESYNC is VANISHED, never EXPUNGE (RFC 7162 §3.2.10).
    raw.command("STORE 3 +FLAGS.SILENT (\\Deleted)")
    lines = raw.command("EXPUNGE")
    assert b"* VANISHED 3" in lines and not any(b"EXPUNGE" in line for line in lines[:-1]), lines
    lines = raw.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 3", lines
    assert {1, 2} <= set(_modseqs(lines)), lines
    lines = raw.command("STATUS INBOX (HIGHESTMODSEQ)")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0])[1])  # type: ignore[index]
    raw.command("CLOSE")

    # Another session resynchronises from h0 with one SELECT (RFC 7162 §3.2.5).
    other = Raw(srv.imap_port)
    other.login(user)
    other.command("ENABLE QRESYNC")
    lines = other.command(f"SELECT INBOX (QRESYNC ({validity} {h0} 1:5))")
    text = b"\r\n".join(lines)
    assert b"* VANISHED (EARLIER) 3" in lines, lines
    assert set(_modseqs(lines)) == {1, 2}, lines
    assert b"[HIGHESTMODSEQ %d]" % highest in text
    # With seq-match-data (RFC 7162 §3.2.5.2): the same answer.
    other.command("UNSELECT")
    lines = other.command(f"SELECT INBOX (QRESYNC ({validity} {h0} 1:5 (1,4 1,4)))")
    assert b"* VANISHED (EARLIER) 3" in lines and set(_modseqs(lines)) == {1, 2}, lines
    # Up to date: nothing to report.
    other.command("UNSELECT")
    lines = other.command(f"SELECT INBOX (QRESYNC ({validity} {highest}))")
    assert not any(b"VANISHED" in line or b"FETCH" in line for line in lines), lines
    # A wrong UIDVALIDITY: a plain SELECT (the client starts over).
    other.command("UNSELECT")
    lines = other.command(f"SELECT INBOX (QRESYNC ({validity + 1} {h0}))")
    assert status_of(lines) == b"OK" and not any(b"VANISHED" in line for line in lines)
    other.close()

    # QRESYNC without ENABLE is refused (RFC 7162 §3.2.5).
    third = Raw(srv.imap_port)
    third.login(user)
    assert status_of(third.command(f"SELECT INBOX (QRESYNC ({validity} {h0}))")) == b"BAD"
    # CONDSTORE through a SELECT parameter.
    lines = third.command("SELECT INBOX (CONDSTORE)")
    assert status_of(lines) == b"OK" and b"HIGHESTMODSEQ" in b"".join(lines)
    # CONDSTORE on: a STORE's FETCH carries UID and MODSEQ (RFC 7162 §3.1).
    line = third.command("STORE 1 +FLAGS (\\Answered)")[0]
    assert re.match(rb"\* 1 FETCH \(UID 1 FLAGS \([^)]*\) MODSEQ \(\d+\)\)$", line), line
    third.close()
    raw.close()


# ---------------------------------------------------------------- ESEARCH, SORT, THREAD

def test_esearch_and_searchres(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    for i, subject in enumerate(["apple", "banana", "apple pie", "cherry"]):
        data = message(subject).decode()
        flags = "(\\Seen) " if i % 2 else ""
        raw.command(f"APPEND INBOX {flags}{{{len(data)}+}}\r\n{data}")
    raw.command("SELECT INBOX")
    lines = raw.command("SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT apple")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) MIN 1 MAX 3 COUNT 2 ALL 1,3$', lines[0]), lines
    lines = raw.command("UID SEARCH RETURN (COUNT) ALL")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) UID COUNT 4$', lines[0]), lines
    lines = raw.command("SEARCH RETURN () UNSEEN")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) ALL 1,3$', lines[0]), lines
    lines = raw.command("SEARCH RETURN (MIN) SUBJECT durian")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\)$', lines[0]), lines
    # SEARCHRES (RFC 5182): SAVE, then $ in FETCH, STORE and SEARCH.
    lines = raw.command("SEARCH RETURN (SAVE) SUBJECT apple")
    assert not any(line.startswith(b"* ESEARCH") or line.startswith(b"* SEARCH")
                   for line in lines[:-1]), lines
    lines = raw.command("FETCH $ (UID)")
    assert [line.split()[1] for line in lines[:-1]] == [b"1", b"3"], lines
    raw.command("STORE $ +FLAGS.SILENT (\\Flagged)")
    assert raw.command("SEARCH FLAGGED")[0] == b"* SEARCH 1 3"
    assert raw.command("SEARCH NOT $")[0] == b"* SEARCH 2 4"
    lines = raw.command("SEARCH RETURN (SAVE MIN) SUBJECT banana")
    assert lines[0].endswith(b"MIN 2"), lines
    assert raw.command("UID SEARCH $")[0] == b"* SEARCH 2"
    raw.close()


def test_sort_and_thread(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    msgs = [
        ("Re: Zebra", "Tue, 03 Nov 2026 10:00:00 +0000", "<a@x>", "", "zoe@example.test"),
        ("apple", "Mon, 02 Nov 2026 10:00:00 +0000", "<b@x>", "", "bob@example.test"),
        ("Zebra", "Sun, 01 Nov 2026 10:00:00 +0000", "<c@x>", "", "amy@example.test"),
        ("Re: apple", "Wed, 04 Nov 2026 10:00:00 +0000", "<d@x>", "<b@x>", "carl@example.test"),
        ("Re: Re: apple", "Thu, 05 Nov 2026 10:00:00 +0000", "<e@x>", "<b@x> <d@x>",
         "dan@example.test"),
    ]
    for subject, date, mid, refs, sender in msgs:
        data = (f"From: {sender}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {mid}\r\n"
                + (f"References: {refs}\r\n" if refs else "") + "\r\nbody\r\n")
        raw.command(f"APPEND INBOX {{{len(data)}+}}\r\n{data}")
    raw.command("SELECT INBOX")
    # Equal base subjects: by sequence number (RFC 5256 §3).
    assert raw.command("SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 2 4 5 1 3"
    assert raw.command("SORT (DATE) UTF-8 ALL")[0] == b"* SORT 3 2 1 4 5"
    assert raw.command("SORT (REVERSE DATE) UTF-8 ALL")[0] == b"* SORT 5 4 1 2 3"
    assert raw.command("SORT (FROM) UTF-8 ALL")[0] == b"* SORT 3 2 4 5 1"
    assert raw.command("SORT (ARRIVAL) UTF-8 SUBJECT apple")[0] == b"* SORT 2 4 5"
    assert raw.command("UID SORT (REVERSE ARRIVAL) UTF-8 ALL")[0] == b"* SORT 5 4 3 2 1"
    lines = raw.command("SORT RETURN (MIN MAX) (DATE) UTF-8 ALL")   # ESORT (RFC 5267)
    assert lines[0].endswith(b"MIN 3 MAX 5"), lines
    # REFERENCES: 2 → 4 → 5 by References; 1 joins 3 by its base subject (RFC 5256 §4).
    assert raw.command("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (3 1)(2 4 5)"
    # ORDEREDSUBJECT: the first message is the parent of all the others.
    assert raw.command("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (3 1)(2 (4)(5))"
    assert status_of(raw.command("SORT (NOSUCHKEY) UTF-8 ALL")) == b"BAD"
    lines = raw.command("THREAD NOSUCH UTF-8 ALL")
    assert status_of(lines) in (b"NO", b"BAD") and b"NOSUCH" in lines[-1].upper(), lines
    raw.close()


# ---------------------------------------------------------------- COMPRESS, IDLE

def test_compress_deflate(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    assert b"COMPRESS=DEFLATE" in raw.command("CAPABILITY")[0]
    body = message("compressed", "words " * 2000)
    raw.command(b"APPEND INBOX {%d+}\r\n%s" % (len(body), body))
    lines = raw.command("COMPRESS DEFLATE")
    assert status_of(lines) == b"OK", lines
    raw.start_compression()
    lines = raw.command("SELECT INBOX")
    assert b"* 1 EXISTS" in lines, lines
    lines = raw.command("FETCH 1 BODY.PEEK[]")
    assert lines[0].endswith(body + b")"), lines[0][:200]
    assert b"COMPRESS=DEFLATE" not in raw.command("CAPABILITY")[0]
    lines = raw.command("COMPRESS DEFLATE")
    assert status_of(lines) == b"NO" and b"[COMPRESSIONACTIVE]" in lines[-1], lines
    assert status_of(raw.command("LOGOUT")) == b"OK"
    raw.close()


def test_idle_sees_appends_expunges_and_flags_at_once(srv: Server) -> None:
    user = new_account(srv)
    writer = login(srv, user)
    append(writer, message("before"))
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("SELECT INBOX")
    raw.send(b"i1 IDLE\r\n")
    assert raw.line().startswith(b"+ ")

    start = time.monotonic()
    append(writer, message("during idle"))
    assert raw.line() == b"* 2 EXISTS"
    assert time.monotonic() - start < 1.0
    line = raw.line()
    if line == b"* 1 RECENT" or line.endswith(b"RECENT"):
        pass
    ok(writer.select("INBOX"))
    start = time.monotonic()
    ok(writer.store("1", "+FLAGS", "(\\Flagged)"))
    line = raw.line()
    while line.endswith(b"RECENT"):
        line = raw.line()
    assert line.startswith(b"* 1 FETCH (") and b"\\Flagged" in line, line
    assert time.monotonic() - start < 1.0
    ok(writer.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
    line = raw.line()
    assert line.startswith(b"* 1 FETCH (") and b"\\Deleted" in line, line
    ok(writer.expunge())
    assert raw.line() == b"* 1 EXPUNGE"
    raw.send(b"DONE\r\n")
    lines = raw.until("i1")
    assert lines[-1].startswith(b"i1 OK"), lines
    lines = raw.command("FETCH 1:* (UID)")
    assert len(lines) == 2, lines      # only "during idle" is left
    # IDLE in the authenticated state is allowed too (no mailbox: nothing to say).
    raw.command("UNSELECT")
    raw.send(b"i2 IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"DONE\r\n")
    assert raw.until("i2")[-1].startswith(b"i2 OK")
    raw.close()
    writer.logout()


# ---------------------------------------------------------------- pipelining, TLS, rev2

def test_pipelined_commands_are_answered_in_order(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.send(b"p1 NOOP\r\np2 LOGIN " + user.encode() + b" secret\r\np3 SELECT INBOX\r\n"
             b"p4 APPEND INBOX {5+}\r\nHello\r\np5 FETCH 1 (UID BODY.PEEK[])\r\n"
             b"p6 STORE 1 +FLAGS (\\Seen)\r\np7 SEARCH SEEN\r\np8 LOGOUT\r\n")
    seen = []
    while True:
        line = raw.response()
        if not line:
            break
        if not line.startswith(b"* ") and not line.startswith(b"+"):
            seen.append(line.split(b" ", 2)[:2])
        if line.startswith(b"* SEARCH"):
            assert line == b"* SEARCH 1"
        if b"BODY[]" in line:
            assert line == b"* 1 FETCH (UID 1 BODY[] {5}\r\nHello)", line
    assert seen == [[b"p%d" % n, b"OK"] for n in range(1, 9)], seen


def test_starttls_drops_what_was_pipelined_behind_it(srv: Server) -> None:
    raw = Raw(srv.imap_port)
    # CVE-2011-0411: a command sent before the handshake must not run under TLS.
    raw.send(b"s1 STARTTLS\r\ns2 LOGIN alice@example.test secret\r\n")
    assert raw.line().startswith(b"s1 OK")
    raw.sock = unverified().wrap_socket(raw.sock, server_hostname="localhost")
    lines = raw.command("CAPABILITY", "s3")
    assert lines[-1].startswith(b"s3 OK") and len(lines) == 2, lines   # no s2 answer
    assert b"STARTTLS" not in lines[0] and b"AUTH=PLAIN" in lines[0]
    assert status_of(raw.command("STARTTLS")) == b"BAD"            # already under TLS
    lines = raw.command("SELECT INBOX")
    assert status_of(lines) == b"BAD" and b"log in first" in lines[-1]   # s2 never ran
    raw.close()


def test_authenticate_cancel_and_garbage(srv: Server) -> None:
    raw = Raw(srv.imap_port)
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"*\r\n")                          # RFC 9051 §6.2.2: the client cancels
    assert raw.line().startswith(b"a1 BAD")
    raw.send(b"a2 AUTHENTICATE PLAIN\r\n")
    assert raw.line().startswith(b"+")
    raw.send(b"!!!not base64!!!\r\n")
    line = raw.line()
    assert line.startswith(b"a2 BAD") and b"base64" in line, line
    lines = raw.command("AUTHENTICATE CRAM-MD5")
    assert status_of(lines) == b"NO", lines
    assert status_of(raw.command("NOOP")) == b"OK"
    raw.close()


def test_compress_with_a_command_in_the_same_packet(srv: Server) -> None:
    import zlib

    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    behind = deflate.compress(b"c2 SELECT INBOX\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
    raw.send(b"c1 COMPRESS DEFLATE\r\n" + behind)     # RFC 4978 §3: compressed from here
    assert raw.line().startswith(b"c1 OK")
    raw.start_compression()
    raw._deflate = deflate
    assert raw.until("c2")[-1].startswith(b"c2 OK [READ-WRITE]")
    raw.close()


def test_deleting_the_selected_mailbox_elsewhere_ends_that_session(srv: Server) -> None:
    user = new_account(srv)
    a = Raw(srv.imap_port)
    a.login(user)
    a.command("CREATE Doomed")
    a.command("APPEND Doomed {5+}\r\nHello")
    assert status_of(a.command("SELECT Doomed")) == b"OK"
    b = Raw(srv.imap_port)
    b.login(user)
    assert status_of(b.command("RENAME Doomed Renamed")) == b"OK"
    assert status_of(a.command("NOOP")) == b"OK"           # a rename is harmless
    assert a.command("FETCH 1 (UID)")[0] == b"* 1 FETCH (UID 1)"
    assert status_of(b.command("DELETE Renamed")) == b"OK"
    a.send(b"n1 NOOP\r\n")
    line = a.line()
    assert line.startswith(b"* BYE") and b"deleted" in line, line
    assert a.closed()
    b.close()


def test_imap4rev2_enabled(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    assert raw.command("ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
    raw.command("APPEND INBOX {5+}\r\nHello")
    assert status_of(raw.command('CREATE "Entwürfe"'.encode())) == b"OK"   # UTF-8 (§5.1)
    lines = raw.command('LIST "" *')
    assert any("Entwürfe".encode() in line for line in lines), lines   # UTF-8, no mUTF-7
    lines = raw.command("SELECT INBOX")
    assert not any(b"RECENT" in line for line in lines), lines        # gone in rev2
    assert lines[-1].startswith(b"t") and b"OK" in lines[-1]
    lines = raw.command("SEARCH ALL")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) ALL 1$', lines[0]), lines   # §6.4.4
    lines = raw.command("FETCH 1 (FLAGS)")
    assert lines[0] == b"* 1 FETCH (FLAGS ())", lines
    raw.close()


def test_append_utf8_data_extension(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("ENABLE UTF8=ACCEPT")
    body = "Subject: Grüße\r\n\r\nUTF-8 header.\r\n".encode()
    raw.send(b"u1 APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(body), body))
    lines = raw.until("u1")
    assert lines[-1].startswith(b"u1 OK [APPENDUID"), lines
    raw.close()


def test_close_unselect_and_examine_expunge_rules(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    for i in range(4):
        raw.command("APPEND INBOX (\\Deleted) {5+}\r\nmsg %d" % i if i < 2 else
                    "APPEND INBOX {5+}\r\nmsg %d" % i)
    raw.command("EXAMINE INBOX")
    assert status_of(raw.command("CLOSE")) == b"OK"          # read-only: nothing expunged
    assert raw.command("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 4)")
    raw.command("SELECT INBOX")
    lines = raw.command("UNSELECT")   # RFC 3691: leaves, never expunges
    assert len(lines) == 1 and status_of(lines) == b"OK", lines
    assert raw.command("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 4)")
    raw.command("SELECT INBOX")
    lines = raw.command("CLOSE")      # RFC 9051 §6.4.1: expunges, and says nothing
    assert len(lines) == 1 and status_of(lines) == b"OK", lines
    assert raw.command("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 2)")
    assert status_of(raw.command("FETCH 1 FLAGS")) == b"BAD"   # no mailbox selected
    # Charsets other than UTF-8 in SEARCH (RFC 9051 §6.4.4: US-ASCII and UTF-8 at least).
    raw.command("SELECT INBOX")
    lines = raw.command("SEARCH CHARSET US-ASCII TEXT msg")
    assert lines[0] == b"* SEARCH 1 2", lines
    raw.close()
