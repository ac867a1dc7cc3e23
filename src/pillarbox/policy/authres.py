"""The ``Authentication-Results:`` header field (RFC 8601).

What the checks found is written into the message for the mailbox and the
user's filters to read: one field per message, naming us by our
*authserv-id* (RFC 8601 §2.5, usually the host name), with one *resinfo* per
method (§2.2)::

    Authentication-Results: mx.example.org;
        spf=pass smtp.mailfrom=example.net;
        dkim=pass header.d=example.net header.s=sel header.b="abcd/123";
        dmarc=pass (p=reject dis=none) header.from=example.net policy.dmarc=reject

:class:`AuthenticationResults` renders such a field (values that are not
tokens quoted, long fields folded at whitespace only, so that unfolding
gives back the same value, §2.2); :class:`MethodResult` is one resinfo.

Since the field is trusted because of the authserv-id in it, a forged one
carrying ours must not reach the user: RFC 8601 §5 says to remove or rename
such fields from incoming mail; :func:`remove_ours` removes them, before our
own is added.  It parses just enough of each field to find the authserv-id
(§2.2: ``[CFWS] authserv-id [CFWS authres-version] ";"``), compares it
without regard to case, and also removes a malformed field whose
authserv-id cannot be parsed but whose text starts with ours: a field we
cannot read is not one a filter should trust either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AuthenticationResults", "MethodResult", "authserv_id", "is_ours", "remove_ours"]

FIELD_NAME = "Authentication-Results"
#: RFC 5322 §2.1.1: lines SHOULD be no longer than 78 characters
LINE = 78

# RFC 8601 §2.2: method, result, ptype, property are Keywords (RFC 5321 §4.1.2)
_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_METHOD = re.compile(_KEYWORD.pattern + r"(?:/[0-9]+)?")
# RFC 2045 §5.1 token: CHAR except SPACE, CTLs and tspecials
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 8601 §2.2 pvalue: [ [ local-part ] "@" ] domain-name, written without quotes
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = re.compile(rf"(?:{_ATOM}(?:\.{_ATOM})*)?@[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(text: str) -> str:
    """No CR, LF or other control character may get into the header from a value."""
    return _CONTROLS.sub(" ", text)


def quote_value(value: str) -> str:
    """A value as RFC 8601 writes it: a token or address as is, else a quoted-string."""
    value = _clean(value)
    if _TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = _clean(text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({text})"


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo (RFC 8601 §2.2): ``method=result (comment) reason=... ptype.property=value``.

    ``properties`` are ``("smtp.mailfrom", "example.net")`` pairs, in order:
    ``smtp.mailfrom``, ``smtp.helo``, ``header.from``, ``header.d``,
    ``header.s``, ``header.b``, ``header.i``, ``policy.dmarc``, ``policy.iprev``...
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[tuple[str, str], ...] = ()
    comment: str | None = None

    def __post_init__(self) -> None:
        if not _METHOD.fullmatch(self.method):
            raise ValueError(f"Authentication-Results: bad method name {self.method!r}")
        if not _KEYWORD.fullmatch(self.result):
            raise ValueError(f"Authentication-Results: bad result {self.result!r}")
        for name, _ in self.properties:
            ptype, dot, prop = name.partition(".")
            if not dot or not _KEYWORD.fullmatch(ptype) or not _KEYWORD.fullmatch(prop):
                raise ValueError(f"Authentication-Results: bad property {name!r} "
                                 "(ptype.property, e.g. smtp.mailfrom)")

    @classmethod
    def spf(cls, result: str, mailfrom: str | None = None, helo: str | None = None,
            comment: str | None = None) -> MethodResult:
        """``spf=`` with ``smtp.mailfrom`` and/or ``smtp.helo`` (RFC 8601 §2.7.2)."""
        props = tuple((k, v) for k, v in (("smtp.mailfrom", mailfrom), ("smtp.helo", helo)) if v)
        return cls("spf", result, properties=props, comment=comment)

    @classmethod
    def dkim(cls, result: str, d: str | None = None, s: str | None = None, b: str | None = None,
             *, reason: str | None = None, comment: str | None = None) -> MethodResult:
        """``dkim=`` with ``header.d``, ``header.s`` and ``header.b`` (RFC 8601 §2.7.1).

        ``header.b`` is the signature's first 12 characters, enough to tell
        several signatures apart (RFC 6008 asks for at least 8).
        """
        props: list[tuple[str, str]] = []
        if d:
            props.append(("header.d", d))
        if s:
            props.append(("header.s", s))
        if b:
            props.append(("header.b", "".join(b.split())[:12]))
        return cls("dkim", result, reason=reason, properties=tuple(props), comment=comment)

    def render(self) -> str:
        parts = [f"{self.method}={self.result}"]
        if self.comment:
            parts.append(_comment(self.comment))
        if self.reason is not None:
            parts.append(f"reason={quote_value(self.reason)}")
        parts.extend(f"{name}={quote_value(value)}" for name, value in self.properties)
        return " ".join(parts)

    def __str__(self) -> str:
        return self.render()


@dataclass(frozen=True, slots=True)
class AuthenticationResults:
    """The whole field: our authserv-id, an optional version, the method results."""

    authserv_id: str
    results: tuple[MethodResult, ...] = ()
    version: int | None = None

    def __post_init__(self) -> None:
        if not self.authserv_id or _CONTROLS.search(self.authserv_id):
            raise ValueError(f"Authentication-Results: bad authserv-id {self.authserv_id!r}")

    @classmethod
    def of(cls, authserv_id: str, results: Iterable[MethodResult]) -> AuthenticationResults:
        return cls(authserv_id, tuple(results))

    def _head(self) -> str:
        head = quote_value(self.authserv_id)
        return head if self.version is None else f"{head} {self.version}"

    def value(self) -> str:
        """The field's value on one line (unfolded)."""
        if not self.results:
            return f"{self._head()}; none"        # §2.2 no-result
        return self._head() + "; " + "; ".join(r.render() for r in self.results)

    def render(self) -> bytes:
        """The whole field, folded, ending with CRLF, as UTF-8 (RFC 6532)."""
        one = f"{FIELD_NAME}: {self.value()}"
        if len(one) <= LINE:
            return (one + "\r\n").encode("utf-8")
        if not self.results:
            return (one + "\r\n").encode("utf-8")
        lines = [f"{FIELD_NAME}: {self._head()};"]
        last = len(self.results) - 1
        for i, r in enumerate(self.results):
            lines.extend(_fold("    " + r.render() + (";" if i < last else "")))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def __str__(self) -> str:
        return self.render().decode("utf-8")


