"""The latency proxy: every SQS call through it costs at least the latency, calls in flight wait together."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

from devtools.latency_proxy import LatencyProxy, parse_target
from devtools.stack import free_port, start_latency_proxy
from widgets.sqs import make_client

LATENCY_MS = 100
PARALLEL = 8


@pytest.fixture
def sqs_server() -> Iterator[str]:
    """Moto's SQS as a real HTTP server on 127.0.0.1, in this process; yield its endpoint."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def proxy(sqs_server: str) -> Iterator[LatencyProxy]:
    """A latency proxy of LATENCY_MS in front of the SQS server, in a thread of this process."""
    with LatencyProxy(*parse_target(sqs_server), LATENCY_MS) as started:
        yield started


@pytest.fixture(autouse=True)
def _fake_credentials(aws_env: None) -> None:
    """Every test here talks to a local server with fake credentials."""


def test_one_call_costs_at_least_the_latency(proxy: LatencyProxy) -> None:
    """A queue created and listed through the proxy is there, and each call took the latency or more."""
    sqs = make_client(None, proxy.endpoint)
    started = time.perf_counter()
    url = sqs.create_queue(QueueName="through-proxy")["QueueUrl"]
    first = time.perf_counter() - started
    started = time.perf_counter()
    urls = sqs.list_queues().get("QueueUrls", [])
    second = time.perf_counter() - started
    assert urls == [url]
    assert first >= LATENCY_MS / 1000
    assert second >= LATENCY_MS / 1000  # on a kept-alive connection too


def test_parallel_connections_wait_together(proxy: LatencyProxy) -> None:
    """N calls on N connections at once take about one latency; the same N one after another, N."""
    sqs = make_client(None, proxy.endpoint, max_connections=PARALLEL)
    url = sqs.create_queue(QueueName="parallel")["QueueUrl"]

    started = time.perf_counter()
    for i in range(PARALLEL):
        sqs.send_message(QueueUrl=url, MessageBody=f"one after another {i}")
    sequential = time.perf_counter() - started

    barrier = threading.Barrier(PARALLEL + 1)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        """Send one message once every thread is ready."""
        barrier.wait(5)
        try:
            sqs.send_message(QueueUrl=url, MessageBody=f"at once {i}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(PARALLEL)]
    for thread in threads:
        thread.start()
    barrier.wait(5)
    started = time.perf_counter()
    for thread in threads:
        thread.join(10)
    parallel = time.perf_counter() - started

    assert errors == []
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == str(2 * PARALLEL)
    assert sequential >= PARALLEL * LATENCY_MS / 1000
    assert parallel >= LATENCY_MS / 1000
    assert parallel < sequential / 2


class Echo(socketserver.BaseRequestHandler):
    """Send back every byte received, as it comes."""

    def handle(self) -> None:
        """Echo until the client closes."""
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_chunks_keep_their_order_and_the_proxy_stops() -> None:
    """Chunks sent in a burst arrive whole and in order, each held back; after stop, nothing listens."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as echo:
        echo.daemon_threads = True
        serving = threading.Thread(target=echo.serve_forever, daemon=True)
        serving.start()
        proxy = LatencyProxy("127.0.0.1", echo.server_address[1], LATENCY_MS).start()
        try:
            sent = b"".join(f"chunk {i:04d};".encode() for i in range(200))
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                started = time.perf_counter()
                for start in range(0, len(sent), 100):
                    client.sendall(sent[start : start + 100])
                client.shutdown(socket.SHUT_WR)
                received = b""
                while data := client.recv(65536):
                    received += data
                elapsed = time.perf_counter() - started
            assert received == sent
            assert elapsed >= LATENCY_MS / 1000
        finally:
            proxy.stop()
            echo.shutdown()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", proxy.port), 1):
            pass


@pytest.mark.timeout(30)
def test_as_a_process_it_prints_its_port_and_stops_on_sigterm(sqs_server: str) -> None:
    """As `python -m devtools.latency_proxy` it says where it listens, forwards, and exits 0 on SIGTERM."""
    process, endpoint = start_latency_proxy(sqs_server, 5)
    try:
        sqs = make_client(None, endpoint)
        url = sqs.create_queue(QueueName="via-process")["QueueUrl"]
        assert url.endswith("/via-process")
    finally:
        code = process.stop(timeout=5)
    assert code == 0, process.output()


def test_a_target_without_a_port_is_refused() -> None:
    """The target must say its port: the proxy cannot guess it."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target("http://127.0.0.1")
    assert parse_target("127.0.0.1:9324") == ("127.0.0.1", 9324)


def test_jitter_spreads_the_latency_and_is_seeded() -> None:
    """With jitter each chunk waits latency +/- jitter, drawn from a seeded generator."""
    draws = [LatencyProxy("127.0.0.1", 1, 20, jitter_ms=5, seed=7).delay() for _ in range(2)]
    proxy = LatencyProxy("127.0.0.1", 1, 20, jitter_ms=5, seed=7)
    delays = [proxy.delay() for _ in range(200)]
    assert delays[0] == draws[0] == draws[1]
    assert all(0.015 <= d <= 0.025 for d in delays)
    assert max(delays) - min(delays) > 0.008
    with pytest.raises(ValueError, match="jitter"):
        LatencyProxy("127.0.0.1", 1, 20, jitter_ms=25)
