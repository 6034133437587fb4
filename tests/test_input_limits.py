"""Limits on what comes in, at every door, against real processes (redis-server, a worker, the API).

- Parameters nested deeper than 32 levels: 422 naming the parameter, the depth and the limit
  (HTTP runs, deployments registered or not, run-now overrides, ``.delay()``, ``-p``); a deep
  run stored before the limit existed no longer makes ``GET /flow-runs`` answer 500 for everyone.
- Run names made by a ``flow_run_name`` template are checked like given ones, and one bad
  submission among 60 concurrent ones fails alone (a batch the database refuses is retried row by row).
- Queue names that would reach the product's or Celery's own Redis keys are refused.
- Deployments: schedules that never fire or fire more than once per 10 s are refused; a broken
  one stored anyway is logged once, not on every scheduler pass; late-run cleanup needs a filter
  and cancels at most one page per request; ``scheduled_start`` outside the calendar is a 422.

Every test runs on SQLite, and again on PostgreSQL when ORCHESTRATOR_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlmodel import Session

from orchestrator import flow, task
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, worker
from orchestrator.errors import DefinitionError, ParameterError
from orchestrator.runstate import keys
from tests.api_support import api_database, cli, eventually, sdk_settings
from tests.limit_flows import limit_echo, limit_named, limit_sink

FAR_AHEAD = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()  # a run due then is never sent
JSON = {"content-type": "application/json"}


@dataclass
class Stack:
    """The module's processes: Redis, one worker importing tests.limit_flows, the API on its own database."""

    redis_url: str
    database_url: str
    api: ApiProcess
    http: httpx.Client
    api_log: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    folder = tmp_path_factory.mktemp(f"limits-{request.param}")
    env = {"ORCHESTRATOR_LATE_AFTER_SECONDS": "1", "ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS": "10"}
    with (
        redis_server() as url,
        worker(url, ["tests.limit_flows"], concurrency=1, name=f"limits{free_port()}@%h", log_path=folder / "w.log"),
        api_database(folder, admin_url if request.param == "postgresql" else None) as database,
        api_server(url, database, log_path=folder / "api.log", extra_env=env) as api,
        httpx.Client(base_url=api.url, timeout=60) as http,
    ):
        eventually(lambda: http.get("/flows/limit-named").status_code == 200, 60, what="the worker announced its flows")
        yield Stack(url, database, api, http, folder / "api.log")


@pytest.fixture
def client_on_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's SDK (``.delay()``) at the module's Redis, never at a default one."""
    with sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=stack.redis_url):
        yield


def nested(depth: int) -> str:
    """JSON text of ``depth`` lists inside one another (written out, so no encoder recursion here)."""
    return "[" * depth + "1" + "]" * depth


def deep(depth: int) -> Any:
    """The same as a Python value, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def runs_named(http: httpx.Client, text: str) -> int:
    return int(http.get("/flow-runs", params={"name": text, "limit": 1}).json()["total"])


def detail_text(response: httpx.Response) -> str:
    return json.dumps(response.json()["detail"])


