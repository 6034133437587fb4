"""persist_result=True: a result outlives Redis's copy; one that was not kept says so and how to keep it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator import keys
from orchestrator.errors import RunError
from orchestrator.store import get_store
from tests import flows

pytestmark = pytest.mark.usefixtures("fleet")


def forget_results(run_id: str) -> None:
    """What an expired result TTL (or a Redis restart without persistence) does to a run's results."""
    store = get_store()
    from orchestrator.client import FlowRun

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


def test_a_result_that_was_not_kept_says_how_to_keep_it() -> None:
    run = flows.not_kept_flow.delay(n=4)
    assert run.result(timeout=30) == 5
    forget_results(run.id)
    with pytest.raises(RunError, match="persist_result=True"):
        run.result(timeout=5)
