"""The ``pillarbox`` command: each subcommand's success and error paths, run in-process.

Every test runs in its own folder with no ``pillarbox.toml``, so the CLI uses
the development defaults and keeps its data in ``./pillarbox-data``, exactly
as an administrator next to a development server would.
"""

from __future__ import annotations

import asyncio
import io
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from pillarbox import cli
from pillarbox.admin import commands
from pillarbox.auth.passwords import verify_password
from pillarbox.config import Config
from pillarbox.deliver.recipients import Verdict, resolve
from pillarbox.store.base import Envelope, EnvelopeRecipient
from pillarbox.store.sqlite.store import SQLiteStore

MESSAGE = (
    b"Received: from client.example (client.example [192.0.2.1])\r\n"
    b"\tby localhost with ESMTP id X; Sun, 29 Nov 2026 18:40:17 +0000\r\n"
    b"From: Sender <sender@remote.example>\r\n"
    b"To: alice@example.com\r\n"
    b"Subject: Quarterly figures\r\n"
    b"\r\n"
    b"The body is not shown by queue show.\r\n"
)


@dataclass
class Result:
    code: int
    out: str
    err: str


class Pbx:
    """Runs ``main()`` in a folder and captures what it prints."""

    def __init__(self, folder: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *argv: str, stdin: str = "") -> Result:
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        code = cli.main(list(argv))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        return Result(code, out, err)

    def ok(self, *argv: str, stdin: str = "") -> str:
        result = self(*argv, stdin=stdin)
        assert result.code == 0, result
        return result.out

    def fails(self, *argv: str, stdin: str = "") -> str:
        """The error message of a refused command (exit status 1)."""
        result = self(*argv, stdin=stdin)
        assert result.code == 1, result
        assert result.err.startswith("pillarbox: error: "), result
        return result.err

    def store(self) -> SQLiteStore:
        return SQLiteStore(self.folder / "pillarbox-data").open()


