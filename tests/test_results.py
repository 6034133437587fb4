"""persist_result=True: a result outlives Redis's copy; one that was not kept says so and how to keep it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import RunError
from orchestrator.runstate import keys
from orchestrator.runstate.store import get_store
from tests import flows
from tests.api_support import eventually

pytestmark = pytest.mark.usefixtures("fleet")


def forget_results(run_id: str) -> None:
    """What an expired result TTL (or a Redis restart without persistence) does to a run's results."""
    store = get_store()
    from orchestrator.runs.handle import FlowRun

    for row in FlowRun(run_id).task_runs():
        store.redis.delete(keys.result(row["id"]))


def test_a_persisted_result_is_read_back_after_redis_lost_it() -> None:
    run = flows.kept_flow.delay(n=4)
    assert run.result(timeout=30) == 40
    (row,) = run.task_runs()
    stored = Path(os.environ["ORCHESTRATOR_RESULT_STORAGE"]) / f"{row['id']}.json"
    assert stored.read_text() == "40"
    forget_results(run.id)
    assert get_store().redis.get(keys.result(row["id"])) is None
    assert run.result(timeout=5) == 40  # from the result storage


def test_a_result_is_read_in_the_wait_and_after_redis_forgot_its_scripts() -> None:
    """The client reads a run's outcome in the same round trip as its wait (a script queued
    behind BLMOVE); a Redis that lost its scripts (a restart) makes it read the usual way."""
    run = flows.not_kept_flow.delay(n=4)
    assert run.result(timeout=30) == 5
    get_store().redis.script_flush()
    assert run.result(timeout=5) == 5


def test_a_result_that_was_not_kept_says_how_to_keep_it() -> None:
    run = flows.not_kept_flow.delay(n=4)
    assert run.result(timeout=30) == 5
    forget_results(run.id)
    with pytest.raises(RunError, match="persist_result=True"):
        run.result(timeout=5)


def test_a_crafted_task_run_id_never_reaches_outside_the_result_storage(tmp_path: Path) -> None:
    """A message names its own task id (the broker, Flower's task API): ``../../x`` for a task
    that persists its result must not write (or read) a file outside the storage folder."""
    from orchestrator.config.settings import Settings
    from orchestrator.data.results import read_persisted
    from orchestrator.transport.celery_app import make_celery_app

    storage = Path(os.environ["ORCHESTRATOR_RESULT_STORAGE"])
    escape = f"escape-{os.getpid()}-{tmp_path.name}"
    crafted = f"../../{escape}"
    outside = (storage / f"{crafted}.json").resolve()
    app = make_celery_app("results-client", Settings(redis_url=os.environ["ORCHESTRATOR_REDIS_URL"]), send_only=True)
    run = {"flow_run_id": str(uuid.uuid4()), "label": "kept-0"}
    app.send_task("tests.flows.kept", kwargs={"run": run, "inputs": {"value": 4}}, queue="default", task_id=crafted)
    store = get_store()
    eventually(lambda: store.task_runs.read(crafted).get("state") in ("Completed", "Failed"), 30, what="the task ended")
    row = store.task_runs.read(crafted)
    assert row["state"] == "Failed", row
    assert "is not well formed" in row["message"], row
    assert not outside.exists(), outside
    with pytest.raises(RunError, match="is not well formed"):
        read_persisted([crafted])
