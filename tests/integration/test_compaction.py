"""The running server's queue manager compacts sparse segments and loses nothing.

Messages arrive over SMTP from concurrent sessions, so group commits put
several into each segment file.  90 % of them are then removed as EXPUNGE
will do it (mailbox rows deleted, references dropped, ``collect_blobs``),
and the queue manager of a restarted server gives the space back within
seconds of its start.
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from pathlib import Path

from pillarbox.store.sqlite.store import SQLiteStore

ALICE = "alice@example.test"
SESSIONS = 10
PER_SESSION = 60


def _body(tag: str) -> bytes:
    # About 6 KB: the dead space left in shared segments stays well above the
    # least a compaction run is worth (compact.MIN_GAIN), however the group
    # commits happened to batch the messages.
    return (f"From: load@sender.test\r\nTo: {ALICE}\r\nSubject: {tag}\r\n\r\n").encode() + (
        f"{tag} ".encode() * 12 + b"\r\n"
    ) * 80


def _session(port: int, index: int, acked: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in range(PER_SESSION):
            tag = f"s{index}-m{i}"
            client.sendmail("load@sender.test", [ALICE], _body(tag))
            acked.append(tag)


def _blob_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "blobs").rglob("*") if p.is_file())


def test_server_compacts_what_expunge_left_sparse(server_factory):
    server = server_factory()
    acked: list[str] = []
    threads = [threading.Thread(target=_session, args=(server.port, i, acked))
               for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    total = SESSIONS * PER_SESSION
    assert len(acked) == total
    assert server.wait_delivered(total) == total
    server.stop()

    segments = server.query(
        "SELECT segment, count(*) FROM blobs WHERE segment IS NOT NULL GROUP BY segment"
    )
    assert max(n for _, n in segments) > 1        # group commits shared segment files
    rows = server.query("SELECT mailbox, uid, blob FROM messages")
    random.Random(1).shuffle(rows)
    keep, gone = rows[: total // 10], rows[total // 10 :]
    store = SQLiteStore(server.data_dir)
    with store.transaction() as conn:
        conn.executemany("DELETE FROM messages WHERE mailbox = ? AND uid = ?",
                         [(m, u) for m, u, _ in gone])
        conn.executemany("UPDATE blobs SET refs = refs - 1 WHERE id = ?", [(b,) for *_, b in gone])
    store.collect_blobs()
    store.close()
    sparse = _blob_bytes(server.data_dir)

    server.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _blob_bytes(server.data_dir) > sparse * 0.5:
        time.sleep(0.2)
    compacted = _blob_bytes(server.data_dir)
    assert compacted < sparse * 0.5, (sparse, compacted, server.log()[-2000:])
    assert "compacted" in server.log()
    subjects = sorted(
        line[9:].decode() for m in server.inbox(ALICE)
        for line in m.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.startswith(b"Subject: ")
    )
    store = SQLiteStore(server.data_dir)
    expected = sorted(
        store.read_blob(b).split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        for *_, b in keep
    )
    store.close()
    assert subjects == expected and len(subjects) == total // 10
    for message in server.inbox(ALICE):
        tag = message.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert message.endswith(_body(tag).split(b"\r\n\r\n", 1)[1])   # whole, byte for byte
