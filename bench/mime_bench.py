"""Benchmark: pillarbox.mime.parse against email.parser.BytesParser(policy=default).

Measures, for getting the part tree of (a) the test corpus and (b) one 25 MB
message with 50 attachments: wall time (best of several runs) and peak Python
memory allocated during the parse (tracemalloc, measured in a separate run so
that tracing does not distort the times). The input bytes are allocated before
measuring and are not counted for either parser. Pillarbox is also measured on
an mmap of the 25 MB message, the way the store hands blobs over.

    .venv/bin/python bench/mime_bench.py [--quick]

Not part of the test run.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import mmap
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "mime"))

import corpus

from pillarbox.mime.parser import parse


def big_message(size: int = 25 << 20, attachments: int = 50) -> bytes:
    """A multipart/mixed with a text part and ``attachments`` base64 parts, ~``size`` octets."""
    per = size // attachments * 3 // 4  # decoded size giving the encoded size wanted
    chunks = [(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=\"==big==\"\r\n\r\n"),
              b"--==big==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachments.\r\n"]
    rnd = os.urandom(per)
    b64 = base64.encodebytes(rnd).replace(b"\n", b"\r\n")
    for i in range(attachments):
        chunks.append(b"--==big==\r\nContent-Type: application/octet-stream; name=\"f%d.bin\"\r\n"
                      b"Content-Transfer-Encoding: base64\r\n"
                      b"Content-Disposition: attachment; filename=\"f%d.bin\"\r\n\r\n" % (i, i))
        chunks.append(b64)
    chunks.append(b"--==big==--\r\n")
    return b"".join(chunks)


def pillarbox_tree(m: object) -> int:
    root = parse(m)
    return sum(1 for p in root.walk() if p.content_type)


_EMAIL = email.parser.BytesParser(policy=email.policy.default)


def email_tree(m: bytes) -> int:
    msg = _EMAIL.parsebytes(m)
    return sum(1 for p in msg.walk() if p.get_content_type())


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    p = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return p


def report(name: str, ours: Callable[[], object], theirs: Callable[[], object], repeat: int) -> None:
    ours(), theirs()  # warm up (imports, regex caches)
    t_ours, t_theirs = best_time(ours, repeat), best_time(theirs, repeat)
    m_ours, m_theirs = peak(ours), peak(theirs)
    print(f"{name}")
    print(f"  time   pillarbox {t_ours * 1000:9.2f} ms   email {t_theirs * 1000:9.2f} ms   "
          f"speed-up {t_theirs / t_ours:6.1f}x")
    print(f"  memory pillarbox {m_ours / 1024:9.0f} KiB  email {m_theirs / 1024:9.0f} KiB  "
          f"ratio    {m_ours / m_theirs:6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    repeat = 2 if args.quick else 5

    messages = list(corpus.corpus().values())
    total = sum(map(len, messages))
    report(f"corpus: {len(messages)} messages, {total / 1024:.0f} KiB",
           lambda: [pillarbox_tree(m) for m in messages],
           lambda: [email_tree(m) for m in messages], repeat)
    # the same, keeping every tree alive (what a cache of parsed messages costs)
    kept_ours = peak(lambda: [parse(m) for m in messages])
    kept_theirs = peak(lambda: [_EMAIL.parsebytes(m) for m in messages])
    print(f"  kept   pillarbox {kept_ours / 1024:9.0f} KiB  email {kept_theirs / 1024:9.0f} KiB  "
          f"ratio    {kept_ours / kept_theirs:6.3f}")

    big = big_message()
    report(f"one message: {len(big) / (1 << 20):.1f} MiB, 50 attachments",
           lambda: pillarbox_tree(big), lambda: email_tree(big), max(2, repeat // 2))

    with tempfile.TemporaryFile() as f:
        f.write(big)
        f.flush()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            t = best_time(lambda: pillarbox_tree(mm), repeat)
            m = peak(lambda: pillarbox_tree(mm))
            print(f"  mmap   pillarbox {t * 1000:9.2f} ms   {m / 1024:9.0f} KiB")


if __name__ == "__main__":
    main()
