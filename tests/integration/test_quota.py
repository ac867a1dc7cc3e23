"""Quota over a real server: 452 4.2.2 at RCPT, and a deferred delivery when it fills later."""

from __future__ import annotations

import smtplib
import time

from pillarbox.store.sqlite.store import SQLiteStore

ALICE, BOB = "alice@example.test", "bob@example.test"


def test_full_mailbox_is_refused_at_rcpt_and_deferred_at_delivery(server_factory):
    server = server_factory(accounts=(ALICE, BOB), start=False)
    store = SQLiteStore(server.data_dir).open()
    store.set_quota(ALICE, 2000, None)
    store.close()
    server.start()
    big = b"Subject: big\r\n\r\n" + (b"0123456789" * 30 + b"\r\n") * 10
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        # SIZE says it cannot fit: refused at the door, Bob still accepted.
        assert client.mail("c@sender.test", [f"SIZE={len(big)}"])[0] == 250
        code, text = client.rcpt(ALICE)
        assert (code, text) == (452, b"4.2.2 Mailbox full")
        assert client.rcpt(BOB)[0] == 250
        client.rset()
        # Without SIZE it looks fine at RCPT; delivery finds it too big.
        assert client.mail("c@sender.test")[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        code, text = client.data(big)
        assert code == 250, text
        queue_id = text.decode().rsplit(" ", 1)[1]
    assert server.wait_delivered(1) == 1
    deadline = time.monotonic() + 20
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        rows = server.query("SELECT state, attempts, last_reply FROM queue WHERE id = ?",
                            (queue_id,))
        if rows and rows[0][0] == "deferred":
            break
        time.sleep(0.05)
    assert rows == [("deferred", 1, "452 4.2.2 Mailbox full")]
    assert server.query(
        "SELECT address, status, last_reply FROM recipients WHERE queue_id = ? ORDER BY idx",
        (queue_id,),
    ) == [(ALICE, "pending", "452 4.2.2 Mailbox full"), (BOB, "delivered", "250 2.0.0 delivered")]
    assert server.inbox(ALICE) == []
    assert len(server.inbox(BOB)) == 1
    assert "status=deferred" in server.log() and "4.2.2" in server.log()
