"""Signed calls, as the Standard Webhooks specification says, so a target can tell the relay from anyone.

Each call carries webhook-id (the request id: the same across retries and redrives),
webhook-timestamp (seconds since the epoch, when the call is made) and webhook-signature: "v1,"
and the base64 HMAC-SHA256 of "id.timestamp.body" under each secret, space-separated (several
secrets during a rotation, so a receiver that knows either accepts the call). Secrets are in the
specification's whsec_ form (base64 after the prefix) and come from the environment only
(WEBHOOK_SECRET, whitespace-separated): on a command line, ps would show them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable

from widgets.errors import UsageError

SECRET_ENV = "WEBHOOK_SECRET"
SECRET_PREFIX = "whsec_"


def parse_secrets(value: str | None) -> list[bytes]:
    """Return the keys of the whitespace-separated whsec_ secrets in value; UsageError names a bad one."""
    keys = []
    for position, secret in enumerate((value or "").split(), start=1):
        if not secret.startswith(SECRET_PREFIX):
            raise UsageError(f"{SECRET_ENV}: secret {position} does not start with {SECRET_PREFIX}")
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :] + "==", validate=False)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise UsageError(f"{SECRET_ENV}: secret {position} is not base64 after {SECRET_PREFIX}")
        keys.append(key)
    return keys


class Signer:
    """Signs calls with one or more secrets (see the module's docstring)."""

    def __init__(self, keys: list[bytes], clock: Callable[[], float] = time.time) -> None:
        """Sign with each of keys (the decoded secrets); clock gives the timestamp."""
        if not keys:
            raise ValueError("a signer needs at least one key")
        self.keys = keys
        self.clock = clock

    def headers(self, webhook_id: str, body: bytes) -> dict[str, str]:
        """Return the webhook-id, webhook-timestamp and webhook-signature headers of one call."""
        timestamp = str(int(self.clock()))
        signed = b".".join((webhook_id.encode(), timestamp.encode(), body))
        signatures = " ".join(
            "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            for key in self.keys
        )
        return {"webhook-id": webhook_id, "webhook-timestamp": timestamp, "webhook-signature": signatures}
