"""DANE for SMTP: TLSA records, looked up with DNSSEC, enforced (RFC 7672, RFC 6698/7671).

Where a receiving domain's MX records and its MX host's address records are
DNSSEC-validated and the host publishes TLSA records at
``_25._tcp.<host>``, those records say that the host offers STARTTLS and
which certificate or key it presents.  Delivery to such a host then
requires TLS, and the certificate chain it offers must match one record, or
the host is not used (RFC 7672 §2.2).  DANE takes precedence over MTA-STS:
where DANE applies to a host, its verdict is final, and a failing DANE
validation is never overridden by an MTA-STS policy (RFC 8461 §2).

DNSSEC is not validated here.  Lookups go to a *validating* resolver that we
trust (:class:`ValidatingResolver`, normally unbound on loopback), and only its
AD bit says "secure" (RFC 6698 §4.1, RFC 4035 §3.2.3; the query sets DO and
AD, RFC 6840 §5.7).  A validating resolver answers SERVFAIL for bogus data,
so three outcomes are told apart:

- **secure**: the answer has AD; records or a validated denial of existence;
- **insecure**: an answer without AD (an unsigned zone): DANE does not apply,
  delivery goes the usual way (opportunistic TLS, MTA-STS);
- **failed**: SERVFAIL (bogus, or a broken zone), a time-out: the host, or for
  the MX lookup the whole domain, is deferred (RFC 7672 §2.1.1).

The steps (:class:`DANE` runs them: :meth:`DANE.domain`, then
:meth:`DANE.hosts` for the hosts MX routing found):

1. :func:`mx_security`: the MX RRset must be secure (RFC 7672 §2.2.1); a
   validated "no MX" is secure too, the domain being its own implicit MX.
   A routed host that is not in the validated RRset is not used.
2. :func:`host_security`: the MX host's A/AAAA records must be secure, else
   no TLSA lookup is made (§2.2.2); a secure CNAME makes the expanded name
   the TLSA base domain, tried before the original name.
3. :func:`tlsa_for`: ``_25._tcp.<base domain>`` TLSA; secure records decide.
4. :class:`DANEPolicy`: ``verify`` (usable records: STARTTLS mandatory, the
   chain must match), ``encrypt`` (records, none usable: STARTTLS mandatory,
   no authentication, §2.2), ``none`` (DANE does not apply) or ``failed``.
5. :meth:`DANEPolicy.check` after the handshake, with :func:`peer_chain`.

Matching (RFC 6698 §2.1, RFC 7672 §3.1): usages DANE-TA(2) and DANE-EE(3);
PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (§3.1.3), as are unknown
parameters and digests of the wrong length.  Selectors 0 (the certificate)
and 1 (SubjectPublicKeyInfo), matching types 0 (exact), 1 (SHA-256) and
2 (SHA-512); for each usage and selector only the strongest digest present
is used (RFC 7671 §9).  DANE-EE matches the leaf only and checks neither its
names nor its dates (RFC 7672 §3.1.1).  DANE-TA matches an issuer in the
chain the server sends (which must include the trust anchor, §3.1.2); the
leaf must chain to it by signatures, each certificate below the anchor must
be within its validity dates, and the leaf must name the TLSA base domain or
the MX host (§3.2.2, a wildcard only as the whole leftmost label).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TLSA import TLSA
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from pillarbox.deliver.mx import ascii_domain
from pillarbox.policy.dns import parse_nameserver, servfail_text

__all__ = [
    "DANE", "DANEPolicy", "DANEVerdict", "HostSecurity", "Security", "TLSARecord",
    "TLSAResult", "ValidatingResolver", "host_security", "match_chain", "mx_security",
    "peer_chain", "tlsa_for",
]

PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
USAGES = {PKIX_TA: "PKIX-TA", PKIX_EE: "PKIX-EE", DANE_TA: "DANE-TA", DANE_EE: "DANE-EE"}
DIGEST_SIZES = {1: 32, 2: 64}           # SHA2-256, SHA2-512 (RFC 6698 §2.1.3)

Status = Literal["secure", "insecure", "failed"]


# --------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """One TLSA record (RFC 6698 §2.1): ``3 1 1 <hex>``."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_text(cls, text: str) -> TLSARecord:
        """``"3 1 1 0a1b…"`` (the zone-file form; the hex may contain spaces)."""
        parts = text.split(None, 3)
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            raise ValueError(f"not a TLSA record (usage selector mtype hex): {text!r}")
        try:
            data = bytes.fromhex("".join(parts[3].split()))
        except ValueError:
            raise ValueError(f"TLSA data is not hexadecimal: {text!r}") from None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), data)

    def unusable(self) -> str | None:
        """Why this record cannot be used for SMTP, or None (RFC 7672 §3.1.3)."""
        if self.usage in (PKIX_TA, PKIX_EE):
            return f"usage {USAGES[self.usage]}({self.usage}) is not for SMTP (RFC 7672 3.1.3)"
        if self.usage not in (DANE_TA, DANE_EE):
            return f"unknown usage {self.usage}"
        if self.selector not in (0, 1):
            return f"unknown selector {self.selector}"
        if self.mtype not in (0, 1, 2):
            return f"unknown matching type {self.mtype}"
        size = DIGEST_SIZES.get(self.mtype)
        if size is not None and len(self.data) != size:
            return f"a {size}-byte digest has {len(self.data)} bytes"
        if not self.data:
            return "no data"
        return None

    def short(self) -> str:
        """The record with its data cut to 16 hex digits, for messages."""
        hexdata = self.data.hex()
        return f"{self.usage} {self.selector} {self.mtype} " + (
            hexdata if len(hexdata) <= 16 else hexdata[:16] + "…")

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def usable_records(records: Sequence[TLSARecord]) -> tuple[TLSARecord, ...]:
    """The usable records, keeping for each usage and selector only the strongest
    digest present (SHA2-512 over SHA2-256; exact matches always), RFC 7671 §9."""
    usable = [r for r in records if r.unusable() is None]
    best: dict[tuple[int, int], int] = {}
    for r in usable:
        if r.mtype:
            key = (r.usage, r.selector)
            best[key] = max(best.get(key, 0), r.mtype)
    return tuple(dict.fromkeys(r for r in usable
                               if not r.mtype or r.mtype == best[(r.usage, r.selector)]))


