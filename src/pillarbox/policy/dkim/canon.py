"""Canonicalization of header fields and body (RFC 6376 §3.4), on raw bytes.

DKIM signs octets, so everything here works on the message exactly as
received: :func:`split_message` cuts the header block into fields without
re-serialising anything (a field's ``raw`` is its octets, name, folding and
final CRLF included), and the canonical forms are computed from those octets.

- "simple" (§3.4.1, §3.4.3): header fields as they are; the body without its
  trailing empty lines, ending in exactly one CRLF (an empty body becomes CRLF).
- "relaxed" (§3.4.2, §3.4.4): header names lowercased, values unfolded, runs of
  WSP reduced to one SP, WSP around the value removed; in the body, WSP at the
  end of lines removed, runs of WSP reduced to one SP, trailing empty lines
  removed, and a final CRLF added to a non-empty body that lacks one.

Speed matters here (every signature of every message passes through it), so the
body is handled with whole-buffer operations (``bytes.replace``, one regular
expression for WSP runs that skips the single spaces between words), never a
loop over characters.  :class:`BodyHasher` does the same on a body read in
chunks, for messages too large to hold whole.
"""

from __future__ import annotations

import enum
import hashlib
import re
from typing import NamedTuple

__all__ = [
    "BodyHasher",
    "Canon",
    "HeaderField",
    "canonical_body",
    "canonical_header",
    "relaxed_header",
    "split_message",
]


class Canon(enum.Enum):
    """A canonicalization algorithm, by its name in ``c=`` (RFC 6376 §3.4)."""

    SIMPLE = "simple"
    RELAXED = "relaxed"


class HeaderField(NamedTuple):
    """One header field as received.

    ``name`` is the field name lowercased (for matching ``h=``, which is
    case-insensitive, §3.5); ``raw`` is the whole field, final CRLF included;
    ``value_at`` is the offset in ``raw`` just after the colon.
    """

    name: bytes
    raw: bytes
    value_at: int

    @property
    def value(self) -> bytes:
        """The octets after the colon, up to (not including) the final CRLF."""
        return self.raw[self.value_at : -2]


# The octets of a field name: printable ASCII but the colon (RFC 5322 §3.6.8).
_FTEXT = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))
# Runs of WSP that relaxed canonicalization changes: a tab, or two or more WSP.
# A single SP (the common case, between words) is left alone and costs nothing.
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")
_TRAILING_CRLFS = re.compile(rb"(?:\r\n)+\Z")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_FIELD_END = re.compile(rb"\r\n(?![ \t])")
_new = tuple.__new__


def split_message(message: bytes) -> tuple[list[HeaderField], bytes]:
    """Split a message into its header fields and its body (RFC 5322 §2.1).

    The header block ends at the first empty line; the body is what follows it
    (empty when there is no empty line).  A message whose first line ends in a
    bare LF (read from a file rather than received over SMTP) is first brought
    to CRLF, as a receiving MTA would.  Lines in the header block that are not
    fields (an mbox ``From `` line, stray continuation lines, garbage) belong
    to no field and so can never be signed; they are skipped.
    """
    first_lf = message.find(b"\n")
    if first_lf >= 0 and message[first_lf - 1 : first_lf] != b"\r":
        message = _BARE_LF.sub(b"\r\n", message)
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        block = message if message.endswith(b"\r\n") else message + b"\r\n"
        body = b""
    else:
        block = message[: end + 2]
        body = message[end + 4 :]
    fields: list[HeaderField] = []
    append = fields.append
    # One C-level split at every CRLF not followed by WSP: the items are the
    # fields, unfolded lines and all, without their final CRLF.
    for item in _FIELD_END.split(block):
        colon = item.find(b":")
        if colon > 0 and item[0] not in b" \t":
            name = item[:colon].rstrip(b" \t")
            if not name.translate(None, _FTEXT):
                append(_new(HeaderField, (name.lower(), item + b"\r\n", colon + 1)))
    return fields, body


def relaxed_header(field: HeaderField) -> bytes:
    """The relaxed form of one header field, final CRLF included (§3.4.2)."""
    value = field.raw[field.value_at : -2]
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return field.name + b":" + value.strip(b" \t") + b"\r\n"


