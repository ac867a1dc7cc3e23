"""DKIM signing (RFC 6376 §5; RSA-SHA256 and Ed25519-SHA256 of RFC 8463).

A :class:`Signer` is one key of one domain: its selector, its private key
(RSA or Ed25519) and what it signs.  :func:`sign` signs a message with one or
several signers (the usual pair: RSA-2048 for every verifier, Ed25519 for
those that know it, RFC 8463 §1) and returns the DKIM-Signature fields to put
on top of the message.

Signing is cheap on purpose: the message is split once, each body
canonicalization is hashed once for all signers, and signers that sign the
same header fields the same way share the canonical header data.  The
``DKIM-Signature:`` field itself is folded once per signer and list of
signed fields (:class:`_Template`); each message only puts its ``t=`` and
``bh=`` (and ``l=``, ``x=``) into it, so that little but the key operation
is left per message (docs/architecture.md, "What DKIM signing costs").  What is
signed (§5.4): the fields of :data:`DEFAULT_HEADERS` that the message has,
every instance of each; and the fields of :data:`OVERSIGN` once more than
the message has them (even when it has none), so that nobody can add one
later without breaking the signature (§8.15, the common practice of
OpenDKIM's ``OversignHeaders`` and Rspamd's ``(o)``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from pillarbox.policy.dkim.canon import (
    BodyHasher,
    Canon,
    HeaderField,
    canonical_body,
    relaxed_header,
    split_message,
)
from pillarbox.policy.dkim.record import checked_domain

__all__ = ["DEFAULT_HEADERS", "OVERSIGN", "PrivateKey", "Signer", "sign", "signature_fields"]

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: Header fields signed when present (RFC 6376 §5.4.1's list, with the
#: list fields of RFC 2369/2919/8058 and Autocrypt).
DEFAULT_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "content-language", "resent-date", "resent-from",
    "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe",
    "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner",
    "list-archive", "autocrypt", "openpgp",
)
#: Header fields signed once more than present, so none can be added.
OVERSIGN: tuple[str, ...] = ("from", "reply-to", "subject", "to", "cc")

# Never signed: they change in transit (RFC 6376 §5.4.1).
_NEVER = frozenset({"return-path", "received", "comments", "keywords", "dkim-signature"})
_WIDTH = 78
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
# The tags whose values change per message, in the order of the field, each
# with the control character that stands for it in a template (no tag value
# of ours can contain one: domains, selectors and field names are checked,
# and i= must be printable).
_VARIABLE = (("l", b"\x01"), ("t", b"\x02"), ("x", b"\x03"))
_BH_MARK = b"\x04"
_TEMPLATES = 64       # h= lists and templates kept per signer


class _Template(NamedTuple):
    """A signer's ``DKIM-Signature:`` field for one ``h=``, folded, up to ``b=``,
    with a run of marks for each per-message value (as wide as the value,
    so the folding is the same), and its canonical form as hashed (§3.7)."""

    head: bytes
    own: bytes                  # canonical, without the final CRLF
    column: int                 # where b= ends on its line, for folding the signature
    marks: tuple[bytes, ...]    # for l=, t=, x=, bh= ; b"" for a tag left out

    def fill(self, values: tuple[bytes, ...]) -> tuple[bytes, bytes]:
        head, own = self.head, self.own
        for mark, value in zip(self.marks, values):
            if mark:
                head = head.replace(mark, value)
                own = own.replace(mark, value)
        return head, own


@dataclass(frozen=True)
class Signer:
    """One signing key of one domain (``d=``, ``s=``) and what it signs."""

    domain: str
    selector: str
    key: PrivateKey
    headers: tuple[str, ...] = DEFAULT_HEADERS
    oversign: tuple[str, ...] = OVERSIGN
    header_canon: Canon = Canon.RELAXED
    body_canon: Canon = Canon.RELAXED
    identity: str | None = None          # i=; None leaves it out (it defaults to "@" d=)
    expire_after: int | None = None      # x= this many seconds after t=
    body_length: bool = False            # l= (lets others append to the body, §8.2: avoid)
    _plan: tuple[tuple[bytes, int], ...] = field(init=False, repr=False, compare=False)
    _templates: dict[tuple[tuple[bytes, ...], tuple[int, ...]], _Template] = field(
        init=False, repr=False, compare=False)
    _names: dict[tuple[tuple[bytes, int], ...], tuple[bytes, ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "domain", checked_domain("d", self.domain))
            object.__setattr__(self, "selector", checked_domain("s", self.selector))
        except ValueError as exc:
            raise ValueError(f"DKIM signer: {exc}") from None
        if not isinstance(self.key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise ValueError("DKIM signer: the key must be RSA or Ed25519")
        if isinstance(self.key, rsa.RSAPrivateKey) and self.key.key_size < 1024:
            raise ValueError(f"DKIM signer: RSA key of {self.key.key_size} bits, "
                             "verifiers refuse under 1024 (RFC 8301 §3.2)")
        names = tuple(h.strip().lower() for h in self.headers)
        over = frozenset(h.strip().lower() for h in self.oversign)
        if "from" not in names and "from" not in over:
            raise ValueError("DKIM signer: From must be signed (RFC 6376 §5.4)")
        bad = {n for n in set(names) | over if not _FIELD_NAME.match(n)}
        if bad:
            names_text = ", ".join(map(repr, sorted(bad)))
            raise ValueError(f"DKIM signer: {names_text} are not header field names")
        bad = (set(names) | over) & _NEVER
        if bad:
            raise ValueError(f"DKIM signer: {', '.join(sorted(bad))} must not be signed")
        if self.identity is not None:
            if any(c in "; \t\r\n" or not c.isprintable() for c in self.identity):
                raise ValueError(f"DKIM signer: i={self.identity!r} cannot go in a tag list")
            i_domain = self.identity.rpartition("@")[2].lower()
            within = i_domain == self.domain or i_domain.endswith("." + self.domain)
            if "@" not in self.identity or not within:
                raise ValueError(f"DKIM signer: i={self.identity} is not within d={self.domain}")
        if self.expire_after is not None and self.expire_after <= 0:
            raise ValueError("DKIM signer: expire_after must be positive")
        # (name, 1 if over-signed): what header_names() walks for each message
        order = dict.fromkeys(names + tuple(sorted(over)))
        plan = tuple((n.encode("ascii"), int(n in over)) for n in order)
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_templates", {})
        object.__setattr__(self, "_names", {})

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    def header_names(self, present: dict[bytes, int]) -> tuple[bytes, ...]:
        """``h=`` for a message with ``present[name]`` instances of each field
        (kept per set of counts: the messages of one client have the same fields)."""
        key = tuple(present.items())
        names = self._names.get(key)
        if names is not None:
            return names
        out: list[bytes] = []
        for name, over in self._plan:
            count = present.get(name, 0) + over
            if count == 1:
                out.append(name)
            elif count:
                out.extend([name] * count)
        names = tuple(out)
        if len(self._names) >= _TEMPLATES:
            self._names.clear()
        self._names[key] = names
        return names

    def _template(self, names: tuple[bytes, ...], widths: tuple[int, ...]) -> _Template:
        """The field for ``h=`` ``names`` and values of ``widths`` (l=, t=, x=, bh=;
        0 for a tag left out), made once and kept."""
        key = (names, widths)
        template = self._templates.get(key)
        if template is not None:
            return template
        tags = [("v", "1"), ("a", self.algorithm),
                ("c", f"{self.header_canon.value}/{self.body_canon.value}"),
                ("d", self.domain), ("s", self.selector)]
        if self.identity is not None:
            tags.append(("i", self.identity))
        marks = []
        for (tag, mark), width in zip(_VARIABLE, widths):
            if width:
                tags.append((tag, (mark * width).decode("ascii")))
            marks.append(mark * width)
        marks.append(_BH_MARK * widths[3])
        head = _fold_tags(tags, names, (_BH_MARK * widths[3]).decode("ascii"))
        if self.header_canon is Canon.RELAXED:
            own = relaxed_header(HeaderField(b"dkim-signature", head + b"\r\n",
                                             len(b"DKIM-Signature:")))[:-2]
        else:
            own = head
        column = len(head) - head.rfind(b"\n") - 1
        template = _Template(head, own, column, tuple(marks))
        if len(self._templates) >= _TEMPLATES:
            self._templates.clear()
        self._templates[key] = template
        return template


def sign(message: bytes, signers: Sequence[Signer], *, now: float | None = None,
         body_chunks: Iterable[bytes] | None = None) -> bytes:
    """The DKIM-Signature fields (each ending in CRLF) to prepend to ``message``,
    one per signer, in order.

    A large message need not be held whole: pass its start as ``message``
    (the header block and the empty line after it, at least) and the rest as
    ``body_chunks``; the body is hashed as it is read, in one pass for all
    signers.
    """
    return b"".join(signature_fields(message, signers, now=now, body_chunks=body_chunks))


def signature_fields(message: bytes, signers: Iterable[Signer], *, now: float | None = None,
                     body_chunks: Iterable[bytes] | None = None) -> list[bytes]:
    """Like :func:`sign`, one field per signer."""
    signers = list(signers)
    fields, body = split_message(message)
    counts: dict[bytes, int] = {}
    for f in fields:
        counts[f.name] = counts.get(f.name, 0) + 1
    clock = int(time.time() if now is None else now)
    # One body hash per body canonicalization, shared by the signers: (bh=, canonical size).
    digests: dict[Canon, tuple[bytes, int]] = {}
    canons = list(dict.fromkeys(s.body_canon for s in signers))
    if body_chunks is None:
        for canon in canons:
            canonical = canonical_body(body, canon)
            digests[canon] = (base64.b64encode(hashlib.sha256(canonical).digest()), len(canonical))
    else:
        hashers = [BodyHasher(canon) for canon in canons]
        for chunk in itertools.chain((body,), body_chunks):
            for hasher in hashers:
                hasher.update(chunk)
        for canon, hasher in zip(canons, hashers):
            digest = hasher.digest()
            digests[canon] = (base64.b64encode(digest), hasher.hashed)
    header_data: dict[tuple[Canon, tuple[bytes, ...]], bytes] = {}
    out = []
    t = str(clock).encode("ascii")
    for signer in signers:
        bh, size = digests[signer.body_canon]
        names = signer.header_names(counts)
        data = header_data.get((signer.header_canon, names))
        if data is None:
            data = _select(fields, names, signer.header_canon)
            header_data[(signer.header_canon, names)] = data
        length = str(size).encode("ascii") if signer.body_length else b""
        expiry = (b"" if signer.expire_after is None
                  else str(clock + signer.expire_after).encode("ascii"))
        values = (length, t, expiry, bh)
        template = signer._template(names, (len(length), len(t), len(expiry), len(bh)))
        head, own = template.fill(values)
        signed = data + own
        if isinstance(signer.key, ed25519.Ed25519PrivateKey):
            sig = signer.key.sign(hashlib.sha256(signed).digest())
        else:
            sig = signer.key.sign(signed, _PKCS1, _SHA256)
        out.append(head + _fold_base64(base64.b64encode(sig), template.column) + b"\r\n")
    return out


def _select(fields: list[HeaderField], names: tuple[bytes, ...], canon: Canon) -> bytes:
    """The canonical fields that ``h=`` names, each name from the bottom up (§5.4.2)."""
    by_name: dict[bytes, list[HeaderField]] = {}
    for f in fields:
        by_name.setdefault(f.name, []).append(f)
    parts = []
    for name in names:
        instances = by_name.get(name)
        if instances:
            f = instances.pop()
            parts.append(f.raw if canon is Canon.SIMPLE else relaxed_header(f))
    return b"".join(parts)


def _fold_tags(tags: list[tuple[str, str]], names: tuple[bytes, ...], bh: str) -> bytes:
    """``DKIM-Signature: v=1; ...; h=...; bh=...; b=`` folded under 78 columns (§3.5 allows FWS
    between tags and around the colons of ``h=``)."""
    # (atom, whether a space goes before it when it stays on the line)
    atoms = [(f"{k}={v};", True) for k, v in tags]
    last = len(names) - 1
    atoms += [(("h=" if i == 0 else "") + n.decode("ascii") + (";" if i == last else ":"), i == 0)
              for i, n in enumerate(names)]
    atoms += [(f"bh={bh};", True), ("b=", True)]
    out = ["DKIM-Signature:"]
    column = len(out[0])
    for atom, spaced in atoms:
        width = len(atom) + spaced
        if column + width > _WIDTH:
            out.append("\r\n " + atom)
            column = 1 + len(atom)
        else:
            out.append(" " + atom if spaced else atom)
            column += width
    return "".join(out).encode("utf-8")  # i= may be UTF-8 (RFC 8616 §4)


def _fold_base64(b64: bytes, column: int) -> bytes:
    """The signature, folded with FWS (allowed inside base64, §3.5 ``b=``)."""
    first = max(0, _WIDTH - column)
    chunks = [b64[:first]] if first else [b""]
    rest = b64[first:]
    chunks += [rest[i : i + _WIDTH - 1] for i in range(0, len(rest), _WIDTH - 1)]
    if chunks[0] == b"":
        return b"".join(b"\r\n " + c for c in chunks[1:])
    return chunks[0] + b"".join(b"\r\n " + c for c in chunks[1:])