@pytest.fixture
def pbx(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Pbx:
    monkeypatch.chdir(tmp_path)
    return Pbx(tmp_path, capsys, monkeypatch)


@pytest.fixture
def example(pbx: Pbx) -> Pbx:
    """A domain example.com with the account alice@example.com (password "s3cret")."""
    pbx.ok("domain", "add", "example.com")
    pbx.ok("user", "add", "alice@example.com", stdin="s3cret\n")
    return pbx


def usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


# --- configuration and global options ------------------------------------------------


def test_development_defaults_when_there_is_no_file(pbx: Pbx) -> None:
    args = cli.parse_args(["domain", "list"])
    config, dev = cli.resolve_config(args)
    assert dev is True
    assert config.server.hostname == "localhost"
    assert config.server.data_dir == pbx.folder.resolve() / "pillarbox-data"


def test_hostname_override_wins_in_development(pbx: Pbx) -> None:
    args = cli.parse_args(["-o", "server.hostname=mx.example.org", "queue", "list"])
    config, dev = cli.resolve_config(args)
    assert dev is True and config.server.hostname == "mx.example.org"
    args = cli.parse_args(["queue", "list", "-o", "server.hostname=mx2.example.org"])
    assert cli.resolve_config(args)[0].server.hostname == "mx2.example.org"


def test_pillarbox_toml_in_the_folder_is_used(pbx: Pbx) -> None:
    (pbx.folder / "pillarbox.toml").write_text(
        '[server]\nhostname = "mail.example.com"\ndata_dir = "state"\n', encoding="utf-8"
    )
    args = cli.parse_args(["domain", "list"])
    config, dev = cli.resolve_config(args)
    assert dev is False
    assert config.server.hostname == "mail.example.com"
    pbx.ok("domain", "add", "example.com")
    assert (pbx.folder / "state" / "pillarbox.db").exists()
    assert not (pbx.folder / "pillarbox-data").exists()


def test_global_options_before_and_after_the_subcommand(pbx: Pbx) -> None:
    pbx.ok("-o", "server.data_dir=one", "domain", "add", "one.example")
    pbx.ok("domain", "add", "two.example", "-o", "server.data_dir=two")
    assert "one.example" in pbx.ok("domain", "list", "--set", "server.data_dir=one")
    assert "two.example" not in pbx.ok("-o", "server.data_dir=one", "domain", "list")
    assert "two.example" in pbx.ok("-o", "server.data_dir=one", "domain", "list",
                                   "-o", "server.data_dir=two")


def test_config_file_option(pbx: Pbx) -> None:
    conf = pbx.folder / "etc" / "mail.toml"
    conf.parent.mkdir()
    conf.write_text('[server]\ndata_dir = "data"\n', encoding="utf-8")
    pbx.ok("-c", str(conf), "domain", "add", "example.com")
    assert (conf.parent / "data" / "pillarbox.db").exists()  # relative to the file
    assert "example.com" in pbx.ok("domain", "list", "--config", str(conf))


def test_config_errors_are_reported_without_a_traceback(pbx: Pbx) -> None:
    err = pbx.fails("-o", "smtp.no_such_key=1", "domain", "list")
    assert "smtp.no_such_key" in err
    err = pbx.fails("-c", "missing.toml", "domain", "list")
    assert "missing.toml" in err


def test_usage_errors_exit_2(pbx: Pbx) -> None:
    usage_error([])
    usage_error(["domain"])
    usage_error(["domain", "frobnicate"])
    usage_error(["user", "add"])
    usage_error(["-o", "no-equals-sign", "domain", "list"])
    usage_error(["alias", "add", "a@example.com"])


def test_config_check_ok(pbx: Pbx) -> None:
    good = pbx.folder / "good.toml"
    good.write_text('[smtp]\nmax_recipients = 50\n', encoding="utf-8")
    assert pbx.ok("config", "check", str(good)) == f"{good}: ok\n"


def test_config_check_reports_each_error(pbx: Pbx) -> None:
    bad = pbx.folder / "pillarbox.toml"
    bad.write_text('[smtp]\nmax_recipients = "many"\nnonsense = 1\n', encoding="utf-8")
    result = pbx("config", "check")  # ./pillarbox.toml by default
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("pillarbox.toml:2: smtp.max_recipients")
    assert lines[1].startswith("pillarbox.toml:3: smtp.nonsense")


def test_config_check_uses_dash_c(pbx: Pbx) -> None:
    conf = pbx.folder / "other.toml"
    conf.write_text("", encoding="utf-8")
    assert pbx.ok("-c", str(conf), "config", "check") == f"{conf}: ok\n"


def test_config_check_without_a_file(pbx: Pbx) -> None:
    result = pbx("config", "check")
    assert result.code == 2
    assert "no FILE given" in result.err


def test_serve_gets_the_configuration(pbx: Pbx, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Config, bool]] = []

    def serve(config: Config, *, dev_mode: bool) -> int:
        calls.append((config, dev_mode))
        return 0

    fake = types.ModuleType("pillarbox.serve")
    fake.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pillarbox.serve", fake)
    assert pbx.ok("serve", "-o", "smtp.max_recipients=7") == ""
    [(config, dev_mode)] = calls
    assert dev_mode is True
    assert config.server.hostname == "localhost"
    assert config.smtp.max_recipients == 7


# --- domains --------------------------------------------------------------------------


def test_domain_add_list_and_normalisation(pbx: Pbx) -> None:
    assert pbx.ok("domain", "add", "Example.COM.") == "added domain example.com\n"
    out = pbx.ok("domain", "add", "Bücher.Example")
    assert out == "added domain xn--bcher-kva.example (bücher.example)\n"
    out = pbx.ok("domain", "list")
    assert out.splitlines()[0].split() == ["DOMAIN", "ACCOUNTS", "ALIASES"]
    assert "example.com" in out
    assert "xn--bcher-kva.example (bücher.example)" in out
    store = pbx.store()
    assert [d[0] for d in store.list_domains()] == ["example.com", "xn--bcher-kva.example"]
    store.close()


