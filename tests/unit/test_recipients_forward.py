"""Aliases to other domains: expansion (deliver/recipients.py) and what the
receiving session queues for them (receive/forwarding.py, receive/srs.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.deliver.recipients import MAX_ALIAS_DEPTH, Verdict, resolve
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.forwarding import Forwarding
from pillarbox.receive.session import ReceiverContext, Session
from pillarbox.receive.srs import SRS
from pillarbox.store.base import Account
from pillarbox.store.directory import Directory
from pillarbox.store.sqlite.store import SQLiteStore


def directory(accounts: list[str], aliases: dict[str, list[str]],
              domains: tuple[str, ...] = ("ours.test", "also.test")) -> Directory:
    found = {a: Account(i + 1, a, a.rpartition("@")[2]) for i, a in enumerate(accounts)}
    return Directory(lambda d: d in domains, found.get, lambda s: aliases.get(s, []))


def test_an_alias_mixes_local_and_remote_targets() -> None:
    d = directory(["alice@ours.test", "bob@also.test"], {
        "team@ours.test": ["alice@ours.test", "Carol@Far.example", "crew@also.test"],
        "crew@also.test": ["bob@also.test", "dave@far.example", "carol@far.example"],
    })
    r = resolve(d, "Team", "OURS.test", "+")
    assert r.verdict is Verdict.LOCAL
    assert [a.address for a in r.accounts] == ["alice@ours.test", "bob@also.test"]
    assert r.forwards == ("Carol@Far.example", "dave@far.example", "carol@far.example")
    # Sub-address and catch-all reach forwards as they reach accounts.
    assert resolve(d, "team+x", "ours.test", "+").forwards == r.forwards


def test_only_remote_targets_resolve_to_forward() -> None:
    d = directory([], {"fwd@ours.test": ["x@far.example"], "@also.test": ["y@far.example"],
                       "ghosts@ours.test": ["nobody@ours.test"]})
    r = resolve(d, "fwd", "ours.test", "+")
    assert (r.verdict, r.accounts, r.forwards) == (Verdict.FORWARD, (), ("x@far.example",))
    assert resolve(d, "anyone", "also.test", "+").forwards == ("y@far.example",)
    assert resolve(d, "ghosts", "ours.test", "+").verdict is Verdict.UNKNOWN
    assert resolve(d, "x", "far.example", "+").verdict is Verdict.REMOTE


def test_recursion_stays_bounded_with_forwards() -> None:
    chain = {f"a{i}@ours.test": [f"a{i + 1}@ours.test", f"r{i}@far.example"]
             for i in range(MAX_ALIAS_DEPTH + 5)}
    chain["loop@ours.test"] = ["loop@ours.test", "z@far.example"]
    d = directory([], chain)
    r = resolve(d, "a0", "ours.test", "+")
    assert r.verdict is Verdict.FORWARD
    # Depth-first, to MAX_ALIAS_DEPTH levels below the address, each found once.
    assert sorted(r.forwards) == sorted(f"r{i}@far.example" for i in range(MAX_ALIAS_DEPTH + 1))
    assert resolve(d, "loop", "ours.test", "+").forwards == ("z@far.example",)


# ------------------------------------------------------------- the session


def drive(session: Session, core: SMTPServerConnection, data: bytes) -> list[bytes]:
    core.receive_data(data)
    while True:
        event = core.next_event()
        if event is ev.NEED_DATA or event is ev.PAUSED:
            break
        if not session.answer_now(event) and isinstance(event, ev.MessageEnd):
            core.respond(asyncio.run(session.message_end(event)))
    # One line per reply (the continuation lines of EHLO's left out).
    return [line for line in core.data_to_send().split(b"\r\n")[:-1] if line[3:4] != b"-"]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteStore(tmp_path / "data").open()
    s.add_domain("ours.test")
    s.add_account("alice@ours.test", hash_password("pw"))
    s.add_alias("team@ours.test", "alice@ours.test")
    s.add_alias("team@ours.test", "carol@far.example")
    s.add_alias("fwd@ours.test", "dave@far.example")
    yield s
    s.close()


def session(store: SQLiteStore, forwarding: Forwarding | None) -> tuple[Session, SMTPServerConnection]:
    ctx = ReceiverContext(store=store, hostname="mx.ours.test", recipient_delimiter="+",
                          min_free_space=0, forwarding=forwarding)
    core = SMTPServerConnection("mx.ours.test", Limits())
    core.greeting()
    core.data_to_send()
    return Session(ctx, core, "192.0.2.7"), core


def test_forwarded_copy_is_its_own_entry_with_an_srs_sender(store: SQLiteStore,
                                                            tmp_path: Path) -> None:
    srs = SRS((b"test secret",))
    s, core = session(store, Forwarding(srs, "mx.ours.test"))
    lines = drive(s, core, b"EHLO client.test\r\nMAIL FROM:<Bob@sender.example>\r\n"
                  b"RCPT TO:<team@ours.test> NOTIFY=FAILURE\r\nRCPT TO:<fwd@ours.test>\r\n"
                  b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    assert lines[-1].startswith(b"250 2.0.0 Ok: queued as ")
    main_id = lines[-1].rsplit(b" ", 1)[1].decode()
    entries = {e.id: e for e in store.queue_list()}
    assert len(entries) == 2
    main = entries.pop(main_id)
    copy = next(iter(entries.values()))
    assert main.reverse_path == "Bob@sender.example"
    assert [r.address for r in main.recipients] == ["team@ours.test"]
    assert copy.reverse_path.startswith("SRS0=") and copy.reverse_path.endswith("@ours.test")
    assert srs.reverse(copy.reverse_path.rpartition("@")[0]) == "Bob@sender.example"
    assert [(r.address, r.notify, r.orcpt) for r in copy.recipients] == [
        ("carol@far.example", "FAILURE", "rfc822;team@ours.test"),
        ("dave@far.example", None, "rfc822;fwd@ours.test"),
    ]
    # The same message (no key: unsealed, nothing added).
    assert store.blobs.path(copy.id).read_bytes() == store.blobs.path(main_id).read_bytes()


def test_only_forwards_and_the_null_sender(store: SQLiteStore) -> None:
    s, core = session(store, Forwarding(SRS((b"k",)), "mx.ours.test"))
    lines = drive(s, core, b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<fwd@ours.test>\r\n"
                  b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    assert lines[-1].startswith(b"250 2.0.0 Ok: queued as ")
    [copy] = store.queue_list()
    assert copy.id == lines[-1].rsplit(b" ", 1)[1].decode()
    assert copy.reverse_path == ""
    assert [r.address for r in copy.recipients] == ["dave@far.example"]
    assert store.blobs.all_ids() == {copy.id}          # the received blob went


def test_bounces_to_srs_addresses_are_reversed_or_refused(store: SQLiteStore) -> None:
    srs = SRS((b"k",))
    s, core = session(store, Forwarding(srs, "mx.ours.test"))
    good = srs.forward("bob@sender.example", "ours.test")
    local = good.rpartition("@")[0]
    tampered = local.replace("=sender.example=", "=evil.example=")
    lines = drive(s, core, (
        f"EHLO far.example\r\nMAIL FROM:<>\r\nRCPT TO:<{tampered}@ours.test>\r\n"
        f"RCPT TO:<{local.lower()}@OURS.test>\r\n"
        f"DATA\r\nSubject: bounce\r\n\r\nbody\r\n.\r\n").encode())
    assert lines[2].startswith(b"550 5.1.1 No such user here: SRS address with a hash")
    assert lines[3].startswith(b"250 2.1.5")
    [entry] = store.queue_list()
    assert [r.address for r in entry.recipients] == ["bob@sender.example"]


def test_without_forwarding_remote_only_aliases_are_unknown(store: SQLiteStore) -> None:
    s, core = session(store, None)
    lines = drive(s, core, b"EHLO client.test\r\nMAIL FROM:<bob@sender.example>\r\n"
                  b"RCPT TO:<fwd@ours.test>\r\nRCPT TO:<SRS0=abcd=AA=x.example=y@ours.test>\r\n")
    assert lines[2].startswith(b"550 5.1.1") and lines[3].startswith(b"550 5.1.1")


# ------------------------------------------------------- sealing decisions


def _signers() -> dict[str, list]:  # type: ignore[type-arg]
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from pillarbox.policy.dkim.sign import Signer

    return {
        "ours.test": [Signer("ours.test", "ed", ed25519.Ed25519PrivateKey.generate())],
        "host.test": [Signer("host.test", "rsa", rsa.generate_private_key(65537, 1024))],
    }


MESSAGE = (b"Received: from client.test\r\n\tby mx.host.test; Wed, 2 Dec 2026 05:00:00 +0000\r\n"
           b"Authentication-Results: mx.host.test; spf=pass smtp.mailfrom=bob@sender.example\r\n"
           b"From: bob@sender.example\r\nTo: team@ours.test\r\nSubject: s\r\n\r\nbody\r\n")


def _copies(store: SQLiteStore, forwarding: Forwarding, domain: str) -> bytes:
    from pillarbox.receive.forwarding import Forward
    from pillarbox.store.base import Envelope, EnvelopeRecipient

    source = store.new_blob("source-blob")
    source.write(MESSAGE)
    template = Envelope("bob@sender.example", (), "192.0.2.7", "client.test")
    [(queue_id, envelope)] = asyncio.run(forwarding.enqueue_copies(
        [Forward(domain, EnvelopeRecipient(f"team@{domain}"), ("x@far.example",))],
        source, template, authserv_id="mx.host.test",
        is_local_domain=lambda d: d in ("ours.test", "also.test"),
        new_blob=store.new_blob, enqueue=store.enqueue))
    source.discard()
    assert envelope.reverse_path.startswith("SRS0=")
    return store.blobs.path(queue_id).read_bytes()


def test_sealed_with_the_host_domains_rsa_key_when_the_alias_domain_has_none(
        store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    keys = _signers()
    forwarding = Forwarding(SRS((b"k",)), "mx.host.test",
                            lambda domains: [s for d in domains for s in keys.get(d, [])])
    copy = _copies(store, forwarding, "ours.test")      # its key is Ed25519: cannot seal
    assert copy.startswith(b"ARC-Seal: i=1; a=rsa-sha256; t=")
    assert b" d=host.test; s=rsa;" in copy.split(b"\r\n", 1)[0]
    assert (b"ARC-Authentication-Results: i=1; mx.host.test;\r\n\tspf=pass "
            b"smtp.mailfrom=bob@sender.example\r\nReceived: ") in copy
    assert copy.endswith(MESSAGE)
    assert "arc not sealed" not in caplog.text
    # Too large to seal in memory: copied as it is, and said so.
    forwarding.max_seal_size = 10
    assert _copies(store, forwarding, "ours.test") == MESSAGE
    [why] = [getattr(r, "pbx_fields", {}).get("reason") for r in caplog.records
             if r.getMessage() == "arc not sealed"]
    assert why == "larger than 10 octets"


def test_without_an_rsa_key_unsealed_and_logged_once_per_domain(
        store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    keys = _signers()
    del keys["host.test"]
    forwarding = Forwarding(SRS((b"k",)), "mx.host.test",
                            lambda domains: [s for d in domains for s in keys.get(d, [])])
    with caplog.at_level("INFO"):
        assert _copies(store, forwarding, "ours.test") == MESSAGE
        assert _copies(store, forwarding, "ours.test") == MESSAGE
        assert _copies(store, forwarding, "also.test") == MESSAGE
    logged = [getattr(r, "pbx_fields", {}).get("domain") for r in caplog.records
              if r.getMessage() == "arc not sealed"]
    assert logged == ["ours.test", "also.test"]
