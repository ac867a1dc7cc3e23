"""IMAP commands as typed values: what the parser produces and the session executes.

RFC 9051 (IMAP4rev2) §6 with RFC 3501 (IMAP4rev1) and the extensions the
server announces.  Every command carries its tag; every argument is already
checked for syntax and decoded: mailbox names are ``str`` (modified UTF-7 of
RFC 3501 §5.1.3 decoded unless UTF-8 is in force, RFC 9051 §5.1 / RFC 6855),
flags keep their case as sent, atoms that are keywords of the protocol
(FETCH items, SEARCH keys, STATUS items) are upper case.

A sequence set is kept as the client wrote it: ``*`` is ``None`` and is
resolved against the mailbox when the command runs (RFC 9051 §9,
``seq-number``).  ``$`` (RFC 5182 SEARCHRES) is ``SequenceSet(saved=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Union

# ---------------------------------------------------------------- sequence sets


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """``1:4,7,9:*``: ranges of message numbers or UIDs, ``None`` standing for ``*``.

    Each range is ``(first, last)`` as written (``4:1`` is the same as
    ``1:4``; a single number is ``(n, n)``).  ``saved`` is the ``$`` of
    RFC 5182: the result of the last ``SEARCH ... RETURN (SAVE)``.
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The ranges as ordered pairs, ``*`` replaced by ``largest`` (0 if empty)."""
        out = []
        for first, last in self.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            out.append((a, b) if a <= b else (b, a))
        return out

    def contains(self, number: int, largest: int) -> bool:
        return any(a <= number <= b for a, b in self.resolve(largest))


# ---------------------------------------------------------------- FETCH


@dataclass(frozen=True, slots=True)
class Section:
    """A ``section`` of BODY[...] / BINARY[...] (RFC 9051 §6.4.5).

    ``part`` is the section-part (``(1, 2)`` for ``1.2``, ``()`` for the
    whole message); ``text`` is ``None``, ``"HEADER"``, ``"HEADER.FIELDS"``,
    ``"HEADER.FIELDS.NOT"``, ``"TEXT"`` or ``"MIME"``; ``fields`` the header
    field names of the HEADER.FIELDS forms, as the client wrote them.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section as the response echoes it: ``1.HEADER.FIELDS (From To)``."""
        out = ".".join(str(n) for n in self.part)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """One item of a FETCH (RFC 9051 §6.4.5, RFC 3516, RFC 7162, RFC 8514).

    ``name`` is one of ``FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE
    UID MODSEQ SAVEDATE RFC822 RFC822.HEADER RFC822.TEXT BINARY.SIZE`` or
    ``BODY`` (without a section: BODYSTRUCTURE without extension data),
    ``BODY`` with ``section`` (BODY[...] and BODY.PEEK[...]) or ``BINARY``
    with ``section`` (BINARY[...], BINARY.PEEK[...]; then ``section.part``
    only).  ``partial`` is ``<offset.count>`` as ``(offset, count)``.
    The macros ALL, FAST and FULL are expanded by the parser.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


# ---------------------------------------------------------------- SEARCH


@dataclass(frozen=True, slots=True)
class SearchKey:
    """One search key of RFC 9051 §6.4.4 (with RFC 7162 MODSEQ, RFC 5032
    YOUNGER/OLDER, RFC 8514 SAVEDBEFORE/SAVEDON/SAVEDSINCE/SAVEDATESUPPORTED).

    ``op`` is the key in upper case; ``args`` its arguments:

    - no argument: ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN
      UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN SAVEDATESUPPORTED
    - ``(str,)``: BCC BODY CC FROM SUBJECT TEXT TO, KEYWORD UNKEYWORD (the flag)
    - ``(str, str)``: HEADER (field name, string)
    - ``(date,)`` as ``datetime.date``: BEFORE ON SINCE SENTBEFORE SENTON
      SENTSINCE SAVEDBEFORE SAVEDON SAVEDSINCE
    - ``(int,)``: LARGER SMALLER YOUNGER OLDER (seconds)
    - ``(SequenceSet,)``: ``SEQSET`` (a bare sequence set) and UID
    - ``(SearchKey,)``: NOT;  ``(SearchKey, SearchKey)``: OR
    - ``(SearchKey, ...)``: AND (a parenthesised list, or the top-level keys)
    - ``(int, str | None, str | None)``: MODSEQ (mod-sequence, entry name,
      entry type ``priv`` / ``shared`` / ``all``)
    """

    op: str
    args: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class SortKey:
    """One SORT criterion (RFC 5256 §3): ARRIVAL CC DATE FROM SIZE SUBJECT TO,
    and DISPLAYFROM DISPLAYTO (RFC 5957)."""

    key: str
    reverse: bool = False


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    tag: str


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Check(Command):
    """IMAP4rev1's CHECK: a NOOP for us (every write is committed at once)."""


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """``AUTHENTICATE mech [initial-response]`` (RFC 9051 §6.2.2, RFC 4959 SASL-IR).

    ``initial`` is the decoded initial response: ``None`` when absent, ``b""``
    for ``=``.  The exchange goes on with ``AuthResponse`` events.
    """

    mechanism: str
    initial: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]  # upper case


