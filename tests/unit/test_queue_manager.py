"""The queue manager's bookkeeping of remote delivery, with a RemoteDelivery-shaped peer.

The real ``pillarbox.deliver.remote`` is written beside this; here a scripted
object with the same ``deliver`` method answers, so that what the manager
does with each ``Outcome`` (recipient states, retries, reports, the window of
work in memory) is checked against a real store.  DSNs travel end to end:
they are queued, delivered locally by the same manager, and parsed back with
Python's ``email`` package.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import time
from collections.abc import Callable
from email.message import Message

import pytest

from pillarbox.auth.passwords import make_secrets
from pillarbox.deliver.outbound import Delivery, OutboundMessage, Outcome
from pillarbox.queue.manager import REMOTE_DISABLED, QueueManager
from pillarbox.queue.schedule import Schedule
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import new_id
from pillarbox.store.sqlite.store import SQLiteStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
BODY = b"Subject: hello there\r\nFrom: <alice@example.test>\r\n\r\nThe body.\r\n"

Script = Callable[[str, OutboundMessage], list[Outcome]]


class ScriptedRemote:
    """Has RemoteDelivery's ``deliver``; answers from ``script``, after ``delays``."""

    def __init__(self, script: Script, delays: dict[str, float] | None = None) -> None:
        self.script = script
        self.delays = delays or {}
        self.calls: list[tuple[str, OutboundMessage, bytes]] = []
        self.running = 0
        self.most = 0

    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery:
        with message.open_body() as f:
            body = f.read()
        self.calls.append((domain, message, body))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delays.get(domain, 0.0))
        finally:
            self.running -= 1
        return Delivery(tuple(self.script(domain, message)), tls="TLSv1.3 test")


def every(result: str, reply: str, status: str, mta: str = "mx.remote.test") -> Script:
    return lambda domain, m: [Outcome(r.idx, result, reply, status, mta)  # type: ignore[arg-type]
                              for r in m.recipients]


