"""``pillarbox sendmail`` and ``mailq`` as cron and scripts run them: real processes,
with and without a running ``pillarbox serve``, the message checked in the queue and in
the mailbox."""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pillarbox.store.sqlite.store import SQLiteStore
from tests.conftest import Server

ACCOUNTS = ("alice@example.test", "bob@example.test", "carol@example.test")
HOST = "mail.example.test"          # so that unqualified addresses get @example.test


def write_config(server: Server) -> Path:
    path = server.data_dir.parent / "pillarbox.toml"
    path.write_text(f'[server]\ndata_dir = "{server.data_dir}"\nhostname = "{HOST}"\n')
    return path


def sendmail(config: Path, *args: str, data: bytes = b"", cwd: Path | None = None,
             argv0: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PILLARBOX_CONFIG": str(config), "NAME": ""}
    command = argv0 or [sys.executable, "-m", "pillarbox", "sendmail"]
    return subprocess.run([*command, *args], input=data, capture_output=True, env=env,
                          cwd=cwd or config.parent, timeout=60)


def queue(server: Server) -> list:
    store = SQLiteStore(server.data_dir)
    try:
        return store.queue_list()
    finally:
        store.close()


def blob(server: Server, queue_id: str) -> bytes:
    store = SQLiteStore(server.data_dir)
    try:
        return store.read_blob(queue_id)
    finally:
        store.close()


def wait_empty_queue(server: Server, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    entries = queue(server)
    while entries and time.monotonic() < deadline:
        time.sleep(0.05)
        entries = queue(server)
    return entries


MESSAGE = (b"From: Cron Daemon <cron@example.test>\n"
           b"To: alice@example.test\n"
           b"Cc: Bob <bob@example.test>\n"
           b"Bcc: carol+secret@example.test\n"
           b"Subject: nightly backup\n"
           b"\n"
           b"all went well\n")


def test_without_a_server_the_message_waits_in_the_queue_then_serve_delivers_it(server_factory):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)

    result = sendmail(config, "-t", "-i", "-v", data=MESSAGE)
    assert result.returncode == 0, result.stderr
    assert b"via the store" in result.stderr
    [entry] = queue(server)
    assert entry.state == "active" and entry.reverse_path.startswith(
        pwd.getpwuid(os.getuid())[0] + "@example.test")
    assert [r.address for r in entry.recipients] == [
        "alice@example.test", "bob@example.test", "carol+secret@example.test"]
    assert entry.client_address == "local"
    stored = blob(server, entry.id)
    assert b"Bcc" not in stored and b"secret" not in stored
    assert stored.startswith(b"Received: by mail.example.test (Pillarbox sendmail, from userid ")
    assert b"\r\nFrom: Cron Daemon <cron@example.test>\r\n" in stored
    assert b"\r\nDate: " in stored and f"Message-ID: <{entry.id}@{HOST}>".encode() in stored
    assert stored.endswith(b"\r\n\r\nall went well\r\n")
    assert stored.count(b"\n") == stored.count(b"\r\n")

    # mailq, -bp and a program called mailq all show it.
    listing = sendmail(config, "-bp")
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout.decode()
    assert f"{entry.id}*" in text and "alice@example.test" in text
    assert "bob@example.test" in text and "-- 1 Kbytes in 1 Request." in text

    server.start()
    assert server.wait_delivered(3) == 3
    [alice] = server.inbox("alice@example.test")
    [bob] = server.inbox("bob@example.test")
    [carol] = server.inbox("carol@example.test")
    for message in (alice, bob, carol):
        assert b"Subject: nightly backup" in message and b"Bcc" not in message
    assert b"Delivered-To: carol+secret@example.test" in carol
    assert wait_empty_queue(server) == []
    assert sendmail(config, "-bp").stdout == b"Mail queue is empty\n"


def test_shell_script_with_a_running_server_delivers_at_once(server_factory, tmp_path):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS)
    config = write_config(server)
    script = tmp_path / "report.sh"
    script.write_text(
        "#!/bin/sh\n"
        "set -e\n"
        "printf 'To: alice\\nSubject: disk report\\n\\n/ is 42%% full\\n' |"
        f" '{sys.executable}' -m pillarbox sendmail -t -v -F 'Disk Watcher'\n"
        "echo sent\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    started = time.monotonic()
    result = subprocess.run(["/bin/sh", "-c", str(script)], capture_output=True, timeout=60,
                            env={**os.environ, "PILLARBOX_CONFIG": str(config), "NAME": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"sent\n"
    assert b"via the queue manager" in result.stderr
    assert server.wait_delivered(1) == 1
    assert time.monotonic() - started < 20
    [message] = server.inbox("alice@example.test")
    user = pwd.getpwuid(os.getuid())[0]
    assert f"From: Disk Watcher <{user}@example.test>".encode() in message
    assert b"To: alice\r\n" in message            # the header is not rewritten
    assert b"Delivered-To: alice@example.test" in message
    assert message.endswith(b"\r\n\r\n/ is 42% full\r\n")
    assert wait_empty_queue(server) == []


def test_large_message_through_the_running_queue_manager(server_factory):
    # Above the 64 KiB that travel inside the request: the blob file is handed over.
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS)
    config = write_config(server)
    body = b"".join(b"line %06d of a long log\n" % i for i in range(8000))
    result = sendmail(config, "-v", "-f", "root", "bob",
                      data=b"Subject: big\n\n" + body)
    assert result.returncode == 0, result.stderr
    assert b"via the queue manager" in result.stderr
    assert server.wait_delivered(1) == 1
    [message] = server.inbox("bob@example.test")
    assert b"Return-Path: <root@example.test>" in message
    # From: the -f address, with the invoking user's GECOS name if there is one.
    assert re.search(rb"\r\nFrom: (root@example.test|.+ <root@example.test>)\r\n", message)
    assert message.endswith(body.replace(b"\n", b"\r\n"))


def test_smtp_on_standard_input_and_output(server_factory):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)
    transcript = (
        b"EHLO client.example.test\r\n"
        b"MAIL FROM:<alice@example.test> BODY=8BITMIME\r\n"
        b"RCPT TO:<bob@example.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<friend@elsewhere.test>\r\n"
        b"DATA\r\n"
        b"Subject: caf\xc3\xa9\r\n"
        b"Bcc: friend@elsewhere.test\r\n"
        b"\r\n"
        b"..stuffed\n"                       # a bare LF: normalised, not refused
        b".\r\n"
        b"QUIT\r\n"
    )
    result = sendmail(config, "-bs", data=transcript)
    assert result.returncode == 0, result.stderr
    replies = result.stdout.decode().splitlines()
    assert replies[0].startswith(f"220 {HOST} ESMTP")
    codes = [line[:4] for line in replies if line[3:4] == " "]
    # 220, EHLO, MAIL, RCPT ok, RCPT unknown, RCPT relayed (local submission), 354, 250, 221
    assert codes == ["220 ", "250 ", "250 ", "250 ", "550 ", "250 ", "354 ", "250 ", "221 "]
    assert "STARTTLS" not in result.stdout.decode()
    queued = [line for line in replies if "queued as" in line][0]
    queue_id = queued.rsplit(" ", 1)[1]
    [entry] = queue(server)
    assert entry.id == queue_id and entry.body == "8BITMIME"
    assert [r.address for r in entry.recipients] == ["bob@example.test", "friend@elsewhere.test"]
    stored = blob(server, queue_id)
    assert stored.startswith(b"Received: from client.example.test (uid ")
    assert b"Bcc" not in stored
    assert b"\r\nFrom: alice@example.test\r\n" in stored
    assert stored.endswith(b"\r\n\r\n.stuffed\r\n")


def test_smtp_on_standard_input_with_a_running_server_and_no_quit(server_factory):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS)
    config = write_config(server)
    transcript = (b"HELO cli\nMAIL FROM:<>\nRCPT TO:<carol@example.test>\nDATA\n"
                  b"Subject: pipelined, LF only\n\nhello\n.\n"
                  b"MAIL FROM:<alice@example.test>\n")           # then the pipe closes
    result = sendmail(config, "-bs", data=transcript)
    assert result.returncode == 0, result.stderr
    codes = [line[:3] for line in result.stdout.decode().splitlines()]
    assert codes == ["220", "250", "250", "250", "354", "250", "250"]
    assert server.wait_delivered(1) == 1
    [message] = server.inbox("carol@example.test")
    assert b"Return-Path: <>" in message and b"Subject: pipelined, LF only\r\n" in message
    user = pwd.getpwuid(os.getuid())[0]
    assert re.search(rb"\r\nFrom: (.+ <)?" + re.escape(user.encode()) + rb"@example.test>?\r\n",
                     message)
    assert wait_empty_queue(server) == []


