"""The configuration layer: defaults, the file, overrides, and errors that name file, line and key."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from pathlib import Path

import pytest

from pillarbox import config as config_module
from pillarbox.config import (
    Config,
    ConfigError,
    SMTPConfig,
    check_config,
    load_config,
    parse_duration,
    parse_listen_address,
    parse_size,
    reference_markdown,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, so a file written there is named "pillarbox.toml" in messages."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(directory: Path, text: str, name: str = "pillarbox.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(text: str, directory: Path, **kwargs: object) -> list[str]:
    path = write(directory, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return info.value.errors


# --- defaults -------------------------------------------------------------------


def test_defaults_without_a_file(in_tmp: Path) -> None:
    config = load_config(None)
    assert config.server.data_dir == in_tmp.resolve() / "pillarbox-data"
    assert config.server.workers == 0
    assert config.server.user == ""
    assert config.log.format == "text" and config.log.level == "info"
    assert config.log.file is None
    assert config.smtp.listen == (("127.0.0.1", 2525),)
    assert config.smtp.max_message_size == 50 * 1024 * 1024
    assert config.smtp.max_recipients == 1000
    assert config.smtp.max_command_line == 2048
    assert config.smtp.max_text_line == 1000
    assert config.smtp.max_errors == 20
    assert config.smtp.max_received_headers == 50
    assert config.smtp.command_timeout == 300
    assert config.smtp.data_timeout == 600
    assert config.smtp.max_connections == 1000
    assert config.smtp.max_connections_per_ip == 50
    assert config.smtp.starttls is True
    assert config.tls.certificate is None and config.tls.private_key is None
    assert config.delivery.recipient_delimiter == "+"
    assert config.queue.min_free_space == 100 * 1024 * 1024
    assert config.queue.delivery_batch == 500


def test_an_empty_file_gives_the_defaults(in_tmp: Path) -> None:
    assert load_config(write(in_tmp, "")) == load_config(None)


@pytest.mark.parametrize(
    ("fqdn", "expected"),
    [("mx1.example.com", "mx1.example.com"), ("mx1", "localhost"), ("bad_name.x", "localhost")],
)
def test_default_hostname(
    fqdn: str, expected: str, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: fqdn)
    assert load_config(None).server.hostname == expected


def test_config_is_frozen_and_needs_no_global_state(in_tmp: Path) -> None:
    config = load_config(None, {"smtp.max_recipients": "7"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.smtp.max_recipients = 8  # type: ignore[misc]
    assert load_config(None).smtp.max_recipients == 1000
    assert SMTPConfig().max_recipients == 1000


def test_workers_effective(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert load_config(None).workers_effective == 6
    assert load_config(None, {"server.workers": "3"}).workers_effective == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert Config().workers_effective == 1


# --- a full file ------------------------------------------------------------------


def test_a_production_file(in_tmp: Path) -> None:
    (in_tmp / "fullchain.pem").write_text("cert")
    (in_tmp / "privkey.pem").write_text("key")
    path = write(
        in_tmp,
        """
[server]
hostname = "mx.example.com"
data_dir = "/var/lib/pillarbox"
workers = 4
user = "pillarbox"

[log]
format = "json"
level = "WARNING"
file = "/var/log/pillarbox.log"

[smtp]
listen = ["0.0.0.0:25", "[::]:25"]
max_message_size = "25M"
max_text_line = 0
command_timeout = "5m"
data_timeout = 900
starttls = false

[tls]
certificate = "fullchain.pem"
private_key = "privkey.pem"

[delivery]
recipient_delimiter = "+-"

