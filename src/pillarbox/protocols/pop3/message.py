"""A message on the wire: CRLF line endings, byte-stuffing, TOP (RFC 1939 3, 7).

A multi-line response ends with a line of a single ``.``, so every line of
the message that starts with ``.`` gets another one in front (RFC 1939 3).
Stored messages end their lines with CRLF already; a bare LF is still sent as
CRLF, so that what a client reads is always well-formed.  The encoder works
on pieces of any size, so a large message is sent piece by piece.
"""

from __future__ import annotations


class DotStuffer:
    """Turn message content into the body of a multi-line response, piece by piece."""

    __slots__ = ("_bol", "_carry_cr", "octets")

    def __init__(self) -> None:
        self._bol = True          # the output so far ends a line (or is empty)
        self._carry_cr = False    # a CR held back: is it the first half of a CRLF?
        self.octets = 0           # content octets taken in

    def feed(self, data: bytes | memoryview) -> bytes:
        """Encode one piece; what it cannot decide yet (a final CR) is held back."""
        self.octets += len(data)
        chunk = bytes(data)
        if self._carry_cr:
            chunk = b"\r" + chunk
            self._carry_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._carry_cr = True
        if not chunk:
            return b""
        if b"\n" in chunk and chunk.count(b"\n") != chunk.count(b"\r\n"):
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if b"\r\n." in chunk:
            chunk = chunk.replace(b"\r\n.", b"\r\n..")
        if self._bol and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._bol = chunk.endswith(b"\r\n")
        return chunk

    def end(self) -> bytes:
        """The rest, a CRLF if the content did not end a line, and the ``.`` line."""
        out = b""
        if self._carry_cr:
            out = b"\r"
            self._carry_cr = False
            self._bol = False
        if not self._bol:
            out += b"\r\n"
        self._bol = True
        return out + b".\r\n"


def stuff(data: bytes) -> bytes:
    """The whole body of a multi-line response for ``data``, ``.`` line included."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.end()


def top(message: bytes, lines: int) -> bytes:
    """The header, the blank line, and the first ``lines`` lines of the body (RFC 1939 7).

    A message without a blank line is all header and is returned whole.  Lines
    end in LF or CRLF (the encoder makes every ending a CRLF).
    """
    end = _header_end(message)
    if end < 0 or lines > message.count(b"\n", end):
        return message
    pos = end
    for _ in range(lines):
        pos = message.index(b"\n", pos) + 1
    return message[:pos]


def _header_end(message: bytes) -> int:
    """The offset just after the blank line that ends the header, or -1."""
    if message.startswith(b"\r\n"):
        return 2
    if message.startswith(b"\n"):
        return 1
    crlf = message.find(b"\n\r\n")
    lf = message.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 3
    if lf >= 0:
        return lf + 2
    return -1
