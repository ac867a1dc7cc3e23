"""One IMAP session over the store: the commands of RFC 9051 and its extensions.

The protocol core (``pillarbox.protocols.imap.server``) turns bytes into
commands and keeps the connection state; this layer executes each command
against the store and answers it.  Commands that need a mailbox or a
message live in ``mailboxes.py`` and ``messages.py``; this module has the
session itself: the context it shares with the other sessions of the
process, its output, logging in, ENABLE, IDLE, and keeping the selected
mailbox's view up to date.

Before each tagged answer the session reads what other sessions and
deliveries changed in its selected mailbox and tells the client (EXISTS,
EXPUNGE or VANISHED, FETCH FLAGS; RFC 9051 §7).  In IDLE the hub wakes it at
once when its mailbox changes, in any process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pillarbox import __version__
from pillarbox.access.fetch import format_flags
from pillarbox.access.imap import mailboxes as m
from pillarbox.access.imap import messages as msg
from pillarbox.access.imap.hub import Hub
from pillarbox.access.imap.recent import CLAIMED as _CLAIMED
from pillarbox.access.imap.recent import claim as _claim_recent
from pillarbox.access.imap.selected import SelectedMailbox, Update
from pillarbox.log import log_event
from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap import responses as r
from pillarbox.store.base import NoSuchMailbox

log = logging.getLogger("pillarbox.imap")

# What every session offers once logged in (RFC 9051 §7.2.2).  LITERAL+
# (RFC 7888) is the superset of LITERAL-.
CAPABILITIES = (
    "IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE",
    "UNSELECT", "UIDPLUS", "MOVE", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED",
    "LIST-STATUS", "CHILDREN", "ESEARCH", "SEARCHRES", "CONDSTORE", "QRESYNC", "STATUS=SIZE",
    "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", "MULTIAPPEND", "BINARY", "SORT",
    "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "COMPRESS=DEFLATE",
    "UTF8=ACCEPT", "SAVEDATE", "WITHIN",
)
_RECENT = frozenset({"\\Recent"})
ENABLEABLE = {"IMAP4REV2": "IMAP4rev2", "CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC",
              "UTF8=ACCEPT": "UTF8=ACCEPT"}


def _code(code: str | None) -> r.ResponseCode | None:
    return r.Code.parse(code) if code else None


class Core(Protocol):
    """What the session needs of the protocol core."""

    def send(self, response: Any) -> None: ...

    def send_data(self, data: bytes) -> None: ...


class Output(Protocol):
    """What the session needs of the network side (``net/imap.py``)."""

    def flush(self) -> None: ...

    async def drain(self) -> None: ...

    def start_tls(self) -> Awaitable[bool]: ...

    def start_compression(self) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class IMAPContext:
    """What the sessions of one process share."""

    store: Any                      # a Store and MailStore (store/base.py)
    authenticator: Any              # pillarbox.auth.service.Authenticator
    hub: Hub
    hostname: str
    appendlimit: int
    allow_plaintext_on_loopback: bool = False
    account_limiter: Any = None     # net/limits.py ConnectionLimiter, keyed by account
    sessions: int = 0
    greeting_text: str = "Pillarbox ready"
    cache_pending: list[tuple[str, bytes, bytes, bytes, str]] = field(default_factory=list)


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1")


class IMAPSession:
    """The state of one logged-in (or not yet) client, and its commands."""

    def __init__(self, ctx: IMAPContext, core: Any, out: Output, peer: str, *,
                 tls: bool) -> None:
        self.r = r
        self.ctx = ctx
        self.core = core
        self.out = out
        self.peer = peer
        self.tls = tls
        self.account_id: int | None = None
        self.address: str | None = None
        self.enabled: set[str] = set()
        self.selected: SelectedMailbox | None = None
        self.idling: str | None = None           # the tag of IDLE in progress
        self.compressed = False
        self.client_id: str | None = None
        self._auth: tuple[str, Any, Any] | None = None  # (tag, exchange, final result)
        self._dirty = False
        self._woken: asyncio.Task[None] | None = None
        self._counted_account: str | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------ output

    @property
    def utf8(self) -> bool:
        return bool(self.enabled & {"UTF8=ACCEPT", "IMAP4rev2"})

    @property
    def rev2(self) -> bool:
        return "IMAP4rev2" in self.enabled

    def untagged(self, data: bytes) -> None:
        """``* <data>``: a data or status response."""
        self.core.send_data(b"* " + data + b"\r\n")

    def raw(self, data: bytes) -> None:
        self.core.send_data(data)

    def ok(self, tag: str, text: str, code: str | None = None) -> None:
        self.core.send(r.Tagged(tag, "OK", text, _code(code)))

    def no(self, tag: str, text: str, code: str | None = None) -> None:
        self.core.send(r.Tagged(tag, "NO", text, _code(code)))

    def bad(self, tag: str, text: str, code: str | None = None) -> None:
        self.core.send(r.Tagged(tag, "BAD", text, _code(code)))

    def capabilities(self) -> list[str]:
        caps: list[str]
        if self.account_id is None:
            caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
            if not self.tls and self.core_tls_possible():
                caps.append("STARTTLS")
            if self.plaintext_allowed():
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
            caps.append("AUTH=SCRAM-SHA-256")
        else:
            caps = list(CAPABILITIES)
            caps.insert(caps.index("QUOTA"), f"APPENDLIMIT={self.ctx.appendlimit}")
            if self.compressed:
                caps.remove("COMPRESS=DEFLATE")
        return caps

    def core_tls_possible(self) -> bool:
        return bool(getattr(self.out, "can_start_tls", True))

    def plaintext_allowed(self) -> bool:
        return self.tls or (self.ctx.allow_plaintext_on_loopback and _is_loopback(self.peer))

    # ------------------------------------------------------------ dispatch

    async def handle(self, event: c.Event) -> None:
        """Execute one event from the core and send its answer."""
        if isinstance(event, c.BadCommand):
            # A bad line instead of DONE or of an AUTHENTICATE answer ends that
            # command (the core has left the mode): no more IDLE updates, which
            # would otherwise go out with no command in progress (RFC 9051 §7.5.1).
            if self.idling is not None and event.tag == self.idling:
                self._end_idle()
            if self._auth is not None and event.tag == self._auth[0]:
                self._auth[1].cancel()
                self._auth = None
            self.core.send(r.rejection(event))
            return
        if isinstance(event, c.AuthResponse):
            await self._auth_step(event)
            return
        if isinstance(event, c.IdleDone):
            await self._idle_done()
            return
        handler = _HANDLERS.get(type(event))
        if handler is None:
            self.bad(event.tag, f"{type(event).__name__.upper()} is not supported")
            return
        try:
            await handler(self, event)
        except NoSuchMailbox:
            await self._mailbox_gone()
            self.no(event.tag, "The selected mailbox was deleted", "NONEXISTENT")

    # ------------------------------------------------------------ any state

    async def capability(self, cmd: c.Capability) -> None:
        self.untagged(b"CAPABILITY " + " ".join(self.capabilities()).encode())
        await self.sync(cmd)
        self.ok(cmd.tag, "CAPABILITY completed")

    async def noop(self, cmd: c.Command) -> None:
        await self.sync(cmd, expunge=True)
        self.ok(cmd.tag, f"{type(cmd).__name__.upper()} completed")

    async def logout(self, cmd: c.Logout) -> None:
        self.core.send(r.Untagged("BYE", "Logging out"))
        self.ok(cmd.tag, "LOGOUT completed")
        self.out.flush()
        self.out.close()

    async def id(self, cmd: c.Id) -> None:
        if cmd.fields:
            self.client_id = " ".join(f"{k}={v}" for k, v in cmd.fields if v)[:200]
            log_event(log, "client id", client=self.peer, id=self.client_id)
        self.untagged(b'ID ("name" "Pillarbox" "version" "' + __version__.encode() + b'")')
        self.ok(cmd.tag, "ID completed")

    async def enable(self, cmd: c.Enable) -> None:
        newly = []
        for cap in cmd.capabilities:
            name = ENABLEABLE.get(cap.upper())
            if name is None or name in self.enabled:
                continue
            self.enabled.add(name)
            newly.append(name)
            if name == "QRESYNC" and "CONDSTORE" not in self.enabled:
                self.enabled.add("CONDSTORE")   # RFC 7162 §3.2.3: QRESYNC implies it
        if self.selected is not None:
            if "CONDSTORE" in self.enabled and not self.selected.condstore:
                self.selected.condstore = True
                self.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % self.selected.modseq)
            self.selected.qresync = "QRESYNC" in self.enabled
        self.core.send(r.EnabledData(tuple(newly)))
        self.ok(cmd.tag, "ENABLE completed")

    async def starttls(self, cmd: c.StartTLS) -> None:
        if self.tls:
            self.bad(cmd.tag, "TLS is already active")
            return
        self.ok(cmd.tag, "Begin TLS negotiation now")
        self.out.flush()
        if await self.out.start_tls():
            self.tls = True

    async def compress(self, cmd: c.Compress) -> None:
        if cmd.mechanism.upper() != "DEFLATE":
            self.bad(cmd.tag, f"Unknown compression mechanism {cmd.mechanism}")
            return
        if self.compressed:
            self.no(cmd.tag, "Compression is already active", "COMPRESSIONACTIVE")
            return
        self.ok(cmd.tag, "DEFLATE active")
        self.out.flush()
        self.out.start_compression()
        self.compressed = True

    # ------------------------------------------------------------ logging in

    async def login(self, cmd: c.Login) -> None:
        if not self.plaintext_allowed():
            self.no(cmd.tag, "Passwords travel only over TLS: use STARTTLS first",
                    "PRIVACYREQUIRED")
            return
        result = await self.ctx.authenticator.login(
            cmd.username, cmd.password, client_ip=self.peer, protocol="imap", mechanism="LOGIN"
        )
        self._finish_login(cmd.tag, result)

    async def authenticate(self, cmd: c.Authenticate) -> None:
        from pillarbox.auth.service import UnknownMechanism

        mechanism = cmd.mechanism.upper()
        if mechanism in ("PLAIN", "LOGIN") and not self.plaintext_allowed():
            self.no(cmd.tag, "Passwords travel only over TLS: use STARTTLS first",
                    "PRIVACYREQUIRED")
            return
        try:
            exchange = self.ctx.authenticator.start(
                mechanism, client_ip=self.peer, protocol="imap"
            )
        except UnknownMechanism:
            self.no(cmd.tag, f"Unsupported authentication mechanism {cmd.mechanism}", "CANNOT")
            return
        self._auth = (cmd.tag, exchange, None)
        await self._auth_advance(await exchange.step(cmd.initial))

    async def _auth_step(self, event: c.AuthResponse) -> None:
        if self._auth is None:
            return
        tag, exchange, final = self._auth
        if event.cancelled:
            self._auth = None
            exchange.cancel()
            self.bad(tag, "AUTHENTICATE cancelled")
            return
        if final is not None:
            # RFC 5802 §5 / RFC 9051 §6.2.2: the client's empty answer to the
            # server's last message ends a successful SCRAM exchange.
            self._auth = None
            self._finish_login(tag, final)
            return
        try:
            step = await exchange.step(event.data)
        except ValueError as exc:
            self._auth = None
            self.bad(tag, f"AUTHENTICATE: {exc}")
            return
        await self._auth_advance(step)

    async def _auth_advance(self, result: Any) -> None:
        from pillarbox.auth.sasl import Challenge

        assert self._auth is not None
        tag, exchange, _ = self._auth
        if isinstance(result, Challenge):
            self.core.send(r.Continuation(data=result.data))
            return
        if result.ok and result.server_final is not None:
            self._auth = (tag, exchange, result)
            self.core.send(r.Continuation(data=result.server_final))
            return
        self._auth = None
        self._finish_login(tag, result)

    def _finish_login(self, tag: str, result: Any) -> None:
        if not result.ok:
            self.no(tag, result.text[:1].upper() + result.text[1:], result.imap_code)
            return
        creds = result.credentials
        limiter = self.ctx.account_limiter
        key = f"account:{creds.account_id}"
        if limiter is not None:
            refused = limiter.acquire(key)
            if refused is not None:
                self.no(tag, "Too many sessions for this account", "LIMIT")
                return
            self._counted_account = key
        self.account_id = creds.account_id
        self.address = creds.address
        self.ok(tag, "Logged in", "CAPABILITY " + " ".join(self.capabilities()))

    async def unauthenticate(self, cmd: c.Command) -> None:
        await self.deselect()
        self._release_account()
        self.account_id = None
        self.address = None
        self.ok(cmd.tag, "UNAUTHENTICATE completed")

    def _release_account(self) -> None:
        if self._counted_account is not None and self.ctx.account_limiter is not None:
            self.ctx.account_limiter.release(self._counted_account)
        self._counted_account = None

    # ------------------------------------------------------------ selected mailbox

    def select_view(self, view: SelectedMailbox) -> None:
        self.selected = view

    async def deselect(self) -> None:
        if self.selected is not None:
            self._unwatch()
            self.selected = None

    async def _mailbox_gone(self) -> None:
        if self.selected is not None:
            await self.deselect()
            self.core.send(r.Untagged("BYE", "The selected mailbox was deleted"))
            self.out.flush()
            self.out.close()

    async def sync(self, cmd: c.Command | None, *, expunge: bool = False) -> None:
        """Tell the client what changed in its selected mailbox (RFC 9051 §7).

        One question to the store, what changed after the view's MODSEQ; it
        answers from its log of the mailbox, shared by the sessions of this
        process, and reads the tables only when another connection committed
        (``store/sqlite/changelog.py``).
        """
        view = self.selected
        if view is None:
            return
        store = self.ctx.store
        try:
            changes = store.changes(view.mailbox_id, view.modseq)
        except NoSuchMailbox:
            raise NoSuchMailbox(view.name) from None
        if changes.uidvalidity != view.uidvalidity:
            raise NoSuchMailbox(view.name)
        if changes.highestmodseq == view.modseq and not (expunge and view.pending):
            return
        keywords = changes.keywords
        recent_before = len(view.recent)
        update = view.refresh(changes, allow_expunge=expunge, keywords=keywords)
        claim = bool(update.new) and not view.readonly and not self.rev2
        self.render_update(update, recent=not claim)
        if (not self.rev2 and update.exists is None and len(view.recent) != recent_before):
            # Expunged recent messages: the count goes down (RFC 3501 §7.3.2: the
            # client records RECENT; it does not work it out from EXPUNGE).
            self.untagged(b"%d RECENT" % len(view.recent))
        if claim:
            # \Recent (IMAP4rev1) needs a write to claim; EXISTS goes out first.
            if self.idling is not None and max(update.new) + 1 > _CLAIMED.get(view.mailbox_id, 0):
                self.out.flush()
            first, end = await _claim_recent(store, view.mailbox_id, max(update.new) + 1)
            view.recent |= {u for u in update.new if first <= u < end}
            self.untagged(b"%d RECENT" % len(view.recent))

    def render_update(self, update: Update, *, recent: bool = True) -> None:
        view = self.selected
        assert view is not None
        from pillarbox.access.imap.render import flag_list, sequence_set

        if update.vanished:
            self.untagged(b"VANISHED " + sequence_set(update.vanished))
        if update.expunged_seqs:
            self.core.send_data(b"".join(b"* %d EXPUNGE\r\n" % seq
                                         for seq in update.expunged_seqs))
        if update.new_keywords:
            self.untagged(b"FLAGS " + flag_list(self.flags_of(view)))
            self.untagged(b"OK [PERMANENTFLAGS " + flag_list(self.flags_of(view) + ["\\*"])
                          + b"] Flags permitted")
        if update.exists is not None:
            self.untagged(b"%d EXISTS" % update.exists)
            if recent and not self.rev2:
                self.untagged(b"%d RECENT" % len(view.recent))
        if update.flags:
            # Other sessions' STOREs: the bulk of what a busy shared mailbox
            # sends, rendered in one piece; each flag set once (format_flags).
            recent_uids = view.recent if not self.rev2 else ()
            lines = []
            for seq, meta in update.flags:
                flags = meta.flags
                if recent_uids and meta.uid in recent_uids:
                    flags = flags | _RECENT
                if view.condstore:
                    lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                                 % (seq, meta.uid, format_flags(flags), meta.modseq))
                else:
                    lines.append(b"* %d FETCH (UID %d FLAGS %s)\r\n"
                                 % (seq, meta.uid, format_flags(flags)))
            self.core.send_data(b"".join(lines))

    @staticmethod
    def flags_of(view: SelectedMailbox) -> list[str]:
        return ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *view.keywords]

    # ------------------------------------------------------------ IDLE

    async def idle(self, cmd: c.Idle) -> None:
        self.idling = cmd.tag
        if self.selected is not None:
            # Watched from before the read below: a change after it wakes us.
            self.ctx.hub.watch(self.selected.mailbox_id, self.wake, self.selected.modseq)
        self.core.send(r.Continuation("idling"))
        await self.sync(None, expunge=True)
        self.out.flush()

    def _end_idle(self) -> None:
        """IDLE is over (DONE, a bad line, the connection gone)."""
        self._unwatch()
        self.idling = None

    def _unwatch(self) -> None:
        # The hub wakes only sessions in IDLE; the others read at their next command.
        if self.idling is not None and self.selected is not None:
            self.ctx.hub.unwatch(self.selected.mailbox_id, self.wake)

    def wake(self) -> None:
        """The hub's call: our mailbox changed somewhere."""
        if self.idling is None:
            return   # told at the next command
        if self._woken is not None and not self._woken.done():
            self._dirty = True
            return
        self._woken = asyncio.ensure_future(self._idle_refresh())

    async def _idle_refresh(self) -> None:
        while True:
            self._dirty = False
            try:
                await self.sync(None, expunge=True)
            except NoSuchMailbox:
                await self._mailbox_gone()
                return
            except Exception:  # noqa: BLE001 - the next wake or command tries again
                log.warning("refreshing an idle session failed", exc_info=True)
            self.out.flush()
            if not self._dirty or self.idling is None:
                return

    async def _idle_done(self) -> None:
        tag = self.idling
        if tag is None:
            return
        self._end_idle()
        if self._woken is not None and not self._woken.done():
            await asyncio.wait([self._woken])   # one refresh at a time
        await self.sync(None, expunge=True)
        self.ok(tag, "IDLE terminated")

    # ------------------------------------------------------------ end

    def closed(self) -> None:
        """The connection is gone: let go of everything."""
        self._end_idle()
        self.selected = None
        self._release_account()
        if self._woken is not None:
            self._woken.cancel()


