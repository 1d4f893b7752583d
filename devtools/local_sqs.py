"""`make sqs`: the local SQS alone on 127.0.0.1:9324 (fauxqs, else moto's server) until Ctrl-C."""

from __future__ import annotations

import sys

from devtools.stack import (
    LOCAL_SQS_ENV,
    chosen_sqs_kind,
    local_sqs_version,
    port_in_use,
    start_sqs,
    stop_on_signals,
)

SQS_PORT = 9324


def echo(name: str, line: str) -> None:
    """Print the local SQS's own lines as they come (but not fauxqs's start-up line: ours says more)."""
    if not line.startswith("local SQS fauxqs "):
        print(line, flush=True)


def main() -> int:
    """Run the local SQS in the foreground; stop it on Ctrl-C or SIGTERM."""
    kind = chosen_sqs_kind()
    if kind is None:
        return 2
    if port_in_use(SQS_PORT):
        print(
            f"error: port {SQS_PORT} for the local SQS is in use (another `make sqs` or `make run`?)",
            file=sys.stderr,
        )
        return 1
    stop = stop_on_signals()
    process, endpoint = start_sqs(SQS_PORT, echo=echo, kind=kind)
    try:
        print(
            f"local SQS: {kind} {local_sqs_version(kind)} at {endpoint} "
            f"(choose with {LOCAL_SQS_ENV}=fauxqs|moto); Ctrl-C stops it",
            flush=True,
        )
        while not stop.wait(0.5):
            if not process.running():
                print(f"the local SQS exited ({process.popen.returncode})", file=sys.stderr)
                return 1
        return 0
    finally:
        process.stop()


if __name__ == "__main__":
    sys.exit(main())
