"""SQS clients, queue setup and plain-language SQS errors, shared by every script."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from widgets.errors import SetupError, UsageError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchResultTypeDef
else:
    SQSClient = Any

log = logging.getLogger(__name__)

LOCAL_ENDPOINT = "http://127.0.0.1:9324"
LOCAL_REGION = "us-east-1"
REQUEST_QUEUE = "WidgetRequestQueue"
RESPONSE_QUEUE = "WidgetResponseQueue"
DEAD_LETTER_QUEUE = "WidgetRequestDLQ"
# SQS makes a queue FIFO only when asked to (FifoQueue=true), and requires a FIFO queue's name to end so.
FIFO_SUFFIX = ".fifo"
# SQS's rule for group and deduplication ids: 1 to 128 ASCII letters, digits and punctuation,
# which are exactly the printable ASCII characters but space ("!" to "~").
FIFO_ID = re.compile(r"[!-~]{1,128}")
# SQS's own limit on entries per batch call.
MAX_BATCH = 10
# SQS's upper bound on a visibility timeout (and on a message's total time in flight): 12 hours.
MAX_VISIBILITY = 43200
# SQS's redrive policy moves a request to the dead-letter queue after --max-receives + 2
# deliveries. The consumer settles a request itself by then: FAILED, with a response, on delivery
# --max-receives; one delivery more lets it try again if it died or could not reach the
# dead-letter queue then; and a request whose count outages used up is sent afresh on that
# delivery, leaving the last one for a consumer killed while doing so. SQS's own move (with no
# response) is left for a consumer that dies on a request every time.
REDRIVE_MARGIN = 2
# On a FIFO queue a request also gains a receive each time the consumer hands it back unstarted
# because an earlier request of its group is retried (SQS redelivers a group only in order), and
# the consumer cannot send it afresh near the limit (a fresh copy would join the end of its
# group). The larger margin absorbs those hand-backs; see widgets/consumer/handling.py.
FIFO_REDRIVE_MARGIN = 10
# Attempts per call in botocore (standard mode, total_max_attempts counts the first one). The
# consumer makes one: each of its callers retries on its own terms (the receive loop at once,
# then with a back-off and one outage log; the outbox each write, with a back-off of its own),
# so no call sleeps in botocore's back-off while other writes wait, and no retry quota drains in
# an outage (standard mode's quota, 500 tokens a client at 5 a retry and 10 after a timeout,
# once drained leaves every later call with no retry at all). The producer and the queue tools,
# which have no retries of their own, make up to three.
CONSUMER_ATTEMPTS = 1
TOOL_ATTEMPTS = 3
# How long calls must fail, none working in between, to be an outage worth a log line.
OUTAGE_AFTER = 1.0
# Longest back-off between a caller's calls while SQS is down (full jitter below it). Short: a
# consumer's five receive threads then make a few calls a second during an outage, and one of
# them finds SQS back within a second or so (with 10 s, a consumer was seen still waiting 4.8 s
# after a 7 s outage ended, every thread asleep).
MAX_OUTAGE_BACKOFF = 2.0
# The exceptions an SQS call raises: its own answers (ClientError) and everything on the way.
SQS_ERRORS = (BotoCoreError, ClientError)

EXISTING_QUEUE_CODES = {"QueueAlreadyExists", "AWS.SimpleQueueService.QueueNameExists"}
MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "AccessDeniedException",
}


class FifoFields(TypedDict, total=False):
    """The ids a message to a FIFO queue carries (a fair standard queue takes the group alone)."""

    MessageGroupId: str
    MessageDeduplicationId: str


@dataclass(frozen=True)
class QueueUrls:
    """The URLs of the pipeline's queues (a relay without outcome reports has no response queue)."""

    request: str
    response: str | None
    dead_letter: str


def is_fifo(name_or_url: str) -> bool:
    """Tell whether a queue, given by name or URL, is a FIFO queue (SQS requires the .fifo suffix)."""
    return name_or_url.rstrip("/").endswith(FIFO_SUFFIX)


