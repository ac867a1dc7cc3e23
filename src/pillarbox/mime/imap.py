"""IMAP renderings of a parsed message: ENVELOPE, BODYSTRUCTURE, BODY[section], BINARY.

RFC 9051 §7.5.2 (identical to RFC 3501 for these items) and RFC 3516. Dovecot's
output is the reference, byte for byte (see tests/mime/test_dovecot.py); the
quoting rules follow it: a string is quoted unless it holds CR, LF, 8-bit
octets or more than a few quoted-specials, then it is a literal; "human" text
(subjects, display names, MIME field values) has its whitespace runs collapsed,
CR/LF removed and NUL replaced by 0x80.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .addresses import Group, Mailbox, parse_address_list
from .headers import MAX_FIELDS, MAX_HEADER_PARSE, HeaderField, unfold
from .params import parse_token_value
from .parser import Part

__all__ = [
    "SectionError",
    "bodystructure",
    "bodystructures",
    "envelope",
    "fetch_binary",
    "fetch_section",
    "header_fields",
    "human_string",
    "nstring",
    "resolve_part",
]


class SectionError(ValueError):
    """The section specifier does not name a part of this message (the client's fault)."""


# --- strings -----------------------------------------------------------------------

_MAX_ESCAPES = 4
_PLAIN = re.compile(rb'[^\r\n\x00"\\\x80-\xff]*\Z')   # quoted as it is


def nstring(value: bytes | None) -> bytes:
    """NIL, a quoted string, or a literal when quoting cannot carry the octets."""
    if value is None:
        return b"NIL"
    if _PLAIN.match(value):    # most values: one test instead of six
        return b'"' + value + b'"'
    if b"\r" in value or b"\n" in value or b"\x00" in value or not value.isascii() or (
        value.count(b'"') + value.count(b"\\") > _MAX_ESCAPES
    ):
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_HUMAN_WS = re.compile(rb"[ \t]+")


def human_string(value: bytes | None) -> bytes:
    """Text for people: whitespace runs collapsed, line breaks removed, NUL → 0x80.

    Such a value is sent as a quoted string when it needs no change and has no
    quoted-specials, else as a literal.
    """
    if value is None:
        return b"NIL"
    if not (re.search(rb"[\x00\t\r\n\"\\\x80-\xff]|  |^ | $", value)):
        return b'"' + value + b'"'
    v = value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"\x80")
    v = _HUMAN_WS.sub(b" ", v).strip(b" ")
    if not v:
        return b'""'
    return b"{%d}\r\n%s" % (len(v), v)


def _list(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


# --- ENVELOPE ----------------------------------------------------------------------

_ENVELOPE_FIELDS = ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc",
                    "in-reply-to", "message-id")


_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")


