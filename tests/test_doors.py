"""Bad input at every door, against real processes (redis-server, a Celery worker, the API).

- HTTP with the API key on: schemathesis over every operation finds no 5xx, and every
  mutating operation of the live schema refuses a request without the key, changing nothing.
- HTTP bodies over ORCHESTRATOR_API_MAX_BODY_BYTES (declared or streamed): 413 that says the
  limit and how to raise it, and nothing is created.
- The broker: a pickle payload reaching a task that did not opt into pickle is refused (the
  task run ends Failed, saying why) and never unpickled.
- Flow parameters carrying the serializer's reserved tags end the run Failed, never stuck.

A message for a task no worker imported is covered in tests/test_fleet.py
(test_a_task_no_worker_knows_fails_and_names_the_task_and_worker).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from orchestrator.config.settings import Settings
from orchestrator.data.serialization import PICKLE_TAG, dumps
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, worker
from orchestrator.planning.compiler import compile_plan, inline_or_stored
from orchestrator.runs.handle import launch_prepared, prepare_run
from orchestrator.runstate import keys
from orchestrator.runstate.store import RunStore, now
from orchestrator.states import StateType
from orchestrator.transport.celery_app import make_celery_app
from orchestrator.transport.messaging import CeleryMessaging
from tests import door_flows
from tests.api_support import HeldEvents, api_database, eventually

API_KEY = f"door-key-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY_LIMIT = 4096  # ORCHESTRATOR_API_MAX_BODY_BYTES of the module's API
MUTATING = ("post", "put", "patch", "delete")
FINAL = {"Completed", "Failed", "TimedOut", "Crashed", "UpstreamFailed", "Skipped", "Cancelled"}
FAR_AHEAD = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()  # a run due then is never sent


@dataclass
class Stack:
    """The module's processes: Redis, one worker importing tests.door_flows, the API with a key."""

    redis_url: str
    api: ApiProcess
    http: httpx.Client  # sends the key

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("doors")
    env = {"ORCHESTRATOR_API_KEY": API_KEY, "ORCHESTRATOR_API_MAX_BODY_BYTES": str(BODY_LIMIT)}
    with (
        redis_server() as url,
        worker(url, ["tests.door_flows"], concurrency=1, name=f"doors{free_port()}@%h", log_path=folder / "worker.log"),
        api_database(folder, None) as database,
        api_server(url, database, log_path=folder / "api.log", extra_env=env) as api,
        httpx.Client(base_url=api.url, headers=AUTH, timeout=30) as http,
    ):
        eventually(lambda: http.get("/flows/door-sinks").status_code == 200, 60, what="the worker announced its flows")
        yield Stack(url, api, http)


# -- 1. the API key ------------------------------------------------------------------------
def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (METHOD, path template) of an OpenAPI document."""
    return [(m.upper(), path) for path, item in spec["paths"].items() for m in item if m in (*MUTATING, "get")]


def operation_of(method: str, url: str, ops: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The operation a request went to: same method, same literal segments (the most specific wins)."""
    segments = urlsplit(url).path.split("/")
    best: tuple[int, tuple[str, str]] | None = None
    for op_method, template in ops:
        parts = template.split("/")
        if op_method != method or len(parts) != len(segments):
            continue
        if all(p.startswith("{") or p == s for p, s in zip(parts, segments, strict=True)):
            literal = sum(not p.startswith("{") for p in parts)
            if best is None or literal > best[0]:
                best = (literal, (op_method, template))
    return best[1] if best else None


