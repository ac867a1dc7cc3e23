"""The POP3 session over the store: the maildrop is the INBOX (RFC 1939).

The core (``pillarbox.protocols.pop3.server``) owns syntax and states; this
module decides: it checks logins through the authenticator, locks the
maildrop, takes the list of messages once at login (RFC 1939 5: message
numbers stay fixed for the session; mail that arrives later shows in the
next session), and removes the messages marked deleted only at QUIT, in the
UPDATE state (RFC 1939 6).  ``+OK`` to QUIT is sent only once the store's
expunge has committed, so it is durable; a dropped connection deletes
nothing.

The unique-id listing (RFC 1939 7) is derived from UIDVALIDITY and UID, never
from flags, so it stays the same across sessions and whether or not IMAP has
seen the message.  Sizes in STAT and LIST are the stored RFC822.SIZE (the
delivery prefix plus the blob), which is exactly what RETR sends for a
message whose lines end in CRLF, as every message that came over SMTP does
(the SMTP core refuses a bare LF); a bare LF from elsewhere is still sent as
CRLF, and such a message is then longer than LIST said.

The maildrop lock is a ``flock`` on a file per account, so it holds across
worker processes and goes away with a process that dies; it never blocks
IMAP, which does not take it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox.auth.sasl import Challenge
from pillarbox.auth.service import Authenticator, AuthResult, Exchange, UnknownMechanism
from pillarbox.log import log_event
from pillarbox.protocols.pop3 import events as ev
from pillarbox.protocols.pop3.message import top
from pillarbox.protocols.pop3.replies import Code, Reply, err, ok
from pillarbox.protocols.pop3.server import Limits, POP3ServerConnection
from pillarbox.store.base import MailStore, MessageMeta, StoreError

log = logging.getLogger("pillarbox.pop3")

# Messages larger than this are read from the store on a thread, so a big
# RETR does not stall the other sessions of the worker.
_READ_IN_THREAD = 1 << 20


# ------------------------------------------------------------ the context


@dataclass(frozen=True, slots=True)
class POP3Settings:
    lock_dir: Path                 # <data_dir>/run/pop3: one lock file per account
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class POP3Context:
    """What every POP3 session of a worker shares."""

    store: MailStore
    authenticator: Authenticator
    hostname: str
    settings: POP3Settings


class MaildropLock:
    """RFC 1939 8's exclusive access to a maildrop: ``flock`` on ``<lock_dir>/<account>``.

    The lock belongs to the open file, so it works between the sessions of
    one process as between processes, and the kernel drops it when the
    process dies: a crash never leaves a maildrop locked.
    """

    def __init__(self, lock_dir: Path, account_id: int) -> None:
        self.path = lock_dir / f"{account_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another session holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        # Who holds it, for a person who wonders (``cat`` the file).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def uidl_of(uidvalidity: int, uid: int) -> str:
    """The unique-id of a message (RFC 1939 7): stable while UIDVALIDITY is."""
    return f"{uidvalidity:08x}{uid:08x}"


# ------------------------------------------------------------ the session


class POP3Session:
    """One POP3 session's decisions; the adapter hands it the core's events."""

    def __init__(
        self, ctx: POP3Context, core: POP3ServerConnection, client_ip: str, *, tls: bool = False
    ) -> None:
        self.ctx = ctx
        self.core = core
        self.client_ip = client_ip
        self.tls = tls
        self.address: str | None = None
        self.mailbox_id: int | None = None
        self.uidvalidity = 0
        self.retrieved = 0
        self.removed = 0
        self._maildrop: list[MessageMeta] = []
        self._deleted: set[int] = set()       # message numbers marked by DELE
        self._lock: MaildropLock | None = None
        self._exchange: Exchange | None = None
        self._success: AuthResult | None = None   # SCRAM's v= sent, its empty answer due
        self._set_auth_policy()

    # ------------------------------------------------------------ lifecycle

    def tls_established(self) -> None:
        """STLS completed: plaintext logins may now be allowed (RFC 2595 2.3)."""
        self.tls = True
        self._set_auth_policy()

    def close(self) -> None:
        """The connection is gone: release the maildrop; nothing is deleted (RFC 1939 6)."""
        self._cancel_exchange()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            log_event(log, "logout", client=self.client_ip, user=self.address,
                      retrieved=self.retrieved, deleted=self.removed, level=logging.INFO)

    def _set_auth_policy(self) -> None:
        auth = self.ctx.authenticator
        self.core.plaintext_allowed = auth.plaintext_allowed(self.tls, self.client_ip)
        self.core.mechanisms = tuple(auth.mechanisms(self.tls, self.client_ip))

    def _cancel_exchange(self) -> None:
        if self._exchange is not None:
            self._exchange.cancel()   # logged, not counted as a failure
            self._exchange = None
        self._success = None

    # ------------------------------------------------------------ dispatch

    def handle(self, event: ev.Event) -> Coroutine[Any, Any, None] | None:
        """Answer ``event`` now, or return the coroutine that will (logins, QUIT, big RETR)."""
        core = self.core
        if isinstance(event, ev.PassLogin):
            return self._pass_login(event)
        if isinstance(event, ev.AuthStart):
            self._cancel_exchange()
            try:
                self._exchange = self.ctx.authenticator.start(
                    event.mechanism, client_ip=self.client_ip, protocol="pop3"
                )
            except UnknownMechanism:   # the core offers only what the authenticator has
                core.respond(err(f"Unrecognized authentication type {event.mechanism}"))
                return None
            return self._auth_step(event.initial)
        if isinstance(event, ev.AuthResponse):
            if self._success is not None:
                self._finish_success(event.data)
                return None
            return self._auth_step(event.data)
        if isinstance(event, (ev.AuthCancelled, ev.ProtocolViolation)):
            self._cancel_exchange()
            return None
        if isinstance(event, ev.Stat):
            count, size = self._totals()
            core.respond(ok(f"{count} {size}"))
        elif isinstance(event, ev.List):
            self._listing(event.msg, lambda n, m: str(m.size))
        elif isinstance(event, ev.Uidl):
            self._listing(event.msg, lambda n, m: uidl_of(self.uidvalidity, m.uid))
        elif isinstance(event, (ev.Retr, ev.Top)):
            meta = self._message(event.msg)
            if meta is None:
                return None
            if meta.size > _READ_IN_THREAD:
                return self._send_message(event, meta, threaded=True)
            self._deliver(event, meta, self._read(meta))
        elif isinstance(event, ev.Dele):
            if self._message(event.msg) is not None:
                self._deleted.add(event.msg)
                core.respond(ok(f"Message {event.msg} deleted"))
        elif isinstance(event, ev.Rset):
            self._deleted.clear()
            count, size = self._totals()
            core.respond(ok(f"Maildrop has {count} messages ({size} octets)"))
        elif isinstance(event, ev.Quit):
            return self._update()
        return None

    # ------------------------------------------------------------ login

    async def _pass_login(self, event: ev.PassLogin) -> None:
        result = await self.ctx.authenticator.login(
            event.username, event.password, client_ip=self.client_ip, protocol="pop3",
            mechanism="USER",
        )
        self.core.respond(self._logged_in(result))

    async def _auth_step(self, data: bytes | None) -> None:
        """One step of an AUTH exchange (RFC 5034 4)."""
        exchange = self._exchange
        if exchange is None:   # cannot happen: the core sends AuthResponse only in an exchange
            self.core.respond(err("No authentication exchange in progress"))
            return
        step = await exchange.step(data)
        if isinstance(step, Challenge):
            self.core.challenge(step.data)
            return
        self._exchange = None
        if step.ok and step.server_final is not None:
            # RFC 5034 4 has no additional data with success: SCRAM's
            # server-final message goes as a last challenge, whose answer
            # must be empty, and only then comes +OK.
            self._success = step
            self.core.challenge(step.server_final)
            return
        self.core.respond(self._logged_in(step))

    def _finish_success(self, data: bytes) -> None:
        result, self._success = self._success, None
        assert result is not None
        if data:
            self.core.respond(err("Expected an empty response after the server's final message",
                                  Code.AUTH))
            return
        self.core.respond(self._logged_in(result))

    def _logged_in(self, result: AuthResult) -> Reply:
        """Open the maildrop after a login, or say why not (RFC 3206 codes)."""
        creds = result.credentials
        if not result.ok or creds is None:
            code = Code(result.pop3_code) if result.pop3_code else Code.AUTH
            return err(result.text[:1].upper() + result.text[1:], code)
        store = self.ctx.store
        account_id, address = creds.account_id, creds.address
        lock = MaildropLock(self.ctx.settings.lock_dir, account_id)
        try:
            if not lock.acquire():
                log_event(log, "maildrop in use", client=self.client_ip, user=address,
                          level=logging.INFO)
                return err("Maildrop is in use by another POP3 session", Code.IN_USE)
        except OSError as exc:
            log.error("cannot lock maildrop %s: %s", lock.path, exc)
            return err("Cannot lock the maildrop, try later", Code.SYS_TEMP)
        try:
            mailbox = store.mailbox(account_id, "INBOX")
            if mailbox is None:
                lock.release()
                return err("This account has no INBOX", Code.SYS_PERM)
            self._maildrop = store.messages(mailbox.id)
        except (StoreError, OSError) as exc:
            lock.release()
            log.error("cannot read the INBOX of %s: %s", address, exc)
            return err("Cannot read the maildrop, try later", Code.SYS_TEMP)
        self._lock = lock
        self.address = address
        self.mailbox_id = mailbox.id
        self.uidvalidity = mailbox.uidvalidity
        self._deleted.clear()
        count, size = self._totals()
        log_event(log, "maildrop open", client=self.client_ip, user=self.address,
                  messages=count, size=size, level=logging.DEBUG)
        return ok(f"Logged in, {count} messages ({size} octets)")

    # ------------------------------------------------------------ the maildrop

    def _totals(self) -> tuple[int, int]:
        count = size = 0
        for n, meta in enumerate(self._maildrop, 1):
            if n not in self._deleted:
                count += 1
                size += meta.size
        return count, size

    def _message(self, msg: int) -> MessageMeta | None:
        """The message ``msg`` names, or None after answering -ERR (RFC 1939 5)."""
        if not 1 <= msg <= len(self._maildrop):
            self.core.respond(err(
                f"No such message: {msg}; the maildrop has {len(self._maildrop)} messages"
            ))
            return None
        if msg in self._deleted:
            self.core.respond(err(f"Message {msg} is already deleted"))
            return None
        return self._maildrop[msg - 1]

    def _listing(self, msg: int | None, column: Any) -> None:
        if msg is not None:
            meta = self._message(msg)
            if meta is not None:
                self.core.respond(ok(f"{msg} {column(msg, meta)}"))
            return
        lines = [
            f"{n} {column(n, meta)}"
            for n, meta in enumerate(self._maildrop, 1)
            if n not in self._deleted
        ]
        count, size = self._totals()
        self.core.respond_lines(ok(f"{count} messages ({size} octets)"), lines)

    def _read(self, meta: MessageMeta) -> bytes | None | StoreError | OSError:
        assert self.mailbox_id is not None
        try:
            return self.ctx.store.message_bytes(self.mailbox_id, meta.uid)
        except (StoreError, OSError) as exc:
            return exc

    async def _send_message(self, event: ev.Retr | ev.Top, meta: MessageMeta, *,
                            threaded: bool) -> None:
        data = await asyncio.to_thread(self._read, meta) if threaded else self._read(meta)
        self._deliver(event, meta, data)

    def _deliver(self, event: ev.Retr | ev.Top, meta: MessageMeta,
                 data: bytes | None | StoreError | OSError) -> None:
        if data is None:
            # Expunged (by IMAP) since this session began.
            self.core.respond(err(f"Message {event.msg} was removed by another session"))
            return
        if isinstance(data, Exception):
            log.error("cannot read message %s of %s: %s", meta.uid, self.address, data)
            self.core.respond(err(f"Cannot read message {event.msg}, try later", Code.SYS_TEMP))
            return
        if isinstance(event, ev.Top):
            self.core.respond_message(ok("Top of message follows"), top(data, event.lines))
            return
        self.retrieved += 1
        self.core.respond_message(ok(f"{meta.size} octets"), data)

    async def _update(self) -> None:
        """The UPDATE state (RFC 1939 6): remove what DELE marked, then answer."""
        hostname = self.ctx.hostname
        uids = [self._maildrop[n - 1].uid for n in sorted(self._deleted)]
        if uids and self.mailbox_id is not None:
            try:
                await self.ctx.store.expunge(self.mailbox_id, uids)
            except (StoreError, OSError) as exc:
                log.error("cannot remove %d messages of %s: %s", len(uids), self.address, exc)
                self.close()
                self.core.respond(err(
                    "Deleted messages were not removed, try again later", Code.SYS_TEMP
                ))
                return
            self.removed = len(uids)
        left = len(self._maildrop) - len(uids)
        self._deleted.clear()
        self.close()
        self.core.respond(ok(f"{hostname} Pillarbox POP3 signing off ({left} messages left)"))
