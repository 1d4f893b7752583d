"""A TCP proxy on 127.0.0.1 that adds a latency to every request, as a trip to Amazon SQS would.

Each chunk a client sends is held for the latency (plus or minus a seeded random jitter, if
asked), then passed on to the server in the order it came (per connection); the answers come
back at once. With jitter, calls in flight at once on different connections may reach the
server in another order than they were made, as on a real network. So every request/response exchange costs
at least the latency, and connections in flight at once each wait on their own, as on a real
network: throughput against it comes only from calls in flight together.

    venv/bin/python -m devtools.latency_proxy --target http://127.0.0.1:9324 --latency-ms 20 [--jitter-ms 5]

prints "listening on http://127.0.0.1:PORT" once it accepts connections; SIGTERM or Ctrl-C stops it.
Tests and the bench can also run it in a thread of their own process: LatencyProxy(...).start().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

CHUNK = 64 * 1024
# A chunk of None in a connection's delay line: the client closed its side.
CLOSED = None


async def pipe_later(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    latency: Callable[[], float],
) -> None:
    """Copy reader to writer, each chunk latency() seconds after it arrived (or after the one before)."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def send() -> None:
        """Pass each chunk on when its time comes; close the writer's side after the last."""
        while True:
            due, chunk = await line.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if chunk is CLOSED:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(CHUNK):
            line.put_nowait((loop.time() + latency(), chunk))
        line.put_nowait((loop.time() + latency(), CLOSED))
        await sender
    finally:
        sender.cancel()


async def pipe_now(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy reader to writer as chunks come; close the writer's side at the end."""
    while chunk := await reader.read(CHUNK):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


class InThread:
    """Runs an asyncio proxy's serve(on_ready) in a thread of this process: start(), stop(), with."""

    name = "proxy"
    _loop: asyncio.AbstractEventLoop | None = None
    _serving: asyncio.Task[None] | None = None
    _thread: threading.Thread | None = None

    def serve(self, on_ready: Callable[[], None] | None = None) -> Coroutine[Any, Any, None]:
        """Serve until cancelled, calling on_ready once listening (the proxy's own)."""
        raise NotImplementedError

    def start(self, timeout: float = 5.0) -> Self:
        """Run the proxy in a thread of this process; return once it listens."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self.serve(ready.set),), name=self.name, daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the {self.name} did not start within {timeout}s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every connection, and wait for the proxy's thread."""
        loop, serving = self._loop, self._serving
        if loop is not None and serving is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already closed
                loop.call_soon_threadsafe(serving.cancel)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        """Start the proxy in a thread."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the proxy."""
        self.stop()


class LatencyProxy(InThread):
    """Listens on 127.0.0.1 and forwards each connection to target, latency_ms (+/- jitter_ms) later."""

    name = "latency proxy"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        latency_ms: float,
        port: int = 0,
        jitter_ms: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Set up a proxy to target_host:target_port on 127.0.0.1:port (0: any free port)."""
        if not 0 <= jitter_ms <= latency_ms:
            raise ValueError("the jitter must be between 0 and the latency")
        self.target = (target_host, target_port)
        self.latency = latency_ms / 1000
        self.jitter = jitter_ms / 1000
        self._random = random.Random(seed)
        self.port = port
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """Return the proxy's URL, for an SQS client's endpoint_url."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Serve one client connection: connect to the target and pipe both ways until both close."""
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        server_writer: asyncio.StreamWriter | None = None
        pipes: list[asyncio.Task[None]] = []
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
            pipes = [
                asyncio.create_task(pipe_later(client_reader, server_writer, self.delay)),
                asyncio.create_task(pipe_now(server_reader, client_writer)),
            ]
            # Both directions run until each side has closed, or until one of them fails.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        except OSError:
            pass  # the target refused or reset: the client sees its connection closed
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.close()
            self._handlers.discard(handler)

    def delay(self) -> float:
        """Return how long to hold the next chunk: the latency, plus or minus the jitter."""
        return self.latency + self._random.uniform(-self.jitter, self.jitter) if self.jitter else self.latency

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Accept connections until this task is cancelled; call on_ready once listening."""
        self._loop = asyncio.get_running_loop()
        self._serving = asyncio.current_task()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        if on_ready is not None:
            on_ready()
        try:
            await server.serve_forever()
        except asyncio.CancelledError:
            pass
        finally:
            server.close()
            # Closing the server does not end the connections it accepted: cancel their handlers.
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)


def parse_target(url: str) -> tuple[str, int]:
    """Return host and port of a target given as a URL (http://127.0.0.1:9324) or host:port."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r}: give the target as http://HOST:PORT")
    return parts.hostname, parts.port


async def serve_until_signal(proxy: LatencyProxy) -> None:
    """Serve until SIGTERM or SIGINT, saying where it listens once it does."""

    def say_ready() -> None:
        """Print the line the launcher waits for."""
        print(
            f"latency proxy listening on {proxy.endpoint}, +{proxy.latency * 1000:g} ms to "
            f"{proxy.target[0]}:{proxy.target[1]}",
            flush=True,
        )

    serving = asyncio.create_task(proxy.serve(say_ready))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.latency_proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", required=True, help="where to forward to, e.g. http://127.0.0.1:9324")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every request (default 20)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus or minus, at random (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the jitter (default: random)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args(argv)
    if args.latency_ms < 0:
        parser.error("--latency-ms must be at least 0")
    if not 0 <= args.jitter_ms <= args.latency_ms:
        parser.error("--jitter-ms must be between 0 and --latency-ms")
    try:
        host, port = parse_target(args.target)
    except ValueError as error:
        parser.error(str(error))
    proxy = LatencyProxy(host, port, args.latency_ms, args.port, args.jitter_ms, args.seed)
    asyncio.run(serve_until_signal(proxy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