def test_exit_codes(server_factory, tmp_path):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)
    unknown = sendmail(config, "alice@example.test", "nobody", data=b"Subject: x\n\nx\n")
    assert unknown.returncode == 67
    assert b"no such user here: nobody@example.test (nothing was sent)" in unknown.stderr
    assert sendmail(config, data=b"Subject: x\n\nx\n").returncode == 64
    none = sendmail(config, "-t", data=b"Subject: no recipients\n\nx\n")
    assert none.returncode == 65 and b"no recipient addresses found" in none.stderr
    bad = sendmail(config, "alice@@example.test", data=b"x\n")
    assert bad.returncode == 65 and b"bad address" in bad.stderr
    option = sendmail(config, "-Y", "alice", data=b"x\n")
    assert option.returncode == 64 and b"unknown option -Y" in option.stderr
    too_big = sendmail(config, "-o", "smtp.max_message_size=1000", "alice",
                       data=b"x" * 2000)   # -o X is sendmail's ignored option, not ours
    assert too_big.returncode == 0
    assert queue(server)[0].recipients[0].address == "alice@example.test"
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    missing = sendmail(elsewhere / "pillarbox.toml", "alice", data=b"x\n", cwd=elsewhere)
    assert missing.returncode == 78 and b"no configuration file" in missing.stderr
    assert len(queue(server)) == 1


