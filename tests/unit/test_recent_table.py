"""The workers' shared \\Recent table (store/sqlite/recent.py)."""

from __future__ import annotations

import multiprocessing

import pytest

from pillarbox.store.sqlite.recent import Busy, Gone, RecentTable


def test_first_claim_starts_at_the_column_and_later_claims_continue() -> None:
    table = RecentTable(slots=7)
    assert table.claim(3, 10, lambda: 4) == (4, 10)
    assert table.claim(3, 10, lambda: pytest.fail("read again")) == (10, 10)   # nothing left
    assert table.claim(3, 8, lambda: pytest.fail("read again")) == (8, 8)
    assert table.claim(3, 15, lambda: pytest.fail("read again")) == (10, 15)


def test_a_gone_mailbox() -> None:
    with pytest.raises(Gone):
        RecentTable(slots=7).claim(3, 10, lambda: None)


def test_a_slot_is_taken_over_only_once_its_claims_are_written() -> None:
    table = RecentTable(slots=7)
    assert table.claim(3, 10, lambda: 1) == (1, 10)
    with pytest.raises(Busy):            # 10 shares the slot of 3, whose claim is unwritten
        table.claim(10, 5, lambda: 1)
    table.written(3, 10)
    assert table.claim(10, 5, lambda: 2) == (2, 5)
    # 3 comes back with the column's value, which its claim reached.
    table.written(10, 5)
    assert table.claim(3, 12, lambda: 10) == (10, 12)


def _claimer(table: RecentTable, mailbox: int, rounds: int, out: multiprocessing.Queue) -> None:
    got = []
    for up_to in range(2, rounds + 2):
        first, end = table.claim(mailbox, up_to, lambda: 1)
        got.extend(range(first, end))
    out.put(got)


def test_processes_never_claim_the_same_uid() -> None:
    table = RecentTable(slots=101)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(table, 5, 2000, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [uid for _ in procs for uid in out.get(timeout=60)]
    for p in procs:
        p.join(60)
    assert sorted(claimed) == list(range(1, 2001))   # each UID exactly once


def test_readers_count_a_claim_before_its_write_reaches_the_column(tmp_path) -> None:
    """STATUS RECENT and EXAMINE right after a session claimed (imaptest's
    ``append`` script: a third connection's STATUS must say RECENT 0)."""
    import asyncio

    from pillarbox.auth.passwords import hash_password
    from pillarbox.store.base import NewMessage
    from pillarbox.store.sqlite.store import SQLiteStore

    store = SQLiteStore(tmp_path / "data").open()
    store.add_domain("example.test")
    account = store.add_account("alice@example.test", hash_password("pw"))
    inbox = store.mailbox(account.id, "INBOX")
    assert inbox is not None
    asyncio.run(store.append(inbox.id, [NewMessage(b"Subject: a\r\n\r\nx\r\n")] * 3))
    assert store.unclaimed_recent(inbox.id) == 3
    table = RecentTable(slots=7)
    store.recent_table = table
    # A claim of the first two, made in the table; its column write is not made.
    assert table.claim(inbox.id, 3, lambda: 1) == (1, 3)   # the column: 1
    assert store.first_recent_uid(inbox.id) == 3
    assert store.unclaimed_recent(inbox.id) == 1
    # A mailbox the table does not hold: the column alone.
    assert table.first_unclaimed(inbox.id + 1) is None
    store.close()
