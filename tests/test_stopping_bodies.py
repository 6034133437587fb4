"""Cancel and a flow timeout stop a dynamic body (issue 17, item 3): its next call into the
orchestrator raises FlowRunStopped, which a body's ``except Exception`` cannot swallow; the body
unwinds (its ``finally`` runs), submits nothing more, and the flow's hooks run once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.devstack.localstack import worker
from orchestrator.states import StateType
from tests import stopping_flows as sf
from tests.api_support import eventually


@pytest.fixture(scope="module")
def stopping_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker that drives the bodies, and one that runs their tasks (see stopping_flows.NAP_QUEUE)."""
    with (
        worker(
            redis_url,
            ["tests.stopping_flows"],
            queues=sf.NAP_QUEUE,
            concurrency=2,
            name="stopping-naps@%h",
            log_path=worker_logs / "stopping-naps.log",
        ),
        worker(
            redis_url,
            ["tests.stopping_flows"],
            queues=sf.QUEUE,
            concurrency=2,
            name="stopping@%h",
            log_path=worker_logs / "stopping.log",
        ) as proc,
    ):
        yield proc


def _stays(run_id: str, seconds: float) -> int:
    """The run's task run count, checked not to grow for ``seconds`` (nothing submitted after the stop)."""
    from orchestrator import FlowRun

    count = len(FlowRun(run_id).task_runs())
    time.sleep(seconds)
    assert len(FlowRun(run_id).task_runs()) == count, "the body went on submitting after it was stopped"
    return count


def _cancel_elsewhere(run_id: str) -> None:
    """Cancel as the API does: from a process that has no flow code (so it cannot run the hooks)."""
    code = "\n".join(
        [
            "import sys",
            "from orchestrator.runs.lifecycle import stop_flow_run",
            "from orchestrator.runstate.store import get_store",
            "from orchestrator.states import StateType",
            "from orchestrator.transport.celery_app import client_app",
            "from orchestrator.transport.messaging import CeleryMessaging",
            "messaging = CeleryMessaging(client_app())",
            "stopped = stop_flow_run(get_store(), messaging, sys.argv[1], StateType.CANCELLED, 'by the test')",
            "sys.exit(0 if stopped else 3)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code, run_id], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_cancelled_dynamic_body_stops_and_its_hook_runs_once(stopping_worker: subprocess.Popen[bytes]) -> None:
    run = sf.keeps_going.delay(200, 0.3)
    eventually(lambda: len(run.task_runs()) >= 3, 30, what="three task runs submitted")
    _cancel_elsewhere(run.id)
    assert run.wait(timeout=20) is StateType.CANCELLED
    eventually(lambda: "finally" in sf.noted(run.id), 10, what="the body unwound")
    eventually(lambda: "hook:Cancelled" in sf.noted(run.id), 10, what="on_cancellation ran")
    assert _stays(run.id, 1.5) < 10
    assert sf.noted(run.id).count("hook:Cancelled") == 1  # run by the driver, where the code is
    assert not [n for n in sf.noted(run.id) if n.startswith("caught")]  # the stop was never swallowed


def test_a_timed_out_dynamic_body_stops_and_its_hook_runs_once(stopping_worker: subprocess.Popen[bytes]) -> None:
    started = time.monotonic()
    run = sf.too_slow.delay(200, 0.3)
    assert run.wait(timeout=30) is StateType.TIMED_OUT
    eventually(lambda: "finally" in sf.noted(run.id), 10, what="the body unwound")
    assert time.monotonic() - started < 10
    assert _stays(run.id, 1.5) < 15
    eventually(lambda: "hook:TimedOut" in sf.noted(run.id), 10, what="on_failure ran for TimedOut")
    time.sleep(0.5)  # a second call of the hook (the deadline's worker, then the driver) would land by now
    assert sf.noted(run.id).count("hook:TimedOut") == 1
    assert not [n for n in sf.noted(run.id) if n.startswith("caught")]
