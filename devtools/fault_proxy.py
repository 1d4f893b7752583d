"""An HTTP proxy on 127.0.0.1 that makes a local SQS misbehave as Amazon SQS and its network can.

It reads each call (HTTP/1.1, kept-alive connections included) and, for the share of calls each
rate gives, drawn from a seeded random sequence (one draw per call it can name):

- internal-failure: answers 500 InternalFailure itself; the call never reaches SQS;
- throttle: answers 400 RequestThrottled itself (botocore counts it as throttling);
- reset-before: resets the connection instead of forwarding; the call never reaches SQS;
- reset-after: forwards, reads SQS's whole answer, then resets: the call took effect, the client
  sees a failure;
- hold: forwards, and holds SQS's answer until the client gives up (its read timeout) or
  --hold-seconds pass, then resets: the call took effect, the client times out.

An outage refuses new connections and resets the open ones, as an endpoint that cannot be reached
does; SIGUSR1 starts it and SIGUSR2 ends it (tests call proxy.outage(True/False)). Only calls
that name their action (X-Amz-Target, as botocore's JSON protocol sends, or a query Action) are
counted and faulted; --actions limits the faults to some actions.

    venv/bin/python -m devtools.fault_proxy --target http://127.0.0.1:9324 --seed 1 \\
        --internal-failure 0.05 --throttle 0.05 --reset-before 0.05 --reset-after 0.05 --hold 0.05

prints "fault proxy listening on http://127.0.0.1:PORT" once it accepts connections, "outage on"
and "outage off" as the signals switch it, and on SIGTERM or Ctrl-C a last line
"summary {json}" with the calls and faults per action. Tests can run it in a thread of their own
process instead: FaultProxy(...).start().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from devtools.latency_proxy import InThread, parse_target

FAULTS = ("internal-failure", "throttle", "reset-before", "reset-after", "hold")
# Statuses whose answers never have a body (RFC 9112, 6.3).
NO_BODY = (204, 304)


def error_answer(status: str, code: str, fault: str, message: str) -> bytes:
    """Return a whole HTTP answer with an SQS JSON-protocol error, as Amazon SQS sends it."""
    namespace = "com.amazon.coral.service" if code == "InternalFailure" else "com.amazonaws.sqs"
    body = json.dumps({"__type": f"{namespace}#{code}", "message": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"x-amzn-RequestId: {uuid.uuid4()}\r\n"
        # botocore reads the error code from this header first (SQS is "awsQueryCompatible").
        f"x-amzn-query-error: {code};{fault}\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


ANSWERS = {
    "internal-failure": lambda: error_answer(
        "500 Internal Server Error",
        "InternalFailure",
        "Receiver",
        "The request processing has failed because of an unknown error, exception or failure.",
    ),
    "throttle": lambda: error_answer("400 Bad Request", "RequestThrottled", "Sender", "Rate exceeded"),
}


@dataclass(frozen=True)
class Message:
    """One HTTP request or answer as read: its first line, headers (lower-case names), raw bytes."""

    start: str
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def closes(self) -> bool:
        """Tell whether the connection ends after this message (Connection: close)."""
        return "close" in self.headers.get("connection", "").lower()


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read a chunked body; return its data and its raw bytes (framing and trailers)."""
    data, raw = b"", b""
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        data += chunk[:-2]
    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
        raw += trailer
    return data, raw + b"\r\n"


