"""Remote delivery: one message, the recipients of one domain, over SMTP.

:class:`RemoteDelivery` takes a route for the domain from the MX resolver
(``pillarbox.deliver.mx``; anything with ``async route(domain)``) or uses
the configured relay host, and tries its hosts and their addresses in order
(RFC 5321 §5.1): the next one on a connection failure, a time-out before the
transaction, a 4xx or 5xx greeting, a refused EHLO, or a required TLS that
was not there.  Once MAIL is sent the attempt belongs to that server: its
replies decide each recipient's outcome (``pillarbox.deliver.outbound``):

- 2xx → ``delivered``, or ``relayed`` when the recipient asked for
  NOTIFY=SUCCESS and the next hop does not do DSN (RFC 3461 §5.2.2);
- 4xx → ``deferred``; 5xx → ``failed``; the reply quoted exactly;
- a refused MAIL, DATA or end of data applies to every recipient it covers;
- a connection lost or timed out in the transaction → ``deferred``.

Before the transaction, what the next hop offers decides: a message that
needs SMTPUTF8 fails with 5.6.7 where it is not offered (RFC 6531 §3.5); an
8-bit message goes out converted to 7-bit MIME where 8BITMIME is not
offered (RFC 6152 §3, ``pillarbox.mime.generate.to_7bit``); a message larger
than the server's SIZE fails with 5.3.4 (RFC 1870 §6).

TLS per domain: ``none`` (never STARTTLS), ``may`` (STARTTLS when offered,
any certificate; a failed handshake falls back to plaintext, RFC 7435 §3),
``encrypt`` (TLS required, any certificate), ``verify`` (TLS required, the
certificate valid for the MX host name).

MTA-STS (RFC 8461, ``pillarbox.deliver.mta_sts``), when given: a domain with
an ``enforce`` policy gets only the MX hosts that match the policy, each with
TLS as ``verify``; no matching host, or no such TLS, defers the message with
a reply that names the policy and the failure (``451 4.7.5``).  A ``testing``
policy tries a verified certificate first and only logs what would have
failed.  A domain in ``tls_policies`` is delivered by that policy alone, and
the relay host is not subject to MTA-STS: both are the operator's choice.

DANE (RFC 7672, ``pillarbox.deliver.dane``), when given, comes first: where
the domain's MX records are DNSSEC-validated, each MX host with validated
TLSA records must do STARTTLS and present a chain that matches one of them
(usable records none: TLS without authentication); neither the TLS policy
nor MTA-STS decides for such a host (RFC 8461 §2), and an MTA-STS
``enforce`` policy does not drop it.  A failed DNSSEC lookup (bogus data,
SERVFAIL) defers the domain (MX) or skips the host (its addresses, TLSA).
Domains in ``tls_policies`` and the relay host are not subject to DANE.

REQUIRETLS (RFC 8689 §4.2.1): a message received with it goes only to an MX
host validated by DNSSEC (the domain's MX RRset secure, as DANE sees it) or
by an MTA-STS policy (``enforce`` or ``testing``) that lists it, over TLS
with a certificate valid for the MX host name (or matching its TLSA records
under DANE), to a server that offers REQUIRETLS in its EHLO reply under TLS,
and with REQUIRETLS on MAIL FROM.  The relay host counts as validated (the
operator named it) and needs the same TLS and REQUIRETLS.  These lookups are
made even for a domain in ``tls_policies``.  Nothing falls back to plaintext
or to an unverified certificate, no idle connection is reused for such a
message, and what fails is permanent: ``550 5.7.30`` (no validated MX host,
or REQUIRETLS not offered) or ``550 5.7.10`` (no TLS as required), so the
sender gets a report at once (which itself carries REQUIRETLS, RFC 8689 §5,
``pillarbox.queue.report``).  A connection failure is transient as always.

``TLS-Required: No`` (RFC 8689 §4.2.2, a message without REQUIRETLS): DANE,
MTA-STS and the domain's TLS policy are not enforced; STARTTLS is still used
where offered, any certificate, with the fallback to plaintext of ``may``
(a domain configured ``none`` stays without TLS).  The relay host keeps its
own TLS setting.

Connections: at most ``per_destination`` in use per destination and
``total`` in all; an idle connection is kept ``idle_seconds`` and carries the
next message to the same destination.  Its last transaction ended with the
reply to its content, which ends a transaction (RFC 5321 §4.1.1.4), so the
next MAIL goes without an RSET; only one whose transaction stopped short (every
recipient refused) is reset first.  A connection the server dropped while it
was idle shows before the server took anything (the connection closes, or a
421, before the reply to MAIL; no reply within ``RSET_PROBE``): the message
then goes over another connection, as after a failed RSET.  A slow destination
only ever holds its own slots, and every wait is bounded by a time-out.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from pillarbox.deliver.dane import DANE, DANEPolicy, peer_chain
from pillarbox.deliver.mta_sts import MTASTS, CachedPolicy, Mode, mx_refused, tls_refused
from pillarbox.deliver.outbound import Delivery, OutboundMessage, Outcome, Status
from pillarbox.log import log_event
from pillarbox.mime.generate import to_7bit
from pillarbox.net.smtp_client import SessionFailed, SMTPClient, Timeouts, Transaction
from pillarbox.protocols.smtp.client import (
    Envelope,
    LocalClientError,
    LoginClient,
    PlainClient,
    Recipient,
    SASLClient,
    ServerReply,
)

if TYPE_CHECKING:
    from pillarbox.config import DeliveryConfig
    from pillarbox.reports.tlsrpt import TLSRecorder

__all__ = ["RelayHost", "RemoteDelivery", "RouteResolver", "TLSPolicy"]

log = logging.getLogger("pillarbox.remote")

CHUNK = 65536
RSET_PROBE = 30.0     # seconds for the first reply on an idle connection taken up again


class TLSPolicy(enum.Enum):
    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"


class _MXHost(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def preference(self) -> int: ...
    @property
    def addresses(self) -> tuple[str, ...]: ...


class _Route(Protocol):
    @property
    def hosts(self) -> Sequence[_MXHost]: ...


class RouteResolver(Protocol):
    async def route(self, domain: str) -> _Route: ...


@dataclass(frozen=True, slots=True)
class _Host:
    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _HostList:
    domain: str
    hosts: tuple[_Host, ...]
    implicit: bool = False


def _without_ourselves(hosts: Sequence[_MXHost], me: str) -> list[_MXHost] | None:
    """RFC 5321 §5.1: when we are one of the domain's MX hosts, only the ones
    preferred to us may be tried (the others would hand it back); None when
    none is: a loop, as when a domain's only MX names us and the domain is
    not ours."""
    me = me.lower().rstrip(".")
    ours = [h.preference for h in hosts if h.name.lower().rstrip(".") == me]
    if not ours:
        return list(hosts)
    best = min(ours)
    return [h for h in hosts if h.preference < best] or None


@dataclass(frozen=True, slots=True)
class RelayHost:
    """A smarthost that replaces MX routing: all mail goes to it."""

    host: str                       # a name or an IP literal
    port: int = 587
    implicit_tls: bool = False      # TLS from the first byte (RFC 8314), e.g. port 465
    tls: TLSPolicy = TLSPolicy.ENCRYPT   # for STARTTLS; implicit TLS is always encrypted
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:      # never the password
        return (f"RelayHost({self.host!r}, {self.port}, implicit_tls={self.implicit_tls}, "
                f"tls={self.tls.value}, username={self.username!r})")


@dataclass(eq=False)
class _Destination:
    slots: asyncio.Semaphore
    idle: list[tuple[SMTPClient, asyncio.TimerHandle]] = field(default_factory=list)
    users: int = 0        # deliveries holding or waiting for a slot


class _Stale(Exception):
    """A connection taken up again turned out dead before the server took anything."""


class _TryNext(Exception):
    """This host or address cannot take the message now; ``reply`` says why."""

    def __init__(self, reply: str, permanent: bool = False, tls: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent
        self.tls = tls          # TLS was required and failed, or was not offered


class RemoteDelivery:
    """Delivers queued messages to other mail servers (see the module docstring)."""

    def __init__(
        self,
        resolver: RouteResolver | None,
        *,
        helo_name: str,
        port: int = 25,
        tls_policies: Mapping[str, TLSPolicy] | None = None,
        default_tls: TLSPolicy = TLSPolicy.MAY,
        relay: RelayHost | None = None,
        per_destination: int = 20,
        total: int = 100,
        idle_seconds: float = 5.0,
        max_messages_per_connection: int = 100,
        timeouts: Timeouts = Timeouts(),
        ca_file: Path | None = None,
        use_chunking: bool = True,
        mta_sts: MTASTS | None = None,
        dane: DANE | None = None,
    ) -> None:
        if resolver is None and relay is None:
            raise ValueError("remote delivery needs an MX resolver or a relay host")
        self.resolver = resolver
        self.helo_name = helo_name
        self.port = port
        self.tls_policies = {k.lower().rstrip("."): v for k, v in (tls_policies or {}).items()}
        self.default_tls = default_tls
        self.relay = relay
        self.per_destination = per_destination
        self.idle_seconds = idle_seconds
        self.max_messages_per_connection = max_messages_per_connection
        self.timeouts = timeouts
        self.ca_file = ca_file
        self.use_chunking = use_chunking
        self.mta_sts = mta_sts
        self.dane = dane
        self.tls_report: TLSRecorder | None = None   # TLS-RPT counts (RFC 8460), set by serve
        self._total = asyncio.Semaphore(total)
        self._destinations: dict[str, _Destination] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()   # QUITs of idle connections

    @classmethod
    def from_config(cls, config: DeliveryConfig, resolver: RouteResolver | None, *,
                    helo_name: str, mta_sts: MTASTS | None = None,
                    dane: DANE | None = None) -> RemoteDelivery:
        """Built from the ``[delivery]`` section; with ``relay_host`` the resolver is unused.
        ``mta_sts``: ``MTASTS.from_config(...)`` (None when ``mta_sts`` is off);
        ``dane``: a :class:`~pillarbox.deliver.dane.DANE` (None: no DANE)."""
        from pillarbox.config import parse_listen_address

        relay = None
        if config.relay_host:
            host, port = parse_listen_address(config.relay_host)
            password = None
            if config.relay_password_file is not None:
                lines = config.relay_password_file.read_text(encoding="utf-8").splitlines()
                password = lines[0] if lines else ""
            relay = RelayHost(host.strip("[]"), port, implicit_tls=config.relay_implicit_tls,
                              tls=TLSPolicy(config.relay_tls),
                              username=config.relay_username or None, password=password)
        timeouts = Timeouts(
            connect=config.connect_timeout, greeting=config.command_timeout,
            command=config.command_timeout, mail=config.command_timeout,
            rcpt=config.command_timeout, data_init=config.data_init_timeout,
            data_block=config.data_block_timeout, data_end=config.data_end_timeout)
        policies = {}
        for item in config.tls_policy.replace(",", " ").split():
            domain, _, policy = item.partition("=")
            policies[domain] = TLSPolicy(policy)
        return cls(
            None if relay else resolver, helo_name=helo_name, port=config.remote_port,
            tls_policies=policies, default_tls=TLSPolicy(config.tls_default), relay=relay,
            per_destination=config.connections_per_destination,
            total=config.connections_total, idle_seconds=config.connection_idle_seconds,
            timeouts=timeouts, ca_file=config.tls_ca_file, mta_sts=mta_sts, dane=dane,
        )

    # ---------------------------------------------------------------- public

    async def deliver(self, domain: str, message: OutboundMessage) -> Delivery:
        """One attempt for the recipients of ``domain``: an outcome for each of them."""
        if self._closed:
            raise RuntimeError("RemoteDelivery is closed")
        if not message.recipients:
            return Delivery(())
        key = self._key(domain)
        dest = self._destinations.get(key)
        if dest is None:
            dest = self._destinations[key] = _Destination(asyncio.Semaphore(self.per_destination))
        dest.users += 1
        try:
            async with dest.slots, self._total:
                return await self._deliver(dest, domain, message)
        finally:
            dest.users -= 1
            self._forget(key, dest)

    def _key(self, domain: str) -> str:
        """Connections and limits are per destination: the domain, or the relay host."""
        return "[relay]" if self.relay else domain.lower().rstrip(".")

    def _forget(self, key: str, dest: _Destination) -> None:
        """Drop a destination nobody uses: a million domains must not stay in memory."""
        if not dest.users and not dest.idle and self._destinations.get(key) is dest:
            del self._destinations[key]

    async def close(self) -> None:
        """QUIT every idle connection; deliveries under way finish on their own."""
        self._closed = True
        quits = []
        for key, dest in list(self._destinations.items()):
            for client, timer in dest.idle:
                timer.cancel()
                quits.append(client.quit())
            dest.idle.clear()
            self._forget(key, dest)
        await asyncio.gather(*quits, *self._background, return_exceptions=True)

    @property
    def idle_connections(self) -> int:
        return sum(len(d.idle) for d in self._destinations.values())

    # ------------------------------------------------------------- delivery

    async def _deliver(self, dest: _Destination, domain: str, message: OutboundMessage) -> Delivery:
        requiretls = message.requiretls
        # RFC 8689 4.2.2: the sender asked that no recipient-side TLS policy hold it up.
        relaxed = message.tls_required_no and not requiretls
        # An idle connection may be plaintext or unverified: REQUIRETLS opens its own.
        while dest.idle and not requiretls:
            client, timer = dest.idle.pop()
            timer.cancel()
            if client.closed:
                continue
            if client.needs_reset:
                try:
                    # A probe as much as a reset: an idle connection the server has
                    # dropped without a word must not cost a full command time-out.
                    async with asyncio.timeout(min(self.timeouts.command, RSET_PROBE)):
                        reply = await client.reset()
                except (SessionFailed, TimeoutError):
                    client.abort()
                    continue
                if not reply.is_positive:
                    await client.quit()
                    continue
            try:
                return await self._transaction(dest, client, domain, message, reused=True)
            except _Stale:
                client.abort()    # dropped while idle, nothing taken: the next one
                continue
            except BaseException:
                client.abort()
                raise

        policy = self._policy(domain)
        if relaxed and self.relay is None and policy is not TLSPolicy.NONE:
            policy = TLSPolicy.MAY
        route: _Route
        sts: CachedPolicy | None = None
        testing: CachedPolicy | None = None     # a testing policy: report, do not enforce
        dane: dict[str, DANEPolicy] = {}         # MX host name -> its DANE policy
        if self.relay is not None:
            route = await self._relay_route(domain)
            port = self.relay.port
        else:
            assert self.resolver is not None
            try:
                route = await self.resolver.route(domain)
            except Exception as exc:
                # pillarbox.deliver.mx.RouteError: permanent (null MX, no such
                # domain) or transient (DNS time-out), with its reply text.
                why = getattr(exc, "reply", None)
                if why is None:
                    # Not a RouteError: a bug or an unforeseen resolver failure.
                    # The message is kept and tried again; the log says what broke.
                    log.error("route lookup for %s failed", domain, exc_info=exc)
                    why = f"451 4.4.3 Routing error for {domain}: {exc!r}"
                permanent = bool(getattr(exc, "permanent", False))
                log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                          result="failed" if permanent else "deferred", reply=str(why),
                          level=logging.WARNING)
                return self._all(message, "failed" if permanent else "deferred", str(why))
            port = self.port
            hosts = _without_ourselves(route.hosts, self.helo_name)
            if hosts is None:
                why = (f"554 5.4.6 Mail for {domain} loops back to myself"
                       f" ({self.helo_name} is its best MX)")
                log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                          result="failed", reply=why, level=logging.WARNING)
                return self._all(message, "failed", why)
            route = _HostList(domain, tuple(_Host(h.name, h.preference, h.addresses)
                                              for h in hosts))
            dane, why = ({}, None) if relaxed else await self._dane(
                domain, route.hosts, port, force=requiretls)
            if why is not None:
                log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                          result="deferred", reply=why, level=logging.WARNING)
                return self._all(message, "deferred", why)
            sts = None if relaxed else await self._mta_sts(domain, force=requiretls)
            if sts is not None:
                allowed = tuple(h for h in route.hosts if sts.policy.allows(h.name)
                                or _dane_of(dane, h.name) is not None)
                log_event(log, "sts policy", queue_id=message.queue_id, domain=domain,
                          mode=sts.policy.mode.value, id=sts.id,
                          refused=",".join(h.name for h in route.hosts if h not in allowed)
                          or None, level=logging.INFO)
                if sts.policy.mode is Mode.ENFORCE:
                    if not allowed:
                        why = mx_refused(sts, [h.name for h in route.hosts])
                        log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                                  result="deferred", reply=why, level=logging.WARNING)
                        return self._all(message, "deferred", why)
                    route, policy = _HostList(domain, allowed), TLSPolicy.VERIFY
                else:
                    testing = sts
            if requiretls:
                validated = tuple(h for h in route.hosts if _mx_validated(h.name, dane, sts))
                if not validated:
                    why = (f"550 5.7.30 REQUIRETLS support required: no MX host of {domain} "
                           f"({', '.join(h.name for h in route.hosts)}) is validated by DNSSEC "
                           "or by an MTA-STS policy (RFC 8689 4.2.1)")
                    log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                              result="failed", reply=why, level=logging.WARNING)
                    return self._all(message, "failed", why)
                route = _HostList(domain, validated)

        errors: list[_TryNext] = []
        for host in route.hosts:
            host_dane = _dane_of(dane, host.name)
            if host_dane is not None and host_dane.mode == "failed":
                errors.append(_TryNext(host_dane.reply))
                if (report := self._tls_report(domain)) is not None:
                    report.failure(domain, host.name, "", host_dane.reply, dane=host_dane)
                log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                          mx=host.name, result="next", reply=host_dane.reply,
                          level=logging.INFO)
                continue
            for address in host.addresses:
                started = time.monotonic()
                try:
                    client = await self._open(host.name, address, port, policy, testing,
                                              host_dane, requiretls=requiretls)
                except _TryNext as exc:
                    if exc.tls and requiretls:
                        # RFC 8689 4.2.1: no plaintext, no other certificate, no retry.
                        exc = _TryNext(f"550 5.7.10 REQUIRETLS: no TLS as required with "
                                       f"{host.name} (RFC 8689 4.2.1): {exc.reply}",
                                       permanent=True, tls=True)
                    elif exc.tls and sts is not None and sts.policy.mode is Mode.ENFORCE \
                            and host_dane is None:
                        exc = _TryNext(tls_refused(sts, host.name, exc.reply), tls=True)
                    errors.append(exc)
                    if exc.tls and (report := self._tls_report(domain)) is not None:
                        report.failure(domain, host.name, address, exc.reply, sts=sts,
                                       dane=host_dane)
                    log_event(log, "attempt", queue_id=message.queue_id, domain=domain,
                              mx=host.name, address=address, port=port, result="next",
                              reply=exc.reply, seconds=round(time.monotonic() - started, 3),
                              level=logging.INFO)
                    continue
                if (report := self._tls_report(domain)) is not None:
                    report.session(domain, host.name, address, tls=client.tls is not None,
                                   verified=bool(client.tls and client.tls.verified),
                                   sts=sts, dane=host_dane)
                try:
                    return await self._transaction(dest, client, domain, message,
                                                   reused=False, started=started)
                except BaseException:
                    client.abort()     # a bug or a cancellation: never leave it open
                    raise
        if not errors:
            text = f"451 4.4.4 No mail server address for {domain}"
            return self._all(message, "deferred", text)
        permanent = all(e.permanent for e in errors)
        return self._all(message, "failed" if permanent else "deferred", errors[-1].reply)

    async def _relay_route(self, domain: str) -> _HostList:
        relay = self.relay
        assert relay is not None
        try:
            ipaddress.ip_address(relay.host)
            addresses: tuple[str, ...] = (relay.host,)
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeouts.connect):
                    infos = await loop.getaddrinfo(relay.host, relay.port,
                                                   type=socket.SOCK_STREAM)
                addresses = tuple(dict.fromkeys(str(i[4][0]) for i in infos))
            except (OSError, TimeoutError):
                addresses = ()
        return _HostList(domain, (_Host(relay.host, 0, addresses),))

    async def _dane(self, domain: str, hosts: Sequence[_MXHost], port: int, *,
                    force: bool = False) -> tuple[dict[str, DANEPolicy], str | None]:
        """The DANE policy of each MX host (RFC 7672 §2.2), or the reply that
        defers the domain: its MX lookup failed DNSSEC (bogus, SERVFAIL).
        ``force``: also for a domain in ``tls_policies`` (REQUIRETLS)."""
        if self.dane is None or (not force and domain.lower().rstrip(".") in self.tls_policies):
            return {}, None
        try:
            security = await self.dane.domain(domain)
            if security.status == "failed":
                return {}, self.dane.domain_reply(security)
            return await self.dane.hosts(security, [h.name for h in hosts], port), None
        except Exception as exc:     # a bug: never deliver without the check, say so
            log.error("DANE lookup for %s failed", domain, exc_info=exc)
            return {}, f"451 4.3.0 DANE lookup for {domain} failed: {exc!r}"

    async def _mta_sts(self, domain: str, *, force: bool = False) -> CachedPolicy | None:
        """The MTA-STS policy to apply to ``domain``: none for a domain whose TLS
        policy is configured (the operator's word wins, unless ``force``: the
        MX validation of REQUIRETLS) or in mode ``none``."""
        if self.mta_sts is None or (not force
                                    and domain.lower().rstrip(".") in self.tls_policies):
            return None
        try:
            sts = await self.mta_sts.lookup(domain)
        except Exception as exc:      # a bug: deliver as without MTA-STS, say so
            log.error("MTA-STS lookup for %s failed", domain, exc_info=exc)
            return None
        return sts if sts is not None and sts.policy.mode is not Mode.NONE else None

    def _tls_report(self, domain: str) -> TLSRecorder | None:
        """Where to count TLS-RPT sessions (RFC 8460): not for the relay host or a
        domain whose TLS policy the operator configured (their choice, not the domain's)."""
        if self.relay is not None or domain.lower().rstrip(".") in self.tls_policies:
            return None
        return self.tls_report

    def _policy(self, domain: str) -> TLSPolicy:
        if self.relay is not None:
            return self.relay.tls
        return self.tls_policies.get(domain.lower().rstrip("."), self.default_tls)

    def _context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._contexts.get(verify)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._contexts[verify] = ctx
        return ctx

    async def _open(self, name: str, address: str, port: int, policy: TLSPolicy,
                    testing: CachedPolicy | None = None,
                    dane: DANEPolicy | None = None, *, requiretls: bool = False) -> SMTPClient:
        """A session ready for MAIL on ``address``, or :class:`_TryNext`.  With a
        ``testing`` MTA-STS policy the certificate is checked first, and a failure
        is logged, then the connection made again as ``policy`` says.  Under
        ``dane`` TLS is mandatory and the chain is checked by DANE alone.
        ``requiretls`` (RFC 8689 4.2.1): TLS with a certificate verified for
        ``name``, or matched by DANE records, and REQUIRETLS offered under it."""
        if requiretls:
            matched = dane is not None and dane.mode == "verify"
            policy = TLSPolicy.ENCRYPT if matched else TLSPolicy.VERIFY
            testing = None
        elif dane is not None:
            policy, testing = TLSPolicy.ENCRYPT, None
        relay = self.relay
        implicit = relay is not None and relay.implicit_tls
        verify = policy is TLSPolicy.VERIFY or (testing is not None
                                                and policy is not TLSPolicy.NONE)
        try_tls = policy is not TLSPolicy.NONE and not implicit
        where = f"{name}[{address}]:{port}"
        while True:
            client: SMTPClient | None = None
            try:
                client = await SMTPClient.connect(
                    address, port, helo_name=self.helo_name, timeouts=self.timeouts,
                    host_name=name, implicit_tls=self._context(verify) if implicit else None,
                    use_chunking=self.use_chunking)
                greeting = client.greeting
                assert greeting is not None
                if greeting.code != 220:
                    await client.quit()
                    raise _TryNext(greeting.quote(), permanent=greeting.is_permanent)
                reply = await client.hello()
                if not reply.is_positive:
                    await client.quit()
                    raise _TryNext(reply.quote(), permanent=reply.is_permanent)
                if try_tls and client.extensions.starttls:
                    try:
                        # A verified certificate must name the MX host (RFC 8689
                        # 4.2.1); DANE's SNI is its TLSA base domain (RFC 7672 8.1).
                        reply = await client.starttls(
                            self._context(verify),
                            dane.server_name if dane and not verify else name)
                    except SessionFailed as exc:
                        if exc.kind == "tls" and testing is not None and verify \
                                and policy is not TLSPolicy.VERIFY:
                            # RFC 8461 5.1: in mode testing a failure is only reported.
                            log_event(log, "sts testing", mx=name, address=address,
                                      domain=testing.domain, id=testing.id,
                                      error=exc.detail, level=logging.WARNING)
                            if self.tls_report is not None:    # RFC 8460: a failure all the same
                                self.tls_report.failure(testing.domain, name, address,
                                                        exc.detail, sts=testing)
                            verify = False
                            continue
                        if exc.kind == "tls" and policy is TLSPolicy.MAY:
                            # RFC 7435 3: opportunistic TLS falls back to plaintext.
                            log_event(log, "tls fallback", mx=name, address=address,
                                      error=exc.detail, level=logging.INFO)
                            try_tls = False
                            continue
                        raise
                    if not reply.is_positive and client.tls is not None:
                        await client.quit()   # EHLO under TLS refused
                        raise _TryNext(reply.quote(), permanent=reply.is_permanent)
                    refused = "" if client.tls else f" (STARTTLS refused: {reply.quote()})"
                else:
                    refused = ""
                if dane is not None:
                    await self._check_dane(client, dane, where, refused)
                if policy in (TLSPolicy.ENCRYPT, TLSPolicy.VERIFY) and client.tls is None:
                    await client.quit()
                    raise _TryNext(f"450 4.7.4 TLS is required, but {where} did not offer "
                                   f"it{refused}", tls=True)
                if requiretls and not client.extensions.requiretls:
                    await client.quit()
                    raise _TryNext(f"550 5.7.30 REQUIRETLS support required: {where} does "
                                   "not offer REQUIRETLS under TLS (RFC 8689 4.2.1)",
                                   permanent=True)
                if relay is not None and relay.username:
                    await self._authenticate(client, relay, where)
                return client
            except SessionFailed as exc:
                if client is not None:
                    client.abort()
                raise _TryNext(self._failure_text(exc, where), tls=exc.kind == "tls") from None
            except _TryNext:
                if client is not None:
                    client.abort()
                raise

    @staticmethod
    async def _check_dane(client: SMTPClient, dane: DANEPolicy, where: str,
                          refused: str) -> None:
        """RFC 7672 §2.2, §3: TLS, and for ``verify`` a chain that matches a record."""
        if client.tls is None:
            await client.quit()
            raise _TryNext(dane.no_tls_reply(where, refused), tls=True)
        if dane.mode == "verify":
            tls = client.ssl_object
            verdict = dane.check(peer_chain(tls) if tls is not None else (), where)
            if not verdict.ok:
                await client.quit()
                raise _TryNext(verdict.reason, tls=True)
            log_event(log, "dane", mx=client.host_name, address=client.address,
                      tlsa=dane.tlsa_name, result=str(verdict), level=logging.INFO)

    async def _authenticate(self, client: SMTPClient, relay: RelayHost, where: str) -> None:
        if client.tls is None:
            await client.quit()
            raise _TryNext(f"451 4.7.0 Not sending credentials to {where} without TLS")
        offered = client.extensions.auth
        mechanism: SASLClient
        assert relay.username is not None
        password = relay.password or ""
        if "SCRAM-SHA-256" in offered:
            from pillarbox.auth.scram_client import ScramClient

            mechanism = ScramClient(relay.username, password)
        elif "PLAIN" in offered:
            mechanism = PlainClient(relay.username, password)
        elif "LOGIN" in offered:
            mechanism = LoginClient(relay.username, password)
        else:
            await client.quit()
            raise _TryNext(f"451 4.7.0 {where} offers no SASL mechanism we know "
                           f"({' '.join(sorted(offered)) or 'no AUTH'})")
        reply = await client.auth(mechanism)
        if not reply.is_positive:
            await client.quit()
            # A refused login is a configuration problem here: retry, never bounce.
            raise _TryNext(f"451 4.7.0 {where} refused AUTH {mechanism.name} as "
                           f"{relay.username} (check the relay credentials): {reply.quote()}")

    @staticmethod
    def _failure_text(exc: SessionFailed, where: str) -> str:
        if exc.kind == "connect":
            return f"451 4.4.1 No answer from {where}: {exc.detail}"
        if exc.kind == "timeout":
            return f"451 4.4.2 Timeout: {exc.detail}"
        if exc.kind == "closing" and exc.reply is not None:
            return exc.reply.quote()
        if exc.kind == "tls":
            return f"451 4.7.5 {exc.detail}"
        if exc.kind == "protocol":
            return f"451 4.5.0 Protocol error: {exc.detail}"
        return f"451 4.4.2 Lost connection to {where} waiting for {exc.stage} reply"

    # ---------------------------------------------------------- transaction

    async def _transaction(self, dest: _Destination, client: SMTPClient, domain: str,
                           message: OutboundMessage, *, reused: bool,
                           started: float | None = None) -> Delivery:
        started = started if started is not None else time.monotonic()
        name = client.host_name
        ext = client.extensions
        tls = str(client.tls) if client.tls else None
        smtputf8 = message.smtputf8 or not message.reverse_path.isascii() or any(
            not r.address.isascii() for r in message.recipients)
        delivery: Delivery
        keep = True
        if smtputf8 and not ext.smtputf8:
            delivery = self._all(message, "failed", f"550 5.6.7 {client.peer} does not support "
                                 "SMTPUTF8, which this message needs (RFC 6531 3.5)", name, tls)
        elif ext.size and message.size > ext.size:
            delivery = self._all(message, "failed", f"552 5.3.4 Message size {message.size} "
                                 f"exceeds the limit of {ext.size} of {client.peer}", name, tls)
        else:
            delivery, keep = await self._send(client, message, smtputf8, reused=reused)
        results = [o.result for o in delivery.outcomes]
        log_event(log, "attempt", queue_id=message.queue_id, domain=domain, mx=name,
                  address=client.address, port=client.port, tls=tls or "none",
                  tls_peer=client.tls.peer_name if client.tls else None, reused=reused,
                  result=",".join(sorted(set(results))),
                  delivered=results.count("delivered") + results.count("relayed"),
                  deferred=results.count("deferred"), failed=results.count("failed"),
                  reply=delivery.outcomes[0].reply.split("\n")[-1] if delivery.outcomes else None,
                  seconds=round(time.monotonic() - started, 3))
        if keep and not client.closed:
            self._release(self._key(domain), dest, client)
        else:
            client.abort()
        return delivery

    async def _send(self, client: SMTPClient, message: OutboundMessage,
                    smtputf8: bool, *, reused: bool = False) -> tuple[Delivery, bool]:
        """The transaction itself; also whether the connection may carry another.
        Raises :class:`_Stale` when a ``reused`` connection was dead before its
        MAIL had a reply."""
        ext = client.extensions
        name, tls = client.host_name, str(client.tls) if client.tls else None
        body, size = message.body, message.size
        converted: bytes | None = None
        if body == "8BITMIME" and not ext.eightbitmime:
            # RFC 6152 3: the next hop takes 7-bit only; convert, keeping the content.
            try:
                converted = await asyncio.to_thread(self._read_7bit, message)
            except OSError as exc:
                return self._all(message, "deferred", "451 4.3.0 Local error reading the "
                                 f"message: {exc}", name, tls), True
            except Exception as exc:   # a message our MIME code cannot rewrite
                log.error("7-bit conversion of %s failed", message.queue_id, exc_info=exc)
                return self._all(message, "failed", "554 5.6.3 Conversion to 7-bit MIME for "
                                 f"{client.peer}, which lacks 8BITMIME, failed: {exc}",
                                 name, tls), True
            body, size = None, len(converted)
        envelope = Envelope(
            message.reverse_path,
            tuple(Recipient(r.address, r.notify, r.orcpt) for r in message.recipients),
            size=size, body=body if body == "8BITMIME" else None, smtputf8=smtputf8,
            ret=message.dsn_ret, envid=message.dsn_envid, requiretls=message.requiretls)
        content = _chunks(converted) if converted is not None else _read(message.open_body)
        try:
            tx = await client.send(
                envelope, content,
                first_reply=min(self.timeouts.mail, RSET_PROBE) if reused else None)
        except SessionFailed as exc:
            if reused and exc.stage == "MAIL" and exc.kind in ("lost", "closing", "timeout"):
                raise _Stale(exc.detail) from None
            return self._all(message, "deferred", self._failure_text(exc, client.peer),
                             name, tls), False
        except LocalClientError as exc:
            return self._all(message, "deferred",
                             f"451 4.3.0 Local error sending to {client.peer}: {exc}",
                             name, tls), False
        except OSError as exc:   # reading the spool failed mid-message: never end it
            return self._all(message, "deferred",
                             f"451 4.3.0 Local error reading the message: {exc}", name, tls), False
        finally:
            if isinstance(content, _Reader):
                content.close()
        if reused and tx.mail.code == 421:
            # The server's "closing" of an idle connection, read as MAIL's reply.
            raise _Stale(tx.mail.quote())
        return self._outcomes(message, tx, name, tls, ext.dsn), True

    @staticmethod
    def _read_7bit(message: OutboundMessage) -> bytes:
        with message.open_body() as f:
            return to_7bit(f.read())

    def _quit_later(self, client: SMTPClient) -> None:
        task = asyncio.get_running_loop().create_task(client.quit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _release(self, key: str, dest: _Destination, client: SMTPClient) -> None:
        """Keep the connection for the next message to this destination, a while."""
        if (self._closed or self.idle_seconds <= 0
                or client.messages >= self.max_messages_per_connection
                or len(dest.idle) >= self.per_destination):
            self._quit_later(client)
            return

        def expire() -> None:
            for i, (c, _) in enumerate(dest.idle):
                if c is client:
                    del dest.idle[i]
                    self._quit_later(client)
                    self._forget(key, dest)
                    return

        timer = asyncio.get_running_loop().call_later(self.idle_seconds, expire)
        dest.idle.append((client, timer))

    def _outcomes(self, message: OutboundMessage, tx: Transaction, mta: str,
                  tls: str | None, dsn: bool) -> Delivery:
        outcomes = []
        for rcpt, reply in zip(message.recipients, tx.rcpts, strict=True):
            if not tx.mail.is_positive or reply is None:
                decided = tx.mail
            elif not reply.is_positive:
                decided = reply
            elif tx.data is not None and tx.data.code != 354:
                decided = tx.data
            elif tx.final is None:
                decided = tx.data or reply
            else:
                decided = tx.final
            result = _result(decided)
            if result == "delivered" and not dsn and "SUCCESS" in (rcpt.notify or "").upper():
                result = "relayed"
            outcomes.append(Outcome(rcpt.idx, result, decided.quote(),
                                    decided.status_or(), mta))
        return Delivery(tuple(outcomes), tls)

    @staticmethod
    def _all(message: OutboundMessage, result: Status, reply: str, mta: str | None = None,
             tls: str | None = None) -> Delivery:
        first = reply.split("\n")[0]
        parts = first.split(" ")
        status = parts[1] if len(parts) > 1 and parts[1][:1] in "245" and "." in parts[1] \
            else f"{first[:1] or '4'}.0.0"
        return Delivery(tuple(Outcome(r.idx, result, reply, status, mta)
                              for r in message.recipients), tls)


def _mx_validated(host: str, dane: Mapping[str, DANEPolicy], sts: CachedPolicy | None) -> bool:
    """RFC 8689 4.2.1: the MX host comes from a DNSSEC-validated MX RRset (DANE
    has a policy for each host of a secure RRset; ``failed`` is not validated),
    or an MTA-STS policy (``enforce`` or ``testing``) lists it (RFC 8461 4.1)."""
    found = dane.get(host.lower().rstrip("."))
    if found is not None and found.mode != "failed":
        return True
    return sts is not None and sts.policy.mode is not Mode.NONE and sts.policy.allows(host)


def _dane_of(policies: Mapping[str, DANEPolicy], host: str) -> DANEPolicy | None:
    """The DANE policy of an MX host where DANE applies to it, else None."""
    found = policies.get(host.lower().rstrip("."))
    return found if found is not None and found.applies else None


def _result(reply: ServerReply) -> Status:
    if reply.is_positive:
        return "delivered"
    return "deferred" if reply.is_transient else "failed"


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


class _Reader:
    """The stored message in chunks, opened on first use, closed by ``close()``."""

    def __init__(self, opener: Callable[[], BinaryIO]) -> None:
        self._opener = opener
        self._file: BinaryIO | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._file = self._opener()
        while chunk := self._file.read(CHUNK):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read(opener: Callable[[], BinaryIO]) -> _Reader:
    return _Reader(opener)
