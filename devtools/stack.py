"""The pieces as real processes (local SQS, maker, consumer), for the demo, `make run`, tests and bench."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from types import FrameType

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Which local SQS to run in server mode: fauxqs (fast; Node.js, installed by make) or moto's server.
LOCAL_SQS_ENV = "WIDGETS_LOCAL_SQS"
LOCAL_SQS_CHOICES = ("fauxqs", "moto")
FAUXQS_HINT = "install Node.js and npm, then run make"


# Each port free_port hands out stays bound (never listening) by a socket of this process until it
# exits. The kernel then gives it to no other bind to port 0 and no outgoing connection, so no other
# process (a test running at the same time in another pytest worker) can take it between the choice
# and the server's bind, nor while a test restarts a server on it. Our servers still bind it, as
# they all set SO_REUSEADDR (waitress, werkzeug, http.server, Node.js); until one listens there, a
# connection to it is refused.
_held_ports: list[socket.socket] = []


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on, held for this process's servers."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    _held_ports.append(holder)
    return int(holder.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Tell whether something already listens on 127.0.0.1:port."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def script_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a child script: unbuffered, no AWS endpoint or region inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def sigint_back() -> Callable[[], None] | None:
    """Return what gives a child the default SIGINT back, when this process was started ignoring it.

    A script started in the background (`cmd &` from a shell script) ignores SIGINT, and so would
    its children: their Ctrl-C (stop() sends it, as do tests) would then do nothing.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return None

    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return default_sigint


class Process:
    """A child process whose output lines are kept (and optionally echoed) as they come."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        echo: Callable[[str, str], None] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        """Start argv in cwd (the checkout); each output line is stored and passed to echo(name, line)."""
        self.name = name
        self.argv = list(argv)
        self.lines: list[str] = []
        self._echo = echo
        self._new_line = threading.Condition()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=script_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C in the terminal reaches only us, and we stop the
            # children in order (consumer before the SQS it flushes to), one signal each.
            start_new_session=True,
            preexec_fn=sigint_back(),
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            if self._echo is not None:
                self._echo(self.name, line)
        with self._new_line:
            self._new_line.notify_all()

    def output(self) -> str:
        """Return everything the process printed so far."""
        with self._new_line:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """Wait for an output line (from line index start on) matching pattern; return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(
                        f"{self.name} exited ({self.popen.returncode}) before {pattern!r}:\n{self.output()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name} did not print {pattern!r} within {timeout}s:\n{self.output()}"
                    )
                self._new_line.wait(min(remaining, 0.2))

    def running(self) -> bool:
        """Tell whether the process is still running."""
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal to the process if it still runs."""
        if self.running():
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """Stop with SIGTERM, then SIGKILL after timeout; return the exit code."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(2)
        return self.popen.returncode

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self._reader.join(2)


def wait_http(url: str, timeout: float = 15.0, process: Process | None = None) -> None:
    """Wait until url answers any HTTP status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if process is not None and not process.running():
                raise RuntimeError(f"{process.name} exited:\n{process.output()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout}s") from None
            time.sleep(0.05)


def fauxqs_installed() -> bool:
    """Tell whether fauxqs can run here: Node.js on the PATH and `npm ci` done (by make)."""
    return shutil.which("node") is not None and (ROOT / "node_modules" / "fauxqs" / "package.json").is_file()


def local_sqs_kinds() -> list[str]:
    """Return the local SQS implementations this machine can run, the preferred first."""
    return ["fauxqs", "moto"] if fauxqs_installed() else ["moto"]


def local_sqs_kind() -> str:
    """Return the local SQS to run: WIDGETS_LOCAL_SQS if set, else fauxqs when installed, else moto."""
    kind = os.environ.get(LOCAL_SQS_ENV, "").strip().lower()
    if not kind:
        kind = local_sqs_kinds()[0]
        if kind == "moto":
            say_fallback_once()
        return kind
    if kind not in LOCAL_SQS_CHOICES:
        raise ValueError(f"{LOCAL_SQS_ENV}={kind!r}: use one of {', '.join(LOCAL_SQS_CHOICES)}")
    if kind == "fauxqs" and not fauxqs_installed():
        raise ValueError(f"{LOCAL_SQS_ENV}=fauxqs, but fauxqs is not installed: {FAUXQS_HINT}")
    return kind


def local_sqs_version(kind: str) -> str:
    """Return the installed version of a local SQS implementation."""
    if kind == "moto":
        return version("moto")
    manifest = ROOT / "node_modules" / "fauxqs" / "package.json"
    return str(json.loads(manifest.read_text())["version"])


@functools.cache
def say_fallback_once() -> None:
    """Say once per process that the local SQS is moto's server because fauxqs is missing."""
    print(
        f"note: the local SQS is moto's server (slow), as fauxqs is not installed: {FAUXQS_HINT}",
        file=sys.stderr,
        flush=True,
    )


