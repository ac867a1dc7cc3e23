"""A protocol worker's CPU per SMTP session like the outbound or inbound bench's, in process.

    .venv/bin/python bench/smtp_session_cpu.py              # 3,000 sessions
    .venv/bin/python bench/smtp_session_cpu.py --dkim       # signed (RSA-2048 + Ed25519)
    .venv/bin/python bench/smtp_session_cpu.py --inbound    # smtp-throughput's load
    .venv/bin/python bench/smtp_session_cpu.py --profile    # where the time goes

By default each session is what ``smtp-source`` does to
``bench/outbound-throughput``'s server: connect from 127.0.0.1 (a trusted
network, so it may relay), EHLO, MAIL, RCPT for a remote domain, DATA with a
2 KB message, QUIT; one message per connection.  The worker's own code runs
as ``serve`` wires it (``SMTPProtocol``, the receiving session, the origin
checks' header strip, reverse DNS answered from its memo after the first
session, DKIM signing with ``--dkim``), over a transport that keeps what is
written; the hand-over to the queue manager is a stub.

``--inbound`` is ``bench/smtp-throughput``'s load instead, byte for byte what
``smtp-source -l 2048 -M loadgen.test -f loadgen@loadgen.test -t
demo@localhost`` sends: HELO loadgen.test, MAIL, RCPT to the local account
demo@localhost (the development defaults, made in the data directory), DATA
with its 2 KB message, QUIT, from 127.0.0.1, which is not trusted.  So the
origin checks run in full (SPF, iprev, the HELO check, DMARC and the
``Authentication-Results:`` field), against a dnsmasq on loopback that
``bench/pbxbench.py`` starts with the bench's records; their memos are warm
after the first sessions, as on the real load.  The worker logs at ``info``
to a file, as ``serve`` does, and hands each message to a real
``QueueClient`` over a Unix socket; on the other end a stub queue manager in
a child process answers ``ok`` to every frame without committing anything
(its CPU is not counted).  The connection limiter is the shared-memory one
of ``serve``, and STARTTLS is offered (the development certificate).

No network sockets: the figure is the worker's Python alone, steadier than
the whole bench on a shared machine (about a third to a half of what a worker
costs per message there, where the kernel's TCP and the context switches take
the rest).  It is process time, so it needs no lock; ``flock
/tmp/bench.lock`` keeps it away from others' benchmarks where they share the
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pbxbench import start_dns  # noqa: E402
from pillarbox import serve  # noqa: E402
from pillarbox.config import load_config  # noqa: E402
from pillarbox.log import setup_logging  # noqa: E402
from pillarbox.net.limits import ConnectionLimiter  # noqa: E402
from pillarbox.net.smtp import SMTPListenerConfig, SMTPProtocol  # noqa: E402
from pillarbox.protocols.smtp.server import Limits  # noqa: E402
from pillarbox.queue.ipc import QueueClient, serve_requests  # noqa: E402
from pillarbox.receive.session import ReceiverContext  # noqa: E402
from pillarbox.store.sqlite.store import SQLiteStore  # noqa: E402

BODY = b"".join(b"x" * 70 + b"\r\n" for _ in range(28))   # about 2 KB, as smtp-source -l 2048


class Transport(asyncio.Transport):
    """Keeps what the session writes; the peer is 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None   # the session waits for a reply

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def abort(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 10027)}.get(
            name, default)


def transcript(i: int) -> list[bytes]:
    """The outbound bench's session."""
    message = (b"From: <loadgen@sender.test>\r\nTo: <bench@remote.test>\r\n"
               b"Date: Thu, 03 Dec 2026 14:00:00 +0000\r\n"
               b"Message-Id: <%d@loadgen.sender.test>\r\n"
               b"Subject: outbound-anchor load\r\n\r\n" % i) + BODY + b".\r\n"
    return [b"EHLO loadgen.sender.test\r\n", b"MAIL FROM:<loadgen@sender.test>\r\n",
            b"RCPT TO:<bench@remote.test>\r\n", b"DATA\r\n", message, b"QUIT\r\n"]


# smtp-source's body for -l 2048: 25 lines of a digit (the line number's last)
# and 77 X, 80 octets with CRLF, then the rest.
INBOUND_BODY = b"".join(b"%d" % (n % 10) + b"X" * 77 + b"\r\n"
                        for n in range(1, 26)) + b"X" * 48 + b"\r\n"


def inbound_transcript(i: int) -> list[bytes]:
    """smtp-throughput's session, as ``smtp-source`` writes it (one write per command)."""
    message = (b"From: <loadgen@loadgen.test>\r\nTo: <demo@localhost>\r\n"
               b"Date: Thu,  3 Dec 2026 17:39:04 +0000 (UTC)\r\n"
               b"Message-Id: <%d.0003.0000@loadgen.test>\r\n"
               b"Subject: load\r\n\r\n" % (2000 + i)) + INBOUND_BODY + b".\r\n"
    return [b"HELO loadgen.test\r\n", b"MAIL FROM:<loadgen@loadgen.test>\r\n",
            b"RCPT TO:<demo@localhost>\r\n", b"DATA\r\n", message, b"QUIT\r\n"]


