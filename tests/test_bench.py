"""The benchmark runs end to end at a tiny size and reports every figure (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.stack import local_sqs_kind

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_bench_reports_every_figure(tmp_path: Path) -> None:
    """A run with 30 requests and a one-at-a-time sample of 2 prints and writes all its figures."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench", "--count", "30", "--sample", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for label in (
        "raw ",
        "consumer ",
        "one-at-a-time ",
        "msg/s",
        "consumer/raw",
        "consumer/one-at-a-time",
        "raw-respond",
    ):
        assert label in result.stdout
    assert "ms/message" in result.stdout and "s per 1000 messages" in result.stdout
    assert "one SendMessage per request" in result.stdout

    figures = json.loads(out.read_text())
    assert figures["local_sqs"].startswith(f"{local_sqs_kind()} ")
    drains = figures["drains"]
    assert {name: (d["depth"], d["messages"]) for name, d in drains.items()} == {
        "raw": (30, 30),
        "raw_respond": (30, 30),
        "consumer": (30, 30),
        "one_at_a_time": (30, 2),
    }
    assert figures["consumer_outcomes"] == {"OK": 30}
    assert all(d["rate"] > 0 for d in drains.values())
    assert set(figures["ratios"]) == {"consumer_raw", "consumer_one_at_a_time", "consumer_raw_respond"}
    assert figures["consumer_cpu_ms_per_message"] >= 0
    assert figures["producer"]["batch_rate"] > 0 and figures["producer"]["single_rate"] > 0
    assert set(figures["targets_met"]) == {"consumer_raw", "consumer_one_at_a_time", "consumer_cpu"}