def test_schemathesis_with_the_api_key_finds_no_server_error(stack: Stack, tmp_path: Path) -> None:
    """Fuzz every operation with the key sent (so requests get past the door) for 25 s: no 5xx.

    As in test_api's fuzz test, the fuzzed API has its own database and its own Redis holding
    the registered flows but no worker: the runs it accepts are never executed.
    """
    har = tmp_path / "fuzz.har"
    with redis_server() as fuzz_redis:
        flows = redis.Redis.from_url(stack.redis_url).hgetall(keys.FLOWS)
        redis.Redis.from_url(fuzz_redis).hset(keys.FLOWS, mapping=flows)  # type: ignore[arg-type]
        env = {"ORCHESTRATOR_API_KEY": API_KEY}
        with (
            api_database(tmp_path, None) as database,
            api_server(fuzz_redis, database, log_path=tmp_path / "api-fuzz.log", extra_env=env) as server,
        ):
            schema_url = f"http://127.0.0.1:{server.port}/openapi.json"
            spec = httpx.get(schema_url).json()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "schemathesis.cli",
                    "run",
                    schema_url,
                    "--checks",
                    "not_a_server_error",
                    "--header",
                    f"Authorization: Bearer {API_KEY}",
                    "--generation-with-security-parameters",
                    "false",  # never replace the key by a generated one
                    "--max-examples",
                    "25",
                    "--seed",
                    "11",
                    "--workers",
                    "1",  # one thread: Python 3.11.7's ast.parse (used by hypothesis) is not thread-safe (gh-106905)
                    "--max-time",
                    "25",
                    "--phases",
                    "coverage,fuzzing",
                    "--report",
                    "har",
                    "--report-har-path",
                    str(har),
                    "--report-dir",
                    str(tmp_path),
                ],
                capture_output=True,
                text=True,
                timeout=240,
                cwd=tmp_path,
            )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    ops = operations(spec)
    entries = json.loads(har.read_text())["log"]["entries"]
    seen: dict[tuple[str, str], Counter[int]] = {op: Counter() for op in ops}
    for entry in entries:
        op = operation_of(entry["request"]["method"], entry["request"]["url"], ops)
        if op is not None:
            seen[op][entry["response"]["status"]] += 1
    statuses = Counter(entry["response"]["status"] for entry in entries)
    print(f"\nfuzz: {len(ops)} operations, {len(entries)} requests, statuses {dict(sorted(statuses.items()))}")
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[401] == 0, "the key was sent with every request, yet some were refused"
    unreached = [op for op, counts in seen.items() if not counts]
    assert not unreached, f"operations schemathesis never called: {unreached}"


def example_value(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A plausible value for ``schema``: required fields only, defaults and first choices first."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example_value(spec["components"]["schemas"][name], spec)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("default") is not None:
        return schema["default"]
    for choice in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(choice, []) if o.get("type") != "null"]
        if options:
            return example_value(options[0], spec)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: example_value(props[name], spec) for name in schema.get("required", [])}
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return "door"


def mutating_requests(
    spec: dict[str, Any], values: dict[str, str], bodies: dict[tuple[str, str], dict[str, Any]]
) -> list[tuple[str, str, str, Any]]:
    """(METHOD, template, url, JSON body) for every mutating operation of ``spec``.

    Path parameters come from ``values`` (by name, or by "<first path segment>.<name>"),
    bodies from the operation's schema with ``bodies`` laid over them: requests that the
    server would carry out if they had the key.
    """
    out: list[tuple[str, str, str, Any]] = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in MUTATING:
                continue
            area = path.split("/")[2]

            def fill(match: re.Match[str], area: str = area) -> str:
                name = match.group(1)
                return values.get(f"{area}.{name}") or values.get(name) or "door"

            url = re.sub(r"\{([^}]+)\}", fill, path)
            content = (operation.get("requestBody") or {}).get("content", {}).get("application/json")
            body: Any = None
            if content is not None:
                body = example_value(content["schema"], spec)
                if isinstance(body, dict):
                    body |= bodies.get((method.upper(), path), {})
            out.append((method.upper(), path, url, body))
    return out


def door_echo_runs(http: httpx.Client) -> dict[str, tuple[str, str]]:
    """Runs of door-echo (only this module's API tests create them): id -> (name, state)."""
    page = http.get("/flow-runs", params={"flow": "door-echo", "limit": 1000}).json()
    return {r["id"]: (r["name"], r["state"]) for r in page["items"]}


