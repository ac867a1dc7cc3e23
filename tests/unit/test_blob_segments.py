"""Segment files: the small messages of one group commit share a file."""

from __future__ import annotations

from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.blobs import new_id, segment_separator, write_segment
from pillarbox.store.sqlite.store import SQLiteStore


def test_segment_blobs_are_read_at_their_offset_and_collected_with_the_last(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    segment = new_id()
    messages = {new_id(): b"Subject: one\r\n\r\n1\r\n", new_id(): b"Subject: two\r\n\r\n22\r\n"}
    parts, places, offset = [], {}, 0
    for blob_id, data in messages.items():
        sep = segment_separator(blob_id, len(data))
        offset += len(sep)
        places[blob_id] = (segment, offset)
        parts += [sep, data]
        offset += len(data)
    path = store.blobs.path(segment)
    write_segment(path, parts)
    envelope = Envelope("a@b.test", (EnvelopeRecipient("c@d.test"),), "192.0.2.1", "b.test")
    with store.transaction() as conn:
        for blob_id, data in messages.items():
            store.insert_entry(conn, blob_id, len(data), envelope, segment=places[blob_id])
    assert b"=== pillarbox blob" in path.read_bytes()  # readable by a person
    for blob_id, data in messages.items():
        assert store.read_blob(blob_id) == data
    first, second = messages
    store.queue_delete(first)
    assert path.exists()  # the other message still lives in it
    assert store.read_blob(second) == messages[second]
    store.queue_delete(second)
    assert not path.exists()
    assert store.collect_orphans() == 0
    store.close()


def test_orphan_segment_without_rows_is_collected_at_start(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    path = store.blobs.path(new_id())
    write_segment(path, [b"half a batch"])
    assert store.collect_orphans() == 1
    assert not path.exists()
    store.close()
