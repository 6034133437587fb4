"""What the CLI prints in everyday use, through the fleet worker, the API process and the
``orchestrator`` command: a run's log lines under their task run's label, ``flow-run why`` by
the run's whole id and name whatever prefix was typed, and ``run --watch`` into a pipe with
its live table ended by a line break before what follows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import CLI_AT_ONCE, api_database, cli, eventually, submit, wait_final


@pytest.fixture(scope="module")
def api(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, fleet: subprocess.Popen[bytes], worker_logs: Path
) -> Iterator[ApiProcess]:
    """The API with its recorder on an SQLite file, next to the fleet worker."""
    with (
        api_database(tmp_path_factory.mktemp("cli-polish-db"), None) as url,
        api_server(redis_url, url, log_path=worker_logs / "cli-polish-api.log") as server,
    ):
        yield server


def test_logs_name_each_task_run_by_its_label(api: ApiProcess, http: Any) -> None:
    run = wait_final(http, submit(http, "mapped-logging-flow", parameters={"lines": [1, 2]})["id"])
    assert run["state"] == "Completed", run

    def chatty_lines() -> list[dict[str, Any]] | None:
        lines = [x for x in http.get(f"/flow-runs/{run['id']}/logs").json() if "] line " in x["message"]]
        return lines if len(lines) == 3 else None

    lines = eventually(chatty_lines, 20, what="the three lines the mapped tasks logged")
    tasks = {t["id"]: t["label"] for t in http.get(f"/flow-runs/{run['id']}/task-runs").json()}
    assert {line["label"] for line in lines} == {"chatty-0[0]", "chatty-0[1]"}, lines
    assert all(line["label"] == tasks[line["task_run_id"]] for line in lines)

    shown = cli(api, "flow-run", "logs", run["id"][:8])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = [line for line in shown.stdout.splitlines() if " line " in line]
    assert sum(line.endswith("[chatty-0[0]] line 1 of 1") for line in printed) == 1, shown.stdout
    assert sum(line.endswith("[chatty-0[1]] line 2 of 2") for line in printed) == 1, shown.stdout
    for task_id in tasks:  # no id, cut or whole (the logger's own prefix has it): the label says who
        assert task_id[:12] not in shown.stdout


def test_why_names_the_run_it_found_not_the_prefix_typed(api: ApiProcess, http: Any) -> None:
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 1})["id"])
    shown = cli(api, "flow-run", "why", run["id"][:8])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first == f"flow run {run['name']} ({run['id']}) is Completed:", shown.stdout
    assert http.get(f"/flow-runs/{run['id']}/diagnosis").json()["flow_run_name"] == run["name"]


def test_run_watch_into_a_pipe_ends_its_table_before_what_follows(api: ApiProcess) -> None:
    done = cli(api, "run", "chain-flow", "-p", "x=2", "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.rstrip("\n").splitlines()
    assert lines[-1] == "result: 8", done.stdout
    assert re.fullmatch(r"[└┗][─━┴┻]+[┘┛]", lines[-2]), done.stdout  # the table's last line, on its own

    failed = cli(api, "run", "failing-flow", "--watch", "--timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    after_table = [line for line in failed.stdout.splitlines() if "Failed: explode-0 ended Failed" in line]
    assert after_table and after_table[0].startswith("Failed: explode-0 ended Failed"), failed.stdout


def test_deployment_run_watch_ends_as_run_watch_does(api: ApiProcess) -> None:
    name = f"polish-{uuid.uuid4().hex[:6]}"
    made = cli(api, "deploy", "tests.flows:chain_flow", "--name", name, "-p", "x=1")
    assert made.returncode == 0, made.stdout + made.stderr
    done = cli(api, "deployment", "run", name, "-p", "x=2", "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip("\n").splitlines()[-1] == "result: 8", done.stdout

    failing = f"polish-{uuid.uuid4().hex[:6]}"
    made = cli(api, "deploy", "tests.flows:failing_flow", "--name", failing)
    assert made.returncode == 0, made.stdout + made.stderr
    failed = cli(api, "deployment", "run", failing, "--watch", "--timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "root cause: explode-0 (explode) Failed: ValueError: boom" in failed.stdout, failed.stdout
    assert "raise ValueError(message)" in failed.stdout


def test_version_and_help_of_every_run_id_argument() -> None:
    from orchestrator import __version__

    def orchestrator(*args: str) -> subprocess.CompletedProcess[str]:
        env = os.environ | {"COLUMNS": "200"}
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=60
        )

    run_id_commands = ("inspect", "result", "logs", "why", "cancel", "retry")
    other_commands = (("worker", "start"), ("plan",))
    asked = [
        ("--version",),
        *(("flow-run", c, "--help") for c in run_id_commands),
        *((*c, "--help") for c in other_commands),
    ]
    with ThreadPoolExecutor(CLI_AT_ONCE) as pool:  # separate processes that only print
        shown, *helps = pool.map(lambda args: orchestrator(*args), asked)
    assert shown.returncode == 0 and shown.stdout == f"celery-orchestrator {__version__}\n", shown
    for command, helped in zip(run_id_commands, helps, strict=False):
        assert "Flow run id, or a unique prefix of it" in helped.stdout, (command, helped.stdout)
    for command, helped in zip(other_commands, helps[len(run_id_commands) :], strict=True):
        options = [line for line in helped.stdout.splitlines() if line.startswith("│ ") and " --" in line]
        assert options and all(re.search(r"<[^>]+>\s+[^\s│]", line) for line in options), (command, helped.stdout)


def test_run_takes_module_colon_flow_as_plan_does(api: ApiProcess) -> None:
    done = cli(api, "run", "tests.flows:chain_flow", "-p", "x=2", "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("flow run chain-flow-") and done.stdout.rstrip().endswith("result: 8"), done.stdout
    missing = cli(api, "run", "tests.flows:no_such_flow")
    assert missing.returncode == 2 and "'tests.flows' has no @flow named 'no_such_flow'" in missing.stdout


def test_a_prefix_too_short_to_name_a_run_says_so(http: Any) -> None:
    refused = http.get("/flow-runs/abc")
    assert refused.status_code == 404
    assert "(a prefix names a run from 4 characters on)" in refused.json()["detail"], refused.text
    assert "characters on" not in http.get("/flow-runs/abcd").json()["detail"]


def test_flow_run_ls_on_80_columns_keeps_ids_and_states_whole(api: ApiProcess, http: Any) -> None:
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 1})["id"])
    env = os.environ | {"ORCHESTRATOR_API_URL": api.url, "COLUMNS": "80"}
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "flow-run", "ls", "--limit", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    row = next(line for line in shown.stdout.splitlines() if run["id"] in line)
    assert "│ Completed " in row, shown.stdout


def test_cli_errors_name_cli_commands_not_http_routes(api: ApiProcess, http: Any) -> None:
    missing = cli(api, "flow-run", "inspect", "zzzzzzzz")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    line = missing.stdout.strip()
    assert line.startswith("error: no flow run 'zzzzzzzz' is recorded; orchestrator flow-run ls lists them"), line
    assert "GET" not in line and "404" not in line and "/api" not in line, line
    no_limit = cli(api, "concurrency-limit", "inspect", "no-such-tag")
    assert "orchestrator concurrency-limit ls lists them" in no_limit.stdout and "GET" not in no_limit.stdout
    failed = submit(http, "failing-flow")
    wait_final(http, failed["id"])
    no_result = cli(api, "flow-run", "result", failed["id"])
    assert no_result.returncode == 1, no_result.stdout + no_result.stderr
    said = no_result.stdout.strip()
    assert "\n" not in said, said  # one line, never wrapped: a command in it stays whole to copy
    assert said.startswith(f"error: flow run {failed['id']} ended Failed: explode-0 ended Failed"), said
    assert f"(orchestrator flow-run inspect {failed['id']} shows what failed, with tracebacks)" in said, said
    assert "GET" not in said and "409" not in said, said
    # the API's own words are unchanged: an HTTP client is pointed to routes
    assert "GET /api/flow-runs lists them" in http.get("/flow-runs/zzzzzzzz").json()["detail"]