def _addresses(value: bytes | None,
               parse: Callable[[bytes], list[Mailbox | Group]] = parse_address_list) -> bytes:
    if value is None:
        return b"NIL"
    items = parse(value)
    out: list[bytes] = []

    def mailbox(mb: Mailbox) -> bytes:
        return b"(" + b" ".join([
            human_string(mb.name),
            nstring(mb.route),
            nstring(mb.mailbox if mb.mailbox is not None else b"MISSING_MAILBOX"),
            nstring(b"SYNTAX_ERROR" if not mb.valid else
                    mb.domain if mb.domain is not None else b"MISSING_DOMAIN"),
        ]) + b")"

    for item in items:
        if isinstance(item, Group):
            out.append(b"(NIL NIL " + nstring(item.name) + b" NIL)")
            out.extend(mailbox(m) for m in item.members)
            out.append(b"(NIL NIL NIL NIL)")
        else:
            out.append(mailbox(item))
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(part: Part,
             parse: Callable[[bytes], list[Mailbox | Group]] = parse_address_list) -> bytes:
    """The ENVELOPE of a message (the root part, or ``part.message`` of a message/rfc822).

    ``parse`` parses an address list; the cache passes a memoizing one, since it
    reads From, To and Cc again for SORT."""
    found: dict[str, bytes] = {}
    for f in part.headers:
        key = f.name.lower()
        if key in _ADDRESS_FIELDS and key in found:
            # a repeated address field adds its addresses (as Dovecot does)
            found[key] += b", " + unfold(f.value)
        elif key == "subject":
            # kept folded: human_string drops the line breaks and, having changed
            # the text, sends a literal, as Dovecot does
            found[key] = f.value
        elif key in _ENVELOPE_FIELDS:
            found[key] = unfold(f.value)  # otherwise the last occurrence wins, as in Dovecot
    frm = _addresses(found.get("from"), parse)
    items = [
        nstring(found.get("date")),
        human_string(found.get("subject")),
        frm,
        # RFC 9051 §7.5.2: absent "or present but empty" Sender and Reply-To
        # take the From value (Dovecot does the same).
        _addresses(found["sender"], parse) if found.get("sender", b"").strip() else frm,
        _addresses(found["reply-to"], parse) if found.get("reply-to", b"").strip() else frm,
        _addresses(found.get("to"), parse),
        _addresses(found.get("cc"), parse),
        _addresses(found.get("bcc"), parse),
        nstring(found.get("in-reply-to")),
        nstring(found.get("message-id")),
    ]
    return _list(items)


# --- BODYSTRUCTURE -----------------------------------------------------------------

def _first(part: Part, name: str) -> HeaderField | None:
    return part.headers.first(name)


def _field_string(part: Part, name: str) -> bytes:
    f = _first(part, name)
    return b"NIL" if f is None else nstring(unfold(f.value))


def _params(raw: list[tuple[str, bytes]]) -> list[bytes]:
    out: list[bytes] = []
    for name, value in _rfc2231_merge(raw):
        out += [nstring(name.encode("latin-1")), nstring(value)]
    return out


_RFC2231_NAME = re.compile(r"^([^*]*)\*(\d*)(\*?)$")


