"""``pillarbox dns check DOMAIN``: what a mail domain should publish, and what it does.

A domain that Pillarbox serves needs a handful of DNS records before other
post offices deliver to it and believe its mail.  This command says which,
as zone-file lines to paste, from our configuration (``server.hostname``,
the server's public addresses, the DKIM keys in the data directory, the
MTA-STS policy of ``[mta_sts]``), and then asks the DNS what is published,
item by item, in plain words:

====================  =====================================================
MX                    mail for the domain goes to ``server.hostname``
                      (RFC 5321 §5.1), not a null MX (RFC 7505), hosts
                      with addresses, no CNAME (RFC 2181 §10.3)
host                  ``server.hostname`` has the server's A/AAAA records
SPF                   exactly one ``v=spf1`` record (RFC 7208 §4.5), that
                      parses (§4.6) and lets the server's addresses pass
DKIM                  each key of ours published at its selector, the same
                      key (RFC 6376 §3.6.2)
DMARC                 one ``v=DMARC1`` record at ``_dmarc`` with ``p=``
                      (RFC 7489 §6.3, §6.6.3), or the organisational
                      domain's
MTA-STS               one ``v=STSv1`` record at ``_mta-sts`` with the id of
                      the policy we serve, and ``mta-sts.DOMAIN`` reaching
                      this server (RFC 8461 §3)
TLS-RPT               one ``v=TLSRPTv1`` record at ``_smtp._tls`` with
                      ``rua=`` (RFC 8460 §3)
PTR                   each address's PTR names ``server.hostname``, which
                      resolves back to it (forward-confirmed, RFC 1912 §2.1)
====================  =====================================================

Each finding is ok, missing, wrong, or unknown (the DNS did not answer); the
command exits 0 only when every one is ok.  The MTA-STS policy itself is
not fetched over HTTPS: this is a DNS check.

The command line is ``pillarbox.admin.dns_cli``.

DKIM keys are those ``pillarbox dkim keygen`` made: the store's list with
their states (``pillarbox.store.dkim_keys``: pending keys are to be
published before ``pillarbox dkim activate``, active ones sign, retired ones
stay published for ``dkim.overlap``), their key files at
``DATA_DIR/dkim/DOMAIN/SELECTOR.pem`` (``pillarbox.policy.dkim.keyring``);
without a database, the key files alone.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pillarbox.admin.commands import AdminError
from pillarbox.admin.names import normalize_domain
from pillarbox.deliver.mta_sts import Policy as STSPolicy
from pillarbox.deliver.mta_sts import PolicyError, mx_matches, parse_txt_record
from pillarbox.policy.dkim.keyring import key_path
from pillarbox.policy.dkim.keys import key_record, read_private_key, record_name, zone_lines
from pillarbox.policy.dkim.record import KeyRecordError, checked_domain, parse_key_record
from pillarbox.policy.dkim.sign import PrivateKey
from pillarbox.policy.dmarc import DMARCRecord, DMARCRecordError, Policy
from pillarbox.policy.dns import DNSTemporaryError, Resolver
from pillarbox.policy.psl import organizational_domain
from pillarbox.policy.rdns import IPRevResult, verified_reverse_name
from pillarbox.policy.spf import Result as SPFStatus
from pillarbox.policy.spf import SPFPermError, check_host, parse_record

if TYPE_CHECKING:
    from pillarbox.config import Config

__all__ = ["Finding", "Report", "Setup", "SigningKey", "Status", "check_domain",
           "find_dkim_keys", "setup_from_config", "stored_dkim_keys", "zone_file"]


class Status(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    WRONG = "wrong"
    UNKNOWN = "unknown"      # the DNS did not answer: not known to be fine


@dataclass(frozen=True, slots=True)
class Finding:
    """One item of what is published, e.g. ``Finding("SPF", Status.WRONG, "...")``."""

    item: str
    status: Status
    text: str

    def __str__(self) -> str:
        return f"{self.status.value:<8} {self.item:<9} {self.text}"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A DKIM key of ours: its selector, its file and key (None if unreadable, with
    ``error``), its state in the store (``""``: not known, only the file was
    found), and for a retired key until when its record must stay published."""

    domain: str
    selector: str
    path: Path
    key: PrivateKey | None
    error: str = ""
    state: str = ""
    keep_until: float | None = None


