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
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(' info smtp queued queue_id=ABC client=192.0.2.1 from="<a b@x>" size=12')
    record = json.loads(lines[1])
    assert record["event"] == "delivered" and record["level"] == "info"
    assert record["queue_id"] == "ABC" and record["to"] == "alice@example.test"
    assert record["status"] == "sent" and record["ts"].endswith("Z")
