"""IMAP commands on mailboxes: SELECT, CREATE, DELETE, RENAME, (UN)SUBSCRIBE,
LIST, LSUB, NAMESPACE, STATUS, APPEND and the QUOTA commands.

RFC 9051 §6.3, RFC 3501 §6.3 (LSUB, \\Recent), RFC 5258 and 5819 (LIST
extensions), RFC 6154 (SPECIAL-USE), RFC 7162 §3.2.5 (SELECT with QRESYNC),
RFC 4315 (APPENDUID), RFC 3502 (MULTIAPPEND), RFC 9208 (QUOTA).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from pillarbox.access import cache as cache_mod
from pillarbox.access.imap.listing import list_mailboxes
from pillarbox.access.imap.recent import claim as claim_recent
from pillarbox.access.imap.render import flag_list, mailbox_name, sequence_set, string
from pillarbox.access.imap.selected import SelectedMailbox
from pillarbox.mime.generate import to_7bit
from pillarbox.protocols.imap import commands as c
from pillarbox.store.base import (
    AlreadyExists,
    Mailbox,
    MailboxHasChildren,
    NewMessage,
    NotFound,
    OverQuota,
    StorageFull,
    StoreError,
)

if TYPE_CHECKING:
    from pillarbox.access.imap.session import IMAPSession

# RFC 6154 §2 uses we keep mailboxes for; \All and \Flagged would be virtual.
SPECIAL_USES = {"\\ARCHIVE": "\\Archive", "\\DRAFTS": "\\Drafts", "\\JUNK": "\\Junk",
                "\\SENT": "\\Sent", "\\TRASH": "\\Trash"}
SYSTEM_FLAGS = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"}


def check_flags(flags: tuple[str, ...]) -> str | None:
    """Why these flags cannot be stored, or None (RFC 9051 §2.3.2)."""
    for flag in flags:
        if flag.startswith("\\") and flag.lower() not in SYSTEM_FLAGS | {"\\recent"}:
            return f"Invalid system flag {flag}"
    return None


def storable(flags: tuple[str, ...]) -> frozenset[str]:
    """The flags to store: \\Recent is the server's alone (RFC 3501 §2.3.2)."""
    return frozenset(f for f in flags if f.lower() != "\\recent")


def _find(s: IMAPSession, name: str) -> Mailbox | None:
    assert s.account_id is not None
    return s.ctx.store.mailbox(s.account_id, name)


# ------------------------------------------------------------------ SELECT


async def select(s: IMAPSession, cmd: c.Select) -> None:
    had = s.selected is not None
    await s.deselect()
    if had:
        # RFC 9051 §6.3.2 / RFC 7162 §3.2.11: the old mailbox is closed.
        s.untagged(b"OK [CLOSED] Previous mailbox closed")
    box = _find(s, cmd.mailbox)
    verb = "EXAMINE" if cmd.readonly else "SELECT"
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    if cmd.qresync is not None and "QRESYNC" not in s.enabled:
        s.bad(cmd.tag, "QRESYNC must be enabled first (ENABLE QRESYNC)")
        return
    store = s.ctx.store
    snap = store.snapshot(box.id)
    if snap is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    box, uids, first_unseen = snap
    recent: set[int] = set()
    if not s.rev2:
        if cmd.readonly:
            # EXAMINE shows \Recent without taking it (RFC 3501 §6.3.2).
            first, end = store.first_recent_uid(box.id), 1 << 62
        else:
            first, end = await claim_recent(store, box.id, box.uidnext)
        if uids and uids[-1] >= first:
            lo = bisect.bisect_left(uids, first)
            recent = {u for u in uids[lo:] if u < end}
    view = SelectedMailbox(box, uids, readonly=cmd.readonly, recent=recent)
    view.condstore = cmd.condstore or cmd.qresync is not None or "CONDSTORE" in s.enabled
    view.qresync = "QRESYNC" in s.enabled
    flags = s.flags_of(view)
    s.untagged(b"%d EXISTS" % len(uids))
    if not s.rev2:
        s.untagged(b"%d RECENT" % len(recent))
    s.untagged(b"FLAGS " + flag_list(flags))
    if cmd.readonly:
        s.untagged(b"OK [PERMANENTFLAGS ()] Read-only mailbox")
    else:
        s.untagged(b"OK [PERMANENTFLAGS " + flag_list(flags + ["\\*"]) + b"] Flags permitted")
    if not s.rev2 and first_unseen is not None:
        unseen = view.seq_of(first_unseen)
        if unseen is not None:
            s.untagged(b"OK [UNSEEN %d] First unseen" % unseen)
    s.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % box.uidvalidity)
    s.untagged(b"OK [UIDNEXT %d] Predicted next UID" % box.uidnext)
    s.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % box.highestmodseq)
    if s.rev2:
        s.untagged(b"LIST () \"/\" " + mailbox_name(box.name, s.utf8))
    if cmd.qresync is not None and cmd.qresync.uidvalidity == box.uidvalidity:
        _qresync(s, view, cmd.qresync)
    s.select_view(view)
    code = "READ-ONLY" if cmd.readonly else "READ-WRITE"
    s.ok(cmd.tag, f"{verb} completed", code)


