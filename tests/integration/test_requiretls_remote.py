"""Remote delivery honours REQUIRETLS and ``TLS-Required: No`` (RFC 8689 §4.2),
against the SMTP server core on 127.0.0.1 (``CorePeer``), which offers
REQUIRETLS under TLS as Pillarbox does.  The MX host is validated by an
MTA-STS policy already in the cache (as in test_mta_sts_remote.py) or by a
DNSSEC-secure MX RRset from a stand-in validating resolver on loopback that
sets the AD bit (test_dane.py's), so every decision of §4.2.1 is met or
missed one at a time."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pillarbox.deliver.dane import DANE, ValidatingResolver
from pillarbox.deliver.mta_sts import Mode
from pillarbox.deliver.outbound import Delivery
from pillarbox.deliver.remote import RelayHost, TLSPolicy
from pillarbox.net.tls import ensure_self_signed, server_context
from tests.conftest import free_port
from tests.integration.test_mta_sts_remote import sts
from tests.integration.test_remote_delivery import (
    CorePeer,
    Resolver,
    msg,
    one_mx,
    remote,
    run,
)
from tests.unit.test_dane import Resolver as DNSSECResolver


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path_factory.mktemp("tls"), "localhost")


SECURE = {   # s.test's MX RRset is DNSSEC-secure, its host has no TLSA records
    ("s.test", "MX"): ("NOERROR", True, ["s.test 60 IN MX 10 localhost."]),
    ("localhost", "A"): ("NOERROR", True, ["localhost 60 IN A 127.0.0.1"]),
    ("localhost", "AAAA"): ("NOERROR", True, []),
}   # TLSA at _<port>._tcp.localhost: NXDOMAIN with AD, a validated absence
INSECURE = {**SECURE, ("s.test", "MX"): ("NOERROR", False, ["s.test 60 IN MX 10 localhost."])}


async def with_dnssec(answers: dict[tuple[str, str], tuple[str, bool, list[str]]],
                      body: Callable[[DANE], Awaitable[Any]]) -> Any:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: DNSSECResolver(answers), local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        return await body(DANE(ValidatingResolver(["127.0.0.1"], port, timeout=3)))
    finally:
        transport.close()


def deliver(peer_tls: ssl.SSLContext | None, *, mode: Mode | None = Mode.ENFORCE,
            mx: tuple[str, ...] = (), dnssec: Any = None,
            without: tuple[str, ...] = (), message: dict[str, Any] | None = None,
            first: dict[str, Any] | None = None, port: int | None = None,
            **kw: Any) -> tuple[Delivery, CorePeer]:
    """One delivery of a REQUIRETLS message (unless ``message`` says otherwise) to
    s.test, whose MX is the peer; ``first``: a message delivered before it."""
    peer_port = free_port()

    async def scenario(dane: DANE | None) -> tuple[Delivery, CorePeer]:
        peer = await CorePeer(port=peer_port, starttls=peer_tls, without=without).start()
        if mode is not None:
            kw["mta_sts"] = sts(mode, *mx)[0]
        rd = remote(Resolver({"s.test": one_mx("s.test")}), port or peer.port, dane=dane,
                    **kw)
        if first is not None:
            assert (await rd.deliver("s.test", msg("a@s.test", **first))).outcomes[0].result \
                == "delivered"
        wanted = {"requiretls": True} if message is None else message
        done = await rd.deliver("s.test", msg("b@s.test", **wanted))
        await rd.close()
        await peer.stop()
        return done, peer

    async def main() -> tuple[Delivery, CorePeer]:
        if dnssec is None:
            return await scenario(None)
        answers = dnssec(peer_port) if callable(dnssec) else dnssec
        result: tuple[Delivery, CorePeer] = await with_dnssec(answers, scenario)
        return result
    out: tuple[Delivery, CorePeer] = run(main())
    return out


# ------------------------------------------------------- REQUIRETLS delivered


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.TESTING])
def test_mta_sts_validated_mx_verified_tls_and_requiretls(
        tls_files: tuple[Path, Path], mode: Mode) -> None:
    done, peer = deliver(server_context(*tls_files), mode=mode, ca_file=tls_files[0])
    [outcome] = done.outcomes
    assert outcome.result == "delivered", outcome.reply
    assert done.tls is not None and done.tls.endswith(" verified")
    [received] = peer.messages
    assert received.params[0].requiretls is True        # MAIL FROM:<a@example.org> REQUIRETLS
    assert peer.connections == 1


def test_dnssec_validated_mx(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), mode=None, dnssec=SECURE,
                         ca_file=tls_files[0])
    assert done.outcomes[0].result == "delivered", done.outcomes[0].reply
    assert peer.messages[0].params[0].requiretls is True


def test_a_configured_tls_policy_does_not_lower_requiretls(tls_files: tuple[Path, Path]) -> None:
    # "may" for the domain, but REQUIRETLS still validates the MX and verifies TLS.
    done, peer = deliver(server_context(*tls_files), ca_file=tls_files[0],
                         tls_policies={"s.test": TLSPolicy.MAY})
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" verified")
    done, peer = deliver(server_context(*tls_files), tls_policies={"s.test": TLSPolicy.NONE})
    assert done.outcomes[0].result == "failed" and done.outcomes[0].status == "5.7.10"
    assert peer.messages == []


def test_an_idle_connection_is_not_reused(tls_files: tuple[Path, Path]) -> None:
    # The first message leaves an unverified connection idle (no MTA-STS, "may").
    done, peer = deliver(server_context(*tls_files), mode=Mode.TESTING, ca_file=tls_files[0],
                         first={"queue_id": "Q0"})
    assert done.outcomes[0].result == "delivered"
    assert peer.connections == 2 and peer.resets == 0
    assert [m.params[0].requiretls for m in peer.messages] == [False, True]


# ---------------------------------------------------------- REQUIRETLS failed


def test_next_hop_without_requiretls_fails_with_5_7_30(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), ca_file=tls_files[0],
                         without=("REQUIRETLS",))
    [outcome] = done.outcomes
    assert (outcome.result, outcome.status) == ("failed", "5.7.30")
    assert outcome.reply.startswith("550 5.7.30 REQUIRETLS support required: localhost[127.0.0.1]:")
    assert outcome.reply.endswith("does not offer REQUIRETLS under TLS (RFC 8689 4.2.1)")
    assert peer.messages == [] and peer.tls_sessions <= 1


def test_an_mx_validated_by_nothing_is_never_tried(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), mode=None, ca_file=tls_files[0])
    [outcome] = done.outcomes
    assert (outcome.result, outcome.status) == ("failed", "5.7.30")
    assert outcome.reply == (
        "550 5.7.30 REQUIRETLS support required: no MX host of s.test (localhost) is "
        "validated by DNSSEC or by an MTA-STS policy (RFC 8689 4.2.1)")
    assert peer.connections == 0


def test_unsigned_mx_records_do_not_validate(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), mode=None, dnssec=INSECURE,
                         ca_file=tls_files[0])
    assert done.outcomes[0].status == "5.7.30" and peer.connections == 0


def test_a_testing_policy_that_does_not_list_the_mx(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), mode=Mode.TESTING, mx=("*.example.net",),
                         ca_file=tls_files[0])
    assert done.outcomes[0].status == "5.7.30" and peer.connections == 0


def test_an_untrusted_certificate_fails_with_5_7_10_and_no_fallback(
        tls_files: tuple[Path, Path]) -> None:
    # A testing policy would otherwise retry without verification.
    done, peer = deliver(server_context(*tls_files), mode=Mode.TESTING)
    [outcome] = done.outcomes
    assert (outcome.result, outcome.status) == ("failed", "5.7.10")
    assert outcome.reply.startswith("550 5.7.10 REQUIRETLS: no TLS as required with localhost "
                                    "(RFC 8689 4.2.1): "), outcome.reply
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.reply
    assert peer.connections == 1 and peer.messages == []


def test_no_starttls_fails_with_5_7_10(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(None, mode=Mode.TESTING, ca_file=tls_files[0])
    [outcome] = done.outcomes
    assert (outcome.result, outcome.status) == ("failed", "5.7.10")
    assert "TLS is required, but localhost[127.0.0.1]:" in outcome.reply
    assert peer.messages == []


def test_no_answer_is_transient_as_always(tls_files: tuple[Path, Path]) -> None:
    done, _ = deliver(server_context(*tls_files), ca_file=tls_files[0], port=free_port())
    [outcome] = done.outcomes
    assert outcome.result == "deferred" and outcome.status == "4.4.1"


# -------------------------------------------------------------- relay host


def relay(peer_tls: ssl.SSLContext, ca: Path, without: tuple[str, ...] = ()) -> Delivery:
    async def main() -> Delivery:
        peer = await CorePeer(starttls=peer_tls, without=without).start()
        rd = remote(None, 0, relay=RelayHost("localhost", peer.port, tls=TLSPolicy.MAY),
                    ca_file=ca)
        done = await rd.deliver("s.test", msg("b@s.test", requiretls=True))
        await rd.close()
        await peer.stop()
        return done
    out: Delivery = run(main())
    return out


def test_the_relay_host_counts_as_validated(tls_files: tuple[Path, Path]) -> None:
    done = relay(server_context(*tls_files), tls_files[0])
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" verified")
    done = relay(server_context(*tls_files), tls_files[0], without=("REQUIRETLS",))
    assert done.outcomes[0].status == "5.7.30"


# --------------------------------------------------------- TLS-Required: No


NO = {"tls_required_no": True}


def test_tls_required_no_ignores_an_enforced_mta_sts_policy(tls_files: tuple[Path, Path]) -> None:
    # The certificate is not trusted: without the header field this is deferred.
    done, _ = deliver(server_context(*tls_files), message={})
    assert done.outcomes[0].result == "deferred" and done.outcomes[0].status == "4.7.5"
    done, peer = deliver(server_context(*tls_files), message=NO)
    assert done.outcomes[0].result == "delivered"
    assert done.tls is not None and done.tls.endswith(" unverified")   # TLS still used
    assert peer.messages[0].params[0].requiretls is False


def test_tls_required_no_without_starttls_and_a_verify_policy() -> None:
    done, peer = deliver(None, mode=None, message=NO, tls_policies={"s.test": TLSPolicy.VERIFY})
    assert done.outcomes[0].result == "delivered" and done.tls is None
    assert len(peer.messages) == 1


def test_tls_required_no_ignores_dane(tls_files: tuple[Path, Path]) -> None:
    # TLSA records that match nothing: DANE defers, the header field delivers.
    def answers(port: int) -> dict[tuple[str, str], tuple[str, bool, list[str]]]:
        name = f"_{port}._tcp.localhost"
        return {**SECURE, (name, "TLSA"): (
            "NOERROR", True, [f"{name} 60 IN TLSA 3 1 1 " + "00" * 32])}
    done, _ = deliver(server_context(*tls_files), mode=None, dnssec=answers, message={})
    assert done.outcomes[0].result == "deferred" and "DANE" in done.outcomes[0].reply
    done, _ = deliver(server_context(*tls_files), mode=None, dnssec=answers, message=NO)
    assert done.outcomes[0].result == "delivered"


def test_requiretls_wins_over_the_header_field(tls_files: tuple[Path, Path]) -> None:
    done, peer = deliver(server_context(*tls_files), mode=None,
                         message={"requiretls": True, "tls_required_no": True})
    assert done.outcomes[0].status == "5.7.30" and peer.connections == 0


def tlsa(record: str) -> Callable[[int], dict[tuple[str, str], tuple[str, bool, list[str]]]]:
    def answers(port: int) -> dict[tuple[str, str], tuple[str, bool, list[str]]]:
        name = f"_{port}._tcp.localhost"
        return {**SECURE, (name, "TLSA"): ("NOERROR", True, [f"{name} 60 IN TLSA {record}"])}
    return answers


def spki_sha256(cert: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return digest.finalize().hex()


def test_a_dane_matched_certificate_needs_no_trusted_ca(tls_files: tuple[Path, Path]) -> None:
    # RFC 8689 4.2.1 allows RFC 7672 authentication: DANE-EE, no CA file here.
    done, peer = deliver(server_context(*tls_files), mode=None,
                         dnssec=tlsa(f"3 1 1 {spki_sha256(tls_files[0])}"))
    assert done.outcomes[0].result == "delivered", done.outcomes[0].reply
    assert peer.messages[0].params[0].requiretls is True


def test_unusable_tlsa_records_leave_pkix_to_do(tls_files: tuple[Path, Path]) -> None:
    # PKIX-EE (usage 1) is unusable for SMTP: DANE asks TLS only, REQUIRETLS a
    # certificate verified for the MX name.
    record = f"1 1 1 {spki_sha256(tls_files[0])}"
    done, peer = deliver(server_context(*tls_files), mode=None, dnssec=tlsa(record))
    assert done.outcomes[0].status == "5.7.10" and "CERTIFICATE_VERIFY_FAILED" in \
        done.outcomes[0].reply
    done, peer = deliver(server_context(*tls_files), mode=None, dnssec=tlsa(record),
                         ca_file=tls_files[0])
    assert done.outcomes[0].result == "delivered", done.outcomes[0].reply
    assert done.tls is not None and done.tls.endswith(" verified")