@dataclass(frozen=True)
class Setup:
    """What this server is, for one domain: its name, its public addresses (and
    whether they came from the DNS rather than the operator), its DKIM keys, the
    MTA-STS policy it serves (None: ``mta_sts.listen`` is empty) and its id, and
    where reports should go."""

    domain: str
    hostname: str
    addresses: tuple[str, ...] = ()
    dkim: tuple[SigningKey, ...] = ()
    mta_sts: STSPolicy | None = None
    mta_sts_id: str = ""
    reports: str = ""          # rua address; "" is postmaster@DOMAIN

    @property
    def report_address(self) -> str:
        return self.reports or f"postmaster@{self.domain}"


@dataclass
class Report:
    """What to publish (zone-file lines under comments) and what is published."""

    setup: Setup
    publish: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status is Status.OK for f in self.findings)

    def add(self, item: str, status: Status, text: str) -> None:
        self.findings.append(Finding(item, status, text))

    def render(self) -> str:
        s = self.setup
        shown = ", ".join(s.addresses) or "addresses not known"
        lines = [f"Records to publish for {s.domain} (this server: {s.hostname}, {shown}):", ""]
        lines += self.publish
        lines += ["", "What is published now:"]
        width = max((len(f.item) for f in self.findings), default=0)
        lines += [f"  {f.status.value:<8} {f.item:<{width}}  {_printable(f.text)}"
                  for f in self.findings]
        bad = sum(f.status is not Status.OK for f in self.findings)
        lines.append("")
        if bad:
            lines.append(f"{bad} of {len(self.findings)} items need attention.")
        else:
            lines.append(f"All {len(self.findings)} items are as they should be.")
        return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    """DNS text (TXT records are any octets) made safe for a terminal: no control
    characters, so a record cannot move the cursor or change colours."""
    return "".join(c if c.isprintable() else "?" for c in text)


# --- what we have: DKIM keys ---------------------------------------------------------


def _signing_key(data_dir: Path, domain: str, selector: str, state: str = "",
                 keep_until: float | None = None) -> SigningKey:
    path = data_dir / "dkim" / domain / f"{selector}.pem"
    try:
        checked_domain("s", selector)      # a selector is a DNS name (RFC 6376 §3.1)
        path = key_path(data_dir, domain, selector)
        return SigningKey(domain, selector, path, read_private_key(path), "", state, keep_until)
    except ValueError as e:
        return SigningKey(domain, selector, path, None, f"{path}: {e}", state, keep_until)


def find_dkim_keys(data_dir: Path, domain: str) -> tuple[SigningKey, ...]:
    """The key files of ``domain`` under ``data_dir/dkim/DOMAIN/``, by selector."""
    where = data_dir / "dkim" / domain
    if not where.is_dir():
        return ()
    selectors = sorted(p.stem for p in where.iterdir()
                       if p.suffix == ".pem" and p.is_file() and not p.name.startswith("."))
    return tuple(_signing_key(data_dir, domain, sel) for sel in selectors)


def stored_dkim_keys(data_dir: Path, domain: str, overlap: float
                     ) -> tuple[SigningKey, ...] | None:
    """The store's keys of ``domain`` with their states; None when there is no
    database to ask (or it has no key table yet): then only files can tell."""
    import sqlite3

    from pillarbox.store.base import StoreError
    from pillarbox.store.dkim_keys import RETIRED
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys
    from pillarbox.store.sqlite.store import SQLiteStore

    if not (data_dir / "pillarbox.db").is_file():
        return None
    try:
        store = SQLiteStore(data_dir).open()
    except (OSError, sqlite3.Error, StoreError):
        return None
    try:
        rows = SQLiteDKIMKeys(store).dkim_keys(domain)
    except (sqlite3.Error, StoreError):
        return None
    finally:
        store.close()
    return tuple(_signing_key(data_dir, domain, k.selector, k.state,
                              k.changed + overlap if k.state == RETIRED else None)
                 for k in rows)


# --- the zone lines ---------------------------------------------------------------


def _txt(text: str) -> str:
    """A TXT value as zone-file strings of at most 255 octets (RFC 1035 §3.3)."""
    data = text.encode("utf-8")
    return " ".join('"' + data[i:i + 255].decode("utf-8", "replace").replace('"', '\\"') + '"'
                    for i in range(0, len(data), 255))


_STATE_NOTES = {"pending": "new, not signing yet: publish it, then 'pillarbox dkim activate'",
                "active": "signs mail now"}


