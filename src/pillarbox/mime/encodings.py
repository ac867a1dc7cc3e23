"""Content transfer encodings: base64 and quoted-printable (RFC 2045 §6).

Decoders are lenient, as a receiving server must be: characters outside the
base64 alphabet are ignored, a truncated final quantum is dropped, and a
quoted-printable ``=`` that does not start a valid escape is kept literally.
Encoders produce the canonical form with CRLF line breaks and lines of at most
76 characters (RFC 2045 §6.7 rule 5, §6.8).
"""

from __future__ import annotations

import binascii
import re

__all__ = [
    "IDENTITY_ENCODINGS",
    "decode_base64",
    "decode_qp",
    "decode_transfer",
    "encode_base64",
    "encode_qp",
]

#: Encodings whose content is the octets themselves (RFC 2045 §6.2).
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary", ""})

_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/]+")
_QP_TRAILING_WS = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def decode_base64(data: bytes) -> bytes:
    """Decode base64, ignoring anything outside the alphabet (RFC 2045 §6.8).

    Decoding stops at the first ``=`` pad, as the RFC says the data ends there;
    an incomplete final quantum of one character carries no octet and is dropped.
    """
    pad = data.find(b"=")
    if pad >= 0:
        data = data[:pad]
    clean = _NOT_B64.sub(b"", data)
    rest = len(clean) % 4
    if rest == 1:
        clean = clean[:-1]
        rest = 0
    if rest:
        clean += b"=" * (4 - rest)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:  # pragma: no cover - the input is sanitised above
        return b""


def decode_qp(data: bytes) -> bytes:
    """Decode quoted-printable (RFC 2045 §6.7).

    Trailing whitespace on a line is transport padding and is removed (rule 3);
    ``=`` followed by a line break is a soft line break; a malformed escape is
    kept as it is.
    """
    data = _QP_TRAILING_WS.sub(b"", data)
    return binascii.a2b_qp(data)


def decode_transfer(data: bytes, encoding: str) -> bytes:
    """Decode ``data`` given its Content-Transfer-Encoding; unknown ones are identity."""
    enc = encoding.lower()
    if enc == "base64":
        return decode_base64(data)
    if enc == "quoted-printable":
        return decode_qp(data)
    return bytes(data)


def encode_base64(data: bytes, line_length: int = 76) -> bytes:
    """Base64 with CRLF after every ``line_length`` characters and at the end."""
    if not data:
        return b""
    chunk = line_length // 4 * 3
    out = [binascii.b2a_base64(data[i : i + chunk], newline=False) for i in range(0, len(data), chunk)]
    return b"\r\n".join(out) + b"\r\n"


def _qp_table() -> list[bytes]:
    table = []
    for i in range(256):
        if (33 <= i <= 126 and i != 61) or i in (9, 32):
            table.append(bytes([i]))
        else:
            table.append(b"=%02X" % i)
    return table


_QP = _qp_table()
_QP_LINE = re.compile(rb"\r\n")


def encode_qp(data: bytes, line_length: int = 76) -> bytes:
    """Quoted-printable in which every CRLF of ``data`` is a hard line break.

    Bare CR and LF, ``=``, 8-bit and control octets are escaped, as is
    whitespace at the end of a line (rule 3) and a ``.`` or ``From `` at the
    start of a line, so that the result survives SMTP and mbox unchanged.
    Decoding the result gives back ``data`` exactly.
    """
    lines = _QP_LINE.split(data)
    out: list[bytes] = []
    limit = line_length - 1  # room for the soft break's "="
    for line in lines:
        tokens = [_QP[b] for b in line]
        if tokens:
            if tokens[-1] in (b" ", b"\t"):
                tokens[-1] = b"=%02X" % line[-1]
            if tokens[0] == b".":
                tokens[0] = b"=2E"
            elif line.startswith(b"From "):
                tokens[0] = b"=46"
        cur: list[bytes] = []
        width = 0
        for tok in tokens:
            if width + len(tok) > limit:
                out.append(b"".join(cur) + b"=")
                cur, width = [], 0
            cur.append(tok)
            width += len(tok)
        out.append(b"".join(cur))
    return b"\r\n".join(out)
