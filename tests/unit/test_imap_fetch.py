"""FETCH rendering (pillarbox.access.fetch) and the blob cache (pillarbox.access.cache)."""

from __future__ import annotations

import base64

import pytest

from pillarbox.access.cache import CacheEntry, compute, from_row
from pillarbox.access.fetch import (
    UnknownCte,
    format_datetime,
    format_flags,
    needs_content,
    render_fetch,
    render_meta_only,
    sets_seen,
)
from pillarbox.mime.imap import bodystructure, envelope
from pillarbox.mime.parser import parse
from pillarbox.protocols.imap.commands import FetchAttr, Section
from pillarbox.store.base import MessageMeta

SIMPLE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Hello\r\n"
          b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nMessage-ID: <1234@example.com>\r\n"
          b"\r\nHi Bob.\r\n")

MULTI = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
         b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
         b"--zz\r\nContent-Type: application/octet-stream\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         + base64.b64encode(b"\x00\x01\x02binary") + b"\r\n"
         b"--zz\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
         b"begin 644 x\r\n"
         b"--zz\r\nContent-Type: message/rfc822\r\n\r\n"
         b"Subject: inner\r\nFrom: c@d\r\n\r\ninner body\r\n"
         b"--zz--\r\n")


def meta(flags: frozenset[str] = frozenset(), **kw: object) -> MessageMeta:
    values: dict[str, object] = {"uid": 42, "flags": flags, "modseq": 7,
                                 "internal_date": 1_057_049_557.0, "size": 100, "blob": "b1"}
    values.update(kw)
    return MessageMeta(**values)  # type: ignore[arg-type]


class Loader:
    """A content() callable that counts its calls."""

    def __init__(self, data: bytes):
        self.data = data
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def fetch(data: bytes, *attrs: FetchAttr, m: MessageMeta | None = None,
          cache: CacheEntry | None = None, include_uid: bool = False,
          modseq: bool = False, seen_set: bool = False) -> bytes:
    return render_fetch(1, m or meta(), attrs, content=Loader(data), cache=cache,
                        include_uid=include_uid, modseq=modseq, seen_set=seen_set).line


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n%s" % (len(data), data)


def body(section: Section = Section(), peek: bool = True,
         partial: tuple[int, int] | None = None) -> FetchAttr:
    return FetchAttr("BODY", section, peek=peek, partial=partial)


# --- scalar items ----------------------------------------------------------------------

def test_flags_uid_modseq() -> None:
    m = meta(frozenset({"$Label", "\\Seen", "\\Answered"}))
    line = fetch(SIMPLE, FetchAttr("FLAGS"), FetchAttr("UID"), FetchAttr("MODSEQ"), m=m)
    assert line == b"* 1 FETCH (FLAGS (\\Answered \\Seen $Label) UID 42 MODSEQ (7))\r\n"


def test_empty_flags() -> None:
    assert fetch(SIMPLE, FetchAttr("FLAGS")) == b"* 1 FETCH (FLAGS ())\r\n"
    assert format_flags(frozenset()) == b"()"


def test_internaldate_is_utc() -> None:
    assert format_datetime(1_057_049_557.0) == b'"01-Jul-2003 08:52:37 +0000"'
    assert format_datetime(0) == b'"01-Jan-1970 00:00:00 +0000"'
    line = fetch(SIMPLE, FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))
    assert line == b'* 1 FETCH (INTERNALDATE "01-Jul-2003 08:52:37 +0000" RFC822.SIZE 100)\r\n'


def test_savedate() -> None:
    assert fetch(SIMPLE, FetchAttr("SAVEDATE")) == b"* 1 FETCH (SAVEDATE NIL)\r\n"
    m = meta(savedate=86400.0 * 365)
    assert fetch(SIMPLE, FetchAttr("SAVEDATE"), m=m) == \
        b'* 1 FETCH (SAVEDATE "01-Jan-1971 00:00:00 +0000")\r\n'


def test_uid_first_for_uid_fetch() -> None:
    line = fetch(SIMPLE, FetchAttr("FLAGS"), include_uid=True)
    assert line == b"* 1 FETCH (UID 42 FLAGS ())\r\n"
    # asked for: in its place, not twice
    line = fetch(SIMPLE, FetchAttr("FLAGS"), FetchAttr("UID"), include_uid=True)
    assert line == b"* 1 FETCH (FLAGS () UID 42)\r\n"