def test_domain_add_duplicate_in_either_form(pbx: Pbx) -> None:
    pbx.ok("domain", "add", "bücher.example")
    assert "already exists" in pbx.fails("domain", "add", "xn--bcher-kva.example")
    assert "already exists" in pbx.fails("domain", "add", "BÜCHER.example")


@pytest.mark.parametrize(
    "name", ["bad_name.example", "a..example", "-a.example", "192.0.2.1", "[192.0.2.1]",
             "xn--zz.example", "a" * 64 + ".example", ""],
)
def test_domain_add_refuses_bad_names(pbx: Pbx, name: str) -> None:
    pbx.fails("domain", "add", "--", name)
    assert pbx.ok("domain", "list") == "no domains\n"


def test_domain_remove(example: Pbx) -> None:
    example.ok("domain", "add", "other.example")
    assert example.ok("domain", "remove", "OTHER.example") == "removed domain other.example\n"
    assert "no domain nowhere.example" in example.fails("domain", "remove", "nowhere.example")
    err = example.fails("domain", "remove", "example.com")
    assert "1 account" in err and "--force" in err
    example.ok("domain", "remove", "example.com", "--force")
    assert example.ok("domain", "list") == "no domains\n"
    store = example.store()
    assert store.list_accounts() == []
    store.close()


def test_domain_remove_with_only_aliases_needs_force(example: Pbx) -> None:
    example.ok("domain", "add", "other.example")
    example.ok("alias", "add", "info@other.example", "alice@example.com")
    assert "alias" in example.fails("domain", "remove", "other.example")
    example.ok("domain", "remove", "other.example", "--force")
    assert example.ok("alias", "list") == "no aliases\n"


# --- users ----------------------------------------------------------------------------


def test_user_add_with_password_from_stdin(pbx: Pbx) -> None:
    pbx.ok("domain", "add", "example.com")
    out = pbx.ok("user", "add", "Alice@EXAMPLE.com", stdin="correct horse\n")
    assert out == "added account alice@example.com\n"
    store = pbx.store()
    stored = store.get_password_hash("alice@example.com")
    store.close()
    assert stored is not None and stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horse\n")


def test_user_add_keeps_spaces_and_strips_only_the_line_ending(pbx: Pbx) -> None:
    pbx.ok("domain", "add", "example.com")
    pbx.ok("user", "add", "bob@example.com", stdin=" two words \r\nignored\n")
    store = pbx.store()
    stored = store.get_password_hash("bob@example.com")
    store.close()
    assert stored is not None and verify_password(stored, " two words ")


def test_user_add_idn_and_angle_brackets(pbx: Pbx) -> None:
    pbx.ok("domain", "add", "bücher.example")
    assert pbx.ok("user", "add", "<Jörg@Bücher.example>", stdin="pw\n") == (
        "added account jörg@xn--bcher-kva.example\n"
    )


def test_user_add_errors(pbx: Pbx) -> None:
    pbx.ok("domain", "add", "example.com")
    assert "empty password" in pbx.fails("user", "add", "a@example.com", stdin="\n")
    assert "no password" in pbx.fails("user", "add", "a@example.com", stdin="")
    assert "not a local domain" in pbx.fails("user", "add", "a@nowhere.example", stdin="pw\n")
    assert "bad address" in pbx.fails("user", "add", "not an address", stdin="pw\n")
    assert "bad address" in pbx.fails("user", "add", "a@[192.0.2.1]", stdin="pw\n")
    assert "bad address" in pbx.fails("user", "add", "postmaster", stdin="pw\n")
    pbx.ok("user", "add", "a@example.com", stdin="pw\n")
    assert "already exists" in pbx.fails("user", "add", "A@example.com", stdin="pw\n")


def test_user_add_checks_the_address_before_reading_the_password(pbx: Pbx) -> None:
    pbx.fails("user", "add", "a@nowhere.example", stdin="pw\n")
    assert sys.stdin.read() == "pw\n"


