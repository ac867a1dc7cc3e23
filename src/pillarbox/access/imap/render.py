"""Small renderings the session needs for untagged data (RFC 9051 §7, §9).

The protocol core renders status responses; these give the bodies of data
responses the session builds: strings, mailbox names, flag lists, sequence
sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from pillarbox.mime.imap import nstring
from pillarbox.protocols.imap.mutf7 import encode as mutf7_encode

_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}


def string(value: str | bytes) -> bytes:
    """A quoted string, or a literal when quoting cannot carry it."""
    data = value.encode() if isinstance(value, str) else value
    return nstring(data)


def astring(value: str) -> bytes:
    data = value.encode()
    if data and not any(c in _ATOM_SPECIALS or c >= 0x80 for c in data):
        return data
    return nstring(data)


def mailbox_name(name: str, utf8: bool) -> bytes:
    """A mailbox name as the client must see it: modified UTF-7 unless UTF-8 is on."""
    wire = name if utf8 else mutf7_encode(name)
    data = wire.encode()
    if data.upper() == b"INBOX":
        return b"INBOX"
    return nstring(data)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(sorted(flags)).encode() + b")"


def sequence_set(numbers: Iterable[int]) -> bytes:
    """``1:3,7,9:10`` from any numbers (sorted, duplicates merged)."""
    out: list[str] = []
    start = prev = None
    for n in sorted(set(numbers)):
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out).encode()
