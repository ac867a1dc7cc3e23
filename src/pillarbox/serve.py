"""``pillarbox serve``: the only place where the parts are wired together.

Python runs one thread of bytecode per process, so Pillarbox uses processes
(DESIGN.md, processes and cores): this supervisor takes the data directory's
lock (``pillarbox.store.lock``), opens the store, binds the listening
sockets, then forks

- ``workers`` protocol workers, which all accept from the same sockets, and
- one queue manager, which delivers what the workers queued.

It restarts a child that dies (after a short pause, so a crash loop does not
spin), and on SIGTERM or SIGINT stops them all: workers stop accepting,
finish the sessions they have for a few seconds, and close the rest with
421 4.3.2.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import string
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pillarbox.config import Config
from pillarbox.log import log_event, setup_logging
from pillarbox.net.balance import BalancedServer
from pillarbox.net.limits import ConnectionLimiter
from pillarbox.store.lock import DataDirBusy, DataDirLock
from pillarbox.store.sqlite.recent import RecentTable
from pillarbox.store.sqlite.store import SQLiteStore

log = logging.getLogger("pillarbox.serve")

DEV_DOMAIN = "localhost"
DEV_ACCOUNT = "demo@localhost"
SHUTDOWN_GRACE = 10.0


@dataclass(slots=True)
class Child:
    role: str          # "worker", "queue" or "delivery"
    index: int
    pid: int = 0
    started: float = 0.0


def bind_listeners(addresses: tuple[tuple[str, int], ...], key: str) -> list[socket.socket]:
    """Bind the addresses of the configuration key ``key``, or leave naming it."""
    socks = []
    for host, port in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = "; another program listens there (ss -ltnp shows which)"
            elif exc.errno == errno.EACCES and port < 1024:
                hint = "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
            raise SystemExit(f"pillarbox: error: {key}: cannot listen on {host}:{port}: "
                             f"{exc.strerror}{hint}") from None
        sock.listen(1024)
        sock.setblocking(False)
        socks.append(sock)
    return socks


_DEMO_ALPHABET = string.ascii_letters + string.digits


def demo_password() -> str:
    """16 letters and digits (95 bits): printed in the ``send:`` line of ``make serve``,
    so it must survive any command line and URL as it is.  ``token_urlsafe`` could start
    with ``-``, which swaks then took for an option."""
    return "".join(secrets.choice(_DEMO_ALPHABET) for _ in range(16))


def ensure_dev_defaults(store: SQLiteStore) -> str:
    """The development defaults of DESIGN.md: domain localhost, account demo@localhost.

    The demo password is made once and kept in ``demo-password`` (mode 0600)
    in the data directory, so every start can print it.
    """
    from pillarbox.auth.passwords import make_secrets
    from pillarbox.store.base import AlreadyExists

    secret_file = store.data_dir / "demo-password"
    if not any(d[0] == DEV_DOMAIN for d in store.list_domains()):
        store.add_domain(DEV_DOMAIN)
    if store.get_password_hash(DEV_ACCOUNT) is None:
        password = demo_password()
        store.add_account(DEV_ACCOUNT, *make_secrets(password))
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        try:
            store.add_alias("postmaster@localhost", DEV_ACCOUNT)
        except AlreadyExists:
            pass
    try:
        return secret_file.read_text().strip()
    except FileNotFoundError:
        return "(unknown: set one with 'pillarbox user passwd demo@localhost')"


def _tls_files(config: Config) -> tuple[Path, Path, dict[str, str]]:
    """The certificate and key the listeners present (the development one is made
    once), and the configuration key that names each, for errors."""
    from pillarbox.net.tls import ensure_self_signed

    if config.tls.certificate and config.tls.private_key:
        return (config.tls.certificate, config.tls.private_key,
                {"certificate": "tls.certificate: ", "private_key": "tls.private_key: "})
    cert, key = ensure_self_signed(config.server.data_dir / "tls", config.server.hostname)
    return cert, key, {}


def tls_context(config: Config) -> ssl.SSLContext:
    """The certificate the listeners present, or leave naming the file that is wrong."""
    from pillarbox.net.tls import TLSFileError, server_context

    cert, key, keys = _tls_files(config)
    try:
        return server_context(cert, key)
    except TLSFileError as exc:
        raise SystemExit(f"pillarbox: error: {keys.get(exc.fault, '')}{exc}") from None


def _reload_tls(config: Config, ctx: ssl.SSLContext) -> None:
    """SIGHUP in a worker: the certificate and key read again (a renewal), or,
    if they cannot be, the old ones kept and the reason logged."""
    from pillarbox.net.tls import TLSFileError, load_chain

    cert, key, keys = _tls_files(config)
    try:
        load_chain(ctx, cert, key)
    except TLSFileError as exc:
        log_event(log, "tls reload failed", error=f"{keys.get(exc.fault, '')}{exc}",
                  note="still presenting the certificate read before", level=logging.ERROR)
        return
    log_event(log, "tls reloaded", certificate=str(cert))


def serve(config: Config, *, dev_mode: bool = False) -> int:
    # First of all, own the data directory: start-up clean-up against a
    # directory another server is using would remove its uncommitted blobs.
    # The lock is held until this supervisor returns; children inherit it.
    fresh = _new_data_dir(config.server.data_dir, dev_mode)
    check_data_dir_owner(config.server.data_dir)
    lock = own_data_dir(config.server.data_dir)
    try:
        setup_logging(config.log.format, config.log.level, config.log.file)
    except OSError as exc:
        raise SystemExit(f"pillarbox: error: log.file: cannot open {config.log.file}: "
                         f"{exc.strerror}") from None
    if fresh and not dev_mode:
        log_event(log, "new data directory", path=str(config.server.data_dir),
                  note="made now: it holds no domain, account or mail yet", level=logging.WARNING)
    store = SQLiteStore(config.server.data_dir).open()
    password = ensure_dev_defaults(store) if dev_mode else None
    orphans = store.collect_orphans(lock)
    store.collect_blobs()
    store.close()
    if orphans:
        log_event(log, "spool cleanup", removed=orphans,
                  note="blobs of messages that never got their 250")
    # The certificate is loaded here, once: a bad one fails the start, the
    # development one is made once rather than by each worker at the same
    # time, and a key only root may read (as is usual) still serves once
    # privileges are dropped.  The workers inherit the context.
    listeners = Listeners.bind(config, tls_context(config))
    workers = config.workers_effective
    limiter = ConnectionLimiter(
        config.smtp.max_connections, config.smtp.max_connections_per_ip, workers
    )
    limiters = Limiters(
        smtp=limiter,
        imap=ConnectionLimiter(config.imap.max_connections, config.imap.max_connections_per_ip,
                               workers),
        accounts=ConnectionLimiter(1 << 30, config.imap.max_connections_per_account, workers),
        pop3=ConnectionLimiter(config.imap.max_connections, config.pop3.max_connections_per_ip,
                               workers),
        recent=RecentTable(),
    )
    _preload()
    _drop_privileges(config.server.user, config.server.data_dir)
    _announce(config, listeners, password, workers)

    children = ([Child("queue", 0)] + [Child("worker", i) for i in range(workers)]
                + [Child("delivery", i) for i in range(config.delivery_agents)])
    stopping = False

    class _Stop(Exception):
        pass

    def on_signal(signum, frame):  # type: ignore[no-untyped-def]
        nonlocal stopping
        if not stopping:
            stopping = True
            raise _Stop  # interrupts waitpid (PEP 475 would otherwise retry it)

    def on_reload(signum, frame):  # type: ignore[no-untyped-def]
        # SIGHUP (``systemctl reload``, a certificate renewal's hook): each
        # worker reads the certificate again; nothing else is restarted.
        for child in children:
            if child.role == "worker" and child.pid:
                try:
                    os.kill(child.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_reload)
    # Everything imported and loaded so far is shared with the children by
    # fork; frozen, the garbage collector never writes to those objects, so
    # their pages stay shared (copy-on-write) instead of being copied into
    # every child (the gc documentation's advice for fork without exec).
    gc.freeze()
    try:
        for child in children:
            _start(child, config, listeners, limiters)
    except _Stop:
        pass
    while not stopping:
        # The signal may come at any point of a turn, the pause before a
        # restart included: always on to stopping the children, never out
        # of serve() with them still running and holding the lock.
        try:
            pid, status = os.waitpid(-1, 0)
            for child in children:
                if child.pid == pid and not stopping:
                    code = os.waitstatus_to_exitcode(status)
                    log_event(log, "child exited", role=child.role, index=child.index,
                              pid=pid, code=code, level=logging.ERROR)
                    child.pid = 0
                    if time.monotonic() - child.started < 5:
                        time.sleep(1)
                    if child.role == "worker":
                        limiters.clear(child.index)
                    _start(child, config, listeners, limiters)
        except _Stop:
            break
        except ChildProcessError:
            break
    for child in children:
        if child.pid:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + SHUTDOWN_GRACE + 5
    for child in children:
        while child.pid and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            time.sleep(0.05)
        else:
            if child.pid:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    log_event(log, "stopped")
    lock.release()
    return 0


# What Pillarbox makes in the data directory: the directories it creates
# files in (blobs/ down to blobs/XX/), and the files it writes in place.
_OUR_DIRECTORIES = ("blobs", "dkim", "reports", "run", "tls")
_WRITTEN_IN_PLACE = ("lock", ".db", ".sqlite", "-wal", "-shm")
_READ = ("srs.secret", "demo-password")    # read at start, never written again


def check_data_dir_owner(data_dir: Path) -> None:
    """Leave at once if the data directory holds what we may not use.

    A file made there by another user, typically ``pillarbox domain add``
    run under sudo beside a server that runs as its own user, would fail
    the start with SQLite's "attempt to write a readonly database", or
    fail later, at the first message, on a blob directory or on the queue
    manager's socket in ``run/``.  Root may use anything (and
    ``_drop_privileges`` hands everything to ``server.user``).  Only what
    Pillarbox makes is checked: not the blobs, never written again, nor
    what an administrator keeps there (a mount point's ``lost+found``).
    """
    if os.geteuid() == 0 or not data_dir.is_dir():
        return
    every = os.R_OK | os.W_OK | os.X_OK
    checks = [(data_dir, every)]
    with os.scandir(data_dir) as listing:
        for entry in listing:
            if entry.name in _OUR_DIRECTORIES and entry.is_dir():
                checks.append((Path(entry.path), every))
            elif entry.name.endswith(_WRITTEN_IN_PLACE) and entry.is_file():
                checks.append((Path(entry.path), os.R_OK | os.W_OK))
            elif entry.name in _READ and entry.is_file():
                checks.append((Path(entry.path), os.R_OK))
    for path, mode in checks:
        if not os.access(path, mode):
            _not_ours(data_dir, path, mode)
        if path.name == "blobs":
            with os.scandir(path) as listing:
                for entry in listing:
                    if entry.is_dir() and not os.access(entry.path, every):
                        _not_ours(data_dir, Path(entry.path), every)


def _not_ours(data_dir: Path, path: Path, mode: int) -> NoReturn:
    st, me = path.stat(), _user_name(os.geteuid())
    if st.st_uid == os.geteuid():
        wanted = "".join(letter for bit, letter in ((os.R_OK, "r"), (os.W_OK, "w"),
                                                    (os.X_OK, "x")) if mode & bit)
        problem = (f"has mode {st.st_mode & 0o7777:04o}, which keeps the server from using it: "
                   f"chmod u+{wanted} {path}")
    else:
        problem = (f"belongs to {_user_name(st.st_uid)}, and this server runs as {me}, which "
                   f"may not use it: chown -R {me} {data_dir}, or start as root with "
                   f"server.user")
    raise SystemExit(f"pillarbox: error: server.data_dir: {path} {problem}")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _new_data_dir(data_dir: Path, dev_mode: bool) -> bool:
    """Whether the data directory is still to be made (a first start).

    With a configuration file it is made only inside a directory that exists:
    a typo further up the path (``/var/lib/pilarbox/data``) would otherwise
    start an empty server that refuses mail for every domain it should have.
    """
    if data_dir.exists():
        return False
    if not dev_mode and not data_dir.parent.is_dir():
        raise SystemExit(
            f"pillarbox: error: server.data_dir: {data_dir} does not exist, nor does "
            f"{data_dir.parent}; check the path (a new data directory is made only in "
            f"one that exists: mkdir -p {data_dir.parent} if the path is right)")
    return True


def own_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data directory's lock, or leave at once naming the holder's PID."""
    try:
        return DataDirLock(data_dir).acquire()
    except DataDirBusy as exc:
        raise SystemExit(f"pillarbox: error: {exc}") from None
    except OSError as exc:
        raise SystemExit(
            f"pillarbox: error: server.data_dir: cannot lock the data directory {data_dir}: "
            f"{exc.strerror}"
        ) from None


@dataclass(slots=True)
class Listeners:
    """The bound listening sockets, by service, and the certificate they present."""

    smtp: list[socket.socket]
    imap: list[socket.socket]
    imaps: list[socket.socket]
    pop3: list[socket.socket]
    pop3s: list[socket.socket]
    submission: list[socket.socket] = field(default_factory=list)    # RFC 6409, STARTTLS
    submissions: list[socket.socket] = field(default_factory=list)   # RFC 8314, implicit TLS
    mta_sts: list[socket.socket] = field(default_factory=list)   # RFC 8461 policy, HTTPS
    tls: ssl.SSLContext = field(kw_only=True)   # what they all present (tls_context)

    @classmethod
    def bind(cls, config: Config, tls: ssl.SSLContext) -> Listeners:
        return cls(
            bind_listeners(config.smtp.listen, "smtp.listen"),
            bind_listeners(config.imap.listen, "imap.listen"),
            bind_listeners(config.imap.listen_tls, "imap.listen_tls"),
            bind_listeners(config.pop3.listen, "pop3.listen"),
            bind_listeners(config.pop3.listen_tls, "pop3.listen_tls"),
            submission=bind_listeners(config.submission.listen, "submission.listen"),
            submissions=bind_listeners(config.submission.listen_tls, "submission.listen_tls"),
            mta_sts=bind_listeners(config.mta_sts.listen, "mta_sts.listen"),
            tls=tls,
        )

    def all(self) -> list[socket.socket]:
        return [*self.smtp, *self.imap, *self.imaps, *self.pop3, *self.pop3s,
                *self.submission, *self.submissions, *self.mta_sts]


@dataclass(slots=True)
class Limiters:
    """Connection counters shared by the workers (``net/limits.py``)."""

    smtp: ConnectionLimiter
    imap: ConnectionLimiter
    accounts: ConnectionLimiter     # IMAP sessions per account, keyed "account:<id>"
    pop3: ConnectionLimiter
    recent: RecentTable | None = None   # who gets \\Recent (store/sqlite/recent.py)

    def bind(self, worker: int) -> None:
        for limiter in (self.smtp, self.imap, self.accounts, self.pop3):
            limiter.bind(worker)

    def clear(self, worker: int) -> None:
        for limiter in (self.smtp, self.imap, self.accounts, self.pop3):
            limiter.clear(worker)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _start(child: Child, config: Config, listeners: Listeners,
           limiters: Limiters) -> None:
    # The supervisor's handler raises: held off from the fork until the
    # child's PID is noted, or a child could run on that nobody stops.
    supervisor = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        raise
    if pid:
        child.pid = pid
        child.started = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        # run/<role>-<index>.pid: which process is which, for people and tests.
        pid_file = config.server.data_dir / "run" / f"{child.role}-{child.index}.pid"
        try:
            pid_file.write_text(f"{pid}\n")
        except OSError:
            pass
        return
    # In the child: never return into the supervisor's code.
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)   # a worker takes it on its loop
        _stop_with(supervisor)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if child.role == "queue":
            for sock in listeners.all():
                sock.close()
            code = _run(_queue_main(config))
        elif child.role == "delivery":
            for sock in listeners.all():
                sock.close()
            code = _run(_delivery_main(config))
        else:
            limiters.bind(child.index)
            code = _run(_worker_main(config, listeners, limiters))
    except BaseException:  # noqa: BLE001 - report and leave the child
        log.exception("%s %d crashed", child.role, child.index)
    finally:
        from pillarbox.reports.spool import flush_all

        flush_all()          # the last minute of report counts (pillarbox.reports.spool)
        logging.shutdown()
        os._exit(code)


