"""Address lists (RFC 5322 §3.4, §4.4) and dates (§3.3, §4.3)."""

from datetime import datetime, timedelta, timezone

from pillarbox.mime.addresses import (
    Group,
    Mailbox,
    format_address,
    parse_address_list,
    parse_mailbox_list,
)
from pillarbox.mime.dates import format_date, parse_date


def test_name_addr_and_addr_spec() -> None:
    got = parse_address_list(b'"John Q. Public" <john@example.com>, jdoe@one.test')
    assert got == [Mailbox(b"John Q. Public", None, b"john", b"example.com"),
                   Mailbox(None, None, b"jdoe", b"one.test")]
    assert got[0].addr_spec == "john@example.com"


def test_groups() -> None:
    got = parse_address_list(b"A Group:Ed Jones <c@a.test>,joe@where.test;, undisclosed-recipients:;")
    assert got == [Group(b"A Group", [Mailbox(b"Ed Jones", None, b"c", b"a.test"),
                                      Mailbox(None, None, b"joe", b"where.test")]),
                   Group(b"undisclosed-recipients", [])]
    assert [m.addr_spec for m in parse_mailbox_list(b"G: a@b, c@d;")] == ["a@b", "c@d"]


def test_obsolete_syntax() -> None:
    got = parse_address_list(
        b"Joe Q. Public <john.q.public@example.com>, Mary Smith <@node.test:mary@example.net>, ,"
        b" jdoe@test   . example, Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>")
    assert got == [
        Mailbox(b"Joe Q. Public", None, b"john.q.public", b"example.com"),
        Mailbox(b"Mary Smith", b"@node.test", b"mary", b"example.net"),
        Mailbox(None, None, b"jdoe", b"test.example"),
        Mailbox(b"Pete", None, b"pete", b"silly.test"),
    ]


def test_comment_as_display_name_and_quoted_local_part() -> None:
    assert parse_address_list(b"user@example.com (The User)")[0].name == b"The User"
    assert parse_address_list(b'"john doe"@x.test')[0].mailbox == b"john doe"
    assert parse_address_list(b"a@[192.0.2.1]")[0].domain == b"[192.0.2.1]"


def test_encoded_and_utf8_names() -> None:
    mb = parse_address_list(b"=?iso-8859-1?q?Andr=E9?= Pirard <p@x.test>")[0]
    assert mb.name == b"=?iso-8859-1?q?Andr=E9?= Pirard" and mb.display == "André Pirard"
    mb = parse_address_list("Jörg <jörg@bücher.example>".encode())[0]
    assert mb.display == "Jörg" and mb.addr_spec == "jörg@bücher.example"


def test_garbage_resyncs_at_comma_and_never_raises() -> None:
    got = parse_address_list(b"<<<>>>, ok@x.test, ;;;, \"unterminated")
    assert Mailbox(None, None, b"ok", b"x.test") in got
    assert parse_address_list(b"Q <u")[0].valid is False
    for junk in (b"", b"@", b",,,", b"(((", b"\\", b"\x00a@b", b":;", b"<@:>"):
        parse_address_list(junk)


def test_words_without_at_are_a_name_without_address() -> None:
    assert parse_address_list(b'Someone Else, "Quoted Name", localonly, x y@z') == [
        Mailbox(b"Someone Else", None, None, None), Mailbox(b"Quoted Name", None, None, None),
        Mailbox(None, None, b"localonly", None), Mailbox(b"x y", None, None, None)]
    assert parse_address_list(b'"quoted local"@example.com') == [
        Mailbox(None, None, b"quoted local", b"example.com")]


def test_broken_angle_addresses() -> None:
    def one(v: bytes) -> Mailbox:
        (mb,) = parse_address_list(v)
        assert isinstance(mb, Mailbox)
        return mb

    assert one(b"<a>") == Mailbox(None, None, b"a", None)
    for junk in (b"<a:b>", b"<a@>", b"<a b@c>", b"<a@b c>", b"<a@b"):
        assert not one(junk).valid, junk
    assert one(b"<@b>") == Mailbox(None, b"INVALID_ROUTE", None, None)
    assert one(b"<@r1,@r2:a@b>") == Mailbox(None, b"@r1,@r2", b"a", b"b")


def test_format_address_quotes_when_needed() -> None:
    assert format_address("Ann", "a@b") == "Ann <a@b>"
    assert format_address('A "q" B.', "a@b") == '"A \\"q\\" B." <a@b>'
    assert format_address(None, "a@b") == "a@b"


def test_dates() -> None:
    tz = timezone(timedelta(hours=2))
    assert parse_date(b"Tue, 1 Jul 2003 10:52:37 +0200") == datetime(2003, 7, 1, 10, 52, 37, tzinfo=tz)
    assert parse_date("1 jul 03 10:52 EST") == datetime(2003, 7, 1, 10, 52, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_date("Fri, 21 Nov 97 09:55:06 GMT").year == 1997
    folded = "Thu,\r\n 13\r\n  Feb\r\n  1969\r\n 23:32\r\n -0330 (Newfoundland Time)"
    assert parse_date(folded) == datetime(1969, 2, 13, 23, 32, tzinfo=timezone(-timedelta(hours=3, minutes=30)))
    assert parse_date("1 Jan 2020 10:00 Q").utcoffset() == timedelta(0)  # military zone: -0000
    assert parse_date("garbage") is None and parse_date(None) is None
    assert parse_date("31 Feb 2020 10:00 +0000") is None


def test_format_date_round_trips() -> None:
    d = datetime(2003, 7, 1, 10, 52, 37, tzinfo=timezone(timedelta(hours=-7)))
    assert format_date(d) == "Tue, 1 Jul 2003 10:52:37 -0700"
    assert parse_date(format_date(d)) == d
