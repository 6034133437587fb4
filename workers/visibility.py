"""Keep the messages a live worker holds from being redelivered, however long their tasks run.

With Redis as broker, a message a worker has taken but not acknowledged sits in the
``unacked`` set, stamped with when it was delivered, and any worker gives it back to its
queue once that stamp is older than the visibility timeout. That is how a dead worker's
messages come back, and also why, with Celery alone, a task that runs longer than the
timeout is run a second time beside itself. So the timeout is usually set to hours, and
a dead worker's messages then wait hours too.

Here the worker's main process stamps the messages it holds (running or waiting for a
pool process) afresh every few seconds. The messages of a live worker never age, so the
visibility timeout only has to outlast a dead worker's silence: minutes, not hours, and
a long task is never delivered twice.

With RabbitMQ as broker there is no visibility timeout and nothing to stamp (the channel has
no unacked index, so :meth:`KeepVisible.refresh` does nothing): RabbitMQ gives a message back
when the connection that holds it closes, at once. Its own limit is ``consumer_timeout``: a
delivery unacknowledged longer (30 min by default) closes the channel and is delivered again,
so it must outlast the longest task (README: Running on RabbitMQ).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .redis_transport import STILL_RUNNING, UNSETTLED, settle_taken

log = logging.getLogger(__name__)


def refresh_interval(visibility_timeout: float) -> float:
    """How often to stamp: well inside the timeout, at most every 5 s."""
    return max(0.2, min(5.0, visibility_timeout / 4))


class KeepVisible:
    """Stamps the unacknowledged messages of one worker's consumer (its main process)."""

    def __init__(self) -> None:
        self.consumer: Any = None  # set when the worker is ready

    def refresh(self) -> int:
        """Stamp every message this worker holds with the current time; returns how many."""
        channel = getattr(getattr(self.consumer, "task_consumer", None), "channel", None)
        delivered = getattr(getattr(channel, "qos", None), "_delivered", None)
        index = getattr(channel, "unacked_index_key", None)
        if channel is None or index is None:
            return 0
        if UNSETTLED:  # taken off a queue while Redis went away: back in their queues now it answers
            settled = settle_taken(channel)
            if settled:
                log.warning("gave back %d message(s) taken while Redis was away: they run from their queue", settled)
        tags: list[str] = []
        for _ in range(3):  # the consumer's thread may change the dict while it is copied
            try:
                tags = [str(t) for t in (delivered or {})]
                break
            except RuntimeError:
                continue
        orphans = sorted(STILL_RUNNING)  # running through a reconnect: their old channel is gone
        if not tags and not orphans:
            return 0
        with channel.conn_or_acquire() as client:  # a client of its own on the channel's pool
            # XX: a message acknowledged meanwhile is not put back
            client.zadd(index, dict.fromkeys(tags + orphans, time.time()), xx=True)
            if orphans:  # forget those acknowledged by now
                for tag, score in zip(orphans, client.zmscore(index, orphans), strict=True):
                    if score is None:
                        STILL_RUNNING.discard(tag)
        return len(tags) + len(orphans)