_PR_SET_PDEATHSIG = 1   # prctl(2)


def _stop_with(supervisor: int) -> None:
    """Have this child get SIGTERM (and stop as it would on ours) when the
    supervisor dies, even of SIGKILL: else workers and the queue manager go
    on headless, holding the ports and the data directory's lock, and a new
    server is refused in the name of a PID that is no more.  Linux only."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:     # died before the call: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


SWITCH_INTERVAL = 0.0005   # seconds (CPython's default: 0.005)


def _run(coro) -> int:  # type: ignore[no-untyped-def]
    # Each child runs its event loop beside a commit thread.  The thread needs
    # the GIL back after every SQLite call and fsync, and by default waits up
    # to 5 ms for the busy loop to let go of it each time, which adds to the
    # latency of every commit under load.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(coro)


async def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    return stop


def _remote_delivery(config: Config):  # type: ignore[no-untyped-def]
    """Remote delivery of the ``[dns]`` and ``[delivery]`` sections: MX routing,
    MTA-STS (RFC 8461) and, with a validating resolver, DANE (RFC 7672)."""
    from pillarbox.deliver.dane import DANE, ValidatingResolver
    from pillarbox.deliver.mta_sts import MTASTS
    from pillarbox.deliver.mx import MXResolver
    from pillarbox.deliver.remote import RemoteDelivery
    from pillarbox.policy.dns import DNSResolver
    from pillarbox.reports.tlsrpt import TLSRecorder

    dns = config.dns
    validating = config.delivery.dane_resolver
    # With DANE, MX routing asks the validating resolver too, so that the hosts
    # tried are the ones whose MX records were validated (RFC 7672 §2.2.1).
    nameservers = [validating] if validating else (list(dns.nameservers) or None)
    resolver = MXResolver(nameservers, timeout=dns.timeout, ipv6=dns.ipv6,
                          ipv4=dns.ipv4, prefer="ipv4" if dns.prefer == "ipv4" else "ipv6")
    mta_sts = MTASTS.from_config(config.delivery, DNSResolver(
        list(dns.nameservers) or None, timeout=dns.timeout), config.server.data_dir)
    dane = DANE(ValidatingResolver([validating], timeout=dns.timeout)) if validating else None
    remote = RemoteDelivery.from_config(config.delivery, resolver,
                                        helo_name=config.server.hostname, mta_sts=mta_sts,
                                        dane=dane)
    remote.tls_report = TLSRecorder.in_data_dir(config.server.data_dir)   # TLS-RPT counts
    return remote


def _origin_checks(config: Config):  # type: ignore[no-untyped-def]
    """SPF, DKIM and DMARC of the ``[policy]`` section (receive/origin.py); None: all off."""
    from pillarbox.policy.dkim.verify import VerifyPolicy
    from pillarbox.policy.dmarc import DMARCCheck, Enforcement
    from pillarbox.policy.dns import DNSResolver
    from pillarbox.policy.psl import PublicSuffixList
    from pillarbox.policy.rdns import HeloCheck, HeloOutcome
    from pillarbox.policy.spf import SPFCheck
    from pillarbox.receive.origin import OriginChecks
    from pillarbox.reports.dmarc import DMARCRecorder

    policy = config.policy
    if (policy.spf == "off" and not policy.dkim and policy.dmarc == "off"
            and policy.helo == "off" and not policy.iprev):
        return None
    resolver = DNSResolver(list(config.dns.nameservers) or None, timeout=config.dns.timeout)
    hostname = config.server.hostname
    spf = None
    if policy.spf != "off":
        spf = SPFCheck(resolver, receiver=hostname, reject_fail=policy.spf == "reject")
    dmarc = None
    if policy.dmarc != "off":
        overrides = {}
        for item in policy.dmarc_domains.replace(",", " ").split():
            domain, _, mode = item.partition("=")
            overrides[domain] = Enforcement(mode)
        dmarc = DMARCCheck(resolver, PublicSuffixList.load(policy.public_suffix_list),
                           enforcement=Enforcement(policy.dmarc), overrides=overrides)
    return OriginChecks(
        resolver, policy.authserv_id or hostname, spf=spf,
        spf_defer_temperror=policy.spf_defer_temperror,
        dkim=VerifyPolicy() if policy.dkim else None, dkim_max_size=policy.dkim_max_size,
        dmarc=dmarc,
        reports=DMARCRecorder.in_data_dir(config.server.data_dir) if dmarc else None,
        helo=HeloCheck(resolver, hostname, reject=HeloOutcome.parse(policy.helo_reject))
        if policy.helo != "off" else None,
    )


def _reverse_dns(config: Config):  # type: ignore[no-untyped-def]
    """The clients' verified reverse names (``policy.iprev``); None: off."""
    from pillarbox.policy.dns import DNSResolver
    from pillarbox.policy.rdns import ReverseDNS

    if not config.policy.iprev:
        return None
    return ReverseDNS(DNSResolver(list(config.dns.nameservers) or None,
                                  timeout=config.dns.timeout), timeout=config.dns.timeout)


