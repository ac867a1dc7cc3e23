"""Envelope addresses: the reverse path of MAIL and the forward path of RCPT.

Implements the path syntax of RFC 5321 §4.1.2 with the SMTPUTF8 extensions
of RFC 6531 §3.3 (UTF-8 in ``atext``, ``qtextSMTP`` and U-labels in
``sub-domain``)::

    Path          = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l         = At-domain *( "," At-domain )       ; source route, ignored
    Mailbox       = Local-part "@" ( Domain / address-literal )
    Local-part    = Dot-string / Quoted-string
    address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
                            General-address-literal ) "]"

Parsing is pure: text in, a :class:`Mailbox` (or ``None`` for the null
reverse path) out, or a :class:`~pillarbox.protocols.smtp.reply.RemoteProtocolError`
carrying the reply to send.  The grammar is applied with UTF-8 always allowed
and the SMTPUTF8 requirement checked afterwards, so that a client that forgot
``SMTPUTF8`` hears 553 5.6.7 (RFC 6531) rather than a bare syntax error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import idna

from pillarbox.protocols.smtp.reply import RemoteProtocolError, Reply

__all__ = ["Mailbox", "parse_path", "split_argument"]

# RFC 5321 §4.5.3.1.1-3, measured in octets of UTF-8.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63  # RFC 1035 §2.3.4

_NON_ASCII = "\u0080-\U0010ffff"  # UTF8-non-ascii (RFC 6532 §3.1); surrogates rejected first
# atext (RFC 5322 §3.2.3) plus UTF8-non-ascii (RFC 6531 §3.3).
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~" + _NON_ASCII
_DOT_STRING = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*")
# A run of labels; each is checked afterwards as Let-dig/Ldh-str or U-label.
_DOMAIN = re.compile(f"[A-Za-z0-9\\-{_NON_ASCII}]+(?:\\.[A-Za-z0-9\\-{_NON_ASCII}]+)*")
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_STANDARDIZED_TAG = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]")  # Ldh-str
_DCONTENT = re.compile(r"[\x21-\x5a\x5e-\x7e]+")  # %d33-90 / %d94-126
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")
_SURROGATE = re.compile("[\ud800-\udfff]")

_REVERSE = Reply(501, "5.1.7", "Bad sender address syntax")
_FORWARD = Reply(501, "5.1.3", "Bad recipient address syntax")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8 (RFC 6531)")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An envelope mailbox, ``local_part@domain`` (RFC 5321 §4.1.2).

    ``local_part`` is decoded: the quotes and quoted-pair backslashes of a
    Quoted-string are gone.  ``domain`` is as the client wrote it (U-labels
    kept), or an address literal with its brackets, e.g. ``"[192.0.2.1]"``.
    The special recipient ``<Postmaster>`` (RFC 5321 §4.5.1) is
    ``Mailbox("Postmaster", "")``.
    """

    local_part: str
    domain: str

    @property
    def is_literal(self) -> bool:
        """True when the domain is an address literal (RFC 5321 §4.1.3)."""
        return self.domain.startswith("[")

    @property
    def is_ascii(self) -> bool:
        """True when neither part needs SMTPUTF8 (RFC 6531 §3.1)."""
        return self.local_part.isascii() and self.domain.isascii()

    @property
    def ascii_domain(self) -> str:
        """The domain for lookups: lower-cased, U-labels as A-labels (RFC 5890).

        Address literals are returned unchanged.  Raises ``idna.IDNAError``
        only for a domain that :func:`parse_path` would have refused.
        """
        if self.is_literal:
            return self.domain
        return _to_ascii_domain(self.domain)

    def __str__(self) -> str:
        """Render as RFC 5321 §4.1.2 text: Dot-string if possible, else Quoted-string."""
        if _DOT_STRING.fullmatch(self.local_part):
            local = self.local_part
        else:
            escaped = self.local_part.replace("\\", "\\\\").replace('"', '\\"')
            local = f'"{escaped}"'
        return f"{local}@{self.domain}" if self.domain else local