# -- nesting depth ---------------------------------------------------------------------------------
def test_parameters_nested_too_deep_get_422_naming_the_parameter_the_depth_and_the_limit(stack: Stack) -> None:
    http = stack.http
    tag = f"deep{uuid.uuid4().hex[:6]}"
    for depth in (33, 256, 299, 300, 600, 850):
        body = f'{{"name": "{tag}-{depth}", "parameters": {{"config": {nested(depth)}}}}}'
        response = http.post("/flows/limit-echo/runs", content=body, headers=JSON)
        assert response.status_code == 422, (depth, response.status_code, response.text[:300])
        text = detail_text(response)
        assert "'config'" in text and f"{depth} levels" in text and "at most 32" in text, text
    for depth in (989, 5000):  # beyond what the JSON parser itself takes: refused before any route runs
        huge = f'{{"parameters": {{"config": {nested(depth)}}}}}'
        response = http.post("/flows/limit-echo/runs", content=huge, headers=JSON)
        assert 400 <= response.status_code < 500, response.text[:300]
    deep_name = f'{{"name": {nested(600)}, "parameters": {{}}}}'  # deep where a string belongs
    response = http.post("/flows/limit-echo/runs", content=deep_name, headers=JSON)
    assert response.status_code == 422, response.text[:300]
    assert http.get("/flow-runs").status_code == 200
    assert runs_named(http, tag) == 0  # nothing was created

    at_limit = http.post(
        "/flows/limit-echo/runs",
        json={"name": f"{tag}-32", "parameters": {"config": deep(32)}, "scheduled_start": FAR_AHEAD},
    )
    assert at_limit.status_code == 201, at_limit.text[:300]

    # deployments: checked whether or not a worker has registered the flow yet, and when run now
    for flow_name in ("limit-echo", f"not-registered-{tag}"):
        head = f'"name": "{tag}-{len(flow_name)}", "flow_name": "{flow_name}"'
        body = f'{{{head}, "parameters": {{"config": {nested(300)}}}}}'
        response = http.post("/deployments", content=body, headers=JSON)
        assert response.status_code == 422, (flow_name, response.text[:300])
        assert "'config'" in detail_text(response) and "300 levels" in detail_text(response)
        pickled = {"name": f"{tag}-p", "flow_name": flow_name, "parameters": {"config": {"__pickle__": "gASVAA=="}}}
        response = http.post("/deployments", json=pickled)
        assert response.status_code == 422 and "__pickle__" in response.text, (flow_name, response.text[:300])
    made = http.post("/deployments", json={"name": f"{tag}-ok", "flow_name": "limit-echo", "paused": True})
    assert made.status_code == 201, made.text
    override = f'{{"parameters": {{"config": {nested(280)}}}}}'
    response = http.post(f"/deployments/{tag}-ok/runs", content=override, headers=JSON)
    assert response.status_code == 422 and "280 levels" in detail_text(response), response.text[:300]
    assert http.get("/deployments").status_code == 200
    assert runs_named(http, tag) == 1  # only the one at the limit


def test_a_deep_run_stored_before_the_limit_does_not_break_the_listing_for_everyone(stack: Stack) -> None:
    from api.db import engine_for
    from api.models import Deployment, FlowRun

    tag = f"stored{uuid.uuid4().hex[:6]}"
    run_id, now = str(uuid.uuid4()), time.time()
    with Session(engine_for(stack.database_url)) as session:  # as the API stored it before the limit existed
        session.add(
            FlowRun(
                id=run_id,
                flow_name="limit-echo",
                name=f"{tag}-run",
                state="Scheduled",
                root_id=run_id,
                queue="default",
                parameters={"config": deep(280), "plain": 1},
                created=now,
                scheduled_start=now + 30 * 86400,
                dispatched=False,
                updated=now,
            )
        )
        session.add(
            Deployment(
                id=str(uuid.uuid4()),
                name=f"{tag}-dep",
                flow_name="limit-echo",
                parameters={"config": deep(280)},
                paused=True,
                created=now,
                updated=now,
            )
        )
        session.commit()
    listed = stack.http.get("/flow-runs")
    assert listed.status_code == 200, listed.text[:300]
    shown = next(r for r in listed.json()["items"] if r["id"] == run_id)["parameters"]
    assert shown["plain"] == 1 and "not shown" in shown["config"] and "280 levels" in shown["config"]
    assert stack.http.get(f"/flow-runs/{run_id}").status_code == 200
    assert stack.http.get("/deployments").status_code == 200
    assert stack.http.get(f"/deployments/{tag}-dep").status_code == 200
    done = cli(stack.api, "flow-run", "ls")
    assert done.returncode == 0 and tag in done.stdout, done.stdout + done.stderr


def test_delay_and_the_cli_refuse_deep_parameters_before_sending_anything(stack: Stack, client_on_stack: None) -> None:
    from orchestrator.authoring.params import parse_parameters

    with pytest.raises(ParameterError, match=r"'config' is nested 40 levels deep.*at most 32"):
        limit_echo.delay(config=deep(40))
    with pytest.raises(ParameterError, match=r"'config' is nested 40 levels deep"):
        parse_parameters(limit_echo, [f"config={nested(40)}"])
    itself: list[Any] = []
    itself.append(itself)  # measured without recursion, so a value that contains itself ends the walk too
    with pytest.raises(ParameterError, match=r"'config' is nested more than 10000 levels deep"):
        limit_echo.delay(config=itself)
    name = f"deep-cli-{uuid.uuid4().hex[:6]}"
    done = cli(
        stack.api, "deploy", "tests.limit_flows:limit_echo", "--name", name, "--paused", "-p", f"config={nested(40)}"
    )
    assert done.returncode == 2 and "40 levels" in done.stdout, done.stdout + done.stderr
    assert stack.http.get(f"/deployments/{name}").status_code == 404


