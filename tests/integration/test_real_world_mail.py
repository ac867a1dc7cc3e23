"""The real-world messages of ``tests/mime/data/`` (518 from the test corpora of
mail libraries and servers: Outlook, Netscape, Eudora, PINE, Apple Mail, mutt …,
many broken on purpose) through the whole server: SMTP in, the queue, local
delivery, and IMAP out, octet for octet.

The Dovecot comparison (``tests/mime/test_dovecot.py``) checks how the MIME engine
renders them; this checks that nothing on the way loses, changes or chokes on
one: the SMTP core's content checks, the header gate, the Received: line, the
store's segments, and FETCH and SEARCH over all of them at once."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.integration.imap_client import login, new_account, ok
from tests.mime.corpus import data_corpus

CORPUS = {name: re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", data)   # SMTP wants CRLF only
          for name, data in sorted(data_corpus().items())}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import Server

    # Some of these messages have lines longer than RFC 5321's 1000 octets, which
    # the default refuses (tests/protocols/test_smtp_server.py); here they come in.
    # Their DKIM signatures would wait for the test's absent DNS server (11 s each).
    srv = Server(tmp_path_factory.mktemp("realworld") / "data",
                 {"smtp.max_text_line": "0", "policy.dkim": "off"})
    srv.start()
    yield srv
    srv.stop()


def test_every_real_world_message_arrives_as_it_was_sent_and_is_served(server) -> None:
    address = new_account(server)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("sender.test")
        for name, data in CORPUS.items():
            options = ["BODY=8BITMIME"] if any(b > 127 for b in data) else []
            refused = smtp.sendmail("sender@sender.test", [address], data, options)
            assert not refused, (name, refused)
    client = login(server, address)
    try:
        exists = int(ok(client.select("INBOX"))[0])
        assert exists == len(CORPUS)
        fetched = [part[1] for part in ok(client.fetch("1:*", "(BODY.PEEK[])"))
                   if isinstance(part, tuple)]
        assert len(fetched) == len(CORPUS)
        for (name, sent), stored in zip(CORPUS.items(), fetched):
            # local delivery's fields and our Received: line go in front; the rest is untouched
            assert stored.startswith(b"Return-Path: <sender@sender.test>\r\n"), name
            assert stored.endswith(sent if sent.endswith(b"\r\n") else sent + b"\r\n"), name
        # every structure and envelope at once, then a search that reads every body
        answers = ok(client.fetch("1:*", "(UID ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)"))
        assert sum(1 for a in answers if (a[0] if isinstance(a, tuple) else a)
                   .lstrip()[:1].isdigit()) == len(CORPUS)
        hits = ok(client.search("UTF-8", "TEXT", "the"))[0].split()
        assert 0 < len(hits) < len(CORPUS)
        ok(client.noop())
    finally:
        client.logout()
