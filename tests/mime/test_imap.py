"""ENVELOPE, BODYSTRUCTURE, BODY[section] and BINARY (RFC 9051 §7.5.2, RFC 3516)."""

import pytest

from pillarbox.mime.imap import (
    SectionError,
    bodystructure,
    bodystructures,
    envelope,
    fetch_binary,
    fetch_section,
    human_string,
    nstring,
    resolve_part,
)
from pillarbox.mime.parser import parse

from .corpus import HANDWRITTEN, REAL_WORLD_KINDS, msg


def test_strings() -> None:
    assert nstring(None) == b"NIL"
    assert nstring(b'a "b"') == b'"a \\"b\\""'
    assert nstring("é".encode()) == b"{2}\r\n\xc3\xa9"
    assert nstring(b'"""""') == b'{5}\r\n"""""'
    assert human_string(b"a  b\r\n\tc ") == b"{5}\r\na b c"
    assert human_string(b"plain") == b'"plain"'
    assert human_string(b"   ") == b'""'


def test_envelope_simple() -> None:
    assert envelope(parse(HANDWRITTEN["simple"])) == (
        b'("Tue, 1 Jul 2003 10:52:37 +0200" "Hello" (("Alice" NIL "alice" "example.com")) '
        b'(("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) '
        b'((NIL NIL "bob" "example.org")) NIL NIL NIL "<1234@example.com>")')


def test_envelope_groups_sender_replyto() -> None:
    env = envelope(parse(HANDWRITTEN["groups"]))
    assert b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))' in env
    assert b'(NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")' in env
    env = envelope(parse(HANDWRITTEN["sender-replyto"]))
    assert env == (b'(NIL NIL ((NIL NIL "a" "example.com")) ((NIL NIL "s" "example.com")) '
                   b'((NIL NIL "r" "example.com")(NIL NIL "r2" "example.com")) NIL NIL '
                   b'((NIL NIL "hidden" "example.com")) "<a@b>" "<x@y>")')


def test_envelope_missing_parts_and_encoded_words_kept_raw() -> None:
    env = envelope(parse(HANDWRITTEN["missing-domain"]))
    assert b'(NIL NIL "localonly" "MISSING_DOMAIN")' in env
    assert b'(NIL NIL "MISSING_MAILBOX" "b")' in env
    env = envelope(parse(HANDWRITTEN["encoded-subject"]))
    assert b'"=?utf-8?q?caf=C3=A9?= =?ISO-8859-1?B?5OQ=?="' in env


def test_bodystructure_single_part() -> None:
    assert bodystructure(parse(HANDWRITTEN["simple"])) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 1 NIL NIL NIL NIL)')
    assert bodystructure(parse(HANDWRITTEN["simple"]), extended=False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 1)')


def test_folded_subject_is_a_literal_without_its_line_breaks() -> None:
    env = envelope(parse(REAL_WORLD_KINDS["folded-subject-plain"]))
    assert env.startswith(b"(NIL {39}\r\na subject folded once, as long ones are NIL ")
    assert envelope(parse(msg("Subject: unfolded", "", ""))).startswith(b'(NIL "unfolded" ')


def test_plain_7bit_message_has_the_canonical_bodystructure() -> None:
    # any spelling of text/plain; charset=us-ascii, 7bit gives the one lower-case form
    one = parse(msg("Content-Type: TEXT/Plain; CHARSET=US-ASCII", "Content-Transfer-Encoding: 7BIT",
                    "", "b", ""))
    assert bodystructure(one) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)')
    assert bodystructure(one, extended=False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1)')
    # anything more, or a part below the top, keeps its spelling
    more = parse(msg("Content-Type: text/plain; format=flowed", "Content-Transfer-Encoding: 7BIT",
                     "", "b", ""))
    assert b'"7BIT"' in bodystructure(more)
    parts = parse(REAL_WORLD_KINDS["cte-spelling"])
    assert b'"7BIT" 5 0' in bodystructure(parts)


def test_invalid_transfer_encoding_is_reported_as_7bit() -> None:
    bs = bodystructure(parse(REAL_WORLD_KINDS["cte-invalid"]))
    assert bs.count(b'"7bit"') == 4 and b'"x-uuencode"' in bs


def test_bodystructure_multipart_with_all_fields() -> None:
    bs = bodystructure(parse(HANDWRITTEN["multipart-attachment"]))
    assert bs == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 0 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "report.pdf") "<part1@example.com>" "The report" "base64" 84 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "report.pdf" "size" "12")) '
        b'("en" "de-CH") "http://example.com/report.pdf") "mixed" ("boundary" "XYZ") NIL NIL NIL)')


def test_bodystructure_message_rfc822() -> None:
    bs = bodystructure(parse(HANDWRITTEN["rfc822-simple"]))
    assert bs.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" 65 (NIL "inner" '
                         b'(("Inner" NIL "i" "example.com"))')
    assert bs.endswith(b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 18 1 NIL NIL NIL NIL) 4 '
                       b'NIL NIL NIL NIL) "mixed" ("boundary" "o") NIL NIL NIL)')


