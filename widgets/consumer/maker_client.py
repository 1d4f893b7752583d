"""The consumer's HTTP client for its target (the widget maker, or any service): one call per request,
its answer classified as OK, REJECTED or RETRY."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

from widgets.consumer.observer import Observer
from widgets.consumer.signing import Signer
from widgets.messages import OK, REJECTED, RETRY
from widgets.sqs import MAX_VISIBILITY

# How a call that must be retried failed, which tells the breaker whose fault it is likely to be.
UNREACHABLE = "unreachable"  # no connection at all: the maker is down, whatever the request
OVERLOADED = "overloaded"  # 429 or 503: the maker says itself that it cannot take requests now
FAILING = "failing"  # another 5xx, a timeout, 401/403/408: this request, or the maker; one call cannot tell
# Why a call got no HTTP answer, for the metrics (UNREACHABLE too).
TIMEOUT = "timeout"
ERROR = "error"

OVERLOADED_STATUS_CODES = {429, 503}
# Answers under 500 that say "not now" rather than "never": the request is retried, every other
# 4xx is REJECTED. 401, 403 and 407: a wrong token, signing secret or proxy password is the
# relay's fault, not the request's, and rejecting every request until someone fixes it would
# discard them all. 408: the target gave up waiting for the request, which may go through next
# time. 409: a conflict with the target's current state (a concurrent change, an earlier request
# of the same resource still in progress), which passes. 429: too many requests, for now.
RETRY_STATUS_CODES = {401, 403, 407, 408, 409, 429}
# How much of a target's answer an outcome report quotes.
MAX_BODY_EXCERPT = 1000
# How long the start-up check and the breaker's probes wait for GET /healthz.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Call:
    """One HTTP call a request makes, as its adapter built it from the message."""

    request_id: str  # the id it was first sent with: webhook-id and Idempotency-Key
    body: bytes
    headers: dict[str, str]
    subject: str | None = None  # what the request is about, for logs and reports (a widget id)


@dataclass(frozen=True)
class MakerAnswer:
    """The target's answer to one call: OK, REJECTED or RETRY, why, and for RETRY how it failed."""

    status: str
    reason: str | None = None
    widget: dict[str, Any] | None = None  # a 2xx answer's JSON object, if it was one
    failure: str | None = None  # for RETRY: UNREACHABLE, OVERLOADED or FAILING
    retry_after: float | None = None  # seconds the target asked us to wait (Retry-After)
    code: int | None = None  # the HTTP status, None when there was no answer
    body: bytes = b""  # the start of the answer's body (MAX_BODY_EXCERPT bytes)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a Retry-After header asks for (seconds or an HTTP date), capped at 12 hours."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), float(MAX_VISIBILITY))


def maker_error(status: int, body: bytes, name: str = "maker") -> str:
    """Return the reason an answer gives, from its JSON error body when there is one."""
    try:
        detail = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        detail = None
    return f"{name} answered {status}" + (f": {detail}" if detail else "")


