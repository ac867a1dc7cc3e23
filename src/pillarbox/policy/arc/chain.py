"""ARC header fields and ARC Sets (RFC 8617 §4), read from raw bytes.

An ARC Set is three fields with one instance tag ``i=`` (§4.2.1, 1 to 50):

- ``ARC-Authentication-Results`` (AAR, §4.1.1): ``i=N;`` then an
  Authentication-Results payload (RFC 8601 §2.2); the instance comes first;
- ``ARC-Message-Signature`` (AMS, §4.1.2): a DKIM-Signature (RFC 6376 §3.5)
  without ``v=``, whose ``i=`` is the instance instead of the AUID;
- ``ARC-Seal`` (AS, §4.1.3): tags ``i``, ``a``, ``b``, ``cv``, ``d``, ``s``,
  ``t``; no ``h=`` (its presence fails the chain) and no body hash.

:func:`collect` finds the sets of a message and applies the structural
checks of §5.2 steps 1 to 3; :func:`parse_ams` and :func:`parse_seal` the
checks of one signature that need no DNS.  A malformed field raises
:class:`ARCSyntaxError`, whose text says which field of which instance is
wrong: the sealer's fault, and a ``fail`` of the whole chain (§5.2.1: every
failure is permanent).

Two rules go beyond the letter of DKIM, as Pillarbox's DKIM verifier does by
default: only ``rsa-sha256`` is accepted (RFC 8617 defines no other
algorithm; RFC 8301 §3.1 retires rsa-sha1) and ``l=`` is refused (anyone
could append to the body, RFC 6376 §8.2).
"""

from __future__ import annotations

import binascii
import enum
import re
from dataclasses import dataclass

from pillarbox.policy.dkim.canon import Canon, HeaderField
from pillarbox.policy.dkim.record import TagListError, checked_domain, parse_tag_list

__all__ = [
    "AAR",
    "AMS",
    "AS",
    "ARCSet",
    "ARCSignature",
    "ARCSyntaxError",
    "ChainStatus",
    "MAX_INSTANCES",
    "StructureError",
    "aar_instance",
    "collect",
    "instance_of",
    "parse_ams",
    "parse_seal",
]

AAR = b"arc-authentication-results"
AMS = b"arc-message-signature"
AS = b"arc-seal"
ARC_FIELDS = (AAR, AMS, AS)
NAMES = {AAR: "ARC-Authentication-Results", AMS: "ARC-Message-Signature", AS: "ARC-Seal"}
#: §4.2.1: at most 50 ARC Sets on a message.
MAX_INSTANCES = 50
ALGORITHM = "rsa-sha256"

_FWS = b" \t\r\n"
# §3.9: instance = [CFWS] %s"i" [CFWS] "=" [CFWS] position, position = 1*2DIGIT;
# in the AAR it is followed by [CFWS] ";" (§4.1.1).
_AAR_INFO = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]{1,2})[ \t\r\n]*;")
_POSITION = re.compile(rb"[0-9]{1,2}\Z")
_FTEXT = bytes(range(0x21, 0x3A)) + bytes(range(0x3B, 0x7F))


