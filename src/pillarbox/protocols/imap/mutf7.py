"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3, RFC 9051 §5.1).

IMAP4rev1 clients name mailboxes in a 7-bit form of UTF-7: printable US-ASCII
(0x20-0x7E) stands for itself, except ``&``, written ``&-``; every other run
of characters is UTF-16BE in a base64 variant (``,`` instead of ``/``, no
padding) between ``&`` and ``-``.  IMAP4rev2 clients and clients that enabled
UTF8=ACCEPT (RFC 6855) send UTF-8 instead, and this module is not used.

``decode`` is strict, as RFC 3501 §5.1.3 asks: a name that a conforming client
cannot have produced (8-bit octets, an unterminated shift, printable ASCII
inside a shift, non-zero padding bits, a lone surrogate) raises
``MUTF7Error``, the client's fault.
"""

from __future__ import annotations

import binascii

__all__ = ["MUTF7Error", "decode", "encode"]

_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


class MUTF7Error(ValueError):
    """The text is not valid modified UTF-7 (the client's fault)."""


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """``name`` in modified UTF-7 (printable ASCII unchanged, ``&`` → ``&-``)."""
    if name.isascii() and "&" not in name and name.isprintable():
        return name
    out: list[str] = []
    shifted: list[str] = []
    for ch in name:
        if " " <= ch <= "~":
            if shifted:
                out.append("&" + _b64("".join(shifted).encode("utf-16-be")) + "-")
                shifted.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            shifted.append(ch)
    if shifted:
        out.append("&" + _b64("".join(shifted).encode("utf-16-be")) + "-")
    return "".join(out)


def decode(name: str) -> str:
    """The Unicode name that modified UTF-7 ``name`` stands for."""
    if "&" not in name:
        if not name.isascii():
            raise MUTF7Error("8-bit characters are not allowed in modified UTF-7")
        return name
    if not name.isascii():
        raise MUTF7Error("8-bit characters are not allowed in modified UTF-7")
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        amp = name.find("&", i)
        if amp < 0:
            out.append(name[i:])
            break
        out.append(name[i:amp])
        end = name.find("-", amp + 1)
        if end < 0:
            raise MUTF7Error("'&' without its closing '-'")
        run = name[amp + 1 : end]
        i = end + 1
        if not run:
            out.append("&")
            continue
        out.append(_decode_run(run))
    return "".join(out)


def _decode_run(run: str) -> str:
    raw = run.encode("ascii")
    if not all(c in _B64 for c in raw):
        raise MUTF7Error(f"invalid character in modified base64 {run!r}")
    # 16-bit units: 2 octets take 3 characters (2 padding bits), 4 octets 6, 6 octets 8.
    if len(raw) % 8 not in (0, 3, 6):
        raise MUTF7Error(f"modified base64 {run!r} is not a whole number of UTF-16 units")
    padded = raw.replace(b",", b"/") + b"=" * (-len(raw) % 4)
    try:
        data = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise MUTF7Error(f"invalid modified base64 {run!r}") from exc
    if _b64(data) != run:
        raise MUTF7Error(f"modified base64 {run!r} has non-zero padding bits")
    try:
        text = data.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error(f"modified base64 {run!r} is not valid UTF-16") from exc
    if any(" " <= ch <= "~" for ch in text):
        raise MUTF7Error("printable ASCII must not be encoded in modified base64")
    return text
