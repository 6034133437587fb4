"""The run-state API against real processes: uvicorn (``python -m api.server``), Redis, a worker.

Runs are submitted over HTTP (and with ``.delay()``), and everything asserted is read
back over HTTP from what the recorder wrote to the database.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, api_server, redis_server, worker
from orchestrator.runstate import keys
from tests.api_support import api_database, cli, eventually, heartbeat_renewed, submit, wait_final


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Each test runs on SQLite, and again on PostgreSQL when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    with api_database(tmp_path_factory.mktemp("api-db"), admin_url if request.param == "postgresql" else None) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    """The API with its recorder, on the session's Redis, next to the fleet worker."""
    with api_server(redis_url, database_url, log_path=worker_logs / "api.log") as server:
        yield server


def counts(redis_url: str, *keys: str) -> list[int]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return [int(client.get(f"test:count:{k}") or 0) for k in keys]


def test_health_reports_database_and_redis(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["database"] == "ok" and body["redis"] == "ok"
    assert body["recorder"].startswith("ok")


def test_workers_and_flows_are_listed(http: httpx.Client) -> None:
    workers = http.get("/workers").json()
    assert any("default" in w["queues"] and "api-flow" in w["flows"] for w in workers)
    flow = http.get("/flows/api-flow").json()
    schema = flow["parameters"]
    assert schema["required"] == ["n"]
    assert schema["properties"]["n"]["type"] == "integer"
    assert schema["properties"]["day"]["x-default-factory"].endswith("today")  # not evaluated at registration
    assert flow["name_template"] == "api-{label}-{n}"


def test_http_run_is_recorded_with_task_runs_history_and_graph(redis_url: str, http: httpx.Client) -> None:
    label = f"ok{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(redis_url).set(f"test:fixed:{label}", 1)
    created = submit(http, "api-flow", parameters={"n": 3, "label": label})
    assert created["name"] == f"api-{label}-3"  # the flow_run_name template, at creation
    assert created["state"] == "Pending"
    run = wait_final(http, created["id"])
    assert run["state"] == "Completed", run
    assert run["parameters"]["day"] == dt.date.today().isoformat()  # callable default, evaluated for this run
    assert run["started"] and run["ended"] and run["result_refs"]

    tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
    assert sorted(t["task_name"].rsplit(".", 1)[-1] for t in tasks) == [
        "add",
        "counted",
        "counted",
        "fails_until_fixed",
    ]
    assert all(t["state"] == "Completed" and t["worker"] and t["started"] and t["ended"] for t in tasks)

    states = http.get(f"/flow-runs/{run['id']}/states").json()
    flow_states = [s["state"] for s in states if s["run_id"] == run["id"] and s["applied"]]
    assert flow_states == ["Pending", "Running", "Completed"]
    for task in tasks:
        mine = [s["state"] for s in states if s["run_id"] == task["id"] and s["applied"]]
        assert mine == ["Running", "Completed"], (task["label"], mine)
    assert all(s["cause"] for s in states)

    graph = http.get(f"/flow-runs/{run['id']}/graph").json()
    assert graph["mode"] == "static"
    assert {n["state"] for n in graph["nodes"]} == {"Completed"}
    by_label = {n["label"]: n for n in graph["nodes"]}
    fixed = next(n for n in graph["nodes"] if n["name"].endswith("fails_until_fixed"))
    assert len(fixed["upstream"]) == 1 and fixed["upstream"][0] in {n["id"] for n in by_label.values()}
    ids = {run["id"], *(t["id"] for t in tasks)}
    eventually(lambda: not events_in_stream(redis_url, ids), 10, what="the recorded events gone from the stream")


def events_in_stream(redis_url: str, run_ids: set[str]) -> list[dict[str, Any]]:
    """The events about these runs still in the event stream (the recorder trims what it has recorded)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    events = [json.loads(fields["event"]) for _, fields in client.xrange(keys.EVENTS_STREAM)]
    return [event for event in events if event.get("id") in run_ids or event.get("flow_run_id") in run_ids]


def test_bad_parameters_get_422_naming_them_and_create_nothing(http: httpx.Client) -> None:
    before = http.get("/flow-runs", params={"flow": "api-flow"}).json()["total"]
    cases = [
        ({}, "'n' is required"),
        ({"n": 1, "colour": "red"}, "no parameter 'colour'"),
        ({"n": "three"}, "parameter 'n'"),
    ]
    for parameters, expected in cases:
        response = http.post("/flows/api-flow/runs", json={"parameters": parameters})
        assert response.status_code == 422, response.text
        assert expected in response.text, response.text
    response = http.post("/flows/api-flow/runs", json={"parameters": {"n": 1}, "priority": 3})
    assert response.status_code == 422 and "priority" in response.text
    assert http.post("/flows/no-such-flow/runs", json={}).status_code == 404
    assert http.get("/flow-runs", params={"flow": "api-flow"}).json()["total"] == before


def test_a_run_sent_with_delay_is_recorded_like_an_http_one(http: httpx.Client) -> None:
    from tests.flows import chain_flow

    run = chain_flow.delay(x=2)
    assert run.wait(60).value == "Completed"
    recorded = wait_final(http, run.id)
    assert recorded["state"] == "Completed" and recorded["flow_name"] == "chain-flow"
    assert recorded["parameters"] == {"x": 2}
    tasks = http.get(f"/flow-runs/{run.id}/task-runs").json()
    assert len(tasks) == len(run.task_runs()) and all(t["state"] == "Completed" for t in tasks)
    states = [s["state"] for s in http.get(f"/flow-runs/{run.id}/states", params={"tasks": False}).json()]
    assert states == ["Pending", "Running", "Completed"]


def test_cancel_stops_a_running_flow(http: httpx.Client) -> None:
    created = submit(http, "api-sleepy-flow", parameters={"seconds": 60, "width": 2})
    run_id = created["id"]

    def both_running() -> bool:
        tasks = http.get(f"/flow-runs/{run_id}/task-runs").json()
        return len(tasks) == 2 and all(t["state"] == "Running" for t in tasks)

    eventually(both_running, 30, what="both sleepy tasks Running")
    response = http.post(f"/flow-runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    run = wait_final(http, run_id, timeout=20)  # far less than the tasks' 60 s
    assert run["state"] == "Cancelled"
    tasks = http.get(f"/flow-runs/{run_id}/task-runs").json()
    assert {t["state"] for t in tasks} == {"Cancelled"}
    flow_states = [s["state"] for s in http.get(f"/flow-runs/{run_id}/states", params={"tasks": False}).json()]
    assert flow_states[-2:] == ["Cancelling", "Cancelled"]
    assert http.post(f"/flow-runs/{run_id}/cancel").status_code == 409


def test_cancel_a_scheduled_run_before_it_is_sent(http: httpx.Client) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    created = submit(http, "api-flow", parameters={"n": 1}, scheduled_start=later)
    assert created["state"] == "Scheduled"
    assert http.post(f"/flow-runs/{created['id']}/cancel").status_code == 202
    assert http.get(f"/flow-runs/{created['id']}").json()["state"] == "Cancelled"


def test_scheduled_run_is_sent_when_due(http: httpx.Client) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    created = submit(http, "chain-flow", parameters={"x": 1}, scheduled_start=soon)
    assert created["state"] == "Scheduled"
    run = wait_final(http, created["id"], timeout=30)
    assert run["state"] == "Completed"
    assert run["started"] >= soon


def test_retry_reruns_only_what_did_not_complete(redis_url: str, http: httpx.Client) -> None:
    label = f"rt{uuid.uuid4().hex[:6]}"
    created = submit(http, "api-flow", parameters={"n": 2, "label": label})
    run = wait_final(http, created["id"])
    assert run["state"] == "Failed"
    states = {
        t["task_name"].rsplit(".", 1)[-1] + ":" + t["state"]
        for t in http.get(f"/flow-runs/{run['id']}/task-runs").json()
    }
    assert states == {"counted:Completed", "fails_until_fixed:Failed", "add:UpstreamFailed"}
    assert counts(redis_url, f"{label}-a", f"{label}-c", f"{label}-fix") == [1, 1, 1]

    redis.Redis.from_url(redis_url).set(f"test:fixed:{label}", 1)  # the "bug fix"
    response = http.post(f"/flow-runs/{run['id']}/retry")
    assert response.status_code == 202, response.text

    def completed() -> bool:
        return http.get(f"/flow-runs/{run['id']}").json()["state"] == "Completed"

    eventually(completed, 60, what="retried run Completed")
    assert counts(redis_url, f"{label}-a", f"{label}-c", f"{label}-fix") == [1, 1, 2]  # only the failed one ran again
    tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
    assert {t["state"] for t in tasks} == {"Completed"}
    flow_states = [s["state"] for s in http.get(f"/flow-runs/{run['id']}/states", params={"tasks": False}).json()]
    assert flow_states == ["Pending", "Running", "Failed", "Retrying", "Completed"]
    assert http.get(f"/flow-runs/{run['id']}").json()["attempt"] == 2
    assert http.post(f"/flow-runs/{run['id']}/retry").status_code == 409  # a completed run is not retried


def test_rename_over_http_and_from_inside_a_task(http: httpx.Client) -> None:
    created = submit(http, "chain-flow", parameters={"x": 1})
    response = http.patch(f"/flow-runs/{created['id']}", json={"name": "nightly-backfill"})
    assert response.status_code == 200 and response.json()["name"] == "nightly-backfill"
    assert http.patch(f"/flow-runs/{created['id']}", json={"name": ""}).status_code == 422
    assert wait_final(http, created["id"])["name"] == "nightly-backfill"

    inside = submit(http, "renamed-flow", parameters={"name": "named-by-its-task"})
    assert wait_final(http, inside["id"])["name"] == "named-by-its-task"


def test_list_filters_and_pages(http: httpx.Client) -> None:
    created = submit(http, "chain-flow", parameters={"x": 5}, name=f"findme-{uuid.uuid4().hex[:6]}")
    wait_final(http, created["id"])
    page = http.get("/flow-runs", params={"name": created["name"]}).json()
    assert [r["id"] for r in page["items"]] == [created["id"]]
    page = http.get("/flow-runs", params={"flow": "chain-flow", "state": "Completed", "limit": 1}).json()
    assert len(page["items"]) == 1 and page["total"] >= 1 and page["items"][0]["state"] == "Completed"
    since = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    assert http.get("/flow-runs", params={"since": since}).json()["total"] == 0
    assert http.get("/flow-runs", params={"state": "Sleeping"}).status_code == 422
    assert http.get("/flow-runs", params={"limit": 0}).status_code == 422
    assert http.get("/flow-runs/does-not-exist").status_code == 404


def test_logs_of_a_run_reach_the_api(http: httpx.Client) -> None:
    created = submit(http, "logging-flow")
    wait_final(http, created["id"])

    def lines() -> list[dict[str, Any]]:
        return list(http.get(f"/flow-runs/{created['id']}/logs").json())

    logs = eventually(lines, 20, what="log lines recorded")
    assert all(line["task_run_id"] for line in logs)
    after = http.get(f"/flow-runs/{created['id']}/logs", params={"after": logs[0]["seq"]}).json()
    assert len(after) == len(logs) - 1


def test_api_killed_mid_run_loses_no_event(redis_url: str, http: httpx.Client, api: ApiProcess) -> None:
    """The events of runs that go on while the API is down wait in the stream; once the API is
    back, each is recorded once, and then trimmed from the stream."""
    created = [submit(http, "api-sleepy-flow", parameters={"seconds": 2, "width": 4}) for _ in range(3)]
    from orchestrator.runs.handle import FlowRun

    api.kill()  # while the tasks run: their events wait in the stream
    for run in created:
        assert FlowRun(run["id"]).wait(60).value == "Completed"  # runs go on without the API
        assert events_in_stream(redis_url, {run["id"]})  # nobody recorded them: they are kept
    api.start()
    for run in created:
        recorded = wait_final(http, run["id"])
        assert recorded["state"] == "Completed"
        tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
        assert len(tasks) == 4 and {t["state"] for t in tasks} == {"Completed"}
        states = http.get(f"/flow-runs/{run['id']}/states").json()
        assert [s["state"] for s in states if s["run_id"] == run["id"]] == ["Pending", "Running", "Completed"]
        for task in tasks:
            assert [s["state"] for s in states if s["run_id"] == task["id"]] == ["Running", "Completed"]
        ids = {run["id"], *(t["id"] for t in tasks)}
        eventually(lambda ids=ids: not events_in_stream(redis_url, ids), 10, what="recorded events out of the stream")


def test_api_key_root_path_and_body_limit(redis_url: str, database_url: str, worker_logs: Path) -> None:
    env = {
        "ORCHESTRATOR_API_KEY": "s3cret",
        "ORCHESTRATOR_API_ROOT_PATH": "/orchestrator",
        "ORCHESTRATOR_API_SERVICES": "false",
        "ORCHESTRATOR_API_MAX_BODY_BYTES": "2048",
    }
    with api_server(redis_url, database_url, log_path=worker_logs / "api-key.log", extra_env=env) as server:
        direct = f"http://127.0.0.1:{server.port}/api"  # a proxy strips the prefix; the app knows it
        assert httpx.get(f"{direct}/flow-runs").status_code == 401
        assert httpx.post(f"{direct}/flows/api-flow/runs", json={"parameters": {"n": 1}}).status_code == 401
        assert httpx.get(f"{direct}/flow-runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{direct}/flow-runs", headers=good).status_code == 200
        assert httpx.get(f"{direct}/health").status_code == 200  # probes need no key
        spec = httpx.get(f"http://127.0.0.1:{server.port}/openapi.json").json()
        assert spec["servers"] == [{"url": "/orchestrator"}]
        big = {"parameters": {"n": 1, "label": "x" * 5000}}
        response = httpx.post(f"{direct}/flows/api-flow/runs", json=big, headers=good)
        assert response.status_code == 413 and "ORCHESTRATOR_API_MAX_BODY_BYTES" in response.text


def test_the_start_line_gives_the_prefixed_urls_and_the_log_has_no_root_path_warning(
    redis_url: str, database_url: str, worker_logs: Path
) -> None:
    env = {"ORCHESTRATOR_API_ROOT_PATH": "/orchestrator/", "ORCHESTRATOR_API_SERVICES": "false"}
    log = worker_logs / "api-root-path.log"
    with api_server(redis_url, database_url, log_path=log, extra_env=env) as server:
        here = f"http://127.0.0.1:{server.port}/orchestrator"
        # opened as printed (no proxy in between), and as a proxy that strips the prefix sends them
        assert httpx.get(f"{here}/api/health").status_code == 200
        assert httpx.get(f"{here}/docs").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{server.port}/api/health").status_code == 200
        page = httpx.get(f"{here}/ui/", follow_redirects=True)
        assert page.status_code == 200 and 'href="/orchestrator/ui' in page.text
        spec = httpx.get(f"{here}/openapi.json").json()
        assert spec["servers"] == [{"url": "/orchestrator"}]
    text = log.read_text()
    assert f"orchestrator API on {here}/api, docs at {here}/docs, web UI at {here}/ui" in text, text
    assert "root_path" not in text and "Deprecat" not in text, text


def test_server_refuses_to_listen_publicly_without_a_key(database_url: str) -> None:
    env = os.environ.copy() | {"ORCHESTRATOR_DATABASE_URL": database_url}
    env.pop("ORCHESTRATOR_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "api.server", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ORCHESTRATOR_API_KEY" in done.stderr


def test_cli_run_watch_inspect_logs_and_errors(redis_url: str, api: ApiProcess) -> None:
    label = f"cli{uuid.uuid4().hex[:6]}"
    redis.Redis.from_url(redis_url).set(f"test:fixed:{label}", 1)
    done = cli(api, "run", "api-flow", "-p", "n=4", "-p", f"label={label}", "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"api-{label}-4" in done.stdout and "Completed" in done.stdout
    run_id = done.stdout.split("(", 1)[1].split(")", 1)[0]

    listed = cli(api, "flow-run", "ls", "--flow", "api-flow", "--limit", "50")
    assert listed.returncode == 0 and run_id in listed.stdout
    inspected = cli(api, "flow-run", "inspect", run_id)
    assert inspected.returncode == 0 and "fails_until_fixed" in inspected.stdout and "Running" in inspected.stdout

    failed = cli(api, "run", "api-flow", "-p", "n=1", "-p", "colour=red")
    assert failed.returncode == 2 and "no parameter 'colour'" in failed.stdout
    again = cli(api, "flow-run", "cancel", run_id)
    assert again.returncode == 2 and "already ended Completed" in again.stdout

    logged = cli(api, "run", "logging-flow", "--watch", "--timeout", "60")
    assert logged.returncode == 0, logged.stdout + logged.stderr
    logged_id = logged.stdout.split("(", 1)[1].split(")", 1)[0]
    lines = eventually(lambda: cli(api, "flow-run", "logs", logged_id).stdout.strip(), 20, what="log lines via CLI")
    assert "INFO" in lines

    dead = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "flow-run", "ls"],
        env=os.environ.copy() | {"ORCHESTRATOR_API_URL": "http://127.0.0.1:1/api"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.returncode == 2 and "orchestrator server start" in dead.stdout


def test_schemathesis_finds_no_server_error(
    redis_url: str, database_url: str, worker_logs: Path, tmp_path: Path, fleet: subprocess.Popen[bytes]
) -> None:
    """Fuzz every route from the OpenAPI schema (bounded: 25 s) and check no answer is a 5xx.

    The fuzzed API gets a Redis of its own holding the fleet's registered flows but no
    worker: runs it creates with fuzzed parameters are accepted and never executed, so
    they cannot flood the test fleet.
    """
    with redis_server() as fuzz_redis:
        flows = redis.Redis.from_url(redis_url).hgetall(keys.FLOWS)
        redis.Redis.from_url(fuzz_redis).hset(keys.FLOWS, mapping=flows)  # type: ignore[arg-type]
        admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL") if "postgresql" in database_url else None
        with (  # a database of its own too: fuzzed deployments must not reach the main API's scheduler
            api_database(tmp_path, admin_url) as fuzz_database,
            api_server(fuzz_redis, fuzz_database, log_path=worker_logs / "api-fuzz.log") as server,
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "run",
                    f"http://127.0.0.1:{server.port}/openapi.json",
                    "--checks",
                    "not_a_server_error",
                    "--max-examples",
                    "25",
                    "--seed",
                    "7",
                    "--workers",
                    "1",  # two threads can crash hypothesis on CPython 3.11.7 (gh-106905), not the API
                    "--max-time",
                    "25",
                    "--phases",
                    "coverage,fuzzing",
                ],
                capture_output=True,
                text=True,
                timeout=240,
            )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_log_prints_and_the_logs_of_a_killed_task_reach_the_api(http: httpx.Client) -> None:
    """print() goes to the run log where log_prints is on (by the task, or inherited from its
    flow); a task killed mid-run keeps the lines it logged before the kill."""

    def messages(run_id: str, expected: int) -> list[str]:
        def enough() -> list[str] | None:
            lines = [line["message"] for line in http.get(f"/flow-runs/{run_id}/logs").json()]
            return lines if len(lines) >= expected else None

        return eventually(enough, 20, what=f"{expected} log lines of {run_id}")

    own = submit(http, "printing-task-flow")
    assert wait_final(http, own["id"])["state"] == "Completed"
    lines = messages(own["id"], 2)
    assert any(line.endswith("first line") for line in lines) and any(line.endswith("second line") for line in lines)

    inherited = submit(http, "printing-flow", parameters={"n": 7})
    assert wait_final(http, inherited["id"])["state"] == "Completed"
    lines = messages(inherited["id"], 1)
    assert any(line.endswith("inherited print 7") for line in lines)
    assert not any("stays on stdout" in line for line in lines)

    killed = submit(http, "killed-logging-flow")
    assert wait_final(http, killed["id"], timeout=90)["state"] == "Completed"  # redelivered after the kill
    assert any("about to be killed" in line for line in messages(killed["id"], 1))


def test_a_retry_reads_a_persisted_result_redis_no_longer_has(redis_url: str, http: httpx.Client) -> None:
    label = f"kp{uuid.uuid4().hex[:6]}"
    created = submit(http, "kept-then-fails", parameters={"label": label})
    assert wait_final(http, created["id"])["state"] == "Failed"
    client = redis.Redis.from_url(redis_url)
    kept = next(t for t in http.get(f"/flow-runs/{created['id']}/task-runs").json() if t["task_name"].endswith(".kept"))
    client.delete(keys.result(kept["id"]))  # expired, or lost with a Redis that kept nothing on disk
    client.set(f"test:fixed:{label}", 1)
    assert http.post(f"/flow-runs/{created['id']}/retry").status_code == 202
    from orchestrator.runs.handle import FlowRun

    assert FlowRun(created["id"]).result(timeout=60) == 50  # the retried task read 50 from the result storage


def test_a_run_nobody_consumes_becomes_late_and_its_diagnosis_names_the_queue(
    api: ApiProcess, http: httpx.Client
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    overdue = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()  # past late_after_seconds already
    created = submit(http, "chain-flow", parameters={"x": 1}, queue=queue, scheduled_start=overdue)

    def late() -> dict[str, Any] | None:
        run = http.get(f"/flow-runs/{created['id']}").json()
        return dict(run) if run["state"] == "Late" else None

    run = eventually(late, 15, what="the run marked Late by the services")
    assert f"no live worker consumes queue {queue!r}" in run["state_message"]
    history = [s for s in http.get(f"/flow-runs/{created['id']}/states").json() if s["applied"]]
    assert history[-1]["state"] == "Late" and history[-1]["cause"] == "services: late runs"

    found = http.get(f"/flow-runs/{created['id']}/diagnosis").json()
    assert found["state"] == "Late"
    assert queue in found["summary"] and "'default'" not in found["summary"] and "default" in found["summary"]
    assert found["facts"]["queue"] == queue and found["facts"]["queue_length"] == 1
    assert any("default" in w["queues"] and w["has_flow"] for w in found["facts"]["live_workers"])

    why = cli(api, "flow-run", "why", created["id"])
    assert why.returncode == 0 and f"no live worker consumes queue {queue!r}" in why.stdout.replace("\n", " ")

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    scheduled = submit(http, "chain-flow", parameters={"x": 1}, scheduled_start=later)
    assert "scheduled for" in http.get(f"/flow-runs/{scheduled['id']}/diagnosis").json()["summary"]
    assert http.post(f"/flow-runs/{created['id']}/cancel").status_code == 202
    assert http.post(f"/flow-runs/{scheduled['id']}/cancel").status_code == 202


def test_the_diagnosis_of_a_running_run_counts_planned_task_runs_that_have_not_reported(
    http: httpx.Client,
) -> None:
    created = submit(http, "slow-then-quick-flow", parameters={"seconds": 4})

    def told() -> dict[str, Any] | None:
        found = http.get(f"/flow-runs/{created['id']}/diagnosis").json()
        return dict(found) if any("1 more planned task run has" in r for r in found["reasons"]) else None

    found = eventually(told, 30, what="the diagnosis names the task run that has not reported")
    assert found["state"] == "Running"
    assert wait_final(http, created["id"])["state"] == "Completed"
    done = http.get(f"/flow-runs/{created['id']}/diagnosis").json()
    assert not any("planned task run" in r for r in done["reasons"])


def test_deployments_schedule_runs_pause_and_resume(redis_url: str, api: ApiProcess, http: httpx.Client) -> None:
    name = f"every-2s-{uuid.uuid4().hex[:6]}"
    bad = http.post("/deployments", json={"name": name, "flow_name": "chain-flow", "cron": "every day"})
    assert bad.status_code == 422 and "not a valid cron" in bad.text
    bad = http.post("/deployments", json={"name": name, "flow_name": "api-flow", "parameters": {"n": "x"}})
    assert bad.status_code == 422 and "parameter 'n'" in bad.text

    done = cli(api, "deploy", "tests.flows:chain_flow", "--name", name, "--interval", "2", "-p", "x=4")
    assert done.returncode == 0, done.stdout + done.stderr

    def completed_runs() -> list[dict[str, Any]]:
        runs = http.get("/flow-runs", params={"name": name, "state": "Completed"}).json()["items"]
        return list(runs) if len(runs) >= 2 else []

    runs = eventually(completed_runs, 30, what="two runs of the interval deployment completed")
    assert all(r["parameters"] == {"x": 4} for r in runs)
    deployment = http.get(f"/deployments/{name}").json()
    assert deployment["interval_seconds"] == 2 and len(deployment["next_runs"]) >= 1  # created ahead of time

    assert cli(api, "deployment", "pause", name).returncode == 0
    time.sleep(3)  # a run that was due meanwhile stays Scheduled, and says why
    before = http.get("/flow-runs", params={"name": name}).json()["total"]
    time.sleep(3)
    waiting = http.get("/flow-runs", params={"name": name, "state": "Scheduled"}).json()["items"]
    started = http.get("/flow-runs", params={"name": name, "state": "Running"}).json()["total"]
    assert started == 0 and before >= 1
    due = [r for r in waiting if dt.datetime.fromisoformat(r["scheduled_start"]) < dt.datetime.now(dt.UTC)]
    assert due, "a due run of a paused deployment stays Scheduled"
    assert "paused" in http.get(f"/flow-runs/{due[0]['id']}/diagnosis").json()["summary"]

    nightly = http.post(
        "/deployments",
        json={"name": f"nightly-{name}", "flow_name": "chain-flow", "cron": "* * * * *", "timezone": "Europe/Paris"},
    )
    assert nightly.status_code == 201, nightly.text

    def planned() -> list[str]:
        return list(http.get(f"/deployments/nightly-{name}").json()["next_runs"])

    starts = eventually(planned, 10, what="the cron deployment's next run planned")
    first = dt.datetime.fromisoformat(starts[0])
    assert first.second == 0 and first > dt.datetime.now(dt.UTC)  # on the minute, in the future

    assert cli(api, "deployment", "resume", name).returncode == 0
    eventually(
        lambda: (
            http.get("/flow-runs", params={"name": name, "state": "Scheduled"}).json()["items"] == []
            or all(
                dt.datetime.fromisoformat(r["scheduled_start"]) > dt.datetime.now(dt.UTC)
                for r in http.get("/flow-runs", params={"name": name, "state": "Scheduled"}).json()["items"]
            )
        ),
        20,
        what="the due runs of the resumed deployment sent",
    )
    listed = cli(api, "deployment", "ls")
    assert name in listed.stdout
    now_run = http.post(f"/deployments/{name}/runs", json={"parameters": {"x": 9}})
    assert now_run.status_code == 201, now_run.text
    assert wait_final(http, now_run.json()["id"])["parameters"] == {"x": 9}  # run now, parameter overridden
    assert http.post(f"/deployments/{name}/runs", json={"parameters": {"y": 1}}).status_code == 422
    for dep in (name, f"nightly-{name}"):
        http.post(f"/deployments/{dep}/pause")


def test_a_backlog_of_1000_late_runs_is_cleared_by_policy_not_by_a_stampede(
    redis_url: str, api: ApiProcess, http: httpx.Client, worker_logs: Path
) -> None:
    tag = f"backlog{uuid.uuid4().hex[:6]}"
    queue = f"q-{tag}"  # no worker consumes it yet: the outage
    now = dt.datetime.now(dt.UTC)
    for i in range(1000):  # run i was due (i + 1) minutes ago
        start = (now - dt.timedelta(minutes=i + 1)).isoformat()
        submit(http, "chain-flow", parameters={"x": 1}, queue=queue, name=f"{tag}-{i}", scheduled_start=start)

    def all_late() -> bool:
        health = http.get("/health")  # the services keep answering while they mark the backlog
        assert health.status_code == 200
        return bool(http.get("/flow-runs", params={"name": tag, "state": "Late"}).json()["total"] == 1000)

    eventually(all_late, 60, what="1000 runs marked Late")

    # run i is (i + 1) minutes plus the time since `now` old: 30 s past 500 minutes plus that time
    # splits them 500/500 however long submitting and marking took (a loaded machine: over 30 s)
    elapsed = (dt.datetime.now(dt.UTC) - now).total_seconds()
    older = http.post(
        "/flow-runs/late/cleanup",
        json={"policy": "cancel_older_than", "max_age_seconds": 500 * 60 + 30 + elapsed, "queue": queue},
    ).json()
    assert older == {"policy": "cancel_older_than", "late": 1000, "cancelled": 500, "kept": 500, "remaining": 0}
    newest = cli(api, "flow-run", "cleanup-late", "--policy", "newest_only", "--queue", queue)
    assert newest.returncode == 0 and "500 late runs: 499 cancelled, 1 kept" in newest.stdout

    def settled() -> bool:
        page = http.get("/flow-runs", params={"name": tag, "state": "Cancelled", "limit": 1}).json()
        return bool(page["total"] == 999)

    eventually(settled, 60, what="999 runs recorded Cancelled")
    kept = http.get("/flow-runs", params={"name": f"{tag}-0", "state": "Late"}).json()["items"]
    assert [r["name"] for r in kept] == [f"{tag}-0"]  # the newest

    import socket

    from orchestrator.transport.celery_app import client_app

    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def waiting() -> int:
        """Messages in the queue's Redis lists (its priority lists too)."""
        return sum(client.llen(k) for k in client.scan_iter(match=f"{queue}*") if client.type(k) == "list")

    assert waiting() == 1000  # every start message waits for the workers: none consumed or lost yet
    name = f"{tag}@{socket.gethostname()}"
    log = worker_logs / "backlog.log"
    with worker(redis_url, ["tests.flows"], queues=queue, concurrency=2, name=name, log_path=log):
        assert wait_final(http, kept[0]["id"])["state"] == "Completed"  # the workers are back: only it runs
        inspector = client_app().control.inspect(destination=[name], timeout=2)

        def settled() -> bool:
            """Every start message taken and acknowledged, the worker idle, every event recorded."""
            if waiting() or any(queue in m for m in client.hvals("unacked")):
                return False
            active, reserved = inspector.active(), inspector.reserved()
            if active is None or reserved is None or any(active.values()) or any(reserved.values()):
                return False  # no answer yet, or something still running or held
            last = client.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]
            groups = [g for g in client.xinfo_groups(keys.EVENTS_STREAM) if g["name"] == "recorder"]
            return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last

        eventually(settled, 120, interval=0.5, what="the 999 start messages consumed and the worker idle")
    page = http.get("/flow-runs", params={"name": tag, "state": "Completed"}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == kept[0]["id"]
    page = http.get("/flow-runs", params={"name": tag, "state": "Cancelled", "limit": 1000}).json()
    assert page["total"] == 999
    cancelled = page["items"]
    for run in cancelled[:5]:
        assert http.get(f"/flow-runs/{run['id']}/task-runs").json() == []  # never ran a task
    pipe = client.pipeline(transaction=False)
    for run_id in [kept[0]["id"], *(r["id"] for r in cancelled)]:
        pipe.exists(keys.plan(run_id), keys.flow_tasks(run_id))
    started = pipe.execute()
    assert started[0] == 2  # the kept run was planned and has task runs: the check sees a started run
    assert [r["id"] for r, n in zip(cancelled, started[1:], strict=True) if n] == []  # no cancelled run started


def test_a_worker_killed_mid_task_gives_crashed_then_a_retry_that_completes(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    marker = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with worker(redis_url, ["tests.flows"], queues="crashy", concurrency=1, name=f"doomed-{marker}@%h") as doomed:
        created = submit(http, "crashy-flow", parameters={"marker": marker})
        eventually(lambda: client.get(f"test:crashy:{marker}"), 30, what="the task running on the doomed worker")
        heartbeat_renewed(redis_url, created["id"])  # it has heartbeated
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker: main process and pool
        killed_at = time.time()
        with worker(redis_url, ["tests.flows"], queues="crashy", concurrency=1, log_path=worker_logs / "rescue.log"):
            run = wait_final(http, created["id"], timeout=60)
    assert run["state"] == "Completed"
    from orchestrator.runs.handle import FlowRun

    assert FlowRun(created["id"]).result(timeout=5) == "attempt 2"
    (task,) = http.get(f"/flow-runs/{created['id']}/task-runs").json()
    history = [s for s in http.get(f"/flow-runs/{created['id']}/states").json() if s["run_id"] == task["id"]]
    states = [s["state"] for s in history if s["applied"]]
    assert states == ["Running", "Crashed", "AwaitingRetry", "Retrying", "Completed"], states
    crashed = next(s for s in history if s["state"] == "Crashed")
    assert f"doomed-{marker}@" in crashed["message"] and "killed" in crashed["message"]
    assert not task["worker"].startswith(f"doomed-{marker}")  # finished by the other worker
    detected_after = dt.datetime.fromisoformat(crashed["time"]).timestamp() - killed_at
    print(f"crash detected {detected_after:.1f}s after the kill (heartbeat interval 1 s)")


def test_a_crashed_task_without_retries_fails_its_flow_run(redis_url: str, http: httpx.Client) -> None:
    marker = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with worker(redis_url, ["tests.flows"], queues="crashy", concurrency=1, name=f"doomed-{marker}@%h") as doomed:
        created = submit(http, "crashy-no-retry-flow", parameters={"marker": marker})
        eventually(lambda: client.get(f"test:crashy:{marker}"), 30, what="the task running on the doomed worker")
        heartbeat_renewed(redis_url, created["id"])
        os.killpg(doomed.pid, signal.SIGKILL)
        run = wait_final(http, created["id"], timeout=30)  # no other worker needed to end it
    assert run["state"] == "Failed" and "Crashed" in run["state_message"]
    (task,) = http.get(f"/flow-runs/{created['id']}/task-runs").json()
    assert task["state"] == "Crashed" and f"doomed-{marker}@" in task["state_message"]
