"""Address lists of RFC 5322 §3.4, with groups and the obsolete syntax of §4.4.

The parser is lenient: it accepts routes (``<@a,@b:user@host>``), empty list
members, comments anywhere, quoted local parts, domain literals, a comment as
the display name of a bare addr-spec (``user@host (Name)``), and it resyncs at
the next comma after garbage. Values stay as octets in their raw form (encoded
words undecoded) because the IMAP ENVELOPE wants them so; :attr:`Mailbox.display`
gives the decoded name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .headers import decode_words

__all__ = ["Group", "Mailbox", "format_address", "parse_address_list", "parse_mailbox_list"]

MAX_ADDRESSES = 10_000


class Mailbox(NamedTuple):
    """One mailbox: display name, obsolete route, local part and domain (raw octets).

    ``mailbox`` or ``domain`` is None when the input lacked it.  A named tuple
    (cheap to make: every address of every parsed header is one).
    """

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    domain: bytes | None
    #: False when the angle address is broken: no closing ``>``, junk before it,
    #: or an ``@`` without a domain
    valid: bool = True

    @property
    def display(self) -> str | None:
        return None if self.name is None else decode_words(self.name)

    @property
    def addr_spec(self) -> str:
        local = (self.mailbox or b"").decode("utf-8", "replace")
        if self.domain is None:
            return local
        return local + "@" + self.domain.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Group:
    """A named group of mailboxes (RFC 5322 §3.4), possibly empty."""

    name: bytes
    members: list[Mailbox] = field(default_factory=list)


_SPECIALS = b'()<>[]:;@\\,."'
_WS = b" \t\r\n"

# token kinds
ATOM, QUOTED, SPECIAL, LITERAL = "atom", "quoted", "special", "literal"


# One token at a time, the common kinds by one regex match: an atom, a quoted
# string without escapes or line breaks, a domain literal, a special.  Comments
# and the other quoted strings take the octet loop below.
_FAST = re.compile(
    rb'[ \t\r\n]*(?:([^()<>\[\]:;@\\,."\x20\t\r\n]+)|"([^"\\\r\n]*)"'
    rb'|(\[[^\]]*\]?)|([)<>\]:;@\\,.]))')
_KINDS = ("", ATOM, QUOTED, LITERAL, SPECIAL)   # by group number


def _tokenize(s: bytes) -> list[tuple[str, bytes, bytes]]:
    """Tokens as (kind, value, comment-before); comments are attached to the next token.

    The final pseudo token ``("end", b"", comment)`` carries a trailing comment.
    """
    toks: list[tuple[str, bytes, bytes]] = []
    append = toks.append
    match = _FAST.match
    i, n = 0, len(s)
    comment = b""
    while i < n:
        m = match(s, i)
        if m is not None:
            kind = m.lastindex or 0     # always a group: every alternative has one
            append((_KINDS[kind], m.group(kind), comment))
            comment = b""
            i = m.end()
            continue
        c = s[i]
        if c in _WS:
            i += 1
        elif c == 40:  # comment, nested, with quoted pairs
            depth, j, buf = 0, i, bytearray()
            while j < n:
                ch = s[j]
                if ch == 92 and j + 1 < n:
                    buf.append(s[j + 1])
                    j += 2
                    continue
                if ch == 40:
                    depth += 1
                    if depth > 1:
                        buf.append(ch)
                elif ch == 41:
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                    buf.append(ch)
                else:
                    buf.append(ch)
                j += 1
            comment = bytes(buf)
            i = j
        else:  # c == 34: a quoted string with quoted pairs or line breaks
            j, buf = i + 1, bytearray()
            while j < n and s[j] != 34:
                if s[j] == 92 and j + 1 < n:
                    j += 1
                if s[j] not in b"\r\n":
                    buf.append(s[j])
                j += 1
            append((QUOTED, bytes(buf), comment))
            comment = b""
            i = j + 1
    append(("end", b"", comment))
    return toks


class _Parser:
    def __init__(self, s: bytes):
        self.t = _tokenize(s)
        self.i = 0

    def peek(self) -> tuple[str, bytes, bytes]:
        return self.t[self.i]

    def is_special(self, ch: bytes) -> bool:
        k, v, _ = self.t[self.i]
        return k == SPECIAL and v == ch

    def phrase(self) -> bytes | None:
        """Words (atoms, quoted strings, and obsolete dots) joined by a space."""
        words: list[bytes] = []
        while True:
            k, v, _ = self.t[self.i]
            if k in (ATOM, QUOTED):
                words.append(v)
            elif k == SPECIAL and v == b"." and words:
                words[-1] += b"."
                self.i += 1
                continue
            else:
                break
            self.i += 1
        return b" ".join(words) if words else None

    def dot_words(self) -> bytes | None:
        """local-part / domain: words joined by dots, obsolete CFWS around dots allowed."""
        parts: list[bytes] = []
        while True:
            k, v, _ = self.t[self.i]
            if k in (ATOM, QUOTED, LITERAL):
                parts.append(v)
                self.i += 1
            else:
                break
            if self.is_special(b"."):
                self.i += 1
                parts.append(b".")
            else:
                break
        return b"".join(parts) if parts else None

    def route(self) -> bytes | None:
        """obs-route: ``@a,@b:`` (RFC 5322 §4.4); returns ``@a,@b`` or None."""
        start = self.i
        doms: list[bytes] = []
        while self.is_special(b"@"):
            self.i += 1
            d = self.dot_words()
            doms.append(b"@" + (d or b""))
            while self.is_special(b","):
                self.i += 1
        if doms and self.is_special(b":"):
            self.i += 1
            return b",".join(doms)
        self.i = start
        return None

    def angle_addr(self, name: bytes | None) -> Mailbox:
        """``<addr-spec>``; anything but ``>`` after the addr-spec, an ``@`` with no
        domain or a missing ``>`` makes it invalid, which ENVELOPE shows as the
        domain SYNTAX_ERROR; a route that never reaches its ``:`` is INVALID_ROUTE
        (both as Dovecot reports them)."""
        self.i += 1  # "<"
        bad_route = self.is_special(b"@")
        route = self.route()
        local = domain = None
        valid = True
        if bad_route and route is None:
            route = b"INVALID_ROUTE"
        else:
            local = self.dot_words()
            if self.is_special(b"@"):
                self.i += 1
                domain = self.dot_words()
                valid = domain is not None
            valid = valid and self.is_special(b">")
        # skip anything up to ">"
        while self.peek()[0] != "end" and not self.is_special(b">"):
            self.i += 1
        if self.is_special(b">"):
            self.i += 1
        else:
            valid = False
        return Mailbox(name, route, local, domain, valid)

    def mailbox(self) -> Mailbox | None:
        start = self.i
        name = self.phrase()
        if self.is_special(b"<"):
            return self.angle_addr(name)
        self.i = start
        quoted = self.peek()[0] == QUOTED
        local = self.dot_words()
        domain = None
        at = self.is_special(b"@")
        if at:
            self.i += 1
            domain = self.dot_words()
        if local is None and domain is None and not at:
            return None
        if not at and local is not None and (
                self.peek()[0] in (ATOM, QUOTED) or (quoted and self.i == start + 1)):
            # Words and no "@" ("Someone Else", '"Quoted Name"'): a display name
            # whose address is missing, not a local part followed by junk. One
            # bare atom ("localonly") stays a local part without its domain.
            self.i = start
            return Mailbox(self.phrase(), None, None, None)
        # A comment after a bare addr-spec is by convention the display name.
        comment = self.peek()[2]
        return Mailbox(comment or None, None, local, domain)

    def skip_to(self, stops: tuple[bytes, ...]) -> None:
        while self.peek()[0] != "end":
            k, v, _ = self.peek()
            if k == SPECIAL and v in stops:
                return
            self.i += 1

    def address(self) -> Mailbox | Group | None:
        start = self.i
        name = self.phrase()
        if self.is_special(b":") and name is not None:
            self.i += 1
            members: list[Mailbox] = []
            while self.peek()[0] != "end" and not self.is_special(b";"):
                if self.is_special(b","):
                    self.i += 1
                    continue
                mb = self.mailbox()
                if mb is not None:
                    members.append(mb)
                if not (self.is_special(b",") or self.is_special(b";")):
                    self.skip_to((b",", b";"))
            if self.is_special(b";"):
                self.i += 1
            return Group(name, members)
        self.i = start
        return self.mailbox()


def parse_address_list(value: bytes | None) -> list[Mailbox | Group]:
    """Parse an address-list header value (unfolded or not) into mailboxes and groups."""
    if not value:
        return []
    value = value.split(b"\0", 1)[0]  # NUL is not text (RFC 5322 §3.2.5); stop there
    p = _Parser(value)
    out: list[Mailbox | Group] = []
    while p.peek()[0] != "end" and len(out) < MAX_ADDRESSES:
        if p.is_special(b","):
            p.i += 1
            continue
        start = p.i
        item = p.address()
        if item is not None:
            out.append(item)
        if not p.is_special(b","):
            p.skip_to((b",",))
        if p.i == start:
            p.i += 1
    return out


def parse_mailbox_list(value: bytes | None) -> list[Mailbox]:
    """The mailboxes of an address list, groups flattened."""
    out: list[Mailbox] = []
    for item in parse_address_list(value):
        if isinstance(item, Group):
            out.extend(item.members)
        else:
            out.append(item)
    return out


def _quote_phrase(name: str) -> str:
    if name and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~ " or ord(c) > 127 for c in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_address(display: str | None, addr_spec: str) -> str:
    """``Name <addr>`` in RFC 5322 syntax (Unicode; encode with generate.encode_header)."""
    if not display:
        return addr_spec
    return f"{_quote_phrase(display)} <{addr_spec}>"
