"""'Send as' grants of the SQLite store: which other addresses an account may send as.

The submission policy (``pillarbox.receive.senders``) asks for an account's
grants through a callable that ``serve`` builds from :func:`grants`; the CLI
(``pillarbox user send-as``) changes them with :func:`grant` and
:func:`revoke`.  A grant is a normalised address or ``@domain``; it goes
with its account (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from pillarbox.store.base import AlreadyExists, NotFound

if TYPE_CHECKING:
    from pillarbox.store.sqlite.store import SQLiteStore

__all__ = ["grant", "grants", "list_grants", "revoke"]


def _account_id(conn: sqlite3.Connection, address: str) -> int:
    row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
    if row is None:
        raise NotFound(f"no account {address}")
    return int(row[0])


def grant(store: SQLiteStore, account: str, address: str) -> None:
    """Let ``account`` send as ``address``; AlreadyExists if it may already."""
    with store.transaction() as conn:
        account_id = _account_id(conn, account)
        try:
            conn.execute("INSERT INTO send_as (account, address) VALUES (?, ?)",
                         (account_id, address))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"{account} may already send as {address}") from None


def revoke(store: SQLiteStore, account: str, address: str) -> None:
    with store.transaction() as conn:
        account_id = _account_id(conn, account)
        cur = conn.execute("DELETE FROM send_as WHERE account = ? AND address = ?",
                           (account_id, address))
        if cur.rowcount == 0:
            raise NotFound(f"{account} has no send-as grant for {address}")


def grants(store: SQLiteStore, account_id: int) -> list[str]:
    """The addresses (and ``@domain`` entries) granted to the account."""
    rows = store.reader.execute(
        "SELECT address FROM send_as WHERE account = ? ORDER BY address", (account_id,))
    return [r[0] for r in rows]


def list_grants(store: SQLiteStore, account: str | None = None) -> list[tuple[str, str]]:
    """(account, granted address) pairs, of one account or of all."""
    sql = ("SELECT a.address, s.address FROM send_as s JOIN accounts a ON a.id = s.account")
    args: tuple[str, ...] = ()
    if account is not None:
        sql += " WHERE a.address = ?"
        args = (account,)
    return [(r[0], r[1]) for r in store.reader.execute(sql + " ORDER BY 1, 2", args)]
