"""DKIM verification speed: Pillarbox beside dkimpy, same messages, same run.

    .venv/bin/python bench/dkim_bench.py              # 2,000 messages (a few seconds)
    .venv/bin/python bench/dkim_bench.py -n 10000     # the issue's figure
    .venv/bin/python bench/dkim_bench.py --profile    # where our time goes

Each message is a typical one of a few KB (Received chain, list headers,
multipart/alternative text and HTML) with two signatures: RSA-2048 and
Ed25519 (two RSA-2048 when dkimpy cannot do Ed25519, i.e. without PyNaCl),
under a mix of canonicalizations, from one of a few domains.  A few percent
are tampered with after signing (body or Subject), so both verifiers must
also agree on failures.  Keys come from an in-memory dict for both (no
network; "keys cached").  Prints messages per second for each, the ratio,
and every message on which the two disagree (there must be none).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import sys
import time

import dkim as dkimpy

from pillarbox.policy.dkim import Canon, Signer, sign, verify
from pillarbox.policy.dkim.keys import generate_key, key_record
from pillarbox.policy.dns import Answer

try:
    import nacl  # noqa: F401  (dkimpy's Ed25519)
    HAVE_ED25519 = True
except ImportError:
    HAVE_ED25519 = False

DOMAINS = ["example.com", "shop.example.net", "news.example.org", "bank.example"]
WORDS = ("the quick brown fox jumps over lazy dog mail server message delivery report "
         "invoice order shipped tracking account update meeting agenda notes").split()


class DictResolver:
    """Key records from a dict: what a warm caching resolver costs, nothing more."""

    def __init__(self, records: dict[str, str]) -> None:
        self.answers = {name: Answer((text,), ttl=300.0) for name, text in records.items()}
        self.missing = Answer(nxdomain=True)

    async def query(self, name: str, rdtype: str) -> Answer:
        return self.answers.get(name, self.missing)


def paragraph(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    lines, line = [], ""
    for w in text.split():
        if len(line) + len(w) > 70:
            lines.append(line + (" " if rng.random() < 0.1 else ""))  # some trailing WSP
            line = ""
        line += (" " if line else "") + w
    lines.append(line)
    return "\r\n".join(lines)


def make_message(rng: random.Random, n: int, domain: str) -> bytes:
    sender = f"{rng.choice(['alice', 'bob', 'news', 'orders'])}@{domain}"
    boundary = f"=_b{n:08x}"
    plain = "\r\n\r\n".join(paragraph(rng, rng.randint(40, 120)) for _ in range(rng.randint(2, 5)))
    html = "<html><body>" + "".join(f"<p>{paragraph(rng, rng.randint(30, 90))}</p>\r\n"
                                    for _ in range(rng.randint(2, 4))) + "</body></html>"
    headers = [
        f"From: {sender.split('@')[0].title()} <{sender}>",
        f"To: user{n % 97}@pillarbox.test",
        *([f"Cc: other{n % 13}@pillarbox.test"] if rng.random() < 0.3 else []),
        f"Subject: {' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))} #{n}",
        f"Date: Tue, 01 Dec 2026 {n % 24:02d}:{n % 60:02d}:00 +0000",
        f"Message-ID: <{n}.{rng.getrandbits(48):x}@{domain}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;\r\n\tboundary="{boundary}"',
        *([f"List-Unsubscribe: <https://{domain}/u/{n}>,\r\n <mailto:unsub-{n}@{domain}>",
           "List-Unsubscribe-Post: List-Unsubscribe=One-Click"] if rng.random() < 0.5 else []),
        "X-Mailer: BenchMailer 1.0",
    ]
    body = (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n"
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--{boundary}--\r\n")
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def received(rng: random.Random, n: int) -> bytes:
    hops = []
    for hop in range(rng.randint(2, 4)):
        hops.append(f"Received: from mx{hop}.relay.example (mx{hop}.relay.example [192.0.2.{hop + 1}])\r\n"
                    f"\tby mail.pillarbox.test with ESMTPS id {n:x}{hop}\r\n"
                    f"\tfor <user{n % 97}@pillarbox.test>; Tue, 01 Dec 2026 10:00:0{hop} +0000\r\n")
    return "".join(hops).encode()


def build(count: int, seed: int, ed25519: bool = HAVE_ED25519) -> tuple[list[bytes], dict[str, str], list[str]]:
    rng = random.Random(seed)
    records: dict[str, str] = {}
    signers: dict[str, list[Signer]] = {}
    canons = [(Canon.RELAXED, Canon.RELAXED)] * 7 + [(Canon.RELAXED, Canon.SIMPLE)] * 2 + [
        (Canon.SIMPLE, Canon.SIMPLE)]
    for domain in DOMAINS:
        rsa_key = generate_key("rsa", 2048)
        second = generate_key("ed25519") if ed25519 else generate_key("rsa", 2048)
        records[f"r1._domainkey.{domain}"] = key_record(rsa_key)
        records[f"k2._domainkey.{domain}"] = key_record(second)
        signers[domain] = [Signer(domain, "r1", rsa_key), Signer(domain, "k2", second)]
    messages, kinds = [], []
    for n in range(count):
        domain = DOMAINS[n % len(DOMAINS)]
        message = make_message(rng, n, domain)
        h, b = rng.choice(canons)
        chosen = [Signer(s.domain, s.selector, s.key, header_canon=h, body_canon=b) for s in signers[domain]]
        signed = sign(message, chosen) + message
        roll = rng.random()
        kind = "ok"
        if roll < 0.03:
            signed, kind = signed.replace(b"<p>", b"<p>Win! ", 1), "body"
        elif roll < 0.05:
            signed, kind = signed.replace(b"Subject: ", b"Subject: Re: ", 1), "header"
        messages.append(received(rng, n) + signed)
        kinds.append(kind)
    return messages, records, kinds


def run_ours(messages: list[bytes], records: dict[str, str]) -> list[list[bool]]:
    resolver = DictResolver(records)

    async def main() -> list[list[bool]]:
        out = []
        for m in messages:
            out.append([r.passed for r in await verify(m, resolver)])
        return out

    return asyncio.run(main())


def run_dkimpy(messages: list[bytes], records: dict[str, str]) -> list[list[bool]]:
    raw = {f"{name}.".encode(): text.encode() for name, text in records.items()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return raw.get(name)

    out = []
    for m in messages:
        d = dkimpy.DKIM(m)
        count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
        row = []
        for i in range(count):
            try:
                row.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
            except dkimpy.DKIMException:
                row.append(False)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="profile our verifier only")
    parser.add_argument("--rsa-only", action="store_true", help="two RSA-2048 signatures, even with PyNaCl")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with_ed25519 = HAVE_ED25519 and not args.rsa_only
    messages, records, kinds = build(args.messages, args.seed, with_ed25519)
    size = sum(map(len, messages)) / len(messages)
    second = "Ed25519" if with_ed25519 else "RSA-2048" + ("" if HAVE_ED25519 else
                                                         " (no PyNaCl: dkimpy cannot do Ed25519)")
    print(f"{len(messages)} messages, {size / 1024:.1f} KB on average, signed RSA-2048 + {second}, "
          f"{kinds.count('body')} with a changed body, {kinds.count('header')} with a changed Subject "
          f"(built in {time.perf_counter() - t0:.1f} s)")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_ours(messages, records)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0

    run_ours(messages[:50], records), run_dkimpy(messages[:50], records)   # warm up
    # CPU time of this process: on a shared machine, what others run does not count.
    timings = {}
    for name, runner in (("pillarbox", run_ours), ("dkimpy", run_dkimpy)):
        wall, cpu = time.perf_counter(), time.process_time()
        got = runner(messages, records)
        timings[name] = (time.process_time() - cpu, time.perf_counter() - wall, got)
    ours_s, ours_wall, ours = timings["pillarbox"]
    theirs_s, theirs_wall, theirs = timings["dkimpy"]

    differ = [i for i in range(len(messages)) if ours[i] != theirs[i]]
    wrong = [i for i, kind in enumerate(kinds) if ours[i] != [kind == "ok"] * 2]
    for i in differ[:20]:
        print(f"  differ: message {i} ({kinds[i]}): pillarbox {ours[i]}, dkimpy {theirs[i]}")
    print(f"pillarbox: {len(messages) / ours_s:10,.0f} messages/s ({ours_s:.2f} s CPU, {ours_wall:.2f} s wall)")
    print(f"dkimpy:    {len(messages) / theirs_s:10,.0f} messages/s ({theirs_s:.2f} s CPU, {theirs_wall:.2f} s wall)")
    print(f"ratio:     {theirs_s / ours_s:10.2f}x (CPU), {theirs_wall / ours_wall:.2f}x (wall)")
    print(f"messages whose results differ: {len(differ)}; "
          f"messages not judged as built (pass, or fail when tampered): {len(wrong)}")
    return 1 if differ or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
