"""imaptest's stress mode against Pillarbox and a private Dovecot, same load, same run.

Dovecot's imaptest (github dovecot/imaptest, branch release-2.3) is not part
of Pillarbox: build it yourself outside this repository (it needs Debian's
``dovecot-dev``) and point ``IMAPTEST`` at the binary.  This script starts

- ``pillarbox serve`` (development defaults, one worker per CPU) on free
  loopback ports with a fresh data directory and an account, and
- Debian's Dovecot, privately (own base_dir, passwd-file with a plaintext
  password as a small site would, Maildir, its default fsync policy), on a
  free loopback port,

then runs ``imaptest seed=42 secs=30 clients=20`` against each, interleaved
``-r`` times, in both of imaptest's mixes: the default one (every client
logs out and in again: login churn) and ``logout=0`` (steady sessions).
The messages APPENDed come from the MIME test corpus (``tests/mime``).

Prints ``key=value`` lines: operations per second (every command imaptest
counted in its Totals line, over the run's seconds), errors reported by
imaptest, and the ratios.  The issue's bar: at least 1.5x Dovecot on the
churn mix and at least 1x on the steady mix, with 0 errors.

usage: IMAPTEST=/path/to/imaptest .venv/bin/python bench/imap_stress.py [-r 3] [--secs 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxbench import ROOT, add_user, free_port, start_pillarbox, wait_port

sys.path.insert(0, str(ROOT))






def make_mbox(path: Path) -> None:
    from tests.mime.corpus import HANDWRITTEN, generate_message

    msgs = [m for m in HANDWRITTEN.values()
            if b"\r\n\r\n" in m and not m.startswith(b"\r\n") and b"\0" not in m]
    rnd = random.Random(42)
    msgs += [generate_message(rnd) for _ in range(150)]
    out = bytearray()
    for m in msgs:
        if not m.endswith(b"\r\n"):
            m += b"\r\n"
        m = re.sub(rb"(?m)^(>*From )", rb">\1", m)
        out += b"From user@domain  Fri Feb 22 17:06:23 2008\r\n" + m + b"\r\n"
    path.write_bytes(bytes(out))


DOVECOT_CONF = """\
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{work}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {work}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {work}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
"""


def start_dovecot(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (work / "mail").mkdir(parents=True)
    user = "dovecot"
    entry = pwd.getpwnam(user)
    os.chown(work / "mail", entry.pw_uid, entry.pw_gid)
    (work / "passwd").write_text(
        f"bench:{{PLAIN}}bench:{entry.pw_uid}:{entry.pw_gid}::{work}/mail/bench::\n")
    conf = work / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(work=work, port=port)
                    + f"default_internal_user = {user}\ndefault_login_user = dovenull\n")
    proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_port(port)
    return proc, port


def start_bench_pillarbox(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc, _, imap = start_pillarbox(work)
    add_user(work, "bench@localhost", "bench")
    return proc, imap


def imaptest(binary: str, port: int, user: str, mbox: Path, secs: int,
             extra: list[str]) -> tuple[float, int, str]:
    env = dict(os.environ, LD_LIBRARY_PATH="/usr/lib/dovecot")
    out = subprocess.run(
        [binary, "host=127.0.0.1", f"port={port}", f"user={user}", "pass=bench",
         f"mbox={mbox}", "seed=42", f"secs={secs}", "clients=20", *extra],
        capture_output=True, env=env, timeout=secs + 120, cwd=tempfile.gettempdir(),
    ).stdout.decode(errors="replace")
    lines = out.splitlines()
    total = 0
    if "Totals:" in lines:
        tail = lines[lines.index("Totals:") + 1:]
        for line in tail:
            fields = line.split()
            if fields and all(f.isdigit() for f in fields):
                total = sum(int(f) for f in fields)
                break
    errors = sum(1 for line in lines if line.startswith("Error"))
    return total / secs, errors, out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--secs", type=int, default=30)
    parser.add_argument("--mix", choices=("churn", "steady", "both"), default="both")
    parser.add_argument("--warmup", type=int, default=5,
                        help="seconds of each mix against each server first, not counted")
    args = parser.parse_args()
    binary = os.environ.get("IMAPTEST", "")
    if not binary or not os.access(binary, os.X_OK):
        print("set IMAPTEST to an imaptest binary built outside this repository", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pbx-stress-"))
    os.chmod(work, 0o755)
    mbox = work / "messages.mbox"
    make_mbox(mbox)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dovecot, dport = start_dovecot(work / "dovecot")
        procs.append(dovecot)
        pbx, pport = start_bench_pillarbox(work)
        procs.append(pbx)
        results: dict[str, list[float]] = {}
        mixes = [m for m in (("churn", []), ("steady", ["logout=0"]))
                 if args.mix in (m[0], "both")]
        for mix, extra in mixes:
            # Warm both servers first, the same way: this machine's host reclaims
            # page cache untouched for 60 s (DAMON "pageout"), so the first run
            # of a server that had waited paid for reading its database and
            # libraries back (Pillarbox's first steady run of an invocation:
            # 1,057-1,412 ops/s, the later ones 1,600-1,840).
            for port, user in ((dport, "bench"), (pport, "bench@localhost")):
                if args.warmup > 0:
                    imaptest(binary, port, user, mbox, args.warmup, extra)
            for run in range(args.r):
                for name, port, user in (("dovecot", dport, "bench"),
                                         ("pillarbox", pport, "bench@localhost")):
                    # Each run starts on a quiet disk: the previous server's dirty
                    # pages written back first, not under the next one's fsyncs.
                    os.sync()
                    time.sleep(2)
                    rate, errors, out = imaptest(binary, port, user, mbox, args.secs, extra)
                    (work / f"{name}-{mix}-{run}.out").write_text(out)
                    results.setdefault(f"{name}_{mix}", []).append(rate)
                    print(f"run{run}_{mix}_{name}_ops_per_s={rate:.0f}")
                    print(f"run{run}_{mix}_{name}_errors={errors}", flush=True)
        for mix, _ in mixes:
            d = statistics.median(results[f"dovecot_{mix}"])
            p = statistics.median(results[f"pillarbox_{mix}"])
            print(f"{mix}_dovecot_ops_per_s={d:.0f}")
            print(f"{mix}_pillarbox_ops_per_s={p:.0f}")
            print(f"{mix}_ratio={p / d:.2f}")
        print(f"outputs={work}")
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
