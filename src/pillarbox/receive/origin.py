"""Who sent it: SPF, DKIM and DMARC for mail received from other servers.

The receiving session asks three checks of the policy layer, in the order
their answers become possible:

1. SPF (``policy/spf.py``, RFC 7208) as soon as MAIL FROM names the sender:
   it needs only the client's address, the HELO name and the reverse path,
   so its DNS lookups run while the client sends RCPT and DATA;
2. DKIM (``policy/dkim``, RFC 6376) at the end of DATA, over the message as
   received (without our ``Received:`` line);
3. DMARC (``policy/dmarc.py``, RFC 7489) from the ``From:`` domain and the two
   results above.

The outcome is a :class:`Judgement`: the verdict that decides the reply
(the first reject or defer of the chain; SPF rejects only when configured
to, DKIM alone never does, DMARC rejects or quarantines by the author
domain's policy and our enforcement), and one ``Authentication-Results:``
field (RFC 8601) recording every result under our authserv-id.  Fields that
claim our authserv-id are removed from incoming messages before they are
spooled (``strip``), so a user can trust the one we add.

Mail from authenticated users (submission) is not judged here: it is ours
to sign, not to verify.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pillarbox.log import log_event
from pillarbox.policy.authres import AuthenticationResults, MethodResult, remove_ours
from pillarbox.policy.dkim.verify import DKIMResult, VerifyPolicy, verify
from pillarbox.policy.dmarc import DKIMOutcome, DMARCCheck, DMARCResult, SPFOutcome
from pillarbox.policy.dmarc import Status as DMARCStatus
from pillarbox.policy.dns import Resolver
from pillarbox.policy.memo import Memo
from pillarbox.policy.rdns import HeloCheck, HeloResult, IPRevResult, ReverseName
from pillarbox.policy.spf import Result as SPFStatus
from pillarbox.policy.spf import SPFCheck, SPFResult
from pillarbox.policy.verdict import Action, Verdict
from pillarbox.policy.arc import ChainStatus
from pillarbox.receive.arc_seal import validate_incoming

if TYPE_CHECKING:
    from pillarbox.reports.dmarc import DMARCRecorder

__all__ = ["OriginChecks", "Judgement"]

log = logging.getLogger("pillarbox.receive.origin")

SPF_WAIT = 20.0      # seconds the end of DATA waits for SPF's lookups at most
CLIENT_WAIT = 10.0   # ... for the reverse name and the HELO check (begun long before)
MEMO_SECONDS = 10.0  # how long the judgement of unsigned mail is reused (see OriginChecks)

T = TypeVar("T")


@dataclass(slots=True)
class Judgement:
    """What the checks decided of one message, and the header that records it."""

    verdict: Verdict
    header: bytes
    spf: SPFResult | None = None
    dkim: list[DKIMResult] = field(default_factory=list)
    dmarc: DMARCResult | None = None
    iprev: ReverseName | None = None
    helo: HeloResult | None = None

    @property
    def quarantine(self) -> bool:
        return self.verdict.action is Action.QUARANTINE


@dataclass
class OriginChecks:
    """The checks for mail from other servers, wired by ``serve`` from ``[policy]``."""

    resolver: Resolver
    authserv_id: str
    spf: SPFCheck | None = None
    spf_defer_temperror: bool = False
    dkim: VerifyPolicy | None = None
    dkim_max_size: int = 16 * 1024 * 1024
    dmarc: DMARCCheck | None = None
    helo: HeloCheck | None = None
    reports: DMARCRecorder | None = None   # counts for DMARC aggregate reports (pillarbox.reports)
    #: Judgements of unsigned mail (verdict, header, DMARC result, its row for the
    #: reports), by everything they were made of (see :meth:`judge`; ``policy/memo.py``).
    memo: Memo[tuple[Verdict, bytes, DMARCResult | None, str | None]] = field(
        default_factory=lambda: Memo(MEMO_SECONDS), repr=False)

    def strip(self, header_block: bytes) -> bytes:
        """The header block without fields claiming our authserv-id (RFC 8601 §5)."""
        return remove_ours(header_block, self.authserv_id)

    def start_spf(self, ip: str, mail_from: str, helo: str) -> asyncio.Future[SPFResult] | None:
        """Begin SPF at MAIL FROM; the future is awaited at the end of DATA.  A result
        the memo holds is a future already done: no task per message for it."""
        if self.spf is None:
            return None
        found = self.spf.remembered(ip, mail_from, helo)
        if found is not None:
            return done(found)
        return asyncio.ensure_future(self.spf.evaluate(ip, mail_from, helo))

    def start_helo(self, ip: str, helo: str, local_addresses: tuple[str, ...]
                   ) -> asyncio.Future[HeloResult] | None:
        """Begin the HELO check at EHLO/HELO, as :meth:`start_spf` does SPF."""
        if self.helo is None:
            return None
        found = self.helo.remembered(ip, helo, local_addresses=local_addresses)
        if found is not None:
            return done(found)
        return asyncio.ensure_future(self.helo.evaluate(ip, helo,
                                                        local_addresses=local_addresses))

    async def judge(self, spf_task: asyncio.Future[SPFResult] | None, message: bytes | None,
                    receiving_domains: Iterable[str], *,
                    reverse: asyncio.Future[ReverseName] | None = None,
                    helo: asyncio.Future[HeloResult] | None = None) -> Judgement:
        """The checks' verdict for ``message`` (None: too large to read whole)."""
        verdict = Verdict.accept("authentication")
        iprev = await _settled(reverse, CLIENT_WAIT, "iprev")
        helo_result: HeloResult | None = None
        if self.helo:
            helo_result = await _settled(helo, CLIENT_WAIT, "helo")
        if helo_result is not None:
            assert self.helo is not None
            v = self.helo.verdict(helo_result)
            if v.is_final:
                if spf_task is not None:
                    spf_task.cancel()
                return Judgement(v, self._header(_client_methods(iprev, None)), iprev=iprev,
                                 helo=helo_result)
            if v.action is not Action.ACCEPT:
                verdict = v
        spf = await self._spf_result(spf_task)
        if spf is not None:
            assert self.spf is not None
            v = self.spf.verdict(spf)
            if v.action is Action.DEFER and not self.spf_defer_temperror:
                v = Verdict(v.check, Action.TAG, None, v.reason)
            if v.is_final:
                return Judgement(v, self._header(_client_methods(iprev, spf)), spf)
        # A message without DKIM or ARC fields is judged by the client, the
        # envelope and its From: fields alone, all of them DNS answers that
        # are cached anyway: the same sending server sending the next message
        # of the same author gets the same result.  So that judgement (and its
        # rendered header) is reused for MEMO_SECONDS, unless something in it
        # was temporary or sampled (pct).  The aggregate-report counts are
        # still made per message, of the row made with the judgement (a
        # function of the same results: DMARC's, the client's address, SPF's).
        key = self._memo_key(message, iprev, helo_result, spf, verdict, receiving_domains)
        if key is not None:
            hit = self.memo.get(key)
            if hit is not None:
                memo_verdict, header, memo_dmarc, row = hit
                if self.reports is not None:
                    self.reports.count(row)
                return Judgement(memo_verdict, header, spf, [], memo_dmarc, iprev, helo_result)
        # (Rendered only now: a reused judgement has its header already.)
        methods = _client_methods(iprev, spf)
        dkim_results: list[DKIMResult] = []
        if self.dkim is not None:
            if message is None:
                methods.append(MethodResult("dkim", "neutral",
                                            comment="message too large to verify"))
            else:
                dkim_results = await verify(message, self.resolver, policy=self.dkim)
                methods += [_dkim_method(r) for r in dkim_results]
                if not dkim_results:
                    methods.append(MethodResult("dkim", "none"))
            # ARC (RFC 8617 §5.2): recorded when the message carries a chain.
            arc = await validate_incoming(message, self.resolver, self.client_ip(spf, iprev))
            if arc is not None and arc[0].status is not ChainStatus.NONE:
                methods.append(arc[1])
        dmarc: DMARCResult | None = None
        if self.dmarc is not None and message is not None:
            header_block = _header_block(message)
            dmarc, v = await self.dmarc.check(
                header_block,
                SPFOutcome(spf.result.value, spf.domain) if spf is not None else None,
                [DKIMOutcome(r.result.value, r.domain, r.selector) for r in dkim_results],
                receiving_domains,
            )
            methods.append(dmarc.method_result())
            if v.action is not Action.ACCEPT:
                verdict = v
        row = None
        if self.reports is not None and dmarc is not None:
            row = self.reports.row(dmarc, self.client_ip(spf, iprev), spf, dkim_results, verdict)
            self.reports.count(row)
        header = self._header(methods)
        if key is not None and _lasting(spf, iprev, dmarc, verdict):
            self.memo.put(key, (verdict, header, dmarc, row))
        return Judgement(verdict, header, spf, dkim_results, dmarc, iprev, helo_result)

    def _memo_key(self, message: bytes | None, iprev: ReverseName | None,
                  helo: HeloResult | None, spf: SPFResult | None, verdict: Verdict,
                  receiving_domains: Iterable[str]) -> tuple[object, ...] | None:
        """What the judgement of an unsigned message depends on, or None when
        it depends on more (signatures, an ARC chain) or cannot be reused."""
        if message is None:
            return None
        block = _header_block(message)
        lowered = block.lower()
        if b"dkim-signature" in lowered or b"arc-" in lowered:
            return None
        authors = tuple(block[m.start():m.end()] for m in _FROM.finditer(lowered))
        return (iprev, helo, spf, verdict, authors, tuple(receiving_domains))

    @staticmethod
    def client_ip(spf: SPFResult | None, iprev: ReverseName | None) -> str | None:
        if spf is not None and spf.ip:
            return spf.ip
        return iprev.ip if iprev is not None else None

    async def _spf_result(self, task: asyncio.Future[SPFResult] | None) -> SPFResult | None:
        if task is None:
            return None
        try:
            if task.done():   # the usual case: no wait_for (a task of its own) needed
                return task.result()
            return await asyncio.wait_for(asyncio.shield(task), SPF_WAIT)
        except TimeoutError:
            task.cancel()
            log_event(log, "spf took too long", seconds=SPF_WAIT, level=logging.WARNING)
            return None
        except Exception as exc:  # noqa: BLE001 - a bug in a check must not refuse mail
            log_event(log, "spf failed", error=repr(exc), level=logging.ERROR)
            return None

    def _header(self, methods: list[MethodResult]) -> bytes:
        return AuthenticationResults.of(self.authserv_id, methods).render()


