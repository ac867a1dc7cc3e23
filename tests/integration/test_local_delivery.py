"""Aliases, catch-alls and sub-addresses, delivered over a real server."""

from __future__ import annotations

import smtplib

from pillarbox.store.sqlite.store import SQLiteStore


def test_aliases_catch_all_and_single_instance_storage(server_factory):
    server = server_factory(accounts=("alice@example.test", "bob@example.test"), start=False)
    store = SQLiteStore(server.data_dir).open()
    store.add_alias("team@example.test", "alice@example.test")
    store.add_alias("team@example.test", "bob@example.test")
    store.add_alias("@example.test", "alice@example.test")
    store.close()
    server.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo("client.test")
        # One message to the team alias and to bob: bob gets it once.
        client.sendmail("carol@sender.test", ["team@example.test", "bob@example.test"],
                        b"Subject: team\r\n\r\nfor the team\r\n")
        client.sendmail("carol@sender.test", ["whoever@example.test"],
                        b"Subject: catch-all\r\n\r\nanyone there?\r\n")
        client.sendmail("carol@sender.test", ["bob+lists@example.test"],
                        b"Subject: sub\r\n\r\nsub-addressed\r\n")
        client.ehlo("client.test")
        client.mail("carol@sender.test")
        code, _ = client.rcpt("x@elsewhere.test")
        assert code == 554
    assert server.wait_delivered(4) == 4
    alice = server.inbox("alice@example.test")
    bob = server.inbox("bob@example.test")
    assert [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in alice] == [b"team", b"catch-all"]
    assert [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in bob] == [b"team", b"sub"]
    assert b"Delivered-To: team@example.test" in alice[0]
    assert b"Delivered-To: whoever@example.test" in alice[1]
    assert b"Delivered-To: bob+lists@example.test" in bob[1]
    # The team message is one blob, shared by both mailboxes.
    blobs = server.query("SELECT blob, count(*) FROM messages GROUP BY blob ORDER BY 2 DESC")
    assert blobs[0][1] == 2
    assert server.query("SELECT count(*) FROM blobs")[0][0] == 3
    assert server.query("SELECT refs FROM blobs WHERE id = ?", (blobs[0][0],))[0][0] == 2
    uids = server.query(
        "SELECT m.uid FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
        " JOIN accounts a ON b.account = a.id WHERE a.address = 'alice@example.test' ORDER BY uid"
    )
    assert uids == [(1,), (2,)]
    assert server.query(
        "SELECT b.uidnext, b.highestmodseq FROM mailboxes b JOIN accounts a ON b.account = a.id"
        " WHERE a.address = 'alice@example.test' AND b.name = 'INBOX'"
    ) == [(3, 3)]
