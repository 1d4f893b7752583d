"""widget_queues.py as processes on each local SQS server: status, redrive, --watch on a terminal, Ctrl-C."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
from collections.abc import Callable, Iterator

import pytest

from devtools.stack import PYTHON, ROOT, Process, free_port, run_script, script_env, sigint_back, start_sqs
from tests.helpers import drain, fill_dead_letter_queue, wait_until
from widgets.messages import new_widget_id, request_body
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
    ensure_queues,
    make_client,
)


@pytest.fixture
def sqs_server(sqs_kind: str) -> Iterator[str]:
    """Run a local SQS server (each kind in turn) on a free port; return its endpoint."""
    process, endpoint = start_sqs(kind=sqs_kind)
    try:
        yield endpoint
    finally:
        process.stop()


@pytest.mark.e2e
def test_status_and_redrive_as_processes(sqs_server: str) -> None:
    sqs = make_client(None, sqs_server)
    urls = ensure_queues(sqs, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=3)
    sent = fill_dead_letter_queue(sqs, urls.dead_letter, 12)
    sqs.send_message(QueueUrl=urls.request, MessageBody=request_body(new_widget_id()))
    endpoint = ["--endpoint-url", sqs_server]

    status = run_script("widget_queues.py", ["status", "--json", *endpoint], timeout=60)
    assert status.returncode == 0, status.stderr
    queues = json.loads(status.stdout)
    assert (queues["request"]["visible"], queues["dead_letter"]["visible"]) == (1, 12)

    redrive = run_script("widget_queues.py", ["redrive", "--wait-time", "0", *endpoint], timeout=60)
    assert redrive.returncode == 0, redrive.stderr
    assert redrive.stdout == f"moved 12 messages from {DEAD_LETTER_QUEUE} to {REQUEST_QUEUE}\n"

    status = run_script("widget_queues.py", ["status", *endpoint], timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[2].split() == ["request", REQUEST_QUEUE, "13", "0", "0", "n/a"]
    assert status.stdout.splitlines()[4].split() == [
        "dead",
        "letter",
        DEAD_LETTER_QUEUE,
        "0",
        "0",
        "0",
        "n/a",
    ]
    moved = [m for m in drain(sqs, urls.request) if m["Body"] in sent]
    assert len(moved) == 12
    assert all(m["MessageAttributes"] == sent[m["Body"]] for m in moved)


@pytest.mark.e2e
def test_an_unreachable_endpoint_is_no_traceback() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = run_script("widget_queues.py", ["redrive", "--endpoint-url", endpoint], timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"Error: cannot reach SQS at {endpoint} (is the local SQS running? make sqs)\n"


def read_until(fd: int, done: Callable[[str], bool], timeout: float = 15.0) -> str:
    """Read a pseudo-terminal until done(what was read) or the other end closed; return what was read."""
    text = ""
    closed = False

    def read() -> bool:
        nonlocal text, closed
        if select.select([fd], [], [], 0.1)[0]:
            try:
                text += os.read(fd, 65536).decode()
            except OSError:  # the other end closed: the process exited
                closed = True
        return closed or done(text)

    wait_until(read, timeout, lambda: f"not seen:\n{text!r}", pause=0)
    return text


@pytest.mark.e2e
def test_status_watch_redraws_in_place_on_a_terminal(sqs_server: str) -> None:
    sqs = make_client(None, sqs_server)
    urls = ensure_queues(sqs, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=3)
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        [PYTHON, "widget_queues.py", "status", "--endpoint-url", sqs_server, "--watch", "0.5"],
        cwd=ROOT,
        env=script_env(),
        stdin=child_end,
        stdout=child_end,
        stderr=child_end,
        start_new_session=True,
        preexec_fn=sigint_back(),
    )
    os.close(child_end)
    try:
        seen = read_until(terminal, lambda text: text.count("dead letter") >= 1)
        for _ in range(10):
            sqs.send_message(QueueUrl=urls.request, MessageBody=request_body(new_widget_id()))
        busy_row = re.compile(r"request +WidgetRequestQueue +10 +\+[\d.]+ +0 +0 +0 +0\r\n")
        seen += read_until(terminal, lambda text: busy_row.search(seen + text) is not None)
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    # Every draw clears from the cursor down; each after the first first moves up over the
    # five lines before it (a header and the table), so the table stays in one place.
    draws = seen.split("\r\x1b[J")
    assert draws[0] == ""
    assert len(draws) >= 3
    assert all(draw.endswith("\x1b[5A") for draw in draws[1:-1])
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d  queues at {sqs_server}, every 0.5s \(Ctrl-C stops\)",
        draws[1].split("\r\n")[0],
    )
    assert (
        draws[1].split("\r\n")[1]
        == "role         queue                visible  /s  in flight  /s  delayed  /s"
    )
    assert "Traceback" not in seen


@pytest.mark.e2e
def test_status_watch_ends_at_ctrl_c_with_a_line_per_refresh(sqs_server: str) -> None:
    sqs = make_client(None, sqs_server)
    ensure_queues(sqs, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=3)
    argv = [PYTHON, "widget_queues.py", "status", "--endpoint-url", sqs_server, "--watch", "0.5"]
    process = Process("status", argv)
    try:
        process.wait_for(r"^\d\d:\d\d:\d\d request visible=0 \(0/s\)")
        process.signal(signal.SIGINT)
        assert process.popen.wait(10) == 0
    finally:
        process.stop()
    assert "Traceback" not in process.output()
    assert "\x1b" not in process.output()