def _dkim_signing(config: Config, store: SQLiteStore):  # type: ignore[no-untyped-def]
    """DKIM signing of the ``[dkim]`` section (receive/signing.py); None: off."""
    from pillarbox.receive.signing import DKIMSigning
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

    if not config.dkim.sign:
        return None
    return DKIMSigning(SQLiteDKIMKeys(store), config.server.data_dir,
                       sign_trusted=config.dkim.sign_trusted)


def _forwarding(config: Config, store: SQLiteStore, signing):  # type: ignore[no-untyped-def]
    """Aliases to other domains: SRS (its secret in the data directory) and ARC
    sealing with the domains' DKIM keys (receive/forwarding.py): those the
    worker signs with (``signing``), or, with signing off, a loader of its own."""
    from pillarbox.receive.forwarding import Forwarding
    from pillarbox.receive.signing import DKIMSigning
    from pillarbox.receive.srs import SRS
    from pillarbox.store.sqlite.dkim_keys import SQLiteDKIMKeys

    keys = signing or DKIMSigning(SQLiteDKIMKeys(store), config.server.data_dir)
    return Forwarding(SRS.in_data_dir(config.server.data_dir), config.server.hostname,
                      keys.signers)


def _agent_socket(config: Config) -> Path:
    return config.server.data_dir / "run" / "delivery.sock"