[queue]
min_free_space = "1G"
""",
    )
    config = load_config(path)
    assert config.server.hostname == "mx.example.com"
    assert config.server.data_dir == Path("/var/lib/pillarbox")
    assert config.workers_effective == 4
    assert config.server.user == "pillarbox"
    assert (config.log.format, config.log.level) == ("json", "warning")
    assert config.log.file == Path("/var/log/pillarbox.log")
    assert config.smtp.listen == (("0.0.0.0", 25), ("::", 25))
    assert config.smtp.max_message_size == 25 * 1024 * 1024
    assert config.smtp.max_text_line == 0
    assert config.smtp.command_timeout == 300.0
    assert config.smtp.data_timeout == 900.0
    assert config.smtp.starttls is False
    assert config.tls.certificate == in_tmp.resolve() / "fullchain.pem"
    assert config.tls.private_key == in_tmp.resolve() / "privkey.pem"
    assert config.delivery.recipient_delimiter == "+-"
    assert config.queue.min_free_space == 1024**3
    assert check_config(path) == []


def test_dotted_keys_and_inline_tables_are_read_too(in_tmp: Path) -> None:
    path = write(in_tmp, 'smtp.max_errors = 3\nlog = { level = "debug" }\n')
    config = load_config(path)
    assert config.smtp.max_errors == 3 and config.log.level == "debug"


# --- errors: file, line, key, what ------------------------------------------------


def test_the_error_names_file_line_and_key(in_tmp: Path) -> None:
    text = "# Pillarbox\n" + "\n" * 8 + '[smtp]\nstarttls = true\nmax_recipients = "lots"\n'
    path = write(in_tmp, text)
    with pytest.raises(ConfigError) as info:
        load_config(Path("pillarbox.toml"))
    assert str(info.value) == (
        'pillarbox.toml:12: smtp.max_recipients: expected an integer >= 1, got "lots"'
    )
    assert check_config(Path("pillarbox.toml")) == info.value.errors
    assert check_config(path) == [
        f'{path}:12: smtp.max_recipients: expected an integer >= 1, got "lots"'
    ]


LINE_CASES = [
    # (file text, line, key, message pattern)
    (
        "[smtp]\n\nmax_recipients = 0\n",
        3,
        "smtp.max_recipients",
        r"expected an integer >= 1, got 0",
    ),
    (
        "[smtp]\nmax_recipients = 1.5\n",
        2,
        "smtp.max_recipients",
        r"expected an integer >= 1, got 1.5",
    ),
    ("[smtp]\nmax_errors = true\n", 2, "smtp.max_errors", r"expected an integer >= 1, got true"),
    (
        "[server]\nworkers = 257\n",
        2,
        "server.workers",
        r"expected an integer from 0 to 256, got 257",
    ),
    ("[server]\nworkers = -1\n", 2, "server.workers", r"from 0 to 256, got -1"),
    ('[log]\nformat = "xml"\n', 2, "log.format", r'expected one of "text", "json", got "xml"'),
    ("[log]\nlevel = 3\n", 2, "log.level", r'expected one of "debug", .*, got 3'),
    ('[smtp]\nstarttls = "yes"\n', 2, "smtp.starttls", r'expected true or false, got "yes"'),
    (
        '[smtp]\nmax_message_size = "50X"\n',
        2,
        "smtp.max_message_size",
        r'expected a size \(.*\), got "50X"',
    ),
    (
        "[smtp]\nmax_command_line = 100\n",
        2,
        "smtp.max_command_line",
        r"expected a size >= 512 bytes .*, got 100",
    ),
    (
        "[smtp]\nmax_text_line = 999\n",
        2,
        "smtp.max_text_line",
        r"expected 0 or a size >= 1000 bytes .*, got 999",
    ),
    ("[queue]\nmin_free_space = -1\n", 2, "queue.min_free_space", r"got -1"),
    (
        '[smtp]\ncommand_timeout = "5 minutes"\n',
        2,
        "smtp.command_timeout",
        r'expected a duration >= 1 s .*, got "5 minutes"',
    ),
    ("[smtp]\ndata_timeout = 0\n", 2, "smtp.data_timeout", r"expected a duration >= 1 s"),
    (
        '[server]\nhostname = "mail_server"\n',
        2,
        "server.hostname",
        r'expected a domain name such as "mail.example.com".*, got "mail_server"',
    ),
    ('[server]\nhostname = "192.0.2.1"\n', 2, "server.hostname", r"expected a domain name"),
    ('[server]\ndata_dir = ""\n', 2, "server.data_dir", r'expected a path, got ""'),
    ("[log]\nfile = false\n", 2, "log.file", r'expected a path or "", got false'),
    (
        '[delivery]\nrecipient_delimiter = "@"\n',
        2,
        "delivery.recipient_delimiter",
        r'expected "" or characters from .*, got "@"',
    ),
    (
        '[smtp]\nlisten = "0.0.0.0:25"\n',
        2,
        "smtp.listen",
        r'expected an array of "host:port" strings, got "0.0.0.0:25"',
    ),
    (
        '[smtp]\nlisten = [\n  "0.0.0.0:25",\n  "0.0.0.0:70000",\n]\n',
        4,
        "smtp.listen",
        r'"0.0.0.0:70000": the port must be a number from 1 to 65535',
    ),
    ('[smtp]\nlisten = ["::1:25"]\n', 2, "smtp.listen", r"IPv6 addresses go in brackets"),
    ('[smtp]\nlisten = ["localhost"]\n', 2, "smtp.listen", r"no port"),
    ('[smtp]\nlisten = [":25"]\n', 2, "smtp.listen", r"no host"),
    (
        '[smtp]\nlisten = ["[::1]:25", 25]\n',
        2,
        "smtp.listen",
        r'expected a "host:port" string, got 25',
    ),
    ('[smtp]\nlisten = ["[::1]:25",\n "[::1]:25"]\n', 3, "smtp.listen", r"listed twice"),
    (
        '[tls]\ncertificate = "missing.pem"\nprivate_key = ""\n',
        2,
        "tls.certificate",
        r"no such file: .*missing\.pem",
    ),
    (
        "[smtp]\nmax_recipent = 10\n",
        2,
        "smtp.max_recipent",
        r'unknown key; did you mean "smtp.max_recipients"\?',
    ),
    ("[smpt]\nmax_recipients = 10\n", 1, "smpt", r'unknown section; did you mean "smtp"\?'),
    (
        "[server]\nmax_recipients = 10\n",
        2,
        "server.max_recipients",
        r'unknown key; did you mean "smtp.max_recipients"\?',
    ),
    (
        'hostname = "mx.example.com"\n',
        1,
        "hostname",
        r'unknown section; did you mean "server.hostname"\?',
    ),
    ("[server]\nfrobnicate = 1\n", 2, "server.frobnicate", r"^unknown key$"),
    ("smtp = 5\n", 1, "smtp", r"expected a table \[smtp\], got 5"),
    ("[smtp.listen]\nhost = 1\n", 1, "smtp.listen", r"got a table"),
    ("[[queue]]\ndelivery_batch = 1\n", 1, "queue", r"expected a table \[queue\]"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), LINE_CASES)
def test_each_kind_of_error_names_its_line(
    text: str, line: int, key: str, message: str, in_tmp: Path
) -> None:
    errors = errors_of(text, in_tmp)
    assert len(errors) == 1, errors
    prefix = f"{in_tmp / 'pillarbox.toml'}:{line}: {key}: "
    assert errors[0].startswith(prefix), errors[0]
    assert re.search(message, errors[0][len(prefix) :]), errors[0]


def test_tls_needs_both_files_or_neither(in_tmp: Path) -> None:
    (in_tmp / "cert.pem").write_text("cert")
    errors = errors_of('\n[tls]\n\ncertificate = "cert.pem"\n', in_tmp)
    name = in_tmp / "pillarbox.toml"
    assert errors == [
        f"{name}:4: tls.certificate: set without tls.private_key; set both or neither"
    ]
    (in_tmp / "key.pem").write_text("key")
    config = load_config(None, {"tls.private_key": "key.pem", "tls.certificate": "cert.pem"})
    assert config.tls.private_key == in_tmp.resolve() / "key.pem"
    errors = errors_of("", in_tmp, overrides={"tls.private_key": "key.pem"})
    assert errors == [
        "command line: tls.private_key: set without tls.certificate; set both or neither"
    ]


def test_a_tls_file_must_be_a_file(in_tmp: Path) -> None:
    (in_tmp / "certs").mkdir()
    (in_tmp / "key.pem").write_text("key")
    errors = errors_of('[tls]\ncertificate = "certs"\nprivate_key = "key.pem"\n', in_tmp)
    assert errors == [
        f"{in_tmp / 'pillarbox.toml'}:2: tls.certificate: not a file: {in_tmp.resolve() / 'certs'}"
    ]


def test_every_error_is_collected_in_line_order(in_tmp: Path) -> None:
    text = """\
