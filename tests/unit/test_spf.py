"""SPF beyond the official suite (test_spf_suite.py): the DNS limits counted
exactly, the RFC 7208 §7.4 macro examples, IPv4-mapped clients, the HELO
identity, the headers, the verdicts of the policy check, and a property test:
nothing a zone holds makes check_host() raise."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.policy.dns import Answer, StaticResolver
from pillarbox.policy.spf import (
    Result,
    SPFCheck,
    SPFPermError,
    SPFResult,
    check_helo,
    check_host,
    check_mail_from,
    parse_record,
)
from pillarbox.policy.spf_macro import MacroError, parse_domain_spec
from pillarbox.policy.verdict import Action


Records = dict[tuple[str, str], tuple[str, ...]]


def zone(records: Mapping[tuple[str, str], tuple[str, ...]], failing: set[str] | None = None
         ) -> StaticResolver:
    return StaticResolver(dict(records), failing=set(failing or ()))


def run(ip: str, domain: str, resolver: StaticResolver, sender: str = "",
        helo: str = "mx.client.test", **kw: object) -> SPFResult:
    return asyncio.run(check_host(ip, domain, sender or f"user@{domain}", helo, resolver,
                                  **kw))  # type: ignore[arg-type]


# --- lookup limits (RFC 7208 §4.6.4) ---------------------------------------------------


def chain(n: int) -> Records:
    """example.test includes i1 … in, each of which fails."""
    records: Records = {("example.test", "TXT"):
               ("v=spf1 " + " ".join(f"include:i{k}.test" for k in range(1, n + 1))
                + " ip4:192.0.2.1 -all",)}
    for k in range(1, n + 1):
        records[(f"i{k}.test", "TXT")] = ("v=spf1 -all",)
    return records


def test_ten_lookups_are_allowed_and_the_eleventh_is_a_permerror() -> None:
    assert run("192.0.2.1", "example.test", zone(chain(10))).result is Result.PASS
    dns = zone(chain(11))
    spf = run("192.0.2.1", "example.test", dns)
    assert spf.result is Result.PERMERROR
    assert "more than 10 DNS lookups (at include:i11.test" in spf.reason
    assert ("i11.test", "TXT") not in dns.queries  # stopped before asking


def test_lookups_inside_includes_and_redirects_count_too() -> None:
    records: Records = {
        ("example.test", "TXT"): ("v=spf1 a:a1.test include:inner.test redirect=next.test",),
        ("inner.test", "TXT"): ("v=spf1 " + " ".join(f"a:a{k}.test" for k in range(2, 8))
                                + " -all",),
        ("next.test", "TXT"): ("v=spf1 a:a8.test ip4:192.0.2.1",),
        **{(f"a{k}.test", "A"): ("198.51.100.1",) for k in range(1, 12)},
    }
    # a1, include, a2…a7 (6), redirect, a8: 10 lookups, and a pass.
    assert run("192.0.2.1", "example.test", zone(records)).result is Result.PASS
    records[("next.test", "TXT")] = ("v=spf1 a:a8.test a:a9.test ip4:192.0.2.1",)
    spf = run("192.0.2.1", "example.test", zone(records))
    assert spf.result is Result.PERMERROR and "at a:a9.test" in spf.reason


def test_ip_all_and_exp_cost_no_lookups() -> None:
    records = chain(10)
    records[("example.test", "TXT")] = (records[("example.test", "TXT")][0]
                                        .replace(" -all", " ip6:2001:db8::/32 -all")
                                        + " exp=why.test",)
    records[("why.test", "TXT")] = ("not you",)
    spf = run("198.51.100.7", "example.test", zone(records))
    assert (spf.result, spf.explanation) == (Result.FAIL, "not you")


def test_two_void_lookups_are_allowed_and_the_third_is_a_permerror() -> None:
    records = {("example.test", "TXT"):
               ("v=spf1 a:nx1.test mx:nodata.test exists:nx3.test ?all",),
               ("nodata.test", "A"): ("192.0.2.9",)}
    spf = run("192.0.2.1", "example.test", zone(records))
    assert spf.result is Result.PERMERROR
    assert "more than 2 void DNS lookups (the last: A nx3.test" in spf.reason
    records[("example.test", "TXT")] = ("v=spf1 a:nx1.test mx:nodata.test ?all",)
    assert run("192.0.2.1", "example.test", zone(records)).result is Result.NEUTRAL
    # the limit is configurable
    records[("example.test", "TXT")] = ("v=spf1 a:nx1.test mx:nodata.test exists:nx3.test ?all",)
    spf = run("192.0.2.1", "example.test", zone(records), void_limit=3)
    assert spf.result is Result.NEUTRAL


def test_record_lookups_and_the_exp_lookup_are_not_void() -> None:
    records = {("example.test", "TXT"):
               ("v=spf1 a:nx1.test a:nx2.test include:e.test -all exp=nx.test",),
               ("e.test", "TXT"): ("v=spf1 redirect=f.test",),
               ("f.test", "TXT"): ("v=spf1 -all",),
               ("other.test", "TXT"): ("unrelated",)}
    spf = run("192.0.2.1", "example.test", zone(records))
    assert (spf.result, spf.explanation) == (Result.FAIL, "")


def test_ten_mx_records_are_allowed_and_eleven_are_a_permerror() -> None:
    def records(n: int) -> Records:
        return {("example.test", "TXT"): ("v=spf1 mx -all",),
                ("example.test", "MX"): tuple(f"mx{k}.test" for k in range(n)),
                **{(f"mx{k}.test", "A"): (f"192.0.2.{k + 1}",) for k in range(n)}}

    assert run("192.0.2.10", "example.test", zone(records(10))).result is Result.PASS
    spf = run("192.0.2.10", "example.test", zone(records(11)))
    assert spf.result is Result.PERMERROR and "11 MX records" in spf.reason


def test_only_the_first_ten_ptr_names_are_used() -> None:
    names = tuple(f"h{k}.elsewhere.test" for k in range(10)) + ("mail.example.test",)
    records = {("example.test", "TXT"): ("v=spf1 ptr -all",),
               ("1.2.0.192.in-addr.arpa", "PTR"): names,
               ("mail.example.test", "A"): ("192.0.2.1",)}
    dns = zone(records)
    assert run("192.0.2.1", "example.test", dns).result is Result.FAIL
    assert ("mail.example.test", "A") not in dns.queries
    records[("1.2.0.192.in-addr.arpa", "PTR")] = names[-1:] + names[:-1]
    assert run("192.0.2.1", "example.test", zone(records)).result is Result.PASS


def test_the_whole_evaluation_is_bounded_in_time() -> None:
    class Slow:
        async def query(self, name: str, rdtype: str) -> Answer:
            await asyncio.sleep(10)
            return Answer()

    spf = asyncio.run(check_host("192.0.2.1", "example.test", "a@example.test", "h.test",
                                 Slow(), timeout=0.05))
    assert spf.result is Result.TEMPERROR and "0.05s" in spf.reason


# --- DNS errors ------------------------------------------------------------------------


def test_dns_errors_in_mechanisms_are_temperrors_but_not_in_ptr() -> None:
    records = {("example.test", "TXT"): ("v=spf1 mx -all",),
               ("example.test", "MX"): ("mx.down.test",)}
    spf = run("192.0.2.1", "example.test", zone(records, {"mx.down.test"}))
    assert spf.result is Result.TEMPERROR and "mx.down.test" in spf.reason
    records = {("example.test", "TXT"): ("v=spf1 ptr ip4:192.0.2.1 -all",)}
    spf = run("192.0.2.1", "example.test", zone(records, {"1.2.0.192.in-addr.arpa"}))
    assert spf.result is Result.PASS  # §5.5: a DNS error in ptr is no match


# --- clients, identities, names ------------------------------------------------------------


def test_an_ipv4_mapped_client_is_the_ipv4_client() -> None:
    records = {("example.test", "TXT"): ("v=spf1 ip6:::ffff:0:0/96 exists:%{ir}.%{v}.x.test "
                                         "-all",),
               ("1.2.0.192.in-addr.x.test", "A"): ("127.0.0.2",)}
    spf = run("::ffff:192.0.2.1", "example.test", zone(records))
    assert (spf.result, spf.mechanism, spf.ip) == (Result.PASS, "exists:%{ir}.%{v}.x.test",
                                                   "192.0.2.1")


def test_an_empty_reverse_path_checks_the_helo_identity() -> None:
    records = {("mx.client.test", "TXT"): ("v=spf1 a -all",),
               ("mx.client.test", "A"): ("192.0.2.1",)}
    spf = asyncio.run(check_mail_from("192.0.2.1", "", "mx.client.test", zone(records)))
    assert (spf.result, spf.identity, spf.sender) == (Result.PASS, "helo",
                                                      "postmaster@mx.client.test")
    spf = asyncio.run(check_helo("192.0.2.2", "mx.client.test", zone(records)))
    assert spf.result is Result.FAIL


def test_u_label_domains_are_asked_by_their_a_labels() -> None:
    dns = zone({("xn--bcher-kva.test", "TXT"): ("v=spf1 +all",)})
    spf = run("192.0.2.1", "bücher.test", dns)
    assert (spf.result, spf.domain) == (Result.PASS, "xn--bcher-kva.test")


def test_a_bad_client_address_is_the_callers_error() -> None:
    with pytest.raises(ValueError):
        run("not-an-ip", "example.test", zone({}))


# --- macros: the examples of RFC 7208 §7.4 -----------------------------------------------

EXAMPLES = [
    ("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"), ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"), ("%{d2}", "example.com"), ("%{d1}", "com"),
    ("%{dr}", "com.example.email"), ("%{d2r}", "example.email"), ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"), ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%{c} %{r} %% %_ %-", "192.0.2.3 mx.receiver.test %   %20"),
    ("%{L}", "strong-bad"), ("%{S}", "strong-bad%40email.example.com"),
]


def explanation(text: str, ip: str = "192.0.2.3") -> str:
    records = {("email.example.com", "TXT"): ("v=spf1 -all exp=why.example.com",),
               ("why.example.com", "TXT"): (text,)}
    spf = asyncio.run(check_host(ip, "email.example.com", "strong-bad@email.example.com",
                                 "mx.client.test", zone(records), receiver="mx.receiver.test"))
    assert spf.result is Result.FAIL
    return spf.explanation


@pytest.mark.parametrize(("macro", "expanded"), EXAMPLES)
def test_rfc_macro_examples(macro: str, expanded: str) -> None:
    assert explanation(macro) == expanded


def test_rfc_macro_example_ipv6() -> None:
    assert explanation("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01") == (
        "1.0.B.C.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.B.D.0.1.0.0.2.ip6._spf.example.com")
    assert explanation("%{c}", "2001:db8::cb01") == "2001:db8::cb01"


def test_the_t_macro_is_a_timestamp() -> None:
    assert explanation("%{t}").isdigit()


@pytest.mark.parametrize("spec", ["%{d0}.example.com", "%{x}.example.com", "%{c}.example.com",
                                  "%(d).example.com", "%", "example", "%{d}.123", "a.b-",
                                  "foo.example.com\x07"])
def test_bad_domain_specs(spec: str) -> None:
    with pytest.raises(MacroError):
        parse_domain_spec(spec)


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.0/33", "v=spf1 ip6:2001:db8::/129", "v=spf1 a/024",
    "v=spf1 ip4:192.0.2.01", "v=spf1 ip6:fe80::1%eth0", "v=spf1 all:x", "v=spf1 include",
    "v=spf1 mx:", "v=spf1 exp=a.test exp=b.test", "v=spf1 foo", "v=spf1 -a\tmx",
    "v=spf1 ptr/24", "v=spf1 x=%{q}", "v=spf1 ±all",
])
def test_bad_records(record: str) -> None:
    with pytest.raises(SPFPermError):
        parse_record(record)


def test_a_good_record_parses_into_its_terms() -> None:
    record = parse_record("v=spf1  +a/24//64 MX:mail.%{d} ~ip6:2001:DB8::/32 "
                          "x-unknown=%{l} redirect=_spf.example.test ")
    assert [(t.qualifier, t.kind, t.cidr4, t.cidr6) for t in record.terms] == [
        (Result.PASS, "a", 24, 64), (Result.PASS, "mx", 32, 128),
        (Result.SOFTFAIL, "ip6", 32, 32)]
    assert str(record.redirect) == "_spf.example.test" and record.exp is None


# --- headers -------------------------------------------------------------------------------


def test_received_spf() -> None:
    dns = zone({("example.test", "TXT"): ("v=spf1 ip4:192.0.2.0/24 -all",)})
    spf = run("192.0.2.1", "example.test", dns, sender="a@example.test")
    assert spf.received_spf("mx.receiver.test") == (
        "pass (mx.receiver.test: domain of a@example.test designates 192.0.2.1 as permitted "
        "sender) client-ip=192.0.2.1; envelope-from=a@example.test; helo=mx.client.test; "
        "receiver=mx.receiver.test; identity=mailfrom; mechanism=ip4:192.0.2.0/24;")
    bad = run("192.0.2.1", "example.test", zone({("example.test", "TXT"): ("v=spf1 ?bogus",)}),
              sender='"odd user"@example.test')
    header = bad.received_spf("mx.receiver.test")
    assert header.startswith("permerror (mx.receiver.test: permanent error in processing")
    assert 'envelope-from="\\"odd user\\"@example.test"' in header
    assert "problem=\"example.test: unknown mechanism '?bogus'\"" in header
    assert str(bad).startswith("permerror (permanent error")


# --- the policy check ------------------------------------------------------------------------

POLICY = {
    ("pass.test", "TXT"): ("v=spf1 +all",), ("fail.test", "TXT"): ("v=spf1 -all exp=w.test",),
    ("w.test", "TXT"): ("%{i} is not ours",), ("soft.test", "TXT"): ("v=spf1 ~all",),
    ("neutral.test", "TXT"): ("v=spf1 ?all",), ("perm.test", "TXT"): ("v=spf1 bogus",),
    ("temp.test", "TXT"): ("v=spf1 a:down.test -all",), ("plain.test", "A"): ("192.0.2.5",),
}


def verdict(domain: str, **options: object) -> tuple[Action, str]:
    check = SPFCheck(zone(POLICY, {"down.test"}), receiver="mx.receiver.test",
                     **options)  # type: ignore[arg-type]
    v = asyncio.run(check("192.0.2.1", f"user@{domain}", "mx.client.test"))
    return v.action, str(v.reply) if v.reply else v.reason


def test_verdicts_by_default() -> None:
    assert verdict("pass.test")[0] is Action.ACCEPT
    assert verdict("plain.test")[0] is Action.ACCEPT  # none
    assert verdict("fail.test") == (Action.TAG, "mx.receiver.test: domain of user@fail.test "
                                                "does not designate 192.0.2.1 as permitted sender")
    assert verdict("soft.test")[0] is Action.TAG
    assert verdict("neutral.test")[0] is Action.TAG
    assert verdict("perm.test")[0] is Action.TAG
    assert verdict("temp.test") == (Action.DEFER, "451 4.7.24 SPF validation error: DNS of "
                                                  "temp.test did not answer, try again later")


def test_fail_is_rejected_only_when_configured_with_the_domains_explanation() -> None:
    assert verdict("fail.test", reject_fail=True) == (
        Action.REJECT, "550 5.7.23 SPF validation failed: 192.0.2.1 is not ours")
    assert verdict("soft.test", reject_fail=True)[0] is Action.TAG


def test_permerror_may_be_rejected() -> None:
    action, reply = verdict("perm.test", permerror=Action.REJECT)
    assert action is Action.REJECT
    assert reply == "550 5.7.24 SPF validation error: perm.test: unknown mechanism 'bogus'"
    with pytest.raises(ValueError, match="permerror action"):
        SPFCheck(zone({}), permerror=Action.DEFER)


def test_a_long_explanation_is_cut_to_fit_a_reply_line() -> None:
    dns = zone({("long.test", "TXT"): ("v=spf1 -all exp=w.test",),
                ("w.test", "TXT"): ("why " * 300,)})
    v = asyncio.run(SPFCheck(dns, reject_fail=True)("192.0.2.1", "a@long.test", "h.test"))
    assert v.reply is not None
    line = v.reply.render()
    assert len(line) <= 512 and line.endswith(b"...\r\n")


def test_bad_arguments_are_the_callers_error() -> None:
    with pytest.raises(ValueError, match="identity"):
        run("192.0.2.1", "example.test", zone({}), identity="from")
    with pytest.raises(ValueError, match="timeout"):
        run("192.0.2.1", "example.test", zone({}), timeout=0)


# --- property: nothing in the DNS makes check_host() raise ------------------------------------

FRAGMENTS = ["v=spf1", " ", "  ", "all", "-all", "~", "?", "+", "include:", "a", "mx", "ptr",
             "ip4:", "ip6:", "exists:", "redirect=", "exp=", ":", "/", "//", "24", "0", "129",
             "192.0.2.1", "2001:db8::", "::ffff:192.0.2.1", "x.test", "loop.test", ".", "..",
             "%{d}", "%{i}", "%{ir}.%{v}", "%{l1r-}", "%{p}", "%{c}", "%{h}", "%{s}", "%{o}",
             "%%", "%_", "%-", "%", "{", "}", "%{", "=", "\t", "\x00", "é", "x" * 70, "a.b-"]
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join)


@settings(max_examples=300, deadline=None)
@given(record=texts, included=texts, explanation=texts,
       ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"]))
def test_check_host_always_gives_a_result(record: str, included: str, explanation: str,
                                          ip: str) -> None:
    """Invariant: whatever the records hold, check_host() returns one of the seven
    results (errors with a reason), and parse_record() raises only SPFPermError."""
    dns = zone({("x.test", "TXT"): ("v=spf1 " + record,),
                ("loop.test", "TXT"): ("v=spf1 " + included,),
                ("x.test", "A"): ("192.0.2.1",), ("x.test", "MX"): ("x.test", "loop.test"),
                ("1.2.0.192.in-addr.arpa", "PTR"): ("x.test",),
                ("d.test", "TXT"): (explanation,)})
    spf = run(ip, "x.test", dns)
    assert isinstance(spf.result, Result)
    if spf.result in (Result.PERMERROR, Result.TEMPERROR):
        assert spf.reason
    assert spf.received_spf("mx.test").isascii()  # reasons never echo non-ASCII records
    try:
        parse_record("v=spf1 " + record)
    except SPFPermError:
        pass


def test_replies_stay_ascii_with_a_utf8_local_part() -> None:
    dns = zone({("example.test", "TXT"): ("v=spf1 include:%{l}.x.test -all",)})
    check = SPFCheck(dns, permerror=Action.REJECT)
    v = asyncio.run(check("192.0.2.1", "jürgen@example.test", "h.test"))
    assert v.action is Action.REJECT and v.reply is not None
    assert v.reply.render().isascii() and b"include:j?rgen.x.test" in v.reply.render()