def done(result: T) -> asyncio.Future[T]:
    """A future that already has ``result``."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


async def _settled(task: asyncio.Future[T] | None, wait: float, what: str) -> T | None:
    """The task's result, waited for at most ``wait`` seconds; None if it has none."""
    if task is None or task.cancelled():
        return None
    try:
        if task.done():       # the usual case: no wait_for (a task of its own) needed
            return task.result()
        return await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        task.cancel()
        log_event(log, f"{what} took too long", seconds=wait, level=logging.WARNING)
    except Exception as exc:  # noqa: BLE001 - a bug in a check must not refuse mail
        log_event(log, f"{what} failed", error=repr(exc), level=logging.ERROR)
    return None


def _client_methods(iprev: ReverseName | None, spf: SPFResult | None) -> list[MethodResult]:
    """The results about the client and the envelope, first in our header."""
    methods: list[MethodResult] = []
    if iprev is not None:
        methods.append(iprev.method_result())
    if spf is not None:
        methods.append(_spf_method(spf))
    return methods


def _spf_method(spf: SPFResult) -> MethodResult:
    if spf.identity == "helo":
        return MethodResult.spf(spf.result.value, helo=spf.domain, comment=spf.comment())
    mailfrom = spf.sender if spf.result is not SPFStatus.NONE or spf.sender else None
    return MethodResult.spf(spf.result.value, mailfrom=mailfrom, comment=spf.comment())


def _dkim_method(r: DKIMResult) -> MethodResult:
    return MethodResult.dkim(r.result.value, r.domain or None, r.selector or None,
                             r.header_b or None, reason=r.reason or None)


# Every From: field with its continuation lines (found in a lower-cased copy).
_FROM = re.compile(rb"^from[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*", re.MULTILINE)


def _lasting(spf: SPFResult | None, iprev: ReverseName | None, dmarc: DMARCResult | None,
             verdict: Verdict) -> bool:
    """Whether a judgement may be reused: nothing temporary in it, no sampling."""
    if verdict.action is Action.DEFER:
        return False
    if spf is not None and spf.result is SPFStatus.TEMPERROR:
        return False
    if iprev is not None and iprev.result is IPRevResult.TEMPERROR:
        return False
    if dmarc is not None and (dmarc.result is DMARCStatus.TEMPERROR
                              or (dmarc.record is not None and dmarc.record.pct != 100)):
        return False
    return True


def _header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        return b""
    return message[: end + 2] if end >= 0 else message