def test_modseq_implied() -> None:
    line = fetch(SIMPLE, FetchAttr("FLAGS"), include_uid=True, modseq=True)
    assert line == b"* 1 FETCH (UID 42 FLAGS () MODSEQ (7))\r\n"


def test_meta_only_never_loads_content() -> None:
    loader = Loader(SIMPLE)
    attrs = (FetchAttr("FLAGS"), FetchAttr("UID"), FetchAttr("MODSEQ"),
             FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"), FetchAttr("SAVEDATE"))
    r = render_fetch(3, meta(), attrs, content=loader, cache=None, include_uid=True)
    assert loader.calls == 0 and r.cache is None and not r.needs_seen
    assert render_meta_only(3, meta(), attrs, include_uid=True) == r.line
    assert render_meta_only(3, meta(), (FetchAttr("ENVELOPE"),), include_uid=True) is None


# --- ENVELOPE, BODYSTRUCTURE, BODY and the cache --------------------------------------------

def test_envelope_and_structure_without_cache() -> None:
    loader = Loader(SIMPLE)
    attrs = (FetchAttr("ENVELOPE"), FetchAttr("BODYSTRUCTURE"), FetchAttr("BODY"))
    r = render_fetch(1, meta(), attrs, content=loader, cache=None, include_uid=False)
    root = parse(SIMPLE)
    assert r.line == (b"* 1 FETCH (ENVELOPE " + envelope(root) + b" BODYSTRUCTURE "
                      + bodystructure(root) + b" BODY " + bodystructure(root, False) + b")\r\n")
    assert loader.calls == 1
    assert r.cache == compute(SIMPLE)


def test_envelope_from_cache_loads_nothing() -> None:
    loader = Loader(SIMPLE)
    entry = compute(SIMPLE)
    r = render_fetch(1, meta(), (FetchAttr("ENVELOPE"), FetchAttr("BODY")), content=loader,
                     cache=entry, include_uid=False)
    assert loader.calls == 0 and r.cache is None
    assert entry.envelope in r.line and entry.body in r.line


def test_needs_content() -> None:
    assert not needs_content((FetchAttr("ENVELOPE"),), cached=True)
    assert needs_content((FetchAttr("ENVELOPE"),), cached=False)
    assert needs_content((body(),), cached=True)
    assert needs_content((FetchAttr("BINARY.SIZE", Section((1,))),), cached=True)
    assert not needs_content((FetchAttr("FLAGS"),), cached=False)


def test_cache_row_round_trip() -> None:
    entry = compute(SIMPLE)
    row = entry.to_row()
    assert from_row(row) == entry
    assert from_row((memoryview(row[0]), row[1], row[2], row[3])) == entry
    assert from_row((row[0], row[1], row[2], row[3].replace('"v":3', '"v":0'))) is None
    assert from_row((row[0], row[1], row[2], "not json")) is None
    assert from_row((None, row[1], row[2], row[3])) is None
    assert from_row(("x",)) is None


def test_cache_fields() -> None:
    e = compute(SIMPLE)
    assert e.date == 1_057_049_557.0 and e.date_offset == 120
    assert e.subject == "HELLO" and not e.reply
    assert e.from_ == "ALICE" and e.to == "BOB" and e.cc == ""
    assert e.display_from == "ALICE" and e.display_to == "BOB@EXAMPLE.ORG"
    assert e.message_id == "1234@example.com"


def test_cache_of_garbage() -> None:
    for data in (b"", b"\x00\xff\r\n\r\n", b"Subject: =?bogus?q?x?=\r\n", b"\n\n\n", b"From:"):
        e = compute(data)
        assert from_row(e.to_row()) == e


# --- BODY[section] and partials --------------------------------------------------------------

def test_body_whole_message_sets_seen() -> None:
    r = render_fetch(1, meta(), (body(peek=False),), content=Loader(SIMPLE), cache=None,
                     include_uid=False)
    assert r.line == b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(SIMPLE), SIMPLE)
    assert r.needs_seen


