"""The IMAP tokenizer: a position in one command and the tokens of RFC 9051 §9.

``Reader`` reads atoms, astrings (atom, quoted string or literal), literals
and literal8 (RFC 7888, RFC 3516), numbers, sequence sets (with ``$`` of
RFC 5182), flags, dates and mailbox names from a command that the connection
core has framed whole.  Each token is one compiled pattern matched at the
position, so a command costs a few matches, not a pass per character.  Every
error is a ``ParseError`` (the client's fault) with the tag once it is known.

Mailbox names (RFC 9051 §5.1): ``INBOX`` in any case is ``"INBOX"``; other
names are modified UTF-7 decoded to ``str`` (RFC 3501 §5.1.3) unless UTF-8 is
in force (IMAP4rev2 or UTF8=ACCEPT enabled, RFC 6855), then UTF-8.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap.mutf7 import MUTF7Error
from pillarbox.protocols.imap.mutf7 import decode as mutf7_decode

__all__ = ["ATOM", "DIGITS", "MAX32", "MAX63", "MONTHS", "TAG", "ParseError", "Reader"]


class ParseError(Exception):
    """A command the client got wrong: answered ``tag status [code] text``.

    ``status`` is ``BAD`` for syntax errors; a few well-formed commands the
    parser still cannot accept are ``NO`` with a response code (an unknown
    search charset: ``NO [BADCHARSET (...)]``, RFC 9051 §6.4.4).
    """

    def __init__(
        self, text: str, tag: str | None = None, *, status: str = "BAD", code: str | None = None
    ) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.status = status
        self.code = code


# ------------------------------------------------------------------ tokens

# RFC 9051 §9: ATOM-CHAR is any CHAR (0x01-0x7F) except atom-specials:
# "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".  ASTRING-CHAR adds "]"; a tag is
# an ASTRING-CHAR run without "+"; list-char adds the wildcards "%" "*".
# Astrings and patterns also take 8-bit octets: UTF-8 atoms are common from
# UTF-8 clients (RFC 6855 only asks for quoted strings), and without UTF-8
# the mailbox decoding then names the real fault.
ATOM = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
_ASTRING = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f]+')
TAG = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+')
_LIST_CHARS = re.compile(rb'[^(){ "\\\x00-\x1f\x7f]+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r\n")
DIGITS = re.compile(rb"[0-9]{1,30}")
_SEQSET = re.compile(rb"[0-9*:,$]+")
_DATE_TEXT = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", re.ASCII)
_DATE_TIME = re.compile(
    r"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})",
    re.ASCII,
)

MAX32 = 4294967295
MAX63 = 9223372036854775807

MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}


class Reader:
    """A position in one command; every method consumes what it returns."""

    __slots__ = ("buf", "pos", "utf8", "tag", "charset", "quiet", "literals", "next_literal")

    def __init__(self, buf: bytes, utf8: bool, literals: list[bytes] | None = None) -> None:
        self.buf = buf
        self.pos = 0
        # With ``literals``, ``buf`` holds only the lines: each "{n}" CRLF is
        # followed by the next line, and the octets are the next literal.
        self.literals = literals
        self.next_literal = 0
        self.utf8 = utf8
        self.tag: str | None = None
        self.charset: str | None = None  # Python codec for search strings
        self.quiet = False  # no snippets of the input in errors (passwords)

    def error(self, text: str) -> ParseError:
        return ParseError(text, self.tag)

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def peek(self) -> int:
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    def maybe(self, char: bytes) -> bool:
        if self.buf.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def expect(self, char: bytes, what: str) -> None:
        if not self.buf.startswith(char, self.pos):
            raise self.error(what + self.where())
        self.pos += len(char)

    def sp(self, after: str) -> None:
        if self.peek() != 0x20:
            raise self.error(f"Expected SP after {after}" + self.where())
        self.pos += 1

    def where(self) -> str:
        if self.quiet:
            return ""
        if self.pos >= len(self.buf):
            return " (at end of command)"
        snippet = self.buf[self.pos : self.pos + 12].decode("ascii", "replace")
        return f" (at {snippet!r})"

    def match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        m = pattern.match(self.buf, self.pos)
        if m is None or m.end() == self.pos:
            return None
        self.pos = m.end()
        return m[0]

    def word(self, what: str) -> str:
        """An atom, upper case (protocol keywords)."""
        raw = self.match(ATOM)
        if raw is None:
            raise self.error(f"Expected {what}" + self.where())
        return raw.decode("ascii").upper()

    def peek_word(self) -> str:
        m = ATOM.match(self.buf, self.pos)
        return m[0].decode("ascii").upper() if m else ""

    # -------------------------------------------------------------- numbers

    def number(self, what: str, *, nonzero: bool = False, limit: int = MAX32) -> int:
        raw = self.match(DIGITS)
        if raw is None:
            raise self.error(f"Expected a number for {what}" + self.where())
        value = int(raw)
        if value > limit:
            raise self.error(f"{what} {raw.decode()} is too large")
        if nonzero and value == 0:
            raise self.error(f"{what} must not be 0")
        return value

    def sequence_set(self, what: str = "sequence set") -> c.SequenceSet:
        raw = self.match(_SEQSET)
        if raw is None:
            raise self.error(f"Expected a {what}" + self.where())
        return _sequence_set(raw.decode("ascii"), self)

    # -------------------------------------------------------------- strings

    def literal(self, *, binary_ok: bool = False) -> tuple[bytes, bool] | None:
        """A literal or literal8 at this position: ``(octets, is_literal8)``."""
        m = _LITERAL.match(self.buf, self.pos)
        if m is None:
            return None
        size = int(m[2])
        start = m.end()
        if self.literals is not None:
            if self.next_literal >= len(self.literals) \
                    or len(self.literals[self.next_literal]) != size:
                raise self.error("Literal is shorter than announced")
            data = self.literals[self.next_literal]
            self.next_literal += 1
            self.pos = start
        else:
            if start + size > len(self.buf):
                raise self.error("Literal is shorter than announced")
            data = self.buf[start : start + size]
            self.pos = start + size
        is8 = bool(m[1])
        if is8 and not binary_ok:
            raise self.error("literal8 (~{n}) is only allowed for APPEND data (RFC 3516)")
        if not is8 and b"\x00" in data:
            raise self.error("NUL in a literal; send literal8 ~{n} for binary data (RFC 3516)")
        return data, is8

    def string(self, what: str) -> bytes:
        if self.peek() == 0x22:
            return self.quoted(what)
        lit = self.literal()
        if lit is None:
            raise self.error(f"Expected a quoted string or literal for {what}" + self.where())
        return lit[0]

    def quoted(self, what: str) -> bytes:
        m = _QUOTED.match(self.buf, self.pos)
        if m is None:
            raise self.error(f"Bad quoted string for {what}" + self.where())
        self.pos = m.end()
        raw = m[1]
        return _UNESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw

    def astring(self, what: str) -> bytes:
        ch = self.peek()
        if ch == 0x22 or ch == 0x7B or (ch == 0x7E and self.buf.startswith(b"{", self.pos + 1)):
            return self.string(what)
        raw = self.match(_ASTRING)
        if raw is None:
            raise self.error(f"Expected {what}" + self.where())
        return raw

    def nstring(self, what: str) -> bytes | None:
        if self.buf[self.pos : self.pos + 3].upper() == b"NIL":
            end = self.pos + 3
            if end >= len(self.buf) or self.buf[end] in b" )":
                self.pos = end
                return None
        return self.string(what)

    def text(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{_cap(what)} is not valid UTF-8") from None

    def search_string(self, what: str) -> str:
        raw = self.astring(what)
        codec = self.charset or "utf-8"
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid {codec}") from None

    # ------------------------------------------------------------ mailboxes

    def mailbox(self, what: str = "mailbox name") -> str:
        return self.mailbox_text(self.astring(what), what)

    def mailbox_text(self, raw: bytes, what: str) -> str:
        if len(raw) == 5 and raw.upper() == b"INBOX":
            return "INBOX"
        if self.utf8:
            name = self.text(raw, what)
        else:
            try:
                name = mutf7_decode(raw.decode("ascii"))
            except UnicodeDecodeError:
                raise self.error(
                    f"{_cap(what)} has 8-bit octets: use modified UTF-7 (RFC 3501 §5.1.3)"
                    " or ENABLE UTF8=ACCEPT"
                ) from None
            except MUTF7Error:
                # Not modified UTF-7: taken as it is, like Dovecot, so that
                # SELECT answers NO (no such mailbox) rather than BAD, and a
                # LIST pattern still matches what it literally says.
                name = raw.decode("ascii")
        if not name.isprintable() and any(ch < " " or ch == "\x7f" for ch in name):
            # RFC 9051 §5.1: no control characters in mailbox names.
            raise self.error(f"{_cap(what)} contains control characters")
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        ch = self.peek()
        if ch == 0x22 or ch == 0x7B:
            raw = self.string("mailbox pattern")
        else:
            got = self.match(_LIST_CHARS)
            if got is None:
                raise self.error("Expected a mailbox pattern" + self.where())
            raw = got
        what = "mailbox pattern"
        if self.utf8:
            return self.text(raw, what)
        try:
            return mutf7_decode(raw.decode("ascii"))
        except UnicodeDecodeError:
            raise self.error(f"{what} has 8-bit octets: use modified UTF-7") from None
        except MUTF7Error:
            return raw.decode("ascii")   # taken literally, as mailbox names are

    # ---------------------------------------------------------------- flags

    def flag(self, what: str = "flag") -> str:
        backslash = self.maybe(b"\\")
        raw = self.match(ATOM)
        if raw is None:
            if backslash and self.peek() == 0x2A:
                raise self.error("\\* is not a flag (it appears only in PERMANENTFLAGS)")
            raise self.error(f"Expected a {what}" + self.where())
        return ("\\" if backslash else "") + raw.decode("ascii")

    def flag_list(self, what: str = "flag list") -> tuple[str, ...]:
        self.expect(b"(", f"Expected '(' to start the {what}")
        flags: list[str] = []
        if not self.maybe(b")"):
            flags.append(self.flag())
            while self.maybe(b" "):
                flags.append(self.flag())
            self.expect(b")", f"Missing ')' after the {what}")
        return tuple(flags)

    # ---------------------------------------------------------------- dates

    def date(self) -> date:
        if self.peek() == 0x22:
            text = self.quoted("date").decode("ascii", "replace")
        else:
            raw = self.match(_ASTRING)
            text = raw.decode("ascii", "replace") if raw else ""
        m = _DATE_TEXT.fullmatch(text)
        month = MONTHS.get(m[2].upper(), 0) if m else 0
        if m is None or not month:
            raise self.error(f"Bad date {text!r}: expected d-Mon-yyyy (RFC 9051 §9 date)")
        try:
            return date(int(m[3]), month, int(m[1]))
        except ValueError:
            raise self.error(f"No such date {text!r}") from None

    def date_time(self) -> datetime:
        text = self.quoted("date-time").decode("ascii", "replace")
        m = _DATE_TIME.fullmatch(text)
        month = MONTHS.get(m[2].upper(), 0) if m else 0
        if m is None or not month:
            raise self.error(
                f"Bad date-time {text!r}: expected \"dd-Mon-yyyy hh:mm:ss +zzzz\""
            )
        zh, zm = int(m[8]), int(m[9])
        if zm > 59:
            raise self.error(f"Bad time zone in {text!r}")
        offset = timedelta(hours=zh, minutes=zm)
        try:
            return datetime(
                int(m[3]), month, int(m[1].strip()), int(m[4]), int(m[5]), int(m[6]),
                tzinfo=timezone(-offset if m[7] == "-" else offset),
            )
        except ValueError:
            raise self.error(f"No such date-time {text!r}") from None


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sequence_set(text: str, r: Reader) -> c.SequenceSet:
    """RFC 9051 §9 sequence-set; ``$`` (RFC 5182) only on its own."""
    if text == "$":
        return c.SequenceSet(saved=True)
    ranges: list[tuple[int | None, int | None]] = []
    for part in text.split(","):
        first, colon, last = part.partition(":")
        a = _seq_number(first, r, text)
        b = _seq_number(last, r, text) if colon else a
        ranges.append((a, b))
    return c.SequenceSet(tuple(ranges))


def _seq_number(text: str, r: Reader, whole: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise r.error(f"Bad sequence set {whole!r}")
    value = int(text)
    if value == 0 or value > MAX32:
        raise r.error(f"Bad sequence set {whole!r}: numbers are 1 to 4294967295")
    return value
