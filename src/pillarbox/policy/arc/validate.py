"""ARC chain validation (RFC 8617 §5.2).

``await validate(message, resolver)`` gives one :class:`ARCResult`:

1. collect the ARC Sets (none: ``none``; more than 50: ``fail``);
2. the newest seal saying ``cv=fail``: ``fail``;
3. the structure: exactly one AAR, AMS and AS per instance, instances
   1..N, ``cv=none`` at i=1 and ``cv=pass`` above (:func:`.chain.collect`);
4. the newest AMS, verified like a DKIM signature (RFC 6376 §6.1);
5. every seal, newest first, over the sets up to its own with relaxed
   header canonicalization (§5.1.1);
6. the oldest-pass value (the optional step 5 of §5.2): the older AMSs,
   newest first, until one fails; 0 when all pass;
7. otherwise ``pass``.

Every error, a DNS failure included, is a ``fail`` (§5.2.1: all failures
are permanent); the result says why and at which instance.  Keys are DKIM
key records (RFC 6376 §3.6.1) read through the :class:`Resolver`; RSA keys
under ``min_rsa_bits`` (1024, RFC 8301 §3.2) are refused.

The result goes into our ``Authentication-Results:`` as the ``arc`` method
(RFC 8617 §6, §10) with ``smtp.remote-ip`` and ``header.oldest-pass``:
:meth:`ARCResult.method_result`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pillarbox.policy.arc.chain import (
    ARCSet,
    ARCSignature,
    ARCSyntaxError,
    ChainStatus,
    StructureError,
    collect,
    parse_ams,
    parse_seal,
)
from pillarbox.policy.authres import MethodResult
from pillarbox.policy.dkim.canon import (
    Canon,
    HeaderField,
    canonical_body,
    relaxed_header,
    split_message,
)
from pillarbox.policy.dkim.record import KeyRecord, KeyRecordError, parse_key_record
from pillarbox.policy.dns import Answer, DNSTemporaryError, Resolver

__all__ = ["ARCResult", "validate"]

CLOCK_SKEW = 3600  # seconds of slack for an AMS's x=


@dataclass(frozen=True, slots=True)
class ARCResult:
    """The Chain Validation Status of one message and what led to it."""

    status: ChainStatus
    reason: str = ""
    instances: int = 0                  # N, the sets found (0: no chain)
    failed: int | None = None           # the instance whose check failed
    oldest_pass: int | None = None      # §5.2 step 5 (pass only): 0 when every AMS passes
    sealers: tuple[str, ...] = ()       # each seal's d=, oldest first (pass only)

    @property
    def passed(self) -> bool:
        return self.status is ChainStatus.PASS

    def method_result(self, remote_ip: str | None = None) -> MethodResult:
        """``arc=pass|fail|none`` for Authentication-Results (RFC 8617 §6, §10.2:
        ``smtp.remote-ip``, ``header.oldest-pass``)."""
        props: list[tuple[str, str]] = []
        if remote_ip:
            props.append(("smtp.remote-ip", remote_ip))
        if self.oldest_pass is not None:
            props.append(("header.oldest-pass", str(self.oldest_pass)))
        comment = None
        if self.sealers:
            comment = f"i={self.instances}, sealed by " + ", ".join(self.sealers)
        reason = self.reason if self.status is ChainStatus.FAIL and self.reason else None
        return MethodResult("arc", self.status.value, reason=reason, properties=tuple(props),
                            comment=comment)

    def __str__(self) -> str:
        return self.method_result().render()


def _fail(why: str, instance: int | None, instances: int = 0) -> ARCResult:
    return ARCResult(ChainStatus.FAIL, why, instances, instance)


async def validate(message: bytes, resolver: Resolver, *, now: float | None = None,
                   min_rsa_bits: int = 1024, max_rsa_bits: int = 8192) -> ARCResult:
    """Validate the Authenticated Received Chain of ``message`` (CRLF line ends,
    as received) by RFC 8617 §5.2."""
    fields, body = split_message(message)
    try:
        sets = collect(fields)
    except (StructureError, ARCSyntaxError) as exc:
        return _fail(str(exc), exc.instance)
    if not sets:
        return ARCResult(ChainStatus.NONE)
    n = len(sets)
    try:
        newest = parse_ams(sets[-1].ams)
        seals = [parse_seal(s.seal) for s in sets]
    except ARCSyntaxError as exc:
        return _fail(str(exc), exc.instance, n)
    # An older AMS only counts for oldest-pass: a malformed one "fails to validate"
    # there and leaves the chain's status alone (§5.2 step 5).
    older: list[ARCSignature | None] = []
    for s in sets[:-1]:
        try:
            older.append(parse_ams(s.ams))
        except ARCSyntaxError:
            older.append(None)
    clock = time.time() if now is None else now
    signatures = [newest, *seals, *(sig for sig in older if sig is not None)]
    names = list(dict.fromkeys(sig.key_name for sig in signatures))
    keys = dict(zip(names, await asyncio.gather(*(_key(resolver, name) for name in names))))
    limits = (min_rsa_bits, max_rsa_bits)
    checker = _Checker(fields, body, keys, limits)

    # §5.2 step 4: the newest AMS.
    why = checker.ams(sets[-1], newest, clock)
    if why:
        return _fail(f"ARC-Message-Signature i={n}: {why}", n, n)
    # §5.2 step 6: every seal, newest first.
    for k in range(n, 0, -1):
        why = checker.seal(sets[:k], seals[k - 1])
        if why:
            return _fail(f"ARC-Seal i={k}: {why}", k, n)
    # §5.2 step 5: the oldest AMS that still validates (0: all do).
    oldest = 0
    for m in range(n - 1, 0, -1):
        sig = older[m - 1]
        if sig is None or checker.ams(sets[m - 1], sig, clock):
            oldest = m + 1
            break
    return ARCResult(ChainStatus.PASS, "", n, None, oldest, tuple(s.domain for s in seals))


async def _key(resolver: Resolver, name: str) -> KeyRecord | str:
    """The RSA key record at ``name``, or why there is none."""
    try:
        answer: Answer = await resolver.query(name, "TXT")
    except DNSTemporaryError as exc:
        return f"key lookup failed: {exc.why}"
    if not answer.records:
        return f"no key record at {name}"
    error = ""
    for text in answer.records:
        try:
            record = parse_key_record(text)
        except KeyRecordError as exc:
            error = error or str(exc)
            continue
        if record.key_type == "rsa":
            return record
        error = error or f"key type k={record.key_type} does not fit a=rsa-sha256"
    return f"bad key record at {name}: {error}"


class _Checker:
    """The signature checks of one message, sharing canonical forms and keys."""

    def __init__(self, fields: list[HeaderField], body: bytes,
                 keys: dict[str, KeyRecord | str], limits: tuple[int, int]) -> None:
        self.by_name: dict[bytes, list[HeaderField]] = {}
        for f in fields:
            self.by_name.setdefault(f.name, []).append(f)
        self.body = body
        self.bodies: dict[Canon, bytes] = {}
        self.keys = keys
        self.limits = limits

    def _verify(self, sig: ARCSignature, data: bytes) -> str:
        key = self.keys[sig.key_name]
        if isinstance(key, str):
            return key
        if key.revoked:
            return f"key {sig.key_name} is revoked"
        if key.hashes is not None and "sha256" not in key.hashes:
            return f"key {sig.key_name} does not allow sha256 (h=)"
        if key.key_bits < self.limits[0]:
            return f"RSA key of {key.key_bits} bits is too weak (RFC 8301 §3.2)"
        if key.key_bits > self.limits[1]:
            return f"RSA key of {key.key_bits} bits is too large"
        assert isinstance(key.key, rsa.RSAPublicKey)
        try:
            key.key.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "bad signature"
        return ""

    def ams(self, s: ARCSet, sig: ARCSignature, clock: float) -> str:
        """Why the AMS of set ``s`` does not verify ('' when it does): RFC 6376 §6.1.3."""
        if sig.expiration is not None and sig.expiration + CLOCK_SKEW < clock:
            return f"signature expired (x={sig.expiration})"
        body = self.bodies.get(sig.body_canon)
        if body is None:
            body = self.bodies[sig.body_canon] = canonical_body(self.body, sig.body_canon)
        if hashlib.sha256(body).digest() != sig.body_hash:
            return "body hash mismatch (the body changed after this signature)"
        relaxed = sig.header_canon is Canon.RELAXED
        used: dict[bytes, int] = {}
        parts: list[bytes] = []
        for name in sig.signed_headers:   # each name takes the next instance from the bottom
            instances = self.by_name.get(name, [])
            count = used.get(name, 0) + 1
            if count <= len(instances):
                used[name] = count
                chosen = instances[-count]
                parts.append(relaxed_header(chosen) if relaxed else chosen.raw)
        own = _without_b(s.ams, sig)
        parts.append(relaxed_header(own)[:-2] if relaxed else own.raw[:-2])
        return self._verify(sig, b"".join(parts))

    def seal(self, sets: list[ARCSet], sig: ARCSignature) -> str:
        """Why the seal of the last of ``sets`` does not verify: it signs every set up
        to its own, AAR, AMS, AS each, relaxed, itself without b= (§5.1.1)."""
        parts: list[bytes] = []
        for s in sets[:-1]:
            parts += [relaxed_header(s.aar), relaxed_header(s.ams), relaxed_header(s.seal)]
        last = sets[-1]
        parts += [relaxed_header(last.aar), relaxed_header(last.ams),
                  relaxed_header(_without_b(last.seal, sig))[:-2]]
        return self._verify(sig, b"".join(parts))


def _without_b(field: HeaderField, sig: ARCSignature) -> HeaderField:
    """The field with the value of its b= tag deleted (RFC 6376 §3.7)."""
    start, end = sig.b_span
    at = field.value_at
    return HeaderField(field.name, field.raw[: at + start] + field.raw[at + end :], at)
