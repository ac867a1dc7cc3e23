"""IMAP commands on the messages of the selected mailbox: FETCH, STORE, SEARCH,
SORT, THREAD, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT.

RFC 9051 §6.4, RFC 4315 (UIDPLUS), RFC 6851 (MOVE), RFC 7162 (CONDSTORE and
QRESYNC), RFC 4731 / 5182 / 5267 (ESEARCH, SEARCHRES, ESORT), RFC 5256 (SORT,
THREAD).  Rendering of FETCH items, search evaluation, sorting and threading
are pure functions in ``pillarbox.access.fetch``/``search``/``sort``/``thread``;
this module feeds them from the store and answers.

Each command reads what others changed (``IMAPSession.sync``) once: FETCH,
SEARCH, SORT and THREAD before they answer, so that they number from a
current view and FLAGS announces a new keyword before a FETCH shows it
(RFC 9051 §7.3.5); STORE, COPY, MOVE and EXPUNGE after their write, so that
the client hears of other changes with the outcome of its own.  Changes
that land while a command runs are told at the next one (or at once in
IDLE): RFC 9051 §5.2 asks for size updates observed during a command.
(Reading both before and after made 1.55 reads per command of imaptest's
steady mix instead of 1.)

While a FETCH, STORE or SEARCH by message number runs, no EXPUNGE may be
sent (RFC 9051 §7.5.1), so those commands refresh the view without
expunges; their UID forms may expunge.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pillarbox.access import cache as cache_mod
from pillarbox.access.cache import CacheEntry
from pillarbox.access.contents import CONTENTS
from pillarbox.access.fetch import FetchError, needs_content, render_fetch, sets_seen
from pillarbox.access.imap.mailboxes import check_flags, refuse_write, storable
from pillarbox.access.imap.render import flag_list, sequence_set
from pillarbox.access.imap.selected import InvalidSequence, SelectedMailbox
from pillarbox.access.search import SearchError, search as run_search
from pillarbox.access.sort import SortError, sort as run_sort
from pillarbox.access.thread import ThreadError, thread as run_thread
from pillarbox.protocols.imap import commands as c
from pillarbox.store.base import MessageMeta, OverQuota, StorageFull

if TYPE_CHECKING:
    from pillarbox.access.imap.session import IMAPSession

_FLUSH_AT = 1 << 18   # write FETCH output to the socket every 256 KiB


class MessageGone(Exception):
    """The message was expunged between reading its metadata and its content."""


class _Loader:
    """Content and cache entries of one command's messages, loaded once each."""

    def __init__(self, s: IMAPSession, mailbox_id: int, metas: list[MessageMeta], *,
                 sort_keys: bool = True, every_content: bool = False) -> None:
        self.s = s
        self.sort_keys = sort_keys      # False: FETCH, which renders no SORT/THREAD keys
        self.mailbox_id = mailbox_id
        self.metas = metas
        # Every message's octets will be read (a FETCH of sections): where they
        # lie is read for all of them at the first (store.message_reader).
        self.every_content = every_content
        self._read: Callable[[int], bytes | None] | None = None
        self._cache: dict[str, CacheEntry | None] | None = None
        self.computed: dict[str, CacheEntry] = {}
        self.gone: set[str] = set()

    def content(self, meta: MessageMeta) -> bytes:
        """The message's octets; ``MessageGone`` if it was expunged meanwhile
        (another session, another process): never an empty stand-in, which
        would be rendered, and cached, as if it were the message.  Octets read
        a moment ago come from memory (``access/contents.py``)."""
        key = (self.mailbox_id, meta.uid, meta.blob)
        data = CONTENTS.get(key)
        if data is not None:
            return data
        if self.every_content and len(self.metas) > 1:
            if self._read is None:
                mailbox_id = self.mailbox_id
                self._read = self.s.ctx.store.message_reader(mailbox_id, [
                    m.uid for m in self.metas if (mailbox_id, m.uid, m.blob) not in CONTENTS])
            data = self._read(meta.uid)
            if data is None:   # not read for: in memory then, and pushed out since
                data = self.s.ctx.store.message_bytes(self.mailbox_id, meta.uid)
        else:
            data = self.s.ctx.store.message_bytes(self.mailbox_id, meta.uid)
        if data is None:
            self.gone.add(meta.blob)
            raise MessageGone(meta.uid)
        CONTENTS.put(key, data)
        return data

    def lenient(self, meta: MessageMeta) -> bytes:
        """``content`` for SEARCH, SORT and THREAD: a message gone meanwhile
        matches nothing (and nothing computed from it is kept)."""
        try:
            return self.content(meta)
        except MessageGone:
            return b""

    def cache(self, meta: MessageMeta) -> CacheEntry | None:
        if self._cache is None:
            keys = self.sort_keys
            memo = cache_mod.MEMO
            found: dict[str, CacheEntry | None] = {}
            missing = []
            for m in self.metas:
                entry = memo.get(m.blob, keys)
                if entry is None:
                    missing.append(m.blob)
                else:
                    found[m.blob] = entry
            if missing:
                for blob, row in self.s.ctx.store.cache_get(missing).items():
                    entry = found[blob] = cache_mod.from_row(row, sort_keys=keys)
                    if entry is not None:
                        memo.put(blob, entry, keys)
            self._cache = found
        return self._cache.get(meta.blob) or self.computed.get(meta.blob)

    def save(self) -> None:
        rows = [(blob, *entry.to_row()) for blob, entry in self.computed.items()
                if blob not in self.gone]
        if rows:
            self.s.ctx.store.cache_put(rows)
            memo = cache_mod.MEMO
            for blob, entry in self.computed.items():
                if blob not in self.gone:
                    memo.put(blob, entry, True)


