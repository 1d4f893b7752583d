"""A small HTTP receiver on 127.0.0.1 that verifies Standard Webhooks signatures and prints each call.

    WEBHOOK_SECRET="whsec_... [whsec_...]" venv/bin/python -m devtools.webhook_receiver --port 8080 \
        [--reject-field reject]

prints "listening on http://127.0.0.1:PORT", then each call it gets (method, path, the headers worth
seeing, the body) and whether its signature verified, checked with Standard Webhooks' reference library
against every secret in WEBHOOK_SECRET (whitespace-separated: one matching is enough, as during a
rotation). It answers 200 with a small JSON ack; 401 when the signature is missing or refused; 422 when
the body is a JSON object whose --reject-field is true. Without WEBHOOK_SECRET it checks nothing and
says so. SIGTERM or Ctrl-C stops it. Tests run it in a thread: WebhookReceiver(...).start(), .calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TextIO

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devtools.stack import stop_on_signals

SECRET_ENV = "WEBHOOK_SECRET"
BODY_SHOWN = 300  # characters of a body printed
SHOWN_HEADERS = ("content-type", "idempotency-key", "traceparent", "tracestate")
SHOWN_PREFIXES = ("webhook-", "x-sqs-")


@dataclass(frozen=True)
class Call:
    """One call received: headers as sent (names as the client spelled them), the body's bytes."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


def secrets_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Return the secrets WEBHOOK_SECRET holds, whitespace-separated (none when unset or blank)."""
    return environ.get(SECRET_ENV, "").split()


def verified(webhooks: Sequence[Webhook], body: bytes, headers: Mapping[str, str]) -> bool:
    """Return whether the signature verifies with any of the secrets (with the reference library)."""
    try:
        text = body.decode("utf-8")  # Webhook.verify signs and compares the body as str
    except UnicodeDecodeError:
        return False
    for webhook in webhooks:
        try:
            webhook.verify(text, dict(headers), json_parse=False)
            return True
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed signature or base64
            continue
    return False


def rejected(body: bytes, field: str | None) -> bool:
    """Return whether the body is a JSON object whose field is true."""
    if field is None:
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get(field) is True


def describe(call: Call, status: int, checked: bool) -> str:
    """Return the lines printed for one call: request line, verdict, headers worth seeing, body, answer."""
    verdict = ("signature verified" if call.verified else "signature refused") if checked else "not checked"
    lines = [f"{call.method} {call.path}  {verdict}"]
    for name, value in call.headers.items():
        if name.lower() in SHOWN_HEADERS or name.lower().startswith(SHOWN_PREFIXES):
            lines.append(f"    {name}: {value}")
    text = call.body.decode("utf-8", errors="replace")
    shown = text if len(text) <= BODY_SHOWN else text[:BODY_SHOWN] + "..."
    lines.append(f"    body ({len(call.body)} bytes): {shown!r}")
    lines.append(f"    -> {status}")
    return "\n".join(lines)


class _Server(ThreadingHTTPServer):
    """The HTTP server, knowing the receiver it serves."""

    daemon_threads = True

    def __init__(self, port: int, receiver: WebhookReceiver) -> None:
        """Listen on 127.0.0.1:port for the receiver."""
        self.receiver = receiver
        self.connections: set[socket.socket] = set()  # open ones, closed by stop() as a crash would
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Note each connection while it lasts."""
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget a connection that ended."""
        self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    """Serves every method alike: read the body, verify, answer, record and print."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the relay's connection pool expects
    timeout = 30  # an idle kept-alive connection ends after this many seconds

    def handle_call(self) -> None:
        """Handle one call whatever its method."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.receiver.receive(self, body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_call

    def answer(self, status: int, document: Mapping[str, object]) -> None:
        """Send a JSON answer with the status."""
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Say nothing per request on stderr: describe() prints each call."""


class WebhookReceiver:
    """Receives calls on 127.0.0.1:port in a thread of its own; keeps each one in .calls."""

    def __init__(
        self,
        port: int = 0,
        secrets: Sequence[str] | None = None,
        reject_field: str | None = None,
        out: TextIO | None = None,
    ) -> None:
        """Set up the receiver (port 0: any free one; secrets None: WEBHOOK_SECRET's); out None: silent."""
        self.webhooks = [Webhook(secret) for secret in (secrets_from_env() if secrets is None else secrets)]
        self.reject_field = reject_field
        self.out = out
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = _Server(port, self)
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the receiver's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def receive(self, handler: _Handler, body: bytes) -> None:
        """Verify one call, keep it, print it and answer it."""
        headers = dict(handler.headers.items())
        call = Call(handler.command, handler.path, headers, body, verified(self.webhooks, body, headers))
        if self.webhooks and not call.verified:
            status, document = 401, {"error": "missing or bad webhook-signature"}
        elif rejected(body, self.reject_field):
            status, document = 422, {"error": f"{self.reject_field} is true"}
        else:
            status, document = 200, {"received": headers.get("webhook-id", "")}
        with self._lock:
            self.calls.append(call)  # before answering: a caller that got its answer finds its call here
            if self.out is not None:
                print(describe(call, status, bool(self.webhooks)), file=self.out, flush=True)
        handler.answer(status, document)

    def start(self) -> WebhookReceiver:
        """Serve in a daemon thread; return self (already listening)."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        # And the kept-alive connections, as a target that goes down takes them with it.
        for connection in list(self._server.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> WebhookReceiver:
        """Start the receiver."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Stop the receiver."""
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the receiver until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.webhook_receiver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any)")
    parser.add_argument("--reject-field", help="answer 422 to a JSON object with this field true")
    args = parser.parse_args(argv)
    try:
        receiver = WebhookReceiver(args.port, reject_field=args.reject_field, out=sys.stdout)
    except OSError as error:
        parser.error(f"cannot listen on 127.0.0.1:{args.port}: {error.strerror}")
    except Exception as error:  # the reference library's word on a secret that is not whsec_<base64>
        parser.error(f"{SECRET_ENV} holds a secret that is not whsec_<base64>: {error}")
    stop = stop_on_signals()
    with receiver:
        count = len(receiver.webhooks)
        checking = f"signatures checked with {count} secret(s)" if count else f"no {SECRET_ENV}: none checked"
        print(f"listening on {receiver.url} ({checking})", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
