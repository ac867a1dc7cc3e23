"""SEARCH: which messages of a mailbox match a search key.

RFC 9051 §6.4.4 (every key), with RFC 7162 §3.1.5 MODSEQ, RFC 5032 YOUNGER and
OLDER, RFC 8514 SAVEDBEFORE/SAVEDON/SAVEDSINCE/SAVEDATESUPPORTED and RFC 5182
``$``. A key is compiled once into a predicate; AND and OR evaluate their
cheapest members first, so that a message's content is loaded only for the
messages that pass every key on flags, numbers, sizes and dates.

Matching rules:

- strings match as case-insensitive substrings after Unicode case folding, on
  decoded text: RFC 2047 words in header fields, bodies with their transfer
  encoding and charset undone, HTML reduced to text (:mod:`pillarbox.mime.text`);
  BODY also sees the header fields of encapsulated messages (they are octets of
  the body, and a forwarded message's From is what the reader sees) and the
  text of delivery and disposition reports; TEXT adds every header block,
  MIME header fields included (RFC 9051 §6.4.4);
- BEFORE/ON/SINCE compare the calendar date of the internal date in UTC (the
  RFC says to disregard time and zone; UTC is the server's zone here), SAVED*
  the same for the save date (the internal date when there is none, RFC 8514 §4.3
  leaves it to the server), SENT* the date of the Date header in its own zone,
  or, without a readable Date header, of the internal date (the "sent date" of
  RFC 5256 §2.2, as SORT uses it; Dovecot takes 1970 instead);
- the search strings arrive as ``str``; with a CHARSET other than UTF-8 or
  US-ASCII their octets (the parser decodes them as UTF-8 with
  ``surrogateescape``, so the octets are kept) are decoded with that charset.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Container, Sequence
from datetime import date

from ..mime.addresses import Group, parse_address_list
from ..mime.headers import decode_text, decode_words, text_codec, unfold
from ..mime.parser import Part, parse
from ..mime.text import decode_charset, message_text
from ..protocols.imap.commands import SearchKey, SequenceSet
from ..store.base import MessageMeta
from .cache import CacheEntry, compute_from

__all__ = ["BadCharset", "SearchError", "decode_strings", "search", "search_charset"]


class SearchError(Exception):
    """A search that cannot run; ``code`` is the IMAP response code of the NO/BAD."""

    code: str | None = None


class BadCharset(SearchError):
    """CHARSET names a charset we do not know (RFC 9051 §6.4.4): the client's fault,
    answered ``NO [BADCHARSET (UTF-8 US-ASCII)]``."""

    code = "BADCHARSET (UTF-8 US-ASCII)"


_EPOCH = date(1970, 1, 1).toordinal()
_DAY = 86400
_SEEN, _ANSWERED, _DELETED, _DRAFT, _FLAGGED, _RECENT = (
    "\\Seen", "\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Recent")


def search_charset(charset: str | None) -> str | None:
    """The Python codec for a SEARCH/SORT/THREAD CHARSET; None for UTF-8 and US-ASCII
    (nothing to do). Raises :class:`BadCharset` for an unknown one."""
    if charset is None or charset.upper() in ("UTF-8", "US-ASCII", "UTF8", "ASCII"):
        return None
    codec = text_codec(charset)
    if codec is None:
        raise BadCharset(f"unknown charset {charset!r}")
    return None if codec in ("utf-8", "ascii") else codec


def decode_strings(key: SearchKey, codec: str) -> SearchKey:
    """``key`` with its search strings' octets decoded from ``codec`` instead of UTF-8."""
    def conv(v: object) -> object:
        if isinstance(v, SearchKey):
            return decode_strings(v, codec)
        if isinstance(v, str):
            return v.encode("utf-8", "surrogateescape").decode(codec, "replace")
        return v

    if key.op in ("KEYWORD", "UNKEYWORD"):
        return key
    if key.op == "HEADER":  # the field name stays as it is
        return SearchKey(key.op, (key.args[0], conv(key.args[1])))
    return SearchKey(key.op, tuple(conv(a) for a in key.args))


# --- the message, loaded lazily --------------------------------------------------------