def dead_letter_queue_name(request: str) -> str:
    """Return the default dead-letter queue of a request queue: a FIFO one for a FIFO request queue."""
    return DEAD_LETTER_QUEUE + FIFO_SUFFIX if is_fifo(request) else DEAD_LETTER_QUEUE


def check_dead_letter_queue(request: str, dead_letter: str) -> None:
    """Raise ValueError unless the dead-letter queue is of the request queue's kind, as SQS requires."""
    if is_fifo(request) == is_fifo(dead_letter):
        return
    kind, other = ("FIFO", "standard") if is_fifo(request) else ("standard", "FIFO")
    raise ValueError(
        f"--dead-letter-queue {dead_letter} is a {other} queue but --sqs-request-queue {request} is a "
        f"{kind} one: SQS requires a {kind} queue's dead-letter queue to be {kind} too "
        f"(e.g. {dead_letter_queue_name(request)})"
    )


def redrive_margin(fifo: bool) -> int:
    """Return how many deliveries beyond --max-receives SQS's redrive policy allows (FIFO or standard)."""
    return FIFO_REDRIVE_MARGIN if fifo else REDRIVE_MARGIN


def check_fifo_id(value: str, option: str) -> str:
    """Return value if SQS takes it as a group or deduplication id, else raise ValueError naming option."""
    if not FIFO_ID.fullmatch(value):
        raise ValueError(f"{option} must be 1 to 128 ASCII letters, digits or punctuation: {value[:140]!r}")
    return value


def deduplication_id(widget_id: str) -> str:
    """Return the deduplication id of a request for widget_id: the id if SQS takes it, else its SHA-256."""
    if FIFO_ID.fullmatch(widget_id):
        return widget_id
    return hashlib.sha256(widget_id.encode()).hexdigest()


def fifo_fields(queue: str, group_id: str | None, dedup_id: str | None) -> FifoFields:
    """Return the ids to add to a message sent to queue (a name or URL).

    A FIFO queue needs both, and ValueError says which is missing; a standard queue takes no
    deduplication id, but a group id there makes it a fair queue, so one given is kept.
    """
    fields: FifoFields = {}
    if not is_fifo(queue):
        if group_id is not None:
            fields["MessageGroupId"] = group_id
        return fields
    if group_id is None or dedup_id is None:
        missing = "group id" if group_id is None else "deduplication id"
        raise ValueError(f"a message to the FIFO queue {queue} needs a {missing}")
    fields["MessageGroupId"] = group_id
    fields["MessageDeduplicationId"] = dedup_id
    return fields


def is_local(endpoint_url: str) -> bool:
    """Tell whether an endpoint is on this machine, where dummy credentials are fine."""
    host = urlparse(endpoint_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def make_client(
    region: str | None,
    endpoint_url: str | None,
    max_connections: int = 10,
    read_timeout: float = 40,
    connect_timeout: float = 3,
    attempts: int = TOOL_ATTEMPTS,
    session: boto3.Session | None = None,
) -> SQSClient:
    """Build an SQS client: Amazon SQS when a region is given and no endpoint, else the local SQS.

    Only a region given on purpose (--region or AWS_REGION) selects Amazon; one that merely sits
    in ~/.aws/config does not, so nobody reaches their AWS account by accident. Clients built on
    one session (of that region) share its loaded service model: 5 MB each otherwise.
    """
    session = session or boto3.Session(region_name=region)
    if endpoint_url is None and region is None:
        endpoint_url = LOCAL_ENDPOINT
    if endpoint_url is not None:
        parsed = urlparse(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"{endpoint_url!r} is not an http(s) URL", "--endpoint-url")
    credentials: dict[str, str] = {}
    if session.get_credentials() is None:
        if endpoint_url is None or not is_local(endpoint_url):
            raise SetupError(
                "no AWS credentials found: configure them (aws configure, AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or use the local SQS with "
                f"--endpoint-url {LOCAL_ENDPOINT}"
            )
        # The local SQS checks no signature, but botocore will not sign without some key.
        credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_connections,
        # Every parameter is built by our own code, and SQS checks them all again: botocore's
        # client-side check was a tenth of each call's CPU (profiled), for no error it could catch.
        parameter_validation=False,
    )
    return session.client(
        "sqs",
        region_name=session.region_name or LOCAL_REGION,
        endpoint_url=endpoint_url,
        config=config,
        **credentials,
    )


