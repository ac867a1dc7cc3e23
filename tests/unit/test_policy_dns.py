"""DNSResolver (policy/dns.py), and SPF over it, against a real DNS server:
dnsmasq on 127.0.0.1, a free port, authoritative for ``test`` (so negative
answers carry an SOA, RFC 2308).  Cache expiry is checked with a fake clock;
what reached the server is counted from dnsmasq's query log."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from pillarbox.policy.dns import (
    Answer,
    DNSResolver,
    DNSTemporaryError,
    StaticResolver,
    parse_nameserver,
)
from pillarbox.policy.spf import Result, check_host
from tests.dnsserver import TTL, DNSServer
from tests.dnsserver import dnsmasq as start_dnsmasq

ZONE = [
    'txt-record=split.test,"v=spf1 ","ip4:192.0.2.0/24"," -all"',
    'txt-record=two.test,"one"',
    'txt-record=two.test,"two"',
    'txt-record=mail.test,"v=spf1 ip6:2001:db8::/32 ","mx a:host.test/24 -all"',
    "host-record=host.test,192.0.2.1,2001:db8::1",
    "host-record=mx1.test,192.0.2.11",
    "host-record=mx2.test,192.0.2.12",
    "mx-host=mail.test,mx2.test,20",
    "mx-host=mail.test,mx1.test,10",
    "ptr-record=1.2.0.192.in-addr.arpa,host.test",
    "cname=alias.test,host.test",
    "host-record=xn--bcher-kva.test,192.0.2.7",
    "txt-record=long.test," + ",".join(f'"{c * 200}"' for c in "abc"),  # over 512 octets
] + [f'txt-record=n{i}.test,"record {i}"' for i in range(5)]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    with start_dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ZONE) as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask(resolver: DNSResolver, name: str, rdtype: str) -> Answer:
    return asyncio.run(resolver.query(name, rdtype))


# --- answers as text ---------------------------------------------------------------


def test_txt_strings_are_concatenated_per_record(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    assert ask(r, "split.test", "TXT").records == ("v=spf1 ip4:192.0.2.0/24 -all",)
    assert sorted(ask(r, "two.test", "TXT").records) == ["one", "two"]
    assert ask(r, "long.test", "TXT").records == ("a" * 200 + "b" * 200 + "c" * 200,)
    assert dnsmasq.queries("long.test", "TXT") == 1  # EDNS(0): one UDP answer, no TCP retry


def test_addresses_mx_ptr_cname(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    assert ask(r, "host.test", "A").records == ("192.0.2.1",)
    assert ask(r, "host.test", "AAAA").records == ("2001:db8::1",)
    assert ask(r, "mail.test", "MX").records == ("mx1.test", "mx2.test")  # preference order
    assert ask(r, "1.2.0.192.in-addr.arpa", "PTR").records == ("host.test",)
    assert ask(r, "alias.test", "CNAME").records == ("host.test",)
    assert ask(r, "alias.test", "A").records == ("192.0.2.1",)  # the chain is followed


def test_positive_ttl(dnsmasq: DNSServer) -> None:
    answer = ask(DNSResolver([dnsmasq.nameserver]), "host.test", "A")
    assert answer.ttl == TTL and not answer.nxdomain and not answer.void


def test_nxdomain_and_no_data(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    nx = ask(r, "nowhere.test", "TXT")
    assert nx.nxdomain and nx.void and nx.records == ()
    assert nx.ttl == TTL  # RFC 2308 §5: min(SOA TTL, SOA MINIMUM)
    nodata = ask(r, "host.test", "MX")
    assert nodata.void and not nodata.nxdomain
    assert nodata.ttl == TTL


def test_u_labels_are_asked_as_a_labels(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    assert ask(r, "bücher.test", "A").records == ("192.0.2.7",)
    assert ask(r, "BÜCHER.test.", "A").records == ("192.0.2.7",)
    assert dnsmasq.queries("xn--bcher-kva.test", "A") == 1  # the second from the cache


@pytest.mark.parametrize("name", ["a..test", "x" * 64 + ".test", ".", "", "a" * 250 + ".test",
                                  "xn--.test\u0301"])
def test_names_that_cannot_exist_are_nxdomain_without_asking(dnsmasq: DNSServer,
                                                             name: str) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    assert ask(r, name, "A") == Answer(nxdomain=True)
    assert r.asked == 0


def test_unknown_record_type_is_the_callers_error(dnsmasq: DNSServer) -> None:
    with pytest.raises(ValueError, match="record type 'SOA'"):
        ask(DNSResolver([dnsmasq.nameserver]), "host.test", "SOA")


# --- cache -------------------------------------------------------------------------


def test_positive_answers_are_cached_for_their_ttl(dnsmasq: DNSServer) -> None:
    clock = Clock()
    r = DNSResolver([dnsmasq.nameserver], clock=clock)

    async def run() -> None:
        first = await r.query("n0.test", "TXT")
        clock.now += TTL - 1
        again = await r.query("N0.test.", "TXT")  # same question, other spelling
        assert again.records == first.records and again.ttl == pytest.approx(1)
        assert r.asked == 1
        clock.now += 2
        await r.query("n0.test", "TXT")
        assert r.asked == 2

    asyncio.run(run())
    assert dnsmasq.queries("n0.test", "TXT") == 2


def test_negative_answers_are_cached_for_the_negative_ttl(dnsmasq: DNSServer) -> None:
    clock = Clock()
    r = DNSResolver([dnsmasq.nameserver], clock=clock)

    async def run() -> None:
        assert (await r.query("nothing.test", "A")).nxdomain
        clock.now += TTL - 1
        assert (await r.query("nothing.test", "A")).nxdomain
        assert r.asked == 1
        clock.now += 2
        assert (await r.query("nothing.test", "A")).nxdomain
        assert r.asked == 2

    asyncio.run(run())


def test_the_cache_is_bounded_least_recently_used_first(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver], cache_entries=2)

    async def run() -> None:
        for name in ("n1.test", "n2.test", "n1.test", "n3.test"):  # n2 is the oldest now
            await r.query(name, "TXT")
        assert r.asked == 3
        await r.query("n1.test", "TXT")
        assert r.asked == 3
        await r.query("n2.test", "TXT")
        assert r.asked == 4

    asyncio.run(run())


def test_no_cache(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver], cache_entries=0)

    async def run() -> None:
        await r.query("host.test", "A")
        await r.query("host.test", "A")

    asyncio.run(run())
    assert r.asked == 2


def test_concurrent_identical_questions_share_one_query(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])

    async def run() -> list[Answer]:
        return await asyncio.gather(*(r.query("n4.test", "TXT") for _ in range(50)))

    answers = asyncio.run(run())
    assert {a.records for a in answers} == {("record 4",)}
    assert r.asked == 1
    assert dnsmasq.queries("n4.test", "TXT") == 1


def test_a_cancelled_caller_does_not_cancel_the_others(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])

    async def run() -> Answer:
        first = asyncio.ensure_future(r.query("n3.test", "TXT"))
        second = asyncio.ensure_future(r.query("n3.test", "TXT"))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert asyncio.run(run()).records == ("record 3",)


# --- failures ------------------------------------------------------------------------


def test_refused_is_a_temporary_error_and_never_cached(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(DNSTemporaryError, match="REFUSED from 127.0.0.1") as e:
                await r.query("example.com", "TXT")  # not in dnsmasq's zones
            assert (e.value.name, e.value.rdtype) == ("example.com", "TXT")
        assert r.asked == 2

    asyncio.run(run())


def test_a_silent_nameserver_times_out_and_is_never_cached() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives, never answers
        port = silent.getsockname()[1]
        r = DNSResolver([f"127.0.0.1:{port}"], timeout=0.3)

        async def run() -> None:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(DNSTemporaryError, match="timed out"):
                    await r.query("host.test", "A")
                assert time.monotonic() - started < 2
            assert r.asked == 2

        asyncio.run(run())


# --- SPF over the real resolver ----------------------------------------------------------


@pytest.mark.parametrize(("ip", "result", "mechanism"), [
    ("192.0.2.12", Result.PASS, "mx"), ("192.0.2.200", Result.PASS, "a:host.test/24"),
    ("2001:db8::25", Result.PASS, "ip6:2001:db8::/32"), ("198.51.100.1", Result.FAIL, "-all"),
])
def test_check_host_through_dns(dnsmasq: DNSServer, ip: str, result: Result,
                                mechanism: str) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    spf = asyncio.run(check_host(ip, "mail.test", "a@mail.test", "h.test", r))
    assert (spf.result, spf.mechanism) == (result, mechanism)


def test_check_host_through_dns_errors(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    spf = asyncio.run(check_host("192.0.2.1", "example.com", "a@example.com", "h.test", r))
    assert spf.result is Result.TEMPERROR and "REFUSED" in spf.reason
    spf = asyncio.run(check_host("192.0.2.1", "nowhere.test", "a@nowhere.test", "h.test", r))
    assert spf.result is Result.NONE


# --- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("192.0.2.53", ("192.0.2.53", 53)),
    ("192.0.2.53:5353", ("192.0.2.53", 5353)),
    ("2001:db8::53", ("2001:db8::53", 53)),
    ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
    ("[::1]", ("::1", 53)),
])
def test_nameserver_forms(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["dns.example", "192.0.2.53:0", "192.0.2.53:70000",
                                  "[192.0.2.53", "", "192.0.2.53:"])
def test_bad_nameservers_are_refused_with_their_text(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        DNSResolver([text])


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="empty"):
        DNSResolver([])
    with pytest.raises(ValueError, match="timeout"):
        DNSResolver(["127.0.0.1"], timeout=0)
    with pytest.raises(ValueError, match="cache_entries"):
        DNSResolver(["127.0.0.1"], cache_entries=-1)


def test_resolv_conf_is_the_default() -> None:
    try:
        r = DNSResolver()
    except ValueError as e:  # a machine without /etc/resolv.conf: the error says so
        assert "resolv.conf" in str(e)
    else:
        assert r.nameservers


# --- the static resolver of the tests --------------------------------------------------


def test_static_resolver_follows_cnames_and_fails_by_type() -> None:
    zone = StaticResolver({("alias.test", "CNAME"): ("host.test",),
                           ("host.test", "A"): ("192.0.2.1",),
                           ("loop.test", "CNAME"): ("loop.test",),
                           ("slow.test", "A"): ("192.0.2.2",)},
                          failing={("slow.test", "TXT"), "down.test"})

    async def run() -> None:
        assert (await zone.query("alias.test", "A")).records == ("192.0.2.1",)
        assert (await zone.query("alias.test", "CNAME")).records == ("host.test",)
        assert (await zone.query("slow.test", "A")).records == ("192.0.2.2",)
        with pytest.raises(DNSTemporaryError, match="CNAME loop"):
            await zone.query("loop.test", "A")
        with pytest.raises(DNSTemporaryError):
            await zone.query("slow.test", "TXT")
        with pytest.raises(DNSTemporaryError):
            await zone.query("down.test", "A")
        assert (await zone.query("nowhere.test", "A")).nxdomain

    asyncio.run(run())
