"""REQUIRETLS and ``TLS-Required: No`` (RFC 8689) carried from the receiver to
remote delivery: the envelope's tags in the queue (schema 7), the message the
queue manager hands out, the delivery agents' JSON, and the failure report of
a REQUIRETLS message, which is itself sent with REQUIRETLS (RFC 8689 §5)."""

from __future__ import annotations

import asyncio
import io
import sqlite3

from pillarbox.deliver.agent import message_from_json, message_to_json
from pillarbox.deliver.outbound import OutboundMessage, OutboundRecipient, Outcome
from pillarbox.queue.ipc import envelope_from_json, envelope_to_json
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import new_id
from pillarbox.store.sqlite.schema import SCHEMA_VERSION
from pillarbox.store.sqlite.store import SQLiteStore
from tests.unit.test_queue_manager import (
    ALICE,
    BODY,
    ScriptedRemote,
    inbox,
    manager,
    open_store,
    report_parts,
    run_queue,
)

REMOTE = "carol@remote.test"


def enqueue(store: SQLiteStore, sender: str = ALICE, **tags: bool) -> str:
    queue_id = new_id()
    writer = store.new_blob(queue_id)
    writer.write(BODY)
    envelope = Envelope(sender, (EnvelopeRecipient(REMOTE),), "192.0.2.7", "client.test", **tags)
    asyncio.run(store.enqueue(queue_id, writer, envelope))
    return queue_id


def test_the_schema_has_the_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    try:
        columns = {r[1]: r for r in store.reader.execute("PRAGMA table_info(queue)")}
        assert columns["requiretls"][4] == "0" and columns["tls_required_no"][4] == "0"
        version = store.reader.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION >= 7
    finally:
        store.close()


def test_tags_survive_the_queue(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    try:
        plain = enqueue(store)
        required = enqueue(store, requiretls=True)
        relaxed = enqueue(store, tls_required_no=True)
        got = {e.id: (e.requiretls, e.tls_required_no) for e in store.queue_select()}
        assert got == {plain: (False, False), required: (True, False), relaxed: (False, True)}
        entry = store.queue_get(required)
        assert entry is not None and entry.requiretls and not entry.tls_required_no
    finally:
        store.close()


def test_migration_7_from_a_schema_6_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    qid = enqueue(store)
    store.close()
    # Make it the database a schema-6 Pillarbox left: without the columns.
    conn = sqlite3.connect(tmp_path / "data" / "pillarbox.db")
    conn.execute("ALTER TABLE queue DROP COLUMN requiretls")
    conn.execute("ALTER TABLE queue DROP COLUMN tls_required_no")
    conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path / "data").open()
    try:
        entry = store.queue_get(qid)
        assert entry is not None and not entry.requiretls and not entry.tls_required_no
        assert store.queue_get(enqueue(store, requiretls=True)).requiretls  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_manager_hands_the_tags_to_remote_delivery(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    try:
        enqueue(store, requiretls=True)
        enqueue(store, tls_required_no=True)
        remote = ScriptedRemote(lambda d, m: [Outcome(r.idx, "delivered", "250 ok", "2.0.0")
                                              for r in m.recipients])
        run_queue(manager(store, remote))
        assert sorted((m.requiretls, m.tls_required_no) for _, m, _ in remote.calls) == [
            (False, True), (True, False)]
    finally:
        store.close()


def test_the_failure_report_is_protected_as_the_message_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(tmp_path)
    try:
        # A local sender: the report lands in the INBOX, and its entry was tagged.
        enqueue(store, requiretls=True)
        reply = ("550 5.7.30 REQUIRETLS support required: mx.remote.test[192.0.2.25]:25 "
                 "does not offer REQUIRETLS under TLS (RFC 8689 4.2.1)")
        remote = ScriptedRemote(lambda d, m: [Outcome(r.idx, "failed", reply, "5.7.30",
                                                      "mx.remote.test") for r in m.recipients])
        run_queue(manager(store, remote), rounds=2)
        [report] = inbox(store, ALICE)
        text, blocks, _ = report_parts(report)
        assert blocks[1]["Status"] == "5.7.30"
        assert "Your message asked for REQUIRETLS (RFC 8689)" in text

        # A remote sender: the report goes out by remote delivery, with REQUIRETLS.
        enqueue(store, sender="dave@elsewhere.test", requiretls=True)
        seen: list[OutboundMessage] = []

        def script(domain: str, m: OutboundMessage) -> list[Outcome]:
            seen.append(m)
            if m.reverse_path:          # the message: fails; the report: is taken
                return [Outcome(r.idx, "failed", reply, "5.7.30") for r in m.recipients]
            return [Outcome(r.idx, "delivered", "250 ok", "2.0.0") for r in m.recipients]

        run_queue(manager(store, ScriptedRemote(script)), rounds=2)
        [message, bounce] = seen
        assert message.requiretls and message.reverse_path == "dave@elsewhere.test"
        assert bounce.reverse_path == "" and bounce.requiretls
        assert [r.address for r in bounce.recipients] == ["dave@elsewhere.test"]
    finally:
        store.close()


def test_the_agents_json_carries_the_tags() -> None:
    message = OutboundMessage("Q", "a@b.test", (OutboundRecipient(0, REMOTE),), 4,
                              lambda: io.BytesIO(b"data"), requiretls=True,
                              tls_required_no=False)
    back = message_from_json(message_to_json(message), lambda qid: io.BytesIO(b"data"))
    assert (back.requiretls, back.tls_required_no) == (True, False)
    old = message_to_json(message)
    del old["requiretls"], old["tls_required_no"]      # from an agent of before schema 7
    assert not message_from_json(old, lambda qid: io.BytesIO(b"")).requiretls


def test_the_receivers_ipc_carries_the_tags() -> None:
    envelope = Envelope(ALICE, (EnvelopeRecipient(REMOTE),), "192.0.2.7", "client.test",
                        requiretls=True)
    assert envelope_from_json(envelope_to_json(envelope)) == envelope
