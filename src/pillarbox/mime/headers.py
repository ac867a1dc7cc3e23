"""Header fields: splitting a header block, unfolding, encoded words, parameters.

A header block is kept as the stored octets; fields are views with their offsets
so that nothing is re-serialised (RFC 5322 §2.2). Values are decoded on demand:

- :func:`unfold` removes the CRLFs of folding (RFC 5322 §2.2.3);
- :func:`decode_words` decodes RFC 2047 encoded words, B and Q, in any charset
  Python knows, leaves malformed words as they are, and reads the rest as UTF-8
  (RFC 6532 §3) with a Latin-1 fallback for stray 8-bit octets.

Parameters (Content-Type, Content-Disposition) are in :mod:`.params`.
"""

from __future__ import annotations

import binascii
import codecs
import re
from typing import NamedTuple

__all__ = [
    "MAX_FIELDS",
    "MAX_HEADER_PARSE",
    "HeaderField",
    "Headers",
    "decode_text",
    "decode_words",
    "split_fields",
    "text_codec",
    "unfold",
]

#: Only the first this many octets of a header block are split into fields;
#: the block's offsets stay exact whatever its size.
MAX_HEADER_PARSE = 1 << 20
#: Fields beyond this count in one block are ignored.
MAX_FIELDS = 10_000


class HeaderField(NamedTuple):
    """One header field: its name as written and the field as stored.

    ``raw`` is the whole field as stored, name, colon, folding and line end
    included; ``offset`` is where it starts in the message. ``value`` (the octets
    after the colon without leading whitespace and final line end) is computed
    on demand, so that a field costs one copy of its octets.  A named tuple,
    not a frozen dataclass: a header block makes one per field, and a frozen
    dataclass's constructor costs three ``object.__setattr__`` calls.
    """

    name: str
    raw: bytes
    offset: int

    @property
    def value(self) -> bytes:
        v = self.raw[self.raw.find(b":") + 1 :].lstrip(b" \t")
        if v.endswith(b"\n"):
            v = v[:-2] if v.endswith(b"\r\n") else v[:-1]
        return v

    @property
    def unfolded(self) -> bytes:
        return unfold(self.value)

    @property
    def text(self) -> str:
        """The value unfolded, encoded words decoded, as Unicode."""
        return decode_words(unfold(self.value)).strip()


# A field is a line and its continuation lines; a line ends at LF.
_FIELD = re.compile(rb"[^\n]*(?:\n|$)(?:[ \t][^\n]*(?:\n|$))*")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def split_fields(block: bytes, offset: int = 0) -> list[HeaderField]:
    """Split a header block (without or with its blank line) into fields.

    Lines without a colon are kept as fields with an empty name only if they
    look like junk inside the block; they never end the block, which the
    caller has already delimited.
    """
    fields: list[HeaderField] = []
    data = block[:MAX_HEADER_PARSE]
    pos = 0
    n = len(data)
    while pos < n and len(fields) < MAX_FIELDS:
        m = _FIELD.match(data, pos)
        assert m is not None  # the pattern matches the empty string
        end = m.end()
        if end == pos:
            break
        raw = data[pos:end]
        colon = raw.find(b":")
        if colon > 0 and raw[0] not in (32, 9):
            name = raw[:colon].rstrip(b" \t")
            if name and b"\n" not in name:
                fields.append(HeaderField(name.decode("latin-1"), raw, offset + pos))
        pos = end
    return fields


class Headers:
    """The fields of one header block, in order, with case-insensitive lookup.

    The first lookups scan the list; from the third on, an index of the first
    field of each name, made once (ENVELOPE, BODYSTRUCTURE and the SORT keys
    of one message look up about thirty names per part).  ``fields`` is not
    changed after the block is made.
    """

    __slots__ = ("_index", "_lookups", "fields")

    def __init__(self, fields: list[HeaderField]):
        self.fields = fields
        self._index: dict[str, HeaderField] | None = None
        self._lookups = 0

    def get_all(self, name: str) -> list[HeaderField]:
        name = name.lower()
        return [f for f in self.fields if f.name.lower() == name]

    def first(self, name: str) -> HeaderField | None:
        index = self._index
        if index is not None:
            return index.get(name.lower())
        self._lookups += 1
        if self._lookups > 2:
            index = self._index = {}
            for f in self.fields:
                index.setdefault(f.name.lower(), f)
            return index.get(name.lower())
        name = name.lower()
        for f in self.fields:
            if len(f.name) == len(name) and f.name.lower() == name:
                return f
        return None

    def value(self, name: str) -> bytes | None:
        """The unfolded raw value of the first field called ``name``."""
        f = self.first(name)
        return None if f is None else unfold(f.value)

    def text(self, name: str) -> str | None:
        f = self.first(name)
        return None if f is None else f.text

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.first(name) is not None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)


def unfold(value: bytes) -> bytes:
    """Remove the line breaks of folding, keeping the whitespace (RFC 5322 §2.2.3)."""
    if b"\n" not in value:
        return value
    return _FOLD.sub(b"", value).replace(b"\r\n", b"").replace(b"\n", b"")


def decode_text(raw: bytes, charset: str = "utf-8") -> str:
    """Octets of a header to Unicode: UTF-8 (RFC 6532), else ``charset``, else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = text_codec(charset)
    if codec and codec != "utf-8":
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


_WORD = re.compile(rb"=\?([^?\s()<>@,;:\"/\[\]=]+)\?([BbQq])\?([^?\s]*)\?=")
_WS_ONLY = re.compile(rb"[ \t\r\n]*")


def _charset_codec(charset: str) -> str | None:
    charset = charset.split("*", 1)[0]  # RFC 2231 §5 language suffix
    return text_codec(charset)


def text_codec(charset: str) -> str | None:
    """Python's codec for a MIME charset name, or None; never a bytes-to-bytes codec."""
    try:
        info = codecs.lookup(charset.strip())
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _word_bytes(enc: bytes, text: bytes) -> bytes | None:
    if enc in (b"B", b"b"):
        if len(text) % 4 == 1 or re.search(rb"[^A-Za-z0-9+/=]", text):
            return None
        try:
            return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        except binascii.Error:
            return None
    return binascii.a2b_qp(text.replace(b"_", b" "), header=False)


def decode_words(raw: bytes) -> str:
    """Decode the RFC 2047 encoded words of an unfolded header value.

    Whitespace between two adjacent encoded words is dropped (§6.2); adjacent
    words in the same charset are joined before decoding so that a character
    split over two words survives. Words with an unknown charset or broken
    encoding are kept as written.
    """
    if b"=?" not in raw:
        return decode_text(raw)
    out: list[str] = []
    pending: list[bytes] = []
    pending_codec = ""
    pos = 0
    after_word = False
    for m in _WORD.finditer(raw):
        codec = _charset_codec(m.group(1).decode("ascii", "replace"))
        data = _word_bytes(m.group(2), m.group(3)) if codec else None
        if data is None or codec is None:
            continue  # malformed: stays in the text before the next word
        between = raw[pos : m.start()]
        if after_word and _WS_ONLY.fullmatch(between) and codec == pending_codec:
            pending.append(data)
        else:
            if pending:
                out.append(b"".join(pending).decode(pending_codec, errors="replace"))
            if not (after_word and _WS_ONLY.fullmatch(between)):
                out.append(decode_text(between))
            pending, pending_codec = [data], codec
        pos = m.end()
        after_word = True
    if pending:
        out.append(b"".join(pending).decode(pending_codec, errors="replace"))
    out.append(decode_text(raw[pos:]))
    return "".join(out)