async def _queue_main(config: Config) -> int:
    from pillarbox.deliver.agent import AgentPool
    from pillarbox.queue.manager import QueueManager
    from pillarbox.reports.job import ReportJob

    store = SQLiteStore(config.server.data_dir)
    if config.delivery_agents:
        # Remote attempts go to the delivery agents (deliver/agent.py).
        remote = AgentPool(_agent_socket(config))
        await remote.start()
    else:
        remote = _remote_delivery(config)
    # [queue] and [delivery] of the configuration.
    from pillarbox.receive.srs import SRS

    srs = SRS.in_data_dir(config.server.data_dir)
    manager = QueueManager.from_config(
        store, config, remote=remote,
        # a forwarded copy that fails is reported to its original sender (the
        # directory of the calling thread: reports are made in commit threads)
        return_path=lambda address: srs.return_path(address, store.directory().is_local_domain))
    stop = await _stop_event()
    task = asyncio.create_task(manager.run())
    reports = asyncio.create_task(ReportJob.from_config(store, config).run_daily(stop))
    await stop.wait()
    manager.stop()
    await task
    await reports
    await remote.close()
    store.close()
    return 0


async def _delivery_main(config: Config) -> int:
    """A delivery agent: remote SMTP attempts handed over by the queue manager."""
    from pillarbox.deliver.agent import DeliveryAgent

    store = SQLiteStore(config.server.data_dir)
    remote = _remote_delivery(config)
    agent = DeliveryAgent(remote, store.open_message)
    stop = await _stop_event()
    await agent.run(_agent_socket(config), stop)
    await remote.close()
    store.close()
    return 0


