"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3), ``pillarbox.protocols.imap.mutf7``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.protocols.imap.mutf7 import MUTF7Error, decode, encode


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("", ""),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        # RFC 3501 §5.1.3's example
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
        ("Корзина", "&BBoEPgRABDcEOAQ9BDA-"),
        ("📧", "&2D3c5w-"),                      # outside the BMP: a surrogate pair
        ("é&é", "&AOk-&-&AOk-"),
        ("a\tb", "a&AAk-b"),                     # control characters are encoded too
        ("~", "~"),
    ],
)
def test_known_names(text: str, wire: str) -> None:
    assert encode(text) == wire
    assert decode(wire) == text


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("&", "without its closing"),
        ("a&AOk", "without its closing"),
        ("é", "8-bit"),
        ("&AOk-é", "8-bit"),
        ("&AGE-", "printable ASCII"),            # "a" must stand for itself
        ("&AOl-", "padding bits"),               # not the shortest form
        ("&AO-", "whole number"),
        ("&A-", "whole number"),
        ("&AOk=-", "invalid character"),
        ("&AO/k-", "invalid character"),         # "/" is "," in modified base64
        ("&2D0-", "UTF-16"),                     # a lone high surrogate
        ("&3gA-", "UTF-16"),                     # a lone low surrogate
    ],
)
def test_invalid_names(wire: str, why: str) -> None:
    with pytest.raises(MUTF7Error, match=why):
        decode(wire)


@given(st.text())
def test_round_trip(text: str) -> None:
    # Lone surrogates cannot be encoded in UTF-16 at all; the rest round-trips.
    try:
        wire = encode(text)
    except UnicodeEncodeError:
        assert any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
        return
    assert wire.isascii()
    assert all(" " <= ch <= "~" for ch in wire)
    assert decode(wire) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decode_never_raises_anything_else(wire: str) -> None:
    try:
        decode(wire)
    except MUTF7Error:
        pass
