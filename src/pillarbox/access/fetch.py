"""FETCH responses: one message's requested items rendered as ``* n FETCH (...)``.

RFC 9051 §6.4.5 (the items) and §7.5.2 (their responses), RFC 3516 (BINARY,
BINARY.SIZE), RFC 7162 (MODSEQ), RFC 8514 (SAVEDATE). The renderings of
ENVELOPE, BODYSTRUCTURE and sections come from the MIME engine
(:mod:`pillarbox.mime.imap`); this module chooses the items, loads the
message only when an item needs its octets, and frames the values.

Setting ``\\Seen`` is the session's job, because it writes the store: it asks
:func:`sets_seen` first, stores the flag, and renders with the new
:class:`MessageMeta` and ``seen_set=True``, which adds FLAGS to the response
when the client did not ask for it (RFC 9051 §6.4.5: "...the \\Seen flag is
implicitly set; if this causes the flags to change, they SHOULD be included as
part of the FETCH responses").

Errors: only :class:`UnknownCte` (BINARY of a part whose transfer encoding is
not known, RFC 3516 §4.3), which the session answers with ``NO [UNKNOWN-CTE]``.
A broken message never makes a FETCH fail; it is rendered as best it can be.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

from ..mime.encodings import IDENTITY_ENCODINGS
from ..mime.imap import SectionError, fetch_binary, fetch_section, header_fields, resolve_part
from ..mime.parser import Part, header_bounds, parse, parse_header
from ..protocols.imap.commands import FetchAttr, Section
from ..store.base import MessageMeta
from .cache import CacheEntry, compute_from

__all__ = [
    "FetchError",
    "FetchResult",
    "UnknownCte",
    "format_datetime",
    "format_flags",
    "needs_content",
    "render_fetch",
    "render_meta_only",
    "sets_seen",
]


class FetchError(Exception):
    """A FETCH item that cannot be answered; ``code`` is the IMAP response code."""

    code = "SERVERBUG"


class UnknownCte(FetchError):
    """BINARY of a part with a Content-Transfer-Encoding we cannot undo (RFC 3516 §4.3):
    the message's fault, answered ``NO [UNKNOWN-CTE]``."""

    code = "UNKNOWN-CTE"


class FetchResult(NamedTuple):
    """One rendered FETCH response.

    ``line`` is the whole response, ``* n FETCH (...)\\r\\n`` with its literals.
    ``needs_seen``: the items set ``\\Seen`` and the message lacks it (only when
    rendered without ``seen_set``; see the module docstring). ``cache`` is a
    newly computed entry for the store's cache, or None.
    """

    line: bytes
    needs_seen: bool = False
    cache: CacheEntry | None = None


_SEEN = "\\Seen"
_SYSTEM_ORDER = {"\\Answered": 0, "\\Flagged": 1, "\\Deleted": 2, "\\Seen": 3,
                 "\\Draft": 4, "\\Recent": 5}
_SETS_SEEN = frozenset({"RFC822", "RFC822.TEXT"})
_NEED_BYTES = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"})
_NEED_CACHE = frozenset({"ENVELOPE", "BODYSTRUCTURE"})
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")
_KNOWN_CTE = IDENTITY_ENCODINGS | {"base64", "quoted-printable"}


def sets_seen(meta: MessageMeta, attrs: tuple[FetchAttr, ...]) -> bool:
    """Whether fetching ``attrs`` must set ``\\Seen`` on this message (RFC 9051 §6.4.5:
    BODY[...] and BINARY[...] without .PEEK, RFC822, RFC822.TEXT)."""
    if _SEEN in meta.flags:
        return False
    for a in attrs:
        if a.name in _SETS_SEEN or (a.section is not None and not a.peek
                                     and a.name in ("BODY", "BINARY")):
            return True
    return False


def needs_content(attrs: tuple[FetchAttr, ...], cached: bool) -> bool:
    """Whether rendering ``attrs`` loads the message (with a cache entry or without)."""
    for a in attrs:
        if a.name in _NEED_BYTES or a.section is not None:
            return True
        if not cached and (a.name in _NEED_CACHE or a.name == "BODY"):
            return True
    return False


# --- scalar items ------------------------------------------------------------------

_flags_memo: dict[frozenset[str], bytes] = {}