def start_sqs(
    port: int | None = None, echo: Callable[[str, str], None] | None = None, kind: str | None = None
) -> tuple[Process, str]:
    """Start a local SQS on 127.0.0.1 (kind, else local_sqs_kind()); return it and its endpoint URL."""
    kind = kind or local_sqs_kind()
    # A held port (free_port), not port 0: a test that restarts the SQS finds its port still free.
    port = port or free_port()
    if kind == "fauxqs":
        argv = ["node", str(ROOT / "devtools" / "local_sqs.mjs"), "--port", str(port)]
        process = Process("sqs", argv, echo=echo)
        endpoint = process.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
        return process, endpoint
    process = Process("sqs", [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], echo=echo)
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", process=process)
    return process, endpoint


def start_latency_proxy(
    target: str, latency_ms: float, echo: Callable[[str, str], None] | None = None
) -> tuple[Process, str]:
    """Start devtools.latency_proxy in front of target (an endpoint URL); return it and its endpoint URL."""
    argv = [PYTHON, "-m", "devtools.latency_proxy", "--target", target, "--latency-ms", str(latency_ms)]
    process = Process("latency-proxy", argv, echo=echo)
    endpoint = process.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    return process, endpoint


def start_fault_proxy(
    target: str, args: Sequence[str] = (), echo: Callable[[str, str], None] | None = None
) -> tuple[Process, str]:
    """Start devtools.fault_proxy in front of target with its options (args); return it and its endpoint URL.

    SIGUSR1 and SIGUSR2 start and end an outage (Process.signal), SIGTERM stops it.
    """
    argv = [PYTHON, "-m", "devtools.fault_proxy", "--target", target, *args]
    process = Process("fault-proxy", argv, echo=echo)
    endpoint = process.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    return process, endpoint


def start_maker(
    db: str | Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    echo: Callable[[str, str], None] | None = None,
    args: Sequence[str] = (),
) -> tuple[Process, str]:
    """Start the widget maker; return it and its base URL once it answers /healthz."""
    port = port or free_port()
    argv = [PYTHON, "widget_maker.py", "--port", str(port)]
    if "://" in str(db):
        # A database URL goes through the environment: on the command line, ps would show its password.
        env = {**(env or {}), "WIDGET_MAKER_DB": str(db)}
    else:
        argv += ["--db", str(db)]
    process = Process("maker", [*argv, *args], env=env, echo=echo)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", process=process)
    return process, base


def start_consumer(
    endpoint: str,
    maker_url: str,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    echo: Callable[[str, str], None] | None = None,
    name: str = "consumer",
) -> Process:
    """Start a consumer on the local SQS; return it once it is consuming."""
    argv = [PYTHON, "widget_consumer.py", "--endpoint-url", endpoint, "--maker-url", maker_url, *args]
    process = Process(name, argv, env=env, echo=echo)
    process.wait_for(r"consuming ")
    return process


def run_script(
    script: str, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one of the scripts to completion; return its result with output captured."""
    return subprocess.run(
        [PYTHON, script, *args],
        cwd=ROOT,
        env=script_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_on_signals() -> threading.Event:
    """Return an event that the first SIGINT or SIGTERM sets (for a foreground tool's main loop)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def chosen_sqs_kind() -> str | None:
    """Return the local SQS to start, or None after saying in one line why the choice is wrong."""
    try:
        return local_sqs_kind()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
