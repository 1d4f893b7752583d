"""`make run`: the local SQS, the maker and the consumer in one terminal, each line prefixed by its source.

The maker stores its widgets in widgets.db, or where WIDGET_MAKER_DB says (`make run DB=...`).
"""

from __future__ import annotations

import os
import re
import sys
import threading

from devtools.stack import (
    Process,
    chosen_sqs_kind,
    port_in_use,
    start_consumer,
    start_maker,
    start_sqs,
    stop_on_signals,
)
from widgets.sqs import LOCAL_ENDPOINT

SQS_PORT = 9324
MAKER_PORT = 5000
PRINT_LOCK = threading.Lock()


# moto's server logs every SQS call it answers; those lines would drown the others.
SQS_ACCESS_LINE = re.compile(r'"(GET|POST) /\S* HTTP/1\.1" 2\d\d')


def echo(name: str, line: str) -> None:
    """Print a child's line with its name in front (but not the local SQS's successful calls)."""
    if name == "sqs" and SQS_ACCESS_LINE.search(line):
        return
    with PRINT_LOCK:
        print(f"{name:>8} | {line}", flush=True)


def main() -> int:
    """Run all three until Ctrl-C or SIGTERM, then stop them in reverse order."""
    kind = chosen_sqs_kind()
    if kind is None:
        return 2
    for port, what in ((SQS_PORT, "the local SQS"), (MAKER_PORT, "the maker")):
        if port_in_use(port):
            print(
                f"error: port {port} for {what} is in use (another `make run` or `make sqs`?)",
                file=sys.stderr,
            )
            return 1
    stop = stop_on_signals()
    processes: list[Process] = []
    try:
        processes.append(start_sqs(SQS_PORT, echo=echo, kind=kind)[0])
        maker, base = start_maker(os.environ.get("WIDGET_MAKER_DB") or "widgets.db", MAKER_PORT, echo=echo)
        processes.append(maker)
        processes.append(start_consumer(LOCAL_ENDPOINT, f"{base}/add", echo=echo))
        echo("run", "all running; send requests with: make produce ARGS='--count 5 --wait'; Ctrl-C stops")
        while not stop.wait(0.5):
            for process in processes:
                if not process.running():
                    echo("run", f"{process.name} exited ({process.popen.returncode}); stopping the rest")
                    return 1
        return 0
    finally:
        for process in reversed(processes):
            process.stop()


if __name__ == "__main__":
    sys.exit(main())
