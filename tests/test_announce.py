"""Workers announce their queues and flows (with parameter schemas) and stay marked live."""

from __future__ import annotations

import socket
import time

import pytest

from orchestrator.authoring.schema import parameters_schema
from orchestrator.devstack.localstack import worker
from orchestrator.runstate.store import get_store
from tests import flows

pytestmark = pytest.mark.usefixtures("fleet")


def test_a_running_worker_is_live_with_its_queues_and_flows() -> None:
    workers = {w["hostname"]: w for w in get_store().fleet.live_workers()}
    fleet = workers[f"fleet@{socket.gethostname()}"]
    assert fleet["queues"] == ["default"]
    assert "chain-flow" in fleet["flows"] and "dynamic-flow" in fleet["flows"]
    announced = {f["name"]: f for f in get_store().fleet.registered_flows()}
    assert announced["chain-flow"]["parameters"]["properties"]["x"] == {"type": "integer", "default": 1}
    assert announced["dynamic-flow"]["queue"] == "solo"


def test_a_stopped_worker_is_no_longer_live(redis_url: str) -> None:
    name = f"brief{int(time.time())}@{socket.gethostname()}"
    with worker(redis_url, ["tests.flows"], queues="brief", concurrency=1, name=name):
        assert name in {w["hostname"] for w in get_store().fleet.live_workers()}
    assert name not in {w["hostname"] for w in get_store().fleet.live_workers()}


def test_parameter_schema_keeps_callable_defaults_unevaluated() -> None:
    schema = parameters_schema(flows.dated_flow)
    day = schema["properties"]["day"]
    assert day["type"] == "string" and day["format"] == "date"
    assert day["x-default-factory"] == "date.today"
    assert schema["required"] == []
    assert parameters_schema(flows.map_param_flow)["required"] == ["values"]
