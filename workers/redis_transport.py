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

The messages it gives back it gives from its own copy, not from kombu's unacked record: a
Redis that dies as a message is taken (between the pop and the record), a record that a
failover lost, or a Redis away while the channel closes would otherwise lose the message or
leave it for the visibility timeout (:class:`QoS`, :func:`settle_taken`).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from .quiet_events import QuietEvents


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

# Messages this worker took off a queue and could not settle in Redis because Redis went away
# (delivery tag -> [payload, exchange, routing key], kombu's unacked record): taken but never
# recorded as held, or held but not given back. :func:`settle_taken` puts them back in their
# queues once Redis answers again.
UNSETTLED: dict[str, list[Any]] = {}


def _record_of(message: Any) -> list[Any]:
    delivery = message.delivery_info
    return [message._raw, delivery["exchange"], delivery["routing_key"]]


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's QoS, giving back what it holds from its own memory and keeping what it could not.

    kombu takes a message off its queue (``BRPOP``) and records it as held in a second command.
    A Redis that dies between the two (a crash, a failover) lost the message: it was in no queue
    and in no unacked set. And kombu gives a held message back from its unacked record, so a
    record that a failover lost (written on the old master, not replicated) lost the message
    too, and a Redis away when the channel closed left it unacked until the visibility timeout.
    Here both paths keep the message itself (:data:`UNSETTLED`) until :func:`settle_taken` has
    put it back in its queue.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors:
            UNSETTLED[str(delivery_tag)] = _record_of(message)  # Celery never sees it: it is not run here
            raise

    def forget(self, delivery_tag: Any) -> None:
        """A message whose task's end script acknowledged it in Redis already (``acknowledgement`` in
        ``orchestrator/transport/messaging.py``): forget it here too, with no round trip of its own."""
        kombu_virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """Give back the messages held but not started; leave those of running tasks unacked."""
        running = running_delivery_tags()
        for tag, message in list(self._delivered.items()):
            if str(tag) in running:
                STILL_RUNNING.add(str(tag))
            else:
                UNSETTLED[str(tag)] = _record_of(message)
        self._delivered.clear()
        settle_taken(self.channel, client)  # now if Redis answers; else the worker's next refresh


def forget_acknowledged(message: Any) -> bool:
    """Mark ``message`` acknowledged without telling Redis, which its task's end script told already;
    False (nothing done) when its channel is not one of :class:`Channel`'s."""
    qos = getattr(getattr(message, "channel", None), "qos", None)
    if not isinstance(qos, QoS) or message.acknowledged:
        return False
    qos.forget(message.delivery_tag)
    message._state = "ACK"  # what kombu's Message.ack sets once the broker has it
    return True


def settle_taken(channel: Any, client: Any = None) -> int:
    """Put the messages in :data:`UNSETTLED` back in their queues through ``channel`` (the one
    closing, or the worker's consumer channel after it reconnected); returns how many went back.

    Each goes back in one transaction that also drops its unacked record, if Redis has one, so
    it is delivered once more, not twice. The worker's main process calls it every few seconds
    (``workers/visibility.py``); a Redis still away leaves them for the next call.
    """
    settled = 0
    for tag, (payload, exchange, routing_key) in list(UNSETTLED.items()):
        try:
            with channel.conn_or_acquire(client) as conn, conn.pipeline() as pipe:
                pipe.zrem(channel.unacked_index_key, tag)
                pipe.hdel(channel.unacked_key, tag)
                channel._do_restore_message(payload, exchange, routing_key, pipe)
                pipe.execute()
        except channel.connection_errors:
            return settled
        UNSETTLED.pop(tag, None)
        settled += 1
    return settled


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


class Channel(QuietEvents, Surviving, kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel with :class:`Surviving` and :class:`~workers.quiet_events.QuietEvents`."""


class SentinelChannel(QuietEvents, Surviving, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel (``redis+sentinel://`` brokers) with :class:`Surviving` and
    :class:`~workers.quiet_events.QuietEvents`.

    kombu builds its pool from the sentinel list of the connection's client, which collecting
    has cleared: a channel used again after that (the second close, an acknowledgement, a
    publish that retries through a failover) raised AttributeError, and could never reach the
    new master. It keeps the sentinels it last asked and asks them again.
    """

    _last_sentinels: list[tuple[str, int]] | None = None
    master_name: str  # a transport option (redis+sentinel:// gives it), set on the channel by kombu
    Client: Any  # the redis client class kombu chose for this channel (set in its __init__)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        client = getattr(self.connection, "client", None)
        if client is not None:
            self._last_sentinels = _sentinel_addresses(client, self.connection.default_port)
            return super()._sentinel_managed_pool(asynchronous)
        if not self._last_sentinels:
            raise ConnectionError("the broker connection was collected before it reached a sentinel")
        params = {k: v for k, v in self._connparams(asynchronous).items() if k not in ("host", "port")}
        manager = kombu_redis.sentinel.Sentinel(
            self._last_sentinels,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        if asynchronous:
            self._async_sentinel_manager = manager  # closed with the channel's pools, as kombu's own
        else:
            self._sentinel_manager = manager
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(self.master_name, self.Client, **credentials).connection_pool


def _sentinel_addresses(client: Any, default_port: int) -> list[tuple[str, int]]:
    """The sentinels a kombu connection names (``sentinel://h1:26379;sentinel://h2:26379``), as kombu reads them."""
    found = []
    for url in client.alt:
        parts = kombu_redis._parse_url(url)
        if parts.scheme == "sentinel":
            found.append((parts.hostname, parts.port or default_port))
    return found


def survive_lost_redis() -> None:
    """Make this process's Redis broker connections use :class:`Channel` and :class:`SentinelChannel`
    (a worker calls it at start).

    Only the worker's own process: Flower and the API keep kombu's transport as it is (Flower
    reads queue lengths by the transport's name).
    """
    kombu_redis.Transport.Channel = Channel
    kombu_redis.SentinelTransport.Channel = SentinelChannel
