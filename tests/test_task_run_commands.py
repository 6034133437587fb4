"""``orchestrator task-run inspect|logs ID``, through the fleet worker, the API process and the real
CLI: one task run found by a prefix of its id, with its history, its traceback when it failed, and
only its own log lines; an id nothing starts is a one-line error (exit status 2)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database, cli, eventually, submit, wait_final


@pytest.fixture(scope="module")
def api(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, fleet: subprocess.Popen[bytes], worker_logs: Path
) -> Iterator[ApiProcess]:
    """The API with its recorder on an SQLite file, next to the fleet worker."""
    with (
        api_database(tmp_path_factory.mktemp("task-run-db"), None) as url,
        api_server(redis_url, url, log_path=worker_logs / "task-run-api.log") as server,
    ):
        yield server


def task_runs_by_label(http: Any, run_id: str) -> dict[str, dict[str, Any]]:
    return {t["label"]: t for t in http.get(f"/flow-runs/{run_id}/task-runs").json()}


def test_inspect_a_failed_task_run_by_prefix_shows_its_history_and_traceback(api: ApiProcess, http: Any) -> None:
    run = wait_final(http, submit(http, "failing-flow")["id"])
    assert run["state"] == "Failed", run
    explode = task_runs_by_label(http, run["id"])["explode-0"]
    prefix = explode["id"][:8]

    shown = cli(api, "task-run", "inspect", prefix)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = shown.stdout
    assert f"task run: explode-0 ({explode['id']})" in out, out
    assert f"flow run: {run['name']} ({run['id']})" in out, out
    assert "state:    Failed" in out and "message:  ValueError: boom" in out, out
    assert "attempts: 1" in out, out
    history = out[out.index("state history") : out.index("traceback")]
    assert "Running" in history and "Failed" in history, out
    assert "traceback (builtins:ValueError):" in out, out
    assert "raise ValueError(message)" in out[out.index("traceback (") :], out

    as_json = cli(api, "task-run", "inspect", prefix, "--json")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    found = json.loads(as_json.stdout)
    assert found["id"] == explode["id"] and found["label"] == "explode-0" and found["state"] == "Failed"
    assert found["flow_run_id"] == run["id"] and found["error_type"] == "builtins:ValueError"
    assert "ValueError: boom" in found["traceback"]
    assert [s["state"] for s in found["states"]][-1] == "Failed", found["states"]
    assert found["states_total"] == len(found["states"]) and all(s["run_id"] == explode["id"] for s in found["states"])

    upstream = task_runs_by_label(http, run["id"])["inc-0"]  # did not run: no traceback of its own
    shown = cli(api, "task-run", "inspect", upstream["id"][:8])
    assert shown.returncode == 0 and "state:    UpstreamFailed" in shown.stdout, shown.stdout + shown.stderr
    assert "traceback" not in shown.stdout and "raise ValueError" not in shown.stdout


def test_logs_of_a_task_run_are_its_own_lines_only(api: ApiProcess, http: Any) -> None:
    run = wait_final(http, submit(http, "two-chatty-flow")["id"])
    assert run["state"] == "Completed", run
    eventually(
        lambda: len([x for x in http.get(f"/flow-runs/{run['id']}/logs").json() if "] line " in x["message"]]) == 3,
        20,
        what="the three lines the two tasks logged",
    )
    tasks = task_runs_by_label(http, run["id"])

    shown = cli(api, "task-run", "logs", tasks["chatty-1"]["id"][:8])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = [line for line in shown.stdout.splitlines() if line.strip()]
    assert len(printed) == 2, shown.stdout
    assert printed[0].endswith("[chatty-1] line 1 of 2") and printed[1].endswith("[chatty-1] line 2 of 2"), printed
    assert "of 1" not in shown.stdout

    over_http = http.get(f"/task-runs/{tasks['chatty-0']['id'][:6]}/logs").json()
    assert [x["label"] for x in over_http] == ["chatty-0"] and over_http[0]["message"].endswith("line 1 of 1")
    assert (
        http.get(f"/task-runs/{tasks['chatty-0']['id'][:6]}/logs", params={"after": over_http[0]["seq"]}).json() == []
    )


def test_an_unknown_or_ambiguous_task_run_id_is_a_one_line_error(api: ApiProcess, http: Any) -> None:
    for command in ("inspect", "logs"):
        missing = cli(api, "task-run", command, "ffffffff")
        assert missing.returncode == 2, missing.stdout + missing.stderr
        lines = missing.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "no task run 'ffffffff'" in lines[0], lines
        assert missing.stderr == ""
    assert "from 4 characters on" in http.get("/task-runs/abc").json()["detail"]

    run = wait_final(http, submit(http, "mapped-logging-flow", parameters={"lines": [1, 2]})["id"])
    children = [t["id"] for label, t in sorted(task_runs_by_label(http, run["id"]).items()) if "[" in label]
    assert len(children) == 2 and children[0][:-1] == children[1][:-1], children  # a map's children: <id>-0, <id>-1
    refused = cli(api, "task-run", "inspect", children[0][:-1])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ambiguous" in refused.stdout and children[0] in refused.stdout and children[1] in refused.stdout
    whole = cli(api, "task-run", "inspect", children[1], "--json")
    assert whole.returncode == 0 and json.loads(whole.stdout)["label"] == "chatty-0[1]", whole.stdout + whole.stderr
