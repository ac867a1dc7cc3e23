"""Moving mail in and out: Maildir and mbox import into an account, and export.

``import_mail`` reads a Maildir (``maildir.py``: Dovecot's and Courier's
layouts) or an mbox file or folder of mbox files (``mbox.py``) and appends
its messages to the account's mailboxes through the store (``MailStore``),
creating the mailboxes it needs.  ``export_mail`` writes an account's
mailboxes as a Dovecot-compatible Maildir or as mboxrd files.

Safe beside a running server
    Messages are appended in batches (``BATCH_MESSAGES`` messages or
    ``BATCH_BYTES`` octets, whichever comes first), one store transaction
    each; every batch is durable when its append returns (group commit),
    so an interrupted import loses at most the batch in flight and never
    leaves half a batch.  While one batch commits, the next is read.

Idempotent
    A message is skipped when the target mailbox already holds one with the
    same octets (after the LF to CRLF conversion) and the same internal date
    (to the second).  Running an interrupted import again therefore adds
    only what is missing.  The check counts: a source holding the same
    message twice gets two copies, one of which an earlier run may already
    have added.  It costs one read of the mailbox's (size, date) list, and
    the bytes of an existing message only when a new one has its size and
    date.  Flags are not compared: a message whose flags were changed since
    the first run is still the same message, and keeps its new flags.
    The Maildir unique name is not kept in the store, so two files with
    the same content and date are the same message to the check, whatever
    their names.

Exports refuse a target that exists and is not empty, so they never mix
with, or overwrite, what is there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox.admin.commands import AdminError
from pillarbox.admin.maildir import (
    MaildirError,
    MaildirWriter,
    find_folders,
    is_maildir,
    scan_folder,
)
from pillarbox.admin.mbox import MboxError, MboxWriter, read_mbox
from pillarbox.admin.names import normalize_address
from pillarbox.store.base import Mailbox, NewMessage, NotFound, StoreError
from pillarbox.store.sqlite.mail import check_mailbox_name
from pillarbox.store.sqlite.store import SQLiteStore

__all__ = [
    "BATCH_BYTES",
    "BATCH_MESSAGES",
    "ExportReport",
    "ImportReport",
    "MailboxIOError",
    "MailboxReport",
    "export_mail",
    "import_mail",
]

BATCH_MESSAGES = 1000
BATCH_BYTES = 16 << 20
_IGNORED_FILES = (".msf", ".dat", ".json", ".sqlite", ".html", ".lock")

Report = Callable[[str], None]


class MailboxIOError(AdminError):
    """The path or the options make no sense for this import or export (the user's to fix)."""


@dataclass(slots=True)
class MailboxReport:
    name: str
    found: int = 0
    imported: int = 0
    duplicates: int = 0
    skipped: int = 0             # unreadable files
    size: int = 0
    created: bool = False


@dataclass(slots=True)
class ImportReport:
    mailboxes: list[MailboxReport] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def imported(self) -> int:
        return sum(m.imported for m in self.mailboxes)

    @property
    def duplicates(self) -> int:
        return sum(m.duplicates for m in self.mailboxes)


@dataclass(slots=True)
class ExportReport:
    mailboxes: list[tuple[str, int]] = field(default_factory=list)   # name, messages
    seconds: float = 0.0
    path: Path = Path()

    @property
    def messages(self) -> int:
        return sum(n for _, n in self.mailboxes)


# ---------------------------------------------------------------- sources


@dataclass(slots=True)
class _Item:
    """One message to import; ``load`` gives its CRLF octets (None: unreadable)."""

    load: Callable[[], bytes | None]
    flags: frozenset[str]
    internal_date: float


@dataclass(slots=True)
class _Source:
    name: str                    # target mailbox
    items: Callable[[], Iterator[_Item]]


def _detect(path: Path, fmt: str) -> str:
    if not path.exists():
        raise MailboxIOError(f"{path} does not exist")
    if fmt != "auto":
        return fmt
    if path.is_file():
        return "mbox"
    if is_maildir(path) or any(
        e.startswith(".") and is_maildir(path / e) for e in os.listdir(path)
    ):
        return "maildir"
    try:
        find_folders(path, "fs")
        return "maildir"
    except MaildirError:
        return "mbox"


def _under(prefix: str | None, name: str) -> str:
    if not name:
        return prefix or "INBOX"
    return f"{prefix}/{name}" if prefix else name


def _maildir_sources(path: Path, prefix: str | None, layout: str, warn: Report) -> list[_Source]:
    out = []
    for folder in find_folders(path, layout, warn):
        def items(folder_path: Path = folder.path) -> Iterator[_Item]:
            for m in scan_folder(folder_path, warn):
                yield _Item(_reader(m.read, m.path, warn), m.flags, m.internal_date)
        out.append(_Source(_under(prefix, folder.name), items))
    return out


def _reader(read: Callable[[], bytes], path: Path, warn: Report) -> Callable[[], bytes | None]:
    def load() -> bytes | None:
        try:
            return read()
        except OSError as e:
            warn(f"{path}: skipped ({e.strerror or e})")
            return None
    return load


def _mbox_items(path: Path, warn: Report) -> Callable[[], Iterator[_Item]]:
    def items() -> Iterator[_Item]:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise MailboxIOError(f"cannot read {path}: {e.strerror or e}") from e
        with f:
            for m in read_mbox(f, str(path), warn):
                yield _Item(_constant(m.data), m.flags, m.internal_date)
    return items


def _constant(data: bytes) -> Callable[[], bytes | None]:
    return lambda: data


def _mbox_sources(path: Path, prefix: str | None, warn: Report) -> list[_Source]:
    """One mbox file, or a folder of them (Thunderbird's ``Name.sbd/`` for children)."""
    if path.is_file():
        _check_mbox(path)
        return [_Source(prefix or "INBOX", _mbox_items(path, warn))]
    out = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if (not file.is_file() or any(p.startswith(".") for p in rel.parts)
                or file.name.endswith(_IGNORED_FILES)):
            continue
        try:
            _check_mbox(file)
        except MailboxIOError:
            warn(f"{file}: not an mbox file, skipped")
            continue
        levels = [p.removesuffix(".sbd") for p in rel.parts]
        out.append(_Source(_under(prefix, "/".join(levels)), _mbox_items(file, warn)))
    if not out:
        raise MailboxIOError(f"{path} holds neither a Maildir nor any mbox file")
    return out


def _check_mbox(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\r\n")
    if head and not head.startswith(b"From "):
        raise MailboxIOError(f"{path} is not an mbox file: it does not start with 'From '")


# ----------------------------------------------------------------- import


class _Existing:
    """The messages already in a mailbox, for the duplicate check (see the module doc)."""

    def __init__(self, store: SQLiteStore, mailbox_id: int) -> None:
        self.store = store
        self.mailbox_id = mailbox_id
        self.by_key: dict[tuple[int, int], list[int] | dict[bytes, int]] = {}
        for m in store.messages(mailbox_id):
            entry = self.by_key.setdefault((m.size, int(m.internal_date)), [])
            assert isinstance(entry, list)
            entry.append(m.uid)

    def take(self, data: bytes, internal_date: float) -> bool:
        """Whether an unclaimed copy is there; claims it."""
        key = (len(data), int(internal_date))
        entry = self.by_key.get(key)
        if not entry:
            return False
        if isinstance(entry, list):
            hashed: dict[bytes, int] = {}
            for uid in entry:
                existing = self.store.message_bytes(self.mailbox_id, uid)
                if existing is not None:
                    digest = hashlib.sha256(existing).digest()
                    hashed[digest] = hashed.get(digest, 0) + 1
            self.by_key[key] = entry = hashed
        digest = hashlib.sha256(data).digest()
        if entry.get(digest, 0) > 0:
            entry[digest] -= 1
            return True
        return False


def _account_id(store: SQLiteStore, address: str) -> tuple[str, int]:
    addr = normalize_address(address)
    account = store.directory().find_account(addr)
    if account is None:
        raise NotFound(f"no account {addr}")
    return addr, account.id


async def import_mail(
    store: SQLiteStore,
    address: str,
    path: Path,
    *,
    fmt: str = "auto",
    mailbox: str | None = None,
    layout: str = "auto",
    dry_run: bool = False,
    progress: Report = lambda _: None,
    warn: Report = lambda _: None,
    batch_messages: int = BATCH_MESSAGES,
    batch_bytes: int = BATCH_BYTES,
) -> ImportReport:
    """Import the Maildir or mbox at ``path`` into the account (see the module doc).

    ``mailbox`` is where the Maildir's root (or the mbox file) goes, INBOX by
    default; a Maildir's folders go below it, or at the top with INBOX.
    """
    started = time.monotonic()
    _, account_id = _account_id(store, address)
    kind = _detect(path, fmt)
    prefix = check_mailbox_name(mailbox) if mailbox else None
    try:
        if kind == "maildir":
            sources = _maildir_sources(path, prefix, layout, warn)
        elif kind == "mbox":
            sources = _mbox_sources(path, prefix, warn)
        else:
            raise MailboxIOError(f"unknown format {fmt!r} (maildir or mbox)")
        for source in sources:
            source.name = check_mailbox_name(source.name)
    except (MaildirError, MboxError) as e:
        raise MailboxIOError(str(e)) from e
    except StoreError as e:
        raise MailboxIOError(f"{path}: a folder's name cannot be a mailbox name: {e}") from e
    except OSError as e:
        raise MailboxIOError(f"cannot read {path}: {e.strerror or e}") from e

    report = ImportReport(dry_run=dry_run)
    existing: dict[int, _Existing] = {}
    reports: dict[str, MailboxReport] = {}
    for source in sources:
        box = store.mailbox(account_id, source.name)
        mine = reports.get(box.name if box else source.name)
        if mine is None:
            mine = reports[box.name if box else source.name] = MailboxReport(
                box.name if box else source.name)
            report.mailboxes.append(mine)
        if box is None and not dry_run:
            box = await store.create_mailbox_named(account_id, source.name)
            mine.created = True
        elif box is None:
            mine.created = True
        seen = None
        if box is not None:
            seen = existing.get(box.id) or existing.setdefault(box.id, _Existing(store, box.id))
        try:
            await _import_source(store, source, box.id if box else None, seen, mine, report,
                                 dry_run, progress, started, batch_messages, batch_bytes)
        except (MaildirError, MboxError) as e:
            raise MailboxIOError(str(e)) from e
        except StoreError as e:
            raise MailboxIOError(
                f"stopped in {source.name} after {report.imported} messages went in "
                f"(run the import again to go on; what is in is skipped): {e}"
            ) from e
    report.seconds = time.monotonic() - started
    return report


async def _import_source(
    store: SQLiteStore, source: _Source, mailbox_id: int | None, seen: _Existing | None,
    mine: MailboxReport, report: ImportReport, dry_run: bool, progress: Report,
    started: float, batch_messages: int, batch_bytes: int,
) -> None:
    batch: list[NewMessage] = []
    size = 0
    pending: asyncio.Task[tuple[int, list[int]]] | None = None
    pending_count = 0
    last_note = time.monotonic()

    async def settle() -> None:
        nonlocal pending, pending_count
        if pending is not None:
            task, count = pending, pending_count
            pending, pending_count = None, 0
            await task
            mine.imported += count

    async def flush() -> None:
        nonlocal batch, size, pending, pending_count, last_note
        if not batch:
            return
        await settle()
        if dry_run or mailbox_id is None:
            mine.imported += len(batch)
        else:
            # The next batch is read while this one commits: let the task run
            # up to its hand-over to the group-commit thread.
            pending = asyncio.ensure_future(store.append(mailbox_id, batch))
            pending_count = len(batch)
            await asyncio.sleep(0)
        batch, size = [], 0
        now = time.monotonic()
        if now - last_note >= 2.0:
            last_note = now
            done = report.imported + pending_count
            progress(f"{source.name}: {mine.imported + pending_count} messages so far "
                     f"({done / max(now - started, 1e-6):.0f}/s)")

    try:
        for item in source.items():
            mine.found += 1
            data = item.load()
            if data is None:
                mine.skipped += 1
                continue
            if seen is not None and seen.take(data, item.internal_date):
                mine.duplicates += 1
                continue
            batch.append(NewMessage(data, item.flags, item.internal_date))
            size += len(data)
            mine.size += len(data)
            if len(batch) >= batch_messages or size >= batch_bytes:
                await flush()
        await flush()
    finally:
        await settle()


# ----------------------------------------------------------------- export


def export_mail(
    store: SQLiteStore,
    address: str,
    path: Path,
    *,
    fmt: str = "maildir",
    mailboxes: list[str] | None = None,
    layout: str = "maildir++",
    progress: Report = lambda _: None,
    warn: Report = lambda _: None,
) -> ExportReport:
    """Write the account's mailboxes (or the ones named) to ``path``.

    Maildir: ``path`` is the Maildir (INBOX at its root).  mbox: one named
    mailbox goes to the file ``path``; several, or all, to a folder of mbox
    files, a mailbox's children in ``<name>.sbd/`` as Thunderbird keeps them.
    """
    started = time.monotonic()
    _, account_id = _account_id(store, address)
    boxes = store.mailboxes(account_id)
    if mailboxes:
        by_name = {b.name: b for b in boxes}
        chosen = []
        for name in mailboxes:
            box = store.mailbox(account_id, name)
            if box is None:
                raise NotFound(f"no mailbox {name!r} in {address}")
            chosen.append(by_name.get(box.name, box))
        boxes = chosen
    boxes.sort(key=lambda b: (b.name != "INBOX", b.name))
    report = ExportReport(path=path)
    try:
        if fmt == "maildir":
            _export_maildir(store, boxes, path, layout, report, warn)
        elif fmt == "mbox":
            _export_mbox(store, boxes, path, single=bool(mailboxes) and len(boxes) == 1,
                         report=report, progress=progress)
        else:
            raise MailboxIOError(f"unknown format {fmt!r} (maildir or mbox)")
    except MaildirError as e:
        raise MailboxIOError(str(e)) from e
    report.seconds = time.monotonic() - started
    return report


def _export_maildir(store: SQLiteStore, boxes: list[Mailbox], path: Path, layout: str,
                    report: ExportReport, warn: Report) -> None:
    writer = MaildirWriter(path, layout)
    writer.check_names(b.name for b in boxes)      # refuse before writing anything
    for box in boxes:
        folder = writer.folder(box.name, box.uidvalidity, box.keywords)
        count = 0
        for meta in store.messages(box.id):
            data = store.message_bytes(box.id, meta.uid)
            if data is None:
                continue   # expunged meanwhile
            folder.add(data, meta.flags, meta.internal_date, meta.uid)
            count += 1
        folder.close(box.uidnext)
        if folder.dropped:
            warn(f"{box.name}: keywords not exported (a Maildir folder has room for "
                     f"{len(folder.letters)}): {' '.join(sorted(folder.dropped))}")
        report.mailboxes.append((box.name, count))
    writer.close()
    os.sync()    # one flush for the whole export, not an fsync per file


def _mbox_path(root: Path, name: str) -> Path:
    levels = name.split("/")
    if any(level in (".", "..") or level.startswith(".") for level in levels):
        raise MailboxIOError(f"mailbox {name!r}: a level cannot be a file name here")
    return root.joinpath(*[f"{level}.sbd" for level in levels[:-1]], levels[-1])


def _export_mbox(store: SQLiteStore, boxes: list[Mailbox], path: Path, *, single: bool,
                 report: ExportReport, progress: Report) -> None:
    if single:
        if path.exists() and (not path.is_file() or path.stat().st_size > 0):
            raise MailboxIOError(f"{path} exists and is not an empty file")
        targets = [(boxes[0], path)]
    else:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise MailboxIOError(f"{path} exists and is not an empty directory")
        targets = [(box, _mbox_path(path, box.name)) for box in boxes]
    for box, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            writer = MboxWriter(f)
            for meta in store.messages(box.id):
                data = store.message_bytes(box.id, meta.uid)
                if data is not None:
                    writer.add(data, meta.flags, meta.internal_date)
            f.flush()
            os.fsync(f.fileno())
        report.mailboxes.append((box.name, writer.count))
