"""ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2, §4.1.1.11).

Syntax (RFC 5321 §4.1.2, widened for UTF-8 by RFC 6531 §3.3)::

    esmtp-param   = esmtp-keyword ["=" esmtp-value]
    esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    esmtp-value   = 1*(%d33-60 / %d62-126 / UTF8-non-ascii)

The parameters Pillarbox offers:

- MAIL: ``SIZE`` (RFC 1870), ``BODY=7BIT|8BITMIME`` (RFC 6152), ``SMTPUTF8``
  (RFC 6531), ``RET`` and ``ENVID`` (DSN, RFC 3461 §4.3-4.4), ``REQUIRETLS``
  (RFC 8689 §2, only where offered: under TLS).
- RCPT: ``NOTIFY`` and ``ORCPT`` (DSN, RFC 3461 §4.1-4.2; the ``utf-8``
  address type of RFC 6533 §3).

Any other keyword is answered 555 5.5.4 (RFC 5321 §4.1.1.11).  Everything is
pure: a parameter list in, a typed value or a
:class:`~pillarbox.protocols.smtp.reply.RemoteProtocolError` out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pillarbox.protocols.smtp.reply import MESSAGE_TOO_BIG, RemoteProtocolError, Reply

__all__ = [
    "REQUIRETLS_NEEDS_TLS",
    "MailParams",
    "RcptParams",
    "parse_mail_params",
    "parse_params",
    "parse_rcpt_params",
    "utf8_addr_decode",
    "utf8_addr_encode",
    "xtext_decode",
    "xtext_encode",
]

_NON_ASCII = "\u0080-\U0010ffff"
_PARAM = re.compile(f"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\\x21-\\x3c\\x3e-\\x7e{_NON_ASCII}]+))?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SIZE = re.compile(r"[0-9]{1,20}")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 5322 §3.2.3 atom, the addr-type of RFC 3461 §4.2.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
# RFC 6533 §3: QCHAR / QUCHAR / EmbeddedUnicodeChar.  The HEXPOINT rule is
# relaxed to "1 to 6 upper-case hex digits naming a scalar value".
_UTF8_ADDR = re.compile(
    f"(?:[\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x5b\\x5d-\\x7e{_NON_ASCII}]|\\\\x\\{{[0-9A-F]{{1,6}}\\}})+"
)
_EMBEDDED = re.compile(r"\\x\{([0-9A-F]{1,6})\}")

MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
BODY_TYPES = ("7BIT", "8BITMIME")  # RFC 6152; BINARYMIME (RFC 3030) not offered
RET_VALUES = ("FULL", "HDRS")
NOTIFY_VALUES = ("SUCCESS", "FAILURE", "DELAY")  # canonical order; NEVER stands alone

Params = list[tuple[str, str | None]]

# RFC 8689 §2 offers REQUIRETLS only in the EHLO reply under TLS, and says
# nothing of a MAIL that carries it without; RFC 3207's 530 with 5.7.10
# ("Encryption needed", RFC 5248) tells the client what to do.
REQUIRETLS_NEEDS_TLS = Reply(
    530, "5.7.10", "REQUIRETLS needs a TLS session: issue STARTTLS first (RFC 8689 2)")


def _bad(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(Reply(501, "5.5.4", text))


def parse_params(text: str) -> list[tuple[str, str | None]]:
    """Split MAIL/RCPT parameters into ``(KEYWORD, value-or-None)`` pairs.

    Keywords are upper-cased; values are returned as written.  Runs of spaces
    between (and around) parameters are tolerated.
    """
    if _SURROGATE.search(text):
        raise _bad("Syntax error in parameters: not valid UTF-8")
    params: list[tuple[str, str | None]] = []
    for word in text.split(" "):
        if not word:
            continue
        m = _PARAM.fullmatch(word)
        if m is None:
            raise _bad(f"Syntax error in parameter {word!r} (RFC 5321 4.1.2)")
        params.append((m.group(1).upper(), m.group(2)))
    return params


@dataclass(frozen=True, slots=True)
class MailParams:
    """The parameters of one MAIL command."""

    size: int | None = None  # RFC 1870 §6, the client's estimate in octets
    body: str | None = None  # "7BIT" or "8BITMIME" (RFC 6152)
    smtputf8: bool = False  # RFC 6531 §3.4
    ret: str | None = None  # "FULL" or "HDRS" (RFC 3461 §4.3)
    envid: str | None = None  # decoded xtext (RFC 3461 §4.4)
    requiretls: bool = False  # RFC 8689 §2: verified TLS on every onward hop


@dataclass(frozen=True, slots=True)
class RcptParams:
    """The parameters of one RCPT command."""

    # ("NEVER",) or a non-empty subset of NOTIFY_VALUES in that order (RFC 3461 §4.1)
    notify: tuple[str, ...] | None = None
    # (addr-type lower-cased, decoded address) (RFC 3461 §4.2, RFC 6533 §3)
    orcpt: tuple[str, str] | None = None


def _value(keyword: str, value: str | None) -> str:
    if value is None:
        raise _bad(f"{keyword} requires a value")
    return value


def _unique(params: Params) -> list[tuple[str, str | None]]:
    """Upper-case the keywords and refuse repeats (RFC 5321 §4.1.2)."""
    seen: set[str] = set()
    out = []
    for keyword, value in params:
        keyword = keyword.upper()
        if keyword in seen:
            raise _bad(f"Duplicate parameter: {keyword}")
        seen.add(keyword)
        out.append((keyword, value))
    return out


def _unsupported(keyword: str) -> RemoteProtocolError:
    return RemoteProtocolError(Reply(555, "5.5.4", f"Unsupported parameter: {keyword}"))


def parse_mail_params(params: Params, *, max_size: int, requiretls: bool = False) -> MailParams:
    """Interpret the parameters of MAIL; ``max_size`` 0 means no SIZE limit.

    A declared SIZE above ``max_size`` is refused at once with 552 5.3.4
    (RFC 1870 §6.1).  ``requiretls``: the session offers REQUIRETLS (it is
    under TLS); elsewhere the parameter is refused with :data:`REQUIRETLS_NEEDS_TLS`.
    """
    size = body = ret = envid = None
    smtputf8 = want_tls = False
    for keyword, value in _unique(params):
        if keyword == "SIZE":
            value = _value(keyword, value)
            if not _SIZE.fullmatch(value):
                raise _bad("SIZE must be a decimal number (RFC 1870 6)")
            size = int(value)
            if max_size > 0 and size > max_size:
                raise RemoteProtocolError(MESSAGE_TOO_BIG)
        elif keyword == "BODY":
            body = _value(keyword, value).upper()
            if body not in BODY_TYPES:
                raise _bad("BODY must be 7BIT or 8BITMIME (RFC 6152)")
        elif keyword == "SMTPUTF8":
            if value is not None:
                raise _bad("SMTPUTF8 takes no value (RFC 6531 3.4)")
            smtputf8 = True
        elif keyword == "RET":
            ret = _value(keyword, value).upper()
            if ret not in RET_VALUES:
                raise _bad("RET must be FULL or HDRS (RFC 3461 4.3)")
        elif keyword == "ENVID":
            value = _value(keyword, value)
            if len(value) > MAX_ENVID:
                raise _bad("ENVID longer than 100 characters (RFC 3461 4.4)")
            try:
                envid = xtext_decode(value)
            except ValueError:
                raise _bad("ENVID is not valid xtext (RFC 3461 4)") from None
        elif keyword == "REQUIRETLS":
            if value is not None:
                raise _bad("REQUIRETLS takes no value (RFC 8689 2)")
            if not requiretls:
                raise RemoteProtocolError(REQUIRETLS_NEEDS_TLS)
            want_tls = True
        else:
            raise _unsupported(keyword)
    return MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret, envid=envid,
                      requiretls=want_tls)


def parse_rcpt_params(params: Params) -> RcptParams:
    """Interpret the parameters of RCPT."""
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for keyword, value in _unique(params):
        if keyword == "NOTIFY":
            notify = _parse_notify(_value(keyword, value))
        elif keyword == "ORCPT":
            orcpt = _parse_orcpt(_value(keyword, value))
        else:
            raise _unsupported(keyword)
    return RcptParams(notify=notify, orcpt=orcpt)


def _parse_notify(value: str) -> tuple[str, ...]:
    """``NEVER`` or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1)."""
    items = [item.upper() for item in value.split(",")]
    if items == ["NEVER"]:
        return ("NEVER",)
    if "NEVER" in items:
        raise _bad("NOTIFY=NEVER cannot be combined with other values (RFC 3461 4.1)")
    if len(set(items)) != len(items) or not set(items) <= set(NOTIFY_VALUES):
        raise _bad("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1)")
    return tuple(v for v in NOTIFY_VALUES if v in items)


def _parse_orcpt(value: str) -> tuple[str, str]:
    """``addr-type ";" xtext`` (RFC 3461 §4.2), or ``utf-8;`` as RFC 6533 §3 has it."""
    if len(value) > MAX_ORCPT:
        raise _bad("ORCPT longer than 500 characters (RFC 3461 4.2)")
    addr_type, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.fullmatch(addr_type):
        raise _bad("ORCPT must be addr-type;address (RFC 3461 4.2)")
    addr_type = addr_type.lower()
    try:
        decoded = utf8_addr_decode(address) if addr_type == "utf-8" else xtext_decode(address)
    except ValueError:
        raise _bad("ORCPT address is not validly encoded (RFC 3461 4.2, RFC 6533 3)") from None
    return addr_type, decoded


def xtext_decode(s: str) -> str:
    """Decode xtext (RFC 3461 §4): ``+XX`` with upper-case hex stands for an octet.

    The octets are read as UTF-8.  Raises ``ValueError`` on malformed input.
    """
    if not _XTEXT.fullmatch(s):
        raise ValueError(f"malformed xtext: {s!r}")
    octets = bytearray()
    pos = 0
    for m in _HEXCHAR.finditer(s):
        octets += s[pos : m.start()].encode("ascii")
        octets.append(int(m.group(1), 16))
        pos = m.end()
    octets += s[pos:].encode("ascii")
    return octets.decode("utf-8")  # UnicodeDecodeError is a ValueError


def xtext_encode(s: str) -> str:
    """Encode as xtext (RFC 3461 §4): octets outside ``!``..``~``, ``+`` and ``=`` as ``+XX``."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in s.encode("utf-8")
    )


def utf8_addr_decode(s: str) -> str:
    """Decode utf-8-addr-xtext or utf-8-addr-unitext (RFC 6533 §3).

    ``\\x{HEX}`` stands for one Unicode scalar value.  Raises ``ValueError``
    on malformed input.
    """
    if not _UTF8_ADDR.fullmatch(s):
        raise ValueError(f"malformed utf-8-addr-xtext: {s!r}")

    def char(m: re.Match[str]) -> str:
        point = int(m.group(1), 16)
        if point == 0 or 0xD800 <= point <= 0xDFFF or point > 0x10FFFF:
            raise ValueError(f"bad code point in {m.group()!r}")
        return chr(point)

    return _EMBEDDED.sub(char, s)


def utf8_addr_encode(s: str, *, ascii_only: bool = True) -> str:
    """Encode as utf-8-addr-xtext (``ascii_only``) or utf-8-addr-unitext (RFC 6533 §3)."""
    out = []
    for c in s:
        if ("\x21" <= c <= "\x7e" and c not in "+=\\") or (c >= "\x80" and not ascii_only):
            out.append(c)
        else:
            out.append(f"\\x{{{ord(c):X}}}")
    return "".join(out)