# -- run names -------------------------------------------------------------------------------------
def test_names_made_by_a_template_are_checked_like_given_ones(stack: Stack, client_on_stack: None) -> None:
    http = stack.http
    tag = f"nm{uuid.uuid4().hex[:6]}"
    for label in ("x" * 600, f"{tag}\x00nul", f"{tag}\nline", f"{tag}\x1b[31mred"):
        response = http.post(
            "/flows/limit-named/runs", json={"parameters": {"label": label}, "scheduled_start": FAR_AHEAD}
        )
        assert response.status_code == 422, (label[:20], response.status_code, response.text[:300])
        text = detail_text(response)
        assert "flow_run_name" in text and "name" in text, text
    for given in (f"{tag}\ttab", "x" * 501, " "):
        response = http.post("/flows/limit-named/runs", json={"name": given, "scheduled_start": FAR_AHEAD})
        assert response.status_code == 422, (given[:20], response.text[:300])
    good = http.post("/flows/limit-named/runs", json={"parameters": {"label": tag}, "scheduled_start": FAR_AHEAD})
    assert good.status_code == 201 and good.json()["name"] == f"named-{tag}", good.text
    renamed = http.patch(f"/flow-runs/{good.json()['id']}", json={"name": f"{tag}\nsecond line"})
    assert renamed.status_code == 422, renamed.text
    assert runs_named(http, tag) == 1
    with pytest.raises(ParameterError, match="flow_run_name"):
        limit_named.delay(label="x" * 600)


def test_one_bad_name_among_60_concurrent_submissions_fails_alone(stack: Stack) -> None:
    tag = f"batch{uuid.uuid4().hex[:6]}"
    bad = 37

    def body(i: int) -> dict[str, Any]:
        label = "x" * 600 if i == bad else f"{tag}-{i}"
        return {"parameters": {"label": label}} | ({"scheduled_start": FAR_AHEAD} if i % 2 else {})

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=stack.api.url, timeout=60, limits=limits) as client:
            return list(
                await asyncio.gather(*(client.post("/flows/limit-named/runs", json=body(i)) for i in range(60)))
            )

    answers = asyncio.run(all_at_once())
    codes = [r.status_code for r in answers]
    assert codes[bad] == 422, answers[bad].text[:300]
    assert [c for i, c in enumerate(codes) if i != bad] == [201] * 59, codes
    assert runs_named(stack.http, tag) == 59


def test_a_row_the_database_refuses_fails_only_its_own_request(stack: Stack) -> None:
    """Beyond validation: a batch insert that fails is retried row by row, so only the bad row fails."""
    from sqlalchemy.exc import IntegrityError

    from api.db import engine_for
    from api.schemas import FlowRunCreate
    from api.submit import Submitter, new_flow_run

    flow_spec = {"name": "limit-echo", "parameters": {"type": "object"}}
    tag = f"dup{uuid.uuid4().hex[:6]}"

    def row(i: int) -> dict[str, Any]:
        start = dt.datetime.fromisoformat(FAR_AHEAD)
        return new_flow_run(flow_spec, FlowRunCreate(name=f"{tag}-{i}", scheduled_start=start))

    async def submit_all(submitter: Submitter) -> list[Any]:
        first = await submitter.submit(row(0))
        rows = [row(i) for i in range(1, 61)]
        rows[40]["id"] = first["id"]  # a primary key the database already holds
        return list(await asyncio.gather(*(submitter.submit(r) for r in rows), return_exceptions=True))

    submitter = Submitter(engine_for(stack.database_url))
    try:
        outcomes = asyncio.run(submit_all(submitter))
    finally:
        submitter.close()
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [40], [repr(outcomes[i])[:200] for i in failed]
    assert isinstance(outcomes[40], IntegrityError)
    assert runs_named(stack.http, tag) == 60  # the first and 59 of the batch


