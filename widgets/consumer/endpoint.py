"""The consumer's HTTP endpoint (--metrics-port): GET /metrics and GET /healthz, on one small server.

A ThreadingHTTPServer of the standard library: prometheus_client's own server has no room for
/healthz, and a scrape must not wait behind a slow one. It binds only the host it is given.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from widgets.consumer.health import Health

log = logging.getLogger(__name__)


class IPv6Server(ThreadingHTTPServer):
    """The same server on an IPv6 address (--metrics-host ::1)."""

    address_family = socket.AF_INET6


class Endpoint:
    """Binds its port when built, so a port in use is found before anything starts; serves after start()."""

    def __init__(self, *, host: str, port: int) -> None:
        """Bind host:port now (OSError if it cannot be had; port 0 picks a free one)."""
        self.metrics: Callable[[str | None], tuple[bytes, str]] | None = None
        self.health: Callable[[], Health] | None = None
        server_class = IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="endpoint", daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """Return the request handler class, bound to this endpoint."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                assert endpoint.metrics is not None and endpoint.health is not None
                if path == "/metrics":
                    body, content_type = endpoint.metrics(self.headers.get("Accept"))
                    self._answer(200, body, content_type)
                elif path == "/healthz":
                    health = endpoint.health()
                    self._answer(health.status, json.dumps(health.body).encode(), "application/json")
                else:
                    self._answer(404, b'{"error": "not found: try /metrics or /healthz"}', "application/json")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Scrapes and probes every few seconds would drown the outcome lines.
                log.debug("endpoint %s", format % args)

        return Handler

    @property
    def url(self) -> str:
        """Return the endpoint's base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(
        self, *, metrics: Callable[[str | None], tuple[bytes, str]], health: Callable[[], Health]
    ) -> None:
        """Serve metrics(accept) -> (body, type) at /metrics and health() at /healthz, in the background."""
        self.metrics = metrics
        self.health = health
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
