"""The journal a dynamic body replays (orchestrator/runstate/journal.py), on the session's real Redis:
what it reads back, how a replayed call that differs is refused, and when a recorded task run's
message is sent again."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.errors import ReplayDiverged
from orchestrator.runstate.journal import JournalEntry
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.celery_app import client_app
from workers.driver import DynamicEngine


@pytest.fixture
def store(redis_url: str) -> RunStore:
    return RunStore(redis_url)


def test_read_gives_each_entry_and_an_orders_futures_by_number_not_text(store: RunStore) -> None:
    run = str(uuid.uuid4())
    store.journal.record(run, 0, JournalEntry("task", "t", "t-0", id="a"))
    store.journal.record(run, 1, JournalEntry("order", "as_completed of 12 futures"))
    for index in range(12):
        store.journal.record_given(run, 1, index, f"f{index}")
    store.journal.record(run, 2, JournalEntry("subflow", "child", id="c", counts={"t": 3}))
    entries = store.journal.read(run)
    assert entries[0] == JournalEntry("task", "t", "t-0", id="a")
    assert entries[1].ids == [f"f{i}" for i in range(12)]  # f10 and f11 after f9
    assert entries[2].counts == {"t": 3}
    store.journal.clear(run)
    assert store.journal.read(run) == {}


def test_a_replayed_call_that_differs_from_the_record_names_the_position_and_both_calls(store: RunStore) -> None:
    run = str(uuid.uuid4())
    store.journal.record(run, 0, JournalEntry("task", "flows.load", "load-0", id="x"))
    store.journal.record(run, 1, JournalEntry("task", "flows.save", "save-0", id="y"))
    engine = DynamicEngine(client_app(), store, run, run, "default", attempt=2, replay=True)
    position, recorded = engine.next_call(JournalEntry("task", "flows.load", "load-0"))
    assert (position, recorded and recorded.id) == (0, "x")
    with pytest.raises(ReplayDiverged) as caught:
        engine.next_call(JournalEntry("task", "flows.delete", "delete-0"))
    text = str(caught.value)
    assert "call #1" in text and run in text
    assert "task 'flows.save' (label save-0)" in text and "task 'flows.delete' (label delete-0)" in text
    assert engine.next_call(JournalEntry("task", "flows.more", "more-0")) == (2, None)  # past the record: new


def test_a_recorded_task_run_is_sent_again_only_if_it_never_began_and_its_old_message_goes_stale(
    store: RunStore,
) -> None:
    root = str(uuid.uuid4())
    never, began, final, waiting = (str(uuid.uuid4()) for _ in range(4))
    for trid in (never, began, final, waiting):
        store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "t", "t", root, root), None)
    fields = {"state": StateType.RUNNING.value, "attempts": 1, "flow_run_id": root, "root": root}
    assert store.task_runs.started(root, began, fields) is not None
    store.task_runs.finished(root, final, StateType.COMPLETED, {}, '"v"')
    store.task_runs.register_waiting(root, waiting, [began], "{}")  # its upstream still runs
    assert [store.journal.claim_resend(root, t) for t in (began, final, waiting)] == [0, 0, 0]
    assert store.journal.claim_resend(root, never) == 2
    assert store.task_runs.started(root, never, fields).stale  # type: ignore[union-attr]  # attempt 1 now stale
    assert store.task_runs.started(root, never, fields | {"attempts": 2}) is not None
