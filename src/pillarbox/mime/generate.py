"""Writing messages: header encoding and folding, and the 8-bit → 7-bit downgrade.

- :func:`encode_words` turns Unicode into RFC 2047 encoded words where needed,
  each at most 75 characters (§2), split on character boundaries (§5 (3));
- :func:`fold` writes a field folded at whitespace to lines of at most 78
  characters where the text allows (RFC 5322 §2.1.1, §2.2.3);
- :func:`header_field` / :func:`address_field` combine the two, or keep UTF-8
  as is when the next hop accepts it (RFC 6532);
- :func:`to_7bit` rewrites a stored message for a next hop without 8BITMIME
  (RFC 6152 §3): every 8-bit or binary part is re-encoded as quoted-printable
  (text) or base64 (the rest), its Content-Transfer-Encoding field replaced,
  message/rfc822 parts converted inside (RFC 2046 §5.2.1 forbids encoding them),
  and 8-bit header text put into encoded words. Everything else is kept octet
  for octet, and the decoded content of every part equals the original's.
"""

from __future__ import annotations

import base64
import re

from .addresses import format_address
from .encodings import encode_base64, encode_qp
from .headers import unfold
from .parser import Part, parse

__all__ = [
    "address_field",
    "encode_words",
    "fold",
    "header_field",
    "is_7bit",
    "needs_smtputf8",
    "to_7bit",
]

_MAX_WORD = 75
_Q_SAFE = re.compile(r"[A-Za-z0-9!*+\-/ ]")


def _q(data: bytes) -> str:
    return "".join(chr(c) if _Q_SAFE.match(chr(c)) and c < 128 else "_" if c == 32 else f"={c:02X}"
                   for c in data).replace(" ", "_")


def _word(text: str, charset: str) -> str:
    data = text.encode(charset)
    b = base64.b64encode(data).decode("ascii")
    q = _q(data)
    enc, payload = ("Q", q) if len(q) <= len(b) else ("B", b)
    return f"=?{charset}?{enc}?{payload}?="


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or "=?" in word or "\r" in word or "\n" in word


def encode_words(text: str, charset: str = "utf-8") -> str:
    """``text`` with every run of non-ASCII words as encoded words (RFC 2047).

    ASCII words stay readable; a run of words needing encoding becomes encoded
    words separated by spaces, and whitespace next to plain words is kept, so
    that decoding (which drops whitespace between adjacent encoded words) gives
    back ``text`` exactly. A word that looks like an encoded word is encoded too.
    """
    if not _needs_encoding(text):
        return text
    tokens = re.split(r"([ \t]+)", text)  # words at even, whitespace at odd indexes
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if i % 2 == 0 and _needs_encoding(tokens[i]):
            j = i
            # extend the run over whitespace + word pairs that also need encoding
            while j + 2 < len(tokens) and _needs_encoding(tokens[j + 2]):
                j += 2
            out.append(" ".join(_split_words("".join(tokens[i : j + 1]), charset)))
            i = j + 1
        else:
            out.append(tokens[i])
            i += 1
    return "".join(out)


def _split_words(text: str, charset: str) -> list[str]:
    words: list[str] = []
    chunk = ""
    for ch in text:
        if len(_word(chunk + ch, charset)) > _MAX_WORD and chunk:
            words.append(_word(chunk, charset))
            chunk = ""
        chunk += ch
    if chunk:
        words.append(_word(chunk, charset))
    return words


def fold(name: str, value: str, width: int = 78) -> bytes:
    """``Name: value`` CRLF, folded before whitespace to keep lines within ``width``.

    A word longer than a line is left whole (RFC 5322 allows up to 998 octets).
    """
    line = name + ":"
    lines: list[str] = []
    for word in re.split(r"(?<=\S)(?=\s)", " " + value.strip()):
        if len(line) + len(word) > width and line.strip() and line != name + ":":
            lines.append(line)
            line = word if word[:1] in " \t" else " " + word
        else:
            line += word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def header_field(name: str, value: str, utf8: bool = False) -> bytes:
    """An unstructured field (Subject, Comments, ...), encoded unless ``utf8``."""
    return fold(name, value if utf8 else encode_words(value))


def address_field(name: str, addresses: list[tuple[str | None, str]], utf8: bool = False) -> bytes:
    """An address field from (display name, addr-spec) pairs; names encoded unless ``utf8``."""
    parts = []
    for display, spec in addresses:
        if display and not utf8 and not display.isascii():
            parts.append(f"{encode_words(display)} <{spec}>")
        else:
            parts.append(format_address(display, spec))
    return fold(name, ", ".join(parts))


# --- 8-bit to 7-bit ---------------------------------------------------------------------

_EIGHT_BIT = re.compile(rb"[\x80-\xff\x00]")
_LONG_LINE = re.compile(rb"[^\n]{999}")
_UNSTRUCTURED = {"subject", "comments", "content-description", "keywords"}
_ADDRESS = {"from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to",
            "resent-cc", "resent-bcc", "resent-sender"}


