"""Header encoding and folding, 7-bit downgrade, DSNs, text extraction."""

from datetime import UTC, datetime

from pillarbox.mime.dsn import RecipientStatus, build_dsn, build_system_message
from pillarbox.mime.generate import (
    address_field,
    encode_words,
    fold,
    header_field,
    is_7bit,
    needs_smtputf8,
    to_7bit,
)
from pillarbox.mime.headers import decode_words, unfold
from pillarbox.mime.imap import bodystructure
from pillarbox.mime.parser import parse
from pillarbox.mime.text import decode_charset, header_text, html_to_text, message_text

from .corpus import HANDWRITTEN, msg


def test_encode_words_keeps_ascii_and_round_trips() -> None:
    assert encode_words("plain text") == "plain text"
    enc = encode_words("Grüße aus Köln")
    assert enc.startswith("=?utf-8?") and " aus " in enc
    assert decode_words(enc.encode()) == "Grüße aus Köln"
    long = encode_words("é" * 200)
    assert all(len(w) <= 75 for w in long.split())


def test_fold_limits_line_length() -> None:
    field = fold("Subject", " ".join(["word"] * 60))
    lines = field.split(b"\r\n")
    assert all(len(x) <= 78 for x in lines) and lines[-1] == b""
    assert unfold(field.rstrip(b"\r\n")) == b"Subject: " + b" ".join([b"word"] * 60)


def test_header_and_address_fields() -> None:
    assert header_field("Subject", "Grüße", utf8=True) == "Subject: Grüße\r\n".encode()
    f = address_field("To", [("Jörg Müller", "j@x.test"), ("A, B", "ab@x.test"), (None, "c@x.test")])
    assert f.isascii() and b'"A, B" <ab@x.test>' in f and b", c@x.test" in f


def test_to_7bit_converts_8bit_parts_and_headers() -> None:
    m = msg("Subject: Grüße", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=b", "",
            "--b", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
            "café au lait", "--b", "Content-Type: application/octet-stream",
            "Content-Transfer-Encoding: binary", "", b"\x00\x01\xff", "--b",
            "Content-Type: message/rfc822", "Content-Transfer-Encoding: 8bit", "",
            "Subject: inner", "Content-Type: text/plain; charset=utf-8", "", "naïve", "--b--", "")
    out = to_7bit(m)
    assert is_7bit(out)
    root = parse(out)
    assert root.headers.text("Subject") == "Grüße"
    assert root.children[0].transfer_encoding == "quoted-printable"
    assert root.children[0].decoded() == "café au lait".encode()
    assert root.children[1].transfer_encoding == "base64"
    assert root.children[1].decoded() == b"\x00\x01\xff"
    assert root.children[2].transfer_encoding == "7bit"
    assert root.children[2].message.children == [] and root.children[2].message.decoded() == "naïve".encode()


def test_to_7bit_leaves_7bit_messages_alone() -> None:
    m = HANDWRITTEN["nested"]
    assert to_7bit(m) is m


def test_needs_smtputf8() -> None:
    assert needs_smtputf8(HANDWRITTEN["utf8-headers"])
    assert not needs_smtputf8(HANDWRITTEN["encoded-subject"])


WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_dsn_structure_rfc3464_rfc6522() -> None:
    dsn = build_dsn(
        reporting_mta="mx.example.com", from_addr="MAILER-DAEMON@mx.example.com",
        to_addr="sender@example.org", original=HANDWRITTEN["simple"], envelope_id="env-1",
        arrival_date=WHEN, date=WHEN,
        recipients=[RecipientStatus("bob@example.org", "failed", "5.1.1",
                                    original_recipient="rfc822;bob@example.org",
                                    remote_mta="mx.example.org",
                                    diagnostic_code="550 5.1.1 no such\r\n user", last_attempt=WHEN),
                    RecipientStatus("carol@example.org", "delayed", "4.4.1",
                                    will_retry_until=WHEN)])
    assert is_7bit(dsn)
    root = parse(dsn)
    assert root.content_type == "multipart/report"
    assert root.params["report-type"] == "delivery-status"
    assert [c.content_type for c in root.children] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert root.headers.text("Auto-Submitted") == "auto-replied"
    status = root.children[1].body_bytes().decode()
    blocks = status.split("\r\n\r\n")
    assert blocks[0] == ("Reporting-MTA: dns;mx.example.com\r\nOriginal-Envelope-Id: env-1\r\n"
                         "Arrival-Date: Fri, 2 Jan 2026 03:04:05 +0000")
    assert "Final-Recipient: rfc822;bob@example.org\r\nAction: failed\r\nStatus: 5.1.1" in blocks[1]
    # The reply's second line is a folded continuation (no header injection);
    # unfolded, the field is the reply's lines joined by a space.
    assert "Diagnostic-Code: smtp;550 5.1.1 no such\r\n user\r\n" in blocks[1]
    assert "Will-Retry-Until:" in blocks[2]
    # the returned header block; its blank line is the CRLF before the close delimiter
    assert root.children[2].body_bytes() == parse(HANDWRITTEN["simple"]).header_bytes()[:-2]
    bodystructure(root)


def test_dsn_full_return_and_internationalised_original() -> None:
    dsn = build_dsn(reporting_mta="mx", from_addr="m@mx", to_addr="s@x", date=WHEN,
                    original=HANDWRITTEN["multipart-basic"], return_content="full",
                    recipients=[RecipientStatus("a@b", "failed", "5.0.0")])
    returned = parse(dsn).children[2]
    assert returned.content_type == "message/rfc822"
    assert returned.message.children[1].decoded() == "<p>café</p>".encode()
    intl = build_dsn(reporting_mta="mx", from_addr="m@mx", to_addr="s@x", date=WHEN,
                     original=HANDWRITTEN["utf8-headers"], recipients=[RecipientStatus("a@b", "failed", "5.0.0")])
    assert parse(intl).children[2].content_type == "message/global-headers"


def test_system_message() -> None:
    m = build_system_message(from_addr="postmaster@x.test", to_addr="u@x.test", subject="Quota",
                             text="Your mailbox is 90 % full.\nÜberfüllt.", domain="x.test", date=WHEN)
    root = parse(m)
    assert is_7bit(m) and root.headers.text("Auto-Submitted") == "auto-generated"
    assert message_text(root) == "Your mailbox is 90 % full.\r\nÜberfüllt."


def test_text_extraction() -> None:
    assert message_text(parse(HANDWRITTEN["html-only"])) == "Hello & welcome\n\nbye"
    assert message_text(parse(HANDWRITTEN["multipart-basic"])) == "part one\n\ncafé"
    nested = parse(HANDWRITTEN["nested"])
    assert message_text(nested) == "plain\n\nhtml\n\nforwarded text"
    assert "forwarded" in header_text(nested)
    att = parse(HANDWRITTEN["multipart-attachment"])
    assert message_text(att) == "see attached"


def test_charset_fallbacks() -> None:
    assert decode_charset("é".encode(), "us-ascii") == "é"  # mislabelled UTF-8
    assert decode_charset(b"\x80", "iso-8859-1") == "€"  # read as windows-1252
    assert decode_charset(b"caf\xe9", "x-bogus") == "café"
    assert decode_charset(b"\xf0\xd2\xc9\xd7\xc5\xd4", "koi8-r") == "Привет"
    assert decode_charset(b"\xff\xfe", None) == "ÿþ"


def test_html_to_text() -> None:
    html = "<html><head><title>t</title><style>p{}</style></head><body><p>a&nbsp;b</p>" \
           "<script>x()</script><ul><li>one<li>two</ul><img alt='pic'></body></html>"
    assert html_to_text(html) == "a b\n\none\ntwo\npic"
    assert html_to_text("<<<>>>") is not None
