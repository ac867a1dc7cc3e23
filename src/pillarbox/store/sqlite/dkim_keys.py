"""DKIM key rows of the SQLite store (``dkim_keys``, migration 5).

:class:`SQLiteDKIMKeys` implements :class:`pillarbox.store.dkim_keys.DKIMKeyStore`
over one :class:`SQLiteStore`; ``serve`` and the CLI build it, and everything
above speaks to the protocol.  Each change raises ``meta.dkim_version`` in
the same transaction, so a worker that reads the same version knows that
nothing changed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import TYPE_CHECKING

from pillarbox.store.base import AlreadyExists, NotFound, StoreError
from pillarbox.store.dkim_keys import ACTIVE, PENDING, RETIRED, DKIMKey

if TYPE_CHECKING:
    from pillarbox.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteDKIMKeys"]

_COLUMNS = "domain, selector, algorithm, created, batch, state, changed"


def _key(row: tuple) -> DKIMKey:  # type: ignore[type-arg]
    return DKIMKey(row[0], row[1], row[2], float(row[3]), int(row[4]), row[5], float(row[6]))


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('dkim_version', '0')")
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'dkim_version'")


class SQLiteDKIMKeys:
    """The DKIM key rows of one SQLite store."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def dkim_version(self) -> int:
        row = self.store.reader.execute(
            "SELECT value FROM meta WHERE key = 'dkim_version'").fetchone()
        return int(row[0]) if row else 0

    def dkim_keys(self, domain: str | None = None) -> list[DKIMKey]:
        sql = f"SELECT {_COLUMNS} FROM dkim_keys"
        args: tuple[str, ...] = ()
        if domain is not None:
            sql += " WHERE domain = ?"
            args = (domain,)
        rows = self.store.reader.execute(sql + " ORDER BY domain, batch, selector", args)
        return [_key(r) for r in rows]

    def add_dkim_batch(self, domain: str, keys: list[tuple[str, str]], state: str, now: float
                       ) -> list[DKIMKey]:
        if state not in (PENDING, ACTIVE):
            raise ValueError(f"new DKIM keys are pending or active, not {state!r}")
        with self.store.transaction() as conn:
            batch = int(conn.execute(
                "SELECT COALESCE(MAX(batch), 0) + 1 FROM dkim_keys").fetchone()[0])
            if state == ACTIVE:
                conn.execute("UPDATE dkim_keys SET state = ?, changed = ? "
                             "WHERE domain = ? AND state = ?", (RETIRED, now, domain, ACTIVE))
            added = [DKIMKey(domain, selector, algorithm, now, batch, state, now)
                     for selector, algorithm in keys]
            for k in added:
                try:
                    conn.execute(
                        f"INSERT INTO dkim_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (k.domain, k.selector, k.algorithm, k.created, k.batch, k.state,
                         k.changed))
                except sqlite3.IntegrityError:
                    raise AlreadyExists(
                        f"{domain} already has a DKIM key with selector {k.selector}") from None
            _bump(conn)
        return added

    def activate_dkim_batch(self, domain: str, selector: str, now: float
                            ) -> tuple[list[DKIMKey], list[DKIMKey]]:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT batch FROM dkim_keys WHERE domain = ? AND selector = ?",
                               (domain, selector)).fetchone()
            if row is None:
                raise NotFound(f"{domain} has no DKIM key with selector {selector}")
            batch = int(row[0])
            retiring = [_key(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM dkim_keys WHERE domain = ? AND state = ? AND batch != ?"
                " ORDER BY selector", (domain, ACTIVE, batch))]
            conn.execute("UPDATE dkim_keys SET state = ?, changed = ? "
                         "WHERE domain = ? AND state = ? AND batch != ?",
                         (RETIRED, now, domain, ACTIVE, batch))
            conn.execute("UPDATE dkim_keys SET state = ?, changed = ? "
                         "WHERE domain = ? AND batch = ? AND state != ?",
                         (ACTIVE, now, domain, batch, ACTIVE))
            active = [_key(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM dkim_keys WHERE domain = ? AND batch = ?"
                " ORDER BY selector", (domain, batch))]
            _bump(conn)
        return active, [replace(k, state=RETIRED, changed=now) for k in retiring]

    def remove_dkim_key(self, domain: str, selector: str) -> DKIMKey:
        with self.store.transaction() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM dkim_keys WHERE domain = ? AND selector = ?",
                               (domain, selector)).fetchone()
            if row is None:
                raise NotFound(f"{domain} has no DKIM key with selector {selector}")
            key = _key(row)
            if key.state == ACTIVE:
                raise StoreError(f"the DKIM key {selector} of {domain} is active (it signs): "
                                 "activate other keys first, which retires it")
            conn.execute("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?",
                         (domain, selector))
            _bump(conn)
        return key

