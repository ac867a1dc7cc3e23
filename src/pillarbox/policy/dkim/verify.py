"""DKIM verification (RFC 6376 §6; RSA-SHA256, Ed25519-SHA256 of RFC 8463).

``await verify(message, resolver)`` gives one :class:`DKIMResult` per
DKIM-Signature field, top to bottom (none when the message is unsigned),
each with its RFC 8601 §2.7.1 result:

- ``pass``: the body hash and the signature check out;
- ``fail``: they do not (the reason says which: body hash mismatch, bad
  signature);
- ``neutral``: it failed, but the key is in testing mode (``t=y``, §3.6.1:
  such mail is treated as unsigned);
- ``policy``: refused by :class:`VerifyPolicy`, not by the RFC: ``l=``, an RSA
  key under 1024 bits (RFC 8301 §3.2), ``rsa-sha1`` (RFC 8301 §3.1), a From
  field the signature does not cover (RFC 6376 §8.15), too many signatures;
- ``temperror``: the key could not be fetched now (DNS time-out, SERVFAIL);
- ``permerror``: the signature or its key record is malformed or breaks a rule
  of §3.5/§3.6.1/§6.1.1 (missing tag, From not signed, ``i=`` outside
  ``d=``, expired ``x=``), there is no key, or the key is revoked.

Work is shared between the signatures of one message: the header block is
split once, each field's relaxed form is computed at most once, each body
canonicalization and hash at most once; key records come from the resolver
(which caches answers) and are parsed once (:func:`~.record.parse_key_record`).
Keys are looked up one after the other while the resolver answers from its
cache (an asyncio task costs more than such a lookup), and all together once
one lookup shows the cache is cold.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
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
from pillarbox.policy.dkim.record import (
    ALGORITHMS,
    DKIMSignature,
    KeyRecord,
    KeyRecordError,
    SignatureSyntaxError,
    parse_key_record,
)
from pillarbox.policy.dns import Answer, DNSTemporaryError, Resolver

__all__ = ["DKIMResult", "Result", "VerifyPolicy", "verify"]

_SIGNATURE_FIELD = b"dkim-signature"
_PKCS1 = padding.PKCS1v15()
# SHA-1 only for rsa-sha1, which VerifyPolicy refuses by default (RFC 8301 §3.1).
_HASHES = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


class Result(enum.Enum):
    """The DKIM results of RFC 8601 §2.7.1."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """What the receiving domain accepts beyond what RFC 6376 requires."""

    allow_body_length: bool = False   # l= lets anyone append to the body (§8.2)
    min_rsa_bits: int = 1024          # RFC 8301 §3.2: verifiers MUST NOT accept less
    max_rsa_bits: int = 8192          # bounds the work one signature can cost
    allow_sha1: bool = False          # RFC 8301 §3.1: rsa-sha1 MUST NOT be treated as valid
    require_all_from_signed: bool = True  # a From above the signed one is not covered (§8.15)
    max_signatures: int = 10          # the rest are not checked (work an attacker can ask for)
    clock_skew: int = 3600            # seconds of slack for t= in the future and x= past


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """One signature's result, and what Authentication-Results reports of it (RFC 8601 §2.7.1)."""

    result: Result
    domain: str = ""      # d=
    selector: str = ""    # s=
    identity: str = ""    # i= (default "@" d=)
    algorithm: str = ""   # a=
    reason: str = ""
    header_b: str = ""    # the start of b=, telling the message's signatures apart (RFC 6008)
    key_bits: int = 0
    testing: bool = False  # the key says t=y

    @property
    def passed(self) -> bool:
        return self.result is Result.PASS

    def render(self) -> str:
        """This result as a resinfo of Authentication-Results (RFC 8601 §2.2)."""
        parts = [f"dkim={self.result.value}"]
        if self.key_bits and self.result is Result.PASS:
            parts.append(f"({self.key_bits}-bit key)")
        if self.reason:
            parts.append('reason="' + self.reason.replace("\\", "\\\\").replace('"', '\\"') + '"')
        for prop, value in (("header.d", self.domain), ("header.i", self.identity),
                            ("header.s", self.selector), ("header.a", self.algorithm),
                            ("header.b", self.header_b)):
            if value:
                parts.append(f"{prop}={_ptype_value(value)}")
        return " ".join(parts)

    def __str__(self) -> str:
        return self.render()


