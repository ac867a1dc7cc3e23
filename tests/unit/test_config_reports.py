"""The ``[reports]`` section: its defaults (what the report job did before it
existed), its errors naming file, line and key, and the job honouring it
(``pillarbox.reports.job``)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from pathlib import Path

import pytest

from pillarbox.config import ConfigError, load_config
from pillarbox.deliver.mta_sts import CachedPolicy, Mode, Policy
from pillarbox.policy.dmarc import SPFOutcome, evaluate
from pillarbox.policy.dns import StaticResolver
from pillarbox.policy.spf import Result as SPFStatus
from pillarbox.policy.spf import SPFResult
from pillarbox.policy.verdict import Verdict
from pillarbox.reports import dmarc as dr
from pillarbox.reports import tlsrpt
from pillarbox.reports.job import KINDS, ReportJob, day_range
from pillarbox.store.sqlite.store import SQLiteStore

DAY = "2026-12-01"
WHEN = day_range(DAY)[0] + 3600.0
STS = CachedPolicy("rcpt.example", "20261201", Policy(Mode.ENFORCE, 86400, ("mx.rcpt.example",)),
                   0.0)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors_of(text: str, directory: Path) -> list[str]:
    path = directory / "pillarbox.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(Path(path.name))   # relative: messages name "pillarbox.toml"
    return info.value.errors


# --- the section -------------------------------------------------------------------

def test_defaults_send_both_kinds_from_the_old_addresses(in_tmp: Path) -> None:
    r = load_config(None).reports
    assert (r.dmarc, r.tlsrpt, r.sender, r.contact) == (True, True, "", "")


def test_values_from_the_file_and_the_command_line(in_tmp: Path) -> None:
    path = in_tmp / "pillarbox.toml"
    path.write_text('[reports]\ndmarc = false\nsender = "dmarc-reports@example.com"\n'
                    'contact = "abuse+reports@example.com"\n', encoding="utf-8")
    r = load_config(path, {"reports.tlsrpt": "off"}).reports
    assert (r.dmarc, r.tlsrpt) == (False, False)
    assert (r.sender, r.contact) == ("dmarc-reports@example.com", "abuse+reports@example.com")


@pytest.mark.parametrize("line, wanted", [
    ('dmarc = "no"', 'reports.dmarc: expected true or false, got "no"'),
    ("tlsrpt = 1", "reports.tlsrpt: expected true or false, got 1"),
    ('sender = "reports"', 'reports.sender: expected an address such as '
                           '"reports@example.com", or "", got "reports"'),
    ('sender = "Reports <r@example.com>"', "reports.sender: expected an address"),
    ('sender = "r@"', "reports.sender: expected an address"),
    ('sender = "r..x@example.com"', "reports.sender: expected an address"),
    ('sender = "r@exa mple.com"', "reports.sender: expected an address"),
    ('contact = "@example.com"', 'reports.contact: expected an address such as '
                                 '"postmaster@example.com", or "", got "@example.com"'),
    ("contact = []", "reports.contact: expected an address"),
])
def test_errors_name_file_line_and_key(in_tmp: Path, line: str, wanted: str) -> None:
    [error] = errors_of(f"[reports]\n{line}\n", in_tmp)
    assert error.startswith("pillarbox.toml:2: "), error
    assert wanted in error, error


def test_an_unknown_key_is_named(in_tmp: Path) -> None:
    [error] = errors_of('[reports]\nfrom = "r@example.com"\n', in_tmp)
    assert "pillarbox.toml:2: reports.from" in error and "unknown" in error, error


def test_every_error_is_reported_at_once(in_tmp: Path) -> None:
    errors = errors_of('[reports]\ndmarc = "x"\nsender = "x"\ncontact = "y"\n', in_tmp)
    assert [e.split(": ")[1] for e in errors] == [
        "reports.dmarc", "reports.sender", "reports.contact"]


# --- the job honours it ---------------------------------------------------------------

def _spool_both(data_dir: Path, resolver: StaticResolver) -> None:
    """One DMARC row for sender.example and one TLS session to rcpt.example."""
    spf = SPFResult(SPFStatus.PASS, "sender.example", ip="192.0.2.7", sender="a@sender.example")
    result = asyncio.run(evaluate("sender.example", SPFOutcome("pass", "sender.example"), [],
                                  resolver, random=lambda: 0.0))
    rec = dr.DMARCRecorder.in_data_dir(data_dir)
    rec.record(result, "192.0.2.7", spf, [], Verdict.accept("dmarc"), WHEN)
    rec.flush()
    tls = tlsrpt.TLSRecorder.in_data_dir(data_dir)
    tls.session("rcpt.example", "mx.rcpt.example", "192.0.2.1", tls=True, sts=STS, when=WHEN)
    tls.flush()


def _zone() -> StaticResolver:
    r = StaticResolver()
    r.add("_dmarc.sender.example", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example")
    r.add("_smtp._tls.rcpt.example", "TXT", "v=TLSRPTv1; rua=mailto:tls@rcpt.example")
    return r


@pytest.mark.parametrize("dmarc, tls", [(True, True), (True, False), (False, True),
                                        (False, False)])
def test_each_kind_can_be_switched_off(tmp_path: Path, dmarc: bool, tls: bool) -> None:
    store = SQLiteStore(tmp_path / "data").open()
    try:
        resolver = _zone()
        _spool_both(store.data_dir, resolver)
        config = load_config(None, {"server.data_dir": str(store.data_dir),
                                    "server.hostname": "mx.example.net",
                                    "reports.dmarc": str(dmarc).lower(),
                                    "reports.tlsrpt": str(tls).lower()})
        job = ReportJob.from_config(store, config)
        job.resolver = resolver
        job.clock = lambda: WHEN + 86400
        queued, notes = asyncio.run(job.send(DAY))
        wanted = sorted(k for k, on in (("dmarc", dmarc), ("tlsrpt", tls)) if on)
        assert sorted(b.kind for b in queued) == wanted
        assert sorted(e.reverse_path for e in store.queue_list()) == [
            f"noreply-{k}@mx.example.net" for k in wanted]
        off = sorted(KINDS - set(wanted))
        assert [n for n in notes if "reports are off" in n] == [
            f"{k} reports are off (reports.{k} = false)" for k in off]
    finally:
        store.close()


def test_sender_and_contact(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "data").open()
    try:
        resolver = _zone()
        _spool_both(store.data_dir, resolver)
        config = load_config(None, {"server.data_dir": str(store.data_dir),
                                    "server.hostname": "mx.example.net",
                                    "reports.sender": "reports@example.net",
                                    "reports.contact": "dmarc-admin@example.net"})
        job = ReportJob.from_config(store, config)
        job.resolver = resolver
        built, _ = asyncio.run(job.build(DAY))
        assert sorted(b.kind for b in built) == ["dmarc", "tlsrpt"]
        for b in built:
            assert b.sender == "reports@example.net"
            msg = email.message_from_bytes(b.message, policy=email.policy.default)
            assert msg["From"] == "reports@example.net"
        dmarc_doc = next(b.document for b in built if b.kind == "dmarc").decode()
        assert "<email>dmarc-admin@example.net</email>" in dmarc_doc
        tls_doc = json.loads(next(b.document for b in built if b.kind == "tlsrpt"))
        assert tls_doc["contact-info"] == "dmarc-admin@example.net"
        # Unset, they are what they always were.
        plain = ReportJob(store, resolver, "mx.example.net")
        assert (plain.sender("dmarc"), plain.sender("tlsrpt"), plain.contact) == (
            "noreply-dmarc@mx.example.net", "noreply-tlsrpt@mx.example.net",
            "postmaster@mx.example.net")
    finally:
        store.close()


def test_reports_are_signed_by_the_senders_domain(tmp_path: Path) -> None:
    from pillarbox.admin.dkim import generate
    from pillarbox.policy.dkim.keyring import key_path
    from pillarbox.policy.dkim.keys import key_record, read_private_key
    from pillarbox.policy.dkim.verify import Result, verify
    from pillarbox.receive.signing import DKIMSigning
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

    store = SQLiteStore(tmp_path).open()
    try:
        keys = SQLiteDKIMKeys(store)
        made = generate(keys, tmp_path, "reports.example", algorithm="ed25519", activate=True)
        sel = made[0].key.selector
        resolver = _zone()
        resolver.add(f"{sel}._domainkey.reports.example", "TXT",
                     key_record(read_private_key(key_path(tmp_path, "reports.example", sel))))
        _spool_both(tmp_path, resolver)
        job = ReportJob(store, resolver, "mx.example.net", signing=DKIMSigning(keys, tmp_path),
                        sender="dmarc@reports.example", kinds=frozenset({"dmarc"}))
        [built], _ = asyncio.run(job.build(DAY))
        [result] = asyncio.run(verify(built.message, resolver))
        assert result.result is Result.PASS and result.domain == "reports.example"
    finally:
        store.close()


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path).open()
    try:
        with pytest.raises(ValueError, match="unknown report kinds: arf"):
            ReportJob(store, StaticResolver(), "mx.example.net", kinds=frozenset({"arf"}))
    finally:
        store.close()