_FOLD_SPECIAL = re.compile(r'[\\"() ]')


def _fold(line: str) -> list[str]:
    """Fold one resinfo line at its whitespace (RFC 5322 §2.2.3).

    Between items the continuation line is indented; inside a quoted-string
    or a comment the CRLF goes just before the space that is there, so that
    unfolding gives back the value exactly.  A word longer than a line stays
    whole (RFC 5322 allows 998 characters).
    """
    if len(line) <= LINE:
        return [line]
    lead = len(line) - len(line.lstrip(" "))
    # where a line may break: a space (the first of a run), outside or inside quotes/comments
    points: list[tuple[int, bool]] = []
    quoted, depth, skip = False, 0, -1
    # Only the characters that change the state are visited (one header field
    # per message is folded, and a loop over every character was most of the
    # cost of the origin checks).
    for m in _FOLD_SPECIAL.finditer(line):
        i = m.start()
        ch = line[i]
        if i == skip:
            continue
        if ch == "\\":
            if quoted or depth:
                skip = i + 1
        elif ch == '"' and not depth:
            quoted = not quoted
        elif ch == "(" and not quoted:
            depth += 1
        elif ch == ")" and not quoted and depth:
            depth -= 1
        elif ch == " " and i > lead and line[i - 1] != " ":
            points.append((i, not quoted and not depth))
    bounds = [i for i, _ in points] + [len(line)]
    out: list[str] = []
    current = line[: bounds[0]]
    for (i, outside), j in zip(points, bounds[1:]):
        piece = line[i:j]                        # starts with the space
        if len(current) + len(piece) <= LINE:
            current += piece
            continue
        out.append(current)
        current = "      " + piece.lstrip(" ") if outside else piece
    out.append(current)
    return out