async def read_message(reader: asyncio.StreamReader, method: str | None = None) -> Message | None:
    """Read one request (method None) or the answer to a request of method; None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise
        return None
    start, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    status = int(start.split()[1]) if method is not None else 0
    if method == "HEAD" or status in NO_BODY or 100 <= status < 200:
        body = raw = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body, raw = await read_chunked(reader)
    elif "content-length" in headers:
        body = raw = await reader.readexactly(int(headers["content-length"]))
    elif method is None:
        body = raw = b""  # a request without a length has no body
    else:
        body = raw = await reader.read()  # an answer without a length ends with the connection
        headers["connection"] = "close"
    return Message(start, headers, body, head + raw)


def action_of(request: Message) -> str | None:
    """Return the SQS action a request calls (JSON or query protocol), or None if it names none."""
    target = request.headers.get("x-amz-target", "")
    if target.startswith("AmazonSQS."):
        return target.partition(".")[2] or None
    if "x-www-form-urlencoded" in request.headers.get("content-type", ""):
        actions = parse_qs(request.body.decode("latin-1")).get("Action")
        return actions[0] if actions else None
    return None


def reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (RST), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def check_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """Return the rates of every fault (0 for those not given); ValueError names a wrong one."""
    unknown = set(rates) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}: use {', '.join(FAULTS)}")
    for fault, rate in rates.items():
        if not 0 <= rate <= 1:
            raise ValueError(f"--{fault} must be between 0 and 1, not {rate:g}")
    if sum(rates.values()) > 1:
        raise ValueError(f"the fault rates add up to {sum(rates.values()):g}: at most 1")
    return {fault: float(rates.get(fault, 0.0)) for fault in FAULTS}


class FaultProxy(InThread):
    """Listens on 127.0.0.1 and forwards HTTP calls to target, faulting a seeded share of them."""

    name = "fault proxy"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        rates: Mapping[str, float],
        *,
        seed: int | None = None,
        hold_seconds: float = 60.0,
        actions: Iterable[str] = (),
        port: int = 0,
        on_fault: Callable[[str, str], None] | None = None,
    ) -> None:
        """Set up a proxy to target on 127.0.0.1:port (0: any free one); rates maps FAULTS to shares."""
        self.target = (target_host, target_port)
        self.rates = check_rates(rates)
        self.hold_seconds = hold_seconds
        self.actions = frozenset(actions)
        self.port = port
        self.calls: Counter[str] = Counter()
        self.faults: Counter[tuple[str, str]] = Counter()
        self.in_outage = False
        self._on_fault = on_fault
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """Return the proxy's URL, for an SQS client's endpoint_url."""
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        """Return copies of the calls per action and the faults per (action, fault)."""
        with self._lock:
            return Counter(self.calls), Counter(self.faults)

    def choose(self, action: str | None) -> str | None:
        """Count a call and draw its fault, if any; calls without a name are left alone."""
        if action is None:
            return None
        with self._lock:
            self.calls[action] += 1
            if self.actions and action not in self.actions:
                return None
            draw = self._random.random()
            for fault, rate in self.rates.items():
                if draw < rate:
                    self.faults[(action, fault)] += 1
                    break
                draw -= rate
            else:
                return None
        if self._on_fault is not None:
            self._on_fault(action, fault)
        return fault

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one call of a client connection; return whether the connection stays open."""
        request = await read_message(reader)
        if request is None:
            return False
        fault = self.choose(action_of(request))
        if fault == "reset-before":
            raise ConnectionResetError("fault: reset before forwarding")
        if fault in ANSWERS:
            writer.write(ANSWERS[fault]())
            await writer.drain()
            return not request.closes()
        # One connection to the target per call: a call faulted after forwarding leaves no
        # half-read answer behind, and SQS is local, so a connection costs little.
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        try:
            server_writer.write(request.raw)
            await server_writer.drain()
            method = request.start.split(" ", 1)[0]
            while (answer := await read_message(server_reader, method)) is not None:
                if not 100 <= int(answer.start.split()[1]) < 200:
                    break
                writer.write(answer.raw)  # an interim answer (100 Continue): the real one follows
        finally:
            server_writer.transport.abort()
        if answer is None:
            raise ConnectionResetError("the target closed the connection without answering")
        if fault == "hold":
            # Until the client gives up (it closes its end at its read timeout), or hold_seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), self.hold_seconds)
            raise ConnectionResetError("fault: answer held")
        if fault == "reset-after":
            raise ConnectionResetError("fault: reset after forwarding")
        writer.write(answer.raw)
        await writer.drain()
        return not (request.closes() or answer.closes())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection call by call; reset it on a fault, an error or an outage."""
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        orderly = False
        try:
            if not self.in_outage:  # accepted just before an outage began
                while await self._exchange(reader, writer):
                    pass
                orderly = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
            pass  # a fault, the target unreachable or a malformed message: the client sees a reset
        except asyncio.CancelledError:
            pass  # an outage or the proxy's stop: reset below
        finally:
            if orderly:
                writer.close()
            else:
                reset(writer)
            self._handlers.discard(handler)

    async def _listen(self) -> None:
        """Start accepting connections on the proxy's port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def switch(self, on: bool) -> None:
        """Start (True) or end (False) an outage: refuse new connections and reset the open ones."""
        if on == self.in_outage:
            return
        self.in_outage = on
        if not on:
            await self._listen()
            return
        if self._server is not None:
            self._server.close()
            self._server = None
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def outage(self, on: bool, timeout: float = 5.0) -> None:
        """From another thread: start or end an outage; return once it is in effect."""
        assert self._loop is not None, "the proxy is not running"
        asyncio.run_coroutine_threadsafe(self.switch(on), self._loop).result(timeout)

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Accept connections until this task is cancelled; call on_ready once listening."""
        self._loop = asyncio.get_running_loop()
        self._serving = asyncio.current_task()
        # A socket bound to the port, never listening, keeps it ours through outages: no other
        # bind to port 0 nor outgoing connection gets it while nothing listens (see stack.free_port).
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", self.port))
            self.port = int(holder.getsockname()[1])
            await self._listen()
            if on_ready is not None:
                on_ready()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        finally:
            self.in_outage = False
            await self.switch(True)  # stops listening and ends every connection
            holder.close()


def summary(proxy: FaultProxy) -> str:
    """Return the calls and faults so far as one JSON object ({"calls": {...}, "faults": {...}})."""
    calls, faults = proxy.counts()
    by_action: dict[str, dict[str, int]] = {}
    for (action, fault), count in sorted(faults.items()):
        by_action.setdefault(action, {})[fault] = count
    return json.dumps({"calls": dict(sorted(calls.items())), "faults": by_action})


async def serve_until_signal(proxy: FaultProxy) -> None:
    """Serve until SIGTERM or SIGINT; SIGUSR1 and SIGUSR2 start and end an outage."""

    def say_ready() -> None:
        """Print the line the launcher waits for."""
        rates = ", ".join(f"{fault} {rate:g}" for fault, rate in proxy.rates.items() if rate)
        print(
            f"fault proxy listening on {proxy.endpoint}, to {proxy.target[0]}:{proxy.target[1]}, "
            f"faults: {rates or 'none'}",
            flush=True,
        )

    async def switch(on: bool) -> None:
        """Switch the outage and say so once it is in effect."""
        await proxy.switch(on)
        print(f"outage {'on' if on else 'off'}", flush=True)

    serving = asyncio.create_task(proxy.serve(say_ready))
    loop = asyncio.get_running_loop()
    switches: set[asyncio.Task[None]] = set()  # keeps each switch's task alive until it is done

    def on_signal(on: bool) -> None:
        """Switch the outage from a signal handler."""
        task = loop.create_task(switch(on))
        switches.add(task)
        task.add_done_callback(switches.discard)

    loop.add_signal_handler(signal.SIGUSR1, on_signal, True)
    loop.add_signal_handler(signal.SIGUSR2, on_signal, False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    print(f"summary {summary(proxy)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fault_proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", required=True, help="where to forward to, e.g. http://127.0.0.1:9324")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault draws (default: random)")
    for fault in FAULTS:
        parser.add_argument(f"--{fault}", type=float, default=0.0, metavar="RATE", help="share of calls")
    parser.add_argument(
        "--hold-seconds", type=float, default=60.0, help="longest hold, if the client waits (default 60)"
    )
    parser.add_argument("--actions", default="", help="fault only these actions, e.g. SendMessageBatch,...")
    parser.add_argument("--verbose", action="store_true", help="print a line for each fault")
    args = parser.parse_args(argv)
    rates = {fault: getattr(args, fault.replace("-", "_")) for fault in FAULTS}
    if args.hold_seconds <= 0:
        parser.error("--hold-seconds must be more than 0")
    try:
        host, port = parse_target(args.target)
        proxy = FaultProxy(
            host,
            port,
            rates,
            seed=args.seed,
            hold_seconds=args.hold_seconds,
            actions=[a for a in args.actions.split(",") if a],
            port=args.port,
            on_fault=(lambda action, fault: print(f"fault {fault} {action}", flush=True))
            if args.verbose
            else None,
        )
    except ValueError as error:
        parser.error(str(error))
    asyncio.run(serve_until_signal(proxy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
