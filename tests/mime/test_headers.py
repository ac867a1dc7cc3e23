"""Header fields, unfolding, RFC 2047 encoded words, RFC 2231 parameters, RFC 6532."""

from pillarbox.mime.headers import Headers, decode_words, split_fields, unfold
from pillarbox.mime.params import (
    join_rfc2231,
    parse_content_type,
    parse_parameters,
    parse_token_value,
    parse_transfer_encoding,
)


def test_split_fields_keeps_raw_octets_and_offsets() -> None:
    block = b"Subject: a\r\n b\r\nFrom : x@y\r\nno colon here\r\nX-Empty:\r\n"
    fields = split_fields(block, offset=100)
    assert [f.name for f in fields] == ["Subject", "From", "X-Empty"]
    assert fields[0].raw == b"Subject: a\r\n b\r\n"
    assert fields[0].value == b"a\r\n b"
    assert fields[0].offset == 100
    assert fields[1].offset == 100 + len(b"Subject: a\r\n b\r\n")
    assert fields[2].value == b""


def test_unfold_removes_only_the_line_breaks() -> None:
    assert unfold(b"a\r\n b\r\n\tc") == b"a b\tc"
    assert unfold(b"a\n b") == b"a b"
    assert unfold(b"plain") == b"plain"


def test_headers_lookup_is_case_insensitive_and_ordered() -> None:
    h = Headers(split_fields(b"To: a\r\nto: b\r\nSubject: =?utf-8?q?x?=\r\n"))
    assert [f.value for f in h.get_all("TO")] == [b"a", b"b"]
    assert h.value("to") == b"a"
    assert h.text("subject") == "x"
    assert "Subject" in h and "Cc" not in h and len(h) == 3


def test_encoded_words_b_and_q() -> None:
    assert decode_words(b"=?ISO-8859-1?Q?Andr=E9?= Pirard") == "André Pirard"
    assert decode_words(b"=?utf-8?B?SsO2cmc=?=") == "Jörg"
    assert decode_words(b"=?utf-8?q?a_b?=") == "a b"


def test_whitespace_between_adjacent_words_is_dropped() -> None:
    # RFC 2047 §8 examples
    assert decode_words(b"(=?ISO-8859-1?Q?a?= b)") == "(a b)"
    assert decode_words(b"=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=") == "ab"
    assert decode_words(b"=?ISO-8859-1?Q?a?=\r\n   =?ISO-8859-1?Q?b?=") == "ab"
    assert decode_words(b"=?ISO-8859-1?Q?a_b?=") == "a b"


def test_a_character_split_across_words_survives() -> None:
    assert decode_words(b"=?utf-8?q?caf=C3?= =?utf-8?q?=A9?=") == "café"


def test_charsets_python_knows_and_language_suffix() -> None:
    assert decode_words(b"=?koi8-r?b?8NLJ18XU?=") == "Привет"
    assert decode_words(b"=?shift_jis?B?k/qWe4zq?=") == "日本語"
    assert decode_words(b"=?US-ASCII*EN?Q?Keith_Moore?=") == "Keith Moore"  # RFC 2231 §5


def test_malformed_words_are_left_as_they_are() -> None:
    raw = b"=?nope?q?x?= =?utf-8?b?!!!?= =?utf-8?q?unterminated"
    assert decode_words(raw) == raw.decode()
    assert decode_words(b"ok =?utf-8?x?y?=") == "ok =?utf-8?x?y?="


def test_utf8_headers_rfc6532_and_latin1_fallback() -> None:
    assert decode_words("Grüße".encode()) == "Grüße"
    assert decode_words(b"caf\xe9") == "café"


def test_content_type_with_comments_quotes_and_case() -> None:
    ct = parse_content_type(b'Text/Plain (comment); Charset="utf-8"; format=flowed')
    assert ct == ("Text", "Plain", [("Charset", b"utf-8"), ("format", b"flowed")])
    assert parse_content_type(b"garbage") is None
    assert parse_content_type(None) is None
    assert parse_content_type(b"multipart/mixed; boundary=\"a\\\"b\"")[2] == [("boundary", b'a"b')]


def test_broken_parameters_are_skipped() -> None:
    assert parse_parameters(b"; =x; a=1; b; c=\"2\"") == [("a", b"1"), ("c", b"2")]


def test_parameter_after_a_lost_semicolon_is_read() -> None:
    assert parse_content_type(b'multipart/mixed\r\n\tboundary="b"') == (
        "multipart", "mixed", [("boundary", b"b")])
    assert parse_parameters(b"; access-type=x\r\n  server=y; z=1") == [
        ("access-type", b"x"), ("server", b"y"), ("z", b"1")]
    assert parse_parameters(b";; boundary=b") == [("boundary", b"b")]
    assert parse_parameters(b"; name=a b; c=d") == [("name", b"a"), ("c", b"d")]


def test_transfer_encoding_is_one_token() -> None:
    assert parse_transfer_encoding(b" (c) Base64 (c)") == b"Base64"
    assert parse_transfer_encoding(None) is None
    for bad in (b"", b"base 64", b"base64;", b'"base64"', b"ba/se", b"7bit\x7f"):
        assert parse_transfer_encoding(bad) is None, bad
    assert parse_transfer_encoding(b"base64; x", strict=False) == b"base64"
    assert parse_transfer_encoding(b"base 64", strict=False) == b"base"


def test_rfc2231_continuations_and_charsets() -> None:
    raw = parse_parameters(
        b"; title*0*=us-ascii'en'This%20is%20even%20more%20; title*1*=%2A%2A%2Afun%2A%2A%2A%20;"
        b" title*2=\"isn't it!\"")
    assert join_rfc2231(raw)["title"] == "This is even more ***fun*** isn't it!"
    raw = parse_parameters(b"; filename*=UTF-8''na%C3%AFve%20file.txt; name*0=\"a\"; name*1=\"b\"")
    assert join_rfc2231(raw) == {"filename": "naïve file.txt", "name": "ab"}


def test_rfc2231_missing_section_stops_the_value() -> None:
    raw = parse_parameters(b"; n*0=a; n*2=c")
    assert join_rfc2231(raw)["n"] == "a"


def test_encoded_words_in_parameters_are_decoded() -> None:
    raw = parse_parameters(b'; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="')
    assert join_rfc2231(raw)["name"] == "résumé.pdf"


def test_disposition() -> None:
    assert parse_token_value(b"attachment; filename=a.txt") == ("attachment", [("filename", b"a.txt")])
    assert parse_token_value(b"") is None


def test_bytes_codecs_and_odd_charset_names_are_not_charsets() -> None:
    assert decode_words(b"=?base64?q?x?= =?rot13?q?y?=") == "=?base64?q?x?= =?rot13?q?y?="
    assert decode_words(b"=?u\x00tf-8?q?x?=") == "=?u\x00tf-8?q?x?="
    assert join_rfc2231([("n*", b"base64''abc")]) == {"n": "abc"}
