"""What the finish script leaves when a task run ends (``lua/finish_task_run.lua`` through
``TaskRuns.finished``), on the session's real Redis, without workers: the store's calls only.

The end that completes the root flow run also removes the tree's edges (each task run's
downstream set, the join tables, the tolerant set, the kept inputs) in the same call, so a
completed tree costs no round trip after its end; a tree that ends otherwise keeps them (and its
finals for the TTL) until Python decides, because a flow retry may follow. Trees larger than the
script's batches (1000 arguments per command) are read and cleared whole.
"""

from __future__ import annotations

import json
import uuid

import pytest

from orchestrator.config.settings import get_settings
from orchestrator.runstate import keys
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore, now
from orchestrator.states import StateType


@pytest.fixture
def store(redis_url: str) -> RunStore:
    return RunStore(redis_url)


def _tree(store: RunStore, size: int, deciders: list[int], *, refs: bool = False) -> tuple[str, list[str]]:
    """A static tree of ``size`` task runs, each but the last waiting for nothing and the last joining
    on the first two; its root record Running with ``deciders`` (indexes; ``refs``: stored as the
    result_refs, as ``records.flow_fields_to_redis`` writes a flow returning its futures)."""
    root = str(uuid.uuid4())
    trids = [f"{root}-t{i}" for i in range(size)]
    last = trids[-1]
    runs = [(NewTaskRun(t, t, "t", root, root), [] if t != last else trids[:2]) for t in trids]
    pipe = store.redis.pipeline(transaction=False)
    store.task_runs.write_tree(
        pipe,
        root,
        runs,
        whole_tree_in_root=False,
        join_pending={last: 2},
        join_signatures={last: {"task": "t", "id": last}},
        tolerant=[last],
        stored_inputs={last: '{"x": 1}'},
    )
    ids = json.dumps([trids[i] for i in deciders])
    record = {"state": "Running", "mode": "static"}
    record |= {"deciders": '"result_refs"', "result_refs": ids} if refs else {"deciders": ids}
    pipe.hset(keys.flow_run(root), mapping=record)
    pipe.execute()
    return root, trids


def _edges(store: RunStore, root: str, trids: list[str]) -> list[str]:
    """The tree's edge keys that exist."""
    names = [keys.downstream(t) for t in trids]
    names += [keys.join_pending(root), keys.join_signature(root), keys.tolerant(root), keys.inputs(root)]
    pipe = store.redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return [name for name, there in zip(names, pipe.execute(), strict=True) if there]


def _end(store: RunStore, root: str, trid: str, state: StateType = StateType.COMPLETED) -> object:
    return store.task_runs.finished(root, trid, state, {"ended": now(), "worker": "w"}, '"v"')


def test_the_end_that_completes_a_tree_removes_its_edges_in_the_same_call(store: RunStore) -> None:
    root, trids = _tree(store, 3, deciders=[2])
    first = _end(store, root, trids[0])
    assert first.left == 2 and not first.flow_completed  # type: ignore[attr-defined]
    assert len(_edges(store, root, trids)) == 6  # two downstream sets and four per-tree keys, still routing
    ready = _end(store, root, trids[1])
    assert ready.ready == [{"task": "t", "id": trids[2]}]  # type: ignore[attr-defined]
    last = _end(store, root, trids[2])
    assert last.left == 0 and last.flow_completed  # type: ignore[attr-defined]
    assert _edges(store, root, trids) == []  # no forget_edges call needed after it
    assert store.redis.hget(keys.flow_run(root), "state") == "Completed"
    grace = get_settings().finished_grace_seconds
    for key in (keys.finals(root), keys.remaining(root)):  # the completed tree's bookkeeping: a grace only
        assert 0 < store.redis.ttl(key) <= grace, key


def test_a_tree_that_does_not_complete_keeps_its_edges_and_finals_for_a_retry(store: RunStore) -> None:
    """A failed decider: the finish asks Python to decide (a flow retry may follow), removes nothing,
    and the finals keep the TTL, not the completed tree's grace."""
    root, trids = _tree(store, 3, deciders=[2])
    _end(store, root, trids[0])
    _end(store, root, trids[1])
    last = _end(store, root, trids[2], StateType.FAILED)
    assert last.left == 0 and last.needs_decision and not last.flow_completed  # type: ignore[attr-defined]
    assert len(_edges(store, root, trids)) == 6
    assert store.redis.hget(keys.flow_run(root), "state") == "Running"
    assert store.redis.ttl(keys.finals(root)) > get_settings().finished_grace_seconds
    assert store.task_runs.forget_edges(root) == 6
    assert _edges(store, root, trids) == []


@pytest.mark.parametrize("refs", [False, True], ids=["deciders", "result-refs"])
def test_a_tree_larger_than_the_scripts_batches_is_decided_and_cleared_whole(store: RunStore, refs: bool) -> None:
    size = 2500
    root, trids = _tree(store, size, deciders=list(range(size)), refs=refs)
    store.redis.sadd(keys.flow_tasks(root), *trids)  # the root's set of task runs, as a real tree has
    pipe = store.redis.pipeline(transaction=False)
    for t in trids[2:]:  # a downstream set for every task run, past two batches of keys
        pipe.sadd(keys.downstream(t), "nobody")
    pipe.execute()
    for t in trids[:-1]:
        assert not _end(store, root, t).flow_completed  # type: ignore[attr-defined]
    assert _end(store, root, trids[-1]).flow_completed  # type: ignore[attr-defined]
    assert _edges(store, root, trids) == []


def test_one_failed_decider_past_the_first_batch_keeps_the_run_from_completing(store: RunStore) -> None:
    size = 2500
    root, trids = _tree(store, size, deciders=list(range(size)), refs=True)
    for i, t in enumerate(trids):
        last = _end(store, root, t, StateType.FAILED if i == 2200 else StateType.COMPLETED)
    assert last.left == 0 and last.needs_decision  # type: ignore[attr-defined]
    assert store.redis.hget(keys.flow_run(root), "state") == "Running"


def test_a_start_and_an_end_store_every_field_they_are_given(store: RunStore) -> None:
    root, trids = _tree(store, 3, deciders=[2])
    fields = {"state": "Running", "started": 12.5, "worker": "w1", "attempts": 1, "flow_run_id": root, "name": "t"}
    fields |= {"root": root, "label": "a label"}
    started = store.task_runs.started(root, trids[0], fields)
    assert started is not None and started.start == 1
    stored = store.redis.hgetall(keys.task_run(trids[0]))
    assert {k: stored[k] for k in ("state", "started", "worker", "attempts", "name", "label")} == {
        "state": "Running",
        "started": "12.5",
        "worker": "w1",
        "attempts": "1",
        "name": "t",
        "label": "a label",
    }
    assert "root" not in stored  # its own flow run: left out (records.slim_task_fields)
    store.task_runs.finished(root, trids[0], StateType.COMPLETED, {"ended": 13.5, "worker": "w2", "message": ""})
    stored = store.redis.hgetall(keys.task_run(trids[0]))
    assert (stored["state"], stored["ended"], stored["worker"], stored["message"]) == ("Completed", "13.5", "w2", "")
    assert stored["starts"] == "1" and stored["label"] == "a label"