def _rfc2231_merge(raw: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Join RFC 2231 sections (``name*0``, ``name*1*``) into one parameter per name,
    keeping the charset'lang' prefix and the %-escapes of extended values as written
    (the client decodes them, RFC 3501 §7.4.2).

    As Dovecot sends them: plain parameters first, in the order written, then the
    RFC 2231 ones (``name*`` included) sorted by name; a name whose sections do not
    run 0, 1, 2 … without a gap is sent section by section, unjoined. When extended
    and plain sections are mixed, the plain ones are %-escaped into the extended
    value (RFC 2231 §4.1), which gains an empty ``''`` prefix if its first section
    had none.
    """
    plain: list[tuple[str, bytes]] = []
    sections: list[tuple[str, int, bool, bytes]] = []
    for name, value in raw:
        m = _RFC2231_NAME.match(name) if "*" in name else None
        if m is None:
            plain.append((name, value))
        else:
            sections.append((m.group(1), int(m.group(2) or 0), bool(m.group(3)) or not m.group(2),
                             value))
    sections.sort(key=lambda s: (s[0], s[1]))
    i = 0
    while i < len(sections):
        base = sections[i][0].lower()
        j = i
        while j < len(sections) and sections[j][0].lower() == base:
            j += 1
        group = sections[i:j]
        i = j
        if any(idx != k for k, (_, idx, _, _) in enumerate(group)):
            plain += [(f"{name}*{idx}*" if ext else f"{name}*{idx}", value)
                      for name, idx, ext, value in group]
            continue
        extended = any(ext for _, _, ext, _ in group)
        chunks = [b"''"] if extended and not group[0][2] else []
        chunks += [value.replace(b"%", b"%25") if extended and not ext else value
                   for _, _, ext, value in group]
        plain.append((group[0][0] + ("*" if extended else ""), b"".join(chunks)))
    return plain


def _extension(part: Part, multipart: bool) -> list[bytes]:
    out: list[bytes] = []
    if not multipart:
        out.append(_field_string(part, "Content-MD5"))
    disp = _first(part, "Content-Disposition")
    parsed = parse_token_value(unfold(disp.value)) if disp else None
    if parsed is None:
        out.append(b"NIL")
    else:
        dparams = _params(parsed[1])
        out.append(b"(" + nstring(parsed[0].encode("latin-1")) + b" "
                   + (_list(dparams) if dparams else b"NIL") + b")")
    lang = _first(part, "Content-Language")
    tags = [t for t in re.split(rb"[\s,]+", unfold(lang.value)) if t] if lang else []
    out.append(_list([human_string(t) for t in tags]) if tags else b"NIL")
    out.append(_field_string(part, "Content-Location"))
    return out


_EMPTY_TEXT = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
_EMPTY_ENVELOPE = b"(" + b" ".join([b"NIL"] * 10) + b")"


def _empty_message(part: Part) -> bool:
    """A message/rfc822 part with nothing inside (no octets, or nested too deep):
    RFC 9051's grammar still wants an envelope, a body and a line count after its
    fields, or a client's parser loses its place; Dovecot sends an empty envelope
    and an empty text part, and so do we."""
    return part.message is None and part.type == "message" and part.subtype == "rfc822"


def _type_fields(part: Part) -> tuple[bytes, bytes, list[bytes]]:
    typ = (part.type_raw or part.type).encode("latin-1")
    sub = (part.subtype_raw or part.subtype).encode("latin-1")
    if part.subtype == "rfc822" and (part.message is not None or part.type == "message"):
        typ, sub = b"message", b"rfc822"  # in lower case whatever the spelling, as Dovecot
    params = _params(part.params_raw)
    if part.type == "text" and not any(n.lower() == "charset" for n, _ in part.params_raw):
        params += [b'"charset"', b'"us-ascii"']
    return nstring(typ), nstring(sub), params


_PLAIN_FIELDS = ("Content-ID", "Content-Description", "Content-MD5", "Content-Disposition",
                 "Content-Language", "Content-Location")


def _plain_7bit(part: Part) -> bool:
    """A message that is one text/plain, us-ascii, 7bit part with no other MIME fields.

    Such a message has one BODYSTRUCTURE whatever the spelling of its fields
    (``TEXT/Plain; CHARSET=US-ASCII``, ``7BIT``): the canonical one, in lower
    case, as Dovecot sends it. All of it is case-insensitive (RFC 2045 §5.1, §6.1).
    """
    if (part.depth != 0 or part.content_type != "text/plain"
            or part.transfer_encoding_raw.lower() != b"7bit"):
        return False
    params = part.params_raw
    if params and not (len(params) == 1 and params[0][0].lower() == "charset"
                       and params[0][1].lower() == b"us-ascii"):
        return False
    return not any(part.headers.first(name) for name in _PLAIN_FIELDS)


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of ``part`` and everything below it."""
    if _plain_7bit(part):
        return (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d%s)'
                % (part.body_size, part.lines, b" NIL NIL NIL NIL" if extended else b""))
    if part.is_multipart:
        if part.children:
            inner = b"".join(bodystructure(c, extended) for c in part.children)
        else:  # RFC 9051 requires a part: say it is an empty text one, as Dovecot does
            inner = _EMPTY_TEXT + (b" NIL NIL NIL NIL)" if extended else b")")
        items = [inner, nstring(part.subtype_raw.encode("latin-1"))]
        if extended:
            params = _params(part.params_raw)
            items.append(_list(params) if params else b"NIL")
            items += _extension(part, True)
        return b"(" + b" ".join(items) + b")"
    typ, sub, params = _type_fields(part)
    enc = nstring(part.transfer_encoding_raw)
    items = [typ, sub, _list(params) if params else b"NIL",
             _field_string(part, "Content-ID"), _field_string(part, "Content-Description"),
             enc, str(part.body_size).encode()]
    if part.message is not None:
        items += [envelope(part.message), bodystructure(part.message, extended),
                  str(part.lines).encode()]
    elif _empty_message(part):
        items += [_EMPTY_ENVELOPE, _EMPTY_TEXT + (b" NIL NIL NIL NIL)" if extended else b")"),
                  str(part.lines).encode()]
    elif part.type == "text":
        items.append(str(part.lines).encode())
    if extended:
        items += _extension(part, False)
    return b"(" + b" ".join(items) + b")"