# --------------------------------------------------------------- matching


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _associated(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TLSARecord, cert: x509.Certificate, der: bytes) -> bool:
    return _associated(_selected(cert, der, record.selector), record.mtype) == record.data


def _names(cert: x509.Certificate) -> list[str]:
    """The DNS names of the subjectAltName, else the subject CNs (RFC 6125 §6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if names:
        return names
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(pattern: str, reference: str) -> bool:
    """Whether a certificate name matches a reference identifier; ``*`` only as the
    whole leftmost label, standing for exactly one label (RFC 7672 §3.2.3)."""
    pattern = pattern.lower().rstrip(".")
    reference = reference.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = reference.partition(".")
        return bool(first) and rest == pattern[2:] and "*" not in rest
    return "*" not in pattern and pattern == reference


def _utc(cert: x509.Certificate, which: Literal["before", "after"]) -> datetime.datetime:
    aware = getattr(cert, f"not_valid_{which}_utc", None)   # cryptography 42+
    if isinstance(aware, datetime.datetime):
        return aware
    naive: datetime.datetime = getattr(cert, f"not_valid_{which}")
    return naive.replace(tzinfo=datetime.timezone.utc)


def _label(cert: x509.Certificate) -> str:
    names = _names(cert)
    return names[0] if names else cert.subject.rfc4514_string() or "(no name)"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class DANEVerdict:
    """The outcome of matching one chain: ``ok``, the record that ``matched``
    (None for TLS without authentication), else the ``reason``."""

    ok: bool
    matched: TLSARecord | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.matched is not None:
            return f"DANE {USAGES[self.matched.usage]} {self.matched.short()} matched"
        return f"DANE: {self.reason}" if self.ok else f"DANE failed: {self.reason}"


def _fail(reason: str) -> DANEVerdict:
    return DANEVerdict(False, None, reason)


def match_chain(records: Sequence[TLSARecord], chain: Sequence[bytes],
                reference_names: Sequence[str], *,
                now: datetime.datetime | None = None) -> DANEVerdict:
    """Match the server's chain (DER, leaf first, as sent) against TLSA records.

    ``reference_names``: the names the leaf must carry for DANE-TA (the TLSA
    base domain and the MX host name, RFC 7672 §3.2.2).  DANE-EE matches come
    first: they need no path and no name (§3.1.1).  Unusable records are
    ignored; with none usable the verdict fails ("no usable TLSA record").
    """
    usable = usable_records(records)
    if not chain:
        return _fail("the server sent no certificate")
    certs: list[x509.Certificate] = []
    for i, der in enumerate(chain):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            if i == 0:
                return _fail(f"the server's certificate cannot be read: {exc}")
            break        # an unreadable extra certificate cannot be part of a path
    if not usable:
        return _fail("no usable TLSA record")
    leaf = certs[0]
    for record in usable:
        if record.usage == DANE_EE and _matches(record, leaf, chain[0]):
            return DANEVerdict(True, record)
    anchors = [r for r in usable if r.usage == DANE_TA]
    if not anchors:
        return _fail("the certificate does not match")
    return _match_anchor(anchors, certs, chain, reference_names,
                         now or datetime.datetime.now(datetime.timezone.utc))


def _match_anchor(anchors: list[TLSARecord], certs: list[x509.Certificate],
                  chain: Sequence[bytes], reference_names: Sequence[str],
                  now: datetime.datetime) -> DANEVerdict:
    """DANE-TA (RFC 7671 §5.2, RFC 7672 §3.1.2): walk up from the leaf through the
    certificates the server sent, by signature, to one that matches an anchor."""
    current, path, used = 0, [0], {0}
    found: TLSARecord | None = None
    while found is None:
        issuer = next((i for i in range(1, len(certs)) if i not in used
                       and _issued_by(certs[current], certs[i])), None)
        if issuer is None:
            return _fail("the certificate chain does not lead to a DANE-TA "
                         "trust anchor of the TLSA records")
        found = next((r for r in anchors if _matches(r, certs[issuer], chain[issuer])), None)
        if found is None and not _is_ca(certs[issuer]):
            return _fail(f"{_label(certs[issuer])}, which issued "
                         f"{_label(certs[current])}, is not a CA certificate")
        used.add(issuer)
        path.append(issuer)
        current = issuer
    for i in path[:-1]:      # the anchor itself is trusted as it is (RFC 7671 §5.2.2)
        cert = certs[i]
        if now < _utc(cert, "before"):
            return _fail(f"the certificate of {_label(cert)} is not valid before "
                         f"{_utc(cert, 'before'):%Y-%m-%d %H:%M:%S} UTC")
        if now > _utc(cert, "after"):
            return _fail(f"the certificate of {_label(cert)} expired on "
                         f"{_utc(cert, 'after'):%Y-%m-%d %H:%M:%S} UTC")
    names = _names(certs[0])
    if not any(name_matches(n, ref) for n in names for ref in reference_names):
        return _fail(f"the chain leads to the trust anchor of TLSA {found.short()}, "
                     f"but the certificate names {', '.join(names) or 'nothing'}, "
                     f"not {' or '.join(dict.fromkeys(reference_names))}")
    return DANEVerdict(True, found)


def offered(chain: Sequence[bytes]) -> str:
    """What the leaf would match as DANE-EE, ``3 1 1 <SHA-256 of its key>``: for
    the operator reading a failure, the record the server's key calls for."""
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
    except (ValueError, IndexError):
        return "no readable certificate"
    return str(TLSARecord(DANE_EE, 1, 1, _associated(_selected(leaf, chain[0], 1), 1)))