def test_message_size_limit_and_utf8_envelope(server_factory):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)
    config.write_text(config.read_text() + "[smtp]\nmax_message_size = 2048\n")
    big = sendmail(config, "alice", data=b"Subject: x\n\n" + b"y" * 100_000 + b"\n")
    assert big.returncode == 65 and b"smtp.max_message_size" in big.stderr
    assert queue(server) == []
    utf8 = sendmail(config, "-t", data="To: élève@école.test\nSubject: s\n\nx\n".encode())
    assert utf8.returncode == 0, utf8.stderr
    [entry] = queue(server)
    assert entry.smtputf8 and entry.recipients[0].address == "élève@xn--cole-9oa.test"


@pytest.mark.parametrize("name, entry", [
    ("sendmail", "pillarbox.cli:main"),                  # ln -s .../bin/pillarbox sendmail
    ("mailq", "pillarbox.cli:main"),
    ("pillarbox-sendmail", "pillarbox.admin.sendmail:main"),   # the console entry points
    ("mailq", "pillarbox.admin.sendmail:main"),          # ln -s .../pillarbox-sendmail mailq
    ("pillarbox-mailq", "pillarbox.admin.sendmail:mailq_main"),
])
def test_installed_under_the_sendmail_names(server_factory, tmp_path, name, entry):
    # What a symlink to the installed command gives: a program of that name.
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)
    program = tmp_path / "bin" / name
    program.parent.mkdir()
    module, function = entry.split(":")
    program.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                       f"sys.exit({function}())\n")
    program.chmod(0o755)
    if name.endswith("sendmail"):
        result = sendmail(config, "-oi", "-t", data=b"To: bob\n\nhi\n", argv0=[str(program)])
        assert result.returncode == 0, result.stderr
        assert [r.address for r in queue(server)[0].recipients] == ["bob@example.test"]
    else:
        assert sendmail(config, "alice", data=b"hi\n").returncode == 0
        result = sendmail(config, argv0=[str(program)])
        assert result.returncode == 0, result.stderr
        assert b"alice@example.test" in result.stdout and b"1 Request." in result.stdout


# ------------------------------------------------- the hand-over and its failures


def _store_with_account(tmp_path: Path) -> SQLiteStore:
    from tests.conftest import add_account

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    add_account(data_dir, "alice@example.test")
    return SQLiteStore(data_dir).open()


ENVELOPE_ARGS = dict(reverse_path="root@example.test", client_address="local", helo="")


