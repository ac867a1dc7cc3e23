"""Pillarbox configuration: one TOML file, one typed schema.

Values come in three layers, each overriding the one before: the defaults
declared below, the file, then command-line overrides (dotted keys to strings,
such as ``{"smtp.max_recipients": "50"}``). :func:`load_config` returns a
:class:`Config` of frozen dataclasses that the caller passes around; no module
reads a global configuration (STYLE rule 8).

The schema is declared in exactly one place: the section dataclasses below,
whose fields carry their kind (type, range, conversion) and their description
in field metadata. Validation, the parsing of overrides and the reference in
``docs/configuration.md`` (``python -m pillarbox.config --markdown``) are all
derived from it, so they cannot drift apart.

Every problem is reported as ``file:line: dotted.key: what is wrong``, and all
of them are collected before :class:`ConfigError` is raised. tomllib gives no
line numbers for values, so :class:`_Locator` maps dotted keys to lines by
scanning the raw text.

Relative paths in the file are relative to the file's directory (so are the
defaults when a file is given); on the command line, or with no file, they
are relative to the current directory.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import ipaddress
import json
import math
import os
import re
import socket
import sys
import tomllib
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used.

    ``errors`` holds one line per problem, ``file:line: key: what is wrong``;
    ``str()`` of the exception is those lines joined by newlines.
    """

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --- units -------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    for _suffix in ("", "b", "ib"):
        _SIZE_UNITS[_prefix + _suffix] = 1024**_power
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE | re.ASCII)

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE | re.ASCII)


def parse_size(text: str | int) -> int:
    """A size in bytes: a non-negative integer, or a string with a unit.

    Units are 1024-based whatever their spelling: ``"512k"``, ``"512K"``,
    ``"512KB"`` and ``"512KiB"`` are all 524288; likewise M, G and T. A plain
    number (``"2048"``) or ``"2048B"`` is bytes. Raises :class:`ValueError`.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"not a size: {text!r}")  # noqa: TRY004 - one error for any bad value
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"not a size: {text!r}")
        return text
    m = _SIZE.fullmatch(text.strip())
    if m is None or m[2].lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(Fraction(m[1]) * _SIZE_UNITS[m[2].lower()])


def parse_duration(text: str | float) -> float:
    """A duration in seconds: a non-negative number, or a string with units.

    Units: ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``, ``w``; parts add up, so
    ``"1h30m"`` is 5400. A bare number (``"300"``) is seconds, but only alone.
    Raises :class:`ValueError`.
    """
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise ValueError(f"not a duration: {text!r}")  # noqa: TRY004 - as in parse_size
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a duration: {text!r}")
        return float(text)
    s = text.strip()
    if not s:
        raise ValueError(f"not a duration: {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or (m[2] is None and (pos > 0 or m.end() < len(s))):
            raise ValueError(f"not a duration: {text!r}")
        total += float(m[1]) * _DURATION_UNITS[(m[2] or "s").lower()]
        pos = m.end()
    return total


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE | re.ASCII)


def _is_domain(name: str) -> bool:
    """A domain name in ASCII (RFC 1035 §2.3.1, RFC 1123 §2.1); IDNs as A-labels."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def default_hostname() -> str:
    """This machine's fully qualified domain name if it has a dot, else ``localhost``."""
    name = socket.getfqdn().rstrip(".")
    return name if "." in name and _is_domain(name) else "localhost"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``"host:port"`` to ``(host, port)``; IPv6 in brackets (``"[::1]:25"``, RFC 3986 §3.2.2).

    The host is returned without brackets. Raises :class:`ValueError` saying why.
    """
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        raise ValueError('no port; write "host:port"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError('IPv6 addresses go in brackets, as in "[::1]:25"')
    elif not host:
        raise ValueError('no host; use "0.0.0.0" or "[::]" for every address')
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif not _is_domain(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port)


# --- kinds: how a value is written, checked and converted -----------------------


def _toml(value: object) -> str:
    """A value as it would be written in TOML, for messages and the reference."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return f"{value}"  # dates and times


def _got(value: object) -> str:
    shown = _toml(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


class _Invalid(Exception):
    """A value does not fit its kind: a message, or (array item, message) pairs."""

    def __init__(self, *problems: str | tuple[int | None, str]) -> None:
        super().__init__(problems)
        self.problems = [p if isinstance(p, tuple) else (None, p) for p in problems]


class _Kind:
    """How one configuration value is written, checked and converted."""

    type_doc = "value"  # the type, as the reference shows it
    expected = "a value"  # completes "expected ..."

    def convert(self, value: object, base: Path | None) -> Any:
        """The typed value, else raise :class:`_Invalid`. ``base`` resolves relative
        paths (``None``: leave them relative, for the dataclasses' own defaults)."""
        raise NotImplementedError

    def from_text(self, text: str) -> object:
        """A command-line string as the value the file would hold."""
        return text

    def show_default(self, raw: object) -> str:
        return f"`{_toml(raw)}`"

    def reject(self, value: object) -> _Invalid:
        return _Invalid(f"expected {self.expected}, got {_got(value)}")


class _Str(_Kind):
    def __init__(
        self,
        check: Callable[[str], bool] | None = None,
        type_doc: str = "string",
        expected: str = "a string",
    ) -> None:
        self.check = check or (lambda value: True)
        self.type_doc, self.expected = type_doc, expected

    def convert(self, value: object, base: Path | None) -> str:
        if not isinstance(value, str) or not self.check(value):
            raise self.reject(value)
        return value


# Sub-address separators: characters of a local part's atext (RFC 5322 §3.2.3), and ".".
_DELIMITERS = "!#$%&'*+-/=?^_`{|}~."


class _Choice(_Kind):
    def __init__(self, *options: str) -> None:
        self.options = options
        self.type_doc = "one of " + ", ".join(f'`"{o}"`' for o in options)
        self.expected = "one of " + ", ".join(f'"{o}"' for o in options)

    def convert(self, value: object, base: Path | None) -> str:
        if not isinstance(value, str) or value.lower() not in self.options:
            raise self.reject(value)
        return value.lower()


class _Bool(_Kind):
    type_doc = "boolean"
    expected = "true or false"

    def convert(self, value: object, base: Path | None) -> bool:
        if not isinstance(value, bool):
            raise self.reject(value)
        return value

    def from_text(self, text: str) -> object:
        word = text.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        return False if word in ("false", "no", "off", "0") else text


class _Int(_Kind):
    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        self.type_doc = f"integer {bounds}"
        self.expected = f"an integer {bounds}"

    def convert(self, value: object, base: Path | None) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < self.lo
            or (self.hi is not None and value > self.hi)
        ):
            raise self.reject(value)
        return value

    def from_text(self, text: str) -> object:
        try:
            return int(text.strip())
        except ValueError:
            return text


def _in_units(raw: object, units: Sequence[tuple[int, str]]) -> str:
    """A default for the reference, with its value in a larger unit if it has one."""
    assert isinstance(raw, (int, float))
    for size, name in units:
        if raw >= size and raw % size == 0:
            return f"`{raw}` ({int(raw // size)} {name})"
    return f"`{raw}`"