def bodystructures(part: Part) -> tuple[bytes, bytes]:
    """``(BODYSTRUCTURE, BODY)`` of ``part`` in one walk: the same octets as
    :func:`bodystructure` with and without ``extended``, each field read and
    each enclosed message's ENVELOPE rendered once for both."""
    if _plain_7bit(part):
        base = (b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d'
                % (part.body_size, part.lines))
        return base + b" NIL NIL NIL NIL)", base + b")"
    if part.is_multipart:
        if part.children:
            pairs = [bodystructures(c) for c in part.children]
            inner_ext = b"".join(p[0] for p in pairs)
            inner = b"".join(p[1] for p in pairs)
        else:
            inner_ext, inner = _EMPTY_TEXT + b" NIL NIL NIL NIL)", _EMPTY_TEXT + b")"
        sub = nstring(part.subtype_raw.encode("latin-1"))
        params = _params(part.params_raw)
        ext = [inner_ext, sub, _list(params) if params else b"NIL", *_extension(part, True)]
        return b"(" + b" ".join(ext) + b")", b"(" + inner + b" " + sub + b")"
    typ, sub, params = _type_fields(part)
    items = [typ, sub, _list(params) if params else b"NIL",
             _field_string(part, "Content-ID"), _field_string(part, "Content-Description"),
             nstring(part.transfer_encoding_raw), str(part.body_size).encode()]
    basic = items
    if part.message is not None:
        env = envelope(part.message)
        inner_ext, inner = bodystructures(part.message)
        lines = str(part.lines).encode()
        basic = items + [env, inner, lines]
        items = items + [env, inner_ext, lines]
    elif _empty_message(part):
        lines = str(part.lines).encode()
        basic = items + [_EMPTY_ENVELOPE, _EMPTY_TEXT + b")", lines]
        items = items + [_EMPTY_ENVELOPE, _EMPTY_TEXT + b" NIL NIL NIL NIL)", lines]
    elif part.type == "text":
        items = basic = items + [str(part.lines).encode()]
    return (b"(" + b" ".join(items + _extension(part, False)) + b")",
            b"(" + b" ".join(basic) + b")")


# --- BODY[section] and BINARY[section] ------------------------------------------------

def resolve_part(root: Part, path: list[int]) -> Part:
    """The part named by a section-part such as ``[1, 2]`` (RFC 9051 §6.4.5)."""
    node = root
    for depth, n in enumerate(path):
        if n < 1:
            raise SectionError("part numbers start at 1")
        if depth > 0 and node.message is not None:
            node = node.message
        if node.is_multipart:
            if n > len(node.children):  # also: a multipart that had no boundary
                raise SectionError("no such part")
            node = node.children[n - 1]
        elif n != 1:
            raise SectionError("no such part")
    return node


_SPEC = re.compile(r"^((?:\d+\.)*\d+)?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
                   r"(?:\s*\(([^)]*)\))?$", re.IGNORECASE)