def _commit_with_manager(tmp_path: Path, answer: object, message: bytes = b"Subject: x\r\n\r\nx\r\n"):
    """``submit.commit`` against a stand-in queue manager that answers ``answer``
    (a dict; None: reads the request and hangs up without a word)."""
    import asyncio

    from pillarbox.admin.handover import commit
    from pillarbox.queue.ipc import encode, read_frame
    from pillarbox.queue.manager import socket_path
    from pillarbox.store.base import Envelope, EnvelopeRecipient

    store = _store_with_account(tmp_path)
    envelope = Envelope(recipients=(EnvelopeRecipient("alice@example.test"),), **ENVELOPE_ARGS)
    requests: list[dict] = []

    async def scenario():
        async def manager(reader, writer):
            frame = await read_frame(reader)
            requests.append(frame)
            if answer is not None:
                writer.write(encode({**answer, "id": frame["id"]}))
                await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(manager, str(socket_path(store)))
        try:
            writer = store.new_blob(queue_id)
            writer.write(message)
            return await commit(store, queue_id, writer, envelope, socket_path(store))
        finally:
            server.close()

    from pillarbox.store.blobs import new_id

    queue_id = new_id()
    try:
        return store, queue_id, requests, asyncio.run(scenario())
    except BaseException:
        store.close()
        raise


def test_a_manager_that_refuses_leaves_the_commit_to_the_store(tmp_path):
    store, queue_id, requests, queued = _commit_with_manager(
        tmp_path, {"ok": False, "error": "blob path outside the store"})
    try:
        assert requests[0]["op"] == "enqueue" and requests[0]["inline"] is True
        assert queued.queue_id == queue_id and queued.via == "store"
        assert [e.id for e in store.queue_list()] == [queue_id]
        assert store.read_blob(queue_id) == b"Subject: x\r\n\r\nx\r\n"
    finally:
        store.close()


def test_a_lost_hand_over_commits_a_copy_rather_than_lose_the_message(tmp_path):
    big = b"Subject: big\r\n\r\n" + b"y" * 100_000 + b"\r\n"     # handed over as a file
    store, queue_id, requests, queued = _commit_with_manager(tmp_path, None, big)
    try:
        assert requests[0]["inline"] is False
        assert queued.via == "store" and queued.queue_id != queue_id
        assert [e.id for e in store.queue_list()] == [queued.queue_id]
        assert store.read_blob(queued.queue_id) == big
    finally:
        store.close()


def test_a_full_manager_is_a_temporary_failure_and_nothing_is_queued(tmp_path):
    from pillarbox.admin.submit import SubmitError

    with pytest.raises(SubmitError) as exc:
        _commit_with_manager(tmp_path, {"ok": False, "full": True, "error": "disk full"})
    assert exc.value.status == 75 and "out of storage" in str(exc.value)
    store = SQLiteStore(tmp_path / "data").open()
    try:
        assert store.queue_list() == []
    finally:
        store.close()


def test_a_blob_removed_by_a_starting_servers_cleanup_is_written_again(tmp_path):
    """``serve`` collects unnamed blob files at start, under its lock; one this command
    had written but not yet committed would go, leaving a row without a file."""
    import asyncio

    from pillarbox.admin.handover import commit
    from pillarbox.queue.manager import socket_path
    from pillarbox.store.base import Envelope, EnvelopeRecipient
    from pillarbox.store.blobs import new_id
    from pillarbox.store.lock import DataDirLock

    store = _store_with_account(tmp_path)
    envelope = Envelope(recipients=(EnvelopeRecipient("alice@example.test"),), **ENVELOPE_ARGS)
    message = b"Subject: keep me\r\n\r\n" + b"z" * 200_000 + b"\r\n"
    queue_id = new_id()

    async def scenario():
        lock = DataDirLock(store.data_dir).acquire()     # a server is starting
        writer = store.new_blob(queue_id)
        writer.write(message)
        task = asyncio.create_task(commit(store, queue_id, writer, envelope, socket_path(store)))
        while store.queue_get(queue_id) is None:
            await asyncio.sleep(0.01)
        # Its clean-up read the rows before our commit, and now removes the file.
        store.blobs.path(queue_id).unlink()
        await asyncio.sleep(0.3)
        assert not task.done()                           # waits for the clean-up to end
        lock.release()
        return await asyncio.wait_for(task, 30)

    try:
        queued = asyncio.run(scenario())
        assert queued.via == "store" and queued.queue_id == queue_id
        assert store.read_blob(queue_id) == message
    finally:
        store.close()


