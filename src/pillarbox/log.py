"""Structured logs: one line per event that matters, as text or JSON.

``log_event(logger, "queued", queue_id=..., client=..., from_=...)`` gives::

    2026-11-29T18:40:17.123Z info smtp queued queue_id=19A2… client=192.0.2.1 from=<a@b> size=2048

or, with ``format = "json"``, one JSON object per line with the same fields,
ready for a log shipper.  Fields are passed as ``extra`` so that any handler
can use them; values with spaces are quoted in the text form.

When a line would reach our :class:`LineHandler` alone (the server's set-up:
no filters, no other handler on the way, our own formatter), ``log_event``
hands it the fields directly and skips building a ``LogRecord`` and the
logging module's dispatch, which were half of what a line cost; the line is
the same.  Any other set-up (a test's capture handler, a filter) gets records
as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    handler = _line_handler_alone(logger)
    if handler is not None and level >= handler.level and handler.emit_event(
            logger.name, level, event, fields):
        return
    logger.log(level, event, extra={"pbx_fields": _clean(fields)})


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields as logged: None left out, ``from_`` named ``from``."""
    return {k.rstrip("_"): v for k, v in fields.items() if v is not None}


def _line_handler_alone(logger: logging.Logger) -> LineHandler | None:
    """The handler a record of ``logger`` would reach, if it is one of our
    LineHandlers with our formatter and is the only one, with no filter on
    the way (``Logger.handle`` applies the logger's own filters, then
    ``callHandlers`` walks up to the first logger that does not propagate)."""
    if logger.filters or logger.disabled:
        return None
    found: LineHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or type(handler) is not LineHandler or handler.filters:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent  # type: ignore[assignment]
    if found is None or type(found.formatter) not in _OURS:
        return None
    return found


_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    return _stamp(record.created, int(record.msecs))


def _stamp(created: float, msecs: int) -> str:
    global _second
    whole = int(created)
    if whole != _second[0]:       # formatted once per second, not per line
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{msecs:03d}Z"


_NEEDS_QUOTES = re.compile(r'[ "=\n]|^$').search


def _text_value(value: Any) -> str:
    if type(value) is int:          # sizes, counts, ports: never quoted
        return str(value)
    text = str(value)
    if _NEEDS_QUOTES(text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = self.line(_timestamp(record), record.levelname, record.name,
                         record.getMessage(), getattr(record, "pbx_fields", {}))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    @staticmethod
    def line(ts: str, levelname: str, logger: str, event: str, fields: dict[str, Any]) -> str:
        """The text line; ``fields`` as given to ``log_event`` (see :func:`_clean`)."""
        parts = [ts, levelname.lower(), logger.removeprefix("pillarbox."), event]
        for k, v in fields.items():
            if v is None:
                continue
            if type(v) is str:
                text = json.dumps(v, ensure_ascii=False) if _NEEDS_QUOTES(v) else v
            else:
                text = _text_value(v)
            parts.append(f"{k.rstrip('_')}={text}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = self.obj(_timestamp(record), record.levelname, record.name,
                       record.getMessage(), getattr(record, "pbx_fields", {}))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)

    @staticmethod
    def obj(ts: str, levelname: str, logger: str, event: str,
            fields: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = {"ts": ts, "level": levelname.lower(), "logger": logger,
                               "event": event}
        obj.update(_clean(fields))
        return obj

    @staticmethod
    def line(ts: str, levelname: str, logger: str, event: str, fields: dict[str, Any]) -> str:
        return json.dumps(JSONFormatter.obj(ts, levelname, logger, event, fields),
                          ensure_ascii=False, default=str)


_OURS = (TextFormatter, JSONFormatter)


class LineHandler(logging.Handler):
    """Writes whole lines with one ``write(2)`` per batch, at most ``interval`` late.

    Several processes append to one log: each flush is a single write of
    complete lines to a descriptor opened with O_APPEND, so lines of different
    processes never interleave mid-line.  Under load, a write per record cost
    more than a tenth of the server's throughput; lines now wait at most
    ``interval`` seconds (a flusher thread), and warnings and errors are
    written at once.  Unwritten lines are written before a fork and at exit.
    """

    def __init__(self, fd: int, *, own_fd: bool, interval: float = 0.1,
                 max_buffer: int = 65536) -> None:
        super().__init__()
        self._fd = fd
        self._own_fd = own_fd
        self._interval = interval
        self._max = max_buffer
        self._lines: list[bytes] = []
        self._size = 0
        self._buffer_lock = threading.Lock()
        self._closed = False
        self._start_flusher()
        os.register_at_fork(before=self.flush, after_in_child=self._after_fork)

    def _start_flusher(self) -> None:
        thread = threading.Thread(target=self._flusher, name="log-flush", daemon=True)
        thread.start()

    def _after_fork(self) -> None:
        self._buffer_lock = threading.Lock()
        self._lines, self._size = [], 0
        if not self._closed:
            self._start_flusher()

    def _flusher(self) -> None:
        while not self._closed:
            time.sleep(self._interval)
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - logging must never raise into the server
            self.handleError(record)
            return
        self._add(data, record.levelno)

    def emit_event(self, logger: str, level: int, event: str, fields: dict[str, Any]) -> bool:
        """``log_event``'s line without a LogRecord (see the module docstring), as
        ``emit`` would write it; False if it could not be made (the caller then
        logs through the logging module, which reports the error)."""
        created = time.time()
        try:
            line = self.formatter.line(  # type: ignore[union-attr]
                _stamp(created, int((created - int(created)) * 1000)),
                logging.getLevelName(level), logger, event, fields)
            data = (line + "\n").encode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - logging must never raise into the server
            return False
        self._add(data, level)
        return True

    def _add(self, data: bytes, levelno: int) -> None:
        with self._buffer_lock:
            self._lines.append(data)
            self._size += len(data)
            full = self._size >= self._max
        if full or levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        with self._buffer_lock:
            if not self._lines:
                return
            data = b"".join(self._lines)
            self._lines, self._size = [], 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            pass  # a full disk must not stop the mail; the lines are lost

    def close(self) -> None:
        self.flush()
        self._closed = True
        if self._own_fd:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        super().close()


def setup_logging(fmt: str = "text", level: str = "info", file: Path | None = None) -> None:
    # Our lines name the logger, never the source file, thread or process: skip
    # finding them for every record (the logging HOWTO, "Optimization"), which
    # was a fifth of what a log line cost.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if file is not None:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        handler = LineHandler(fd, own_fd=True)
    else:
        handler = LineHandler(sys.stderr.fileno(), own_fd=False)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("pillarbox")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