def stub_manager(path: Path) -> int:
    """A child process that answers ``ok`` to every hand-over, committing nothing."""
    pid = os.fork()
    if pid:
        while not path.exists():
            time.sleep(0.01)
        return pid

    async def handler(frame: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def main() -> None:
        await serve_requests(path, handler)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    finally:
        os._exit(0)


async def run(sessions: int, data_dir: Path, profile: bool, inbound: bool = False,
              dns_port: int = 0) -> float:
    if inbound:
        config = load_config(None, {"server.data_dir": str(data_dir),
                                    "dns.nameservers": f"127.0.0.1:{dns_port}",
                                    "log.file": str(data_dir.parent / "pillarbox.log")})
        setup_logging(config.log.format, config.log.level, config.log.file)
    else:
        config = load_config(None, {"server.data_dir": str(data_dir),
                                    "server.hostname": "tx.sender.test",
                                    "smtp.trusted_networks": "127.0.0.0/8"})
    store = SQLiteStore(config.server.data_dir).open()
    client = QueueClient(data_dir.parent / "queue.sock")

    async def enqueue(blob_id: str, writer: Any, envelope: Any) -> None:
        small = writer.take_small()
        if small is None:
            writer.finish()
        if inbound:       # as serve's worker does
            await client.enqueue(blob_id, writer.path, writer.size, envelope, small)

    signing = serve._dkim_signing(config, store)
    ctx = ReceiverContext(
        store=store, hostname=config.server.hostname,
        recipient_delimiter=config.delivery.recipient_delimiter,
        min_free_space=config.queue.min_free_space, enqueue=enqueue,
        origin=serve._origin_checks(config), reverse_dns=serve._reverse_dns(config),
        signing=signing, forwarding=serve._forwarding(config, store, signing))
    ctx.trusted_networks = config.smtp.trusted_networks
    smtp = config.smtp
    limiter = None
    if inbound:
        limiter = ConnectionLimiter(smtp.max_connections, smtp.max_connections_per_ip, 2)
        limiter.bind(0)
    listener = SMTPListenerConfig(
        limits=Limits(max_message_size=smtp.max_message_size),
        command_timeout=smtp.command_timeout, data_timeout=smtp.data_timeout,
        tls_context=serve.tls_context(config) if inbound else None, limiter=limiter)
    live: set[SMTPProtocol] = set()
    lines = inbound_transcript if inbound else transcript
    loop = asyncio.get_running_loop()

    async def session(i: int) -> bytes:
        protocol = SMTPProtocol(ctx, listener, live)
        transport = Transport()
        protocol.connection_made(transport)
        for line in lines(i):
            written = len(transport.out)
            protocol.data_received(line)
            if len(transport.out) == written and not transport.closed:
                # The reply comes later (the end of DATA awaits the hand-over, or
                # DNS when cold): wait for it without spinning the loop.
                transport.waiter = loop.create_future()
                await asyncio.wait_for(transport.waiter, 30)
                transport.waiter = None
        protocol.connection_lost(None)
        return b"".join(transport.out)

    first = await session(0)
    if b"250 2.0.0" not in first:
        raise SystemExit(f"the session did not queue its message:\n{first.decode()}")
    if inbound and b"Recipient <demo@localhost> ok" not in first:
        raise SystemExit(f"the local recipient was refused:\n{first.decode()}")
    for i in range(200):
        await session(i)
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for i in range(sessions):
        await session(i)
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - started
    await client.close()
    store.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return spent / sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="sessions (default 3000)")
    parser.add_argument("--dkim", action="store_true", help="sign: RSA-2048 + Ed25519")
    parser.add_argument("--inbound", action="store_true",
                        help="smtp-throughput's load: untrusted, local recipient, origin checks")
    parser.add_argument("--profile", action="store_true", help="cProfile, by own time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        store = SQLiteStore(data_dir).open()
        manager = dns_port = 0
        if args.inbound:
            serve.ensure_dev_defaults(store)      # localhost, demo@localhost
            _, dns_port = start_dns(Path(tmp))
            manager = stub_manager(Path(tmp) / "queue.sock")
        store.close()
        if args.dkim:
            subprocess.run([sys.executable, "-m", "pillarbox", "-o",
                            f"server.data_dir={data_dir}", "dkim", "keygen", "sender.test",
                            "--activate"], check=True, stdout=subprocess.DEVNULL)
        go = run(args.n, data_dir, args.profile, args.inbound, dns_port)
        try:
            try:
                import uvloop
            except ImportError:
                per = asyncio.run(go)
            else:
                per = uvloop.run(go)
        finally:
            if manager:
                os.kill(manager, signal.SIGKILL)
                os.waitpid(manager, 0)
    print(f"worker_cpu_ms_per_session={1000 * per:.3f}")


if __name__ == "__main__":
    main()
