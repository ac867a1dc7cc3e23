"""DMARC (RFC 7489, DMARCbis): records, the From: domain, discovery, alignment, policy, the check."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from pillarbox.policy.dmarc import (
    QUERY_BUDGET,
    Alignment,
    AuthorProblem,
    DKIMOutcome,
    DMARCCheck,
    DMARCRecord,
    DMARCRecordError,
    DMARCResult,
    Discovery,
    Enforcement,
    Policy,
    ReportURI,
    SPFOutcome,
    Status,
    author_domain,
    evaluate,
    normalize_domain,
    tree_walk_targets,
)
from pillarbox.policy.dns import StaticResolver
from pillarbox.policy.psl import PublicSuffixList
from pillarbox.policy.verdict import Action

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def zone(records: dict[str, str | tuple[str, ...]], hosts: tuple[str, ...] = (),
         failing: tuple[str, ...] = ()) -> StaticResolver:
    """``records``: domain -> its _dmarc TXT record(s); ``hosts``: names that exist (A)."""
    r = StaticResolver(failing={f"_dmarc.{d}" for d in failing})
    for domain, txt in records.items():
        r.add(f"_dmarc.{domain}", "TXT", *((txt,) if isinstance(txt, str) else txt))
    for host in hosts:
        r.add(host, "A", "192.0.2.1")
    return r


def never() -> float:
    raise AssertionError("pct sampling asked for a random number it does not need")


def ev(resolver: StaticResolver, domain: str, spf: SPFOutcome | None = None,
       dkim: tuple[DKIMOutcome, ...] = (), **kw: Any) -> DMARCResult:
    kw.setdefault("random", never)
    return run(evaluate(domain, spf, dkim, resolver, **kw))


SPF_FAIL = SPFOutcome("fail", "evil.example")

# -- the record ----------------------------------------------------------------------


def test_minimal_record() -> None:
    r = DMARCRecord.parse("v=DMARC1; p=reject")
    assert r.p is Policy.REJECT and r.sp is None and r.np is None
    assert (r.adkim, r.aspf, r.pct, r.fo, r.rf, r.ri, r.psd, r.t) == (
        Alignment.RELAXED, Alignment.RELAXED, 100, ("0",), ("afrf",), 86400, "u", False)
    assert r.warnings == () and r.p_error is None


def test_every_tag() -> None:
    r = DMARCRecord.parse(
        "v=DMARC1; p=quarantine; sp=reject; np=none; pct=50; adkim=s; aspf=s; "
        "rua=mailto:agg@example.com!10m, mailto:other@example.net; ruf=mailto:f@example.com!512k; "
        "fo=1:d:s; rf=afrf; ri=3600; psd=n; t=y; future=whatever;")
    assert (r.p, r.sp, r.np) == (Policy.QUARANTINE, Policy.REJECT, Policy.NONE)
    assert r.pct == 50 and r.adkim is Alignment.STRICT and r.aspf is Alignment.STRICT
    assert r.rua == (ReportURI("mailto:agg@example.com", 10 << 20), ReportURI("mailto:other@example.net"))
    assert r.ruf == (ReportURI("mailto:f@example.com", 512 << 10),)
    assert r.fo == ("1", "d", "s") and r.ri == 3600 and r.psd == "n" and r.t is True
    assert r.warnings == ()                     # unknown tags are ignored silently
    assert DMARCRecord.parse(r.render()) == r


def test_whitespace_and_case() -> None:
    r = DMARCRecord.parse("  v = DMARC1 ;\tP = Reject ; ADKIM=S;;")
    assert r.p is Policy.REJECT and r.adkim is Alignment.STRICT


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=reject", "v=DMARC1x; p=none",
    "", "v=spf1 -all", "xv=DMARC1; p=none",
])
def test_not_a_dmarc_record(text: str) -> None:
    with pytest.raises(DMARCRecordError, match="v=DMARC1"):
        DMARCRecord.parse(text)


def test_bad_optional_values_fall_back_to_defaults() -> None:
    r = DMARCRecord.parse("v=DMARC1; p=none; pct=150; adkim=x; aspf=; fo=2; ri=-1; psd=maybe; "
                          "t=yes; rua=mailto:ok@example.com, not a uri, mailto:sized@example.com!12q; "
                          "noequals; p=reject")
    assert r.p is Policy.NONE                   # the first p counts
    assert (r.pct, r.adkim, r.aspf, r.fo, r.ri, r.psd, r.t) == (
        100, Alignment.RELAXED, Alignment.RELAXED, ("0",), 86400, "u", False)
    assert r.rua == (ReportURI("mailto:ok@example.com"),)
    text = " | ".join(r.warnings)
    for needle in ("pct=", "adkim=", "aspf=", "fo=", "ri=", "psd=", "t=", "'not a uri'",
                   "sized@", "'noequals'", "p= given twice"):
        assert needle in text, needle


def test_size_suffixes() -> None:
    r = DMARCRecord.parse("v=DMARC1; p=none; rua=mailto:a@x.example!100,mailto:b@x.example!1K,"
                          "mailto:c@x.example!2g,https://r.example/in!5t")
    assert [u.max_size for u in r.rua] == [100, 1024, 2 << 30, 5 << 40]
    assert str(r.rua[1]) == "mailto:b@x.example!1024"


def test_p_missing_or_bad() -> None:
    missing = DMARCRecord.parse("v=DMARC1; rua=mailto:a@x.example")
    assert missing.p is None and missing.p_error == "no p= tag"
    bad = DMARCRecord.parse("v=DMARC1; p=always; sp=never")
    assert bad.p is None and "p='always'" in (bad.p_error or "")
    assert bad.sp is None and "sp='never'" in (bad.sp_error or "")


# -- the From: domain ----------------------------------------------------------------

@pytest.mark.parametrize("block, domain, problem", [
    (b"From: Alice <alice@Example.COM>\r\nTo: bob@x.example\r\n", "example.com", None),
    (b"From: =?utf-8?q?A?=\r\n <alice@news.example.com> (work)\r\n", "news.example.com", None),
    (b"To: bob@x.example\r\n", None, AuthorProblem.NO_FROM),
    (b"From: undisclosed-recipients:;\r\n", None, AuthorProblem.NO_DOMAIN),
    (b"From: alice\r\n", None, AuthorProblem.NO_DOMAIN),
    (b"From: a@b.example, c@d.example\r\n", None, AuthorProblem.SEVERAL_DOMAINS),
    (b"From: a@b.example, c@B.EXAMPLE.\r\n", "b.example", None),
    (b"From: a@b.example\r\nFrom: c@d.example\r\n", None, AuthorProblem.SEVERAL_FIELDS),
    (b"From: a@b.example\r\nfrom: c@b.example\r\n", "b.example", None),
    ("From: a@食狮.公司.cn\r\n".encode(), "xn--85x722f.xn--55qx5d.cn", None),
    (b"From: a@[192.0.2.1]\r\n", None, AuthorProblem.BAD_DOMAIN),
    (b"From: a@bad_label-.example\r\n", None, AuthorProblem.BAD_DOMAIN),
])
def test_author_domain(block: bytes, domain: str | None, problem: AuthorProblem | None) -> None:
    got = author_domain(block)
    assert (got.domain, got.problem) == (domain, problem)


def test_normalize_domain() -> None:
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
    assert normalize_domain("a" * 64 + ".example") is None
    assert normalize_domain("a..example") is None
    assert normalize_domain(".".join(["abcdefghi"] * 30)) is None       # over 253


def test_an_exempt_message_is_none() -> None:
    r = zone({"b.example": "v=DMARC1; p=reject"})
    block = b"From: a@b.example, c@d.example\r\n"
    result = run(DMARCCheck(r).evaluate(block, SPF_FAIL, ()))
    assert result.result is Status.NONE and result.author_problem is AuthorProblem.SEVERAL_DOMAINS
    assert "exempt" in result.reason and r.queries == []


# -- the tree walk -------------------------------------------------------------------

def test_tree_walk_targets() -> None:
    assert tree_walk_targets("a.mail.example.com") == [
        "a.mail.example.com", "mail.example.com", "example.com", "com"]
    ten = "a.b.c.d.e.f.g.mail.example.com"
    assert tree_walk_targets(ten) == [ten, "d.e.f.g.mail.example.com", "e.f.g.mail.example.com",
                                      "f.g.mail.example.com", "g.mail.example.com",
                                      "mail.example.com", "example.com", "com"]
    assert len(tree_walk_targets(ten)) == 8
    eight = "b.c.d.e.f.g.example.com"
    assert len(eight.split(".")) == 8 and len(tree_walk_targets(eight)) == 8
    assert tree_walk_targets("com") == ["com"]


def test_walk_asks_at_most_8_names() -> None:
    r = zone({})
    deep = "1.2.3.4.5.6.7.8.9.10.11.12.example.com"
    result = ev(r, deep, SPF_FAIL)
    assert result.result is Status.NONE
    txt = [n for n, t in r.queries if t == "TXT"]
    assert txt[0] == f"_dmarc.{deep}" and len(txt) <= 8
    assert txt[1] == "_dmarc.8.9.10.11.12.example.com"


# -- evaluation: alignment -----------------------------------------------------------

def test_spf_relaxed_alignment() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    result = ev(r, "example.com", SPFOutcome("pass", "bounce.example.com"))
    assert result.result is Status.PASS and result.spf_aligned and not result.dkim_aligned
    assert result.disposition is Policy.NONE and result.policy_domain == "example.com"


def test_spf_strict_alignment() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; aspf=s"})
    assert ev(r, "example.com", SPFOutcome("pass", "bounce.example.com")).result is Status.FAIL
    assert ev(r, "example.com", SPFOutcome("pass", "EXAMPLE.com")).result is Status.PASS


def test_spf_pass_for_another_domain_does_not_align() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    result = ev(r, "example.com", SPFOutcome("pass", "example.net"))
    assert result.result is Status.FAIL and result.disposition is Policy.REJECT
    assert (result.policy_tag, result.requested) == ("p", Policy.REJECT)


def test_spf_other_results_do_not_align() -> None:
    r = zone({"example.com": "v=DMARC1; p=quarantine"})
    for res in ("fail", "softfail", "neutral", "none", "permerror"):
        assert ev(r, "example.com", SPFOutcome(res, "example.com")).result is Status.FAIL, res


def test_dkim_relaxed_alignment_from_a_subdomain() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    result = ev(r, "news.example.com", SPF_FAIL, (DKIMOutcome("fail", "news.example.com"),
                                                 DKIMOutcome("pass", "Example.com", "s1")))
    assert result.result is Status.PASS and result.dkim_aligned == ("example.com",)
    assert result.policy_domain == "example.com" and result.organizational_domain == "example.com"


def test_dkim_strict_alignment() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; adkim=s"})
    assert ev(r, "news.example.com", None, (DKIMOutcome("pass", "example.com"),)).result is Status.FAIL
    assert ev(r, "example.com", None, (DKIMOutcome("pass", "example.com"),)).result is Status.PASS


def test_dkim_unaligned_or_failed_signatures_fail() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    result = ev(r, "example.com", None, (DKIMOutcome("pass", "lists.example.org"),
                                         DKIMOutcome("fail", "example.com"),
                                         DKIMOutcome("policy", "example.com")))
    assert result.result is Status.FAIL and result.dkim_aligned == ()


def test_both_aligned() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    result = ev(r, "example.com", SPFOutcome("pass", "example.com"), (DKIMOutcome("pass", "example.com"),))
    assert result.result is Status.PASS and result.spf_aligned and result.dkim_aligned == ("example.com",)
    assert "SPF and DKIM" in result.reason


def test_no_lookups_beyond_the_from_domain_when_identifiers_match() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    ev(r, "example.com", SPFOutcome("pass", "example.com"), (DKIMOutcome("pass", "example.com"),))
    assert r.queries == [("_dmarc.example.com", "TXT")]


def test_relaxed_alignment_across_a_public_suffix() -> None:
    r = zone({"example.co.uk": "v=DMARC1; p=reject"})
    assert ev(r, "example.co.uk", SPFOutcome("pass", "other.co.uk")).result is Status.FAIL
    assert ev(r, "mail.example.co.uk", SPFOutcome("pass", "bounce.example.co.uk")).result is Status.PASS


# -- evaluation: discovery ------------------------------------------------------------

def test_no_record_is_none() -> None:
    r = zone({})
    for mode in Discovery:
        result = ev(r, "news.example.com", SPF_FAIL, discovery=mode)
        assert result.result is Status.NONE and "no DMARC record" in result.reason


@pytest.mark.parametrize("mode", list(Discovery))
def test_organizational_domain_fallback_with_sp(mode: Discovery) -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; sp=quarantine"}, hosts=("news.example.com",))
    result = ev(r, "news.example.com", SPF_FAIL, discovery=mode)
    assert result.result is Status.FAIL and result.policy_domain == "example.com"
    assert (result.policy_tag, result.requested, result.disposition) == ("sp", Policy.QUARANTINE,
                                                                          Policy.QUARANTINE)
    own = ev(r, "example.com", SPF_FAIL, discovery=mode)
    assert (own.policy_tag, own.disposition) == ("p", Policy.REJECT)


def test_without_sp_a_subdomain_gets_p() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"}, hosts=("news.example.com",))
    result = ev(r, "news.example.com", SPF_FAIL)
    assert (result.policy_tag, result.disposition) == ("p", Policy.REJECT)


def test_the_subdomains_own_record_wins() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject", "news.example.com": "v=DMARC1; p=none"})
    result = ev(r, "news.example.com", SPF_FAIL)
    assert result.policy_domain == "news.example.com" and result.disposition is Policy.NONE


def test_np_for_a_non_existent_subdomain() -> None:
    r = zone({"example.com": "v=DMARC1; p=none; sp=quarantine; np=reject"}, hosts=("real.example.com",))
    ghost = ev(r, "ghost.example.com", SPF_FAIL)
    assert (ghost.policy_tag, ghost.disposition) == ("np", Policy.REJECT)
    real = ev(r, "real.example.com", SPF_FAIL)
    assert (real.policy_tag, real.disposition) == ("sp", Policy.QUARANTINE)
    # np is for subdomains only
    assert ev(r, "example.com", SPF_FAIL).policy_tag == "p"


def test_np_without_sp_falls_back_to_p_for_existing_subdomains() -> None:
    r = zone({"example.com": "v=DMARC1; p=quarantine; np=reject"}, hosts=("real.example.com",))
    assert ev(r, "real.example.com", SPF_FAIL).disposition is Policy.QUARANTINE
    assert ev(r, "nx.example.com", SPF_FAIL).disposition is Policy.REJECT


def test_several_records() -> None:
    two = ("v=DMARC1; p=none", "v=DMARC1; p=reject", "some other TXT")
    r = zone({"news.example.com": two, "example.com": "v=DMARC1; p=quarantine"}, hosts=("news.example.com",))
    # RFC 7489 §6.6.3 step 5: no DMARC for this message
    old = ev(r, "news.example.com", SPF_FAIL, discovery=Discovery.RFC7489)
    assert old.result is Status.NONE and "2 DMARC records" in old.reason
    # DMARCbis §4.10: both discarded, the walk goes on
    bis = ev(r, "news.example.com", SPF_FAIL)
    assert bis.result is Status.FAIL and bis.policy_domain == "example.com"


def test_non_dmarc_txt_records_are_ignored() -> None:
    r = zone({"example.com": ("v=spf1 -all", "v=DMARC1; p=reject", "google-site-verification=x")})
    assert ev(r, "example.com", SPF_FAIL).disposition is Policy.REJECT


def test_bad_p_with_rua_is_p_none() -> None:
    r = zone({"example.com": "v=DMARC1; p=bogus; rua=mailto:d@example.com"})
    result = ev(r, "example.com", SPF_FAIL)
    assert result.result is Status.FAIL and result.disposition is Policy.NONE
    assert result.rua == (ReportURI("mailto:d@example.com"),)
    assert any("treated as p=none" in w for w in result.record.warnings)  # type: ignore[union-attr]


def test_bad_p_without_rua_is_permerror() -> None:
    r = zone({"example.com": "v=DMARC1; p=bogus"})
    result = ev(r, "example.com", SPF_FAIL)
    assert result.result is Status.PERMERROR and "p='bogus'" in result.reason
    bad_sp = zone({"example.com": "v=DMARC1; p=reject; sp=sometimes"})
    assert ev(bad_sp, "example.com", SPF_FAIL).result is Status.PERMERROR


def test_missing_p_by_mode() -> None:
    r = zone({"example.com": "v=DMARC1; adkim=s"})
    bis = ev(r, "example.com", SPF_FAIL)                          # DMARCbis: as p=none
    assert bis.result is Status.FAIL and bis.disposition is Policy.NONE
    old = ev(r, "example.com", SPF_FAIL, discovery=Discovery.RFC7489)
    assert old.result is Status.PERMERROR and "no p= tag" in old.reason


def test_bad_np_only_matters_to_dmarcbis() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; np=maybe"})
    assert ev(r, "example.com", SPF_FAIL).result is Status.PERMERROR
    assert ev(r, "example.com", SPF_FAIL, discovery=Discovery.RFC7489).disposition is Policy.REJECT


# -- the tree walk and psd= ------------------------------------------------------------

TEST_PSL = PublicSuffixList.parse("test\nco.test\n", "test-psl")


def test_psd_policy_for_an_organizational_domain_without_one() -> None:
    r = zone({"test": "v=DMARC1; p=reject; psd=y"}, hosts=("shop.test", "mail.shop.test"))
    result = ev(r, "mail.shop.test", SPF_FAIL, psl=TEST_PSL)
    assert result.result is Status.FAIL and result.policy_domain == "test"
    assert result.organizational_domain == "shop.test" and result.disposition is Policy.REJECT
    aligned = ev(r, "mail.shop.test", SPFOutcome("pass", "bounce.shop.test"), psl=TEST_PSL)
    assert aligned.result is Status.PASS
    # RFC 7489 mode knows no PSD policy
    assert ev(r, "mail.shop.test", SPF_FAIL, psl=TEST_PSL,
              discovery=Discovery.RFC7489).result is Status.NONE


def test_psd_y_splits_what_the_list_does_not_know() -> None:
    # hosting.test hands out names; the list does not say so, its DMARC record does
    r = zone({"hosting.test": "v=DMARC1; p=quarantine; psd=y"}, hosts=("alice.hosting.test",))
    dkim = (DKIMOutcome("pass", "bob.hosting.test"),)
    bis = ev(r, "alice.hosting.test", None, dkim, psl=TEST_PSL)
    assert bis.result is Status.FAIL and bis.organizational_domain == "alice.hosting.test"
    assert bis.policy_domain == "hosting.test" and bis.disposition is Policy.QUARANTINE
    old = ev(r, "alice.hosting.test", None, dkim, psl=TEST_PSL, discovery=Discovery.RFC7489)
    assert old.result is Status.PASS              # by the list alone, both are hosting.test's


def test_psd_n_makes_its_domain_the_organizational_domain() -> None:
    r = zone({"co.test": "v=DMARC1; p=reject; psd=n"}, hosts=("x.co.test",))
    dkim = (DKIMOutcome("pass", "y.co.test"),)
    bis = ev(r, "x.co.test", None, dkim, psl=TEST_PSL)
    assert bis.result is Status.PASS and bis.policy_domain == "co.test"
    old = ev(r, "x.co.test", None, dkim, psl=TEST_PSL, discovery=Discovery.RFC7489)
    assert old.result is Status.NONE              # x.co.test is its own org domain there


def test_without_psd_tags_the_list_decides() -> None:
    # a record at a public suffix without psd=y does not make everything under it one organisation
    r = zone({"test": "v=DMARC1; p=reject", "shop.test": "v=DMARC1; p=reject"})
    result = ev(r, "shop.test", SPFOutcome("pass", "evil.test"), psl=TEST_PSL)
    assert result.result is Status.FAIL and result.organizational_domain == "shop.test"


def test_intermediate_records_and_the_walk() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; sp=quarantine",
              "b.example.com": "v=DMARC1; p=none"}, hosts=("a.b.example.com",))
    result = ev(r, "a.b.example.com", SPF_FAIL)
    assert result.policy_domain == "example.com" and result.disposition is Policy.QUARANTINE


# -- pct and t ---------------------------------------------------------------------------

def test_pct_sampling() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; pct=30"})
    hit = ev(r, "example.com", SPF_FAIL, random=lambda: 0.29)
    assert hit.disposition is Policy.REJECT and not hit.sampled_out
    miss = ev(r, "example.com", SPF_FAIL, random=lambda: 0.30)
    assert miss.disposition is Policy.QUARANTINE and miss.sampled_out
    assert miss.requested is Policy.REJECT


def test_pct_downgrades_quarantine_to_none_and_zero_always() -> None:
    q = zone({"example.com": "v=DMARC1; p=quarantine; pct=0"})
    assert ev(q, "example.com", SPF_FAIL, random=lambda: 0.0).disposition is Policy.NONE
    full = zone({"example.com": "v=DMARC1; p=quarantine; pct=100"})
    assert ev(full, "example.com", SPF_FAIL).disposition is Policy.QUARANTINE   # random never asked


def test_pct_is_not_asked_for_passing_mail() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; pct=50"})
    assert ev(r, "example.com", SPFOutcome("pass", "example.com")).result is Status.PASS


def test_t_y_is_testing() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; t=y"})
    result = ev(r, "example.com", SPF_FAIL)
    assert result.requested is Policy.REJECT and result.disposition is Policy.QUARANTINE


# -- temperror ---------------------------------------------------------------------------

def test_dns_failure_of_the_policy_is_temperror() -> None:
    r = zone({}, failing=("example.com",))
    result = ev(r, "example.com", SPF_FAIL)
    assert result.result is Status.TEMPERROR and "_dmarc.example.com" in result.reason


def test_dns_failure_at_the_organizational_domain() -> None:
    r = zone({}, failing=("example.com",))
    for mode in Discovery:
        assert ev(r, "news.example.com", SPF_FAIL, discovery=mode).result is Status.TEMPERROR


def test_dns_failure_above_the_organizational_domain_in_the_walk() -> None:
    r = zone({}, failing=("com",))
    assert ev(r, "news.example.com", SPF_FAIL).result is Status.TEMPERROR
    # RFC 7489 mode does not ask there
    assert ev(r, "news.example.com", SPF_FAIL, discovery=Discovery.RFC7489).result is Status.NONE


def test_identifier_walk_failure_falls_back_to_the_list() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"}, failing=("bounce.example.com",))
    assert ev(r, "example.com", SPFOutcome("pass", "bounce.example.com")).result is Status.PASS


def test_aligned_temporary_errors_are_temperror() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    assert ev(r, "example.com", SPFOutcome("temperror", "example.com")).result is Status.TEMPERROR
    assert ev(r, "example.com", None, (DKIMOutcome("temperror", "mail.example.com"),)
              ).result is Status.TEMPERROR
    # an unaligned one could never have passed DMARC
    assert ev(r, "example.com", SPFOutcome("temperror", "example.net")).result is Status.FAIL


def test_query_budget_bounds_many_signatures() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject"})
    dkim = tuple(DKIMOutcome("pass", f"s{i}.x{i}.example.com") for i in range(40))
    result = ev(r, "example.com", None, dkim)
    assert result.result is Status.PASS         # the first aligns
    dkim_bad = tuple(DKIMOutcome("pass", f"a.b{i}.example.net") for i in range(40))
    r2 = zone({"example.net": "v=DMARC1; p=reject; adkim=r", "example.com": "v=DMARC1; p=reject"})
    many = ev(r2, "zz.example.net", None, dkim_bad)
    assert many.result is Status.PASS and len(many.dkim_aligned) == 40
    assert len(r2.queries) <= QUERY_BUDGET


# -- Authentication-Results ----------------------------------------------------------------

def test_method_result() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; sp=none"})
    fail = ev(r, "example.com", SPF_FAIL)
    assert fail.method_result().render() == (
        "dmarc=fail (p=reject sp=none dis=reject) header.from=example.com policy.dmarc=reject")
    ok = ev(r, "example.com", SPFOutcome("pass", "example.com"))
    assert ok.method_result().render() == (
        "dmarc=pass (p=reject sp=none dis=none) header.from=example.com policy.dmarc=reject")
    none = ev(zone({}), "example.org", SPF_FAIL).method_result().render()
    assert none.startswith("dmarc=none (no DMARC record") and none.endswith("header.from=example.org")


# -- the check -----------------------------------------------------------------------------

FORGED = b"From: PayPal <service@paypal.example>\r\nSubject: your account\r\n"


def check(records: dict[str, str | tuple[str, ...]], **kw: Any) -> DMARCCheck:
    kw.setdefault("random", never)
    return DMARCCheck(zone(records), **kw)


def test_check_rejects_at_data_per_the_domains_policy() -> None:
    c = check({"paypal.example": "v=DMARC1; p=reject"})
    result = run(c.evaluate(FORGED, SPFOutcome("pass", "evil.example"), ()))
    v = c.verdict(result, "pillarbox.example")
    assert v.action is Action.REJECT and v.reply is not None
    assert (v.reply.code, v.reply.status) == (550, "5.7.1")
    assert v.reply.lines == ("Email rejected per DMARC policy for paypal.example",)
    assert v.check == "dmarc"


def test_check_reject_text_names_where_the_policy_is() -> None:
    c = check({"paypal.example": "v=DMARC1; p=none; sp=reject"})
    result = run(c.evaluate(b"From: a@mail.paypal.example\r\n", SPF_FAIL, ()))
    v = c.verdict(result)
    assert v.reply is not None and v.reply.lines == (
        "Email rejected per DMARC policy for mail.paypal.example (sp=reject published at paypal.example)",)


def test_check_quarantine_and_none() -> None:
    q = check({"paypal.example": "v=DMARC1; p=quarantine"})
    result = run(q.evaluate(FORGED, SPF_FAIL, ()))
    assert q.verdict(result).action is Action.QUARANTINE
    n = check({"paypal.example": "v=DMARC1; p=none"})
    assert n.verdict(run(n.evaluate(FORGED, SPF_FAIL, ()))).action is Action.TAG


def test_check_pass_and_no_policy_accept() -> None:
    c = check({"paypal.example": "v=DMARC1; p=reject"})
    ok = run(c.evaluate(FORGED, None, (DKIMOutcome("pass", "paypal.example"),)))
    assert c.verdict(ok).action is Action.ACCEPT
    assert c.verdict(run(c.evaluate(b"From: x@nopolicy.example\r\n", SPF_FAIL, ()))).action is Action.ACCEPT
    perm = check({"paypal.example": "v=DMARC1; p=bogus"})
    assert perm.verdict(run(perm.evaluate(FORGED, SPF_FAIL, ()))).action is Action.TAG


def test_check_temperror_tags_or_defers() -> None:
    c = DMARCCheck(zone({}, failing=("paypal.example",)))
    result = run(c.evaluate(FORGED, SPF_FAIL, ()))
    assert c.verdict(result).action is Action.TAG
    d = DMARCCheck(zone({}, failing=("paypal.example",)), defer_on_temperror=True)
    v = d.verdict(result)
    assert v.action is Action.DEFER and v.reply is not None
    assert (v.reply.code, v.reply.status) == (451, "4.4.3") and "paypal.example" in v.reply.lines[0]


def test_check_per_receiving_domain() -> None:
    c = check({"paypal.example": "v=DMARC1; p=reject"},
              overrides={"Monitor.Example": Enforcement.MONITOR,
                         "soft.example": Enforcement.QUARANTINE_ONLY})
    result = run(c.evaluate(FORGED, SPF_FAIL, ()))
    assert c.verdict(result, "strict.example").action is Action.REJECT
    assert c.verdict(result, "monitor.example.").action is Action.TAG
    assert c.verdict(result, "soft.example").action is Action.QUARANTINE
    assert c.verdict_for(result, ["strict.example", "soft.example"]).action is Action.QUARANTINE
    assert c.verdict_for(result, ["strict.example", "monitor.example"]).action is Action.TAG
    assert c.verdict_for(result, ["strict.example"]).action is Action.REJECT
    monitor_all = check({"paypal.example": "v=DMARC1; p=reject"}, enforcement=Enforcement.MONITOR)
    assert monitor_all.verdict(result).action is Action.TAG


def test_check_uses_rfc7489_discovery_when_asked() -> None:
    c = check({"test": "v=DMARC1; p=reject; psd=y"}, psl=TEST_PSL, discovery=Discovery.RFC7489)
    result = run(c.evaluate(b"From: a@shop.test\r\n", SPF_FAIL, ()))
    assert result.result is Status.NONE


def test_organizational_domain_off_the_walk() -> None:
    # a public suffix of 8 labels: the Organizational Domain (9 labels) is not among the
    # names the walk asks, so it is asked on its own
    deep = PublicSuffixList.parse("test\ns1.s2.s3.s4.s5.s6.s7.test\n")
    org = "org.s1.s2.s3.s4.s5.s6.s7.test"
    r = zone({org: "v=DMARC1; p=reject; sp=quarantine"}, hosts=(f"x.y.{org}",))
    result = ev(r, f"x.y.{org}", SPF_FAIL, psl=deep)
    assert result.policy_domain == org and result.disposition is Policy.QUARANTINE
    assert len([q for q in r.queries if q[1] == "TXT"]) <= 9
    broken = zone({}, failing=(org,))
    assert ev(broken, f"x.y.{org}", SPF_FAIL, psl=deep).result is Status.TEMPERROR


def test_version_tag_name_is_case_insensitive_but_its_value_is_not() -> None:
    assert DMARCRecord.parse("V=DMARC1; p=none").p is Policy.NONE
    with pytest.raises(DMARCRecordError):
        DMARCRecord.parse("v=Dmarc1; p=none")


# -- properties: bad input gets an answer, never an exception ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

RECORD_PIECES = ["v=DMARC1", ";", " ", "p=", "sp=", "np=", "pct=", "rua=", "ruf=", "psd=", "t=",
                 "adkim=", "aspf=", "fo=", "ri=", "rf=", "reject", "quarantine", "none", "y", "n",
                 "s", "r", "mailto:a@b.example", "!10m", ",", "=", "\x00", "é", "999999999999"]
records = st.lists(st.one_of(st.sampled_from(RECORD_PIECES), st.text(max_size=5)),
                   max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(records)
def test_record_parse_never_crashes(text: str) -> None:
    try:
        r = DMARCRecord.parse(text)
    except DMARCRecordError:
        return
    assert 0 <= r.pct <= 100 and r.psd in ("y", "n", "u")
    DMARCRecord.parse(r.render())           # what it renders parses again


@settings(max_examples=150, deadline=None)
@given(records, st.sampled_from(["example.com", "news.example.com", "a.b.c.d.e.f.g.h.i.example.com"]),
       st.sampled_from(["pass", "fail", "temperror", "none"]),
       st.sampled_from(["example.com", "x.example.com", "example.net", "", "[1.2.3.4]"]),
       st.sampled_from(list(Discovery)), st.floats(0, 0.999))
def test_evaluate_never_crashes(text: str, domain: str, res: str, ident: str,
                                mode: Discovery, rnd: float) -> None:
    r = zone({"example.com": ("v=DMARC1; " + text, text)})
    result = ev(r, domain, SPFOutcome(res, ident), (DKIMOutcome(res, ident),),
                discovery=mode, random=lambda: rnd)
    assert result.result in Status
    assert len(r.queries) <= QUERY_BUDGET
    result.method_result().render()


def test_method_result_names_where_the_policy_was_found() -> None:
    r = zone({"example.com": "v=DMARC1; p=reject; sp=quarantine"}, hosts=("news.example.com",))
    assert ev(r, "news.example.com", SPF_FAIL).method_result().render() == (
        "dmarc=fail (p=reject sp=quarantine dis=quarantine) header.from=news.example.com "
        "polrec.domain=example.com policy.dmarc=quarantine")


def test_check_in_one_call() -> None:
    c = check({"paypal.example": "v=DMARC1; p=reject"}, overrides={"soft.example": Enforcement.QUARANTINE_ONLY})
    result, verdict = run(c.check(FORGED, SPF_FAIL, (), ["soft.example"]))
    assert result.result is Status.FAIL and verdict.action is Action.QUARANTINE
    result, verdict = run(c.check(FORGED, SPF_FAIL, ()))
    assert verdict.action is Action.REJECT and str(verdict).startswith("dmarc: reject (550 5.7.1")
