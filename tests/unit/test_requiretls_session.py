"""The receiving session tags each message as RFC 8689 §4.1 says: REQUIRETLS
from MAIL FROM (under TLS), else ``TLS-Required: No`` from the header; with
REQUIRETLS the header field is ignored.  Over the core and a real store."""

from __future__ import annotations

import pytest

from pillarbox.auth.passwords import hash_password
from pillarbox.protocols.smtp.server import Limits, SMTPServerConnection
from pillarbox.receive.session import ReceiverContext, Session
from pillarbox.store.sqlite.store import SQLiteStore
from tests.unit.test_receive_session import _drive


@pytest.mark.parametrize("mail, header, tags", [
    (b"MAIL FROM:<bob@sender.test>", b"", (False, False)),
    (b"MAIL FROM:<bob@sender.test> REQUIRETLS", b"", (True, False)),
    (b"MAIL FROM:<bob@sender.test>", b"TLS-Required: No\r\n", (False, True)),
    (b"MAIL FROM:<bob@sender.test> REQUIRETLS", b"TLS-Required: No\r\n", (True, False)),
])
def test_tags_at_receipt(tmp_path, mail: bytes, header: bytes,  # type: ignore[no-untyped-def]
                         tags: tuple[bool, bool]) -> None:
    store = SQLiteStore(tmp_path / "data").open()
    try:
        store.add_domain("example.test")
        store.add_account("alice@example.test", hash_password("pw"))
        ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                              min_free_space=0)
        core = SMTPServerConnection("mx.test", Limits(), tls_active=True)   # as after STARTTLS
        session = Session(ctx, core, "192.0.2.7", tls=("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128))
        core.greeting()
        out = _drive(session, core, b"EHLO client.test\r\n" + mail + b"\r\n"
                     b"RCPT TO:<alice@example.test>\r\nDATA\r\n"
                     b"Subject: s\r\n" + header + b"\r\nbody\r\n.\r\n")
        last = out.split(b"\r\n")[-2]
        assert last.startswith(b"250 2.0.0 Ok: queued as "), out
        entry = store.queue_get(last.rsplit(b" ", 1)[1].decode())
        assert entry is not None and (entry.requiretls, entry.tls_required_no) == tags
    finally:
        store.close()


def test_requiretls_without_tls_is_refused_before_the_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "data").open()
    try:
        ctx = ReceiverContext(store=store, hostname="mx.test", recipient_delimiter="+",
                              min_free_space=0)
        core = SMTPServerConnection("mx.test", Limits(), tls_available=True)
        session = Session(ctx, core, "192.0.2.7")
        out = _drive(session, core, b"EHLO c.test\r\nMAIL FROM:<b@sender.test> REQUIRETLS\r\n")
        assert out.endswith(b"530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS "
                            b"first (RFC 8689 2)\r\n")
        assert session.tx is None
    finally:
        store.close()