def split_argument(arg: str, keyword: str) -> tuple[str, str]:
    """Split ``"FROM:<a@b> SIZE=10"`` into ``("<a@b>", "SIZE=10")``.

    The keyword (``FROM`` for MAIL, ``TO`` for RCPT; RFC 5321 §4.1.1.2-3) is
    matched without regard to case and must be followed at once by ``:``.
    Spaces after the colon are tolerated, as many clients send them.  The
    path ends at the ``>`` that closes it: ``>`` inside a quoted local part or
    an address literal does not count.  A path without its closing ``>`` is
    returned whole, for :func:`parse_path` to refuse with the right reply.
    """
    n = len(keyword)
    head = arg[:n]
    if not head.isascii() or head.upper() != keyword.upper() or arg[n : n + 1] != ":":
        raise RemoteProtocolError(
            Reply(501, "5.5.4", f"Syntax error: expected {keyword.upper()}:<address>")
        )
    start = n + 1
    while arg[start : start + 1] == " ":
        start += 1
    if arg[start : start + 1] != "<":
        raise RemoteProtocolError(
            Reply(501, "5.5.4", "Syntax error: the path must be enclosed in <>")
        )
    end = _path_end(arg, start)
    if end is None:
        return arg[start:], ""
    rest = arg[end:]
    if rest and rest[0] != " ":
        raise RemoteProtocolError(
            Reply(501, "5.5.4", "Syntax error: expected a space after the path")
        )
    return arg[start:end], rest.strip(" ")


