"""``pillarbox queue list|show|retry|hold|release|bounce|shape``, run in-process.

The data is made as the queue manager leaves it (entries deferred after
attempts, with per-recipient replies); ``tests/integration/test_queue_remote.py``
runs the same commands beside a running server.
"""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from pillarbox.admin import queue as service
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.sqlite.store import SQLiteStore
from tests.unit.test_cli import MESSAGE, Pbx, enqueue, pbx, usage_error  # noqa: F401

IDS = ["0000000000001AAAAA", "0000000000002BBBBB", "0000000000003CCCCC"]
NOW = time.time()


@pytest.fixture
def queued(pbx: Pbx) -> Pbx:  # noqa: F811
    """Three entries:

    0. deferred, from sender@remote.example to two recipients at far.example
       (one tried twice, with a two-line reply) and one at near.example;
    1. active, a report (null sender) to someone@far.example;
    2. held, from other@remote.example to x@near.example, a day old.
    """
    store = pbx.store()
    enqueue(store, IDS[0], Envelope("sender@remote.example", (
        EnvelopeRecipient("a@far.example", "FAILURE"),
        EnvelopeRecipient("b@Far.Example"),
        EnvelopeRecipient("c@near.example", "NEVER")), "192.0.2.1", "client.example"))
    enqueue(store, IDS[1], Envelope("", (EnvelopeRecipient("someone@far.example"),),
                                    "127.0.0.1", "localhost"))
    enqueue(store, IDS[2], Envelope("other@remote.example",
                                    (EnvelopeRecipient("x@near.example"),),
                                    "192.0.2.2", "client2.example"))
    with store.transaction() as conn:
        conn.execute("UPDATE queue SET state = 'deferred', attempts = 2, next_attempt = ?,"
                     " last_reply = '451 4.7.1 greylisted' WHERE id = ?", (NOW + 600, IDS[0]))
        conn.execute(
            "UPDATE recipients SET attempts = 2, last_attempt = ?, status_code = '4.7.1',"
            " remote_mta = 'mx.far.example', warned = 1,"
            " last_reply = '451-4.7.1 greylisted\n451 4.7.1 come back later'"
            " WHERE queue_id = ? AND idx = 0", (NOW - 60, IDS[0]))
        conn.execute("UPDATE recipients SET status = 'delivered', last_reply = '250 2.0.0 Ok'"
                     " WHERE queue_id = ? AND idx = 1", (IDS[0],))
        conn.execute("UPDATE queue SET next_attempt = ? WHERE id = ?", (NOW + 60, IDS[1]))
        conn.execute("UPDATE queue SET state = 'hold', arrived = ? WHERE id = ?",
                     (NOW - 86400, IDS[2]))
    store.close()
    return pbx


def ids_listed(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:-1]]


def test_list_filters_by_state_domain_and_sender(queued: Pbx) -> None:
    assert ids_listed(queued.ok("queue", "list")) == IDS
    assert ids_listed(queued.ok("queue", "list", "--state", "deferred")) == IDS[:1]
    assert ids_listed(queued.ok("queue", "list", "--state", "hold")) == IDS[2:]
    # Domains of recipients still to deliver (b@Far.Example is delivered already).
    assert ids_listed(queued.ok("queue", "list", "--domain", "FAR.example")) == IDS[:2]
    assert ids_listed(queued.ok("queue", "list", "--domain", "near.example")) == [IDS[0], IDS[2]]
    assert ids_listed(queued.ok("queue", "list", "--sender", "<>")) == IDS[1:2]
    assert ids_listed(queued.ok("queue", "list", "--sender", "Other@remote.example")) == IDS[2:]
    out = queued.ok("queue", "list", "--domain", "nowhere.example")
    assert out == "no entries match\n"
    usage_error(["queue", "list", "--state", "frozen"])
    assert "'bad..name' has an empty label" in queued.fails("queue", "list", "--domain",
                                                            "bad..name")


def test_show_gives_each_recipients_state_attempts_reply_and_next_try(queued: Pbx) -> None:
    out = queued.ok("queue", "show", IDS[0])
    assert "state:          deferred" in out and "attempts:       2" in out
    lines = out.splitlines()
    first = lines.index("  0  <a@far.example>  pending  NOTIFY=FAILURE")
    facts = lines[first + 1]
    assert "attempts 2" in facts and "last try " in facts and "next try " in facts
    assert "by mx.far.example" in facts and "delay reported" in facts
    assert lines[first + 2:first + 4] == ["       451-4.7.1 greylisted",
                                          "       451 4.7.1 come back later"]
    assert "  1  <b@Far.Example>  delivered" in out and "       250 2.0.0 Ok" in out
    held = queued.ok("queue", "show", IDS[2])
    assert "next attempt:   - (held)" in held and "next try" not in held


def due(pbx: Pbx, ident: str) -> tuple[str, float]:
    store = pbx.store()
    try:
        entry = store.queue_get(ident)
        assert entry is not None
        return entry.state, entry.next_attempt
    finally:
        store.close()