class _Lazy:
    """The current message's parse, cache entry and texts, each made at most once."""

    __slots__ = ("_body", "_entry", "_header", "_root", "cache", "computed", "content", "meta")

    def __init__(self, content: Callable[[MessageMeta], bytes],
                 cache: Callable[[MessageMeta], CacheEntry | None],
                 computed: dict[str, CacheEntry] | None):
        self.content = content
        self.cache = cache
        self.computed = computed
        self.meta: MessageMeta | None = None
        self._root: Part | None = None
        self._entry: CacheEntry | None = None
        self._body: str | None = None
        self._header: str | None = None

    def _at(self, meta: MessageMeta) -> None:
        if self.meta is not meta:
            self.meta = meta
            self._root = self._entry = None
            self._body = self._header = None

    def root(self, meta: MessageMeta) -> Part:
        self._at(meta)
        if self._root is None:
            self._root = parse(self.content(meta))
        return self._root

    def entry(self, meta: MessageMeta) -> CacheEntry:
        self._at(meta)
        if self._entry is None:
            e = self.cache(meta)
            if e is None:
                e = compute_from(self.root(meta))
                if self.computed is not None:
                    self.computed[meta.blob] = e
            self._entry = e
        return self._entry

    def body(self, meta: MessageMeta) -> str:
        """The text of the body: its text parts decoded, and the header fields of the
        messages it encapsulates (they are body octets of this message)."""
        self._at(meta)
        if self._body is None:
            root = self.root(meta)
            extra = [_header_text(p.message) if p.message is not None else
                     decode_charset(p.decoded(), "utf-8")
                     for p in root.walk()
                     if p.message is not None or p.content_type in _TEXTUAL_REPORTS]
            self._body = "\n".join([message_text(root), *extra]).casefold()
        return self._body

    def header(self, meta: MessageMeta) -> str:
        """For TEXT: every header block, the message's, its parts' MIME headers and
        those of encapsulated messages (RFC 9051 §6.4.4: "including MIME header
        fields"), junk lines included, encoded words decoded."""
        self._at(meta)
        if self._header is None:
            self._header = "\n".join(
                _header_text(p) for p in self.root(meta).walk()).casefold()
        return self._header


#: Machine-readable reports that are text to a person (RFC 3464, RFC 8098, RFC 5965).
_TEXTUAL_REPORTS = frozenset({"message/delivery-status", "message/global-delivery-status",
                              "message/disposition-notification", "message/feedback-report"})


def _header_text(part: Part) -> str:
    return decode_words(unfold(part.header_bytes()))


Pred = Callable[[int, MessageMeta, _Lazy], bool]

# costs: what a key needs
_FREE, _CACHE, _HEADERS, _TEXT = 0, 1, 2, 3


