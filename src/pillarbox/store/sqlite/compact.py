"""Compaction: give back the space of dead messages inside segment files.

The small messages of one group commit share a segment file
(``blobs/XX/<segment>``), which is removed only when its last blob goes
(``SQLiteStore.collect_blobs``).  Once most of a segment's messages are
expunged, the file is mostly dead bytes (as in Dovecot's mdbox, which
"purges" for the same reason).  Compaction copies the live blobs of sparse
segments into one new segment and lets the old files go:

1. **plan** (reads only): segments whose live bytes (blobs plus their
   separator lines) are below ``fraction`` of the file's size, most wasted
   space first, bounded to ``max_bytes`` of live data per run;
2. **write**: the live blobs, each behind its ``segment_separator`` line,
   into a new segment file (a fresh id, so no other writer ever names it);
   fsync the file, then its directory;
3. **repoint**, in one transaction: each moved row's (segment, offset),
   only where it still is where the plan found it (a blob that died
   meanwhile is not resurrected);
4. **finish**, after the commit: unlink the old files that no row names any
   more.

Crash safety, at every point: before the commit, no row names the new file,
so it is an orphan; after it, no row names the old files, so they are
orphans; either way the start-up clean-up (``collect_orphans``, which runs
only under the data directory's lock) removes them, and every row always
names a file that is on stable storage, because the new file and its
directory entry are fsync'd before the commit that points at them.

Concurrent readers: a reader that looked up (segment, offset) just before
the commit may find the old file unlinked when it opens it.
``SQLiteStore.open_blob`` then looks the blob up again (the commit is
visible by then, since the unlink follows it) and opens the new file; a
reader that already has the old file open keeps reading it, as POSIX keeps
an unlinked file's data until its last descriptor closes.

Concurrent writers: ``collect_blobs`` (the CLI, IMAP expunge) may remove a
row or an old segment while compaction copies.  A blob whose old file is
gone is left out; a row that is gone is not repointed; a new file that ends
up with no row at all is removed in ``finish``.  New segments of the queue
manager are never touched: compaction plans only from rows, and a segment
gets its rows in the commit that follows its writing.

The queue manager runs compaction (``QueueManager.compact``), off the
delivery path, a bounded amount per run.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox.store.blobs import new_id, segment_separator, sync_dirs, write_segment

if TYPE_CHECKING:
    from pillarbox.store.sqlite.store import SQLiteStore

SPARSE = 0.5                 # compact a segment whose live bytes are below half its size
MAX_BYTES = 8 << 20          # live bytes copied per run (one new segment)
MAX_SEGMENTS = 512           # old segments per run
MIN_GAIN = 256 << 10         # not worth a run for less

# "=== pillarbox blob " + id + " size " + n + " ===\r\n" (``segment_separator``)
_SEPARATOR_SQL = "31 + length(id) + length(size)"


@dataclass(frozen=True, slots=True)
class SegmentUse:
    """How much of a segment file is still referenced."""

    segment: str
    blobs: int
    live: int                # bytes of live blobs and their separator lines
    file_size: int

    @property
    def dead(self) -> int:
        return self.file_size - self.live


@dataclass(frozen=True, slots=True)
class CompactionReport:
    segments: int            # old segment files removed
    blobs: int               # blobs moved
    freed: int               # bytes of the old files removed
    written: int             # bytes of the new segment (0 when it was not needed)

    @property
    def gained(self) -> int:
        return self.freed - self.written


def segment_usage(store: SQLiteStore) -> list[SegmentUse]:
    """Every segment named by a row, with its live bytes and its file's size."""
    rows = store.reader.execute(
        f"SELECT segment, count(*), sum(size + {_SEPARATOR_SQL}) FROM blobs"
        " WHERE segment IS NOT NULL AND refs > 0 GROUP BY segment"
    ).fetchall()
    out = []
    for segment, blobs, live in rows:
        try:
            size = os.stat(store.blobs.path(segment)).st_size
        except FileNotFoundError:
            continue   # removed by collect_blobs since the query, or broken: not ours
        out.append(SegmentUse(segment, blobs, live, size))
    return out


