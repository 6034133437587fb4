"""RabbitMQ as the broker, the run store on Redis: what the operator reads comes from the broker in use.

The fleet and reliability suites run on RabbitMQ in the RabbitMQ pass of ``.ci/run``
(``ORCHESTRATOR_TEST_BROKER=amqp``); this module adds what only that broker shows. Its tests
that need RabbitMQ run in that pass only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port
from orchestrator.errors import ConnectionProblem
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.transport.broker import queue_lengths
from tests.api_support import eventually, submit
from tests.conftest import TEST_BROKER

on_rabbitmq = pytest.mark.skipif(
    TEST_BROKER != "amqp", reason="RabbitMQ pass only (ORCHESTRATOR_TEST_BROKER=amqp, as .ci/run does)"
)


@pytest.fixture(scope="module")
def api(redis_url: str, broker_url: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API whose broker is the session's RabbitMQ vhost (ORCHESTRATOR_BROKER_URL, inherited)."""
    folder = tmp_path_factory.mktemp("rabbitmq-api")
    with api_server(redis_url, f"sqlite:///{folder / 'api.db'}", log_path=folder / "api.log") as server:
        yield server


@on_rabbitmq
@pytest.mark.usefixtures("fleet")
def test_the_diagnosis_and_the_metrics_count_the_messages_waiting_in_rabbitmq(
    api: ApiProcess, http: httpx.Client
) -> None:
    """Two runs sent to a queue nobody consumes: their start messages wait in RabbitMQ, where the
    run store's Redis cannot see them (it said 0 before the broker was asked)."""
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    runs = [submit(http, "chain-flow", parameters={"x": n}, queue=queue) for n in (1, 2)]

    def told() -> dict[str, object] | None:
        facts = http.get(f"/flow-runs/{runs[0]['id']}/diagnosis").json()["facts"]
        return dict(facts) if facts.get("queue_length") == 2 else None

    facts = eventually(told, 30, what=f"the diagnosis counting 2 messages in {queue}")
    assert facts["queue"] == queue
    assert not get_store().redis.exists(queue)  # nothing of the broker's in the run store

    metrics = httpx.get(api.url.removesuffix("/api") + "/metrics", timeout=30).text
    lengths = {
        sample.labels.get("queue"): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "orchestrator_queue_length"
    }
    assert lengths[queue] == 2 and lengths["default"] == 0, lengths


def test_a_broker_that_does_not_answer_is_named_with_its_password_masked() -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}//"
    settings = Settings(redis_url="redis://127.0.0.1:1/0", broker_url=url)
    with pytest.raises(ConnectionProblem, match=r"the broker at amqp://guest:\*+@127\.0\.0\.1") as raised:
        queue_lengths(cast(RunStore, None), ["default"], settings)  # the AMQP path never reads the run store
    assert "s3cret" not in str(raised.value) and "ORCHESTRATOR_BROKER_URL" in str(raised.value)
