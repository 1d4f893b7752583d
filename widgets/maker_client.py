"""The consumer's HTTP client for the widget maker: one POST per request, its answer classified."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

import urllib3

from widgets.messages import OK, REJECTED, RETRY
from widgets.observer import Observer
from widgets.sqs import MAX_VISIBILITY

# How a call that must be retried failed, which tells the breaker whose fault it is likely to be.
UNREACHABLE = "unreachable"  # no connection at all: the maker is down, whatever the request
OVERLOADED = "overloaded"  # 429 or 503: the maker says itself that it cannot take requests now
FAILING = "failing"  # another 5xx, a timeout, 401/403/408: this request, or the maker; one call cannot tell
# Why a call got no HTTP answer, for the metrics (UNREACHABLE too).
TIMEOUT = "timeout"
ERROR = "error"

OVERLOADED_STATUS_CODES = {429, 503}
# Answers under 500 that say "not now" rather than "never": the request is retried. 401 and 403
# are here too: a wrong token is the consumer's fault, not the request's, and rejecting every
# request until someone fixes it would discard them all.
RETRY_STATUS_CODES = {401, 403, 408, 429}
# How long the start-up check and the breaker's probes wait for GET /healthz.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class MakerAnswer:
    """The maker's answer to one request: OK, REJECTED or RETRY, why, and for RETRY how it failed."""

    status: str
    reason: str | None = None
    widget: dict[str, Any] | None = None
    failure: str | None = None  # for RETRY: UNREACHABLE, OVERLOADED or FAILING
    retry_after: float | None = None  # seconds the maker asked us to wait (Retry-After)
    code: int | None = None  # the HTTP status, None when there was no answer


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


def maker_error(status: int, body: bytes) -> str:
    """Return the reason a maker answer gives, from its JSON error body when there is one."""
    try:
        detail = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        detail = None
    return f"maker answered {status}" + (f": {detail}" if detail else "")


def make_pool(workers: int, maker_url: str) -> urllib3.PoolManager:
    """Return a pool keeping up to one connection per worker alive to the maker.

    urllib3 directly, not requests: requests spends more CPU around each call than the call
    itself (a third of the consumer's CPU per message, profiled), and the consumer needs none
    of what it adds. Proxy and CA settings are read from the environment once, as requests would.
    """
    parsed = urlparse(maker_url)
    proxy = None if proxy_bypass(parsed.hostname or "") else getproxies().get(parsed.scheme)
    ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    # retries=False: retrying is the queue's job, with its visibility timeout.
    options: dict[str, Any] = {"num_pools": 1, "maxsize": workers, "retries": False, "ca_certs": ca_certs}
    return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)


class MakerClient:
    """POSTs widget requests to the maker and says whether it is up, over one keep-alive pool."""

    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        workers: int,
        token: str | None = None,
        observer: Observer | None = None,
    ) -> None:
        """Prepare a client for the maker's add URL; its health URL is /healthz on the same host."""
        self.url = url
        self.observer = observer or Observer()
        self.in_flight = 0  # calls under way
        self._in_flight_lock = threading.Lock()
        self.timeout = timeout
        parsed = urlparse(url)
        self.health_url = f"{parsed.scheme}://{parsed.netloc}/healthz"
        self.pool = make_pool(workers, url)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def create(self, widget_id: str, request_id: str) -> MakerAnswer:
        """POST one request (its id as the idempotency key), classify the answer, and report the call."""
        with self._in_flight_lock:
            self.in_flight += 1
        started = time.perf_counter()
        try:
            answer, no_answer = self._post(widget_id, request_id)
        finally:
            with self._in_flight_lock:
                self.in_flight -= 1
        self.observer.maker_call(answer.code, no_answer, time.perf_counter() - started)
        return answer

    def _post(self, widget_id: str, request_id: str) -> tuple[MakerAnswer, str | None]:
        """POST one request; return its classified answer and, when there was none, why not."""
        try:
            answer = self.pool.request(
                "POST",
                self.url,
                body=json.dumps({"widget_id": widget_id}).encode(),
                headers={**self.headers, "Idempotency-Key": request_id},
                timeout=self.timeout,
            )
        except urllib3.exceptions.ConnectTimeoutError:  # NewConnectionError too: refused, no route
            return MakerAnswer(RETRY, "maker unreachable", failure=UNREACHABLE), UNREACHABLE
        except urllib3.exceptions.TimeoutError:
            reason = f"maker did not answer within {self.timeout:g}s"
            return MakerAnswer(RETRY, reason, failure=FAILING), TIMEOUT
        except urllib3.exceptions.ProtocolError:  # the connection dropped: the maker went away
            reason = "maker unreachable (connection lost)"
            return MakerAnswer(RETRY, reason, failure=UNREACHABLE), UNREACHABLE
        except urllib3.exceptions.HTTPError as exc:
            return MakerAnswer(RETRY, f"maker call failed: {type(exc).__name__}", failure=FAILING), ERROR
        return self.classify(answer), None

    @staticmethod
    def classify(answer: urllib3.BaseHTTPResponse) -> MakerAnswer:
        """Turn the maker's HTTP answer into OK, REJECTED or RETRY."""
        code = answer.status
        if 200 <= code < 300:
            try:
                widget = json.loads(answer.data)
            except (ValueError, RecursionError):
                widget = None
            return MakerAnswer(OK, widget=widget if isinstance(widget, dict) else None, code=code)
        reason = maker_error(code, answer.data)
        if code in OVERLOADED_STATUS_CODES:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            return MakerAnswer(RETRY, reason, None, OVERLOADED, retry_after, code)
        if code >= 500 or code in RETRY_STATUS_CODES:
            return MakerAnswer(RETRY, reason, failure=FAILING, code=code)
        return MakerAnswer(REJECTED, reason, code=code)

    def healthy(self) -> bool:
        """Tell whether the maker answers GET /healthz with a 2xx."""
        try:
            answer = self.pool.request("GET", self.health_url, timeout=min(self.timeout, PROBE_TIMEOUT))
        except urllib3.exceptions.HTTPError:
            return False
        return 200 <= answer.status < 300