class Connections:
    """Opens keep-alive HTTP connections to the maker, one per thread, directly or through a proxy.

    http.client, not urllib3 or requests: a call through urllib3's pool cost the consumer twice
    the CPU of the same call on http.client (0.6 vs 0.3 ms, measured alone), and a worker that
    keeps a connection of its own needs no pool. Proxy and CA settings are read from the
    environment once, as requests would: HTTP(S)_PROXY and NO_PROXY, REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE.
    """

    def __init__(self, url: str) -> None:
        """Prepare connections to url's host (each call sets its own timeout)."""
        parsed = urlsplit(url)
        self.host = parsed.hostname or ""
        self.https = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.https else 80)
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        self.tls = ssl.create_default_context(cafile=ca_bundle) if self.https else None
        proxy = None if proxy_bypass(self.host) else getproxies().get(parsed.scheme)
        self.proxy = urlsplit(proxy) if proxy else None
        # Through a proxy, plain HTTP asks it for the whole URL; HTTPS tunnels through it (CONNECT).
        self.forwarded = self.proxy is not None and not self.https
        self.proxy_headers: dict[str, str] = {}
        if self.proxy and self.proxy.username:
            credentials = f"{unquote(self.proxy.username)}:{unquote(self.proxy.password or '')}"
            self.proxy_headers["Proxy-Authorization"] = "Basic " + b64encode(credentials.encode()).decode()
        self._local = threading.local()

    def target(self, url: str) -> str:
        """Return what goes on the request line for url: its path, or all of it to a plain HTTP proxy."""
        if self.forwarded:
            return url
        parsed = urlsplit(url)
        return (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")

    def headers(self) -> dict[str, str]:
        """Return the headers every request needs for the proxy (none without one, or through a tunnel)."""
        return self.proxy_headers if self.forwarded else {}

    def mine(self) -> http.client.HTTPConnection:
        """Return this thread's connection (not yet connected the first time)."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._new()
        return connection

    def _new(self) -> http.client.HTTPConnection:
        """Return a new, unconnected connection to the maker or to the proxy in front of it."""
        host, port = self.host, self.port
        if self.proxy:
            host, port = self.proxy.hostname or "", self.proxy.port or 80
        connection: http.client.HTTPConnection
        if self.https:
            connection = http.client.HTTPSConnection(host, port, context=self.tls)
            if self.proxy:
                connection.set_tunnel(self.host, self.port, headers=self.proxy_headers)
        else:
            connection = http.client.HTTPConnection(host, port)
        return connection


class NoConnection(Exception):
    """The maker could not be connected to at all."""


class MakerClient:
    """Makes each request's call to the target and says whether it is up, each thread on its own connection.

    Every call carries its request id as Idempotency-Key and, with a signer, is signed (signing.py).
    """

    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        method: str = "POST",
        health_url: str | None = None,
        signer: Signer | None = None,
        name: str = "maker",
        observer: Observer | None = None,
    ) -> None:
        """Prepare a client calling url; health_url is what the breaker probes (None: a TCP connect)."""
        self.url = url
        self.method = method
        self.name = name
        self.signer = signer
        self.observer = observer or Observer()
        self.in_flight = 0  # calls under way
        self._in_flight_lock = threading.Lock()
        self.timeout = timeout
        self.health_url = health_url
        self.connections = Connections(url)
        # What goes on the request line, worked out once: this runs for every message.
        self.call_target = self.connections.target(url)
        self.health_target = self.connections.target(health_url) if health_url else None
        self.headers = self.connections.headers()

    def send(self, call: Call) -> MakerAnswer:
        """Make one request's call, classify the answer, and report the call."""
        with self._in_flight_lock:
            self.in_flight += 1
        started = time.perf_counter()
        try:
            answer, no_answer = self._send(call)
        finally:
            with self._in_flight_lock:
                self.in_flight -= 1
        self.observer.maker_call(answer.code, no_answer, time.perf_counter() - started)
        return answer

    def _send(self, call: Call) -> tuple[MakerAnswer, str | None]:
        """Make one call; return its classified answer and, when there was none, why not."""
        headers = {**self.headers, **call.headers, "Idempotency-Key": call.request_id}
        if self.signer is not None:
            headers.update(self.signer.headers(call.request_id, call.body))
        name = self.name
        try:
            code, answer_headers, data = self.call(
                self.method, self.call_target, call.body, headers, self.timeout
            )
        except NoConnection:  # refused, no route, no name, connect timeout, TLS refused
            return MakerAnswer(RETRY, f"{name} unreachable", failure=UNREACHABLE), UNREACHABLE
        except TimeoutError:
            reason = f"{name} did not answer within {self.timeout:g}s"
            return MakerAnswer(RETRY, reason, failure=FAILING), TIMEOUT
        except ConnectionError:  # the connection dropped: the target went away
            reason = f"{name} unreachable (connection lost)"
            return MakerAnswer(RETRY, reason, failure=UNREACHABLE), UNREACHABLE
        except (http.client.HTTPException, OSError) as exc:
            return MakerAnswer(RETRY, f"{name} call failed: {type(exc).__name__}", failure=FAILING), ERROR
        return self.classify(code, answer_headers, data, name), None

    def call(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Make one HTTP call on this thread's connection, each step within timeout; return its answer.

        A kept-alive connection the maker closed meanwhile (after its idle timeout, or a restart)
        fails as soon as it is used; that call is made once more on a new connection. Safe for the
        POST too: it carries an Idempotency-Key, which the maker honours (Go's net/http retries on
        the same grounds).
        """
        connection = self.connections.mine()
        connection.timeout = timeout
        reused = connection.sock is not None
        try:
            return self._exchange(connection, method, target, body, headers)
        except ConnectionError:
            if not reused:
                raise
        return self._exchange(connection, method, target, body, headers)

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request and read its whole answer; close the connection if anything went wrong."""
        try:
            if connection.sock is None:
                try:
                    connection.connect()
                except OSError as exc:
                    raise NoConnection(str(exc)) from exc
            else:
                connection.sock.settimeout(connection.timeout)
            connection.request(method, target, body, headers)
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        except BaseException:
            connection.close()  # its state is unknown now: the next call starts afresh
            raise

    @staticmethod
    def classify(
        code: int, headers: http.client.HTTPMessage, data: bytes, name: str = "maker"
    ) -> MakerAnswer:
        """Turn an HTTP answer into OK, REJECTED or RETRY."""
        excerpt = data[:MAX_BODY_EXCERPT]
        if 200 <= code < 300:
            widget = None
            if data.lstrip()[:1] == b"{":
                try:
                    widget = json.loads(data)
                except (ValueError, RecursionError):
                    widget = None
            return MakerAnswer(
                OK, widget=widget if isinstance(widget, dict) else None, code=code, body=excerpt
            )
        reason = maker_error(code, data, name)
        if code in OVERLOADED_STATUS_CODES:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            return MakerAnswer(RETRY, reason, None, OVERLOADED, retry_after, code, excerpt)
        if code >= 500 or code in RETRY_STATUS_CODES:
            return MakerAnswer(RETRY, reason, failure=FAILING, code=code, body=excerpt)
        return MakerAnswer(REJECTED, reason, code=code, body=excerpt)

    def healthy(self) -> bool:
        """Tell whether the target is up: GET health_url answers a 2xx, or without one, a connection opens."""
        timeout = min(self.timeout, PROBE_TIMEOUT)
        if self.health_target is None:
            host, port = self.connections.host, self.connections.port
            if self.connections.proxy is not None:
                return True  # through a proxy only a call can tell; trial calls will
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError:
                return False
            return True
        try:
            code, _, _ = self.call("GET", self.health_target, None, self.connections.headers(), timeout)
        except (NoConnection, http.client.HTTPException, OSError):
            return False
        return 200 <= code < 300
