"""Fixtures that start real processes: a private redis-server and Celery workers.

Every process is started on a free port and stopped by its context manager, also
when a test fails. Nothing here uses eager mode or an in-memory transport.

``ORCHESTRATOR_TEST_BROKER=amqp`` puts the Celery broker on RabbitMQ for the session (the run
store stays on the private Redis): a vhost of the session's own on the RabbitMQ answering on
127.0.0.1:5672 (deleted at the end), else a private ``rabbitmq-server`` on free ports.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.config.settings import reset_settings
from orchestrator.devstack.localstack import ApiProcess, free_port, redis_server, worker
from orchestrator.devstack.rabbitmq import amqp_answers, fresh_vhost, rabbitmq_binary, rabbitmq_server
from orchestrator.errors import ConnectionProblem
from orchestrator.transport.celery_app import client_app
from orchestrator.transport.messaging import sender_messaging

FLOW_MODULES = ["tests.flows"]
# Schedule tests run deployments every second or two: every API the tests start allows it
# (tests/test_input_limits.py gives its API the production floor of 10 s back).
os.environ["ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS"] = "1"
# Nothing a test runs may reach a Redis the tests did not start (a developer's own on 6379):
# until the `redis_url` fixture points the client at a private redis-server, the run store's
# URL is a port nothing listens on, so a test that forgot the fixture fails (or its background
# shipper drops its lines) instead of leaving keys behind in someone else's Redis.
os.environ["ORCHESTRATOR_REDIS_URL"] = "redis://127.0.0.1:9/0"


def _point_client_at(url: str) -> None:
    os.environ["ORCHESTRATOR_REDIS_URL"] = url
    reset_settings()
    client_app.cache_clear()
    sender_messaging.cache_clear()  # the API's app, cached like the client's: built for the old URL


BROKERS = ("redis", "amqp")
TEST_BROKER = os.environ.get("ORCHESTRATOR_TEST_BROKER", "redis").strip().lower() or "redis"
if TEST_BROKER not in BROKERS:
    raise pytest.UsageError(f"ORCHESTRATOR_TEST_BROKER={TEST_BROKER!r}: use one of {', '.join(BROKERS)}")


@contextlib.contextmanager
def amqp_broker(logs: Path) -> Iterator[str]:
    """An AMQP URL nobody else uses: a fresh vhost on 127.0.0.1:5672, else a private rabbitmq-server."""
    if amqp_answers("127.0.0.1", 5672):
        try:
            with fresh_vhost() as url:
                yield url
                return
        except ConnectionProblem as exc:  # rabbitmqctl may not talk to that node as this user
            if rabbitmq_binary() is None:
                raise
            print(f"conftest: no vhost of our own on 127.0.0.1:5672 ({exc}); starting a private rabbitmq-server")
    if rabbitmq_binary() is None:
        pytest.fail("ORCHESTRATOR_TEST_BROKER=amqp, but no RabbitMQ answers on 127.0.0.1:5672 and none is installed")
    with rabbitmq_server(free_port(), free_port(), logs / "rabbitmq.log") as server:
        yield server.url


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The session's Celery broker when it is not the run store's Redis (None: it is), in
    ORCHESTRATOR_BROKER_URL so every worker, API and client the tests start uses it."""
    if TEST_BROKER == "redis":
        yield None
        return
    with amqp_broker(tmp_path_factory.mktemp("rabbitmq")) as url:
        os.environ["ORCHESTRATOR_BROKER_URL"] = url
        try:
            yield url
        finally:
            del os.environ["ORCHESTRATOR_BROKER_URL"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, broker_url: str | None) -> Iterator[str]:
    """A private redis-server for the whole test session (and a result storage folder)."""
    os.environ["ORCHESTRATOR_RESULT_STORAGE"] = str(tmp_path_factory.mktemp("result-storage"))
    os.environ["ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS"] = "1"  # crashes are detected within 3 s
    with redis_server() as url:
        _point_client_at(url)
        yield url


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="session")
def fleet(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One prefork worker, concurrency 4, on the default queue."""
    with worker(
        redis_url, FLOW_MODULES, queues="default", concurrency=4, name="fleet@%h", log_path=worker_logs / "fleet.log"
    ) as proc:
        yield proc


@pytest.fixture(scope="session")
def solo_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One worker with concurrency 1 on queue 'solo' (dynamic-mode deadlock test)."""
    with worker(
        redis_url, FLOW_MODULES, queues="solo", concurrency=1, name="solo@%h", log_path=worker_logs / "solo.log"
    ) as proc:
        yield proc


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    """An HTTP client on the ``api`` fixture of the requesting test module."""
    with httpx.Client(base_url=api.url, timeout=15) as client:
        yield client