def _day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%MZ", time.gmtime(timestamp))


def _version(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def spf_record(s: Setup) -> str:
    """``v=spf1 mx -all``, with the server's addresses when they are known."""
    terms = ["v=spf1", "mx"] + [f"ip{_version(a)}:{a}" for a in s.addresses] + ["-all"]
    return " ".join(terms)


def dmarc_record(s: Setup) -> str:
    return f"v=DMARC1; p=none; rua=mailto:{s.report_address}"


def tlsrpt_record(s: Setup) -> str:
    return f"v=TLSRPTv1; rua=mailto:{s.report_address}"


def zone_file(s: Setup) -> list[str]:
    d, h = s.domain, s.hostname
    out = [] if _usable_hostname(h) else [
        f"; server.hostname is {h}: set it to the server's public name first (e.g.",
        f"; mail.{d}); the lines below name the server by it.", ""]
    out += [f"; MX: mail for {d} goes to this server (RFC 5321 §5.1)",
           f"{d}. IN MX 10 {h}."]
    if s.addresses:
        out += [f"{h}. IN {'AAAA' if _version(a) == 6 else 'A'} {a}" for a in s.addresses]
    else:
        out.append(f"; {h}. IN A <the server's public IPv4 address>  (give --address IP)")
    out += ["", "; SPF: only this server sends mail for the domain (RFC 7208)",
            f"{d}. IN TXT {_txt(spf_record(s))}", ""]
    if s.dkim:
        out.append("; DKIM: the public keys of the signing keys (RFC 6376 §3.6.1)")
        for k in s.dkim:
            state = _STATE_NOTES.get(k.state, "")
            if k.keep_until is not None:
                state = f"retired: keep it published until {_day(k.keep_until)}"
            if state:
                out.append(f"; {k.selector}: {state}")
            if k.key is None:
                out.append(f"; {k.error}")
            else:
                out.append(zone_lines(k.selector, d, k.key))
    else:
        out += [f"; DKIM: {d} has no signing key yet; make them with",
                f";   pillarbox dkim keygen {d}",
                "; publish the records it prints, then 'pillarbox dkim activate'."]
    out += ["", "; DMARC: start with p=none and read the reports sent to rua; once they",
            "; show that all your mail passes, change to p=quarantine (RFC 7489 §6.3)",
            f"_dmarc.{d}. IN TXT {_txt(dmarc_record(s))}", ""]
    out.append("; MTA-STS: senders must use TLS to reach this server (RFC 8461)")
    if s.mta_sts is not None:
        out += [f'_mta-sts.{d}. IN TXT "v=STSv1; id={s.mta_sts_id}"',
                f"mta-sts.{d}. IN CNAME {h}.",
                f"; policy: https://mta-sts.{d}/.well-known/mta-sts.txt (mode "
                f"{s.mta_sts.mode.value}); the TLS certificate must also cover mta-sts.{d}"]
    else:
        out += ["; not served by this server yet: set mta_sts.listen (port 443), then",
                f"; publish _mta-sts.{d} and mta-sts.{d} as this command will show"]
    out += ["", "; TLS-RPT: where senders report TLS failures (RFC 8460)",
            f"_smtp._tls.{d}. IN TXT {_txt(tlsrpt_record(s))}"]
    if s.addresses:
        out += ["", "; PTR: set by whoever holds the address (your hosting provider), "
                    f"not in {d}'s zone"]
        out += [f"{ipaddress.ip_address(a).reverse_pointer}. IN PTR {h}." for a in s.addresses]
    return out


# --- what is published ---------------------------------------------------------------


async def check_domain(setup: Setup, resolver: Resolver) -> Report:
    """What ``setup.domain`` should publish, and the findings on what it does."""
    s = setup
    if not s.addresses and _usable_hostname(s.hostname):
        try:
            s = replace(s, addresses=await _addresses(resolver, s.hostname))
        except DNSTemporaryError:
            pass      # the host check says so
    report = Report(s, zone_file(s))
    for item, check in _CHECKS:
        try:
            await check(s, resolver, report)
        except DNSTemporaryError as e:
            report.add(item, Status.UNKNOWN, f"the DNS did not answer: {e}")
    return report


def _usable_hostname(name: str) -> bool:
    return "." in name and name.lower() not in ("localhost", "localhost.localdomain")


async def _addresses(resolver: Resolver, name: str) -> tuple[str, ...]:
    a = await resolver.query(name, "A")
    aaaa = await resolver.query(name, "AAAA")
    return a.records + aaaa.records


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _names(names: Iterable[str]) -> str:
    items = list(names)
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


async def _check_mx(s: Setup, r: Resolver, report: Report) -> None:
    answer = await r.query(s.domain, "MX")
    fix = f"publish {s.domain}. IN MX 10 {s.hostname}."
    if answer.nxdomain:
        report.add("MX", Status.MISSING, f"{s.domain} does not exist in the DNS; {fix}")
        return
    hosts = [h.lower() for h in answer.records]
    if not hosts:
        report.add("MX", Status.MISSING, f"no MX record: senders fall back to {s.domain}'s own "
                   f"address (RFC 5321 §5.1); {fix}")
        return
    if "." in hosts or "" in hosts:
        report.add("MX", Status.WRONG, f"{s.domain} has a null MX (\"0 .\"): it says it accepts "
                   f"no mail at all (RFC 7505); {fix} instead")
        return
    problems = []
    for host in hosts:
        if _is_address(host):
            problems.append(f"MX points to {host}, an address: an MX names a host "
                            "(RFC 5321 §5.1)")
            continue
        if (await r.query(host, "CNAME")).records:
            problems.append(f"MX points to {host}, which is a CNAME: an MX must name the "
                            "host itself (RFC 2181 §10.3)")
        if not await _addresses(r, host):
            problems.append(f"MX points to {host}, which has no A/AAAA record")
    if s.mta_sts is not None:
        outside = [h for h in hosts if not any(mx_matches(p, h) for p in s.mta_sts.mx)]
        if outside:
            problems.append(f"MX host {_names(outside)} is not in our MTA-STS policy's mx "
                            f"({', '.join(s.mta_sts.mx)}): senders that enforce it will "
                            "not deliver there")
    if _usable_hostname(s.hostname) and s.hostname.lower() not in hosts:
        problems.append(f"mail for {s.domain} goes to {_names(hosts)}, not to this server "
                        f"({s.hostname}); {fix}")
    if problems:
        for p in problems:
            report.add("MX", Status.WRONG, p)
    else:
        report.add("MX", Status.OK, f"mail for {s.domain} goes to {_names(hosts)}")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _check_host(s: Setup, r: Resolver, report: Report) -> None:
    h = s.hostname
    if not _usable_hostname(h):
        report.add("host", Status.WRONG, f"server.hostname is {h}, which no one else can "
                   "reach: set it to the server's public name (pillarbox.toml, or "
                   f"-o server.hostname=mail.{s.domain})")
        return
    found = await _addresses(r, h)
    if not found:
        report.add("host", Status.MISSING, f"{h} (server.hostname) has no A/AAAA record: "
                   "publish the server's addresses")
        return
    absent = [a for a in s.addresses if not any(_same_address(a, f) for f in found)]
    if absent:
        report.add("host", Status.WRONG, f"{h} resolves to {', '.join(found)}, not to "
                   f"{_names(absent)}")
    else:
        report.add("host", Status.OK, f"{h} resolves to {', '.join(found)}")


async def _check_spf(s: Setup, r: Resolver, report: Report) -> None:
    answer = await r.query(s.domain, "TXT")
    records = [t for t in answer.records if t[:6].lower() == "v=spf1" and t[6:7] in ("", " ")]
    fix = f'publish {s.domain}. IN TXT "{spf_record(s)}"'
    if not records:
        report.add("SPF", Status.MISSING, f"no v=spf1 record at {s.domain}: receivers cannot "
                   f"tell your mail from forgeries; {fix}")
        return
    if len(records) > 1:
        report.add("SPF", Status.WRONG, f"{len(records)} v=spf1 records: receivers treat "
                   "that as a permanent error (RFC 7208 §4.5); publish one")
        return
    try:
        parse_record(records[0])
    except SPFPermError as e:
        report.add("SPF", Status.WRONG, f"the record does not parse ({e}): receivers treat "
                   f"that as a permanent error (RFC 7208 §4.6); {fix}")
        return
    words = records[0].lower().split()
    if "+all" in words or "all" in words:
        report.add("SPF", Status.WRONG, "the record ends in +all: it lets anyone send as "
                   f"{s.domain}; end it with -all")
        return
    if not s.addresses:
        report.add("SPF", Status.OK, f'"{records[0]}" (give --address to check that it '
                   "covers this server)")
        return
    bad = []
    for a in s.addresses:
        result = await check_host(a, s.domain, f"postmaster@{s.domain}", s.hostname, r)
        if result.result is SPFStatus.TEMPERROR:
            raise DNSTemporaryError(s.domain, "TXT", result.reason)
        if result.result is SPFStatus.PERMERROR:
            report.add("SPF", Status.WRONG, f"evaluating the record fails ({result.reason}): "
                       "receivers treat that as a permanent error (RFC 7208 §4.6.4)")
            return
        if result.result is not SPFStatus.PASS:
            bad.append(f"{a} ({result.result.value})")
    if bad:
        report.add("SPF", Status.WRONG, f"the record does not let this server's address "
                   f"{_names(bad)} send for {s.domain}; {fix}")
    else:
        report.add("SPF", Status.OK, f'"{records[0]}" lets {_names(s.addresses)} send')


def _public(key: Any) -> bytes:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return bytes(public.public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))


