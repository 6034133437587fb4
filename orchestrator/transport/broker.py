"""The broker in use, asked directly: how many messages wait in each queue.

The diagnosis ("why is my run not running?"), the late-runs service and ``GET /metrics``
report queue lengths. With the broker on the run store's Redis, kombu keeps a queue's
messages in a Redis list named after it, and the run store reads them all in one round trip
(:meth:`orchestrator.runstate.fleet.Fleet.queue_lengths`). With any other broker (RabbitMQ,
``amqp://``; or a Redis of its own) the run store's Redis knows nothing of the queues, so
the broker is asked: a passive ``queue.declare`` answers with the ready message count and
creates nothing. A queue the broker does not know (never declared: no worker and no message
yet) has no message waiting.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection
from kombu.exceptions import OperationalError

from orchestrator.config.settings import Settings, get_settings
from orchestrator.config.tls import tls_options_for
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import masked_url
from orchestrator.runstate.store import RunStore
from orchestrator.transport.celery_app import celery_redis_url

CONNECT_SECONDS = 3.0


def broker_url(settings: Settings | None = None) -> str:
    """The Celery broker's URL: ``ORCHESTRATOR_BROKER_URL``, else the run store's Redis."""
    s = settings or get_settings()
    return s.broker_url or s.redis_url


def broker_is_run_store(settings: Settings | None = None) -> bool:
    """Whether the broker is the run store's own Redis (its queues are lists there)."""
    s = settings or get_settings()
    return not s.broker_url or s.broker_url == s.redis_url


def queue_lengths(store: RunStore, queues: list[str], settings: Settings | None = None) -> dict[str, int]:
    """Messages waiting (ready, not yet taken by a worker) in each of ``queues``, from the broker in use.

    Raises :class:`ConnectionProblem` naming the broker (password masked) when it does not answer.
    """
    s = settings or get_settings()
    if not queues:
        return {}
    if broker_is_run_store(s):
        return store.fleet.queue_lengths(queues)
    return _ask_broker(broker_url(s), queues, s)


def _ask_broker(url: str, queues: list[str], settings: Settings) -> dict[str, int]:
    ssl: Any = tls_options_for(url, settings) or (True if url.startswith("amqps://") else None)
    kombu_url, transport_options = celery_redis_url(url)  # redis+sentinel:// as kombu spells it
    options: dict[str, Any] = {"connect_timeout": CONNECT_SECONDS, "transport_options": transport_options}
    if ssl is not None:
        options["ssl"] = ssl
    try:
        with Connection(kombu_url, **options) as connection:
            connection.ensure_connection(max_retries=1)
            return {queue: _ready_messages(connection, queue) for queue in queues}
    except (OperationalError, OSError) as exc:
        raise ConnectionProblem(
            f"the broker at {masked_url(url)} did not answer ({exc}); check that it runs and that "
            "ORCHESTRATOR_BROKER_URL names it"
        ) from exc


def _ready_messages(connection: Connection, queue: str) -> int:
    """One queue's ready count; a channel of its own, since AMQP closes the channel of a failed declare."""
    channel = connection.channel()
    try:
        _, ready, _ = channel.queue_declare(queue=queue, passive=True)
        return int(ready)
    except connection.channel_errors:  # 404 NOT_FOUND: nobody declared it yet
        return 0
    finally:
        try:
            channel.close()
        except (*connection.channel_errors, *connection.connection_errors):
            pass  # already closed by the broker's answer to the declare