def test_peek_does_not_set_seen() -> None:
    m = meta()
    assert not sets_seen(m, (body(peek=True),))
    assert sets_seen(m, (body(peek=False),))
    assert sets_seen(m, (FetchAttr("RFC822"),))
    assert sets_seen(m, (FetchAttr("RFC822.TEXT"),))
    assert not sets_seen(m, (FetchAttr("RFC822.HEADER"),))
    assert sets_seen(m, (FetchAttr("BINARY", Section((1,))),))
    assert not sets_seen(m, (FetchAttr("BINARY", Section((1,)), peek=True),))
    assert not sets_seen(meta(frozenset({"\\Seen"})), (body(peek=False),))


def test_seen_set_adds_flags() -> None:
    m = meta(frozenset({"\\Seen"}))
    r = render_fetch(1, m, (body(Section((), "TEXT"), peek=False),), content=Loader(SIMPLE),
                     cache=None, include_uid=True, seen_set=True, modseq=True)
    assert r.line == b"* 1 FETCH (UID 42 BODY[TEXT] {9}\r\nHi Bob.\r\n FLAGS (\\Seen) MODSEQ (7))\r\n"
    assert not r.needs_seen
    # FLAGS asked for: not twice
    r = render_fetch(1, m, (FetchAttr("FLAGS"), body(peek=False)), content=Loader(SIMPLE),
                     cache=None, include_uid=False, seen_set=True)
    assert r.line.count(b"FLAGS") == 1


def test_partial_echoes_origin() -> None:
    assert fetch(SIMPLE, body(partial=(0, 5))) == b"* 1 FETCH (BODY[]<0> {5}\r\nFrom:)\r\n"
    n = len(SIMPLE)
    assert fetch(SIMPLE, body(partial=(n - 3, 100))) == \
        b"* 1 FETCH (BODY[]<%d> {3}\r\n.\r\n)\r\n" % (n - 3)
    # at and past the end: an empty string
    assert fetch(SIMPLE, body(partial=(n, 10))) == b"* 1 FETCH (BODY[]<%d> {0}\r\n)\r\n" % n
    assert fetch(SIMPLE, body(partial=(n + 100, 10))) == \
        b"* 1 FETCH (BODY[]<%d> {0}\r\n)\r\n" % (n + 100)
    assert fetch(SIMPLE, body(partial=(0, 0))) == b"* 1 FETCH (BODY[]<0> {0}\r\n)\r\n"


def test_header_and_text_sections() -> None:
    header = SIMPLE[: SIMPLE.index(b"\r\n\r\n") + 4]
    assert fetch(SIMPLE, body(Section((), "HEADER"))) == \
        b"* 1 FETCH (BODY[HEADER] {%d}\r\n%s)\r\n" % (len(header), header)
    assert fetch(SIMPLE, FetchAttr("RFC822.HEADER")) == \
        b"* 1 FETCH (RFC822.HEADER {%d}\r\n%s)\r\n" % (len(header), header)
    assert fetch(SIMPLE, FetchAttr("RFC822.TEXT")) == b"* 1 FETCH (RFC822.TEXT {9}\r\nHi Bob.\r\n)\r\n"
    assert fetch(SIMPLE, FetchAttr("RFC822")) == \
        b"* 1 FETCH (RFC822 {%d}\r\n%s)\r\n" % (len(SIMPLE), SIMPLE)


def test_header_fields_echo_upper_case() -> None:
    line = fetch(SIMPLE, body(Section((), "HEADER.FIELDS", ("subject", "to"))))
    assert line == (b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT TO)] "
                    + lit(b"To: bob@example.org\r\nSubject: Hello\r\n\r\n") + b")\r\n")
    line = fetch(SIMPLE, body(Section((), "HEADER.FIELDS.NOT", ("Subject", "To", "Date",
                                                                  "Message-ID"))))
    assert line == (b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (SUBJECT TO DATE MESSAGE-ID)] "
                    + lit(b"From: Alice <alice@example.com>\r\n\r\n") + b")\r\n")
    line = fetch(SIMPLE, body(Section((), "HEADER.FIELDS", ("No-Such",))))
    assert line == b"* 1 FETCH (BODY[HEADER.FIELDS (NO-SUCH)] {2}\r\n\r\n)\r\n"