class ChainStatus(enum.Enum):
    """The Chain Validation Status (RFC 8617 §4.4), also the ``cv=`` of a seal."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"


class ARCSyntaxError(ValueError):
    """An ARC header field that is malformed or breaks a rule of RFC 8617 §4
    (the sealer's fault); ``instance`` is its ``i=`` when that could be read."""

    def __init__(self, why: str, instance: int | None = None) -> None:
        super().__init__(why)
        self.instance = instance


class StructureError(ValueError):
    """A chain whose sets break §5.2 step 3 (missing, doubled or misnumbered
    fields, a wrong ``cv=``); ``instance`` is the set at fault."""

    def __init__(self, why: str, instance: int | None = None) -> None:
        super().__init__(why)
        self.instance = instance


def _show(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _position(value: bytes, what: str) -> int:
    if not _POSITION.match(value) or not 1 <= int(value) <= MAX_INSTANCES:
        raise ARCSyntaxError(f"{what}: i={_show(value)} is not an instance from 1 to "
                             f"{MAX_INSTANCES} (RFC 8617 §4.2.1)")
    return int(value)


def aar_instance(value: bytes) -> tuple[int, int]:
    """The instance of an AAR value and where its payload starts (§4.1.1:
    ``instance [CFWS] ";" authres-payload``, the instance first)."""
    m = _AAR_INFO.match(value)
    if m is None:
        raise ARCSyntaxError("ARC-Authentication-Results does not start with 'i=N;' "
                             "(RFC 8617 §4.1.1)")
    return _position(m.group(1), "ARC-Authentication-Results"), m.end()


def instance_of(field: HeaderField) -> int:
    """The ``i=`` of one ARC header field."""
    if field.name == AAR:
        return aar_instance(field.value)[0]
    what = NAMES[field.name]
    try:
        tags = parse_tag_list(field.value)
    except TagListError as exc:
        raise ARCSyntaxError(f"{what}: {exc}") from None
    if "i" not in tags:
        raise ARCSyntaxError(f"{what} has no instance tag i= (RFC 8617 §4.2.1)")
    return _position(tags["i"][0], what)


@dataclass(frozen=True, slots=True)
class ARCSet:
    """The three fields of one instance, as received."""

    instance: int
    aar: HeaderField
    ams: HeaderField
    seal: HeaderField


def collect(fields: list[HeaderField]) -> list[ARCSet]:
    """The ARC Sets of a message, oldest first, by §5.2 steps 1 to 3.

    An empty list: no chain (status ``none``).  :class:`StructureError` (or
    :class:`ARCSyntaxError` for a field whose instance cannot be read) when
    the chain fails before any signature is checked: an instance over 50,
    the newest seal saying ``cv=fail``, a set without exactly one of each
    field, a gap in 1..N, ``cv=`` other than ``none`` at i=1 and ``pass``
    above.
    """
    found: dict[int, dict[bytes, list[HeaderField]]] = {}
    for field in fields:
        if field.name in ARC_FIELDS:
            found.setdefault(instance_of(field), {}).setdefault(field.name, []).append(field)
    if not found:
        return []
    newest = max(found)
    seals = found[newest].get(AS, [])
    if len(seals) == 1 and _cv_of(seals[0]) is ChainStatus.FAIL:
        # §5.2 step 2: a chain already marked failed stays failed.
        raise StructureError(f"the newest ARC-Seal (i={newest}) says cv=fail", newest)
    sets: list[ARCSet] = []
    for i in range(1, newest + 1):
        parts = found.get(i)
        if parts is None:
            raise StructureError(f"no ARC Set with i={i} below i={newest} "
                                 "(instances must run 1..N, RFC 8617 §5.2)", i)
        for name in ARC_FIELDS:
            count = len(parts.get(name, ()))
            if count != 1:
                how = "no" if count == 0 else f"{count}"
                raise StructureError(f"ARC Set i={i} has {how} {NAMES[name]} fields, "
                                     "not exactly one (RFC 8617 §5.2)", i)
        seal = parts[AS][0]
        cv = _cv_of(seal)
        wanted = ChainStatus.NONE if i == 1 else ChainStatus.PASS
        if cv is not wanted:
            shown = f"has cv={cv.value}" if cv is not None else "has no valid cv="
            raise StructureError(f"ARC-Seal i={i} {shown}, must be cv={wanted.value} "
                                 "(RFC 8617 §5.2)", i)
        sets.append(ARCSet(i, parts[AAR][0], parts[AMS][0], seal))
    return sets


def _cv_of(seal: HeaderField) -> ChainStatus | None:
    try:
        tags = parse_tag_list(seal.value)
    except TagListError:
        return None
    cv = tags.get("cv")
    if cv is None:
        return None
    try:
        return ChainStatus(cv[0].decode("ascii", "replace").lower())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ARCSignature:
    """The tags of an AMS or AS that validation uses (RFC 8617 §4.1.2, §4.1.3)."""

    instance: int                      # i=
    signature: bytes                   # b=, decoded
    domain: str                        # d=, lowercased, A-labels
    selector: str                      # s=
    b_span: tuple[int, int]            # where b='s value lies in the field value
    timestamp: int | None = None       # t=
    body_hash: bytes = b""             # AMS bh=
    header_canon: Canon = Canon.RELAXED
    body_canon: Canon = Canon.RELAXED
    signed_headers: tuple[bytes, ...] = ()   # AMS h=, lowercased, in order
    expiration: int | None = None      # AMS x=
    cv: ChainStatus = ChainStatus.NONE  # AS cv=

    @property
    def key_name(self) -> str:
        """The DKIM key record of the signer: ``s._domainkey.d`` (RFC 6376 §3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"


def _tags(field: HeaderField, what: str, required: tuple[str, ...]
          ) -> dict[str, tuple[bytes, int, int]]:
    try:
        tags = parse_tag_list(field.value)
    except TagListError as exc:
        raise ARCSyntaxError(f"{what}: {exc}") from None
    for name in required:
        if name not in tags:
            raise ARCSyntaxError(f"{what}: required tag {name}= missing")
    return tags


def _common(tags: dict[str, tuple[bytes, int, int]], what: str
            ) -> tuple[int, bytes, str, str, int | None]:
    instance = _position(tags["i"][0], what)
    where = f"{what} i={instance}"
    algorithm = tags["a"][0].decode("ascii", "replace")
    if algorithm != ALGORITHM:
        raise ARCSyntaxError(f"{where}: a={_show(tags['a'][0])}; ARC signs with rsa-sha256 "
                             "only (RFC 8617, RFC 8301)", instance)
    signature = _base64(tags["b"][0], f"{where}: b=", instance)
    if not signature:
        raise ARCSyntaxError(f"{where}: b= is empty", instance)
    try:
        domain = checked_domain("d", tags["d"][0].decode("utf-8"), ARCSyntaxError)
        selector = checked_domain("s", tags["s"][0].decode("utf-8"), ARCSyntaxError)
    except UnicodeDecodeError:
        raise ARCSyntaxError(f"{where}: d= or s= is not UTF-8", instance) from None
    except ARCSyntaxError as exc:
        raise ARCSyntaxError(f"{where}: {exc}", instance) from None
    timestamp = _number(tags["t"][0], f"{where}: t=", instance) if "t" in tags else None
    return instance, signature, domain, selector, timestamp


def parse_ams(field: HeaderField) -> ARCSignature:
    """An ARC-Message-Signature's tags, with DKIM's checks (RFC 6376 §3.5, §6.1.1)
    less ``v=`` (ignored, §4.1.2) and the AUID; ``h=`` may not name ARC-Seal."""
    what = "ARC-Message-Signature"
    tags = _tags(field, what, ("i", "a", "b", "bh", "d", "h", "s"))
    instance, signature, domain, selector, timestamp = _common(tags, what)
    where = f"{what} i={instance}"
    body_hash = _base64(tags["bh"][0], f"{where}: bh=", instance)
    canons = (Canon.SIMPLE, Canon.SIMPLE)       # RFC 6376 §3.5: c= defaults to simple/simple
    if "c" in tags:
        head, _, body = tags["c"][0].decode("ascii", "replace").partition("/")
        try:
            canons = (Canon(head), Canon(body or "simple"))
        except ValueError:
            raise ARCSyntaxError(f"{where}: unknown canonicalization c={_show(tags['c'][0])}",
                                 instance) from None
    h = tags["h"][0].lower()
    names = [n.strip(_FWS) for n in h.split(b":")]
    if any(not n or n.translate(None, _FTEXT) for n in names):
        raise ARCSyntaxError(f"{where}: h={_show(tags['h'][0])} is not a list of header "
                             "field names", instance)
    if b"from" not in names:
        raise ARCSyntaxError(f"{where}: h= does not include From, which must be signed "
                             "(RFC 6376 §5.4)", instance)
    if AS in names:
        raise ARCSyntaxError(f"{where}: h= includes ARC-Seal (RFC 8617 §4.1.2)", instance)
    if "l" in tags:
        raise ARCSyntaxError(f"{where}: l= (a partial body signature) is refused", instance)
    expiration = _number(tags["x"][0], f"{where}: x=", instance) if "x" in tags else None
    if timestamp is not None and expiration is not None and expiration < timestamp:
        raise ARCSyntaxError(f"{where}: x={expiration} is earlier than t={timestamp}", instance)
    return ARCSignature(instance, signature, domain, selector, tags["b"][1:], timestamp,
                        body_hash, canons[0], canons[1], tuple(names), expiration)


def parse_seal(field: HeaderField) -> ARCSignature:
    """An ARC-Seal's tags (RFC 8617 §4.1.3): ``h=`` is an error, other unknown tags
    are ignored as in DKIM."""
    what = "ARC-Seal"
    tags = _tags(field, what, ("i", "a", "b", "cv", "d", "s"))
    instance, signature, domain, selector, timestamp = _common(tags, what)
    if "h" in tags:
        raise ARCSyntaxError(f"ARC-Seal i={instance} has an h= tag, which a seal may not "
                             "have (RFC 8617 §4.1.3)", instance)
    try:
        cv = ChainStatus(tags["cv"][0].decode("ascii", "replace").lower())
    except ValueError:
        raise ARCSyntaxError(f"ARC-Seal i={instance}: cv={_show(tags['cv'][0])} is not "
                             "none, pass or fail", instance) from None
    return ARCSignature(instance, signature, domain, selector, tags["b"][1:], timestamp,
                        cv=cv)


def _base64(value: bytes, what: str, instance: int) -> bytes:
    """base64 with FWS allowed anywhere in it (RFC 6376 §2.4)."""
    compact = value.translate(None, _FWS)
    if len(compact) % 4:
        raise ARCSyntaxError(f"{what} is not valid base64", instance)
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error:
        raise ARCSyntaxError(f"{what} is not valid base64", instance) from None


def _number(value: bytes, what: str, instance: int) -> int:
    if not value.isdigit() or len(value) > 12:
        raise ARCSyntaxError(f"{what}{_show(value)} is not a decimal number", instance)
    return int(value)
