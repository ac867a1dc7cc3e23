"""The DKIM-Signature header field and the key record (RFC 6376 §3.2, §3.5, §3.6.1).

Both are tag-value lists (§3.2).  :func:`parse_tag_list` reads one on raw
bytes and keeps where each value lies, because the verifier must hash the
signature field with the value of its ``b=`` tag deleted (§3.5, §3.7).

:meth:`DKIMSignature.parse` applies every check of §3.5 and §6.1.1 that needs
no clock and no DNS (required tags, ``v=1``, a known ``a=`` and ``c=``,
``h=`` naming From, ``i=`` within ``d=``, ``x=`` not before ``t=``, base64
of ``b=``/``bh=``); :meth:`KeyRecord.parse` those of §3.6.1 and loads the
public key (RSA, RFC 8017, or Ed25519, RFC 8463).  A failure raises
:class:`SignatureSyntaxError` or :class:`KeyRecordError`, whose text says
what is wrong with whose record: the verifier reports it as ``permerror``.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from pillarbox.policy.dkim.canon import Canon

__all__ = [
    "ALGORITHMS",
    "DKIMSignature",
    "KeyRecord",
    "KeyRecordError",
    "PublicKey",
    "SignatureSyntaxError",
    "TagListError",
    "checked_domain",
    "parse_key_record",
    "parse_tag_list",
]

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

#: ``a=`` values (§3.3, RFC 8463 §3) and their key type (``k=``) and hash (``h=``).
ALGORITHMS: dict[str, tuple[str, str]] = {
    "rsa-sha256": ("rsa", "sha256"),
    "rsa-sha1": ("rsa", "sha1"),
    "ed25519-sha256": ("ed25519", "sha256"),
}

_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*\Z")
# Controls other than FWS may not appear in a tag-list (VALCHAR, §3.2).
_BAD_OCTET = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FWS = b" \t\r\n"
# sub-domain (RFC 5321 §4.1.2), also allowing "_" as selectors and some domains use.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
# The octets of a header field name (RFC 5322 §3.6.8): deleted, nothing may remain.
_FTEXT = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))
_TAG_NAMES: dict[bytes, str] = {}  # tag names seen, checked and decoded once
_CANONS = {f"{h.value}/{b.value}".encode(): (h, b) for h in Canon for b in Canon}
_ALGORITHM_NAMES = {name.encode(): name for name in ALGORITHMS}


class TagListError(ValueError):
    """A tag-value list that does not follow RFC 6376 §3.2."""


class SignatureSyntaxError(ValueError):
    """A DKIM-Signature field that is malformed or breaks a rule of §3.5 (the signer's fault)."""


class KeyRecordError(ValueError):
    """A key record that is malformed or unusable (§3.6.1; the key publisher's fault)."""


def parse_tag_list(data: bytes) -> dict[str, tuple[bytes, int, int]]:
    """Parse a tag-value list: ``{name: (value, start, end)}`` (§3.2).

    ``value`` is stripped of the whitespace around it; ``data[start:end]`` is
    the whole value region, from just after ``=`` to just before the next
    ``;`` (or the end), surrounding whitespace included, which is what
    "deleting the value of the b= tag" removes (§3.5).  A duplicate tag, a
    spec without ``=``, an empty spec between semicolons and a bad tag name
    are errors; a trailing ``;`` is allowed.
    """
    if _BAD_OCTET.search(data):
        raise TagListError("control character in tag list")
    tags: dict[str, tuple[bytes, int, int]] = {}
    specs = data.split(b";")
    last = len(specs) - 1
    pos = 0
    for n, spec in enumerate(specs):
        raw_name, eq, value = spec.partition(b"=")
        if not eq:
            if n == last and not spec.strip(_FWS):
                break  # the end of the list, maybe after a trailing ";"
            raise TagListError(f"tag without '=': {_show(spec.strip(_FWS))}")
        name_b = raw_name.strip(_FWS)
        name = _TAG_NAMES.get(name_b)
        if name is None:
            if not _TAG_NAME.match(name_b):
                raise TagListError(f"bad tag name {_show(name_b)}")
            name = name_b.decode("ascii")
            if len(_TAG_NAMES) < 256:
                _TAG_NAMES[name_b] = name
        if name in tags:
            raise TagListError(f"tag {name}= appears twice")
        end = pos + len(spec)
        tags[name] = (value.strip(_FWS), end - len(value), end)
        pos = end + 1
    return tags


def _show(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _text(tag: str, value: bytes, error: type[ValueError]) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{tag}= is not UTF-8") from None


def _base64(tag: str, value: bytes, error: type[ValueError]) -> tuple[bytes, bytes]:
    """A base64 value, FWS allowed anywhere in it (§2.4, §3.5 ``b=``): (decoded, compact)."""
    compact = value.translate(None, _FWS)
    if len(compact) % 4:
        raise error(f"{tag}= is not valid base64")
    try:
        return binascii.a2b_base64(compact, strict_mode=True), compact
    except binascii.Error:
        raise error(f"{tag}= is not valid base64") from None


@lru_cache(maxsize=4096)
def _domain_name(name: str) -> str | None:
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name.lower()


def checked_domain(tag: str, name: str, error: type[ValueError] = ValueError) -> str:
    """A domain name (or selector) in ASCII, lowercased; U-labels become A-labels (RFC 8616 §4)."""
    checked = _domain_name(name)
    if checked is None:
        raise error(f"{tag}={name!r} is not a valid domain name")
    return checked


def _number(tag: str, value: bytes, error: type[ValueError], digits: int = 76) -> int:
    if not value.isdigit() or len(value) > digits:
        raise error(f"{tag}={_show(value)} is not a decimal number")
    return int(value)


@dataclass(frozen=True, slots=True)
class DKIMSignature:
    """The tags of one DKIM-Signature field (RFC 6376 §3.5)."""

    algorithm: str               # a=
    signature: bytes             # b=, decoded
    b_text: str                  # b= as written, whitespace removed (for header.b)
    body_hash: bytes             # bh=, decoded
    header_canon: Canon          # c= before the slash
    body_canon: Canon            # c= after it
    domain: str                  # d=, lowercased, A-labels
    signed_headers: tuple[bytes, ...]  # h=, lowercased, in order
    identity: str                # i=, default "@" d=
    body_length: int | None      # l=
    selector: str                # s=
    timestamp: int | None        # t=
    expiration: int | None       # x=
    b_span: tuple[int, int]      # where b='s value lies in the field value

    @property
    def key_name(self) -> str:
        """The DNS name of the key record: ``s._domainkey.d`` (§3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def identity_domain(self) -> str:
        return self.identity.rpartition("@")[2].lower()

    @classmethod
    def parse(cls, value: bytes) -> DKIMSignature:
        """Parse a DKIM-Signature field value (the octets after the colon)."""
        E = SignatureSyntaxError
        try:
            tags = parse_tag_list(value)
        except TagListError as exc:
            raise E(str(exc)) from None
        for required in ("v", "a", "b", "bh", "d", "h", "s"):
            if required not in tags:
                raise E(f"required tag {required}= missing")
        if tags["v"][0] != b"1":
            raise E(f"v={_show(tags['v'][0])}, only version 1 is defined")
        algorithm = _ALGORITHM_NAMES.get(tags["a"][0].lower())
        if algorithm is None:
            raise E(f"unknown algorithm a={_show(tags['a'][0])}")
        b_raw, b_start, b_end = tags["b"]
        signature, b_text = _base64("b", b_raw, E)
        if not signature:
            raise E("b= is empty")
        body_hash, _ = _base64("bh", tags["bh"][0], E)
        c = tags.get("c")
        canons = _CANONS.get(c[0].lower()) if c is not None else (Canon.SIMPLE, Canon.SIMPLE)
        if canons is None:
            assert c is not None
            canons = _canon(_text("c", c[0], E))
        domain = checked_domain("d", _text("d", tags["d"][0], E), E)
        selector = checked_domain("s", _text("s", tags["s"][0], E), E)
        h = tags["h"][0].lower()
        names = h.split(b":")
        if h.translate(None, b":").translate(None, _FTEXT):  # FWS around the colons, or junk
            names = [n.strip(_FWS) for n in names]
            if b"".join(names).translate(None, _FTEXT):
                raise E(f"h={_show(tags['h'][0])} is not a list of header field names")
        if b"" in names:
            raise E(f"h={_show(tags['h'][0])} has an empty header field name")
        if b"from" not in names:
            raise E("h= does not include From, which must be signed")
        if "i" in tags:
            local, at, i_domain = _text("i", tags["i"][0], E).rpartition("@")
            if not at:
                raise E(f"i={_show(tags['i'][0])} has no '@'")
            i_domain = checked_domain("i", i_domain, E)
            if i_domain != domain and not i_domain.endswith("." + domain):
                raise E(f"i= domain {i_domain} is not d={domain} nor a subdomain of it")
            identity = f"{local}@{i_domain}"
        else:
            identity = "@" + domain
        length = _number("l", tags["l"][0], E) if "l" in tags else None
        methods = tags["q"][0].lower().split(b":") if "q" in tags else [b"dns/txt"]
        if b"dns/txt" not in (q.strip(_FWS) for q in methods):
            raise E(f"q={_show(tags['q'][0])} names no query method we know (dns/txt)")
        timestamp = _number("t", tags["t"][0], E, 12) if "t" in tags else None
        expiration = _number("x", tags["x"][0], E, 12) if "x" in tags else None
        if timestamp is not None and expiration is not None and expiration < timestamp:
            raise E(f"x={expiration} is earlier than t={timestamp}")
        return cls(algorithm, signature, b_text.decode("ascii"), body_hash, canons[0], canons[1],
                   domain, tuple(names), identity, length, selector, timestamp, expiration,
                   (b_start, b_end))


def _canon(value: str) -> tuple[Canon, Canon]:
    header, _, body = value.strip().lower().partition("/")
    try:
        return Canon(header), Canon(body or "simple")
    except ValueError:
        raise SignatureSyntaxError(f"unknown canonicalization c={value!r}") from None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A DKIM key record (RFC 6376 §3.6.1); ``key`` is None when revoked (``p=`` empty)."""

    key_type: str                 # k=: "rsa" or "ed25519"
    key: PublicKey | None
    key_bits: int
    hashes: frozenset[str] | None  # h=; None means any
    testing: bool                 # t=y
    strict: bool                  # t=s: i= must be exactly d=

    @property
    def revoked(self) -> bool:
        return self.key is None

    @classmethod
    def parse(cls, text: str) -> KeyRecord:
        """Parse a key record (a TXT record's strings joined, §3.6.2.2)."""
        E = KeyRecordError
        try:
            tags = parse_tag_list(text.encode("utf-8", "replace"))
        except TagListError as exc:
            raise E(str(exc)) from None
        values = {name: v[0].decode("utf-8", "replace") for name, v in tags.items()}
        if "v" in values:
            if values["v"] != "DKIM1":
                raise E(f"v={values['v']!r} is not DKIM1")
            if next(iter(values)) != "v":
                raise E("v= is not the first tag")
        key_type = values.get("k", "rsa").lower()
        if key_type not in ("rsa", "ed25519"):
            raise E(f"unknown key type k={key_type!r}")
        hashes = None
        if "h" in values:
            hashes = frozenset(h.strip(" \t\r\n").lower() for h in values["h"].split(":"))
        services = {s.strip(" \t\r\n").lower() for s in values.get("s", "*").split(":")}
        if not services & {"*", "email"}:
            raise E(f"key is not for email (s={values['s']!r})")
        flags = {f.strip(" \t\r\n").lower() for f in values.get("t", "").split(":")}
        if "p" not in tags:
            raise E("required tag p= missing")
        data, _ = _base64("p", tags["p"][0], E)
        key: PublicKey | None = None
        bits = 0
        if data:
            key = _public_key(key_type, data)
            bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else 256
        return cls(key_type, key, bits, hashes, "y" in flags, "s" in flags)


def _public_key(key_type: str, data: bytes) -> PublicKey:
    if key_type == "ed25519":
        if len(data) != 32:
            raise KeyRecordError(
                f"an Ed25519 key has 32 octets, this one {len(data)} (RFC 8463 §4)")
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        except ValueError:
            raise KeyRecordError("p= is not an Ed25519 public key") from None
    try:
        key = load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:  # some publish the bare RSAPublicKey (RFC 8017 A.1.1) instead
            key = load_der_public_key(_spki_from_rsa_public_key(data))
        except (ValueError, UnsupportedAlgorithm):
            raise KeyRecordError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("p= is not an RSA public key")
    return key


_RSA_ALGORITHM_ID = bytes.fromhex("300d06092a864886f70d0101010500")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def _spki_from_rsa_public_key(data: bytes) -> bytes:
    return _der(0x30, _RSA_ALGORITHM_ID + _der(0x03, b"\x00" + data))


@lru_cache(maxsize=1024)
def parse_key_record(text: str) -> KeyRecord:
    """:meth:`KeyRecord.parse`, remembered: the same record is parsed (and its key
    loaded) once, whoever signs with it (errors are not remembered)."""
    return KeyRecord.parse(text)
