"""Reading a large run in pages: ``/graph``, ``/task-runs`` and ``/states`` (real API, Redis, worker).

One static map over 2,500 items (``map-param-flow``: 2,500 task nodes and a fan-in with
2,500 upstream edges, 5,005 state events) is read page by page: every node and task run
exactly once, edges that point at real nodes, states that match the task runs, and page
sizes bounded (422 above the largest). Small runs answer as before; a runtime map lists
its expanded task runs in index order; subflow and dynamic-run graphs page too.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database, eventually, submit, wait_final

N = 2500  # mapped items of the large run: 2,501 task runs, 5,005 state events
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
ROUTES = ("graph", "task-runs", "states")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, and PostgreSQL too when ORCHESTRATOR_TEST_DATABASE_URL names one (as in test_api)."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    folder = tmp_path_factory.mktemp("graph-db")
    with api_database(folder, admin_url if request.param == "postgresql" else None) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    """The API with its recorder, on the session's Redis, next to the fleet worker (tests.flows)."""
    with api_server(redis_url, database_url, log_path=worker_logs / "api-graph.log") as server:
        yield server


def all_recorded(http: httpx.Client, run_id: str, completed: int) -> None:
    """Wait until the database shows the run final and ``completed`` of its task runs Completed."""
    wait_final(http, run_id, timeout=300)

    def recorded() -> bool:
        facts = http.get(f"/flow-runs/{run_id}/diagnosis").json()["facts"]
        return bool(facts["task_runs_by_state"] == {"Completed": completed})

    eventually(recorded, 120, interval=1.0, what=f"{completed} task runs of {run_id} recorded Completed")


@pytest.fixture(scope="module")
def big_run(api: ApiProcess) -> str:
    """A finished static map over N items, every task run recorded."""
    with httpx.Client(base_url=api.url, timeout=120) as http:
        created = submit(http, "map-param-flow", parameters={"values": list(range(N))})
        all_recorded(http, created["id"], N + 1)
        return str(created["id"])


def graph_pages(http: httpx.Client, run_id: str, limit: int) -> list[dict[str, Any]]:
    """Every page of the run's graph, following next_offset from offset 0."""
    pages: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        response = http.get(f"/flow-runs/{run_id}/graph", params={"limit": limit, "offset": offset})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["offset"] == offset and page["limit"] == limit
        pages.append(page)
        offset = page["next_offset"]
        assert len(pages) <= N, "next_offset never ends"
    return pages


def list_pages(http: httpx.Client, path: str, limit: int, **params: Any) -> list[httpx.Response]:
    """Every page of a list route, following its X-Next-Offset header from offset 0."""
    responses: list[httpx.Response] = []
    offset: str | None = "0"
    while offset is not None:
        response = http.get(path, params={"limit": limit, "offset": offset, **params})
        assert response.status_code == 200, response.text
        responses.append(response)
        offset = response.headers.get("X-Next-Offset")
        assert len(responses) <= N, "X-Next-Offset never ends"
    return responses


def test_a_large_static_map_graph_comes_in_pages_with_every_node_once(http: httpx.Client, big_run: str) -> None:
    first = http.get(f"/flow-runs/{big_run}/graph").json()
    assert (first["total"], first["offset"], first["limit"]) == (N + 1, 0, DEFAULT_LIMIT)
    assert len(first["nodes"]) == DEFAULT_LIMIT and first["next_offset"] == DEFAULT_LIMIT

    pages = graph_pages(http, big_run, 1000)
    assert [len(p["nodes"]) for p in pages] == [1000, 1000, 501]
    assert pages[-1]["next_offset"] is None
    nodes = [n for p in pages for n in p["nodes"]]
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids)) == N + 1
    (whole,) = graph_pages(http, big_run, MAX_LIMIT)  # the same nodes, in the same order
    assert [n["id"] for n in whole["nodes"]] == ids

    task_runs = {t["id"]: t for r in list_pages(http, f"/flow-runs/{big_run}/task-runs", 1000) for t in r.json()}
    assert set(ids) == set(task_runs)
    assert all(n["state"] == task_runs[n["id"]]["state"] == "Completed" for n in nodes)

    (fan_in,) = [n for n in nodes if n["upstream"]]  # edges belong to their downstream node, each listed once
    mapped = [n["id"] for n in nodes if n is not fan_in]
    assert sorted(fan_in["upstream"]) == sorted(mapped) and len(fan_in["upstream"]) == N
    assert fan_in["name"].endswith("total") and {n["name"].rsplit(".", 1)[-1] for n in nodes} == {"double", "total"}


def test_task_runs_and_states_come_in_the_pages_their_headers_announce(http: httpx.Client, big_run: str) -> None:
    path = f"/flow-runs/{big_run}/task-runs"
    first = http.get(path)
    assert len(first.json()) == DEFAULT_LIMIT
    assert first.headers["X-Total-Count"] == str(N + 1) and first.headers["X-Next-Offset"] == str(DEFAULT_LIMIT)
    link = first.headers["Link"]
    assert link.endswith('; rel="next"')
    query = parse_qs(urlsplit(link.split(";")[0].strip("<> ")).query)
    assert query["offset"] == [str(DEFAULT_LIMIT)] and query["limit"] == [str(DEFAULT_LIMIT)]

    pages = list_pages(http, path, 1000)
    assert [len(r.json()) for r in pages] == [1000, 1000, 501]
    assert "X-Next-Offset" not in pages[-1].headers and "Link" not in pages[-1].headers
    task_ids = [t["id"] for r in pages for t in r.json()]
    assert len(task_ids) == len(set(task_ids)) == N + 1

    events = 3 + 2 * (N + 1)  # the flow run: Pending, Running, Completed; each task run: Running, Completed
    pages = list_pages(http, f"/flow-runs/{big_run}/states", MAX_LIMIT)
    assert [len(r.json()) for r in pages] == [MAX_LIMIT, events - MAX_LIMIT]
    assert {r.headers["X-Total-Count"] for r in pages} == {str(events)}
    by_run: dict[str, list[str]] = {}
    for event in (e for r in pages for e in r.json()):
        by_run.setdefault(event["run_id"], []).append(event["state"])
    assert by_run.pop(big_run) == ["Pending", "Running", "Completed"]
    assert set(by_run) == set(task_ids) and all(s == ["Running", "Completed"] for s in by_run.values())

    own = http.get(f"/flow-runs/{big_run}/states", params={"tasks": False})
    assert [e["state"] for e in own.json()] == ["Pending", "Running", "Completed"]
    assert own.headers["X-Total-Count"] == "3" and "X-Next-Offset" not in own.headers


