"""ARC sealing (RFC 8617 §5.1): a new ARC Set for a message we pass on.

:func:`arc_set` follows §5.1 step by step:

1. every change to the message (a DKIM signature among them) is made
   before sealing: the caller seals last;
2. a chain whose newest seal says ``cv=fail`` is not sealed again (§5.1
   step 2, §5.1.3: a broken chain cannot be continued): nothing is added;
3. the instance is one more than the highest found, 1 without a chain; a
   chain of 50 sets cannot grow (§4.2.1): nothing is added;
4. the set: an ``ARC-Authentication-Results`` carrying our own
   Authentication-Results payload (§4.1.1, several fields of ours merged
   into one), an ``ARC-Message-Signature`` signed like a DKIM signature
   (relaxed/relaxed, the signer's header fields and every DKIM-Signature,
   never an ARC field or Authentication-Results, §4.1.2), and an
   ``ARC-Seal`` with ``cv=`` the chain's validation status, signing the
   sets 1..N in order (§5.1.1), or only the new set when the chain failed
   (§5.1.2).

The key is a DKIM :class:`~pillarbox.policy.dkim.Signer`'s, which must be
RSA: RFC 8617 defines only rsa-sha256 (the Ed25519 key of a dual-signing
pair cannot seal).  Its selector's key record is what validators look up.

:func:`our_results` reads back, at relay time, the payload of the
Authentication-Results fields we stamped at reception and the ``arc=``
result among them: what the new set must carry.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pillarbox.policy.arc.chain import (
    AAR,
    ARC_FIELDS,
    AS,
    MAX_INSTANCES,
    ARCSyntaxError,
    ChainStatus,
    StructureError,
    collect,
    instance_of,
)
from pillarbox.policy.authres import authserv_id, is_ours
from pillarbox.policy.dkim.canon import (
    Canon,
    HeaderField,
    canonical_body,
    relaxed_header,
    split_message,
)
from pillarbox.policy.dkim.record import TagListError, parse_tag_list
from pillarbox.policy.dkim.sign import Signer

__all__ = ["OurResults", "SealError", "arc_set", "our_results"]

_NOT_SIGNED = frozenset(ARC_FIELDS) | {b"authentication-results", b"dkim-signature"}
_WIDTH = 78
_AR_NAME = b"authentication-results"


class SealError(ValueError):
    """What the caller asked cannot be sealed (our fault, not the message's): a
    non-RSA key, a payload that is not an Authentication-Results payload, a
    chain status that contradicts the chain on the message."""


def arc_set(message: bytes, authres: bytes | str, chain: ChainStatus, signer: Signer, *,
            now: float | None = None) -> bytes:
    """The new ARC Set for ``message``, top to bottom ARC-Seal,
    ARC-Message-Signature, ARC-Authentication-Results (each ending in CRLF),
    to put on top of it; ``b""`` when RFC 8617 says not to seal.

    ``authres`` is our Authentication-Results for the message: the whole
    field (``Authentication-Results: mx.example.org; spf=pass ...``) or its
    payload; ``chain`` is the status our validation found (``arc=`` in it).
    """
    if not isinstance(signer.key, rsa.RSAPrivateKey):
        raise SealError(f"ARC seals with rsa-sha256 only (RFC 8617); the key of "
                        f"{signer.selector}._domainkey.{signer.domain} is not RSA")
    payload = _payload(authres)
    fields, body = split_message(message)
    instances: list[tuple[int, HeaderField]] = []
    for f in fields:
        if f.name in ARC_FIELDS:
            try:
                instances.append((instance_of(f), f))
            except ARCSyntaxError:
                if chain is not ChainStatus.FAIL:
                    raise SealError(f"chain status {chain.value}, but the message has a "
                                    f"malformed ARC field: {f.raw[:60]!r}") from None
    previous: list[bytes] = []
    if instances:
        newest = max(i for i, _ in instances)
        seals = [f for i, f in instances if i == newest and f.name == AS]
        if any(_says_fail(f) for f in seals):
            return b""                   # §5.1 step 2: the chain ended there
        if chain is ChainStatus.NONE:
            raise SealError(f"chain status none, but the message has an ARC chain "
                            f"(i={newest}); validate it first")
        if chain is ChainStatus.PASS:
            try:
                sets = collect(fields)
            except (StructureError, ARCSyntaxError) as exc:
                raise SealError(f"chain status pass, but the chain is broken: {exc}") from None
            previous = [relaxed_header(f) for s in sets for f in (s.aar, s.ams, s.seal)]
        instance = newest + 1
    elif chain is ChainStatus.PASS:
        raise SealError("chain status pass, but the message has no ARC chain")
    else:
        instance = 1
    if instance > MAX_INSTANCES:
        return b""                       # §4.2.1: no 51st set
    clock = str(int(time.time() if now is None else now))
    key = signer.key

    aar = b"ARC-Authentication-Results: i=%d; " % instance + payload + b"\r\n"
    aar_field = HeaderField(AAR, aar, len(b"ARC-Authentication-Results:"))

    counts: dict[bytes, int] = {}
    for f in fields:
        counts[f.name] = counts.get(f.name, 0) + 1
    names = [n for n in signer.header_names(counts) if n not in _NOT_SIGNED]
    if b"from" not in names:
        names.insert(0, b"from")         # RFC 6376 §5.4: From is always signed
    names += [b"dkim-signature"] * counts.get(b"dkim-signature", 0)
    bh = base64.b64encode(hashlib.sha256(canonical_body(body, Canon.RELAXED)).digest())
    ams_head = _fold("ARC-Message-Signature", [
        f"i={instance};", "a=rsa-sha256;", "c=relaxed/relaxed;", f"d={signer.domain};",
        f"s={signer.selector};", f"t={clock};"], names, f"bh={bh.decode('ascii')};")
    signed = _select(fields, names) + _relaxed(b"arc-message-signature", ams_head)[:-2]
    ams = ams_head + _signature(key, signed, ams_head) + b"\r\n"

    as_head = _fold("ARC-Seal", [
        f"i={instance};", "a=rsa-sha256;", f"t={clock};", f"cv={chain.value};",
        f"d={signer.domain};", f"s={signer.selector};"])
    sealed = b"".join(previous) + relaxed_header(aar_field) \
        + _relaxed(b"arc-message-signature", ams) + _relaxed(b"arc-seal", as_head)[:-2]
    seal = as_head + _signature(key, sealed, as_head) + b"\r\n"
    return seal + ams + aar


def _says_fail(seal: HeaderField) -> bool:
    try:
        cv = parse_tag_list(seal.value).get("cv")
    except TagListError:
        return False
    return cv is not None and cv[0].lower() == b"fail"


def _payload(authres: bytes | str) -> bytes:
    """An authres-payload (RFC 8601 §2.2) from a whole field or a payload."""
    data = authres.encode("utf-8") if isinstance(authres, str) else authres
    name, colon, rest = data.partition(b":")
    if colon and name.strip().lower() == _AR_NAME:
        data = rest
    data = data.strip(b" \t\r\n")
    lines = data.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines) or any(
            line[:1] not in (b" ", b"\t") for line in lines[1:]):
        raise SealError("Authentication-Results payload: line breaks other than folding "
                        "(CRLF and whitespace)")
    if not data or authserv_id(data) is None:
        raise SealError(f"not an Authentication-Results payload (no authserv-id first): "
                        f"{data[:60]!r}")
    return data


def _relaxed(name: bytes, raw: bytes) -> bytes:
    return relaxed_header(HeaderField(name, raw + b"\r\n" if not raw.endswith(b"\r\n") else raw,
                                      raw.index(b":") + 1))


def _select(fields: list[HeaderField], names: list[bytes]) -> bytes:
    """The relaxed fields ``h=`` names, each name from the bottom up (RFC 6376 §5.4.2)."""
    by_name: dict[bytes, list[HeaderField]] = {}
    for f in fields:
        by_name.setdefault(f.name, []).append(f)
    return b"".join(relaxed_header(by_name[n].pop()) for n in names if by_name.get(n))


def _signature(key: rsa.RSAPrivateKey, data: bytes, head: bytes) -> bytes:
    """``b=``'s value, folded to continue ``head`` (FWS is allowed inside base64)."""
    b64 = base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    column = len(head) - head.rfind(b"\n") - 1
    first = max(0, _WIDTH - column)
    chunks = [b64[:first]] + [b64[i : i + _WIDTH - 1] for i in range(first, len(b64), _WIDTH - 1)]
    return chunks[0] + b"".join(b"\r\n " + c for c in chunks[1:] if c)


def _fold(name: str, tags: list[str], h: list[bytes] | None = None, bh: str | None = None) -> bytes:
    """``Name: tag=value; ... b=`` folded under 78 columns, between tags and at the
    colons of ``h=`` (RFC 6376 §3.5 allows FWS there)."""
    atoms = [(t, True) for t in tags]
    if h:
        last = len(h) - 1
        atoms += [(("h=" if k == 0 else "") + n.decode("ascii") + (";" if k == last else ":"),
                   k == 0) for k, n in enumerate(h)]
    if bh:
        atoms.append((bh, True))
    atoms.append(("b=", True))
    out = [name + ":"]
    column = len(out[0])
    for atom, spaced in atoms:
        width = len(atom) + spaced
        if column + width > _WIDTH:
            out.append("\r\n " + atom)
            column = 1 + len(atom)
        else:
            out.append(" " + atom if spaced else atom)
            column += width
    return "".join(out).encode("ascii")


@dataclass(frozen=True, slots=True)
class OurResults:
    """What our Authentication-Results fields on a message say: the payload a new
    AAR carries and the ``arc=`` result (None: ARC was not checked)."""

    payload: bytes
    chain: ChainStatus | None


def our_results(message: bytes, ours: str) -> OurResults | None:
    """Our Authentication-Results (authserv-id ``ours``) on ``message``, several
    merged into one payload as one AAR must carry them (§4.1.1); None when the
    message has none of ours."""
    fields, _ = split_message(message)
    mine = [f for f in fields if f.name == _AR_NAME and is_ours(f.value, ours)]
    if not mine:
        return None
    head = b""
    results: list[bytes] = []
    for f in mine:
        value = f.value.strip(b" \t\r\n")
        parts = _split_top(value)
        head = head or parts[0].strip(b" \t\r\n")
        results += [p.strip(b" \t\r\n") for p in parts[1:]
                    if p.strip(b" \t\r\n") and p.strip(b" \t\r\n").lower() != b"none"]
    payload = head + b"".join(b";\r\n\t" + r for r in results) if results else head + b"; none"
    arcs = [r for r in results if _method(r) == b"arc"]
    chain: ChainStatus | None = None
    if len(arcs) > 1:
        chain = ChainStatus.FAIL         # two verdicts of ours: trust neither
    elif arcs:
        result = arcs[0].partition(b"=")[2].split(None, 1)
        try:
            chain = ChainStatus(result[0].decode("ascii", "replace").lower()) if result else None
        except ValueError:
            chain = ChainStatus.FAIL
    return OurResults(payload, chain)


def _method(resinfo: bytes) -> bytes:
    return resinfo.partition(b"=")[0].strip(b" \t\r\n").partition(b"/")[0].lower()


def _split_top(value: bytes) -> list[bytes]:
    """``value`` cut at the semicolons outside quoted strings and comments."""
    parts: list[bytes] = []
    start, depth, quoted, escaped = 0, 0, False, False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == 0x5C and (quoted or depth):
            escaped = True
        elif c == 0x22 and not depth:
            quoted = not quoted
        elif c == 0x28 and not quoted:
            depth += 1
        elif c == 0x29 and not quoted and depth:
            depth -= 1
        elif c == 0x3B and not quoted and not depth:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts
