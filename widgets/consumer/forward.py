"""The general face of the relay (sqs_relay.py): each message forwarded as it is, to any HTTP service.

The body goes byte for byte (UTF-8, as SQS holds it), with Content-Type from the message
attribute ContentType, else the relay's --content-type. Headers, under one naming rule:

    traceparent, tracestate     the message attributes of those names, unchanged (W3C Trace Context)
    X-SQS-Attribute-<Name>      every other String or Number message attribute, its name as it is
    X-SQS-Message-Id            the message id; X-SQS-Receive-Count, its receive count
    X-SQS-Sent-Timestamp        when it was first sent (SQS's SentTimestamp, ms since the epoch)
    X-SQS-Group-Id              its message group, on a FIFO queue
    the relay's --header headers, then Idempotency-Key and the signature's (maker_client.py)

A value with characters a header cannot carry (outside printable ASCII) is sent percent-encoded
(UTF-8), as in a URL. An outcome report carries the target's status code and the start of its
answer.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from widgets.consumer.handling import Outcome
from widgets.consumer.maker_client import MAX_BODY_EXCERPT, Call
from widgets.messages import MAX_REASON_CHARS, ORIGINAL_MESSAGE_ID, Received

TRACE_ATTRIBUTES = ("traceparent", "tracestate")
CONTENT_TYPE_ATTRIBUTE = "ContentType"
ATTRIBUTE_PREFIX = "X-SQS-Attribute-"
# Kept as they are in a percent-encoded value: printable ASCII but the percent sign itself.
HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(value: str) -> str:
    """Return value as a header carries it: as it is when printable ASCII, else percent-encoded."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=HEADER_SAFE)


class ForwardAdapter:
    """Forwards each message's body and attributes to one target (see the module's docstring)."""

    subject_field: str | None = None

    def __init__(
        self, *, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        """Forward with the fixed headers given, and content_type for messages without a ContentType."""
        self.headers = headers or {}
        self.content_type = content_type

    def request(self, message: Received) -> Call:
        """Return the call forwarding a message: its body, its attributes and SQS's facts as headers."""
        headers = {
            "Content-Type": self.content_type,
            "X-SQS-Message-Id": message.message_id,
            "X-SQS-Receive-Count": str(message.receive_count),
        }
        if message.sent_timestamp is not None:
            headers["X-SQS-Sent-Timestamp"] = message.sent_timestamp
        if message.group_id is not None:
            headers["X-SQS-Group-Id"] = message.group_id
        for name, attribute in message.attributes.items():
            kind = str(attribute.get("DataType", ""))
            if "StringValue" not in attribute or not kind.startswith(("String", "Number")):
                continue  # binary attributes have no header form
            value = header_value(attribute["StringValue"])
            if name == CONTENT_TYPE_ATTRIBUTE:
                headers["Content-Type"] = value
            elif name in TRACE_ATTRIBUTES:
                headers[name] = value
            elif name != ORIGINAL_MESSAGE_ID:  # webhook-id and Idempotency-Key carry it
                headers[ATTRIBUTE_PREFIX + name] = value
        headers.update(self.headers)
        return Call(message.request_id, message.body.encode(), headers)

    def report(self, message: Received, outcome: Outcome) -> str:
        """Return the outcome report: status, receive count, why, and the target's status code and answer."""
        report: dict[str, Any] = {
            "MessageId": message.request_id,
            "Status": outcome.status,
            "ReceiveCount": message.receive_count,
        }
        if outcome.reason is not None:
            report["Reason"] = outcome.reason[:MAX_REASON_CHARS]
        if outcome.answer is not None:
            report["StatusCode"] = outcome.answer.code
            report["Body"] = outcome.answer.body[:MAX_BODY_EXCERPT].decode("utf-8", "replace")
        return json.dumps(report)
