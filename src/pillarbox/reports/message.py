"""A report as a message: a short text and the gzip'd report as an attachment.

DMARC (RFC 7489 §7.2.1.1): ``multipart/mixed``, the XML gzip'd as
``application/gzip`` named ``receiver!policy-domain!begin!end.xml.gz``,
subject ``Report Domain: <domain> Submitter: <receiver> Report-ID: <id>``.

TLS-RPT (RFC 8460 §5.3): ``multipart/report; report-type="tlsrpt"``, the
JSON gzip'd as ``application/tlsrpt+gzip``, the header fields
``TLS-Report-Domain`` and ``TLS-Report-Submitter``, and the same shape of
subject.

The text is ASCII only (domain names in A-labels), so the message is 7-bit.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import secrets
import time

__all__ = ["compress", "report_message"]


def compress(data: bytes) -> bytes:
    """gzip with a fixed mtime, so the same report gives the same bytes."""
    return gzip.compress(data, mtime=0)


def report_message(*, sender: str, recipients: list[str], subject: str, text: str,
                   attachment: bytes, content_type: str, filename: str, hostname: str,
                   report_type: str | None = None,
                   extra_headers: tuple[tuple[str, str], ...] = (),
                   when: float | None = None) -> bytes:
    """The whole message, CRLF line ends; ``report_type`` makes it multipart/report."""
    boundary = "=_pillarbox_" + secrets.token_hex(12)
    if report_type is None:
        top = f'multipart/mixed; boundary="{boundary}"'
    else:
        top = f'multipart/report; report-type="{report_type}"; boundary="{boundary}"'
    headers = [
        ("From", sender),
        ("To", ", ".join(recipients)),
        ("Subject", subject),
        ("Date", email.utils.formatdate(when if when is not None else time.time(), usegmt=True)),
        ("Message-ID", f"<{secrets.token_hex(10)}.report@{hostname}>"),
        ("MIME-Version", "1.0"),
        *extra_headers,
        ("Content-Type", top),
        ("Auto-Submitted", "auto-generated"),    # RFC 3834: no vacation replies to it
    ]
    lines = [f"{k}: {v}" for k, v in headers]
    lines += ["", "This is a multi-part message in MIME format.", f"--{boundary}",
              "Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit",
              ""]
    lines += text.rstrip("\n").split("\n")
    lines += [f"--{boundary}", f'Content-Type: {content_type}; name="{filename}"',
              "Content-Transfer-Encoding: base64",
              f'Content-Disposition: attachment; filename="{filename}"', ""]
    b64 = base64.b64encode(attachment).decode("ascii")
    lines += [b64[i : i + 76] for i in range(0, len(b64), 76)]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("ascii")
