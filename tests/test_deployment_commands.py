"""``orchestrator deployment run|inspect|delete|backfill`` through the real CLI, the real API
process (its scheduler and dispatcher) and a real worker: runs made by each command complete."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database, cli, cli_each, eventually, wait_final

HOUR = 3600  # the deployments here run hourly: the scheduler's own next run never falls inside a test
RUN_ID = re.compile(r"\(([0-9a-f-]{36})\)")


@pytest.fixture(scope="module")
def api(
    redis_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    """The API on SQLite, or on a fresh PostgreSQL database when ORCHESTRATOR_TEST_DATABASE_URL names one."""
    folder = tmp_path_factory.mktemp("deployment-commands")
    with (
        api_database(folder, os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")) as database,
        api_server(redis_url, database, log_path=worker_logs / "deployment-commands-api.log") as server,
    ):
        yield server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def deploy(api: ApiProcess, target: str, name: str, *options: str) -> str:
    return ok(cli(api, "deploy", target, "--name", name, *options))


def run_of(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return dict(http.get(f"/flow-runs/{run_id}").json())


def runs_named(http: httpx.Client, name: str, **params: Any) -> list[dict[str, Any]]:
    return list(http.get("/flow-runs", params={"name": name, "limit": 500, **params}).json()["items"])


def history(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/flow-runs/{run_id}/states", params={"tasks": False}).json())


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def start_of(run: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(run["scheduled_start"]).timestamp()


def test_a_deployment_without_a_schedule_says_so_and_deployment_run_makes_a_run_now(
    api: ApiProcess, http: httpx.Client
) -> None:
    name = unique("manual")
    said = deploy(api, "tests.flows:chain_flow", name, "-p", "x=5")
    assert "no schedule" in said and f"orchestrator deployment run {name}" in said, said
    assert "within a second" not in said

    watching, printing, refused = cli_each(  # three runs of the CLI with nothing in common: at once
        api,
        ("deployment", "run", name, "-p", "x=10", "--watch", "--timeout", "90"),
        ("deployment", "run", name),  # the deployment's own parameters
        ("deployment", "run", unique("nobody")),
    )
    run_id = RUN_ID.search(ok(watching)).group(1)  # type: ignore[union-attr]
    run = run_of(http, run_id)
    assert run["state"] == "Completed" and run["parameters"] == {"x": 10}, run

    plain = RUN_ID.search(ok(printing)).group(1)  # type: ignore[union-attr]
    assert wait_final(http, plain)["parameters"] == {"x": 5}

    assert refused.returncode == 2 and "no deployment named" in refused.stdout, refused.stdout


def test_deployment_inspect_shows_schedule_policy_limit_and_next_and_last_runs(
    api: ApiProcess, http: httpx.Client
) -> None:
    name = unique("inspected")
    deploy(
        api, "tests.flows:chain_flow", name, "--interval", str(HOUR), "-p", "x=2",
        "--late-policy", "cancel_older_than", "--late-max-age", "600", "--concurrency-limit", "2",
    )  # fmt: skip
    run_id = RUN_ID.search(ok(cli(api, "deployment", "run", name))).group(1)  # type: ignore[union-attr]
    assert wait_final(http, run_id)["state"] == "Completed"
    eventually(lambda: http.get(f"/deployments/{name}").json()["next_runs"], 30, what="the scheduler planned runs")

    inspected, missing = cli_each(api, ("deployment", "inspect", name), ("deployment", "inspect", unique("nobody")))
    shown = ok(inspected)
    assert f"schedule: every {HOUR}s" in shown and "paused: no" in shown, shown
    assert "late runs: cancel_older_than (older than 600s)" in shown, shown
    assert "concurrency: at most 2 of its runs under way at once" in shown, shown
    assert '"x": 2' in shown, shown
    next_runs = http.get(f"/deployments/{name}").json()["next_runs"]
    assert next_runs[0] in shown, shown  # next runs: the scheduler's
    assert run_id in shown and "Completed" in shown, shown  # last runs: the one that ran

    ok(cli(api, "deployment", "pause", name))
    paused = ok(cli(api, "deployment", "inspect", name))
    assert "paused: yes" in paused, paused
    assert missing.returncode == 2 and "no deployment named" in missing.stdout, missing.stdout


def test_deleting_a_deployment_cancels_its_runs_not_started_and_keeps_the_rest(
    api: ApiProcess, http: httpx.Client
) -> None:
    name = unique("deleted")
    deploy(api, "tests.flows:slow_flow", name, "--interval", str(HOUR), "-p", "seconds=2")
    finished = RUN_ID.search(ok(cli(api, "deployment", "run", name, "-p", "seconds=0"))).group(1)  # type: ignore[union-attr]
    assert wait_final(http, finished)["state"] == "Completed"
    running = RUN_ID.search(ok(cli(api, "deployment", "run", name))).group(1)  # type: ignore[union-attr]
    eventually(lambda: run_of(http, running)["state"] == "Running", 60, what="the slow run under way")
    scheduled = eventually(lambda: runs_named(http, name, state="Scheduled"), 30, what="the scheduler's runs")

    said = ok(cli(api, "deployment", "delete", name))
    assert f"deployment {name} deleted" in said and f"{len(scheduled)} runs not started were cancelled" in said, said
    assert http.get(f"/deployments/{name}").status_code == 404
    for run in scheduled:
        cancelled = run_of(http, run["id"])
        assert cancelled["state"] == "Cancelled", cancelled
        assert f"its deployment {name!r} was deleted" in cancelled["state_message"], cancelled
    assert wait_final(http, running)["state"] == "Completed"  # under way: it finishes
    assert run_of(http, finished)["state"] == "Completed"  # finished: kept
    assert http.delete(f"/deployments/{name}").status_code == 404
    gone = cli(api, "deployment", "delete", name)
    assert gone.returncode == 2 and "no deployment named" in gone.stdout, gone.stdout


def completed(http: httpx.Client, name: str, count: int) -> list[dict[str, Any]] | None:
    """The runs named after deployment ``name`` once ``count`` of them completed."""
    found = runs_named(http, name, state="Completed")
    return found if len(found) == count else None


def created_at(http: httpx.Client, name: str) -> float:
    """When the deployment was made: its interval schedule's start times are this plus whole intervals."""
    return dt.datetime.fromisoformat(http.get(f"/deployments/{name}").json()["created"]).timestamp()


