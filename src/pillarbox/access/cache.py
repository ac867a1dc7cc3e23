"""What FETCH, SEARCH, SORT and THREAD would parse a message for, computed once per blob.

A :class:`CacheEntry` is computed from one parse of the stored octets
(:func:`compute`) and kept in the store's ``blob_cache`` table (one row per
blob, shared by every copy of the message) as the tuple ``(envelope,
bodystructure, body, sort)``: the first three are the IMAP renderings as sent
on the wire, ``sort`` is a JSON object with the header values SORT and THREAD
compare (RFC 5256, RFC 5957).

String sort keys are stored already folded by :func:`fold`, the comparison
form: RFC 5256 §3 compares with i;ascii-casemap (ASCII letters upper-cased);
for other characters :func:`fold` is i;unicode-casemap (RFC 5051), which
RFC 5255 §4 (I18NLEVEL=1) asks for and Dovecot uses.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..mime.addresses import Group, Mailbox, parse_address_list
from ..mime.dates import parse_date
from ..mime.headers import decode_text, decode_words, unfold
from ..mime.imap import bodystructures, envelope
from ..mime.parser import Part, parse
from ..store.base import MessageMeta

__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "CacheRow",
    "MEMO",
    "Memo",
    "base_subject",
    "compute",
    "compute_from",
    "fold",
    "from_row",
    "lookup",
    "message_ids",
    "sent_date",
]

#: Bumped whenever what is stored changes; rows of another version are recomputed.
CACHE_VERSION = 3

#: ``(envelope, bodystructure, body, sort_json)``: a ``blob_cache`` row without its key.
CacheRow = tuple[bytes, bytes, bytes, str]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """The cached facts of one message.

    ``date`` is the Date header as seconds since the epoch (UTC) and
    ``date_offset`` its zone in minutes (for SENTON and friends, which compare
    the sender's calendar date); both None when the header is missing or
    unreadable. ``subject`` is the base subject of RFC 5256 §2.1, folded;
    ``reply`` says whether extracting it removed a reply or forward marker
    (REFERENCES step 5). ``from_``/``to``/``cc`` are the addr-mailbox (local
    part) of the first address of the field (SORT FROM/TO/CC, RFC 5256 §3),
    ``display_from``/``display_to`` the RFC 5957 display values, all folded,
    ``""`` when absent. ``message_id``, ``in_reply_to`` and ``references`` are
    message ids without their angle brackets.
    """

    envelope: bytes
    bodystructure: bytes
    body: bytes
    date: float | None = None
    date_offset: int | None = None
    subject: str = ""
    reply: bool = False
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()

    def to_row(self) -> CacheRow:
        """The ``blob_cache`` columns ``(envelope, bodystructure, body, sort)``."""
        sort = {
            "v": CACHE_VERSION, "date": self.date, "tz": self.date_offset,
            "subject": self.subject, "reply": self.reply, "from": self.from_, "to": self.to,
            "cc": self.cc, "dfrom": self.display_from, "dto": self.display_to,
            "id": self.message_id, "irt": list(self.in_reply_to), "refs": list(self.references),
        }
        return (self.envelope, self.bodystructure, self.body,
                json.dumps(sort, ensure_ascii=False, separators=(",", ":")))


_VERSION_PREFIX = '{"v":%d,' % CACHE_VERSION   # how to_row's JSON begins


def from_row(row: Sequence[object], *, sort_keys: bool = True) -> CacheEntry | None:
    """The entry stored as ``row``; None when the row is of another version or damaged
    (the caller then computes it again).

    ``sort_keys=False`` leaves the SORT and THREAD values at their defaults and
    does not decode their JSON: FETCH renders only the three IMAP values, and
    decoding was a fifth of the cost of a cached ``FETCH 1:30 (ENVELOPE)``.
    """
    try:
        env, bs, body, sort_json = row
        if not (isinstance(env, bytes | memoryview) and isinstance(bs, bytes | memoryview)
                and isinstance(body, bytes | memoryview) and isinstance(sort_json, str)):
            return None
        if not sort_keys:
            if not sort_json.startswith(_VERSION_PREFIX):
                return None
            return CacheEntry(envelope=bytes(env), bodystructure=bytes(bs), body=bytes(body))
        s = json.loads(sort_json)
        if not isinstance(s, dict) or s.get("v") != CACHE_VERSION:
            return None
        date = s["date"]
        tz = s["tz"]
        return CacheEntry(
            envelope=bytes(env), bodystructure=bytes(bs), body=bytes(body),
            date=None if date is None else float(date),
            date_offset=None if tz is None else int(tz),
            subject=str(s["subject"]), reply=bool(s["reply"]), from_=str(s["from"]),
            to=str(s["to"]), cc=str(s["cc"]), display_from=str(s["dfrom"]),
            display_to=str(s["dto"]),
            message_id=None if s["id"] is None else str(s["id"]),
            in_reply_to=tuple(str(x) for x in s["irt"]),
            references=tuple(str(x) for x in s["refs"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


class Memo:
    """The entries this process used last, by blob, so that a FETCH of messages
    fetched a moment ago reads no ``blob_cache`` row and decodes nothing.

    A blob never changes, so neither does its entry: there is nothing to
    invalidate, and a blob gone from the store is simply never asked for
    again.  Entries read for FETCH lack the SORT and THREAD values
    (``from_row(sort_keys=False)``); they are kept as such and not handed to
    SORT, SEARCH or THREAD.  Bounded: when full, the oldest quarter goes.
    """

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[str, tuple[CacheEntry, bool]] = {}

    def get(self, blob: str, sort_keys: bool) -> CacheEntry | None:
        found = self._entries.get(blob)
        if found is None or (sort_keys and not found[1]):
            return None
        return found[0]

    def put(self, blob: str, entry: CacheEntry, sort_keys: bool) -> None:
        entries = self._entries
        if len(entries) >= self.size and blob not in entries:
            for old in list(itertools.islice(entries, max(1, self.size // 4))):
                del entries[old]
        entries[blob] = (entry, sort_keys)

    def clear(self) -> None:
        self._entries.clear()


#: This process's memo (the IMAP and POP3 sessions of one worker share it).
MEMO = Memo()


def compute(content: bytes) -> CacheEntry:
    """The entry of a message, from one parse of its octets. Never raises on content."""
    return compute_from(parse(content))


def compute_from(root: Part) -> CacheEntry:
    """The entry of an already parsed message (so FETCH parses only once)."""
    h = root.headers
    parsed: dict[bytes, list[Mailbox | Group]] = {}

    def addresses(value: bytes) -> list[Mailbox | Group]:
        # ENVELOPE and the SORT keys read the same fields: parse each once
        found = parsed.get(value)
        if found is None:
            found = parsed[value] = parse_address_list(value)
        return found

    date = parse_date(h.value("Date"))
    subject_raw = h.value("Subject")
    subject, reply = base_subject(subject_raw if subject_raw is not None else b"")
    env = envelope(root, addresses)
    frm = _first_mailbox(h.value("From"), addresses)
    to = _first_mailbox(h.value("To"), addresses)
    cc = _first_mailbox(h.value("Cc"), addresses)
    offset = date.utcoffset() if date is not None else None
    mid = message_ids(h.value("Message-ID"))
    structure, body = bodystructures(root)
    return CacheEntry(
        envelope=env,
        bodystructure=structure,
        body=body,
        date=None if date is None else date.timestamp(),
        date_offset=None if offset is None else int(offset.total_seconds() // 60),
        subject=subject,
        reply=reply,
        from_=_mailbox_key(frm),
        to=_mailbox_key(to),
        cc=_mailbox_key(cc),
        display_from=_display_key(frm),
        display_to=_display_key(to),
        message_id=mid[0] if mid else None,
        in_reply_to=tuple(message_ids(h.value("In-Reply-To"))),
        references=tuple(message_ids(h.value("References"))),
    )


def lookup(meta: MessageMeta, cache: Callable[[MessageMeta], CacheEntry | None],
           content: Callable[[MessageMeta], bytes],
           computed: dict[str, CacheEntry] | None = None) -> CacheEntry:
    """The entry of ``meta``: from ``cache``, else computed from ``content`` (and then
    put in ``computed``, keyed by blob, for the caller to store)."""
    entry = cache(meta)
    if entry is None:
        if computed is not None and meta.blob in computed:
            return computed[meta.blob]
        entry = compute(content(meta))
        if computed is not None:
            computed[meta.blob] = entry
    return entry


def sent_date(meta: MessageMeta, entry: CacheEntry) -> float:
    """The sent date of RFC 5256 §2.2: the Date header, else the internal date."""
    return meta.internal_date if entry.date is None else entry.date


# --- folding -----------------------------------------------------------------------

def fold(text: str) -> str:
    """The comparison form of a string, i;unicode-casemap (RFC 5051 §2): every character
    by its (simple) titlecase, then the NFKD decomposition. ASCII compares as in
    i;ascii-casemap (RFC 4790 §9.2, letters upper-cased), ``Ä`` as ``A`` and a
    combining mark, right after ``A``; this is also how Dovecot orders."""
    if text.isascii():
        return text.upper()
    # titlecase again after the decomposition: NFKD of a ligature may be lower case
    return _titlecase(unicodedata.normalize("NFKD", _titlecase(text)))


class _Titlecase(dict[int, str]):
    """``str.translate`` table of the simple titlecase mappings, filled as
    characters are met (one character each: a longer mapping is not simple)."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        t = ch.title()
        out = t if len(t) == 1 else ch
        if len(self) < 65536:
            self[code] = out
        return out


_TITLECASE = _Titlecase()


def _titlecase(text: str) -> str:
    return text.translate(_TITLECASE)


# --- addresses (RFC 5256 §3, RFC 5957 §3) -------------------------------------------

def _first_mailbox(value: bytes | None,
                   parse: Callable[[bytes], list[Mailbox | Group]] = parse_address_list,
                   ) -> Mailbox | None:
    """The first address as the ENVELOPE lists it: a group counts as the mailbox of
    its start marker, whose mailbox name is the group's name (RFC 9051 §7.5.2),
    as Dovecot sorts it."""
    if not value:
        return None
    addresses = parse(value)
    if not addresses:
        return None
    first = addresses[0]
    if isinstance(first, Group):
        return Mailbox(None, None, first.name, None)
    return first


def _mailbox_key(mb: Mailbox | None) -> str:
    """SORT FROM/TO/CC: the addr-mailbox of the first address (RFC 5256 §3)."""
    if mb is None or mb.mailbox is None:
        return ""
    return fold(decode_text(mb.mailbox))


def _display_key(mb: Mailbox | None) -> str:
    """DISPLAYFROM/DISPLAYTO (RFC 5957 §3): the decoded display name, or the
    addr-spec when there is no (or an empty) display name."""
    if mb is None:
        return ""
    name = mb.display
    if name is not None:
        name = " ".join(name.split())
        if name:
            return fold(name)
    if mb.mailbox is None:
        return ""
    local = decode_text(mb.mailbox)
    return fold(local if mb.domain is None else local + "@" + decode_text(mb.domain))


# --- message ids (RFC 5256 §4 REFERENCES step 1) -------------------------------------

_MSGID = re.compile(rb"<([^<>\s]+)>")
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")


def message_ids(value: bytes | None) -> list[str]:
    """The msg-ids of a Message-ID, In-Reply-To or References value, brackets removed.

    An id must look like ``<left@right>`` (RFC 5322 §3.6.4); comments and the
    phrases old In-Reply-To fields carry are skipped.
    """
    if not value:
        return []
    value = _COMMENT.sub(b" ", unfold(value))
    return [m.group(1).decode("utf-8", "replace")
            for m in _MSGID.finditer(value) if b"@" in m.group(1)]


# --- base subject (RFC 5256 §2.1) ----------------------------------------------------

# subj-blob = "[" *BLOBCHAR "]" *WSP
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = r"(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD, re.IGNORECASE)
_BLOB_PREFIX = re.compile(_BLOB)
# subj-trailer = "(fwd)" / WSP
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.IGNORECASE)
_WS_RUN = re.compile(r"[ \t\r\n]+")