def test_pillarbox_c_and_mailq_of_a_deferred_entry(server_factory):
    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    config = write_config(server)
    env = {**os.environ, "NAME": ""}
    env.pop("PILLARBOX_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "pillarbox", "-c", str(config), "sendmail", "-N", "failure,delay",
         "-R", "hdrs", "-V", "env-1", "-B", "8BITMIME", "-f", "", "alice"],
        input=b"Subject: dsn\n\nx\n", capture_output=True, env=env, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    [entry] = queue(server)
    assert (entry.reverse_path, entry.dsn_ret, entry.dsn_envid, entry.body) == (
        "", "HDRS", "env-1", "8BITMIME")
    assert entry.recipients[0].notify == "FAILURE,DELAY"
    store = SQLiteStore(server.data_dir)
    try:
        with store.transaction() as conn:
            conn.execute("UPDATE queue SET state = 'deferred', last_reply = ? WHERE id = ?",
                         ("451 4.4.1 No answer from mx.example.net", entry.id))
    finally:
        store.close()
    text = sendmail(config, "-bp").stdout.decode().splitlines()
    assert text[1].startswith(entry.id + " ") and text[1].endswith("MAILER-DAEMON")
    assert text[2] == "(451 4.4.1 No answer from mx.example.net)"
    assert text[3].strip() == "alice@example.test"


def test_smtp_on_standard_input_expands_aliases_that_forward(server_factory):
    """``sendmail -bs`` queues an alias to other domains as ``sendmail`` does: its
    remote targets with the alias as ORCPT (a client's own ORCPT and NOTIFY kept),
    the alias itself only where it also reaches an account of ours.  (It used to
    refuse a forward-only alias with 550 and drop the remote targets of the others.)"""
    from pillarbox.admin import commands

    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    store = SQLiteStore(server.data_dir)
    try:
        commands.add_alias(store, "root@example.test",
                           ["alice@example.test", "admin@elsewhere.test"])
        commands.add_alias(store, "ops@example.test",
                           ["ops@elsewhere.test", "admin@elsewhere.test"])
    finally:
        store.close()
    config = write_config(server)
    transcript = (
        b"EHLO cli\r\nMAIL FROM:<alice@example.test>\r\n"
        b"RCPT TO:<root@example.test> NOTIFY=FAILURE\r\n"
        b"RCPT TO:<ops@example.test> ORCPT=rfc822;pager@example.test\r\n"
        b"RCPT TO:<nobody@example.test>\r\n"
        b"DATA\r\nSubject: disk full\r\n\r\n/var is at 99%\r\n.\r\nQUIT\r\n"
    )
    result = sendmail(config, "-bs", data=transcript)
    assert result.returncode == 0, result.stderr
    codes = [line[:4] for line in result.stdout.decode().splitlines() if line[3:4] == " "]
    assert codes == ["220 ", "250 ", "250 ", "250 ", "250 ", "550 ", "354 ", "250 ", "221 "]
    [entry] = queue(server)
    assert [(r.address, r.notify, r.orcpt) for r in entry.recipients] == [
        ("root@example.test", "FAILURE", None),
        ("admin@elsewhere.test", "FAILURE", "rfc822;root@example.test"),
        ("ops@elsewhere.test", None, "rfc822;pager@example.test"),
    ]


def test_aliases_that_forward_are_expanded_into_the_queue(server_factory):
    """sendmail goes straight into the queue, not through a receiving session, so an
    alias to other domains is expanded there: each remote target becomes an envelope
    recipient with the alias as its ORCPT; an alias reaching only other domains is
    itself left out (local delivery would have no mailbox for it)."""
    from pillarbox.admin import commands

    server = server_factory({"server.hostname": HOST}, accounts=ACCOUNTS, start=False)
    store = SQLiteStore(server.data_dir)
    try:
        commands.add_alias(store, "root@example.test",
                           ["alice@example.test", "admin@elsewhere.test"])
        commands.add_alias(store, "ops@example.test", ["ops@elsewhere.test"])
    finally:
        store.close()
    config = write_config(server)
    result = sendmail(config, "-i", "root", "ops@example.test", "bob@example.test",
                      data=b"Subject: disk full\n\n/var is at 99%\n")
    assert result.returncode == 0, result.stderr
    [entry] = queue(server)
    assert [(r.address, r.orcpt) for r in entry.recipients] == [
        ("root@example.test", None),
        ("admin@elsewhere.test", "rfc822;root@example.test"),
        ("ops@elsewhere.test", "rfc822;ops@example.test"),
        ("bob@example.test", None),
    ]
