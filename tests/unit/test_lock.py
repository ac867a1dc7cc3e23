"""The data directory lock: one owner, inherited by children, a clear refusal."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pillarbox.store.blobs import new_id, write_segment
from pillarbox.store.lock import DataDirBusy, DataDirLock
from pillarbox.store.sqlite.store import SQLiteStore


def test_second_lock_is_refused_naming_directory_and_pid(tmp_path):
    data = tmp_path / "missing" / "data"
    first = DataDirLock(data).acquire()        # creates the directory
    assert first.held and data.is_dir()
    assert (data / "lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirBusy) as caught:
        DataDirLock(tmp_path / "missing" / ".." / "missing" / "data").acquire()
    assert caught.value.pid == os.getpid()
    assert caught.value.data_dir == data.resolve()
    assert str(data.resolve()) in str(caught.value) and f"PID {os.getpid()}" in str(caught.value)
    assert DataDirLock(data).holder() == os.getpid()
    first.release()
    assert DataDirLock(data).holder() is None
    with DataDirLock(data) as again:         # free again once released
        assert again.held


def test_a_lock_held_after_its_supervisor_died_says_so(tmp_path):
    """Not "stop PID N" for a PID that is no more: its children still hold the lock."""
    first = DataDirLock(tmp_path).acquire()
    dead = os.fork()                           # a PID that has exited
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / "lock").write_text(f"{dead}\n")
    with pytest.raises(DataDirBusy) as caught:
        DataDirLock(tmp_path).acquire()
    assert f"whose supervisor (PID {dead}) has exited" in str(caught.value)
    assert f"fuser -v {tmp_path.resolve() / 'lock'}" in str(caught.value)
    first.release()


def test_no_lock_file_means_no_server_and_a_stale_pid_does_not_count(tmp_path):
    assert DataDirLock(tmp_path).holder() is None
    (tmp_path / "lock").write_text("999999\n")  # a server that died: file, but no lock
    assert DataDirLock(tmp_path).holder() is None
    lock = DataDirLock(tmp_path).acquire()
    assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def _fork_sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    return pid


def test_forked_children_keep_the_lock_after_the_parent_is_gone(tmp_path):
    lock = DataDirLock(tmp_path).acquire()
    child = _fork_sleeper()
    try:
        # The supervisor dies without unlocking (SIGKILL): its descriptor closes.
        assert lock._fd is not None
        os.close(lock._fd)
        lock._fd = None
        assert DataDirLock(tmp_path).holder() == os.getpid()   # the child still holds it
        with pytest.raises(DataDirBusy):
            DataDirLock(tmp_path).acquire()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert DataDirLock(tmp_path).holder() is None                # last holder gone


def test_a_child_exiting_does_not_release_the_parents_lock(tmp_path):
    lock = DataDirLock(tmp_path).acquire()
    pid = os.fork()
    if pid == 0:
        os._exit(0)   # a worker that dies: its copy of the descriptor closes
    os.waitpid(pid, 0)
    with pytest.raises(DataDirBusy):
        DataDirLock(tmp_path).acquire()
    lock.release()


def test_orphan_collection_refuses_while_a_server_holds_the_directory(tmp_path):
    store = SQLiteStore(tmp_path / "data").open()
    orphan = store.blobs.path(new_id())
    write_segment(orphan, [b"a blob a running server is about to commit"])
    server = DataDirLock(store.data_dir).acquire()
    with pytest.raises(DataDirBusy):
        store.collect_orphans()
    assert orphan.exists()
    # With the server's own lock (what ``serve`` does), it runs.
    assert store.collect_orphans(server) == 1
    assert not orphan.exists()
    server.release()
    other = DataDirLock(tmp_path / "elsewhere").acquire()
    with pytest.raises(Exception, match="needs the lock"):
        store.collect_orphans(other)   # a lock of another directory is no licence
    other.release()
    assert store.collect_orphans() == 0  # takes and gives back a lock of its own
    assert DataDirLock(store.data_dir).holder() is None
    store.close()