def backfill(http: httpx.Client, name: str, hours: float) -> dict[str, Any]:
    """``POST /deployments/{name}/backfill`` of the last ``hours`` hours, up to now."""
    body = {"start": iso(time.time() - hours * HOUR), "end": iso(time.time())}
    done = http.post(f"/deployments/{name}/backfill", json=body)
    assert done.status_code == 201, done.text
    return dict(done.json())


def test_backfill_makes_the_runs_of_the_range_once_and_they_complete(api: ApiProcess, http: httpx.Client) -> None:
    name = unique("backfilled")
    deploy(api, "tests.flows:chain_flow", name, "--interval", str(HOUR), "-p", "x=1")
    created = created_at(http, name)
    start, end = iso(time.time() - 4.5 * HOUR), iso(time.time())

    said = ok(cli(api, "deployment", "backfill", name, "--start", start, "--end", end))
    assert "5 start times" in said and "5 runs created, 0 already had one" in said, said
    runs = eventually(lambda: completed(http, name, 5), 120, what="the 5 backfilled runs completed")
    offsets = sorted(round(created - start_of(r)) for r in runs)
    assert offsets == [0, HOUR, 2 * HOUR, 3 * HOUR, 4 * HOUR]  # the schedule's start times in the range
    for run in runs:
        stamp = dt.datetime.fromtimestamp(start_of(run), dt.UTC).strftime("%Y%m%d-%H%M%S")
        assert run["name"] == f"{name}-{stamp}"  # named as the scheduler names its runs

    again, before = map(  # both find every run they would make already there: their order changes nothing
        ok,
        cli_each(
            api,
            ("deployment", "backfill", name, "--start", start, "--end", end),
            ("deployment", "backfill", name, "--start", start, "--end", iso(created - 1)),
        ),
    )
    assert "0 runs created, 5 already had one" in again, again
    assert "4 start times" in before and "0 runs created" in before, before  # a range's own start times
    assert len([r for r in runs_named(http, name) if start_of(r) < time.time()]) == 5  # nothing new


