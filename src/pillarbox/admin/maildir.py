"""Maildir, read and written as Dovecot and Courier lay it out.

A Maildir (https://cr.yp.to/proto/maildir.html) is a directory with ``tmp/``,
``new/`` and ``cur/``; each message is one file.  What IMAP needs beyond that
lives in the file names and in a few side files:

``cur/<unique>:2,<info>``
    The info letters after ``:2,`` are the flags: ``D`` \\Draft, ``F``
    \\Flagged, ``P`` passed (no IMAP flag: kept as the keyword ``$Forwarded``,
    which is what Dovecot stores for it), ``R`` \\Answered, ``S`` \\Seen, ``T``
    \\Deleted.  Lower-case letters ``a``–``z`` are Dovecot keywords: letter
    *n* is line ``n <keyword>`` of the folder's ``dovecot-keywords``.
    Dovecot puts ``,S=<size>,W=<size with CRLF>`` into ``<unique>``: sizes,
    not dates; written on export (so Dovecot need not read the file to learn
    them), not trusted on import (the file itself counts).
``new/<unique>``
    Delivered and not yet seen by any client: never \\Seen.
``courierimapkeywords/``
    Courier-IMAP's keywords: ``:list`` holds the keyword names, a blank line,
    then ``<unique>:<n> <n>…``; a file ``<unique>`` or ``.<N>.<unique>`` (the
    highest ``N`` wins, the plain name over all) replaces the keywords of one
    message, one keyword a line.
``dovecot-uidlist`` / ``courierimapuiddb``
    UIDVALIDITY and the UID of each ``<unique>``: only used to keep the order.

Folders are either Maildir++ (Dovecot's default and Courier's: ``.Work.Projects/``
beside ``cur/``, names in modified UTF-7, RFC 3501 5.1.3, ``.`` separating the
levels) or Dovecot's ``LAYOUT=fs`` (``Work/Projects/`` nested).  In Pillarbox
the hierarchy delimiter is ``/``; the Maildir's root is INBOX.

The internal date of a message is the file's mtime, which is where Dovecot and
Courier keep it (an IMAP APPEND with a date sets the mtime).  A copy made
without preserving times (``cp -r``, some backups) leaves every mtime at the
time of the copy; so an mtime later than the delivery time in the file name
(its leading seconds) by more than a day, or before 1980, or in the future,
is taken as lost and the file name's time is used instead; failing that, the
``Date:`` field, failing that, now.

Pillarbox stores CRLF line ends (SMTP's, and what IMAP serves); Maildir files
have LF.  Reading converts every bare LF to CRLF, writing converts CRLF back
to LF, so an LF-only file makes the round trip unchanged.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox.mime.dates import parse_date

__all__ = [
    "FolderWriter",
    "MaildirError",
    "MaildirFolder",
    "MaildirMessage",
    "MaildirWriter",
    "crlf_to_lf",
    "decode_mutf7",
    "encode_mutf7",
    "find_folders",
    "flags_from_info",
    "info_from_flags",
    "lf_to_crlf",
    "scan_folder",
]

Warn = Callable[[str], None]

INFO_FLAGS = {
    "D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded",
    "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted",
}
FLAG_INFO = {flag: letter for letter, flag in INFO_FLAGS.items()}
SYSTEM_FLAGS = frozenset(f for f in INFO_FLAGS.values() if f.startswith("\\"))
MAX_KEYWORDS = 26                      # one lower-case letter each
_NOT_FOLDERS = {"cur", "new", "tmp", "courierimapkeywords"}
_EARLIEST = 315532800.0                # 1980-01-01: before that, an mtime is lost
_SLACK = 86400.0
_INFO_SEP = re.compile(r"[:!;]2,")     # ':' standard; '!' / ';' where ':' is not allowed


class MaildirError(Exception):
    """The path is not a Maildir Pillarbox can read or write (the user's to fix)."""


# ------------------------------------------------------------- line ends


def lf_to_crlf(data: bytes) -> bytes:
    """Every bare LF becomes CRLF; CRLF and lone CR stay as they are."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# ---------------------------------------------------------- folder names


def decode_mutf7(name: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 5.1.3) to Unicode; malformed input raises ValueError."""
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated '&' in {name!r}")
        chunk = name[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            raw = chunk.replace(",", "/")
            raw += "=" * (-len(raw) % 4)
            try:
                out.append(base64.b64decode(raw, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"bad modified UTF-7 in {name!r}") from e
        i = end + 1
    return "".join(out)


def encode_mutf7(name: str) -> str:
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii")
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


# ---------------------------------------------------------------- flags


def flags_from_info(info: str, keywords: dict[str, str]) -> tuple[set[str], set[str]]:
    """Flags of the info letters, and the letters nothing maps (for a warning)."""
    flags: set[str] = set()
    unknown: set[str] = set()
    for letter in info:
        if letter in INFO_FLAGS:
            flags.add(INFO_FLAGS[letter])
        elif letter in keywords:
            flags.add(keywords[letter])
        else:
            unknown.add(letter)
    return flags, unknown


def info_from_flags(flags: Iterable[str], letters: dict[str, str]) -> str:
    """The info letters, in ASCII order as the Maildir spec asks.

    ``$Forwarded`` is written twice: as ``P`` for mail readers that know only
    the Maildir letters, and as its keyword letter, which is what Dovecot reads.
    """
    out = set()
    for flag in flags:
        if flag in FLAG_INFO:
            out.add(FLAG_INFO[flag])
        if flag in letters:
            out.add(letters[flag])
    return "".join(sorted(out))


def _read_text(path: Path, warn: Warn) -> str | None:
    """A side file's text; None if it is not there (or unreadable: with a warning)."""
    try:
        return path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        warn(f"{path}: cannot read it ({e.strerror or e}); going on without it")
        return None


def read_dovecot_keywords(folder: Path, warn: Warn = lambda _: None) -> dict[str, str]:
    """``dovecot-keywords``: letter -> keyword."""
    text = _read_text(folder / "dovecot-keywords", warn)
    if text is None:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        number, _, keyword = line.strip().partition(" ")
        if number.isdigit() and int(number) < MAX_KEYWORDS and keyword.strip():
            out[chr(ord("a") + int(number))] = keyword.strip()
    return out


def read_courier_keywords(folder: Path, warn: Warn) -> dict[str, set[str]]:
    """Courier-IMAP's keywords: unique name -> keywords."""
    kwdir = folder / "courierimapkeywords"
    if not kwdir.is_dir():
        return {}
    out: dict[str, set[str]] = {}
    names: list[str] = []
    lines = (_read_text(kwdir / ":list", warn) or "").splitlines()
    in_names = True
    for line in lines:
        if in_names:
            if not line.strip():
                in_names = False
            else:
                names.append(line.strip())
            continue
        unique, sep, numbers = line.rpartition(":")
        try:
            indexes = [int(n) for n in numbers.split()]
            picked = {names[n] for n in indexes}
        except (ValueError, IndexError):
            picked = set()
            sep = ""
        if not sep or not unique:
            warn(f"{kwdir / ':list'}: skipped a line that is not 'name:numbers': {line[:60]!r}")
            continue
        out[unique] = picked
    # Updates not yet folded into :list: 'unique' beats every '.N.unique'.
    updates: dict[str, tuple[int, str]] = {}
    try:
        entries = os.listdir(kwdir)
    except OSError as e:
        warn(f"{kwdir}: cannot list it ({e.strerror or e})")
        entries = []
    for entry in entries:
        if entry == ":list" or entry.startswith(".tmp") or entry in (".", ".."):
            continue
        m = re.fullmatch(r"\.(\d+)\.(.+)", entry)
        unique, rank = (m.group(2), int(m.group(1))) if m else (entry, 1 << 62)
        if unique not in updates or rank > updates[unique][0]:
            updates[unique] = (rank, entry)
    for unique, (_, entry) in updates.items():
        text = _read_text(kwdir / entry, warn)
        if text is None:
            continue
        out[unique] = {k.strip() for k in text.splitlines() if k.strip()}
    return out


def read_uid_order(folder: Path, warn: Warn = lambda _: None) -> dict[str, int]:
    """UIDs by unique name from ``dovecot-uidlist`` or ``courierimapuiddb`` (both formats)."""
    for name in ("dovecot-uidlist", "courierimapuiddb"):
        text = _read_text(folder / name, warn)
        if text is None:
            continue
        lines = text.splitlines()
        out: dict[str, int] = {}
        for line in lines[1:]:
            uid, _, rest = line.partition(" ")
            if not uid.isdigit():
                continue
            padded = " " + rest
            filename = padded.split(" :", 1)[1] if " :" in padded else rest.strip()
            if filename:
                out[_INFO_SEP.split(filename, 1)[0].partition(":")[0]] = int(uid)
        return out
    return {}


# -------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class MaildirFolder:
    name: str                    # Pillarbox name, "/" between levels; "" is the root
    path: Path


@dataclass(slots=True)
class MaildirMessage:
    path: Path
    unique: str                  # the file name before ':2,' (Dovecot's ',S=…' included)
    flags: frozenset[str]
    internal_date: float
    order: tuple[int, float, str] = field(default=(0, 0.0, ""))

    def read(self) -> bytes:
        """The message with CRLF line ends, as Pillarbox stores it."""
        return lf_to_crlf(self.path.read_bytes())


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir()


def find_folders(
    root: Path, layout: str = "auto", warn: Warn = lambda _: None
) -> list[MaildirFolder]:
    """The folders of a Maildir: the root (name "") and its subfolders, by name.

    ``layout`` is ``maildir++``, ``fs`` or ``auto`` (Maildir++ if the root has
    any ``.Name`` folder, else fs).
    """
    if not root.is_dir():
        raise MaildirError(f"{root} is not a directory")
    entries = sorted(e for e in os.listdir(root) if (root / e).is_dir())
    dotted = [e for e in entries
              if e.startswith(".") and e not in (".", "..") and is_maildir(root / e)]
    if layout == "auto":
        layout = "maildir++" if dotted else "fs"
    folders: list[MaildirFolder] = []
    if is_maildir(root):
        folders.append(MaildirFolder("", root))
    if layout == "maildir++":
        for entry in dotted:
            parts = entry[1:].split(".")
            try:
                decoded = [decode_mutf7(p) for p in parts]
            except ValueError as e:
                warn(f"{root / entry}: folder skipped: {e}")
                continue
            if any(not p for p in decoded):
                warn(f"{root / entry}: folder skipped: empty level in its name")
                continue
            folders.append(MaildirFolder("/".join(decoded), root / entry))
    elif layout == "fs":
        folders.extend(_fs_folders(root, [], warn))
    else:
        raise MaildirError(f"unknown Maildir layout {layout!r} (maildir++ or fs)")
    if not folders:
        raise MaildirError(
            f"{root} is not a Maildir: no cur/ or new/ in it, nor in any folder below it"
        )
    return folders


def _fs_folders(path: Path, names: list[str], warn: Warn) -> Iterator[MaildirFolder]:
    for entry in sorted(os.listdir(path)):
        sub = path / entry
        if entry.startswith(".") or entry in _NOT_FOLDERS or sub.is_symlink() or not sub.is_dir():
            continue
        try:
            name = decode_mutf7(entry)
        except ValueError as e:
            warn(f"{sub}: folder skipped: {e}")
            continue
        if is_maildir(sub):
            yield MaildirFolder("/".join([*names, name]), sub)
        yield from _fs_folders(sub, [*names, name], warn)


def _filename_time(unique: str) -> float | None:
    m = re.match(r"(\d{9,11})(?:\.|$)", unique)
    return float(m.group(1)) if m else None


def _internal_date(path: Path, mtime: float, unique: str, now: float) -> float:
    delivered = _filename_time(unique)
    plausible_mtime = _EARLIEST <= mtime <= now + _SLACK
    if plausible_mtime and (delivered is None or mtime <= delivered + _SLACK):
        return float(int(mtime))
    if delivered is not None and _EARLIEST <= delivered <= now + _SLACK:
        return delivered
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        head = b""
    m = re.search(rb"(?im)^Date:[ \t]*(.*(?:\r?\n[ \t].*)*)", head.split(b"\n\n", 1)[0])
    when = parse_date(m.group(1)) if m else None
    return float(int(when.timestamp())) if when else float(int(now))


def scan_folder(folder: Path, warn: Warn = lambda _: None) -> list[MaildirMessage]:
    """Every message of one Maildir folder, in UID order where a uidlist gives one.

    Unreadable or unparseable entries are skipped with a warning.
    """
    keywords = read_dovecot_keywords(folder, warn)
    courier = read_courier_keywords(folder, warn)
    uids = read_uid_order(folder, warn)
    now = time.time()
    unknown_letters: set[str] = set()
    out: list[MaildirMessage] = []
    for sub in ("new", "cur"):
        directory = folder / sub
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        except OSError as e:
            warn(f"{directory}: skipped, cannot list it ({e.strerror or e})")
            continue
        for filename in names:
            if filename.startswith("."):
                continue
            path = directory / filename
            try:
                st = path.stat()
            except OSError as e:
                warn(f"{path}: skipped ({e.strerror})")
                continue
            if not path.is_file():
                continue
            parts = _INFO_SEP.split(filename, 1)
            unique = parts[0]
            info = parts[1] if len(parts) > 1 else ""
            if len(parts) == 1 and ":" in filename:
                unique = filename.partition(":")[0]   # ':1,' experimental info: no flags
            flags, unknown = flags_from_info(info.partition(",")[0], keywords)
            unknown_letters |= unknown
            if sub == "new":
                flags.discard("\\Seen")
            flags |= courier.get(unique, set())
            uid = uids.get(unique)
            order = (0, float(uid), unique) if uid is not None else (
                1, _filename_time(unique) or st.st_mtime, unique)
            out.append(MaildirMessage(
                path, unique, frozenset(flags), _internal_date(path, st.st_mtime, unique, now),
                order,
            ))
    if unknown_letters:
        warn(f"{folder}: info letters {''.join(sorted(unknown_letters))} have no meaning "
             "(not in dovecot-keywords): ignored")
    out.sort(key=lambda m: m.order)
    return out


# -------------------------------------------------------------- writing


class MaildirWriter:
    """Writes a Dovecot-compatible Maildir under ``root`` (which must be new or empty)."""

    def __init__(self, root: Path, layout: str = "maildir++") -> None:
        if layout not in ("maildir++", "fs"):
            raise MaildirError(f"unknown Maildir layout {layout!r} (maildir++ or fs)")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise MaildirError(f"{root} exists and is not an empty directory")
        self.root = root
        self.layout = layout
        self.host = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"

    def folder_path(self, name: str) -> Path:
        """Where the mailbox ``name`` goes ("INBOX" is the root)."""
        if name.upper() == "INBOX":
            return self.root
        parts = name.split("/")
        if any(not p for p in parts):
            raise MaildirError(f"mailbox {name!r}: empty level in its name")
        encoded = [encode_mutf7(p) for p in parts]
        if self.layout == "fs":
            if any(p in _NOT_FOLDERS or p.startswith(".") for p in encoded):
                raise MaildirError(f"mailbox {name!r}: a level named like a Maildir directory")
            return self.root.joinpath(*encoded)
        if any("." in p for p in encoded):
            raise MaildirError(
                f"mailbox {name!r} has a '.' in its name, which Maildir++ uses between "
                "levels: export with --layout fs"
            )
        return self.root / ("." + ".".join(encoded))

    def check_names(self, names: Iterable[str]) -> None:
        for name in names:
            self.folder_path(name)

    def folder(self, name: str, uidvalidity: int, keywords: Iterable[str]) -> FolderWriter:
        path = self.folder_path(name)
        return FolderWriter(self, path, uidvalidity, keywords, is_root=path == self.root)

    def close(self) -> None:
        """The root is a Maildir (INBOX) even when INBOX was not exported."""
        for sub in ("cur", "new", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


class FolderWriter:
    """One folder of a ``MaildirWriter``: messages in UID order, then ``close()``."""

    def __init__(self, writer: MaildirWriter, path: Path, uidvalidity: int,
                 keywords: Iterable[str], *, is_root: bool) -> None:
        self.writer = writer
        self.path = path
        self.uidvalidity = uidvalidity
        self.letters: dict[str, str] = {}
        self.dropped: set[str] = set()
        for sub in ("cur", "new", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if not is_root:
            (path / "maildirfolder").touch()
        for kw in sorted(set(keywords) - SYSTEM_FLAGS):
            self._letter(kw)
        self.uidlist: list[tuple[int, str]] = []
        self.count = 0

    def _letter(self, keyword: str) -> str | None:
        if keyword in self.letters:
            return self.letters[keyword]
        if len(self.letters) >= MAX_KEYWORDS or not keyword or " " in keyword:
            self.dropped.add(keyword)
            return None
        letter = chr(ord("a") + len(self.letters))
        self.letters[keyword] = letter
        return letter

    def add(self, data: bytes, flags: Iterable[str], internal_date: float, uid: int) -> str:
        """Write one message (CRLF as stored); return its file name."""
        flags = set(flags)
        for kw in flags - SYSTEM_FLAGS:
            self._letter(kw)
        body = crlf_to_lf(data)
        self.count += 1
        seconds = int(internal_date)
        unique = (f"{seconds}.M{uid % 1000000}P{os.getpid()}Q{self.count}.{self.writer.host}"
                  f",S={len(body)},W={len(data)}")
        name = f"{unique}:2,{info_from_flags(flags, self.letters)}"
        tmp = self.path / "tmp" / unique
        with open(tmp, "wb") as f:
            f.write(body)
        os.utime(tmp, (seconds, seconds))
        os.rename(tmp, self.path / "cur" / name)
        self.uidlist.append((uid, unique))
        return name

    def close(self, uidnext: int) -> None:
        """``dovecot-keywords`` and ``dovecot-uidlist`` (version 3), so Dovecot keeps
        Pillarbox's UIDs and UIDVALIDITY."""
        if self.letters:
            (self.path / "dovecot-keywords").write_text(
                "".join(f"{ord(letter) - ord('a')} {kw}\n" for kw, letter in self.letters.items()),
                "utf-8")
        nextuid = max([uidnext, *(uid + 1 for uid, _ in self.uidlist)])
        lines = [f"3 V{self.uidvalidity} N{nextuid}\n"]
        lines += [f"{uid} :{unique}\n" for uid, unique in self.uidlist]
        (self.path / "dovecot-uidlist").write_text("".join(lines), "utf-8")
