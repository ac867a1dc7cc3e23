"""The receiving side's policy for one SMTP session.

The core (``pillarbox.protocols.smtp.server``) owns syntax and sequence; this
layer decides what the post office accepts: which senders (when the spool
has room), which recipients (local ones, resolved at RCPT time so nothing is
bounced later), and when a message is safe (its blob and envelope are on
stable storage, and only then ``250``).  It speaks to the store, never to a
socket.

Quota (RFC 9208 limits, set with ``pillarbox user quota``) is checked at RCPT
too, so a full mailbox is refused while the client is still there to retry:
``452 4.2.2`` (RFC 3463 X.2.2 mailbox full; RFC 5321 4.2.2: 452 is transient,
so the sender keeps the message and tries again) when the account's usage
has reached a limit, or would pass it with the ``SIZE=`` the client declared
(RFC 1870 6).  Usage is remembered per worker for ``QUOTA_TTL`` seconds, so
the check costs one query per limited account every few seconds; it is a
courtesy at the door, and local delivery enforces the limits exactly.

Submission (RFC 6409, RFC 8314) and relaying: a session may log in with
SMTP AUTH (RFC 4954, through ``pillarbox.auth``); an authenticated user, or
a client in ``smtp.trusted_networks``, may send to any domain, and the
remote recipients go into the queue like local ones.  Everyone else may
only send to local recipients (``relay``, which also refuses the routing
tricks of open-relay tests).  An authenticated user may send only as their
own addresses (``senders``: the envelope sender at MAIL, ``From:`` at the
end of DATA, 550 5.7.1); on the submission ports MAIL needs a login
(530 5.7.0, in the core) and a missing ``Date:`` or ``Message-ID:`` is
added (``submission``).  Their mail, and that of trusted clients, is
DKIM-signed with the keys of its ``From:`` domain (``signing``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from email.utils import format_datetime
from datetime import datetime, timezone

from pillarbox.auth.sasl import Challenge
from pillarbox.auth.service import Authenticator, AuthResult, Exchange, UnknownMechanism
from pillarbox.deliver.recipients import Resolution, Verdict, cached, resolve
from pillarbox.log import log_event
from pillarbox.policy.rdns import HeloResult, ReverseDNS, ReverseName, tcp_info
from pillarbox.policy.spf import SPFResult
from pillarbox.policy.verdict import Action
from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.protocols.smtp.params import xtext_encode
from pillarbox.protocols.smtp.reply import (
    AUTH_OK,
    INSUFFICIENT_STORAGE,
    LOCAL_ERROR,
    MAILBOX_FULL,
    NO_SUCH_USER,
    RELAY_DENIED,
    Reply,
)
from pillarbox.protocols.smtp.server import SMTPServerConnection
from pillarbox.receive.forwarding import Forward, Forwarding, SRSError, is_srs
from pillarbox.receive.origin import OriginChecks
from pillarbox.receive.relay import Network, in_networks, literal_address, routing_trick
from pillarbox.receive.senders import SenderCheck, not_yours
from pillarbox.receive.signing import DKIMSigning, author_domains
from pillarbox.receive.submission import HeaderGate
from pillarbox.store.base import (
    Account,
    Credentials,
    Envelope,
    EnvelopeRecipient,
    Quota,
    StorageFull,
    Store,
    StoreError,
)
from pillarbox.store.blobs import BlobWriter, disk_full, new_id
from pillarbox.store.directory import Directory

log = logging.getLogger("pillarbox.smtp")

QUOTA_TTL = 5.0          # seconds a worker remembers an account's quota usage
RECEIVED_WAIT = 5.0      # seconds the end of DATA waits for the client's reverse name


@dataclass(slots=True)
class ReceiverContext:
    """What every session of one worker shares; built once by ``serve``."""

    store: Store
    hostname: str
    recipient_delimiter: str
    min_free_space: int
    # Makes a finished blob and its envelope durable (``Store.enqueue``
    # in-process, the queue manager's hand-over under ``serve``).
    enqueue: Callable[[str, BlobWriter, Envelope], Awaitable[None]] | None = None
    # SMTP AUTH; None: AUTH is not offered (``sendmail -bs``, tests).
    authenticator: Authenticator | None = None
    # smtp.trusted_networks: clients that may relay without logging in.
    trusted_networks: tuple[Network, ...] = ()
    # The "send as" grants of an account (``pillarbox user send-as``).
    send_as: Callable[[int], Collection[str]] | None = None
    # SPF, DKIM and DMARC of mail from other servers (receive/origin.py); None: off.
    origin: OriginChecks | None = None
    # The client's verified reverse name, for Received: and iprev (policy/rdns.py); None: off.
    reverse_dns: ReverseDNS | None = None
    # DKIM signing of our users' and trusted clients' mail (receive/signing.py); None: off.
    signing: DKIMSigning | None = None
    # Aliases to other domains: SRS and ARC of the copies (receive/forwarding.py);
    # None: such aliases are refused at RCPT, and SRS bounces are not reversed.
    forwarding: Forwarding | None = None
    _space_checked: float = 0.0
    _space_ok: bool = True
    _directory: Directory | None = None
    _quotas: dict[int, tuple[float, Quota | None]] = field(default_factory=dict)

    @property
    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = cached(self.store.directory())
        return self._directory

    def spool_has_room(self) -> bool:
        """Free space on the spool's file system, checked at most once a second."""
        now = time.monotonic()
        if now - self._space_checked > 1.0:
            self._space_checked = now
            try:
                self._space_ok = self.store.spool_free_space() >= self.min_free_space
            except OSError:
                self._space_ok = True
        return self._space_ok

    def quota(self, account_id: int) -> Quota | None:
        """The account's usage and limits (None: no limits), at most ``QUOTA_TTL`` old."""
        now = time.monotonic()
        hit = self._quotas.get(account_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = self.store.quota_if_limited(account_id)
        if len(self._quotas) >= 10000:
            self._quotas.clear()
        self._quotas[account_id] = (now + QUOTA_TTL, value)
        return value

    @property
    def senders(self) -> SenderCheck:
        return SenderCheck(self.directory, self.recipient_delimiter, self.send_as)

    def mailbox_full(self, accounts: tuple[Account, ...], size: int | None) -> bool:
        """Whether any of ``accounts`` is at a limit, or would pass it with ``size`` octets."""
        for account in accounts:
            try:
                q = self.quota(account.id)
            except StoreError:   # the account went away meanwhile: delivery will say so
                continue
            if q is not None and over_quota(q, size):
                return True
        return False


def over_quota(q: Quota, size: int | None) -> bool:
    """At RCPT: a limit is reached, or the declared ``size`` would pass it."""
    if q.messages_limit is not None and q.messages_used >= q.messages_limit:
        return True
    if q.storage_limit is not None:
        if q.storage_used >= q.storage_limit:
            return True
        if size is not None and q.storage_used + size > q.storage_limit:
            return True
    return False


@dataclass(slots=True)
class Transaction:
    """One mail transaction (RFC 5321 3.3): reverse path, recipients, spool."""

    reverse_path: Mailbox | None
    params: object
    recipients: list[tuple[Mailbox, EnvelopeRecipient]] = field(default_factory=list)
    queue_id: str = ""
    writer: BlobWriter | None = None
    header: HeaderGate | None = None      # held for the From: check and RFC 6409 8
    spf: asyncio.Future[SPFResult] | None = None   # begun at MAIL FROM (receive/origin.py)
    received_length: int = 0              # our Received: line, first in the spool
    received_late: bool = False           # ... written at the end of DATA (reverse name)
    signed: str = ""                      # selectors of our DKIM signatures, for the log
    quarantine: bool = False              # a check said: into Junk (receive/origin.py)
    forwards: list[Forward] = field(default_factory=list)   # aliases to other domains
    forward_only: set[int] = field(default_factory=set)     # ... of recipients with no account


RELAY_ROUTING = "Relay access denied: {why}"


class Session:
    """Decisions for one connection; ``tls`` describes the TLS layer once active.

    ``submission``: a submission port (RFC 6409: MAIL needs AUTH, headers are
    completed).  ``local_addresses``: this server's addresses as the client
    reached it, so that ``user@[our address]`` is local (RFC 5321 4.1.3).
    """

    def __init__(self, ctx: ReceiverContext, core: SMTPServerConnection, client_address: str,
                 *, submission: bool = False, local_addresses: tuple[str, ...] = (),
                 tls: tuple[str, str, int] | None = None):
        self.ctx = ctx
        self.core = core
        self.client_address = client_address
        self.submission = submission
        self.local_addresses = local_addresses
        self.tls: tuple[str, str, int] | None = tls   # version, cipher, bits
        self.tx: Transaction | None = None
        self.messages = 0
        self.account: Credentials | None = None       # after a successful AUTH
        self.trusted = in_networks(client_address, ctx.trusted_networks)
        # Begun now, so the lookups run while the client says EHLO, MAIL and RCPT.
        rdns = ctx.reverse_dns
        self.reverse: asyncio.Future[ReverseName] | None = (
            rdns.start(client_address) if rdns is not None else None)
        self.helo_check: asyncio.Future[HeloResult] | None = None
        self._exchange: Exchange | None = None
        self._success: AuthResult | None = None       # SCRAM's v= sent, its empty answer due
        self.set_auth_policy()

    @property
    def protocol(self) -> str:
        """The name logins are logged under."""
        return "submission" if self.submission else "smtp"

    @property
    def may_relay(self) -> bool:
        return self.account is not None or self.trusted

    # ---------------------------------------------------------------- AUTH

    def set_auth_policy(self) -> None:
        """What the core offers: AUTH only over TLS, or from loopback where allowed."""
        core, auth = self.core, self.ctx.authenticator
        core.auth_enabled = auth is not None
        core.auth_required = self.submission
        tls = self.tls is not None or core.tls_active
        if auth is not None and auth.plaintext_allowed(tls, self.client_address):
            core.mechanisms = tuple(auth.mechanisms(True, self.client_address))
        else:
            core.mechanisms = ()

    def tls_established(self) -> None:
        """STARTTLS completed: the core forgot everything (RFC 3207 4.2), so offer again."""
        self.auth_cancelled()
        self.account = None
        self.set_auth_policy()

    def auth_cancelled(self) -> None:
        """The client cancelled (``*``) or broke the exchange: logged, not counted."""
        if self._exchange is not None:
            self._exchange.cancel()
            self._exchange = None
        self._success = None

    async def auth(self, event: ev.AuthStart | ev.AuthResponse) -> None:
        """One step of an AUTH exchange; answers the core with 334 or a final reply."""
        core, auth = self.core, self.ctx.authenticator
        assert auth is not None    # the core sends no AuthStart without it
        if isinstance(event, ev.AuthStart):
            self.auth_cancelled()
            try:
                self._exchange = auth.start(event.mechanism, client_ip=self.client_address,
                                            protocol=self.protocol)
            except UnknownMechanism:   # the core offers only what the authenticator has
                core.respond(Reply(504, "5.5.4", "Unrecognized authentication type"))
                return
            data = event.initial
        else:
            if self._success is not None:
                result, self._success = self._success, None
                if event.data:
                    core.respond(Reply(535, "5.7.8", "Authentication failed: expected an "
                                                     "empty response to the server's final message"))
                else:
                    core.respond(self._logged_in(result))
                return
            data = event.data
        exchange = self._exchange
        if exchange is None:
            core.respond(Reply(503, "5.5.1", "No authentication exchange in progress"))
            return
        step = await exchange.step(data)
        if isinstance(step, Challenge):
            core.challenge(step.data)
            return
        self._exchange = None
        if step.ok and step.server_final is not None:
            # RFC 4954 4 carries no additional data with 235: SCRAM's
            # server-final message goes as a last 334, answered empty.
            self._success = step
            core.challenge(step.server_final)
            return
        core.respond(self._logged_in(step))

    def _logged_in(self, result: AuthResult) -> Reply:
        if result.ok and result.credentials is not None:
            self.account = result.credentials
            return AUTH_OK
        code, status = result.smtp_reply
        return Reply(code, status, result.text[:1].upper() + result.text[1:])

    # ------------------------------------------------------------ envelope

    def answer_now(self, event: object) -> bool:
        """Handle ``event`` if it is one answered at once, the same way over
        every transport (the network adapter, ``sendmail -bs``); False for the
        others (end of message, AUTH, STARTTLS, NEED_DATA …), which are the
        transport's."""
        kind = type(event)
        if kind is ev.MessageData:
            self.message_data(event.data)  # type: ignore[attr-defined]
        elif kind is ev.RcptTo:
            self.core.respond(self.rcpt_to(event))  # type: ignore[arg-type]
        elif kind is ev.MailFrom:
            self.core.respond(self.mail_from(event))  # type: ignore[arg-type]
        elif kind is ev.MessageStart:
            self.message_start()
        elif kind is ev.MessageAborted:
            self.message_aborted(event)  # type: ignore[arg-type]
        elif kind is ev.Hello:
            self.reset()
            self.hello(event)  # type: ignore[arg-type]
        elif kind is ev.Reset:
            self.reset()
        else:
            return False
        return True

    def hello(self, event: ev.Hello) -> None:
        """EHLO/HELO: begin the HELO check (policy/rdns.py), judged at the end of DATA."""
        if self.helo_check is not None:
            self.helo_check.cancel()
            self.helo_check = None
        origin = self.ctx.origin
        if origin is not None and not self.trusted:
            self.helo_check = origin.start_helo(self.client_address, event.domain,
                                                self.local_addresses)

    def mail_from(self, event: ev.MailFrom) -> Reply:
        if not self.ctx.spool_has_room():
            log_event(log, "refused", client=self.client_address, reason="spool full",
                      level=logging.WARNING)
            return INSUFFICIENT_STORAGE
        account = self.account
        sender = str(event.reverse_path) if event.reverse_path else ""
        allowed: bool | None = True
        if account is not None and event.reverse_path is not None:
            allowed = self._may_send_as(account, event.reverse_path)
        if allowed is None:
            return LOCAL_ERROR
        if account is not None and not allowed:
            reply = not_yours(sender, account.address, "Sender address")
            log_event(log, "refused", client=self.client_address, account=account.address,
                      from_=sender, reply=str(reply))
            return reply
        self.tx = Transaction(event.reverse_path, event.params)
        origin = self._origin
        if origin is not None:
            self.tx.spf = origin.start_spf(self.client_address, sender,
                                           self.core.helo_name or "")
        return Reply(250, "2.1.0", f"Sender <{sender}> ok")

    @property
    def _origin(self) -> OriginChecks | None:
        """The checks of who sent it, for mail from other servers: not for our
        users' mail, nor for clients of ``smtp.trusted_networks`` (our own
        senders, or relays in front of us, whose address says nothing of the
        author domain's servers)."""
        if self.account is not None or self.submission or self.trusted:
            return None
        return self.ctx.origin

    def rcpt_to(self, event: ev.RcptTo) -> Reply:
        tx = self.tx
        assert tx is not None
        path = event.forward_path
        if not path.domain:
            path = self._postmaster(path.local_part)
        relay = self.may_relay
        trick = None if relay else routing_trick(path, event.source_route)
        ours = path.is_literal and self._our_literal(path.domain)
        if ours:
            # RFC 5321 4.1.3: a literal of our own address names this host,
            # whose users are those of the local domains (as for <Postmaster>).
            path = self._postmaster(path.local_part)
        resolution = self._resolve(path)
        verdict = resolution.verdict
        if ours and verdict is Verdict.REMOTE:
            verdict = Verdict.UNKNOWN     # for this host, and no user of it
        if (trick is None and verdict is not Verdict.REMOTE and self.ctx.forwarding is not None
                and is_srs(path.local_part)):
            return self._srs_bounce(tx, path, event.params)
        if verdict is Verdict.FORWARD and self.ctx.forwarding is None:
            verdict = Verdict.UNKNOWN     # forwarding is not wired in this receiver
        if trick is not None:
            reply = Reply(RELAY_DENIED.code, RELAY_DENIED.status, RELAY_ROUTING.format(why=trick))
        elif verdict is Verdict.REMOTE and relay:
            return self._relay_to(tx, path, event.params)
        elif verdict is Verdict.REMOTE:
            reply = RELAY_DENIED
        elif verdict is Verdict.UNKNOWN:
            reply = NO_SUCH_USER
        elif self.ctx.mailbox_full(resolution.accounts, getattr(tx.params, "size", None)):
            reply = MAILBOX_FULL
        else:
            params = event.params
            orcpt = f"{params.orcpt[0]};{xtext_encode(params.orcpt[1])}" if params.orcpt else None
            notify = ",".join(params.notify) if params.notify else None
            address = f"{path.local_part}@{path.ascii_domain}"
            recipient = EnvelopeRecipient(address, notify, orcpt)
            if resolution.forwards and self.ctx.forwarding is not None:
                # An alias to other domains (receive/forwarding.py): a copy at the end of DATA.
                if not resolution.accounts:
                    tx.forward_only.add(len(tx.recipients))
                tx.forwards.append(Forward(path.ascii_domain.lower(), recipient,
                                           resolution.forwards))
            tx.recipients.append((path, recipient))
            return Reply(250, "2.1.5", f"Recipient <{path}> ok")
        log_event(
            log, "rejected", client=self.client_address, helo=self.core.helo_name,
            from_=_path_text(tx.reverse_path), to=str(path), reply=str(reply),
        )
        return reply

    def _relay_to(self, tx: Transaction, path: Mailbox, params: object) -> Reply:
        """An authorised client's remote recipient: queued for remote delivery."""
        orcpt_value = getattr(params, "orcpt", None)
        notify_value = getattr(params, "notify", None)
        orcpt = f"{orcpt_value[0]};{xtext_encode(orcpt_value[1])}" if orcpt_value else None
        notify = ",".join(notify_value) if notify_value else None
        address = f"{path.local_part}@{path.ascii_domain}"
        tx.recipients.append((path, EnvelopeRecipient(address, notify, orcpt)))
        return Reply(250, "2.1.5", f"Recipient <{path}> ok")

    def _srs_bounce(self, tx: Transaction, path: Mailbox, params: object) -> Reply:
        """RCPT to an SRS address of ours (receive/srs.py): a bounce (or reply) to a
        copy we forwarded, for its original sender; 550 5.1.1 unless the hash
        is ours and the address not expired."""
        assert self.ctx.forwarding is not None
        try:
            original = self.ctx.forwarding.reverse(path.local_part)
            local, _, domain = original.rpartition("@")
            target = Mailbox(local, domain)
            verdict = self._resolve(target).verdict
        except (SRSError, ValueError) as exc:
            reply = Reply(550, "5.1.1", f"No such user here: {exc}")
        else:
            if verdict in (Verdict.REMOTE, Verdict.LOCAL):
                log_event(log, "srs reversed", client=self.client_address, to=str(path),
                          original=original)
                return self._relay_to(tx, target, params)
            reply = NO_SUCH_USER
        log_event(
            log, "rejected", client=self.client_address, helo=self.core.helo_name,
            from_=_path_text(tx.reverse_path), to=str(path), reply=str(reply),
        )
        return reply

    def _our_literal(self, domain: str) -> bool:
        addr = literal_address(domain)
        return addr is not None and str(addr) in {
            str(a) for a in (literal_address(f"[{x}]" if ":" not in x else f"[IPv6:{x}]")
                             for x in self.local_addresses) if a is not None}

    def _postmaster(self, local_part: str) -> Mailbox:
        """RCPT TO:<Postmaster> (RFC 5321 4.5.1) must always be accepted: it is
        the postmaster of the server's own name if that is a local domain,
        else of the first local domain that has one.  (Also the user of an
        address literal of ours: the first local domain that has the user.)"""
        candidates = [self.ctx.hostname] + [d[0] for d in self.ctx.store.list_domains()]
        for domain in candidates:
            mailbox = Mailbox(local_part, domain)
            if self._resolve(mailbox).verdict is Verdict.LOCAL:
                return mailbox
        return Mailbox(local_part, self.ctx.hostname)

    def _resolve(self, path: Mailbox) -> Resolution:
        if path.is_literal:
            return Resolution(Verdict.REMOTE)
        try:
            domain = path.ascii_domain
        except Exception:  # noqa: BLE001 - an unconvertible domain is not ours
            return Resolution(Verdict.REMOTE)
        return resolve(self.ctx.directory, path.local_part, domain,
                       self.ctx.recipient_delimiter)

    # ------------------------------------------------------------- content

    def message_start(self) -> None:
        tx = self.tx
        assert tx is not None
        tx.queue_id = new_id()
        if self.account is not None or self.submission:
            tx.header = HeaderGate(add_missing=self.submission,
                                   message_id=f"<{tx.queue_id}@{self.ctx.hostname}>")
        elif self.ctx.origin is not None or self._signing is not None:
            origin = self.ctx.origin
            tx.header = HeaderGate(add_missing=False, message_id="",
                                   strip=origin.strip if origin is not None else None)
        try:
            tx.writer = self.ctx.store.new_blob(tx.queue_id)
            if self.reverse is not None and not self.reverse.done():
                tx.received_late = True   # the reverse name is not known yet
            else:
                received = self._received_header(tx)
                tx.received_length = len(received)
                tx.writer.write(received)
        except OSError as exc:
            self._spool_failed(exc)

    def message_data(self, data: bytes) -> None:
        tx = self.tx
        if tx is None or tx.writer is None:
            return
        if tx.header is not None and tx.header.holding:
            data = tx.header.feed(data)
            if not data:
                return
        try:
            tx.writer.write(data)
        except OSError as exc:
            self._spool_failed(exc)

    def _header_refusal(self, tx: Transaction) -> Reply | None:
        """At the end of DATA: the held header goes to the spool; a forged From: refuses."""
        gate = tx.header
        if gate is None:
            return None
        rest = gate.finish()
        if rest and tx.writer is not None:
            try:
                tx.writer.write(rest)
            except OSError as exc:
                log_event(log, "spool error", client=self.client_address, error=str(exc),
                          level=logging.ERROR)
                return INSUFFICIENT_STORAGE if disk_full(exc) else LOCAL_ERROR
        account = self.account
        if account is None:
            return None
        if gate.too_long:
            return Reply(550, "5.7.1", "Header section too long to check its From: field")
        for sender in gate.senders:
            allowed = False if isinstance(sender, str) else self._may_send_as(account, sender)
            if allowed is None:
                return LOCAL_ERROR
            if not allowed:
                return not_yours(str(sender), account.address, "From: address")
        return None

    def _may_send_as(self, account: Credentials, mailbox: Mailbox) -> bool | None:
        """``receive.senders``; None when the store cannot answer (451: our fault)."""
        try:
            return self.ctx.senders.allowed(account, mailbox)
        except Exception as exc:  # noqa: BLE001 - the store's failure must not end the session
            log_event(log, "sender check failed", account=account.address, error=repr(exc),
                      level=logging.ERROR)
            return None

    def _spool_failed(self, exc: OSError) -> None:
        full = disk_full(exc)
        log_event(log, "spool error", client=self.client_address,
                  reason="storage full" if full else "write failed", error=str(exc),
                  level=logging.ERROR)
        if self.tx is not None and self.tx.writer is not None:
            self.tx.writer.discard()
            self.tx.writer = None
        self.core.abort_message(INSUFFICIENT_STORAGE if full else LOCAL_ERROR)

    async def message_end(self, event: ev.MessageEnd) -> Reply:
        tx, self.tx = self.tx, None
        assert tx is not None and tx.writer is not None
        refusal = self._header_refusal(tx)
        if refusal is not None:
            if tx.writer is not None:
                tx.writer.discard()
            log_event(log, "refused", client=self.client_address,
                      account=self.account.address if self.account else None,
                      from_=_path_text(tx.reverse_path), reply=str(refusal))
            return refusal
        if tx.received_late:
            failed = await self._late_received(tx)
            if failed is not None:
                return failed
        origin = self._origin
        if origin is not None:
            judged = await self._judge(origin, tx)
            if judged is not None:
                return judged
        signing = self._signing
        if signing is not None:
            failed = await self._sign(signing, tx)
            if failed is not None:
                return failed
        params = tx.params
        requiretls = bool(getattr(params, "requiretls", False))
        envelope = Envelope(
            reverse_path=_path_text(tx.reverse_path),
            recipients=tuple(r for i, (_, r) in enumerate(tx.recipients)
                             if i not in tx.forward_only),
            client_address=self.client_address,
            helo=self.core.helo_name or "",
            body=getattr(params, "body", None),
            smtputf8=bool(getattr(params, "smtputf8", False)),
            dsn_ret=getattr(params, "ret", None),
            dsn_envid=getattr(params, "envid", None),
            quarantine=tx.quarantine,
            # RFC 8689 4.1: tagged at receipt; with REQUIRETLS the header field is ignored.
            requiretls=requiretls,
            tls_required_no=event.tls_required_no and not requiretls,
        )
        started = time.monotonic()
        try:
            enqueue = self.ctx.enqueue or self.ctx.store.enqueue
            if tx.forwards:
                forwarded = await self._forward(tx, envelope, enqueue)
                if not envelope.recipients:    # only forwarded copies
                    tx.writer.discard()
                    self.messages += 1
                    return Reply(250, "2.0.0", f"Ok: queued as {forwarded}")
            await enqueue(tx.queue_id, tx.writer, envelope)
        except (StorageFull, OSError) as exc:
            full = isinstance(exc, StorageFull) or disk_full(exc)
            log_event(log, "refused", client=self.client_address,
                      reason="storage full" if full else "spool error", error=str(exc),
                      level=logging.ERROR)
            return INSUFFICIENT_STORAGE if full else LOCAL_ERROR
        except Exception as exc:  # noqa: BLE001 - any failure to store is transient for the client
            log_event(log, "refused", client=self.client_address, reason="store error",
                      error=repr(exc), level=logging.ERROR)
            return LOCAL_ERROR
        self.messages += 1
        log_event(
            log, "queued", queue_id=tx.queue_id, client=self.client_address,
            helo=self.core.helo_name, from_=f"<{envelope.reverse_path}>",
            to=",".join(r.address for r in envelope.recipients), size=tx.writer.size,
            account=self.account.address if self.account else None,
            added=",".join(tx.header.added) if tx.header and tx.header.added else None,
            dkim=tx.signed or None,
            tls=self.tls[0] if self.tls else None,
            requiretls="yes" if envelope.requiretls else (
                "TLS-Required: No" if envelope.tls_required_no else None),
            ms=round((time.monotonic() - started) * 1000, 1), status="queued",
        )
        return Reply(250, "2.0.0", f"Ok: queued as {tx.queue_id}")

    async def _forward(self, tx: Transaction, envelope: Envelope,
                       enqueue: Callable[[str, BlobWriter, Envelope], Awaitable[None]]) -> str:
        """Queue the copies for aliases to other domains (receive/forwarding.py),
        before the message's own entry (whose hand-over may release the spool);
        the queue ids.  Raises as ``enqueue`` does."""
        forwarding = self.ctx.forwarding
        assert forwarding is not None and tx.writer is not None
        origin = self._origin
        try:
            queued = await forwarding.enqueue_copies(
                tx.forwards, tx.writer, envelope,
                authserv_id=origin.authserv_id if origin is not None else None,
                is_local_domain=self.ctx.directory.is_local_domain,
                new_blob=self.ctx.store.new_blob, enqueue=enqueue)
        except BaseException:
            tx.writer.discard()
            raise
        return ",".join(qid for qid, _ in queued)

    async def _late_received(self, tx: Transaction) -> Reply | None:
        """Our Received: line in front of the spooled message, once the client's
        reverse name is known or ``RECEIVED_WAIT`` has passed."""
        assert tx.writer is not None
        reverse = self.reverse
        if reverse is not None and not reverse.cancelled():
            try:
                await asyncio.wait_for(asyncio.shield(reverse), RECEIVED_WAIT)
            except Exception:  # noqa: BLE001 - time-out or a bug: the address alone, then
                pass
        received = self._received_header(tx)
        try:
            tx.writer.prepend(received)
        except OSError as exc:
            tx.writer.discard()
            log_event(log, "spool error", client=self.client_address, error=str(exc),
                      level=logging.ERROR)
            return INSUFFICIENT_STORAGE if disk_full(exc) else LOCAL_ERROR
        tx.received_length = len(received)
        return None

    async def _judge(self, origin: OriginChecks, tx: Transaction) -> Reply | None:
        """SPF, DKIM and DMARC at the end of DATA: a refusal, or None with our
        ``Authentication-Results:`` put in front of the spooled message."""
        assert tx.writer is not None
        try:
            message = tx.writer.content(tx.received_length, origin.dkim_max_size)
            domains = {r.address.rpartition("@")[2].lower() for _, r in tx.recipients}
            judgement = await origin.judge(tx.spf, message, domains, reverse=self.reverse,
                                           helo=self.helo_check)
        except OSError as exc:
            tx.writer.discard()
            log_event(log, "spool error", client=self.client_address, error=str(exc),
                      level=logging.ERROR)
            return INSUFFICIENT_STORAGE if disk_full(exc) else LOCAL_ERROR
        except Exception as exc:  # noqa: BLE001 - a bug in a check must not lose the message
            log_event(log, "origin checks failed", client=self.client_address,
                      error=repr(exc), level=logging.ERROR)
            tx.writer.discard()
            return LOCAL_ERROR
        verdict = judgement.verdict
        if verdict.is_final:
            assert verdict.reply is not None
            tx.writer.discard()
            log_event(log, "refused", client=self.client_address, helo=self.core.helo_name,
                      from_=_path_text(tx.reverse_path), check=verdict.check,
                      reply=str(verdict.reply))
            return verdict.reply
        try:
            tx.writer.insert(tx.received_length, judgement.header)
        except OSError as exc:
            tx.writer.discard()
            log_event(log, "spool error", client=self.client_address, error=str(exc),
                      level=logging.ERROR)
            return INSUFFICIENT_STORAGE if disk_full(exc) else LOCAL_ERROR
        tx.quarantine = judgement.quarantine
        if verdict.action is not Action.ACCEPT:
            log_event(log, "origin", queue_id=tx.queue_id, check=verdict.check,
                      action=verdict.action.value, reason=verdict.reason)
        return None

    @property
    def _signing(self) -> DKIMSigning | None:
        """DKIM signing, for mail of an authenticated user or a trusted client."""
        signing = self.ctx.signing
        if signing is None:
            return None
        if self.account is not None or (self.trusted and signing.sign_trusted):
            return signing
        return None

    async def _sign(self, signing: DKIMSigning, tx: Transaction) -> Reply | None:
        """Sign with the active keys of the ``From:`` domain (receive/signing.py) and put
        the DKIM-Signature fields in front of the spooled message; a refusal only
        when the spool fails.  A failure of the signing itself is logged and the
        message goes unsigned: the fault is ours, not the sender's."""
        assert tx.writer is not None
        if tx.header is None:
            return None
        signers = signing.signers(author_domains(tx.header.senders))
        if not signers:
            return None
        try:
            fields = await signing.sign(tx.writer, signers)
            tx.writer.insert(tx.received_length, fields)
        except OSError as exc:
            tx.writer.discard()
            log_event(log, "spool error", client=self.client_address, error=str(exc),
                      level=logging.ERROR)
            return INSUFFICIENT_STORAGE if disk_full(exc) else LOCAL_ERROR
        except Exception as exc:  # noqa: BLE001 - a signing bug must not lose the message
            log_event(log, "dkim signing failed", queue_id=tx.queue_id, error=repr(exc),
                      level=logging.ERROR)
            return None
        tx.signed = ",".join(f"{s.selector}@{s.domain}" for s in signers)
        return None

    def message_aborted(self, event: ev.MessageAborted) -> None:
        tx, self.tx = self.tx, None
        if tx is not None and tx.writer is not None:
            tx.writer.discard()
        log_event(
            log, "refused", client=self.client_address, helo=self.core.helo_name,
            from_=_path_text(tx.reverse_path) if tx else None, reply=str(event.reply),
        )

    def reset(self) -> None:
        tx, self.tx = self.tx, None
        if tx is not None and tx.writer is not None:
            tx.writer.discard()

    def discard(self) -> None:
        """The connection is gone: drop what was not committed."""
        self.auth_cancelled()
        self.reset()
        for task in (self.reverse, self.helo_check):
            if task is not None:
                task.cancel()

    # ----------------------------------------------------------- Received

    def _received_header(self, tx: Transaction) -> bytes:
        """RFC 5321 4.4 time stamp line, with RFC 3848 / RFC 6531 ``with`` keywords."""
        core = self.core
        smtputf8 = bool(getattr(tx.params, "smtputf8", False))
        if smtputf8:
            proto = "UTF8SMTPS" if self.tls else "UTF8SMTP"
        elif core.esmtp:
            proto = "ESMTPS" if self.tls else "ESMTP"
        else:
            proto = "SMTPS" if self.tls else "SMTP"
        if self.account is not None:
            proto += "A"     # RFC 3848 ESMTPA / ESMTPSA, RFC 6531 UTF8SMTPA / UTF8SMTPSA
        info = tcp_info(self.client_address, ReverseDNS.settled(self.reverse))
        helo = _sanitize(core.helo_name or "unknown")
        lines = [
            f"Received: from {helo} ({info})",
            f"\tby {self.ctx.hostname} (Pillarbox) with {proto} id {tx.queue_id}",
        ]
        if self.tls:
            version, cipher, bits = self.tls
            lines.append(f"\t(using {version} with cipher {cipher} ({bits} bits))")
        if len(tx.recipients) == 1:
            lines.append(f"\tfor <{_sanitize(str(tx.recipients[0][0]))}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{_now_rfc5322()}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _path_text(path: Mailbox | None) -> str:
    return str(path) if path is not None else ""


_UNSAFE = "()\\;"     # would end a comment or a clause of the Received: field
_UNSAFE_RE = re.compile(f"[{re.escape(_UNSAFE)}]")


def _sanitize(text: str) -> str:
    """Keep client-supplied text from breaking the header's structure."""
    if text.isprintable() and _UNSAFE_RE.search(text) is None:
        return text[:255]     # the usual case: nothing to replace
    return "".join(c if c.isprintable() and c not in _UNSAFE else "?" for c in text)[:255]


_date_cache: tuple[int, str] = (0, "")


def _now_rfc5322() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_datetime(datetime.fromtimestamp(now, timezone.utc).astimezone()))
    return _date_cache[1]