def open_store(tmp_path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    for address in (ALICE, BOB):
        store.add_account(address, *make_secrets("pw"))
    return store


def enqueue(store: SQLiteStore, recipients: list[str | EnvelopeRecipient], *,
            sender: str = ALICE, body: bytes = BODY, ret: str | None = None,
            envid: str | None = None) -> str:
    queue_id = new_id()
    writer = store.new_blob(queue_id)
    writer.write(body)
    rcpts = tuple(r if isinstance(r, EnvelopeRecipient) else EnvelopeRecipient(r)
                  for r in recipients)
    envelope = Envelope(sender, rcpts, "192.0.2.7", "client.test", dsn_ret=ret, dsn_envid=envid)
    asyncio.run(store.enqueue(queue_id, writer, envelope))
    return queue_id


def manager(store: SQLiteStore, remote: object | None, **kw: object) -> QueueManager:
    m = QueueManager(store, delimiters="+", remote=remote, hostname="mx.example.test",  # type: ignore[arg-type]
                     **kw)  # type: ignore[arg-type]
    m.collect_delay = 0.0
    return m


def run_queue(m: QueueManager, rounds: int = 1) -> None:
    """Make everything due, let the poll take it, and wait until all is recorded."""
    async def go() -> None:
        for _ in range(rounds):
            m.store.queue_set(m.store.queue_ids(), due=0.0, only=("active", "deferred"))
            await m.run_once()
            await m.drain()
    asyncio.run(go())


def inbox(store: SQLiteStore, address: str) -> list[Message]:
    rows = store.reader.execute(
        "SELECT m.prefix, m.blob FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
        " JOIN accounts a ON b.account = a.id WHERE a.address = ? AND b.name = 'INBOX'"
        " ORDER BY m.uid", (address,)).fetchall()
    return [email.message_from_bytes(bytes(p) + store.read_blob(b), policy=email.policy.compat32)
            for p, b in rows]


def report_parts(msg: Message) -> tuple[str, list[Message], Message]:
    """(plain text, [per-message block, per-recipient blocks...], returned part)."""
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, returned = msg.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    return text.get_payload(decode=True).decode(), blocks, returned


# --------------------------------------------------------------------- outcomes


def test_local_and_remote_recipients_each_go_their_way(tmp_path):
    store = open_store(tmp_path)
    remote = ScriptedRemote(every("delivered", "250 2.0.0 Ok: queued as 4711", "2.0.0"))
    qid = enqueue(store, [BOB, "x@remote.test", "y@remote.test", "z@other.test"])
    run_queue(manager(store, remote))
    assert len(inbox(store, BOB)) == 1
    calls = sorted((d, [r.address for r in m.recipients]) for d, m, _ in remote.calls)
    assert calls == [("other.test", ["z@other.test"]),
                     ("remote.test", ["x@remote.test", "y@remote.test"])]
    domain, message, body = remote.calls[0]
    assert body == BODY and message.size == len(BODY) and message.reverse_path == ALICE
    assert [r.idx for r in remote.calls[-1][1].recipients] in ([1, 2], [3])
    assert store.queue_get(qid) is None            # all done: the entry went
    assert store.reader.execute("SELECT refs FROM blobs WHERE id = ?", (qid,)).fetchone() == (1,)
    assert inbox(store, ALICE) == []               # nobody asked for a success report
    store.close()


def test_fresh_mail_to_a_remote_domain_goes_at_once_with_its_exact_body(tmp_path):
    """The fast path: handed over inline (so stored in a segment file with others),
    committed, and dispatched without waiting for the poll."""
    store = open_store(tmp_path)
    remote = ScriptedRemote(every("delivered", "250 2.0.0 Ok", "2.0.0"))
    m = manager(store, remote)

    async def go() -> None:
        run = asyncio.create_task(m.run())
        ids = [enqueue_fresh(m, [f"r{i}@remote.test", BOB]) for i in range(3)]
        deadline = time.monotonic() + 5
        while len(remote.calls) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await m.drain()
        m.stop()
        await run
        assert all(store.queue_get(i) is None for i in ids)
    asyncio.run(go())
    segments = {store.reader.execute("SELECT segment FROM blobs WHERE id = ?",
                                     (msg.queue_id,)).fetchone() for _, msg, _ in remote.calls}
    assert all(row is not None and row[0] for row in segments)   # slices of segment files
    assert [body for _, _, body in remote.calls] == [BODY] * 3
    assert len(inbox(store, BOB)) == 3
    store.close()


def test_a_destination_that_no_server_answered_for_is_suspended_for_a_while(tmp_path):
    """As Postfix suspends a dead destination: after an attempt that no server of
    down.test answered (every MX refused), its other queued messages wait for their
    retry with that reply instead of each opening connections; a message for
    another domain is tried; once the suspension is over the destination is
    tried again, and an answer ends it."""
    store = open_store(tmp_path)
    up = {"down.test": False}

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        if domain == "down.test" and not up["down.test"]:
            return [Outcome(r.idx, "deferred", "451 4.4.1 No answer from mx.down.test "
                            "[192.0.2.7]: connection refused", "4.4.1") for r in m.recipients]
        return [Outcome(r.idx, "delivered", "250 2.0.0 Ok", "2.0.0", f"mx.{domain}")
                for r in m.recipients]

    remote = ScriptedRemote(script)
    m = manager(store, remote, destination_concurrency=1,
                schedule=Schedule(first_retry=0.6, max_retry=3600))   # suspended 0.3 s
    ids = [enqueue(store, [f"u{i}@down.test"]) for i in range(5)]
    other = enqueue(store, ["x@up.test"])
    run_queue(m)
    assert [d for d, _, _ in remote.calls].count("down.test") == 1
    assert store.queue_get(other) is None                       # not held back
    for qid in ids:
        entry = store.queue_get(qid)
        assert entry is not None and entry.state == "deferred"
        assert entry.last_reply.startswith("451 4.4.1 No answer from mx.down.test")
    suspended = [store.queue_get(q).last_reply for q in ids]  # type: ignore[union-attr]
    assert sum("suspended" in r for r in suspended) == 4, suspended
    time.sleep(0.35)
    up["down.test"] = True
    run_queue(m)
    assert [d for d, _, _ in remote.calls].count("down.test") == 6
    assert all(store.queue_get(q) is None for q in ids)
    store.close()


def test_a_deferred_recipient_is_retried_and_the_others_are_not(tmp_path):
    store = open_store(tmp_path)
    replies = iter(["451 4.7.1 Greylisted, try again in 300 seconds",
                    "250 2.0.0 Ok"])

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        if domain == "ok.test":
            return [Outcome(r.idx, "delivered", "250 2.0.0 Ok", "2.0.0") for r in m.recipients]
        reply = next(replies)
        result = "deferred" if reply.startswith("4") else "delivered"
        return [Outcome(r.idx, result, reply, reply.split()[1], "mx.grey.test")  # type: ignore[arg-type]
                for r in m.recipients]

    remote = ScriptedRemote(script)
    m = manager(store, remote, schedule=Schedule(first_retry=300, max_retry=3600))
    qid = enqueue(store, ["a@grey.test", "b@ok.test"])
    before = time.time()
    run_queue(m)
    entry = store.queue_get(qid)
    assert entry is not None and entry.state == "deferred" and entry.attempts == 1
    assert before + 299 < entry.next_attempt < time.time() + 301
    assert entry.last_reply == "451 4.7.1 Greylisted, try again in 300 seconds"
    grey, ok = entry.recipients
    assert (grey.status, grey.attempts, grey.status_code, grey.remote_mta) == (
        "pending", 1, "4.7.1", "mx.grey.test")
    assert ok.status == "delivered" and ok.last_reply == "250 2.0.0 Ok"
    run_queue(m)
    assert [d for d, _, _ in remote.calls] .count("ok.test") == 1   # not sent twice
    assert store.queue_get(qid) is None
    store.close()


def test_a_permanent_failure_is_reported_once_with_only_the_failed_recipient(tmp_path):
    store = open_store(tmp_path)
    reply = "550-5.1.1 The email account that you tried to reach does not exist.\n550 5.1.1 Please check it"

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        return [Outcome(r.idx, "failed", reply, "5.1.1", "mx.remote.test")
                if r.address.startswith("gone") else
                Outcome(r.idx, "delivered", "250 2.0.0 Ok", "2.0.0", "mx.remote.test")
                for r in m.recipients]

    qid = enqueue(store, [
        EnvelopeRecipient("gone@remote.test", "FAILURE", "rfc822;gone@remote.test"),
        "here@remote.test", BOB,
    ], envid="ENV+2B42", ret="HDRS")
    run_queue(manager(store, ScriptedRemote(script)))
    assert store.queue_get(qid) is None
    [dsn] = inbox(store, ALICE)
    assert dsn["Return-Path"] == "<>"               # the null reverse path
    assert dsn["From"].startswith("MAILER-DAEMON@mx.example.test")
    assert dsn["To"] == ALICE and dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    text, blocks, returned = report_parts(dsn)
    assert "gone@remote.test" in text and "here@remote.test" not in text
    for line in reply.splitlines():
        assert f"    {line}" in text                # quoted exactly, line by line
    assert "check the address" in text
    per_message, *per_recipient = blocks
    assert per_message["Reporting-MTA"] == "dns;mx.example.test"
    assert per_message["Original-Envelope-Id"] == "ENV+2B42"
    assert per_message["Arrival-Date"]
    [block] = per_recipient                          # only the failed one
    assert block["Final-Recipient"] == "rfc822;gone@remote.test"
    assert block["Original-Recipient"] == "rfc822;gone@remote.test"
    assert block["Action"] == "failed" and block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns;mx.remote.test"
    # Each line of the reply as it came, on folded lines (RFC 5322 §2.2.3 unfolding).
    unfolded = block["Diagnostic-Code"].replace("\r\n", "").replace("\n", "")
    assert unfolded == "smtp;" + " ".join(line.strip() for line in reply.splitlines())
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: hello there" in returned.get_payload()
    assert "The body." not in returned.get_payload()
    store.close()


def test_notify_success_relayed_and_never(tmp_path):
    store = open_store(tmp_path)

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        out = []
        for r in m.recipients:
            if r.address.startswith("relay"):
                out.append(Outcome(r.idx, "relayed", "250 2.0.0 Ok", "2.0.0", "mx.old.test"))
            elif r.address.startswith("dsn"):
                out.append(Outcome(r.idx, "delivered", "250 2.0.0 Ok", "2.0.0", "mx.new.test"))
            else:
                out.append(Outcome(r.idx, "failed", "550 5.7.1 No", "5.7.1", "mx.old.test"))
        return out

    enqueue(store, [EnvelopeRecipient("relay@old.test", "SUCCESS"),
                    EnvelopeRecipient("dsn@new.test", "SUCCESS,FAILURE"),
                    EnvelopeRecipient("never@old.test", "NEVER"),
                    EnvelopeRecipient(BOB, "SUCCESS")], ret="FULL")
    run_queue(manager(store, ScriptedRemote(script)))
    reports = inbox(store, ALICE)
    actions = sorted(
        (b["Final-Recipient"], b["Action"]) for r in reports for b in report_parts(r)[1][1:]
    )
    # new.test does DSN itself: no word from us; NEVER: nothing even on failure.
    assert actions == [(f"rfc822;{BOB}", "delivered"), ("rfc822;relay@old.test", "relayed")]
    full = [r for r in reports if report_parts(r)[2].get_content_type() == "message/rfc822"]
    assert len(full) == 2                            # RET=FULL: the whole message returned
    assert "The body." in full[0].as_string()
    store.close()


def test_without_remote_delivery_remote_recipients_wait_saying_why(tmp_path):
    store = open_store(tmp_path)
    qid = enqueue(store, ["x@remote.test", BOB])
    run_queue(manager(store, None))
    entry = store.queue_get(qid)
    assert entry is not None and entry.state == "deferred"
    assert entry.last_reply == REMOTE_DISABLED
    assert [(r.status, r.last_reply) for r in entry.recipients] == [
        ("pending", REMOTE_DISABLED), ("delivered", "250 2.0.0 delivered")]
    assert len(inbox(store, BOB)) == 1 and inbox(store, ALICE) == []
    store.close()


def test_delay_warning_once_then_expiry_report(tmp_path):
    store = open_store(tmp_path)
    remote = ScriptedRemote(every("deferred", "421 4.4.2 mx.slow.test: timed out", "4.4.2"))
    m = manager(store, remote, schedule=Schedule(60, 600, lifetime=86400, delay_warning=3600))
    qid = enqueue(store, ["late@slow.test"])
    with store.transaction() as conn:   # it arrived two hours ago
        conn.execute("UPDATE queue SET arrived = ? WHERE id = ?", (time.time() - 7200, qid))
    run_queue(m, rounds=2)
    [warning] = inbox(store, ALICE)
    assert warning["Subject"] == "Delivery Status Notification"
    text, blocks, _ = report_parts(warning)
    assert blocks[1]["Action"] == "delayed" and blocks[1]["Status"] == "4.4.2"
    assert blocks[1]["Will-Retry-Until"]
    assert "421 4.4.2 mx.slow.test: timed out" in text and "keeps trying" in text
    entry = store.queue_get(qid)
    assert entry is not None and entry.recipients[0].warned and entry.attempts == 2
    with store.transaction() as conn:   # now past its lifetime
        conn.execute("UPDATE queue SET arrived = ? WHERE id = ?", (time.time() - 90000, qid))
    run_queue(m)
    assert store.queue_get(qid) is None
    reports = inbox(store, ALICE)
    assert len(reports) == 2
    text, blocks, _ = report_parts(reports[1])
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "4.4.7"
    assert blocks[1]["Diagnostic-Code"] == "smtp;421 4.4.2 mx.slow.test: timed out"
    assert "could not be delivered" in text
    store.close()


def test_a_report_is_never_reported_on_and_an_undeliverable_one_goes_to_the_postmaster(
        tmp_path):
    store = open_store(tmp_path)
    store.add_alias("postmaster@example.test", BOB)
    remote = ScriptedRemote(every("failed", "550 5.1.1 no such user", "5.1.1"))
    m = manager(store, remote, postmaster="postmaster@example.test")
    enqueue(store, ["nobody@remote.test"], sender="")                  # a report, bouncing
    enqueue(store, ["other@remote.test"], sender="")
    run_queue(m)
    to_postmaster = inbox(store, BOB)
    assert len(to_postmaster) == 2 and all(r["Return-Path"] == "<>" for r in to_postmaster)
    assert inbox(store, ALICE) == []
    # A report to the postmaster that fails is dropped: nobody is left to tell.
    enqueue(store, ["postmaster@example.test"], sender="")
    store.remove_alias("postmaster@example.test")
    run_queue(m)
    assert store.queue_list() == [] and len(inbox(store, BOB)) == 2
    store.close()


def test_aliases_that_forward_are_followed_at_delivery(tmp_path):
    """An alias that reaches only other domains, met at delivery and not at RCPT
    (the postmaster's copy of a report, a report to such an alias, an alias changed
    since), sends its targets on as recipients of the entry, ORCPT the alias.  (It
    used to fail as unknown: a report to it was lost.)  An alias that also reaches
    an account is in an entry for the account alone: its remote targets were
    queued at RCPT (receive/forwarding.py), and are not followed a second time."""
    store = open_store(tmp_path)
    store.add_alias("postmaster@example.test", "admin@elsewhere.test")
    store.add_alias("team@example.test", BOB)
    store.add_alias("team@example.test", "carol@elsewhere.test")
    remote = ScriptedRemote(every("delivered", "250 2.0.0 Ok", "2.0.0"))
    m = manager(store, remote, postmaster="postmaster@example.test")
    first = enqueue(store, [EnvelopeRecipient("postmaster@example.test", "SUCCESS,FAILURE"),
                            "admin@elsewhere.test"], sender="")
    second = enqueue(store, ["team@example.test"], sender="")
    run_queue(m)
    calls = [(m.queue_id, [(r.address, r.notify, r.orcpt) for r in m.recipients])
             for _, m, _ in remote.calls]
    assert calls == [(first, [("admin@elsewhere.test", None, None)])]   # once, not twice
    assert len(inbox(store, BOB)) == 1
    assert store.queue_get(second) is None and store.queue_list() == []
    third = enqueue(store, [EnvelopeRecipient("postmaster@example.test", "SUCCESS,FAILURE")],
                    sender="")
    run_queue(m)
    assert [(m.queue_id, [(r.address, r.notify, r.orcpt) for r in m.recipients])
            for _, m, _ in remote.calls[1:]] == [
        (third, [("admin@elsewhere.test", "SUCCESS,FAILURE", "rfc822;postmaster@example.test")])]
    assert store.queue_list() == [] and inbox(store, ALICE) == []
    store.close()


def test_a_report_to_an_alias_that_forwards_reaches_its_outside_mailboxes(tmp_path):
    """A report is queued by the manager, not received: its recipient's aliases are
    expanded as it is made, as RCPT would, so an alias reaching an account and an
    outside mailbox sends the report to both (ORCPT the alias)."""
    store = open_store(tmp_path)
    store.add_alias("team@example.test", BOB)
    store.add_alias("team@example.test", "carol@elsewhere.test")

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        if domain == "remote.test":
            return [Outcome(r.idx, "failed", "550 5.1.1 no such user", "5.1.1", "mx.remote.test")
                    for r in m.recipients]
        return [Outcome(r.idx, "delivered", "250 2.0.0 Ok", "2.0.0", "mx.elsewhere.test")
                for r in m.recipients]

    remote = ScriptedRemote(script)
    enqueue(store, ["gone@remote.test"], sender="team@example.test")
    run_queue(manager(store, remote), rounds=2)
    [(domain, report, body)] = [c for c in remote.calls if c[0] == "elsewhere.test"]
    assert report.reverse_path == ""
    assert [(r.address, r.orcpt) for r in report.recipients] == [
        ("carol@elsewhere.test", "rfc822;team@example.test")]
    assert b"gone@remote.test" in body
    [dsn] = inbox(store, BOB)
    assert dsn["Return-Path"] == "<>" and dsn.get_content_type() == "multipart/report"
    assert store.queue_list() == []
    store.close()


def test_hold_and_delete_take_effect_before_the_next_attempt(tmp_path):
    store = open_store(tmp_path)
    remote = ScriptedRemote(every("delivered", "250 2.0.0 Ok", "2.0.0"), {"slow.test": 0.3})
    m = manager(store, remote)
    ids = [enqueue(store, [f"{n}@slow.test"]) for n in ("a", "b", "c")]

    async def go() -> None:
        store.queue_set(ids, due=0.0)
        m.dispatcher.concurrency = 1          # the others wait behind the first
        await m.run_once()
        await asyncio.sleep(0.1)              # the first attempt is under way
        assert len(remote.calls) == 1
        first = remote.calls[0][1].queue_id
        rest = [i for i in ids if i != first]
        store.queue_set(ids, state="hold")
        store.queue_delete(rest[1])
        await m.drain()
        # The attempt under way finishes and is recorded; the others are not tried.
        assert store.queue_get(first) is None
        held = store.queue_get(rest[0])
        assert held is not None and held.state == "hold" and held.recipients[0].attempts == 0
        assert store.queue_get(rest[1]) is None
    asyncio.run(go())
    assert len(remote.calls) == 1
    store.close()


# --------------------------------------------------------------- concurrency


def test_a_slow_destination_holds_back_neither_other_mail_nor_local_delivery(tmp_path):
    store = open_store(tmp_path)
    remote = ScriptedRemote(every("delivered", "250 2.0.0 Ok", "2.0.0"), {"slow.test": 3.0})
    m = manager(store, remote, destination_concurrency=2)
    for i in range(6):
        enqueue(store, [f"u{i}@slow.test"])
    fast = enqueue(store, ["a@fast.test"])
    local = enqueue(store, [BOB])

    async def go() -> float:
        store.queue_set(store.queue_ids(), due=0.0)
        start = time.monotonic()
        await m.run_once()
        while store.queue_get(fast) is not None or store.queue_get(local) is not None:
            await asyncio.sleep(0.02)
            assert time.monotonic() - start < 2.0, "held back by the slow destination"
        took = time.monotonic() - start
        assert remote.most <= 3                  # 2 to slow.test, 1 to fast.test
        await m.drain()
        return took

    assert asyncio.run(go()) < 1.0
    assert store.queue_list() == []
    store.close()


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_huge_deferred_queue_keeps_memory_bounded_and_fresh_mail_prompt(tmp_path):
    """200,000 deferred entries, all due, to one slow destination (Postfix's qmgr
    case): the manager holds a bounded window of them, and fresh mail, local and
    remote, is delivered at once meanwhile."""
    store = open_store(tmp_path)
    n = 200_000
    now = time.time()
    segment = new_id()
    path = store.blobs.path(segment)
    path.write_bytes(BODY)
    ids = [f"{i:013X}00000" for i in range(1, n + 1)]
    with store.transaction() as conn:
        conn.executemany("INSERT INTO blobs (id, size, refs, segment, offset) VALUES (?, ?, 1, ?, 0)",
                         [(i, len(BODY), segment) for i in ids])
        conn.executemany(
            "INSERT INTO queue (id, reverse_path, size, arrived, client_address, helo, state,"
            " attempts, next_attempt) VALUES (?, ?, ?, ?, '192.0.2.1', 'c.test', 'deferred', 1, ?)",
            [(i, ALICE, len(BODY), now - 600, now - 1) for i in ids])
        conn.executemany(
            "INSERT INTO recipients (queue_id, idx, address, status) VALUES (?, 0, ?, 'pending')",
            [(i, f"user{k % 1000}@slow.test") for k, i in enumerate(ids)])
    remote = ScriptedRemote(every("deferred", "451 4.4.1 slow", "4.4.1"),
                            {"slow.test": 0.5, "fast.test": 0.0})
    m = manager(store, remote, active_limit=2000, concurrency=50, destination_concurrency=20)

    async def go() -> tuple[float, float, int]:
        base = rss_bytes()
        run = asyncio.create_task(m.run())
        await asyncio.sleep(3.0)                       # the poll is busy with the backlog
        most = 0
        latencies = []
        for k in range(5):
            local = enqueue_fresh(m, [BOB])
            far = enqueue_fresh(m, ["someone@fast.test"])
            start = time.monotonic()
            # Not a timing: the backlog at slow.test's pace (20 at a time,
            # 0.5 s each) would take over an hour, so fresh mail delivered
            # while nearly all of it is untried did not wait for it.  The
            # generous bound is for a loaded machine, not a speed test.
            while store.queue_get(local) is not None or not any(
                    msg.queue_id == far for _, msg, _ in remote.calls):
                most = max(most, m.dispatcher.in_memory)
                await asyncio.sleep(0.01)
                assert time.monotonic() - start < 60.0, "fresh mail waited for the backlog"
            assert len(remote.calls) < n // 10, "fresh mail waited for the backlog"
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.3)
            most = max(most, m.dispatcher.in_memory)
        grown = rss_bytes() - base
        m.stop()
        await run
        return max(latencies), grown, most

    _, grown, most = asyncio.run(go())
    assert 500 <= most <= 2000 + 20                   # the window (full), plus the fresh ones
    assert len(remote.calls) > 50                     # the backlog was being worked on
    assert grown < 40 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"
    assert len(inbox(store, BOB)) == 5
    # What the window could not take was deferred untried, saying why; its recipients
    # keep their own last reply for the report an expiry would send.
    count = store.reader.execute
    assert count("SELECT count(*) FROM queue WHERE last_reply LIKE '451 4.4.5 %'").fetchone()[0]
    assert count("SELECT count(*) FROM recipients WHERE last_reply LIKE '451 4.4.5 %'"
                 ).fetchone()[0] == 0
    store.close()


