"""The memo of message octets (``access/contents.py``): bounded, and what it
gives back is what was put."""

from __future__ import annotations

from pillarbox.access.contents import Contents


def test_bounded_by_octets_oldest_first_and_small_messages_only():
    memo = Contents(budget=1000, largest=300)
    for uid in range(1, 11):
        memo.put((1, uid, f"b{uid}"), bytes([uid]) * 200)
    kept = [uid for uid in range(1, 11) if (1, uid, f"b{uid}") in memo]
    assert kept[-1] == 10 and len(kept) <= 5 and kept == sorted(kept)
    assert memo.get((1, 10, "b10")) == bytes([10]) * 200
    memo.put((1, 99, "big"), b"x" * 301)
    assert memo.get((1, 99, "big")) is None
    assert memo.get((2, 10, "b10")) is None        # another mailbox: another copy
