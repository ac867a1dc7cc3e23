"""DMARC aggregate (RFC 7489 §7.2, Appendix C) and TLS-RPT (RFC 8460) reports:
recording, grouping, the XML and JSON, where they may go, and queueing once."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import gzip
import json
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pillarbox.deliver.dane import DANEPolicy, TLSARecord
from pillarbox.deliver.mta_sts import CachedPolicy, Mode, Policy
from pillarbox.policy.dkim.verify import DKIMResult
from pillarbox.policy.dkim.verify import Result as DKIMStatus
from pillarbox.policy.dmarc import DKIMOutcome, DMARCRecord, SPFOutcome, evaluate
from pillarbox.policy.dns import StaticResolver
from pillarbox.policy.spf import Result as SPFStatus
from pillarbox.policy.spf import SPFResult
from pillarbox.policy.verdict import Action, Verdict
from pillarbox.reports import dmarc as dr
from pillarbox.reports import tlsrpt
from pillarbox.reports.job import ReportJob, day_range, previous_day
from pillarbox.reports.spool import ReportSpool, read_day, remove_before
from pillarbox.store.sqlite.store import SQLiteStore

T = TypeVar("T")
DAY = "2026-12-01"
WHEN = day_range(DAY)[0] + 3600.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def dmarc_result(resolver: StaticResolver, domain: str, spf: SPFResult | None,
                 dkim: list[DKIMResult]) -> Any:
    return run(evaluate(domain, SPFOutcome(spf.result.value, spf.domain) if spf else None,
                        [DKIMOutcome(d.result.value, d.domain, d.selector) for d in dkim],
                        resolver, random=lambda: 0.0))


def spf_of(result: SPFStatus, domain: str) -> SPFResult:
    return SPFResult(result, domain, ip="192.0.2.7", sender=f"a@{domain}")


def zone() -> StaticResolver:
    r = StaticResolver()
    r.add("_dmarc.sender.example", "TXT",
          "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example,mailto:agg@reports.example!10k")
    r.add("_dmarc.quiet.example", "TXT", "v=DMARC1; p=none")   # no rua: nothing recorded
    return r


# -- recording and grouping ----------------------------------------------------------

def test_rows_are_counted_per_group_and_merged_across_processes(tmp_path: Path) -> None:
    resolver = zone()
    ok = dmarc_result(resolver, "sender.example", spf_of(SPFStatus.PASS, "sender.example"), [])
    bad = dmarc_result(resolver, "sender.example", spf_of(SPFStatus.FAIL, "sender.example"),
                       [DKIMResult(DKIMStatus.FAIL, "sender.example", "s1")])
    quiet = dmarc_result(resolver, "quiet.example", None, [])
    one = dr.DMARCRecorder(ReportSpool(tmp_path, dr.KIND))
    two = dr.DMARCRecorder(ReportSpool(tmp_path, dr.KIND))
    two.spool._name = "other.jsonl"      # another process's file
    accept = Verdict.accept("dmarc")
    reject = Verdict.reject("dmarc", "5.7.1", "no")
    for _ in range(3):
        one.record(ok, "192.0.2.7", spf_of(SPFStatus.PASS, "sender.example"), [], accept, WHEN)
    two.record(ok, "192.0.2.7", spf_of(SPFStatus.PASS, "sender.example"), [], accept, WHEN)
    two.record(bad, "198.51.100.1", spf_of(SPFStatus.FAIL, "sender.example"),
               [DKIMResult(DKIMStatus.FAIL, "sender.example", "s1")], reject, WHEN)
    one.record(quiet, "192.0.2.9", None, [], accept, WHEN)
    assert one.spool.pending == 1
    one.flush()
    two.flush()
    rows = read_day(tmp_path, dr.KIND, DAY)
    groups = dr.group(rows)
    assert list(groups) == ["sender.example"]
    counts = {(r["ip"], r["disposition"], r["dkim"], r["spf"]): n
              for r, n in groups["sender.example"].rows}
    assert counts == {("192.0.2.7", "none", "fail", "pass"): 4,
                      ("198.51.100.1", "reject", "fail", "fail"): 1}
    assert groups["sender.example"].messages == 5


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    spool = ReportSpool(tmp_path, "dmarc")
    spool.add({"domain": "a.example"}, when=WHEN)
    spool.flush()
    path = next((tmp_path / "reports" / "dmarc" / DAY).iterdir())
    with open(path, "a") as f:
        f.write('{"n":3,"row":{"domain":"a.exa')        # a crash in the middle of a write
    assert read_day(tmp_path, "dmarc", DAY) == [({"domain": "a.example"}, 1)]


def test_old_days_are_removed(tmp_path: Path) -> None:
    spool = ReportSpool(tmp_path, "tlsrpt")
    for day in ("2026-11-20", "2026-11-30", "2026-12-01"):
        spool.add({"domain": "x.example"}, when=day_range(day)[0] + 5)
    spool.flush()
    assert remove_before(tmp_path, "tlsrpt", "2026-11-30") == 1
    assert sorted(p.name for p in (tmp_path / "reports" / "tlsrpt").iterdir()) == [
        "2026-11-30", "2026-12-01"]


def test_sampled_out_and_local_policy_reasons() -> None:
    r = StaticResolver()
    r.add("_dmarc.s.example", "TXT", "v=DMARC1; p=reject; pct=10; rua=mailto:d@s.example")
    result = run(evaluate("s.example", SPFOutcome("fail", "s.example"), [], r,
                          random=lambda: 0.99))
    assert result.sampled_out
    row = dr.row_of(result, "192.0.2.1", None, [], Verdict("dmarc", Action.QUARANTINE))
    assert row is not None and row["reasons"] == [["sampled_out", "pct=10"]]
    full = run(evaluate("s.example", SPFOutcome("fail", "s.example"), [], r,
                        random=lambda: 0.0))
    row = dr.row_of(full, "192.0.2.1", None, [], Verdict("dmarc", Action.TAG))  # monitor mode
    assert row is not None and row["disposition"] == "none"
    assert row["reasons"][0][0] == "local_policy"


# -- the XML (Appendix C) -----------------------------------------------------------------

def _children(e: ET.Element) -> list[str]:
    return [c.tag for c in e]


def test_the_xml_follows_appendix_c() -> None:
    resolver = zone()
    spf = spf_of(SPFStatus.PASS, "bounces.sender.example")
    sig = DKIMResult(DKIMStatus.PASS, "sender.example", "sel")
    result = dmarc_result(resolver, "sender.example", spf, [sig])
    row = dr.row_of(result, "192.0.2.7", spf, [sig], Verdict.accept("dmarc"))
    assert row is not None
    [policy] = dr.group([(row, 7)]).values()
    report = dr.AggregateReport("mx.example.net", "postmaster@mx.example.net",
                                "20261201.abc@mx.example.net", *day_range(DAY), policy)
    root = ET.fromstring(report.xml())
    assert root.tag == "feedback"
    assert _children(root) == ["version", "report_metadata", "policy_published", "record"]
    meta = root.find("report_metadata")
    assert meta is not None
    assert _children(meta) == ["org_name", "email", "report_id", "date_range"]
    assert meta.findtext("date_range/begin") == "1796083200"
    assert meta.findtext("date_range/end") == "1796169599"
    pub = root.find("policy_published")
    assert pub is not None
    assert _children(pub) == ["domain", "adkim", "aspf", "p", "sp", "pct", "fo"]
    assert [pub.findtext(t) for t in ("domain", "p", "sp", "pct")] == [
        "sender.example", "reject", "reject", "100"]
    rec = root.find("record")
    assert rec is not None
    assert _children(rec) == ["row", "identifiers", "auth_results"]
    assert _children(rec.find("row")) == ["source_ip", "count", "policy_evaluated"]  # type: ignore[arg-type]
    assert _children(rec.find("row/policy_evaluated")) == ["disposition", "dkim", "spf"]  # type: ignore[arg-type]
    assert rec.findtext("row/count") == "7"
    assert rec.findtext("row/policy_evaluated/dkim") == "pass"
    assert rec.findtext("row/policy_evaluated/spf") == "pass"      # relaxed alignment
    assert rec.findtext("identifiers/header_from") == "sender.example"
    auth = rec.find("auth_results")
    assert auth is not None and _children(auth) == ["dkim", "spf"]
    assert _children(auth.find("dkim")) == ["domain", "selector", "result"]  # type: ignore[arg-type]
    assert _children(auth.find("spf")) == ["domain", "scope", "result"]  # type: ignore[arg-type]
    assert auth.findtext("spf/domain") == "bounces.sender.example"
    assert auth.findtext("spf/scope") == "mfrom"
    assert report.filename("mx.example.net") == \
        "mx.example.net!sender.example!1796083200!1796169599.xml.gz"


def test_special_characters_are_escaped() -> None:
    rec = DMARCRecord.parse("v=DMARC1; p=none; rua=mailto:d@x.example")
    policy = dr.PolicyRows("x.example", rec, [({"ip": "192.0.2.1", "from": "a<&>b"}, 1)])
    xml = dr.AggregateReport("o&o", "e", "i", 0, 1, policy).xml()
    assert b"a&lt;&amp;&gt;b" in xml and ET.fromstring(xml).findtext("record/identifiers/header_from") == "a<&>b"


# -- external destination verification (§7.1) -----------------------------------------------

def test_an_external_destination_needs_its_authorisation_record() -> None:
    rec = DMARCRecord.parse("v=DMARC1; p=none; rua=mailto:dmarc@sender.example,"
                            "mailto:agg@reports.example!10k,https://x.example/r")
    resolver = StaticResolver()
    dests, notes = run(dr.destinations("sender.example", rec, resolver))
    assert dests == [dr.Destination("dmarc@sender.example")]
    assert any("reports.example" in n and "7.1" in n for n in notes)
    assert any("not a mailto" in n for n in notes)
    assert ("sender.example._report._dmarc.reports.example", "TXT") in resolver.queries
    assert not any(q[0].endswith("._dmarc.sender.example") for q in resolver.queries)
    resolver.add("sender.example._report._dmarc.reports.example", "TXT", "v=DMARC1")
    dests, _ = run(dr.destinations("sender.example", rec, resolver))
    assert dests == [dr.Destination("dmarc@sender.example"),
                     dr.Destination("agg@reports.example", 10 * 1024)]


def test_a_subdomain_of_the_same_organisation_needs_no_record() -> None:
    rec = DMARCRecord.parse("v=DMARC1; p=none; rua=mailto:d@reports.sender.example")
    resolver = StaticResolver()
    dests, notes = run(dr.destinations("mail.sender.example", rec, resolver))
    assert dests == [dr.Destination("d@reports.sender.example")] and not notes
    assert resolver.queries == []


def test_a_dns_failure_skips_the_destination_this_time() -> None:
    rec = DMARCRecord.parse("v=DMARC1; p=none; rua=mailto:d@other.example")
    resolver = StaticResolver(failing={"s.example._report._dmarc.other.example"})
    dests, notes = run(dr.destinations("s.example", rec, resolver))
    assert dests == [] and "could not verify" in notes[0]


@pytest.mark.parametrize("uri, address", [
    ("mailto:a@B.example", "a@b.example"),
    ("mailto:a%40x@b.example?subject=x", "a@x@b.example"),
    ("mailto:nobody", None),
    ("https://b.example/", None),
])
def test_mailto_addresses(uri: str, address: str | None) -> None:
    assert dr.mailto_address(uri) == address


# -- TLS-RPT ------------------------------------------------------------------------------

STS = CachedPolicy("rcpt.example", "20261201", Policy(Mode.ENFORCE, 86400, ("mx.rcpt.example",)),
                   0.0)


@pytest.mark.parametrize("reply, kind", [
    ("451 4.7.5 TLS with mx[192.0.2.1]:25 failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
     "verify failed: Hostname mismatch, certificate is not valid for 'mx'.", "certificate-host-mismatch"),
    ("451 4.7.5 ... certificate verify failed: certificate has expired", "certificate-expired"),
    ("451 4.7.5 ... certificate verify failed: self-signed certificate", "certificate-not-trusted"),
    ("450 4.7.4 TLS is required, but mx[192.0.2.1]:25 did not offer it", "starttls-not-supported"),
    ("451 4.7.5 DANE: no TLSA record of _25._tcp.mx.example matches the chain", "tlsa-invalid"),
    ("451 4.4.3 DANE: the TLSA lookup failed DNSSEC validation (bogus)", "dnssec-invalid"),
    ("451 4.7.5 something else", "validation-failure"),
])
def test_result_types(reply: str, kind: str) -> None:
    assert tlsrpt.result_type(reply) == kind


def test_policies_of_a_host() -> None:
    sts = tlsrpt.PolicyInfo.of("mx.rcpt.example", STS, None)
    assert sts.type == "sts" and sts.mx == ("mx.rcpt.example",)
    assert sts.strings == ("version: STSv1", "mode: enforce", "mx: mx.rcpt.example",
                           "max_age: 86400")
    record = TLSARecord.from_text("3 1 1 " + "ab" * 32)
    dane = DANEPolicy("mx.rcpt.example", "verify", "mx.rcpt.example", "_25._tcp.mx.rcpt.example",
                      (record,))
    tlsa = tlsrpt.PolicyInfo.of("mx.rcpt.example", STS, dane)     # DANE wins (RFC 8461 §2)
    assert tlsa.type == "tlsa" and tlsa.strings == (str(record),)
    none = DANEPolicy("mx.rcpt.example", "none", "mx.rcpt.example")
    assert tlsrpt.PolicyInfo.of("mx", None, none).type == "no-policy-found"


def test_the_json_has_the_fields_of_section_4_4(tmp_path: Path) -> None:
    rec = tlsrpt.TLSRecorder(ReportSpool(tmp_path, tlsrpt.KIND))
    for _ in range(5):
        rec.session("rcpt.example", "mx.rcpt.example", "192.0.2.1", tls=True, sts=STS, when=WHEN)
    rec.failure("rcpt.example", "mx.rcpt.example", "192.0.2.1",
                "451 4.7.5 ... certificate has expired", sts=STS, when=WHEN)
    rec.failure("rcpt.example", "mx.rcpt.example", "192.0.2.1",
                "451 4.7.5 ... certificate has expired", sts=STS, when=WHEN)
    rec.session("plain.example", "mx.plain.example", "192.0.2.2", tls=False, when=WHEN)
    rec.flush()
    groups = tlsrpt.group(read_day(tmp_path, tlsrpt.KIND, DAY))
    assert sorted(groups) == ["plain.example", "rcpt.example"]
    report = tlsrpt.TLSReport("mx.example.net", "postmaster@mx.example.net", "r1",
                              *day_range(DAY), "rcpt.example", groups["rcpt.example"])
    doc = json.loads(report.json())
    assert set(doc) == {"organization-name", "date-range", "contact-info", "report-id", "policies"}
    assert doc["date-range"] == {"start-datetime": "2026-12-01T00:00:00Z",
                                 "end-datetime": "2026-12-01T23:59:59Z"}
    [p] = doc["policies"]
    assert p["policy"] == {"policy-type": "sts", "policy-domain": "rcpt.example",
                           "policy-string": ["version: STSv1", "mode: enforce",
                                             "mx: mx.rcpt.example", "max_age: 86400"],
                           "mx-host": ["mx.rcpt.example"]}
    assert p["summary"] == {"total-successful-session-count": 5,
                            "total-failure-session-count": 2}
    [f] = p["failure-details"]
    assert f["result-type"] == "certificate-expired" and f["failed-session-count"] == 2
    assert f["receiving-mx-hostname"] == "mx.rcpt.example" and f["receiving-ip"] == "192.0.2.1"
    plain = json.loads(tlsrpt.TLSReport("o", "c", "r", 0, 1, "plain.example",
                                        groups["plain.example"]).json())
    assert plain["policies"][0]["policy"]["policy-type"] == "no-policy-found"
    assert plain["policies"][0]["failure-details"][0]["result-type"] == "starttls-not-supported"


def test_the_tlsrpt_record() -> None:
    assert tlsrpt.parse_record("v=TLSRPTv1; rua=mailto:a@x.example,https://x.example/r") == [
        "mailto:a@x.example", "https://x.example/r"]
    with pytest.raises(ValueError, match="v=TLSRPTv1"):
        tlsrpt.parse_record("v=DMARC1; rua=mailto:a@x.example")
    with pytest.raises(ValueError, match="no rua"):
        tlsrpt.parse_record("v=TLSRPTv1; ruf=x")
    r = StaticResolver()
    r.add("_smtp._tls.one.example", "TXT", "v=TLSRPTv1; rua=mailto:t@one.example", "v=spf1 -all")
    r.add("_smtp._tls.two.example", "TXT", "v=TLSRPTv1; rua=mailto:a@two.example",
          "v=TLSRPTv1; rua=mailto:b@two.example")
    assert run(tlsrpt.lookup_rua("one.example", r)) == (["mailto:t@one.example"], None)
    uris, why = run(tlsrpt.lookup_rua("two.example", r))
    assert uris == [] and why is not None and "2 TLSRPT records" in why


# -- the job: messages, queueing once -------------------------------------------------------

def _attachment(message: bytes) -> tuple[Any, bytes]:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_disposition() == "attachment"]
    assert len(parts) == 1
    return msg, gzip.decompress(base64.b64decode(parts[0].get_payload()))


def test_the_job_queues_each_report_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path).open()
    try:
        resolver = zone()
        resolver.add("_smtp._tls.rcpt.example", "TXT",
                     "v=TLSRPTv1; rua=mailto:tls@rcpt.example,https://rcpt.example/r")
        ok = dmarc_result(resolver, "sender.example", spf_of(SPFStatus.PASS, "sender.example"), [])
        rec = dr.DMARCRecorder.in_data_dir(tmp_path)
        rec.record(ok, "192.0.2.7", spf_of(SPFStatus.PASS, "sender.example"), [],
                   Verdict.accept("dmarc"), WHEN)
        rec.flush()
        tls = tlsrpt.TLSRecorder.in_data_dir(tmp_path)
        tls.session("rcpt.example", "mx.rcpt.example", "192.0.2.1", tls=True, sts=STS, when=WHEN)
        tls.session("norpt.example", "mx.norpt.example", "192.0.2.3", tls=True, when=WHEN)
        tls.flush()
        job = ReportJob(store, resolver, "MX.Example.net", clock=lambda: WHEN + 86400)
        queued, notes = run(job.send(DAY))
        assert sorted(b.kind for b in queued) == ["dmarc", "tlsrpt"]
        assert any("reports.example" in n for n in notes)          # not authorised: skipped
        assert any("https://rcpt.example/r" in n for n in notes)
        d = next(b for b in queued if b.kind == "dmarc")
        assert d.recipients == ["dmarc@sender.example"]
        msg, xml = _attachment(d.message)
        assert msg["Subject"] == (f"Report Domain: sender.example Submitter: mx.example.net "
                                  f"Report-ID: <{d.report_id}>")
        assert msg["From"] == "noreply-dmarc@mx.example.net"
        att = [p for p in msg.walk() if p.get_content_disposition() == "attachment"][0]
        assert att.get_content_type() == "application/gzip"
        assert att.get_filename() == "mx.example.net!sender.example!1796083200!1796169599.xml.gz"
        assert ET.fromstring(xml).findtext("record/row/source_ip") == "192.0.2.7"
        t = next(b for b in queued if b.kind == "tlsrpt")
        msg, body = _attachment(t.message)
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "tlsrpt"
        assert msg["TLS-Report-Domain"] == "rcpt.example"
        assert msg["TLS-Report-Submitter"] == "mx.example.net"
        att = [p for p in msg.walk() if p.get_content_disposition() == "attachment"][0]
        assert att.get_content_type() == "application/tlsrpt+gzip"
        assert att.get_filename().startswith("mx.example.net!rcpt.example!1796083200!1796169599!")
        assert json.loads(body)["policies"][0]["summary"]["total-successful-session-count"] == 1
        entries = {e.reverse_path: e for e in store.queue_list()}
        assert set(entries) == {"noreply-dmarc@mx.example.net", "noreply-tlsrpt@mx.example.net"}
        assert [r.notify for r in entries["noreply-dmarc@mx.example.net"].recipients] == ["NEVER"]
        again, _ = run(job.send(DAY))
        assert again == [] and len(store.queue_list()) == 2
    finally:
        store.close()


def test_a_report_larger_than_the_size_limit_is_not_sent(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path).open()
    try:
        r = StaticResolver()
        r.add("_dmarc.big.example", "TXT", "v=DMARC1; p=none; rua=mailto:d@big.example!1k")
        rec = dr.DMARCRecorder.in_data_dir(tmp_path)
        for i in range(40):
            ok = dmarc_result(r, "big.example", spf_of(SPFStatus.PASS, "big.example"), [])
            rec.record(ok, f"192.0.2.{i}", spf_of(SPFStatus.PASS, "big.example"), [],
                       Verdict.accept("dmarc"), WHEN)
        rec.flush()
        queued, notes = run(ReportJob(store, r, "mx.example.net").send(DAY))
        assert queued == [] and any("exceeds its limit of 1024" in n for n in notes)
    finally:
        store.close()


def test_days() -> None:
    assert previous_day(WHEN) == "2026-11-30"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        day_range("yesterday")
    job = ReportJob.__new__(ReportJob)
    nxt = job.next_run(WHEN)
    assert day_range("2026-12-02")[0] + 300 <= nxt <= day_range("2026-12-02")[0] + 900


def test_the_daily_run_sends_yesterday_through_the_committer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path).open()
    try:
        r = zone()
        ok = dmarc_result(r, "sender.example", spf_of(SPFStatus.PASS, "sender.example"), [])
        rec = dr.DMARCRecorder.in_data_dir(tmp_path)
        rec.record(ok, "192.0.2.7", spf_of(SPFStatus.PASS, "sender.example"), [],
                   Verdict.accept("dmarc"), WHEN)
        old = ReportSpool(tmp_path, dr.KIND)
        old.add({"domain": "x"}, when=WHEN - 30 * 86400)
        old.flush()
        rec.flush()
        job = ReportJob(store, r, "mx.example.net", clock=lambda: WHEN + 86400)  # the next day

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(job.run_daily(stop, first_delay=0.01))
            for _ in range(500):
                if store.queue_list():
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 10)

        run(scenario())
        [entry] = store.queue_list()
        assert entry.reverse_path == "noreply-dmarc@mx.example.net"
        assert [x.address for x in entry.recipients] == ["dmarc@sender.example"]
        days = sorted(p.name for p in (tmp_path / "reports" / "dmarc").iterdir())
        assert days == [DAY]                       # the month-old counts were removed
    finally:
        store.close()


def test_reports_are_dkim_signed_with_our_domain_key(tmp_path: Path) -> None:
    from pillarbox.admin.dkim import generate
    from pillarbox.policy.dkim.keys import key_record, read_private_key
    from pillarbox.policy.dkim.keyring import key_path
    from pillarbox.policy.dkim.verify import verify
    from pillarbox.receive.signing import DKIMSigning
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

    store = SQLiteStore(tmp_path).open()
    try:
        keys = SQLiteDKIMKeys(store)
        made = generate(keys, tmp_path, "example.net", algorithm="ed25519", activate=True)
        sel = made[0].key.selector
        r = zone()
        r.add(f"{sel}._domainkey.example.net", "TXT",
              key_record(read_private_key(key_path(tmp_path, "example.net", sel))))
        ok = dmarc_result(r, "sender.example", spf_of(SPFStatus.PASS, "sender.example"), [])
        rec = dr.DMARCRecorder.in_data_dir(tmp_path)
        rec.record(ok, "192.0.2.7", spf_of(SPFStatus.PASS, "sender.example"), [],
                   Verdict.accept("dmarc"), WHEN)
        rec.flush()
        job = ReportJob(store, r, "mx.example.net",          # signed by the org domain's key
                        signing=DKIMSigning(keys, tmp_path))
        [built], _ = run(job.build(DAY))
        assert built.message.startswith(b"DKIM-Signature:")
        [result] = run(verify(built.message, r))
        assert result.result is DKIMStatus.PASS and result.domain == "example.net"
    finally:
        store.close()
