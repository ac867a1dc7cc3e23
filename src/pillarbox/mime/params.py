"""MIME parameters: ``type/subtype; name=value`` (RFC 2045 §5.1) and RFC 2231.

:func:`parse_content_type` and :func:`parse_token_value` (Content-Disposition,
RFC 2183) give the parameters as written, quotes and comments removed;
:func:`join_rfc2231` joins RFC 2231 continuations (``name*0*=``, ``name*1=``)
and decodes their charsets (``utf-8'en'caf%C3%A9``) into a plain dict.
"""

from __future__ import annotations

import re
import urllib.parse

from .headers import decode_text, decode_words, text_codec

__all__ = [
    "join_rfc2231",
    "parse_content_type",
    "parse_parameters",
    "parse_token_value",
    "parse_transfer_encoding",
]


_TSPECIALS = b'()<>@,;:\\"/[]?='


def _skip_cfws(s: bytes, i: int) -> int:
    n = len(s)
    while i < n:
        c = s[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 40:  # "(" comment, nested
            depth = 0
            while i < n:
                c = s[i]
                if c == 92:
                    i += 2
                    continue
                if c == 40:
                    depth += 1
                elif c == 41:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _quoted(s: bytes, i: int) -> tuple[bytes, int]:
    """Read a quoted string starting at the opening quote; returns (content, end)."""
    out = bytearray()
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == 34:
            return bytes(out), i + 1
        if c == 92 and i + 1 < n:
            i += 1
            c = s[i]
        if c not in b"\r\n":
            out.append(c)
        i += 1
    return bytes(out), i


def _token(s: bytes, i: int, stop: bytes) -> tuple[bytes, int]:
    j = i
    n = len(s)
    while j < n and s[j] not in stop and s[j] > 32:
        j += 1
    return s[i:j], j


_PARAM_START = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+[ \t]*=")


def parse_parameters(s: bytes, i: int = 0) -> list[tuple[str, bytes]]:
    """Read ``; name=value`` pairs as written (quotes removed, names in their case).

    Broken parameters are skipped up to the next semicolon; a ``name=value``
    whose semicolon is missing is read all the same. RFC 2231 names
    (``name*``, ``name*0*``) are returned unchanged; see :func:`join_rfc2231`.
    """
    params: list[tuple[str, bytes]] = []
    n = len(s)
    while i < n and len(params) < 1000:
        i = _skip_cfws(s, i)
        if i >= n:
            break
        if s[i] == 59:  # ";"
            i = _skip_cfws(s, i + 1)
        elif not _PARAM_START.match(s, i):
            nxt = s.find(b";", i)
            if nxt < 0:
                break
            i = _skip_cfws(s, nxt + 1)
        # else a parameter whose ";" was lost (often at a fold): read it all the same
        name, i = _token(s, i, _TSPECIALS.replace(b"*", b""))
        i = _skip_cfws(s, i)
        if not name or i >= n or s[i] != 61:  # "="
            continue
        i = _skip_cfws(s, i + 1)
        if i < n and s[i] == 34:
            value, i = _quoted(s, i)
        else:
            value, i = _token(s, i, b";")
            value = value.rstrip()
        params.append((name.decode("latin-1"), value))
    return params


_SECTION = re.compile(r"^(.*?)\*(\d+)(\*?)$")


def join_rfc2231(raw: list[tuple[str, bytes]]) -> dict[str, str]:
    """Join RFC 2231 continuations and decode charsets into a name→value dict.

    ``name*0*=utf-8''a%20b; name*1=c`` and ``name*=utf-8''a%20bc`` both give
    ``name`` = ``"a bc"``. Plain values are decoded as header text (encoded words
    included, as many mailers put RFC 2047 words in file names).
    """
    result: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[bool, bytes]]] = {}
    for name, value in raw:
        name = name.lower()
        m = _SECTION.match(name)
        if m:
            sections.setdefault(m.group(1), {}).setdefault(int(m.group(2)), (bool(m.group(3)), value))
        elif name.endswith("*"):
            result[name[:-1]] = _decode_extended(value, first=True, charset=None)[0]
        elif name not in result:
            result[name] = decode_words(value)
    for name, parts in sections.items():
        charset: str | None = None
        chunks: list[bytes] = []
        for idx in range(len(parts)):
            if idx not in parts:
                break  # RFC 2231 §3: sections must be consecutive
            extended, value = parts[idx]
            if extended:
                _, charset, data = _decode_extended_bytes(value, first=idx == 0, charset=charset)
                chunks.append(data)
            else:
                chunks.append(value)
        joined = b"".join(chunks)
        result[name] = _decode_charset(joined, charset)
    return result


def _decode_charset(data: bytes, charset: str | None) -> str:
    if charset:
        codec = text_codec(charset)
        if codec:
            return data.decode(codec, errors="replace")
    return decode_text(data)


def _decode_extended_bytes(
    value: bytes, first: bool, charset: str | None
) -> tuple[str, str | None, bytes]:
    if first:
        parts = value.split(b"'", 2)
        if len(parts) == 3:
            charset = parts[0].decode("latin-1") or None
            value = parts[2]
    data = urllib.parse.unquote_to_bytes(value)
    return "", charset, data


def _decode_extended(value: bytes, first: bool, charset: str | None) -> tuple[str, str | None]:
    _, charset, data = _decode_extended_bytes(value, first, charset)
    return _decode_charset(data, charset), charset


def parse_content_type(value: bytes | None) -> tuple[str, str, list[tuple[str, bytes]]] | None:
    """``type/subtype; params`` → (type, subtype, raw params), all as written.

    Returns None when the value has no valid ``type/subtype`` (RFC 2045 §5.2 then
    says the default applies).
    """
    if value is None:
        return None
    i = _skip_cfws(value, 0)
    typ, i = _token(value, i, _TSPECIALS)
    i = _skip_cfws(value, i)
    if not typ or i >= len(value) or value[i] != 47:  # "/"
        return None
    i = _skip_cfws(value, i + 1)
    sub, i = _token(value, i, _TSPECIALS)
    if not sub:
        return None
    return typ.decode("latin-1"), sub.decode("latin-1"), parse_parameters(value, i)


def parse_token_value(value: bytes | None) -> tuple[str, list[tuple[str, bytes]]] | None:
    """``token; params`` as in Content-Disposition (RFC 2183 §2), token as written."""
    if value is None:
        return None
    i = _skip_cfws(value, 0)
    tok, i = _token(value, i, _TSPECIALS)
    if not tok:
        return None
    return tok.decode("latin-1"), parse_parameters(value, i)


def parse_transfer_encoding(value: bytes | None, strict: bool = True) -> bytes | None:
    """The mechanism of a Content-Transfer-Encoding field (RFC 2045 §6.1), as written.

    The field is one token, comments and whitespace around it allowed. None when
    it is absent, empty or not a single token (``base 64``, ``base64;``,
    ``"base64"``): such a field is ignored and the default 7bit applies, as
    for an invalid Content-Type (§5.2). An unknown but well-formed token such
    as ``x-uuencode`` is kept: §6.4 wants it reported, and the body left as is.

    ``strict=False`` takes the first token whatever follows (``base64;`` is
    base64): what to decode with, where the sender's intent is all that counts.
    """
    if value is None:
        return None
    i = _skip_cfws(value, 0)
    tok, i = _token(value, i, _TSPECIALS)
    if not tok or (strict and _skip_cfws(value, i) < len(value)) or 127 in tok:
        return None
    return tok