@dataclass(frozen=True, slots=True)
class QResyncParams:
    """The QRESYNC parameter of SELECT/EXAMINE (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # the optional sequence match data: (known sequence numbers, their UIDs)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE when ``readonly``."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResyncParams | None = None


@dataclass(frozen=True, slots=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()   # RFC 6154 §3: CREATE ... (USE (\Sent))


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST (RFC 9051 §6.3.9 with RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS,
    RFC 6154 SPECIAL-USE) and LSUB (``lsub``, RFC 3501 §6.3.9).

    ``selection``: SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE;
    ``returns``: SUBSCRIBED CHILDREN SPECIAL-USE, and STATUS with
    ``status_items``.  Patterns are as sent (``*`` and ``%`` wildcards).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    lsub: bool = False
    extended: bool = False   # the client used LIST-EXTENDED syntax


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


@dataclass(frozen=True, slots=True)
class Status(Command):
    """STATUS items, upper case: MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE
    RECENT HIGHESTMODSEQ APPENDLIMIT."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND (RFC 9051 §6.3.12; RFC 3502 MULTIAPPEND)."""

    flags: tuple[str, ...]
    internal_date: datetime | None
    data: bytes
    binary: bool = False         # literal8 (RFC 3516 §4.4): the content may hold NUL


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315 §2.1) when ``uids`` is given."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH; ``returns`` is the ESEARCH RETURN list (RFC 4731:
    MIN MAX ALL COUNT, RFC 5182: SAVE), ``None`` without RETURN (a plain
    ``* SEARCH`` answer in IMAP4rev1; ``()`` means ``ALL`` in ESEARCH form)."""

    key: SearchKey
    uid: bool = False
    charset: str | None = None
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    sequence: SequenceSet
    attrs: tuple[FetchAttr, ...]
    uid: bool = False
    changedsince: int | None = None  # RFC 7162 §3.1.4
    vanished: bool = False           # RFC 7162 §3.2.6 (UID FETCH only)


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE / UID STORE: ``mode`` is ``"+"``, ``"-"`` or ``""`` (replace)."""

    sequence: SequenceSet
    mode: str
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, slots=True)
class Copy(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256 §3), with ESORT returns (RFC 5267) if given."""

    criteria: tuple[SortKey, ...]
    charset: str
    key: SearchKey
    uid: bool = False
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256 §3): algorithm ORDEREDSUBJECT or REFERENCES."""

    algorithm: str
    charset: str
    key: SearchKey
    uid: bool = False


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Id(Command):
    """ID (RFC 2971): the client's fields, ``None`` for NIL."""

    fields: tuple[tuple[str, str | None], ...] | None = None


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """COMPRESS DEFLATE (RFC 4978)."""

    mechanism: str


# ---------------------------------------------------------------- other events


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client line inside AUTHENTICATE: decoded base64, or ``cancelled`` for ``*``."""

    data: bytes = b""
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The ``DONE`` that ends IDLE (RFC 2177 / RFC 9051 §6.3.13)."""


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A command line that could not be parsed or is not allowed now.

    The core has already decided the answer: ``tag`` (``"*"`` when no tag
    could be read) with ``status`` and ``text``; the session sends it
    (``responses.rejection(event)`` builds the response) and the core counts
    every BAD it sends towards the limit of errors.  ``code`` is a response
    code such as ``TOOBIG`` or ``BADCHARSET (US-ASCII UTF-8)``, or ``None``.
    ``status`` is ``BAD``, or ``NO`` for a well-formed command refused before
    it ran (an APPEND literal over APPENDLIMIT: ``NO [TOOBIG]``, RFC 7889; an
    unknown search charset: ``NO [BADCHARSET ...]``, RFC 9051 §6.4.4).
    """

    tag: str
    text: str
    code: str | None = None
    status: str = "BAD"


Event = Union[Command, AuthResponse, IdleDone, BadCommand]

__all__ = [
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and value.__module__ == __name__
] + ["Event"]