# -- queue names -----------------------------------------------------------------------------------
def test_queue_names_that_reach_other_redis_keys_are_refused_at_every_door(stack: Stack, client_on_stack: None) -> None:
    http = stack.http
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    victim = http.post("/flows/limit-echo/runs", json={"scheduled_start": FAR_AHEAD}).json()["id"]
    refused = [f"orc:frdone:{victim}", "orc:events", "unacked", "unacked_index", "celery", "_kombu.binding.default"]
    refused += ["a b", "tab\tq", "x" * 101, "w1.reply.celery.pidbox", ""]
    for queue in refused:
        response = http.post("/flows/limit-echo/runs", json={"queue": queue, "scheduled_start": FAR_AHEAD})
        assert response.status_code == 422, (queue, response.status_code, response.text[:300])
        assert "queue" in response.text
        response = http.post(
            "/deployments", json={"name": f"q{uuid.uuid4().hex[:6]}", "flow_name": "limit-echo", "queue": queue}
        )
        assert response.status_code == 422, (queue, response.status_code, response.text[:300])
    now = http.post("/flows/limit-echo/runs", json={"queue": "orc:events"})
    assert now.status_code == 422, now.text
    assert client.llen(keys.flow_done(victim)) == 0  # no message landed on the run's completion latch
    assert client.type(keys.EVENTS_STREAM) == "stream"
    fine = http.post("/flows/limit-echo/runs", json={"queue": "etl.v2_x-1", "scheduled_start": FAR_AHEAD})
    assert fine.status_code == 201 and fine.json()["queue"] == "etl.v2_x-1", fine.text

    def body() -> None:
        """A function to decorate."""

    with pytest.raises(DefinitionError, match="'orc:events'"):
        task(queue="orc:events")(body)
    with pytest.raises(DefinitionError, match="'a:b'"):
        limit_sink.with_options(queue="a:b")
    with pytest.raises(DefinitionError, match="'celery'"):
        flow(queue="celery")(body)
    with pytest.raises(ParameterError, match=f"'orc:frdone:{victim}'"):
        limit_echo.apply_async(queue=f"orc:frdone:{victim}")
    assert client.llen(keys.flow_done(victim)) == 0


# -- deployments and schedules ---------------------------------------------------------------------
def test_schedules_that_never_fire_or_fire_too_often_and_impossible_start_times_are_refused(stack: Stack) -> None:
    http = stack.http
    tag = f"sch{uuid.uuid4().hex[:6]}"
    refused = [
        ({"cron": "0 0 31 2 *"}, "never"),
        ({"cron": "0 0 30 2 *"}, "never"),
        ({"cron": "* * * * * *"}, "seconds"),
        ({"cron": "0 0 1 1 * 0 2099"}, "5 fields"),
        ({"interval_seconds": 1}, "at least 10"),
        ({"interval_seconds": 9.5}, "at least 10"),
    ]
    for schedule, why in refused:
        response = http.post("/deployments", json={"name": tag, "flow_name": "limit-echo", **schedule})
        assert response.status_code == 422 and why in response.text, (schedule, response.text[:300])
    for i, schedule in enumerate(({"interval_seconds": 10}, {"cron": "0 0 29 2 *"}, {"cron": "@daily"})):
        made = http.post(
            "/deployments", json={"name": f"{tag}-{i}", "flow_name": "limit-echo", "paused": True, **schedule}
        )
        assert made.status_code == 201, (schedule, made.text)
    for start in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"):
        response = http.post("/flows/limit-echo/runs", json={"scheduled_start": start})
        assert response.status_code == 422 and "scheduled_start" in response.text, (start, response.text[:300])
        for bound in ("since", "until"):  # the listing's time filters too
            listed = http.get("/flow-runs", params={bound: start})
            assert listed.status_code == 422 and bound in listed.text, (bound, start, listed.text[:300])
    assert http.get("/flow-runs").status_code == 200