def _day(ts: float) -> int:
    return int(ts // _DAY)


def _target_day(v: object) -> int:
    if not isinstance(v, date):
        raise SearchError(f"a date was expected, not {v!r}")
    return v.toordinal() - _EPOCH


def _number_test(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    if not ranges:
        return lambda n: False
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    if len(merged) == 1:
        lo, hi = merged[0]
        return lambda n: lo <= n <= hi
    starts = [m[0] for m in merged]
    ends = [m[1] for m in merged]

    def test(n: int) -> bool:
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= ends[i]

    return test


class _Compiler:
    def __init__(self, *, largest_seq: int, largest_uid: int, saved: Sequence[int] | None,
                 now: float, recent: Container[int], savedate_supported: bool):
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self.saved = frozenset(saved or ())
        self.now = now
        self.recent = recent
        self.savedate_supported = savedate_supported

    def flag(self, name: str, present: bool) -> tuple[int, Pred]:
        if name == _RECENT:
            recent = self.recent
            if present:
                return _FREE, lambda s, m, x: m.uid in recent or _RECENT in m.flags
            return _FREE, lambda s, m, x: not (m.uid in recent or _RECENT in m.flags)
        if name.startswith("\\"):
            if present:
                return _FREE, lambda s, m, x: name in m.flags
            return _FREE, lambda s, m, x: name not in m.flags
        low = name.lower()  # keywords are case-insensitive (RFC 9051 §2.3.2)

        def has(s: int, m: MessageMeta, x: _Lazy) -> bool:
            return name in m.flags or any(f.lower() == low for f in m.flags)

        if present:
            return _FREE, has
        return _FREE, lambda s, m, x: not has(s, m, x)

    def sequence(self, v: object, uid: bool) -> tuple[int, Pred]:
        if not isinstance(v, SequenceSet):
            raise SearchError(f"a sequence set was expected, not {v!r}")
        if v.saved:  # RFC 5182 §2.1: the saved UIDs (an empty set when none was saved)
            saved = self.saved
            return _FREE, lambda s, m, x: m.uid in saved
        test = _number_test(v.resolve(self.largest_uid if uid else self.largest_seq))
        if uid:
            return _FREE, lambda s, m, x: test(m.uid)
        return _FREE, lambda s, m, x: test(s)

    def compile(self, key: SearchKey) -> tuple[int, Pred]:  # noqa: C901 - one table of keys
        op, args = key.op, key.args
        simple = _FLAG_KEYS.get(op)
        if simple is not None:
            return self.flag(*simple)
        if op == "ALL":
            return _FREE, lambda s, m, x: True
        if op == "SAVEDATESUPPORTED":
            ok = self.savedate_supported
            return _FREE, lambda s, m, x: ok
        if op == "NEW":
            return self.and_([SearchKey("RECENT"), SearchKey("UNSEEN")])
        if op == "OLD":
            return self.flag(_RECENT, False)
        if op == "KEYWORD":
            return self.flag(str(args[0]), True)
        if op == "UNKEYWORD":
            return self.flag(str(args[0]), False)
        if op in ("SEQSET", "UID"):
            return self.sequence(args[0], op == "UID")
        if op == "AND":
            return self.and_([_key(a) for a in args])
        if op == "OR":
            (ca, a), (cb, b) = sorted((self.compile(_key(args[0])), self.compile(_key(args[1]))),
                                      key=lambda t: t[0])
            return max(ca, cb), lambda s, m, x: a(s, m, x) or b(s, m, x)
        if op == "NOT":
            c, f = self.compile(_key(args[0]))
            return c, lambda s, m, x: not f(s, m, x)
        if op in ("LARGER", "SMALLER", "YOUNGER", "OLDER", "MODSEQ"):
            n = _int(args[0])
            if op == "LARGER":
                return _FREE, lambda s, m, x: m.size > n
            if op == "SMALLER":
                return _FREE, lambda s, m, x: m.size < n
            if op == "MODSEQ":  # per-flag entries share the message's MODSEQ
                return _FREE, lambda s, m, x: m.modseq >= n
            limit = self.now - n  # RFC 5032 §3: OLDER and YOUNGER are complements
            if op == "YOUNGER":
                return _FREE, lambda s, m, x: m.internal_date > limit
            return _FREE, lambda s, m, x: m.internal_date <= limit
        if op in ("BEFORE", "ON", "SINCE"):
            return _FREE, _compare(op, _target_day(args[0]), lambda m, x: _day(m.internal_date))
        if op in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
            return _FREE, _compare(op[5:], _target_day(args[0]), lambda m, x: _day(
                m.internal_date if m.savedate is None else m.savedate))
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return _CACHE, _compare(op[4:], _target_day(args[0]), _sent_day)
        if op in ("FROM", "TO", "CC", "BCC"):
            return _HEADERS, _address_pred(op, str(args[0]))
        if op == "SUBJECT":
            return _HEADERS, _header_pred(op, str(args[0]))
        if op == "HEADER":
            return _HEADERS, _header_pred(str(args[0]), str(args[1]))
        if op == "BODY":
            needle = str(args[0]).casefold()
            return _TEXT, lambda s, m, x: needle in x.body(m)
        if op == "TEXT":
            needle = str(args[0]).casefold()
            return _TEXT, lambda s, m, x: needle in x.header(m) or needle in x.body(m)
        raise SearchError(f"unknown search key {op}")

    def and_(self, keys: list[SearchKey]) -> tuple[int, Pred]:
        compiled = sorted((self.compile(k) for k in keys), key=lambda t: t[0])
        if not compiled:
            return _FREE, lambda s, m, x: True
        if len(compiled) == 1:
            return compiled[0]
        preds = tuple(p for _, p in compiled)
        if len(preds) == 2:
            a, b = preds
            return compiled[-1][0], lambda s, m, x: a(s, m, x) and b(s, m, x)

        def every(s: int, m: MessageMeta, x: _Lazy) -> bool:
            for p in preds:
                if not p(s, m, x):
                    return False
            return True

        return compiled[-1][0], every


_FLAG_KEYS: dict[str, tuple[str, bool]] = {
    "ANSWERED": (_ANSWERED, True), "UNANSWERED": (_ANSWERED, False),
    "DELETED": (_DELETED, True), "UNDELETED": (_DELETED, False),
    "DRAFT": (_DRAFT, True), "UNDRAFT": (_DRAFT, False),
    "FLAGGED": (_FLAGGED, True), "UNFLAGGED": (_FLAGGED, False),
    "SEEN": (_SEEN, True), "UNSEEN": (_SEEN, False),
    "RECENT": (_RECENT, True),
}


def _key(v: object) -> SearchKey:
    if not isinstance(v, SearchKey):
        raise SearchError(f"a search key was expected, not {v!r}")
    return v


def _int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise SearchError(f"a number was expected, not {v!r}")
    return v


def _compare(how: str, target: int, day: Callable[[MessageMeta, _Lazy], int | None]) -> Pred:
    def pred(s: int, m: MessageMeta, x: _Lazy) -> bool:
        d = day(m, x)
        if d is None:
            return False
        if how == "BEFORE":
            return d < target
        if how == "ON":
            return d == target
        return d >= target

    return pred


def _sent_day(m: MessageMeta, x: _Lazy) -> int | None:
    e = x.entry(m)
    if e.date is None:   # the sent date of RFC 5256 §2.2: then the internal date
        return _day(m.internal_date)
    return _day(e.date + 60 * (e.date_offset or 0))


def _header_pred(field: str, value: str) -> Pred:
    name = field.lower()
    needle = value.casefold()

    def pred(s: int, m: MessageMeta, x: _Lazy) -> bool:
        for f in x.root(m).headers:
            if f.name.lower() == name and needle in f.text.casefold():
                return True
        return False

    return pred


def _address_text(value: bytes) -> str:
    """The addresses of a field as the ENVELOPE has them, for substring matching:
    ``display <local@domain>`` each, comments and routes gone (Dovecot matches
    ``user@domain`` in ``<user (comment)@ (comment) domain>``)."""
    out = []
    for item in parse_address_list(value):
        boxes = item.members if isinstance(item, Group) else [item]
        if isinstance(item, Group):
            out.append(decode_text(item.name))
        for mb in boxes:
            name = mb.display or ""
            out.append(f"{name} <{decode_text(mb.mailbox or b'')}@"
                       f"{decode_text(mb.domain or b'')}>")
    return ", ".join(out)


def _address_pred(field: str, value: str) -> Pred:
    """FROM, TO, CC, BCC: the decoded field, or its addresses normalised."""
    name = field.lower()
    needle = value.casefold()

    def pred(s: int, m: MessageMeta, x: _Lazy) -> bool:
        for f in x.root(m).headers:
            if f.name.lower() != name:
                continue
            if needle in f.text.casefold() or needle in _address_text(f.value).casefold():
                return True
        return False

    return pred


def search(key: SearchKey, messages: Sequence[tuple[int, MessageMeta]], *,
           largest_seq: int, largest_uid: int,
           content: Callable[[MessageMeta], bytes],
           cache: Callable[[MessageMeta], CacheEntry | None],
           saved: Sequence[int] | None = None, now: float,
           charset: str | None = None, recent: Container[int] = (),
           savedate_supported: bool = True, uid: bool = False,
           computed: dict[str, CacheEntry] | None = None) -> list[int]:
    """The sequence numbers (UIDs with ``uid``) of the ``(seq, meta)`` that match ``key``.

    ``largest_seq``/``largest_uid`` resolve ``*``; ``saved`` is the UIDs of the
    saved result for ``$``; ``now`` the current time for YOUNGER/OLDER;
    ``charset`` the CHARSET given (raises :class:`BadCharset` when unknown);
    ``recent`` the UIDs that are \\Recent for this session (IMAP4rev1);
    ``content`` and ``cache`` load a message's octets and its cache entry; a
    newly computed entry is put in ``computed`` (keyed by blob) for the store.
    """
    codec = search_charset(charset)
    if codec is not None:
        key = decode_strings(key, codec)
    _, pred = _Compiler(largest_seq=largest_seq, largest_uid=largest_uid, saved=saved,
                        now=now, recent=recent,
                        savedate_supported=savedate_supported).compile(key)
    lazy = _Lazy(content, cache, computed)
    if uid:
        return [m.uid for s, m in messages if pred(s, m, lazy)]
    return [s for s, m in messages if pred(s, m, lazy)]