def test_every_mutating_route_refuses_a_request_without_the_key_and_changes_nothing(stack: Stack) -> None:
    http = stack.http
    suffix = uuid.uuid4().hex[:8]
    # What the requests would change if they got through: a run not sent yet (cancel, rename),
    # a paused deployment (resume, run, replace), a concurrency limit (change, delete).
    created = http.post("/flows/door-echo/runs", json={"parameters": {"value": 1}, "scheduled_start": FAR_AHEAD})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    deployment = f"door-deploy-{suffix}"
    made = http.post("/deployments", json={"name": deployment, "flow_name": "door-echo", "paused": True})
    assert made.status_code == 201, made.text
    tag = f"door-tag-{suffix}"
    assert http.post("/concurrency-limits", json={"tag": tag, "limit": 3}).status_code == 200

    spec = httpx.get(f"{stack.origin}/openapi.json").json()
    values = {"run_id": run_id, "flows.name": "door-echo", "deployments.name": deployment, "tag": tag}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/flows/{name}/runs"): {"parameters": {"value": 2}},
        ("PATCH", "/api/flow-runs/{run_id}"): {"name": "renamed-without-the-key"},
        ("POST", "/api/deployments"): {"name": deployment, "flow_name": "door-echo", "paused": False},
        ("POST", "/api/concurrency-limits"): {"tag": tag, "limit": 0},
        ("POST", "/api/flow-runs/late/cleanup"): {"policy": "cancel_older_than", "max_age_seconds": 1},
    }
    requests = mutating_requests(spec, values, bodies)
    routes = {(method, path) for method, path, _, _ in requests}
    assert {  # the enumeration found the routes we know of (and finds new ones by itself)
        ("POST", "/api/flows/{name}/runs"),
        ("PATCH", "/api/flow-runs/{run_id}"),
        ("POST", "/api/flow-runs/{run_id}/cancel"),
        ("POST", "/api/deployments/{name}/resume"),
        ("DELETE", "/api/concurrency-limits/{tag}"),
    } <= routes, routes

    def snapshot() -> dict[str, Any]:
        return {
            "door-echo runs": door_echo_runs(http),
            "run": http.get(f"/flow-runs/{run_id}").json(),
            "states": http.get(f"/flow-runs/{run_id}/states").json(),
            "deployment": http.get(f"/deployments/{deployment}").json(),
            "limits": {row["tag"]: row["limit"] for row in http.get("/concurrency-limits").json()},
        }

    before = snapshot()
    with HeldEvents(stack.redis_url) as held:  # what the API sends, kept from its recorder's trimming
        refused: Counter[int] = Counter()
        with httpx.Client(base_url=stack.origin, timeout=30) as bare:
            for method, path, url, body in requests:
                for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
                    response = bare.request(method, url, json=body, headers=headers)
                    answer = (method, path, headers, response.status_code, response.text)
                    assert response.status_code in (401, 403), answer
                    assert "ORCHESTRATOR_API_KEY" in response.json()["detail"]
                    refused[response.status_code] += 1
        print(f"\nkeyless: {len(requests)} mutating operations x 3 credentials, answers {dict(refused)}")

        assert snapshot() == before
        about_us = [e for e in held.events() if e["id"] == run_id or e["kind"] == "flow_run_rename"]
        assert not about_us, about_us
    assert before["run"]["state"] == "Scheduled" and before["deployment"]["paused"] is True
    assert before["limits"][tag] == 3


# -- 2. the body size limit ----------------------------------------------------------------
def test_oversized_parameters_get_413_that_says_the_limit_and_how_to_raise_it(stack: Stack) -> None:
    http = stack.http
    before = door_echo_runs(http)
    with HeldEvents(stack.redis_url) as held:
        big = json.dumps({"parameters": {"value": "x" * BODY_LIMIT}}).encode()
        json_type = {"content-type": "application/json"}

        def chunked(data: bytes) -> Iterator[bytes]:  # no Content-Length: the size is only seen as it streams
            yield from (data[i : i + 1000] for i in range(0, len(data), 1000))

        declared = http.post("/flows/door-echo/runs", content=big, headers=json_type)
        streamed = http.post("/flows/door-echo/runs", content=chunked(big), headers=json_type)
        assert "content-length" not in streamed.request.headers
        assert streamed.request.headers["transfer-encoding"] == "chunked"
        for response in (declared, streamed):
            assert response.status_code == 413, response.text
            detail = response.json()["detail"]
            assert f"larger than {BODY_LIMIT} bytes" in detail  # what the limit is
            assert "ORCHESTRATOR_API_MAX_BODY_BYTES=<bytes>" in detail and "restart" in detail  # how to change it
        print(f"\n413 detail: {declared.json()['detail']}")

        assert door_echo_runs(http) == before  # nothing created
        assert not [e for e in held.events() if e["kind"] == "flow_run"]
    assert http.get("/health").status_code == 200

    # The limit is the limit: a body just under it is accepted, declared or streamed
    # (due far ahead, so never sent).
    small = json.dumps({"parameters": {"value": "x" * (BODY_LIMIT - 200)}, "scheduled_start": FAR_AHEAD}).encode()
    assert len(small) <= BODY_LIMIT
    for content in (small, chunked(small)):
        accepted = http.post("/flows/door-echo/runs", content=content, headers=json_type)
        assert accepted.status_code == 201, accepted.text


