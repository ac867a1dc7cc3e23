"""The IMAP command parser (``pillarbox.protocols.imap.parser``), command by command.

Most cases come from the examples of RFC 9051 §6 and of the extension RFCs;
each is one command as the core frames it (literals inline, no final CRLF).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap.parser import COMMANDS, ParseError, parse_command, parse_head

SS = c.SequenceSet
K = c.SearchKey
F = c.FetchAttr


def seq(*ranges: tuple[int | None, int | None]) -> c.SequenceSet:
    return c.SequenceSet(tuple(ranges))


def p(data: bytes, utf8: bool = False) -> c.Command:
    return parse_command(data, utf8=utf8)


def err(data: bytes, utf8: bool = False) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_command(data, utf8=utf8)
    return info.value


# ------------------------------------------------------------------ simple ones

@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a CAPABILITY", c.Capability("a")),
        (b"a capability", c.Capability("a")),
        (b"a NOOP", c.Noop("a")),
        (b"a CHECK", c.Check("a")),
        (b"a LOGOUT", c.Logout("a")),
        (b"a STARTTLS", c.StartTLS("a")),
        (b"a NAMESPACE", c.Namespace("a")),
        (b"a IDLE", c.Idle("a")),
        (b"a CLOSE", c.Close("a")),
        (b"a UNSELECT", c.Unselect("a")),
        (b"a EXPUNGE", c.Expunge("a")),
        (b"a] NOOP", c.Noop("a]")),     # "]" is an ASTRING-CHAR, so a tag char
        (b"A.1-x NOOP", c.Noop("A.1-x")),
    ],
)
def test_commands_without_arguments(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a NOOP ", "Unexpected characters after NOOP arguments (at ' ')"),
        (b"a NOOP x", "Unexpected characters after NOOP arguments (at ' x')"),
        (b"a FROB", "Unknown command FROB"),
        (b"a UID NOOP", "Unknown command UID NOOP"),
        (b"a", "Expected SP after tag (at end of command)"),
        (b"a ", "Expected a command name (at end of command)"),
        (b"+a NOOP", "Missing or invalid tag (at '+a NOOP')"),
        (b"a+ NOOP", "Expected SP after tag (at '+ NOOP')"),
        (b"(a NOOP", "Missing or invalid tag (at '(a NOOP')"),
        (b"a{ NOOP", "Expected SP after tag (at '{ NOOP')"),
        (b"a  NOOP", "Expected a command name (at ' NOOP')"),
    ],
)
def test_syntax_errors_say_what_is_wrong(data: bytes, text: str) -> None:
    e = err(data)
    assert e.text == text
    assert e.status == "BAD"


def test_the_tag_is_known_once_read() -> None:
    assert err(b"t1 FROB").tag == "t1"
    assert err(b"(x").tag is None


@pytest.mark.parametrize(
    ("line", "head"),
    [
        (b"a FETCH 1 FLAGS", ("a", "FETCH")),
        (b"a uid fetch 1 FLAGS", ("a", "UID FETCH")),
        (b"a LOGIN {3}", ("a", "LOGIN")),
        (b"a NOOP", ("a", "NOOP")),
        (b"a FROB x", ("a", "FROB")),
    ],
)
def test_parse_head(line: bytes, head: tuple[str, str]) -> None:
    assert parse_head(line) == head


def test_parse_head_errors() -> None:
    with pytest.raises(ParseError) as info:
        parse_head(b"a LOGIN{3}")
    assert info.value.tag == "a"
    with pytest.raises(ParseError):
        parse_head(b"a UID")


def test_every_state_table_command_is_parsed() -> None:
    from pillarbox.protocols.imap.server import _ALLOWED

    assert set(_ALLOWED) == COMMANDS


# ------------------------------------------------------------------ strings


@pytest.mark.parametrize(
    ("data", "user", "password"),
    [
        (b"a LOGIN bob secret", "bob", "secret"),
        (b'a LOGIN "bob" "se cret"', "bob", "se cret"),
        (b'a LOGIN "b\\"o\\\\b" x', 'b"o\\b', "x"),
        (b"a LOGIN {3}\r\nbob {6}\r\nsecret", "bob", "secret"),
        (b"a LOGIN {3+}\r\nbob {0}\r\n", "bob", ""),
        (b'a LOGIN "" ""', "", ""),
        (b"a LOGIN bob] pw]", "bob]", "pw]"),
        ("a LOGIN jörg pässword".encode(), "jörg", "pässword"),
        ('a LOGIN "jörg" {9}\r\npässword'.encode(), "jörg", "pässword"),
    ],
)
def test_login_astrings(data: bytes, user: str, password: str) -> None:
    assert p(data) == c.Login("a", user, password)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a LOGIN bob", "Expected SP after user name"),
        (b'a LOGIN "bob pw', "Bad quoted string for user name"),
        (b'a LOGIN "b\\ob" pw', "Bad quoted string for user name"),
        (b"a LOGIN {5}\r\nbob", "Literal is shorter than announced"),
        (b"a LOGIN ~{3}\r\nbob pw", "literal8 (~{n}) is only allowed for APPEND data (RFC 3516)"),
        (b"a LOGIN {3}\r\nb\x00b pw",
         "NUL in a literal; send literal8 ~{n} for binary data (RFC 3516)"),
        (b"a LOGIN \xff pw", "User name is not valid UTF-8"),
        (b"a LOGIN (bob) pw", "Expected user name"),
        (b"a LOGIN bob pw%", "Unexpected characters after LOGIN arguments"),
        (b'a LOGIN bob "se\\cret', "Bad quoted string for password"),  # no echo of it
    ],
)
def test_login_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ AUTHENTICATE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a AUTHENTICATE PLAIN", c.Authenticate("a", "PLAIN")),
        (b"a authenticate scram-sha-256", c.Authenticate("a", "SCRAM-SHA-256")),
        (b"a AUTHENTICATE PLAIN =", c.Authenticate("a", "PLAIN", b"")),
        (b"a AUTHENTICATE PLAIN AGJvYgBwdw==", c.Authenticate("a", "PLAIN", b"\x00bob\x00pw")),
    ],
)
def test_authenticate(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize("data", [b"a AUTHENTICATE PLAIN AGJvYgBwdw", b"a AUTHENTICATE PLAIN !",
                                  b"a AUTHENTICATE PLAIN == x", b"a AUTHENTICATE"])
def test_authenticate_errors(data: bytes) -> None:
    err(data)


# ------------------------------------------------------------------ ENABLE, ID, COMPRESS


def test_enable() -> None:
    assert p(b"a ENABLE IMAP4rev2 utf8=accept CONDSTORE") == c.Enable(
        "a", ("IMAP4REV2", "UTF8=ACCEPT", "CONDSTORE"))
    assert err(b"a ENABLE").text == "Expected SP after ENABLE (at end of command)"


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (b"a ID NIL", None),
        (b"a ID nil", None),
        (b"a ID ()", ()),
        (b'a ID ("name" "sodr" "version" "19.34" "vendor" NIL)',
         (("name", "sodr"), ("version", "19.34"), ("vendor", None))),
        (b'a ID ({4}\r\nname "x")', (("name", "x"),)),
    ],
)
def test_id(data: bytes, fields: tuple[tuple[str, str | None], ...] | None) -> None:
    assert p(data) == c.Id("a", fields)


@pytest.mark.parametrize("data", [b"a ID", b'a ID ("name")', b'a ID (name "x")',
                                  b'a ID ("name" "x"', b"a ID NILL"])
def test_id_errors(data: bytes) -> None:
    err(data)


def test_compress() -> None:
    assert p(b"a COMPRESS deflate") == c.Compress("a", "DEFLATE")


# ------------------------------------------------------------------ mailboxes


@pytest.mark.parametrize(
    ("name", "mailbox"),
    [
        (b"INBOX", "INBOX"),
        (b"inbox", "INBOX"),
        (b'"InBoX"', "INBOX"),
        (b"{5}\r\niNbOx", "INBOX"),
        (b"INBOX.Sent", "INBOX.Sent"),          # only the whole name is case-insensitive
        (b"Sent", "Sent"),
        (b'"Sent Items"', "Sent Items"),
        (b"~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        (b"Tom&-Jerry", "Tom&Jerry"),
        (b"&AEkATgBCAE8AWA-", None),             # "INBOX" in base64: printable ASCII
        (b'""', ""),
    ],
)
def test_mailbox_names_modified_utf7(name: bytes, mailbox: str | None) -> None:
    if mailbox is None:
        # Not valid modified UTF-7: the name is taken literally (Dovecot does
        # too), so that SELECT answers NO rather than BAD.
        assert p(b"a DELETE " + name) == c.Delete("a", name.decode())
    else:
        assert p(b"a DELETE " + name) == c.Delete("a", mailbox)


@pytest.mark.parametrize(
    ("name", "mailbox"),
    [
        ("Entwürfe".encode(), "Entwürfe"),
        ('"Entwürfe"'.encode(), "Entwürfe"),
        (b"Tom&Jerry", "Tom&Jerry"),              # "&" is just "&" in UTF-8 mode
        (b"&U,BTFw-", "&U,BTFw-"),
        (b"inbox", "INBOX"),
    ],
)
def test_mailbox_names_utf8(name: bytes, mailbox: str) -> None:
    assert p(b"a DELETE " + name, utf8=True) == c.Delete("a", mailbox)


def test_mailbox_name_errors() -> None:
    assert err("a DELETE Entwürfe".encode()).text == (
        "Mailbox name has 8-bit octets: use modified UTF-7 (RFC 3501 §5.1.3) or"
        " ENABLE UTF8=ACCEPT")
    assert err(b"a DELETE \xff", utf8=True).text == "Mailbox name is not valid UTF-8"
    assert p(b"a DELETE Tom&Jerry") == c.Delete("a", "Tom&Jerry")
    assert err(b"a DELETE {3}\r\na\rb").text == "Mailbox name contains control characters"
    assert err(b"a DELETE a&AAk-b").text == "Mailbox name contains control characters"
    assert err(b"a DELETE a%").text.startswith("Unexpected characters")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a SELECT INBOX", c.Select("a", "INBOX")),
        (b"a EXAMINE blurdybloop", c.Select("a", "blurdybloop", readonly=True)),
        (b"a SELECT INBOX (CONDSTORE)", c.Select("a", "INBOX", condstore=True)),
        (b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
         c.Select("a", "INBOX", qresync=c.QResyncParams(
             67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541))))),
        (b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
         b"(1:10,15,21 6,12,20)))",
         c.Select("a", "INBOX", qresync=c.QResyncParams(
             67890007, 90060115194045000, seq((41, 211), (214, 541)),
             (seq((1, 10), (15, 15), (21, 21)), seq((6, 6), (12, 12), (20, 20)))))),
        (b"a SELECT INBOX (QRESYNC (1 2 (1:2 3:4)))",
         c.Select("a", "INBOX", qresync=c.QResyncParams(1, 2, None, (seq((1, 2)), seq((3, 4)))))),
        (b"a EXAMINE x (QRESYNC (1 2) CONDSTORE)",
         c.Select("a", "x", True, True, c.QResyncParams(1, 2))),
    ],
)
def test_select(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a SELECT", "Expected SP after SELECT (at end of command)"),
        (b"a SELECT INBOX (FOO)", "Unknown SELECT parameter FOO"),
        (b"a SELECT INBOX ()", "Expected a SELECT parameter (at ')')"),
        (b"a SELECT INBOX (CONDSTORE", "Missing ')' after SELECT parameters (at end of command)"),
        (b"a SELECT INBOX (QRESYNC (0 5))", "UIDVALIDITY must not be 0"),
        (b"a SELECT INBOX (QRESYNC (1 0))", "mod-sequence must not be 0"),
        (b"a SELECT INBOX (QRESYNC (1 5 (1:2)))", "Expected SP after known sequence set"
                                                 " (at ')))')"),
    ],
)
def test_select_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a CREATE owatagusiam/", c.Create("a", "owatagusiam/")),
        (b"a CREATE MySpecialArchive (USE (\\Archive))",
         c.Create("a", "MySpecialArchive", ("\\Archive",))),
        (b"a CREATE x (USE (\\Sent \\Drafts))", c.Create("a", "x", ("\\Sent", "\\Drafts"))),
        (b"a CREATE x (USE ())", c.Create("a", "x")),
        (b"a DELETE blurdybloop", c.Delete("a", "blurdybloop")),
        (b"a RENAME blurdybloop sarasoop", c.Rename("a", "blurdybloop", "sarasoop")),
        (b"a RENAME inbox old-mail", c.Rename("a", "INBOX", "old-mail")),
        (b"a SUBSCRIBE #news.comp.mail.mime", c.Subscribe("a", "#news.comp.mail.mime")),
        (b"a UNSUBSCRIBE #news.comp.mail.mime", c.Unsubscribe("a", "#news.comp.mail.mime")),
        (b"a STATUS blurdybloop (UIDNEXT MESSAGES)",
         c.Status("a", "blurdybloop", ("UIDNEXT", "MESSAGES"))),
        (b"a STATUS INBOX (messages unseen deleted size highestmodseq appendlimit recent "
         b"uidvalidity)", c.Status("a", "INBOX", ("MESSAGES", "UNSEEN", "DELETED", "SIZE",
                                                   "HIGHESTMODSEQ", "APPENDLIMIT", "RECENT",
                                                   "UIDVALIDITY"))),
        (b'a GETQUOTA ""', c.GetQuota("a", "")),
        (b"a GETQUOTAROOT INBOX", c.GetQuotaRoot("a", "INBOX")),
        (b'a SETQUOTA "" (STORAGE 512)', c.SetQuota("a", "", (("STORAGE", 512),))),
        (b'a SETQUOTA "" (storage 512 MESSAGE 1000)',
         c.SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 1000)))),
        (b'a SETQUOTA "" ()', c.SetQuota("a", "", ())),
        (b"a COPY 2:4 MEETING", c.Copy("a", seq((2, 4)), "MEETING")),
        (b"a UID COPY 2:4 MEETING", c.Copy("a", seq((2, 4)), "MEETING", uid=True)),
        (b"a MOVE 1:* Trash", c.Move("a", seq((1, None)), "Trash")),
        (b"a UID MOVE $ Trash", c.Move("a", SS(saved=True), "Trash", uid=True)),
        (b"a UID EXPUNGE 3000:3002", c.Expunge("a", seq((3000, 3002)))),
    ],
)
def test_mailbox_commands(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a CREATE x (FOO)", "Unknown CREATE parameter FOO"),
        (b"a CREATE x (USE \\Sent)", "Expected '(' to start the USE list (at '\\\\Sent)')"),
        (b"a STATUS INBOX (FOO)", "Unknown STATUS item FOO"),
        (b"a STATUS INBOX ()", "Expected a STATUS item (at ')')"),
        (b"a STATUS INBOX MESSAGES", "Expected '(' to start the STATUS items (at 'MESSAGES')"),
        (b"a RENAME x", "Expected SP after existing mailbox name (at end of command)"),
        (b"a COPY 0 x", "Bad sequence set '0': numbers are 1 to 4294967295"),
        (b"a COPY 4294967296 x", "Bad sequence set '4294967296': numbers are 1 to 4294967295"),
        (b"a COPY 1,,2 x", "Bad sequence set '1,,2'"),
        (b"a COPY 1:$ x", "Bad sequence set '1:$'"),
        (b"a COPY 1: x", "Bad sequence set '1:'"),
        (b"a UID EXPUNGE", "Expected SP after UID EXPUNGE (at end of command)"),
        (b"a EXPUNGE 1", "Unexpected characters after EXPUNGE arguments (at ' 1')"),
        (b'a SETQUOTA "" (STORAGE)', "Expected SP after STORAGE (at ')')"),
    ],
)
def test_mailbox_command_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ LIST


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'a LIST "" ""', c.List("a", "", ("",))),
        (b'a LIST /usr/staff/jones ""', c.List("a", "/usr/staff/jones", ("",))),
        (b'a LIST ~/Mail/ %', c.List("a", "~/Mail/", ("%",))),
        (b'a LIST "" *', c.List("a", "", ("*",))),
        (b'a LIST "" INBOX/%', c.List("a", "", ("INBOX/%",))),
        (b'a LIST "" Fo&AOk-*', c.List("a", "", ("Foé*",))),
        (b'a LIST "" %]', c.List("a", "", ("%]",))),
        (b'a LIST (SUBSCRIBED) "" "*"', c.List("a", "", ("*",), ("SUBSCRIBED",), extended=True)),
        (b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)',
         c.List("a", "", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",),
                extended=True)),
        (b'a LIST () "" ("INBOX" "Drafts" "Sent/%")',
         c.List("a", "", ("INBOX", "Drafts", "Sent/%"), extended=True)),
        (b'a LIST "" % RETURN (SPECIAL-USE SUBSCRIBED)',
         c.List("a", "", ("%",), returns=("SPECIAL-USE", "SUBSCRIBED"), extended=True)),
        (b'a LIST (SPECIAL-USE REMOTE) "" *', c.List("a", "", ("*",), ("SPECIAL-USE", "REMOTE"),
                                                     extended=True)),
        (b'a LIST "" % RETURN (STATUS (MESSAGES UNSEEN))',
         c.List("a", "", ("%",), returns=("STATUS",), status_items=("MESSAGES", "UNSEEN"),
                extended=True)),
        (b'a LIST "" % RETURN ()', c.List("a", "", ("%",), extended=True)),
        (b'a LSUB "#news." "comp.mail.*"', c.List("a", "#news.", ("comp.mail.*",), lsub=True)),
        ('a LIST "" Entwürfe*'.encode(), None),
    ],
)
def test_list(data: bytes, expected: c.Command | None) -> None:
    if expected is None:
        assert "8-bit" in err(data).text
        assert p(data, utf8=True) == c.List("a", "", ("Entwürfe*",))
    else:
        assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b'a LIST (FOO) "" *', "Unknown LIST selection option FOO"),
        (b'a LIST (RECURSIVEMATCH) "" *',
         "RECURSIVEMATCH needs another selection option (RFC 5258 §3)"),
        (b'a LIST "" * RETURN (FOO)', "Unknown LIST return option FOO"),
        (b'a LIST "" * RETURN (STATUS ())', "Expected a STATUS item (at '))')"),
        (b'a LIST "" * FOO ()', "Expected RETURN after LIST patterns"),
        (b'a LIST "" ("a" "b"', "Missing ')' after LIST patterns (at end of command)"),
        (b'a LIST ""', "Expected SP after reference name (at end of command)"),
        (b'a LIST "" ()', "Expected a mailbox pattern (at ')')"),
    ],
)
def test_list_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ APPEND


def test_append_rfc9051_example() -> None:
    msg = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n\r\nHello Joe\r\n"
    cmd = p(b'A003 APPEND saved-messages (\\Seen) {%d}\r\n' % len(msg) + msg)
    assert cmd == c.Append("A003", "saved-messages", (c.AppendMessage(("\\Seen",), None, msg),))


@pytest.mark.parametrize(
    ("date_time", "expected"),
    [
        (b'" 7-Feb-1994 21:52:25 -0800"',
         datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(-timedelta(hours=8)))),
        (b'"17-Jul-1996 02:44:25 +0130"',
         datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=1, minutes=30)))),
        (b'"7-feb-1994 21:52:25 +0000"', datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone.utc)),
    ],
)
def test_append_date_time(date_time: bytes, expected: datetime) -> None:
    cmd = p(b"a APPEND INBOX " + date_time + b" {1}\r\nx")
    assert isinstance(cmd, c.Append)
    assert cmd.messages[0].internal_date == expected


def test_multiappend_rfc3502_example() -> None:
    m1, m2 = b"Date: x\r\n\r\nHello\r\n", b"a\x00b"
    cmd = p(b'a APPEND saved-messages (\\Seen) "15-Nov-2001 13:40:07 +0200" {%d}\r\n' % len(m1)
            + m1 + b" (\\Seen $Junk) ~{3}\r\n" + m2 + b" {0+}\r\n")
    assert isinstance(cmd, c.Append)
    assert [(m.flags, m.data, m.binary) for m in cmd.messages] == [
        (("\\Seen",), m1, False), (("\\Seen", "$Junk"), m2, True), ((), b"", False)]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a APPEND INBOX", "Expected SP after mailbox name (at end of command)"),
        (b'a APPEND INBOX "x"', "Bad date-time 'x': expected \"dd-Mon-yyyy hh:mm:ss +zzzz\""),
        (b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {1}\r\nx',
         "No such date-time '31-Feb-2020 00:00:00 +0000'"),
        (b'a APPEND INBOX "01-Feb-2020 00:00:00 +0099" {1}\r\nx',
         "Bad time zone in '01-Feb-2020 00:00:00 +0099'"),
        (b"a APPEND INBOX hello", "Expected the message as a literal {n} or literal8 ~{n}"
                                  " (at 'hello')"),
        (b"a APPEND INBOX (\\Seen)", "Expected SP after APPEND flags (at end of command)"),
        (b"a APPEND INBOX (\\*) {1}\r\nx",
         "\\* is not a flag (it appears only in PERMANENTFLAGS)"),
        (b"a APPEND INBOX {3}\r\na\x00b",
         "NUL in a literal; send literal8 ~{n} for binary data (RFC 3516)"),
        (b"a APPEND INBOX {1}\r\nx ",
         "Expected the message as a literal {n} or literal8 ~{n} (at end of command)"),
    ],
)
def test_append_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ FETCH


@pytest.mark.parametrize(
    ("items", "attrs"),
    [
        (b"FLAGS", (F("FLAGS"),)),
        (b"ALL", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE"))),
        (b"fast", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"))),
        (b"FULL", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE"), F("BODY"))),
        (b"(FLAGS UID RFC822.SIZE)", (F("FLAGS"), F("UID"), F("RFC822.SIZE"))),
        (b"(ENVELOPE BODYSTRUCTURE INTERNALDATE MODSEQ SAVEDATE)",
         (F("ENVELOPE"), F("BODYSTRUCTURE"), F("INTERNALDATE"), F("MODSEQ"), F("SAVEDATE"))),
        (b"(RFC822 RFC822.HEADER RFC822.TEXT BODY)",
         (F("RFC822"), F("RFC822.HEADER"), F("RFC822.TEXT"), F("BODY"))),
        (b"BODY[]", (F("BODY", c.Section()),)),
        (b"BODY.PEEK[]", (F("BODY", c.Section(), peek=True),)),
        (b"body.peek[text]<0.2048>", (F("BODY", c.Section((), "TEXT"), True, (0, 2048)),)),
        (b"BODY[1]", (F("BODY", c.Section((1,))),)),
        (b"BODY[4.2.2.1]", (F("BODY", c.Section((4, 2, 2, 1))),)),
        (b"BODY[1.MIME]", (F("BODY", c.Section((1,), "MIME")),)),
        (b"BODY[3.HEADER]", (F("BODY", c.Section((3,), "HEADER")),)),
        (b"BODY[2.3.TEXT]<10.5>", (F("BODY", c.Section((2, 3), "TEXT"), partial=(10, 5)),)),
        (b"(BODY.PEEK[HEADER.FIELDS (DATE FROM)] FLAGS)",
         (F("BODY", c.Section((), "HEADER.FIELDS", ("DATE", "FROM")), True), F("FLAGS"))),
        (b'BODY[HEADER.FIELDS.NOT ("Subject" x-foo)]',
         (F("BODY", c.Section((), "HEADER.FIELDS.NOT", ("Subject", "x-foo"))),)),
        (b"BODY[1.HEADER.FIELDS (To)]", (F("BODY", c.Section((1,), "HEADER.FIELDS", ("To",))),)),
        (b"BINARY[]", (F("BINARY", c.Section()),)),
        (b"BINARY.PEEK[1.2]<0.100>", (F("BINARY", c.Section((1, 2)), True, (0, 100)),)),
        (b"BINARY.SIZE[1]", (F("BINARY.SIZE", c.Section((1,))),)),
        (b"(UID BINARY.SIZE[] BINARY[2])",
         (F("UID"), F("BINARY.SIZE", c.Section()), F("BINARY", c.Section((2,))))),
    ],
)
def test_fetch_items(items: bytes, attrs: tuple[c.FetchAttr, ...]) -> None:
    assert p(b"a FETCH 1 " + items) == c.Fetch("a", seq((1, 1)), attrs)


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (b"1", seq((1, 1))),
        (b"2:4", seq((2, 4))),
        (b"4:2", seq((4, 2))),
        (b"1:*", seq((1, None))),
        (b"*", seq((None, None))),
        (b"*:3", seq((None, 3))),
        (b"1,3:5,7,9:*", seq((1, 1), (3, 5), (7, 7), (9, None))),
        (b"$", SS(saved=True)),
        (b"4294967295", seq((4294967295, 4294967295))),
    ],
)
def test_sequence_sets(sequence: bytes, expected: c.SequenceSet) -> None:
    assert p(b"a FETCH " + sequence + b" FLAGS") == c.Fetch("a", expected, (F("FLAGS"),))


def test_fetch_modifiers() -> None:
    assert p(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)") == c.Fetch(
        "a", seq((1, None)), (F("FLAGS"),), changedsince=12345)
    assert p(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)") == c.Fetch(
        "a", seq((300, 500)), (F("FLAGS"),), uid=True, changedsince=12345, vanished=True)
    assert p(b"a UID FETCH 1 ALL (VANISHED CHANGEDSINCE 9)") == c.Fetch(
        "a", seq((1, 1)), (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE")),
        uid=True, changedsince=9, vanished=True)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a FETCH 1 (FLAGS", "Missing ')' after FETCH items (at end of command)"),
        (b"a FETCH 1 (FLAGS UID", "Missing ')' after FETCH items (at end of command)"),
        (b"a FETCH 1 ()", "Expected a FETCH item (at ')')"),
        (b"a FETCH 1 FOO", "Unknown FETCH item FOO"),
        (b"a FETCH 1 (FLAGS FOO)", "Unknown FETCH item FOO"),
        (b"a FETCH 1 (ALL)", "Unknown FETCH item ALL"),
        (b"a FETCH 1 BODY.PEEK", "BODY.PEEK needs a section [...]"),
        (b"a FETCH 1 BINARY", "BINARY needs a section [...]"),
        (b"a FETCH 1 BODY[", "Bad section text  (at end of command)"),
        (b"a FETCH 1 BODY[1", "Expected '.' or ']' after section part (at end of command)"),
        (b"a FETCH 1 BODY[1]x", "Unexpected characters after FETCH arguments (at 'x')"),
        (b"a FETCH 1 BODY[0]", "Bad section part number 0"),
        (b"a FETCH 1 BODY[MIME]", "MIME needs a section part (RFC 9051 §6.4.5)"),
        (b"a FETCH 1 BODY[FOO]", "Bad section text FOO"),
        (b"a FETCH 1 BODY[HEADER.FIELDS]", "Expected SP after HEADER.FIELDS (at ']')"),
        (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "Expected header field name (at ')]')"),
        (b"a FETCH 1 BODY[HEADER.FIELDS (From]",
         "Missing ')' after HEADER.FIELDS list (at end of command)"),
        (b"a FETCH 1 BINARY[1.MIME]", "Missing ']' after BINARY section (at '.MIME]')"),
        (b"a FETCH 1 BINARY.SIZE[1]<0.5>", "BINARY.SIZE takes no partial <o.n>"),
        (b"a FETCH 1 BODY[]<0.0>", "partial count must not be 0"),
        (b"a FETCH 1 BODY[]<5>", "Expected '.' in partial <offset.count> (at '>')"),
        (b"a FETCH 1 BODY[]<0.5", "Missing '>' after partial (at end of command)"),
        (b"a FETCH 1 ENVELOPE[]", "Unknown FETCH item ENVELOPE["),
        (b"a FETCH 1 FLAGS (VANISHED)",
         "VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)"),
        (b"a UID FETCH 1 FLAGS (VANISHED)", "VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)"),
        (b"a FETCH 1 FLAGS (CHANGEDSINCE 0)", "CHANGEDSINCE mod-sequence must not be 0"),
        (b"a FETCH 1 FLAGS (FOO)", "Unknown FETCH modifier FOO"),
        (b"a FETCH 1 FLAGS CHANGEDSINCE 5",
         "Expected '(' to start FETCH modifiers (at 'CHANGEDSINCE')"),
        (b"a FETCH FLAGS", "Expected a sequence set (at 'FLAGS')"),
        (b"a FETCH 1", "Expected SP after sequence set (at end of command)"),
        (b"a FETCH 1 BODY[]<99999999999999999999.1>", "partial offset 99999999999999999999 is"
                                                      " too large"),
    ],
)
def test_fetch_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ STORE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a STORE 2:4 +FLAGS (\\Deleted)", c.Store("a", seq((2, 4)), "+", ("\\Deleted",))),
        (b"a STORE 1 FLAGS ()", c.Store("a", seq((1, 1)), "", ())),
        (b"a STORE 1 -flags.silent \\Seen $Junk",
         c.Store("a", seq((1, 1)), "-", ("\\Seen", "$Junk"), silent=True)),
        (b"a UID STORE 1:* +FLAGS.SILENT (\\Seen NonJunk)",
         c.Store("a", seq((1, None)), "+", ("\\Seen", "NonJunk"), True, True)),
        (b"a STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
         c.Store("a", seq((7, 7), (5, 5), (9, 9)), "+", ("\\Deleted",), True,
                 unchangedsince=320162338)),
        (b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS x", c.Store("a", seq((1, 1)), "", ("x",),
                                                          unchangedsince=0)),
    ],
)
def test_store(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a STORE 1 FLAG x",
         "Expected FLAGS, +FLAGS or -FLAGS (optionally .SILENT) (at 'FLAG x')"),
        (b"a STORE 1 *FLAGS x", "Expected FLAGS, +FLAGS or -FLAGS (optionally .SILENT)"
                               " (at '*FLAGS x')"),
        (b"a STORE 1 +FLAGS", "Expected SP after +FLAGS (at end of command)"),
        (b"a STORE 1 +FLAGS (\\Seen", "Missing ')' after the flag list (at end of command)"),
        (b"a STORE 1 +FLAGS (\\*)", "\\* is not a flag (it appears only in PERMANENTFLAGS)"),
        (b"a STORE 1 (FOO 1) FLAGS x", "Unknown STORE modifier FOO"),
        (b"a STORE 1 +FLAGS (a(b))", "Missing ')' after the flag list (at '(b))')"),
    ],
)
def test_store_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ SEARCH


def s(key: c.SearchKey, **kw: object) -> c.Search:
    return c.Search("a", key, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("program", "key"),
    [
        (b"ALL", K("ALL")),
        (b"FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"",
         K("AND", (K("FLAGGED"), K("SINCE", (date(1994, 2, 1),)),
                   K("NOT", (K("FROM", ("Smith",)),))))),
        (b'OR SEEN (FLAGGED DELETED)', K("OR", (K("SEEN"), K("AND", (K("FLAGGED"),
                                                                     K("DELETED")))))),
        (b"(SEEN)", K("SEEN")),
        (b"1:5,7 UID 10:*", K("AND", (K("SEQSET", (seq((1, 5), (7, 7)),)),
                                      K("UID", (seq((10, None)),))))),
        (b"$", K("SEQSET", (SS(saved=True),))),
        (b"UID $", K("UID", (SS(saved=True),))),
        (b'HEADER Message-ID "<x@y>"', K("HEADER", ("Message-ID", "<x@y>"))),
        (b"HEADER X-Spam {0}\r\n", K("HEADER", ("X-Spam", ""))),
        (b"LARGER 1000 SMALLER 9223372036854775807",
         K("AND", (K("LARGER", (1000,)), K("SMALLER", (9223372036854775807,))))),
        (b"KEYWORD $Junk UNKEYWORD \\Seen",
         K("AND", (K("KEYWORD", ("$Junk",)), K("UNKEYWORD", ("\\Seen",))))),
        (b'ON "3-Mar-2020" BEFORE 03-mar-2020 SENTSINCE 1-Jan-2000',
         K("AND", (K("ON", (date(2020, 3, 3),)), K("BEFORE", (date(2020, 3, 3),)),
                   K("SENTSINCE", (date(2000, 1, 1),))))),
        (b"SENTBEFORE 1-Jan-2000 SENTON 1-Jan-2000 SAVEDBEFORE 1-Jan-2000 SAVEDON 1-Jan-2000"
         b" SAVEDSINCE 1-Jan-2000 SAVEDATESUPPORTED",
         K("AND", tuple(K(op, (date(2000, 1, 1),)) for op in (
             "SENTBEFORE", "SENTON", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"))
           + (K("SAVEDATESUPPORTED"),))),
        (b"YOUNGER 3600 OLDER 60", K("AND", (K("YOUNGER", (3600,)), K("OLDER", (60,))))),
        (b"MODSEQ 620162338", K("MODSEQ", (620162338, None, None))),
        (b'MODSEQ "/flags/\\\\draft" all 620162338',
         K("MODSEQ", (620162338, "/flags/\\draft", "all"))),
        (b'MODSEQ "/flags/\\\\Seen" priv 0', K("MODSEQ", (0, "/flags/\\Seen", "priv"))),
        (b"ANSWERED DELETED DRAFT NEW OLD RECENT UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN",
         K("AND", tuple(K(x) for x in ("ANSWERED", "DELETED", "DRAFT", "NEW", "OLD", "RECENT",
                                       "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED",
                                       "UNSEEN")))),
        (b"TEXT string BODY {5}\r\nx y z SUBJECT \"\" TO a CC b BCC c",
         K("AND", (K("TEXT", ("string",)), K("BODY", ("x y z",)), K("SUBJECT", ("",)),
                   K("TO", ("a",)), K("CC", ("b",)), K("BCC", ("c",))))),
        (b"not not seen", K("NOT", (K("NOT", (K("SEEN"),)),))),
    ],
)
def test_search_keys(program: bytes, key: c.SearchKey) -> None:
    assert p(b"a SEARCH " + program) == s(key)


def test_search_charset_and_returns() -> None:
    assert p(b"a SEARCH CHARSET UTF-8 TEXT {6}\r\nXX\xe9\x9f\xb3X") == s(
        K("TEXT", ("XX音X",)), charset="UTF-8")
    assert p(b"a SEARCH CHARSET iso-8859-1 SUBJECT \"caf\xe9\"") == s(
        K("SUBJECT", ("café",)), charset="ISO-8859-1")
    assert p(b"a UID SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994") == s(
        K("AND", (K("FLAGGED"), K("SINCE", (date(1994, 2, 1),)))), uid=True,
        returns=("MIN", "COUNT"))
    assert p(b"a SEARCH RETURN () ALL") == s(K("ALL"), returns=())
    assert p(b"a SEARCH RETURN (SAVE) CHARSET US-ASCII ALL") == s(
        K("ALL"), charset="US-ASCII", returns=("SAVE",))
    assert p(b"a SEARCH RETURN (ALL MAX) ALL") == s(K("ALL"), returns=("ALL", "MAX"))


@pytest.mark.parametrize(
    ("program", "text"),
    [
        (b"FOO", "Unknown SEARCH key FOO"),
        (b"SEEN FOO 1", "Unknown SEARCH key FOO"),
        (b"", "Expected a SEARCH key (at end of command)"),
        (b"(SEEN", "Missing ')' in SEARCH keys (at end of command)"),
        (b"()", "Expected a SEARCH key (at ')')"),
        (b"OR SEEN", "Expected SP after first OR key (at end of command)"),
        (b"NOT", "Expected SP after NOT (at end of command)"),
        (b"SINCE 1-Foo-2000", "Bad date '1-Foo-2000': expected d-Mon-yyyy (RFC 9051 §9 date)"),
        (b"SINCE 30-Feb-2000", "No such date '30-Feb-2000'"),
        (b"SINCE \"1-Feb-2000", "Bad quoted string for date (at '\"1-Feb-2000')"),
        (b"LARGER x", "Expected a number for LARGER size (at 'x')"),
        (b"YOUNGER 0", "YOUNGER interval must not be 0"),
        (b"MODSEQ \"/flags/x\" bogus 5", "Unknown MODSEQ entry type bogus (priv, shared or all)"),
        (b"SUBJECT \xff", "SUBJECT string is not valid utf-8"),
        (b"RETURN (FOO) ALL", "Unknown SEARCH return option FOO"),
        (b"RETURN (MIN ALL", "Missing ')' after SEARCH return options (at end of command)"),
        (b"CHARSET", "Expected SP after CHARSET (at end of command)"),
        (b"UID 1:x", "Bad sequence set '1:'"),
        (b"(" * 60 + b"SEEN" + b")" * 60, "SEARCH keys nested too deeply"),
        (b"NOT " * 60 + b"SEEN", "SEARCH keys nested too deeply"),
    ],
)
def test_search_errors(program: bytes, text: str) -> None:
    assert err(b"a SEARCH " + program).text == text


def test_search_bad_charset_is_no() -> None:
    e = err(b"a SEARCH CHARSET KOI8-U TEXT x")
    assert (e.status, e.code, e.text) == ("NO", "BADCHARSET (US-ASCII UTF-8)",
                                          "Unsupported charset KOI8-U")


def test_search_string_decoding_uses_the_charset() -> None:
    assert "not valid ascii" in err(b"a SEARCH CHARSET US-ASCII TEXT {1}\r\n\xe9").text


# ------------------------------------------------------------------ SORT, THREAD


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994",
         c.Sort("a", (c.SortKey("SUBJECT"),), "UTF-8", K("SINCE", (date(1994, 2, 1),)))),
        (b"a UID SORT (REVERSE DATE ARRIVAL) US-ASCII ALL",
         c.Sort("a", (c.SortKey("DATE", True), c.SortKey("ARRIVAL")), "US-ASCII", K("ALL"),
                uid=True)),
        (b"a SORT (SIZE cc from to displayfrom DISPLAYTO) utf-8 UNSEEN",
         c.Sort("a", tuple(c.SortKey(x) for x in ("SIZE", "CC", "FROM", "TO", "DISPLAYFROM",
                                                    "DISPLAYTO")), "UTF-8", K("UNSEEN"))),
        (b"a SORT RETURN (COUNT) (DATE) UTF-8 SINCE 1-Feb-1994",
         c.Sort("a", (c.SortKey("DATE"),), "UTF-8", K("SINCE", (date(1994, 2, 1),)),
                returns=("COUNT",))),
        (b"a THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000",
         c.Thread("a", "ORDEREDSUBJECT", "UTF-8", K("SINCE", (date(2000, 3, 5),)))),
        (b"a UID THREAD references US-ASCII ALL",
         c.Thread("a", "REFERENCES", "US-ASCII", K("ALL"), uid=True)),
    ],
)
def test_sort_and_thread(data: bytes, expected: c.Command) -> None:
    assert p(data) == expected


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"a SORT () UTF-8 ALL", "Expected a SORT key (at ') UTF-8 ALL')"),
        (b"a SORT (FOO) UTF-8 ALL", "Unknown SORT key FOO"),
        (b"a SORT (REVERSE) UTF-8 ALL", "Expected SP after REVERSE (at ') UTF-8 ALL')"),
        (b"a SORT (DATE) ALL", "Expected SP after charset (at end of command)"),
        (b"a SORT DATE UTF-8 ALL", "Expected '(' to start the SORT criteria (at 'DATE UTF-8 A')"),
        (b"a THREAD REFERENCES", "Expected SP after THREAD algorithm (at end of command)"),
    ],
)
def test_sort_and_thread_errors(data: bytes, text: str) -> None:
    assert err(data).text == text


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("digits", [b"9" * 31, b"1" + b"0" * 5000])
def test_huge_numbers_are_errors_not_crashes(digits: bytes) -> None:
    for data in (b"a FETCH " + digits + b" FLAGS", b"a SEARCH LARGER " + digits,
                 b"a FETCH 1 BODY[" + digits + b"]", b"a LOGIN {" + digits + b"}\r\nx x"):
        err(data)


# ------------------------------------------------------------------ literals apart


def test_literals_given_apart() -> None:
    # How the core calls the parser: the lines joined with CRLF, the octets apart.
    assert parse_command(b"a LOGIN {3}\r\n {2+}\r\n", literals=[b"bob", b"pw"]) == c.Login(
        "a", "bob", "pw")
    cmd = parse_command(b"a APPEND INBOX {5}\r\n ~{3}\r\n", literals=[b"hello", b"a\x00b"])
    assert isinstance(cmd, c.Append)
    assert [(m.data, m.binary) for m in cmd.messages] == [(b"hello", False), (b"a\x00b", True)]
    with pytest.raises(ParseError, match="shorter than announced"):
        parse_command(b"a LOGIN {3}\r\n {2}\r\n", literals=[b"bob"])
    with pytest.raises(ParseError, match="shorter than announced"):
        parse_command(b"a LOGIN {3}\r\n pw", literals=[b"bo"])
