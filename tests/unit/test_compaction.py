"""Segment compaction gives back the space of expunged messages, and loses nothing.

There is no EXPUNGE yet; messages are removed as it will do it: delete the
``messages`` rows, decrement ``blobs.refs``, then ``collect_blobs``.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.deliver.local import deliver_batch
from pillarbox.queue.manager import QueueManager
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import new_id, segment_separator, write_segment
from pillarbox.store.sqlite.compact import Compaction, compact, segment_usage
from pillarbox.store.sqlite.delivery import SQLiteDelivery
from pillarbox.store.sqlite.store import SQLiteStore

ALICE = "alice@example.test"


def message(i: int, size: int = 1000) -> bytes:
    head = f"From: a@b.test\r\nTo: {ALICE}\r\nSubject: message {i}\r\n\r\n".encode()
    line = f"{i:08d} ".encode() * 8 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def blobs_bytes(store: SQLiteStore) -> int:
    """The sum of the sizes of every file under ``blobs/``."""
    return sum(p.stat().st_size for p in Path(store.blobs.root).rglob("*") if p.is_file())


def open_store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    store.add_account(ALICE, hash_password("pw"))
    return store


def fill(store: SQLiteStore, n: int, per_segment: int, size: int = 1000) -> dict[str, bytes]:
    """Receive ``n`` small messages as the queue manager does, and deliver them to Alice."""
    envelope = Envelope("a@b.test", (EnvelopeRecipient(ALICE),), "192.0.2.1", "b.test")
    sent: dict[str, bytes] = {}
    for start in range(0, n, per_segment):
        segment = new_id()
        parts: list[bytes] = []
        places: dict[str, tuple[str, int]] = {}
        offset = 0
        for i in range(start, min(n, start + per_segment)):
            blob_id, data = new_id(), message(i, size)
            separator = segment_separator(blob_id, len(data))
            offset += len(separator)
            places[blob_id] = (segment, offset)
            parts += (separator, data)
            offset += len(data)
            sent[blob_id] = data
        write_segment(store.blobs.path(segment), parts)
        with store.transaction() as conn:
            for blob_id, place in places.items():
                store.insert_entry(conn, blob_id, len(sent[blob_id]), envelope, segment=place)
            delivered, failures = deliver_batch(SQLiteDelivery(store, conn), list(places), "+")
        assert len(delivered) == len(places) and not failures
    return sent


def expunge(store: SQLiteStore, blob_ids: list[str]) -> None:
    """What EXPUNGE will do: the mailbox rows go, the blobs lose a reference."""
    with store.transaction() as conn:
        rows = {b: (m, u) for m, u, b in conn.execute("SELECT mailbox, uid, blob FROM messages")}
        conn.executemany(
            "DELETE FROM messages WHERE mailbox = ? AND uid = ?", [rows[b] for b in blob_ids]
        )
        conn.executemany("UPDATE blobs SET refs = refs - 1 WHERE id = ?", [(b,) for b in blob_ids])
    store.collect_blobs()


def compact_all(store: SQLiteStore, **limits: int) -> int:
    runs = 0
    while compact(store, min_gain=0, **limits) is not None:
        runs += 1
        assert runs < 1000
    return runs


def segments(store: SQLiteStore) -> set[str]:
    return {r[0] for r in store.reader.execute("SELECT DISTINCT segment FROM blobs")}


def test_separator_bytes_counted_in_sql_match_the_separator_lines(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 30, 10, size=700)
    for use in segment_usage(store):
        assert use.live == use.file_size   # nothing dead yet: live bytes are the whole file
    assert sum(len(segment_separator(b, len(d))) + len(d) for b, d in sent.items()) == sum(
        u.live for u in segment_usage(store)
    )
    assert compact(store, min_gain=0) is None   # nothing sparse
    store.close()


def test_ninety_percent_expunged_gives_the_space_back_and_keeps_every_live_message(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 600, 100)        # six segments of ~100 KB
    before = blobs_bytes(store)
    ids = list(sent)
    random.Random(6).shuffle(ids)
    kept, gone = ids[:60], ids[60:]
    expunge(store, gone)
    assert blobs_bytes(store) == before  # collect_blobs alone frees nothing: every segment lives
    old = segments(store)
    assert compact_all(store) >= 1
    after = blobs_bytes(store)
    live = sum(len(segment_separator(b, len(sent[b]))) + len(sent[b]) for b in kept)
    assert after == live                 # exactly the live blobs and their separator lines
    assert after < before * 0.11
    assert not (segments(store) & old)   # every old segment file is gone
    for blob_id in kept:
        assert store.read_blob(blob_id) == sent[blob_id]
    assert store.collect_orphans() == 0  # nothing left behind
    new = store.blobs.path(segments(store).pop()).read_bytes()
    assert new.startswith(b"=== pillarbox blob ")   # still readable by a person
    store.close()


def test_everything_expunged_leaves_no_segment(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 200, 50)
    expunge(store, list(sent))
    assert blobs_bytes(store) == 0       # collect_blobs removes segments with no row
    assert compact(store, min_gain=0) is None
    store.close()


def test_dense_segments_are_left_alone_and_the_run_is_bounded(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 400, 50)          # eight segments
    ids = list(sent)
    expunge(store, ids[:10])             # segment 1: 80 % live, not sparse
    expunge(store, [b for i, b in enumerate(ids[50:]) if i % 10])  # the others: 10 % live
    first = Compaction.plan(store, min_gain=0, max_segments=3)
    assert first is not None and len(first.old) == 3 and first.limited
    untouched = {u.segment for u in segment_usage(store) if u.blobs == 40}
    assert len(untouched) == 1
    compact_all(store, max_segments=3)
    assert untouched <= segments(store)  # the dense one is still there
    for blob_id in ids[10:50] + [b for i, b in enumerate(ids[50:]) if not i % 10]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()


def test_crash_before_the_repoint_leaves_the_new_file_an_orphan(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 100, 50)
    ids = list(sent)
    expunge(store, ids[10:])
    run = Compaction.plan(store, min_gain=0)
    assert run is not None
    run.write()                          # new file on disk, fsync'd: then the crash
    assert run.path.exists()
    for blob_id in ids[:10]:
        assert store.read_blob(blob_id) == sent[blob_id]   # rows still name the old files
    assert store.collect_orphans() == 1  # the start-up clean-up takes the new file
    assert not run.path.exists()
    for blob_id in ids[:10]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()


def test_crash_after_the_repoint_leaves_the_old_files_orphans(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 100, 50)
    ids = list(sent)
    expunge(store, ids[10:])
    old = segments(store)
    run = Compaction.plan(store, min_gain=0)
    assert run is not None
    run.write()
    with store.transaction() as conn:
        run.repoint(conn)                # committed: then the crash, before the unlinks
    assert all(store.blobs.path(s).exists() for s in old)
    for blob_id in ids[:10]:
        assert store.read_blob(blob_id) == sent[blob_id]   # read from the new file
    assert store.collect_orphans() == len(old)
    for blob_id in ids[:10]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()


def test_a_reader_that_looked_up_before_the_switch_reads_from_the_new_file(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 100, 50)
    ids = list(sent)
    expunge(store, ids[5:])
    stale = {b: store.blob_location(b) for b in ids[:5]}
    compact_all(store)
    assert not any(loc and loc[0].exists() for loc in stale.values())  # old files unlinked
    looked_up = store.blob_location

    def slow_reader(blob_id: str):      # the first lookup happened before the switch
        location = stale.pop(blob_id, None)
        return location if location is not None else looked_up(blob_id)

    store.blob_location = slow_reader   # type: ignore[method-assign]
    for blob_id in ids[:5]:
        assert store.read_blob(blob_id) == sent[blob_id]
    assert not stale                    # every read did start from the stale place
    store.close()


def test_blobs_that_die_during_the_copy_are_not_resurrected(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 100, 50)
    ids = list(sent)
    expunge(store, ids[20:])
    run = Compaction.plan(store, min_gain=0)
    assert run is not None
    run.write()
    expunge(store, ids[:10])             # IMAP expunges half of the copied ones meanwhile
    with store.transaction() as conn:
        run.repoint(conn)
    report = run.finish()
    assert report.blobs == 10
    assert store.reader.execute("SELECT count(*) FROM blobs").fetchone()[0] == 10
    for blob_id in ids[10:20]:
        assert store.read_blob(blob_id) == sent[blob_id]
    # All of them dying meanwhile: the new file, named by no row, goes too.
    run = Compaction.plan(store, min_gain=0, fraction=1.01)
    assert run is not None
    run.write()
    expunge(store, ids[10:20])
    with store.transaction() as conn:
        run.repoint(conn)
    run.finish()
    assert blobs_bytes(store) == 0
    store.close()


def test_the_queue_manager_compacts_through_its_committer(tmp_path):
    store = open_store(tmp_path)
    sent = fill(store, 2000, 500, size=1200)    # four segments of 600 KB
    ids = list(sent)
    expunge(store, [b for i, b in enumerate(ids) if i % 10])
    before = blobs_bytes(store)

    async def run() -> object:
        manager = QueueManager(store, delimiters="+")
        return await manager.compact()

    report = asyncio.run(run())
    assert report is not None and report.segments == 4 and report.blobs == 200
    assert blobs_bytes(store) == before - report.gained
    assert blobs_bytes(store) < before * 0.2
    for blob_id in ids[::10]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()


@pytest.mark.slow
def test_one_hundred_thousand_small_messages(tmp_path):
    """The measurement reported in docs/architecture.md (N from PILLARBOX_COMPACT_N)."""
    n = int(os.environ.get("PILLARBOX_COMPACT_N", "100000"))
    store = open_store(tmp_path)
    sent = fill(store, n, 500, size=800)
    full = blobs_bytes(store)
    ids = list(sent)
    expunge(store, [b for i, b in enumerate(ids) if i % 10])
    before = blobs_bytes(store)
    import time

    started = time.monotonic()
    runs = compact_all(store)
    elapsed = time.monotonic() - started
    after = blobs_bytes(store)
    print(f"\n{n} messages: {full} bytes; 90 % expunged: {before} bytes; compacted in {runs}"
          f" runs, {elapsed:.2f} s: {after} bytes")
    assert after < before * 0.11
    for blob_id in ids[::1000]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()


def test_collect_blobs_and_compaction_never_touch_a_segment_being_committed(tmp_path):
    """The queue manager writes and fsyncs a new segment before its rows commit.

    In that window ``collect_blobs`` (the CLI, IMAP expunge, another process)
    and compaction must leave it alone: both go only by rows, and nothing
    ever adds rows to an existing segment.
    """
    store = open_store(tmp_path)
    sent = fill(store, 100, 50)
    ids = list(sent)
    pending_segment = new_id()
    pending = {new_id(): message(1000 + i) for i in range(5)}
    parts, places, offset = [], {}, 0
    for blob_id, data in pending.items():
        separator = segment_separator(blob_id, len(data))
        offset += len(separator)
        places[blob_id] = (pending_segment, offset)
        parts += (separator, data)
        offset += len(data)
    path = store.blobs.path(pending_segment)
    write_segment(path, parts)           # prepare of the next group commit: no rows yet
    cli = SQLiteStore(store.data_dir)    # another process's view
    expunge(cli, ids[5:])                # collect_blobs from there
    assert compact(cli, min_gain=0) is not None
    cli.close()
    assert path.read_bytes() == b"".join(parts)
    envelope = Envelope("a@b.test", (EnvelopeRecipient(ALICE),), "192.0.2.1", "b.test")
    with store.transaction() as conn:    # the commit lands
        for blob_id, place in places.items():
            store.insert_entry(conn, blob_id, len(pending[blob_id]), envelope, segment=place)
    for blob_id, data in pending.items():
        assert store.read_blob(blob_id) == data
    for blob_id in ids[:5]:
        assert store.read_blob(blob_id) == sent[blob_id]
    store.close()