def test_bodystructure_rfc2231_kept_encoded_and_joined() -> None:
    bs = bodystructure(parse(HANDWRITTEN["rfc2231"]))
    assert b'("title*" "us-ascii\'en\'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn\'t it!")' in bs
    assert b'("name" "longname.txt" "charset" "us-ascii")' in bs


def test_multipart_without_parts_reports_an_empty_text_part() -> None:
    assert bodystructure(parse(HANDWRITTEN["multipart-no-parts"])) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" '
        b'("boundary" "e") NIL NIL NIL)')


NESTED = parse(HANDWRITTEN["nested"])


@pytest.mark.parametrize("spec,expected", [
    ("1.1", b"plain"),
    ("1.2.MIME", b"Content-Type: text/html\r\n\r\n"),
    ("2.HEADER", b"From: x@example.com\r\nSubject: forwarded\r\nContent-Type: multipart/mixed; boundary=fw\r\n\r\n"),
    ("2.1", b"forwarded text"),
    ("2.2", b"iVBORw0KGgo="),
    ("2.HEADER.FIELDS (SUBJECT from)", b"From: x@example.com\r\nSubject: forwarded\r\n\r\n"),
    ("2.HEADER.FIELDS.NOT (Content-Type)", b"From: x@example.com\r\nSubject: forwarded\r\n\r\n"),
    ("HEADER.FIELDS (Content-Type)", b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"),
    ("9", b""),
])
def test_sections(spec: str, expected: bytes) -> None:
    assert fetch_section(NESTED, spec) == expected


def test_whole_message_header_and_text() -> None:
    m = HANDWRITTEN["simple"]
    root = parse(m)
    assert fetch_section(root, "") == m
    assert fetch_section(root, "HEADER") + fetch_section(root, "TEXT") == m
    assert fetch_section(root, "1") == b"Hi Bob.\r\n"


def test_section_errors() -> None:
    with pytest.raises(SectionError):
        resolve_part(NESTED, [3])
    with pytest.raises(SectionError):
        fetch_section(NESTED, "1.TEXT")  # not a message/rfc822 part
    with pytest.raises(SectionError):
        fetch_section(NESTED, "bogus")


def test_binary_decodes() -> None:
    assert fetch_binary(NESTED, [2, 2]) == b"\x89PNG\r\n\x1a\n"
    root = parse(HANDWRITTEN["multipart-basic"])
    assert fetch_binary(root, [2]) == "<p>café</p>".encode()
    assert fetch_binary(root, []) == HANDWRITTEN["multipart-basic"]
    qp = parse(HANDWRITTEN["qp-soft-breaks"])
    assert fetch_binary(qp, [1]) == b"a line that is softly broken \xe9t\xe9\r\n="


def test_encapsulated_single_part_message_numbering() -> None:
    root = parse(HANDWRITTEN["rfc822-simple"])
    assert fetch_section(root, "1.1") == b"inner body\r\nline 2"
    assert fetch_section(root, "1.TEXT") == b"inner body\r\nline 2"
    assert fetch_section(root, "1").startswith(b"Subject: inner")
    assert fetch_section(root, "1.MIME") == b"Content-Type: message/rfc822\r\n\r\n"


def test_empty_message() -> None:
    root = parse(b"")
    assert bodystructure(root) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
    assert envelope(root) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert msg("") == b""


def test_rfc2231_parameters_are_sent_as_dovecot_sends_them() -> None:
    # plain parameters first as written, then the RFC 2231 ones sorted by name; a plain
    # section %-escaped into an extended value; sections with a gap left unjoined
    bs = bodystructure(parse(REAL_WORLD_KINDS["rfc2231-sections"]))
    assert b'("charset" "utf-8" "title*" "utf-8\'\'one%20two")' in bs
    assert b'("gap*0" "a" "gap*2" "c" "name*" "\'\'50%25%20x" "charset" "us-ascii")' in bs
    assert bs.endswith(b'"mixed" ("boundary" "s1s2") NIL NIL NIL)')


def test_an_empty_message_rfc822_part_still_has_an_envelope_and_a_body() -> None:
    # RFC 9051's body-type-msg: a client's parser needs them even when the part is
    # empty (its header block runs into the boundary), as Dovecot sends them
    root = parse(msg("Content-Type: multipart/mixed; boundary=m", "", "--m",
                     "Content-Type: text/plain", "", "a", "--m", "Content-Type: message/rfc822",
                     "", "--m--", ""))
    empty = b'(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii")'
    bs, body = bodystructures(root)
    assert bs == bodystructure(root) and body == bodystructure(root, extended=False)
    assert b'("message" "rfc822" NIL NIL NIL "7bit" 0 ' + empty + b' NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 0 NIL' in bs
    assert b'("message" "rfc822" NIL NIL NIL "7bit" 0 ' + empty + b' NIL NIL "7bit" 0 0) 0)' in body
    assert fetch_section(root, "2.HEADER") == b"" and fetch_section(root, "2.TEXT") == b""
