"""Real IMAP clients from Debian against a real ``pillarbox serve``: isync
(mbsync), offlineimap3, mutt and curl.

Each is skipped when the tool is missing, unless ``CI=true`` (then that fails;
``tests.conftest.need_tool``).  The clients talk to free loopback ports, over
plaintext (allowed on loopback by the development defaults), STARTTLS or
implicit TLS with the server's self-signed certificate (``<data>/tls/``).
"""

from __future__ import annotations

import os
import re
import secrets
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, add_account, need_tool
from tests.integration.imap_client import PASSWORD, append, assert_clean_log, login, message, ok

USER = "alice@example.test"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("imapclients") / "data"
    data.mkdir()
    add_account(data, USER)
    server = Server(data).start()
    yield server
    server.stop()
    assert_clean_log(server)


def _account(server: Server) -> str:
    address = f"client-{secrets.token_hex(4)}@example.test"
    add_account(server.data_dir, address, PASSWORD)
    return address


def _cert(server: Server) -> Path:
    return server.data_dir / "tls" / "selfsigned.crt"


def _run(args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> bytes:
    """Run a client; its standard output, octet for octet."""
    proc = subprocess.run(args, capture_output=True, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, (f"{args[0]} failed ({proc.returncode}):\n"
                                  f"{proc.stdout.decode(errors='replace')}\n"
                                  f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _deliver(server: Server, to: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    data = message(subject, body)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
        smtp.sendmail("carol@example.org", [to], data)
    return data


def _wait_inbox(server: Server, address: str, n: int, timeout: float = 15) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        messages = server.inbox(address)
        if len(messages) >= n or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)


# ---------------------------------------------------------------- curl

def test_curl_fetch_list_search_and_append(srv: Server, tmp_path: Path) -> None:
    curl = need_tool("curl")
    user = _account(srv)
    _deliver(srv, user, "curl one", "First body.\r\n")
    _deliver(srv, user, "curl two", "Second body.\r\n")
    stored = _wait_inbox(srv, user, 2)
    assert len(stored) == 2
    auth = ["-u", f"{user}:{PASSWORD}", "-s", "--max-time", "30"]
    base = f"imap://127.0.0.1:{srv.imap_port}"

    out = _run([curl, *auth, f"{base}/INBOX;UID=1"])
    assert out == stored[0], out
    # Over STARTTLS (required) and implicit TLS, with the self-signed certificate.
    out = _run([curl, *auth, "--ssl-reqd", "-k", f"{base}/INBOX;UID=2"])
    assert out == stored[1]
    out = _run([curl, *auth, "--cacert", str(_cert(srv)), "-k",
                f"imaps://127.0.0.1:{srv.imaps_port}/INBOX;UID=2;SECTION=TEXT"])
    assert out == b"Second body.\r\n"

    listing = _run([curl, *auth, f"{base}/"]).decode()
    for name in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert re.search(rf'^\* LIST \([^)]*\) "/" "?{name}"?\r?$', listing, re.M), listing
    found = _run([curl, *auth, f"{base}/INBOX", "-X", "SEARCH SUBJECT two"]).decode()
    assert found.strip() == "* SEARCH 2", found
    found = _run([curl, *auth, "--ssl-reqd", "-k", f"{base}/INBOX?SUBJECT%20curl"]).decode()
    assert found.strip() == "* SEARCH 1 2", found
    examine = _run([curl, *auth, f"{base}/", "-X", "EXAMINE INBOX"]).decode()
    assert "* 2 EXISTS" in examine and "UIDVALIDITY" in examine

    upload = tmp_path / "upload.eml"
    upload.write_bytes(message("uploaded by curl").replace(b"\r\n", b"\n"))
    _run([curl, *auth, "-T", str(upload), f"{base}/Drafts"])
    client = login(srv, user)
    ok(client.select("Drafts"))
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"uploaded by curl" in data[0][1]
    client.logout()

    # A wrong password: curl fails with the login error (67).
    proc = subprocess.run([curl, "-s", "-u", f"{user}:wrong", f"{base}/INBOX;UID=1"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 67, proc


# ---------------------------------------------------------------- isync (mbsync)

_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}


def _maildir_message(folder: Path, name: str, data: bytes, flags: str) -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "cur" / f"{name}:2,{flags}").write_bytes(data)


def _maildir_index(folder: Path) -> dict[str, str]:
    """Subject → the flags letters in the file name, for every message of a Maildir."""
    out = {}
    for sub in ("cur", "new"):
        for path in (folder / sub).iterdir():
            head = path.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            m = re.search(rb"^Subject: (.*?)\r?$", head, re.M)
            assert m, path
            flags = path.name.rsplit(":2,", 1)[1] if ":2," in path.name else ""
            out[m[1].decode()] = flags
    return out


def _server_index(server: Server, user: str, mailbox: str = "INBOX") -> dict[str, set[str]]:
    client = login(server, user)
    typ, data = client.select(mailbox, readonly=True)
    assert typ == "OK", data
    out: dict[str, set[str]] = {}
    if data != [b"0"]:
        typ, rows = client.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        for row in rows:
            if not isinstance(row, tuple):
                continue
            flags = re.search(rb"FLAGS \(([^)]*)\)", row[0])
            subject = re.search(rb"Subject: (.*?)\r\n", row[1])
            assert flags and subject, row
            out[subject[1].decode()] = set(flags[1].decode().split()) - {"\\Recent"}
    client.logout()
    return out


def _letters(flags: set[str]) -> str:
    return "".join(sorted(_FLAG_LETTERS[f] for f in flags if f in _FLAG_LETTERS))


def _mbsyncrc(server: Server, user: str, local: Path, tls: str) -> str:
    return f"""
IMAPAccount pb
Host 127.0.0.1
Port {server.imaps_port if tls == "IMAPS" else server.imap_port}
User {user}
Pass {PASSWORD}
SSLType {tls}
CertificateFile {_cert(server)}
AuthMechs LOGIN PLAIN
PipelineDepth 50

IMAPStore pb-far
Account pb

MaildirStore pb-near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel pb
Far :pb-far:
Near :pb-near:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
"""


@pytest.mark.slow
def test_mbsync_syncs_a_thousand_messages_both_ways(srv: Server, tmp_path: Path) -> None:
    mbsync = need_tool("mbsync")
    user = _account(srv)
    local = tmp_path / "Mail"
    inbox = local / "INBOX"
    expected: dict[str, str] = {}
    stamp = int(time.time())
    for i in range(1000):
        flags = ("F" if i % 7 == 0 else "") + ("S" if i % 2 == 0 else "")
        subject = f"mbsync {i:04d}"
        body = f"Message number {i}.\r\n" + ("padding line\r\n" * (i % 13))
        _maildir_message(inbox, f"{stamp}.M{i}P1.host", message(subject, body), flags)
        expected[subject] = flags
    _maildir_message(local / "Projects", f"{stamp}.P1.host", message("in a project"), "S")
    rc = tmp_path / "mbsyncrc"
    rc.write_text(_mbsyncrc(srv, user, local, "STARTTLS"))

    start = time.monotonic()
    _run([mbsync, "-c", str(rc), "-a"], timeout=300)
    pushed = time.monotonic() - start
    on_server = _server_index(srv, user)
    assert len(on_server) == 1000, len(on_server)
    for subject, letters in expected.items():
        assert _letters(on_server[subject]) == letters, (subject, on_server[subject])
    assert set(_server_index(srv, user, "Projects")) == {"in a project"}
    # The server's own mailboxes came down (Create Both).
    assert (local / "Sent" / "cur").is_dir() and (local / "Trash" / "cur").is_dir()

    # Changes on the server: flags set and cleared, new mail, an expunge.
    client = login(srv, user)
    ok(client.select("INBOX"))
    ok(client.store("1:100", "+FLAGS.SILENT", "(\\Answered)"))
    ok(client.store("101:150", "-FLAGS.SILENT", "(\\Seen)"))
    ok(client.store("151:160", "+FLAGS.SILENT", "(\\Deleted)"))
    ok(client.expunge())
    for n in range(10):
        append(client, message(f"server new {n}"), flags="\\Flagged" if n < 5 else "")
    client.logout()
    now = _server_index(srv, user)
    assert len(now) == 1000 - 10 + 10

    start = time.monotonic()
    _run([mbsync, "-c", str(rc), "-a"], timeout=300)
    pulled = time.monotonic() - start
    here = _maildir_index(inbox)
    assert set(here) == set(now), set(here) ^ set(now)
    for subject, flags in now.items():
        assert here[subject] == _letters(flags), (subject, here[subject], flags)
    assert pushed < 120 and pulled < 60, (pushed, pulled)

    # And back: a local flag change and a local deletion reach the server.
    files = [*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()]
    victim = next(p for p in files if re.search(rb"^Subject: server new 9\r?$", p.read_bytes(),
                                                  re.M))
    victim.rename(inbox / "cur" / (victim.name.split(":2,")[0] + ":2,FS"))
    gone = next(p for p in files if re.search(rb"^Subject: mbsync 0999\r?$", p.read_bytes(), re.M))
    gone.unlink()
    _run([mbsync, "-c", str(rc), "-a"], timeout=120)
    after = _server_index(srv, user)
    assert after["server new 9"] == {"\\Flagged", "\\Seen"}
    assert "mbsync 0999" not in after and len(after) == 999


# ---------------------------------------------------------------- offlineimap3

def _offlineimaprc(server: Server, user: str, base: Path) -> str:
    return f"""
[general]
accounts = pb
metadata = {base}/meta
ui = quiet

[Account pb]
localrepository = pb-local
remoterepository = pb-remote

[Repository pb-local]
type = Maildir
localfolders = {base}/mail

[Repository pb-remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {server.imap_port}
remoteuser = {user}
remotepass = {PASSWORD}
ssl = no
starttls = no
auth_mechanisms = PLAIN, LOGIN
folderfilter = lambda name: name in ("INBOX", "Archive")
"""


def test_offlineimap_syncs_messages_and_flags_both_ways(srv: Server, tmp_path: Path) -> None:
    offlineimap = need_tool("offlineimap")
    user = _account(srv)
    client = login(srv, user)
    for i in range(20):
        flags = " ".join(f for f, on in (("\\Seen", i % 2 == 0), ("\\Flagged", i % 5 == 0),
                                         ("\\Answered", i == 3)) if on)
        append(client, message(f"oi {i:02d}", f"Body {i}.\r\n"), flags=flags)
    append(client, message("archived"), mailbox="Archive", flags="\\Seen")
    client.logout()
    rc = tmp_path / "offlineimaprc"
    rc.write_text(_offlineimaprc(srv, user, tmp_path))
    env = {**os.environ, "HOME": str(tmp_path)}

    _run([offlineimap, "-c", str(rc), "-o", "-u", "quiet"], timeout=180, env=env)
    inbox = tmp_path / "mail" / "INBOX"
    here = _maildir_index(inbox)
    there = _server_index(srv, user)
    assert set(here) == set(there) and len(here) == 20
    for subject, flags in there.items():
        assert here[subject] == _letters(flags), (subject, here[subject], flags)
    assert set(_maildir_index(tmp_path / "mail" / "Archive")) == {"archived"}
    # The content arrived whole.
    path = next(p for p in (*(inbox / "cur").iterdir(), *(inbox / "new").iterdir())
                if re.search(rb"^Subject: oi 07\r?$", p.read_bytes(), re.M))
    assert path.read_bytes().replace(b"\r\n", b"\n").endswith(b"\nBody 7.\n")

    # Local changes go back: a flag, a deletion, a new message.
    cur = inbox / "cur"
    target = next(p for p in (*cur.iterdir(), *(inbox / "new").iterdir())
                  if re.search(rb"^Subject: oi 01\r?$", p.read_bytes(), re.M))
    base_name = target.name.split(":2,")[0]
    target.rename(cur / f"{base_name}:2,FR")
    doomed = next(p for p in cur.iterdir() if re.search(rb"^Subject: oi 02\r?$", p.read_bytes(),
                                                        re.M))
    doomed.unlink()
    (inbox / "new" / f"{int(time.time())}.local.host").write_bytes(message("written locally"))
    _run([offlineimap, "-c", str(rc), "-o", "-u", "quiet"], timeout=180, env=env)
    there = _server_index(srv, user)
    assert there["oi 01"] == {"\\Flagged", "\\Answered"}, there["oi 01"]
    assert "oi 02" not in there
    assert "written locally" in there and len(there) == 20


# ---------------------------------------------------------------- mutt

def _muttrc(server: Server, user: str, base: Path, *, starttls: bool) -> str:
    return f"""
set imap_user = "{user}"
set imap_pass = "{PASSWORD}"
set folder = "imap://127.0.0.1:{server.imap_port}/"
set spoolfile = "+INBOX"
set ssl_starttls = {"yes" if starttls else "no"}
set ssl_force_tls = {"yes" if starttls else "no"}
set certificate_file = "{base}/certificates"
set ssl_verify_host = no
set header_cache = ""
set message_cachedir = ""
set pipe_decode = no
set wait_key = no
set confirmappend = no
set quit = yes
set move = no
set mark_old = no
set sort = date-received
set imap_check_subscribed = no
set timeout = 5
"""


def _run_mutt(mutt: str, tmux: str, rc: Path, keys: str, done: Path, base: Path) -> None:
    """mutt in a private tmux server (it needs a terminal), fed ``keys`` by ``push``."""
    socket_name = f"pb-mutt-{secrets.token_hex(4)}"
    command = f"{mutt} -n -F {rc} -e 'push \"{keys}\"'; touch {done}"
    env = {**os.environ, "HOME": str(base), "TERM": "xterm"}
    subprocess.run([tmux, "-L", socket_name, "-f", "/dev/null", "new-session", "-d", "-x", "200",
                    "-y", "50", command], check=True, env=env, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        screen = subprocess.run([tmux, "-L", socket_name, "capture-pane", "-p"],
                                capture_output=True, text=True, env=env).stdout
        assert done.exists(), f"mutt did not finish; its screen:\n{screen}"
    finally:
        subprocess.run([tmux, "-L", socket_name, "kill-server"], capture_output=True, env=env)


@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "starttls"])
def test_mutt_reads_a_delivered_message(srv: Server, tmp_path: Path, starttls: bool) -> None:
    mutt = need_tool("mutt")
    tmux = need_tool("tmux")
    user = _account(srv)
    _deliver(srv, user, "for mutt", "Read me with mutt.\r\nSecond line.\r\n")
    _deliver(srv, user, "second for mutt")
    stored = _wait_inbox(srv, user, 2)
    # mutt trusts the certificates of this file (the server's self-signed one).
    (tmp_path / "certificates").write_bytes(_cert(srv).read_bytes())
    rc = tmp_path / "muttrc"
    rc.write_text(_muttrc(srv, user, tmp_path, starttls=starttls))
    out = tmp_path / "saved.eml"
    done = tmp_path / "done"
    # Pipe the first message (raw, pipe_decode unset) to a file; flag the second; quit.
    keys = (f"<first-entry><pipe-message>cat > {out}<enter>"
            "<next-entry><flag-message><sync-mailbox><quit>")
    _run_mutt(mutt, tmux, rc, keys, done, tmp_path)
    assert out.exists(), "mutt saved nothing"
    saved = out.read_bytes()
    assert saved.replace(b"\r\n", b"\n") == stored[0].replace(b"\r\n", b"\n"), saved
    flags = _server_index(srv, user)
    assert flags["second for mutt"] == {"\\Flagged"}, flags
    assert flags["for mutt"] == set(), flags      # piping peeks (BODY.PEEK): still unseen


@pytest.mark.parametrize("tls", ["IMAPS", "None"])
def test_mbsync_small_sync_over_implicit_tls_and_plaintext(srv: Server, tmp_path: Path,
                                                           tls: str) -> None:
    mbsync = need_tool("mbsync")
    user = _account(srv)
    local = tmp_path / "Mail"
    for i in range(10):
        _maildir_message(local / "INBOX", f"{int(time.time())}.S{i}.host",
                         message(f"small {i}"), "S" if i < 5 else "")
    client = login(srv, user)
    append(client, message("from the server"), flags="\\Flagged")
    client.logout()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(_mbsyncrc(srv, user, local, tls))
    _run([mbsync, "-c", str(rc), "-a"], timeout=120)
    there = _server_index(srv, user)
    assert len(there) == 11
    assert all(_letters(there[f"small {i}"]) == ("S" if i < 5 else "") for i in range(10))
    assert _maildir_index(local / "INBOX")["from the server"] == "F"
