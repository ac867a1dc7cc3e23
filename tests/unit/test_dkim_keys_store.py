"""DKIM keys: the store's rows and states (migration 5), the administration of
``pillarbox dkim``, and the signing service's key cache (receive/signing.py)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from pillarbox.admin import dkim as admin
from pillarbox.admin.commands import AdminError
from pillarbox.admin.names import InvalidName
from pillarbox.policy.dkim.keyring import key_path
from pillarbox.policy.dkim.verify import verify
from pillarbox.policy.dns import StaticResolver
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.receive.signing import THREAD_OVER, DKIMSigning, author_domains
from pillarbox.store.base import AlreadyExists, NotFound, StoreError
from pillarbox.store.blobs import BlobWriter
from pillarbox.store.dkim_keys import ACTIVE, PENDING, RETIRED
from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys
from pillarbox.store.sqlite.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from pillarbox.store.sqlite.store import SQLiteStore, _statements

T0 = 1_796_000_000.0


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "data").open()
    yield s
    s.close()


@pytest.fixture
def keys(store: SQLiteStore) -> SQLiteDKIMKeys:
    return SQLiteDKIMKeys(store)


# ------------------------------------------------------------------ migration


def _version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                   .fetchone()[0])
    finally:
        conn.close()


def test_a_new_store_has_the_table(store: SQLiteStore, keys: SQLiteDKIMKeys) -> None:
    assert SCHEMA_VERSION >= 5 and _version(store.db_path) == SCHEMA_VERSION
    assert keys.dkim_keys() == [] and keys.dkim_version() == 0


def test_a_version_4_database_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    data = tmp_path / "old"
    data.mkdir()
    conn = sqlite3.connect(data / "pillarbox.db", isolation_level=None)
    conn.executescript(SCHEMA)
    for n in (2, 3, 4):
        for statement in _statements(MIGRATIONS[n]):
            conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '4')")
    conn.execute("INSERT INTO domains (name, created) VALUES ('example.com', 1)")
    conn.close()
    store = SQLiteStore(data).open()
    try:
        assert _version(store.db_path) == SCHEMA_VERSION
        assert [d[0] for d in store.list_domains()] == ["example.com"]
        keys = SQLiteDKIMKeys(store)
        keys.add_dkim_batch("example.com", [("r1", "rsa")], PENDING, T0)
        assert [k.selector for k in keys.dkim_keys()] == ["r1"]
    finally:
        store.close()
    SQLiteStore(data).open().close()     # opening again migrates nothing
    assert _version(data / "pillarbox.db") == SCHEMA_VERSION


# ----------------------------------------------------------------- rows, states


def test_batches_states_and_the_version(keys: SQLiteDKIMKeys) -> None:
    first = keys.add_dkim_batch("example.com", [("r1", "rsa"), ("e1", "ed25519")], PENDING, T0)
    assert [(k.selector, k.state, k.batch) for k in first] == [("r1", PENDING, 1),
                                                              ("e1", PENDING, 1)]
    v1 = keys.dkim_version()
    assert v1 == 1
    active, retired = keys.activate_dkim_batch("example.com", "e1", T0 + 10)
    assert {(k.selector, k.state, k.changed) for k in active} == {
        ("r1", ACTIVE, T0 + 10), ("e1", ACTIVE, T0 + 10)}
    assert retired == [] and keys.dkim_version() == v1 + 1

    keys.add_dkim_batch("example.com", [("r2", "rsa"), ("e2", "ed25519")], PENDING, T0 + 20)
    keys.add_dkim_batch("other.org", [("x", "rsa")], ACTIVE, T0 + 20)
    active, retired = keys.activate_dkim_batch("example.com", "r2", T0 + 30)
    assert sorted(k.selector for k in active) == ["e2", "r2"]
    assert sorted((k.selector, k.state, k.changed) for k in retired) == [
        ("e1", RETIRED, T0 + 30), ("r1", RETIRED, T0 + 30)]
    states = {(k.domain, k.selector): k.state for k in keys.dkim_keys()}
    assert states == {("example.com", "r1"): RETIRED, ("example.com", "e1"): RETIRED,
                      ("example.com", "r2"): ACTIVE, ("example.com", "e2"): ACTIVE,
                      ("other.org", "x"): ACTIVE}      # another domain's keys stay
    assert [k.selector for k in keys.dkim_keys("other.org")] == ["x"]
    # Rolling back: the retired batch signs again, the newer one is retired.
    active, retired = keys.activate_dkim_batch("example.com", "r1", T0 + 40)
    assert sorted(k.selector for k in active) == ["e1", "r1"]
    assert sorted(k.selector for k in retired) == ["e2", "r2"]


def test_an_active_batch_retires_the_keys_that_signed(keys: SQLiteDKIMKeys) -> None:
    keys.add_dkim_batch("example.com", [("r1", "rsa")], ACTIVE, T0)
    keys.add_dkim_batch("example.com", [("r2", "rsa")], ACTIVE, T0 + 5)
    assert {k.selector: (k.state, k.changed) for k in keys.dkim_keys()} == {
        "r1": (RETIRED, T0 + 5), "r2": (ACTIVE, T0 + 5)}
    with pytest.raises(ValueError, match="pending or active"):
        keys.add_dkim_batch("example.com", [("r3", "rsa")], RETIRED, T0)


def test_a_selector_in_use_adds_nothing(keys: SQLiteDKIMKeys) -> None:
    keys.add_dkim_batch("example.com", [("r1", "rsa")], PENDING, T0)
    version = keys.dkim_version()
    with pytest.raises(AlreadyExists, match="example.com already has a DKIM key with selector r1"):
        keys.add_dkim_batch("example.com", [("e9", "ed25519"), ("r1", "rsa")], PENDING, T0)
    assert [k.selector for k in keys.dkim_keys()] == ["r1"] and keys.dkim_version() == version
    keys.add_dkim_batch("other.org", [("r1", "rsa")], PENDING, T0)   # per domain


def test_removal_only_of_keys_that_do_not_sign(keys: SQLiteDKIMKeys) -> None:
    keys.add_dkim_batch("example.com", [("r1", "rsa")], ACTIVE, T0)
    keys.add_dkim_batch("example.com", [("r2", "rsa")], PENDING, T0)
    with pytest.raises(StoreError, match="r1 of example.com is active"):
        keys.remove_dkim_key("example.com", "r1")
    with pytest.raises(NotFound, match="no DKIM key with selector r9"):
        keys.remove_dkim_key("example.com", "r9")
    with pytest.raises(NotFound):
        keys.activate_dkim_batch("example.com", "r9", T0)
    assert keys.remove_dkim_key("example.com", "r2").state == PENDING
    keys.add_dkim_batch("example.com", [("r3", "rsa")], ACTIVE, T0 + 1)
    assert keys.remove_dkim_key("example.com", "r1").state == RETIRED
    assert [k.selector for k in keys.dkim_keys()] == ["r3"]


# ------------------------------------------------------------- administration


def test_keygen_writes_private_files_and_records(store: SQLiteStore, keys: SQLiteDKIMKeys) -> None:
    made = admin.generate(keys, store.data_dir, "Example.COM.", now=T0)
    assert [(p.key.selector, p.key.algorithm, p.key.state) for p in made] == [
        ("r202611", "rsa", PENDING), ("e202611", "ed25519", PENDING)]
    for p in made:
        path = key_path(store.data_dir, "example.com", p.key.selector)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert p.record is not None
        assert p.record.startswith(f"{p.key.selector}._domainkey.example.com. IN TXT \"v=DKIM1; ")
    with pytest.raises(AdminError, match="already has DKIM keys.*dkim rotate example.com"):
        admin.generate(keys, store.data_dir, "example.com")
    with pytest.raises(AdminError, match="new keys waiting"):
        admin.generate(keys, store.data_dir, "example.com", rotate=True)
    with pytest.raises(AdminError, match="no DKIM keys to rotate"):
        admin.generate(keys, store.data_dir, "other.org", rotate=True)
    admin.activate(keys, store.data_dir, "example.com", "r202611")
    rotated = admin.generate(keys, store.data_dir, "example.com", rotate=True, now=T0)
    assert [p.key.selector for p in rotated] == ["r202611b", "e202611b"]


def test_keygen_selectors_and_bad_input(store: SQLiteStore, keys: SQLiteDKIMKeys) -> None:
    made = admin.generate(keys, store.data_dir, "a.example", selector="Mail", activate=True)
    assert [(p.key.selector, p.key.state) for p in made] == [("mail-rsa", ACTIVE),
                                                            ("mail-ed25519", ACTIVE)]
    one = admin.generate(keys, store.data_dir, "b.example", selector="s1", algorithm="ed25519")
    assert [(p.key.selector, p.key.algorithm) for p in one] == [("s1", "ed25519")]
    with pytest.raises(AdminError, match="not a usable selector"):
        admin.generate(keys, store.data_dir, "c.example", selector="a b", algorithm="rsa")
    with pytest.raises(AdminError, match="unknown algorithm 'dsa'"):
        admin.generate(keys, store.data_dir, "c.example", algorithm="dsa")
    with pytest.raises(InvalidName):
        admin.generate(keys, store.data_dir, "bad..example")
    assert [k.domain for k in keys.dkim_keys("c.example")] == []


def test_keygen_leaves_no_file_when_the_store_refuses(store: SQLiteStore, keys: SQLiteDKIMKeys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise StoreError("database is locked")

    monkeypatch.setattr(keys, "add_dkim_batch", refuse)
    with pytest.raises(StoreError):
        admin.generate(keys, store.data_dir, "example.com")
    assert not list((store.data_dir / "dkim" / "example.com").glob("*.pem"))


def test_activate_refuses_a_batch_with_a_broken_file(store: SQLiteStore,
                                                     keys: SQLiteDKIMKeys) -> None:
    made = admin.generate(keys, store.data_dir, "example.com")
    key_path(store.data_dir, "example.com", made[1].key.selector).write_text("garbage")
    with pytest.raises(AdminError, match="not activated: DKIM key .*not an unencrypted PEM"):
        admin.activate(keys, store.data_dir, "example.com", made[0].key.selector)
    assert {k.state for k in keys.dkim_keys()} == {PENDING}
    with pytest.raises(AdminError, match="no DKIM key with selector zz"):
        admin.activate(keys, store.data_dir, "example.com", "zz")
    listed = admin.published(keys, store.data_dir, "example.com")
    assert [p.record is None for p in listed] == [True, False]
    removed = admin.remove(keys, store.data_dir, "example.com", made[1].key.selector)
    assert removed.state == PENDING
    assert not key_path(store.data_dir, "example.com", made[1].key.selector).exists()


def test_publish_until_is_the_overlap_after_retirement(keys: SQLiteDKIMKeys) -> None:
    keys.add_dkim_batch("example.com", [("r1", "rsa")], ACTIVE, T0)
    keys.add_dkim_batch("example.com", [("r2", "rsa")], ACTIVE, T0 + 100)
    by = {k.selector: k for k in keys.dkim_keys()}
    assert admin.publish_until(by["r1"], 7 * 86400) == T0 + 100 + 7 * 86400
    assert admin.publish_until(by["r2"], 7 * 86400) is None


# ------------------------------------------------------------ signing service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _message(body: bytes = b"Hello.\r\n") -> bytes:
    return (b"Received: from x by y; Tue, 01 Dec 2026 10:00:00 +0000\r\n"
            b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n"
            b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
            + body)


def _dns(made: list[admin.PublishedKey]) -> StaticResolver:
    resolver = StaticResolver()
    for p in made:
        assert p.record is not None
        name, _, strings = p.record.partition(". IN TXT ")
        resolver.add(name, "TXT", "".join(strings[1:-1].split('" "')))
    return resolver


def test_signing_follows_the_store_at_most_every_check(store: SQLiteStore, keys: SQLiteDKIMKeys,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    signing = DKIMSigning(keys, store.data_dir, check_every=2.0, clock=clock)
    assert signing.signers(["example.com"]) == [] and not signing.has_keys()
    made = admin.generate(keys, store.data_dir, "example.com", activate=True)
    clock.now += 1.0
    assert signing.signers(["example.com"]) == []        # not looked again yet
    clock.now += 1.5
    got = signing.signers(["other.org", "example.com"])
    assert sorted(s.selector for s in got) == sorted(p.key.selector for p in made)
    # Nothing changed: the rows are not read again.
    calls: list[str | None] = []
    original = keys.dkim_keys

    def counted(domain: str | None = None) -> list:  # type: ignore[type-arg]
        calls.append(domain)
        return original(domain)

    keys.dkim_keys = counted  # type: ignore[method-assign]
    clock.now += 5
    assert len(signing.signers(["example.com"])) == 2 and calls == []
    # A rotation switches after activate.
    rotated = admin.generate(keys, store.data_dir, "example.com", rotate=True)
    clock.now += 5
    assert {s.selector for s in signing.signers(["example.com"])} == {p.key.selector for p in made}
    admin.activate(keys, store.data_dir, "example.com", rotated[0].key.selector)
    clock.now += 5
    assert {s.selector for s in signing.signers(["example.com"])} == {
        p.key.selector for p in rotated}
    # An unreadable key is logged and left out; the other still signs.
    key_path(store.data_dir, "example.com", rotated[0].key.selector).unlink()
    keys.add_dkim_batch("unrelated.example", [("u", "rsa")], PENDING, T0)   # raises the version
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="pillarbox.dkim"):
        left = signing.signers(["example.com"])
    assert [s.selector for s in left] == [rotated[1].key.selector]
    assert "dkim key unusable" in caplog.text


def test_the_store_failing_keeps_the_keys_we_have(store: SQLiteStore, keys: SQLiteDKIMKeys,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    signing = DKIMSigning(keys, store.data_dir, clock=clock)
    admin.generate(keys, store.data_dir, "example.com", activate=True)
    assert len(signing.signers(["example.com"])) == 2

    def broken() -> int:
        raise sqlite3.OperationalError("disk I/O error")

    keys.dkim_version = broken  # type: ignore[method-assign]
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="pillarbox.dkim"):
        assert len(signing.signers(["example.com"])) == 2
    assert "dkim keys not read" in caplog.text


@pytest.mark.parametrize("body_size", [100, THREAD_OVER + 10, (1 << 20) + 5000])
def test_sign_a_spooled_message(store: SQLiteStore, keys: SQLiteDKIMKeys, tmp_path: Path,
                                body_size: int) -> None:
    """Small messages signed from the write buffer, large ones from the spool file
    (in a thread, read in chunks): both verify."""
    made = admin.generate(keys, store.data_dir, "example.com", activate=True)
    signing = DKIMSigning(keys, store.data_dir)
    line = b"0123456789 abcdefghij\r\n"
    message = _message(line * (body_size // len(line) + 1))
    writer = BlobWriter(tmp_path / "blob")
    for i in range(0, len(message), 7000):
        writer.write(message[i : i + 7000])
    fields = asyncio.run(signing.sign(writer, signing.signers(["example.com"])))
    assert fields.count(b"DKIM-Signature:") == 2
    writer.prepend(fields)
    signed = writer.content()
    assert signed is not None and signed == fields + message
    results = asyncio.run(verify(signed, _dns(made)))
    assert [r.result.value for r in results] == ["pass", "pass"]
    assert asyncio.run(signing.sign(writer, [])) == b""
    writer.discard()


def test_author_domains() -> None:
    senders: list[Mailbox | str] = [Mailbox("a", "Example.COM"), "(no address)",
                                    Mailbox("b", "example.com"), Mailbox("c", "bücher.example")]
    assert author_domains(senders) == ["example.com", "xn--bcher-kva.example"]
