"""A Redis outage under the real API process: one line when Redis goes away, one when it is back.

The API (``python -m api.server``, its recorder and services in threads) runs against a Redis
of this test's own on a fixed port, with a worker. Redis is stopped for several services
passes, then started again on the same port with its data (append-only file): the log must
hold one outage line naming the Redis and what to check, no traceback, then the "back" line,
and a run submitted afterwards must complete.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from orchestrator.devstack.localstack import ApiProcess, free_port, redis_server, worker
from tests.api_support import eventually, submit, wait_final

AWAY = "does not answer"
BACK = "answers again"
PASSES_SECONDS = 8.0  # several services passes and recorder retries (their pauses grow to 5 s)


def lines_with(path: Path, text: str) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if text in line]


def test_a_redis_outage_is_told_once_routes_answer_503_and_runs_go_through_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis-data"  # kept across the restart, as a production Redis keeps its append-only file
    log = tmp_path / "api.log"
    redis_again = contextlib.ExitStack()
    with redis_again, contextlib.ExitStack() as stack:  # the API and the worker stop before the second Redis
        with redis_server(port=port, data_dir=data) as url:
            stack.enter_context(worker(url, ["tests.flows"], concurrency=1, log_path=tmp_path / "worker.log"))
            api = ApiProcess(url, f"sqlite:///{tmp_path / 'api.db'}", log_path=log, log_level="info")
            stack.callback(api.stop)
            api.start()
            http = stack.enter_context(httpx.Client(base_url=api.url, timeout=30))
            before = submit(http, "chain-flow", parameters={"x": 1})
            assert wait_final(http, before["id"])["state"] == "Completed"

        # Redis is away: told once, with the URL and what to check.
        away = eventually(lambda: lines_with(log, AWAY), 60, what="the outage line in the API's log")
        assert url in away[0] and "ORCHESTRATOR_REDIS_URL" in away[0], away[0]
        refused = http.post("/flows/chain-flow/runs", json={"parameters": {"x": 2}})
        assert refused.status_code == 503 and "cannot reach Redis" in refused.json()["detail"], refused.text
        assert http.get("/health").json()["redis"] == "unavailable"
        time.sleep(PASSES_SECONDS)  # not a timing assertion: the passes that used to log a traceback each
        text = log.read_text(errors="replace")
        assert len(lines_with(log, AWAY)) == 1, text
        assert "Traceback" not in text and " ERROR " not in text, text

        # Redis is back on the same port: told once, and runs go through again.
        redis_again.enter_context(redis_server(port=port, data_dir=data))
        back = eventually(lambda: lines_with(log, BACK), 60, what="the 'Redis is back' line in the API's log")
        assert " INFO " in back[0] and url in back[0], back[0]
        after = eventually(
            lambda: (
                (r := http.post("/flows/chain-flow/runs", json={"parameters": {"x": 3}})).status_code == 201
                and r.json()
            ),
            60,
            what="a run created once Redis is back",
        )
        assert wait_final(http, after["id"], timeout=120)["state"] == "Completed"
        text = log.read_text(errors="replace")
        assert len(lines_with(log, AWAY)) == 1 and len(lines_with(log, BACK)) == 1, text
        assert "Traceback" not in text, text
