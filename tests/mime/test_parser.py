"""The part tree: offsets, structure, nesting, malformed input (RFC 2045/2046)."""

import mmap
import tempfile

import pytest

from pillarbox.mime.parser import MAX_DEPTH, Part, parse

from .corpus import HANDWRITTEN, REAL_WORLD_KINDS, msg

NESTED = HANDWRITTEN["nested"]


def shape(p: Part) -> object:
    if p.message is not None:
        return (p.content_type, shape(p.message))
    if p.children:
        return (p.content_type, [shape(c) for c in p.children])
    return p.content_type


def test_simple_message_offsets() -> None:
    m = HANDWRITTEN["simple"]
    root = parse(m)
    assert root.start == 0 and root.end == len(m)
    assert root.header_bytes().endswith(b"\r\n\r\n")
    assert root.body_bytes() == b"Hi Bob.\r\n"
    assert root.header_size + root.body_size == len(m)
    assert root.lines == 1 and root.content_type == "text/plain" and root.charset == "us-ascii"


def test_nested_structure() -> None:
    root = parse(NESTED)
    assert shape(root) == ("multipart/mixed", [
        ("multipart/alternative", ["text/plain", "text/html"]),
        ("message/rfc822", ("multipart/mixed", ["text/plain", "image/png"])),
    ])
    alt = root.children[0]
    assert alt.children[0].body_bytes() == b"plain"  # the CRLF before a boundary is the boundary's
    assert alt.children[1].header_bytes() == b"Content-Type: text/html\r\n\r\n"
    inner = root.children[1].message
    assert inner is not None and inner.headers.text("Subject") == "forwarded"
    assert inner.children[1].decoded() == b"\x89PNG\r\n\x1a\n"


def test_offsets_are_absolute_and_consistent() -> None:
    root = parse(NESTED)
    for p in root.walk():
        assert 0 <= p.start <= p.body_start <= p.end <= len(NESTED)
        assert NESTED[p.start:p.body_start] == p.header_bytes()
        for f in p.headers:
            assert NESTED[f.offset:f.offset + len(f.raw)] == f.raw


def test_preamble_epilogue_and_part_metadata() -> None:
    root = parse(HANDWRITTEN["multipart-attachment"])
    att = root.children[1]
    assert att.filename == "report.pdf"
    assert att.disposition == ("attachment", {"filename": "report.pdf", "size": "12"})
    assert att.transfer_encoding == "base64"
    assert att.decoded().startswith(b"%PDF-1.4")


def test_default_types() -> None:
    assert parse(b"\r\nbody").content_type == "text/plain"
    digest = parse(HANDWRITTEN["digest"])
    assert [c.content_type for c in digest.children] == ["message/rfc822"] * 2 + ["text/plain"]
    assert digest.children[0].message.headers.text("subject") == "one"


def test_message_global_is_nested_unless_disabled() -> None:
    m = HANDWRITTEN["message-global"]
    assert parse(m).children[0].message.headers.text("Subject") == "Grüße"
    assert parse(m, global_messages=False).children[0].message is None


@pytest.mark.parametrize("name", ["missing-close", "wrong-boundary", "no-boundary-param",
                                  "nested-unclosed", "part-without-blank", "empty-parts",
                                  "multipart-no-parts", "no-blank-line", "empty", "lf-only"])
def test_malformed_multiparts_give_a_structure(name: str) -> None:
    root = parse(HANDWRITTEN[name])
    assert root.end == len(HANDWRITTEN[name])


def test_missing_close_delimiter_runs_to_the_end() -> None:
    root = parse(HANDWRITTEN["missing-close"])
    assert root.children[0].body_bytes() == b"never closed\r\n"


def test_outer_boundary_ends_an_unclosed_inner_multipart() -> None:
    root = parse(HANDWRITTEN["nested-unclosed"])
    assert shape(root) == ("multipart/mixed", [("multipart/alternative", ["text/plain"]), "text/plain"])
    assert root.children[1].body_bytes() == b"after"


def test_the_longer_inner_boundary_wins_over_its_prefix() -> None:
    root = parse(HANDWRITTEN["boundary-prefix"])
    assert shape(root) == ("multipart/mixed", [("multipart/mixed", ["text/plain"]), "text/plain"])