def test_retry_makes_entries_due_and_leaves_held_ones(queued: Pbx) -> None:
    out = queued.ok("queue", "retry", IDS[0].lower())
    assert out == f"due now: {IDS[0]}\n"
    state, when = due(queued, IDS[0])
    assert state == "deferred" and when <= time.time()
    queued.ok("queue", "retry", "--domain", "far.example")
    assert due(queued, IDS[1])[1] <= time.time()
    assert queued.ok("queue", "retry", "--all").count("due now:") == 2   # not the held one
    assert due(queued, IDS[2])[0] == "hold"
    assert queued.ok("queue", "retry", IDS[2]) == (
        "nothing to retry (held entries wait for release)\n")
    assert "name the entries" in queued.fails("queue", "retry")
    assert "name the entries" in queued.fails("queue", "retry", IDS[0], "--all")
    assert "no queue entry FFFF" in queued.fails("queue", "retry", "ffff")


def test_hold_and_release(queued: Pbx) -> None:
    assert queued.ok("queue", "hold", "--domain", "far.example") == (
        f"held {IDS[0]}\nheld {IDS[1]}\n")
    assert due(queued, IDS[1])[0] == "hold"
    assert queued.ok("queue", "hold", IDS[0]) == "nothing to hold\n"
    out = queued.ok("queue", "release", "--all")
    assert out == "".join(f"released {i}\n" for i in IDS)
    for ident in IDS:
        state, when = due(queued, ident)
        assert state == "deferred" and when <= time.time()
    assert queued.ok("queue", "release", "--all") == "nothing held\n"


def test_bounce_fails_pending_recipients_with_one_report_per_entry(queued: Pbx) -> None:
    out = queued.ok("queue", "bounce", IDS[0], IDS[2])
    lines = out.splitlines()
    assert lines[:2] == [f"bounced {IDS[0]}", f"bounced {IDS[2]}"]
    assert lines[2].startswith("2 failure reports queued: ")
    report_ids = lines[2].split(": ", 1)[1].split(", ")
    store = queued.store()
    try:
        assert store.queue_get(IDS[0]) is None and store.queue_get(IDS[2]) is None
        first = store.queue_get(report_ids[0])
        assert first is not None and first.reverse_path == "" and first.state == "active"
        assert first.next_attempt <= time.time()       # due: the manager takes it
        assert [r.address for r in first.recipients] == ["sender@remote.example"]
        dsn = email.message_from_bytes(store.read_blob(first.id), policy=email.policy.compat32)
        _, status, returned = dsn.get_payload()
        blocks = status.get_payload()[1:]
        # a@ (FAILURE) is reported; b@ was delivered; c@ said NEVER.
        assert [b["Final-Recipient"] for b in blocks] == ["rfc822;a@far.example"]
        assert blocks[0]["Action"] == "failed" and blocks[0]["Status"] == "5.0.0"
        assert blocks[0]["Diagnostic-Code"] == f"smtp;{service.BOUNCE_REPLY}"
        assert "Subject: Quarterly figures" in returned.get_payload()
        assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    finally:
        store.close()
    # A report (null sender) is never bounced: its failure goes to the postmaster.
    out = queued.ok("queue", "bounce", IDS[1])
    assert out.splitlines()[1].startswith("1 failure report queued: ")
    store = queued.store()
    try:
        [report] = [e for e in store.queue_list() if e.id not in report_ids]
        assert report.reverse_path == ""
        assert [r.address for r in report.recipients] == ["postmaster@localhost"]
    finally:
        store.close()
    assert queued.ok("queue", "bounce", "--domain", "nowhere.example").startswith(
        "nothing to bounce")


def test_shape_counts_messages_by_domain_and_age(queued: Pbx) -> None:
    out = queued.ok("queue", "shape").splitlines()
    assert out[0].startswith("age in minutes")
    head = out[1].split()
    assert head == ["DOMAIN", "T", "5", "10", "20", "40", "80", "160", "320", "640", "1280",
                    "1280+"]
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in out[2:]}
    # far.example: entry 0 (a@ pending) and entry 1, both new; near.example: entry 0 (new)
    # and entry 2 (a day old).
    assert rows["TOTAL"] == [4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert rows["far.example"] == [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert rows["near.example"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    held = queued.ok("queue", "shape", "--state", "hold").splitlines()
    assert [line.split()[0] for line in held[2:]] == ["TOTAL", "near.example"]
    top = queued.ok("queue", "shape", "--top", "1").splitlines()
    assert len(top) == 4


def test_shape_and_list_of_an_empty_queue(pbx: Pbx) -> None:  # noqa: F811
    pbx.ok("domain", "add", "example.com")   # a data directory, with nothing queued
    assert pbx.ok("queue", "list") == "queue is empty\n"
    out = pbx.ok("queue", "shape").splitlines()
    assert out[2].split() == ["TOTAL", "0"] + ["0"] * 10


def test_wake_without_a_server_is_quiet(pbx: Pbx) -> None:  # noqa: F811
    store = SQLiteStore(pbx.folder / "pillarbox-data").open()
    try:
        assert service.wake(store) is False
    finally:
        store.close()
