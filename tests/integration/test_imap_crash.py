"""Crash test for IMAP: what was answered OK survives ``kill -9`` of the whole server.

Clients APPEND, STORE and EXPUNGE under load over several connections; after
a random number of acknowledgements the supervisor and every child get
SIGKILL at once.  After a restart:

- every APPEND answered OK is in the mailbox exactly once (its UID is the one
  APPENDUID gave, its body intact);
- every STORE answered OK is there (the keyword it added is set);
- every message whose EXPUNGE was answered OK is gone, and stays gone.

An EXPUNGE on the wire when the server dies may have committed without its
OK reaching the client: such a message may be gone (the window no protocol
can close, as for SMTP's 250); only those may be.

DESIGN.md, durability contract, extended to IMAP by issue 6.
"""

from __future__ import annotations

import hashlib
import imaplib
import random
import re
import threading
import time

import pytest

CLIENTS = 6


class Ledger:
    """What the server acknowledged, per client; shared with the killer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.appended: dict[int, str] = {}      # uid -> digest of the body
        self.stored: dict[int, set[str]] = {}   # uid -> keywords whose STORE was OK
        self.expunged: set[int] = set()
        # EXPUNGEs sent: one may commit and the kill come before its OK arrives,
        # the window no protocol can close (like the SMTP crash test's).
        self.expunge_sent: set[int] = set()
        self.acks = 0

    def ack(self) -> None:
        with self.lock:
            self.acks += 1


def _body(client: int, n: int) -> bytes:
    filler = ("x" * random.randint(10, 3000)).encode()
    return (b"From: crash@example.test\r\nSubject: crash %d-%d\r\n\r\n%s\r\n"
            % (client, n, filler))


def _client(port: int, number: int, ledger: Ledger, stop: threading.Event) -> None:
    try:
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        imap.login("alice@example.test", "secret")
        imap.select("INBOX")
    except (OSError, imaplib.IMAP4.error):
        return
    mine: list[int] = []
    n = 0
    try:
        while not stop.is_set():
            n += 1
            body = _body(number, n)
            typ, data = imap.append("INBOX", None, None, body)
            if typ != "OK":
                continue
            m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            assert m, data
            uid = int(m.group(1))
            with ledger.lock:
                ledger.appended[uid] = hashlib.sha256(body).hexdigest()
            ledger.ack()
            mine.append(uid)
            if n % 3 == 0 and mine:
                target = random.choice(mine)
                keyword = f"kw{number}x{n}"
                typ, _ = imap.uid("STORE", str(target), "+FLAGS.SILENT", f"({keyword})")
                if typ == "OK":
                    with ledger.lock:
                        ledger.stored.setdefault(target, set()).add(keyword)
                    ledger.ack()
            if n % 7 == 0 and len(mine) > 2:
                victim = mine.pop(0)
                typ, _ = imap.uid("STORE", str(victim), "+FLAGS.SILENT", r"(\Deleted)")
                if typ == "OK":
                    with ledger.lock:
                        ledger.expunge_sent.add(victim)
                    typ, _ = imap.uid("EXPUNGE", str(victim))
                    if typ == "OK":
                        with ledger.lock:
                            ledger.expunged.add(victim)
                        ledger.ack()
    except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError):
        return


def _mailbox(server) -> dict[int, tuple[str, str]]:
    """UID -> (flags, body digest) of alice's INBOX, read from the store."""
    from pillarbox.store.sqlite.store import SQLiteStore

    store = SQLiteStore(server.data_dir)
    try:
        account = store.account_id("alice@example.test")
        box = store.mailbox(account, "INBOX")
        out = {}
        for meta in store.messages(box.id):
            data = store.message_bytes(box.id, meta.uid) or b""
            out[meta.uid] = (" ".join(sorted(meta.flags)), hashlib.sha256(data).hexdigest())
        return out
    finally:
        store.close()


@pytest.mark.slow
def test_acknowledged_imap_writes_survive_kill_9(server_factory) -> None:
    server = server_factory({"server.workers": "2"})
    ledger = Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(server.imap_port, i, ledger, stop),
                                daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    kill_after = random.randint(150, 500)
    deadline = time.monotonic() + 60
    while ledger.acks < kill_after and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger.acks >= kill_after, f"only {ledger.acks} acknowledgements in 60 s"
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    with ledger.lock:
        appended = dict(ledger.appended)
        stored = {k: set(v) for k, v in ledger.stored.items()}
        expunged = set(ledger.expunged)
        in_flight = set(ledger.expunge_sent) - expunged
    server.start()
    server.stop()   # a clean restart: nothing of the acknowledged may move either
    found = _mailbox(server)
    for uid, digest in appended.items():
        if uid in expunged:
            assert uid not in found, f"UID {uid} came back after its EXPUNGE was answered OK"
            continue
        if uid in in_flight and uid not in found:
            continue   # its EXPUNGE was on the wire when the server died, and took
        assert uid in found, f"UID {uid} was answered OK to APPEND and is gone"
        assert found[uid][1] == digest, f"UID {uid} is damaged"
        for keyword in stored.get(uid, ()):
            assert keyword in found[uid][0].split(), (
                f"UID {uid}: STORE +{keyword} was answered OK and is lost")
    # Exactly once: APPENDUIDs are unique, and no body appears under two UIDs
    # unless it was appended twice.
    digests = [d for _, d in found.values()]
    assert len(digests) == len(set(digests)), "a message is in the mailbox twice"