def _ptype_value(value: str) -> str:
    # A value that is not a plain token (RFC 2045 §5.1) is sent as a quoted string.
    if all(c.isascii() and c.isprintable() and c not in ' ()<>,;:\\"/[]?=' for c in value) or (
        "@" in value and " " not in value and '"' not in value
    ):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Message:
    """The parts of one message that its signatures share."""

    __slots__ = ("by_name", "body", "relaxed", "selected", "bodies", "body_hashes", "too_short")

    def __init__(self, message: bytes) -> None:
        fields, self.body = split_message(message)
        self.by_name: dict[bytes, list[HeaderField]] = {}
        for field in fields:
            same = self.by_name.get(field.name)
            if same is None:
                self.by_name[field.name] = [field]
            else:
                same.append(field)
        self.relaxed: dict[bytes, bytes] = {}   # raw field -> relaxed form
        # (canonicalization, h=) -> the selected fields, canonical: the same
        # signer's RSA and Ed25519 signatures name the same fields
        self.selected: dict[tuple[Canon, tuple[bytes, ...]], bytes] = {}
        self.bodies: dict[Canon, bytes] = {}
        self.body_hashes: dict[tuple[Canon, str, int | None], bytes] = {}
        self.too_short: set[tuple[Canon, str, int | None]] = set()

    def stream_body(self, chunks: Iterable[bytes], wanted: Iterable[tuple[Canon, str, int | None]]) -> None:
        """Hash the body (what followed the header block, then ``chunks``) in
        one pass, for each (canonicalization, hash, ``l=``) that is wanted."""
        hashers = {key: BodyHasher(*key) for key in wanted}
        if not hashers:
            return
        for chunk in itertools.chain((self.body,), chunks):
            for hasher in hashers.values():
                hasher.update(chunk)
        for key, hasher in hashers.items():
            digest = hasher.digest()
            if key[2] is not None and hasher.hashed < key[2]:
                self.too_short.add(key)
            else:
                self.body_hashes[key] = digest

    def body_hash(self, canon: Canon, hash_name: str, length: int | None) -> bytes | None:
        """The body hash (§3.7), None when ``l=`` is longer than the canonical body."""
        key = (canon, hash_name, length)
        if key in self.too_short:
            return None
        digest = self.body_hashes.get(key)
        if digest is None:
            body = self.bodies.get(canon)
            if body is None:
                body = self.bodies[canon] = canonical_body(self.body, canon)
            if length is not None:
                if length > len(body):
                    return None
                body = body[:length]
            digest = self.body_hashes[key] = hashlib.new(hash_name, body).digest()
        return digest

    def header_data(self, sig: DKIMSignature, field: HeaderField) -> bytes:
        """What the signature's header hash covers (§3.7): the fields named in
        ``h=``, each name taking the next instance from the bottom (§5.4.2; a
        name with no instance left adds nothing), then the signature field
        itself with ``b=``'s value deleted and without its final CRLF."""
        relaxed = sig.header_canon is Canon.RELAXED
        key = (sig.header_canon, sig.signed_headers)
        selected = self.selected.get(key)
        if selected is None:
            selected = self.selected[key] = self._select(sig.signed_headers, relaxed)
        start, end = sig.b_span
        at = field.value_at
        unsigned = HeaderField(field.name, field.raw[: at + start] + field.raw[at + end :], at)
        return selected + (relaxed_header(unsigned)[:-2] if relaxed else unsigned.raw[:-2])

    def _select(self, names: tuple[bytes, ...], relaxed: bool) -> bytes:
        cache = self.relaxed
        by_name = self.by_name
        used: dict[bytes, int] = {}
        parts: list[bytes] = []
        for name in names:
            instances = by_name.get(name)
            if instances is None:
                continue
            n = used.get(name, 0) + 1
            if n > len(instances):
                continue
            used[name] = n
            chosen = instances[-n]
            if relaxed:
                form = cache.get(chosen.raw)
                if form is None:
                    form = cache[chosen.raw] = relaxed_header(chosen)
                parts.append(form)
            else:
                parts.append(chosen.raw)
        return b"".join(parts)