Handler = Callable[[IMAPSession, Any], Awaitable[None]]

# The one table from command to handler; the state table of which command
# may come when is the core's (protocols/imap/server.py).
_HANDLERS: dict[type, Handler] = {
    c.Capability: IMAPSession.capability,
    c.Noop: IMAPSession.noop,
    c.Check: IMAPSession.noop,
    c.Logout: IMAPSession.logout,
    c.StartTLS: IMAPSession.starttls,
    c.Authenticate: IMAPSession.authenticate,
    c.Login: IMAPSession.login,
    c.Enable: IMAPSession.enable,
    c.Id: IMAPSession.id,
    c.Compress: IMAPSession.compress,
    c.Idle: IMAPSession.idle,
    c.Select: m.select,
    c.Create: m.create,
    c.Delete: m.delete,
    c.Rename: m.rename,
    c.Subscribe: m.subscribe,
    c.Unsubscribe: m.unsubscribe,
    c.List: m.list_,
    c.Namespace: m.namespace,
    c.Status: m.status,
    c.Append: m.append,
    c.GetQuota: m.getquota,
    c.GetQuotaRoot: m.getquotaroot,
    c.SetQuota: m.setquota,
    c.Close: msg.close,
    c.Unselect: msg.unselect,
    c.Expunge: msg.expunge,
    c.Search: msg.search,
    c.Fetch: msg.fetch,
    c.Store: msg.store,
    c.Copy: msg.copy,
    c.Move: msg.copy,
    c.Sort: msg.sort,
    c.Thread: msg.thread,
}