def format_flags(flags: frozenset[str]) -> bytes:
    """``(\\Answered \\Seen $Label)``: system flags in a fixed order, then keywords sorted."""
    out = _flags_memo.get(flags)
    if out is None:
        ordered = sorted(flags, key=lambda f: (_SYSTEM_ORDER.get(f, 9), f))
        out = b"(" + " ".join(ordered).encode("utf-8", "replace") + b")"
        if len(_flags_memo) > 4096:  # distinct flag sets are few; bound it anyway
            _flags_memo.clear()
        _flags_memo[flags] = out
    return out


def format_datetime(ts: float) -> bytes:
    """RFC 9051 date-time in UTC: ``"17-Jul-1996 09:44:25 +0000"`` (quotes included)."""
    try:
        t = time.gmtime(ts)
    except (OverflowError, OSError, ValueError):  # a date no calendar holds: the epoch
        t = time.gmtime(0)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def _literal(data: bytes, literal8: bool = False) -> bytes:
    """A message part as sent: a literal, or a literal8 ``~{n}`` (RFC 3516 §4.1)."""
    if literal8:
        return b"~{%d}\r\n%s" % (len(data), data)
    return b"{%d}\r\n%s" % (len(data), data)


def _is_binary(part: Part | None, data: bytes) -> bool:
    """Whether BINARY content goes as a literal8: it must when it holds NUL (RFC 3516
    §4.3), and does, as in Dovecot, when it was decoded from base64 or
    quoted-printable, whose content may be anything. Judged on the whole part, so
    that every partial of a part is framed alike."""
    if not data:
        return False
    if part is not None and part.transfer_encoding in ("base64", "quoted-printable"):
        return True
    return b"\x00" in data


# --- rendering ---------------------------------------------------------------------

class _Message:
    """The message's octets, parse tree and cache entry, each made at most once."""

    __slots__ = ("_bounds", "_content", "_data", "_head", "_root", "cache", "computed")

    def __init__(self, content: Callable[[], bytes], cache: CacheEntry | None):
        self._content = content
        self._data: bytes | None = None
        self._root: Part | None = None
        self._head: Part | None = None
        self._bounds: tuple[int, int] | None = None
        self.cache = cache
        self.computed = False

    @property
    def parsed(self) -> Part | None:
        """The header-only or full parse, if one was made already."""
        return self._root if self._root is not None else self._head

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self._content()
        return self._data

    @property
    def bounds(self) -> tuple[int, int]:
        """Where the header block ends and the body starts (``header_bounds``)."""
        if self._bounds is None:
            self._bounds = header_bounds(self.data)
        return self._bounds

    @property
    def header_root(self) -> Part:
        """The root with its header block only, unless the whole tree is parsed."""
        if self._root is not None:
            return self._root
        if self._head is None:
            self._head = parse_header(self.data)
        return self._head

    @property
    def root(self) -> Part:
        if self._root is None:
            if self._data is None:
                self._data = self._content()
            self._root = parse(self._data)
        return self._root

    def entry(self) -> CacheEntry:
        if self.cache is None:
            self.cache = compute_from(self.root)
            self.computed = True
        return self.cache


def _partial(data: bytes, partial: tuple[int, int] | None) -> tuple[bytes, bytes]:
    if partial is None:
        return data, b""
    offset, count = partial
    return data[offset : offset + count], b"<%d>" % offset


_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


@functools.lru_cache(maxsize=512)
def _echo(section: Section) -> bytes:
    """The section as the response names it: field names upper-cased (they are
    case-insensitive), quoted when they are not atoms."""
    out = ".".join(str(n) for n in section.part).encode()
    if section.text:
        out = out + b"." + section.text.encode() if out else section.text.encode()
    if section.text and section.text.startswith("HEADER.FIELDS"):
        names = []
        for f in section.fields:
            b = f.upper().encode("utf-8", "replace")
            if not b or any(c in _ATOM_SPECIALS or c < 0x21 or c > 0x7E for c in b):
                b = b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            names.append(b)
        out += b" (" + b" ".join(names) + b")"
    return out


# A FETCH asks for the same sections of every message: render each once.
_spec = functools.lru_cache(maxsize=512)(Section.spec)