def canonical_header(field: HeaderField, canon: Canon) -> bytes:
    """One header field in canonical form, final CRLF included (§3.4.1, §3.4.2)."""
    return field.raw if canon is Canon.SIMPLE else relaxed_header(field)


def canonical_body(body: bytes, canon: Canon) -> bytes:
    """The canonical body (§3.4.3, §3.4.4); ``body`` has CRLF line ends."""
    if canon is Canon.RELAXED:
        if b"\t" in body or b"  " in body:
            body = _WSP_RUN.sub(b" ", body)
        # After the runs are reduced, WSP at a line end is exactly one SP.
        if b" \r\n" in body:
            body = body.replace(b" \r\n", b"\r\n")
        if body.endswith(b" "):
            body = body[:-1]
    body = _strip_trailing_crlfs(body)
    if canon is Canon.SIMPLE:
        return body + b"\r\n"
    return body + b"\r\n" if body else b""


def _strip_trailing_crlfs(body: bytes) -> bytes:
    """``body`` without the CRLFs at its end (its trailing empty lines and the
    final line end).  Only the tail is searched, so this costs nothing on a
    large body."""
    stripped = body.rstrip(b"\r\n")
    tail_at = len(stripped)
    if tail_at == len(body):
        return body
    m = _TRAILING_CRLFS.search(body, tail_at)
    if m is None:  # the tail ends in a bare CR or LF: nothing to strip
        return body
    return body[: m.start()]


_UNSETTLED = {
    # The end of what has been fed that the next octets may still change:
    # empty lines that may turn out to be trailing ones, WSP that may end a
    # line, a CR that may start a CRLF.
    Canon.SIMPLE: (re.compile(rb"(?:\r\n)*\r?\Z"), b"\r\n"),
    Canon.RELAXED: (re.compile(rb"(?:[ \t]*\r\n)*[ \t]*\r?\Z"), b" \t\r\n"),
}


class BodyHasher:
    """The body hash of a body fed in chunks (§3.4.3, §3.4.4, §3.7), for
    messages too large to hold whole: the same result as hashing
    :func:`canonical_body` of the whole body, cut to ``length`` octets
    (``l=``) when given.

    Each chunk is canonicalized up to its last octet that later ones cannot
    change; the unsettled end (trailing WSP, CRLFs, a lone CR) is carried to
    the next chunk, so memory stays bounded by the longest such run.
    """

    def __init__(self, canon: Canon, hash_name: str = "sha256", length: int | None = None) -> None:
        self.canon = canon
        self.length = length
        self.hashed = 0            # canonical octets hashed so far
        self._hash = hashlib.new(hash_name)
        self._carry = b""
        self._started = False      # some settled octet has been hashed

    def update(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        pattern, unsettled = _UNSETTLED[self.canon]
        settled_at = len(data.rstrip(unsettled))
        m = pattern.search(data, settled_at)
        cut = m.start() if m is not None else len(data)
        piece, self._carry = data[:cut], data[cut:]
        if piece:
            if self.canon is Canon.RELAXED:
                # The piece ends in an octet that is neither WSP nor CR, so
                # no run of WSP and no CRLF is cut in two.
                if b"\t" in piece or b"  " in piece:
                    piece = _WSP_RUN.sub(b" ", piece)
                if b" \r\n" in piece:
                    piece = piece.replace(b" \r\n", b"\r\n")
            self._feed(piece)
            self._started = True

    def digest(self) -> bytes:
        """The hash, once the whole body has been fed."""
        if self._started:
            # "x" stands for the settled octet before the carry: neither WSP nor CR.
            tail = canonical_body(b"x" + self._carry, self.canon)[1:]
        else:
            tail = canonical_body(self._carry, self.canon)
        self._carry = b""
        self._feed(tail)
        return self._hash.digest()

    def _feed(self, data: bytes) -> None:
        if self.length is not None:
            data = data[: max(0, self.length - self.hashed)]
        self.hashed += len(data)
        self._hash.update(data)