def test_parts_of_a_multipart() -> None:
    assert fetch(MULTI, body(Section((1,)))) == b"* 1 FETCH (BODY[1] {9}\r\ncaf=C3=A9)\r\n"
    mime = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    assert fetch(MULTI, body(Section((1,), "MIME"))) == \
        b"* 1 FETCH (BODY[1.MIME] {%d}\r\n%s)\r\n" % (len(mime), mime)
    assert fetch(MULTI, body(Section((4,), "HEADER"))) == \
        b"* 1 FETCH (BODY[4.HEADER] " + lit(b"Subject: inner\r\nFrom: c@d\r\n\r\n") + b")\r\n"
    assert fetch(MULTI, body(Section((4,), "TEXT"))) == \
        b"* 1 FETCH (BODY[4.TEXT] {10}\r\ninner body)\r\n"
    assert fetch(MULTI, body(Section((4, 1)))) == b"* 1 FETCH (BODY[4.1] {10}\r\ninner body)\r\n"


def test_missing_parts_are_empty() -> None:
    assert fetch(MULTI, body(Section((9,)))) == b"* 1 FETCH (BODY[9] {0}\r\n)\r\n"
    assert fetch(SIMPLE, body(Section((2, 3)))) == b"* 1 FETCH (BODY[2.3] {0}\r\n)\r\n"
    # HEADER of a part that is no message: empty, not an error
    assert fetch(MULTI, body(Section((1,), "HEADER"))) == b"* 1 FETCH (BODY[1.HEADER] {0}\r\n)\r\n"


def test_section_of_a_single_part_message() -> None:
    assert fetch(SIMPLE, body(Section((1,)))) == b"* 1 FETCH (BODY[1] {9}\r\nHi Bob.\r\n)\r\n"


# --- BINARY ---------------------------------------------------------------------------------

def test_binary_quoted_printable() -> None:
    # decoded from quoted-printable: a literal8, as Dovecot sends it
    assert fetch(MULTI, FetchAttr("BINARY", Section((1,)), peek=True)) == \
        b"* 1 FETCH (BINARY[1] ~{5}\r\ncaf\xc3\xa9)\r\n"
    assert fetch(MULTI, FetchAttr("BINARY.SIZE", Section((1,)))) == \
        b"* 1 FETCH (BINARY.SIZE[1] 5)\r\n"


def test_binary_base64_with_nul_is_literal8() -> None:
    assert fetch(MULTI, FetchAttr("BINARY", Section((2,)), peek=True)) == \
        b"* 1 FETCH (BINARY[2] ~{9}\r\n\x00\x01\x02binary)\r\n"
    assert fetch(MULTI, FetchAttr("BINARY.SIZE", Section((2,)))) == \
        b"* 1 FETCH (BINARY.SIZE[2] 9)\r\n"
    # every partial of the part is framed alike, NUL or not; an empty one is a literal
    assert fetch(MULTI, FetchAttr("BINARY", Section((2,)), peek=True, partial=(3, 3))) == \
        b"* 1 FETCH (BINARY[2]<3> ~{3}\r\nbin)\r\n"
    assert fetch(MULTI, FetchAttr("BINARY", Section((2,)), peek=True, partial=(50, 3))) == \
        b"* 1 FETCH (BINARY[2]<50> {0}\r\n)\r\n"


def test_binary_unknown_cte() -> None:
    with pytest.raises(UnknownCte) as e:
        fetch(MULTI, FetchAttr("BINARY", Section((3,)), peek=True))
    assert e.value.code == "UNKNOWN-CTE"
    with pytest.raises(UnknownCte):
        fetch(MULTI, FetchAttr("BINARY.SIZE", Section((3,))))


def test_binary_whole_message_and_missing_part() -> None:
    assert fetch(SIMPLE, FetchAttr("BINARY", Section(()), peek=True)) == \
        b"* 1 FETCH (BINARY[] {%d}\r\n%s)\r\n" % (len(SIMPLE), SIMPLE)
    assert fetch(SIMPLE, FetchAttr("BINARY.SIZE", Section(()))) == \
        b"* 1 FETCH (BINARY.SIZE[] %d)\r\n" % len(SIMPLE)
    assert fetch(MULTI, FetchAttr("BINARY", Section((7,)), peek=True)) == \
        b"* 1 FETCH (BINARY[7] {0}\r\n)\r\n"
    assert fetch(MULTI, FetchAttr("BINARY.SIZE", Section((7,)))) == \
        b"* 1 FETCH (BINARY.SIZE[7] 0)\r\n"