# -- 3. pickle at the broker ---------------------------------------------------------------
def pickled(value: Any) -> dict[str, Any]:
    """``value`` as it rides in a message to a pickle task: ``{"__pickle__": <base64>}``."""
    data = json.loads(dumps(value, "pickle", "test_doors"))
    assert isinstance(data, dict) and PICKLE_TAG in data
    return data


def test_a_pickle_payload_for_a_task_that_did_not_opt_in_is_refused_and_never_unpickled(
    stack: Stack, tmp_path: Path
) -> None:
    """One flow run, sent through the real broker to the real worker:

    - json_sink-0 (JSON) gets a reference to make_bomb-0's result, stored pickled;
    - json_sink-1 (JSON) gets a crafted message whose input is an inline pickle payload;
    - pickle_sink-0 (opted into pickle) gets the same kind of payload: the control, proving
      the payload does fire when it is unpickled (from the run store, where the compiler puts
      every pickled input).
    """
    markers = {name: tmp_path / f"{name}.marker" for name in ("reference", "inline", "control")}
    store = RunStore(stack.redis_url)
    app = make_celery_app("doors-client", Settings(redis_url=stack.redis_url), send_only=True)
    messaging = CeleryMessaging(app)
    run_id = str(uuid.uuid4())
    parameters = {"path": str(markers["reference"])}
    prepared = prepare_run(door_flows.door_sinks, parameters, run_id=run_id, queue="default", messaging=messaging)
    assert prepared.plan is not None
    nodes = {node.label: node for node in prepared.plan.nodes.values()}
    assert sorted(nodes) == ["json_sink-0", "json_sink-1", "make_bomb-0", "pickle_sink-0"]
    # The crafted messages: the same inputs a pickle task's message carries, given to a JSON task.
    nodes["json_sink-1"].inputs = {"value": pickled(door_flows.PickleBomb(str(markers["inline"])))}
    nodes["pickle_sink-0"].inputs = {"value": pickled(door_flows.PickleBomb(str(markers["control"])))}
    # The compiler keeps any pickled input in the run store, never in the message (a crafted
    # message carrying one inline is the next test's).
    assert inline_or_stored(nodes["json_sink-1"].inputs)[1] is not None
    assert inline_or_stored(nodes["pickle_sink-0"].inputs)[1] is not None
    prepared.compiled = compile_plan(prepared.plan, app)
    record: dict[str, Any] = {"id": run_id, "flow": "door-sinks", "name": f"door-sinks-{run_id[:8]}", "root": run_id}
    record |= {"queue": "default", "parameters": parameters, "created": now()}
    pipe = store.redis.pipeline(transaction=False)
    store.flow_runs.emit_state(run_id, StateType.PENDING, pipe, record)
    launch_prepared(prepared, "door-sinks", store=store, messaging=messaging, record=record, pipe=pipe)

    assert store.flow_runs.wait_final(run_id, 60) is StateType.FAILED
    rows = {label: store.task_runs.read(node.id) for label, node in nodes.items()}
    assert rows["make_bomb-0"]["state"] == "Completed"
    bomb_result = store.task_runs.results([nodes["make_bomb-0"].id])[nodes["make_bomb-0"].id]
    assert bomb_result is not None and bomb_result.startswith('{"' + PICKLE_TAG)  # stored with the pickle tag
    assert rows["pickle_sink-0"]["state"] == "Completed"
    assert markers["control"].exists()  # the payload fires where pickle was opted into...
    for label in ("json_sink-0", "json_sink-1"):
        row = rows[label]
        assert row["state"] == "Failed", row
        message = row["message"]
        assert f"task {label} (tests.door_flows.json_sink) of flow run {run_id}" in message  # names the task
        assert "refused a pickle payload because this task did not opt into pickle" in message
        assert '@task(result_serializer="pickle")' in message  # how to opt in
        assert row["attempts"] == "1"  # refused at once, not retried
    assert not markers["reference"].exists() and not markers["inline"].exists()  # ...and never fired here

    def recorded() -> list[dict[str, Any]] | None:  # the refusal reaches the API's database
        if stack.http.get(f"/flow-runs/{run_id}").json().get("state") != "Failed":
            return None
        tasks = stack.http.get(f"/flow-runs/{run_id}/task-runs").json()
        return tasks if sum(t["state"] in FINAL for t in tasks) == 4 else None

    by_label = {t["label"]: t for t in eventually(recorded, 60, what=f"flow run {run_id} recorded by the API")}
    for label in ("json_sink-0", "json_sink-1"):
        assert by_label[label]["state"] == "Failed"
        assert "refused a pickle payload" in by_label[label]["state_message"]
    assert by_label["pickle_sink-0"]["state"] == by_label["make_bomb-0"]["state"] == "Completed"


