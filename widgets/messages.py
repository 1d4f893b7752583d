"""The message formats on the request and response queues, and what makes a widget id valid."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Statuses a request can end with; RETRY is not terminal, it is what the consumer does meanwhile.
OK = "OK"
REJECTED = "REJECTED"
FAILED = "FAILED"
RETRY = "RETRY"

# A widget id is a 36-character UUID; anything much longer is garbage, and echoing it back
# into responses and logs would only spread it.
MAX_WIDGET_ID_CHARS = 256
# Well below SQS's 256 KiB message limit: a widget request is about 50 bytes.
MAX_REQUEST_BODY_CHARS = 4096
# A reason quotes the maker's error; keep responses well inside SQS's message size limit.
MAX_REASON_CHARS = 1000
# The message attribute naming the id a request was first sent with, on its dead-letter copy and
# on the fresh copy the consumer makes of a request whose receive count an outage used up.
ORIGINAL_MESSAGE_ID = "OriginalMessageId"


@dataclass(frozen=True)
class Received:
    """A request as received from the request queue."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    attributes: dict[str, Any]
    received_at: float  # time.monotonic() when it arrived: its visibility timeout runs from then
    group_id: str | None = None  # its message group, on a FIFO queue
    sent_timestamp: str | None = None  # when it was first sent, SQS's SentTimestamp (ms since the epoch)

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any], received_at: float | None = None) -> Received:
        """Build a Received from one entry of a ReceiveMessage answer."""
        system = message.get("Attributes", {})
        return cls(
            message_id=message["MessageId"],
            receipt_handle=message["ReceiptHandle"],
            body=message.get("Body", ""),
            receive_count=int(system.get("ApproximateReceiveCount", 1)),
            attributes=message.get("MessageAttributes", {}),
            received_at=time.monotonic() if received_at is None else received_at,
            group_id=system.get("MessageGroupId"),
            sent_timestamp=system.get("SentTimestamp"),
        )

    @property
    def request_id(self) -> str:
        """Return the id the producer got for this request: kept across requeues and redrives."""
        original = self.attributes.get(ORIGINAL_MESSAGE_ID, {}).get("StringValue")
        return original or self.message_id


class InvalidRequest(ValueError):
    """A request body that can never become a widget, whatever the maker's state."""


def new_widget_id() -> str:
    """Return a fresh version-1 UUID as a string, as the seed did."""
    return str(uuid.uuid1())


def is_valid_widget_id(widget_id: object) -> bool:
    """Tell whether widget_id is a canonical (lowercase, hyphenated) version-1 UUID."""
    if not isinstance(widget_id, str) or len(widget_id) != 36:
        return False
    try:
        parsed = uuid.UUID(widget_id)
    except ValueError:
        return False
    return str(parsed) == widget_id and parsed.version == 1


def request_body(widget_id: str) -> str:
    """Return the request queue message body for widget_id."""
    return json.dumps({"WidgetId": widget_id})


def parse_request(body: str) -> str:
    """Return the WidgetId of a request body, or raise InvalidRequest saying why it is not one."""
    if len(body) > MAX_REQUEST_BODY_CHARS:
        raise InvalidRequest(f"body is {len(body)} characters, over {MAX_REQUEST_BODY_CHARS}")
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidRequest("body is not JSON") from None
    except RecursionError:
        raise InvalidRequest("body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"body is a JSON {type(data).__name__}, not an object")
    if "WidgetId" not in data:
        raise InvalidRequest("body has no WidgetId")
    widget_id = data["WidgetId"]
    if not isinstance(widget_id, str):
        raise InvalidRequest(f"WidgetId is a JSON {type(widget_id).__name__}, not a string")
    if len(widget_id) > MAX_WIDGET_ID_CHARS:
        raise InvalidRequest(f"WidgetId is {len(widget_id)} characters, over {MAX_WIDGET_ID_CHARS}")
    return widget_id


def response_body(
    message_id: str,
    widget_id: str | None,
    status: str,
    receive_count: int,
    reason: str | None = None,
    widget: dict[str, Any] | None = None,
) -> str:
    """Return the response queue message body reporting a request's outcome."""
    response: dict[str, Any] = {
        "MessageId": message_id,
        "WidgetId": widget_id,
        "Status": status,
        "ReceiveCount": receive_count,
    }
    if reason is not None:
        response["Reason"] = reason[:MAX_REASON_CHARS]
    if widget is not None:
        response["Widget"] = widget
    return json.dumps(response)


def parse_response(body: str) -> dict[str, Any]:
    """Return a response body as a dict; a body that is not a JSON object comes back as {"Body": body}."""
    try:
        response = json.loads(body)
    except ValueError:
        response = None
    return response if isinstance(response, dict) else {"Body": body}


def describe_response(response: dict[str, Any]) -> str:
    """Return one line describing a response: status, widget id, receive count and reason."""
    line = f"{response.get('Status')} {response.get('WidgetId')} receive_count={response.get('ReceiveCount')}"
    if response.get("Reason"):
        line += f" reason={response['Reason']!r}"
    if "Body" in response:
        line += f" body={str(response['Body'])[:200]!r}"
    return line
