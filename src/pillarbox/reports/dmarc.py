"""DMARC aggregate reports (RFC 7489 §7.2, the XML of Appendix C).

:class:`DMARCRecorder` counts each DMARC evaluation of received mail whose
policy record asks for aggregate reports (``rua=``): one row per (policy
domain, source IP, disposition, the policy-evaluated DKIM and SPF results,
header From: domain, the authentication results), under the UTC day it
was received.  The disposition is what Pillarbox did with the message
(the verdict after our own enforcement), as §7.2.1 asks, and an override
of the published policy carries its reason (``sampled_out`` for pct,
``local_policy`` for our enforcement mode).

At report time :func:`group` gathers a day's rows per policy domain,
:class:`AggregateReport` renders the ``feedback`` document with its
elements in the order Appendix C gives, and :func:`destinations` picks the
``mailto:`` addresses of ``rua`` that may receive it: one in another
Organizational Domain than the policy domain's must be confirmed by a
``<policy-domain>._report._dmarc.<its domain>`` TXT record starting with
``v=DMARC1`` (§7.1, external destination verification); without one it is
skipped.  Other URI schemes are skipped (§7.2.1 defines only mailto for
aggregate reports in practice; https is not an RFC 7489 transport).
"""

from __future__ import annotations

import logging
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillarbox.policy.dkim.verify import DKIMResult
from pillarbox.policy.dmarc import DMARCRecord, DMARCRecordError, DMARCResult, Status
from pillarbox.policy.dns import DNSTemporaryError, Resolver
from pillarbox.policy.psl import PublicSuffixList, default_list
from pillarbox.policy.spf import SPFResult
from pillarbox.policy.verdict import Action, Verdict
from pillarbox.reports.spool import ReportSpool

__all__ = ["AggregateReport", "DMARCRecorder", "Destination", "PolicyRows", "destinations",
           "group"]

KIND = "dmarc"

log = logging.getLogger("pillarbox.reports")


class DMARCRecorder:
    """Counts DMARC results for the aggregate reports (called by ``receive/origin.py``)."""

    def __init__(self, spool: ReportSpool) -> None:
        self.spool = spool

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> DMARCRecorder:
        """Counting into ``<data_dir>/reports/dmarc/`` (``pillarbox.reports.spool``)."""
        return cls(ReportSpool(data_dir, KIND))

    def record(self, dmarc: DMARCResult, ip: str | None, spf: SPFResult | None,
               dkim: Sequence[DKIMResult], verdict: Verdict, when: float | None = None) -> None:
        self.count(self.row(dmarc, ip, spf, dkim, verdict), when)

    def row(self, dmarc: DMARCResult, ip: str | None, spf: SPFResult | None,
            dkim: Sequence[DKIMResult], verdict: Verdict) -> str | None:
        """The row of one evaluation as the spool keeps it (None: nobody asks for it),
        for :meth:`count`; a judgement that is reused (``receive/origin.py``) makes
        its row once and counts it per message."""
        try:
            row = row_of(dmarc, ip, spf, dkim, verdict)
            return None if row is None else self.spool.key(row)
        except Exception:  # noqa: BLE001 - a bug in counting must never refuse mail
            log.exception("recording the DMARC result for the reports failed")
            return None

    def count(self, row: str | None, when: float | None = None) -> None:
        """Count one message under ``row`` (from :meth:`row`; None counts nothing)."""
        if row is None:
            return
        try:
            self.spool.add_key(row, when=when)
        except Exception:  # noqa: BLE001 - a bug in counting must never refuse mail
            log.exception("recording the DMARC result for the reports failed")

    def flush(self) -> None:
        self.spool.flush()


def row_of(dmarc: DMARCResult, ip: str | None, spf: SPFResult | None,
           dkim: Sequence[DKIMResult], verdict: Verdict) -> dict[str, Any] | None:
    """The row one message adds to its policy domain's report; None if none asks for it."""
    record = dmarc.record
    if record is None or not record.rua or not dmarc.policy_domain or not ip:
        return None
    if dmarc.result not in (Status.PASS, Status.FAIL, Status.TEMPERROR):
        return None
    disposition = {Action.REJECT: "reject", Action.QUARANTINE: "quarantine"}.get(
        verdict.action, "none")
    reasons: list[list[str]] = []
    if dmarc.sampled_out:
        reasons.append(["sampled_out", f"pct={record.pct}"])
    if dmarc.result is Status.FAIL and disposition != str(dmarc.disposition) \
            and not dmarc.sampled_out and verdict.check == "dmarc":
        reasons.append(["local_policy", f"{dmarc.disposition} asked, {disposition} applied"])
    auth_spf: list[list[str]] = []
    if spf is not None:
        auth_spf.append([spf.domain, "helo" if spf.identity == "helo" else "mfrom",
                         spf.result.value])
    return {
        "domain": dmarc.policy_domain,
        "record": record.render(),
        "ip": ip,
        "from": dmarc.author_domain or "",
        "disposition": disposition,
        "dkim": "pass" if dmarc.dkim_aligned else "fail",
        "spf": "pass" if dmarc.spf_aligned else "fail",
        "reasons": reasons,
        "auth_dkim": [[r.domain, r.selector, r.result.value] for r in dkim if r.domain],
        "auth_spf": auth_spf,
    }


@dataclass
class PolicyRows:
    """A day's rows for one policy domain, and the record last seen there."""

    domain: str
    record: DMARCRecord
    rows: list[tuple[dict[str, Any], int]] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(n for _, n in self.rows)


