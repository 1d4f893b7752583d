"""The maker's /metrics as a process under waitress's threads."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devtools.stack import start_maker
from tests.helpers import request_counts, value


@pytest.mark.e2e
def test_counts_under_waitress_threads(tmp_path: Path) -> None:
    process, base = start_maker(tmp_path / "w.db", args=["--threads", "8"])
    try:
        ids = [str(uuid.uuid1()) for _ in range(20)]

        def post(widget_id: str) -> int:
            """Ask the maker for a widget; return the status."""
            return requests.post(f"{base}/add", json={"widget_id": widget_id}, timeout=10).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, ids * 3))
        assert Counter(statuses) == {201: 20, 200: 40}
        text = requests.get(f"{base}/metrics", timeout=10).text
    finally:
        process.stop()
    counts = request_counts(text)
    assert counts["/add", "POST", "201"] == 20
    assert counts["/add", "POST", "200"] == 40
    assert value(text, "widget_maker_widgets_created_total") == 20
    assert value(text, "widget_maker_idempotent_repeats_total") == 40
    assert value(text, "process_cpu_seconds_total") > 0