def describe_error(error: Exception, client: SQSClient | None = None, queue: str | None = None) -> str:
    """Say in one line what an SQS call's exception means for the user."""
    where = client.meta.endpoint_url if client is not None else "SQS"
    if isinstance(error, BotoConnectionError):
        hint = " (is the local SQS running? make sqs)" if client is not None and is_local(where) else ""
        return f"cannot reach SQS at {where}{hint}"
    if isinstance(error, HTTPClientError):
        # A reset or closed connection, or a read timeout: the call may or may not have taken effect.
        return f"no answer from SQS at {where}: {error}"
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return f"AWS credentials are missing or incomplete: {error}"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in MISSING_QUEUE_CODES:
            name = f"queue {queue}" if queue else "the queue"
            return f"{name} does not exist at {where} (the consumer creates the queues when it starts)"
        if code in CREDENTIAL_CODES:
            return f"SQS at {where} refused the credentials ({code}): {message}"
        return f"SQS at {where} answered {code}: {message}"
    return f"SQS call failed: {error}"


@contextmanager
def user_errors(client: SQSClient | None = None, queue: str | None = None) -> Iterator[None]:
    """Turn SQS exceptions into a SetupError: one clear line for the user instead of a traceback."""
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise SetupError(describe_error(error, client, queue)) from error


def queue_url(client: SQSClient, name: str) -> str:
    """Return the URL of an existing queue, or fail with a clear message."""
    with user_errors(client, name):
        return client.get_queue_url(QueueName=name)["QueueUrl"]


def create_queue(client: SQSClient, name: str) -> str:
    """Create a queue if missing, a FIFO one if its name ends in .fifo, and return its URL.

    ContentBasedDeduplication is left at SQS's default, false: every sender here gives explicit
    deduplication ids, which win over content-based ones anyway.
    """
    if not is_fifo(name):
        return client.create_queue(QueueName=name)["QueueUrl"]
    try:
        url = client.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
    except ClientError as error:
        # A queue of that name with other attributes: most likely a standard one, which only a
        # local SQS lets have a .fifo name; the check below says so.
        if error.response.get("Error", {}).get("Code") not in EXISTING_QUEUE_CODES:
            raise
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"]).get("Attributes", {})
    if attributes.get("FifoQueue") != "true":
        raise SetupError(
            f"queue {name} is named like a FIFO queue but is a standard one (created without "
            "FifoQueue=true); delete it and it will be created again as a FIFO queue"
        )
    return url


def ensure_queues(
    client: SQSClient, request: str, response: str | None, dead_letter: str, max_receives: int
) -> QueueUrls:
    """Create the three queues if missing, with the request queue redriving to the dead-letter one.

    A name ending in .fifo makes a FIFO queue; the dead-letter queue must be of the request
    queue's kind (see dead_letter_queue_name): ValueError says so, before anything is created.
    """
    check_dead_letter_queue(request, dead_letter)
    with user_errors(client):
        dead_letter_url = create_queue(client, dead_letter)
        dead_letter_arn = client.get_queue_attributes(QueueUrl=dead_letter_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        # Created without attributes and then set, so an existing queue with other
        # settings is updated instead of refused with QueueAlreadyExists.
        request_url = create_queue(client, request)
        redrive = {
            "deadLetterTargetArn": dead_letter_arn,
            "maxReceiveCount": str(max_receives + redrive_margin(is_fifo(request))),
        }
        client.set_queue_attributes(QueueUrl=request_url, Attributes={"RedrivePolicy": json.dumps(redrive)})
        response_url = create_queue(client, response) if response is not None else None
    return QueueUrls(request_url, response_url, dead_letter_url)


def find_queues(client: SQSClient, request: str, response: str | None, dead_letter: str) -> QueueUrls:
    """Return the URLs of the three queues, failing clearly if one is missing."""
    request_url = queue_url(client, request)
    response_url = queue_url(client, response) if response is not None else None
    return QueueUrls(request_url, response_url, queue_url(client, dead_letter))


def batches(items: list[Any], size: int = MAX_BATCH) -> Iterator[list[Any]]:
    """Yield consecutive slices of items of at most size entries."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def delete_batch(client: SQSClient, url: str, receipt_handles: list[str]) -> DeleteMessageBatchResultTypeDef:
    """Delete up to ten messages in one call; a failed entry's Id is its index in receipt_handles."""
    return client.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(receipt_handles)]
    )


