"""Logging (widgets/logs.py): a line written in the background is the line written by the caller."""

from __future__ import annotations

import atexit
import json
import logging

import pytest


def test_background_log_lines_are_the_same_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from widgets.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("widgets.test").exception("worker_error message_id=m1")
        writer = configure_logging("INFO", "json", background=True)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("widgets.test").exception("worker_error message_id=m1")
        assert writer is not None
        writer.stop()
        atexit.unregister(writer.stop)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    direct, queued = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    for entry in (direct, queued):
        del entry["time"]
        assert "ValueError: boom" in entry.pop("exception")
    assert (
        direct
        == queued
        == {"level": "ERROR", "logger": "widgets.test", "message": "worker_error message_id=m1"}
    )