@dataclass(slots=True)
class Compaction:
    """One run: the segments chosen, then the new file and the moves."""

    store: SQLiteStore
    old: list[SegmentUse]
    segment: str = ""
    path: Path = field(default_factory=Path)
    written: int = 0
    # (blob id, old segment, old offset, new offset)
    moves: list[tuple[str, str, int, int]] = field(default_factory=list)
    unlink: list[str] = field(default_factory=list)
    keep_new: bool = True
    moved: int = 0
    limited: bool = False    # the plan stopped at a bound: more may be waiting

    @classmethod
    def plan(
        cls, store: SQLiteStore, *, fraction: float = SPARSE, max_bytes: int = MAX_BYTES,
        max_segments: int = MAX_SEGMENTS, min_gain: int = MIN_GAIN,
    ) -> Compaction | None:
        """The sparse segments to compact in one run, or None if none is worth it."""
        sparse = [u for u in segment_usage(store) if u.live < fraction * u.file_size]
        sparse.sort(key=lambda u: u.dead, reverse=True)
        chosen: list[SegmentUse] = []
        live = 0
        for use in sparse:
            if chosen and (live + use.live > max_bytes or len(chosen) >= max_segments):
                break
            chosen.append(use)
            live += use.live
        if not chosen or sum(u.dead for u in chosen) < min_gain:
            return None
        return cls(store, chosen, limited=len(chosen) < len(sparse))

    def write(self) -> None:
        """Copy the live blobs into a new segment; fsync it and its directory."""
        names = [u.segment for u in self.old]
        marks = ",".join("?" * len(names))
        # Rows with refs <= 0 are dead and wait for collect_blobs, which
        # removes an old file once its last row goes.
        rows = self.store.reader.execute(
            f"SELECT id, segment, offset, size FROM blobs WHERE segment IN ({marks})"
            " AND refs > 0 ORDER BY segment, offset",
            names,
        ).fetchall()
        parts: list[bytes] = []
        offset = 0
        current: str | None = None
        f = None
        try:
            for blob_id, segment, old_offset, size in rows:
                if segment != current:
                    if f is not None:
                        f.close()
                    current = segment
                    try:
                        f = open(self.store.blobs.path(segment), "rb")
                    except FileNotFoundError:
                        f = None   # all its blobs died meanwhile
                if f is None:
                    continue
                f.seek(old_offset)
                data = f.read(size)
                if len(data) != size:
                    continue       # a damaged segment: leave that blob where it is
                separator = segment_separator(blob_id, size)
                offset += len(separator)
                self.moves.append((blob_id, segment, old_offset, offset))
                parts += (separator, data)
                offset += size
        finally:
            if f is not None:
                f.close()
        if not parts:
            self.keep_new = False
            return
        self.segment = new_id()
        self.path = self.store.blobs.path(self.segment)
        write_segment(self.path, parts)       # O_EXCL, write, fsync
        sync_dirs({self.path.parent})
        self.written = offset

    def repoint(self, conn: sqlite3.Connection) -> None:
        """Point the moved rows at the new segment; runs inside one transaction."""
        moved = 0
        for blob_id, old_segment, old_offset, new_offset in self.moves:
            moved += conn.execute(
                "UPDATE blobs SET segment = ?, offset = ? WHERE id = ? AND segment = ?"
                " AND offset = ?",
                (self.segment, new_offset, blob_id, old_segment, old_offset),
            ).rowcount
        self.moved = moved
        self.unlink = [
            u.segment for u in self.old
            if conn.execute(
                "SELECT 1 FROM blobs WHERE segment = ? LIMIT 1", (u.segment,)
            ).fetchone() is None
        ]
        self.keep_new = moved > 0

    def finish(self) -> CompactionReport:
        """After the commit: remove the old files no row names, and an unused new one."""
        freed = 0
        for segment in self.unlink:
            path = self.store.blobs.path(segment)
            try:
                freed += path.stat().st_size
                os.unlink(path)
            except FileNotFoundError:
                pass   # collect_blobs was quicker
        written = self.written
        if self.segment and not self.keep_new:
            self.store.blobs.remove(self.segment)
            written = 0
        return CompactionReport(len(self.unlink), self.moved, freed, written)

    def abandon(self) -> None:
        """The repoint did not commit: drop the new file if no row names it."""
        if not self.segment:
            return
        row = self.store.reader.execute(
            "SELECT 1 FROM blobs WHERE segment = ? LIMIT 1", (self.segment,)
        ).fetchone()
        if row is None:
            self.store.blobs.remove(self.segment)


def compact(
    store: SQLiteStore, *, fraction: float = SPARSE, max_bytes: int = MAX_BYTES,
    max_segments: int = MAX_SEGMENTS, min_gain: int = MIN_GAIN,
) -> CompactionReport | None:
    """One bounded run in this thread, in a transaction of its own (tests, tools).

    Under ``serve`` the queue manager runs it instead, with its writer.
    """
    run = Compaction.plan(
        store, fraction=fraction, max_bytes=max_bytes, max_segments=max_segments,
        min_gain=min_gain,
    )
    if run is None:
        return None
    run.write()
    try:
        with store.transaction() as conn:
            run.repoint(conn)
    except BaseException:
        run.abandon()
        raise
    return run.finish()