def group(rows: Iterable[tuple[dict[str, Any], int]]) -> dict[str, PolicyRows]:
    """Rows of a day (``spool.read_day``) per policy domain; rows that make no sense are dropped."""
    out: dict[str, PolicyRows] = {}
    for row, n in rows:
        domain = str(row.get("domain", "")).lower()
        try:
            record = DMARCRecord.parse(str(row.get("record", "")))
        except DMARCRecordError:
            continue
        if not domain:
            continue
        found = out.get(domain)
        if found is None:
            found = out[domain] = PolicyRows(domain, record)
        else:
            found.record = record     # rows are sorted, not timed: any seen record will do
        found.rows.append((row, n))
    return out


# -- the XML (RFC 7489 Appendix C) -----------------------------------------------------

def _sub(parent: ET.Element, name: str, text: object | None = None) -> ET.Element:
    e = ET.SubElement(parent, name)
    if text is not None:
        e.text = str(text)
    return e


@dataclass(frozen=True)
class AggregateReport:
    """One ``feedback`` document: one policy domain, one reporting period."""

    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    policy: PolicyRows

    def xml(self) -> bytes:
        root = ET.Element("feedback")
        _sub(root, "version", "1.0")
        meta = _sub(root, "report_metadata")
        _sub(meta, "org_name", self.org_name)
        _sub(meta, "email", self.email)
        _sub(meta, "report_id", self.report_id)
        dr = _sub(meta, "date_range")
        _sub(dr, "begin", self.begin)
        _sub(dr, "end", self.end)
        rec = self.policy.record
        pub = _sub(root, "policy_published")
        _sub(pub, "domain", self.policy.domain)
        _sub(pub, "adkim", rec.adkim.value)
        _sub(pub, "aspf", rec.aspf.value)
        _sub(pub, "p", rec.p or "none")
        _sub(pub, "sp", rec.sp or rec.p or "none")
        _sub(pub, "pct", rec.pct)
        _sub(pub, "fo", ":".join(rec.fo))
        for row, n in sorted(self.policy.rows, key=lambda r: (-r[1], str(r[0].get("ip")))):
            record = _sub(root, "record")
            r = _sub(record, "row")
            _sub(r, "source_ip", row.get("ip", ""))
            _sub(r, "count", n)
            pe = _sub(r, "policy_evaluated")
            _sub(pe, "disposition", row.get("disposition", "none"))
            _sub(pe, "dkim", row.get("dkim", "fail"))
            _sub(pe, "spf", row.get("spf", "fail"))
            for kind, comment in row.get("reasons", []):
                reason = _sub(pe, "reason")
                _sub(reason, "type", kind)
                if comment:
                    _sub(reason, "comment", comment)
            ids = _sub(record, "identifiers")
            _sub(ids, "header_from", row.get("from", ""))
            auth = _sub(record, "auth_results")
            for domain, selector, result in row.get("auth_dkim", []):
                d = _sub(auth, "dkim")
                _sub(d, "domain", domain)
                if selector:
                    _sub(d, "selector", selector)
                _sub(d, "result", result)
            spf = row.get("auth_spf") or [[row.get("from", ""), "mfrom", "none"]]
            for domain, scope, result in spf:   # spf is required (minOccurs 1)
                s = _sub(auth, "spf")
                _sub(s, "domain", domain)
                _sub(s, "scope", scope)
                _sub(s, "result", result)
        ET.indent(root)
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"

    def filename(self, receiver: str) -> str:
        """``receiver "!" policy-domain "!" begin "!" end ".xml.gz"`` (§7.2.1.1)."""
        return f"{receiver}!{self.policy.domain}!{self.begin}!{self.end}.xml.gz"


# -- where it goes (RFC 7489 §7.1, §7.2.1.1) ------------------------------------------

@dataclass(frozen=True, slots=True)
class Destination:
    address: str                   # local@domain
    max_size: int | None = None    # the "!size" of the rua URI, octets


def mailto_address(uri: str) -> str | None:
    """The address of a ``mailto:`` URI (RFC 6068; the first one, without query), or None."""
    if uri[:7].lower() != "mailto:":
        return None
    addr = urllib.parse.unquote(uri[7:].split("?", 1)[0].split(",", 1)[0]).strip()
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or any(c in addr for c in " <>\r\n"):
        return None
    return f"{local}@{domain.lower().rstrip('.')}"


async def destinations(policy_domain: str, record: DMARCRecord, resolver: Resolver, *,
                       psl: PublicSuffixList | None = None) -> tuple[list[Destination], list[str]]:
    """The addresses that may receive the report, and a note for each one skipped."""
    psl = psl or default_list()
    ours = psl.organizational_domain(policy_domain)
    out: list[Destination] = []
    notes: list[str] = []
    for ruri in record.rua:
        address = mailto_address(ruri.uri)
        if address is None:
            notes.append(f"{ruri.uri}: not a mailto: URI, skipped")
            continue
        domain = address.rsplit("@", 1)[1]
        if psl.organizational_domain(domain) != ours:
            name = f"{policy_domain}._report._dmarc.{domain}"
            try:
                answer = await resolver.query(name, "TXT")
            except DNSTemporaryError as exc:
                notes.append(f"{address}: could not verify {name} ({exc}), skipped")
                continue
            if not any(r.lstrip().lower().startswith("v=dmarc1") for r in answer.records):
                notes.append(f"{address}: {name} does not authorise reports for "
                             f"{policy_domain} (RFC 7489 7.1), skipped")
                continue
        if all(d.address != address for d in out):
            out.append(Destination(address, ruri.max_size))
    return out, notes