async def _check_dkim(s: Setup, r: Resolver, report: Report) -> None:
    if not s.dkim:
        report.add("DKIM", Status.MISSING, f"{s.domain} has no DKIM key: its mail goes "
                   f"unsigned; make them with 'pillarbox dkim keygen {s.domain}'")
        return
    now = time.time()
    for k in s.dkim:
        item = f"DKIM {k.selector}"
        if k.key is None:
            report.add(item, Status.WRONG, k.error)
            continue
        name = record_name(k.selector, s.domain)
        may_go = k.keep_until is not None and k.keep_until <= now
        answer = await r.query(name, "TXT")
        if not answer.records:
            if may_go:
                report.add(item, Status.OK, f"retired, and its overlap is over: no record "
                           f"needed ('pillarbox dkim remove {s.domain} {k.selector}')")
            elif k.keep_until is not None:
                report.add(item, Status.MISSING, f"no key record at {name}: the key is retired, "
                           "but mail it signed must still verify; publish it again until "
                           f"{_day(k.keep_until)}")
            elif k.state == "pending":
                report.add(item, Status.MISSING, f"no key record at {name}: publish the DKIM "
                           "line above before 'pillarbox dkim activate'")
            else:
                report.add(item, Status.MISSING, f"no key record at {name}: signatures with "
                           "it fail; publish the DKIM line above")
            continue
        if len(answer.records) > 1:
            report.add(item, Status.WRONG, f"{len(answer.records)} TXT records at {name}: "
                       "verifiers may take any one (RFC 6376 §3.6.2.2); publish one")
            continue
        try:
            published = parse_key_record(answer.records[0])
        except KeyRecordError as e:
            report.add(item, Status.WRONG, f"the record at {name} is not a usable key "
                       f"record ({e}); publish the DKIM line above")
            continue
        if published.key is None:
            report.add(item, Status.WRONG, f"the key at {name} is revoked (empty p=): "
                       "signatures with it fail")
        elif _public(published.key) != _public(k.key):
            report.add(item, Status.WRONG, f"the key at {name} is not the key in {k.path}: "
                       "signatures fail; publish the DKIM line above")
        else:
            kind = key_record(k.key).split(";")[1].strip()
            text = f"{name} has our key ({kind})"
            if k.state == "pending":
                text += f"; ready for 'pillarbox dkim activate {s.domain} {k.selector}'"
            elif k.keep_until is not None:
                text += ("; retired, its record may go now" if may_go
                         else f"; retired, keep it until {_day(k.keep_until)}")
            if published.testing:
                text += "; in testing mode (t=y): remove t=y once signatures verify"
            report.add(item, Status.OK, text)


