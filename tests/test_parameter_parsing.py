"""One reading of a parameter's value, driven by its type, in every command; a bad value refused at creation.

Through the real ``orchestrator`` command and the real API process, next to a real worker
that imports ``tests.parsing_flows`` (so the API knows the flow's parameter schema). ``-p``
text is JSON when the parameter's type takes that JSON, else the text itself
(``orchestrator/authoring/param_text.py``); a JSON Schema ``format`` (``day: date``) is
checked as the worker will read it (``orchestrator/authoring/formats.py``), so a bad date is
a 422 / a one-line CLI error and nothing is created, instead of a 201 and a failure later.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.errors import ParameterError
from orchestrator.runs.handle import FlowRun
from tests import parsing_flows
from tests.api_support import api_database, cli

FLOW = "parsing-flow"
TARGET = "tests.parsing_flows:parsing_flow"


@pytest.fixture(scope="module")
def parsing_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.parsing_flows"],
        queues=parsing_flows.QUEUE,
        concurrency=2,
        name="parsing@%h",
        log_path=worker_logs / "parsing.log",
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(
    redis_url: str,
    parsing_worker: subprocess.Popen[bytes],
    worker_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    database = api_database(tmp_path_factory.mktemp("parsing-db"), None)
    with database as url, api_server(redis_url, url, log_path=worker_logs / "parsing-api.log") as server:
        yield server


def runs_of_flow(http: httpx.Client) -> int:
    return int(http.get("/flow-runs", params={"flow": FLOW}).json()["total"])


def run_id_of(out: str) -> str:
    return out.split("(", 1)[1].split(")", 1)[0]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's refusal: status 2 and one line starting 'error:' (no traceback)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), done.stdout
    return " ".join(line.strip() for line in lines)


# -- one reading of -p in every command --------------------------------------------------------------
def test_run_reads_each_value_by_its_type_and_the_worker_gets_those_types(api: ApiProcess) -> None:
    done = cli(
        api,
        "run",
        FLOW,
        *("-p", "label=5", "-p", "n=7", "-p", "day=2026-01-02", "-p", "ids=[1, 2]", "-p", "anything=[3]"),
        "--watch",
        "--timeout",
        "90",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = FlowRun(run_id_of(done.stdout)).result(timeout=60)
    assert got == {
        "label": "'5'",  # a str parameter keeps the text: it used to be the number 5, refused with a 422
        "n": "7",
        "day": "datetime.date(2026, 1, 2)",
        "ids": "[1, 2]",
        "anything": "[3]",  # an untyped parameter: JSON when it is JSON
    }


def test_plan_reads_the_same_text_the_same_way(api: ApiProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "plan", TARGET, "-p", "label=5", "-p", "n=7", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    inputs = json.loads(done.stdout)["nodes"][0]["inputs"]
    assert inputs["label"] == "5" and inputs["n"] == 7


def test_a_str_parameter_keeps_any_text_and_a_json_body_keeps_its_own_types(
    api: ApiProcess, http: httpx.Client
) -> None:
    done = cli(api, "run", FLOW, "-p", "label=true", "-p", "ids=[]", "--watch", "--timeout", "90")
    assert done.returncode == 0, done.stdout + done.stderr
    got = FlowRun(run_id_of(done.stdout)).result(timeout=60)
    assert (got["label"], got["ids"]) == ("'true'", "[]")
    refused = http.post(f"/flows/{FLOW}/runs", json={"parameters": {"label": 5}})  # JSON says it is a number
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == "parameter 'label': 5 is not of type 'string'"


# -- a bad value: refused at creation, by every door, nothing created ---------------------------------
def test_a_bad_date_over_http_is_a_422_naming_the_parameter_and_the_format(http: httpx.Client) -> None:
    before = runs_of_flow(http)
    for bad in ("2026-13-45", "not-a-date", "20260102x"):
        response = http.post(f"/flows/{FLOW}/runs", json={"parameters": {"label": "x", "day": bad}})
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "parameters", "day"]
        assert problem["msg"].startswith(f"parameter 'day': {bad!r} is not a valid date: ")
        assert "expected e.g. 2026-01-02" in problem["msg"]
    assert runs_of_flow(http) == before
    good = http.post(f"/flows/{FLOW}/runs", json={"parameters": {"label": "x", "day": "2026-01-02"}})
    assert good.status_code == 201, good.text  # the control: a good date is created
    assert runs_of_flow(http) == before + 1


def test_run_refuses_a_bad_date_in_one_line_and_creates_nothing(api: ApiProcess, http: httpx.Client) -> None:
    before = runs_of_flow(http)
    text = one_error_line(cli(api, "run", FLOW, "-p", "label=x", "-p", "day=not-a-date"))
    assert "parameter 'day': 'not-a-date' is not a valid date" in text
    text = one_error_line(cli(api, "run", FLOW, "-p", "label=x", "-p", "n=many"))
    assert "parameter 'n': 'many' is not of type 'integer'" in text
    assert runs_of_flow(http) == before


def test_plan_refuses_a_bad_date_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "plan", TARGET, "-p", "label=x", "-p", "day=2026-13-45"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    text = one_error_line(done)
    assert "parameter 'day' got '2026-13-45'" in text and "expected date" in text


def test_deployments_refuse_a_bad_default_date_by_the_cli_and_over_http(api: ApiProcess, http: httpx.Client) -> None:
    name = f"parsing-{uuid.uuid4().hex[:6]}"
    done = cli(api, "deploy", TARGET, "--name", name, "--paused", "-p", "label=x", "-p", "day=2026-13-45")
    assert "parameter 'day'" in one_error_line(done)
    body: dict[str, Any] = {"name": name, "flow_name": FLOW, "paused": True}
    response = http.post("/deployments", json=body | {"parameters": {"label": "x", "day": "2026-13-45"}})
    assert response.status_code == 422, response.text
    assert "parameter 'day': '2026-13-45' is not a valid date" in response.text
    assert http.get(f"/deployments/{name}").status_code == 404
    kept = cli(api, "deploy", TARGET, "--name", name, "--paused", "-p", "label=5", "-p", "day=2026-01-02")
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the control
    assert http.get(f"/deployments/{name}").json()["parameters"] == {"label": "5", "day": "2026-01-02"}
    before = runs_of_flow(http)
    now = http.post(f"/deployments/{name}/runs", json={"parameters": {"day": "2026-02-30"}})  # run-now override
    assert now.status_code == 422, now.text
    assert "parameter 'day': '2026-02-30' is not a valid date" in now.text
    assert runs_of_flow(http) == before


def test_delay_refuses_a_bad_date_in_the_apis_words(http: httpx.Client) -> None:
    with pytest.raises(ParameterError) as refused:  # refused before any I/O (tests/test_create_run.py)
        parsing_flows.parsing_flow.delay("x", day="2026-13-45")
    response = http.post(f"/flows/{FLOW}/runs", json={"parameters": {"label": "x", "day": "2026-13-45"}})
    assert str(refused.value) == response.json()["detail"][0]["msg"]
    assert str(refused.value).startswith("parameter 'day': '2026-13-45' is not a valid date: ")
