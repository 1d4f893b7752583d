"""Fixtures of the end-to-end tests: a running local SQS and maker (a Stack) for one test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack


@pytest.fixture
def stack(tmp_path: Path, sqs_kind: str) -> Iterator[Stack]:
    """A running local SQS and maker for one test, on each local SQS server in turn."""
    running = Stack(tmp_path, sqs_kind)
    yield running
    running.stop()
