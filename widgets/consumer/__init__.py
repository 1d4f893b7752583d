"""The consumer: SQS requests to maker calls, each settled once SQS confirms it (see consumer.py)."""

from widgets.consumer.consumer import Consumer, Queues, Target, run
from widgets.consumer.settings import Settings

__all__ = ["Consumer", "Queues", "Settings", "Target", "run"]