def _view(s: IMAPSession) -> SelectedMailbox:
    assert s.selected is not None
    return s.selected


def enable_condstore(s: IMAPSession) -> None:
    """A CONDSTORE-enabling command on a selected mailbox (RFC 7162 §3.1): from
    now on MODSEQ goes with flag changes, and the client hears HIGHESTMODSEQ."""
    view = _view(s)
    if not view.condstore:
        view.condstore = True
        s.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % view.modseq)


def _resolve(s: IMAPSession, tag: str, sequence: c.SequenceSet, uid: bool) -> list[int] | None:
    try:
        return _view(s).resolve(sequence, uid=uid)
    except InvalidSequence as exc:
        s.bad(tag, f"Invalid message number: {exc}")
        return None


def _with_recent(s: IMAPSession, meta: MessageMeta) -> MessageMeta:
    view = _view(s)
    if not s.rev2 and meta.uid in view.recent:
        return MessageMeta(meta.uid, meta.flags | {"\\Recent"}, meta.modseq, meta.internal_date,
                           meta.size, meta.blob, meta.savedate)
    return meta


# ------------------------------------------------------------------ FETCH


async def fetch(s: IMAPSession, cmd: c.Fetch) -> None:
    view = _view(s)
    if cmd.vanished and (not cmd.uid or "QRESYNC" not in s.enabled or cmd.changedsince is None):
        s.bad(cmd.tag, "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled")
        return
    await s.sync(cmd, expunge=cmd.uid)
    uids = _resolve(s, cmd.tag, cmd.sequence, cmd.uid)
    if uids is None:
        return
    store = s.ctx.store
    modseq = view.condstore or cmd.changedsince is not None or any(
        a.name == "MODSEQ" for a in cmd.attrs)
    if modseq:
        enable_condstore(s)
    if cmd.changedsince is not None and cmd.vanished:
        gone_uids = store.expunged_since(view.mailbox_id, cmd.changedsince)
        largest = view.uids[-1] if view.uids else 0
        gone_uids = [u for u in gone_uids if cmd.sequence.contains(u, max(largest, u))]
        if gone_uids:
            s.untagged(b"VANISHED (EARLIER) " + sequence_set(gone_uids))
    if all(a.name in _FLAG_ITEMS for a in cmd.attrs):
        await _fetch_flags(s, cmd, uids)
        return
    # As of the sync above: a FETCH answers as its mailbox was at one moment.
    metas = store.messages_by_uid(view.mailbox_id, uids, after_changes=True) if uids else []
    if cmd.changedsince is not None:
        metas = [m for m in metas if m.modseq > cmd.changedsince]
    seen: set[int] = set()
    if not view.readonly:
        want = [m.uid for m in metas if sets_seen(m, cmd.attrs)]
        if want:
            updates, _ = await store.store_flags(view.mailbox_id, want, "+",
                                                 frozenset({"\\Seen"}))
            for u in updates:
                view.reported[u.uid] = u.modseq
            new = {u.uid: u for u in updates}
            for i, m in enumerate(metas):
                if m.uid in new:
                    # A new value: the store may share the one it gave.
                    metas[i] = dataclasses.replace(m, flags=new[m.uid].flags,
                                                   modseq=new[m.uid].modseq)
                    seen.add(m.uid)
    loader = _Loader(s, view.mailbox_id, metas, sort_keys=False,
                     every_content=needs_content(cmd.attrs, cached=True))
    written = 0
    gone = len(uids) - len(metas) if cmd.changedsince is None else 0
    try:
        wants_cache = _wants_cache(cmd.attrs)
        recent = not s.rev2 and bool(view.recent)   # \Recent to add to some (IMAP4rev1)
        for meta in metas:
            seq = view.seq_of(meta.uid)
            if seq is None:
                continue
            shown = _with_recent(s, meta) if recent else meta
            try:
                result = render_fetch(
                    seq, shown, cmd.attrs,
                    content=lambda m=meta: loader.content(m),   # type: ignore[misc]
                    cache=loader.cache(meta) if wants_cache else None,
                    include_uid=cmd.uid,
                    modseq=cmd.changedsince is not None or (view.condstore and meta.uid in seen),
                    seen_set=meta.uid in seen,
                )
            except MessageGone:
                gone += 1
                continue
            if result.cache is not None:
                loader.computed[meta.blob] = result.cache
            s.raw(result.line)
            written += len(result.line)
            if written >= _FLUSH_AT:
                written = 0
                s.out.flush()
                await s.out.drain()
    except FetchError as exc:
        loader.save()
        s.no(cmd.tag, str(exc), exc.code)
        return
    loader.save()
    if gone and not cmd.uid:
        # RFC 5530 §3 / RFC 2180 §4.1.3: messages the client still numbers were
        # expunged by another session and their data is gone; the others were
        # fetched.  OK with the code, as Dovecot answers.
        s.ok(cmd.tag, "Some messages were already expunged", "EXPUNGEISSUED")
        return
    s.ok(cmd.tag, "FETCH completed")