# -- 4. reserved tags in flow parameters ---------------------------------------------------
def test_parameters_with_reserved_or_malformed_tags_end_the_run_failed(stack: Stack, tmp_path: Path) -> None:
    """A pickle payload in HTTP parameters is refused with 422; a malformed tag of the
    serializer's must fail the run, not strand it in Pending (it did: the worker raised a bare
    KeyError while reading the parameters)."""
    marker = tmp_path / "http.marker"
    payload = base64.b64encode(pickle.dumps(door_flows.PickleBomb(str(marker)))).decode()
    for config in ({PICKLE_TAG: payload}, {"rows": [{"nested": {PICKLE_TAG: payload}}]}):
        refused = stack.http.post("/flows/door-config/runs", json={"parameters": {"config": config}})
        assert refused.status_code == 422, refused.text  # refused at the door, nothing created
        assert "JSON values only" in refused.text and "'config'" in refused.text
    cases = {
        "unknown tag": ({"__orc__": "nope", "v": 1}, "is not one this product writes"),
        "malformed date": ({"__orc__": "date", "v": "not a date"}, "is not a valid date"),
    }
    ids = {}
    for case, (config, _) in cases.items():
        response = stack.http.post("/flows/door-config/runs", json={"parameters": {"config": config}})
        assert response.status_code == 201, (case, response.text)
        ids[case] = response.json()["id"]

    def final(run_id: str) -> dict[str, Any] | None:
        run = stack.http.get(f"/flow-runs/{run_id}").json()
        return dict(run) if run.get("state") in FINAL else None

    for case, (_, expected) in cases.items():
        run = eventually(lambda: final(ids[case]), 60, what=f"{case}: run final")  # noqa: B023
        assert run["state"] == "Failed", (case, run)
        assert expected in run["state_message"] and "reserved" in run["state_message"], (case, run)
    assert not marker.exists()


def test_no_task_unpickles_a_value_its_message_carries(stack: Stack, tmp_path: Path) -> None:
    """Anyone who can put a message on the broker (or post one through Flower's task API) names a
    task and hands it a pickle payload inline: the subflow end (``inputs.returns``), the map
    expansion of a pickle task (``inputs.mapped``), and a user task that opted into pickle.
    Each ends its task run Failed, saying why, and the payload never fires: pickle is loaded
    only from the run store (the previous test's control shows that path still works)."""
    store = RunStore(stack.redis_url)
    app = make_celery_app("doors-client", Settings(redis_url=stack.redis_url), send_only=True)
    markers = {name: tmp_path / f"{name}.marker" for name in ("subflow", "map", "task")}
    crafted = {
        "subflow": (
            "orchestrator.finish_subflow",
            {
                "child_run_id": str(uuid.uuid4()),
                "inputs": {"returns": pickled(door_flows.PickleBomb(str(markers["subflow"])))},
            },
        ),
        "map": (
            "orchestrator.expand_map",
            {
                "task": "tests.door_flows.pickle_sink",
                "queue": "default",
                "inputs": {"static": {}, "mapped": {"value": [pickled(door_flows.PickleBomb(str(markers["map"])))]}},
            },
        ),
        "task": (
            "tests.door_flows.pickle_sink",
            {"inputs": {"value": pickled(door_flows.PickleBomb(str(markers["task"])))}},
        ),
    }
    sent: dict[str, str] = {}
    for name, (task_name, kwargs) in crafted.items():
        run_id, trid = str(uuid.uuid4()), str(uuid.uuid4())
        run = {"flow_run_id": run_id, "label": f"crafted-{name}"}
        app.send_task(task_name, kwargs={"run": run, **kwargs}, queue="default", task_id=trid)
        sent[name] = trid

    def ended(trid: str) -> bool:
        return store.task_runs.read(trid).get("state") in FINAL

    for name, trid in sent.items():
        eventually(lambda trid=trid: ended(trid), 60, what=f"the crafted {name} message was handled")
        row = store.task_runs.read(trid)
        assert row["state"] == "Failed", (name, row)
        assert "refused a pickle payload" in row["message"], (name, row)
    assert not [name for name, marker in markers.items() if marker.exists()]
