"""IMAP server responses: typed values that render themselves (RFC 9051 §7).

Three kinds (RFC 9051 §2.2.2): a ``Tagged`` completion (OK, NO, BAD), an
untagged response (``Untagged`` status responses OK/NO/BAD/BYE/PREAUTH, and
the data responses below), and a ``Continuation`` request.  Each has
``render(utf8=False) -> bytes``; ``utf8`` is whether UTF-8 is in force on the
connection (IMAP4rev2 or UTF8=ACCEPT enabled, RFC 9051 §5.1 / RFC 6855), which
decides how mailbox names are written: modified UTF-7 (RFC 3501 §5.1.3) or
UTF-8.  The connection core calls ``render`` with its own flag.

Response codes (RFC 9051 §7.1, RFC 5530, RFC 4315, RFC 7162 …) are typed
too: the simple ones are ``Code`` constants (``ALERT``, ``READ_ONLY``,
``TRYCREATE`` …), the ones with arguments have a class each (``UidNext(4392)``,
``CopyUid(38505, [304, 319, 320], [3956, 3957, 3958])``).

FETCH items are rendered by ``pillarbox.access.fetch``; ``FetchData`` takes
them as bytes.  Quoting follows ``pillarbox.mime.imap.nstring`` (Dovecot's
rule): a quoted string unless the octets need a literal.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from pillarbox.mime.imap import nstring
from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap.mutf7 import encode as mutf7_encode

__all__ = [
    "Response", "Tagged", "Untagged", "Continuation", "ResponseCode", "Code",
    "CapabilityCode", "PermanentFlags", "UidNext", "UidValidity", "Unseen", "HighestModseq",
    "Modified", "AppendUid", "CopyUid", "BadCharset",
    "CapabilityData", "EnabledData", "FlagsData", "ListData", "StatusData", "SearchData",
    "ESearchData", "Exists", "Recent", "Expunged", "Vanished", "FetchData", "NamespaceData",
    "IdData", "QuotaData", "QuotaRootData", "SortData", "ThreadData",
    "rejection", "quoted", "string", "astring", "mailbox_name", "flag_list", "sequence_set",
    "render_sequence_set",
    "ALERT", "READ_ONLY", "READ_WRITE", "TRYCREATE", "NOMODSEQ", "UIDNOTSTICKY", "CLOSED",
    "TOOBIG", "OVERQUOTA", "LIMIT", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED",
    "UNAVAILABLE", "NONEXISTENT", "ALREADYEXISTS", "CANNOT", "INUSE", "NOPERM", "SERVERBUG",
    "CLIENTBUG", "PRIVACYREQUIRED", "CONTACTADMIN", "EXPUNGEISSUED", "CORRUPTION", "EXPIRED",
    "HASCHILDREN", "NOTSAVED", "UNKNOWN_CTE", "PARSE",
]

# ------------------------------------------------------------------ strings

# ASTRING-CHAR (RFC 9051 §9): an atom char or "]".
_ASTRING_CHARS = frozenset(
    b for b in range(0x21, 0x7F) if b not in b'(){ %*"\\'
)


def quoted(value: bytes) -> bytes:
    """A quoted string, escaping ``"`` and ``\\`` (the caller checked the octets)."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: bytes, *, utf8: bool = False) -> bytes:
    """A quoted string, or a literal when quoting cannot carry the octets.

    With ``utf8``, valid UTF-8 may be quoted (RFC 9051 §9 QUOTED-CHAR /
    RFC 6855 §3); otherwise 8-bit octets need a literal.
    """
    if utf8 and not value.isascii() and b"\r" not in value and b"\n" not in value \
            and b"\x00" not in value:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return nstring(value)
        return quoted(value)
    return nstring(value)


def astring(value: bytes, *, utf8: bool = False) -> bytes:
    """An atom when the octets allow it (and it is not ``NIL``), else ``string``."""
    if value and all(b in _ASTRING_CHARS for b in value) and value.upper() != b"NIL":
        return value
    return string(value, utf8=utf8)