async def _worker_main(config: Config, listeners: Listeners, limiters: Limiters) -> int:
    from pillarbox.net.smtp import SMTPListenerConfig, SMTPProtocol
    from pillarbox.protocols.smtp.reply import SHUTTING_DOWN
    from pillarbox.protocols.smtp.server import Limits
    from pillarbox.queue.ipc import QueueClient, QueueRefused
    from pillarbox.queue.manager import socket_path
    from pillarbox.receive.session import ReceiverContext
    from pillarbox.store.base import Envelope, StorageFull
    from pillarbox.store.blobs import BlobWriter

    store = SQLiteStore(config.server.data_dir)
    store.recent_table = limiters.recent
    client = QueueClient(socket_path(store))

    async def enqueue(blob_id: str, writer: BlobWriter, envelope: Envelope) -> None:
        try:
            small = writer.take_small()
            if small is None:
                writer.finish()
            await client.enqueue(blob_id, writer.path, writer.size, envelope, small)
        except (OSError, StorageFull, QueueRefused):
            writer.discard()  # certainly not committed
            raise

    smtp = config.smtp
    signing = _dkim_signing(config, store)
    ctx = ReceiverContext(
        store=store,
        hostname=config.server.hostname,
        recipient_delimiter=config.delivery.recipient_delimiter,
        min_free_space=config.queue.min_free_space,
        enqueue=enqueue,
        origin=_origin_checks(config),
        reverse_dns=_reverse_dns(config),
        signing=signing,
        forwarding=_forwarding(config, store, signing),
    )
    cfg = SMTPListenerConfig(
        limits=Limits(
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_command_line=smtp.max_command_line,
            max_text_line=smtp.max_text_line,
            max_errors=smtp.max_errors,
            max_received_headers=smtp.max_received_headers,
        ),
        command_timeout=smtp.command_timeout,
        data_timeout=smtp.data_timeout,
        tls_context=listeners.tls if smtp.starttls else None,
        limiter=limiters.smtp,
    )
    loop = asyncio.get_running_loop()
    protocols: set[SMTPProtocol] = set()

    def factory() -> SMTPProtocol:
        return SMTPProtocol(ctx, cfg, protocols)

    servers: list[asyncio.Server | BalancedServer] = [
        await loop.create_server(factory, sock=sock) for sock in listeners.smtp]
    mail_access = await _start_mail_access(config, listeners, limiters, store)
    servers += mail_access.servers
    servers += await _start_submission(config, listeners, ctx, cfg, mail_access, store, factory)
    if listeners.mta_sts:
        # Our own MTA-STS policy (RFC 8461 §3.3) at https://mta-sts.DOMAIN/.well-known/
        # for each local domain; the [tls] certificate must name mta-sts.DOMAIN.
        from pillarbox.net.mta_sts_server import our_policy, start_policy_server

        directory = store.directory()
        servers += await start_policy_server(
            listeners.mta_sts, listeners.tls,
            our_policy(config.mta_sts, config.server.hostname), directory.is_local_domain)
    stop = await _stop_event()
    # SIGHUP from the supervisor: the certificate again, for every listener of
    # this worker (they share the one context)
    loop.add_signal_handler(signal.SIGHUP, _reload_tls, config, listeners.tls)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 30)
        except asyncio.TimeoutError:
            # A session whose TLS handshake failed never had connection_made
            # nor connection_lost: it has no transport, and goes here.
            for p in [p for p in protocols if not p.transport or p.transport.is_closing()]:
                protocols.discard(p)
    for server in servers:
        server.close()
    deadline = loop.time() + SHUTDOWN_GRACE
    while loop.time() < deadline:
        live = [p for p in protocols if p.transport and not p.transport.is_closing()]
        if not live or all(not p._busy and not (p.core and p.core.in_data) for p in live):
            break
        await asyncio.sleep(0.1)
    for p in list(protocols):     # (closing removes them from the set)
        if p.transport and not p.transport.is_closing() and p.core is not None:
            if not p._busy:
                p.core.close(SHUTTING_DOWN)
                p.transport.write(p.core.data_to_send())
            p.transport.close()
    mail_access.shutdown()
    await asyncio.sleep(0.05)
    await client.close()
    mail_access.close()
    store.close()
    return 0


