"""Import and export through a real ``SQLiteStore``, and both ways with a real Dovecot.

- A Maildir built here (Dovecot's Maildir++ with keywords, new/ and cur/,
  subfolders) goes in, comes out, and every message, flag and date matches;
  the exported files are the imported files, octet for octet.
- Importing again adds nothing; an import interrupted after two batches,
  run again, ends with every message exactly once.
- mbox in and out through the CLI, byte for byte.
- Interop: a private Dovecot makes a Maildir (IMAP APPEND with flags,
  keywords and dates, ``doveadm flags`` and ``doveadm save``), in both its
  layouts (Maildir++ and ``LAYOUT=fs``); Pillarbox imports it and must see
  what Dovecot serves over IMAP.  Then Pillarbox exports, a second private
  Dovecot reads the export, and must serve what Pillarbox holds, with
  Pillarbox's UIDs and UIDVALIDITY.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from pillarbox import cli
from pillarbox.admin import mailbox_io
from pillarbox.admin.maildir import decode_mutf7, find_folders, scan_folder
from pillarbox.store.base import StoreError
from pillarbox.store.sqlite.store import SQLiteStore
from tests.conftest import add_account, need_tool
from tests.mime import dovecot as dv

ADDRESS = "alice@example.test"
T = 1606854770


@pytest.fixture
def store(tmp_path: Path):
    data = tmp_path / "data"
    add_account(data, ADDRESS)
    s = SQLiteStore(data).open()
    yield s
    s.close()


def account(store: SQLiteStore) -> int:
    found = store.directory().find_account(ADDRESS)
    assert found is not None
    return found.id


def contents(store: SQLiteStore, name: str) -> list[tuple[bytes, frozenset[str], float]]:
    box = store.mailbox(account(store), name)
    assert box is not None, name
    out = []
    for m in store.messages(box.id):
        data = store.message_bytes(box.id, m.uid)
        assert data is not None
        out.append((data, m.flags, m.internal_date))
    return out


def run_import(store: SQLiteStore, path: Path, **options) -> mailbox_io.ImportReport:
    return asyncio.run(mailbox_io.import_mail(store, ADDRESS, path, **options))


# -------------------------------------------------------------- a Maildir


def build_maildir(root: Path) -> dict[str, list[tuple[Path, frozenset[str], float]]]:
    """A Dovecot-style Maildir++; returns, per mailbox, (file, flags, date) in UID order."""
    expected: dict[str, list[tuple[Path, frozenset[str], float]]] = {}
    layout = {
        "INBOX": (root, [
            ("cur", ":2,S", {"\\Seen"}),
            ("cur", ":2,FRab", {"\\Flagged", "\\Answered", "$Forwarded", "kwone"}),
            ("cur", ":2,DT", {"\\Draft", "\\Deleted"}),
            ("cur", ":2,P", {"$Forwarded"}),
            ("new", "", set()),
        ]),
        "Work/Projects": (root / ".Work.Projects", [("cur", ":2,Sa", {"\\Seen", "kwthree"})]),
        "Caf\u00e9": (root / ".Caf&AOk-", [("cur", ":2,", set()), ("new", "", set())]),
    }
    keywords = {"INBOX": "0 $Forwarded\n1 kwone\n", "Work/Projects": "0 kwthree\n"}
    n = 0
    for name, (folder, files) in layout.items():
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        if name in keywords:
            (folder / "dovecot-keywords").write_text(keywords[name])
        for sub, info, flags in files:
            n += 1
            date = T + n * 3600
            body = (f"From: Bob <bob@example.test>\nTo: {ADDRESS}\nSubject: message {n}\n"
                    f"Message-ID: <{n}@example.test>\n\nline one\nFrom the start\n>From quoted\n"
                    "caf\u00e9 \u2014 8-bit\n\n").encode()
            path = folder / sub / f"{date}.M{n}P99.host,S={len(body)}{info}"
            path.write_bytes(body)
            os.utime(path, (date, date))
            expected.setdefault(name, []).append((path, frozenset(flags), float(date)))
    return expected


def test_maildir_in_and_out(store: SQLiteStore, tmp_path: Path):
    expected = build_maildir(tmp_path / "Maildir")
    report = run_import(store, tmp_path / "Maildir")
    assert {m.name: (m.imported, m.created) for m in report.mailboxes} == {
        "INBOX": (5, False), "Work/Projects": (1, True), "Caf\u00e9": (2, True)}
    for name, files in expected.items():
        got = contents(store, name)
        want = [(p.read_bytes().replace(b"\n", b"\r\n"), f, d) for p, f, d in files]
        assert got == want, name
        box = store.mailbox(account(store), name)
        assert box is not None
    inbox = store.mailbox(account(store), "INBOX")
    assert inbox is not None and set(inbox.keywords) == {"$Forwarded", "kwone"}

    mailbox_io.export_mail(store, ADDRESS, tmp_path / "out")
    folders = {f.name or "INBOX": f.path for f in find_folders(tmp_path / "out")}
    assert set(folders) == {"INBOX", "Work/Projects", "Caf\u00e9",
                            "Drafts", "Sent", "Junk", "Trash", "Archive"}
    for name, files in expected.items():
        exported = scan_folder(folders[name])
        assert [m.path.read_bytes() for m in exported] == [p.read_bytes() for p, _, _ in files]
        assert [(m.flags, m.internal_date) for m in exported] == [(f, d) for _, f, d in files]


def test_import_again_skips_what_is_there(store: SQLiteStore, tmp_path: Path):
    build_maildir(tmp_path / "Maildir")
    run_import(store, tmp_path / "Maildir")
    before = {name: contents(store, name) for name in ("INBOX", "Work/Projects", "Caf\u00e9")}
    again = run_import(store, tmp_path / "Maildir")
    assert (again.imported, again.duplicates) == (0, 8)
    assert {name: contents(store, name) for name in before} == before


def test_dry_run_changes_nothing(store: SQLiteStore, tmp_path: Path):
    build_maildir(tmp_path / "Maildir")
    report = run_import(store, tmp_path / "Maildir", dry_run=True)
    assert report.imported == 8
    assert store.mailbox(account(store), "Work/Projects") is None
    assert contents(store, "INBOX") == []


def test_interrupted_import_run_again(store: SQLiteStore, tmp_path: Path, monkeypatch):
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i in range(10):
        # two identical pairs: the check counts copies, it does not merge them
        text = f"Subject: {i // 2 if i < 4 else i}\n\nbody\n"
        path = root / "cur" / f"{T + i}.M{i}P1.host:2,S"
        path.write_text(text)
        os.utime(path, (T, T))
    real_append = store.append
    calls = 0

    async def failing_append(mailbox_id, messages):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreError("the disk went away (simulated)")
        return await real_append(mailbox_id, messages)

    monkeypatch.setattr(store, "append", failing_append)
    with pytest.raises(mailbox_io.MailboxIOError,
                       match="stopped in INBOX after 6 messages went in .*simulated"):
        run_import(store, root, batch_messages=3)
    assert len(contents(store, "INBOX")) == 6          # two whole batches, nothing of the third
    monkeypatch.setattr(store, "append", real_append)
    report = run_import(store, root, batch_messages=3)
    assert (report.imported, report.duplicates) == (4, 6)
    got = sorted(data for data, _, _ in contents(store, "INBOX"))
    want = sorted(p.read_bytes().replace(b"\n", b"\r\n") for p in (root / "cur").iterdir())
    assert got == want


# ------------------------------------------------------------------ mbox


MBOX = (
    b"From bob@example.test Tue Dec  1 20:32:50 2020\n"
    b"Return-Path: <bob@example.test>\nSubject: one\n"
    b"Status: RO\nX-Status: AF\nX-Keywords: $Label1 work\n"
    b"\nbody\n>From quoted\n>>From twice\n\n"
    b"From MAILER-DAEMON Tue Dec  1 20:32:51 2020\n"
    b"Subject: two\nStatus: O\n\nunread\n\n"
)


def pbx(tmp_path: Path, *argv: str) -> int:
    return cli.main(["-o", f"server.data_dir={tmp_path / 'data'}", *argv])


def test_mbox_through_the_cli(store: SQLiteStore, tmp_path: Path, capsys):
    (tmp_path / "in.mbox").write_bytes(MBOX)
    assert pbx(tmp_path, "mailbox", "import", ADDRESS, str(tmp_path / "in.mbox"),
               "--mailbox", "Old/Mail") == 0
    out = capsys.readouterr().out
    assert "Old/Mail" in out and "imported 2 messages" in out
    [one, two] = contents(store, "Old/Mail")
    assert one[1] == {"\\Seen", "\\Answered", "\\Flagged", "$Label1", "work"}
    assert one[0] == b"Return-Path: <bob@example.test>\r\nSubject: one\r\n\r\nbody\r\n" \
        b"From quoted\r\n>From twice\r\n"
    assert two[1] == set() and two[2] == T + 1
    assert pbx(tmp_path, "mailbox", "export", ADDRESS, str(tmp_path / "out.mbox"),
               "--format", "mbox", "--mailbox", "Old/Mail") == 0
    assert (tmp_path / "out.mbox").read_bytes() == MBOX
    # all mailboxes to a folder of mbox files, and that folder into another mailbox
    assert pbx(tmp_path, "mailbox", "export", ADDRESS, str(tmp_path / "all"),
               "--format", "mbox") == 0
    assert (tmp_path / "all" / "Old.sbd" / "Mail").read_bytes() == MBOX
    assert pbx(tmp_path, "mailbox", "import", ADDRESS, str(tmp_path / "all"),
               "--mailbox", "Copy") == 0
    assert contents(store, "Copy/Old/Mail") == contents(store, "Old/Mail")
    assert pbx(tmp_path, "mailbox", "import", ADDRESS, str(tmp_path / "in.mbox"),
               "--mailbox", "Old/Mail") == 0
    assert "imported 0 messages" in capsys.readouterr().out


def test_dry_run_through_the_cli(store: SQLiteStore, tmp_path: Path, capsys):
    build_maildir(tmp_path / "Maildir")
    assert pbx(tmp_path, "mailbox", "import", ADDRESS, str(tmp_path / "Maildir"),
               "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would import 8 messages into 3 mailboxes, skipped 0 already there" in out
    assert re.search(r"Work/Projects +1 +1 +0 +0 +\d+ +\(new\)", out), out
    assert contents(store, "INBOX") == []


@pytest.mark.parametrize(("argv", "message"), [
    (("import", "nobody@example.test", "{tmp}/in.mbox"), "no account nobody@example.test"),
    (("import", ADDRESS, "{tmp}/missing"), "does not exist"),
    (("import", ADDRESS, "{tmp}/not-mbox"), "not an mbox file"),
    (("import", ADDRESS, "{tmp}/in.mbox", "--mailbox", "a//b"), "empty level"),
    (("export", ADDRESS, "{tmp}"), "not an empty directory"),
    (("export", ADDRESS, "{tmp}/x", "--mailbox", "Nope"), "no mailbox 'Nope'"),
])
def test_cli_errors(store: SQLiteStore, tmp_path: Path, capsys, argv, message):
    (tmp_path / "in.mbox").write_bytes(MBOX)
    (tmp_path / "not-mbox").write_bytes(b"Subject: x\n\nbody\n")
    code = pbx(tmp_path, "mailbox", *(a.format(tmp=tmp_path) for a in argv))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("pillarbox: error: ") and message in err, err


# --------------------------------------------------------------- Dovecot


def _dovecot(monkeypatch, layout: str) -> dv.PrivateDovecot:
    need_tool("dovecot")
    need_tool("doveadm")
    monkeypatch.setattr(dv, "_CONF", dv._CONF.replace(
        "mail_location = maildir:{d}/mail", "mail_location = maildir:{d}/mail" + layout))
    return dv.PrivateDovecot()


def doveadm(server: dv.PrivateDovecot, *args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(
        ["doveadm", "-c", str(server.dir / "dovecot.conf"), *args], input=stdin,
        capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def _literal(value: bytes) -> bytes:
    m = re.match(rb"~?\{(\d+)\}\r\n", value)
    assert m, value[:40]
    return value[m.end():]


Served = dict[str, tuple[int, list[tuple[int, bytes, frozenset[str], float]]]]


def served(client: dv.ImapClient) -> Served:
    """What an IMAP client sees: mailbox -> (UIDVALIDITY, [(uid, octets, flags, date)])."""
    out = {}
    for line in client.command(b'LIST "" "*"'):
        m = re.match(rb'\* LIST \(([^)]*)\) "(.)" (.*)', line)
        assert m, line
        if b"\\Noselect" in m.group(1) or b"\\NonExistent" in m.group(1):
            continue
        raw = m.group(3).strip(b'"').decode()
        name = "/".join(decode_mutf7(level) for level in raw.split(m.group(2).decode()))
        select = client.command(b'EXAMINE "%s"' % raw.encode())
        validity = next(int(v.group(1)) for r in select
                        if (v := re.search(rb"\[UIDVALIDITY (\d+)\]", r)))
        messages = []
        exists = next(int(e.group(1)) for r in select if (e := re.match(rb"\* (\d+) EXISTS", r)))
        if exists:
            for r in client.command(b"UID FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])"):
                _, items = dv.parse_fetch(r)
                flags = frozenset(items["FLAGS"].strip(b"()").decode().split()) - {"\\Recent"}
                date = datetime.strptime(items["INTERNALDATE"].strip(b'"').decode().strip(),
                                         "%d-%b-%Y %H:%M:%S %z").timestamp()
                messages.append((int(items["UID"]), _literal(items["BODY[]"]), flags, date))
        out["INBOX" if name.upper() == "INBOX" else name] = (validity, sorted(messages))
    return out


def fill_dovecot(server: dv.PrivateDovecot, separator: str) -> None:
    client = server.connect()
    work = f"Work{separator}Projects".encode()
    for box in (work, b"Caf&AOk-"):
        client.command(b'CREATE "%s"' % box)
    appends = [
        (b"INBOX", b"(\\Seen)", b"01-Jan-2020 10:00:00 +0000"),
        (b"INBOX", b"(\\Answered \\Flagged $Forwarded kwone)", b"15-Jun-2021 23:59:59 +0200"),
        (b"INBOX", b"()", b"29-Feb-2024 12:00:00 -0500"),
        (b"INBOX", b"(\\Deleted \\Draft $Junk)", b"02-Mar-2022 08:30:00 +0000"),
        (work, b"(\\Seen kwthree)", b"03-Apr-2023 01:02:03 +0000"),
        (b"Caf&AOk-", b"()", b"04-May-2019 04:05:06 +0000"),
    ]
    for i, (box, flags, date) in enumerate(appends):
        body = (f"From: Dovecot Test <dv@example.test>\r\nSubject: dovecot {i}\r\n"
                f"Message-ID: <dv{i}@example.test>\r\n\r\nline\r\nFrom the start\r\n"
                "caf\u00e9\r\n").encode()
        tag = client.send(b'APPEND "%s" %s "%s" {%d+}\r\n%s' % (box, flags, date, len(body), body))
        _, done = client.collect(tag)
        assert b" OK " in done, done
    # flags changed after delivery, and a message delivered to new/ (never seen)
    doveadm(server, "flags", "add", "-u", "test", "kwtwo \\Flagged", "mailbox", "INBOX", "uid", "1")
    doveadm(server, "flags", "remove", "-u", "test", "\\Seen", "mailbox", work.decode(), "uid", "1")
    doveadm(server, "save", "-u", "test", "-m", "INBOX",
            stdin=b"From: x@example.test\nSubject: saved by doveadm\n\nin new/\n")


@pytest.mark.parametrize(("layout", "separator"), [("", "."), (":LAYOUT=fs", "/")])
def test_dovecot_maildir_in_and_out(store: SQLiteStore, tmp_path: Path, monkeypatch,
                                    layout: str, separator: str):
    with _dovecot(monkeypatch, layout) as source:
        fill_dovecot(source, separator)
        theirs = served(source.connect())
        report = run_import(store, source.dir / "mail")
    assert report.imported == 7
    assert set(theirs) == {"INBOX", "Work/Projects", "Caf\u00e9"}
    assert len(theirs["INBOX"][1]) == 5
    for name, (_, messages) in theirs.items():
        assert contents(store, name) == [(data, flags, date) for _, data, flags, date in messages]
    # the spot checks, in case both sides agree on something wrong
    inbox = {data.split(b"Subject: ")[1].split(b"\r\n")[0]: flags
             for data, flags, _ in contents(store, "INBOX")}
    assert inbox[b"dovecot 0"] == {"\\Seen", "\\Flagged", "kwtwo"}
    assert inbox[b"dovecot 1"] == {"\\Answered", "\\Flagged", "$Forwarded", "kwone"}
    assert inbox[b"saved by doveadm"] == set()
    assert contents(store, "Work/Projects")[0][1] == {"kwthree"}

    # Pillarbox's export in the same layout, read by a second Dovecot
    monkeypatch.undo()
    with _dovecot(monkeypatch, layout) as reader:
        mail = reader.dir / "mail"
        mailbox_io.export_mail(store, ADDRESS, mail, layout="fs" if layout else "maildir++")
        owner = mail.stat()
        for path in [mail, *mail.rglob("*")]:
            os.chown(path, owner.st_uid, owner.st_gid)
        ours = served(reader.connect())
    boxes = {b.name: b for b in store.mailboxes(account(store))}
    assert set(ours) == set(boxes)
    for name, box in boxes.items():
        validity, messages = ours[name]
        assert validity == box.uidvalidity, name
        want = []
        for m in store.messages(box.id):
            data = store.message_bytes(box.id, m.uid)
            want.append((m.uid, data, m.flags, m.internal_date))
        assert messages == want, name


# ------------------------------------------------- beside a running server


def test_import_beside_a_running_server(server_factory, tmp_path: Path):
    """SMTP deliveries into INBOX while the CLI imports into the same INBOX:
    every message of both lands once, with distinct UIDs, and the server logs
    no error."""
    import smtplib
    import threading

    server = server_factory()
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i in range(1500):
        (root / "cur" / f"{T + i}.M{i}P1.host:2,S").write_text(f"Subject: imported {i}\n\nx\n")
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                for i in range(30):
                    client.sendmail("carol@sender.test", [ADDRESS],
                                    f"Subject: smtp {i}\r\n\r\nbody\r\n")
        except BaseException as e:   # reported below, in the test's thread
            errors.append(e)

    sender = threading.Thread(target=deliver)
    sender.start()
    store = SQLiteStore(server.data_dir).open()
    try:
        report = run_import(store, root, batch_messages=200)
        sender.join(60)
        assert not errors, errors
        assert report.imported == 1500
        assert server.wait_delivered(1530) == 1530
        uids = [r[0] for r in server.query(
            "SELECT m.uid FROM messages m JOIN mailboxes b ON m.mailbox = b.id"
            " WHERE b.name = 'INBOX'")]
        assert len(uids) == len(set(uids)) == 1530
        subjects = [data.split(b"\r\n")[0] for data, _, _ in contents(store, "INBOX")]
        assert sum(s.startswith(b"Subject: imported") for s in subjects) == 1500
    finally:
        store.close()
    log = server.log()
    assert not re.search(r"Z (error|critical) ", log), log
