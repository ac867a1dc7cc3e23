"""DKIM canonicalization (RFC 6376 §3.4) and header splitting on raw bytes."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.policy.dkim.canon import (
    BodyHasher,
    Canon,
    canonical_body,
    canonical_header,
    relaxed_header,
    split_message,
)

SIMPLE, RELAXED = Canon.SIMPLE, Canon.RELAXED


# ------------------------------------------------------------------ reference
# The RFC's words, line by line and slowly: what the fast versions must equal.

def reference_body(body: bytes, canon: Canon) -> bytes:
    lines = body.split(b"\r\n")
    ends_with_crlf = body.endswith(b"\r\n")
    if ends_with_crlf:
        lines.pop()
    if canon is RELAXED:
        lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        return b"\r\n" if canon is SIMPLE else b""
    return b"".join(line + b"\r\n" for line in lines)


def reference_relaxed_header(raw: bytes) -> bytes:
    name, _, value = raw.partition(b":")
    value = value[:-2].replace(b"\r\n", b"")
    value = re.sub(rb"[ \t]+", b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


# ------------------------------------------------------------------ bodies

@pytest.mark.parametrize(
    ("body", "simple", "relaxed"),
    [
        (b"", b"\r\n", b""),                                    # empty body
        (b"\r\n", b"\r\n", b""),
        (b"\r\n\r\n\r\n", b"\r\n", b""),                        # only empty lines
        (b"abc", b"abc\r\n", b"abc\r\n"),                       # no final CRLF
        (b"abc \t", b"abc \t\r\n", b"abc\r\n"),                 # ... with trailing WSP
        (b"abc\r\n\r\n\r\n", b"abc\r\n", b"abc\r\n"),           # trailing empty lines
        (b"a  b \r\n", b"a  b \r\n", b"a b\r\n"),               # trailing WSP, runs
        (b"a\t\tb\t\r\n", b"a\t\tb\t\r\n", b"a b\r\n"),
        (b" \t \r\n", b" \t \r\n", b""),                        # a line of WSP is empty
        (b"x\r\n \r\n\t\r\n", b"x\r\n \r\n\t\r\n", b"x\r\n"),
        (b"  lead\r\n", b"  lead\r\n", b" lead\r\n"),           # leading WSP is kept (one SP)
        (b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n"),  # inner empty lines stay
        (b"a\r\r\n", b"a\r\r\n", b"a\r\r\n"),                   # a bare CR is not a line end
    ],
)
def test_body(body: bytes, simple: bytes, relaxed: bytes) -> None:
    assert canonical_body(body, SIMPLE) == simple
    assert canonical_body(body, RELAXED) == relaxed
    assert reference_body(body, SIMPLE) == simple or b"\r\r" in body
    assert reference_body(body, RELAXED) == relaxed or b"\r\r" in body


def test_rfc6376_examples() -> None:
    # RFC 6376 §3.4.5.
    body = b" C \r\nD \t E\r\n\r\n\r\n"
    assert canonical_body(body, RELAXED) == b" C\r\nD E\r\n"
    assert canonical_body(body, SIMPLE) == b" C \r\nD \t E\r\n"
    fields, _ = split_message(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n")
    assert [relaxed_header(f) for f in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert [canonical_header(f, SIMPLE) for f in fields] == [b"A: X\r\n", b"B : Y\t\r\n\tZ  \r\n"]


_body_text = st.lists(
    st.sampled_from([b"a", b"word", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"\xc3\xa9", b"\r", b"x y"]),
    max_size=40,
).map(b"".join)


@given(_body_text)
def test_body_matches_reference(body: bytes) -> None:
    if re.search(rb"\r(?!\n)", body):
        # bare CRs: the line-based reference cannot express them; only check no crash
        canonical_body(body, SIMPLE), canonical_body(body, RELAXED)
        return
    assert canonical_body(body, SIMPLE) == reference_body(body, SIMPLE)
    assert canonical_body(body, RELAXED) == reference_body(body, RELAXED)


def test_large_body_is_linear() -> None:
    line = b"Lorem ipsum  dolor\tsit amet, consectetur adipiscing elit \r\n"
    body = line * 100_000 + b"\r\n" * 1000       # 6 MB
    relaxed = canonical_body(body, RELAXED)
    assert relaxed == b"Lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n" * 100_000
    assert canonical_body(b"\r\n" * 500_000, SIMPLE) == b"\r\n"


# ------------------------------------------------------------------ header fields

def test_split_folded_fields_and_body() -> None:
    message = (b"From: a@example.com\r\nSubject: one\r\n two\r\n\tthree\r\nX-Empty:\r\n"
               b"to : b@example.org\r\n\r\nbody\r\n\r\nmore\r\n")
    fields, body = split_message(message)
    assert [f.name for f in fields] == [b"from", b"subject", b"x-empty", b"to"]
    assert fields[1].raw == b"Subject: one\r\n two\r\n\tthree\r\n"
    assert fields[1].value == b" one\r\n two\r\n\tthree"
    assert fields[3].raw == b"to : b@example.org\r\n"
    assert relaxed_header(fields[3]) == b"to:b@example.org\r\n"
    assert relaxed_header(fields[1]) == b"subject:one two three\r\n"
    assert relaxed_header(fields[2]) == b"x-empty:\r\n"
    assert body == b"body\r\n\r\nmore\r\n"
    assert b"".join(f.raw for f in fields) + b"\r\n" + body == message


@given(st.lists(st.tuples(st.sampled_from(["From", "SUBJECT", "x-a", "To"]),
                          st.lists(st.sampled_from([b"v", b" ", b"\t", b"\r\n ", b"\r\n\t", b"w  x"]),
                                   max_size=8).map(b"".join)), max_size=6))
def test_relaxed_header_matches_reference(spec: list[tuple[str, bytes]]) -> None:
    message = b"".join(name.encode() + b":" + value + b"\r\n" for name, value in spec) + b"\r\nbody"
    fields, body = split_message(message)
    assert body == b"body"
    assert [f.name for f in fields] == [n.lower().encode() for n, _ in spec]
    for field in fields:
        assert relaxed_header(field) == reference_relaxed_header(field.raw)


def test_header_names_in_any_case_are_one_name() -> None:
    fields, _ = split_message(b"SUBJECT: a\r\nsubject: b\r\nSubJect: c\r\n\r\n")
    assert {f.name for f in fields} == {b"subject"}
    assert [relaxed_header(f) for f in fields] == [b"subject:a\r\n", b"subject:b\r\n", b"subject:c\r\n"]


def test_messages_without_body_or_headers() -> None:
    fields, body = split_message(b"From: a\r\nTo: b\r\n")
    assert [f.name for f in fields] == [b"from", b"to"] and body == b""
    fields, body = split_message(b"From: a")           # no line end at all
    assert fields[0].raw == b"From: a\r\n" and body == b""
    assert split_message(b"\r\nonly body\r\n") == ([], b"only body\r\n")
    assert split_message(b"") == ([], b"")


def test_bare_lf_is_read_as_crlf() -> None:
    fields, body = split_message(b"From: a\nSubject: x\n y\n\nline\n")
    assert [f.raw for f in fields] == [b"From: a\r\n", b"Subject: x\r\n y\r\n"]
    assert body == b"line\r\n"


def test_lines_that_are_not_fields_are_skipped() -> None:
    message = b"From joe@example.com Mon Jan 1\r\n continuation\r\nnot a field\r\nFrom: a\r\n\r\nb"
    fields, body = split_message(message)
    assert [f.raw for f in fields] == [b"From: a\r\n"]
    assert body == b"b"


# ------------------------------------------------------------------ streaming

_stream_text = st.lists(
    st.sampled_from([b"a", b"word", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b" \r\n"]),
    max_size=60,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(_stream_text, st.lists(st.integers(0, 12), max_size=20), st.sampled_from([SIMPLE, RELAXED]),
       st.one_of(st.none(), st.integers(0, 80)))
def test_body_hasher_equals_whole_body(body: bytes, cuts: list[int], canon: Canon,
                                       length: int | None) -> None:
    """Invariant: however the body is cut into chunks, the streamed hash is the
    hash of the canonical body (cut to l=)."""
    hasher = BodyHasher(canon, length=length)
    pos = 0
    for size in cuts:
        hasher.update(body[pos : pos + size])
        pos += size
    hasher.update(body[pos:])
    whole = canonical_body(body, canon)
    expected = whole if length is None else whole[:length]
    assert hasher.digest() == hashlib.sha256(expected).digest()
    assert hasher.hashed == len(expected)


def test_body_hasher_on_a_large_body_in_chunks() -> None:
    body = (b"line with trailing space \r\n\t\tand tabs\r\n\r\n" * 50_000) + b"\r\n" * 10
    hasher = BodyHasher(RELAXED)
    for i in range(0, len(body), 65536):
        hasher.update(body[i : i + 65536])
    assert hasher.digest() == hashlib.sha256(canonical_body(body, RELAXED)).digest()
