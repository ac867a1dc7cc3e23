"""``pillarbox dns check`` (admin/dns_check.py): what to publish, and every finding on
what is published, with a zone in a dict; then the command itself, as a
subprocess, against dnsmasq on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pillarbox.admin.commands import AdminError
from pillarbox.admin.dns_check import (
    Report,
    Setup,
    SigningKey,
    Status,
    check_domain,
    find_dkim_keys,
    setup_from_config,
    stored_dkim_keys,
)
from pillarbox.config import load_config
from pillarbox.deliver.mta_sts import Mode
from pillarbox.deliver.mta_sts import Policy as STSPolicy
from pillarbox.net.mta_sts_server import our_policy, policy_id
from pillarbox.policy.dkim.keys import (
    generate_key,
    key_record,
    read_private_key,
    write_private_key,
)
from pillarbox.policy.dns import StaticResolver
from tests.conftest import ROOT
from tests.dnsserver import DNSServer
from tests.dnsserver import dnsmasq as start_dnsmasq

D = "example.test"
MX = "mx.example.test"
IP = "192.0.2.1"
IP6 = "2001:db8::1"
PTR4 = "1.2.0.192.in-addr.arpa"
POLICY = STSPolicy(Mode.TESTING, 604800, (MX,))
KEY = generate_key("ed25519")
OTHER_KEY = generate_key("ed25519")


@pytest.fixture(scope="module")
def dkim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with one key file (no database: the file alone counts)."""
    data = tmp_path_factory.mktemp("data")
    (data / "dkim" / D).mkdir(parents=True)
    write_private_key(data / "dkim" / D / "e202612.pem", KEY)
    return data