async def verify(
    message: bytes,
    resolver: Resolver,
    *,
    now: float | None = None,
    policy: VerifyPolicy = VerifyPolicy(),
    body_chunks: Iterable[bytes] | None = None,
) -> list[DKIMResult]:
    """Verify every DKIM-Signature of ``message`` (CRLF line ends, as received).

    A large message need not be held whole: pass its start as ``message``
    (at least the header block) and the rest as ``body_chunks`` (CRLF line
    ends); the body is then hashed as it is read, in one pass for all
    signatures, with :class:`~.canon.BodyHasher`.
    """
    msg = _Message(message)
    fields = msg.by_name.get(_SIGNATURE_FIELD)
    if not fields:
        return []
    clock = time.time() if now is None else now
    checks: list[DKIMResult | tuple[DKIMSignature, HeaderField]] = []
    full_b: list[str] = []
    for n, field in enumerate(fields):
        if n >= policy.max_signatures:
            why = f"more than {policy.max_signatures} signatures"
            checks.append(DKIMResult(Result.POLICY, reason=why))
            full_b.append("")
            continue
        try:
            sig = DKIMSignature.parse(field.value)
        except SignatureSyntaxError as exc:
            unreadable, b = _unreadable(field, str(exc))
            checks.append(unreadable)
            full_b.append(b)
            continue
        full_b.append(sig.b_text)
        early = _before_lookup(sig, msg, clock, policy)
        checks.append(early if early is not None else (sig, field))

    pending = [c[0] for c in checks if isinstance(c, tuple)]
    if body_chunks is not None:
        wanted = dict.fromkeys((s.body_canon, ALGORITHMS[s.algorithm][1], s.body_length) for s in pending)
        msg.stream_body(body_chunks, wanted)
    names = list(dict.fromkeys(sig.key_name for sig in pending))
    answers = await _lookup(resolver, names)
    results: list[DKIMResult] = []
    for check in checks:
        if isinstance(check, DKIMResult):
            results.append(check)
        else:
            sig, field = check
            results.append(_check(sig, field, msg, answers[sig.key_name], policy))
    if len(results) > 1 and len({r.header_b for r in results}) < len(results):
        results = _with_header_b(results, full_b)
    return results


_SLOW_LOOKUP = 0.002  # seconds: longer than an answer from the resolver's cache


async def _lookup(resolver: Resolver, names: list[str]) -> dict[str, Answer | DNSTemporaryError]:
    """The key records of ``names``.  One after the other while the resolver
    answers from its cache (tasks would cost more than the lookups); once a
    lookup is slow (the cache is cold), the rest go out together."""
    answers: dict[str, Answer | DNSTemporaryError] = {}
    for i, name in enumerate(names):
        started = time.monotonic()
        try:
            answers[name] = await resolver.query(name, "TXT")
        except DNSTemporaryError as exc:
            answers[name] = exc
        rest = names[i + 1 :]
        if rest and time.monotonic() - started > _SLOW_LOOKUP:
            got = await asyncio.gather(*(resolver.query(n, "TXT") for n in rest),
                                       return_exceptions=True)
            for other, answer in zip(rest, got):
                if isinstance(answer, BaseException) and not isinstance(answer, DNSTemporaryError):
                    raise answer
                answers[other] = answer
            break
    return answers


def _unreadable(field: HeaderField, why: str) -> tuple[DKIMResult, str]:
    """A permerror for a signature that does not parse, with what can still be
    read of it; and its b= in full."""
    found: dict[str, str] = {}
    for part in field.value.split(b";"):
        name, eq, value = part.partition(b"=")
        tag = name.strip().decode("ascii", "replace")
        if eq and tag in ("d", "s", "a", "b") and tag not in found:
            found[tag] = b"".join(value.split()).decode("utf-8", "replace")
    b = found.get("b", "")
    return DKIMResult(Result.PERMERROR, found.get("d", "").lower(), found.get("s", ""), "",
                      found.get("a", ""), why, b[:_B_PREFIX]), b


def _result(sig: DKIMSignature, result: Result, reason: str = "",
            key: KeyRecord | None = None) -> DKIMResult:
    return DKIMResult(result, sig.domain, sig.selector, sig.identity, sig.algorithm, reason,
                      sig.b_text[:_B_PREFIX], key.key_bits if key else 0,
                      key.testing if key else False)


