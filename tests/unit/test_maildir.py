"""Maildir reading and writing (``pillarbox.admin.maildir``), without the store.

Layouts built here by hand follow what Dovecot 2.3 and Courier-IMAP write;
``tests/integration/test_mailbox_io.py`` checks the same against a real Dovecot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.admin.maildir import (
    MaildirError,
    MaildirWriter,
    crlf_to_lf,
    decode_mutf7,
    encode_mutf7,
    find_folders,
    flags_from_info,
    info_from_flags,
    lf_to_crlf,
    scan_folder,
)

DAY = 86400


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def put(folder: Path, sub: str, name: str, data: bytes, mtime: float | None = None) -> Path:
    path = folder / sub / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


class Warnings(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


# ------------------------------------------------------------------ flags


def test_info_letters_to_flags():
    flags, unknown = flags_from_info("DFPRST", {})
    assert flags == {"\\Draft", "\\Flagged", "$Forwarded", "\\Answered", "\\Seen", "\\Deleted"}
    assert unknown == set()


def test_keyword_letters_map_through_dovecot_keywords():
    flags, unknown = flags_from_info("Sac", {"a": "$Label1", "b": "unused"})
    assert flags == {"\\Seen", "$Label1"}
    assert unknown == {"c"}


def test_flags_to_info_is_sorted_and_forwarded_is_both_p_and_its_keyword():
    letters = {"$Forwarded": "a", "work": "b"}
    assert info_from_flags({"\\Seen", "\\Answered", "work", "$Forwarded"}, letters) == "PRSab"
    assert info_from_flags(set(), letters) == ""
    assert info_from_flags({"\\Deleted", "\\Draft", "\\Flagged"}, {}) == "DFT"


# -------------------------------------------------------------- line ends


@pytest.mark.parametrize(("lf", "crlf"), [
    (b"a\nb\n", b"a\r\nb\r\n"),
    (b"a\r\nb\n", b"a\r\nb\r\n"),          # mixed: only the bare LF changes
    (b"a\rb\n", b"a\rb\r\n"),              # a lone CR stays
    (b"no newline", b"no newline"),
])
def test_lf_to_crlf(lf: bytes, crlf: bytes):
    assert lf_to_crlf(lf) == crlf


def test_an_lf_file_survives_the_round_trip():
    data = b"From: a@b\nSubject: x\n\nline\n\n>From here\n.\n"
    assert crlf_to_lf(lf_to_crlf(data)) == data


# ---------------------------------------------------------- folder names


@pytest.mark.parametrize(("encoded", "name"), [
    ("Caf&AOk-", "Café"),
    ("Tom &- Jerry", "Tom & Jerry"),
    ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),   # RFC 3501 5.1.3
    ("plain", "plain"),
])
def test_modified_utf7(encoded: str, name: str):
    assert decode_mutf7(encoded) == name
    assert encode_mutf7(name) == encoded


@pytest.mark.parametrize("bad", ["&AOk", "&!!-", "&AOkA-"])
def test_malformed_modified_utf7_raises(bad: str):
    with pytest.raises(ValueError):
        decode_mutf7(bad)


# ----------------------------------------------------------- the layouts


def test_dovecot_maildirplusplus(tmp_path: Path):
    root = maildir(tmp_path / "Maildir")
    maildir(root / ".Work")
    maildir(root / ".Work.Projects")
    maildir(root / ".Caf&AOk-")
    (root / ".Work.Projects" / "maildirfolder").touch()
    (root / ".not-a-maildir").mkdir()
    folders = find_folders(root)
    assert [(f.name, f.path.name) for f in folders] == [
        ("", "Maildir"), ("Caf\u00e9", ".Caf&AOk-"), ("Work", ".Work"),
        ("Work/Projects", ".Work.Projects"),
    ]


def test_dovecot_layout_fs(tmp_path: Path):
    root = maildir(tmp_path / "Maildir")
    maildir(root / "Work" / "Projects")
    maildir(root / "Caf&AOk-")
    (root / "Archive" / "2020").mkdir(parents=True)        # a parent that is no mailbox
    maildir(root / "Archive" / "2020" / "March")
    folders = find_folders(root)
    assert [f.name for f in folders] == ["", "Archive/2020/March", "Caf\u00e9", "Work/Projects"]
    assert find_folders(root, "fs") == folders


def test_bad_folder_names_are_skipped_with_a_warning(tmp_path: Path):
    root = maildir(tmp_path / "Maildir")
    maildir(root / ".Good")
    maildir(root / ".Bad&AOk")
    maildir(root / ".Empty..Level")
    warn = Warnings()
    assert [f.name for f in find_folders(root, warn=warn)] == ["", "Good"]
    assert len(warn) == 2 and all("folder skipped" in w for w in warn)


def test_not_a_maildir(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaildirError, match="not a Maildir"):
        find_folders(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MaildirError, match="not a directory"):
        find_folders(tmp_path / "file")
    with pytest.raises(MaildirError, match="layout"):
        find_folders(maildir(tmp_path / "md"), "mh")


# --------------------------------------------------------------- messages


def test_scan_dovecot_folder(tmp_path: Path):
    folder = maildir(tmp_path / "md")
    (folder / "dovecot-keywords").write_text("0 $Forwarded\n1 kwone\n2 junk-ish\n")
    (folder / "dovecot-uidlist").write_text(
        "3 V1796156431 N4 G0123\n"
        "2 :1700000000.M1P1.host,S=9,W=10\n"
        "1 W10 :1700000500.M2P1.host,S=9,W=10\n"
    )
    t = 1700000000
    put(folder, "cur", "1700000000.M1P1.host,S=9,W=10:2,FSab", b"first\n", t)
    put(folder, "cur", "1700000500.M2P1.host,S=9,W=10:2,RTDz", b"second\n", t + 500)
    put(folder, "new", "1700000900.M3P1.host", b"new one\n", t + 900)
    put(folder, "new", "1700000950.M4P1.host:2,S", b"new, flagged seen\n", t + 950)
    put(folder, "cur", ".hidden:2,S", b"not a message\n")
    (folder / "cur" / "a-directory").mkdir()
    warn = Warnings()
    messages = scan_folder(folder, warn)
    # UID order first (from the uidlist), then the rest by delivery time
    assert [m.unique for m in messages] == [
        "1700000500.M2P1.host,S=9,W=10", "1700000000.M1P1.host,S=9,W=10",
        "1700000900.M3P1.host", "1700000950.M4P1.host",
    ]
    second, first, new, new_seen = messages
    assert first.flags == {"\\Flagged", "\\Seen", "$Forwarded", "kwone"}
    assert second.flags == {"\\Answered", "\\Deleted", "\\Draft"}
    assert new.flags == set()
    assert new_seen.flags == set()                     # new/ is never \Seen
    assert first.internal_date == t and new.internal_date == t + 900
    assert first.read() == b"first\r\n"
    assert warn == [f"{folder}: info letters z have no meaning (not in dovecot-keywords): ignored"]


def test_courier_keywords(tmp_path: Path):
    folder = maildir(tmp_path / "md")
    kw = folder / "courierimapkeywords"
    kw.mkdir()
    (kw / ":list").write_text(
        "$Label1\nimportant\nlater\n\n"
        "1700000000.A.host:0 2\n"
        "1700000001.B.host:1\n"
        "this line is broken\n"
    )
    (kw / ".3.1700000001.B.host").write_text("later\n")        # an update: replaces :list's
    (kw / ".7.1700000001.B.host").write_text("important\nlater\n")   # the highest N wins
    (kw / "1700000002.C.host").write_text("$Label1\n")         # a plain name beats every .N.
    (kw / ".9.1700000002.C.host").write_text("ignored\n")
    for name in ("1700000000.A.host:2,S", "1700000001.B.host:2,", "1700000002.C.host:2,F"):
        put(folder, "cur", name, b"x\n")
    warn = Warnings()
    flags = {m.unique: m.flags for m in scan_folder(folder, warn)}
    assert flags == {
        "1700000000.A.host": {"\\Seen", "$Label1", "later"},
        "1700000001.B.host": {"important", "later"},
        "1700000002.C.host": {"\\Flagged", "$Label1"},
    }
    assert len(warn) == 1 and "this line is broken" in warn[0]


def test_courier_uiddb_gives_the_order(tmp_path: Path):
    folder = maildir(tmp_path / "md")
    (folder / "courierimapuiddb").write_text(
        "1 1234567 3\n1 1700000009.Z.host\n2 1700000001.A.host\n")
    put(folder, "cur", "1700000001.A.host:2,S", b"a\n")
    put(folder, "cur", "1700000009.Z.host:2,S", b"z\n")
    assert [m.unique for m in scan_folder(folder)] == ["1700000009.Z.host", "1700000001.A.host"]


def test_internal_date_from_mtime_then_filename_then_date_field(tmp_path: Path):
    folder = maildir(tmp_path / "md")
    put(folder, "cur", "1500000000.A.host:2,S", b"x\n", 1400000000)     # APPEND with an old date
    put(folder, "cur", "1500000000.B.host:2,S", b"x\n", 1500000000 + 30 * DAY)   # copied: lost
    put(folder, "cur", "1500000000.C.host:2,S", b"x\n", 0)              # before 1980: lost
    put(folder, "cur", "odd-name-D:2,S",
        b"Date: Tue, 1 Dec 2026 20:17:50 +0100\nSubject: x\n\nbody\n", 0)
    dates = {m.unique: m.internal_date for m in scan_folder(folder)}
    assert dates == {
        "1500000000.A.host": 1400000000, "1500000000.B.host": 1500000000,
        "1500000000.C.host": 1500000000, "odd-name-D": 1796152670,
    }


def test_unreadable_entries_are_skipped_with_a_warning(tmp_path: Path):
    folder = maildir(tmp_path / "md")
    (folder / "cur" / "1700000000.dangling:2,S").symlink_to(tmp_path / "nowhere")
    put(folder, "cur", "1700000001.ok:2,S", b"ok\n")
    warn = Warnings()
    assert [m.unique for m in scan_folder(folder, warn)] == ["1700000001.ok"]
    assert len(warn) == 1 and "dangling" in warn[0]


# ----------------------------------------------------------------- writing


def test_writer_round_trip(tmp_path: Path):
    writer = MaildirWriter(tmp_path / "out")
    inbox = writer.folder("INBOX", 1234, ["kwone"])
    sub = writer.folder("Work/Caf\u00e9", 99, [])
    data = b"Subject: x\r\n\r\nline\r\n"
    inbox.add(data, {"\\Seen", "kwone", "$Forwarded"}, 1600000000, uid=7)
    inbox.add(data, set(), 1600000001, uid=9)
    sub.add(b"y\r\n", {"\\Draft"}, 1600000002, uid=1)
    inbox.close(uidnext=12)
    sub.close(uidnext=2)
    writer.close()
    root = tmp_path / "out"
    assert (root / "dovecot-uidlist").read_text().splitlines()[0] == "3 V1234 N12"
    assert (root / "dovecot-keywords").read_text() == "0 kwone\n1 $Forwarded\n"
    assert (root / ".Work.Caf&AOk-" / "maildirfolder").exists()
    [folder_root, folder_sub] = find_folders(root)
    assert folder_sub.name == "Work/Caf\u00e9"
    first, second = scan_folder(folder_root.path)
    assert first.flags == {"\\Seen", "kwone", "$Forwarded"} and first.internal_date == 1600000000
    assert second.flags == set() and second.internal_date == 1600000001
    assert first.path.read_bytes() == b"Subject: x\n\nline\n"    # LF on disk
    assert first.read() == data
    assert ",S=17,W=20:2," in first.path.name
    [draft] = scan_folder(folder_sub.path)
    assert draft.flags == {"\\Draft"}
    uids = (root / "dovecot-uidlist").read_text().splitlines()[1:]
    assert [line.split()[0] for line in uids] == ["7", "9"]


def test_writer_fs_layout_and_names(tmp_path: Path):
    writer = MaildirWriter(tmp_path / "fs", "fs")
    writer.folder("a.b/c", 1, []).close(1)
    assert (tmp_path / "fs" / "a.b" / "c" / "cur").is_dir()
    plus = MaildirWriter(tmp_path / "plus")
    with pytest.raises(MaildirError, match="--layout fs"):
        plus.check_names(["INBOX", "a.b/c"])
    with pytest.raises(MaildirError, match="Maildir directory"):
        writer.folder_path("x/cur")


def test_writer_refuses_a_non_empty_target(tmp_path: Path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    with pytest.raises(MaildirError, match="not an empty directory"):
        MaildirWriter(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    MaildirWriter(tmp_path / "empty")


def test_more_than_26_keywords(tmp_path: Path):
    writer = MaildirWriter(tmp_path / "out")
    folder = writer.folder("INBOX", 1, [f"k{i:02}" for i in range(30)])
    folder.add(b"x\r\n", {"k00", "k29", "\\Seen"}, 1600000000, uid=1)
    folder.close(2)
    assert folder.dropped == {"k26", "k27", "k28", "k29"}
    [m] = scan_folder(tmp_path / "out")
    assert m.flags == {"\\Seen", "k00"}


def test_a_courier_maildir(tmp_path: Path):
    """Courier-IMAP: Maildir++ folders, keywords in courierimapkeywords/ per folder."""
    root = maildir(tmp_path / "Maildir")
    sent = maildir(root / ".Sent.2020")
    (sent / "maildirfolder").touch()
    for folder, name in ((root, "1600000000.A.host:2,S"), (sent, "1600000001.B.host:2,RS")):
        (folder / "courierimapkeywords").mkdir()
        (folder / "courierimapkeywords" / ":list").write_text(
            f"todo\n\n{name.partition(':')[0]}:0\n")
        put(folder, "cur", name, b"Subject: x\n\nbody\n", 1600000000)
    (root / "courierimapsubscribed").write_text("INBOX.Sent.2020\n")
    folders = find_folders(root)
    assert [f.name for f in folders] == ["", "Sent/2020"]
    [inbox] = scan_folder(folders[0].path)
    [sent_message] = scan_folder(folders[1].path)
    assert inbox.flags == {"\\Seen", "todo"}
    assert sent_message.flags == {"\\Seen", "\\Answered", "todo"}


@given(st.lists(st.text(min_size=1, max_size=30), max_size=8))
def test_any_file_names_scan_without_crashing(names: list[str]):
    """Invariant: whatever the file names in cur/ and new/, a scan gives messages
    (or warnings), never an exception."""
    with tempfile.TemporaryDirectory() as d:
        folder = maildir(Path(d))
        (folder / "dovecot-keywords").write_text("0 a\nnot a line\n99 too far\n")
        for i, name in enumerate(names):
            safe = name.replace("/", "_").replace("\x00", "_")
            if safe in (".", ".."):
                continue
            try:
                put(folder, "cur" if i % 2 else "new", safe, b"x\n")
            except OSError:
                continue    # a name the file system refuses
        for m in scan_folder(folder, Warnings()):
            assert m.read() == b"x\r\n"