def test_page_sizes_are_bounded_and_an_offset_past_the_end_is_an_empty_page(http: httpx.Client, big_run: str) -> None:
    for route in ROUTES:
        path = f"/flow-runs/{big_run}/{route}"
        for bad in ({"limit": MAX_LIMIT + 1}, {"limit": 0}, {"offset": -1}):
            response = http.get(path, params=bad)
            assert response.status_code == 422, (route, bad, response.text)
            assert next(iter(bad)) in response.text
        assert http.get(path, params={"limit": MAX_LIMIT}).status_code == 200
        past = http.get(path, params={"offset": 10 * N})
        assert past.status_code == 200 and "X-Next-Offset" not in past.headers
        body = past.json()
        if route == "graph":
            assert (body["nodes"], body["next_offset"], body["total"]) == ([], None, N + 1)
        else:
            assert body == []


def test_a_small_run_answers_as_before_on_one_page(http: httpx.Client) -> None:
    created = submit(http, "chain-flow", parameters={"x": 1})
    all_recorded(http, created["id"], 3)
    tasks = http.get(f"/flow-runs/{created['id']}/task-runs")
    assert len(tasks.json()) == 3 and tasks.headers["X-Total-Count"] == "3"
    assert "X-Next-Offset" not in tasks.headers and "Link" not in tasks.headers
    graph = http.get(f"/flow-runs/{created['id']}/graph").json()
    assert (graph["total"], graph["offset"], graph["next_offset"]) == (3, 0, None)
    assert {n["id"] for n in graph["nodes"]} == {t["id"] for t in tasks.json()}
    by_id = {n["id"]: n for n in graph["nodes"]}
    assert sorted(len(n["upstream"]) for n in graph["nodes"]) == [0, 1, 1]
    assert all(u in by_id for n in graph["nodes"] for u in n["upstream"])


def test_a_runtime_map_lists_its_expanded_task_runs_in_index_order(http: httpx.Client) -> None:
    count = 1200  # more than a default page holds
    created = submit(http, "map-upstream-flow", parameters={"n": count})
    all_recorded(http, created["id"], count + 3)  # numbers, the map, its children, total
    states = {
        t["id"]: t["state"] for r in list_pages(http, f"/flow-runs/{created['id']}/task-runs", 1000) for t in r.json()
    }

    whole = http.get(f"/flow-runs/{created['id']}/graph", params={"limit": MAX_LIMIT}).json()
    (node,) = [n for n in whole["nodes"] if n["kind"] == "map"]
    assert [m["id"] for m in node["mapped"]] == [f"{node['id']}-{i}" for i in range(count)]
    assert [m["label"] for m in node["mapped"]] == [f"{node['label']}[{i}]" for i in range(count)]
    assert all(m["state"] == states[m["id"]] == "Completed" for m in node["mapped"]) and node["mapped_total"] == count

    first = http.get(f"/flow-runs/{created['id']}/graph").json()  # a page lists at most `limit` mapped entries
    (cut,) = [n for n in first["nodes"] if n["kind"] == "map"]
    assert cut["mapped"] == node["mapped"][:DEFAULT_LIMIT] and cut["mapped_total"] == count
    assert first["total"] == 3 and first["next_offset"] is None


def test_a_subflow_graph_pages_its_own_nodes_and_a_dynamic_run_graph_pages_its_task_runs(http: httpx.Client) -> None:
    parent = submit(http, "parent-flow")
    wait_final(http, parent["id"], timeout=120)
    whole = http.get(f"/flow-runs/{parent['id']}/graph").json()
    assert whole["total"] == 6 and len(whole["nodes"]) == 6  # 3 task nodes in the children, 3 subflow ends
    children = http.get("/flow-runs", params={"parent": parent["id"]}).json()["items"]
    assert len(children) == 3
    for child in children:
        pages = graph_pages(http, child["id"], 1)
        nodes = [n for p in pages for n in p["nodes"]]
        assert len(pages) == pages[0]["total"] == len(nodes) == 1 and nodes[0]["flow_run_id"] == child["id"]

    dynamic = submit(http, "dynamic-fan-flow", parameters={"n": 4})
    wait_final(http, dynamic["id"], timeout=120)
    graph = http.get(f"/flow-runs/{dynamic['id']}/graph").json()
    assert graph["mode"] == "dynamic" and graph["next_offset"] is None
    pages = graph_pages(http, dynamic["id"], 2)
    assert [n["id"] for p in pages for n in p["nodes"]] == [n["id"] for n in graph["nodes"]]
    assert len(graph["nodes"]) == graph["total"] >= 7  # numbers, 4 doubles, explode, inc
