"""Recording report data cheaply: count in memory, append once a minute.

Every process that sees something a report counts (a protocol worker's
DMARC evaluations, a delivery agent's TLS sessions) holds a
:class:`ReportSpool` per kind.  ``add`` counts a row (a small JSON-able
mapping) under the UTC day it happened; at most ``flush_seconds`` later the
counts go to the process's own file of that day as JSON lines
``{"n": <count>, "row": {...}}``, in one ``O_APPEND`` write and without
fsync.  No database write, no lock, no fsync per message: the queue
manager stays the only writer of the queue.  What a crash loses is the
last minute of counts (and a torn last line, which :func:`read_day` skips);
a report is a statistic, and RFC 7489 §7.2 and RFC 8460 ask for no more.

Files: ``<data_dir>/reports/<kind>/<YYYY-MM-DD>/<pid>-<start>.jsonl``, one
folder per day ("rotated daily"); the report job reads a whole folder and
:func:`remove_before` removes old ones.  Each line is readable with ``less``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pillarbox.log import log_event

__all__ = ["ReportSpool", "day_of", "flush_all", "read_day", "remove_before", "spool_dir"]

log = logging.getLogger("pillarbox.reports")

FLUSH_SECONDS = 60.0
MAX_KEYS = 20000          # distinct rows held before a flush is forced


_LIVE: list[ReportSpool] = []      # every spool of this process (a few), for flush_all


def flush_all() -> None:
    """Flush every spool of this process (``serve`` calls it as a child ends)."""
    for spool in _LIVE:
        spool.flush()


def spool_dir(data_dir: Path, kind: str) -> Path:
    return data_dir / "reports" / kind


_DAY = 86400
_last_day: tuple[int, str] = (-1, "")     # (days since the epoch, its name): one per message


def day_of(when: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of a wall-clock time: the reporting period."""
    global _last_day
    number = int(when // _DAY)
    if number != _last_day[0]:
        _last_day = (number, datetime.datetime.fromtimestamp(
            number * _DAY, datetime.UTC).strftime("%Y-%m-%d"))
    return _last_day[1]


def _key(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ReportSpool:
    """One process's counts of one kind of report data (see the module docstring)."""

    def __init__(self, data_dir: Path, kind: str, *, flush_seconds: float = FLUSH_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = spool_dir(data_dir, kind)
        self.kind = kind
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._name = f"{os.getpid()}-{int(time.time())}.jsonl"
        self._counts: dict[tuple[str, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        _LIVE.append(self)

    def add(self, row: Mapping[str, Any], count: int = 1, when: float | None = None) -> None:
        """Count ``row`` once (or ``count`` times) for the day of ``when`` (now)."""
        self.add_key(_key(row), count, when)

    @staticmethod
    def key(row: Mapping[str, Any]) -> str:
        """``row`` as the spool counts and writes it, for :meth:`add_key`."""
        return _key(row)

    def add_key(self, row: str, count: int = 1, when: float | None = None) -> None:
        """:meth:`add` of a row already made into its :meth:`key`."""
        key = (day_of(self.clock() if when is None else when), row)
        self._counts[key] = self._counts.get(key, 0) + count
        if len(self._counts) >= MAX_KEYS:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:       # no loop (a tool): the caller flushes
                return
            self._timer = loop.call_later(self.flush_seconds, self.flush)

    @property
    def pending(self) -> int:
        return len(self._counts)

    def flush(self) -> None:
        """Append the counts to this process's files (one write per day); never raises."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        by_day: dict[str, list[str]] = {}
        for (day, key), n in counts.items():
            by_day.setdefault(day, []).append(f'{{"n":{n},"row":{key}}}\n')
        for day, lines in by_day.items():
            folder = self.root / day
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(folder / self._name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, "".join(lines).encode("utf-8"))
                finally:
                    os.close(fd)
            except OSError as exc:     # a full disk must not stop mail; the counts are lost
                log_event(log, "report data lost", kind=self.kind, day=day, rows=len(lines),
                          error=str(exc), level=logging.WARNING)


def read_day(data_dir: Path, kind: str, day: str) -> list[tuple[dict[str, Any], int]]:
    """Every row counted on ``day`` by every process, with its total count.

    A line that is not whole JSON (the torn end of a file after a crash) is skipped.
    """
    totals: dict[str, int] = {}
    rows: dict[str, dict[str, Any]] = {}
    for line in _lines(spool_dir(data_dir, kind) / day):
        try:
            item = json.loads(line)
            n, row = int(item["n"]), item["row"]
        except (ValueError, KeyError, TypeError):
            continue
        if not isinstance(row, dict) or n <= 0:
            continue
        key = _key(row)
        rows.setdefault(key, row)
        totals[key] = totals.get(key, 0) + n
    return [(rows[k], totals[k]) for k in sorted(totals)]


def _lines(folder: Path) -> Iterator[str]:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f


def remove_before(data_dir: Path, kind: str, day: str) -> int:
    """Remove the folders of days before ``day``; how many went."""
    root = spool_dir(data_dir, kind)
    if not root.is_dir():
        return 0
    gone = 0
    for folder in root.iterdir():
        if folder.is_dir() and len(folder.name) == 10 and folder.name < day:
            shutil.rmtree(folder, ignore_errors=True)
            gone += 1
    return gone
