"""Structured log lines, as text and as JSON."""

from __future__ import annotations

import json
import logging

from pillarbox.log import log_event, setup_logging


def test_text_and_json_lines(tmp_path):
    root = logging.getLogger("pillarbox")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        _check(tmp_path / "log")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level, root.propagate = saved


def _check(path):
    setup_logging("text", "info", path)
    log = logging.getLogger("pillarbox.smtp")
    log_event(log, "queued", queue_id="ABC", client="192.0.2.1", from_="<a b@x>", size=12)
    log_event(log, "debugging", level=logging.DEBUG, x=1)
    setup_logging("json", "info", path)
    log_event(log, "delivered", queue_id="ABC", to="alice@example.test", status="sent")
    for handler in logging.getLogger("pillarbox").handlers:
        handler.flush()  # lines wait up to 0.1 s to be written in batches
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(' info smtp queued queue_id=ABC client=192.0.2.1 from="<a b@x>" size=12')
    record = json.loads(lines[1])
    assert record["event"] == "delivered" and record["level"] == "info"
    assert record["queue_id"] == "ABC" and record["to"] == "alice@example.test"
    assert record["status"] == "sent" and record["ts"].endswith("Z")


def test_warnings_are_written_at_once_and_lines_stay_whole(tmp_path):
    root = logging.getLogger("pillarbox")
    saved = (root.handlers[:], root.level, root.propagate)
    path = tmp_path / "log"
    try:
        setup_logging("text", "info", path)
        log = logging.getLogger("pillarbox.queue")
        log_event(log, "delivered", queue_id="A")
        log_event(log, "deferred", queue_id="B", level=logging.WARNING)
        # The warning flushed everything before it, in order, without waiting.
        lines = path.read_text().splitlines()
        assert [line.split()[3] for line in lines] == ["delivered", "deferred"]
        for i in range(3000):  # more than the buffer: written in whole lines
            log_event(log, "delivered", queue_id=f"Q{i}", pad="x" * 40)
        for handler in root.handlers:
            handler.flush()
        lines = path.read_text().splitlines()
        assert len(lines) == 3002
        assert all(line.endswith("x" * 40) for line in lines[2:])
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level, root.propagate = saved


def test_a_line_written_without_a_record_is_the_same_line(tmp_path):
    """log_event skips the LogRecord when our handler alone gets the line; a
    filter on the logger forces the usual path, which must write the same."""
    root = logging.getLogger("pillarbox")
    saved = (root.handlers[:], root.level, root.propagate)
    log = logging.getLogger("pillarbox.smtp")
    fields = dict(queue_id="ABC", client="192.0.2.1", from_="<a b@x>", to="q\"uote=d",
                  size=12, account=None, ms=0.4, empty="", tls=("TLSv1.3", "X", 256))
    try:
        for fmt in ("text", "json"):
            path = tmp_path / fmt
            setup_logging(fmt, "info", path)
            log_event(log, "queued", **fields)
            log.addFilter(lambda record: True)
            try:
                log_event(log, "queued", **fields)
            finally:
                log.filters.clear()
            for handler in root.handlers:
                handler.flush()
            fast, usual = path.read_text().splitlines()
            if fmt == "json":
                fast_obj, usual_obj = json.loads(fast), json.loads(usual)
                assert fast_obj.pop("ts").endswith("Z") and usual_obj.pop("ts").endswith("Z")
                assert fast_obj == usual_obj and "account" not in fast_obj
                assert fast_obj["from"] == "<a b@x>"
            else:
                assert fast.split(" ", 1)[1] == usual.split(" ", 1)[1]
                assert fast.split(" ", 1)[1] == (
                    'info smtp queued queue_id=ABC client=192.0.2.1 from="<a b@x>" '
                    'to="q\\"uote=d" size=12 ms=0.4 empty="" tls="(\'TLSv1.3\', \'X\', 256)"')
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level, root.propagate = saved