async def _start_submission(config: Config, listeners: Listeners, ctx, cfg,  # type: ignore[no-untyped-def]
                            mail_access: _MailAccess, store: SQLiteStore, factory
                            ) -> list[asyncio.Server]:
    """SMTP AUTH and relaying for every SMTP session of this worker, and the
    submission listeners (RFC 6409 on 587 with STARTTLS, RFC 8314 on 465)."""
    from dataclasses import replace

    from pillarbox.net.smtp import SMTPProtocol
    from pillarbox.store.sqlite.sendas import grants

    ctx.authenticator = mail_access.authenticator
    ctx.trusted_networks = config.smtp.trusted_networks
    ctx.send_as = lambda account_id: grants(store, account_id)
    loop = asyncio.get_running_loop()
    tls = listeners.tls
    servers: list[asyncio.Server] = []
    for socks, implicit in ((listeners.submission, False), (listeners.submissions, True)):
        sub_cfg = replace(cfg, tls_context=tls, submission=True, implicit_tls=implicit)

        def make(sub_cfg=sub_cfg) -> SMTPProtocol:  # type: ignore[no-untyped-def]
            proto: SMTPProtocol = factory()
            proto.cfg = sub_cfg
            return proto

        for sock in socks:
            servers.append(await loop.create_server(
                make, sock=sock, ssl=tls if implicit else None,
                ssl_handshake_timeout=60 if implicit else None))
    return servers