def test_password_from_a_terminal(pbx: Pbx, monkeypatch: pytest.MonkeyPatch) -> None:
    pbx.ok("domain", "add", "example.com")
    answers = iter(["tty pass", "tty pass", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys, "stdin", Terminal())
    assert cli.main(["user", "add", "t@example.com"]) == 0
    assert prompts == ["Password for t@example.com: ", "Password for t@example.com (again): "]
    monkeypatch.setattr(sys, "stdin", Terminal())
    assert cli.main(["user", "passwd", "t@example.com"]) == 1
    store = pbx.store()
    stored = store.get_password_hash("t@example.com")
    store.close()
    assert stored is not None and verify_password(stored, "tty pass")
    assert "do not match" in pbx.capsys.readouterr().err


def test_user_passwd(example: Pbx) -> None:
    out = example.ok("user", "passwd", "ALICE@example.com", stdin="new one\n")
    assert out == "changed the password of alice@example.com\n"
    store = example.store()
    stored = store.get_password_hash("alice@example.com")
    store.close()
    assert stored is not None
    assert verify_password(stored, "new one") and not verify_password(stored, "s3cret")
    assert "no account bob@example.com" in example.fails(
        "user", "passwd", "bob@example.com", stdin="x\n"
    )
    assert "empty password" in example.fails("user", "passwd", "alice@example.com", stdin="\n")


def test_user_list(example: Pbx) -> None:
    example.ok("domain", "add", "other.example")
    example.ok("user", "add", "zed@other.example", stdin="pw\n")
    lines = example.ok("user", "list").splitlines()
    assert lines[0].split() == ["ADDRESS", "MESSAGES", "INBOX", "SIZE"]
    assert [line.split()[0] for line in lines[1:]] == ["alice@example.com", "zed@other.example"]
    assert lines[1].split()[1:] == ["0", "0", "0"]
    only = example.ok("user", "list", "Other.Example").splitlines()
    assert [line.split()[0] for line in only[1:]] == ["zed@other.example"]
    assert "not a local domain" in example.fails("user", "list", "nowhere.example")


def test_user_remove(example: Pbx) -> None:
    out = example.ok("user", "remove", "alice@example.com")
    assert out == "removed account alice@example.com and its mailboxes\n"
    assert example.ok("user", "list") == "no accounts\n"
    assert "no account alice@example.com" in example.fails("user", "remove", "alice@example.com")
    assert "bad address" in example.fails("user", "remove", "alice")


# --- mailboxes ------------------------------------------------------------------------


def test_mailbox_list_after_user_add(example: Pbx) -> None:
    lines = example.ok("mailbox", "list", "Alice@example.com").splitlines()
    assert lines[0].split() == [
        "NAME", "SPECIAL-USE", "MESSAGES", "SIZE", "UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"INBOX", "Drafts", "Sent", "Junk", "Trash", "Archive"}
    assert lines[1].startswith("INBOX")
    assert rows["Sent"][0] == "\\Sent" and rows["Archive"][0] == "\\Archive"
    inbox = rows["INBOX"]  # no special use: messages, size, uidvalidity, uidnext, modseq
    assert inbox[0:2] == ["0", "0"] and int(inbox[2]) > 0 and inbox[3:] == ["1", "1"]


def test_mailbox_list_unknown_user(example: Pbx) -> None:
    assert "no account bob@example.com" in example.fails("mailbox", "list", "bob@example.com")


# --- aliases --------------------------------------------------------------------------


def test_alias_to_local_accounts_and_aliases(example: Pbx) -> None:
    example.ok("user", "add", "bob@example.com", stdin="pw\n")
    out = example.ok("alias", "add", "Team@example.com", "alice@example.com", "BOB@example.com")
    assert out == "added alias team@example.com -> alice@example.com, bob@example.com\n"
    example.ok("alias", "add", "all@example.com", "team@example.com")
    lines = example.ok("alias", "list").splitlines()
    assert lines == [
        "all@example.com   -> team@example.com",
        "team@example.com  -> alice@example.com, bob@example.com",
    ]
    store = example.store()
    found = resolve(store.directory(), "all", "example.com", "+")
    store.close()
    assert found.verdict is Verdict.LOCAL
    assert sorted(a.address for a in found.accounts) == ["alice@example.com", "bob@example.com"]


def test_alias_refuses_local_targets_that_name_nothing(example: Pbx) -> None:
    err = example.fails("alias", "add", "x@example.com", "nobody@example.com")
    assert "neither a local account nor a local alias" in err
    err = example.fails("alias", "add", "x@example.com", "alice@example.com", "bad@@address")
    assert "bad address" in err
    assert "not a local domain" in example.fails(
        "alias", "add", "x@nowhere.example", "alice@example.com"
    )
    assert "is an account" in example.fails("alias", "add", "alice@example.com",
                                            "alice@example.com")
    example.ok("user", "add", "bob@example.com", stdin="pw\n")
    assert "itself" in example.fails("alias", "add", "x@example.com", "x@example.com")
    assert "catch-all" in example.fails("alias", "add", "x@example.com", "@example.com")
    assert example.ok("alias", "list") == "no aliases\n"


def test_alias_to_other_domains_mixed_with_local_targets(example: Pbx) -> None:
    out = example.ok("alias", "add", "fwd@example.com", "Someone@Gmail.com", "alice@example.com")
    assert out == "added alias fwd@example.com -> someone@gmail.com, alice@example.com\n"
    store = example.store()
    found = resolve(store.directory(), "fwd", "example.com", "+")
    store.close()
    assert found.verdict is Verdict.LOCAL
    assert [a.address for a in found.accounts] == ["alice@example.com"]
    assert found.forwards == ("someone@gmail.com",)
    # A forward is never reported as dangling; a local target that names nothing is.
    store = example.store()
    store.add_alias("ghost@example.com", "nobody@example.com")
    assert commands.dangling_aliases(store) == [("ghost@example.com", "nobody@example.com")]
    store.close()


def test_catch_all(example: Pbx) -> None:
    out = example.ok("alias", "add", "@Example.COM", "alice@example.com")
    assert out == "added alias @example.com -> alice@example.com\n"
    assert "@example.com  -> alice@example.com" in example.ok("alias", "list", "example.com")
    store = example.store()
    found = resolve(store.directory(), "anything", "example.com", "+")
    store.close()
    assert [a.address for a in found.accounts] == ["alice@example.com"]
    example.ok("alias", "remove", "@example.com")
    assert example.ok("alias", "list") == "no aliases\n"


def test_alias_duplicates_and_additions(example: Pbx) -> None:
    example.ok("user", "add", "bob@example.com", stdin="pw\n")
    example.ok("alias", "add", "x@example.com", "alice@example.com")
    assert "already exists" in example.fails("alias", "add", "x@example.com", "alice@example.com")
    out = example.ok("alias", "add", "x@example.com", "alice@example.com", "bob@example.com")
    assert out == "added alias x@example.com -> bob@example.com\n"


def test_an_alias_address_cannot_become_an_account(example: Pbx) -> None:
    example.ok("alias", "add", "info@example.com", "alice@example.com")
    assert "is an alias" in example.fails("user", "add", "info@example.com", stdin="pw\n")


def test_alias_list_filters_by_domain(example: Pbx) -> None:
    example.ok("domain", "add", "other.example")
    example.ok("alias", "add", "a@example.com", "alice@example.com")
    example.ok("alias", "add", "b@other.example", "alice@example.com")
    assert example.ok("alias", "list", "other.example") == "b@other.example  -> alice@example.com\n"
    assert "not a local domain" in example.fails("alias", "list", "nowhere.example")


def test_alias_remove(example: Pbx) -> None:
    example.ok("user", "add", "bob@example.com", stdin="pw\n")
    example.ok("alias", "add", "x@example.com", "alice@example.com", "bob@example.com")
    out = example.ok("alias", "remove", "X@example.com", "Bob@example.com")
    assert out == "removed alias x@example.com -> bob@example.com\n"
    assert example.ok("alias", "list") == "x@example.com  -> alice@example.com\n"
    assert "no alias" in example.fails("alias", "remove", "x@example.com", "bob@example.com")
    example.ok("alias", "remove", "x@example.com")
    assert "no alias y@example.com" in example.fails("alias", "remove", "y@example.com")


def test_removing_a_target_account_warns_about_the_alias(example: Pbx) -> None:
    example.ok("alias", "add", "info@example.com", "alice@example.com")
    result = example("user", "remove", "alice@example.com")
    assert result.code == 0
    assert "warning: alias info@example.com -> alice@example.com" in result.err


# --- queue ----------------------------------------------------------------------------


def enqueue(store: SQLiteStore, blob_id: str, envelope: Envelope, data: bytes = MESSAGE) -> None:
    writer = store.new_blob(blob_id)
    writer.write(data)
    asyncio.run(store.enqueue(blob_id, writer, envelope))


ENVELOPE = Envelope(
    reverse_path="sender@remote.example",
    recipients=(
        EnvelopeRecipient("alice@example.com", notify="SUCCESS,FAILURE",
                          orcpt="rfc822;alice@example.com"),
        EnvelopeRecipient("bob@example.com"),
    ),
    client_address="192.0.2.1",
    helo="client.example",
    body="8BITMIME",
    dsn_ret="HDRS",
    dsn_envid="QQ314159",
)


@pytest.fixture
def queued(pbx: Pbx) -> tuple[Pbx, list[str]]:
    """Two queue entries: one active, one deferred with a last reply and a failed recipient."""
    ids = ["0000000000001AAAAA", "0000000000002BBBBB"]
    store = pbx.store()
    enqueue(store, ids[0], ENVELOPE)
    enqueue(store, ids[1], Envelope("", (EnvelopeRecipient("carol@example.com"),),
                                    "198.51.100.7", "mx.example"))
    with store.transaction() as conn:
        conn.execute(
            "UPDATE queue SET state = 'deferred', attempts = 2,"
            " last_reply = '451 4.3.0 try later' WHERE id = ?", (ids[1],)
        )
        conn.execute(
            "UPDATE recipients SET status = 'failed', last_reply = '550 5.1.1 no such user'"
            " WHERE queue_id = ?", (ids[1],)
        )
    store.close()
    return pbx, ids


def test_queue_list(queued: tuple[Pbx, list[str]]) -> None:
    pbx, ids = queued
    lines = pbx.ok("queue", "list").splitlines()
    assert lines[0].split() == ["ID", "ARRIVED", "SIZE", "STATE", "SENDER", "RCPTS", "LAST",
                                "REPLY"]
    first, second = lines[1].split(), lines[2].split()
    assert first[0] == ids[0] and first[3:] == [str(len(MESSAGE)), "active",
                                                "<sender@remote.example>", "2"]
    assert second[0] == ids[1]
    assert second[4:] == ["deferred", "<>", "1", "451", "4.3.0", "try", "later"]
    assert lines[-1] == "2 entries: 1 active, 1 deferred"


def test_queue_list_empty(example: Pbx) -> None:
    assert example.ok("queue", "list") == "queue is empty\n"


def test_queue_show(queued: tuple[Pbx, list[str]]) -> None:
    pbx, ids = queued
    out = pbx.ok("queue", "show", ids[0].lower())
    assert f"queue id:       {ids[0]}" in out
    assert "reverse path:   <sender@remote.example>" in out
    assert "client:         192.0.2.1 (HELO client.example)" in out
    assert "body:           8BITMIME" in out
    assert "dsn:            RET=HDRS ENVID=QQ314159" in out
    assert (
        "  0  <alice@example.com>  pending  NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.com"
    ) in out
    assert "  1  <bob@example.com>  pending" in out
    assert str(pbx.folder / "pillarbox-data" / "blobs" / ids[0][4:6] / ids[0]) in out
    assert "  Subject: Quarterly figures" in out
    assert "  \tby localhost with ESMTP" in out
    assert "body is not shown" not in out


def test_queue_show_deferred_entry(queued: tuple[Pbx, list[str]]) -> None:
    pbx, ids = queued
    out = pbx.ok("queue", "show", ids[1])
    assert "state:          deferred" in out and "attempts:       2" in out
    assert "last reply:     451 4.3.0 try later" in out
    assert "reverse path:   <>" in out
    assert "<carol@example.com>  failed" in out and "550 5.1.1 no such user" in out


def test_queue_show_unknown_and_missing_blob(queued: tuple[Pbx, list[str]]) -> None:
    pbx, ids = queued
    assert "no queue entry FFFF" in pbx.fails("queue", "show", "ffff")
    store = pbx.store()
    store.blobs.path(ids[0]).unlink()
    store.close()
    assert "the blob file is missing" in pbx.ok("queue", "show", ids[0])


def test_queue_delete(queued: tuple[Pbx, list[str]]) -> None:
    pbx, ids = queued
    store = pbx.store()
    blob = store.blobs.path(ids[0])
    store.close()
    assert blob.exists()
    assert pbx.ok("queue", "delete", ids[0]) == f"deleted {ids[0]}\n"
    assert not blob.exists()
    assert ids[0] not in pbx.ok("queue", "list")
    result = pbx("queue", "delete", ids[0], ids[1])
    assert result.code == 1
    assert f"no queue entry {ids[0]}" in result.err
    assert result.out == f"deleted {ids[1]}\n"
    assert pbx.ok("queue", "list") == "queue is empty\n"


# --- the program as a whole -------------------------------------------------------------


def test_unusable_data_directory(pbx: Pbx) -> None:
    (pbx.folder / "a-file").write_text("", encoding="utf-8")
    err = pbx.fails("-o", "server.data_dir=a-file", "domain", "list")
    assert "cannot open the data directory" in err and "a-file" in err
    assert "not a directory" in err
    err = pbx.fails("-o", "server.data_dir=a-file", "domain", "add", "x.example")
    assert "not a directory" in err


@pytest.mark.parametrize("argv", [
    ["domain", "list"], ["user", "list"], ["alias", "list"], ["queue", "list"],
    ["queue", "show", "ABC"], ["mailbox", "list", "a@example.com"], ["dkim", "list"],
    ["user", "add", "a@example.com"], ["mailbox", "import", "a@example.com", "."],
])
def test_a_missing_data_directory_is_an_error_not_an_empty_one(pbx: Pbx, argv: list[str]) -> None:
    """A mistyped data_dir (or the CLI run from the wrong folder) must not be
    answered "no accounts" from an empty data directory made on the spot."""
    err = pbx.fails("-o", "server.data_dir=mistyped", *argv, stdin="pw\n")
    assert "mistyped" in err and "no such directory" in err and "-c FILE" in err
    assert not (pbx.folder / "mistyped").exists()
    (pbx.folder / "empty").mkdir()
    err = pbx.fails("-o", "server.data_dir=empty", *argv, stdin="pw\n")
    assert "holds no Pillarbox database" in err
    assert list((pbx.folder / "empty").iterdir()) == []


def test_domain_add_starts_a_new_data_directory(pbx: Pbx) -> None:
    pbx.ok("-o", "server.data_dir=new/data", "domain", "add", "example.com")
    assert pbx.ok("-o", "server.data_dir=new/data", "domain", "list").startswith("DOMAIN")


def test_python_dash_m_pillarbox(pbx: Pbx) -> None:
    import subprocess

    src = Path(cli.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pillarbox", "domain", "add", "example.com"],
        capture_output=True, text=True, cwd=pbx.folder, env={"PYTHONPATH": str(src)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "added domain example.com\n"
    assert "example.com" in pbx.ok("domain", "list")