def mailbox_name(name: str, utf8: bool = False) -> bytes:
    """A mailbox name as an astring: UTF-8 when ``utf8``, else modified UTF-7."""
    raw = name.encode("utf-8") if utf8 else mutf7_encode(name).encode("ascii")
    return astring(raw, utf8=utf8)


def flag_list(flags: Iterable[str]) -> bytes:
    return ("(" + " ".join(flags) + ")").encode("ascii", "replace")


def sequence_set(numbers: Iterable[int]) -> str:
    """Numbers in a compact sequence set, runs of consecutive numbers as
    ``a:b``, in the order given (COPYUID pairs sets by order, RFC 4315 §3)."""
    out: list[str] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def render_sequence_set(seq: c.SequenceSet) -> str:
    """A ``SequenceSet`` as the client would write it (``*`` for None, ``$``)."""
    if seq.saved:
        return "$"

    def num(n: int | None) -> str:
        return "*" if n is None else str(n)

    return ",".join(num(a) if a == b else f"{num(a)}:{num(b)}" for a, b in seq.ranges)


def _text(text: str) -> bytes:
    """resp-text: one line, no CR or LF (RFC 9051 §9 TEXT-CHAR)."""
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text.encode("utf-8")


def _numbers(numbers: Iterable[int]) -> bytes:
    return " ".join(map(str, numbers)).encode("ascii")


# ------------------------------------------------------------- response codes