class _Size(_Kind):
    """Bytes, as an integer or a string with a 1024-based unit (:func:`parse_size`)."""

    units_hint = 'a number of bytes, or with a unit: "512k", "50M", "1G"'

    def __init__(self, lo: int = 0, *, zero: bool = False) -> None:
        self.lo, self.zero = lo, zero
        if lo == 0:
            self.type_doc, self.expected = "size", f"a size ({self.units_hint})"
        elif zero:
            self.type_doc = f"size: 0, or >= {lo} bytes"
            self.expected = f"0 or a size >= {lo} bytes ({self.units_hint})"
        else:
            self.type_doc = f"size >= {lo} bytes"
            self.expected = f"a size >= {lo} bytes ({self.units_hint})"

    def convert(self, value: object, base: Path | None) -> int:
        try:
            size = parse_size(value)  # type: ignore[arg-type]
        except ValueError:
            raise self.reject(value) from None
        if size < self.lo and not (self.zero and size == 0):
            raise self.reject(value)
        return size

    def show_default(self, raw: object) -> str:
        return _in_units(raw, [(1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")])


class _Duration(_Kind):
    """Seconds, as a number or a string with units (:func:`parse_duration`)."""

    def __init__(self, lo: float = 0) -> None:
        self.lo = lo
        self.type_doc = f"duration >= {lo:g} s"
        self.expected = (
            f'a duration >= {lo:g} s (seconds, or with a unit: "300s", "5m", "1h", "2d")'
        )

    def convert(self, value: object, base: Path | None) -> float:
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except ValueError:
            raise self.reject(value) from None
        if seconds < self.lo:
            raise self.reject(value)
        return seconds

    def show_default(self, raw: object) -> str:
        return _in_units(raw, [(86400, "days"), (3600, "hours"), (60, "minutes")])


class _Path(_Kind):
    """A file system path; relative ones are resolved against the base directory."""

    def __init__(self, *, optional: bool = False, must_exist: bool = False) -> None:
        self.optional, self.must_exist = optional, must_exist
        self.type_doc = 'path, or `""`' if optional else "path"
        self.expected = 'a path or ""' if optional else "a path"

    def convert(self, value: object, base: Path | None) -> Path | None:
        if not isinstance(value, str) or (value == "" and not self.optional):
            raise self.reject(value)
        if value == "":
            return None
        try:
            path = Path(value).expanduser()
            if base is None:
                return path
            path = (base / path).resolve()
        except (ValueError, OSError, RuntimeError) as e:
            raise _Invalid(f"not a usable path: {e}") from None
        if self.must_exist and not path.is_file():
            raise _Invalid(f"no such file: {path}" if not path.exists() else f"not a file: {path}")
        return path


class _Listen(_Kind):
    type_doc = 'array of `"host:port"` strings'
    expected = 'an array of "host:port" strings'

    def convert(self, value: object, base: Path | None) -> tuple[tuple[str, int], ...]:
        if not isinstance(value, list):
            raise self.reject(value)
        addresses: list[tuple[str, int]] = []
        problems: list[tuple[int | None, str]] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                problems.append((i, f'expected a "host:port" string, got {_got(item)}'))
                continue
            try:
                address = parse_listen_address(item)
            except ValueError as e:
                problems.append((i, f"{_got(item)}: {e}"))
                continue
            if address in addresses:
                problems.append((i, f"{_got(item)} is listed twice"))
            addresses.append(address)
        if problems:
            raise _Invalid(*problems)
        return tuple(addresses)

    def from_text(self, text: str) -> object:
        """A TOML array, or comma-separated addresses: ``0.0.0.0:25,[::]:25``."""
        if text.lstrip().startswith("["):
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                pass
            else:
                if isinstance(value, list):
                    return value
        return [part.strip() for part in text.split(",") if part.strip()]


class _Networks(_Kind):
    """CIDR prefixes (``ipaddress.ip_network``, host bits must be zero)."""

    type_doc = 'array of CIDR prefixes (`"192.0.2.0/24"`, `"2001:db8::/32"`)'
    expected = 'an array of CIDR prefixes such as "192.0.2.0/24" or "2001:db8::/32"'

    def convert(self, value: object, base: Path | None) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise self.reject(value)
        networks: list[Any] = []
        problems: list[tuple[int | None, str]] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                problems.append((i, f'expected a CIDR prefix string, got {_got(item)}'))
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=True))
            except ValueError as e:
                problems.append((i, f"{_got(item)} is not a CIDR prefix: {e}"))
        if problems:
            raise _Invalid(*problems)
        return tuple(networks)

    def from_text(self, text: str) -> object:
        """A TOML array, or comma-separated prefixes: ``127.0.0.0/8,::1/128``."""
        return _Listen().from_text(text)


def _option(kind: _Kind, default: object, doc: str, *, default_doc: str = "") -> Any:
    """A schema entry: a dataclass field whose metadata carries its kind and description.

    ``default`` is written as in the file (a callable computes it at load time);
    ``doc`` is Markdown for the reference.
    """
    meta = {"kind": kind, "default": default, "doc": doc, "default_doc": default_doc}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=kind.convert(default, None), metadata=meta)


