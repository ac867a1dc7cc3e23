"""MXResolver (pillarbox.deliver.mx) against a real DNS server, dnsmasq, in the
network lab (tests/netlab): each lookup is a real query over UDP from the
client host's namespace, and the server's query log counts them.  Needs root
(skips otherwise, fails under CI)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import sys
import time
from collections.abc import Iterator

import pytest

from pillarbox.deliver.mx import MXHost, MXResolver, Route, RouteError
from tests.netlab import DNS_V4, DNS_V6, Host, Lab, require_lab

TTL = 2  # every record's TTL and the negative TTL: short, so expiry can be watched
CLIENT = "198.51.100.10"
BLACKHOLE = "203.0.113.53"  # a "nameserver" that reads queries and never answers
SERVFAIL = "203.0.113.54"   # one that answers every query with SERVFAIL

MX1 = ("2001:db8::25", "192.0.2.25")
MX2 = ("2001:db8::26", "192.0.2.26")
MX3 = ("192.0.2.27",)

# Two broken nameservers in one process: on argv[1] it drops every query, on
# argv[2] it answers each with its own question, QR set and RCODE 2 (SERVFAIL).
_BROKEN = """
import selectors, socket, sys
drop, fail = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
drop.bind((sys.argv[1], 53))
fail.bind((sys.argv[2], 53))
sel = selectors.DefaultSelector()
sel.register(drop, selectors.EVENT_READ)
sel.register(fail, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        data, peer = key.fileobj.recvfrom(4096)
        if key.fileobj is drop:
            print("dropped", len(data), peer[0], flush=True)
        elif len(data) >= 12:
            reply = data[:2] + bytes([data[2] | 0x80, (data[3] & 0xF0) | 2]) + data[4:]
            fail.sendto(reply, peer)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    with Lab(tmp_path_factory.mktemp("mxlab"), ttl=TTL) as lab:
        lab.host("tx", CLIENT, "2001:db8:1::10")
        blackhole = lab.host("blackhole", BLACKHOLE, SERVFAIL)
        dns = lab.dns
        for name, addresses in (("mx1", MX1), ("mx2", MX2), ("mx3", MX3)):
            dns.address(f"{name}.example.test", *addresses)
        dns.address("mx6.example.test", "2001:db8::66")
        # Preference order, given out of order.
        dns.mx("pref.test", 20, "mx2.example.test").mx("pref.test", 10, "mx1.example.test")
        dns.mx("pref.test", 30, "mx3.example.test")
        # Three of equal preference, then a fourth.
        for name in ("a", "b", "c"):
            dns.address(f"{name}.equal.test", f"192.0.2.{ord(name)}")
            dns.mx("equal.test", 10, f"{name}.equal.test")
        dns.address("d.equal.test", "192.0.2.100").mx("equal.test", 20, "d.equal.test")
        dns.address("implicit.test", "203.0.113.7", "2001:db8:3::7")  # no MX
        dns.txt("nothing.test", "exists, but has neither MX nor addresses")
        dns.null_mx("nomail.test")
        dns.mx("ghost.test", 10, "ghost.nowhere.test").mx("ghost.test", 20, "mx1.example.test")
        dns.mx("allghost.test", 10, "g1.nowhere.test").mx("allghost.test", 20, "g2.nowhere.test")
        dns.mx_raw("iplit.test", 5, "192.0.2.25").mx("iplit.test", 10, "mx3.example.test")
        dns.cname("alias.example.test", "mx1.example.test").mx("cname.test", 10,
                                                               "alias.example.test")
        dns.mx("v6only.test", 10, "mx6.example.test")
        dns.mx("xn--bcher-kva.test", 10, "mx3.example.test")  # bücher.test
        for i in range(15):
            dns.address(f"h{i}.many.test", f"198.51.100.{100 + i}")
            dns.mx("many.test", i, f"h{i}.many.test")
        lab.start()
        blackhole.directory.mkdir(parents=True, exist_ok=True)
        log_path = blackhole.directory / "dropper.log"
        with open(log_path, "ab") as log:
            blackhole.popen([sys.executable, "-c", _BROKEN, BLACKHOLE, SERVFAIL], stdout=log)
        deadline = time.monotonic() + 10
        while b"ready" not in log_path.read_bytes():
            assert time.monotonic() < deadline, "the broken nameservers did not start"
            time.sleep(0.05)
        yield lab


@pytest.fixture
def tx(lab: Lab) -> Host:
    return lab.hosts["tx"]


def route(tx: Host, domain: str, resolver: MXResolver | None = None, **options: object) -> Route:
    """One route() from the client host, by default asking the lab's DNS over IPv4."""
    options.setdefault("nameservers", [DNS_V4])
    resolver = resolver or MXResolver(**options)  # type: ignore[arg-type]
    return tx.run(resolver.route(domain))


def failure(tx: Host, domain: str, **options: object) -> RouteError:
    with pytest.raises(RouteError) as caught:
        route(tx, domain, **options)
    return caught.value


def mine(lab: Lab, mark: int) -> list[tuple[str, str]]:
    """(type, name) of the client's queries since ``mark``."""
    return [(q.type, q.name) for q in lab.dns.queries(mark) if q.client == CLIENT]


# --- order -------------------------------------------------------------------------


def test_mx_hosts_in_preference_order_with_their_addresses(tx: Host) -> None:
    result = route(tx, "pref.test")
    assert result == Route("pref.test", (
        MXHost("mx1.example.test", 10, MX1),
        MXHost("mx2.example.test", 20, MX2),
        MXHost("mx3.example.test", 30, MX3),
    ), implicit=False)
    assert result.addresses()[:3] == [(result.hosts[0], MX1[0]), (result.hosts[0], MX1[1]),
                                      (result.hosts[1], MX2[0])]


def test_equal_preferences_are_shuffled_on_every_call(tx: Host) -> None:
    resolver = MXResolver(nameservers=[DNS_V4])

    async def many() -> list[tuple[str, ...]]:
        return [tuple(h.name[0] for h in (await resolver.route("equal.test")).hosts)
                for _ in range(600)]

    orders = tx.run(many())
    assert {order[3] for order in orders} == {"d"}  # the less preferred one stays last
    counts = collections.Counter(order[:3] for order in orders)
    assert set(counts) == set(itertools.permutations("abc"))
    # 600 trials, 6 orders: 100 expected each; below 50 is a p < 1e-7 event.
    assert min(counts.values()) > 50, counts
    firsts = collections.Counter(order[0] for order in orders)
    assert min(firsts.values()) > 150, firsts


def test_address_families_and_their_order(tx: Host) -> None:
    assert route(tx, "pref.test", prefer="ipv4").hosts[0].addresses == (MX1[1], MX1[0])
    assert route(tx, "pref.test", ipv6=False).hosts[0].addresses == (MX1[1],)
    only6 = route(tx, "pref.test", ipv4=False)
    assert [h.name for h in only6.hosts] == ["mx1.example.test", "mx2.example.test"]  # mx3: v4
    assert route(tx, "v6only.test").hosts[0].addresses == ("2001:db8::66",)
    error = failure(tx, "v6only.test", ipv6=False)
    assert not error.permanent and error.reply.startswith("451 4.4.3 ")


def test_queries_over_ipv6_to_the_nameserver(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    result = route(tx, "pref.test", MXResolver(nameservers=[DNS_V6]))
    assert result.hosts[0].addresses == MX1
    assert {q.client for q in lab.dns.queries(mark)} == {"2001:db8:1::10"}


# --- implicit MX, null MX, NXDOMAIN --------------------------------------------------


def test_implicit_mx_from_the_domains_own_addresses(tx: Host) -> None:
    assert route(tx, "implicit.test") == Route(
        "implicit.test", (MXHost("implicit.test", 0, ("2001:db8:3::7", "203.0.113.7")),),
        implicit=True)


def test_no_mx_and_no_address_is_permanent(tx: Host) -> None:
    error = failure(tx, "nothing.test")
    assert error.permanent and error.reply.startswith("550 5.4.4 ")
    assert "nothing.test has no MX and no AAAA/A records" in error.reply


def test_null_mx_is_permanent_and_asks_nothing_more(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    error = failure(tx, "nomail.test")
    assert error.permanent
    assert error.reply == "550 5.1.10 Recipient domain nomail.test has a null MX (RFC 7505)"
    assert (error.code, error.status) == (550, "5.1.10")
    assert mine(lab, mark) == [("MX", "nomail.test")]


def test_nxdomain_is_permanent(tx: Host) -> None:
    error = failure(tx, "nowhere.test")
    assert error.permanent
    assert error.reply == "550 5.1.2 Recipient domain nowhere.test does not exist (NXDOMAIN)"


def test_invalid_domains_are_permanent_without_a_query(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    for bad in ("exa mple.test", "-x.test", "a..test", "x" * 64 + ".test", ""):
        error = failure(tx, bad)
        assert error.permanent and error.status == "5.1.2", bad
    assert mine(lab, mark) == []


# --- broken MX hosts ---------------------------------------------------------------


def test_a_host_without_addresses_is_skipped(tx: Host) -> None:
    assert [h.name for h in route(tx, "ghost.test").hosts] == ["mx1.example.test"]


def test_no_host_with_an_address_is_transient(tx: Host) -> None:
    error = failure(tx, "allghost.test")
    assert not error.permanent
    assert error.reply.startswith("451 4.4.3 No MX host of allghost.test has an address")
    assert "g1.nowhere.test: NXDOMAIN" in error.reply


def test_an_mx_naming_an_ip_address_is_skipped(tx: Host) -> None:
    assert route(tx, "iplit.test").hosts == (MXHost("mx3.example.test", 10, MX3),)


def test_an_mx_naming_a_cname_is_followed(tx: Host) -> None:
    assert route(tx, "cname.test").hosts == (MXHost("alias.example.test", 10, MX1),)


def test_at_most_ten_hosts_are_looked_up(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    result = route(tx, "many.test")
    assert [h.name for h in result.hosts] == [f"h{i}.many.test" for i in range(10)]
    asked = {name for _, name in mine(lab, mark)}
    assert asked == {"many.test"} | {f"h{i}.many.test" for i in range(10)}


def test_idna_domain_is_looked_up_in_a_labels(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    result = route(tx, "Bücher.test")
    assert result.domain == "xn--bcher-kva.test"
    assert result.hosts == (MXHost("mx3.example.test", 10, MX3),)
    assert ("MX", "xn--bcher-kva.test") in mine(lab, mark)


def test_address_literals_need_no_dns(tx: Host, lab: Lab) -> None:
    mark = lab.dns.mark()
    assert route(tx, "[192.0.2.25]").hosts == (MXHost("[192.0.2.25]", 0, ("192.0.2.25",)),)
    assert route(tx, "[IPv6:2001:db8::25]").hosts[0].addresses == ("2001:db8::25",)
    assert failure(tx, "[IPv6:2001:db8::25]", ipv6=False).permanent
    assert failure(tx, "[300.1.2.3]").permanent
    assert mine(lab, mark) == []


# --- failures of the DNS itself ------------------------------------------------------


def test_a_nameserver_that_drops_queries_is_a_transient_time_out(tx: Host, lab: Lab) -> None:
    dropped = lab.hosts["blackhole"].directory / "dropper.log"
    before = dropped.read_text().count("dropped")
    started = time.monotonic()
    error = failure(tx, "pref.test", nameservers=[BLACKHOLE], timeout=1.5)
    elapsed = time.monotonic() - started
    assert not error.permanent
    assert error.reply == "451 4.4.3 DNS time-out looking up MX for pref.test"
    assert 1.4 < elapsed < 5, elapsed
    assert dropped.read_text().count("dropped") > before  # it was asked, and kept silent


def test_the_next_nameserver_answers_when_the_first_drops(tx: Host) -> None:
    result = route(tx, "pref.test", nameservers=[BLACKHOLE, DNS_V4], timeout=8)
    assert result.hosts[0].name == "mx1.example.test"


def test_servfail_is_transient(tx: Host) -> None:
    for domain in ("pref.test", "nowhere.test"):
        error = failure(tx, domain, nameservers=[SERVFAIL])
        assert not error.permanent
        assert error.reply == (f"451 4.4.3 DNS server failure (SERVFAIL from {SERVFAIL}) "
                               f"looking up MX for {domain}")


def test_a_refusing_server_is_transient(tx: Host) -> None:
    error = failure(tx, "example.org")  # outside the lab's zones: dnsmasq says REFUSED
    assert not error.permanent
    assert error.reply.startswith("451 4.4.3 DNS server failure")
    assert "REFUSED" in error.reply


# --- the cache ---------------------------------------------------------------------


def test_answers_are_cached_for_their_ttl(tx: Host, lab: Lab) -> None:
    resolver = MXResolver(nameservers=[DNS_V4])
    mark = lab.dns.mark()
    first = route(tx, "pref.test", resolver)
    assert sorted(mine(lab, mark)) == sorted(
        [("MX", "pref.test")] + [(t, f"mx{i}.example.test") for i in (1, 2, 3)
                                 for t in ("A", "AAAA")])
    mark = lab.dns.mark()
    assert route(tx, "pref.test", resolver) == first
    assert failure(tx, "nowhere.test", resolver=resolver).permanent  # asked once…
    assert failure(tx, "nowhere.test", resolver=resolver).permanent  # …then cached (RFC 2308)
    assert mine(lab, mark) == [("MX", "nowhere.test")]
    time.sleep(TTL + 0.5)
    mark = lab.dns.mark()
    route(tx, "pref.test", resolver)
    assert failure(tx, "nowhere.test", resolver=resolver).permanent
    asked = mine(lab, mark)
    assert ("MX", "pref.test") in asked and ("MX", "nowhere.test") in asked


def test_failures_are_not_cached(tx: Host, lab: Lab) -> None:
    resolver = MXResolver(nameservers=[DNS_V4])
    mark = lab.dns.mark()
    for _ in range(2):
        assert not failure(tx, "example.org", resolver=resolver).permanent
    assert mine(lab, mark).count(("MX", "example.org")) >= 2


def test_the_cache_is_bounded(tx: Host, lab: Lab) -> None:
    resolver = MXResolver(nameservers=[DNS_V4], cache_entries=2)
    route(tx, "pref.test", resolver)   # 7 answers; the MX one is evicted first
    mark = lab.dns.mark()
    route(tx, "pref.test", resolver)
    assert ("MX", "pref.test") in mine(lab, mark)


def test_concurrent_lookups_share_one_query(tx: Host, lab: Lab) -> None:
    resolver = MXResolver(nameservers=[DNS_V4])

    async def together() -> list[Route]:
        return await asyncio.gather(*(resolver.route("equal.test") for _ in range(20)))

    mark = lab.dns.mark()
    routes = tx.run(together())
    assert len(routes) == 20 and all(len(r.hosts) == 4 for r in routes)
    counts = collections.Counter(mine(lab, mark))
    assert counts[("MX", "equal.test")] == 1
    assert counts[("A", "a.equal.test")] == 1


# --- /etc/resolv.conf ---------------------------------------------------------------


def test_default_nameservers_come_from_the_namespaces_resolv_conf(tx: Host, lab: Lab) -> None:
    code = ("import asyncio, json; from pillarbox.deliver.mx import MXResolver; r = MXResolver();"
            "route = asyncio.run(r.route('pref.test'));"
            "print(json.dumps([r.nameservers, [h.name for h in route.hosts]]))")
    done = tx.exec([sys.executable, "-c", code], check=True)
    nameservers, hosts = json.loads(done.stdout)
    assert nameservers == [DNS_V4, DNS_V6]
    assert hosts == ["mx1.example.test", "mx2.example.test", "mx3.example.test"]