_HEADER_ONLY = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def _body_section(msg: _Message, section: Section) -> bytes:
    if not section.part:
        # The whole message, its header or its text need no parse at all, only
        # where the header ends; the top-level header fields need no part tree
        # (the most common FETCH of mail clients' message lists,
        # BODY.PEEK[HEADER.FIELDS (...)], parses no body).
        text = section.text
        if text is None or text == "":
            return msg.data
        if text == "HEADER":
            return msg.data[:msg.bounds[1]]
        if text == "TEXT":
            return msg.data[msg.bounds[1]:]
        if text == "HEADER.FIELDS" and msg.parsed is None:
            found = header_fields(msg.data, msg.bounds[0], section.fields)
            if found is not None:
                return found
    root = msg.header_root if not section.part and section.text in _HEADER_ONLY else msg.root
    try:
        return fetch_section(root, _spec(section))
    except SectionError:
        # e.g. 1.HEADER of a part that is not message/rfc822: nothing to give
        return b""


def _binary_part(msg: _Message, part: tuple[int, ...]) -> tuple[bytes, bool]:
    """BINARY[part] content (empty when the part does not exist) and whether it goes
    as a literal8."""
    root = msg.root
    try:
        node = resolve_part(root, list(part)) if part else root
    except SectionError:
        return b"", False
    leaf = bool(part) and not node.is_multipart and node.message is None
    if leaf and node.transfer_encoding not in _KNOWN_CTE:
        raise UnknownCte(f"unknown Content-Transfer-Encoding {node.transfer_encoding!r} "
                         f"in part {'.'.join(map(str, part))}")
    data = fetch_binary(root, list(part))
    return data, _is_binary(node if leaf else None, data)


def _item(a: FetchAttr, meta: MessageMeta, msg: _Message) -> bytes:
    name = a.name
    if name == "FLAGS":
        return b"FLAGS " + format_flags(meta.flags)
    if name == "UID":
        return b"UID %d" % meta.uid
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % meta.modseq
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + format_datetime(meta.internal_date)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % meta.size
    if name == "SAVEDATE":
        return b"SAVEDATE " + (b"NIL" if meta.savedate is None
                               else format_datetime(meta.savedate))
    if name == "ENVELOPE":
        return b"ENVELOPE " + msg.entry().envelope
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + msg.entry().bodystructure
    if name == "BODY" and a.section is None:
        return b"BODY " + msg.entry().body
    if name == "BODY":
        assert a.section is not None
        data, origin = _partial(_body_section(msg, a.section), a.partial)
        return b"BODY[%s]%s %s" % (_echo(a.section), origin, _literal(data))
    if name in ("BINARY", "BINARY.SIZE"):
        part = a.section.part if a.section is not None else ()
        spec = ".".join(map(str, part)).encode()
        # a part that does not exist is empty, as for BODY[] (Dovecot does the same)
        value, literal8 = _binary_part(msg, part)
        if name == "BINARY.SIZE":
            return b"BINARY.SIZE[%s] %d" % (spec, len(value))
        data, origin = _partial(value, a.partial)
        return b"BINARY[%s]%s %s" % (spec, origin, _literal(data, literal8 and bool(data)))
    if name == "RFC822":
        return b"RFC822 " + _literal(msg.root.raw())
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER " + _literal(msg.header_root.header_bytes())
    if name == "RFC822.TEXT":
        return b"RFC822.TEXT " + _literal(msg.root.body_bytes())
    raise FetchError(f"unknown FETCH item {name!r}")  # the parser lets none through