[server]
hostname = "-bad-"
workers = "many"

[smtp]
listen = ["0.0.0.0:0", "[::]:25", "nonsense"]
max_recipients = 0
max_errrors = 5

[nope]
"""
    errors = errors_of(text, in_tmp, overrides={"log.level": "loud"})
    name = in_tmp / "pillarbox.toml"
    assert [e.split(": ")[0:2] for e in errors] == [
        [f"{name}:2", "server.hostname"],
        [f"{name}:3", "server.workers"],
        [f"{name}:6", "smtp.listen"],
        [f"{name}:6", "smtp.listen"],
        [f"{name}:7", "smtp.max_recipients"],
        [f"{name}:8", "smtp.max_errrors"],
        [f"{name}:10", "nope"],
        ["command line", "log.level"],
    ]
    assert 'did you mean "smtp.max_errors"?' in errors[5]
    assert str(ConfigError(errors)) == "\n".join(errors)
    assert check_config(name) == errors[:-1]


def test_a_value_in_an_inline_table_is_located(in_tmp: Path) -> None:
    text = '[server]\nhostname = "mx.example.com"\n\nsmtp = { max_errors = 0 }\n'
    # "smtp" inside [server] is an unknown key; at top level it is the section.
    assert errors_of(text, in_tmp) == [f"{in_tmp / 'pillarbox.toml'}:4: server.smtp: unknown key"]
    text = 'log.level = "info"\n\nsmtp = { starttls = true, max_errors = 0 }\n'
    (error,) = errors_of(text, in_tmp)
    assert error.startswith(f"{in_tmp / 'pillarbox.toml'}:3: smtp.max_errors: ")


# --- the file itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("[smtp]\nmax_recipients = \n", "2:18", "Invalid value"),
        ("[smtp\n", "1:6", "Expected ']' at the end of a table declaration"),
        ("[smtp]\nstarttls = true\nstarttls = false\n", "3:17", "Cannot overwrite a value"),
        ("[smtp]\nmax_errors = 5 6\n", "2:16", "Expected newline or end of document"),
    ],
)
def test_toml_syntax_errors_give_line_and_column(
    text: str, where: str, message: str, in_tmp: Path
) -> None:
    (error,) = errors_of(text, in_tmp)
    assert error.startswith(f"{in_tmp / 'pillarbox.toml'}:{where}: TOML syntax error: ")
    assert message in error


def test_syntax_error_at_end_of_document(in_tmp: Path) -> None:
    errors = errors_of('[smtp]\nlisten = ["0.0.0.0:25",\n', in_tmp)
    assert errors == [f"{in_tmp / 'pillarbox.toml'}:3:1: TOML syntax error: Invalid value"]


def test_a_missing_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(in_tmp / "absent.toml")
    assert info.value.errors == [
        f"{in_tmp / 'absent.toml'}: cannot read the file: No such file or directory"
    ]


def test_a_file_that_is_not_utf8(in_tmp: Path) -> None:
    path = in_tmp / "pillarbox.toml"
    path.write_bytes(b'[server]\nuser = "r\xe9mi"\n')
    assert check_config(path) == [f"{path}:2: not UTF-8 text, as TOML requires"]


# --- overrides -------------------------------------------------------------------


def test_overrides_are_converted_to_the_type_of_their_key(in_tmp: Path) -> None:
    config = load_config(
        None,
        {
            "smtp.max_recipients": "50",
            "smtp.starttls": "no",
            "smtp.max_message_size": "10MiB",
            "smtp.data_timeout": "1h",
            "smtp.listen": "0.0.0.0:25, [::]:25",
            "log.level": "debug",
            "server.hostname": "mx.example.org",
        },
    )
    assert config.smtp.max_recipients == 50
    assert config.smtp.starttls is False
    assert config.smtp.max_message_size == 10 * 1024 * 1024
    assert config.smtp.data_timeout == 3600.0
    assert config.smtp.listen == (("0.0.0.0", 25), ("::", 25))
    assert config.log.level == "debug"
    assert config.server.hostname == "mx.example.org"


def test_listen_override_as_a_toml_array(in_tmp: Path) -> None:
    config = load_config(None, {"smtp.listen": '["[::1]:2525"]'})
    assert config.smtp.listen == (("::1", 2525),)
    assert load_config(None, {"smtp.listen": "[::1]:2525"}).smtp.listen == (("::1", 2525),)
    assert load_config(None, {"smtp.listen": ""}).smtp.listen == ()


def test_overrides_win_over_the_file(in_tmp: Path) -> None:
    path = write(in_tmp, '[smtp]\nmax_recipients = "lots"\nmax_errors = 5\n')
    config = load_config(path, {"smtp.max_recipients": "100"})
    assert config.smtp.max_recipients == 100
    assert config.smtp.max_errors == 5


def test_bad_and_unknown_overrides(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            None, {"smtp.max_recipients": "lots", "smpt.max_errors": "3", "smtp.starttls": "maybe"}
        )
    assert info.value.errors == [
        'command line: smpt.max_errors: unknown key; did you mean "smtp.max_errors"?',
        'command line: smtp.max_recipients: expected an integer >= 1, got "lots"',
        'command line: smtp.starttls: expected true or false, got "maybe"',
    ]


def test_two_listen_keys_on_one_address(in_tmp: Path) -> None:
    """Else the second bind fails "Address already in use", as if another program held it."""
    path = write(in_tmp, '[smtp]\nlisten = ["127.0.0.1:2525"]\n\n'
                         '[imap]\nlisten = ["0.0.0.0:2525"]\nlisten_tls = ["127.0.0.2:2525"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {"pop3.listen": "[::1]:2110", "pop3.listen_tls": "[::]:2110"})
    assert info.value.errors == [
        f'{path}:5: imap.listen: "0.0.0.0:2525": smtp.listen listens there too',
        f'{path}:6: imap.listen_tls: "127.0.0.2:2525": imap.listen listens there too',
        'command line: pop3.listen_tls: "[::]:2110": pop3.listen listens there too',
    ]
    # Other hosts on one port, or the other address family, are no conflict.
    config = load_config(None, {"smtp.listen": "127.0.0.1:2525,[::]:2525",
                                "imap.listen": "127.0.0.2:2525"})
    assert config.imap.listen == (("127.0.0.2", 2525),)


def test_a_section_given_as_an_override_key(in_tmp: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"smtp": "2525"})
    assert info.value.errors == ["command line: smtp: a section, not a key; write smtp.KEY=VALUE"]


# --- units -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (2048, 2048),
        ("2048", 2048),
        ("2048B", 2048),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("512KB", 512 * 1024),
        ("512 KiB", 512 * 1024),
        ("50M", 50 * 1024**2),
        ("10MiB", 10 * 1024**2),
        ("1.5M", 1536 * 1024),
        ("1G", 1024**3),
        ("2TiB", 2 * 1024**4),
        (" 7 mb ", 7 * 1024**2),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", -1, "1.5.2M", "50X", "lots", 1.5, True, None])
def test_not_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("300s", 300.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        ("5M", 300.0),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "m", "-5s", -5, "5 minutes", "1h30", "30 1h", "5y", float("inf"), False]
)
def test_not_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_units_in_the_file(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        '[smtp]\nmax_message_size = "10MiB"\nmax_command_line = "4k"\n'
        'command_timeout = "300s"\ndata_timeout = "2d"\n'
        '[queue]\nmin_free_space = "512k"\n',
    )
    config = load_config(path)
    assert config.smtp.max_message_size == 10 * 1024**2
    assert config.smtp.max_command_line == 4096
    assert config.smtp.command_timeout == 300.0
    assert config.smtp.data_timeout == 2 * 86400.0
    assert config.queue.min_free_space == 512 * 1024


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("[::]:25", ("::", 25)),
        ("mx.example.com:25", ("mx.example.com", 25)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen_address(text) == address


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:x",
        "::1:25",
        "[::1:25",
        "[nothost]:25",
        "300.1.1.1:25",
        ":25",
        "bad_host:25",
        "127.0.0.1:²",
    ],
)
def test_not_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


# --- paths ---------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(etc, '[server]\ndata_dir = "data"\n[log]\nfile = "../log/pillarbox.log"\n')
    config = load_config(path)
    assert config.server.data_dir == etc.resolve() / "data"
    assert config.log.file == tmp_path.resolve() / "log" / "pillarbox.log"
    # Given as a relative path, the file's directory is still the base.
    config = load_config(Path("../etc/pillarbox.toml"))
    assert config.server.data_dir == etc.resolve() / "data"


def test_defaults_are_relative_to_the_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", "")
    assert load_config(path).server.data_dir == tmp_path.resolve() / "etc" / "pillarbox-data"


def test_relative_paths_without_a_file_or_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[server]\ndata_dir = "data"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config(None).server.data_dir == tmp_path.resolve() / "pillarbox-data"
    config = load_config(path, {"server.data_dir": "here"})
    assert config.server.data_dir == tmp_path.resolve() / "here"
    assert load_config(None, {"server.data_dir": "/srv/mail"}).server.data_dir == Path("/srv/mail")


def test_home_directory_paths(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(in_tmp / "home"))
    config = load_config(write(in_tmp, '[server]\ndata_dir = "~/mail"\n'))
    assert config.server.data_dir == (in_tmp / "home").resolve() / "mail"


# --- the locator ------------------------------------------------------------------


def test_the_locator_finds_keys_in_awkward_places() -> None:
    text = (
        "# [smtp] in a comment\n"  # 1
        'title = """\n'  # 2
        "[server]\n"  # 3  (inside a string)
        'hostname = "x"\n'  # 4  (inside a string)
        '"""\n'  # 5
        "lit = '''a = 1'''\n"  # 6
        "[ server ]  # the server\n"  # 7
        'hostname = "mx.example.com"  # = not a key\n'  # 8
        "smtp . max_errors = 1\n"  # 9
        '"quoted.key" = 2\n'  # 10
        "arr = [\n"  # 11
        "  '[x]',  # [y]\n"  # 12
        "  { a = 1 },\n"  # 13
        "]\n"  # 14
        "tbl = { inner = { deep = 3 }, s = 'a, b = c' }\n"  # 15
        "[[item]]\r\n"  # 16
        "name = 'one'\r\n"  # 17
        "[[item]]\n"  # 18
        "name = 'two'\n"  # 19
        'esc = "a \\" b = [c"\n'  # 20
        "after = 1\n"  # 21
    )
    tomllib.loads(text)  # the locator only ever sees valid TOML
    locate = config_module._Locator(text).line
    assert locate("title") == 2
    assert locate("lit") == 6
    assert locate("server") == 7
    assert locate("server.hostname") == 8
    assert locate("server.smtp.max_errors") == 9
    assert locate("server.smtp") == 9
    assert locate("server.quoted.key") == 10
    assert locate("server.arr") == 11
    assert locate("server.arr[0]") == 12
    assert locate("server.arr[1]") == 13
    assert locate("server.arr[1].a") == 13
    assert locate("server.arr[7]") == 11
    assert locate("server.tbl.inner.deep") == 15
    assert locate("server.tbl.s") == 15
    assert locate("item") == 16
    assert locate("item.name") == 17
    assert locate("item.esc") == 20
    assert locate("item.after") == 21
    assert locate("server.nothing.here") == 7
    assert locate("absent") is None


