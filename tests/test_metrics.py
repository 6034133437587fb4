"""GET /metrics through real processes: redis-server, a Celery worker, the API with a key and a root path.

Flows run (one completing, one failing) and one waits in a queue no worker consumes; the
scrape, parsed with prometheus_client's own parser, shows the runs' ends by flow and state,
one task duration per task run that ran, the live worker, the waiting queue's length, and
the runs under way; the endpoint wants the API key as a Bearer token.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import OTHER, Labels
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, worker
from orchestrator.runstate.event_stream import DEAD_LETTERS
from tests import metrics_flows
from tests.api_support import api_database, eventually, sdk_settings, submit, wait_final

API_KEY = f"metrics-key-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROOT = "/orchestrator"
NOBODY = f"metrics-nobody-{uuid.uuid4().hex[:6]}"  # a queue no worker consumes

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Stack:
    redis_url: str
    api: ApiProcess
    http: httpx.Client  # on /orchestrator/api, with the key

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's processes, on SQLite, and again on PostgreSQL when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    folder = tmp_path_factory.mktemp(f"metrics-{request.param}")
    env = {"ORCHESTRATOR_API_KEY": API_KEY, "ORCHESTRATOR_API_ROOT_PATH": ROOT, "ORCHESTRATOR_LATE_AFTER_SECONDS": "2"}
    with (
        redis_server() as url,
        worker(url, ["tests.metrics_flows"], concurrency=2, name=f"metrics{free_port()}@%h", log_path=folder / "w.log"),
        api_database(folder, admin_url if request.param == "postgresql" else None) as database,
        api_server(url, database, log_path=folder / "api.log", extra_env=env) as api,
        httpx.Client(base_url=api.url, headers=AUTH, timeout=30) as http,
    ):
        eventually(lambda: http.get("/flows/metrics-ok").status_code == 200, 60, what="the worker announced its flows")
        yield Stack(url, api, http)


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of a scrape, by name and labels (parsed as Prometheus would)."""
    response = httpx.get(url, headers=headers if headers is not None else AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_show_runs_by_state_and_flow_durations_workers_and_queues(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = [submit(stack.http, "metrics-ok", parameters={"x": n}) for n in (1, 2)]
    bad = submit(stack.http, "metrics-bad", parameters={"x": 3})
    ended = {run["id"]: wait_final(stack.http, run["id"])["state"] for run in [*ok, bad]}
    assert sorted(ended.values()) == ["Completed", "Completed", "Failed"]
    with sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=stack.redis_url):
        idle = metrics_flows.metrics_idle.with_options(queue=NOBODY).delay(x=4)
    eventually(lambda: stack.http.get(f"/flow-runs/{idle.id}").status_code == 200, 30, what="the idle run recorded")

    task_runs: list[dict[str, Any]] = []
    for run in [*ok, bad]:
        task_runs += stack.http.get(f"/flow-runs/{run['id']}/task-runs").json()
    ran: dict[tuple[str, str], int] = {}
    for t in task_runs:
        if t["started"]:
            flow = "metrics-bad" if t["flow_run_id"] == bad["id"] else "metrics-ok"
            ran[(flow, t["task_name"])] = ran.get((flow, t["task_name"]), 0) + 1
    assert sum(ran.values()) == 5  # 2 x 2 measure, 1 break_down; the measure after it never started

    def durations(samples: Samples) -> dict[tuple[str, str], float]:
        return {
            (dict(labels)["flow"], dict(labels)["task"]): n
            for (name, labels), n in samples.items()
            if name == "orchestrator_task_run_duration_seconds_count"
        }

    url = f"{stack.origin}/metrics"
    ends = "orchestrator_flow_runs_ended_total"
    samples = eventually(  # counters move just after the commit that the API's answers above read
        lambda: (
            (s := scrape(url))
            and value(s, "orchestrator_flow_runs", flow="metrics-idle", state="Running")
            and value(s, ends, flow="metrics-bad", state="Failed")
            and durations(s) == ran
            and s
        ),
        30,
        what="the idle run counted Running (its canvas was sent; its task waits in the queue), the ends recorded",
    )
    assert value(samples, ends, flow="metrics-ok", state="Completed") == 2
    assert value(samples, ends, flow="metrics-bad", state="Failed") == 1
    assert value(samples, ends, flow="metrics-idle", state="Completed") is None
    task_ends = "orchestrator_task_runs_ended_total"
    assert value(samples, task_ends, flow="metrics-ok", state="Completed") == 4
    assert value(samples, task_ends, flow="metrics-bad", state="Failed") == 1
    assert value(samples, task_ends, flow="metrics-bad", state="UpstreamFailed") == 1
    assert durations(samples) == ran  # one observation per task run that ran, by flow and task name
    assert value(samples, "orchestrator_task_runs", flow="metrics-idle", state="Pending") is None  # not reported yet
    assert value(samples, "orchestrator_flow_runs", flow="metrics-ok", state="Running") is None  # final: not a gauge

    assert value(samples, "orchestrator_workers_live") == 1
    assert value(samples, "orchestrator_queue_workers", queue="default") == 1
    assert value(samples, "orchestrator_queue_workers", queue=NOBODY) == 0
    assert (value(samples, "orchestrator_queue_length", queue=NOBODY) or 0) >= 1  # the idle run's message waits
    assert value(samples, "orchestrator_queue_length", queue="default") == 0
    assert value(samples, "orchestrator_late_flow_runs") == 0
    assert value(samples, "orchestrator_dead_letter_events") == 0
    assert value(samples, "orchestrator_events_dead_lettered_total") == 0
    assert (value(samples, "orchestrator_recorder_lag_seconds_count") or 0) > 0
    assert (value(samples, "orchestrator_services_pass_seconds_count") or 0) > 0
    assert value(samples, "orchestrator_metrics_source_up", source="database") == 1
    assert value(samples, "orchestrator_metrics_source_up", source="redis") == 1


def test_metrics_count_the_task_runs_under_way(stack: Stack) -> None:
    key = uuid.uuid4().hex[:8]
    held = submit(stack.http, "metrics-held", parameters={"key": key})
    url = f"{stack.origin}/metrics"
    running = eventually(
        lambda: value(scrape(url), "orchestrator_task_runs", flow="metrics-held", state="Running"),
        60,
        what="the held task run counted Running",
    )
    assert running == 1
    assert value(scrape(url), "orchestrator_flow_runs", flow="metrics-held", state="Running") == 1
    redis.Redis.from_url(stack.redis_url).set(f"test:release:{key}", 1)
    assert wait_final(stack.http, held["id"])["state"] == "Completed"
    samples = eventually(
        lambda: (
            (s := scrape(url))
            and value(s, "orchestrator_flow_runs_ended_total", flow="metrics-held", state="Completed")
            and s
        ),
        30,
        what="the held run's end counted",
    )
    assert value(samples, "orchestrator_task_runs", flow="metrics-held", state="Running") is None
    assert value(samples, "orchestrator_flow_runs", flow="metrics-held", state="Running") is None


def test_metrics_show_late_runs_and_dead_letters(stack: Stack) -> None:
    """A run for a queue no worker consumes is held back, then marked Late; a refused event waits in the
    dead-letter list (put there by hand: the database refuses none of the events real runs make)."""
    url = f"{stack.origin}/metrics"
    late = submit(stack.http, "metrics-idle", parameters={"x": 5}, queue=f"{NOBODY}-late")
    samples = eventually(
        lambda: (s := scrape(url)) and value(s, "orchestrator_late_flow_runs") and s, 60, what="the run counted Late"
    )
    assert value(samples, "orchestrator_late_flow_runs") == 1
    assert value(samples, "orchestrator_flow_runs", flow="metrics-idle", state="Late") == 1
    assert (value(samples, "orchestrator_late_flow_run_oldest_seconds") or 0) >= 2
    assert value(samples, "orchestrator_queue_workers", queue=f"{NOBODY}-late") == 0
    assert stack.http.post(f"/flow-runs/{late['id']}/cancel").status_code == 202
    eventually(lambda: value(scrape(url), "orchestrator_late_flow_runs") == 0, 30, what="no Late run once cancelled")

    client = redis.Redis.from_url(stack.redis_url)
    client.rpush(DEAD_LETTERS, json.dumps({"id": "0-1", "event": {}, "error": "refused (by the test)"}))
    try:
        assert value(scrape(url), "orchestrator_dead_letter_events") == 1
    finally:
        client.delete(DEAD_LETTERS)


def test_metrics_want_the_api_key_and_answer_under_the_root_path(stack: Stack) -> None:
    for url in (f"{stack.origin}/metrics", f"{stack.origin}{ROOT}/metrics"):
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": API_KEY}).status_code == 401  # not a Bearer token
        assert value(scrape(url), "orchestrator_metrics_source_up", source="database") == 1


def test_label_values_past_the_cap_count_as_other() -> None:
    flows = Labels(2)
    assert [flows(name) for name in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    pairs = Labels(1)
    assert pairs(("f", "t")) == ("f", "t") and pairs(("f", "u")) == (OTHER, OTHER)
