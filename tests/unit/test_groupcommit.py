"""The group committer: jobs alone or in batches, thread and loop futures."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from pillarbox.store.sqlite.groupcommit import GroupCommitter


def _committer(tmp_path: Path) -> tuple[GroupCommitter, Path]:
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    return GroupCommitter(connect), db


def _rows(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()


def _insert(k: int, v: str = "x"):  # type: ignore[no-untyped-def]
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?, ?)", (k, v))
        return k
    return job


def test_a_job_alone_commits_or_fails_alone(tmp_path: Path) -> None:
    gc, db = _committer(tmp_path)
    assert gc.submit(_insert(1)).result(10) == 1

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2, 'half')")
        raise ValueError("no")

    with pytest.raises(ValueError):
        gc.submit(half_then_fail).result(10)
    assert gc.submit(_insert(3)).result(10) == 3
    gc.close()
    assert _rows(db) == [(1, "x"), (3, "x")]      # nothing of the failed job


def test_in_a_batch_one_failing_job_leaves_the_others(tmp_path: Path) -> None:
    gc, db = _committer(tmp_path)
    gate = threading.Event()
    blocker = gc.submit(lambda conn: gate.wait(10))    # holds the thread: the rest queue up
    futures = [gc.submit(_insert(k)) for k in (1, 2)]
    futures.append(gc.submit(_insert(1)))              # duplicate key: fails
    futures.append(gc.submit(_insert(4)))
    gate.set()
    blocker.result(10)
    assert [f.result(10) for f in (futures[0], futures[1], futures[3])] == [1, 2, 4]
    with pytest.raises(sqlite3.IntegrityError):
        futures[2].result(10)
    gc.close()
    assert _rows(db) == [(1, "x"), (2, "x"), (4, "x")]


def test_loop_futures_settle_and_a_cancelled_wait_does_not_undo_the_commit(
        tmp_path: Path) -> None:
    gc, db = _committer(tmp_path)

    async def main() -> None:
        assert await gc.submit_async(_insert(1)) == 1
        with pytest.raises(sqlite3.IntegrityError):
            await gc.submit_async(_insert(1))
        gate = threading.Event()
        gc.submit(lambda conn: gate.wait(10))
        waiter = gc.submit_async(_insert(2))
        waiter.cancel()                    # the client went away
        gate.set()
        results = await asyncio.gather(*(gc.submit_async(_insert(k)) for k in (3, 4, 5)))
        assert results == [3, 4, 5]

    asyncio.run(main())
    gc.close()
    assert _rows(db) == [(1, "x"), (2, "x"), (3, "x"), (4, "x"), (5, "x")]


def test_a_batch_of_rerun_jobs_commits_together_and_one_failing_leaves_the_others(
        tmp_path: Path) -> None:
    """Jobs that touch only the connection run without savepoints; when one of
    them fails the batch runs again, job by job, and only that one fails."""
    gc, db = _committer(tmp_path)
    runs: list[int] = []

    def counted(k: int):  # type: ignore[no-untyped-def]
        def job(conn: sqlite3.Connection) -> int:
            runs.append(k)
            conn.execute("INSERT INTO t VALUES (?, 'r')", (k,))
            return k
        return job

    async def main() -> None:
        for failing in (False, True):
            gate = threading.Event()
            gc.submit(lambda conn: gate.wait(10))      # the rest queue up behind it
            base = 10 if failing else 0
            keys = [base + 1, base + 2, base + 1 if failing else base + 3, base + 4]
            waiters = [gc.submit_async(counted(k), rerun=True) for k in keys]
            gate.set()
            outcomes = await asyncio.gather(*waiters, return_exceptions=True)
            if failing:
                assert outcomes[:2] == [11, 12] and outcomes[3] == 14
                assert isinstance(outcomes[2], sqlite3.IntegrityError)
            else:
                assert outcomes == [1, 2, 3, 4]

    asyncio.run(main())
    gc.close()
    assert _rows(db) == [(1, "r"), (2, "r"), (3, "r"), (4, "r"),
                         (11, "r"), (12, "r"), (14, "r")]
    assert runs[:4] == [1, 2, 3, 4]           # together, once each
    assert runs[4:].count(11) == 2            # rolled back with the batch, then again
