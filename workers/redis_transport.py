"""kombu's Redis transport, made to survive losing Redis without exiting or running a task twice.

When a worker loses Redis, Celery collects the broken connection and then closes it;
closing a channel gives its unacknowledged messages back to their queues. With kombu
5.7 the first close fails on the lost connection half-way, and the second builds a new
connection pool from a client that collecting has already cleared: an AttributeError
that Celery does not expect, so the worker logs "Unrecoverable error" and exits, and
every task it ran is then redelivered only after the visibility timeout. Here a channel
keeps the connection parameters it last built its pool with, so that second close fails
with a plain connection error, which Celery ignores before it reconnects. The messages
it could not give back stay in Redis's unacked set and are restored by any worker after
the visibility timeout, or finished by the tasks still running them.

Giving messages back on close is right for messages a worker holds but has not started.
For the tasks it is running it is not: they keep running through a lost connection
(``worker_cancel_long_running_tasks_on_connection_loss`` is off), so a message given back
would run a second copy beside them as soon as Redis answers again. Those stay in the
unacked set: the running task acknowledges its message when it ends, and should its
worker die first, the crash detector and the visibility timeout take over as for any
worker that dies.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


def running_delivery_tags() -> set[str]:
    """Delivery tags of the messages whose tasks this worker is running now."""
    from celery.worker.state import active_requests

    tags = set()
    for request in list(active_requests):
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is not None:
            tags.add(str(tag))
    return tags


# Delivery tags of running tasks whose channel was closed under them: the worker keeps stamping
# them (workers/visibility.py) until their tasks acknowledge them.
STILL_RUNNING: set[str] = set()


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def restore_unacked(self, client: Any = None) -> None:
        """Give back the messages held but not started; leave those of running tasks unacked."""
        running = running_delivery_tags()
        with self.channel.conn_or_acquire(client) as conn:
            for tag in list(self._delivered):
                if str(tag) in running:
                    STILL_RUNNING.add(str(tag))
                else:
                    self.restore_by_tag(tag, client=conn)
        self._delivered.clear()


class Surviving:
    """What :class:`Channel` and :class:`SentinelChannel` add to kombu's channels."""

    QoS = QoS
    _last_connparams: dict[str, Any] | None = None
    connection: Any

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if getattr(self.connection, "client", None) is None and self._last_connparams is not None:
            return dict(self._last_connparams)  # collected already: connect as before, or fail plainly
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
        if not asynchronous:
            self._last_connparams = dict(params)
        return params


class Channel(Surviving, kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel with :class:`Surviving`."""


class SentinelChannel(Surviving, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel (``redis+sentinel://`` brokers) with :class:`Surviving`.

    Its pool is built from the sentinel list of the connection's client, which collecting has
    cleared by the second close: that close fails with a plain connection error instead of an
    AttributeError, as the Redis channel's does.
    """

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise ConnectionError("the broker connection was collected; reconnecting through the sentinels")
        return super()._sentinel_managed_pool(asynchronous)


def survive_lost_redis() -> None:
    """Make this process's Redis broker connections use :class:`Channel` and :class:`SentinelChannel`
    (a worker calls it at start).

    Only the worker's own process: Flower and the API keep kombu's transport as it is (Flower
    reads queue lengths by the transport's name).
    """
    kombu_redis.Transport.Channel = Channel
    kombu_redis.SentinelTransport.Channel = SentinelChannel
