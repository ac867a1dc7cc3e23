"""The SQL of outgoing aggregate reports: which were queued, for which day.

One row per (kind, policy domain, day) in ``reports_sent`` (migration 8),
inserted in the transaction that queues the report, so the daily job and
``pillarbox reports send`` never queue the same report twice.  What a
report contains is decided above the store (``pillarbox.reports``).
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["mark_sent", "sent_domains"]


def sent_domains(conn: sqlite3.Connection, kind: str, day: str) -> set[str]:
    """The policy domains whose ``kind`` report for ``day`` was already queued."""
    rows = conn.execute("SELECT domain FROM reports_sent WHERE kind = ? AND day = ?",
                        (kind, day)).fetchall()
    return {r[0] for r in rows}


def mark_sent(conn: sqlite3.Connection, kind: str, domain: str, day: str, report_id: str,
              queue_id: str, recipients: str) -> bool:
    """Record a queued report; False if one was already recorded (nothing changes then)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO reports_sent (kind, domain, day, report_id, queue_id,"
        " recipients, queued) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (kind, domain, day, report_id, queue_id, recipients, time.time()))
    return cur.rowcount > 0
