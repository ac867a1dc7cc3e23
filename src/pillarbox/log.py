"""Structured logs: one line per event that matters, as text or JSON.

``log_event(logger, "queued", queue_id=..., client=..., from_=...)`` gives::

    2026-11-29T18:40:17.123Z info smtp queued queue_id=19A2… client=192.0.2.1 from=<a@b> size=2048

or, with ``format = "json"``, one JSON object per line with the same fields,
ready for a log shipper.  Fields are passed as ``extra`` so that any handler
can use them; values with spaces are quoted in the text form.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    clean = {k.rstrip("_"): v for k, v in fields.items() if v is not None}
    logger.log(level, event, extra={"pbx_fields": clean})


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "pbx_fields", {})
        name = record.name.removeprefix("pillarbox.")
        parts = [_timestamp(record), record.levelname.lower(), name, record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        obj.update(getattr(record, "pbx_fields", {}))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def setup_logging(fmt: str = "text", level: str = "info", file: Path | None = None) -> None:
    handler: logging.Handler
    if file is not None:
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("pillarbox")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