def render_fetch(seq: int, meta: MessageMeta, attrs: tuple[FetchAttr, ...], *,
                 content: Callable[[], bytes], cache: CacheEntry | None,
                 include_uid: bool, modseq: bool = False,
                 seen_set: bool = False) -> FetchResult:
    """``* seq FETCH (...)`` for one message, items in the order requested.

    ``include_uid`` adds UID first when not requested (UID FETCH, RFC 9051
    §6.4.9); ``modseq`` adds MODSEQ last when not requested (RFC 7162 §3.1.4.1:
    CHANGEDSINCE, or flags changed with CONDSTORE enabled); ``seen_set`` says the
    session has just set ``\\Seen`` (``meta`` carries the new flags): FLAGS is then
    added when not requested. ``content`` is called only when an item needs the
    octets (sections, BINARY, RFC822*, or ENVELOPE/BODYSTRUCTURE/BODY without
    ``cache``). Raises :class:`UnknownCte` (and :class:`FetchError` for an item
    the parser should never have let through).
    """
    if not seen_set:
        fast = render_meta_only(seq, meta, attrs, include_uid=include_uid, modseq=modseq)
        if fast is not None:
            return FetchResult(fast)
    names = [a.name for a in attrs]
    items: list[bytes] = []
    if include_uid and "UID" not in names:
        items.append(b"UID %d" % meta.uid)
    msg = _Message(content, cache)
    for a in attrs:
        items.append(_item(a, meta, msg))
    if seen_set and "FLAGS" not in names:
        items.append(b"FLAGS " + format_flags(meta.flags))
    if modseq and "MODSEQ" not in names:
        items.append(b"MODSEQ (%d)" % meta.modseq)
    line = b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))
    return FetchResult(line, needs_seen=not seen_set and sets_seen(meta, attrs),
                       cache=msg.cache if msg.computed else None)


def render_meta_only(seq: int, meta: MessageMeta, attrs: tuple[FetchAttr, ...], *,
                     include_uid: bool, modseq: bool = False) -> bytes | None:
    """The fast path of :func:`render_fetch` for items that need no content (FLAGS,
    UID, MODSEQ, INTERNALDATE, RFC822.SIZE, SAVEDATE): the line, or None when an
    item needs more. The response's shape is prepared once per item list."""
    memo = _last_plan
    if memo.attrs is attrs and memo.include_uid == include_uid and memo.modseq == modseq:
        render = memo.render   # the same FETCH command: the same tuple of items
    else:
        render = _meta_plan(attrs, include_uid, modseq)
        memo.attrs, memo.include_uid, memo.modseq, memo.render = (
            attrs, include_uid, modseq, render)
    return None if render is None else render(seq, meta)


_Getter = Callable[[MessageMeta], object]
_META_ITEMS: dict[str, tuple[bytes, _Getter]] = {
    "FLAGS": (b"FLAGS %s", lambda m: format_flags(m.flags)),
    "UID": (b"UID %d", lambda m: m.uid),
    "MODSEQ": (b"MODSEQ (%d)", lambda m: m.modseq),
    "INTERNALDATE": (b"INTERNALDATE %s", lambda m: format_datetime(m.internal_date)),
    "RFC822.SIZE": (b"RFC822.SIZE %d", lambda m: m.size),
    "SAVEDATE": (b"SAVEDATE %s", lambda m: b"NIL" if m.savedate is None
                 else format_datetime(m.savedate)),
}


_Render = Callable[[int, MessageMeta], bytes]


class _PlanMemo:
    """The plan of the last item list: a FETCH renders many messages with one tuple,
    and hashing that tuple for every message would cost more than the rendering."""

    __slots__ = ("attrs", "include_uid", "modseq", "render")

    def __init__(self) -> None:
        self.attrs: tuple[FetchAttr, ...] | None = None
        self.include_uid = False
        self.modseq = False
        self.render: _Render | None = None


_last_plan = _PlanMemo()


@functools.lru_cache(maxsize=256)
def _meta_plan(attrs: tuple[FetchAttr, ...], include_uid: bool, modseq: bool) -> _Render | None:
    """A function rendering these metadata items for one message, or None."""
    names = [a.name for a in attrs]
    if any(n not in _META_ITEMS or a.section is not None for n, a in zip(names, attrs)):
        return None
    if include_uid and "UID" not in names:
        names.insert(0, "UID")
    if modseq and "MODSEQ" not in names:
        names.append("MODSEQ")
    pieces = [_META_ITEMS[n] for n in names]
    fmt = b"* %d FETCH (" + b" ".join(p[0] for p in pieces) + b")\r\n"
    getters = tuple(p[1] for p in pieces)
    if len(getters) == 1:
        (g0,) = getters
        return lambda seq, m: fmt % (seq, g0(m))
    if len(getters) == 2:
        g0, g1 = getters
        return lambda seq, m: fmt % (seq, g0(m), g1(m))
    return lambda seq, m: fmt % (seq, *[g(m) for g in getters])