def _qresync(s: IMAPSession, view: SelectedMailbox, q: c.QResyncParams) -> None:
    """RFC 7162 §3.2.5.1: what changed since the client's MODSEQ, read through
    the MODSEQ indexes (nothing else of the mailbox is read)."""
    largest = view.uids[-1] if view.uids else 0
    known = q.known_uids
    store = s.ctx.store
    gone = store.expunged_since(view.mailbox_id, q.modseq)
    if known is not None:
        gone = [u for u in gone if known.contains(u, max(largest, gone[-1] if gone else 0))]
    if gone:
        s.untagged(b"VANISHED (EARLIER) " + sequence_set(gone))
    changes = store.changes(view.mailbox_id, q.modseq)
    for meta in changes.changed:
        seq = view.seq_of(meta.uid)
        if seq is None or meta.modseq > view.modseq:
            continue   # arrived after the snapshot: the next sync tells it
        if known is not None and not known.contains(meta.uid, largest):
            continue
        s.untagged(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                   % (seq, meta.uid, flag_list(meta.flags), meta.modseq))


# ------------------------------------------------------------------ CREATE and co.


async def create(s: IMAPSession, cmd: c.Create) -> None:
    assert s.account_id is not None
    name = cmd.mailbox.rstrip("/")
    if name.upper() == "INBOX":
        s.no(cmd.tag, "INBOX already exists", "ALREADYEXISTS")
        return
    use = None
    for flag in cmd.special_use:
        use = SPECIAL_USES.get(flag.upper())
        if use is None:
            s.no(cmd.tag, f"Special use {flag} is not supported here", "USEATTR")
            return
    if len(cmd.special_use) > 1:
        s.no(cmd.tag, "Only one special use per mailbox", "USEATTR")
        return
    try:
        await s.ctx.store.create_mailbox_named(s.account_id, name, use)
    except AlreadyExists as exc:
        code = "USEATTR" if "use" in str(exc) else "ALREADYEXISTS"
        s.no(cmd.tag, str(exc), code)
        return
    except StoreError as exc:
        s.no(cmd.tag, str(exc), "CANNOT")
        return
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "CREATE completed")


async def delete(s: IMAPSession, cmd: c.Delete) -> None:
    assert s.account_id is not None
    box = _find(s, cmd.mailbox)
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    if s.selected is not None and s.selected.mailbox_id == box.id:
        await s.deselect()   # RFC 9051 §6.3.4 leaves it to us; Dovecot does the same
    try:
        await s.ctx.store.delete_mailbox(s.account_id, box.name)
    except MailboxHasChildren as exc:
        s.no(cmd.tag, str(exc), "HASCHILDREN")
        return
    except NotFound:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    except StoreError as exc:
        s.no(cmd.tag, str(exc), "CANNOT")
        return
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "DELETE completed")


