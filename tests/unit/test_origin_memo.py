"""The judgement of unsigned mail is reused for a few seconds (receive/origin.py):
same client, envelope and From: fields give the same result and header without
asking DMARC again; anything that differs, a signature, or a temporary result is
judged afresh."""

from __future__ import annotations

import asyncio

import pytest

from pillarbox.policy.dmarc import DMARCCheck
from pillarbox.policy.dns import StaticResolver
from pillarbox.policy.psl import PublicSuffixList
from pillarbox.policy.spf import SPFCheck
from pillarbox.receive.origin import OriginChecks

ZONE = {
    ("sender.test", "TXT"): ("v=spf1 ip4:192.0.2.1 -all",),
    ("_dmarc.sender.test", "TXT"): ("v=DMARC1; p=reject",),
    ("_dmarc.sampled.test", "TXT"): ("v=DMARC1; p=quarantine; pct=50",),
    ("sampled.test", "TXT"): ("v=spf1 ip4:192.0.2.1 -all",),
}


def message(author: str, extra: bytes = b"") -> bytes:
    return (b"From: " + author.encode() + b"\r\n" + extra
            + b"To: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n")


class Counting(DMARCCheck):
    calls = 0

    async def check(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        type(self).calls += 1
        return await super().check(*args, **kwargs)


@pytest.fixture
def checks() -> OriginChecks:
    resolver = StaticResolver(dict(ZONE))
    Counting.calls = 0
    return OriginChecks(resolver, "mx.example.test", spf=SPFCheck(resolver),
                        dmarc=Counting(resolver, PublicSuffixList.load(None)))


def judge(checks: OriginChecks, sender: str, data: bytes, ip: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        task = checks.start_spf(ip, sender, "client.test")
        return await checks.judge(task, data, ["example.test"])
    return asyncio.run(go())


def test_the_same_unsigned_mail_is_judged_once(checks: OriginChecks) -> None:
    first = judge(checks, "a@sender.test", message("a@sender.test"))
    second = judge(checks, "a@sender.test", message("a@sender.test"))
    assert Counting.calls == 1
    assert second.header == first.header and second.verdict == first.verdict
    assert b"dmarc=pass" in first.header and b"spf=pass" in first.header


def test_a_remembered_spf_result_is_a_future_already_done(checks: OriginChecks) -> None:
    async def go():  # type: ignore[no-untyped-def]
        first = checks.start_spf("192.0.2.1", "a@sender.test", "client.test")
        assert first is not None and isinstance(first, asyncio.Task)
        result = await first
        again = checks.start_spf("192.0.2.1", "a@sender.test", "client.test")
        assert again is not None and again.done() and not isinstance(again, asyncio.Task)
        assert again.result() is result
        other = checks.start_spf("192.0.2.9", "a@sender.test", "client.test")
        assert isinstance(other, asyncio.Task)
        await other
    asyncio.run(go())


def test_anything_different_is_judged_again(checks: OriginChecks) -> None:
    judge(checks, "a@sender.test", message("a@sender.test"))
    forged = judge(checks, "a@sender.test", message("a@sender.test"), ip="198.51.100.9")
    assert forged.verdict.action.value == "reject" and b"dmarc=fail" in forged.header
    other_author = judge(checks, "a@sender.test", message("Eve <eve@elsewhere.test>"))
    assert b"header.from=elsewhere.test" in other_author.header
    signed = message("a@sender.test", b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test\r\n")
    judge(checks, "a@sender.test", signed)
    judge(checks, "a@sender.test", signed)
    assert Counting.calls == 5


def test_sampled_and_expired_judgements_are_not_reused(checks: OriginChecks,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    judge(checks, "a@sampled.test", message("a@sampled.test"), ip="198.51.100.9")
    judge(checks, "a@sampled.test", message("a@sampled.test"), ip="198.51.100.9")
    assert Counting.calls == 2          # pct=50: each message is sampled anew
    judge(checks, "a@sender.test", message("a@sender.test"))
    monkeypatch.setattr(checks.memo, "seconds", -1.0)
    judge(checks, "b@sender.test", message("b@sender.test"))
    judge(checks, "b@sender.test", message("b@sender.test"))
    assert Counting.calls == 5


def test_spf_reverse_name_and_helo_results_are_remembered_but_not_temperrors() -> None:
    from pillarbox.policy.memo import Memo
    from pillarbox.policy.rdns import HeloCheck, ReverseDNS

    resolver = StaticResolver(dict(ZONE), failing={"broken.test"})
    spf = SPFCheck(resolver)
    first = asyncio.run(spf.evaluate("192.0.2.1", "a@sender.test", "client.test"))
    asked = len(resolver.queries)
    assert asyncio.run(spf.evaluate("192.0.2.1", "a@sender.test", "client.test")) == first
    assert len(resolver.queries) == asked
    for _ in range(2):
        assert asyncio.run(spf.evaluate("192.0.2.1", "a@broken.test", "c.test")).result.value \
            == "temperror"
    assert len(resolver.queries) == asked + 2        # asked again: not remembered

    rdns = ReverseDNS(resolver)
    asyncio.run(rdns.lookup("192.0.2.1"))
    asked = len(resolver.queries)
    asyncio.run(rdns.lookup("192.0.2.1"))
    assert len(resolver.queries) == asked
    helo = HeloCheck(resolver, "mx.example.test")
    asyncio.run(helo.evaluate("192.0.2.1", "nowhere.test"))
    asked = len(resolver.queries)
    asyncio.run(helo.evaluate("192.0.2.1", "nowhere.test"))
    assert len(resolver.queries) == asked

    memo: Memo[int] = Memo(seconds=-1.0)
    memo.put("k", 1)
    assert memo.get("k") is None                     # expired at once
    memo = Memo(size=2)
    for i in range(5):
        memo.put(i, i)
    assert memo.get(4) == 4 and len(memo._entries) <= 2