def good_zone() -> StaticResolver:
    return StaticResolver({
        (D, "MX"): (MX,),
        (MX, "A"): (IP,),
        (D, "TXT"): ("v=spf1 mx -all", "google-site-verification=abc"),
        (f"e202612._domainkey.{D}", "TXT"): (key_record(KEY),),
        (f"_dmarc.{D}", "TXT"): (f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{D}",),
        (f"_mta-sts.{D}", "TXT"): (f"v=STSv1; id={policy_id(POLICY)}",),
        (f"mta-sts.{D}", "CNAME"): (MX,),
        (f"_smtp._tls.{D}", "TXT"): (f"v=TLSRPTv1; rua=mailto:postmaster@{D}",),
        (PTR4, "PTR"): (MX,),
    })


def good_setup(dkim_dir: Path, **changes: object) -> Setup:
    setup = Setup(D, MX, (IP,), find_dkim_keys(dkim_dir, D), POLICY, policy_id(POLICY))
    return replace(setup, **changes)  # type: ignore[arg-type]


def run(setup: Setup, resolver: StaticResolver) -> Report:
    return asyncio.run(check_domain(setup, resolver))


def finding(report: Report, item: str) -> tuple[Status, str]:
    found = [f for f in report.findings if f.item == item]
    assert len(found) == 1, [str(f) for f in report.findings]
    return found[0].status, found[0].text


def with_records(zone: StaticResolver, name: str, rdtype: str, *values: str) -> StaticResolver:
    records = dict(zone.records)
    if values:
        records[(name, rdtype)] = values
    else:
        records.pop((name, rdtype), None)
    return StaticResolver(records, failing=set(zone.failing))


# --- a domain that is right --------------------------------------------------------


def test_everything_published_is_ok(dkim_dir: Path) -> None:
    report = run(good_setup(dkim_dir), good_zone())
    assert report.ok, report.render()
    assert [f.item for f in report.findings] == ["MX", "host", "SPF", "DKIM e202612",
                                                 "DMARC", "MTA-STS", "TLS-RPT", f"PTR {IP}"]
    text = report.render()
    assert text.endswith("All 8 items are as they should be.\n")
    assert finding(report, "SPF")[1] == f'"v=spf1 mx -all" lets {IP} send'


def test_what_to_publish_as_zone_file_lines(dkim_dir: Path) -> None:
    setup = good_setup(dkim_dir, addresses=(IP, IP6))
    lines = run(setup, good_zone()).publish
    for line in [
        f"{D}. IN MX 10 {MX}.",
        f"{MX}. IN A {IP}",
        f"{MX}. IN AAAA {IP6}",
        f'{D}. IN TXT "v=spf1 mx ip4:{IP} ip6:{IP6} -all"',
        f'e202612._domainkey.{D}. IN TXT "{key_record(KEY)}"',
        f'_dmarc.{D}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@{D}"',
        f'_mta-sts.{D}. IN TXT "v=STSv1; id={policy_id(POLICY)}"',
        f"mta-sts.{D}. IN CNAME {MX}.",
        f'_smtp._tls.{D}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{D}"',
        f"{PTR4}. IN PTR {MX}.",
        f"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. IN PTR {MX}.",
    ]:
        assert line in lines
    assert any("change to p=quarantine" in line for line in lines)
    assert any(f"https://mta-sts.{D}/.well-known/mta-sts.txt" in line for line in lines)


def test_long_txt_values_are_split_into_strings_of_255(dkim_dir: Path) -> None:
    rsa = generate_key("rsa", 2048)
    write_private_key(dkim_dir / "dkim" / D / "r202612.pem", rsa)
    try:
        setup = good_setup(dkim_dir)
        line = next(x for x in run(setup, good_zone()).publish
                    if x.startswith(f"r202612._domainkey.{D}."))
        strings = line.split(" IN TXT ", 1)[1]
        parts = [p.strip('"') for p in strings.split('" "')]
        assert len(parts) > 1 and all(len(p) <= 255 for p in parts)
        assert "".join(parts) == key_record(rsa)
    finally:
        (dkim_dir / "dkim" / D / "r202612.pem").unlink()


def test_addresses_come_from_the_hostname_when_not_given(dkim_dir: Path) -> None:
    report = run(good_setup(dkim_dir, addresses=()), good_zone())
    assert report.setup.addresses == (IP,) and report.ok
    assert f"this server: {MX}, {IP}" in report.render()


# --- MX and host ----------------------------------------------------------------------


@pytest.mark.parametrize("records, status, text", [
    ((), Status.MISSING, f"no MX record: senders fall back to {D}'s own address"),
    ((".",), Status.WRONG, "null MX"),
    (("192.0.2.1",), Status.WRONG, "MX points to 192.0.2.1, an address"),
    (("gone.example",), Status.WRONG, "MX points to gone.example, which has no A/AAAA record"),
    (("other.example",), Status.WRONG, "goes to other.example, not to this server"),
])
def test_mx_problems(dkim_dir: Path, records: tuple[str, ...], status: Status,
                     text: str) -> None:
    zone = with_records(good_zone(), D, "MX", *records)
    zone.add("other.example", "A", "198.51.100.1")
    report = run(good_setup(dkim_dir, mta_sts=None), zone)
    statuses = [f.status for f in report.findings if f.item == "MX"]
    texts = " | ".join(f.text for f in report.findings if f.item == "MX")
    assert status in statuses and text in texts
    assert not report.ok


def test_mx_of_a_domain_that_does_not_exist(dkim_dir: Path) -> None:
    zone = StaticResolver({(MX, "A"): (IP,)})
    assert finding(run(good_setup(dkim_dir), zone), "MX") == (
        Status.MISSING, f"{D} does not exist in the DNS; publish {D}. IN MX 10 {MX}.")


def test_mx_through_a_cname_and_outside_the_mta_sts_policy(dkim_dir: Path) -> None:
    zone = good_zone()
    zone.add(D, "MX", "alias.example.test")
    zone.add("alias.example.test", "CNAME", MX)
    texts = [f.text for f in run(good_setup(dkim_dir), zone).findings if f.item == "MX"]
    assert any("alias.example.test, which is a CNAME" in t and "RFC 2181" in t for t in texts)
    assert any("alias.example.test is not in our MTA-STS policy's mx" in t for t in texts)


def test_hostname_problems(dkim_dir: Path) -> None:
    report = run(good_setup(dkim_dir, hostname="localhost"), good_zone())
    status, text = finding(report, "host")
    assert status is Status.WRONG and "server.hostname is localhost" in text
    assert not any("not to this server" in f.text for f in report.findings)
    assert report.publish[0].startswith("; server.hostname is localhost: set it")
    zone = with_records(good_zone(), MX, "A")
    zone.add(MX, "TXT", "exists")
    assert finding(run(good_setup(dkim_dir), zone), "host")[0] is Status.MISSING
    zone = with_records(good_zone(), MX, "A", "198.51.100.9")
    assert finding(run(good_setup(dkim_dir), zone), "host") == (
        Status.WRONG, f"{MX} resolves to 198.51.100.9, not to {IP}")


# --- SPF --------------------------------------------------------------------------------


@pytest.mark.parametrize("records, status, text", [
    (("hello",), Status.MISSING, f"no v=spf1 record at {D}"),
    (("v=spf1 mx -all", "v=spf1 -all"), Status.WRONG,
     "2 v=spf1 records: receivers treat that as a permanent error (RFC 7208 §4.5); "
     "publish one"),
    (("v=spf1 mx bogus:x -all",), Status.WRONG, "the record does not parse (unknown mechanism"),
    (("v=spf1 +all",), Status.WRONG, "+all: it lets anyone send"),
    (("v=spf1 mx all",), Status.WRONG, "+all: it lets anyone send"),
    (("v=spf1 ip4:198.51.100.0/24 -all",), Status.WRONG,
     f"does not let this server's address {IP} (fail) send"),
    (("v=spf1 ip4:198.51.100.0/24 ~all",), Status.WRONG, f"{IP} (softfail)"),
    (("v=spf1 include:nowhere.example -all",), Status.WRONG, "evaluating the record fails"),
])
def test_spf_problems(dkim_dir: Path, records: tuple[str, ...], status: Status,
                      text: str) -> None:
    zone = with_records(good_zone(), D, "TXT", *records)
    got, said = finding(run(good_setup(dkim_dir), zone), "SPF")
    assert got is status and text in said, said


def test_spf_without_addresses_and_with_a_dns_failure(dkim_dir: Path) -> None:
    zone = with_records(good_zone(), MX, "A")
    got, said = finding(run(good_setup(dkim_dir, addresses=()), zone), "SPF")
    assert got is Status.OK and "give --address" in said
    zone = good_zone()
    zone.failing.add((D, "TXT"))
    got, said = finding(run(good_setup(dkim_dir), zone), "SPF")
    assert got is Status.UNKNOWN and "the DNS did not answer" in said


# --- DKIM -------------------------------------------------------------------------------


def test_no_dkim_key_says_how_to_make_one(tmp_path: Path) -> None:
    setup = Setup(D, MX, (IP,), find_dkim_keys(tmp_path, D))
    report = run(setup, good_zone())
    status, text = finding(report, "DKIM")
    assert status is Status.MISSING and f"make them with 'pillarbox dkim keygen {D}'" in text
    assert f";   pillarbox dkim keygen {D}" in report.publish


@pytest.mark.parametrize("records, status, text", [
    ((), Status.MISSING, f"no key record at e202612._domainkey.{D}"),
    ((key_record(OTHER_KEY),), Status.WRONG, "is not the key in"),
    (("v=DKIM1; k=ed25519; p=",), Status.WRONG, "is revoked"),
    ((key_record(KEY), key_record(OTHER_KEY)), Status.WRONG, "2 TXT records"),
    (("v=DKIM1; k=dsa; p=AAAA",), Status.WRONG, "not a usable key record (unknown key type"),
    ((key_record(KEY).replace("v=DKIM1;", "v=DKIM1; t=y;"),), Status.OK, "testing mode"),
])
def test_dkim_findings(dkim_dir: Path, records: tuple[str, ...], status: Status,
                       text: str) -> None:
    zone = with_records(good_zone(), f"e202612._domainkey.{D}", "TXT", *records)
    got, said = finding(run(good_setup(dkim_dir), zone), "DKIM e202612")
    assert got is status and text in said, said


def test_dkim_key_files(tmp_path: Path) -> None:
    where = tmp_path / "dkim" / D
    where.mkdir(parents=True)
    write_private_key(where / "a.pem", KEY)
    (where / "c.pem").write_text("not a key")
    write_private_key(where / "d e.pem", KEY)     # not a selector: no DNS name has a space
    (where / "notes.txt").write_text("ignored")
    (tmp_path / "dkim" / "other.test").mkdir()
    write_private_key(tmp_path / "dkim" / "other.test" / "x.pem", KEY)
    keys = find_dkim_keys(tmp_path, D)
    assert [k.selector for k in keys] == ["a", "c", "d e"] and keys[0].key is not None
    assert keys[1].key is None and "not an unencrypted PEM private key" in keys[1].error
    assert keys[2].key is None and str(where / "d e.pem") in keys[2].error
    assert find_dkim_keys(tmp_path / "absent", D) == ()
    report = run(Setup(D, MX, (IP,), keys), good_zone())
    assert finding(report, "DKIM c")[0] is Status.WRONG
    assert finding(report, "DKIM d e")[0] is Status.WRONG
    assert f"; {keys[1].error}" in report.publish


def test_dns_text_cannot_reach_the_terminal_raw(dkim_dir: Path) -> None:
    zone = with_records(good_zone(), f"_smtp._tls.{D}", "TXT",
                        "v=TLSRPTv1; rua=https://r.example/\x1b[2J\x1b]0:owned\x07")
    report = run(good_setup(dkim_dir), zone)
    status, said = finding(report, "TLS-RPT")
    assert status is Status.OK and "\x1b" in said
    text = report.render()
    assert "\x1b" not in text and "\x07" not in text and "r.example/?[2J?]0:owned?" in text


def key_in(state: str, keep_until: float | None = None) -> SigningKey:
    return SigningKey(D, "e202612", Path("/data/dkim") / D / "e202612.pem", KEY,
                      state=state, keep_until=keep_until)


@pytest.mark.parametrize("key, published, status, text", [
    (key_in("pending"), False, Status.MISSING, "publish the DKIM line above before "
     "'pillarbox dkim activate'"),
    (key_in("pending"), True, Status.OK, f"ready for 'pillarbox dkim activate {D} e202612'"),
    (key_in("active"), False, Status.MISSING, "signatures with it fail"),
    (key_in("retired", time.time() + 86400), False, Status.MISSING,
     "the key is retired, but mail it signed must still verify; publish it again until"),
    (key_in("retired", time.time() + 86400), True, Status.OK, "retired, keep it until"),
    (key_in("retired", time.time() - 1), False, Status.OK,
     f"its overlap is over: no record needed ('pillarbox dkim remove {D} e202612')"),
    (key_in("retired", time.time() - 1), True, Status.OK, "retired, its record may go now"),
])
def test_dkim_key_states(dkim_dir: Path, key: SigningKey, published: bool, status: Status,
                         text: str) -> None:
    zone = good_zone() if published else with_records(good_zone(),
                                                       f"e202612._domainkey.{D}", "TXT")
    report = run(good_setup(dkim_dir, dkim=(key,)), zone)
    got, said = finding(report, "DKIM e202612")
    assert got is status and text in said, said
    notes = [line for line in report.publish if line.startswith("; e202612: ")]
    assert len(notes) == 1


def test_keys_of_the_store_with_their_states(tmp_path: Path) -> None:
    from pillarbox.admin import dkim as service
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys
    from pillarbox.store.sqlite.store import SQLiteStore

    assert stored_dkim_keys(tmp_path, D, 604800) is None      # no database
    store = SQLiteStore(tmp_path).open()
    try:
        keys = SQLiteDKIMKeys(store)
        made = service.generate(keys, tmp_path, D, algorithm="ed25519", now=1.0e9)
        service.activate(keys, tmp_path, D, made[0].key.selector, now=1.0e9 + 10)
        service.generate(keys, tmp_path, D, algorithm="ed25519", rotate=True, selector="next")
    finally:
        store.close()
    found = stored_dkim_keys(tmp_path, D, 3600)
    assert found is not None
    assert [(k.selector, k.state) for k in found] == [(made[0].key.selector, "active"),
                                                      ("next", "pending")]
    assert all(k.key is not None for k in found)
    assert stored_dkim_keys(tmp_path, "other.test", 3600) == ()
    config = load_config(None, {"server.hostname": MX, "server.data_dir": str(tmp_path)})
    assert [k.state for k in setup_from_config(config, D, []).dkim] == ["active", "pending"]


# --- DMARC ------------------------------------------------------------------------------


@pytest.mark.parametrize("records, status, text", [
    (("spf-like text",), Status.MISSING, f"no DMARC record at _dmarc.{D}"),
    (("v=DMARC1; p=none", "v=DMARC1; p=reject"), Status.WRONG,
     "2 DMARC records at _dmarc.example.test: receivers ignore them all"),
    (("v=DMARC1; rua=mailto:a@example.test",), Status.WRONG, "DMARC record has no p= tag"),
    (("v=DMARC1; p=block",), Status.WRONG, "p='block' is not none, quarantine or reject"),
    (("v=DMARC1; p=reject; pct=200",), Status.WRONG, "pct='200' is not 0 to 100"),
    (("V=dmarc1; p=reject",), Status.WRONG, "must start with exactly v=DMARC1"),
    (("v=DMARC1; p=none; rua=mailto:a@example.test",), Status.OK,
     "p=none only asks for reports; when they show that all your mail passes, change to "
     "p=quarantine"),
    (("v=DMARC1; p=reject",), Status.OK, "receivers refuse forgeries; no rua=, so no reports"),
    (("v=DMARC1; p=quarantine; pct=50; rua=mailto:a@example.test",), Status.OK,
     "pct=50"),
])
def test_dmarc_findings(dkim_dir: Path, records: tuple[str, ...], status: Status,
                        text: str) -> None:
    zone = with_records(good_zone(), f"_dmarc.{D}", "TXT", *records)
    got, said = finding(run(good_setup(dkim_dir), zone), "DMARC")
    assert got is status and text.replace("forgeries;", f"forgeries of {D};") in said, said


def test_dmarc_of_the_organisational_domain_applies(dkim_dir: Path) -> None:
    sub = f"lists.{D}"
    zone = good_zone()
    zone.add(sub, "MX", MX)
    setup = good_setup(dkim_dir, domain=sub, dkim=())
    got, said = finding(run(setup, zone), "DMARC")
    assert got is Status.OK and f"the one of {D} applies" in said


# --- MTA-STS and TLS-RPT ------------------------------------------------------------


@pytest.mark.parametrize("records, status, text", [
    ((), Status.MISSING, f"no record at _mta-sts.{D}: senders do not know you have a policy"),
    ((f"v=STSv1; id={policy_id(POLICY)}", "v=STSv1; id=x"), Status.WRONG,
     "2 v=STSv1 records"),
    (("v=STSv1; id=not-alnum",), Status.WRONG, "id must be 1 to 32 letters and digits"),
    (("v=STSv1; id=old1",), Status.WRONG,
     f"has id=old1, but the policy this server serves has id={policy_id(POLICY)}"),
])
def test_mta_sts_findings(dkim_dir: Path, records: tuple[str, ...], status: Status,
                          text: str) -> None:
    zone = with_records(good_zone(), f"_mta-sts.{D}", "TXT", *records)
    got, said = finding(run(good_setup(dkim_dir), zone), "MTA-STS")
    assert got is status and text in said, said


def test_mta_sts_host_and_serving(dkim_dir: Path) -> None:
    zone = with_records(good_zone(), f"mta-sts.{D}", "CNAME")
    zone.add(f"mta-sts.{D}", "TXT", "x")
    got, said = finding(run(good_setup(dkim_dir), zone), "MTA-STS")
    assert got is Status.WRONG and f"mta-sts.{D} has no A/AAAA record" in said
    zone = with_records(good_zone(), f"mta-sts.{D}", "CNAME")
    zone.add(f"mta-sts.{D}", "A", "198.51.100.80")
    got, said = finding(run(good_setup(dkim_dir), zone), "MTA-STS")
    assert said == f"mta-sts.{D} resolves to 198.51.100.80, not to this server"
    got, said = finding(run(good_setup(dkim_dir, mta_sts=None), good_zone()), "MTA-STS")
    assert got is Status.WRONG and "this server does not serve one" in said
    zone = with_records(good_zone(), f"_mta-sts.{D}", "TXT")
    got, said = finding(run(good_setup(dkim_dir, mta_sts=None), zone), "MTA-STS")
    assert got is Status.MISSING and "set mta_sts.listen" in said


@pytest.mark.parametrize("records, status, text", [
    (("v=TLSRPTv0; rua=mailto:a@example.test",), Status.MISSING, "no record at _smtp._tls"),
    (("v=TLSRPTv1; rua=mailto:a@example.test", "v=TLSRPTv1; rua=https://r.example/"),
     Status.WRONG, "2 v=TLSRPTv1 records"),
    (("v=TLSRPTv1;",), Status.WRONG, "the record has no rua="),
    (("v=TLSRPTv1; rua=ftp://r.example/",), Status.WRONG,
     "'ftp://r.example/' is neither a mailto: address nor an https: URL"),
    (("v=TLSRPTv1x; rua=mailto:a@example.test",), Status.WRONG, "must start with v=TLSRPTv1;"),
    (("v=TLSRPTv1; rua=mailto:a@example.test,https://r.example/v1",), Status.OK, "v=TLSRPTv1"),
])
def test_tlsrpt_findings(dkim_dir: Path, records: tuple[str, ...], status: Status,
                         text: str) -> None:
    zone = with_records(good_zone(), f"_smtp._tls.{D}", "TXT", *records)
    got, said = finding(run(good_setup(dkim_dir), zone), "TLS-RPT")
    assert got is status and text in said, said


# --- PTR ------------------------------------------------------------------------------


def test_ptr_findings(dkim_dir: Path) -> None:
    item = f"PTR {IP}"
    zone = with_records(good_zone(), PTR4, "PTR", "host.isp.example")
    zone.add("host.isp.example", "A", "198.51.100.1")
    assert finding(run(good_setup(dkim_dir), zone), item) == (
        Status.WRONG, f"PTR of {IP} is host.isp.example, which does not resolve back to "
                      f"{IP}; have it set to {MX}")
    zone.add("host.isp.example", "A", IP)
    got, said = finding(run(good_setup(dkim_dir), zone), item)
    assert got is Status.WRONG and f"is host.isp.example, not {MX}" in said
    zone = with_records(good_zone(), PTR4, "PTR")
    got, said = finding(run(good_setup(dkim_dir), zone), item)
    assert got is Status.MISSING and f"no PTR record for {IP}" in said
    zone = good_zone()
    zone.failing.add(PTR4)
    assert finding(run(good_setup(dkim_dir), zone), item)[0] is Status.UNKNOWN
    zone = with_records(good_zone(), MX, "A")
    got, said = finding(run(good_setup(dkim_dir, addresses=()), zone), "PTR")
    assert got is Status.UNKNOWN and "--address" in said


# --- from the configuration -----------------------------------------------------------


def test_setup_from_config(tmp_path: Path) -> None:
    config = load_config(None, {"server.hostname": "MX.Example.Test",
                                "server.data_dir": str(tmp_path),
                                "mta_sts.listen": "127.0.0.1:8443"})
    setup = setup_from_config(config, "Example.TEST.", ["192.0.2.1", "[2001:db8::1]",
                                                        "192.0.2.1"])
    assert (setup.domain, setup.hostname, setup.addresses) == (D, MX, (IP, IP6))
    assert setup.dkim == ()
    policy = our_policy(config.mta_sts, MX)
    assert setup.mta_sts == policy and setup.mta_sts_id == policy_id(policy)
    with pytest.raises(AdminError, match="'mail' is not an IP address"):
        setup_from_config(config, D, ["mail"])
    with pytest.raises(AdminError, match="IP address is not a domain name"):
        setup_from_config(config, "192.0.2.1", [])
    off = load_config(None, {"server.hostname": MX, "server.data_dir": str(tmp_path)})
    assert setup_from_config(off, D, []).mta_sts is None


# --- the command, against a real DNS server -----------------------------------------


@pytest.fixture(scope="module")
def cli_dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A data directory whose store has one active RSA key (pillarbox dkim keygen's way)."""
    from pillarbox.admin import dkim as service
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys
    from pillarbox.store.sqlite.store import SQLiteStore

    data = tmp_path_factory.mktemp("cli-data")
    store = SQLiteStore(data).open()
    try:
        made = service.generate(SQLiteDKIMKeys(store), data, D, algorithm="rsa",
                                selector="r1", activate=True)
    finally:
        store.close()
    assert made[0].key.state == "active"
    return data, key_record(read_private_key(data / "dkim" / D / "r1.pem"))


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory,
            cli_dkim_key: tuple[Path, str]) -> Iterator[DNSServer]:
    data, dkim = cli_dkim_key
    config = load_config(None, {"server.hostname": MX, "mta_sts.listen": "127.0.0.1:8443"})
    sts_id = policy_id(our_policy(config.mta_sts, MX))
    strings = ",".join(f'"{dkim[i:i + 255]}"' for i in range(0, len(dkim), 255))
    zone = [
        f"mx-host={D},{MX},10",
        f"host-record={MX},{IP}",                       # and its PTR
        f'txt-record={D},"v=spf1 mx -all"',
        f"txt-record=r1._domainkey.{D},{strings}",
        f'txt-record=_dmarc.{D},"v=DMARC1; p=none; rua=mailto:postmaster@{D}"',
        f'txt-record=_mta-sts.{D},"v=STSv1; id={sts_id}"',
        f"cname=mta-sts.{D},{MX}",
        f'txt-record=_smtp._tls.{D},"v=TLSRPTv1; rua=mailto:postmaster@{D}"',
        # a broken domain
        "mx-host=broken.test,nohost.broken.test,10",
        'txt-record=broken.test,"v=spf1 mx -all"',
        'txt-record=broken.test,"v=spf1 a -all"',
        'txt-record=_dmarc.broken.test,"v=DMARC1; rua=mailto:postmaster@broken.test"',
    ]
    with start_dnsmasq(tmp_path_factory.mktemp("dnsmasq-check"), zone) as server:
        yield server


def pillarbox(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "pillarbox"), "-o", f"server.data_dir={data}",
         "-o", f"server.hostname={MX}", "-o", "mta_sts.listen=127.0.0.1:8443", *args],
        capture_output=True, text=True, timeout=60, cwd=data)