_FLAG_ITEMS = frozenset({"FLAGS", "UID", "MODSEQ"})
RECENT = "\\Recent"


async def _fetch_flags(s: IMAPSession, cmd: c.Fetch, uids: list[int]) -> None:
    """FETCH of FLAGS, UID and MODSEQ only: what clients ask most, for whole
    mailboxes (``UID FETCH 1:* (FLAGS)``).  Reads three columns over the UID
    range, renders each line from the stored flags text (a few distinct
    values, rendered once each), numbers messages by walking the view, and
    writes in large pieces."""
    from pillarbox.access.fetch import format_flags

    view = _view(s)
    names = [a.name for a in cmd.attrs]
    if cmd.uid and "UID" not in names:
        names.insert(0, "UID")
    if cmd.changedsince is not None and "MODSEQ" not in names:
        names.append("MODSEQ")
    rows = s.ctx.store.flag_rows(view.mailbox_id, uids[0], uids[-1]) if uids else []
    wanted = None if len(uids) == view.exists else set(uids)
    since = cmd.changedsince
    recent = view.recent if not s.rev2 else set()
    rendered: dict[tuple[frozenset[str], bool], bytes] = {}
    chunk: list[bytes] = []
    size = 0
    found = 0
    i = 0
    view_uids = view.uids
    n = len(view_uids)
    for uid, text, mseq in rows:
        while i < n and view_uids[i] < uid:
            i += 1
        if i >= n or view_uids[i] != uid:
            continue          # arrived after the view was made: not numbered yet
        if wanted is not None and uid not in wanted:
            continue
        found += 1
        if since is not None and mseq <= since:
            continue
        items = []
        for name in names:
            if name == "UID":
                items.append(b"UID %d" % uid)
            elif name == "FLAGS":
                key = (text, uid in recent)
                flags = rendered.get(key)
                if flags is None:
                    flags = rendered[key] = format_flags(
                        text | {RECENT} if key[1] else text)
                items.append(b"FLAGS " + flags)
            else:
                items.append(b"MODSEQ (%d)" % mseq)
        line = b"* %d FETCH (%s)\r\n" % (i + 1, b" ".join(items))
        chunk.append(line)
        size += len(line)
        if size >= _FLUSH_AT:
            s.raw(b"".join(chunk))
            chunk.clear()
            size = 0
            s.out.flush()
            await s.out.drain()
    if chunk:
        s.raw(b"".join(chunk))
    if found < len(uids) and not cmd.uid:
        s.ok(cmd.tag, "Some messages were already expunged", "EXPUNGEISSUED")
        return
    s.ok(cmd.tag, "FETCH completed")