def _before_lookup(sig: DKIMSignature, msg: _Message, clock: float,
                   policy: VerifyPolicy) -> DKIMResult | None:
    """The checks that need no key (§6.1.1), so a refused signature costs no DNS query."""
    if sig.expiration is not None and sig.expiration + policy.clock_skew < clock:
        return _result(sig, Result.PERMERROR, f"signature expired (x={sig.expiration})")
    if sig.timestamp is not None and sig.timestamp - policy.clock_skew > clock:
        why = f"signature timestamp in the future (t={sig.timestamp})"
        return _result(sig, Result.PERMERROR, why)
    if sig.algorithm == "rsa-sha1" and not policy.allow_sha1:
        return _result(sig, Result.POLICY, "rsa-sha1 refused (RFC 8301)")
    if sig.body_length is not None and not policy.allow_body_length:
        return _result(sig, Result.POLICY, "l= (partial body signature) refused")
    if policy.require_all_from_signed:
        froms = len(msg.by_name.get(b"from", ()))
        if froms > sig.signed_headers.count(b"from"):
            return _result(sig, Result.POLICY, "a From field is not covered by the signature")
    return None


def _check(sig: DKIMSignature, field: HeaderField, msg: _Message,
           answer: Answer | DNSTemporaryError, policy: VerifyPolicy) -> DKIMResult:
    if isinstance(answer, DNSTemporaryError):
        return _result(sig, Result.TEMPERROR, f"key lookup failed: {answer.why}")
    if not answer.records:
        return _result(sig, Result.PERMERROR, f"no key for signature ({sig.key_name})")
    key_type, hash_name = ALGORITHMS[sig.algorithm]
    key: KeyRecord | None = None
    error = ""
    for text in answer.records:
        try:
            candidate = parse_key_record(text)
        except KeyRecordError as exc:
            error = error or str(exc)
            continue
        if key is None or (key.key_type != key_type and candidate.key_type == key_type):
            key = candidate
    if key is None:
        return _result(sig, Result.PERMERROR, f"bad key record: {error}")
    if key.revoked:
        return _result(sig, Result.PERMERROR, "key revoked", key)
    if key.key_type != key_type:
        why = f"key type k={key.key_type} does not fit a={sig.algorithm}"
        return _result(sig, Result.PERMERROR, why, key)
    if key.hashes is not None and hash_name not in key.hashes:
        return _result(sig, Result.PERMERROR, f"key does not allow {hash_name} (h=)", key)
    if key.strict and sig.identity_domain != sig.domain:
        return _result(sig, Result.PERMERROR, "key requires i= domain to equal d= (t=s)", key)
    if key.key_type == "rsa":
        if key.key_bits < policy.min_rsa_bits:
            return _result(sig, Result.POLICY, f"RSA key of {key.key_bits} bits is too weak", key)
        if key.key_bits > policy.max_rsa_bits:
            return _result(sig, Result.POLICY, f"RSA key of {key.key_bits} bits is too large", key)

    body_hash = msg.body_hash(sig.body_canon, hash_name, sig.body_length)
    if body_hash is None:
        return _failed(sig, key, f"l={sig.body_length} is longer than the body")
    if body_hash != sig.body_hash:
        return _failed(sig, key, "body hash mismatch")
    data = msg.header_data(sig, field)
    try:
        if isinstance(key.key, ed25519.Ed25519PublicKey):
            key.key.verify(sig.signature, hashlib.sha256(data).digest())
        elif isinstance(key.key, rsa.RSAPublicKey):
            key.key.verify(sig.signature, data, _PKCS1, _HASHES[hash_name])
    except (InvalidSignature, ValueError):
        return _failed(sig, key, "bad signature")
    return _result(sig, Result.PASS, "", key)


def _failed(sig: DKIMSignature, key: KeyRecord, reason: str) -> DKIMResult:
    if key.testing:
        return _result(sig, Result.NEUTRAL, reason + " (key in testing mode, t=y)", key)
    return _result(sig, Result.FAIL, reason, key)


_B_PREFIX = 8  # RFC 6008 §4: at least the first 8 characters of b=


def _with_header_b(results: list[DKIMResult], full: list[str]) -> list[DKIMResult]:
    """Lengthen the ``header.b`` of signatures whose first characters are the
    same, until each tells its signature apart (RFC 6008 §4)."""
    out = []
    for r, b in zip(results, full):
        size = _B_PREFIX
        while size < len(b) and sum(1 for other in full if other.startswith(b[:size])) > 1:
            size += 1
        out.append(r if r.header_b == b[:size] else _replace_b(r, b[:size]))
    return out


def _replace_b(r: DKIMResult, header_b: str) -> DKIMResult:
    return DKIMResult(r.result, r.domain, r.selector, r.identity, r.algorithm, r.reason,
                      header_b, r.key_bits, r.testing)