def test_a_broken_deployment_is_logged_once_not_on_every_scheduler_pass(stack: Stack) -> None:
    from api.db import engine_for
    from api.models import Deployment

    http = stack.http
    broken = f"broken{uuid.uuid4().hex[:6]}"
    now = time.time()
    with Session(engine_for(stack.database_url)) as session:  # stored before create refused such schedules
        session.add(
            Deployment(
                id=str(uuid.uuid4()), name=broken, flow_name="limit-echo", cron="0 0 31 2 *", created=now, updated=now
            )
        )
        session.commit()

    def mentions() -> int:
        return sum(broken in line for line in stack.api_log.read_text(errors="replace").splitlines())

    eventually(mentions, 30, what="the scheduler reporting the broken deployment")
    for i in range(3):  # each planned deployment is a later scheduler pass that met the broken one again
        name = f"fine{uuid.uuid4().hex[:6]}-{i}"
        made = http.post("/deployments", json={"name": name, "flow_name": "limit-echo", "interval_seconds": 3600})
        assert made.status_code == 201, made.text
        eventually(lambda n=name: http.get(f"/deployments/{n}").json()["next_runs"], 30, what=f"{name} planned")
        http.post(f"/deployments/{name}/pause")
    assert mentions() == 1, stack.api_log.read_text(errors="replace")[-3000:]
    http.post(f"/deployments/{broken}/pause")


def test_late_cleanup_needs_a_filter_and_cancels_at_most_one_page_per_request(stack: Stack) -> None:
    http = stack.http
    tag = f"late{uuid.uuid4().hex[:6]}"
    queue = f"nobody-{tag}"  # no worker consumes it: its runs are held back when due, then become Late
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    for i in range(5):
        body = {"name": f"{tag}-{i}", "queue": queue, "scheduled_start": (soon + dt.timedelta(seconds=i)).isoformat()}
        assert http.post("/flows/limit-echo/runs", json=body).status_code == 201
    eventually(
        lambda: http.get("/flow-runs", params={"name": tag, "state": "Late"}).json()["total"] == 5,
        60,
        what="5 runs marked Late",
    )
    policy = {"policy": "cancel_older_than", "max_age_seconds": 1}
    unfiltered = http.post("/flow-runs/late/cleanup", json=policy)
    assert unfiltered.status_code == 422 and "all_flows" in unfiltered.text, unfiltered.text
    assert http.get("/flow-runs", params={"name": tag, "state": "Late"}).json()["total"] == 5  # nothing cancelled

    first = http.post("/flow-runs/late/cleanup", json=policy | {"queue": queue, "limit": 2})
    assert first.status_code == 200, first.text
    assert first.json() == {"policy": "cancel_older_than", "late": 5, "cancelled": 2, "kept": 3, "remaining": 3}
    second = http.post("/flow-runs/late/cleanup", json=policy | {"queue": queue, "limit": 2}).json()
    assert second == {"policy": "cancel_older_than", "late": 3, "cancelled": 2, "kept": 1, "remaining": 1}
    last = http.post("/flow-runs/late/cleanup", json=policy | {"all_flows": True}).json()
    assert last["cancelled"] >= 1 and last["remaining"] == 0, last  # every flow's Late runs: ours and any other
    assert http.get("/flow-runs", params={"name": tag, "state": "Cancelled"}).json()["total"] == 5
    assert http.post("/flow-runs/late/cleanup", json=policy | {"limit": 0, "all_flows": True}).status_code == 422


@pytest.mark.parametrize("how", ["orchestrator worker start", "celery worker"])
def test_a_worker_refuses_to_consume_a_queue_that_is_another_key(how: str) -> None:
    """``-Q default,orc:events`` would consume the event stream (and kill the worker with a
    Redis type error): both ways of starting a worker stop first, naming the queue."""
    import subprocess
    import sys

    with redis_server() as url:
        env = os.environ | {"ORCHESTRATOR_REDIS_URL": url, "ORCHESTRATOR_FLOW_MODULES": "tests.limit_flows"}
        if how == "celery worker":
            cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default,orc:events", "-c", "1"]
        else:
            cmd = [sys.executable, "-m", "orchestrator.cli", "worker", "start", "-Q", "default,orc:events", "-c", "1"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "orc:events" in output and "queue" in output, output
        client = redis.Redis.from_url(url)
        assert not client.exists("_kombu.binding.orc:events")  # it never started consuming
