"""The IMAP command parser: one complete command in, one ``Command`` out.

RFC 9051 §9 (IMAP4rev2 formal syntax) with RFC 3501 (IMAP4rev1) and the
extensions the server announces: LITERAL+/LITERAL- (RFC 7888), BINARY
(RFC 3516), ESEARCH (RFC 4731), SEARCHRES (RFC 5182), CONDSTORE/QRESYNC
(RFC 7162), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE
(RFC 6154), MULTIAPPEND (RFC 3502), SORT/THREAD (RFC 5256), ESORT (RFC 5267),
ID (RFC 2971), ENABLE (RFC 5161), COMPRESS (RFC 4978), QUOTA (RFC 9208),
UIDPLUS (RFC 4315), MOVE (RFC 6851), WITHIN (RFC 5032), SAVEDATE (RFC 8514),
SASL-IR (RFC 4959).

The input is a whole command as the connection core framed it: its lines
joined with CRLF, each literal's octets right after its ``{n}`` CRLF (or
given apart, in order), and no final CRLF.  The core has already checked the literal sizes against its
limits, so the parser only reads.

``parse_command(data, utf8=...)`` is a pure function; so is ``parse_head``,
which the core uses on the first line to judge the command against the state
table before it asks for any literal.  Every syntax error is a ``ParseError``
carrying the tag (when one could be read) and a precise text.

The tokens (strings, literals, numbers, sequence sets, dates, mailbox
names with their modified UTF-7 or UTF-8 decoding) are read by
``tokens.Reader``; this module is the grammar of each command.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Callable
from datetime import datetime

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap.tokens import (
    ATOM,
    DIGITS,
    MAX32,
    MAX63,
    TAG,
    ParseError,
    Reader,
)

__all__ = ["COMMANDS", "SEARCH_CHARSETS", "ParseError", "parse_command", "parse_head"]

_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")
_STORE_ITEM = re.compile(rb"([+-]?)([A-Za-z.]+)")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_MAX_DEPTH = 50  # nesting of SEARCH keys (parentheses, NOT, OR)

# RFC 9051 §6.4.4: US-ASCII and UTF-8 must be supported; the others are
# the charsets Python decodes that mail clients actually send.
SEARCH_CHARSETS = {
    "US-ASCII": "ascii", "UTF-8": "utf-8", "ISO-8859-1": "latin-1", "ISO-8859-2": "iso8859-2",
    "ISO-8859-15": "iso8859-15", "WINDOWS-1252": "cp1252", "WINDOWS-1251": "cp1251",
    "WINDOWS-1250": "cp1250", "KOI8-R": "koi8-r", "ISO-2022-JP": "iso2022_jp",
    "SHIFT_JIS": "shift_jis", "EUC-JP": "euc_jp", "EUC-KR": "euc_kr", "GB2312": "gb2312",
    "GBK": "gbk", "GB18030": "gb18030", "BIG5": "big5",
}
_BADCHARSET = "BADCHARSET (US-ASCII UTF-8)"


# ------------------------------------------------------------------ the head


def parse_head(line: bytes) -> tuple[str, str]:
    """The tag and command name of a command's first line, without the rest.

    The name is upper case; UID commands are ``"UID FETCH"`` etc.  Raises
    ``ParseError`` (with the tag once it has been read).
    """
    r = Reader(line, False)
    tag = _tag(r)
    r.sp("tag")
    name = r.word("a command name")
    if name == "UID":
        r.sp("UID")
        name = "UID " + r.word("a command after UID")
    end = r.peek()
    if end not in (-1, 0x20):
        raise ParseError(f"Bad command name {name}" + r.where(), tag)
    return tag, name


def _tag(r: Reader) -> str:
    raw = r.match(TAG)
    if raw is None:
        raise ParseError("Missing or invalid tag" + r.where())
    r.tag = raw.decode("ascii")
    return r.tag


def parse_command(
    data: bytes, *, utf8: bool = False, literals: list[bytes] | None = None
) -> c.Command:
    """Parse one whole command, without its final CRLF.

    Literals are inline (``{3}`` CRLF ``abc`` …) or, with ``literals``, given
    apart: ``data`` then holds the lines joined with CRLF, and each literal
    marker takes the next item of ``literals`` (how the core calls it, so a
    large APPEND is not copied again).
    """
    r = Reader(data, utf8, literals)
    tag = _tag(r)
    key = (data[r.pos:], utf8) if not literals and len(data) <= _MEMO_LINE else None
    if key is not None:
        known = _MEMO.get(key)
        if known is not None:
            return _retag(known, tag)
    r.sp("tag")
    name = r.word("a command name")
    uid = False
    if name == "UID":
        r.sp("UID")
        name = r.word("a command after UID")
        handler = _UID_HANDLERS.get(name)
        if handler is None:
            raise r.error(f"Unknown command UID {name}")
        uid = True
    else:
        handler = _HANDLERS.get(name)
        if handler is None:
            raise r.error(f"Unknown command {name}")
    command = handler(r, tag, uid)
    if not r.at_end():
        raise r.error(f"Unexpected characters after {'UID ' if uid else ''}{name} arguments"
                      + r.where())
    if key is not None and name not in _NOT_MEMOIZED:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = command
    return command


# Commands that clients send again and again (a message list's FETCH of one
# message, NOOP, STATUS of the same mailbox, EXPUNGE) are parsed once per
# process: the parse is a pure function of the text after the tag and of the
# UTF-8 mode, and a command is an immutable value, so the same command with
# the new tag is what parsing again would give.  A FETCH of one message took
# about 35 us to parse, its copy 3.  Not kept: a command with literals (their
# octets are most of it), a long one, and LOGIN and AUTHENTICATE (no password
# stays in memory beyond its command).
_MEMO: dict[tuple[bytes, bool], c.Command] = {}
_MEMO_SIZE = 1024
_MEMO_LINE = 1024
_NOT_MEMOIZED = frozenset({"LOGIN", "AUTHENTICATE"})
_FIELDS: dict[type, tuple[str, ...]] = {}    # a command class's fields after the tag


def _retag(command: c.Command, tag: str) -> c.Command:
    """``command`` with another tag (its other fields are shared: all immutable)."""
    cls = type(command)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name != "tag")
    return cls(tag, *[getattr(command, name) for name in names])


# --------------------------------------------------------------- commands

Handler = Callable[[Reader, str, bool], c.Command]


def _simple(cls: type[c.Command]) -> Handler:
    def parse(r: Reader, tag: str, uid: bool) -> c.Command:
        return cls(tag)

    return parse


def _authenticate(r: Reader, tag: str, uid: bool) -> c.Command:
    r.quiet = True   # errors must not echo credentials
    r.sp("AUTHENTICATE")
    mechanism = r.word("a SASL mechanism name")
    initial: bytes | None = None
    if r.maybe(b" "):
        if r.maybe(b"=") and r.at_end():
            initial = b""
        else:
            raw = r.match(_BASE64) or b""
            if not raw or not r.at_end():
                raise r.error("Bad initial response: expected base64 or '=' (RFC 4959)")
            initial = _b64decode(raw, r)
    return c.Authenticate(tag, mechanism, initial)


def _b64decode(raw: bytes, r: Reader) -> bytes:
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise r.error("Invalid base64") from None


def _login(r: Reader, tag: str, uid: bool) -> c.Command:
    r.quiet = True   # errors must not echo the password
    r.sp("LOGIN")
    user = r.text(r.astring("user name"), "User name")
    r.sp("user name")
    password = r.text(r.astring("password"), "Password")
    return c.Login(tag, user, password)


def _enable(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("ENABLE")
    caps = [r.word("a capability name")]
    while r.maybe(b" "):
        caps.append(r.word("a capability name"))
    return c.Enable(tag, tuple(caps))


def _select(r: Reader, tag: str, uid: bool, readonly: bool = False) -> c.Command:
    verb = "EXAMINE" if readonly else "SELECT"
    r.sp(verb)
    mailbox = r.mailbox()
    condstore = False
    qresync: c.QResyncParams | None = None
    if r.maybe(b" "):
        r.expect(b"(", f"Expected '(' to start {verb} parameters")
        while True:
            param = r.word(f"a {verb} parameter")
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp("QRESYNC")
                qresync = _qresync(r)
            else:
                raise r.error(f"Unknown {verb} parameter {param}")
            if not r.maybe(b" "):
                break
        r.expect(b")", f"Missing ')' after {verb} parameters")
    return c.Select(tag, mailbox, readonly, condstore, qresync)


def _examine(r: Reader, tag: str, uid: bool) -> c.Command:
    return _select(r, tag, uid, readonly=True)


def _qresync(r: Reader) -> c.QResyncParams:
    """RFC 7162 §3.2.5: (uidvalidity mod-sequence-value [known-uids] [seq-match-data])."""
    r.expect(b"(", "Expected '(' after QRESYNC")
    uidvalidity = r.number("UIDVALIDITY", nonzero=True)
    r.sp("UIDVALIDITY")
    modseq = r.number("mod-sequence", nonzero=True, limit=MAX63)
    known: c.SequenceSet | None = None
    match: tuple[c.SequenceSet, c.SequenceSet] | None = None
    if r.maybe(b" "):
        if r.peek() != 0x28:
            known = r.sequence_set("known UID set")
            if r.maybe(b" "):
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(b")", "Missing ')' after QRESYNC parameters")
    return c.QResyncParams(uidvalidity, modseq, known, match)


def _seq_match(r: Reader) -> tuple[c.SequenceSet, c.SequenceSet]:
    r.expect(b"(", "Expected '(' for QRESYNC sequence match data")
    seqs = r.sequence_set("known sequence set")
    r.sp("known sequence set")
    uids = r.sequence_set("known UID set")
    r.expect(b")", "Missing ')' after QRESYNC sequence match data")
    return seqs, uids


def _create(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("CREATE")
    mailbox = r.mailbox()
    use: tuple[str, ...] = ()
    if r.maybe(b" "):
        r.expect(b"(", "Expected '(' to start CREATE parameters")
        while True:
            param = r.word("a CREATE parameter")
            if param != "USE":
                raise r.error(f"Unknown CREATE parameter {param}")
            r.sp("USE")
            use += r.flag_list("USE list")
            if not r.maybe(b" "):
                break
        r.expect(b")", "Missing ')' after CREATE parameters")
    return c.Create(tag, mailbox, use)


def _one_mailbox(cls: type[c.Delete] | type[c.Subscribe] | type[c.Unsubscribe]
                 | type[c.GetQuotaRoot], verb: str) -> Handler:
    def parse(r: Reader, tag: str, uid: bool) -> c.Command:
        r.sp(verb)
        return cls(tag, r.mailbox())

    return parse


def _rename(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("RENAME")
    old = r.mailbox("existing mailbox name")
    r.sp("existing mailbox name")
    return c.Rename(tag, old, r.mailbox("new mailbox name"))


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})


def _list(r: Reader, tag: str, uid: bool) -> c.Command:
    """RFC 5258 §6: LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]."""
    r.sp("LIST")
    selection: list[str] = []
    extended = False
    if r.peek() == 0x28:
        extended = True
        r.pos += 1
        if not r.maybe(b")"):
            while True:
                opt = r.word("a LIST selection option")
                if opt not in _LIST_SELECT:
                    raise r.error(f"Unknown LIST selection option {opt}")
                selection.append(opt)
                if not r.maybe(b" "):
                    break
            r.expect(b")", "Missing ')' after LIST selection options")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            raise r.error("RECURSIVEMATCH needs another selection option (RFC 5258 §3)")
        r.sp("LIST selection options")
    raw_ref = r.astring("reference name")
    reference = "" if not raw_ref else r.mailbox_text(raw_ref, "reference name")
    r.sp("reference name")
    patterns: list[str] = []
    if r.peek() == 0x28:
        extended = True
        r.pos += 1
        patterns.append(r.list_mailbox())
        while r.maybe(b" "):
            patterns.append(r.list_mailbox())
        r.expect(b")", "Missing ')' after LIST patterns")
    else:
        patterns.append(r.list_mailbox())
    returns: list[str] = []
    status_items: tuple[str, ...] = ()
    if r.maybe(b" "):
        extended = True
        if r.word("RETURN") != "RETURN":
            raise r.error("Expected RETURN after LIST patterns")
        r.sp("RETURN")
        r.expect(b"(", "Expected '(' after RETURN")
        if not r.maybe(b")"):
            while True:
                opt = r.word("a LIST return option")
                if opt == "STATUS":
                    r.sp("STATUS")
                    status_items = _status_items(r)
                elif opt not in _LIST_RETURN:
                    raise r.error(f"Unknown LIST return option {opt}")
                returns.append(opt)
                if not r.maybe(b" "):
                    break
            r.expect(b")", "Missing ')' after LIST return options")
    return c.List(tag, reference, tuple(patterns), tuple(selection), tuple(returns),
                  status_items, extended=extended)


def _lsub(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("LSUB")
    raw_ref = r.astring("reference name")
    reference = "" if not raw_ref else r.mailbox_text(raw_ref, "reference name")
    r.sp("reference name")
    return c.List(tag, reference, (r.list_mailbox(),), lsub=True)


_STATUS_ITEMS = frozenset({"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                           "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT"})


def _status_items(r: Reader) -> tuple[str, ...]:
    r.expect(b"(", "Expected '(' to start the STATUS items")
    items: list[str] = []
    while True:
        item = r.word("a STATUS item")
        if item not in _STATUS_ITEMS:
            raise r.error(f"Unknown STATUS item {item}")
        items.append(item)
        if not r.maybe(b" "):
            break
    r.expect(b")", "Missing ')' after STATUS items")
    return tuple(items)


def _status(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("STATUS")
    mailbox = r.mailbox()
    r.sp("mailbox name")
    return c.Status(tag, mailbox, _status_items(r))


def _append(r: Reader, tag: str, uid: bool) -> c.Command:
    """RFC 3502 §6: APPEND mailbox 1*([SP flag-list] [SP date-time] SP (literal / literal8))."""
    r.sp("APPEND")
    mailbox = r.mailbox()
    messages: list[c.AppendMessage] = []
    while True:
        r.sp("mailbox name" if not messages else "message")
        flags: tuple[str, ...] = ()
        when: datetime | None = None
        if r.peek() == 0x28:
            flags = r.flag_list()
            r.sp("APPEND flags")
        if r.peek() == 0x22:
            when = r.date_time()
            r.sp("APPEND date-time")
        utf8 = r.peek() in (0x55, 0x75) and r.peek_word().upper() == "UTF8"
        if utf8:
            # RFC 6855 §4: append-data-ext "UTF8 (" literal8 ")", only once
            # UTF8=ACCEPT is enabled.
            if not r.utf8:
                raise r.error("APPEND UTF8 (...) needs ENABLE UTF8=ACCEPT first (RFC 6855 §4)")
            r.word("UTF8")
            r.sp("UTF8")
            r.expect(b"(", "Expected '(' after APPEND UTF8")
        lit = r.literal(binary_ok=True)
        if lit is None:
            raise r.error("Expected the message as a literal {n} or literal8 ~{n}" + r.where())
        if utf8:
            r.expect(b")", "Expected ')' after the APPEND UTF8 literal")
        messages.append(c.AppendMessage(flags, when, lit[0], lit[1]))
        if r.at_end():
            break
    return c.Append(tag, mailbox, tuple(messages))


def _expunge(r: Reader, tag: str, uid: bool) -> c.Command:
    if not uid:
        return c.Expunge(tag)
    r.sp("UID EXPUNGE")
    return c.Expunge(tag, r.sequence_set("UID set"))


# ----------------------------------------------------------------- SEARCH

_NOARG_KEYS = frozenset({"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT",
                         "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
                         "SAVEDATESUPPORTED"})
_STRING_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
                        "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"})
_ARG_KEYS = _STRING_KEYS | _DATE_KEYS | {"KEYWORD", "UNKEYWORD", "HEADER", "LARGER", "SMALLER",
                                         "YOUNGER", "OLDER", "UID", "NOT", "OR", "MODSEQ"}
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
_ENTRY_TYPES = frozenset({"priv", "shared", "all"})


def _search_key(r: Reader, depth: int = 0) -> c.SearchKey:
    if depth > _MAX_DEPTH:
        raise r.error("SEARCH keys nested too deeply")
    ch = r.peek()
    if ch == 0x28:
        r.pos += 1
        keys = [_search_key(r, depth + 1)]
        while r.maybe(b" "):
            keys.append(_search_key(r, depth + 1))
        r.expect(b")", "Missing ')' in SEARCH keys")
        return keys[0] if len(keys) == 1 else c.SearchKey("AND", tuple(keys))
    if 0x30 <= ch <= 0x39 or ch == 0x2A or ch == 0x24:
        return c.SearchKey("SEQSET", (r.sequence_set(),))
    raw = r.match(ATOM)
    if raw is None:
        raise r.error("Expected a SEARCH key" + r.where())
    op = raw.decode("ascii").upper()
    if op in _NOARG_KEYS:
        return c.SearchKey(op)
    if op not in _ARG_KEYS:
        raise r.error(f"Unknown SEARCH key {op}")
    r.sp(op)
    if op in _STRING_KEYS:
        return c.SearchKey(op, (r.search_string(f"{op} string"),))
    if op in _DATE_KEYS:
        return c.SearchKey(op, (r.date(),))
    if op == "KEYWORD" or op == "UNKEYWORD":
        return c.SearchKey(op, (r.flag("keyword"),))
    if op == "HEADER":
        field = r.astring("header field name").decode("ascii", "replace")
        r.sp("header field name")
        return c.SearchKey(op, (field, r.search_string("HEADER string")))
    if op == "LARGER" or op == "SMALLER":
        return c.SearchKey(op, (r.number(f"{op} size", limit=MAX63),))
    if op == "YOUNGER" or op == "OLDER":
        return c.SearchKey(op, (r.number(f"{op} interval", nonzero=True),))
    if op == "UID":
        return c.SearchKey(op, (r.sequence_set("UID set"),))
    if op == "NOT":
        return c.SearchKey(op, (_search_key(r, depth + 1),))
    if op == "OR":
        first = _search_key(r, depth + 1)
        r.sp("first OR key")
        return c.SearchKey(op, (first, _search_key(r, depth + 1)))
    if op == "MODSEQ":
        entry: str | None = None
        kind: str | None = None
        if r.peek() == 0x22:
            entry = r.quoted("MODSEQ entry name").decode("ascii", "replace")
            r.sp("MODSEQ entry name")
            kind = r.word("MODSEQ entry type").lower()
            if kind not in _ENTRY_TYPES:
                raise r.error(f"Unknown MODSEQ entry type {kind} (priv, shared or all)")
            r.sp("MODSEQ entry type")
        return c.SearchKey(op, (r.number("MODSEQ value", limit=MAX63), entry, kind))
    raise AssertionError(op)  # _ARG_KEYS and the branches above list the same keys


def _search_program(r: Reader, charset_required: bool) -> tuple[str | None, c.SearchKey]:
    charset: str | None = None
    if charset_required:
        charset = r.astring("charset").decode("ascii", "replace").upper()
        r.sp("charset")
    elif r.peek_word() == "CHARSET":
        r.word("CHARSET")
        r.sp("CHARSET")
        charset = r.astring("charset").decode("ascii", "replace").upper()
        r.sp("charset")
    if charset is not None:
        codec = SEARCH_CHARSETS.get(charset)
        if codec is None:
            raise ParseError(f"Unsupported charset {charset}", r.tag, status="NO",
                             code=_BADCHARSET)
        r.charset = codec
    keys = [_search_key(r)]
    while r.maybe(b" "):
        keys.append(_search_key(r))
    key = keys[0] if len(keys) == 1 else c.SearchKey("AND", tuple(keys))
    return charset, key


def _return_opts(r: Reader, verb: str) -> tuple[str, ...] | None:
    """RFC 4731 §3.1 / RFC 5267: RETURN (opt ...), or None when absent."""
    if r.peek_word() != "RETURN":
        return None
    r.word("RETURN")
    r.sp("RETURN")
    r.expect(b"(", "Expected '(' after RETURN")
    opts: list[str] = []
    if not r.maybe(b")"):
        while True:
            opt = r.word(f"a {verb} return option")
            if opt not in _SEARCH_RETURN:
                raise r.error(f"Unknown {verb} return option {opt}")
            opts.append(opt)
            if not r.maybe(b" "):
                break
        r.expect(b")", f"Missing ')' after {verb} return options")
    r.sp("return options")
    return tuple(opts)


def _search(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("SEARCH")
    returns = _return_opts(r, "SEARCH")
    charset, key = _search_program(r, charset_required=False)
    return c.Search(tag, key, uid, charset, returns)


_SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM",
                        "DISPLAYTO"})


def _sort(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("SORT")
    returns = _return_opts(r, "SORT")
    r.expect(b"(", "Expected '(' to start the SORT criteria")
    criteria: list[c.SortKey] = []
    while True:
        name = r.word("a SORT key")
        reverse = name == "REVERSE"
        if reverse:
            r.sp("REVERSE")
            name = r.word("a SORT key")
        if name not in _SORT_KEYS:
            raise r.error(f"Unknown SORT key {name}")
        criteria.append(c.SortKey(name, reverse))
        if not r.maybe(b" "):
            break
    r.expect(b")", "Missing ')' after SORT criteria")
    r.sp("SORT criteria")
    charset, key = _search_program(r, charset_required=True)
    assert charset is not None
    return c.Sort(tag, tuple(criteria), charset, key, uid, returns)


def _thread(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("THREAD")
    algorithm = r.word("a THREAD algorithm")
    r.sp("THREAD algorithm")
    charset, key = _search_program(r, charset_required=True)
    assert charset is not None
    return c.Thread(tag, algorithm, charset, key, uid)


# ------------------------------------------------------------------ FETCH

_FETCH_SIMPLE = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                           "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ",
                           "SAVEDATE"})
_FETCH_SECTIONED = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _fetch_att(r: Reader) -> c.FetchAttr:
    raw = r.match(_FETCH_NAME)
    if raw is None:
        raise r.error("Expected a FETCH item" + r.where())
    name = raw.decode("ascii").upper()
    if r.peek() != 0x5B:  # "["
        if name in _FETCH_SIMPLE:
            return c.FetchAttr(name)
        if name in _FETCH_SECTIONED:
            raise r.error(f"{name} needs a section [...]")
        raise r.error(f"Unknown FETCH item {name}")
    if name not in _FETCH_SECTIONED:
        raise r.error(f"Unknown FETCH item {name}[")
    r.pos += 1
    binary = name.startswith("BINARY")
    section = _section(r, binary)
    r.expect(b"]", f"Missing ']' after {name} section")
    partial: tuple[int, int] | None = None
    if r.peek() == 0x3C:  # "<"
        if name == "BINARY.SIZE":
            raise r.error("BINARY.SIZE takes no partial <o.n>")
        r.pos += 1
        offset = r.number("partial offset", limit=MAX63)
        r.expect(b".", "Expected '.' in partial <offset.count>")
        count = r.number("partial count", nonzero=True, limit=MAX63)
        r.expect(b">", "Missing '>' after partial")
        partial = (offset, count)
    if name == "BINARY.SIZE":
        return c.FetchAttr("BINARY.SIZE", section)
    base = "BINARY" if binary else "BODY"
    return c.FetchAttr(base, section, name.endswith(".PEEK"), partial)


def _section(r: Reader, binary: bool) -> c.Section:
    """RFC 9051 §9 section-spec (BODY) or section-binary (BINARY), after "["."""
    part: list[int] = []
    while True:
        digits = r.match(DIGITS)
        if digits is None:
            break
        if len(digits) > 10 or int(digits) == 0 or int(digits) > MAX32:
            raise r.error(f"Bad section part number {digits.decode()}")
        part.append(int(digits))
        if r.peek() == 0x2E and r.buf[r.pos + 1 : r.pos + 2].isdigit():
            r.pos += 1
            continue
        break
    if binary or r.peek() == 0x5D:
        return c.Section(tuple(part))
    if part:
        r.expect(b".", "Expected '.' or ']' after section part")
    raw = r.match(_SECTION_TEXT)
    text = raw.decode("ascii").upper() if raw else ""
    if text == "MIME" and not part:
        raise r.error("MIME needs a section part (RFC 9051 §6.4.5)")
    if text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise r.error(f"Bad section text {text or r.where()}")
    fields: list[str] = []
    if text.startswith("HEADER.FIELDS"):
        r.sp(text)
        r.expect(b"(", f"Expected '(' to start the {text} list")
        while True:
            raw_field = r.astring("header field name")
            try:
                fields.append(raw_field.decode("ascii"))
            except UnicodeDecodeError:
                raise r.error("Header field names are ASCII") from None
            if not r.maybe(b" "):
                break
        r.expect(b")", f"Missing ')' after {text} list")
    return c.Section(tuple(part), text, tuple(fields))


def _fetch(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("FETCH")
    sequence = r.sequence_set()
    r.sp("sequence set")
    attrs: list[c.FetchAttr] = []
    if r.maybe(b"("):
        attrs.append(_fetch_att(r))
        while r.maybe(b" "):
            attrs.append(_fetch_att(r))
        r.expect(b")", "Missing ')' after FETCH items")
    else:
        macro = _MACROS.get(r.peek_word())
        if macro is not None:
            r.word("FETCH macro")
            attrs = [c.FetchAttr(n) for n in macro]
        else:
            attrs.append(_fetch_att(r))
    changedsince: int | None = None
    vanished = False
    if r.maybe(b" "):
        r.expect(b"(", "Expected '(' to start FETCH modifiers")
        while True:
            mod = r.word("a FETCH modifier")
            if mod == "CHANGEDSINCE":
                r.sp("CHANGEDSINCE")
                changedsince = r.number("CHANGEDSINCE mod-sequence", nonzero=True, limit=MAX63)
            elif mod == "VANISHED":
                vanished = True
            else:
                raise r.error(f"Unknown FETCH modifier {mod}")
            if not r.maybe(b" "):
                break
        r.expect(b")", "Missing ')' after FETCH modifiers")
    if vanished and not uid:
        raise r.error("VANISHED is only allowed with UID FETCH (RFC 7162 §3.2.6)")
    if vanished and changedsince is None:
        raise r.error("VANISHED needs CHANGEDSINCE (RFC 7162 §3.2.6)")
    return c.Fetch(tag, sequence, tuple(attrs), uid, changedsince, vanished)


def _store(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("STORE")
    sequence = r.sequence_set()
    r.sp("sequence set")
    unchangedsince: int | None = None
    if r.maybe(b"("):
        while True:
            mod = r.word("a STORE modifier")
            if mod != "UNCHANGEDSINCE":
                raise r.error(f"Unknown STORE modifier {mod}")
            r.sp("UNCHANGEDSINCE")
            unchangedsince = r.number("UNCHANGEDSINCE mod-sequence", limit=MAX63)
            if not r.maybe(b" "):
                break
        r.expect(b")", "Missing ')' after STORE modifiers")
        r.sp("STORE modifiers")
    m = _STORE_ITEM.match(r.buf, r.pos)
    item = m[2].decode("ascii").upper() if m else ""
    if m is None or item not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error("Expected FLAGS, +FLAGS or -FLAGS (optionally .SILENT)" + r.where())
    r.pos = m.end()
    mode = m[1].decode("ascii")
    r.sp(m[0].decode("ascii"))
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        flag_words = [r.flag()]
        while r.maybe(b" "):
            flag_words.append(r.flag())
        flags = tuple(flag_words)
    return c.Store(tag, sequence, mode, flags, item.endswith(".SILENT"), uid, unchangedsince)


def _copy_move(cls: type[c.Copy] | type[c.Move], verb: str) -> Handler:
    def parse(r: Reader, tag: str, uid: bool) -> c.Command:
        r.sp(verb)
        sequence = r.sequence_set()
        r.sp("sequence set")
        return cls(tag, sequence, r.mailbox(), uid)

    return parse


# ----------------------------------------------------------------- others


def _getquota(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("GETQUOTA")
    return c.GetQuota(tag, r.text(r.astring("quota root"), "Quota root"))


def _setquota(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("SETQUOTA")
    root = r.text(r.astring("quota root"), "Quota root")
    r.sp("quota root")
    r.expect(b"(", "Expected '(' to start the quota limits")
    limits: list[tuple[str, int]] = []
    if not r.maybe(b")"):
        while True:
            resource = r.word("a quota resource name")
            r.sp(resource)
            limits.append((resource, r.number(f"{resource} limit", limit=MAX63)))
            if not r.maybe(b" "):
                break
        r.expect(b")", "Missing ')' after quota limits")
    return c.SetQuota(tag, root, tuple(limits))


def _id(r: Reader, tag: str, uid: bool) -> c.Command:
    """RFC 2971 §4: ID ("(" *(string SP nstring) ")" / NIL)."""
    r.sp("ID")
    if r.peek_word() == "NIL":
        r.word("NIL")
        return c.Id(tag, None)
    r.expect(b"(", "Expected '(' or NIL after ID")
    fields: list[tuple[str, str | None]] = []
    if not r.maybe(b")"):
        while True:
            key = r.string("ID field name").decode("utf-8", "replace")
            r.sp("ID field name")
            value = r.nstring("ID field value")
            fields.append((key, None if value is None else value.decode("utf-8", "replace")))
            if not r.maybe(b" "):
                break
        r.expect(b")", "Missing ')' after ID fields")
    return c.Id(tag, tuple(fields))


def _compress(r: Reader, tag: str, uid: bool) -> c.Command:
    r.sp("COMPRESS")
    return c.Compress(tag, r.word("a compression mechanism"))


_HANDLERS: dict[str, Handler] = {
    "CAPABILITY": _simple(c.Capability),
    "NOOP": _simple(c.Noop),
    "CHECK": _simple(c.Check),
    "LOGOUT": _simple(c.Logout),
    "STARTTLS": _simple(c.StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _examine,
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete, "DELETE"),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe, "SUBSCRIBE"),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe, "UNSUBSCRIBE"),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _simple(c.Namespace),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _simple(c.Idle),
    "CLOSE": _simple(c.Close),
    "UNSELECT": _simple(c.Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_move(c.Copy, "COPY"),
    "MOVE": _copy_move(c.Move, "MOVE"),
    "SORT": _sort,
    "THREAD": _thread,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(c.GetQuotaRoot, "GETQUOTAROOT"),
    "SETQUOTA": _setquota,
    "ID": _id,
    "COMPRESS": _compress,
}

_UID_HANDLERS: dict[str, Handler] = {
    name: _HANDLERS[name]
    for name in ("COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD")
}

# Every command name the parser knows, UID commands as "UID FETCH" etc.
COMMANDS = frozenset(_HANDLERS) | frozenset("UID " + n for n in _UID_HANDLERS)