def _wants_cache(attrs: tuple[c.FetchAttr, ...]) -> bool:
    return any(a.name in ("ENVELOPE", "BODYSTRUCTURE") or (a.name == "BODY" and a.section is None)
               for a in attrs)


# ------------------------------------------------------------------ STORE


async def store(s: IMAPSession, cmd: c.Store) -> None:
    view = _view(s)
    if view.readonly:
        s.no(cmd.tag, "The mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    problem = check_flags(cmd.flags)
    if problem:
        s.bad(cmd.tag, problem)
        return
    uids = _resolve(s, cmd.tag, cmd.sequence, cmd.uid)
    if uids is None:
        return
    if cmd.unchangedsince is not None:
        enable_condstore(s)
    st = s.ctx.store
    updates, failed = (await st.store_flags(
        view.mailbox_id, uids, cmd.mode, storable(cmd.flags), cmd.unchangedsince
    )) if uids else ([], [])
    for u in updates:
        view.reported[u.uid] = u.modseq
    if cmd.mode != "-":
        _announce_keywords(s, storable(cmd.flags))
    changed = {u.uid for u in updates}
    failed_set = set(failed)
    # Other changes first, with the FLAGS of any new keyword, so that the
    # client knows a keyword before a FETCH shows it (RFC 9051 §7.3.5).
    await s.sync(cmd, expunge=cmd.uid)
    if not cmd.silent or view.condstore:
        metas = st.messages_by_uid(view.mailbox_id, uids, after_changes=True) if uids else []
        for meta in metas:
            if meta.uid in failed_set:
                continue
            if cmd.silent and meta.uid not in changed:
                continue
            seq = view.seq_of(meta.uid)
            if seq is None:
                continue
            shown = _with_recent(s, meta)
            items = []
            if cmd.uid or view.condstore:   # RFC 7162 §3.1: UID and MODSEQ with CONDSTORE
                items.append(b"UID %d" % meta.uid)
            if not cmd.silent:
                items.append(b"FLAGS " + flag_list(shown.flags))
            if view.condstore:
                items.append(b"MODSEQ (%d)" % meta.modseq)
            s.untagged(b"%d FETCH (%s)" % (seq, b" ".join(items)))
    if failed:
        numbers = failed if cmd.uid else [n for n in (view.seq_of(u) for u in failed) if n]
        s.ok(cmd.tag, "Conditional STORE failed for some messages",
             "MODIFIED " + sequence_set(numbers).decode())
        return
    s.ok(cmd.tag, "STORE completed")


def _announce_keywords(s: IMAPSession, flags: frozenset[str]) -> None:
    """FLAGS and PERMANENTFLAGS before a FETCH shows a keyword new to the mailbox
    (RFC 9051 §7.3.5: the client learns the keywords from FLAGS)."""
    view = _view(s)
    new = {f for f in flags if not f.startswith("\\")} - set(view.keywords)
    if not new:
        return
    view.keywords = tuple(sorted(set(view.keywords) | new))
    flags_now = s.flags_of(view)
    s.untagged(b"FLAGS " + flag_list(flags_now))
    s.untagged(b"OK [PERMANENTFLAGS " + flag_list(flags_now + ["\\*"]) + b"] Flags permitted")


# ------------------------------------------------------------------ SEARCH, SORT, THREAD


def _uses_modseq(key: c.SearchKey) -> bool:
    if key.op == "MODSEQ":
        return True
    return any(isinstance(a, c.SearchKey) and _uses_modseq(a) for a in key.args)


# Keys that look at nothing but flags, UIDs, numbers and MODSEQ.
_FLAG_KEYS = frozenset({
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
    "UNDRAFT", "UNFLAGGED", "UNSEEN", "KEYWORD", "UNKEYWORD", "NEW", "OLD", "RECENT", "UID",
    "SEQSET", "MODSEQ", "NOT", "OR", "AND",
})


def _flags_only(key: c.SearchKey) -> bool:
    return key.op in _FLAG_KEYS and all(
        _flags_only(a) for a in key.args if isinstance(a, c.SearchKey))


def _candidates(s: IMAPSession, key: c.SearchKey | None = None
                ) -> list[tuple[int, MessageMeta]]:
    """(message number, metadata) of every message of the view.

    For a search on flags alone (``UID SEARCH UNSEEN`` over 100,000
    messages) only UIDs, flags and MODSEQs are read."""
    view = _view(s)
    out: list[tuple[int, MessageMeta]] = []
    uids = view.uids
    n = len(uids)
    i = 0
    if key is not None and _flags_only(key) and n:
        rows = [MessageMeta(uid, flags, mseq, 0.0, 0, "")
                for uid, flags, mseq in s.ctx.store.flag_rows(view.mailbox_id, uids[0], uids[-1])]
    else:
        rows = s.ctx.store.messages(view.mailbox_id)
    recent = view.recent if not s.rev2 else ()
    for meta in rows:
        uid = meta.uid
        while i < n and uids[i] < uid:
            i += 1
        if i >= n:
            break
        if uids[i] != uid:
            continue
        out.append((i + 1, _with_recent(s, meta) if uid in recent else meta))
    return out


def _matches(s: IMAPSession, key: c.SearchKey, charset: str | None, uid: bool,
             loader_box: list[_Loader], *, light: bool = False
             ) -> tuple[list[int], list[tuple[int, MessageMeta]]]:
    """``light``: the caller needs only UIDs, flags and MODSEQs of the matches
    (SEARCH); SORT and THREAD need whole metadata."""
    view = _view(s)
    candidates = _candidates(s, key if light else None)
    loader = _Loader(s, view.mailbox_id, [m for _, m in candidates])
    loader_box.append(loader)
    found = run_search(
        key, candidates, largest_seq=view.exists,
        largest_uid=view.uids[-1] if view.uids else 0,
        content=loader.lenient, cache=loader.cache,
        saved=view.saved, now=time.time(), charset=charset, recent=view.recent,
        uid=False, computed=loader.computed,
    )
    chosen = set(found)
    return found, [(seq, m) for seq, m in candidates if seq in chosen]


async def search(s: IMAPSession, cmd: c.Search) -> None:
    view = _view(s)
    await s.sync(cmd, expunge=cmd.uid)
    loaders: list[_Loader] = []
    try:
        seqs, matched = _matches(s, cmd.key, cmd.charset, cmd.uid, loaders, light=True)
    except SearchError as exc:
        s.no(cmd.tag, str(exc), exc.code)
        return
    finally:
        for loader in loaders:
            loader.save()
    numbers = [m.uid for _, m in matched] if cmd.uid else seqs
    modseq = _uses_modseq(cmd.key)
    if modseq:
        enable_condstore(s)
    returns = cmd.returns
    highest = _result_modseq(matched, returns)
    if returns is not None and "SAVE" in returns:
        view.saved = [m.uid for _, m in matched]
    if returns is None and not s.rev2:
        line = b"SEARCH"
        if numbers:
            line += b" " + b" ".join(b"%d" % n for n in numbers)
            if modseq:
                line += b" (MODSEQ %d)" % highest
        s.untagged(line)
    elif returns != ("SAVE",):
        s.untagged(_esearch(cmd.tag, cmd.uid, numbers, returns or ("ALL",),
                            highest if modseq else None))
    s.ok(cmd.tag, "SEARCH completed")


def _result_modseq(matched: list[tuple[int, MessageMeta]],
                   returns: tuple[str, ...] | None) -> int:
    """The MODSEQ that goes with a SEARCH result (RFC 7162 §3.1.5): the highest of
    the messages returned; with only MIN and/or MAX, of those messages alone."""
    if not matched:
        return 0
    wanted = set(returns or ()) - {"SAVE"}
    if wanted and wanted <= {"MIN", "MAX"}:
        chosen = []
        if "MIN" in wanted:
            chosen.append(matched[0][1])
        if "MAX" in wanted:
            chosen.append(matched[-1][1])
        return max(m.modseq for m in chosen)
    return max(m.modseq for _, m in matched)


def _esearch(tag: str, uid: bool, numbers: list[int], returns: tuple[str, ...],
             modseq: int | None, ordered: bool = False) -> bytes:
    """``ESEARCH (TAG "a") UID MIN 1 MAX 9 COUNT 4 ALL 1:3,9`` (RFC 4731 §3.1)."""
    from pillarbox.access.imap.render import string

    out = b"ESEARCH (TAG " + string(tag) + b")"
    if uid:
        out += b" UID"
    wanted = set(returns) - {"SAVE"} or {"ALL"}
    if numbers:
        if "MIN" in wanted:
            out += b" MIN %d" % (numbers[0] if ordered else min(numbers))
        if "MAX" in wanted:
            out += b" MAX %d" % (numbers[-1] if ordered else max(numbers))
    if "COUNT" in wanted:
        out += b" COUNT %d" % len(numbers)
    if "ALL" in wanted and numbers:
        out += b" ALL " + (_ordered_set(numbers) if ordered else sequence_set(numbers))
    if modseq is not None and numbers:
        out += b" MODSEQ %d" % modseq
    return out


def _ordered_set(numbers: list[int]) -> bytes:
    """Numbers in their order, ascending runs as ranges (RFC 5267 §3.1)."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out).encode()


async def sort(s: IMAPSession, cmd: c.Sort) -> None:
    await s.sync(cmd, expunge=cmd.uid)
    loaders: list[_Loader] = []
    try:
        _, matched = _matches(s, cmd.key, cmd.charset, cmd.uid, loaders)
        loader = loaders[0]
        ordered = run_sort(cmd.criteria, matched, cache=loader.cache, content=loader.lenient,
                           uid=cmd.uid, computed=loader.computed)
    except (SearchError, SortError) as exc:
        s.no(cmd.tag, str(exc), getattr(exc, "code", None))
        return
    finally:
        for loader in loaders:
            loader.save()
    if cmd.returns is not None:
        s.untagged(_esearch(cmd.tag, cmd.uid, ordered, cmd.returns or ("ALL",), None,
                            ordered=True))
    else:
        s.untagged(b"SORT" + b"".join(b" %d" % n for n in ordered))
    s.ok(cmd.tag, "SORT completed")


async def thread(s: IMAPSession, cmd: c.Thread) -> None:
    await s.sync(cmd, expunge=cmd.uid)
    loaders: list[_Loader] = []
    try:
        _, matched = _matches(s, cmd.key, cmd.charset, cmd.uid, loaders)
        loader = loaders[0]
        rendered = run_thread(cmd.algorithm, matched, cache=loader.cache,
                              content=loader.lenient, uid=cmd.uid, computed=loader.computed)
    except (SearchError, ThreadError) as exc:
        s.no(cmd.tag, str(exc), getattr(exc, "code", None))
        return
    finally:
        for loader in loaders:
            loader.save()
    s.untagged(b"THREAD" + (b" " + rendered if rendered else b""))
    s.ok(cmd.tag, "THREAD completed")


# ------------------------------------------------------------------ COPY, MOVE


async def copy(s: IMAPSession, cmd: c.Copy | c.Move) -> None:
    view = _view(s)
    move = isinstance(cmd, c.Move)
    verb = "MOVE" if move else "COPY"
    if move and view.readonly:
        s.no(cmd.tag, "The mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    assert s.account_id is not None
    target = s.ctx.store.mailbox(s.account_id, cmd.mailbox)
    if target is None:
        s.no(cmd.tag, f"Mailbox does not exist: {cmd.mailbox}", "TRYCREATE")
        return
    uids = _resolve(s, cmd.tag, cmd.sequence, cmd.uid)
    if uids is None:
        return
    if not uids:
        s.ok(cmd.tag, f"{verb} completed (no messages)")
        return
    try:
        validity, pairs = await s.ctx.store.copy(view.mailbox_id, uids, target.id, move=move)
    except (OverQuota, StorageFull) as exc:
        refuse_write(s, cmd.tag, exc)
        return
    code = None
    if pairs:
        code = (f"COPYUID {validity} {sequence_set(p[0] for p in pairs).decode()} "
                f"{sequence_set(p[1] for p in pairs).decode()}")
    if move:
        if code:
            s.untagged(b"OK [" + code.encode() + b"] Moved")
        _expunged(s, [p[0] for p in pairs])
        await s.sync(cmd, expunge=True)
        s.ok(cmd.tag, "MOVE completed")
        return
    await s.sync(cmd, expunge=cmd.uid)
    s.ok(cmd.tag, "COPY completed", code)


def _expunged(s: IMAPSession, uids: list[int]) -> None:
    """Tell the client about messages this session removed (EXPUNGE or VANISHED)."""
    view = _view(s)
    recent_before = len(view.recent)
    if view.qresync:
        known = [u for u in uids if view.seq_of(u) is not None]
        view.forget(known)
        if known:
            s.untagged(b"VANISHED " + sequence_set(known))
    else:
        for seq in view.forget(uids):
            s.untagged(b"%d EXPUNGE" % seq)
    if not s.rev2 and len(view.recent) != recent_before:
        s.untagged(b"%d RECENT" % len(view.recent))   # RFC 3501 §7.3.2


# ------------------------------------------------------------------ EXPUNGE and co.


async def expunge(s: IMAPSession, cmd: c.Expunge) -> None:
    view = _view(s)
    if view.readonly:
        s.no(cmd.tag, "The mailbox is read-only (EXAMINE)", "READ-ONLY")
        return
    st = s.ctx.store
    if cmd.uids is not None:
        uids = _resolve(s, cmd.tag, cmd.uids, True)
        if uids is None:
            return
        deleted = [m.uid for m in st.messages_by_uid(view.mailbox_id, uids)
                   if "\\Deleted" in m.flags]
        removed = await st.expunge(view.mailbox_id, deleted) if deleted else []
    else:
        removed = await st.expunge(view.mailbox_id, None)
    _expunged(s, removed)
    await s.sync(cmd, expunge=True)
    s.ok(cmd.tag, "EXPUNGE completed")


async def close(s: IMAPSession, cmd: c.Close) -> None:
    view = _view(s)
    if not view.readonly:
        await s.ctx.store.expunge(view.mailbox_id, None)   # silently (RFC 9051 §6.4.1)
    await s.deselect()
    s.ok(cmd.tag, "CLOSE completed")


async def unselect(s: IMAPSession, cmd: c.Unselect) -> None:
    await s.deselect()
    s.ok(cmd.tag, "UNSELECT completed")

