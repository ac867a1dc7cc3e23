"""``mailq`` / ``sendmail -bp``: the queue as Postfix's mailq shows it.

Each entry: its queue id with a status character (``*`` active: due or
being delivered; ``!`` on hold; none for deferred), its size in octets, its
arrival time (local time, as Postfix prints it), its sender
(``MAILER-DAEMON`` for the null reverse path), then the recipients still to
be delivered, each group under the reason of its last failed attempt in
parentheses.  A last line counts the entries and their size; an empty queue
is ``Mail queue is empty``.  Scripts that parse Postfix's output (the first
word of an entry line is the id, ``*``/``!`` stripped) read this one too.

``pillarbox queue list`` is the administrator's view, with filters; this is
the Sendmail-compatible one, read straight from the store's queue tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import BinaryIO

from pillarbox.store.base import QueueEntry
from pillarbox.store.sqlite.store import SQLiteStore

_MARK = {"active": "*", "hold": "!"}
_ID_WIDTH = 19            # 18 characters of id and the status character
_RCPT_INDENT = _ID_WIDTH + 1 + 8 + 1 + 20 + 2


def format_entry(entry: QueueEntry) -> list[str]:
    """The lines of one entry (without the empty line that follows it)."""
    t = time.localtime(entry.arrived)
    arrived = f"{time.strftime('%a %b', t)} {t.tm_mday:>2} {time.strftime('%H:%M:%S', t)}"
    ident = entry.id + _MARK.get(entry.state, "")
    sender = entry.reverse_path or "MAILER-DAEMON"
    lines = [f"{ident:<{_ID_WIDTH}} {entry.size:>8} {arrived:>20}  {sender}"]
    shown: str | None = None
    for r in entry.recipients:
        if r.status != "pending":
            continue
        reason = r.last_reply or (entry.last_reply if entry.state != "active" else None)
        if reason and reason != shown:
            lines.append(f"({_one_line(reason)})")
        shown = reason
        lines.append(" " * _RCPT_INDENT + r.address)
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_queue(entries: Iterable[QueueEntry]) -> str:
    out: list[str] = []
    count = size = 0
    for entry in entries:
        if not out:
            out.append(f"{'-Queue ID-':<{_ID_WIDTH}} {'--Size--':>8} "
                       f"{'----Arrival Time----':>20}  -Sender/Recipient-------")
        out += format_entry(entry)
        out.append("")
        count += 1
        size += entry.size
    if not count:
        return "Mail queue is empty\n"
    kbytes = (size + 1023) // 1024
    out.append(f"-- {kbytes} Kbytes in {count} Request{'' if count == 1 else 's'}.")
    return "\n".join(out) + "\n"


def print_queue(store: SQLiteStore, out: BinaryIO) -> None:
    out.write(format_queue(store.queue_list()).encode("utf-8", "replace"))
    out.flush()