@dataclass(slots=True)
class _MailAccess:
    """The IMAP and POP3 side of one worker."""

    servers: list[BalancedServer]
    imap: set  # type: ignore[type-arg]
    hub: object
    authenticator: object

    pop3: weakref.WeakSet  # type: ignore[type-arg]

    def shutdown(self) -> None:
        for proto in list(self.imap):
            proto.shutdown()
        for proto in list(self.pop3):
            proto.shutdown()

    def close(self) -> None:
        self.hub.close()  # type: ignore[attr-defined]
        self.authenticator.close()  # type: ignore[attr-defined]


async def _start_mail_access(config: Config, listeners: Listeners, limiters: Limiters,
                             store: SQLiteStore) -> _MailAccess:
    """IMAP (RFC 9051) and POP3 (RFC 1939) listeners of one worker."""
    from pillarbox.access.imap.hub import Hub
    from pillarbox.access.imap.session import IMAPContext
    from pillarbox.access.pop3 import POP3Context, POP3Settings
    from pillarbox.auth.service import Authenticator
    from pillarbox.net.imap import IMAPListenerConfig, IMAPProtocol
    from pillarbox.net.pop3 import POP3ListenerConfig, POP3Protocol
    from pillarbox.protocols.imap.server import Limits as IMAPLimits
    from pillarbox.store.sqlite.notify import Listener

    loop = asyncio.get_running_loop()
    tls = listeners.tls
    authenticator = Authenticator.from_config(config.auth, store.credentials)
    hub = Hub(Listener(store.run_dir, advertised=False), store)
    hub.start()
    imap_ctx = IMAPContext(
        store=store, authenticator=authenticator, hub=hub, hostname=config.server.hostname,
        appendlimit=config.imap.max_literal,
        allow_plaintext_on_loopback=config.auth.allow_plaintext_on_loopback,
        account_limiter=limiters.accounts,
    )
    # Literals of commands other than APPEND are bounded like a line.
    imap_limits = IMAPLimits(max_line=config.imap.max_line, max_literal=config.imap.max_line,
                             appendlimit=config.imap.max_literal,
                             max_command=max(2 * config.imap.max_literal, 104857600))
    sessions: set[IMAPProtocol] = set()

    def imap_factory(implicit: bool):  # type: ignore[no-untyped-def]
        cfg = IMAPListenerConfig(imap_limits, config.imap.idle_timeout, tls,
                                 implicit_tls=implicit, limiter=limiters.imap)

        def make() -> IMAPProtocol:
            proto = IMAPProtocol(imap_ctx, cfg, sessions)
            return proto

        return make

    pop3_ctx = POP3Context(store, authenticator, config.server.hostname,
                           POP3Settings(lock_dir=store.run_dir / "pop3"))

    pop3_sessions: weakref.WeakSet[POP3Protocol] = weakref.WeakSet()

    def pop3_factory(implicit: bool):  # type: ignore[no-untyped-def]
        cfg = POP3ListenerConfig(tls_context=tls, implicit_tls=implicit,
                                 idle_timeout=config.pop3.idle_timeout, limiter=limiters.pop3)

        def make() -> POP3Protocol:
            proto = POP3Protocol(pop3_ctx, cfg)
            pop3_sessions.add(proto)
            return proto

        return make

    # Sessions that last go to the least loaded worker (net/balance.py).
    servers: list[BalancedServer] = []
    for sock in listeners.imap:
        servers.append(BalancedServer(sock, imap_factory(False), limiters.imap))
    for sock in listeners.imaps:
        servers.append(BalancedServer(sock, imap_factory(True), limiters.imap, ssl_context=tls))
    for sock in listeners.pop3:
        servers.append(BalancedServer(sock, pop3_factory(False), limiters.pop3))
    for sock in listeners.pop3s:
        servers.append(BalancedServer(sock, pop3_factory(True), limiters.pop3, ssl_context=tls))
    limiters.imap.mark_ready()
    limiters.pop3.mark_ready()
    return _MailAccess(servers, sessions, hub, authenticator, pop3_sessions)


