"""``api.direct_submit``: the plain ``POST /api/flows/{name}/runs`` answered before FastAPI's routing, alike.

Against the real server (``python -m api.server``, the session's Redis, the fleet worker), each
request goes twice: with ``Content-Type: application/json`` (the direct path answers it when it is
plain) and with ``application/json; charset=utf-8`` (never plain: FastAPI's route answers it). Both
answers must be the same but for what differs between two runs (id, name, times). In process, the
direct path must answer a plain request without calling the router, and hand everything else to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.direct_submit import DirectSubmit, plain_body, plain_flow_name, replayed
from api.routes import flows
from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database, wait_final

DIRECT = "application/json"
ROUTED = "application/json; charset=utf-8"
VARYING = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{8}\b|\d{4}-\d\d-\d\dT[0-9:.]+Z"
)


@pytest.fixture(scope="module")
def api(
    redis_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path, tmp_path_factory: Any
) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("direct-db")
    with (
        api_database(folder, None) as database_url,
        api_server(redis_url, database_url, log_path=worker_logs / "direct-api.log") as server,
    ):
        yield server


def post(http: httpx.Client, flow: str, body: bytes, content_type: str) -> httpx.Response:
    return http.post(f"/flows/{flow}/runs", content=body, headers={"content-type": content_type})


def answer(response: httpx.Response) -> tuple[int, list[str], str, str]:
    """Status, header names, content type and the body with ids and times blanked."""
    names = sorted(k for k in response.headers if k not in ("date", "server-timing"))
    return response.status_code, names, response.headers["content-type"], VARYING.sub("*", response.text)


CASES = {
    "created": ("api-flow", {"parameters": {"n": 2, "label": "direct"}}),
    "created, every field": (
        "api-flow",
        {"parameters": {"n": 1, "label": "all"}, "name": "given", "queue": "default", "scheduled_start": None},
    ),
    "unknown flow": ("no-such-flow", {"parameters": {}}),
    "ill-typed parameter": ("api-flow", {"parameters": {"n": "three"}}),
    "unknown parameter": ("api-flow", {"parameters": {"n": 1, "nope": 1}}),
    "body field FastAPI refuses": ("api-flow", {"parameters": {"n": 1}, "nope": 1}),
    "bad queue": ("api-flow", {"parameters": {"n": 1}, "queue": "orc:events"}),
    "name too long": ("x" * 201, {"parameters": {}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_direct_answer_is_the_routes(redis_url: str, api: ApiProcess, case: str) -> None:
    flow, body = CASES[case]
    for label in ("direct", "all"):  # api-flow's task fails until its label is fixed
        redis.Redis.from_url(redis_url).set(f"test:fixed:{label}", 1)
    text = json.dumps(body).encode()
    with httpx.Client(base_url=api.url, timeout=15) as http:
        direct, routed = post(http, flow, text, DIRECT), post(http, flow, text, ROUTED)
        assert answer(direct) == answer(routed)
        if direct.status_code == 201:
            for created in (direct.json(), routed.json()):
                assert wait_final(http, created["id"])["state"] == "Completed"


DEEP = b'{"parameters": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"  # beyond the JSON parser's recursion


@pytest.mark.parametrize("text", [b"", b"{", b"[1]", b'"x"', b"{}", DEEP], ids=["empty", "{", "[1]", "x", "{}", "deep"])
def test_a_body_that_is_not_plain_gets_fastapis_answer(api: ApiProcess, text: bytes) -> None:
    with httpx.Client(base_url=api.url, timeout=15) as http:
        direct, routed = post(http, "api-flow", text, DIRECT), post(http, "api-flow", text, ROUTED)
        assert answer(direct) == answer(routed)
        assert 400 <= direct.status_code < 500


# -- in process: which requests the direct path takes ----------------------------------------------
def scope(path: str = "/api/flows/some-flow/runs", **changes: Any) -> dict[str, Any]:
    base = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
    }
    return base | changes


def test_only_a_plain_run_creation_is_taken() -> None:
    assert plain_flow_name(scope()) == "some-flow"
    assert plain_flow_name(scope("/prefix/api/flows/f/runs", root_path="/prefix")) == "f"
    assert plain_flow_name(scope(method="GET")) is None
    assert plain_flow_name(scope("/api/flows/some-flow/runs/")) is None
    assert plain_flow_name(scope("/api/flows/a/b/runs")) is None
    assert plain_flow_name(scope("/api/flows//runs")) is None
    assert plain_flow_name(scope("/api/flows/" + "x" * 201 + "/runs")) is None
    assert plain_flow_name(scope("/api/flows/" + "x" * 200 + "/runs")) == "x" * 200
    assert plain_flow_name(scope(headers=[(b"content-type", b"text/plain")])) is None
    assert plain_flow_name(scope(headers=[])) is None
    assert plain_flow_name(scope(type="websocket")) is None


def test_with_a_key_only_a_request_carrying_it_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    from api import direct_submit

    monkeypatch.setattr(direct_submit, "may_use_the_api", lambda authorization: authorization == "Bearer k")
    keyed = scope(headers=[(b"content-type", b"application/json"), (b"authorization", b"Bearer k")])
    assert plain_flow_name(keyed) == "some-flow"
    assert plain_flow_name(scope()) is None


def test_plain_body() -> None:
    assert plain_body(b'{"parameters": {"x": 1}}') is not None
    for refused in (None, b"", b"{", b"[]", b"null", b'{"nope": 1}', b'{"queue": ""}', b'{"parameters": 1}', DEEP):
        assert plain_body(refused) is None, refused


def test_a_request_handed_on_gets_the_body_already_read_again() -> None:
    seen: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b" 1}", "more_body": False},
    ]

    async def run() -> tuple[bytes, list[Any]]:
        queue = list(messages)

        async def receive() -> Any:
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        inner: list[Any] = []

        async def router(scope_: Any, receive_: Any, send_: Any) -> None:
            while True:
                message = await receive_()
                inner.append(message)
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            inner.append(await receive_())

        async def send(message: Any) -> None:
            seen.append(message)

        await DirectSubmit(router)(scope(), receive, send)  # a body FlowRunCreate refuses: handed on
        return b"", inner

    _, inner = asyncio.run(run())
    assert inner == [*messages, {"type": "http.disconnect"}]
    assert seen == []

    async def replay() -> list[Any]:
        async def receive() -> Any:
            return {"type": "http.disconnect"}

        again = replayed([messages[0]], receive)
        return [await again(), await again()]

    assert asyncio.run(replay()) == [messages[0], {"type": "http.disconnect"}]


def test_a_plain_request_is_answered_without_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(flows._flow_cache, "some-flow", (float("inf"), {"name": "some-flow", "queue": "default"}))
    submitted: list[dict[str, Any]] = []

    class Submitter:  # the run's row as the submitter would return it once committed
        async def submit(self, row: dict[str, Any]) -> dict[str, Any]:
            submitted.append(row)
            return row

    class App:
        class state:  # noqa: N801 (Starlette's app.state)
            submitter = Submitter()

    async def router(*_: Any) -> None:
        raise AssertionError("the router was called")

    sent: list[Any] = []

    async def run() -> None:
        async def receive() -> Any:
            return {"type": "http.request", "body": b'{"parameters": {"x": 1}}', "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await DirectSubmit(router)(scope(app=App()), receive, send)

    asyncio.run(run())
    assert sent[0]["status"] == 201
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    body = json.loads(sent[1]["body"])
    assert body["id"] == submitted[0]["id"] and body["parameters"] == {"x": 1} and body["state"] == "Pending"
