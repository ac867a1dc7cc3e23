"""The notification channel (``store/sqlite/notify.py``): hints reach every
listener, also one that started after the notifier last listed the markers,
and the markers' directory is listed only when it changed."""

from __future__ import annotations

import os

import pytest

from pillarbox.store.sqlite import notify
from pillarbox.store.sqlite.notify import Listener, Notifier


def test_every_listener_hears_also_one_started_after_the_last_publish(tmp_path):
    run = tmp_path / "run"
    first = Listener(run)
    notifier = Notifier(run)
    notifier.publish([1, 2])
    assert first.read() == {1, 2}
    second = Listener(run)     # within the same tick of the directory's mtime
    notifier.publish([3])
    assert first.read() == {3}
    assert second.read() == {3}
    second.close()
    notifier.publish([4])      # its marker is gone, its socket too: no error
    assert first.read() == {4}
    first.close()
    notifier.close()


def test_the_markers_are_listed_again_only_when_the_directory_changed(
        tmp_path, monkeypatch: pytest.MonkeyPatch):
    run = tmp_path / "run"
    first = Listener(run)
    directory = run / "notify"
    old = 1_000_000_000_000_000_000          # long ago: not racy
    os.utime(directory, ns=(old, old))
    listings = []
    real = os.listdir

    def counting(path):  # type: ignore[no-untyped-def]
        listings.append(path)
        return real(path)

    monkeypatch.setattr(notify.os, "listdir", counting)
    notifier = Notifier(run)
    for i in range(5):
        notifier.publish([i])
    assert len(listings) == 1
    second = Listener(run)
    os.utime(directory, ns=(old + 1, old + 1))  # the directory changed
    notifier.publish([9])
    assert len(listings) == 2
    assert first.read() == {0, 1, 2, 3, 4, 9}
    assert second.read() == {9}
    first.close()
    second.close()
    notifier.close()


def test_a_withdrawn_listener_is_sent_nothing_until_it_advertises_again(tmp_path):
    run = tmp_path / "run"
    idle = Listener(run)
    busy = Listener(run, advertised=False)    # no session of its process in IDLE
    notifier = Notifier(run)
    notifier.publish([1])
    assert idle.read() == {1}
    assert busy.read() == set()
    busy.advertise()
    notifier.publish([2])
    assert busy.read() == {2}
    busy.withdraw()
    notifier.publish([3])
    assert busy.read() == set()
    assert idle.read() == {2, 3}
    for x in (idle, busy, notifier):
        x.close()
