"""``pillarbox sendmail``: the command line (as Postfix's sendmail(1) parses it), the
reading of the message, the header fix-ups and the mailq format, without a store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pillarbox.admin import submit
from pillarbox.admin.mailq import format_queue
from pillarbox.admin.sendmail import Options, UsageError, config_file, parse_options, run
from pillarbox.admin.smtp_stdio import LineEnds
from pillarbox.admin.submit import (
    Originator,
    SubmitError,
    fix_header,
    from_argument,
    header_recipients,
    parse_sender,
    read_lines,
    sender_domain,
    split_header,
)
from pillarbox.mime.headers import split_fields
from pillarbox.store.base import QueueEntry, RecipientState


# ------------------------------------------------------------------ options


def test_defaults():
    opts = parse_options(["alice@example.test"])
    assert opts == Options(recipients=["alice@example.test"])
    assert opts.mode == "deliver" and opts.dot_ends and not opts.extract


@pytest.mark.parametrize("args, attr, value", [
    (["-t"], "extract", True),
    (["-i"], "dot_ends", False),
    (["-oi"], "dot_ends", False),
    (["-o", "i"], "dot_ends", False),
    (["-f", "a@b.test"], "sender", "a@b.test"),
    (["-fa@b.test"], "sender", "a@b.test"),
    (["-r", "a@b.test"], "sender", "a@b.test"),
    (["-ra@b.test"], "sender", "a@b.test"),
    (["-f", ""], "sender", ""),
    (["-F", "Cron Daemon"], "full_name", "Cron Daemon"),
    (["-FCron"], "full_name", "Cron"),
    (["-bs"], "mode", "smtp"),
    (["-bp"], "mode", "mailq"),
    (["-bs", "-bm"], "mode", "deliver"),
    (["-bi"], "mode", "newaliases"),
    (["-I"], "mode", "newaliases"),
    (["-N", "success,FAILURE"], "notify", ("SUCCESS", "FAILURE")),
    (["-N", "delay,failure,success"], "notify", ("SUCCESS", "FAILURE", "DELAY")),
    (["-Nnever"], "notify", ("NEVER",)),
    (["-R", "hdrs"], "ret", "HDRS"),
    (["-RFULL"], "ret", "FULL"),
    (["-V", "env-42"], "envid", "env-42"),
    (["-v"], "verbose", 1),
    (["-v", "-v"], "verbose", 2),
    (["-vv"], "verbose", 2),
    (["-G"], "gateway", True),
    (["-B", "8BITMIME"], "body", "8BITMIME"),
    (["-B7BIT"], "body", "7BIT"),
    (["-C", "/etc/x.toml"], "config", Path("/etc/x.toml")),
    (["-C/etc/pb"], "config", Path("/etc/pb")),
])
def test_each_option(args, attr, value):
    assert getattr(parse_options(args), attr) == value


@pytest.mark.parametrize("ignored", [
    "-oem", "-oee", "-odb", "-odi", "-om", "-o7", "-o8", "-oAaliases", "-oXfoo",
    "-Am", "-Ac", "-U", "-m", "-c", "-x", "-em", "-h10", "-L", "-Ox=y", "-Xlog", "-psmtp",
    "-bh", "-bH",
])
def test_ignored_options_as_postfix(ignored):
    args = [ignored, "LABEL"] if ignored == "-L" else [ignored]
    opts = parse_options([*args, "alice@example.test"])
    assert opts.recipients == ["alice@example.test"]
    assert opts.ignored and opts.mode == "deliver"


def test_clusters_and_values_attached_or_not():
    opts = parse_options(["-tif", "s@x.test", "-oi", "-odb", "--", "-a@x.test", "b@x.test"])
    assert opts.extract and not opts.dot_ends and opts.sender == "s@x.test"
    assert opts.recipients == ["-a@x.test", "b@x.test"]
    opts = parse_options(["-tFMy Name", "r@x.test"])
    assert opts.extract and opts.full_name == "My Name"


def test_options_end_at_the_first_recipient():
    # Postfix parses with getopt "+": no permutation, so "-t" after it is a recipient.
    opts = parse_options(["r@x.test", "-t"])
    assert not opts.extract and opts.recipients == ["r@x.test", "-t"]


def test_git_send_email_and_php_command_lines():
    # git send-email: sendmail -i <recipients>; PHP: sendmail -t -i; cron: sendmail -FCronDaemon -i -B8BITMIME -oem alice
    assert parse_options(["-i", "a@x.test", "b@x.test"]).recipients == ["a@x.test", "b@x.test"]
    php = parse_options(["-t", "-i"])
    assert php.extract and not php.dot_ends and not php.recipients
    cron = parse_options(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "alice"])
    assert (cron.full_name, cron.body, cron.recipients) == ("CronDaemon", "8BITMIME", ["alice"])


@pytest.mark.parametrize("args, message", [
    (["-k"], "unknown option -k"),
    (["-tk"], "unknown option -k"),
    (["-f"], "option -f needs a value"),
    (["-N", "sometimes"], "-N needs never"),
    (["-N", "never,success"], "-N needs never"),
    (["-R", "body"], "-R needs full or hdrs"),
    (["-V", "with space"], "-V needs an envelope id"),
    (["-V", "x" * 101], "-V needs an envelope id"),
    (["-B", "BINARYMIME"], "-B needs 8BITMIME or 7BIT"),
    (["-bd"], "pillarbox serve"),
    (["-bv"], "unsupported: -bv"),
    (["-q"], "pillarbox queue retry"),
    (["-n"], "not supported"),
    (["-XV"], "VERP"),
    (["-bs", "a@x.test"], "takes no recipients"),
    (["-bp", "a@x.test"], "takes no recipients"),
    (["-t", "-bs"], "-t can be used only in delivery mode"),
])
def test_usage_errors(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_options(args)


def test_unknown_option_exits_64_with_a_clear_message():
    err = io.StringIO()
    assert run(["-k", "a@x.test"], stderr=err, environ={}) == 64
    assert "sendmail: error: unknown option -k" in err.getvalue()
    assert "usage: sendmail" in err.getvalue()


def test_invoked_as_mailq_or_newaliases():
    assert parse_options([], prog="mailq").mode == "mailq"
    assert parse_options([], prog="newaliases").mode == "newaliases"
    err = io.StringIO()
    assert run([], prog="newaliases", stderr=err, environ={}) == 0
    assert "pillarbox alias" in err.getvalue()


def test_config_file_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = tmp_path / "given.toml"
    env = tmp_path / "env"
    env.mkdir()
    assert config_file(given, {"PILLARBOX_CONFIG": str(env)}) == given
    assert config_file(None, {"PILLARBOX_CONFIG": str(env)}) == env / "pillarbox.toml"
    assert config_file(env, {}) == env / "pillarbox.toml"
    assert config_file(None, {}) in (None, Path("/etc/pillarbox/pillarbox.toml"))
    (tmp_path / "pillarbox.toml").write_text("")
    assert config_file(None, {}) == Path("pillarbox.toml")


def test_missing_config_and_data_directory_are_config_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    assert run(["a@x.test"], stderr=err, environ={"PILLARBOX_CONFIG": str(tmp_path / "no.toml")},
               stdin=io.BytesIO(b"x\n")) == 78
    assert "no configuration file" in err.getvalue()
    err = io.StringIO()
    assert run(["a@x.test"], stderr=err, environ={}, stdin=io.BytesIO(b"x\n")) == 78
    assert "no Pillarbox data directory" in err.getvalue()
    assert not (tmp_path / "pillarbox-data").exists()   # never created by sendmail


# ------------------------------------------------------------------ reading


def lines(data: bytes, dot_ends: bool = True) -> bytes:
    return b"".join(read_lines(io.BytesIO(data), dot_ends=dot_ends))


def test_line_ends_become_crlf():
    assert lines(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert lines(b"") == b""
    assert lines(b"a\r\n\r\n") == b"a\r\n\r\n"


def test_line_ends_split_across_reads():
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            out, self.data = self.data[:1], self.data[1:]
            return out

    got = b"".join(read_lines(Trickle(b"x\r\ny\nz"), dot_ends=True))  # type: ignore[arg-type]
    assert got == b"x\r\ny\r\nz\r\n"


def test_a_lone_dot_ends_input_unless_i():
    assert lines(b"a\n.\nb\n") == b"a\r\n"
    assert lines(b"a\n.\r\nb\n") == b"a\r\n"
    assert lines(b"a\n.\nb\n", dot_ends=False) == b"a\r\n.\r\nb\r\n"
    assert lines(b"a\n..\nb\n") == b"a\r\n..\r\nb\r\n"    # no dot-stuffing in sendmail mode
    assert lines(b"a\n.") == b"a\r\n"


def test_leading_mbox_from_line_goes():
    assert lines(b"From alice Tue Dec  1 10:00:00 2026\nSubject: x\n") == b"Subject: x\r\n"
    assert lines(b">From x\nb\n") == b"b\r\n"
    assert lines(b"Subject: x\nFrom here\n") == b"Subject: x\r\nFrom here\r\n"


def test_split_header():
    it = read_lines(io.BytesIO(b"A: 1\n b\nC: 2\n\nbody\n"), dot_ends=True)
    assert split_header(it) == (b"A: 1\r\n b\r\nC: 2\r\n", b"\r\n")
    assert list(it) == [b"body\r\n"]
    # A line that is not a field ends the header (the empty line is put in later).
    assert split_header(iter([b"A: 1\r\n", b"just text\r\n"])) == (b"A: 1\r\n", b"just text\r\n")
    assert split_header(iter([b"no header\r\n"])) == (b"", b"no header\r\n")
    assert split_header(iter([b"A: 1\r\n"])) == (b"A: 1\r\n", None)
    with pytest.raises(SubmitError) as exc:
        split_header(iter([b"X: " + b"y" * 1000 + b"\r\n"] * 1100))
    assert exc.value.status == 65


# ------------------------------------------------------------------ header

WHO = Originator("alice@example.test", "Alice Liddell", 1000, "mail.example.test")


def test_fix_header_removes_bcc_and_adds_missing_fields():
    header = b"To: bob@x.test\r\nBcc: carol@x.test,\r\n dave@x.test\r\nSubject: s\r\n"
    out = fix_header(header, "QID", WHO, add_missing=True, now=0)
    assert b"Bcc" not in out and b"carol" not in out and b"dave" not in out
    assert out.startswith(b"To: bob@x.test\r\nSubject: s\r\n")
    assert b"From: Alice Liddell <alice@example.test>\r\n" in out
    assert b"Date: Thu, 1 Jan 1970 " in out
    assert b"Message-ID: <QID@mail.example.test>\r\n" in out


def test_fix_header_keeps_what_is_there_and_g_adds_nothing():
    header = (b"From: Me <me@x.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
              b"Message-ID: <m@x>\r\nResent-Bcc: z@x.test\r\n")
    out = fix_header(header, "QID", WHO, add_missing=True)
    assert out == header.replace(b"Resent-Bcc: z@x.test\r\n", b"")
    assert fix_header(b"Subject: s\r\n", "QID", WHO, add_missing=False) == b"Subject: s\r\n"


def test_from_display_name_is_encoded():
    who = Originator("a@x.test", "Zoë", 0, "x.test")
    out = fix_header(b"", "Q", who, add_missing=True)
    assert b"From: =?utf-8?" in out and out.isascii()


def test_display_name_cannot_add_header_fields():
    assert submit.display_name("Evil\r\nBcc: victim@x.test") == "Evil Bcc: victim@x.test"
    assert submit.display_name("caf\udce9") == "caf\ufffd"
    assert submit.display_name("\t") is None and submit.display_name(None) is None
    who = Originator("a@x.test", submit.display_name("A\nB: c"), 0, "x.test")
    out = fix_header(b"", "Q", who, add_missing=True)
    assert out.count(b"\r\n") == out.count(b"\n") == 3      # From, Date, Message-ID


def test_header_recipients_to_cc_bcc_or_resent():
    fields = split_fields(b"To: A <a@x.test>, b@x.test\r\nCc: c@x.test\r\nBcc: d\r\n"
                          b"Reply-To: r@x.test\r\n")
    assert [m.addr_spec for m in header_recipients(fields)] == ["a@x.test", "b@x.test",
                                                                "c@x.test", "d"]
    fields = split_fields(b"To: a@x.test\r\nResent-To: e@x.test\r\nResent-Bcc: f@x.test\r\n")
    assert [m.addr_spec for m in header_recipients(fields)] == ["e@x.test", "f@x.test"]


def test_addresses_from_arguments():
    assert [str(m) for m in from_argument("alice", "example.test")] == ["alice@example.test"]
    assert [str(m) for m in from_argument("a@x.test, B <b@y.test>", "d.test")] == [
        "a@x.test", "b@y.test"]
    assert [m.domain for m in from_argument("élève@école.test", "d.test")] == ["école.test"]
    for bad in ("a@b@c", "a@", "<a@x.test", "a..b@x.test"):
        with pytest.raises(SubmitError) as exc:
            from_argument(bad, "d.test")
        assert exc.value.status == 65, bad


def test_sender():
    assert parse_sender("", "d.test") is None
    assert parse_sender("<>", "d.test") is None
    assert str(parse_sender("bounce", "d.test")) == "bounce@d.test"
    assert str(parse_sender("Name <n@x.test>", "d.test")) == "n@x.test"
    with pytest.raises(SubmitError) as exc:
        parse_sender("a@b@c", "d.test")
    assert exc.value.status == 64


def test_sender_domain():
    assert sender_domain("mail.example.test", ["example.test", "other.test"]) == "example.test"
    assert sender_domain("example.test", ["example.test"]) == "example.test"
    assert sender_domain("a.b.example.test", ["example.test", "b.example.test"]) == "b.example.test"
    assert sender_domain("mx.test", ["example.test"]) == "mx.test"


def test_needs_utf8_and_8bit():
    assert submit.has_8bit("é".encode()) and not submit.has_8bit(b"plain")
    assert submit.needs_utf8("To: élève@x.test\r\n".encode(), None, [])
    assert not submit.needs_utf8("Subject: élève\r\n".encode(), None, [])


def test_line_ends_of_bs_input():
    le = LineEnds()
    assert le.feed(b"EHLO x\nMAIL FROM:<a@b>\r\n") == b"EHLO x\r\nMAIL FROM:<a@b>\r\n"
    assert le.feed(b"RCPT TO:<c@d>\r") == b"RCPT TO:<c@d>\r"
    assert le.feed(b"\nDATA\n") == b"\nDATA\r\n"


# ------------------------------------------------------------------ mailq


def entry(**kw: object) -> QueueEntry:
    values: dict[str, object] = dict(
        id="6619AF31157E317DFA", reverse_path="alice@example.test", size=2345,
        arrived=1_800_000_000.0, client_address="local", helo="", state="active", attempts=0,
        next_attempt=0.0, last_reply=None, body=None, smtputf8=False, dsn_ret=None,
        dsn_envid=None,
        recipients=(RecipientState(0, "bob@x.test", "pending", None, None, None),
                    RecipientState(1, "done@x.test", "delivered", None, None, "250 ok")),
    )
    values.update(kw)
    return QueueEntry(**values)  # type: ignore[arg-type]


def test_mailq_format():
    assert format_queue([]) == "Mail queue is empty\n"
    deferred = entry(
        id="6619AF31157E317DFB", state="deferred", reverse_path="", last_reply="451 4.3.0 later",
        recipients=(RecipientState(0, "c@x.test", "pending", None, None, None),
                    RecipientState(1, "d@x.test", "pending", None, None, "452 4.2.2 Mailbox full")),
    )
    text = format_queue([entry(), deferred, entry(id="6619AF31157E317DFC", state="hold")])
    lines = text.splitlines()
    assert lines[0].split() == ["-Queue", "ID-", "--Size--", "----Arrival", "Time----",
                                "-Sender/Recipient-------"]
    assert lines[1].startswith("6619AF31157E317DFA*") and lines[1].endswith(" alice@example.test")
    assert " 2345 " in lines[1]
    assert lines[2].strip() == "bob@x.test"                 # the delivered one is not shown
    assert lines[3] == ""
    assert lines[4].startswith("6619AF31157E317DFB ") and lines[4].endswith("MAILER-DAEMON")
    assert lines[5:9] == ["(451 4.3.0 later)", " " * 51 + "c@x.test",
                          "(452 4.2.2 Mailbox full)", " " * 51 + "d@x.test"]
    assert lines[10].startswith("6619AF31157E317DFC!")
    assert lines[-1] == "-- 7 Kbytes in 3 Requests."