def _preload() -> None:
    """Import what the children use, before they are forked.

    Imported once here, the modules are shared with every child copy-on-write
    (``gc.freeze`` keeps them so): the summed PSS of a just-started server fell
    from 124 MiB to 92-98 (2026-12-03), and a child starts serving sooner,
    with nothing left to import (the workers had come up hundreds of
    milliseconds apart).  Started as root, this also runs while we may still
    read every file: after dropping privileges, an interpreter installed in a
    private place (a root-only pyenv) could no longer import lazily.
    """
    import concurrent.futures.thread  # noqa: F401
    import encodings.idna  # noqa: F401
    import zlib  # noqa: F401

    import dns._asyncio_backend  # noqa: F401
    import dns.asyncresolver  # noqa: F401
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    import base64  # noqa: F401
    import gzip  # noqa: F401
    import importlib
    import pkgutil
    import xml.etree.ElementTree  # noqa: F401

    import pillarbox

    # Every module of ours, so that none is first imported after the drop
    # (the children import much of what they use lazily, in the function
    # that needs it).
    for info in pkgutil.walk_packages(pillarbox.__path__, "pillarbox."):
        if info.name == "pillarbox.__main__":
            continue
        importlib.import_module(info.name)

    # The data the children read: the shipped Public Suffix List is read by
    # each worker at start and kept (policy.public_suffix_list may name another).
    from pillarbox.policy.psl import PublicSuffixList
    PublicSuffixList.load()

    # dnspython imports the class of each record type when it first parses one.
    for rdtype in ("MX", "A", "AAAA", "CNAME", "SOA", "NS", "PTR", "TXT", "TLSA", "DS",
                   "DNSKEY", "RRSIG", "NSEC", "NSEC3"):
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass


def _drop_privileges(user: str, data_dir: Path) -> None:
    """Started as root: hand the data directory to ``user``, then become it.

    Started as anyone else, that must be ``user`` already: only root can
    change users, and running on as someone the configuration does not
    name would leave the data directory to the wrong owner.
    """
    if not user:
        return
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"pillarbox: error: server.user: no such user {user!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() != entry.pw_uid:
            me = _user_name(os.geteuid())
            raise SystemExit(f"pillarbox: error: server.user: the server runs as {me!r}, "
                             f"not {user!r}, and only root can change users: start it as "
                             f"root or as {user!r}")
        return
    for top, dirs, files in os.walk(data_dir):
        for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != entry.pw_uid:
                os.lchown(name, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _announce(config: Config, listeners: Listeners, password: str | None,
              workers: int) -> None:
    lines = [f"Pillarbox {_version()} serving {config.server.hostname}"]
    lines.append(f"  data:   {Path(config.server.data_dir).resolve()}")
    def where(sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    for sock in listeners.smtp:
        lines.append(f"  SMTP:   {where(sock)} (STARTTLS {'on' if config.smtp.starttls else 'off'})")
    for label, socks, how in (("SUBMIT", listeners.submission, "STARTTLS, AUTH"),
                              ("SUBMITS", listeners.submissions, "implicit TLS, AUTH"),
                              ("IMAP", listeners.imap, "STARTTLS"),
                              ("IMAPS", listeners.imaps, "implicit TLS"),
                              ("POP3", listeners.pop3, "STLS"),
                              ("POP3S", listeners.pop3s, "implicit TLS"),
                              ("MTA-STS", listeners.mta_sts, "HTTPS policy")):
        for sock in socks:
            lines.append(f"  {label + ':':<7} {where(sock)} ({how})")
    if config.smtp.trusted_networks:
        nets = ", ".join(str(n) for n in config.smtp.trusted_networks)
        lines.append(f"  relay without login from: {nets}")
    agents = config.delivery_agents
    lines.append(f"  workers: {workers} protocol worker(s) + 1 queue manager"
                 + (f" + {agents} delivery agent(s)" if agents else ""))
    if password is not None:
        lines.append(f"  demo account: {DEV_ACCOUNT}  password: {password}")
        if listeners.smtp:
            host, port = listeners.smtp[0].getsockname()[:2]
            lines.append(
                f"  try: swaks --server {host}:{port} --to {DEV_ACCOUNT} "
                f"--from you@example.org"
            )
        if listeners.submission:
            host, port = listeners.submission[0].getsockname()[:2]
            lines.append(
                f"  send: swaks --server {host}:{port} --tls --auth PLAIN --auth-user "
                f"{DEV_ACCOUNT} --auth-password {password} --from {DEV_ACCOUNT} --to ..."
            )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _version() -> str:
    from pillarbox import __version__

    return __version__