async def _dmarc_records(r: Resolver, domain: str) -> list[DMARCRecord | str]:
    """The DMARC records at ``_dmarc.domain`` (RFC 7489 §6.6.3: the others discarded)."""
    out: list[DMARCRecord | str] = []
    for text in (await r.query(f"_dmarc.{domain}", "TXT")).records:
        try:
            out.append(DMARCRecord.parse(text))
        except DMARCRecordError:
            if text.lstrip(" \t")[:8].lower() == "v=dmarc1":
                out.append(text)     # v=DMARC1 in the wrong case or spacing
    return out


async def _check_dmarc(s: Setup, r: Resolver, report: Report) -> None:
    where = f"_dmarc.{s.domain}"
    fix = f'publish {where}. IN TXT "{dmarc_record(s)}"'
    records = await _dmarc_records(r, s.domain)
    if not records:
        org = organizational_domain(s.domain)
        if org != s.domain and len(await _dmarc_records(r, org)) == 1:
            report.add("DMARC", Status.OK, f"no record at {where}; the one of {org} applies "
                       "(its sp= if it has one)")
            return
        report.add("DMARC", Status.MISSING, f"no DMARC record at {where}: receivers apply no "
                   f"policy to forgeries of {s.domain} and send you no reports; {fix}")
        return
    if len(records) > 1:
        report.add("DMARC", Status.WRONG, f"{len(records)} DMARC records at {where}: "
                   "receivers ignore them all (RFC 7489 §6.6.3); publish one")
        return
    record = records[0]
    if isinstance(record, str):
        report.add("DMARC", Status.WRONG, f"the record must start with exactly v=DMARC1 "
                   f"(RFC 7489 §6.4): {record[:60]!r}")
        return
    problems = [e for e in (record.p_error, record.sp_error, record.np_error) if e]
    problems += list(record.warnings)
    if problems:
        for p in problems:
            text = "DMARC record has no p= tag" if p == "no p= tag" else f"DMARC record: {p}"
            report.add("DMARC", Status.WRONG, f"{text} (RFC 7489 §6.3)")
        return
    notes = []
    if record.p is Policy.NONE:
        notes.append("p=none only asks for reports; when they show that all your mail "
                     "passes, change to p=quarantine")
    else:
        verb = "quarantine" if record.p is Policy.QUARANTINE else "refuse"
        notes.append(f"p={record.p}: receivers {verb} forgeries of {s.domain}")
    if record.pct != 100:
        notes.append(f"pct={record.pct}: the policy applies to {record.pct} % of failing mail")
    if not record.rua:
        notes.append("no rua=, so no reports: add rua=mailto:" + s.report_address)
    report.add("DMARC", Status.OK, "; ".join(notes))