def test_longest_matching_boundary_wins() -> None:
    # "--ab" starts with the inner boundary "a" too; it is the outer "ab" (as in Dovecot)
    root = parse(REAL_WORLD_KINDS["boundary-longest-match"])
    assert shape(root) == ("multipart/mixed", ["multipart/mixed", "text/plain"])
    assert root.children[1].body_bytes() == b"--a\r\n\r\ninner\r\n--a--"


def test_an_rfc2231_boundary_is_decoded() -> None:
    # boundary*="us-ascii''B2" (RFC 2231 §4), as mutt writes it; sections are joined too
    root = parse(REAL_WORLD_KINDS["rfc2231-boundary"])
    assert shape(root) == ("multipart/signed", ["text/plain", "application/pgp-signature"])
    assert root.children[0].body_bytes() == b"signed text"
    root = parse(REAL_WORLD_KINDS["rfc2231-sections"])
    assert shape(root) == ("multipart/mixed", ["text/plain", "text/plain"])


def test_boundaries_ending_in_dashes() -> None:
    root = parse(REAL_WORLD_KINDS["boundary-dashes"])
    inner = root.children[0]
    assert inner.subtype_raw == "mixed" and len(inner.children) == 1
    assert inner.children[0].body_bytes() == b"body"


def test_transfer_encoding_to_decode_with_and_as_reported() -> None:
    def part(cte: str) -> Part:
        return parse(msg("Content-Transfer-Encoding: " + cte, "", "eA==", ""))

    assert part("BASE64 (as written)").transfer_encoding == "base64"
    assert part("BASE64 (as written)").transfer_encoding_raw == b"BASE64"
    # "base64;" is not one token: BODYSTRUCTURE says 7bit, decoding still sees base64
    assert part("base64;").transfer_encoding_raw == b"7bit"
    assert part("base64;").transfer_encoding == "base64"
    assert part("base64;").decoded() == b"x"
    assert part('"base64"').transfer_encoding == "7bit"
    assert part("").transfer_encoding_raw == b"7bit"
    assert part("x-uuencode").transfer_encoding_raw == b"x-uuencode"


def test_lf_only_line_ends() -> None:
    root = parse(HANDWRITTEN["lf-only"])
    assert root.children[0].body_bytes() == b"body"


def test_no_blank_line_means_all_header() -> None:
    root = parse(b"Subject: x\r\nFrom: a@b")
    assert root.body_size == 0 and root.headers.text("From") == "a@b"


def test_absurd_nesting_is_bounded() -> None:
    depth = MAX_DEPTH + 50
    m = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                 for i in range(depth)) + b"\r\nbottom\r\n"
    root = parse(m)
    assert max(p.depth for p in root.walk()) <= MAX_DEPTH
    nested = msg(*(["Content-Type: message/rfc822", ""] * 5000)) + b"x"
    assert max(p.depth for p in parse(nested).walk()) <= MAX_DEPTH


def test_megabyte_headers_are_bounded_but_offsets_exact() -> None:
    m = b"X-Big: " + b"a" * 3_000_000 + b"\r\nSubject: late\r\n\r\nbody"
    root = parse(m)
    assert root.body_bytes() == b"body"
    assert root.header_truncated and "Subject" not in root.headers


def test_nul_bare_cr_and_junk_never_raise() -> None:
    for m in (b"\x00" * 100, b"\r" * 100, b"\n" * 100, b":\r\n\r\n", b"Content-Type: multipart/x; boundary=\r\n\r\n--",
              b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n--\r\n",
              b"Content-Type: message/rfc822\r\n\r\n"):
        parse(m)


def test_mmap_input_gives_the_same_tree() -> None:
    with tempfile.TemporaryFile() as f:
        f.write(NESTED)
        f.flush()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            root = parse(mm)
            assert shape(root) == shape(parse(NESTED))
            assert [p.lines for p in root.walk()] == [p.lines for p in parse(NESTED).walk()]
            assert root.children[1].message.children[1].decoded() == b"\x89PNG\r\n\x1a\n"


def test_sub_range_parse() -> None:
    outer = b"junk" + NESTED + b"junk"
    root = parse(outer, 4, 4 + len(NESTED))
    assert root.end == 4 + len(NESTED) and shape(root) == shape(parse(NESTED))