def test_cli_all_published_exits_0(dnsmasq: DNSServer, cli_dkim_key: tuple[Path, str]) -> None:
    data, _ = cli_dkim_key
    done = pillarbox(data, "dns", "check", D, "--nameserver", dnsmasq.nameserver)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Records to publish for {D} (this server: {MX}, {IP})" in done.stdout
    assert "All 8 items are as they should be." in done.stdout
    words = " ".join(done.stdout.split())
    assert f"ok PTR {IP} {IP} is {MX}, which resolves back to it" in words
    assert f"ok DKIM r1 r1._domainkey.{D} has our key (k=rsa)" in words
    assert f"; r1: signs mail now r1._domainkey.{D}. IN TXT" in words


def test_cli_broken_domain_exits_1_and_says_why(dnsmasq: DNSServer,
                                                cli_dkim_key: tuple[Path, str]) -> None:
    data, _ = cli_dkim_key
    done = pillarbox(data, "dns", "check", "broken.test", "--address", IP,
                     "--nameserver", dnsmasq.nameserver)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "MX points to nohost.broken.test, which has no A/AAAA record" in out
    assert "2 v=spf1 records: receivers treat that as a permanent error (RFC 7208 §4.5)" in out
    assert "DMARC record has no p= tag" in out
    assert "pillarbox dkim keygen broken.test" in out
    assert "no record at _smtp._tls.broken.test" in out


def test_cli_bad_arguments(tmp_path: Path) -> None:
    done = pillarbox(tmp_path, "dns", "check", D, "--address", "mail")
    assert done.returncode == 1 and "pillarbox: error: --address 'mail' is not an IP address" \
        in done.stderr
    done = pillarbox(tmp_path, "dns", "check", D, "--nameserver", "ns.example")
    assert done.returncode == 1 and "nameserver 'ns.example' is not an IP address" in done.stderr