def peer_chain(tls: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the server sent, DER, leaf first, unverified.

    ``get_unverified_chain()`` is public from Python 3.13; in 3.10–3.12 it is on
    the ``_ssl`` object inside.  Without it, the leaf alone (DANE-EE still works).
    """
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        certs = getter() or []
        out = tuple(c if isinstance(c, bytes) else
                    c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                    for c in certs)
        if out:
            return out
    leaf = tls.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


# -------------------------------------------------------------- DNSSEC lookups


@dataclass(frozen=True, slots=True)
class Security:
    """The DNSSEC status of one lookup (RRset): secure, insecure or failed, and why.
    For an MX lookup, the validated MX host names (``exchanges``; empty for a
    validated "no MX": the domain is its own implicit MX, ``implicit``)."""

    status: Status
    reason: str = ""
    exchanges: tuple[str, ...] = ()
    implicit: bool = False

    def __str__(self) -> str:
        return self.status + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True, slots=True)
class _Answer:
    status: Status
    kind: Literal["data", "nodata", "nxdomain", "error"]
    rdata: tuple[object, ...] = ()
    canonical: str = ""
    reason: str = ""


class ValidatingResolver:
    """Queries a DNSSEC-validating resolver and believes its AD bit.

    The AD bit is only as good as the path from the resolver (RFC 6698 §4.1,
    RFC 4035 §4.9.3): ``nameservers`` (``"127.0.0.1"``, ``"127.0.0.1:5353"``,
    ``"[::1]:5353"``; ``port`` where none is given) must be loopback addresses
    unless ``trust_network`` says the path is protected some other way.  That the
    resolver validates at all is configuration (unbound with a trust anchor);
    a non-validating one never sets AD, so DANE then simply never applies.
    """

    def __init__(self, nameservers: Sequence[str], port: int = 53, timeout: float = 10.0, *,
                 trust_network: bool = False) -> None:
        if not nameservers:
            raise ValueError("a validating resolver needs at least one nameserver address")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not from 1 to 65535")
        servers = []
        for text in nameservers:
            address, number = parse_nameserver(text)
            if not ipaddress.ip_address(address).is_loopback and not trust_network:
                raise ValueError(f"nameserver {text} is not a loopback address: its AD bit "
                                 "cannot be trusted over the network (RFC 6698 4.1); run a "
                                 "validating resolver on this host")
            servers.append(dns.nameserver.Do53Nameserver(address, number if number != 53
                                                         else port))
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(servers)
        resolver.port = port
        resolver.lifetime = timeout
        resolver.timeout = min(2.0, timeout)
        # DO: the resolver sends DNSSEC data; AD in the query asks for the AD bit
        # in the answer (RFC 6840 §5.7).  1232: the usual EDNS buffer size.
        resolver.use_edns(0, dns.flags.DO, 1232)
        resolver.flags = dns.flags.RD | dns.flags.AD
        self._resolver = resolver
        self.nameservers = tuple(str(n) for n in nameservers)

    async def query(self, name: str, rdtype: str) -> _Answer:
        """One lookup: its data, and whether the resolver validated it (AD)."""
        qname = name.rstrip(".") + "."
        try:
            answer = await self._resolver.resolve(qname, rdtype, search=False,
                                                  raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())
            ad = bool(responses) and all(r.flags & dns.flags.AD for r in responses)
            return _Answer("secure" if ad else "insecure", "nxdomain")
        except dns.exception.Timeout:
            return _Answer("failed", "error", reason="time-out")
        except dns.resolver.NoNameservers as exc:
            return _Answer("failed", "error", reason=servfail_text(exc))
        except dns.exception.DNSException as exc:
            return _Answer("failed", "error", reason=f"error ({exc})")
        except OSError as exc:
            return _Answer("failed", "error", reason=f"error ({exc.strerror or exc})")
        status: Status = "secure" if answer.response.flags & dns.flags.AD else "insecure"
        canonical = answer.canonical_name.to_text(omit_final_dot=True).lower()
        if answer.rrset is None:
            return _Answer(status, "nodata", canonical=canonical)
        return _Answer(status, "data", tuple(answer.rrset), canonical)


async def mx_security(resolver: ValidatingResolver, domain: str) -> Security:
    """Whether the MX RRset of ``domain`` (A-labels) is validated (RFC 7672 §2.2.1).

    A validated denial (no MX records) is secure: the domain is then its own
    implicit MX.  NXDOMAIN is left to MX routing, which bounces it."""
    answer = await resolver.query(domain, "MX")
    if answer.status == "failed":
        return Security("failed", f"DNSSEC lookup of MX {domain}: {answer.reason}")
    if answer.status == "insecure":
        return Security("insecure", f"the MX records of {domain} are not DNSSEC-signed")
    exchanges = tuple(r.exchange.to_text(omit_final_dot=True).lower()
                      for r in answer.rdata if isinstance(r, MX))
    return Security("secure", f"MX {domain} validated", exchanges,
                    implicit=answer.kind == "nodata")


@dataclass(frozen=True, slots=True)
class HostSecurity:
    """Whether an MX host's address records are validated, and the TLSA base
    domains to try in order: the CNAME-expanded name first when the expansion
    is secure, then the MX host name itself (RFC 7672 §2.2.2)."""

    status: Status
    base_domains: tuple[str, ...]
    reason: str = ""


async def host_security(resolver: ValidatingResolver, host: str,
                        families: Sequence[str] = ("A", "AAAA")) -> HostSecurity:
    """The DNSSEC status of the A/AAAA records of ``host`` (RFC 7672 §2.2.2)."""
    host = host.lower().rstrip(".")
    bases = [host]
    for rdtype in families:
        answer = await resolver.query(host, rdtype)
        if answer.status == "failed":
            return HostSecurity("failed", (host,),
                                f"DNSSEC lookup of {rdtype} {host}: {answer.reason}")
        if answer.status == "insecure":
            return HostSecurity("insecure", (host,),
                                f"the {rdtype} records of {host} are not DNSSEC-signed")
        if answer.canonical and answer.canonical != host and answer.canonical not in bases:
            bases.insert(0, answer.canonical)
    return HostSecurity("secure", tuple(bases), f"the addresses of {host} are validated")


@dataclass(frozen=True, slots=True)
class TLSAResult:
    """The TLSA RRset at ``name`` (``_25._tcp.mx.example.com``): ``status``; when
    secure, ``records`` (empty: a validated denial, no DANE for the host)."""

    name: str
    status: Status
    records: tuple[TLSARecord, ...] = ()
    reason: str = ""


def tlsa_name(host: str, port: int = 25) -> str:
    return f"_{port}._tcp.{host.lower().rstrip('.')}"


async def tlsa_for(resolver: ValidatingResolver, mx_host: str, port: int = 25) -> TLSAResult:
    """Look up the TLSA records of ``mx_host`` (a TLSA base domain), RFC 7672 §2.2.3."""
    name = tlsa_name(mx_host, port)
    answer = await resolver.query(name, "TLSA")
    if answer.status == "failed":
        return TLSAResult(name, "failed", (), f"DNSSEC lookup of TLSA {name}: {answer.reason}")
    if answer.status == "insecure":
        return TLSAResult(name, "insecure", (), f"TLSA {name} is not DNSSEC-signed")
    records = tuple(TLSARecord(r.usage, r.selector, r.mtype, r.cert)
                    for r in answer.rdata if isinstance(r, TLSA))
    if not records:
        return TLSAResult(name, "secure", (), f"no TLSA records at {name} (validated)")
    return TLSAResult(name, "secure", records, f"{len(records)} TLSA record(s) at {name}")


# ------------------------------------------------------------------ decision


Mode = Literal["none", "encrypt", "verify", "failed"]


@dataclass(frozen=True, slots=True)
class DANEPolicy:
    """What DANE says for one MX host (RFC 7672 §2.2).

    ``mode``:

    - ``none``: DANE does not apply (insecure DNS, or a validated absence of
      TLSA records): the usual TLS policy and MTA-STS decide;
    - ``encrypt``: TLSA records exist but none is usable: STARTTLS is
      mandatory, the certificate is not checked;
    - ``verify``: STARTTLS is mandatory and the chain must match one of
      ``records`` (:meth:`check`);
    - ``failed``: a DNSSEC lookup failed (bogus, SERVFAIL, time-out): the host
      is not to be used now; ``reply`` says why (transient).

    Where ``applies``, MTA-STS is not consulted for this host (RFC 8461 §2).
    ``server_name`` is the SNI to send: the TLSA base domain (RFC 7672 §8.1).
    """

    host: str
    mode: Mode
    base_domain: str
    tlsa_name: str = ""
    records: tuple[TLSARecord, ...] = ()       # usable ones, for "verify"
    reason: str = ""
    reference_names: tuple[str, ...] = ()

    @property
    def applies(self) -> bool:
        return self.mode != "none"

    @property
    def requires_tls(self) -> bool:
        return self.mode in ("encrypt", "verify")

    @property
    def server_name(self) -> str:
        return self.base_domain

    @property
    def reply(self) -> str:
        """For ``failed``: the transient reply that defers delivery to this host."""
        return f"451 4.4.3 DANE: {self.reason}"

    def no_tls_reply(self, where: str, refused: str = "") -> str:
        """The reply when a host under DANE did not do STARTTLS (RFC 7672 §2.2)."""
        return (f"450 4.7.4 DANE: TLSA records at {self.tlsa_name} require STARTTLS, but "
                f"{where} did not offer it{refused}")

    def check(self, chain: Sequence[bytes], where: str = "",
              now: datetime.datetime | None = None) -> DANEVerdict:
        """Match the chain the server sent (``peer_chain``) after the handshake.

        ``encrypt`` accepts any chain; ``verify`` needs a matching record.  The
        verdict's ``reason`` on failure is the whole transient reply for the DSN:
        ``451 4.7.5 DANE: no TLSA record of _25._tcp.mx.example.com matches …``.
        """
        if self.mode == "encrypt":
            return DANEVerdict(True, None, "no usable TLSA record: TLS without "
                               "authentication (RFC 7672 2.2)")
        if self.mode != "verify":
            raise ValueError(f"no certificate to check under DANE mode {self.mode!r}")
        verdict = match_chain(self.records, chain, self.reference_names, now=now)
        if verdict.ok:
            return verdict
        at = f" of {where}" if where else ""
        records = "; ".join(r.short() for r in self.records)
        if verdict.reason == "the certificate does not match":
            why = (f"no TLSA record of {self.tlsa_name} matches the certificate{at} "
                   f"({records}; the certificate offered is {offered(chain)})")
        else:
            why = f"TLSA {self.tlsa_name} ({records}): {verdict.reason}{at}"
        return _fail(f"451 4.7.5 DANE: {why}")


class DANE:
    """The DANE lookups of remote delivery: one per process, over a trusted
    validating resolver (see the module docstring for the steps)."""

    def __init__(self, resolver: ValidatingResolver, *, port: int = 25,
                 families: Sequence[str] = ("A", "AAAA")) -> None:
        self.resolver = resolver
        self.port = port
        self.families = tuple(families)

    async def domain(self, domain: str) -> Security:
        """The MX RRset's security: ``failed`` defers the domain (its ``reason``),
        ``insecure`` means no DANE for any of its hosts.  An address literal has
        no MX records, so no DANE; a domain in U-labels is looked up in A-labels."""
        if domain.startswith("["):
            return Security("insecure", f"{domain} is an address literal")
        try:
            name = ascii_domain(domain)
        except ValueError as exc:       # MX routing refuses it with its own reply
            return Security("insecure", f"{domain} is not a valid domain ({exc})")
        security = await mx_security(self.resolver, name)
        if security.implicit:
            return Security(security.status, security.reason, (name,), implicit=True)
        return security

    async def hosts(self, security: Security, hosts: Sequence[str],
                    port: int | None = None) -> dict[str, DANEPolicy]:
        """The policy of each of a domain's MX hosts, by name (lower case), given
        the domain's MX ``security`` from :meth:`domain`.  Empty unless secure.

        A host that is not in the validated MX RRset is ``failed``: the MX lookup
        of routing gave another answer than the validating resolver (a spoofed
        or stale answer; or routing does not ask the validating resolver, which
        it should), and such a host must not escape DANE."""
        if security.status != "secure":
            return {}
        names = [h.lower().rstrip(".") for h in hosts]
        known = [n for n in names if n in security.exchanges]
        found = await asyncio.gather(*(self.host(n, mx_secure=True, port=port) for n in known))
        out = {p.host: p for p in found}
        for name in names:
            if name not in out:
                out[name] = DANEPolicy(name, "failed", name, reason=(
                    f"{name} is not among the DNSSEC-validated MX hosts of the domain "
                    f"({', '.join(security.exchanges) or 'none'})"))
        return out

    def domain_reply(self, security: Security) -> str:
        """The transient reply for a failed MX security lookup."""
        return f"451 4.4.3 DANE: {security.reason}"

    async def host(self, mx_host: str, *, mx_secure: bool, port: int | None = None
                   ) -> DANEPolicy:
        """The policy for one MX host (``mx_secure``: :meth:`domain` was secure)."""
        host = mx_host.lower().rstrip(".")
        port = self.port if port is None else port
        if not mx_secure:
            return DANEPolicy(host, "none", host, reason="the MX records are not validated")
        addresses = await host_security(self.resolver, host, self.families)
        if addresses.status == "failed":
            return DANEPolicy(host, "failed", host, reason=addresses.reason)
        if addresses.status == "insecure":
            return DANEPolicy(host, "none", host, reason=addresses.reason)
        result: TLSAResult | None = None
        for base in addresses.base_domains:
            result = await tlsa_for(self.resolver, base, port)
            if result.status == "failed":
                return DANEPolicy(host, "failed", base, result.name, reason=result.reason)
            if result.status == "insecure":
                return DANEPolicy(host, "none", base, result.name, reason=result.reason)
            if result.records:
                break
        assert result is not None
        if not result.records:
            return DANEPolicy(host, "none", host, result.name, reason=result.reason)
        base = result.name.split(".", 2)[2]
        references = tuple(dict.fromkeys((base, host)))
        usable = usable_records(result.records)
        if not usable:
            why = "; ".join(f"{r.short()}: {r.unusable()}" for r in result.records)
            return DANEPolicy(host, "encrypt", base, result.name, (),
                              f"no usable TLSA record at {result.name} ({why})", references)
        return DANEPolicy(host, "verify", base, result.name, usable,
                          f"{len(usable)} usable TLSA record(s) at {result.name}", references)