# --- the schema ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """The server as a whole: its name, where it keeps its state, its processes."""

    hostname: str = _option(
        _Str(
            _is_domain,
            "domain name",
            'a domain name such as "mail.example.com" (IDNs in their xn-- form)',
        ),
        default_hostname,
        "The name Pillarbox gives itself in the SMTP greeting, the EHLO reply and the "
        "`Received:` headers it adds (RFC 5321 §4.1.1.1, §4.4). On the Internet: the name "
        "your MX record points to, whose address has a matching PTR record.",
        default_doc="the machine's fully qualified domain name if it contains a dot, "
        'else `"localhost"`',
    )
    data_dir: Path = _option(
        _Path(),
        "./pillarbox-data",
        "All state: the database (domains, accounts, aliases, mailboxes, the queue), "
        "the spool and message blobs, and the generated TLS certificate. Made at the "
        "first start; with a configuration file only inside a directory that exists "
        "(a typo further up the path is an error, not a new empty server).",
    )
    workers: int = _option(
        _Int(0, 256),
        0,
        "Protocol worker processes sharing the listening sockets. `0`: one per CPU.",
    )
    user: str = _option(
        _Str(),
        "",
        "When started as root, drop privileges to this user once the ports are bound; "
        "started as anyone else, that must be this user (only root can change users). "
        '`""`: stay the user Pillarbox was started as.',
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """What Pillarbox logs, and where."""

    format: str = _option(
        _Choice("text", "json"),
        "text",
        '`"text"`: one line per event, for people; `"json"`: one JSON object per line, '
        "for log collectors.",
    )
    level: str = _option(
        _Choice("debug", "info", "warning", "error"),
        "info",
        "The least severe level that is logged.",
    )
    file: Path | None = _option(
        _Path(optional=True),
        "",
        'A file to append the log to. `""`: standard error.',
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SMTPConfig:
    """Receiving mail over SMTP (RFC 5321), as the MX of the local domains.

    The limits protect the server from clients that are broken or hostile; where
    RFC 5321 sets a minimum, the description says so.
    """

    listen: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2525"],
        'Addresses to accept SMTP connections on, as `"host:port"`; IPv6 addresses in '
        'brackets (`"[::1]:2525"`); `"0.0.0.0:25"` and `"[::]:25"` for every address. '
        "Port 25 is the standard one for MX. An empty array: no SMTP listener.",
    )
    max_message_size: int = _option(
        _Size(),
        52428800,
        "The largest message accepted, advertised with the SIZE extension (RFC 1870). "
        "`0`: no limit.",
    )
    max_recipients: int = _option(
        _Int(1),
        1000,
        "Recipients per message; past it, RCPT TO is answered 452 4.5.3 "
        "(RFC 5321 §4.5.3.1.8 asks for at least 100).",
    )
    max_command_line: int = _option(
        _Size(512),
        2048,
        "The longest command line, including CRLF (RFC 5321 §4.5.3.1.4: at least 512).",
    )
    max_text_line: int = _option(
        _Size(1000, zero=True),
        1000,
        "The longest line of message text, including CRLF (RFC 5321 §4.5.3.1.6: 1000). "
        "`0`: no limit.",
    )
    max_errors: int = _option(
        _Int(1),
        20,
        "Protocol errors in one session before Pillarbox answers 421 4.7.0 and disconnects.",
    )
    max_received_headers: int = _option(
        _Int(1),
        50,
        "A message with more `Received:` headers than this is taken to be in a mail loop "
        "and refused with 554 5.4.6 (RFC 5321 §6.3).",
    )
    command_timeout: float = _option(
        _Duration(1),
        300,
        "How long to wait for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).",
    )
    data_timeout: float = _option(
        _Duration(1),
        600,
        "How long to wait for more message text inside DATA or BDAT. RFC 5321 gives the "
        "server no figure for this; 10 minutes is generous to slow senders, and more than "
        "the 5 minutes of §4.5.3.2.7.",
    )
    max_connections: int = _option(
        _Int(1),
        1000,
        "SMTP connections open at once, for the whole server.",
    )
    max_connections_per_ip: int = _option(
        _Int(1),
        50,
        "SMTP connections open at once from one client IP address.",
    )
    starttls: bool = _option(
        _Bool(),
        True,
        "Offer STARTTLS (RFC 3207). Without it, mail arrives in clear text.",
    )
    trusted_networks: tuple[Any, ...] = _option(
        _Networks(),
        [],
        "Clients allowed to relay (send to other domains) without logging in, as CIDR "
        'prefixes: `["192.0.2.0/24", "2001:db8::/32"]`, or on the command line '
        "`-o smtp.trusted_networks=127.0.0.0/8`. Empty by default, so not even loopback "
        "is trusted unless listed. Everyone else may relay only after SMTP AUTH; an "
        "unauthenticated client outside these networks may only send to local recipients.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmissionConfig:
    """Accepting mail from the server's own users (RFC 6409 submission).

    Submission is SMTP with a login first: MAIL without AUTH is answered
    530 5.7.0. AUTH (RFC 4954) offers PLAIN, LOGIN and SCRAM-SHA-256 only under
    TLS (or from loopback with `auth.allow_plaintext_on_loopback`). A user may
    send only as their own addresses: their account, its sub-addresses, the
    aliases that lead to it and the addresses granted with
    `pillarbox user send-as`; anything else, as envelope sender or in `From:`,
    is refused with 550 5.7.1. A missing `Date:` or `Message-ID:` is added
    (RFC 6409 §8). The limits and time-outs are those of `[smtp]`.
    """

    listen: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2587"],
        "Addresses for submission with STARTTLS (RFC 6409); the standard port is 587. "
        "An empty array: none.",
    )
    listen_tls: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2465"],
        "Addresses for submission over implicit TLS (RFC 8314 §3.3); the standard port "
        "is 465. An empty array: none.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """The certificate Pillarbox presents for TLS.

    With neither file set, a self-signed certificate for `server.hostname` is
    generated in `server.data_dir`: enough for development and for opportunistic
    STARTTLS between servers, but mail clients will warn about it.

    A renewed certificate is taken without a restart: SIGHUP to the server
    (`kill -HUP $(cat DATA_DIR/lock)` from a renewal's deploy hook: the lock
    file holds the server's PID; or `systemctl reload` with
    `ExecReload=kill -HUP $MAINPID` in its unit) has every worker read
    both files again for new connections. They are read then as
    `server.user`, so that user must be able to read them; if the new pair does
    not load, the error is logged and the certificate read before stays.
    """

    certificate: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        "PEM file with the certificate chain, the server's own certificate first. "
        '`""`: the generated self-signed certificate. Set both `certificate` and '
        "`private_key`, or neither; the file must exist.",
    )
    private_key: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        "PEM file with the private key of `certificate`. Set both or neither; the file must exist.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """Delivery: to local mailboxes, and to other mail servers over SMTP."""

    recipient_delimiter: str = _option(
        _Str(
            lambda value: all(c in _DELIMITERS for c in value),
            "string of separator characters",
            f'"" or characters from {_DELIMITERS}',
        ),
        "+",
        'Sub-addressing: each character separates a user from a detail, so with `"+"` '
        "mail to `alice+lists@example.com` is delivered to `alice@example.com`. Several "
        'characters (`"+-"`) are several separators; `""` turns sub-addressing off.',
    )
    # Remote delivery over SMTP (pillarbox.deliver.remote).
    remote_port: int = _option(
        _Int(1, 65535),
        25,
        "The port of other mail servers: 25 for SMTP between servers; another value is for tests.",
    )
    tls_default: str = _option(
        _Choice("none", "may", "encrypt", "verify"),
        "may",
        'TLS towards other mail servers: `"may"` uses STARTTLS whenever offered and takes '
        'any certificate (RFC 7435); `"encrypt"` requires TLS; `"verify"` requires TLS with '
        'a certificate valid for the MX host name; `"none"` never uses TLS.',
    )
    tls_policy: str = _option(
        _Str(
            lambda value: all(
                re.fullmatch(r"[A-Za-z0-9.-]+=(none|may|encrypt|verify)", item)
                for item in value.replace(",", " ").split()
            ),
            "string of domain=policy",
            'a string of "domain=policy" words, e.g. "example.com=verify other.net=encrypt"',
        ),
        "",
        'TLS policy per destination domain, overriding `tls_default` and the domain\'s '
        'MTA-STS policy: words such as `"example.com=verify bank.example=encrypt"`.',
    )
    tls_ca_file: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        'PEM file of the certificate authorities trusted by the `"verify"` policy; `""`: '
        "the system's.",
    )
    dane_resolver: str = _option(
        _Str(
            lambda value: value == "" or _loopback_nameserver(value),
            "nameserver address",
            'a loopback address such as "127.0.0.1" or "127.0.0.1:5353" (its AD bit is '
            'trusted only on this machine), or ""',
        ),
        "",
        "DANE for SMTP (RFC 7672): the address of a DNSSEC-validating resolver on this "
        "machine (unbound, for example), whose AD bit is trusted. Then MX routing asks it "
        "too, and a destination whose MX hosts publish TLSA records gets its mail only "
        "over TLS with a certificate that matches one of them; a mismatch is deferred "
        'saying why. DANE comes before MTA-STS (RFC 8461 §2). `""`: no DANE.',
    )
    mta_sts: bool = _option(
        _Bool(),
        True,
        "Apply the MTA-STS policies of receiving domains (RFC 8461): a domain that "
        "publishes an `enforce` policy gets its mail only from its listed MX hosts over "
        "TLS with a certificate valid for the MX host name, else the message is deferred, "
        "saying why. Policies are cached in `server.data_dir` (`mta-sts.sqlite`). A domain "
        "named in `tls_policy` is delivered by that policy instead, without MTA-STS; mail "
        "through `relay_host` is not subject to it.",
    )
    mta_sts_ca_file: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        "PEM file of the certificate authorities trusted for the HTTPS certificates of "
        '`mta-sts.` policy hosts; `""`: the system\'s. (The MX certificates are checked '
        "against `tls_ca_file`.)",
    )
    mta_sts_timeout: float = _option(
        _Duration(1),
        30.0,
        "Time to fetch one MTA-STS policy over HTTPS (RFC 8461 §3.3).",
    )
    relay_host: str = _option(
        _Str(
            lambda value: value == ""
            or re.fullmatch(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}", value) is not None,
            "string",
            'a "host:port" string, or ""',
        ),
        "",
        'A smarthost, `"host:port"`, that takes all outgoing mail instead of the MX '
        'hosts (for servers whose port 25 is blocked, usually port 587 or 465). `""`: none.',
    )
    relay_implicit_tls: bool = _option(
        _Bool(), False, "TLS from the first byte with the relay host (RFC 8314), as on port 465."
    )
    relay_tls: str = _option(
        _Choice("none", "may", "encrypt", "verify"),
        "encrypt",
        "TLS policy with the relay host (values as for `tls_default`); credentials are "
        "only ever sent under TLS.",
    )
    relay_username: str = _option(
        _Str(), "", 'The SMTP AUTH user at the relay host (RFC 4954); `""`: no AUTH.'
    )
    relay_password_file: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        "A file holding the relay host password on its first line.",
    )
    processes: int = _option(
        _Int(-1, 256),
        0,
        "Delivery agent processes that speak SMTP to other mail servers, as Postfix's "
        "smtp(8) clients do, so remote delivery uses more than the queue manager's one "
        "core. `0`: one per CPU; `-1`: none, the queue manager delivers by itself.",
    )
    connections_per_destination: int = _option(
        _Int(1, 1000), 20, "The most connections in use to one destination domain at once."
    )
    connections_total: int = _option(
        _Int(1, 10000), 100, "The most outgoing SMTP connections in use at once."
    )
    connection_idle_seconds: float = _option(
        _Duration(),
        5.0,
        "How long an idle connection to a destination is kept for the next message to "
        "it. `0`: never reused.",
    )
    connect_timeout: float = _option(
        _Duration(1), 30.0, "Time to establish a TCP connection to another mail server."
    )
    command_timeout: float = _option(
        _Duration(1),
        300.0,
        "Time for the greeting and each reply to EHLO, MAIL and RCPT (RFC 5321 §4.5.3.2).",
    )
    data_init_timeout: float = _option(
        _Duration(1), 120.0, "Time for the reply to DATA (RFC 5321 §4.5.3.2.4)."
    )
    data_block_timeout: float = _option(
        _Duration(1), 180.0, "Time for each block of content to be sent (RFC 5321 §4.5.3.2.5)."
    )
    data_end_timeout: float = _option(
        _Duration(1),
        600.0,
        "Time for the reply to the end of the content (RFC 5321 §4.5.3.2.6).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueConfig:
    """The queue: messages accepted and not yet delivered."""

    min_free_space: int = _option(
        _Size(),
        104857600,
        "When the file system holding the spool has less free space than this, "
        "MAIL FROM is answered 452 4.3.1 and senders try again later. `0`: no check.",
    )
    delivery_batch: int = _option(
        _Int(1, 100000),
        500,
        "The most queue entries the queue manager takes into one delivery transaction. "
        "Larger batches cost fewer commits under load.",
    )
    retry_first: float = _option(
        _Duration(1),
        300,
        "After a transient failure (a 4xx reply, no answer), the first retry comes this "
        "long after the try; each wait after that is twice the one before (Postfix's "
        "`minimal_backoff_time`).",
    )
    retry_max: float = _option(
        _Duration(1),
        3600,
        "The longest wait between two tries of a deferred message (Postfix's "
        "`maximal_backoff_time`); at least `retry_first`.",
    )
    lifetime: float = _option(
        _Duration(60),
        432000,
        "A message not delivered this long after it arrived is returned to its sender "
        "with a failure report (RFC 3464), quoting the last reply (Postfix's "
        "`maximal_queue_lifetime`; RFC 5321 §4.5.4.1 asks for 4-5 days).",
    )
    delay_warning: float = _option(
        _Duration(0),
        14400,
        "A sender whose message is still not delivered this long after it arrived gets "
        "one delay report per recipient, unless its NOTIFY excludes DELAY (RFC 3461 "
        "§4.1). `0`: no delay reports.",
    )
    active_limit: int = _option(
        _Int(10, 10000000),
        10000,
        "The most deferred entries the queue manager holds in memory while they wait for, "
        "or go through, remote delivery (Postfix's `qmgr_message_active_limit`): memory "
        "stays bounded however long the queue. Fresh mail does not wait for this window.",
    )
    concurrency: int = _option(
        _Int(1, 100000),
        100,
        "The most remote delivery attempts in progress at once (each is one message to "
        "one destination domain).",
    )
    destination_concurrency: int = _option(
        _Int(1, 10000),
        20,
        "The most remote delivery attempts in progress at once to one destination domain, "
        "so that a slow destination never holds back mail to the others (Postfix's "
        "`default_destination_concurrency_limit`).",
    )
    postmaster: str = _option(
        _Str(lambda v: v == "" or ("@" in v and " " not in v), "address",
             'an address such as "postmaster@example.com", or ""'),
        "",
        "Where a failure report goes that cannot itself be delivered (a bounce with the "
        "null sender is never bounced). `\"\"`: the postmaster of the server's hostname "
        "if that is a local domain, else of the first local domain that has one.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IMAPConfig:
    """Reading mail over IMAP (RFC 9051 IMAP4rev2, RFC 3501 IMAP4rev1)."""

    listen: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2143"],
        "Addresses for IMAP with STARTTLS (RFC 9051 §6.2.1), as `\"host:port\"`; the "
        "standard port is 143. An empty array: none.",
    )
    listen_tls: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2993"],
        "Addresses for IMAP over implicit TLS (RFC 8314); the standard port is 993. "
        "An empty array: none.",
    )
    max_line: int = _option(
        _Size(1024),
        65536,
        "The longest command line a client may send, literals not counted "
        "(RFC 7162 §4 asks for at least 8192 octets).",
    )
    max_literal: int = _option(
        _Size(1024),
        52428800,
        "The largest message APPEND takes (advertised as APPENDLIMIT, RFC 7889). A larger "
        "one is refused before it is read. Literals in other commands are bounded by "
        "`max_line`.",
    )
    idle_timeout: float = _option(
        _Duration(60),
        1800,
        "How long a session may stay silent, also in IDLE, before it is logged out "
        "(RFC 9051 §5.4: at least 30 minutes).",
    )
    max_connections: int = _option(
        _Int(1),
        20000,
        "IMAP connections open at once, for the whole server.",
    )
    max_connections_per_ip: int = _option(
        _Int(1),
        100,
        "IMAP connections open at once from one client IP address.",
    )
    max_connections_per_account: int = _option(
        _Int(1),
        50,
        "IMAP sessions logged in at once to one account; past it, a login is answered "
        "`NO [LIMIT]`.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class POP3Config:
    """Reading mail over POP3 (RFC 1939), from the INBOX."""

    listen: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2110"],
        "Addresses for POP3 with STLS (RFC 2595); the standard port is 110. An empty "
        "array: none.",
    )
    listen_tls: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        ["127.0.0.1:2995"],
        "Addresses for POP3 over implicit TLS (RFC 8314); the standard port is 995. "
        "An empty array: none.",
    )
    idle_timeout: float = _option(
        _Duration(60),
        600,
        "How long a session may stay silent before it is closed "
        "(RFC 1939 §3: at least 10 minutes).",
    )
    max_connections_per_ip: int = _option(
        _Int(1),
        50,
        "POP3 connections open at once from one client IP address.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """Logging in: passwords and SASL, shared by IMAP, POP3 and submission."""

    allow_plaintext_on_loopback: bool = _option(
        _Bool(),
        False,
        "Allow passwords in clear text (LOGIN, USER/PASS, AUTH PLAIN, AUTH LOGIN) without "
        "TLS when the client connects from a loopback address. For development only: "
        "`pillarbox serve` without a configuration file turns it on; in production, "
        "leave it off, so that passwords only ever travel encrypted.",
    )
    hash_workers: int = _option(
        _Int(1, 64),
        2,
        "Password verifications (argon2id, 64 MiB each) that run at once in one "
        "process; more logins wait their turn, so a burst costs time, not memory.",
    )
    cache_ttl: float = _option(
        _Duration(0),
        300,
        "How long a verified password is remembered, so that a client that logs in "
        "again and again is not hashed each time. Only a keyed digest is kept in "
        "memory, and a changed password is never taken from the cache. `0`: no cache.",
    )
    max_failures_per_ip: int = _option(
        _Int(1),
        10,
        "Failed logins from one client address within `failure_window` before further "
        "attempts from it are refused without checking.",
    )
    max_failures_per_account: int = _option(
        _Int(1),
        20,
        "Failed logins to one account within `failure_window` before further attempts "
        "on it are refused without checking (from any address but loopback).",
    )
    failure_window: float = _option(
        _Duration(1),
        600,
        "The period over which failed logins are counted.",
    )
    failure_delay: float = _option(
        _Duration(0),
        2,
        "How long a failed login waits before it is answered; slows down guessing.",
    )


def _loopback_nameserver(value: str) -> bool:
    """``ip``, ``ip:port`` or ``[ipv6]:port`` on loopback (RFC 6698 §4.1: trust the AD
    bit only over a secure path, here one that never leaves the machine)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})", value)
    address, port = (m[1] or m[3], int(m[2] or m[4])) if m else (value, 53)
    try:
        return ipaddress.ip_address(address).is_loopback and 0 < port < 65536
    except ValueError:
        return False


