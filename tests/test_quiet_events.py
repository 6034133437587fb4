"""Event publishes on a no-reply connection (``workers/quiet_events.py``), through kombu's real Redis
transport and Celery's own event dispatcher and receiver, against private redis-servers.

The worker-level behaviour (a real worker's events reach a receiver, a killed connection loses
nothing later) is in ``tests/test_events.py``; here the channel alone: every event arrives in
order, and a Redis that refuses ``CLIENT REPLY OFF`` (an ACL) gets every event the ordinary way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from orchestrator.devstack.localstack import redis_server
from tests.event_receiver import receiving
from workers import quiet_events
from workers.redis_transport import Channel


class QuietTransport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with the worker's channel (the worker installs it process-wide)."""

    Channel = Channel


@pytest.fixture
def quiet_process() -> Iterator[None]:
    quiet_events.publish_events_quietly("celeryev")
    yield
    quiet_events._EVENT_EXCHANGE = None


def sent_and_received(url: str, count: int) -> tuple[list[int], int]:
    """Send ``count`` task events through our channel: the ``seq`` of each event a receiver got, and
    how many other events were published (the receiver's probes)."""
    app = Celery("quiet-events-test", broker=url)
    got: list[int] = []
    with receiving(url, {"task-succeeded": lambda event: got.append(event["seq"])}) as probes:
        with app.connection(transport=QuietTransport) as connection:
            dispatcher = app.events.Dispatcher(connection, hostname="quiet-test")
            for seq in range(count):
                dispatcher.send("task-succeeded", uuid=f"t{seq}", seq=seq)
            dispatcher.close()
        deadline = time.monotonic() + 10
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    return got, probes


def stats(url: str) -> dict[str, Any]:
    return redis.Redis.from_url(url).info("commandstats")  # type: ignore[no-any-return]


@pytest.mark.usefixtures("quiet_process")
def test_events_go_out_in_order_on_a_connection_that_gets_no_replies() -> None:
    with redis_server() as url:
        got, probes = sent_and_received(url, 200)
        assert got == list(range(200))
        commands = stats(url)
        assert commands["cmdstat_client|reply"]["calls"] == 1  # one quiet connection, told once
        assert commands["cmdstat_publish"]["calls"] == 200 + probes


@pytest.mark.usefixtures("quiet_process")
def test_a_redis_that_refuses_client_reply_gets_every_event_the_ordinary_way() -> None:
    with redis_server() as url:
        redis.Redis.from_url(url).acl_setuser("default", enabled=True, commands=["-client|reply"])
        got, probes = sent_and_received(url, 50)
        assert got == list(range(50))
        commands = stats(url)
        assert commands["cmdstat_client|reply"]["rejected_calls"] == 1  # tried once, then never again
        assert commands["cmdstat_publish"]["calls"] == 50 + probes


def test_a_process_that_never_asked_publishes_the_ordinary_way() -> None:
    with redis_server() as url:
        assert sent_and_received(url, 20)[0] == list(range(20))
        assert "cmdstat_client|reply" not in stats(url)
