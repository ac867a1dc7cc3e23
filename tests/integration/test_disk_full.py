"""A full disk answers 452 4.3.1 and loses nothing already accepted.

The data directory is a small tmpfs that the test mounts itself (root only;
elsewhere the test skips, and under CI=true, where it runs as root, it must
run).
"""

from __future__ import annotations

import os
import smtplib
import subprocess

import pytest

ALICE = "alice@example.test"


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full test needs root to mount a tmpfs")
        pytest.skip("the disk-full test needs root to mount a tmpfs")
    mount = tmp_path / "data"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _send(port: int, body: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("bob@sender.test")
        if code != 250:
            return code, text
        client.rcpt(ALICE)
        return client.data(b"Subject: disk\r\n\r\n" + body)


def test_enospc_while_streaming_answers_452_and_keeps_accepted_mail(small_disk, server_factory):
    server = server_factory({"queue.min_free_space": "0", "smtp.max_text_line": "0"},
                            name="data")
    assert server.data_dir == small_disk
    small = [b"message %d\r\n" % i for i in range(5)]
    for body in small:
        assert _send(server.port, body)[0] == 250
    assert server.wait_delivered(5) == 5

    code, text = _send(server.port, b"y" * 1000 + b"\r\n" + (b"z" * 998 + b"\r\n") * 8000)
    assert (code, text[:5]) == (452, b"4.3.1"), (code, text)

    # Room again once the refused blob is gone: the server goes on working.
    assert _send(server.port, b"after the storm\r\n")[0] == 250
    assert server.wait_delivered(6) == 6
    bodies = [m.split(b"\r\n\r\n", 1)[1] for m in server.inbox(ALICE)]
    assert bodies == small + [b"after the storm\r\n"]
    assert "storage full" in server.log()


def test_below_min_free_space_mail_from_answers_452(small_disk, server_factory):
    server = server_factory({"queue.min_free_space": "100M"}, name="data")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("bob@sender.test")
    assert (code, text[:5]) == (452, b"4.3.1")

