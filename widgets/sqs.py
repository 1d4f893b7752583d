"""SQS clients, queue setup and plain-language SQS errors, shared by every script."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
import click
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

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
# The exceptions an SQS call raises: its own answers (ClientError) and everything on the way.
SQS_ERRORS = (BotoCoreError, ClientError)

MISSING_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "AccessDenied",
    "AccessDeniedException",
}


@dataclass(frozen=True)
class QueueUrls:
    """The URLs of the three queues of the pipeline."""

    request: str
    response: str
    dead_letter: str


def is_local(endpoint_url: str) -> bool:
    """Tell whether an endpoint is on this machine, where dummy credentials are fine."""
    host = urlparse(endpoint_url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def make_client(
    region: str | None, endpoint_url: str | None, max_connections: int = 10, read_timeout: int = 40
) -> SQSClient:
    """Build an SQS client: Amazon SQS when a region is given and no endpoint, else the local SQS.

    Only a region given on purpose (--region or AWS_REGION) selects Amazon; one that merely sits
    in ~/.aws/config does not, so nobody reaches their AWS account by accident.
    """
    session = boto3.Session(region_name=region)
    if endpoint_url is None and region is None:
        endpoint_url = LOCAL_ENDPOINT
    if endpoint_url is not None:
        parsed = urlparse(endpoint_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise click.BadParameter(f"{endpoint_url!r} is not an http(s) URL", param_hint="'--endpoint-url'")
    credentials: dict[str, str] = {}
    if session.get_credentials() is None:
        if endpoint_url is None or not is_local(endpoint_url):
            raise click.ClickException(
                "no AWS credentials found: configure them (aws configure, AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), or use the local SQS with "
                f"--endpoint-url {LOCAL_ENDPOINT}"
            )
        # The local SQS checks no signature, but botocore will not sign without some key.
        credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=3,
        read_timeout=read_timeout,
        max_pool_connections=max_connections,
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
    """Turn SQS exceptions into one clear line for the user instead of a traceback."""
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise click.ClickException(describe_error(error, client, queue)) from error


def queue_url(client: SQSClient, name: str) -> str:
    """Return the URL of an existing queue, or fail with a clear message."""
    with user_errors(client, name):
        return client.get_queue_url(QueueName=name)["QueueUrl"]


def ensure_queues(
    client: SQSClient, request: str, response: str, dead_letter: str, max_receives: int
) -> QueueUrls:
    """Create the three queues if missing, with the request queue redriving to the dead-letter one."""
    with user_errors(client):
        dead_letter_url = client.create_queue(QueueName=dead_letter)["QueueUrl"]
        dead_letter_arn = client.get_queue_attributes(QueueUrl=dead_letter_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        # Created without attributes and then set, so an existing queue with other
        # settings is updated instead of refused with QueueAlreadyExists.
        request_url = client.create_queue(QueueName=request)["QueueUrl"]
        redrive = {
            "deadLetterTargetArn": dead_letter_arn,
            "maxReceiveCount": str(max_receives + REDRIVE_MARGIN),
        }
        client.set_queue_attributes(QueueUrl=request_url, Attributes={"RedrivePolicy": json.dumps(redrive)})
        response_url = client.create_queue(QueueName=response)["QueueUrl"]
    return QueueUrls(request_url, response_url, dead_letter_url)


def find_queues(client: SQSClient, request: str, response: str, dead_letter: str) -> QueueUrls:
    """Return the URLs of the three queues, failing clearly if one is missing."""
    return QueueUrls(queue_url(client, request), queue_url(client, response), queue_url(client, dead_letter))


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
    """Logs an SQS outage once when it starts and once when it ends, not once per failed call."""

    def __init__(self, sqs: SQSClient, what: str) -> None:
        """Track outages of the calls described by what."""
        self.sqs = sqs
        self.what = what
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, error: Exception) -> float:
        """Record a failed call; return how long to back off before the next one."""
        with self._lock:
            self.failures += 1
            if self.failures == 1:
                log.warning("sqs_outage %s: %s; retrying", self.what, describe_error(error, self.sqs))
            return float(min(0.5 * 2 ** (self.failures - 1), 10.0))

    def recovered(self) -> None:
        """Record a call that worked, ending any outage."""
        with self._lock:
            if self.failures:
                log.info("sqs_recovered %s after %d failed calls", self.what, self.failures)
            self.failures = 0
