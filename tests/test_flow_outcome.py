"""What a flow run's waiter reads of its end (``lua/read_outcome.lua``): a few fields of the record and
the results its return template refers to, in one flat reply; ``FlowRun.result()`` says what it said.

The records are written the way the run store writes them, in a private redis-server; no worker is
needed to end a run (a final state written pushes the run's latch, as a worker's end does).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from orchestrator.errors import FlowRunFailed
from orchestrator.runs.handle import FlowRun
from orchestrator.runs.linked import linked_outcome
from orchestrator.runs.outcome import shown_result
from orchestrator.runstate import keys
from orchestrator.runstate.records import PACKED, FlowOutcome
from orchestrator.runstate.store import get_store
from orchestrator.states import StateType

pytestmark = pytest.mark.usefixtures("redis_url")


def ended(fields: dict[str, Any]) -> str:
    """A flow run's record written with ``fields`` (a final state among them); its id."""
    run_id = str(uuid.uuid4())
    get_store().flow_runs.write(run_id, {"id": run_id, "flow": "f", "queue": "default", **fields})
    return run_id


def test_a_failed_run_raises_with_its_name_state_and_message() -> None:
    message = "explode-0 ended Failed: ValueError: boom"
    run_id = ended({"name": "nightly-etl", "state": StateType.FAILED.value, "message": message})
    with pytest.raises(FlowRunFailed) as raised:
        FlowRun(run_id).result(timeout=5)
    assert str(raised.value) == f"flow run nightly-etl ({run_id}) ended Failed: {message}"
    assert (raised.value.original_type, raised.value.original_message) == (None, None)  # no task run raised


def test_a_run_ended_without_a_message_or_a_name_says_so_with_its_id() -> None:
    run_id = ended({"state": StateType.CRASHED.value})
    with pytest.raises(FlowRunFailed) as raised:
        FlowRun(run_id).result(timeout=5)
    assert str(raised.value) == f"flow run {run_id} ({run_id}) ended Crashed: "


def test_the_outcome_holds_the_results_its_return_template_names_in_their_order() -> None:
    """Three references, one of them twice and one whose result is gone; a template long enough to be
    stored packed comes back as its JSON text."""
    present, gone, other = (str(uuid.uuid4()) for _ in range(3))
    returns = {"a": {"__ref__": present, "path": []}, "b": [{"__ref__": gone, "path": []}] * 2, "pad": "x" * 300}
    returns["c"] = {"__ref__": other, "path": ["k"]}
    refs = [present, gone, other]
    store = get_store()
    store.redis.set(keys.result(present), json.dumps(7))
    store.redis.set(keys.result(other), json.dumps({"k": "v"}))
    run_id = ended({"name": "n", "state": StateType.COMPLETED.value, "returns": returns, "result_refs": refs})
    assert store.redis.hget(keys.flow_run(run_id), "returns").startswith(PACKED)

    outcome = store.flow_runs.read_outcome(run_id)
    assert outcome == FlowOutcome(
        state="Completed",
        name="n",
        message=None,  # the run store never wrote one
        returns=json.dumps(returns),
        results={present: "7", gone: None, other: '{"k": "v"}'},
    )
    assert list(outcome.results) == refs
    assert store.flow_runs.wait_outcome(run_id, 5) == (StateType.COMPLETED, outcome)


def test_the_results_are_read_only_once_the_run_completed() -> None:
    """A waiter reads the outcome at every wake-up while the run goes on: a run not yet Completed
    (Running, or ended Failed) costs Redis no read of its results, however many it names."""
    refs = [str(uuid.uuid4()) for _ in range(3)]
    store = get_store()
    for ref in refs:
        store.redis.set(keys.result(ref), json.dumps(ref))
    returns = [{"__ref__": ref, "path": []} for ref in refs]
    run_id = ended({"name": "n", "state": StateType.RUNNING.value, "returns": returns, "result_refs": refs})
    assert store.flow_runs.read_outcome(run_id).results == {}
    assert store.flow_runs.wait_outcome(run_id, 0.05) == (StateType.RUNNING, store.flow_runs.read_outcome(run_id))

    failed = ended({"state": StateType.FAILED.value, "returns": returns, "result_refs": refs})
    assert store.flow_runs.read_outcome(failed).results == {}

    store.flow_runs.write(run_id, {"state": StateType.COMPLETED.value})
    assert store.flow_runs.read_outcome(run_id).results == {ref: json.dumps(ref) for ref in refs}
    assert FlowRun(run_id).result(timeout=5) == refs


def test_a_completed_run_gives_its_value_to_result_and_to_the_api() -> None:
    task_run = str(uuid.uuid4())
    get_store().redis.set(keys.result(task_run), json.dumps([1, 2]))
    returns = {"total": {"__ref__": task_run, "path": [1]}, "n": 3}
    run_id = ended({"name": "n", "state": "Completed", "returns": returns, "result_refs": [task_run]})
    assert FlowRun(run_id).result(timeout=5) == {"total": 2, "n": 3}
    shown = shown_result(get_store(), run_id)
    assert (shown.state, shown.value, shown.expired) == (StateType.COMPLETED, {"total": 2, "n": 3}, [])


def test_an_unknown_run_reads_as_no_outcome() -> None:
    unknown = str(uuid.uuid4())
    assert get_store().flow_runs.read_outcome(unknown) == FlowOutcome()
    assert shown_result(get_store(), unknown).state is None
    assert linked_outcome(get_store(), unknown) is None
    assert get_store().flow_runs.wait_outcome(unknown, 0.05) == (None, FlowOutcome())