def _header_fields(part: Part, names: list[str], negate: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out = []
    for f in part.headers:
        if (f.name.lower() in wanted) != negate:
            raw = f.raw
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    return b"".join(out) + b"\r\n"


_FIELDS_RE: dict[tuple[str, ...], re.Pattern[bytes]] = {}
_FIELDS_BY_NAMES: dict[tuple[str, ...], re.Pattern[bytes]] = {}
_FIELD_NAME = re.compile(r"[!-9;-~]+")    # printable ASCII but ":" (RFC 5322 §3.6.8)


def header_fields(message: bytes, header_end: int, names: tuple[str, ...] | list[str],
                  ) -> bytes | None:
    """``BODY[HEADER.FIELDS (names)]`` of a whole message whose header block ends
    at ``header_end``, found by one regex search instead of splitting every field;
    None when only the full split can answer the same (non-ASCII names, a block
    past the parse limits), for :func:`fetch_section` to do it.

    The same octets as :func:`_header_fields` on the parsed block: every line
    that does not start with whitespace starts a field, its name ends at the
    first colon (whitespace before it removed), continuation lines belong to it.
    """
    if header_end > MAX_HEADER_PARSE:
        return None
    # A FETCH asks for the same names of every message: the pattern by the
    # names as given first, without sorting and checking them again.
    pattern = _FIELDS_BY_NAMES.get(names) if isinstance(names, tuple) else None
    if pattern is None:
        if not all(_FIELD_NAME.fullmatch(n) for n in names):
            return None
        key = tuple(sorted({n.lower() for n in names}))
        pattern = _FIELDS_RE.get(key)
        if pattern is None:
            alternatives = b"|".join(re.escape(n.encode("ascii")) for n in key)
            pattern = re.compile(rb"^(?:" + alternatives + rb")[ \t]*:[^\n]*(?:\n|\Z)"
                                 rb"(?:[ \t][^\n]*(?:\n|\Z))*", re.MULTILINE)
            if len(_FIELDS_RE) > 256:
                _FIELDS_RE.clear()
            _FIELDS_RE[key] = pattern
        if isinstance(names, tuple):
            if len(_FIELDS_BY_NAMES) > 1024:
                _FIELDS_BY_NAMES.clear()
            _FIELDS_BY_NAMES[names] = pattern
    block = message[:header_end]
    if block.count(b"\n") >= MAX_FIELDS:
        return None
    out = []
    # Searched in a lower-cased copy (same offsets: bytes.lower changes ASCII
    # letters only), which is faster than a case-insensitive pattern.
    for m in pattern.finditer(block.lower()):
        raw = block[m.start():m.end()]
        out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    return b"".join(out) + b"\r\n"


def fetch_section(root: Part, spec: str) -> bytes:
    """The octets of ``BODY[spec]``: ``""``, ``1.2``, ``HEADER``, ``1.MIME``,
    ``2.HEADER.FIELDS (From To)``, ``TEXT``, ...
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise SectionError(f"bad section {spec!r}")
    numbers, text, names = m.groups()
    path = [int(x) for x in numbers.split(".")] if numbers else []
    try:
        part = resolve_part(root, path) if path else root
    except SectionError:
        return b""  # a part that does not exist is empty (RFC 9051 §6.4.5)
    text = (text or "").upper()
    if text == "MIME":
        if not path:
            raise SectionError("MIME needs a part number")
        return part.header_bytes()
    if text:
        msg = part.message if path else part
        if msg is None and _empty_message(part):
            return b""   # an empty message: no header, no text
        if msg is None:
            raise SectionError("not a message/rfc822 part")
        if text == "HEADER":
            return msg.header_bytes()
        if text == "TEXT":
            return msg.body_bytes()
        field_names = (names or "").replace('"', " ").split()
        return _header_fields(msg, field_names, text.endswith(".NOT"))
    if not path:
        return root.raw()
    return part.body_bytes()


def fetch_binary(root: Part, path: list[int]) -> bytes:
    """The decoded content of ``BINARY[path]`` (RFC 3516); ``[]`` is the whole message."""
    if not path:
        return root.raw()
    part = resolve_part(root, path)
    if part.is_multipart or part.message is not None:
        return part.body_bytes()
    return part.decoded()