def test_binary_with_nul_in_8bit_part() -> None:
    msg = b"Content-Transfer-Encoding: binary\r\n\r\na\x00b"
    assert fetch(msg, FetchAttr("BINARY", Section((1,)), peek=True)) == \
        b"* 1 FETCH (BINARY[1] ~{3}\r\na\x00b)\r\n"


def test_binary_of_8bit_latin1() -> None:
    msg = (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
           b"\r\nGr\xfc\xdfe\r\n")
    assert fetch(msg, FetchAttr("BINARY", Section((1,)), peek=True)) == \
        b"* 1 FETCH (BINARY[1] {7}\r\nGr\xfc\xdfe\r\n)\r\n"


# --- broken messages ---------------------------------------------------------------------------

BROKEN = [
    b"",
    b"no header at all",
    b"Subject: x\r\nFrom: a@b",                       # no blank line, no body
    b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
    b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: message/rfc822\r\n"
    b"\r\nSubject: cut",                              # truncated nested message
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n",
    b"\x00\x00\r\n\r\n\xff\xfe",
    b"From: <unterminated\r\nTo: ,,,\r\nDate: 99 Foo 20x\r\n\r\n",
]

ALL_ITEMS = (
    FetchAttr("FLAGS"), FetchAttr("ENVELOPE"), FetchAttr("BODYSTRUCTURE"), FetchAttr("BODY"),
    body(), body(Section((1,))), body(Section((1,), "MIME")), body(Section((), "TEXT")),
    body(Section((2, 1), "HEADER")), body(Section((), "HEADER.FIELDS", ("From",))),
    FetchAttr("RFC822"), FetchAttr("RFC822.HEADER"), FetchAttr("RFC822.TEXT"),
    FetchAttr("BINARY", Section((1,)), peek=True), FetchAttr("BINARY.SIZE", Section((1, 1))),
    body(partial=(5, 5)),
)


@pytest.mark.parametrize("data", BROKEN)
def test_broken_messages_render(data: bytes) -> None:
    r = render_fetch(1, meta(), ALL_ITEMS, content=Loader(data), cache=None, include_uid=True)
    assert r.line.startswith(b"* 1 FETCH (UID 42 FLAGS () ENVELOPE (")
    assert r.line.endswith(b")\r\n")
    assert r.cache is not None


def test_literal_lengths_are_exact() -> None:
    """Every {n} announces exactly the octets that follow it."""
    import re

    line = fetch(MULTI, *ALL_ITEMS[4:])
    pos = 0
    while True:
        m = re.compile(rb"~?\{(\d+)\}\r\n").search(line, pos)
        if m is None:
            break
        n = int(m.group(1))
        after = line[m.end() + n : m.end() + n + 1]
        assert after in (b" ", b")"), (m.group(0), after)
        pos = m.end() + n


def test_impossible_internal_date() -> None:
    assert format_datetime(1e300) == b'"01-Jan-1970 00:00:00 +0000"'
    assert format_datetime(float("nan")) == b'"01-Jan-1970 00:00:00 +0000"'


def test_fetch_never_raises_on_the_mime_corpus() -> None:
    """Every item on every corpus message (a quarter damaged) renders; only BINARY of an
    unknown transfer encoding may refuse, with its typed error."""
    from tests.mime.corpus import corpus

    refused = 0
    for data in corpus().values():
        m = meta(size=len(data))
        try:
            r = render_fetch(1, m, ALL_ITEMS, content=Loader(data), cache=None,
                             include_uid=True)
        except UnknownCte:
            refused += 1
            r = render_fetch(1, m, ALL_ITEMS[:13], content=Loader(data), cache=None,
                             include_uid=True)
        assert r.line.startswith(b"* 1 FETCH (UID 42 ") and r.line.endswith(b")\r\n")
        assert r.cache is not None and from_row(r.cache.to_row()) == r.cache
    assert refused < 20
