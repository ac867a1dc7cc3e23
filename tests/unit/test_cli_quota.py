"""``pillarbox user quota``: show usage and limits, set and remove them, refuse bad input."""

from __future__ import annotations

import asyncio

import pytest

from pillarbox.admin.commands import AdminError, format_size, parse_count, parse_size
from pillarbox.store.base import NewMessage
from tests.unit.test_cli import Pbx, example, pbx  # noqa: F401 - the fixtures

ALICE = "alice@example.com"


def limits(p: Pbx) -> tuple[int | None, int | None]:
    store = p.store()
    try:
        row = store.reader.execute(
            "SELECT quota_storage, quota_messages FROM accounts WHERE address = ?", (ALICE,)
        ).fetchone()
    finally:
        store.close()
    return row[0], row[1]


def append(p: Pbx, *sizes: int) -> None:
    store = p.store()
    try:
        account = store.account_id(ALICE)
        assert account is not None
        inbox = store.mailbox(account, "INBOX")
        assert inbox is not None
        head = b"Subject: q\r\n\r\n"
        asyncio.run(store.append(inbox.id, [NewMessage(head + b"x" * (n - len(head)))
                                            for n in sizes]))
    finally:
        store.close()


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by resource name: ``{'storage': [used..., limit..., use...]}``."""
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.split() and line.split()[0] in ("storage", "messages")}


def test_show_without_limits(example: Pbx) -> None:
    append(example, 1024, 1024, 2048)
    out = example.ok("user", "quota", "Alice@Example.com")
    assert out.splitlines()[0] == ALICE
    assert out.splitlines()[1].split() == ["RESOURCE", "USED", "LIMIT", "USE"]
    assert rows(out) == {"storage": ["4", "KiB", "none"], "messages": ["3", "none"]}


def test_set_show_and_remove_limits(example: Pbx) -> None:
    append(example, 1 << 20)
    out = example.ok("user", "quota", ALICE, "--storage", "2M", "--messages", "10")
    assert out.splitlines()[0] == f"set the quota of {ALICE}: 2 MiB, 10 messages"
    assert limits(example) == (2 << 20, 10)
    assert rows(out) == {"storage": ["1", "MiB", "2", "MiB", "50", "%"],
                         "messages": ["1", "10", "10", "%"]}
    # One option changes one limit; the other stays.
    example.ok("user", "quota", ALICE, "--storage", "1.5GiB")
    assert limits(example) == (3 << 29, 10)
    example.ok("user", "quota", ALICE, "--messages", "none")
    assert limits(example) == (3 << 29, None)
    out = example.ok("user", "quota", ALICE, "--storage", "0")
    assert out.splitlines()[0] == f"set the quota of {ALICE}: no limit"
    assert limits(example) == (None, None)


def test_a_limit_below_the_usage_shows_full(example: Pbx) -> None:
    append(example, 4096, 4096)
    out = example.ok("user", "quota", ALICE, "--storage", "4K", "--messages", "1")
    assert rows(out) == {"storage": ["8", "KiB", "4", "KiB", "200", "%", "(full)"],
                         "messages": ["2", "1", "200", "%", "(full)"]}


def test_user_list_shows_quota_once_an_account_has_one(example: Pbx) -> None:
    example.ok("user", "add", "bob@example.com", stdin="pw\n")
    assert example.ok("user", "list").splitlines()[0].split() == [
        "ADDRESS", "MESSAGES", "INBOX", "SIZE"]
    example.ok("user", "quota", ALICE, "--storage", "1G", "--messages", "5000")
    lines = example.ok("user", "list").splitlines()
    assert lines[0].split() == ["ADDRESS", "MESSAGES", "INBOX", "SIZE", "QUOTA"]
    assert lines[1].endswith("1 GiB, 5000 messages")
    assert lines[2].split() == ["bob@example.com", "0", "0", "0"]


@pytest.mark.parametrize("argv, message", [
    (("--storage", "12X"), "bad size '12X'"),
    (("--storage=-1G",), "bad size '-1G'"),
    (("--storage", "0.1"), "out of range"),
    (("--storage", "99999999T"), "out of range"),
    (("--messages", "ten"), "bad message count 'ten'"),
    (("--messages=-3",), "bad message count '-3'"),
])
def test_bad_values_are_refused_and_change_nothing(example: Pbx, argv, message) -> None:
    example.ok("user", "quota", ALICE, "--storage", "1G")
    err = example.fails("user", "quota", ALICE, *argv)
    assert message in err
    assert limits(example) == (1 << 30, None)


def test_unknown_account_and_usage_errors(example: Pbx) -> None:
    assert "no account nobody@example.com" in example.fails("user", "quota", "nobody@example.com")
    assert "no account nobody@example.com" in example.fails(
        "user", "quota", "nobody@example.com", "--storage", "1G")
    assert "bad address 'not an address'" in example.fails("user", "quota", "not an address")
    with pytest.raises(SystemExit) as info:
        example("user", "quota")
    assert info.value.code == 2


def test_size_parsing_and_formatting() -> None:
    assert parse_size("1G") == 1 << 30
    assert parse_size("500m") == 500 << 20
    assert parse_size("10KB") == 10240
    assert parse_size("2048") == 2048
    assert parse_size(" 2 G ") == 2 << 30
    assert parse_size("none") is None and parse_size("0") is None and parse_size("0G") is None
    assert parse_count("0") is None and parse_count("NONE") is None and parse_count("7") == 7
    for bad in ("", "G", "1.G", "1e3", "١٢"):
        with pytest.raises(AdminError):
            parse_size(bad)
    with pytest.raises(AdminError):
        parse_count("١٢")   # digits, but not ASCII ones
    assert [format_size(n) for n in (0, 999, 1024, 1536, 1 << 30, (1 << 40) * 3)] == [
        "0 B", "999 B", "1 KiB", "1.5 KiB", "1 GiB", "3 TiB"]
