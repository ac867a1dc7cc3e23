"""MXResolver's cache, single flight and rules, against a small DNS server on
127.0.0.1 (dnspython's message codec, real UDP), with a fake clock.  No root
needed; the lab tests (tests/integration/test_mx_resolver.py) use dnsmasq."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from pillarbox.deliver.mx import MXHost, MXResolver, Route, RouteError, ascii_domain


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server(asyncio.DatagramProtocol):
    """Answers from ``records`` {(name, type): [rdata text]}; names without any
    record are NXDOMAIN.  ``soa``: put an SOA in negative answers.  ``delay``:
    seconds before answering.  ``asked`` counts (name, type)."""

    def __init__(self, records: dict[tuple[str, str], list[str]], ttl: int = 60,
                 soa: bool = True, delay: float = 0.0) -> None:
        self.records = records
        self.ttl = ttl
        self.soa = soa
        self.delay = delay
        self.asked: Counter[tuple[str, str]] = Counter()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().call_later(self.delay, self._answer, data, addr)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.asked[(name, rdtype)] += 1
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        known = {n for n, _ in self.records}
        if (name, rdtype) in self.records:
            reply.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, "IN", rdtype, self.records[(name, rdtype)]))
        else:
            if name not in known:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            if self.soa:
                reply.authority.append(dns.rrset.from_text(
                    "test.", 3600, "IN", "SOA", f"ns.test. host.test. 1 2 3 4 {self.ttl // 2}"))
        self.transport.sendto(reply.to_wire(), addr)  # type: ignore[union-attr]


def run(server: Server, body: Callable[[MXResolver, Server], Awaitable[None]],
        **options: object) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: server,
                                                           local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            resolver = MXResolver(["127.0.0.1"], port=port, timeout=2.0, **options)  # type: ignore[arg-type]
            await body(resolver, server)
        finally:
            transport.close()
    asyncio.run(main())


ZONE = {
    ("example.test", "MX"): ["10 mx1.example.test.", "20 MX2.Example.Test.",
                             "30 mx1.example.test."],
    ("mx1.example.test", "A"): ["192.0.2.1"],
    ("mx1.example.test", "AAAA"): ["2001:db8::1"],
    ("mx2.example.test", "A"): ["192.0.2.2", "192.0.2.3"],
    ("mixed.test", "MX"): ["0 .", "10 mx1.example.test."],
    ("a.test", "A"): ["192.0.2.9"],
}


def test_ascii_domain() -> None:
    assert ascii_domain("Example.TEST.") == "example.test"
    assert ascii_domain("bücher.example") == "xn--bcher-kva.example"
    assert ascii_domain("BÜCHER.example") == "xn--bcher-kva.example"  # UTS #46 mapping
    for bad in ("", ".", "a..b", "-a.test", "a-.test", "a_b.test", "a b", "x" * 64,
                ".".join(["abcdefgh"] * 30), "xn--ü.test"):
        with pytest.raises(ValueError):
            ascii_domain(bad)


def test_constructor_refuses_bad_settings() -> None:
    for kwargs in ({"ipv6": False, "ipv4": False}, {"port": 0}, {"timeout": 0},
                   {"nameservers": []}, {"nameservers": ["dns.example"]},
                   {"prefer": "ipv5"}, {"max_hosts": 0}):
        with pytest.raises(ValueError):
            MXResolver(**kwargs)  # type: ignore[arg-type]


def test_duplicate_hosts_once_at_their_best_preference_names_lower_case() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        route = await resolver.route("example.test")
        assert route == Route("example.test", (
            MXHost("mx1.example.test", 10, ("2001:db8::1", "192.0.2.1")),
            MXHost("mx2.example.test", 20, route.hosts[1].addresses),
        ), implicit=False)
        assert sorted(route.hosts[1].addresses) == ["192.0.2.2", "192.0.2.3"]
        assert str(route).startswith("example.test MX: 10 mx1.example.test [2001:db8::1, ")
        assert server.asked[("mx1.example.test", "A")] == 1
    run(Server(ZONE), body)


def test_a_null_mx_among_others_is_ignored() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        assert [h.name for h in (await resolver.route("mixed.test")).hosts] == \
            ["mx1.example.test"]
    run(Server(ZONE), body)


def test_ttl_expiry_by_the_clock() -> None:
    clock = Clock()

    async def body(resolver: MXResolver, server: Server) -> None:
        await resolver.route("example.test")
        clock.now += 59
        await resolver.route("example.test")
        assert server.asked[("example.test", "MX")] == 1
        clock.now += 2
        await resolver.route("example.test")
        assert server.asked[("example.test", "MX")] == 2
        # Negative answers: RFC 2308 min(SOA TTL 3600, MINIMUM 30) = 30 s.
        for _ in range(2):
            with pytest.raises(RouteError):
                await resolver.route("nowhere.test")
        assert server.asked[("nowhere.test", "MX")] == 1
        clock.now += 31
        with pytest.raises(RouteError):
            await resolver.route("nowhere.test")
        assert server.asked[("nowhere.test", "MX")] == 2
    run(Server(ZONE, ttl=60), body, clock=clock)


def test_negative_answers_without_soa_are_not_cached() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        for _ in range(2):
            with pytest.raises(RouteError) as caught:
                await resolver.route("nowhere.test")
            assert caught.value.status == "5.1.2"
        assert server.asked[("nowhere.test", "MX")] == 2
        route = await resolver.route("a.test")  # implicit MX after a NODATA MX
        assert route.implicit and route.hosts == (MXHost("a.test", 0, ("192.0.2.9",)),)
        await resolver.route("a.test")
        assert server.asked[("a.test", "MX")] == 2
        assert server.asked[("a.test", "A")] == 1  # the positive answer is cached
    run(Server(ZONE, soa=False), body)


def test_single_flight_survives_a_cancelled_waiter() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        first = asyncio.ensure_future(resolver.route("example.test"))
        others = [asyncio.ensure_future(resolver.route("example.test")) for _ in range(5)]
        await asyncio.sleep(0.05)
        first.cancel()
        routes = await asyncio.gather(*others)
        assert all(r.hosts[0].name == "mx1.example.test" for r in routes)
        assert server.asked[("example.test", "MX")] == 1
        assert first.cancelled()
    run(Server(ZONE, delay=0.2), body)


def test_lru_bound() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        await resolver.route("a.test")          # MX (NODATA) and A of a.test: 2 entries
        await resolver.route("a.test")
        assert server.asked[("a.test", "A")] == 1
        await resolver.route("example.test")    # evicts a.test's entries
        await resolver.route("a.test")
        assert server.asked[("a.test", "A")] == 2
    run(Server(ZONE), body, cache_entries=2, ipv6=False)


def test_seeded_shuffle_is_used_for_equal_preferences() -> None:
    zone = {("eq.test", "MX"): [f"10 h{i}.test." for i in range(5)],
            **{(f"h{i}.test", "A"): [f"192.0.2.{i + 10}"] for i in range(5)}}
    orders: set[tuple[str, ...]] = set()

    async def body(resolver: MXResolver, server: Server) -> None:
        for _ in range(30):
            orders.add(tuple(h.name for h in (await resolver.route("eq.test")).hosts))
    run(Server(zone), body, rng=random.Random(7), ipv6=False)
    assert len(orders) > 10
    assert all(sorted(order) == [f"h{i}.test" for i in range(5)] for order in orders)


def test_a_slow_server_is_a_time_out() -> None:
    async def body(resolver: MXResolver, server: Server) -> None:
        with pytest.raises(RouteError) as caught:
            await resolver.route("example.test")
        assert caught.value.reply == "451 4.4.3 DNS time-out looking up MX for example.test"
        assert not caught.value.permanent
    run(Server(ZONE, delay=5), body)
