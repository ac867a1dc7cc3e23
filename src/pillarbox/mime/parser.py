"""The MIME part tree of a stored message, with byte offsets (RFC 2045, 2046, 5322).

:func:`parse` reads ``bytes`` or a memory-mapped blob (anything with the buffer
protocol that ``re`` can search: ``bytes``, ``bytearray``, ``mmap.mmap``) and
returns the root :class:`Part`. Only header blocks are copied; bodies are found
with C-speed searches (``find``) for boundary lines, so time and memory
grow with the number of parts and the size of their headers, not with the size
of the message.

Boundary rules (RFC 2046 §5.1.1) as mail servers apply them in practice:

- a boundary line is ``--`` + boundary at the start of a line; what follows on
  the line (``--`` for the close delimiter, transport padding, junk) is ignored;
- the line break before a boundary line belongs to the boundary, not the part;
- the boundary of every enclosing multipart ends the current part too, so a
  missing close delimiter or a truncated nested multipart cannot swallow the
  rest of the message; when several match (``a`` and ``ab`` both start the
  line ``--ab``) the longest wins, the innermost among equal ones;
- a header block ends at the first empty line, or at a boundary line, or at the
  end of the part.

Nothing here raises on malformed input: a multipart without a boundary is a
leaf, nesting deeper than :data:`MAX_DEPTH` and parts beyond :data:`MAX_PARTS`
are left unparsed as opaque bodies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .encodings import decode_transfer
from .headers import MAX_HEADER_PARSE, Headers, split_fields
from .params import join_rfc2231, parse_content_type, parse_token_value, parse_transfer_encoding

__all__ = ["MAX_DEPTH", "MAX_PARTS", "Part", "parse"]

MAX_DEPTH = 100
MAX_PARTS = 10_000
_COUNT_CHUNK = 1 << 20

Buffer = Any  # bytes | bytearray | mmap.mmap


class Part:
    """One MIME entity: header block ``[start, body_start)``, body ``[body_start, end)``.

    ``children`` holds the body parts of a multipart; ``message`` the
    encapsulated message of a message/rfc822 or message/global part.
    """

    __slots__ = (
        "_lines",
        "_params",
        "body_start",
        "buf",
        "children",
        "depth",
        "end",
        "explicit_type",
        "header_truncated",
        "headers",
        "message",
        "params_raw",
        "start",
        "subtype",
        "subtype_raw",
        "type",
        "type_raw",
    )

    def __init__(self, buf: Buffer, start: int, depth: int):
        self.buf = buf
        self.start = start
        self.body_start = start
        self.end = start
        self.depth = depth
        self.headers = Headers([])
        self.type = "text"
        self.subtype = "plain"
        self.type_raw = self.subtype_raw = ""  # as written, empty when defaulted
        self.params_raw: list[tuple[str, bytes]] = []
        self.explicit_type = False
        self.children: list[Part] = []
        self.message: Part | None = None
        self._params: dict[str, str] | None = None
        self._lines: int | None = None
        self.header_truncated = False

    def __repr__(self) -> str:
        return (f"<Part {self.type}/{self.subtype} hdr={self.start}:{self.body_start} "
                f"body={self.body_start}:{self.end} children={len(self.children)}"
                f"{' message' if self.message else ''}>")

    # --- sizes and octets ---------------------------------------------------------
    @property
    def header_size(self) -> int:
        return self.body_start - self.start

    @property
    def body_size(self) -> int:
        return self.end - self.body_start

    def header_bytes(self) -> bytes:
        return bytes(self.buf[self.start : self.body_start])

    def body_bytes(self) -> bytes:
        return bytes(self.buf[self.body_start : self.end])

    def raw(self) -> bytes:
        return bytes(self.buf[self.start : self.end])

    @property
    def lines(self) -> int:
        """Number of lines of the body: its line feeds, as IMAP servers count them."""
        if self._lines is None:
            self._lines = count_lines(self.buf, self.body_start, self.end)
        return self._lines

    # --- content description ----------------------------------------------------------
    @property
    def content_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def is_multipart(self) -> bool:
        """True for every multipart/*; ``children`` is empty when it had no boundary."""
        return self.type == "multipart"

    @property
    def params(self) -> dict[str, str]:
        """Content-Type parameters, RFC 2231 continuations joined and decoded."""
        if self._params is None:
            self._params = join_rfc2231(self.params_raw)
        return self._params

    @property
    def charset(self) -> str | None:
        cs = self.params.get("charset")
        if cs:
            return cs.strip().lower()
        return "us-ascii" if self.type == "text" else None

    @property
    def transfer_encoding(self) -> str:
        """The mechanism to decode with, in lower case (RFC 2045 §6.1): the field's
        first token, ``7bit`` when there is none."""
        v = parse_transfer_encoding(self.headers.value("Content-Transfer-Encoding"), strict=False)
        return "7bit" if v is None else v.decode("latin-1").lower()

    @property
    def transfer_encoding_raw(self) -> bytes:
        """The mechanism as BODYSTRUCTURE reports it: as written, ``7bit`` when the
        field is absent or not a single token."""
        v = parse_transfer_encoding(self.headers.value("Content-Transfer-Encoding"))
        return b"7bit" if v is None else v

    @property
    def disposition(self) -> tuple[str, dict[str, str]] | None:
        """Content-Disposition (RFC 2183): (type, decoded parameters)."""
        v = parse_token_value(self.headers.value("Content-Disposition"))
        if v is None:
            return None
        return v[0], join_rfc2231(v[1])

    @property
    def filename(self) -> str | None:
        d = self.disposition
        if d and d[1].get("filename"):
            return d[1]["filename"]
        return self.params.get("name")

    def decoded(self) -> bytes:
        """The body with its Content-Transfer-Encoding undone (RFC 2045 §6)."""
        return decode_transfer(self.body_bytes(), self.transfer_encoding)

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, encapsulated messages included."""
        stack: list[Part] = [self]
        while stack:
            p = stack.pop()
            yield p
            if p.message is not None:
                stack.append(p.message)
            stack.extend(reversed(p.children))


def count_lines(buf: Buffer, start: int, end: int) -> int:
    if end <= start:
        return 0
    count = getattr(buf, "count", None)
    if count is not None:
        n = count(b"\n", start, end)
    else:  # mmap has no count(): count in bounded chunks
        mv = memoryview(buf)
        n = 0
        for a in range(start, end, _COUNT_CHUNK):
            n += bytes(mv[a : min(end, a + _COUNT_CHUNK)]).count(b"\n")
    return n


# --- the parser ----------------------------------------------------------------------

_BLANK_ONLY = re.compile(rb"\n(\r?\n)")


_FIND_BOUNDS = 4      # up to this many nested boundaries: one find() each
_deep: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def _boundary_line(buf: Buffer, bounds: tuple[bytes, ...], pos: int, end: int,
                   limit: int) -> int:
    """Where the first ``\\n--`` + one of ``bounds`` starts in ``buf[pos:limit]``,
    if it starts before ``end``; else -1.

    Up to :data:`_FIND_BOUNDS` boundaries (real mail nests two or three), one
    ``find`` each, each only as far as the best match so far: the innermost
    boundary is usually the nearest, so an enclosing one costs a search of
    that distance, not of the rest of the message.  Every message has
    boundaries of its own, and the regular expression per boundary stack that
    did this before cost more to compile than the parse of a small message.
    Deeper stacks keep one (cached) expression, so that a hundred nested
    boundaries cost one pass over the body, not a hundred.
    """
    if len(bounds) > _FIND_BOUNDS:
        rx = _deep.get(bounds)
        if rx is None:
            if len(_deep) > 64:
                _deep.clear()
            rx = _deep[bounds] = re.compile(
                rb"\n--(?:" + b"|".join(re.escape(b) for b in bounds) + rb")")
        longest = max(map(len, bounds)) + 3
        m = rx.search(buf, pos, min(limit, end + longest - 1))
        return -1 if m is None or m.start() >= end else m.start()
    best = end
    for b in bounds:
        needle = b"\n--" + b
        at = buf.find(needle, pos, min(limit, best + len(needle) - 1))
        if at >= 0:
            best = at
    return best if best < end else -1


def _boundary_at(buf: Buffer, bounds: tuple[bytes, ...], pos: int, limit: int) -> bool:
    """Whether ``--`` + one of ``bounds`` starts at ``pos`` (before ``limit``)."""
    if buf[pos:pos + 2] != b"--":
        return False
    at = pos + 2
    return any(at + len(b) <= limit and buf[at:at + len(b)] == b for b in bounds)


class _Stop:
    """A boundary line that ends the current entity."""

    __slots__ = ("close", "cut", "level", "line_end")

    def __init__(self, cut: int, line_end: int, level: int, close: bool):
        self.cut = cut  # where the entity before the boundary ends
        self.line_end = line_end  # first octet after the boundary line
        self.level = level  # 0 = innermost boundary of the stack
        self.close = close


class _Parser:
    def __init__(self, buf: Buffer, limit: int, global_messages: bool):
        self.buf = buf
        self.limit = limit
        self.parts = 0
        self.nested = ("rfc822", "global") if global_messages else ("rfc822",)

    def _level(self, bounds: tuple[bytes, ...], at: int) -> int:
        """Which boundary the line whose text after ``--`` starts at ``at`` is.

        RFC 2046 §5.1.1 asks only that the boundary start the line, so with
        nested boundaries such as ``a`` and ``ab`` the line ``--ab`` matches
        both; the longest match wins, the innermost among equals, as in Dovecot.
        The caller knows that at least one matches.
        """
        buf = self.buf
        # a line longer than every boundary and "--" matches none exactly: no need
        # to copy more of it than that
        cap = min(self.limit, at + max(map(len, bounds)) + 4)
        eol = buf.find(b"\n", at, cap)
        line = bytes(buf[at : eol if eol >= 0 else cap])
        if eol >= 0:
            line = line.removesuffix(b"\r")
        closing = line.endswith(b"--")
        best = -1
        for level, b in enumerate(bounds):
            if line.startswith(b) and (best < 0 or len(bounds[best]) < len(b)):
                best = level
                if len(b) == len(line) or (closing and len(b) == len(line) - 2):
                    break  # exactly this boundary: none can be better
        return max(best, 0)

    def _stop(self, nl: int, bounds: tuple[bytes, ...], origin: int) -> _Stop:
        """The boundary line whose line break is at ``nl`` (``\\n--`` + boundary)."""
        buf = self.buf
        cut = nl - 1 if nl > origin and buf[nl - 1] == 13 else nl
        cut = max(cut, origin)
        at = nl + 3
        level = self._level(bounds, at)
        after = at + len(bounds[level])
        close = buf[after : after + 2] == b"--"
        eol = buf.find(b"\n", after, self.limit)
        line_end = self.limit if eol < 0 else eol + 1
        return _Stop(cut, line_end, level, close)

    def _find_boundary(self, bounds: tuple[bytes, ...], pos: int) -> _Stop | None:
        if not bounds:
            return None
        origin = pos
        if pos > 0 and self.buf[pos - 1] == 10:
            pos -= 1
        nl = _boundary_line(self.buf, bounds, pos, self.limit, self.limit)
        return None if nl < 0 else self._stop(nl, bounds, origin)

    def entity(self, pos: int, bounds: tuple[bytes, ...], depth: int,
               digest: bool = False) -> tuple[Part, _Stop | None]:
        buf, limit = self.buf, self.limit
        self.parts += 1
        part = Part(buf, pos, depth)
        if digest:  # RFC 2046 §5.1.5
            part.type, part.subtype = "message", "rfc822"
        # -- the header block
        stop: _Stop | None = None
        if pos == 0 and buf[:1] == b"\n":
            hdr_end, body_start = 0, 1
        elif pos == 0 and buf[:2] == b"\r\n":
            hdr_end, body_start = 0, 2
        else:
            # The header block ends at the first empty line or boundary line.
            origin = pos
            start = pos - 1 if pos > 0 and buf[pos - 1] == 10 else pos
            m = _BLANK_ONLY.search(buf, start, limit)
            blank = limit if m is None else m.start()
            nl = _boundary_line(buf, bounds, start, blank, limit) if bounds else -1
            if nl >= 0:
                stop = self._stop(nl, bounds, origin)
                hdr_end = body_start = stop.cut
            elif m is None:
                hdr_end = body_start = limit
            else:
                hdr_end, body_start = max(m.start() + 1, pos), m.end()
        part.body_start = body_start
        parse_end = min(hdr_end, pos + MAX_HEADER_PARSE)
        part.header_truncated = parse_end < hdr_end
        part.headers = Headers(split_fields(bytes(buf[pos:parse_end]), pos))
        ct = parse_content_type(part.headers.value("Content-Type"))
        if ct is not None:
            part.type_raw, part.subtype_raw, part.params_raw = ct
            part.type, part.subtype = part.type_raw.lower(), part.subtype_raw.lower()
            part.explicit_type = True
        if stop is not None:
            part.end = stop.cut
            return part, stop
        # -- the body
        can_nest = depth < MAX_DEPTH and self.parts < MAX_PARTS
        boundary = None
        if part.type == "multipart":
            boundary = next((v for n, v in part.params_raw if n.lower() == "boundary"), None)
            if boundary is None and any("*" in n for n, _ in part.params_raw):
                # RFC 2231 allows boundary*= and boundary*0= too (mail readers
                # decode them; Dovecot does not)
                joined = part.params.get("boundary")
                boundary = joined.encode("utf-8") if joined else None
        if bounds and body_start > hdr_end:
            stack = (boundary,) + bounds if boundary else bounds
            if _boundary_at(buf, stack, body_start, limit) and (
                    not boundary or self._level(stack, body_start + 2) > 0):
                # An enclosing boundary right after the blank line: that line break
                # belongs to the boundary, so the header block has no blank line.
                part.body_start = part.end = hdr_end
                return part, self._find_boundary(bounds, body_start)
        if boundary and can_nest:
            stop = self.multipart(part, boundary, bounds, depth)
        elif part.type == "message" and part.subtype in self.nested and can_nest:
            inner, stop = self.entity(body_start, bounds, depth + 1)
            part.message = inner
            part.end = inner.end
        else:
            stop = self._find_boundary(bounds, body_start)
            part.end = limit if stop is None else stop.cut
        return part, stop

    def multipart(self, part: Part, boundary: bytes, bounds: tuple[bytes, ...],
                  depth: int) -> _Stop | None:
        inner = (boundary,) + bounds
        digest = part.subtype == "digest"
        stop = self._find_boundary(inner, part.body_start)
        while stop is not None and stop.level == 0 and not stop.close:
            if self.parts >= MAX_PARTS:
                # too many parts: the rest of this multipart is left unparsed
                stop = self._find_boundary(bounds, stop.line_end)
                break
            child, stop = self.entity(stop.line_end, inner, depth + 1, digest)
            part.children.append(child)
        else:
            if stop is not None and stop.level == 0:  # close delimiter: skip the epilogue
                stop = self._find_boundary(bounds, stop.line_end)
            elif stop is not None:
                stop.level -= 1
        part.end = self.limit if stop is None else stop.cut
        return stop


def parse(buf: Buffer, start: int = 0, end: int | None = None, *,
          global_messages: bool = True) -> Part:
    """Parse the message in ``buf[start:end]`` into its part tree. Never raises on content.

    ``global_messages``: parse message/global as an encapsulated message (RFC 6532
    §3.5); False treats it as an opaque body, as Dovecot 2.3 does.
    """
    limit = len(buf) if end is None else min(end, len(buf))
    root, _ = _Parser(buf, limit, global_messages).entity(start, (), 0)
    return root


def header_bounds(buf: Buffer) -> tuple[int, int]:
    """Where the root's header block ends (its last field's line end included)
    and where its body starts (after the empty line), as ``parse`` finds them."""
    if buf[:1] == b"\n":
        return 0, 1
    if buf[:2] == b"\r\n":
        return 0, 2
    m = _BLANK_ONLY.search(buf, 0, len(buf))
    if m is None:
        return len(buf), len(buf)
    return m.start() + 1, m.end()


def parse_header(buf: Buffer) -> Part:
    """The root part with its header block only, the body left unparsed.

    Exactly the header block ``parse`` finds for the root (the first empty
    line ends it), for what needs nothing else (IMAP BODY[HEADER],
    BODY[HEADER.FIELDS ...], RFC822.HEADER): no boundary is searched.
    """
    limit = len(buf)
    part = Part(buf, 0, 0)
    hdr_end, body_start = header_bounds(buf)
    part.body_start = body_start
    part.end = limit
    parse_end = min(hdr_end, MAX_HEADER_PARSE)
    part.header_truncated = parse_end < hdr_end
    part.headers = Headers(split_fields(bytes(buf[:parse_end]), 0))
    return part