def _path_end(text: str, start: int) -> int | None:
    """Index just past the ``>`` closing the path opened at ``start``, if any."""
    in_quote = in_literal = False
    i = start + 1
    while i < len(text):
        c = text[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif in_literal:
            in_literal = c != "]"
        elif c == '"':
            in_quote = True
        elif c == "[":
            in_literal = True
        elif c == ">":
            return i + 1
        i += 1
    return None


def parse_path(text: str, *, reverse: bool, smtputf8: bool) -> Mailbox | None:
    """Parse a reverse path (``reverse=True``) or forward path (RFC 5321 §4.1.2).

    ``<>`` is the null reverse path and yields ``None`` (RFC 5321 §4.5.5); it
    is an error as a forward path.  A source route is accepted and ignored
    (RFC 5321 §4.1.2, appendix C).  ``<Postmaster>`` without a domain is
    accepted as a forward path (RFC 5321 §4.5.1).  Non-ASCII addresses need
    ``smtputf8`` (RFC 6531 §3.3).  Lengths are limited as RFC 5321 §4.5.3.1
    says, counting the local part and the path as written on the wire.
    """
    syntax = _REVERSE if reverse else _FORWARD

    def fail(detail: str) -> RemoteProtocolError:
        return RemoteProtocolError(Reply(syntax.code, syntax.status, f"{syntax.text}: {detail}"))

    if _SURROGATE.search(text):
        raise fail("not valid UTF-8")
    if text == "<>":
        if reverse:
            return None
        raise fail("the null path is only a reverse path (RFC 5321 4.5.5)")
    if not text.startswith("<"):
        raise fail("the path must be enclosed in <>")
    bare = text[1:-1]
    if not reverse and text.endswith(">") and bare.isascii() and bare.lower() == "postmaster":
        return Mailbox("Postmaster", "")

    pos = 1
    route: list[str] = []
    if text.startswith("<@"):
        pos = _parse_route(text, pos, route, fail)
    local_start = pos
    local, pos = _parse_local_part(text, pos, fail)
    if text[pos : pos + 1] != "@":
        raise fail("expected local-part@domain")
    local_end = pos
    domain, pos = _parse_domain(text, pos + 1, fail, literal_ok=True)
    if pos == len(text):
        raise fail("missing '>'")
    if text[pos] != ">":
        raise fail(f"unexpected character {text[pos]!r} in domain")
    if pos + 1 != len(text):
        raise fail("unexpected text after '>'")

    if not smtputf8 and not text.isascii():
        raise RemoteProtocolError(NEEDS_SMTPUTF8)
    if len(text[local_start:local_end].encode()) > MAX_LOCAL_PART:
        raise fail("local part too long (RFC 5321 4.5.3.1.1)")
    if len(domain.encode()) > MAX_DOMAIN:
        raise fail("domain too long (RFC 5321 4.5.3.1.2)")
    if len(text.encode()) > MAX_PATH:
        raise fail("path too long (RFC 5321 4.5.3.1.3)")
    for name in [*route, domain]:
        if name.startswith("["):
            continue
        try:
            ascii_name = _to_ascii_domain(name)
        except UnicodeError:  # idna.IDNAError and the codecs' own errors
            raise RemoteProtocolError(
                Reply(553, syntax.status, f"Invalid internationalized domain name: {name}")
            ) from None
        if len(ascii_name) > MAX_DOMAIN:
            raise fail("domain too long in A-label form (RFC 5321 4.5.3.1.2)")
    return Mailbox(local, domain)


_Fail = Callable[[str], RemoteProtocolError]


def _parse_route(text: str, pos: int, route: list[str], fail: _Fail) -> int:
    """Parse ``A-d-l ":"`` at ``pos``; append its domains to ``route``."""
    while True:
        if text[pos : pos + 1] != "@":
            raise fail("bad source route")
        name, pos = _parse_domain(text, pos + 1, fail, literal_ok=False)
        route.append(name)
        sep = text[pos : pos + 1]
        pos += 1
        if sep == ":":
            return pos
        if sep != ",":
            raise fail("bad source route")


def _parse_local_part(text: str, pos: int, fail: _Fail) -> tuple[str, int]:
    """Parse a Dot-string or Quoted-string at ``pos``: (decoded, end)."""
    if text[pos : pos + 1] != '"':
        m = _DOT_STRING.match(text, pos)
        if m is None:
            raise fail("bad local part")
        return m.group(), m.end()
    out: list[str] = []
    pos += 1
    while pos < len(text):
        c = text[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c == "\\":
            # quoted-pairSMTP = %d92 %d32-126; RFC 6531 does not extend it.
            nxt = text[pos + 1 : pos + 2]
            if not nxt or not " " <= nxt <= "~":
                raise fail("bad quoted-pair in local part")
            out.append(nxt)
            pos += 2
            continue
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii (RFC 6531).
        if not (" " <= c <= "~" or c >= "\x80"):
            raise fail("bad character in quoted local part")
        out.append(c)
        pos += 1
    raise fail("unterminated quoted local part")


def _parse_domain(text: str, pos: int, fail: _Fail, *, literal_ok: bool) -> tuple[str, int]:
    """Parse a Domain, or with ``literal_ok`` an address-literal: (domain, end)."""
    if literal_ok and text[pos : pos + 1] == "[":
        close = text.find("]", pos)
        if close < 0:
            raise fail("unterminated address literal")
        if not _valid_literal(text[pos + 1 : close]):
            raise fail("bad address literal (RFC 5321 4.1.3)")
        return text[pos : close + 1], close + 1
    m = _DOMAIN.match(text, pos)
    if m is None:
        raise fail("bad domain")
    for label in m.group().split("."):
        if label.isascii():
            if not _LDH_LABEL.fullmatch(label):
                raise fail(f"bad domain label {label!r}")
            if len(label) > MAX_LABEL:
                raise fail("domain label too long (RFC 1035 2.3.4)")
        # Non-ASCII labels are U-labels, checked by IDNA once SMTPUTF8 is known.
    return m.group(), m.end()


def _valid_literal(content: str) -> bool:
    """Whether ``content`` (inside the brackets) is an RFC 5321 §4.1.3 literal."""
    m = _IPV4.fullmatch(content)
    if m:
        return all(int(snum) <= 255 for snum in m.groups())
    tag, colon, rest = content.partition(":")
    if not colon or not _STANDARDIZED_TAG.fullmatch(tag):
        return False
    if tag.lower() == "ipv6":
        # The ipaddress module would also take a "%zone"; RFC 5321 does not.
        if not _IPV6_CHARS.fullmatch(rest):
            return False
        try:
            ipaddress.IPv6Address(rest)
        except ValueError:
            return False
        return True
    return _DCONTENT.fullmatch(rest) is not None


def _to_ascii_domain(domain: str) -> str:
    """Lower-cased A-label form of a domain (IDNA2008 with UTS #46 mapping).

    ASCII labels are only lower-cased: RFC 5321 allows LDH labels such as
    ``ab--cd`` that IDNA2008 would refuse.  Each U-label must map to exactly
    one A-label.
    """
    labels = []
    for label in domain.split("."):
        if label.isascii():
            labels.append(label.lower())
            continue
        alabel = idna.encode(label, uts46=True).decode("ascii")
        if "." in alabel or not alabel:
            raise idna.IDNAError(f"label {label!r} is not one U-label")
        labels.append(alabel)
    return ".".join(labels)