class _Nameservers(_Kind):
    type_doc = "array of IP address strings"
    expected = ('an array of IP addresses, such as ["192.0.2.53", "2001:db8::53"], '
                'each with an optional port: "127.0.0.1:5353", "[::1]:5353"')

    def convert(self, value: object, base: Path | None) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.reject(value)
        servers: list[str] = []
        problems: list[tuple[int | None, str]] = []
        for i, item in enumerate(value):
            try:
                if not isinstance(item, str):
                    raise ValueError(item)
                m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})",
                                 item)
                address, port = (m[1] or m[3], int(m[2] or m[4])) if m else (item, 53)
                text = str(ipaddress.ip_address(address))
                if not 0 < port < 65536:
                    raise ValueError(item)
                servers.append(text if port == 53 and not m else item)
            except ValueError:
                problems.append((i, f"expected an IP address or IP:port, got {_got(item)}"))
        if problems:
            raise _Invalid(*problems)
        return tuple(servers)

    def from_text(self, text: str) -> object:
        """A TOML array, or comma-separated addresses: ``192.0.2.53,2001:db8::53``."""
        return _Listen().from_text(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSConfig:
    """DNS lookups for remote delivery: MX records and the addresses of mail
    exchangers (RFC 5321 §5.1). Answers are cached in memory for their TTL."""

    nameservers: tuple[str, ...] = _option(
        _Nameservers(),
        [],
        "The recursive nameservers to ask, by IP address. `[]`: those of "
        "`/etc/resolv.conf`.",
    )
    timeout: float = _option(
        _Duration(1),
        10,
        "How long one lookup may take, over all tries and nameservers; a lookup that "
        "gets no answer in time defers the delivery (`451 4.4.3`).",
    )
    ipv6: bool = _option(
        _Bool(),
        True,
        "Deliver to the IPv6 addresses (AAAA records) of mail exchangers.",
    )
    ipv4: bool = _option(
        _Bool(),
        True,
        "Deliver to the IPv4 addresses (A records) of mail exchangers. At least one of "
        "`ipv6` and `ipv4` must be true.",
    )
    prefer: str = _option(
        _Choice("ipv6", "ipv4"),
        "ipv6",
        "Which addresses of a mail exchanger are tried first when it has both.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """Who sent it: SPF, DKIM and DMARC checks of mail received on the SMTP port
    (not of authenticated submission), recorded in one `Authentication-Results:`
    header field (RFC 8601)."""

    authserv_id: str = _option(
        _Str(lambda value: value == "" or re.fullmatch(r"[A-Za-z0-9.-]+", value) is not None,
             "host name", 'a host name, or ""'),
        "",
        "The name in our `Authentication-Results:` fields; incoming fields that claim "
        'it are removed (RFC 8601 §5). `""`: `server.hostname`.',
    )
    spf: str = _option(
        _Choice("off", "tag", "reject"),
        "tag",
        'SPF (RFC 7208) of the MAIL FROM (or HELO) domain: `"tag"` records the result '
        'for DMARC and the header; `"reject"` also refuses a `fail` with '
        '`550 5.7.23` (RFC 7372); `"off"` does not look.',
    )
    spf_defer_temperror: bool = _option(
        _Bool(),
        False,
        "Answer `451 4.7.24` when the sender's DNS does not answer SPF lookups "
        "(otherwise the message is accepted and the temperror recorded).",
    )
    dkim: bool = _option(
        _Bool(), True, "Verify DKIM signatures (RFC 6376, RFC 8463) of incoming mail."
    )
    dkim_max_size: int = _option(
        _Size(),
        16777216,
        "Messages larger than this are not DKIM-verified (their signatures are "
        "recorded as `neutral`): verification reads the message whole.",
    )
    dmarc: str = _option(
        _Choice("off", "monitor", "quarantine-only", "enforce"),
        "enforce",
        'DMARC (RFC 7489): `"enforce"` refuses mail whose author domain says reject '
        '(`550 5.7.1` at DATA) and quarantines what it says to quarantine; '
        '`"quarantine-only"` quarantines both; `"monitor"` only records; '
        '`"off"` does not look.',
    )
    dmarc_domains: str = _option(
        _Str(
            lambda value: all(
                re.fullmatch(r"[A-Za-z0-9.-]+=(monitor|quarantine-only|enforce)", item)
                for item in value.replace(",", " ").split()
            ),
            "string of domain=mode",
            'a string of "domain=mode" words, e.g. "lists.example.com=monitor"',
        ),
        "",
        "DMARC per receiving domain, overriding `dmarc`: words such as "
        '`"lists.example.com=monitor"`.',
    )
    public_suffix_list: Path | None = _option(
        _Path(optional=True, must_exist=True),
        "",
        "The Public Suffix List (publicsuffix.org) that finds organisational domains "
        'for DMARC; `""`: the copy shipped with Pillarbox. Point it at a file kept '
        "current (Debian's `publicsuffix` package: "
        "`/usr/share/publicsuffix/public_suffix_list.dat`).",
    )
    iprev: bool = _option(
        _Bool(),
        True,
        "Look up each client's verified reverse name (forward-confirmed reverse DNS, "
        "RFC 8601 §2.7.3): it goes into the `Received:` line and, for mail from other "
        "servers, into `Authentication-Results:` as `iprev=`.",
    )
    helo: str = _option(
        _Choice("off", "tag"),
        "tag",
        'Check the EHLO/HELO name of other servers: syntax, a claim to be this server, '
        'an address literal that is not the client\'s, a name that does not exist. `"tag"` '
        'records what was found (and refuses the outcomes of `helo_reject`); `"off"` '
        "does not look.",
    )
    helo_reject: str = _option(
        _Str(
            lambda value: all(
                item in ("syntax", "not-fqdn", "ours", "literal-mismatch", "nxdomain",
                         "no-address")
                for item in value.replace(",", " ").split()
            ),
            "string of HELO outcomes",
            'a string of HELO outcomes: syntax, not-fqdn, ours, literal-mismatch, nxdomain, '
            "no-address",
        ),
        "",
        'HELO outcomes refused with `550 5.7.1` at the end of DATA, e.g. `"ours"` for '
        "clients that call themselves by this server's name (RFC 5321 §4.1.4 forbids "
        "refusing mail only because the name does not match the address).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DKIMConfig:
    """DKIM signing of our own mail (RFC 6376, RFC 8463): every message submitted by
    an authenticated user is signed with the active keys of its `From:` domain,
    usually RSA-2048 and Ed25519 (two `DKIM-Signature:` fields). Keys are made
    and switched with `pillarbox dkim keygen`, `rotate` and `activate`; a domain
    without active keys is not signed. A key that cannot be read is logged as an
    error and left out (the mail goes unsigned rather than refused)."""

    sign: bool = _option(
        _Bool(),
        True,
        "Sign the mail of authenticated users (and, with `sign_trusted`, of trusted "
        "networks) whose `From:` domain has active keys; `false`: sign nothing.",
    )
    sign_trusted: bool = _option(
        _Bool(),
        True,
        "Also sign mail relayed for clients of `smtp.trusted_networks` (our own senders, "
        "such as a web application).",
    )
    overlap: float = _option(
        _Duration(0),
        604800,
        "How long the DNS record of a retired key must stay published after "
        "`pillarbox dkim activate` replaced it, so that mail it signed still verifies "
        "while queued or forwarded; `pillarbox dkim list` shows the date.",
    )


def _is_mx_pattern(value: str) -> bool:
    return _is_domain(value[2:] if value.startswith("*.") else value)


class _Patterns(_Kind):
    type_doc = 'array of host names or `"*.domain"` patterns'
    expected = 'an array of host names or "*.domain" patterns, such as ["mx.example.com"]'

    def convert(self, value: object, base: Path | None) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.reject(value)
        problems: list[tuple[int | None, str]] = [
            (i, f"expected a host name or *.domain pattern, got {_got(item)}")
            for i, item in enumerate(value)
            if not isinstance(item, str) or not _is_mx_pattern(item)]
        if problems:
            raise _Invalid(*problems)
        return tuple(str(v).lower() for v in value)

    def from_text(self, text: str) -> object:
        """A TOML array, or comma-separated patterns: ``mx1.example.com,*.example.net``."""
        return _Listen().from_text(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class MTASTSConfig:
    """Our own MTA-STS policy (RFC 8461), served over HTTPS for every local domain.

    A request for `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, where DOMAIN
    is a local domain, gets the policy below; anything else gets 404. The
    certificate is that of `[tls]`, so it must also be valid for `mta-sts.DOMAIN`
    of every local domain. Each domain must also publish the TXT record
    `_mta-sts.DOMAIN` with the policy's id (`pillarbox dns check` shows it); the id
    changes whenever the policy does.
    """

    listen: tuple[tuple[str, int], ...] = _option(
        _Listen(),
        [],
        'Addresses for the HTTPS policy server, as `"host:port"`; on the Internet it must '
        'be port 443 (`["0.0.0.0:443", "[::]:443"]`). An empty array: not served.',
    )
    mode: str = _option(
        _Choice("enforce", "testing", "none"),
        "testing",
        '`"testing"`: senders report TLS failures but deliver anyway, the way to start; '
        '`"enforce"`: senders that honour MTA-STS deliver only over TLS with a valid '
        'certificate to the MX hosts below; `"none"`: withdraws a policy (RFC 8461 §8.3).',
    )
    max_age: float = _option(
        _Duration(1),
        604800,
        "How long senders may cache the policy (RFC 8461 §3.2: at most 31557600 s, "
        "a year; a larger value is served as that).",
    )
    mx: tuple[str, ...] = _option(
        _Patterns(),
        [],
        'The MX host patterns of the policy (`"mx.example.com"`, `"*.example.net"`, '
        "RFC 8461 §4.1). `[]`: `server.hostname` alone.",
    )


# A mailbox (RFC 5321 §4.1.2) without quoting: a dot-atom local part (RFC 5322 §3.2.3).
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _is_address(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at) and _LOCAL_PART.fullmatch(local) is not None and _is_domain(domain)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportsConfig:
    """The aggregate reports Pillarbox sends once a day, shortly after 00:00 UTC, for
    the day before (and `pillarbox reports send` for any of the last 7 days): DMARC
    aggregate reports (RFC 7489 §7.2) to the `rua` addresses of the author domains
    whose mail was checked, and TLS-RPT reports (RFC 8460) on our outbound TLS to the
    recipient domains that publish a `_smtp._tls` record. Reports are DKIM-signed
    with the active keys of the sender's domain (else its organisational domain)
    when `dkim.sign` is on. Switched off, a kind is not sent; its counts are still
    recorded and kept 7 days, so that it can be switched on again and sent with
    `pillarbox reports send --day`."""

    dmarc: bool = _option(
        _Bool(),
        True,
        "Send DMARC aggregate reports (RFC 7489 §7.2); they need `policy.dmarc` other "
        'than `"off"`, which records what they report.',
    )
    tlsrpt: bool = _option(
        _Bool(),
        True,
        "Send TLS-RPT reports (RFC 8460) on the TLS of our outbound deliveries.",
    )
    sender: str = _option(
        _Str(lambda value: value == "" or _is_address(value), "address",
             'an address such as "reports@example.com", or ""'),
        "",
        "The reverse path and `From:` of the reports (each recipient gets "
        "`NOTIFY=NEVER`: a report that cannot be delivered makes no bounce). `\"\"`: "
        "`noreply-dmarc@HOST` and `noreply-tlsrpt@HOST`, HOST being `server.hostname`.",
    )
    contact: str = _option(
        _Str(lambda value: value == "" or _is_address(value), "address",
             'an address such as "postmaster@example.com", or ""'),
        "",
        "The contact written in the reports (`email` of the DMARC report's metadata, "
        "`contact-info` of TLS-RPT), where receivers write about them. `\"\"`: "
        "`postmaster@HOST`, HOST being `server.hostname`.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; built by :func:`load_config`, passed to what needs it."""

    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)

    @property
    def workers_effective(self) -> int:
        """``server.workers``, with 0 resolved to the number of CPUs."""
        return self.server.workers or os.cpu_count() or 1

    @property
    def delivery_agents(self) -> int:
        """``delivery.processes``, with 0 resolved to the number of CPUs, -1 to none."""
        if self.delivery.processes < 0:
            return 0
        return self.delivery.processes or os.cpu_count() or 1


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


# Every option, by dotted key, in declaration order.
_OPTIONS: dict[str, Field[Any]] = {
    f"{section}.{f.name}": f for section, cls in _SECTIONS.items() for f in fields(cls)
}


# --- locating keys in the raw text ----------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\r\n#]*")


class _Locator:
    """Maps dotted keys to 1-based line numbers in the text of a TOML document.

    Knows table headers (``[a.b]``, ``[[a.b]]``), ``key = value`` lines, dotted
    and quoted keys, and keys of inline tables; skips strings (multi-line ones
    too), arrays and comments. Array items are located as ``key[0]``, ``key[1]``.
    It runs only on text that tomllib has accepted, so it need not diagnose
    anything; on the unexpected it stops and knows less.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._i = 0
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._lines: dict[str, int] = {}
        try:
            self._document()
        except IndexError:  # pragma: no cover - defensive; tomllib accepted the text
            pass

    def line(self, key: str) -> int | None:
        """The line of ``key``, else of its nearest enclosing key, else None."""
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[: key.rindex("[")] if key.endswith("]") else key.rpartition(".")[0]
        return None

    # The scanner. ``_i`` is the position in the text.

    def _here(self) -> int:
        return bisect_right(self._starts, self._i)

    def _peek(self) -> str:
        return self._text[self._i : self._i + 1]

    def _record(self, keys: Sequence[str], line: int) -> None:
        for n in range(1, len(keys) + 1):
            self._lines.setdefault(".".join(keys[:n]), line)

    def _skip(self, newlines: bool) -> None:
        """Skip blanks and comments, and line ends too if ``newlines``."""
        text, n = self._text, len(self._text)
        while self._i < n:
            c = text[self._i]
            if c in " \t" or (newlines and c in "\r\n"):
                self._i += 1
            elif c == "#":
                end = text.find("\n", self._i)
                self._i = n if end < 0 else end
            else:
                return

    def _document(self) -> None:
        table: tuple[str, ...] = ()
        while True:
            self._skip(newlines=True)
            if self._i >= len(self._text):
                return
            start, line = self._i, self._here()
            if self._peek() == "[":
                double = self._text.startswith("[[", self._i)
                self._i += 2 if double else 1
                table = self._key()
                self._record(table, line)
                self._skip(newlines=False)
                self._i += 2 if double else 1
            else:
                keys = table + self._key()
                self._record(keys, line)
                self._value(keys)
            if self._i == start:  # pragma: no cover - defensive
                self._i += 1

    def _key(self) -> tuple[str, ...]:
        """A dotted key, and the "=" after it if there is one."""
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c == '"':
                parts.append(self._basic_string())
            elif c == "'":
                parts.append(self._literal_string())
            else:
                m = _BARE_KEY.match(self._text, self._i)
                if m is None:
                    break
                parts.append(m[0])
                self._i = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                break
            self._i += 1
        if self._peek() == "=":
            self._i += 1
        return tuple(parts)

    def _basic_string(self) -> str:
        text, start = self._text, self._i + 1
        i = start
        while i < len(text) and text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        self._i = i + 1
        raw = text[start:i]
        try:
            return str(json.loads(f'"{raw}"'))
        except ValueError:
            return raw

    def _literal_string(self) -> str:
        end = self._text.find("'", self._i + 1)
        end = len(self._text) if end < 0 else end
        value = self._text[self._i + 1 : end]
        self._i = end + 1
        return value

    def _multiline_string(self, quote: str) -> None:
        text, i = self._text, self._i + 3
        while i < len(text) and not text.startswith(quote * 3, i):
            i += 2 if quote == '"' and text[i] == "\\" else 1
        i += 3
        while i < len(text) and text[i] == quote:  # up to two quotes may end the content
            i += 1
        self._i = i

    def _value(self, key: tuple[str, ...] | None) -> None:
        """Skip one value; record the keys of inline tables and lines of array items."""
        self._skip(newlines=False)
        text, c = self._text, self._peek()
        if text.startswith('"""', self._i) or text.startswith("'''", self._i):
            self._multiline_string(c)
        elif c == '"':
            self._basic_string()
        elif c == "'":
            self._literal_string()
        elif c in "[{":
            self._compound(key, "]" if c == "[" else "}")
        else:
            m = _SCALAR.match(text, self._i)
            self._i = m.end() if m else self._i + 1

    def _compound(self, key: tuple[str, ...] | None, close: str) -> None:
        """An array (``close`` is "]") or an inline table ("}"), from its opening bracket."""
        self._i += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self._peek() in (close, ""):
                self._i += 1
                return
            start, line, inner = self._i, self._here(), None
            if close == "}":
                keys = self._key()
                inner = key + keys if key is not None else None
            elif key:
                inner = key[:-1] + (f"{key[-1]}[{index}]",)
                index += 1
            if inner:
                self._record(inner, line)
            self._value(inner)
            self._skip(newlines=True)
            if self._peek() == "," or self._i == start:
                self._i += 1


# --- loading -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a value came from: the label errors start with, and how to find lines."""

    label: str
    locator: _Locator | None = None

    def problem(self, key: str, message: str, at: str = "") -> tuple[float, str]:
        """An error line about ``key`` (located by ``at``, or by the key itself),
        with the number it is sorted by: its line, those without one last."""
        line = self.locator.line(at or key) if self.locator else None
        where = f"{self.label}:{line}" if line else self.label
        return (line or math.inf), f"{where}: {key}: {message}"


_COMMAND_LINE = _Origin("command line")
_DEFAULT = _Origin("default")
_NO_OVERRIDES: Mapping[str, str] = MappingProxyType({})


def _unknown(key: str) -> str:
    """Say that ``key`` is unknown, and suggest what was probably meant (difflib)."""
    section, dot, name = key.partition(".")
    if dot and section in _SECTIONS:
        names = [f.name for f in fields(_SECTIONS[section])]
        close = [f"{section}.{m}" for m in difflib.get_close_matches(name, names, n=1)]
    else:
        close = difflib.get_close_matches(key, list(_OPTIONS if dot else _SECTIONS), n=1)
    if not close:  # the right name in the wrong place: hostname in [smtp]
        last = key.rpartition(".")[2]
        close = [dotted for dotted in _OPTIONS if dotted.rpartition(".")[2] == last]
    return f"unknown {'key' if dot else 'section'}" + (
        f'; did you mean "{close[0]}"?' if close else ""
    )


def _read(path: Path) -> tuple[dict[str, Any], _Locator]:
    """Parse the file; any failure here is the only error reported."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the file: {e.strerror or e}"]) from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text, as TOML requires"]) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_error(path, text, e)]) from None
    return document, _Locator(text)


def _syntax_error(path: Path, text: str, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    if m := re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL):
        return f"{path}:{m[2]}:{m[3]}: TOML syntax error: {m[1]}"
    if m := re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL):
        last = text.split("\n")
        return f"{path}:{len(last)}:{len(last[-1]) + 1}: TOML syntax error: {m[1]}"
    return f"{path}: TOML syntax error: {message}"  # pragma: no cover


def load_config(path: Path | str | None, overrides: Mapping[str, str] = _NO_OVERRIDES) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``.

    ``overrides`` maps dotted keys to strings as typed on a command line
    (``{"smtp.max_recipients": "50"}``); each is converted to its key's type.
    Raises :class:`ConfigError` with every problem found.
    """
    problems: list[tuple[float, str]] = []
    cwd = Path.cwd()
    given: dict[str, tuple[object, _Origin, Path]] = {}
    if path is None:
        default_origin, base = _DEFAULT, cwd
    else:
        path = Path(path)
        document, locator = _read(path)
        default_origin, base = _Origin(str(path)), path.parent.resolve()
        origin = _Origin(str(path), locator)
        for section, table in document.items():
            if section not in _SECTIONS:
                problems.append(origin.problem(section, _unknown(section)))
            elif not isinstance(table, dict):
                message = f"expected a table [{section}], got {_got(table)}"
                problems.append(origin.problem(section, message))
            else:
                for name, value in table.items():
                    key = f"{section}.{name}"
                    if key in _OPTIONS:
                        given[key] = (value, origin, base)
                    else:
                        problems.append(origin.problem(key, _unknown(key)))
    for key, text in overrides.items():
        if key in _OPTIONS:
            given[key] = (_OPTIONS[key].metadata["kind"].from_text(text), _COMMAND_LINE, cwd)
        elif key in _SECTIONS:   # "did you mean smtp?" would be no help to -o smtp=…
            message = f"a section, not a key; write {key}.KEY=VALUE"
            problems.append(_COMMAND_LINE.problem(key, message))
        else:
            problems.append(_COMMAND_LINE.problem(key, _unknown(key)))

    values: dict[str, Any] = {}
    for key, f in _OPTIONS.items():
        if key in given:
            value, origin, value_base = given[key]
        else:
            default = f.metadata["default"]
            value = default() if callable(default) else default
            origin, value_base = default_origin, base
        try:
            values[key] = f.metadata["kind"].convert(value, value_base)
        except _Invalid as invalid:
            for item, message in invalid.problems:
                at = key if item is None else f"{key}[{item}]"
                problems.append(origin.problem(key, message, at))

    # Rules that involve more than one key.
    pair = ("tls.certificate", "tls.private_key")
    for key, other in (pair, pair[::-1]):
        if values.get(key) and other in values and not values[other]:
            origin = given[key][1] if key in given else default_origin
            problems.append(origin.problem(key, f"set without {other}; set both or neither"))
    problems += _shared_ports(values, given, default_origin)
    if values.get("dns.ipv6") is False and values.get("dns.ipv4") is False:
        origin = given.get("dns.ipv4", given.get("dns.ipv6", (None, default_origin)))[1]
        problems.append(origin.problem("dns.ipv4", "dns.ipv6 and dns.ipv4 are both false; "
                                       "mail could go nowhere"))
    if problems:
        raise ConfigError([message for _, message in sorted(problems, key=lambda p: p[0])])
    sections = {
        section: cls(**{f.name: values[f"{section}.{f.name}"] for f in fields(cls)})
        for section, cls in _SECTIONS.items()
    }
    return Config(**sections)


def _shared_ports(values: Mapping[str, Any], given: Mapping[str, tuple[object, _Origin, Path]],
                  default_origin: _Origin) -> list[tuple[float, str]]:
    """Two listen keys naming one address: the second bind would fail with
    "Address already in use", as if another program held the port.  An
    address conflicts with the same one, and with the wildcard of its family."""
    def wildcard(host: str) -> str:
        return "::" if ":" in host else "0.0.0.0"

    def conflict(a: tuple[str, int], b: tuple[str, int]) -> bool:
        (host_a, port_a), (host_b, port_b) = a, b
        if port_a != port_b or wildcard(host_a) != wildcard(host_b):
            return False   # another port, or the other address family (IPV6_V6ONLY)
        return host_a == host_b or wildcard(host_a) in (host_a, host_b)

    problems = []
    seen: list[tuple[tuple[str, int], str]] = []
    for key, f in _OPTIONS.items():
        if not isinstance(f.metadata["kind"], _Listen) or key not in values:
            continue
        origin = given[key][1] if key in given else default_origin
        for address in values[key]:
            other = next((k for a, k in seen if k != key and conflict(a, address)), None)
            if other is not None:
                host, port = address
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                problems.append(origin.problem(key, f'"{shown}": {other} listens there too'))
        seen += [(address, key) for address in values[key]]
    return problems


def check_config(path: Path | str) -> list[str]:
    """The problems with the file at ``path``, one line each; empty if it is fine.

    For ``pillarbox config check``.
    """
    try:
        load_config(path)
    except ConfigError as e:
        return e.errors
    return []


# --- the reference ---------------------------------------------------------------


def reference_markdown() -> str:
    """The reference of every section and key, as in ``docs/configuration.md``."""
    out: list[str] = []
    for section, cls in _SECTIONS.items():
        out.append(f"### `[{section}]`\n\n{inspect.cleandoc(cls.__doc__ or '')}")
        for f in fields(cls):
            kind: _Kind = f.metadata["kind"]
            default = f.metadata["default_doc"] or kind.show_default(f.metadata["default"])
            out.append(f"#### `{section}.{f.name}`\n\n*{kind.type_doc}*, default {default}")
            out.append(f.metadata["doc"])
    return "\n\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pillarbox.config", description="Pillarbox configuration tools."
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the reference")
    group.add_argument("--check", metavar="FILE", type=Path, help="check a configuration file")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(reference_markdown())
        return 0
    errors = check_config(args.check)
    sys.stderr.writelines(f"{line}\n" for line in errors)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