async def rename(s: IMAPSession, cmd: c.Rename) -> None:
    assert s.account_id is not None
    try:
        await s.ctx.store.rename_mailbox(s.account_id, cmd.old, cmd.new.rstrip("/"))
    except AlreadyExists as exc:
        s.no(cmd.tag, str(exc), "ALREADYEXISTS")
        return
    except NotFound:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.old}", "NONEXISTENT")
        return
    except StoreError as exc:
        s.no(cmd.tag, str(exc), "CANNOT")
        return
    if s.selected is not None:
        box = s.ctx.store.mailbox_by_id(s.selected.mailbox_id)
        if box is not None:
            s.selected.name = box.name
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "RENAME completed")


async def subscribe(s: IMAPSession, cmd: c.Subscribe) -> None:
    assert s.account_id is not None
    box = _find(s, cmd.mailbox)
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    await s.ctx.store.subscribe(s.account_id, box.name, True)
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "SUBSCRIBE completed")


async def unsubscribe(s: IMAPSession, cmd: c.Unsubscribe) -> None:
    assert s.account_id is not None
    await s.ctx.store.subscribe(s.account_id, cmd.mailbox, False)
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "UNSUBSCRIBE completed")


# ------------------------------------------------------------------ LIST


async def list_(s: IMAPSession, cmd: c.List) -> None:
    assert s.account_id is not None
    verb = "LSUB" if cmd.lsub else "LIST"
    if all(p == "" for p in cmd.patterns) and not cmd.extended:
        # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference.
        s.untagged(verb.encode() + b' (\\Noselect) "/" ""')
        s.ok(cmd.tag, f"{verb} completed")
        return
    store = s.ctx.store
    entries = list_mailboxes(
        store.mailboxes(s.account_id), store.subscriptions(s.account_id), cmd.reference,
        cmd.patterns, selection=cmd.selection, returns=cmd.returns, lsub=cmd.lsub,
        rev2=s.rev2,
    )
    for entry in entries:
        line = (verb.encode() + b" " + flag_list_ordered(entry.attributes) + b' "/" '
                + mailbox_name(entry.name, s.utf8))
        if entry.childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        s.untagged(line)
        if cmd.status_items and entry.mailbox is not None:
            s.untagged(_status_line(s, entry.mailbox, cmd.status_items))
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, f"{verb} completed")


def flag_list_ordered(items: list[str]) -> bytes:
    return b"(" + " ".join(items).encode() + b")"


async def namespace(s: IMAPSession, cmd: c.Namespace) -> None:
    s.untagged(b'NAMESPACE (("" "/")) NIL NIL')
    s.ok(cmd.tag, "NAMESPACE completed")


# ------------------------------------------------------------------ STATUS


def _status_line(s: IMAPSession, box: Mailbox, items: tuple[str, ...]) -> bytes:
    counts = s.ctx.store.counts(box.id)
    values = {
        "MESSAGES": counts.messages,
        "UIDNEXT": box.uidnext,
        "UIDVALIDITY": box.uidvalidity,
        "UNSEEN": counts.unseen,
        "DELETED": counts.deleted,
        "SIZE": counts.size,
        "RECENT": _recent(s, box),
        "HIGHESTMODSEQ": box.highestmodseq,
        "APPENDLIMIT": s.ctx.appendlimit,
    }
    parts = []
    for item in items:
        name = item.upper()
        if name in values:
            parts.append(b"%s %d" % (name.encode(), values[name]))
    return (b"STATUS " + mailbox_name(box.name, s.utf8) + b" (" + b" ".join(parts) + b")")


def _recent(s: IMAPSession, box: Mailbox) -> int:
    view = s.selected
    own = len(view.recent) if (view is not None and view.mailbox_id == box.id
                               and not view.readonly) else 0
    return s.ctx.store.unclaimed_recent(box.id) + own


async def status(s: IMAPSession, cmd: c.Status) -> None:
    box = _find(s, cmd.mailbox)
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    unknown = [i for i in cmd.items if i.upper() not in _STATUS_ITEMS]
    if unknown:
        s.bad(cmd.tag, f"Unknown STATUS item {unknown[0]}")
        return
    s.untagged(_status_line(s, box, cmd.items))
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "STATUS completed")