def enqueue_fresh(m: QueueManager, recipients: list[str]) -> str:
    """Hand a message to the manager as a worker does (inline payload, the fast path)."""
    queue_id = new_id()
    frame = {"op": "enqueue", "blob": queue_id, "path": str(m.store.blobs.path(queue_id)),
             "size": len(BODY), "inline": True, "payload": BODY,
             "envelope": {"reverse_path": ALICE, "client_address": "192.0.2.9",
                          "helo": "c.test", "recipients": [{"address": r} for r in recipients]}}
    asyncio.ensure_future(m.handle(frame))
    return queue_id


def test_a_failed_forwarded_copy_is_reported_to_the_original_sender(tmp_path):
    """A forwarded copy's reverse path is an SRS address of ours (receive/srs.py);
    its report goes where that address stands for, through ``return_path``."""
    from pillarbox.receive.srs import SRS

    store = open_store(tmp_path)
    srs = SRS((b"secret of the test",))
    rewritten = srs.forward(ALICE, "example.test")

    def script(domain: str, m: OutboundMessage) -> list[Outcome]:
        return [Outcome(r.idx, "failed", "550 5.1.1 no such user", "5.1.1", "mx.remote.test")
                for r in m.recipients]

    enqueue(store, ["gone@remote.test"], sender=rewritten)
    run_queue(manager(store, ScriptedRemote(script), return_path=lambda a: srs.return_path(
        a, store.directory().is_local_domain)))
    [dsn] = inbox(store, ALICE)
    assert dsn["To"] == ALICE
    assert "gone@remote.test" in report_parts(dsn)[0]
    store.close()
