"""IMAP sessions at the same time: what one does, the others see (RFC 9051 §7,
RFC 2177 IDLE, RFC 7162 VANISHED), across worker processes, and the mailbox
invariants: UIDs strictly ascend and are never reused, UIDVALIDITY stays,
MODSEQ rises on every change."""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, add_account
from tests.integration.imap_client import (
    Raw, append, assert_clean_log, login, message, new_account, status_of,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("imapc") / "data"
    data.mkdir()
    add_account(data, "alice@example.test")
    server = Server(data).start()
    yield server
    server.stop()
    assert_clean_log(server)


def _selected(server: Server, user: str, *, qresync: bool = False) -> Raw:
    raw = Raw(server.imap_port)
    raw.login(user)
    if qresync:
        raw.command("ENABLE QRESYNC")
    assert status_of(raw.command("SELECT INBOX")) == b"OK"
    return raw


def test_sessions_see_each_others_changes_at_the_next_command(srv: Server) -> None:
    user = new_account(srv)
    writer = login(srv, user)
    for i in range(3):
        append(writer, message(f"start {i}"))
    a = _selected(srv, user)
    b = _selected(srv, user)
    q = _selected(srv, user, qresync=True)

    append(writer, message("new"))
    lines = b.command("NOOP")
    assert b"* 4 EXISTS" in lines, lines
    assert q.command("NOOP")[0] == b"* 4 EXISTS"

    lines = b.command("STORE 2 +FLAGS (\\Flagged)")
    assert lines[0].startswith(b"* 2 FETCH (FLAGS (") and b"\\Flagged" in lines[0], lines
    lines = a.command("NOOP")
    assert b"* 4 EXISTS" in lines
    assert any(line.startswith(b"* 2 FETCH (") and b"\\Flagged" in line for line in lines), lines
    lines = q.command("NOOP")
    assert any(re.match(rb"\* 2 FETCH \(UID 2 FLAGS \([^)]*\\Flagged[^)]*\) MODSEQ \(\d+\)\)",
                        line) for line in lines), lines

    # A expunges message 1.  B hears of it at NOOP, not during FETCH, STORE or
    # SEARCH, where its message numbers must stay put (RFC 9051 §7.5.1).
    a.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines = a.command("EXPUNGE")
    # The message was \Recent in this IMAP4rev1 session: the new count follows.
    assert lines[:-1] == [b"* 1 EXPUNGE", b"* 2 RECENT"], lines
    lines = b.command("FETCH 1:* (UID)")
    # Message numbers unchanged: 2..4 are still UIDs 2..4; message 1 is left out and
    # the answer says why (RFC 2180 §4.1.2, RFC 5530 EXPUNGEISSUED).
    assert lines[:-1] == [b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)", b"* 4 FETCH (UID 4)"], lines
    assert lines[-1].split(b" ", 3)[2] == b"[EXPUNGEISSUED]", lines    # OK or NO
    lines = b.command("SEARCH ALL")
    assert lines[0] == b"* SEARCH 2 3 4", lines      # the old numbers, without the gone one
    lines = b.command("NOOP")
    assert b"* 1 EXPUNGE" in lines, lines
    assert b.command("FETCH 1 (UID)")[0] == b"* 1 FETCH (UID 2)"
    # Under QRESYNC the same expunge is VANISHED, by UID (RFC 7162 §3.2.10).
    lines = q.command("NOOP")
    assert lines[:-1] == [b"* VANISHED 1"], lines
    # UID commands may report an expunge right away (RFC 9051 §7.5.1).
    a.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.command("EXPUNGE")
    lines = b.command("UID FETCH 1:* (FLAGS)")
    assert b"* 1 EXPUNGE" in lines, lines
    for raw in (a, b, q):
        raw.close()
    writer.logout()


def test_idle_sessions_hear_at_once(srv: Server) -> None:
    user = new_account(srv)
    writer = login(srv, user)
    append(writer, message("one"))
    append(writer, message("two"))
    plain = _selected(srv, user)
    qresync = _selected(srv, user, qresync=True)
    for raw in (plain, qresync):
        raw.send(b"idle IDLE\r\n")
        assert raw.line().startswith(b"+ ")

    def expect(raw: Raw, wanted: bytes) -> float:
        start = time.monotonic()
        line = raw.line()
        while line.endswith(b" RECENT"):
            line = raw.line()
        assert re.match(wanted, line), (wanted, line)
        return time.monotonic() - start

    ok_select = writer.select("INBOX")
    assert ok_select[0] == "OK"
    start = time.monotonic()
    assert writer.store("1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    assert writer.expunge()[0] == "OK"
    expect(plain, rb"\* 1 FETCH \(")            # the \Deleted flag first
    expect(plain, rb"\* 1 EXPUNGE$")
    expect(qresync, rb"\* 1 FETCH \(UID 1 ")
    expect(qresync, rb"\* VANISHED 1$")
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    append(writer, message("three"))
    expect(plain, rb"\* 2 EXISTS$")
    expect(qresync, rb"\* 2 EXISTS$")
    assert time.monotonic() - start < 1.0
    for raw in (plain, qresync):
        raw.send(b"DONE\r\n")
        assert raw.until("idle")[-1].startswith(b"idle OK")
        raw.close()
    writer.logout()


def _owner_pids(server: Server, clients: list[Raw]) -> list[int | None]:
    """Which process holds the server side of each client's connection (Linux /proc)."""
    inodes: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in lines:
            cols = row.split()
            local, remote, inode = cols[1], cols[2], cols[9]
            if int(local.rsplit(":", 1)[1], 16) == server.imap_port:
                inodes[int(remote.rsplit(":", 1)[1], 16)] = inode
    holders: dict[str, int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    holders.setdefault(target[8:-1], int(pid))
        except OSError:
            continue
    return [holders.get(inodes.get(c.sock.getsockname()[1], ""), None) for c in clients]


def test_smtp_delivery_reaches_idle_sessions_in_every_worker_within_a_second(
        server_factory) -> None:
    server = server_factory({"server.workers": "2"})
    user = "alice@example.test"
    idlers = []
    for _ in range(8):
        raw = Raw(server.imap_port)
        raw.login(user)
        raw.command("SELECT INBOX")
        raw.send(b"idle IDLE\r\n")
        assert raw.line().startswith(b"+ ")
        idlers.append(raw)
    owners = _owner_pids(server, idlers)
    for n in range(2):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
            smtp.sendmail("carol@example.org", [user], message(f"delivered {n}"))
            sent = time.monotonic()
        delays = []
        for raw in idlers:
            line = raw.line()
            assert line == b"* %d EXISTS" % (n + 1), line
            delays.append(time.monotonic() - sent)
            assert raw.line().endswith(b" RECENT")
        assert max(delays) < 1.0, (delays, owners)
    # A burst: twenty messages in one SMTP session; every IDLE session ends at 22.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
        for n in range(20):
            smtp.sendmail("carol@example.org", [user], message(f"burst {n}"))
        sent = time.monotonic()
    for raw in idlers:
        count = 2
        while count < 22:
            line = raw.line()
            assert line, "connection closed"
            if m := re.match(rb"\* (\d+) EXISTS$", line):
                assert int(m[1]) > count, line
                count = int(m[1])
            else:
                assert line.endswith(b" RECENT"), line
    assert time.monotonic() - sent < 3.0
    # An IMAP change made in one worker reaches the IDLE sessions of both.
    writer = login(server, user)
    writer.select("INBOX")
    start = time.monotonic()
    assert writer.store("1", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
    for raw in idlers:
        line = raw.line()
        while line.endswith(b" RECENT"):     # the last of the burst's
            line = raw.line()
        assert line.startswith(b"* 1 FETCH (") and b"\\Flagged" in line, line
    assert time.monotonic() - start < 1.0, (time.monotonic() - start, owners)
    writer.logout()
    # The sessions were in the worker processes (never the queue manager, which delivered).
    supervisor = server.proc.pid if server.proc else None
    assert all(pid is not None and pid != supervisor for pid in owners), owners
    for raw in idlers:
        raw.send(b"DONE\r\n")
        lines = raw.until("idle")
        assert lines[-1].startswith(b"idle OK"), lines
        raw.close()
    server.stop()
    assert_clean_log(server)


def test_uids_ascend_never_reused_and_uidvalidity_stays(server_factory) -> None:
    server = server_factory()
    user = "alice@example.test"
    client = login(server, user)
    validity = client.status("INBOX", "(UIDVALIDITY)")[1][0]
    uids = [append(client, message(f"u{i}")) for i in range(3)]
    assert uids == [1, 2, 3]
    client.select("INBOX")
    client.store("3", "+FLAGS.SILENT", "(\\Deleted)")
    client.expunge()
    assert append(client, message("after expunge")) == 4      # 3 is never given again
    client.logout()

    # Parallel appends from several sessions: every UID distinct and in order.
    results: list[int] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            c = login(server, user)
            for i in range(5):
                results.append(append(c, message(f"parallel {n}.{i}")))
            c.logout()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == list(range(5, 25)), sorted(results)

    server.stop()
    server.start()
    client = login(server, user)
    assert client.status("INBOX", "(UIDVALIDITY)")[1][0] == validity
    client.select("INBOX")
    client.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
    client.expunge()
    assert append(client, message("after restart")) == 25
    other = login(server, user, tls="imaps")
    assert other.status("INBOX", "(UIDVALIDITY)")[1][0] == validity
    other.logout()
    client.logout()
    server.stop()
    assert_clean_log(server)


def test_modseq_rises_on_every_change(srv: Server) -> None:
    user = new_account(srv)
    raw = Raw(srv.imap_port)
    raw.login(user)
    raw.command("ENABLE CONDSTORE")

    def highest(mailbox: str = "INBOX") -> int:
        line = raw.command(f"STATUS {mailbox} (HIGHESTMODSEQ)")[0]
        return int(re.search(rb"HIGHESTMODSEQ (\d+)", line)[1])  # type: ignore[index]

    seen = [highest()]

    def changed(command: str, mailbox: str = "INBOX") -> list[bytes]:
        lines = raw.command(command)
        assert status_of(lines) == b"OK", lines
        now = highest(mailbox)
        assert now > seen[-1], (command, seen, now)
        seen.append(now)
        return lines

    for i in range(3):
        changed("APPEND INBOX {5+}\r\nmsg %d" % i)
    raw.command("SELECT INBOX")
    lines = changed("STORE 1 +FLAGS (\\Seen)")
    first = int(re.search(rb"MODSEQ \((\d+)\)", lines[0])[1])  # type: ignore[index]
    lines = changed("STORE 1 +FLAGS ($Work)")
    fetch = [line for line in lines if b" FETCH " in line]
    second = int(re.search(rb"MODSEQ \((\d+)\)", fetch[0])[1])  # type: ignore[index]
    assert second > first
    changed("STORE 1 -FLAGS ($Work)")
    changed("STORE 2 FLAGS (\\Answered)")
    changed("COPY 2 INBOX")          # a copy into the same mailbox is a new message
    changed("STORE 3 +FLAGS.SILENT (\\Deleted)")
    changed("EXPUNGE")
    changed("MOVE 1 Archive")
    # A STORE that changes nothing does not move MODSEQ (RFC 7162 §3.1.3).
    changed("STORE 1 +FLAGS.SILENT (\\Answered \\Flagged)")
    before = highest()
    assert status_of(raw.command("STORE 1 +FLAGS.SILENT (\\Flagged)")) == b"OK"
    assert highest() == before
    lines = raw.command("FETCH 1:* (MODSEQ)")
    modseqs = [int(m[1]) for m in (re.search(rb"MODSEQ \((\d+)\)", line) for line in lines) if m]
    assert modseqs and max(modseqs) <= highest()
    raw.close()


def test_connection_session_and_failure_limits(server_factory) -> None:
    server = server_factory({"imap.max_connections_per_account": "2",
                             "imap.max_connections_per_ip": "4",
                             "auth.max_failures_per_ip": "3", "auth.failure_delay": "0"})
    user = "alice@example.test"
    first, second, third = (Raw(server.imap_port) for _ in range(3))
    first.login(user)
    second.login(user)
    lines = third.command(f"LOGIN {user} secret")
    assert status_of(lines) == b"NO" and b"[LIMIT]" in lines[-1], lines
    first.command("LOGOUT")
    first.close()
    # The slot comes back when a session ends.
    assert wait_for_login(third, user)
    # Per client address: with four open (second, third, fourth, fifth), the next
    # connection is turned away.
    fourth = Raw(server.imap_port)
    fifth = Raw(server.imap_port)
    sixth = Raw(server.imap_port)
    assert fourth.greeting.startswith(b"* OK") and fifth.greeting.startswith(b"* OK")
    assert sixth.greeting.startswith(b"* BYE [UNAVAILABLE]"), sixth.greeting
    assert sixth.closed()
    for raw in (second, third, fifth, sixth):
        raw.close()
    # Failed logins: after three, refused without checking, even the right password.
    for n in range(3):
        lines = fourth.command(f"LOGIN {user} wrong{n}")
        assert b"[AUTHENTICATIONFAILED]" in lines[-1], lines
    lines = fourth.command(f"LOGIN {user} secret")
    assert status_of(lines) == b"NO" and b"[LIMIT]" in lines[-1], lines
    fourth.close()


def wait_for_login(raw: Raw, user: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status_of(raw.command(f"LOGIN {user} secret")) == b"OK":
            return True
        time.sleep(0.1)
    return False


def test_shutdown_says_bye_to_every_session(server_factory) -> None:
    server = server_factory()
    idle = Raw(server.imap_port)
    idle.login("alice@example.test")
    idle.command("SELECT INBOX")
    idle.send(b"i IDLE\r\n")
    assert idle.line().startswith(b"+")
    fresh = Raw(server.imap_port)
    server.stop()
    for raw in (idle, fresh):
        line = raw.line()
        assert line.startswith(b"* BYE") and b"shutting down" in line, line
        assert raw.closed()


class _Model:
    """A client's picture of the selected mailbox: UID by message number, kept
    up to date only from untagged responses (RFC 9051 §7.4, RFC 7162 §3.2.10)."""

    def __init__(self, uids: list[int | None]) -> None:
        self.uids = uids

    def apply(self, lines: list[bytes]) -> None:
        for line in lines:
            if m := re.match(rb"\* (\d+) EXPUNGE$", line):
                del self.uids[int(m[1]) - 1]
            elif m := re.match(rb"\* VANISHED (?!\(EARLIER\))(\S+)$", line):
                gone = _uid_set(m[1])
                self.uids = [u for u in self.uids if u not in gone]
            elif m := re.match(rb"\* (\d+) EXISTS$", line):
                n = int(m[1])
                assert n >= len(self.uids), (line, len(self.uids))
                self.uids += [None] * (n - len(self.uids))
            elif m := re.match(rb"\* (\d+) FETCH \(.*UID (\d+)", line):
                seq, uid = int(m[1]), int(m[2])
                assert self.uids[seq - 1] in (None, uid), (line, self.uids)
                self.uids[seq - 1] = uid


def _uid_set(text: bytes) -> set[int]:
    out: set[int] = set()
    for part in text.split(b","):
        a, _, b = part.partition(b":")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _truth(raw: Raw) -> list[int]:
    lines = raw.command("FETCH 1:* (UID)")
    if lines[-1].split()[1] == b"BAD":     # an empty mailbox has no 1:*
        return []
    return [int(re.match(rb"\* \d+ FETCH \(UID (\d+)\)", line)[1])  # type: ignore[index]
            for line in lines[:-1]]


def test_message_numbers_stay_right_through_random_concurrent_changes(srv: Server) -> None:
    import random

    rng = random.Random(20261201)
    user = new_account(srv)
    writer = Raw(srv.imap_port)
    writer.login(user)
    for i in range(10):
        writer.command("APPEND INBOX {6+}\r\nmsg %02d" % i)
    writer.command("SELECT INBOX")
    watchers = {"plain": _selected(srv, user), "qresync": _selected(srv, user, qresync=True),
                "idle": _selected(srv, user)}
    models = {name: _Model(_truth(raw)) for name, raw in watchers.items()}
    counter = 10
    for round_ in range(25):
        idle = watchers["idle"]
        idle.send(b"idle IDLE\r\n")
        assert idle.line().startswith(b"+")
        for _ in range(rng.randint(1, 3)):
            n = len(_truth(writer))
            op = rng.choice(["append", "expunge", "move", "uidexpunge", "flags"])
            if op == "append" or n < 3:
                for _ in range(rng.randint(1, 3)):
                    counter += 1
                    writer.command("APPEND INBOX {6+}\r\nmsg %02d" % (counter % 100))
            elif op == "expunge":
                chosen = sorted(rng.sample(range(1, n + 1), rng.randint(1, min(3, n))))
                writer.command(f"STORE {','.join(map(str, chosen))} +FLAGS.SILENT (\\Deleted)")
                writer.command("EXPUNGE")
            elif op == "move":
                writer.command(f"MOVE {rng.randint(1, n)} Archive")
            elif op == "uidexpunge":
                uids = _truth(writer)
                chosen = rng.sample(uids, 2)
                writer.command(f"UID STORE {chosen[0]},{chosen[1]} +FLAGS.SILENT (\\Deleted)")
                writer.command(f"UID EXPUNGE {chosen[0]}")     # only one of them goes
            else:
                writer.command(f"STORE {rng.randint(1, n)} +FLAGS (\\Flagged)")
        time.sleep(0.05)
        idle.send(b"DONE\r\n")
        models["idle"].apply(idle.until("idle"))
        for name in ("plain", "qresync"):
            models[name].apply(watchers[name].command("NOOP"))
        truth = _truth(writer)
        for name, raw in watchers.items():
            seen = _truth(raw)
            assert seen == truth, (round_, name, seen, truth)
            known = models[name].uids
            assert len(known) == len(truth), (round_, name, known, truth)
            assert all(k in (None, t) for k, t in zip(known, truth)), (round_, name, known, truth)
            models[name].uids = list(truth)
    for raw in (*watchers.values(), writer):
        raw.close()


def test_concurrent_stores_lose_no_flag(srv: Server) -> None:
    user = new_account(srv)
    client = login(srv, user)
    for i in range(20):
        append(client, message(f"f{i}"))
    client.logout()
    errors: list[BaseException] = []

    def worker(keyword: str) -> None:
        try:
            c = login(srv, user)
            c.select("INBOX")
            for n in range(1, 21):
                assert c.store(str(n), "+FLAGS.SILENT", f"({keyword})")[0] == "OK"
            c.logout()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in
               ("\\Seen", "\\Flagged", "$One", "$Two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    raw = _selected(srv, user)
    lines = raw.command("FETCH 1:* (FLAGS)")
    assert len(lines) == 21
    for line in lines[:-1]:
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", line)[1].split())  # type: ignore[index]
        assert {b"\\Seen", b"\\Flagged", b"$One", b"$Two"} <= flags, line
    raw.close()
