"""Group commit: one thread, one write connection, many sessions per fsync.

Sessions hand in jobs; the thread takes every job waiting, makes their blobs
durable (fsync of each file, then of each directory once), runs the jobs in
one SQLite transaction, each inside a savepoint so that one failing job does
not take the others with it, and commits once.  Jobs that touch nothing but
the connection (``rerun``: the mailbox writes of IMAP) run without their two
savepoint statements when the whole batch is of them; if one fails, the
transaction is rolled back and the batch runs again the careful way.  Only then are the futures
resolved, and only then does a session answer 250.  Under load this turns
one fsync of the database per message into one per batch, which is what
makes durability cheap (DESIGN.md, storage model).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox.store.blobs import sync_dirs

_MAX_BATCH = 512


@dataclass(slots=True)
class Job:
    run: Callable[[sqlite3.Connection], Any]
    prepare: Callable[[], None] | None = None
    dirs: tuple[Path, ...] = ()
    future: concurrent.futures.Future[Any] | None = None   # settled by the thread (submit)
    waiter: asyncio.Future[Any] | None = None     # settled on its loop (submit_async)
    rerun: bool = False   # run has no effect but on the connection: it may run again


class GroupCommitter:
    """A daemon thread that commits jobs in groups."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str = "group-commit",
                 lock_path: Path | None = None):
        self._connect = connect
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self.batches = 0
        self.committed = 0

    def submit(
        self,
        run: Callable[[sqlite3.Connection], Any],
        *,
        prepare: Callable[[], None] | None = None,
        dirs: tuple[Path, ...] = (),
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put(Job(run, prepare, dirs, future))
        return future

    def submit_async(
        self,
        run: Callable[[sqlite3.Connection], Any],
        *,
        prepare: Callable[[], None] | None = None,
        dirs: tuple[Path, ...] = (),
        rerun: bool = False,
    ) -> asyncio.Future[Any]:
        """Like :meth:`submit`, for a coroutine of the running loop to await.

        The thread settles the loop's future itself, with one wake-up of the
        loop for all the jobs of a batch that came from it.  Wrapping the
        thread's future instead (``asyncio.wrap_future`` inside ``shield``)
        cost three turns of a busy event loop before the session ran again:
        under load, half of every write's latency.  Cancelling the returned
        future (the client went away) does not cancel the job: once handed
        in, a commit's outcome does not depend on whether anyone waits.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._jobs.put(Job(run, prepare, dirs, waiter=waiter, rerun=rerun))
        return waiter

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _main(self) -> None:
        conn = self._connect()
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._commit(conn, batch)
        conn.close()

    def _lock(self) -> bool:
        """Wait for the data directory's write lock (``run/write.lock``).

        SQLite lets one writer in at a time and makes the others poll with
        sleeps that grow to 100 ms (its busy handler); with several
        processes writing (the queue manager, every worker's IMAP writes,
        the CLI), those sleeps, not the work, became the latency of every
        write.  ``flock`` queues the writers in the kernel instead, and hands
        the lock over the moment it is released.
        """
        if self._lock_path is None:
            return False
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                        0o600)
            except OSError:
                self._lock_path = None   # no run/ (a read-only copy?): SQLite's lock alone
                return False
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return True

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _prepare(self, job: Job) -> BaseException | None:
        try:
            if job.prepare is not None:
                job.prepare()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting session
            return exc
        return None

    @staticmethod
    def _run_together(conn: sqlite3.Connection,
                      ready: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        """Every job of the batch without savepoints; none of them when one
        fails (the transaction is rolled back and begun again, empty)."""
        results: list[tuple[Job, Any, BaseException | None]] = []
        for job in ready:
            try:
                results.append((job, job.run(conn), None))
            except Exception:  # noqa: BLE001 - the batch runs again, job by job
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                return []
        return results

    def _commit(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
        ready: list[Job] = []
        dirs: set[Path] = set()
        batch = [job for job in batch
                 if job.future is None or job.future.set_running_or_notify_cancel()]
        # Prepares (fsyncs) run one after the other: running them side by side
        # on a thread pool was measured to cost more CPU than it saved.
        errors = [self._prepare(job) for job in batch]
        for job, error in zip(batch, errors):
            if error is None:
                dirs.update(job.dirs)
                ready.append(job)
            else:
                _settle([(job, None, error)])
        results: list[tuple[Job, Any, BaseException | None]] = []
        locked = False
        try:
            sync_dirs(dirs)
            locked = self._lock()
            conn.execute("BEGIN IMMEDIATE")
            if len(ready) == 1:
                # Alone in its batch (most batches at light load): no savepoint,
                # the transaction is the job's own.  Two statements fewer, each a
                # turn at the GIL that the session's event loop holds meanwhile.
                job = ready[0]
                try:
                    value = job.run(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting session
                    conn.execute("ROLLBACK")
                    if locked:
                        self._unlock()
                    _settle([(job, None, exc)])
                    return
                results.append((job, value, None))
            if len(ready) > 1 and all(job.rerun for job in ready):
                results = self._run_together(conn, ready)
            for job in (ready if len(ready) > 1 and not results else ()):
                conn.execute("SAVEPOINT job")
                try:
                    value = job.run(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting session
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, value, None))
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - every job of the batch fails
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if locked:
                self._unlock()
            _settle([(job, None, exc) for job in ready])
            return
        if locked:
            self._unlock()
        self.batches += 1
        self.committed += sum(1 for _, _, error in results if error is None)
        _settle(results)


def _settle(results: list[tuple[Job, Any, BaseException | None]]) -> None:
    """Hand each job its outcome: its thread future, or its loop's future (one
    wake-up per loop for the lot)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any,
                                                        BaseException | None]]] = {}
    for job, value, error in results:
        if job.waiter is not None:
            by_loop.setdefault(job.waiter.get_loop(), []).append((job.waiter, value, error))
        elif job.future is None:
            pass
        elif error is None:
            job.future.set_result(value)
        else:
            job.future.set_exception(error)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, items)
        except RuntimeError:
            pass    # the loop is closed: nobody is waiting any more


def _settle_waiters(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for waiter, value, error in items:
        if waiter.done():
            continue    # cancelled: the client went away, the commit stands
        if error is None:
            waiter.set_result(value)
        else:
            waiter.set_exception(error)