async def _check_mta_sts(s: Setup, r: Resolver, report: Report) -> None:
    where = f"_mta-sts.{s.domain}"
    answer = await r.query(where, "TXT")
    records = [t for t in answer.records if t.startswith("v=STSv1")]
    if not records:
        if s.mta_sts is None:
            report.add("MTA-STS", Status.MISSING, f"no record at {where}, and this server does "
                       "not serve a policy: set mta_sts.listen, then publish the records")
        else:
            report.add("MTA-STS", Status.MISSING, f"no record at {where}: senders do not know "
                       f'you have a policy; publish {where}. IN TXT "v=STSv1; '
                       f'id={s.mta_sts_id}"')
        return
    if len(records) > 1:
        report.add("MTA-STS", Status.WRONG, f"{len(records)} v=STSv1 records at {where}: "
                   "senders then assume no policy (RFC 8461 §3.1); publish one")
        return
    try:
        published_id = parse_txt_record(records[0])
    except PolicyError as e:
        report.add("MTA-STS", Status.WRONG, f"{e} (RFC 8461 §3.1)")
        return
    if s.mta_sts is None:
        report.add("MTA-STS", Status.WRONG, f"{where} announces a policy (id={published_id}), "
                   "but this server does not serve one (mta_sts.listen is empty): senders "
                   "that fetch it fail")
        return
    problems = []
    if published_id != s.mta_sts_id:
        problems.append(f"{where} has id={published_id}, but the policy this server serves "
                        f"has id={s.mta_sts_id}: senders keep the old policy; publish the new "
                        "id")
    host = f"mta-sts.{s.domain}"
    found = await _addresses(r, host)
    if not found:
        problems.append(f"{host} has no A/AAAA record: senders cannot fetch the policy; "
                        f"publish {host}. IN CNAME {s.hostname}.")
    elif s.addresses and not any(_same_address(a, f) for a in s.addresses for f in found):
        problems.append(f"{host} resolves to {', '.join(found)}, not to this server")
    if problems:
        for p in problems:
            report.add("MTA-STS", Status.WRONG, p)
    else:
        report.add("MTA-STS", Status.OK, f"id={published_id}, the policy served at "
                   f"https://{host}/.well-known/mta-sts.txt (mode {s.mta_sts.mode.value})")


