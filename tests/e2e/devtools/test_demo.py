"""`make demo` must keep working: run the tour as a newcomer would and check its summary."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.stack import ROOT, local_sqs_kind, script_env


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_demo_shows_every_outcome() -> None:
    """The tour on the local SQS a newcomer gets (fauxqs where installed; it is the same tour on moto)."""
    result = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=ROOT,
        env=script_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"Starting a local SQS ({local_sqs_kind()} " in out
    assert "REJECTED this_is_not_a_valid_widget_id receive_count=1" in out
    assert "breaker_open: maker unreachable" in out and "breaker_closed" in out
    assert "FAILED faded000-0000-11e5-8000-000000000bad receive_count=3" in out
    assert "FailureReason=" in out
    assert "OK       7" in out and "REJECTED 1" in out and "FAILED   1" in out
    assert out.count("made in the order they were sent") == 2
    assert "FIFO: 2 customers x 4 requests, each made in order: yes" in out
    # sqs-relay: four calls signed and verified with the reference library, one refused with 422
    assert out.count("POST /orders  signature verified") == 4 and "signature refused" not in out
    assert "X-SQS-Attribute-Tenant: acme" in out and "traceparent: 00-" in out
    assert "Content-Type: text/plain; charset=utf-8" in out
    assert 'REJECTED \'{"order": 3, "item": "gizmo", "reject": true}\'' in out and "-> 422" in out
    assert "sqs-relay: OK 3, REJECTED 1; signatures verified by the receiver: 4 of 4" in out
    assert "every request ended as it should" in out
