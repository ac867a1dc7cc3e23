"""Building and queueing a day's reports: the daily job and ``pillarbox reports send``.

:class:`ReportJob` reads a UTC day's spooled counts (``spool.read_day``),
builds one DMARC aggregate report per policy domain with a usable ``rua``
and one TLS-RPT report per recipient domain that publishes
``_smtp._tls``, and queues each as normal outbound mail, recording it in
``reports_sent`` in the same transaction (a report is queued once per
domain and day, whoever asks: the job after a restart, or an operator).

The ``[reports]`` section of the configuration: ``reports.dmarc`` and
``reports.tlsrpt`` switch each kind off (its counts are still spooled and
pruned, so ``pillarbox reports send --day`` can send them once it is on
again); ``reports.sender`` and ``reports.contact`` set the addresses below.

The envelope: reverse path ``reports.sender``, by default
``noreply-dmarc@<hostname>`` (DMARC) or ``noreply-tlsrpt@<hostname>``
(TLS-RPT), the same address in ``From:``, each recipient with
``NOTIFY=NEVER``.  RFC 7489 does not ask for the null reverse path, and
receivers refuse ``<>`` for mail that is not a bounce; NOTIFY=NEVER keeps
a report that cannot be delivered from producing a bounce of its own (no
report about a report).  The contact in the reports is ``reports.contact``,
by default ``postmaster@<hostname>``.

Reports are DKIM-signed (RFC 8460 §5.3 asks for it) with the active keys
of the sender's domain (by default the host name), else of its
Organizational Domain (aligned with ``From:`` under relaxed alignment),
when ``dkim.sign`` is on and such keys exist; otherwise they go unsigned.

Not done: ``https:`` rua for TLS-RPT (skipped with a note), and the
§7.2.1.1 "report too large" notice (a destination whose ``!size`` the
report exceeds is skipped).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillarbox.log import log_event
from pillarbox.policy.dns import Resolver
from pillarbox.policy.psl import PublicSuffixList
from pillarbox.reports import dmarc as dmarc_reports
from pillarbox.reports import tlsrpt
from pillarbox.reports.message import compress, report_message
from pillarbox.reports.spool import read_day, remove_before
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.sqlite.queue import SQLiteQueueWork
from pillarbox.store.sqlite.reports import mark_sent, sent_domains
from pillarbox.store.sqlite.store import SQLiteStore

if TYPE_CHECKING:
    from pillarbox.config import Config
    from pillarbox.receive.signing import DKIMSigning

__all__ = ["KINDS", "Built", "ReportJob", "day_range", "previous_day"]

log = logging.getLogger("pillarbox.reports")

KINDS = frozenset({"dmarc", "tlsrpt"})   # what is sent: reports.dmarc, reports.tlsrpt
KEEP_DAYS = 7                 # spooled counts are kept this long (for a late `reports send`)
FIRST_RUN_DELAY = 120.0       # seconds after start before yesterday's reports are looked at
AFTER_MIDNIGHT = (300.0, 900.0)   # the daily run: this long after 00:00 UTC (a random spread)


def day_range(day: str) -> tuple[int, int]:
    """The period of a UTC day in seconds since the epoch: begin, end (inclusive)."""
    try:
        start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise ValueError(f"{day!r} is not a day (YYYY-MM-DD)") from None
    begin = int(start.timestamp())
    return begin, begin + 86399


def previous_day(now: float) -> str:
    return (datetime.datetime.fromtimestamp(now, datetime.UTC).date()
            - datetime.timedelta(days=1)).isoformat()


@dataclass
class Built:
    """One report ready to queue (or to print with ``--dry-run``)."""

    kind: str                     # dmarc / tlsrpt
    domain: str
    report_id: str
    sender: str
    recipients: list[str]
    message: bytes
    document: bytes               # the XML or JSON, uncompressed
    rows: int
    notes: list[str] = field(default_factory=list)


class ReportJob:
    """Builds, queues and schedules the reports (see the module docstring)."""

    def __init__(self, store: SQLiteStore, resolver: Resolver, hostname: str, *,
                 psl: PublicSuffixList | None = None, data_dir: Path | None = None,
                 signing: DKIMSigning | None = None, kinds: frozenset[str] = KINDS,
                 sender: str = "", contact: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        unknown = set(kinds) - KINDS
        if unknown:
            raise ValueError(f"unknown report kinds: {', '.join(sorted(unknown))}")
        self.store = store
        self.signing = signing
        self.resolver = resolver
        self.hostname = hostname.lower().rstrip(".")
        self.psl = psl
        self.data_dir = data_dir or store.data_dir
        self.kinds = frozenset(kinds)
        self._sender = sender
        self.contact = contact or f"postmaster@{self.hostname}"
        self.clock = clock

    def sender(self, kind: str) -> str:
        """The reverse path and ``From:`` of ``kind``'s reports (``reports.sender``)."""
        return self._sender or f"noreply-{kind}@{self.hostname}"

    # ---------------------------------------------------------------- building

    async def build(self, day: str) -> tuple[list[Built], list[str]]:
        """Every report for ``day`` that has somewhere to go, and notes on what was skipped."""
        begin, end = day_range(day)
        built: list[Built] = []
        notes: list[str] = [f"{kind} reports are off (reports.{kind} = false)"
                            for kind in sorted(KINDS - self.kinds)]
        if "dmarc" in self.kinds:
            for domain, policy in sorted(dmarc_reports.group(
                    read_day(self.data_dir, dmarc_reports.KIND, day)).items()):
                item = await self._dmarc(day, begin, end, policy)
                if item.recipients:
                    built.append(item)
                notes += item.notes
        if "tlsrpt" in self.kinds:
            for domain, rows in sorted(
                    tlsrpt.group(read_day(self.data_dir, tlsrpt.KIND, day)).items()):
                t, why = await self._tlsrpt(day, begin, end, domain, rows)
                if t is not None and t.recipients:
                    built.append(t)
                notes += why
        return built, notes

    def _signed(self, message: bytes, sender: str) -> bytes:
        """``message`` with DKIM-Signature fields of the active keys of the
        sender's domain (else its organisational domain), if any."""
        if self.signing is None:
            return message
        from pillarbox.policy.dkim.sign import signature_fields
        from pillarbox.policy.psl import default_list

        domain = sender.rpartition("@")[2].lower()
        signers = self.signing.signers([domain])
        if not signers:
            org = (self.psl or default_list()).organizational_domain(domain)
            signers = self.signing.signers([org])
        return b"".join(signature_fields(message, signers)) + message if signers else message

    def _report_id(self, day: str) -> str:
        return f"{day.replace('-', '')}.{secrets.token_hex(6)}@{self.hostname}"

    async def _dmarc(self, day: str, begin: int, end: int,
                     policy: dmarc_reports.PolicyRows) -> Built:
        report_id = self._report_id(day)
        report = dmarc_reports.AggregateReport(self.hostname, self.contact, report_id, begin,
                                               end, policy)
        document = report.xml()
        gz = compress(document)
        dests, notes = await dmarc_reports.destinations(policy.domain, policy.record,
                                                        self.resolver, psl=self.psl)
        sender = self.sender("dmarc")
        subject = (f"Report Domain: {policy.domain} Submitter: {self.hostname} "
                   f"Report-ID: <{report_id}>")
        text = (f"DMARC aggregate report (RFC 7489) from {self.hostname} for {policy.domain}:\n"
                f"{policy.messages} message(s) from {len(policy.rows)} group(s), {day} (UTC).\n")
        filename = report.filename(self.hostname)

        def make(to: list[str]) -> bytes:
            return self._signed(report_message(
                sender=sender, recipients=to, subject=subject, text=text, attachment=gz,
                content_type="application/gzip", filename=filename, hostname=self.hostname),
                sender)

        recipients: list[str] = []
        size = len(make([d.address for d in dests]))
        for d in dests:
            if d.max_size is not None and size > d.max_size:
                notes.append(f"{d.address}: the report ({size} octets) exceeds its limit of "
                             f"{d.max_size}, skipped")
            else:
                recipients.append(d.address)
        notes = [f"dmarc {policy.domain}: {n}" for n in notes]
        return Built("dmarc", policy.domain, report_id, sender, recipients,
                     make(recipients) if recipients else b"", document, len(policy.rows), notes)

    async def _tlsrpt(self, day: str, begin: int, end: int, domain: str,
                      rows: list[tuple[dict[str, Any], int]]) -> tuple[Built | None, list[str]]:
        uris, why = await tlsrpt.lookup_rua(domain, self.resolver)
        if not uris:     # most domains publish nothing: no note for those
            return None, [] if why is None or " has 0 " in why else [f"tlsrpt {domain}: {why}"]
        notes: list[str] = []
        recipients: list[str] = []
        for uri in uris:
            address = dmarc_reports.mailto_address(uri)
            if address is None:
                notes.append(f"tlsrpt {domain}: {uri}: only mailto: is sent, skipped")
            elif address not in recipients:
                recipients.append(address)
        report_id = self._report_id(day)
        report = tlsrpt.TLSReport(self.hostname, self.contact, report_id, begin, end, domain,
                                  rows)
        document = report.json()
        sender = self.sender("tlsrpt")
        message = b""
        if recipients:
            message = self._signed(report_message(
                sender=sender, recipients=recipients,
                subject=f"Report Domain: {domain} Submitter: {self.hostname} "
                        f"Report-ID: <{report_id}>",
                text=f"TLS report (RFC 8460) from {self.hostname} for {domain}, {day} (UTC).\n",
                attachment=compress(document), content_type="application/tlsrpt+gzip",
                filename=report.filename(self.hostname, report_id.split("@")[0]),
                hostname=self.hostname, report_type="tlsrpt",
                extra_headers=(("TLS-Report-Domain", domain),
                               ("TLS-Report-Submitter", self.hostname))), sender)
        return Built("tlsrpt", domain, report_id, sender, recipients, message, document,
                     len(rows), notes), notes

    # ----------------------------------------------------------------- queueing

    def queue_job(self, day: str, built: list[Built]) -> Callable[[sqlite3.Connection], list[Built]]:
        """A transaction body that queues the reports not yet queued for ``day``; it
        returns those it queued (for ``store.transaction()`` or the group committer)."""

        def run(conn: sqlite3.Connection) -> list[Built]:
            work = SQLiteQueueWork(self.store, conn)
            done = {k: sent_domains(conn, k, day) for k in ("dmarc", "tlsrpt")}
            queued = []
            for b in built:
                if not b.recipients or b.domain in done[b.kind]:
                    continue
                envelope = Envelope(
                    reverse_path=b.sender,
                    recipients=tuple(EnvelopeRecipient(r, "NEVER") for r in b.recipients),
                    client_address="127.0.0.1", helo=self.hostname)
                queue_id = work.add_message(b.message, envelope, self.clock())
                mark_sent(conn, b.kind, b.domain, day, b.report_id, queue_id,
                          ",".join(b.recipients))
                queued.append(b)
            return queued

        return run

    async def send(self, day: str, *, committer: bool = False) -> tuple[list[Built], list[str]]:
        """Build and queue ``day``'s reports; those queued now, and the notes."""
        built, notes = await self.build(day)
        job = self.queue_job(day, built)
        if committer:
            queued = await asyncio.wrap_future(self.store.committer.submit(job))
        else:
            def in_transaction() -> list[Built]:
                with self.store.transaction() as conn:
                    return job(conn)
            queued = await asyncio.to_thread(in_transaction)
        for b in queued:
            log_event(log, "report queued", kind=b.kind, domain=b.domain, report_id=b.report_id,
                      to=",".join(b.recipients), rows=b.rows, day=day)
        for n in notes:
            log_event(log, "report skipped", day=day, note=n, level=logging.INFO)
        return queued, notes

    # ---------------------------------------------------------------- the daily run

    def next_run(self, now: float) -> float:
        """The next daily run: a few minutes after the coming 00:00 UTC."""
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        midnight = datetime.datetime.combine(today + datetime.timedelta(days=1),
                                             datetime.time(), datetime.UTC).timestamp()
        return midnight + random.uniform(*AFTER_MIDNIGHT)

    async def run_daily(self, stop: asyncio.Event, first_delay: float = FIRST_RUN_DELAY) -> None:
        """In the queue manager process: yesterday's reports soon after start (if not
        yet sent), then every day shortly after midnight UTC; old counts removed."""
        wait = first_delay
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return
            except TimeoutError:
                pass
            now = self.clock()
            day = previous_day(now)
            try:
                await self.send(day, committer=True)
                cutoff = previous_day(now - (KEEP_DAYS - 1) * 86400)
                for kind in (dmarc_reports.KIND, tlsrpt.KIND):
                    await asyncio.to_thread(remove_before, self.data_dir, kind, cutoff)
            except Exception:  # noqa: BLE001 - reports wait for the next run; mail goes on
                log.exception("sending the reports of %s failed", day)
            wait = max(1.0, self.next_run(self.clock()) - self.clock())

    @classmethod
    def from_config(cls, store: SQLiteStore, config: Config) -> ReportJob:
        """Wired by ``serve`` for the queue manager process (and by ``pillarbox
        reports send``): ``[server]``, ``[dns]``, ``[policy]``, ``[dkim]``, ``[reports]``."""
        from pillarbox.policy.dns import DNSResolver
        from pillarbox.receive.signing import DKIMSigning
        from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

        resolver = DNSResolver(list(config.dns.nameservers) or None, timeout=config.dns.timeout)
        signing = (DKIMSigning(SQLiteDKIMKeys(store), config.server.data_dir)
                   if config.dkim.sign else None)
        r = config.reports
        kinds = frozenset(k for k, on in (("dmarc", r.dmarc), ("tlsrpt", r.tlsrpt)) if on)
        return cls(store, resolver, config.server.hostname,
                   psl=PublicSuffixList.load(config.policy.public_suffix_list), signing=signing,
                   kinds=kinds, sender=r.sender, contact=r.contact)