def _tlsrpt_problem(text: str) -> str | None:
    """What is wrong with a ``v=TLSRPTv1`` record (RFC 8460 §3), or None."""
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts[0] != "v=TLSRPTv1":
        return "the record must start with v=TLSRPTv1;"
    fields = dict(p.partition("=")[::2] for p in parts[1:] if p)
    rua = fields.get("rua")
    if rua is None:
        return "the record has no rua= (where reports go)"
    for uri in (u.strip(" \t") for u in rua.split(",")):
        if not (uri.startswith("mailto:") and "@" in uri) and not uri.startswith("https://"):
            return f"rua= {uri!r} is neither a mailto: address nor an https: URL"
    return None


async def _check_tlsrpt(s: Setup, r: Resolver, report: Report) -> None:
    where = f"_smtp._tls.{s.domain}"
    records = [t for t in (await r.query(where, "TXT")).records if t.startswith("v=TLSRPTv1")]
    if not records:
        report.add("TLS-RPT", Status.MISSING, f"no record at {where}: senders cannot tell you "
                   f'when TLS to you fails; publish {where}. IN TXT "{tlsrpt_record(s)}"')
    elif len(records) > 1:
        report.add("TLS-RPT", Status.WRONG, f"{len(records)} v=TLSRPTv1 records at {where}: "
                   "senders then send no reports (RFC 8460 §3); publish one")
    elif (problem := _tlsrpt_problem(records[0])) is not None:
        report.add("TLS-RPT", Status.WRONG, f"{problem} (RFC 8460 §3)")
    else:
        report.add("TLS-RPT", Status.OK, f'"{records[0]}"')


async def _check_ptr(s: Setup, r: Resolver, report: Report) -> None:
    if not s.addresses:
        report.add("PTR", Status.UNKNOWN, "the server's addresses are not known: give them "
                   "with --address IP")
        return
    for a in s.addresses:
        item = f"PTR {a}"
        rev = await verified_reverse_name(a, r)
        h = s.hostname.lower()
        if rev.result is IPRevResult.PASS and rev.name == h:
            report.add(item, Status.OK, f"{a} is {h}, which resolves back to it")
        elif rev.result is IPRevResult.PASS:
            report.add(item, Status.WRONG, f"PTR of {a} is {rev.name}, not {h} (the name this "
                       f"server gives in EHLO); have it set to {h}")
        elif rev.result is IPRevResult.FAIL:
            report.add(item, Status.WRONG, f"PTR of {a} is {_names(rev.names)}, which does not "
                       f"resolve back to {a}; have it set to {h}")
        elif rev.result is IPRevResult.PERMERROR:
            report.add(item, Status.MISSING, f"no PTR record for {a}: many receivers refuse "
                       "mail from such addresses; ask whoever holds the address (your hosting "
                       f"provider) to set it to {h}")
        else:
            report.add(item, Status.UNKNOWN, f"the DNS did not answer: {rev.reason}")


_CHECKS: tuple[tuple[str, Callable[[Setup, Resolver, Report], Awaitable[None]]], ...] = (
    ("MX", _check_mx), ("host", _check_host), ("SPF", _check_spf), ("DKIM", _check_dkim),
    ("DMARC", _check_dmarc), ("MTA-STS", _check_mta_sts), ("TLS-RPT", _check_tlsrpt),
    ("PTR", _check_ptr),
)


# --- the command -----------------------------------------------------------------------


def setup_from_config(config: Config, domain: str, addresses: Sequence[str]) -> Setup:
    """The :class:`Setup` of ``domain`` from a loaded configuration and ``--address``es."""
    from pillarbox.net.mta_sts_server import our_policy, policy_id

    try:
        name = normalize_domain(domain)
    except ValueError as e:
        raise AdminError(str(e)) from None
    shown: list[str] = []
    for a in addresses:
        try:
            shown.append(str(ipaddress.ip_address(a.strip().strip("[]"))))
        except ValueError:
            raise AdminError(f"--address {a!r} is not an IP address") from None
    hostname = config.server.hostname.lower().rstrip(".")
    data_dir = Path(config.server.data_dir)
    keys = stored_dkim_keys(data_dir, name, config.dkim.overlap)
    policy = our_policy(config.mta_sts, hostname) if config.mta_sts.listen else None
    if keys is None:
        keys = find_dkim_keys(data_dir, name)
    return Setup(name, hostname, tuple(dict.fromkeys(shown)), keys, policy,
                 policy_id(policy) if policy is not None else "")