def base_subject(raw: bytes) -> tuple[str, bool]:
    """The base subject of a Subject value (RFC 5256 §2.1), folded, and whether it
    was a reply or forward (a subj-refwd, ``(fwd)`` or ``[fwd: ...]`` was removed).

    Step 1 decodes RFC 2047 words, turns tabs and continuations into spaces and
    collapses runs of spaces; steps 2 to 6 remove trailers, leaders, blobs and
    the ``[fwd: ...]`` wrapping exactly as the RFC orders them.
    """
    s = _WS_RUN.sub(" ", decode_words(unfold(raw)))
    reply = False
    while True:
        # (2) trailers: "(fwd)" or WSP, until none is left
        while True:
            m = _TRAILER.search(s)
            if m is None:
                break
            if m.group(0) != " " and m.group(0) != "\t":
                reply = True
            s = s[: m.start()]
        # (3)-(5) leaders and blobs, until neither matches
        while True:
            changed = False
            while True:  # (3) every leader
                if s[:1] in (" ", "\t"):
                    s = s[1:]
                    changed = True
                    continue
                m = _LEADER.match(s)
                if m is None:
                    break
                s = s[m.end():]
                reply = changed = True
            m = _BLOB_PREFIX.match(s)  # (4) a blob, if something remains after it
            if m is not None and m.end() < len(s):
                s = s[m.end():]
                changed = True
            if not changed:
                break
        # (6) "[fwd:" subject "]": unwrap and start again from (2)
        if len(s) >= 6 and s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return fold(s), reply