class ResponseCode:
    """A response code (RFC 9051 §7.1): renders as ``[NAME args]``."""

    __slots__ = ()

    def render(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Code(ResponseCode):
    """A response code without typed arguments: ``Code("ALERT")``, or with
    the argument text already written: ``Code("BADCHARSET", "(UTF-8)")``."""

    name: str
    args: str = ""

    def render(self) -> bytes:
        inner = f"{self.name} {self.args}" if self.args else self.name
        return b"[" + _text(inner) + b"]"

    @classmethod
    def parse(cls, text: str) -> Code:
        """``"TOOBIG"`` or ``"BADCHARSET (US-ASCII UTF-8)"`` as a ``Code``."""
        name, _, args = text.partition(" ")
        return cls(name, args)


ALERT = Code("ALERT")
READ_ONLY = Code("READ-ONLY")
READ_WRITE = Code("READ-WRITE")
TRYCREATE = Code("TRYCREATE")
NOMODSEQ = Code("NOMODSEQ")             # RFC 7162 §3.1.2.2
UIDNOTSTICKY = Code("UIDNOTSTICKY")     # RFC 4315 §3
CLOSED = Code("CLOSED")                 # RFC 7162 §3.2.11
PARSE = Code("PARSE")
# RFC 5530 §3
TOOBIG = Code("TOOBIG")
OVERQUOTA = Code("OVERQUOTA")
LIMIT = Code("LIMIT")
AUTHENTICATIONFAILED = Code("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED = Code("AUTHORIZATIONFAILED")
UNAVAILABLE = Code("UNAVAILABLE")
NONEXISTENT = Code("NONEXISTENT")
ALREADYEXISTS = Code("ALREADYEXISTS")
CANNOT = Code("CANNOT")
INUSE = Code("INUSE")
NOPERM = Code("NOPERM")
SERVERBUG = Code("SERVERBUG")
CLIENTBUG = Code("CLIENTBUG")
PRIVACYREQUIRED = Code("PRIVACYREQUIRED")
CONTACTADMIN = Code("CONTACTADMIN")
EXPUNGEISSUED = Code("EXPUNGEISSUED")
CORRUPTION = Code("CORRUPTION")
EXPIRED = Code("EXPIRED")
# RFC 9051 §7.1
HASCHILDREN = Code("HASCHILDREN")
NOTSAVED = Code("NOTSAVED")             # RFC 5182 / RFC 9051 §7.1
UNKNOWN_CTE = Code("UNKNOWN-CTE")       # RFC 3516 §4.3


@dataclass(frozen=True, slots=True)
class CapabilityCode(ResponseCode):
    capabilities: tuple[str, ...]

    def render(self) -> bytes:
        return b"[CAPABILITY " + " ".join(self.capabilities).encode("ascii") + b"]"


@dataclass(frozen=True, slots=True)
class PermanentFlags(ResponseCode):
    """``[PERMANENTFLAGS (\\Seen \\*)]``: put ``\\*`` in ``flags`` when new keywords may be made."""

    flags: tuple[str, ...]

    def render(self) -> bytes:
        return b"[PERMANENTFLAGS " + flag_list(self.flags) + b"]"


@dataclass(frozen=True, slots=True)
class _Number(ResponseCode):
    NAME: ClassVar[bytes] = b""
    value: int

    def render(self) -> bytes:
        return b"[%s %d]" % (self.NAME, self.value)


class UidNext(_Number):
    NAME = b"UIDNEXT"
    __slots__ = ()


class UidValidity(_Number):
    NAME = b"UIDVALIDITY"
    __slots__ = ()


class Unseen(_Number):
    """IMAP4rev1 only (RFC 3501 §7.1): the first unseen message's number."""

    NAME = b"UNSEEN"
    __slots__ = ()


class HighestModseq(_Number):
    NAME = b"HIGHESTMODSEQ"   # RFC 7162 §3.1.2.1
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Modified(ResponseCode):
    """RFC 7162 §3.1.3: the messages that UNCHANGEDSINCE kept from changing."""

    numbers: tuple[int, ...]

    def render(self) -> bytes:
        return b"[MODIFIED " + sequence_set(sorted(self.numbers)).encode("ascii") + b"]"


@dataclass(frozen=True, slots=True)
class AppendUid(ResponseCode):
    """RFC 4315 §3: ``[APPENDUID uidvalidity uid-set]`` (several for MULTIAPPEND)."""

    uidvalidity: int
    uids: tuple[int, ...]

    def render(self) -> bytes:
        return b"[APPENDUID %d %s]" % (self.uidvalidity, sequence_set(self.uids).encode())


@dataclass(frozen=True, slots=True)
class CopyUid(ResponseCode):
    """RFC 4315 §3: source and destination UIDs, paired by their order."""

    uidvalidity: int
    source: tuple[int, ...]
    destination: tuple[int, ...]

    def render(self) -> bytes:
        return b"[COPYUID %d %s %s]" % (
            self.uidvalidity, sequence_set(self.source).encode(),
            sequence_set(self.destination).encode(),
        )


@dataclass(frozen=True, slots=True)
class BadCharset(ResponseCode):
    """RFC 9051 §7.1: ``[BADCHARSET (UTF-8 US-ASCII)]``."""

    charsets: tuple[str, ...] = ()

    def render(self) -> bytes:
        if not self.charsets:
            return b"[BADCHARSET]"
        return b"[BADCHARSET (" + " ".join(self.charsets).encode("ascii") + b")]"


# ---------------------------------------------------------------- responses


class Response:
    """Anything the server sends; ``render(utf8)`` gives its bytes, CRLF included."""

    __slots__ = ()

    def render(self, utf8: bool = False) -> bytes:
        raise NotImplementedError


def _status_line(prefix: bytes, status: str, text: str, code: ResponseCode | None) -> bytes:
    out = [prefix, b" ", status.encode("ascii")]
    if code is not None:
        out += [b" ", code.render()]
    if text:
        out += [b" ", _text(text)]
    out.append(b"\r\n")
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Tagged(Response):
    """``tag OK|NO|BAD [code] text`` (RFC 9051 §7.1): completes a command."""

    tag: str
    status: str
    text: str
    code: ResponseCode | None = None

    def render(self, utf8: bool = False) -> bytes:
        return _status_line(self.tag.encode("ascii", "replace"), self.status, self.text,
                            self.code)


@dataclass(frozen=True, slots=True)
class Untagged(Response):
    """``* OK|NO|BAD|BYE|PREAUTH [code] text`` (RFC 9051 §7.1)."""

    status: str
    text: str
    code: ResponseCode | None = None

    def render(self, utf8: bool = False) -> bytes:
        return _status_line(b"*", self.status, self.text, self.code)


@dataclass(frozen=True, slots=True)
class Continuation(Response):
    """``+ text`` or, with ``data``, ``+ base64`` (a SASL challenge, RFC 9051 §7.6)."""

    text: str = ""
    data: bytes | None = None

    def render(self, utf8: bool = False) -> bytes:
        if self.data is not None:
            return b"+ " + base64.b64encode(self.data) + b"\r\n"
        return b"+ " + _text(self.text) + b"\r\n"


def rejection(event: c.BadCommand) -> Tagged:
    """The response the core decided for a ``BadCommand`` (``*`` tag: untagged)."""
    code = Code.parse(event.code) if event.code else None
    return Tagged(event.tag, event.status, event.text, code)


# ------------------------------------------------------------- data responses


@dataclass(frozen=True, slots=True)
class CapabilityData(Response):
    capabilities: tuple[str, ...]

    def render(self, utf8: bool = False) -> bytes:
        return b"* CAPABILITY " + " ".join(self.capabilities).encode("ascii") + b"\r\n"


@dataclass(frozen=True, slots=True)
class EnabledData(Response):
    """RFC 5161 §3.2: what ENABLE turned on (``IMAP4REV2`` or ``UTF8=ACCEPT`` turns
    on UTF-8 mailbox names; the core watches for it)."""

    capabilities: tuple[str, ...]

    def render(self, utf8: bool = False) -> bytes:
        return b"".join([b"* ENABLED", *(b" " + x.encode("ascii") for x in self.capabilities),
                         b"\r\n"])


@dataclass(frozen=True, slots=True)
class FlagsData(Response):
    flags: tuple[str, ...]

    def render(self, utf8: bool = False) -> bytes:
        return b"* FLAGS " + flag_list(self.flags) + b"\r\n"


@dataclass(frozen=True, slots=True)
class ListData(Response):
    """``* LIST (attributes) "delimiter" name [extended items]`` (RFC 9051 §7.3.1,
    RFC 5258 §6 CHILDINFO, RFC 9051 OLDNAME); ``lsub`` gives ``* LSUB``."""

    name: str
    delimiter: str | None = "/"
    attributes: tuple[str, ...] = ()
    childinfo: tuple[str, ...] = ()
    oldname: str | None = None
    lsub: bool = False

    def render(self, utf8: bool = False) -> bytes:
        verb = b"* LSUB " if self.lsub else b"* LIST "
        delim = b"NIL" if self.delimiter is None else quoted(self.delimiter.encode("utf-8"))
        out = [verb, flag_list(self.attributes), b" ", delim, b" ",
               mailbox_name(self.name, utf8)]
        extended: list[bytes] = []
        if self.childinfo:
            extended.append(b'"CHILDINFO" (' + b" ".join(
                quoted(x.encode("ascii")) for x in self.childinfo) + b")")
        if self.oldname is not None:
            extended.append(b'"OLDNAME" (' + mailbox_name(self.oldname, utf8) + b")")
        if extended:
            out += [b" (", b" ".join(extended), b")"]
        out.append(b"\r\n")
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class StatusData(Response):
    """``* STATUS name (MESSAGES 3 UIDNEXT 7)`` (RFC 9051 §7.3.4)."""

    mailbox: str
    items: tuple[tuple[str, int], ...]

    def render(self, utf8: bool = False) -> bytes:
        inner = " ".join(f"{k} {v}" for k, v in self.items).encode("ascii")
        return b"* STATUS " + mailbox_name(self.mailbox, utf8) + b" (" + inner + b")\r\n"


@dataclass(frozen=True, slots=True)
class SearchData(Response):
    """IMAP4rev1 ``* SEARCH 2 3 6`` [``(MODSEQ n)``, RFC 7162 §3.1.5]."""

    numbers: tuple[int, ...]
    modseq: int | None = None

    def render(self, utf8: bool = False) -> bytes:
        out = b"* SEARCH"
        if self.numbers:
            out += b" " + _numbers(self.numbers)
        if self.modseq is not None and self.numbers:
            out += b" (MODSEQ %d)" % self.modseq
        return out + b"\r\n"


ESearchValue = int | tuple[int, ...] | str


@dataclass(frozen=True, slots=True)
class ESearchData(Response):
    """``* ESEARCH (TAG "a1") UID MIN 2 COUNT 3 ALL 2:4`` (RFC 4731 §3.1, RFC 9051 §7.3.4).

    ``items`` in order: ints render as numbers, a tuple of numbers as a
    compact sequence set (ascending), a ``str`` as written.
    """

    tag: str | None
    items: tuple[tuple[str, ESearchValue], ...] = ()
    uid: bool = False

    def render(self, utf8: bool = False) -> bytes:
        out = [b"* ESEARCH"]
        if self.tag is not None:
            out.append(b" (TAG " + quoted(self.tag.encode("ascii", "replace")) + b")")
        if self.uid:
            out.append(b" UID")
        for name, value in self.items:
            if isinstance(value, int):
                text = str(value)
            elif isinstance(value, str):
                text = value
            else:
                text = sequence_set(sorted(value))
            out.append(f" {name} {text}".encode("ascii"))
        out.append(b"\r\n")
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class Exists(Response):
    count: int

    def render(self, utf8: bool = False) -> bytes:
        return b"* %d EXISTS\r\n" % self.count


@dataclass(frozen=True, slots=True)
class Recent(Response):
    """IMAP4rev1 only (RFC 3501 §7.3.2)."""

    count: int

    def render(self, utf8: bool = False) -> bytes:
        return b"* %d RECENT\r\n" % self.count


@dataclass(frozen=True, slots=True)
class Expunged(Response):
    """``* n EXPUNGE``: message number ``n`` is gone (RFC 9051 §7.5.1)."""

    number: int

    def render(self, utf8: bool = False) -> bytes:
        return b"* %d EXPUNGE\r\n" % self.number


@dataclass(frozen=True, slots=True)
class Vanished(Response):
    """``* VANISHED [(EARLIER)] uids`` (RFC 7162 §3.2.10)."""

    uids: tuple[int, ...]
    earlier: bool = False

    def render(self, utf8: bool = False) -> bytes:
        head = b"* VANISHED (EARLIER) " if self.earlier else b"* VANISHED "
        return head + sequence_set(sorted(self.uids)).encode("ascii") + b"\r\n"


@dataclass(frozen=True, slots=True)
class FetchData(Response):
    """``* n FETCH (items)``; the items come rendered (``access.fetch``), as one
    ``bytes`` or a sequence joined with SP."""

    number: int
    items: bytes | tuple[bytes, ...] | list[bytes]

    def render(self, utf8: bool = False) -> bytes:
        body = self.items if isinstance(self.items, bytes) else b" ".join(self.items)
        return b"* %d FETCH (%s)\r\n" % (self.number, body)


Namespaces = tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class NamespaceData(Response):
    """``* NAMESPACE (("" "/")) NIL NIL`` (RFC 9051 §7.3.5): personal, other users',
    shared; each ``None`` or ``(prefix, delimiter)`` pairs."""

    personal: Namespaces = (("", "/"),)
    other: Namespaces = None
    shared: Namespaces = None

    def render(self, utf8: bool = False) -> bytes:
        def one(ns: Namespaces) -> bytes:
            if not ns:
                return b"NIL"
            parts = []
            for prefix, delim in ns:
                d = b"NIL" if delim is None else quoted(delim.encode("utf-8"))
                name = prefix.encode("utf-8") if utf8 else mutf7_encode(prefix).encode("ascii")
                parts.append(b"(" + string(name, utf8=utf8) + b" " + d + b")")
            return b"(" + b"".join(parts) + b")"

        return b"* NAMESPACE %s %s %s\r\n" % (one(self.personal), one(self.other),
                                                one(self.shared))


@dataclass(frozen=True, slots=True)
class IdData(Response):
    """RFC 2971 §3.2: ``* ID ("name" "Pillarbox")`` or ``* ID NIL``."""

    fields: tuple[tuple[str, str | None], ...] | None = None

    def render(self, utf8: bool = False) -> bytes:
        if not self.fields:
            return b"* ID NIL\r\n"
        parts = []
        for k, v in self.fields:
            parts.append(string(k.encode("utf-8")) + b" "
                         + (b"NIL" if v is None else string(v.encode("utf-8"))))
        return b"* ID (" + b" ".join(parts) + b")\r\n"


@dataclass(frozen=True, slots=True)
class QuotaData(Response):
    """RFC 9208 §5.1: ``* QUOTA "" (STORAGE 10 512)``: resource, usage, limit."""

    root: str
    resources: tuple[tuple[str, int, int], ...]

    def render(self, utf8: bool = False) -> bytes:
        inner = " ".join(f"{n} {u} {lim}" for n, u, lim in self.resources).encode("ascii")
        return b"* QUOTA " + astring(self.root.encode("utf-8"), utf8=utf8) + b" (" + inner \
            + b")\r\n"


@dataclass(frozen=True, slots=True)
class QuotaRootData(Response):
    """RFC 9208 §5.2: ``* QUOTAROOT INBOX ""``."""

    mailbox: str
    roots: tuple[str, ...] = ()

    def render(self, utf8: bool = False) -> bytes:
        out = [b"* QUOTAROOT ", mailbox_name(self.mailbox, utf8)]
        out += [b" " + astring(r.encode("utf-8"), utf8=utf8) for r in self.roots]
        out.append(b"\r\n")
        return b"".join(out)


@dataclass(frozen=True, slots=True)
class SortData(Response):
    """RFC 5256 §4: ``* SORT 2 3 6`` [``(MODSEQ n)``, RFC 7162 §3.1.5]."""

    numbers: tuple[int, ...]
    modseq: int | None = None

    def render(self, utf8: bool = False) -> bytes:
        out = b"* SORT"
        if self.numbers:
            out += b" " + _numbers(self.numbers)
        if self.modseq is not None and self.numbers:
            out += b" (MODSEQ %d)" % self.modseq
        return out + b"\r\n"


Thread = tuple["int | Thread", ...]


def _thread(thread: Thread) -> bytes:
    """RFC 5256 §4 thread-list: numbers in a row, then the nested branches."""
    numbers = [str(x).encode("ascii") for x in thread if isinstance(x, int)]
    nested = [_thread(x) for x in thread if not isinstance(x, int)]
    return b"(" + b" ".join(numbers) + (b" " if numbers and nested else b"") \
        + b"".join(nested) + b")"


@dataclass(frozen=True, slots=True)
class ThreadData(Response):
    """RFC 5256 §4: ``* THREAD (2)(3 6 (4 23)(44 7 96))``.

    Each thread is a tuple: the message numbers of a chain, then (as nested
    tuples) the branches, e.g. ``(3, 6, (4, 23), (44, 7, 96))``.
    """

    threads: tuple[Thread, ...] = ()

    def render(self, utf8: bool = False) -> bytes:
        if not self.threads:
            return b"* THREAD\r\n"
        return b"* THREAD " + b"".join(_thread(t) for t in self.threads) + b"\r\n"