def release(client: SQSClient, url: str, receipt_handles: Iterable[str]) -> None:
    """Make messages this process holds visible again at once."""
    for chunk in batches(list(receipt_handles)):
        # Entries that fail have an expired handle: those messages are visible again anyway.
        client.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(chunk)],
        )


class OutageLog:
    """Logs an SQS outage once when it starts and once when it ends, not once per failed call.

    One failed call is no outage (a reset connection, a throttle, a 500 of one host): it is tried
    again at once. From the second failure in a row the calls back off with full jitter, so callers
    failing together do not come back together; and once they have failed for OUTAGE_AFTER with
    none working in between, the outage is logged, once (several threads' calls failing at the
    same moment are no outage either: with 5% of calls faulted, two in a row are common).
    """

    def __init__(
        self,
        sqs: SQSClient,
        what: str,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Track outages of the calls described by what."""
        self.sqs = sqs
        self.what = what
        self.clock = clock
        self.logged = False
        self.failures = 0
        self.error: str | None = None  # what the last call's failure means, while an outage lasts
        self.since: float | None = None  # time.monotonic() of the first failure in a row
        self._random = rng or random.Random()
        self._lock = threading.Lock()

    def failed(self, error: Exception) -> float:
        """Record a failed call; return how long to back off before the next one."""
        with self._lock:
            self.failures += 1
            if self.failures == 1:
                self.since = self.clock()
                return 0.0
            self.error = describe_error(error, self.sqs)
            if not self.logged and self.since is not None and self.clock() - self.since >= OUTAGE_AFTER:
                self.logged = True
                log.warning("sqs_outage %s: %s; retrying", self.what, self.error)
            return self._random.uniform(0, min(0.25 * 2 ** (self.failures - 2), MAX_OUTAGE_BACKOFF))

    def recovered(self) -> None:
        """Record a call that worked, ending any outage."""
        if not self.failures:  # the usual case, without taking the lock
            return
        with self._lock:
            if self.logged:
                log.info("sqs_recovered %s after %d failed calls", self.what, self.failures)
            self.logged = False
            self.failures = 0
            self.error = None
            self.since = None

    def lasted(self) -> float:
        """Return how long the calls have failed without one working (0: the last one worked)."""
        since = self.since
        return 0.0 if since is None else self.clock() - since


def watch_calls(
    client: SQSClient,
    on_error: Callable[[str, str], None],
    on_refused: Callable[[str, str, int], None],
) -> None:
    """Have on_error(operation, error) hear of every failed call of the client, whoever made it,
    and on_refused(operation, code, count) of batch entries refused one by one.

    botocore announces each call's end on the client's event system: after its own retries, as
    "after-call-error" (no answer: the exception) or "after-call" (an answer, maybe an error one).
    """

    def after_error(exception: Exception, event_name: str, **_: Any) -> None:
        on_error(event_name.rsplit(".", 1)[-1], type(exception).__name__)

    def after_call(http_response: Any, parsed: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
        if http_response.status_code >= 300:
            error = context.get("error_code_override") or parsed.get("Error", {}).get("Code") or "unknown"
            on_error(model.name, str(error))
            return
        refused = parsed.get("Failed")
        if refused:
            for code, count in Counter(str(entry.get("Code", "unknown")) for entry in refused).items():
                on_refused(model.name, code, count)

    client.meta.events.register("after-call-error.sqs", after_error)
    client.meta.events.register("after-call.sqs", after_call)