# -- reading fields that are already there ------------------------------------

_WSP = b" \t\r\n"
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`"
                         b"abcdefghijklmnopqrstuvwxyz{|}~") | frozenset(range(0x80, 0x100))


def _skip_cfws(s: bytes, i: int) -> int:
    """Skip whitespace and (nested) comments; -1 if a comment does not end."""
    n = len(s)
    while i < n:
        c = s[i]
        if c in _WSP:
            i += 1
        elif c == 0x28:                       # "("
            depth = 0
            while i < n:
                c = s[i]
                if c == 0x5C:                 # quoted-pair
                    i += 2
                    continue
                if c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            else:
                return -1
        else:
            break
    return i


def authserv_id(value: bytes) -> str | None:
    """The authserv-id of an ``Authentication-Results:`` value; None if malformed.

    RFC 8601 §2.2: ``[CFWS] authserv-id [ CFWS authres-version ] ( no-result / 1*resinfo )``,
    where authserv-id is a token or quoted-string and a ``;`` follows.
    """
    s = value
    i = _skip_cfws(s, 0)
    if i < 0 or i >= len(s):
        return None
    if s[i] == 0x22:                          # quoted-string
        out = bytearray()
        i += 1
        while i < len(s) and s[i] != 0x22:
            if s[i] == 0x5C and i + 1 < len(s):
                i += 1
            if s[i] not in b"\r\n":
                out.append(s[i])
            i += 1
        if i >= len(s):
            return None
        i += 1
        ident = bytes(out)
    else:
        j = i
        while j < len(s) and s[j] in _TOKEN_BYTES:
            j += 1
        ident, i = s[i:j], j
    if not ident:
        return None
    i = _skip_cfws(s, i)
    if i < 0:
        return None
    j = i
    while j < len(s) and 0x30 <= s[j] <= 0x39:   # authres-version
        j += 1
    if j > i:
        i = _skip_cfws(s, j)
        if i < 0:
            return None
    if i >= len(s) or s[i] != 0x3B:              # ";"
        return None
    return ident.decode("utf-8", "replace")


def is_ours(value: bytes, ours: str) -> bool:
    """Whether a field's value claims to come from authserv-id ``ours`` (case-insensitive)."""
    mine = ours.casefold().rstrip(".")
    ident = authserv_id(value)
    if ident is not None:
        return ident.casefold().rstrip(".") == mine     # "mx.example.org." is the same host
    # malformed: judge by how it starts, after any readable comments
    i = _skip_cfws(value, 0)
    text = value[max(i, 0):] if i >= 0 else value.lstrip(_WSP)
    text = text.lstrip(b'"')
    return text.decode("utf-8", "replace").casefold().startswith(mine)


def remove_ours(header_block: bytes, ours: str) -> bytes:
    """The header block without the ``Authentication-Results:`` fields that claim to be ours.

    ``header_block`` is the message's header as received (lines ending in
    CRLF or LF); whatever follows its first empty line (the body, if it was
    passed along) is kept as it is, as are all other fields, byte for byte.
    """
    if b"authentication-results" not in header_block.lower():
        return header_block      # the usual case: no such field at all
    out: list[bytes] = []
    pos, n = 0, len(header_block)
    while pos < n:
        end = header_block.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = header_block[pos:end]
        if line in (b"\r\n", b"\n"):           # end of the header
            out.append(header_block[pos:])
            break
        # a field: this line and its continuation lines
        while end < n and header_block[end] in (0x20, 0x09):
            nxt = header_block.find(b"\n", end)
            end = n if nxt < 0 else nxt + 1
        field = header_block[pos:end]
        pos = end
        colon = field.find(b":")
        if colon > 0 and field[:colon].rstrip(b" \t").lower() == b"authentication-results":
            if is_ours(field[colon + 1:], ours):
                continue
        out.append(field)
    return b"".join(out)