# --- the reference ----------------------------------------------------------------


def test_every_key_is_documented_with_its_default() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for key, f in config_module._OPTIONS.items():
        kind = f.metadata["kind"]
        default = f.metadata["default_doc"] or kind.show_default(f.metadata["default"])
        heading = f"#### `{key}`\n\n"
        assert heading in docs, f"{key} is missing from {DOCS.name}"
        entry = docs.split(heading, 1)[1].split("\n#", 1)[0]
        assert f"default {default}" in entry, f"{key}: the default in {DOCS.name} is not {default}"


def test_the_reference_in_the_docs_is_up_to_date() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN REFERENCE", "<!-- END REFERENCE -->"
    generated = docs.split(begin, 1)[1].split("-->", 1)[1].split(end, 1)[0]
    assert generated.strip() == reference_markdown().strip(), (
        "regenerate the reference: python -m pillarbox.config --markdown"
    )


def test_the_production_example_in_the_docs_is_valid(in_tmp: Path) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    example = docs.split("## A production file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    errors = errors_of(example, in_tmp)
    # Only the certificate files are missing on a test machine.
    assert [e.split(": ")[1:3] for e in errors] == [
        ["tls.certificate", "no such file"],
        ["tls.private_key", "no such file"],
    ]


def test_the_defaults_in_the_schema_are_what_the_dataclasses_hold(in_tmp: Path) -> None:
    loaded = load_config(None)
    built = Config()
    for section in ("log", "smtp", "delivery", "queue"):
        assert getattr(loaded, section) == getattr(built, section)


def test_the_markdown_command(capsys: pytest.CaptureFixture[str], in_tmp: Path) -> None:
    assert config_module.main(["--markdown"]) == 0
    assert capsys.readouterr().out == reference_markdown()
    path = write(in_tmp, "[smtp]\nmax_errors = 0\n")
    assert config_module.main(["--check", str(path)]) == 1
    assert "smtp.max_errors" in capsys.readouterr().err


def test_nameservers_may_carry_a_port(in_tmp: Path) -> None:
    config = load_config(None, {"dns.nameservers": "127.0.0.1:5353,[::1]:5300,192.0.2.53"})
    assert config.dns.nameservers == ("127.0.0.1:5353", "[::1]:5300", "192.0.2.53")
    errors = errors_of("", in_tmp, overrides={"dns.nameservers": "127.0.0.1:99999,ns.example"})
    assert len(errors) == 2 and all("dns.nameservers" in e for e in errors), errors
    assert "127.0.0.1:99999" in errors[0] and "ns.example" in errors[1]


def test_policy_section_defaults_and_errors(in_tmp: Path) -> None:
    config = load_config(None)
    assert (config.policy.spf, config.policy.dkim, config.policy.dmarc) == ("tag", True, "enforce")
    errors = errors_of('[policy]\ndmarc = "strict"\ndmarc_domains = "a.test=off"\n', in_tmp)
    assert any(e.endswith('pillarbox.toml:2: policy.dmarc: expected one of "off", "monitor", '
                          '"quarantine-only", "enforce", got "strict"') for e in errors), errors
    assert any(":3: policy.dmarc_domains:" in e and '"a.test=off"' in e for e in errors), errors
