"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from pillarbox.store.sqlite.store import SQLiteStore


@pytest.fixture()
def store(tmp_path):
    """A fresh SQLite store with the domain example.test (a module may define its own)."""
    s = SQLiteStore(tmp_path / "data").open()
    s.add_domain("example.test")
    yield s
    s.close()
