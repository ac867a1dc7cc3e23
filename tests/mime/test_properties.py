"""Property tests. Invariants:

1. No input makes the parser, the IMAP renderings, the text extraction or the
   7-bit transform raise (any exception from them is a bug).
2. to_7bit produces 7-bit data whose parts decode to exactly the original parts'
   decoded content (for messages without non-ASCII addresses).
3. Part offsets are always ordered and within the message.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings

from pillarbox.mime.encodings import decode_base64, decode_qp, encode_base64, encode_qp
from pillarbox.mime.generate import encode_words, is_7bit, needs_smtputf8, to_7bit
from pillarbox.mime.headers import decode_words
from pillarbox.mime.imap import bodystructure, envelope, fetch_binary, fetch_section
from pillarbox.mime.parser import Part, parse
from pillarbox.mime.text import message_text

from . import strategies as mst
from .test_dovecot import section_paths

FAST = settings(max_examples=int(os.environ.get("PILLARBOX_MIME_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exercise(m: bytes) -> Part:
    root = parse(m)
    for p in root.walk():
        assert 0 <= p.start <= p.body_start <= p.end <= len(m)
    envelope(root)
    bodystructure(root)
    bodystructure(root, extended=False)
    for path, _ in section_paths(root):
        spec = ".".join(map(str, path))
        fetch_section(root, spec)
        fetch_section(root, spec + ".MIME")
        fetch_binary(root, path)
    fetch_section(root, "HEADER.FIELDS (From Subject)")
    message_text(root)
    return root


@FAST
@given(mst.raw_bytes())
def test_arbitrary_bytes_never_raise(m: bytes) -> None:
    exercise(m)
    to_7bit(m)


@FAST
@given(mst.malformed_messages())
def test_malformed_messages_never_raise(m: bytes) -> None:
    exercise(m)
    to_7bit(m)


def decoded_leaves(root: Part) -> list[bytes]:
    return [p.decoded() for p in root.walk() if not p.children and p.message is None]


@FAST
@given(mst.messages())
def test_to_7bit_round_trips_decoded_content(m: bytes) -> None:
    exercise(m)
    out = to_7bit(m)
    if needs_smtputf8(m):
        return
    assert is_7bit(out)
    assert decoded_leaves(parse(out)) == decoded_leaves(parse(m))


@FAST
@given(mst.raw_bytes())
def test_transfer_encodings_round_trip(data: bytes) -> None:
    assert decode_qp(encode_qp(data)) == data
    assert decode_base64(encode_base64(data)) == data
    assert is_7bit(encode_qp(data)) and all(len(x) <= 76 for x in encode_qp(data).split(b"\r\n"))


@FAST
@given(mst.st.text(max_size=120))
def test_encoded_words_round_trip(text: str) -> None:
    text = text.replace("\r", "").replace("\n", "")
    enc = encode_words(text)
    assert enc.isascii()
    assert decode_words(enc.encode()) == text
