"""TLS-RPT counts (RFC 8460) from real remote delivery: the SMTP server core on
127.0.0.1 (``CorePeer`` of test_remote_delivery) with and without STARTTLS and
a trusted certificate, MTA-STS policies in the cache as in test_mta_sts_remote;
what ``RemoteDelivery`` records is read back from the spool and rendered."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from pillarbox.deliver.mta_sts import MTASTS, CachedPolicy, Mode, Policy, PolicyCache
from pillarbox.deliver.remote import TLSPolicy
from pillarbox.net.tls import ensure_self_signed, server_context
from pillarbox.policy.dns import StaticResolver
from pillarbox.reports.spool import day_of, read_day
from pillarbox.reports.tlsrpt import KIND, TLSRecorder, TLSReport
from tests.integration.test_remote_delivery import CorePeer, Resolver, msg, one_mx, remote, run


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path_factory.mktemp("tls"), "localhost")


def _sts(mode: Mode) -> MTASTS:
    resolver = StaticResolver({("_mta-sts.s.test", "TXT"): ("v=STSv1; id=7",)})
    cache = PolicyCache()
    cache.put(CachedPolicy("s.test", "7", Policy(mode, 86400, ("localhost",)), time.time()))
    return MTASTS(resolver, cache)


def deliver(data_dir: Path, peer_tls: ssl.SSLContext | None, **kw: Any) -> list[dict[str, Any]]:
    """One delivery to s.test; the TLS-RPT report's policies for s.test."""
    async def scenario() -> None:
        peer = await CorePeer(starttls=peer_tls).start()
        rd = remote(Resolver({"s.test": one_mx("s.test")}), peer.port, **kw)
        rd.tls_report = TLSRecorder.in_data_dir(data_dir)
        await rd.deliver("s.test", msg("b@s.test"))
        await rd.close()
        await peer.stop()
        rd.tls_report.flush()
    run(scenario())
    rows = read_day(data_dir, KIND, day_of(time.time()))
    doc = json.loads(TLSReport("out.test", "postmaster@out.test", "r", 0, 1, "s.test",
                               [(r, n) for r, n in rows if r["domain"] == "s.test"]).json())
    policies: list[dict[str, Any]] = doc["policies"]
    return policies


def test_a_verified_session_under_mta_sts_counts_as_success(
        tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    [p] = deliver(tmp_path, server_context(*tls_files), mta_sts=_sts(Mode.ENFORCE),
                  ca_file=tls_files[0])
    assert p["policy"]["policy-type"] == "sts"
    assert "mode: enforce" in p["policy"]["policy-string"]
    assert p["summary"] == {"total-successful-session-count": 1,
                            "total-failure-session-count": 0}


def test_an_untrusted_certificate_under_mta_sts_is_a_failure(
        tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    [p] = deliver(tmp_path, server_context(*tls_files), mta_sts=_sts(Mode.ENFORCE))
    assert p["summary"]["total-failure-session-count"] == 1
    [f] = p["failure-details"]
    assert f["result-type"] == "certificate-not-trusted", f
    assert f["receiving-mx-hostname"] == "localhost" and f["receiving-ip"] == "127.0.0.1"


def test_no_starttls_without_a_policy(tmp_path: Path) -> None:
    [p] = deliver(tmp_path, None)                      # default: TLS when offered
    assert p["policy"]["policy-type"] == "no-policy-found"
    assert p["failure-details"][0]["result-type"] == "starttls-not-supported"


def test_no_starttls_under_enforce(tmp_path: Path) -> None:
    [p] = deliver(tmp_path, None, mta_sts=_sts(Mode.ENFORCE))
    assert p["failure-details"][0]["result-type"] == "starttls-not-supported"
    assert p["summary"]["total-successful-session-count"] == 0


def test_a_configured_tls_policy_is_not_reported(tmp_path: Path,
                                                 tls_files: tuple[Path, Path]) -> None:
    assert deliver(tmp_path, server_context(*tls_files),
                   tls_policies={"s.test": TLSPolicy.MAY}) == []


def test_testing_mode_counts_the_failure_once(tmp_path: Path,
                                              tls_files: tuple[Path, Path]) -> None:
    [p] = deliver(tmp_path, server_context(*tls_files), mta_sts=_sts(Mode.TESTING))
    assert "mode: testing" in p["policy"]["policy-string"]
    assert p["summary"] == {"total-successful-session-count": 0,
                            "total-failure-session-count": 1}
    assert p["failure-details"][0]["result-type"] == "certificate-not-trusted"