_STATUS_ITEMS = {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
                 "HIGHESTMODSEQ", "APPENDLIMIT"}


# ------------------------------------------------------------------ APPEND


#: Messages up to this size get their cache entry at APPEND; larger ones at the
#: first FETCH that needs it (their parse would hold the session longer).
_PARSE_AT_APPEND = 1 << 20


async def append(s: IMAPSession, cmd: c.Append) -> None:
    box = _find(s, cmd.mailbox)
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "TRYCREATE")
        return
    new = []
    for message in cmd.messages:
        problem = check_flags(message.flags)
        if problem:
            s.bad(cmd.tag, problem)
            return
        if not message.data:
            s.no(cmd.tag, "An empty message cannot be appended")
            return
        if len(message.data) > s.ctx.appendlimit:
            s.no(cmd.tag, f"The message is larger than {s.ctx.appendlimit} octets", "TOOBIG")
            return
        when = message.internal_date.timestamp() if message.internal_date else None
        data = message.data
        if b"\x00" in data:
            # RFC 3516 §4.4: binary content (a literal8) may hold NUL, which no
            # literal of BODY[] can carry; store it re-encoded as base64 MIME,
            # whose BINARY[] decodes to the same octets.
            data = to_7bit(data)
        # Parsed here, while the octets are in memory, rather than re-read by the
        # first FETCH (clients fetch what they append): the cache row goes into
        # the APPEND's own commit, so no session parses this message again.
        row = cache_mod.compute(data).to_row() if len(data) <= _PARSE_AT_APPEND else None
        new.append(NewMessage(data, storable(message.flags), when, row))
    try:
        validity, uids = await s.ctx.store.append(box.id, new)
    except (OverQuota, StorageFull) as exc:
        refuse_write(s, cmd.tag, exc)
        return
    except NotFound:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "TRYCREATE")
        return
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "APPEND completed",
         f"APPENDUID {validity} {sequence_set(uids).decode()}")


def refuse_write(s: IMAPSession, tag: str, exc: OverQuota | StorageFull) -> None:
    """NO for a write the store could not take: over quota (RFC 9208 §4.1
    OVERQUOTA) or out of disk (RFC 5530 SERVERBUG, try again later)."""
    if isinstance(exc, OverQuota):
        s.no(tag, str(exc), "OVERQUOTA")
    else:
        s.no(tag, "The server's disk is full; try again later", "SERVERBUG")


# ------------------------------------------------------------------ QUOTA


def _quota_line(s: IMAPSession) -> bytes:
    assert s.account_id is not None
    q = s.ctx.store.quota(s.account_id)
    items = []
    if q.storage_limit is not None:
        items.append(b"STORAGE %d %d" % ((q.storage_used + 1023) // 1024, q.storage_limit // 1024))
    if q.messages_limit is not None:
        items.append(b"MESSAGE %d %d" % (q.messages_used, q.messages_limit))
    return b'QUOTA "" (' + b" ".join(items) + b")"


async def getquota(s: IMAPSession, cmd: c.GetQuota) -> None:
    if cmd.root != "":
        s.no(cmd.tag, f"No such quota root {cmd.root}", "NONEXISTENT")
        return
    s.untagged(_quota_line(s))
    s.ok(cmd.tag, "GETQUOTA completed")


async def getquotaroot(s: IMAPSession, cmd: c.GetQuotaRoot) -> None:
    box = _find(s, cmd.mailbox)
    if box is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "NONEXISTENT")
        return
    s.untagged(b"QUOTAROOT " + mailbox_name(box.name, s.utf8) + b' ""')
    s.untagged(_quota_line(s))
    s.ok(cmd.tag, "GETQUOTAROOT completed")


async def setquota(s: IMAPSession, cmd: c.SetQuota) -> None:
    s.no(cmd.tag, "Quotas are set by the administrator (pillarbox user quota)", "NOPERM")



