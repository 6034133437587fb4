"""A failed run names the task that raised, keeps its traceback, and a completed run's result can be read.

Through real processes: the fleet worker runs the flows of ``tests/flows.py``, the API
(``python -m api.server``) records them, and the ``orchestrator`` command reads them back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, api_server
from orchestrator.runstate import keys
from tests.api_support import api_database, cli, cli_each, eventually, submit, wait_final


@pytest.fixture(scope="module")
def api(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, fleet: subprocess.Popen[bytes], worker_logs: Path
) -> Iterator[ApiProcess]:
    """The API with its recorder on an SQLite file, next to the fleet worker."""
    with (
        api_database(tmp_path_factory.mktemp("root-cause-db"), None) as url,
        api_server(redis_url, url, log_path=worker_logs / "root-cause-api.log") as server,
    ):
        yield server


@pytest.fixture(scope="module")
def failed(api: ApiProcess) -> dict[str, Any]:
    """One run of failing_flow (explode-0 raises ValueError('boom'); inc-0 after it never runs), ended."""
    with httpx.Client(base_url=api.url, timeout=15) as http:
        run = wait_final(http, submit(http, "failing-flow")["id"])
    assert run["state"] == "Failed", run
    return run


def test_failed_run_names_the_task_that_raised_first_then_what_it_took_down(failed: dict[str, Any]) -> None:
    message = failed["state_message"]
    assert message.startswith("explode-0 ended Failed: ValueError: boom"), message
    assert message.endswith("; 1 downstream task run not run (UpstreamFailed)"), message
    assert "inc-0" not in message  # the leaf that decided the state is not named as if it were the cause


def test_a_chord_whose_header_fails_names_the_header_task(http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "chord-header-fails")["id"])
    assert run["state_message"].startswith("explode-0 ended Failed: ValueError: header"), run
    assert "1 downstream task run not run" in run["state_message"]


def test_a_dynamic_body_that_raised_is_followed_by_the_task_that_failed_first(http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "dynamic-reads-a-failure")["id"])
    assert run["state"] == "Failed" and run["mode"] == "dynamic", run
    assert run["state_message"].startswith("the flow body raised ValueError: read boom"), run
    assert run["state_message"].endswith("; the first task run to fail: explode-0 ended Failed: ValueError: read boom")


def test_failures_give_the_root_cause_with_its_traceback(http: httpx.Client, failed: dict[str, Any]) -> None:
    found = http.get(f"/flow-runs/{failed['id']}/failures").json()
    cause = found["root_cause"]
    assert cause["label"] == "explode-0" and cause["task_name"] == "tests.flows.explode", cause
    assert cause["state"] == "Failed" and cause["message"] == "ValueError: boom"
    assert cause["error_type"].endswith("ValueError")
    assert "Traceback (most recent call last)" in cause["traceback"]
    assert "raise ValueError(message)" in cause["traceback"]  # the line of the task that raised
    assert cause["traceback"].rstrip().endswith("ValueError: boom")
    assert "workers/executor.py" not in cause["traceback"]  # from the first frame of the user's code
    assert [f["label"] for f in found["failures"]] == ["explode-0"]
    assert found["total"] == 1 and found["upstream_failed"] == 1
    assert http.get("/flow-runs/no-such-run/failures").status_code == 404


def test_result_of_a_completed_run_is_its_json_value(http: httpx.Client) -> None:
    chain = wait_final(http, submit(http, "chain-flow", parameters={"x": 2})["id"])
    assert chain["state"] == "Completed"
    response = http.get(f"/flow-runs/{chain['id']}/result")
    assert response.status_code == 200 and response.json() == 8
    both = wait_final(http, submit(http, "non-sp-flow", parameters={"slow": 0.1})["id"])
    assert http.get(f"/flow-runs/{both['id']}/result").json() == {"c": "c", "d": "d"}
    pickled = wait_final(http, submit(http, "pickle-map-flow")["id"])
    assert pickled["state"] == "Completed", pickled
    # a tuple as a list, and every pickled value (both tasks opt in) named, never unpickled by the API
    assert http.get(f"/flow-runs/{pickled['id']}/result").json() == [["<pickled>", "<pickled>"], "<pickled>"]


def test_result_of_a_run_without_one_says_why(http: httpx.Client, failed: dict[str, Any]) -> None:
    refused = http.get(f"/flow-runs/{failed['id']}/result")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "ended Failed: explode-0 ended Failed: ValueError: boom" in detail and "/failures" in detail

    slow = submit(http, "slow-flow", parameters={"seconds": 20})
    early = http.get(f"/flow-runs/{slow['id']}/result")
    assert early.status_code == 409, early.text
    assert "it has no result until it completes" in early.json()["detail"]
    assert http.post(f"/flow-runs/{slow['id']}/cancel").status_code == 202

    missing = http.get("/flow-runs/no-such-run/result")
    assert missing.status_code == 404 and "no flow run 'no-such-run'" in missing.json()["detail"]


def test_an_expired_result_is_named_not_a_crash(redis_url: str, http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "chain-flow", parameters={"x": 3})["id"])
    tasks = http.get(f"/flow-runs/{run['id']}/task-runs").json()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(*(keys.result(t["id"]) for t in tasks))  # what the result TTL does
    gone = http.get(f"/flow-runs/{run['id']}/result")
    assert gone.status_code == 410, gone.text
    assert "has expired from Redis" in gone.json()["detail"] and "persist_result=True" in gone.json()["detail"]
    client.delete(keys.flow_run(run["id"]))  # the run's record too
    gone = http.get(f"/flow-runs/{run['id']}/result")
    assert gone.status_code == 410 and "record and result have expired" in gone.json()["detail"]


def test_cli_result_inspect_and_logs_show_the_value_and_the_root_cause(
    api: ApiProcess, http: httpx.Client, failed: dict[str, Any]
) -> None:
    chain = wait_final(http, submit(http, "chain-flow", parameters={"x": 2})["id"])

    def errors_shipped() -> bool:  # the CLI commands below run at once: none waits for the log lines
        errors = [x["message"] for x in http.get(f"/flow-runs/{failed['id']}/logs").json() if x["level"] == "ERROR"]
        return any("raise ValueError(message)" in m for m in errors) and any("ended Failed: " in m for m in errors)

    eventually(errors_shipped, 20, what="the failed run's error lines in its logs")
    shown, refused, nobody, inspected, logs = cli_each(
        api,
        ("flow-run", "result", chain["id"]),
        ("flow-run", "result", failed["id"]),
        ("flow-run", "result", "no-such-run"),
        ("flow-run", "inspect", failed["id"]),
        ("flow-run", "logs", failed["id"]),
    )
    assert shown.returncode == 0 and shown.stdout.strip() == "8", shown.stdout + shown.stderr

    assert refused.returncode == 1 and "explode-0 ended Failed: ValueError: boom" in refused.stdout, refused.stdout
    assert nobody.returncode == 2

    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "root cause: explode-0 (explode) Failed: ValueError: boom" in inspected.stdout, inspected.stdout
    assert "raise ValueError(message)" in inspected.stdout

    lines = logs.stdout.splitlines()
    assert any("ERROR" in line and "explode-0 (tests.flows.explode) Failed: ValueError: boom" in line for line in lines)
    assert any("ERROR" in line and "raise ValueError(message)" in line for line in lines), logs.stdout
    assert any("ERROR" in line and "ended Failed: explode-0 ended Failed" in line for line in lines), logs.stdout


def test_run_watch_prints_the_result_or_the_root_cause(api: ApiProcess) -> None:
    done = cli(api, "run", "chain-flow", "-p", "x=2", "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("result: 8"), done.stdout

    failed = cli(api, "run", "failing-flow", "--watch", "--timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed: explode-0 ended Failed: ValueError: boom" in failed.stdout
    assert "root cause: explode-0 (explode) Failed: ValueError: boom" in failed.stdout
    assert "raise ValueError(message)" in failed.stdout


def test_the_traceback_of_every_retried_attempt_is_in_the_logs(http: httpx.Client) -> None:
    run = wait_final(http, submit(http, "retry-flow")["id"])
    assert run["state"] == "Completed", run

    def retried() -> list[dict[str, Any]] | None:
        lines = http.get(f"/flow-runs/{run['id']}/logs").json()
        warnings = [line for line in lines if line["level"] == "WARNING"]
        return warnings if sum("OSError: attempt" in w["message"] for w in warnings) >= 4 else None

    warnings = eventually(retried, 20, what="the two retried attempts' tracebacks in the logs")
    heads = [w["message"] for w in warnings if w["message"].startswith("flaky_until_third-0")]
    assert len(heads) == 2 and all("AwaitingRetry: attempt failed (OSError: attempt" in h for h in heads), heads
    assert any("raise OSError(" in w["message"] for w in warnings)
    found = http.get(f"/flow-runs/{run['id']}/failures").json()
    assert found["root_cause"] is None and found["total"] == 0  # it completed: nothing failed in the end


def test_the_message_counts_what_it_does_not_name() -> None:
    from orchestrator.runs.failures import Failure, cause_order, failure_message

    raw = [("b-0", "Failed", 3.0), ("up-0", "UpstreamFailed", 1.0), ("a-0", "Crashed", 2.0), ("c-0", "TimedOut", None)]
    order = sorted(raw, key=lambda r: cause_order(r[1], r[2], r[0]))
    assert [r[0] for r in order] == ["a-0", "b-0", "c-0", "up-0"]  # own failures by end, then the downstream
    failures = [Failure(f"t-{n}", "Failed", f"E{n}", float(n), "run") for n in range(6)]
    assert failure_message(failures, 7) == (
        "t-0 ended Failed: E0; 5 more task runs failed (t-1, t-2, t-3 and 2 more); "
        "7 downstream task runs not run (UpstreamFailed)"
    )
    assert failure_message(failures[:1], 0) == "t-0 ended Failed: E0"
