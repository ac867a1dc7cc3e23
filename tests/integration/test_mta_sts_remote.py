"""Remote delivery applies MTA-STS (RFC 8461 §5): against the SMTP server core on
127.0.0.1 (``CorePeer`` of test_remote_delivery), with policies already in the
cache under the id the TXT record names, so no policy host is needed here (the
fetch is tested in tests/unit/test_mta_sts.py, the whole path in
test_mta_sts_lab.py)."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from pillarbox.deliver.mta_sts import MTASTS, CachedPolicy, Mode, Policy, PolicyCache
from pillarbox.deliver.remote import TLSPolicy
from pillarbox.net.tls import ensure_self_signed, server_context
from pillarbox.policy.dns import StaticResolver
from tests.integration.test_remote_delivery import (
    CorePeer,
    Resolver,
    msg,
    one_mx,
    remote,
    run,
)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path_factory.mktemp("tls"), "localhost")


def sts(mode: Mode, *mx: str, domain: str = "s.test") -> tuple[MTASTS, StaticResolver]:
    resolver = StaticResolver({(f"_mta-sts.{domain}", "TXT"): ("v=STSv1; id=7",)})
    cache = PolicyCache()
    cache.put(CachedPolicy(domain, "7", Policy(mode, 86400, mx or ("localhost",)),
                           time.time()))
    return MTASTS(resolver, cache), resolver


def deliver(peer_tls: ssl.SSLContext | None, *, mode: Mode = Mode.ENFORCE,
            mx: tuple[str, ...] = (), **kw: Any) -> tuple[Any, CorePeer, StaticResolver]:
    async def scenario() -> tuple[Any, CorePeer, StaticResolver]:
        peer = await CorePeer(starttls=peer_tls).start()
        policy, resolver = sts(mode, *mx)
        rd = remote(Resolver({"s.test": one_mx("s.test")}), peer.port, mta_sts=policy, **kw)
        done = await rd.deliver("s.test", msg("b@s.test"))
        await rd.close()
        await peer.stop()
        return done, peer, resolver
    result: tuple[Any, CorePeer, StaticResolver] = run(scenario())
    return result



def test_enforce_with_a_valid_certificate_delivers_verified(tls_files: tuple[Path, Path]) -> None:
    done, peer, _ = deliver(server_context(*tls_files), ca_file=tls_files[0])
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" verified")
    assert len(peer.messages) == 1


def test_enforce_without_a_valid_certificate_defers_saying_why(
        tls_files: tuple[Path, Path]) -> None:
    done, peer, _ = deliver(server_context(*tls_files))     # the system's CAs: not trusted
    [outcome] = done.outcomes
    assert outcome.result == "deferred" and outcome.status == "4.7.5"
    assert outcome.reply.startswith(
        "451 4.7.5 MTA-STS policy of s.test (enforce) requires TLS with a certificate valid "
        "for localhost (RFC 8461 4.2); TLS handshake with "), outcome.reply
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.reply
    assert peer.messages == []


def test_enforce_without_starttls_defers_saying_why() -> None:
    done, peer, _ = deliver(None, default_tls=TLSPolicy.NONE)   # MTA-STS overrides the default
    [outcome] = done.outcomes
    assert outcome.result == "deferred"
    assert outcome.reply.startswith(
        "451 4.7.5 MTA-STS policy of s.test (enforce) requires TLS with a certificate valid "
        "for localhost (RFC 8461 4.2); TLS is required, but localhost[127.0.0.1]:"), outcome.reply
    assert peer.messages == []


def test_enforce_tries_no_mx_the_policy_does_not_name(tls_files: tuple[Path, Path]) -> None:
    done, peer, _ = deliver(server_context(*tls_files), mx=("*.example.net",),
                            ca_file=tls_files[0])
    [outcome] = done.outcomes
    assert outcome.result == "deferred"
    assert outcome.reply == (
        "451 4.7.5 MTA-STS policy of s.test (enforce) allows only MX hosts matching "
        "*.example.net; the domain's MX hosts (localhost) match none of them (RFC 8461 4.1)")
    assert peer.connections == 0


def test_testing_mode_only_reports(tls_files: tuple[Path, Path],
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pillarbox.remote")
    done, peer, _ = deliver(server_context(*tls_files), mode=Mode.TESTING,
                            mx=("other.example",))
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" unverified")
    [report] = [r for r in caplog.records if r.getMessage() == "sts testing"]
    fields = report.pbx_fields  # type: ignore[attr-defined]
    assert fields["domain"] == "s.test" and "CERTIFICATE_VERIFY_FAILED" in fields["error"]
    [applied] = [r for r in caplog.records if r.getMessage() == "sts policy"]
    assert applied.pbx_fields["refused"] == "localhost"  # type: ignore[attr-defined]
    assert peer.connections == 2 and len(peer.messages) == 1


def test_a_configured_tls_policy_wins_over_mta_sts(tls_files: tuple[Path, Path]) -> None:
    done, peer, resolver = deliver(server_context(*tls_files),
                                   tls_policies={"S.test": TLSPolicy.MAY})
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" unverified")
    assert resolver.queries == []           # MTA-STS was not even asked


def test_mode_none_is_no_policy(tls_files: tuple[Path, Path]) -> None:
    done, _, resolver = deliver(server_context(*tls_files), mode=Mode.NONE)
    assert done.outcomes[0].result == "delivered"
    assert resolver.queries == [("_mta-sts.s.test", "TXT")]
