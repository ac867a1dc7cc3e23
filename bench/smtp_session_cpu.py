"""A protocol worker's CPU per SMTP session like the outbound bench's, in process.

    .venv/bin/python bench/smtp_session_cpu.py              # 3,000 sessions
    .venv/bin/python bench/smtp_session_cpu.py --dkim       # signed (RSA-2048 + Ed25519)
    .venv/bin/python bench/smtp_session_cpu.py --profile    # where the time goes

Each session is what ``smtp-source`` does to ``bench/outbound-throughput``'s
server: connect from 127.0.0.1 (a trusted network, so it may relay), EHLO,
MAIL, RCPT for a remote domain, DATA with a 2 KB message, QUIT; one message
per connection.  The worker's own code runs as ``serve`` wires it
(``SMTPProtocol``, the receiving session, the origin checks' header strip,
reverse DNS answered from its memo after the first session, DKIM signing with
``--dkim``), over a transport that keeps what is written; the hand-over to the
queue manager is a stub.  No sockets and no other process: the figure is the
worker's Python alone, steadier than the whole bench on a shared machine
(about a third of what a worker costs per message there, where the kernel's
TCP and the context switches take the rest).  Run it under ``flock
/tmp/bench.lock`` where others benchmark on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pillarbox import serve
from pillarbox.config import load_config
from pillarbox.net.smtp import SMTPListenerConfig, SMTPProtocol
from pillarbox.protocols.smtp.server import Limits
from pillarbox.receive.session import ReceiverContext
from pillarbox.store.sqlite.store import SQLiteStore

BODY = b"".join(b"x" * 70 + b"\r\n" for _ in range(28))   # about 2 KB, as smtp-source -l 2048


class Transport(asyncio.Transport):
    """Keeps what the session writes; the peer is 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

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
    message = (b"From: <loadgen@sender.test>\r\nTo: <bench@remote.test>\r\n"
               b"Date: Thu, 03 Dec 2026 14:00:00 +0000\r\n"
               b"Message-Id: <%d@loadgen.sender.test>\r\n"
               b"Subject: outbound-anchor load\r\n\r\n" % i) + BODY + b".\r\n"
    return [b"EHLO loadgen.sender.test\r\n", b"MAIL FROM:<loadgen@sender.test>\r\n",
            b"RCPT TO:<bench@remote.test>\r\n", b"DATA\r\n", message, b"QUIT\r\n"]


async def run(sessions: int, data_dir: Path, profile: bool) -> float:
    config = load_config(None, {"server.data_dir": str(data_dir),
                                "server.hostname": "tx.sender.test",
                                "smtp.trusted_networks": "127.0.0.0/8"})
    store = SQLiteStore(config.server.data_dir).open()

    async def enqueue(blob_id: str, writer: Any, envelope: Any) -> None:
        if writer.take_small() is None:
            writer.finish()

    signing = serve._dkim_signing(config, store)
    ctx = ReceiverContext(
        store=store, hostname=config.server.hostname,
        recipient_delimiter=config.delivery.recipient_delimiter,
        min_free_space=config.queue.min_free_space, enqueue=enqueue,
        origin=serve._origin_checks(config), reverse_dns=serve._reverse_dns(config),
        signing=signing, forwarding=serve._forwarding(config, store, signing))
    ctx.trusted_networks = config.smtp.trusted_networks
    smtp = config.smtp
    listener = SMTPListenerConfig(
        limits=Limits(max_message_size=smtp.max_message_size),
        command_timeout=smtp.command_timeout, data_timeout=smtp.data_timeout,
        tls_context=None, limiter=None)
    live: set[SMTPProtocol] = set()

    async def session(i: int) -> bytes:
        protocol = SMTPProtocol(ctx, listener, live)
        transport = Transport()
        protocol.connection_made(transport)
        for line in transcript(i):
            written = len(transport.out)
            protocol.data_received(line)
            for _ in range(1000):      # until the reply (the end of DATA awaits a task)
                if len(transport.out) > written or transport.closed:
                    break
                await asyncio.sleep(0)
        protocol.connection_lost(None)
        return b"".join(transport.out)

    first = await session(0)
    if b"250 2.0.0" not in first:
        raise SystemExit(f"the session did not queue its message:\n{first.decode()}")
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
    store.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return spent / sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="sessions (default 3000)")
    parser.add_argument("--dkim", action="store_true", help="sign: RSA-2048 + Ed25519")
    parser.add_argument("--profile", action="store_true", help="cProfile, by own time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        SQLiteStore(data_dir).open().close()
        if args.dkim:
            subprocess.run([sys.executable, "-m", "pillarbox", "-o",
                            f"server.data_dir={data_dir}", "dkim", "keygen", "sender.test",
                            "--activate"], check=True, stdout=subprocess.DEVNULL)
        try:
            import uvloop
        except ImportError:
            per = asyncio.run(run(args.n, data_dir, args.profile))
        else:
            per = uvloop.run(run(args.n, data_dir, args.profile))
    print(f"worker_cpu_ms_per_session={1000 * per:.3f}")


if __name__ == "__main__":
    main()
