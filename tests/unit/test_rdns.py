"""Forward-confirmed reverse DNS (iprev, RFC 8601 §2.7.3) and the HELO check
(policy/rdns.py): every path with a zone in a dict, then a few through a real
dnsmasq on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pillarbox.policy.dns import Answer, DNSResolver, StaticResolver
from pillarbox.policy.rdns import (
    MAX_PTR_NAMES,
    HeloCheck,
    HeloOutcome,
    IPRevResult,
    ReverseDNS,
    ReverseName,
    address_literal,
    tcp_info,
    verified_reverse_name,
)
from pillarbox.policy.verdict import Action
from tests.dnsserver import DNSServer
from tests.dnsserver import dnsmasq as start_dnsmasq

V4_PTR = "1.2.0.192.in-addr.arpa"
V6 = "2001:db8::25"
V6_PTR = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


def rev(ip: str, resolver: StaticResolver | DNSResolver, **kw: float) -> ReverseName:
    return asyncio.run(verified_reverse_name(ip, resolver, **kw))


def zone() -> StaticResolver:
    return StaticResolver({
        (V4_PTR, "PTR"): ("mail.example.com",),
        ("mail.example.com", "A"): ("192.0.2.9", "192.0.2.1"),
        ("mail.example.com", "AAAA"): (V6,),
        (V6_PTR, "PTR"): ("mail.example.com.",),
    })


# --- iprev -----------------------------------------------------------------------


def test_pass_ipv4() -> None:
    r = zone()
    got = rev("192.0.2.1", r)
    assert got.result is IPRevResult.PASS and got.verified
    assert got.name == "mail.example.com" and got.names == ("mail.example.com",)
    assert r.queries == [(V4_PTR, "PTR"), ("mail.example.com", "A")]


def test_pass_ipv6_asks_aaaa() -> None:
    r = zone()
    got = rev(V6, r)
    assert got.result is IPRevResult.PASS and got.name == "mail.example.com"
    assert r.queries == [(V6_PTR, "PTR"), ("mail.example.com", "AAAA")]


def test_ipv4_mapped_is_the_ipv4_client() -> None:
    got = rev("::ffff:192.0.2.1", zone())
    assert got.result is IPRevResult.PASS and got.ip == "192.0.2.1"


def test_no_ptr_is_permerror() -> None:
    got = rev("192.0.2.77", zone())
    assert got.result is IPRevResult.PERMERROR and got.reason == "no PTR record"
    assert not got.verified and got.name is None


def test_ptr_not_confirmed_is_fail_and_says_why() -> None:
    r = StaticResolver({(V4_PTR, "PTR"): ("host.isp.example",),
                        ("host.isp.example", "A"): ("198.51.100.1",)})
    got = rev("192.0.2.1", r)
    assert got.result is IPRevResult.FAIL and got.name is None
    assert got.reason == "host.isp.example does not resolve back to 192.0.2.1"


def test_ptr_name_that_does_not_exist_is_fail() -> None:
    got = rev("192.0.2.1", StaticResolver({(V4_PTR, "PTR"): ("gone.example",)}))
    assert got.result is IPRevResult.FAIL


def test_first_confirming_name_in_ptr_order() -> None:
    r = StaticResolver({(V4_PTR, "PTR"): ("a.example", "b.example", "c.example"),
                        ("a.example", "A"): ("192.0.2.2",),
                        ("b.example", "A"): ("192.0.2.1",),
                        ("c.example", "A"): ("192.0.2.1",)})
    got = rev("192.0.2.1", r)
    assert got.name == "b.example" and got.names == ("a.example", "b.example", "c.example")


def test_names_that_are_not_host_names_are_not_looked_up() -> None:
    r = StaticResolver({(V4_PTR, "PTR"): ("bad_name.example", "with space.example"),
                        ("bad_name.example", "A"): ("192.0.2.1",)})
    got = rev("192.0.2.1", r)
    assert got.result is IPRevResult.FAIL and got.reason == "no PTR name is a host name"
    assert r.queries == [(V4_PTR, "PTR")]


def test_at_most_ten_ptr_names() -> None:
    names = tuple(f"n{i}.example" for i in range(15))
    r = StaticResolver({(V4_PTR, "PTR"): names})
    for n in names:   # the 13th would confirm, but is not looked at
        r.add(n, "A", "192.0.2.1" if n == "n12.example" else "198.51.100.1")
    got = rev("192.0.2.1", r)
    assert got.result is IPRevResult.FAIL and len(got.names) == MAX_PTR_NAMES
    assert len(r.queries) == 1 + MAX_PTR_NAMES
    assert got.reason.endswith(", ... does not resolve back to 192.0.2.1")


def test_ptr_lookup_failure_is_temperror() -> None:
    got = rev("192.0.2.1", StaticResolver(failing={V4_PTR}))
    assert got.result is IPRevResult.TEMPERROR and "PTR lookup: timed out" in got.reason


def test_forward_failure_is_temperror_unless_another_name_confirms() -> None:
    r = StaticResolver({(V4_PTR, "PTR"): ("a.example", "b.example"),
                        ("b.example", "A"): ("198.51.100.1",)}, failing={"a.example"})
    got = rev("192.0.2.1", r)
    assert got.result is IPRevResult.TEMPERROR
    assert got.reason == "A lookup of a.example: timed out"
    r.add("b.example", "A", "192.0.2.1")
    assert rev("192.0.2.1", r).result is IPRevResult.PASS


def test_the_whole_lookup_is_bounded_in_time() -> None:
    class Slow:
        async def query(self, name: str, rdtype: str) -> Answer:
            await asyncio.sleep(10)
            return Answer()

    got = asyncio.run(verified_reverse_name("192.0.2.1", Slow(), timeout=0.05))
    assert got.result is IPRevResult.TEMPERROR and "longer than 0.05 s" in got.reason


def test_not_an_address_is_the_callers_error() -> None:
    with pytest.raises(ValueError):
        rev("mail.example.com", zone())


# --- what it writes ----------------------------------------------------------------


def test_received_tcp_info() -> None:
    verified = rev("192.0.2.1", zone())
    assert verified.tcp_info() == "mail.example.com [192.0.2.1]"
    assert rev(V6, zone()).tcp_info() == f"mail.example.com [IPv6:{V6}]"
    assert rev("192.0.2.77", zone()).tcp_info() == "[192.0.2.77]"
    assert tcp_info("192.0.2.1", None) == "[192.0.2.1]"
    assert address_literal("::ffff:192.0.2.1") == "[192.0.2.1]"
    assert address_literal("unix-socket") == "[unix-socket]"


def test_authentication_results_entry() -> None:
    assert rev("192.0.2.1", zone()).method_result().render() == (
        "iprev=pass (mail.example.com) policy.iprev=192.0.2.1")
    assert rev("192.0.2.77", zone()).method_result().render() == (
        "iprev=permerror (no PTR record) policy.iprev=192.0.2.77")
    # ":" is a tspecial (RFC 2045 §5.1): an IPv6 pvalue is a quoted-string (RFC 8601 §2.2)
    assert rev(V6, zone()).method_result().render() == (
        f'iprev=pass (mail.example.com) policy.iprev="{V6}"')


def test_reverse_dns_task_for_the_session() -> None:
    checker = ReverseDNS(zone())

    async def run() -> None:
        assert checker.start("not an address") is None
        assert ReverseDNS.settled(None) is None
        task = checker.start("192.0.2.1")
        assert task is not None
        assert ReverseDNS.settled(task) is None          # not done yet
        await task
        got = ReverseDNS.settled(task)
        assert got is not None and got.name == "mail.example.com"
        again = checker.start("192.0.2.1")        # remembered: done at once, no task
        assert again is not None and again.done() and not isinstance(again, asyncio.Task)
        assert ReverseDNS.settled(again) == got
        task2 = checker.start("192.0.2.2")
        assert task2 is not None
        task2.cancel()
        await asyncio.sleep(0)
        assert ReverseDNS.settled(task2) is None

    asyncio.run(run())


# --- HELO ---------------------------------------------------------------------------


def helo(name: str, ip: str = "192.0.2.1", resolver: StaticResolver | None = None,
         **kw: object) -> tuple[HeloOutcome, str, int]:
    r = resolver if resolver is not None else zone()
    check = HeloCheck(r, "mx.ours.example", our_addresses=("203.0.113.5", "2001:db8::5"),
                      **kw)  # type: ignore[arg-type]
    result = asyncio.run(check.evaluate(ip, name))
    assert result.lookups == len(r.queries)
    return result.outcome, result.reason, result.lookups


@pytest.mark.parametrize("name, outcome, lookups", [
    ("mail.example.com", HeloOutcome.OK, 1),
    ("MAIL.Example.COM.", HeloOutcome.OK, 1),
    ("[192.0.2.1]", HeloOutcome.OK, 0),
    ("[IPv6:::ffff:192.0.2.1]", HeloOutcome.OK, 0),
    ("mx.ours.example", HeloOutcome.OURS, 0),
    ("MX.OURS.EXAMPLE.", HeloOutcome.OURS, 0),
    ("[203.0.113.5]", HeloOutcome.OURS, 0),
    ("[IPv6:2001:db8::5]", HeloOutcome.OURS, 0),
    ("[198.51.100.7]", HeloOutcome.LITERAL_MISMATCH, 0),
    ("[IPv6:2001:db8::7]", HeloOutcome.LITERAL_MISMATCH, 0),
    ("localhost", HeloOutcome.NOT_FQDN, 0),
    ("desktop-pc", HeloOutcome.NOT_FQDN, 0),
    ("bad_name.example", HeloOutcome.SYNTAX, 0),
    ("-x.example", HeloOutcome.SYNTAX, 0),
    ("a..example", HeloOutcome.SYNTAX, 0),
    ("[300.1.1.1]", HeloOutcome.SYNTAX, 0),
    ("[tcp:whatever]", HeloOutcome.SYNTAX, 0),
    ("[192.0.2.1", HeloOutcome.SYNTAX, 0),
    ("192.0.2.1", HeloOutcome.SYNTAX, 0),   # an address needs brackets (RFC 5321 §4.1.3)
    ("bücher.example", HeloOutcome.SYNTAX, 0),
    ("x" * 64 + ".example", HeloOutcome.SYNTAX, 0),
    ("nowhere.example", HeloOutcome.NXDOMAIN, 1),
])
def test_helo_outcomes(name: str, outcome: HeloOutcome, lookups: int) -> None:
    got, _, asked = helo(name)
    assert (got, asked) == (outcome, lookups)


def test_helo_name_without_a_asks_aaaa_and_at_most_two_lookups() -> None:
    r = StaticResolver({("v6only.example", "AAAA"): (V6,), ("txtonly.example", "TXT"): ("x",)})
    assert helo("v6only.example", resolver=r)[::2] == (HeloOutcome.OK, 2)
    r = StaticResolver({("txtonly.example", "TXT"): ("x",)})
    assert helo("txtonly.example", resolver=r)[::2] == (HeloOutcome.NO_ADDRESS, 2)


def test_helo_dns_failure_is_temperror() -> None:
    r = StaticResolver(failing={"slow.example"})
    outcome, reason, _ = helo("slow.example", resolver=r)
    assert outcome is HeloOutcome.TEMPERROR and reason.endswith("(timed out)")


def test_our_own_name_from_our_own_address_is_fine() -> None:
    r = StaticResolver({("mx.ours.example", "A"): ("203.0.113.5",)})
    assert helo("mx.ours.example", ip="203.0.113.5", resolver=r)[0] is HeloOutcome.OK
    assert helo("[203.0.113.5]", ip="203.0.113.5")[0] is HeloOutcome.OK


def test_reasons_name_the_problem_and_are_safe_to_send() -> None:
    assert helo("[198.51.100.7]")[1] == (
        "HELO [198.51.100.7] is not the address you connect from (192.0.2.1)")
    assert helo("mx.ours.example")[1] == (
        "HELO mx.ours.example is this server's own name, but you are not this server")
    reason = helo("x\x01\u00e9" + "y" * 200)[1]
    assert reason.isascii() and reason.isprintable() and len(reason) < 200


def test_helo_verdicts_tag_by_default_and_reject_when_configured() -> None:
    r = zone()
    tagging = HeloCheck(r, "mx.ours.example")
    rejecting = HeloCheck(r, "mx.ours.example",
                          reject=HeloOutcome.parse("ours, literal-mismatch"))

    async def run() -> None:
        ok = await tagging("192.0.2.1", "mail.example.com")
        assert ok.action is Action.ACCEPT and ok.check == "helo"
        tagged = await tagging("192.0.2.1", "mx.ours.example")
        assert tagged.action is Action.TAG and "own name" in tagged.reason
        refused = await rejecting("192.0.2.1", "mx.ours.example")
        assert refused.action is Action.REJECT and refused.reply is not None
        assert str(refused.reply).startswith("550 5.7.1 HELO mx.ours.example is this server")
        assert (await rejecting("192.0.2.1", "[198.51.100.7]")).action is Action.REJECT
        assert (await rejecting("192.0.2.1", "localhost")).action is Action.TAG

    asyncio.run(run())


def test_helo_outcome_names() -> None:
    assert HeloOutcome.parse(["NXDOMAIN", "syntax"]) == {HeloOutcome.NXDOMAIN,
                                                         HeloOutcome.SYNTAX}
    assert HeloOutcome.parse("") == frozenset()
    with pytest.raises(ValueError, match="unknown HELO outcome 'forged'; one of syntax"):
        HeloOutcome.parse("forged")
    with pytest.raises(ValueError, match="'temperror' cannot be rejected"):
        HeloOutcome.parse("temperror")
    with pytest.raises(ValueError, match="cannot be rejected"):
        HeloCheck(zone(), "mx.example", reject=frozenset({HeloOutcome.OK}))
    with pytest.raises(ValueError, match="'mx.example' is not an IP address"):
        HeloCheck(zone(), "mx.example", our_addresses=("mx.example",))


def test_the_address_the_client_reached_is_ours() -> None:
    check = HeloCheck(zone(), "mx.ours.example")

    async def outcome(name: str, ip: str = "192.0.2.1") -> HeloOutcome:
        result = await check.evaluate(ip, name, local_addresses=("198.51.100.25", "junk"))
        return result.outcome

    assert asyncio.run(outcome("[198.51.100.25]")) is HeloOutcome.OURS
    assert asyncio.run(outcome("[198.51.100.26]")) is HeloOutcome.LITERAL_MISMATCH
    # a client on our own host (loopback to loopback) may call itself by our name
    assert asyncio.run(outcome("mx.ours.example", ip="198.51.100.25")) is not HeloOutcome.OURS


def test_helo_from_a_client_without_an_ip_address() -> None:
    # sendmail -bs and tests have no IP address: literals cannot be compared
    assert helo("[198.51.100.7]", ip="local")[0] is HeloOutcome.OK
    assert helo("[203.0.113.5]", ip="local")[0] is HeloOutcome.OURS


# --- through a real DNS server -----------------------------------------------------

# dnsmasq's authoritative mode derives PTR records from host-record= alone (it
# ignores ptr-record= in its reverse zones), so its forward and reverse always
# agree: the "fail" path is covered with StaticResolver above.
ZONE = [
    "host-record=mail.test,192.0.2.1,2001:db8::25",
    'txt-record=noaddr.test,"x"',
]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSServer]:
    directory: Path = tmp_path_factory.mktemp("dnsmasq-rdns")
    with start_dnsmasq(directory, ZONE) as server:
        yield server


def test_dnsmasq_pass_v4_and_v6(dnsmasq: DNSServer) -> None:
    r = DNSResolver([dnsmasq.nameserver])
    got = rev("192.0.2.1", r)
    assert (got.result, got.name) == (IPRevResult.PASS, "mail.test")
    got6 = rev(V6, r)
    assert (got6.result, got6.name) == (IPRevResult.PASS, "mail.test")


def test_dnsmasq_no_ptr_is_permerror(dnsmasq: DNSServer) -> None:
    got = rev("192.0.2.99", DNSResolver([dnsmasq.nameserver]))
    assert (got.result, got.reason) == (IPRevResult.PERMERROR, "no PTR record")


def test_dnsmasq_unreachable_nameserver_is_temperror(dnsmasq: DNSServer) -> None:
    from tests.dnsserver import free_udp_tcp_port

    r = DNSResolver([f"127.0.0.1:{free_udp_tcp_port()}"], timeout=1)
    assert rev("192.0.2.1", r).result is IPRevResult.TEMPERROR


def test_dnsmasq_helo(dnsmasq: DNSServer) -> None:
    check = HeloCheck(DNSResolver([dnsmasq.nameserver]), "mx.ours.test")

    async def run() -> list[HeloOutcome]:
        return [(await check.evaluate("192.0.2.1", name)).outcome
                for name in ("mail.test", "nowhere.test", "noaddr.test")]

    assert asyncio.run(run()) == [HeloOutcome.OK, HeloOutcome.NXDOMAIN,
                                  HeloOutcome.NO_ADDRESS]


def test_a_remembered_helo_outcome_is_known_without_asking_again() -> None:
    r = zone()
    check = HeloCheck(r, "mx.ours.example")
    assert check.remembered("192.0.2.1", "mail.example.com", local_addresses=()) is None
    first = asyncio.run(check.evaluate("192.0.2.1", "mail.example.com", local_addresses=[]))
    assert check.remembered("192.0.2.1", "mail.example.com", local_addresses=()) is first
    assert check.remembered("192.0.2.1", "mail.example.com",
                            local_addresses=("203.0.113.5",)) is None