def test_backfill_keeps_to_the_late_run_policy_and_the_concurrency_limit(api: ApiProcess, http: httpx.Client) -> None:
    newest = unique("newest")
    deploy(api, "tests.flows:chain_flow", newest, "--interval", str(HOUR), "--late-policy", "newest_only")
    body = backfill(http, newest, 5.5)
    assert body["start_times"] == 6 and len(body["created"]) == 1 and body["skipped_by_policy"] == 5, body
    (only,) = body["created"]
    assert round(created_at(http, newest) - start_of(run_of(http, only))) == 0  # the newest start time
    assert wait_final(http, only)["state"] == "Completed"

    older = unique("older")
    deploy(
        api, "tests.flows:chain_flow", older, "--interval", str(HOUR),
        "--late-policy", "cancel_older_than", "--late-max-age", str(2.5 * HOUR),
    )  # fmt: skip
    body = backfill(http, older, 5.5)
    assert (len(body["created"]), body["skipped_by_policy"]) == (3, 3), body  # 0, 1 and 2 hours old

    limited = unique("limited")
    deploy(
        api, "tests.flows:slow_flow", limited, "--interval", str(HOUR), "-p", "seconds=1.5", "--concurrency-limit", "1"
    )
    start, end = iso(time.time() - 3.5 * HOUR), iso(time.time())
    said = ok(cli(api, "deployment", "backfill", limited, "--start", start, "--end", end))
    assert "4 runs created" in said and "at most 1 at a time" in said, said
    runs = eventually(lambda: completed(http, limited, 4), 120, what="the limited deployment's 4 runs completed")
    spans = sorted((dt.datetime.fromisoformat(r["started"]), dt.datetime.fromisoformat(r["ended"])) for r in runs)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started >= ended  # the fleet has 4 processes: only the limit kept them apart
    assert any(s["state"] == "AwaitingConcurrencySlot" for r in runs for s in history(http, r["id"]))


def test_backfill_refuses_a_deployment_without_a_schedule_and_a_range_not_in_the_past(
    api: ApiProcess, http: httpx.Client
) -> None:
    manual = unique("unscheduled")
    deploy(api, "tests.flows:chain_flow", manual)
    now = time.time()
    refused = cli(api, "deployment", "backfill", manual, "--start", iso(now - HOUR), "--end", iso(now))
    assert refused.returncode == 2 and "has no schedule" in refused.stdout, refused.stdout
    assert f"orchestrator deployment run {manual}" in refused.stdout, refused.stdout
    hourly = unique("hourly")
    deploy(api, "tests.flows:chain_flow", hourly, "--interval", str(HOUR), "--paused")
    future = http.post(f"/deployments/{hourly}/backfill", json={"start": iso(now - HOUR), "end": iso(now + HOUR)})
    assert future.status_code == 422 and "the end is in the future" in future.text, future.text
    backwards = http.post(f"/deployments/{hourly}/backfill", json={"start": iso(now), "end": iso(now - HOUR)})
    assert backwards.status_code == 422 and "the end must come after the start" in backwards.text, backwards.text
    nonsense = cli(api, "deployment", "backfill", hourly, "--start", "yesterday", "--end", iso(now))
    assert nonsense.returncode == 2 and "not an ISO 8601 time" in nonsense.stdout + nonsense.stderr
    now = time.time()  # after the deployment was made: its start times are it, an hour before, two hours before
    paused = ok(cli(api, "deployment", "backfill", hourly, "--start", iso(now - 2.5 * HOUR), "--end", iso(now)))
    assert "3 runs created" in paused and "it is paused" in paused, paused
    waiting = runs_named(http, hourly)
    assert len(waiting) == 3 and {r["state"] for r in waiting} <= {"Scheduled", "Late"}, waiting  # not sent
