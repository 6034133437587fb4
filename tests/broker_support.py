"""Look into a broker queue the same way on Redis and on RabbitMQ (``ORCHESTRATOR_TEST_BROKER``).

Tests that check what was sent where read the waiting messages here: from the Redis list kombu
keeps (without taking them), or with AMQP ``basic.get`` left unacknowledged on a channel that is
then closed, which gives the messages back to the queue in their order.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from orchestrator.config.settings import get_settings
from orchestrator.runstate.store import get_store
from orchestrator.transport.broker import broker_is_run_store, broker_url


@dataclass(frozen=True)
class Waiting:
    """One message waiting in a queue: its Celery headers, routing key and decoded body."""

    headers: dict[str, Any]
    routing_key: str
    body: Any


def waiting_messages(queue: str, limit: int = 100) -> list[Waiting]:
    """The messages waiting in ``queue`` (oldest first), left where they are."""
    if broker_is_run_store():
        out = []
        for raw in reversed(get_store().redis.lrange(queue, 0, limit - 1)):  # kombu LPUSHes, BRPOPs
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            out.append(Waiting(message["headers"], message["properties"]["delivery_info"]["routing_key"], body))
        return out
    with Connection(broker_url(get_settings())) as connection:
        channel = connection.channel()
        out = []
        try:
            while len(out) < limit and (message := channel.basic_get(queue, no_ack=False)) is not None:
                out.append(
                    Waiting(dict(message.headers), message.delivery_info["routing_key"], json.loads(message.body))
                )
        finally:
            channel.close()  # unacknowledged: the broker puts them back
        return out
