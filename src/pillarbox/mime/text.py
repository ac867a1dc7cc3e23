"""The text of a message, for SEARCH and spam checks.

Every text part (text/plain, text/html and other text/* that are not
attachments), and the text of encapsulated messages, decoded first by its
transfer encoding and then by its charset, with fallbacks: a charset Python
does not know is tried as UTF-8, then Windows-1252, then Latin-1, which always
succeeds; invalid sequences are replaced, never raised. HTML is reduced to
text: scripts and styles dropped, block elements become line breaks, character
references are resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

from .headers import text_codec
from .parser import Part

__all__ = ["decode_charset", "header_text", "html_to_text", "message_text", "text_parts"]

MAX_TEXT_PART = 16 << 20  # octets of one part read for search

_ALIASES = {"us-ascii": "utf-8", "ascii": "utf-8", "unknown-8bit": "utf-8", "x-unknown": "utf-8",
            "iso-8859-1": "windows-1252", "latin1": "windows-1252", "ks_c_5601-1987": "cp949",
            "gb2312": "gb18030", "gbk": "gb18030", "x-sjis": "shift_jis"}


def decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes to text by ``charset`` with sane fallbacks; never raises.

    US-ASCII labels are read as UTF-8 (mislabelled 8-bit text is common) and
    ISO-8859-1 as its superset Windows-1252, as browsers do (WHATWG Encoding).
    """
    name = (charset or "utf-8").strip().strip('"').lower()
    name = _ALIASES.get(name, name)
    codec = text_codec(name)
    if codec:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            if codec not in ("utf-8",):
                return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("windows-1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
          "blockquote", "pre", "hr", "section", "article", "header", "footer", "dd", "dt", "title"}
_SKIP = {"script", "style", "head", "noscript", "template"}


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag in _BLOCK:
            self.out.append("\n")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and not self.skip:
                self.out.append(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK:
            self.out.append("\n")
        elif tag == "td":
            self.out.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    """Visible text of an HTML document, whitespace normalised line by line."""
    p = _TextOfHtml()
    try:
        p.feed(html)
        p.close()
    except Exception:  # noqa: BLE001 - html.parser is lenient; never fail a search on markup
        return re.sub(r"<[^>]*>", " ", html)
    text = "".join(p.out)
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_attachment(part: Part) -> bool:
    d = part.disposition
    return d is not None and d[0].lower() == "attachment"


def text_parts(root: Part) -> Iterator[tuple[Part, str]]:
    """(part, text) for every text part, encapsulated messages included."""
    for part in root.walk():
        if part.children or part.message is not None or part.type != "text" or _is_attachment(part):
            continue
        if part.body_size > MAX_TEXT_PART:
            part_data = part.buf[part.body_start : part.body_start + MAX_TEXT_PART]
            from .encodings import decode_transfer

            data = decode_transfer(bytes(part_data), part.transfer_encoding)
        else:
            data = part.decoded()
        text = decode_charset(data, part.charset)
        if part.subtype == "html":
            text = html_to_text(text)
        yield part, text


def header_text(root: Part, names: tuple[str, ...] = ("subject", "from", "to", "cc")) -> str:
    """Decoded values of the named fields of the message and of its nested messages."""
    messages = [root] + [p.message for p in root.walk() if p.message is not None]
    return "\n".join(f.text for m in messages for f in m.headers if f.name.lower() in names)


def message_text(root: Part) -> str:
    """All the text of a message, parts separated by blank lines."""
    return "\n\n".join(t for _, t in text_parts(root) if t)
