"""Every log line of a task reaches the API with its task run, level and logger name: the run
logger's, the task module's own logger's, a library's named in ORCHESTRATOR_EXTRA_LOGGERS, a
Python warning, and each failed attempt's traceback; none of a line logged outside a run.

Real processes: a worker on the threads pool (four tasks in one process at once, so the
lines of concurrent tasks share one shipper), an API, the session's Redis; and a prefork
worker SIGKILLed the moment its run completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from tests.api_support import api_database, cli, eventually, wait_final

FLOW_MODULES = ["tests.log_flows"]
QUEUE = f"logs-{uuid.uuid4().hex[:8]}"
EXTRA = {"ORCHESTRATOR_EXTRA_LOGGERS": "testlib"}
MODULE, LIBRARY, WARNINGS, RUNS = "tests.log_flows", "testlib.client", "py.warnings", "orchestrator.runs"
Line = tuple[str, str, str]  # level, logger, message (after the run logger's "[task id] " prefix)


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory, worker_logs: Path) -> Iterator[ApiProcess]:
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    with (
        api_database(tmp_path_factory.mktemp("log-lines-db"), admin_url) as database,
        api_server(redis_url, database, log_path=worker_logs / "log-lines-api.log") as server,
    ):
        yield server


@pytest.fixture(scope="module")
def threads_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url, FLOW_MODULES, queues=QUEUE, concurrency=4, pool="threads",
        log_path=worker_logs / "log-lines-threads.log", extra_env=EXTRA,
    ) as proc:  # fmt: skip
        yield proc


def lines_of(http: httpx.Client, run_id: str, expected: int) -> list[dict[str, Any]]:
    """The run's log lines once at least ``expected`` are recorded."""

    def enough() -> list[dict[str, Any]] | None:
        got: list[dict[str, Any]] = http.get(f"/flow-runs/{run_id}/logs", params={"limit": 10_000}).json()
        return got if len(got) >= expected else None

    return eventually(enough, 30, what=f"{expected} log lines of {run_id}")


def shipped(line: dict[str, Any]) -> Line:
    return line["level"], line["logger"], str(line["message"]).split("] ", 1)[-1].split("\n", 1)[0]


def chatty_lines(marker: str) -> set[Line]:
    """What one ``chatty`` task run ships (tests/log_flows.py), no more."""
    return {
        ("INFO", MODULE, f"{marker} module line"),
        ("INFO", LIBRARY, f"{marker} library line"),
        ("INFO", RUNS, f"{marker} run logger line"),
        ("ERROR", MODULE, f"{marker} handled error"),  # logger.exception: its traceback below the line
    }


def test_each_kind_of_line_reaches_the_api_with_its_task_run_level_and_logger(
    api: ApiProcess, threads_worker: subprocess.Popen[bytes]
) -> None:
    """4 tasks at once in one worker process, each logging one line of each kind, and a task
    whose first attempt raises. Each line is on its own task run, with its level and logger;
    the failed attempt's traceback is there once, as ERROR; the lines of a logger nobody named,
    below INFO, of a thread the task started, or logged at import are not."""
    from tests import log_flows

    marker = uuid.uuid4().hex[:8]
    run = log_flows.log_kinds.apply_async({"marker": marker, "width": 4, "pause": 0.2}, queue=QUEUE)
    with httpx.Client(base_url=api.url, timeout=15) as http:
        assert wait_final(http, run.id)["state"] == "Completed"
        task_runs = {t["id"]: t for t in http.get(f"/flow-runs/{run.id}/task-runs").json()}
        (failing,) = [t for t in task_runs.values() if t["label"] == "fails_once-0"]
        got = lines_of(http, run.id, expected=4 * 5 + 3)  # 4 x 5 lines, and the traceback: headline + 2 or more

    by_task: dict[str, set[Line]] = {}
    for line in got:
        assert line["task_run_id"] in task_runs, line  # every line on a task run of this flow run
        by_task.setdefault(line["task_run_id"], set()).add(shipped(line))
    for i in range(4):
        ours = [trid for trid, lines in by_task.items() if ("INFO", MODULE, f"{marker}-{i} module line") in lines]
        assert len(ours) == 1, (i, by_task)  # one task run has this task's lines
        lines = by_task[ours[0]]
        warning = [line for line in lines if line[1] == WARNINGS]
        assert lines - set(warning) == chatty_lines(f"{marker}-{i}"), lines  # its own lines, none of another's
        assert len(warning) == 1 and warning[0][0] == "WARNING", warning
        assert f"UserWarning: {marker}-{i} careful" in warning[0][2] and "log_flows.py:" in warning[0][2]
    (handled,) = [line for line in got if f"{marker}-0 handled error" in line["message"]]
    assert "Traceback (most recent call last)" in handled["message"], handled
    assert handled["message"].rstrip().endswith(f"KeyError: '{marker}-0'"), handled

    traceback = [line for line in got if line["task_run_id"] == failing["id"]]
    assert {(line["level"], line["logger"]) for line in traceback} == {("ERROR", RUNS)}, traceback
    messages = [line["message"] for line in traceback]
    assert messages[0].startswith("fails_once-0 (tests.log_flows.fails_once) AwaitingRetry:"), messages
    assert sum(m.strip().startswith("raise ValueError(") for m in messages) == 1, messages  # written once
    assert messages[-1] == f"ValueError: {marker}-f first attempt fails", messages
    everything = " ".join(line["message"] for line in got)
    assert "not shipped" not in everything and "imported" not in everything