def is_7bit(data: bytes) -> bool:
    """True when ``data`` has no 8-bit octet, no NUL, no bare CR or LF and no line over 998."""
    if _EIGHT_BIT.search(data) or _LONG_LINE.search(data):
        return False
    return data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


def needs_smtputf8(message: bytes) -> bool:
    """True when an address field (of the message or a nested one) has a non-ASCII
    address, which no downgrade can carry (RFC 6531 §3.5)."""
    from .addresses import parse_mailbox_list

    root = parse(message)
    messages = [root] + [p.message for p in root.walk() if p.message is not None]
    for m in messages:
        for f in m.headers:
            if f.name.lower() in _ADDRESS and _EIGHT_BIT.search(f.value):
                for mb in parse_mailbox_list(unfold(f.value)):
                    if not (mb.mailbox or b"").isascii() or not (mb.domain or b"").isascii():
                        return True
    return False


def _fix_field(raw: bytes, name: str) -> bytes:
    """Re-encode a header field holding 8-bit octets as RFC 2047 words."""
    colon = raw.find(b":")
    value = unfold(raw[colon + 1 :]).strip()
    text = value.decode("utf-8", errors="replace")
    if name.lower() in _UNSTRUCTURED:
        encoded = encode_words(text)
    elif name.lower() in _ADDRESS:
        from .addresses import Group, parse_address_list

        items = []
        for item in parse_address_list(value):
            members = item.members if isinstance(item, Group) else [item]
            rendered = ", ".join(
                format_address(encode_words(m.display) if m.display else None, m.addr_spec)
                for m in members)
            if isinstance(item, Group):
                rendered = f"{encode_words(item.name.decode('utf-8', 'replace'))}: {rendered};"
            items.append(rendered)
        encoded = ", ".join(items)
    else:  # other structured fields: encode each word that carries 8-bit text
        encoded = re.sub(r"\S*[^\x00-\x7f]\S*", lambda m: encode_words(m.group()), text)
    return fold(raw[:colon].decode("latin-1"), encoded)


def _header_block(part: Part, new_cte: str | None) -> bytes:
    """The part's header block with 8-bit fields encoded and the CTE replaced."""
    buf = part.buf
    out: list[bytes] = []
    pos = part.start
    cte_done = new_cte is None
    for f in part.headers:
        out.append(bytes(buf[pos : f.offset]))
        pos = f.offset + len(f.raw)
        lname = f.name.lower()
        if lname == "content-transfer-encoding" and new_cte is not None:
            if not cte_done:
                out.append(b"Content-Transfer-Encoding: " + new_cte.encode() + b"\r\n")
                cte_done = True
            continue
        raw = f.raw if f.raw.endswith(b"\n") else f.raw + b"\r\n"
        out.append(_fix_field(raw, f.name) if _EIGHT_BIT.search(raw) else raw)
    rest = bytes(buf[pos : part.body_start])
    if not cte_done:
        out.append(b"Content-Transfer-Encoding: " + new_cte.encode() + b"\r\n")  # type: ignore[union-attr]
    if not rest.strip(b"\r\n") and rest or rest:
        out.append(rest)
    else:
        out.append(b"\r\n")
    return b"".join(out)


def _entity(part: Part) -> bytes:
    buf = part.buf
    if part.children:
        body: list[bytes] = []
        pos = part.body_start
        for child in part.children:
            body.append(bytes(buf[pos : child.start]))
            body.append(_entity(child))
            pos = child.end
        body.append(bytes(buf[pos : part.end]))
        cte = "7bit" if part.transfer_encoding in ("8bit", "binary") else None
        return _header_block(part, cte) + b"".join(body)
    if part.message is not None:
        cte = "7bit" if part.transfer_encoding in ("8bit", "binary") else None
        return _header_block(part, cte) + _entity(part.message)
    body_raw = part.body_bytes()
    if is_7bit(body_raw) and part.transfer_encoding in ("7bit", "8bit", "binary",
                                                         "quoted-printable", "base64"):
        cte = "7bit" if part.transfer_encoding in ("8bit", "binary") else None
        return _header_block(part, cte) + body_raw
    if part.transfer_encoding in ("quoted-printable", "base64"):
        # already encoded but with stray 8-bit octets: re-encode what it decodes to
        content = part.decoded()
    else:
        content = body_raw
    textual = part.type == "text" and len(_EIGHT_BIT.findall(content)) * 6 < len(content) + 1
    if textual:
        return _header_block(part, "quoted-printable") + encode_qp(content)
    return _header_block(part, "base64") + encode_base64(content)


def to_7bit(message: bytes) -> bytes:
    """The message made 7-bit (RFC 6152 §3), decoded content unchanged part by part."""
    if is_7bit(message):
        return message
    root = parse(message)
    out = _entity(root)
    return out + bytes(message[root.end :])