def test_the_cli_names_the_logger_of_lines_that_are_not_the_run_loggers(
    api: ApiProcess, threads_worker: subprocess.Popen[bytes]
) -> None:
    from tests import log_flows

    marker = uuid.uuid4().hex[:8]
    run = log_flows.log_kinds.apply_async({"marker": marker, "width": 1, "pause": 0.0}, queue=QUEUE)
    with httpx.Client(base_url=api.url, timeout=15) as http:
        assert wait_final(http, run.id)["state"] == "Completed"
        lines_of(http, run.id, expected=4 + 3)
    out = cli(api, "flow-run", "logs", run.id)
    assert out.returncode == 0, out.stdout + out.stderr
    printed = out.stdout.splitlines()
    assert any(f"INFO    [chatty-0] {MODULE}: {marker}-0 module line" in line for line in printed), printed
    assert any(f"INFO    [chatty-0] {LIBRARY}: {marker}-0 library line" in line for line in printed), printed
    assert any(f"WARNING [chatty-0] {WARNINGS}: " in line for line in printed), printed
    assert any(line.endswith(f"INFO    [chatty-0] {marker}-0 run logger line") for line in printed), printed


def test_a_worker_killed_right_after_a_task_ends_loses_none_of_its_lines(
    redis_url: str, api: ApiProcess, worker_logs: Path
) -> None:
    """A prefork worker's task logs one line of each kind with no pause, well inside the shipper's
    half-second timer, and ends; the moment the run is Completed the whole worker is SIGKILLed (no
    shutdown, no atexit). Every line reaches the API: the task's lines are flushed when its function
    returns, before its end is recorded, whichever logger wrote them."""
    from tests import log_flows

    marker = uuid.uuid4().hex[:8]
    queue = f"logs-kill-{marker}"
    with worker(
        redis_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=worker_logs / f"log-lines-kill-{marker}.log",
        extra_env=EXTRA,
    ) as proc:  # fmt: skip
        run = log_flows.log_kinds.apply_async({"marker": marker, "width": 2, "pause": 0.0}, queue=queue)
        assert run.wait(60).value == "Completed"
        os.killpg(proc.pid, signal.SIGKILL)
    with httpx.Client(base_url=api.url, timeout=15) as http:
        assert wait_final(http, run.id)["state"] == "Completed"
        got = lines_of(http, run.id, expected=2 * 5 + 3)
    # not the warnings, nor fails_once's traceback (ERROR lines the recorder writes under the run logger)
    kinds = {
        shipped(line)
        for line in got
        if line["logger"] != WARNINGS and (line["level"], line["logger"]) != ("ERROR", RUNS)
    }
    assert kinds == chatty_lines(f"{marker}-0") | chatty_lines(f"{marker}-1"), kinds
    assert sum(line["logger"] == WARNINGS for line in got) == 2, got


def test_extra_loggers_are_a_comma_separated_list_and_a_name_that_is_none_is_refused() -> None:
    from pydantic import ValidationError

    from orchestrator.config.settings import Settings

    read = Settings(extra_loggers=" sqlalchemy, requests.packages ,").extra_loggers
    assert read == ["sqlalchemy", "requests.packages"]
    assert Settings().extra_loggers == []
    with pytest.raises(ValidationError, match="ORCHESTRATOR_EXTRA_LOGGERS: 'my lib' is not a logger name"):
        Settings(extra_loggers="sqlalchemy,my lib")
    with pytest.raises(ValidationError, match="the root logger is not shipped"):
        Settings(extra_loggers="root")
